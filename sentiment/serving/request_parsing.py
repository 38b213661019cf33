"""Turn one TorchServe request row into the text to classify, or a client error naming the problem.

TorchServe decodes bodies before the handler sees them: `application/json` arrives as the parsed
value, `text/*` as a str, and whatever failed to decode (invalid JSON, non-UTF-8) as raw bytes.
"""

from __future__ import annotations

import json
from typing import Any

EXAMPLE = 'send {"text": "..."} as application/json, or the text itself as text/plain'


class InvalidRequest(ValueError):
    """The client sent something we cannot classify; answered with HTTP 400 and this message."""


def _is_json(content_type: str | None) -> bool:
    return bool(content_type) and "json" in content_type.lower()


def extract_text(row: Any, content_type: str | None, max_chars: int) -> str:
    """Validate one request and return its text.

    `content_type` is the one the client declared for the body (None when unknown).
    """
    payload = row.get("data", row.get("body")) if isinstance(row, dict) else row
    if payload is None and content_type and content_type.startswith("application/x-www-form-urlencoded"):
        # TorchServe turns form bodies into parameters; `curl -d` without -H sends one.
        raise InvalidRequest(f"form-encoded bodies are not supported: {EXAMPLE}")
    # Only text and bytes can be empty: a parsed JSON body may be a number or a bool.
    if payload is None or (isinstance(payload, (str, bytes, bytearray)) and not payload):
        raise InvalidRequest(f"request body is empty: {EXAMPLE}")
    if isinstance(payload, (bytes, bytearray)):
        payload = _decode_utf8(bytes(payload))
        if _is_json(content_type):
            payload = _parse_json(payload)
        is_json = _is_json(content_type)
    else:
        # TorchServe parsed application/json bodies itself; text/* bodies arrive as a str.
        is_json = _is_json(content_type) or not isinstance(payload, str)
    if is_json:
        if not isinstance(payload, dict):
            raise InvalidRequest(f"JSON body must be an object, got {_json_type(payload)}: {EXAMPLE}")
        if "text" not in payload:
            raise InvalidRequest(f'JSON body has no "text" field: {EXAMPLE}')
        text = payload["text"]
        if not isinstance(text, str):
            raise InvalidRequest(f'"text" must be a string, got {_json_type(text)}')
    else:
        text = payload
    if not text.strip():
        raise InvalidRequest("text is empty or whitespace only")
    if len(text) > max_chars:
        raise InvalidRequest(f"text must have at most {max_chars} characters. Given: {len(text)}")
    return text


def _decode_utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {error.start}): {EXAMPLE}") from None


def _parse_json(body: str):
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"request body is not valid JSON ({error}): {EXAMPLE}") from None


def _json_type(value: Any) -> str:
    names = {str: "a string", list: "an array", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
