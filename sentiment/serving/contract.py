"""The request contract: what a body may hold, the client errors it can get, and the answers.

One request carries one text or several, in one of these forms (`POST`, UTF-8):

    text/plain                  the text itself                          -> {sentiment, confidence, ...}
    application/json  single    {"text": "..."}                          -> {sentiment, confidence, ...}
                      batch     {"texts": ["...", ...]}                  -> {"predictions": [...]}
                      KServe v1 {"instances": ["...", ...] or [{"text": "..."}, ...]}  -> {"predictions": [...]}
                      KServe v2 {"inputs": [{"name", "datatype": "BYTES", "shape": [n], "data": [...]}]}
                                                                         -> {"model_name", "outputs": [...]}

Options, in every JSON form: `truncate` (true: read only the first MAX_SEQUENCE_LEN tokens of each
text; false: read long texts whole, in windows; absent: the server's TRUNCATE) and `windows` (true:
each answer lists the windows its text was read in, with their character spans and probabilities),
beside the texts (`{"texts": [...], "truncate": true}`) or, in KServe v2, in the request's
`parameters`. Unknown fields and parameters are refused, so that a misspelt option is not ignored.
A text/plain body takes the server's defaults: TorchServe 0.12 does not pass a prediction's query
string on to the worker.

A request without a Content-Type is read as text/plain. Every limit of the parsers is client input
too: nesting depth, number size, unencodable characters each get a 400 of their own, never an
exception that would fail the other requests of the batch. Errors name the field (`texts[3]`) and
the limit with the value given.

TorchServe may hand the body over raw (bytes: config.properties sets decode_input_request=false) or
already decoded (a str for text/*, the parsed value for JSON); both are read the same way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

ACCEPTED_TYPES = ("application/json", "text/plain")
EXAMPLE = 'send {"text": "..."} or {"texts": [...]} as application/json, or the text itself as text/plain (UTF-8)'
# The JSON forms, by the key that marks them.
FORMS = {"text": "single", "texts": "batch", "instances": "v1", "inputs": "v2"}
# The options a request may set (the module's docstring says what each means).
OPTIONS = ("truncate", "windows")
# The top-level fields of a KServe v2 request besides "inputs" (Open Inference Protocol).
V2_FIELDS = ("id", "parameters", "outputs")


class InvalidRequest(ValueError):
    """The client sent something we cannot classify; answered with `status`, `headers` and this message."""

    status = 400
    headers: dict[str, str] = {}  # noqa: RUF012 - read only, per class


class UnsupportedMediaType(InvalidRequest):
    status = 415


class UnprocessableText(InvalidRequest):
    """The text passed validation but the model failed on it, alone: only this request fails."""

    status = 422


class ServerBusy(InvalidRequest):
    """The TorchServe batch already carries all the work it may: answered 503 with Retry-After."""

    status = 503
    headers = {"Retry-After": "1"}  # noqa: RUF012 - read only, per class


class TooMuchWork(InvalidRequest):
    """The request alone needs more model work than one batch may carry: it would never be admitted."""

    status = 413


@dataclass(frozen=True)
class ParsedRequest:
    texts: list[str]  # one or more, each validated
    form: str  # "single", "batch", "v1" or "v2": how to answer
    request_id: str | None = None  # v2: echoed in the answer when the request had one
    explain: bool = False  # POST /explanations: attributions per word as well
    truncate: bool | None = None  # None: the server's TRUNCATE
    windows: bool = False  # list each text's windows in its answer


def parse_explanation_request(payload: Any, content_type: str | None, config) -> ParsedRequest:
    """An explanation request: the same bodies, within the explanation limits of `config`."""
    request = parse_request(payload, content_type, config.max_text_chars, config.explain_max_texts)
    for i, text in enumerate(request.texts):
        words = len(text.split())
        if words > config.explain_max_words:
            field = "text" if request.form == "single" else f"text {i}"
            raise InvalidRequest(
                f"{field} must have at most {config.explain_max_words} words to explain. Given: {words}"
            )
    return dataclasses.replace(request, explain=True)


def parse_request(payload: Any, content_type: str | None, max_chars: int, max_texts: int) -> ParsedRequest:
    """Validate one request's body and return its texts and options.

    `content_type` is the one the client declared for the body (None when it declared none).
    """
    request, options = _parse_body(payload, content_type, max_chars, max_texts)
    return dataclasses.replace(request, **options)


def _parse_body(payload: Any, content_type: str | None, max_chars: int, max_texts: int) -> tuple[ParsedRequest, dict]:
    """The request's texts and form, and the options its body sets."""
    is_json = _accepted_media_type(content_type) == "application/json"
    # Only text and bytes can be empty: a parsed JSON body may be a number or a bool.
    if payload is None or (isinstance(payload, (str, bytes, bytearray)) and not payload):
        raise InvalidRequest(f"request body is empty: {EXAMPLE}")
    if isinstance(payload, (bytes, bytearray)):
        payload = _decode_utf8(bytes(payload))
        if is_json:
            payload = _parse_json(payload)
    if not is_json:
        return ParsedRequest([_checked("text", payload, max_chars)], "single"), {}
    if not isinstance(payload, dict):
        raise InvalidRequest(f"JSON body must be an object, got {_json_type(payload)}: {EXAMPLE}")
    forms = [key for key in FORMS if key in payload]
    if len(forms) != 1:
        found = f"got {forms}" if forms else f"got keys {sorted(payload)[:5]}"
        raise InvalidRequest(f'JSON body needs exactly one of "text", "texts", "instances", "inputs", {found}')
    key = forms[0]
    if key == "inputs":
        return _parse_v2(payload, max_chars, max_texts)
    unknown = sorted(set(payload) - {key, *OPTIONS})
    if unknown:
        raise InvalidRequest(f"unknown field {_json(unknown[0])[:80]}: a body holds {_json(key)} and {list(OPTIONS)}")
    options = {name: _option(name, payload[name]) for name in OPTIONS if name in payload}
    if key == "text":
        return ParsedRequest([_checked("text", payload["text"], max_chars)], "single"), options
    items = _bounded_list(key, payload[key], max_texts)
    if key == "instances":  # each a text, or {"text": ...}
        for i, item in enumerate(items):
            if isinstance(item, dict) and "text" not in item:
                raise InvalidRequest(f'instances[{i}] has no "text" field: give a text, or {{"text": "..."}}')
        items = [item["text"] if isinstance(item, dict) else item for item in items]
    texts = [_checked(f"{key}[{i}]", item, max_chars) for i, item in enumerate(items)]
    return ParsedRequest(texts, FORMS[key]), options


def _parse_v2(payload: dict, max_chars: int, max_texts: int) -> tuple[ParsedRequest, dict]:
    """Open Inference Protocol: one BYTES input tensor of shape [n] (or [n, 1]) holding the texts; the
    options in the request's `parameters`."""
    unknown = sorted(set(payload) - {"inputs", *V2_FIELDS})
    if unknown:
        raise InvalidRequest(f"unknown field {_json(unknown[0])[:80]}: a v2 request holds inputs and {list(V2_FIELDS)}")
    parameters = payload.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"parameters must be an object, got {_json_type(parameters)}")
    unknown = sorted(set(parameters) - set(OPTIONS))
    if unknown:
        raise InvalidRequest(f"unknown parameter {_json(unknown[0])[:80]}: known are {list(OPTIONS)}")
    options = {name: _option(f"parameters.{name}", value) for name, value in parameters.items()}
    inputs = payload["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest("inputs must hold exactly one input tensor (an object), the texts")
    tensor = inputs[0]
    if tensor.get("datatype") != "BYTES":
        raise InvalidRequest(f'inputs[0].datatype must be "BYTES", got {tensor.get("datatype")!r}')
    data = _bounded_list("inputs[0].data", tensor.get("data"), max_texts)
    shape = tensor.get("shape")
    if shape not in ([len(data)], [len(data), 1]):
        raise InvalidRequest(f"inputs[0].shape must be [{len(data)}] for {len(data)} texts, got {shape!r}")
    # A [n, 1] tensor may come nested, one text per row.
    data = [item[0] if isinstance(item, list) and len(item) == 1 else item for item in data]
    texts = [_checked(f"inputs[0].data[{i}]", item, max_chars) for i, item in enumerate(data)]
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest(f"id must be a string, got {_json_type(request_id)}")
    return ParsedRequest(texts, "v2", request_id), options


def _option(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be true or false, got {_json_type(value)}")
    return value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True)


def render(request: ParsedRequest, predictions: list[dict], model_name: str, class_names: tuple[str, ...]) -> Any:
    """The answer to one request, in the form it came in; `predictions` are Prediction.to_dict()s."""
    if request.form == "single":
        return predictions[0]
    if request.form in ("batch", "v1"):
        return {"predictions": predictions}
    n = len(predictions)
    outputs = [
        {"name": "sentiment", "datatype": "BYTES", "shape": [n], "data": [p["sentiment"] for p in predictions]},
        {"name": "confidence", "datatype": "FP32", "shape": [n], "data": [p["confidence"] for p in predictions]},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [n, len(class_names)],
            "data": [p["probabilities"][name] for p in predictions for name in class_names],
            "parameters": {"class_names": ",".join(class_names)},
        },
        {"name": "truncated", "datatype": "BOOL", "shape": [n], "data": [p["truncated"] for p in predictions]},
    ]
    if request.windows:  # ragged per text: one JSON list of {start, end, probabilities} per text
        data = [json.dumps(p["windows"]) for p in predictions]
        outputs.append({"name": "windows", "datatype": "BYTES", "shape": [n], "data": data})
    if request.explain:  # ragged per text: one JSON list of {word, score} per text
        data = [json.dumps(p["attributions"]) for p in predictions]
        outputs.append({"name": "attributions", "datatype": "BYTES", "shape": [n], "data": data})
    answer = {"model_name": model_name, "outputs": outputs}
    return answer if request.request_id is None else {**answer, "id": request.request_id}


def _bounded_list(field: str, value: Any, max_texts: int) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"{field} must be an array of texts, got {_json_type(value)}")
    if not 1 <= len(value) <= max_texts:
        raise InvalidRequest(f"{field} must hold 1 to {max_texts} texts. Given: {len(value)}")
    return value


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


def _checked(field: str, text: Any, max_chars: int) -> str:
    """A text that the tokenizer can take, or a 400 naming the field."""
    if not isinstance(text, str):
        raise InvalidRequest(f"{_quoted(field)} must be a string, got {_json_type(text)}")
    if not text.strip():
        raise InvalidRequest(f"{_quoted(field)} is empty or whitespace only")
    if len(text) > max_chars:
        raise InvalidRequest(f"{_quoted(field)} must have at most {max_chars} characters. Given: {len(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        # A JSON escape such as "\ud800" decodes to half a surrogate pair, which no tokenizer takes.
        raise InvalidRequest(
            f"{_quoted(field)} has a character that is not valid Unicode at position {error.start} (a lone surrogate)"
        ) from None
    return text


def _quoted(field: str) -> str:
    return '"text"' if field == "text" else field


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
    names = {
        str: "a string",
        list: "an array",
        dict: "an object",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    return "null" if value is None else names.get(type(value), type(value).__name__)
