"""openapi.yaml cannot drift: every example in it goes to a real server, and each answer must
validate against the schema the document gives for its status."""

from __future__ import annotations

import json

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator

from sentiment.project import PROJECT_DIR

pytestmark = pytest.mark.integration
DOCUMENT = yaml.safe_load((PROJECT_DIR / "openapi.yaml").read_text())
# Examples that show a client error rather than an answer.
ERROR_EXAMPLES = {"bad_item", "too_many", "too_many_words", "misspelt_option"}
EXAMPLES = [
    (path, content_type, name, example["value"])
    for path, operations in DOCUMENT["paths"].items()
    for content_type, media in operations["post"]["requestBody"]["content"].items()
    for name, example in media["examples"].items()
]


def validator(schema: dict) -> Draft202012Validator:
    """The schema with the document's components beside it, so that its $refs resolve."""
    return Draft202012Validator({**schema, "components": DOCUMENT["components"]})


def response_schema(path: str, status: str) -> dict:
    response = DOCUMENT["paths"][path]["post"]["responses"][status]
    if "$ref" in response:
        response = DOCUMENT["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    ("path", "content_type", "name", "body"), EXAMPLES, ids=[f"{p} {n}" for p, _, n, _ in EXAMPLES]
)
def test_every_example_is_answered_as_the_document_says(server, path, content_type, name, body):
    if content_type == "application/json":  # the request schema takes the good examples only
        request_schema = validator({"$ref": "#/components/schemas/Request"})
        assert request_schema.is_valid(body) == (name not in ERROR_EXAMPLES or name == "too_many_words")
    data = body.encode() if content_type == "text/plain" else json.dumps(body).encode()
    response = requests.post(
        server.url("inference") + path.replace("{model}", "sentiment"),
        data=data,
        headers={"Content-Type": content_type, **server.auth_header("inference")},
        timeout=30,
    )
    status = "400" if name in ERROR_EXAMPLES else "200"
    assert str(response.status_code) == status, response.text
    validator(response_schema(path, status)).validate(response.json())
