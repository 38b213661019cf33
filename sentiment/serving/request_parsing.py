"""Turn one request body into the text to classify, or a client error naming the problem.

The contract: `POST` a body of `Content-Type: application/json` (`{"text": "..."}`) or `text/plain`
(the text itself), UTF-8. A request without a Content-Type is read as text/plain. Every limit of
the parsers is client input too: nesting depth, number size, unencodable characters each get a
400 of their own, never an exception that would fail the other requests of the batch.

TorchServe may hand the body over raw (bytes: config.properties sets decode_input_request=false) or
already decoded (a str for text/*, the parsed value for JSON); both are read the same way.
"""

from __future__ import annotations

import json
from typing import Any

ACCEPTED_TYPES = ("application/json", "text/plain")
EXAMPLE = 'send {"text": "..."} as application/json, or the text itself as text/plain (UTF-8)'


class InvalidRequest(ValueError):
    """The client sent something we cannot classify; answered with `status` and this message."""

    status = 400


class UnsupportedMediaType(InvalidRequest):
    status = 415


class UnprocessableText(InvalidRequest):
    """The text passed validation but the model failed on it, alone: only this request fails."""

    status = 422


def extract_text(row: Any, content_type: str | None, max_chars: int) -> str:
    """Validate one request and return its text.

    `content_type` is the one the client declared for the body (None when it declared none).
    """
    is_json = _accepted_media_type(content_type) == "application/json"
    payload = row.get("data", row.get("body")) if isinstance(row, dict) else row
    # Only text and bytes can be empty: a parsed JSON body may be a number or a bool.
    if payload is None or (isinstance(payload, (str, bytes, bytearray)) and not payload):
        raise InvalidRequest(f"request body is empty: {EXAMPLE}")
    if isinstance(payload, (bytes, bytearray)):
        payload = _decode_utf8(bytes(payload))
        if is_json:
            payload = _parse_json(payload)
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
    return _checked(text, max_chars)


def _accepted_media_type(content_type: str | None) -> str:
    """The declared media type if this contract accepts it (charset UTF-8 only), else 415."""
    if not content_type:
        return "text/plain"
    media_type, *parameters = (part.strip().lower() for part in content_type.split(";"))
    if media_type not in ACCEPTED_TYPES:
        # Form bodies included: TorchServe would turn them into parameters, `curl -d` sends one.
        raise UnsupportedMediaType(f"Content-Type {media_type!r} is not supported: {EXAMPLE}")
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"charset {value.strip()!r} is not supported: {EXAMPLE}")
    return media_type


def _checked(text: str, max_chars: int) -> str:
    if not text.strip():
        raise InvalidRequest("text is empty or whitespace only")
    if len(text) > max_chars:
        raise InvalidRequest(f"text must have at most {max_chars} characters. Given: {len(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        # A JSON escape such as "\ud800" decodes to half a surrogate pair, which no tokenizer takes.
        raise InvalidRequest(
            f"text has a character that is not valid Unicode at position {error.start} (a lone surrogate)"
        ) from None
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
    except RecursionError:
        raise InvalidRequest("request body nests JSON arrays or objects deeper than the parser allows") from None
    except ValueError:
        # Python refuses to convert integers of more than 4,300 digits (sys.get_int_max_str_digits).
        raise InvalidRequest("request body holds a JSON number with more digits than the parser allows") from None


def _json_type(value: Any) -> str:
    names = {str: "a string", list: "an array", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
