"""The TorchServe handler on a tiny random BERT, driven with TorchServe's own Context class."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
import time
from pathlib import Path

import pytest
from ts.context import Context, RequestProcessor

from sentiment.serving.classifier import choose_device

HANDLER_FILE = Path(__file__).resolve().parents[1] / "handler" / "sentiment_handler.py"


def load_handler_class():
    """The handler module loaded from its file, as TorchServe loads it from the model folder."""
    spec = importlib.util.spec_from_file_location("sentiment_handler", HANDLER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SentimentHandler


SentimentHandler = load_handler_class()

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain"


def make_context(model_dir, content_types, explain=()):
    """A Context as TorchServe builds it for a batch: one RequestProcessor per request; TorchServe
    marks a request to /explanations with the header explain: True."""
    context = Context("sentiment", str(model_dir), {}, len(content_types), None, "0.12.0")
    context.request_processor = [
        RequestProcessor(
            ({"body": {"content-type": ctype}, "Content-Type": ctype} if ctype else {})
            | ({"explain": "True"} if i in explain else {})
        )
        for i, ctype in enumerate(content_types)
    ]
    return context


@pytest.fixture()
def handler(model_dir):
    handler = SentimentHandler()
    handler.initialize(make_context(model_dir, []))
    return handler


def run(handler, model_dir, requests, explain=()):
    """requests: (row, content type) pairs; returns (status, parsed body, content type) per request."""
    context = make_context(model_dir, [ctype for _, ctype in requests], explain)
    bodies = handler.handle([row for row, _ in requests], context)
    assert len(bodies) == len(requests)
    return [
        (context.get_response_status(i)[0] or 200, json.loads(body), context.get_response_content_type(i))
        for i, body in enumerate(bodies)
    ]


GOOD = [
    ({"body": {"text": "love the app"}}, JSON_TYPE),
    ({"body": "awful waste of time"}, TEXT_TYPE),
    ({"body": bytearray(b'{"text": "easy schedule"}')}, "application/json; charset=utf-8"),
    ({"body": bytearray(b"great phone")}, None),  # no Content-Type: read as text/plain
    ({"body": bytearray(b'{"text": "love it"}')}, "Application/JSON; charset=UTF-8"),
]

BAD = {
    "empty body": (({"body": bytearray()}, TEXT_TYPE), "request body is empty"),
    "no body at all": (({}, None), "request body is empty"),
    "form-encoded": (({}, "application/x-www-form-urlencoded"), "'application/x-www-form-urlencoded' is not supported"),
    "image": (({"body": bytearray(b"\x89PNG")}, "image/png"), "Content-Type 'image/png' is not supported"),
    "octet-stream": (({"body": bytearray(b"good")}, "application/octet-stream"), "not supported"),
    "latin-1": (({"body": bytearray(b"caf\xe9")}, "text/plain; charset=latin-1"), "charset 'latin-1'"),
    "lone surrogate": (({"body": bytearray(b'{"text": "hi \\ud800"}')}, JSON_TYPE), "not valid Unicode at position 3"),
    "decoded lone surrogate": (({"body": {"text": "hi \ud800"}}, JSON_TYPE), "lone surrogate"),
    "deep nesting": (({"body": bytearray(b"[" * 5000 + b"]" * 5000)}, JSON_TYPE), "nests JSON .* deeper"),
    "huge integer": (({"body": bytearray(b'{"text": ' + b"9" * 5000 + b"}")}, JSON_TYPE), "more digits"),
    "invalid JSON": (({"body": bytearray(b'{"text": ')}, JSON_TYPE), "not valid JSON"),
    "JSON array": (({"body": ["good"]}, JSON_TYPE), "must be an object, got an array"),
    "JSON number": (({"body": 5}, JSON_TYPE), "must be an object, got a number"),
    "empty JSON object": (({"body": {}}, JSON_TYPE), "needs exactly one of"),
    "JSON string": (({"body": "good"}, JSON_TYPE), "must be an object, got a string"),
    "JSON null": (({"body": bytearray(b"null")}, "application/json; charset=utf-8"), "got null"),
    "no text field": (({"body": {"review": "good"}}, JSON_TYPE), "needs exactly one of .* got keys \\['review'\\]"),
    "two forms": (({"body": {"text": "good", "texts": ["bad"]}}, JSON_TYPE), "got \\['text', 'texts'\\]"),
    "texts item not a string": (
        ({"body": {"texts": ["good", 5]}}, JSON_TYPE),
        "texts\\[1\\] must be a string, got a number",
    ),
    "texts empty": (({"body": {"texts": []}}, JSON_TYPE), "texts must hold 1 to 64 texts. Given: 0"),
    "texts over the limit": (
        ({"body": {"texts": ["good"] * 65}}, JSON_TYPE),
        "texts must hold 1 to 64 texts. Given: 65",
    ),
    "texts not a list": (({"body": {"texts": "good"}}, JSON_TYPE), "texts must be an array of texts, got a string"),
    "texts item too long": (
        ({"body": {"texts": ["good", "a" * 201]}}, JSON_TYPE),
        "texts\\[1\\] must have at most 200",
    ),
    "v1 item blank": (
        ({"body": {"instances": [{"text": "good"}, {"text": " "}]}}, JSON_TYPE),
        "instances\\[1\\] is empty",
    ),
    "v2 not BYTES": (
        ({"body": {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}}, JSON_TYPE),
        "datatype must be \"BYTES\", got 'FP32'",
    ),
    "v2 shape": (
        ({"body": {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [3], "data": ["good"]}]}}, JSON_TYPE),
        "shape must be \\[1\\] for 1 texts, got \\[3\\]",
    ),
    "text not a string": (({"body": {"text": ["good"]}}, JSON_TYPE), '"text" must be a string, got an array'),
    "empty text": (({"body": {"text": ""}}, JSON_TYPE), "empty or whitespace"),
    "whitespace text": (({"body": " \n\t "}, TEXT_TYPE), "empty or whitespace"),
    "non-UTF-8": (({"body": bytearray(b"caf\xe9 \xff")}, TEXT_TYPE), "not valid UTF-8 \\(byte 3\\)"),
    "too long": (({"body": {"text": "good " * 50}}, JSON_TYPE), "at most 200 characters. Given: 250"),
}


def test_good_requests_in_every_accepted_form(handler, model_dir):
    results = run(handler, model_dir, GOOD)
    for status, body, content_type in results:
        assert status == 200
        assert content_type == JSON_TYPE
        assert set(body) == {"sentiment", "confidence", "probabilities", "truncated"}


UNSUPPORTED = {"form-encoded", "image", "octet-stream", "latin-1"}


@pytest.mark.parametrize("name", BAD.keys())
def test_bad_input_gets_400_or_415_with_a_json_error_naming_the_problem(handler, model_dir, name):
    request, message = BAD[name]
    ((status, body, content_type),) = run(handler, model_dir, [request])
    assert status == (415 if name in UNSUPPORTED else 400)
    assert content_type == JSON_TYPE
    assert list(body) == ["error"]
    assert re.search(message, body["error"]), body["error"]


def test_bad_requests_do_not_harm_their_neighbours_in_the_batch(handler, model_dir):
    bad = [request for request, _ in BAD.values()]
    good = [GOOD[i % len(GOOD)] for i in range(len(bad))]  # every bad case, each beside a good one
    mixed = [x for pair in zip(good, bad, strict=True) for x in pair]
    results = run(handler, model_dir, mixed)
    alone = run(handler, model_dir, GOOD)
    assert len(results) == 2 * len(BAD)
    for i, (status, body, _) in enumerate(results):
        if i % 2:
            assert status in (400, 415) and "error" in body
        else:
            assert status == 200
            expected = alone[(i // 2) % len(GOOD)][1]
            assert body["sentiment"] == expected["sentiment"]
            assert body["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)


def test_a_batch_of_only_bad_requests_answers_each(handler, model_dir):
    results = run(handler, model_dir, [request for request, _ in BAD.values()])
    assert [status for status, _, _ in results] == [415 if name in UNSUPPORTED else 400 for name in BAD]


def test_a_text_the_model_fails_on_fails_alone(handler, model_dir, monkeypatch):
    predict = handler.classifier.predict_encoded

    def fails_on_poison(encodings, *options):
        if any("awful" in encoding.tokens for encoding in encodings):
            raise RuntimeError("a forward pass that breaks on one input")
        return predict(encodings, *options)

    monkeypatch.setattr(handler.classifier, "predict_encoded", fails_on_poison)
    results = run(handler, model_dir, GOOD)  # the second one says "awful"
    assert [status for status, _, _ in results] == [200, 422, 200, 200, 200]
    assert results[1][1] == {"error": "the model could not classify this text (RuntimeError)"}
    assert results[0][1]["sentiment"] in ("negative", "neutral", "positive")


def test_an_unexpected_error_reading_one_body_fails_only_that_request(handler, model_dir):
    class Unreadable(dict):
        def get(self, *args):
            raise TypeError("a body no parser expected")

    results = run(handler, model_dir, [GOOD[0], (Unreadable(), JSON_TYPE), GOOD[1]])
    assert [status for status, _, _ in results] == [200, 400, 200]
    assert "could not be read (TypeError)" in results[1][1]["error"]


def test_initialize_reads_config_from_the_model_directory(tmp_path, tiny_bert_dir):
    from tests.tiny_models import write_model_dir

    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, MAX_TEXT_CHARS=5)
    handler = SentimentHandler()
    handler.initialize(make_context(model_dir, []))
    assert handler.classifier.config.max_text_chars == 5


def test_a_worker_runs_on_its_assigned_gpu_and_on_the_cpu_without_one():
    assert choose_device(1, cuda_available=True) == "cuda:1"
    assert choose_device(1, cuda_available=False) == "cpu"
    assert choose_device(None, cuda_available=True) == "cpu"


BATCH = ["love the app", "awful waste of time", "easy schedule", "great phone , good app"]


def test_a_batch_request_answers_each_text_in_order_as_singles_do(handler, model_dir):
    singles = [body for _, body, _ in run(handler, model_dir, [({"body": {"text": t}}, JSON_TYPE) for t in BATCH])]
    ((status, body, _),) = run(handler, model_dir, [({"body": {"texts": BATCH}}, JSON_TYPE)])
    assert status == 200
    assert [p["sentiment"] for p in body["predictions"]] == [s["sentiment"] for s in singles]
    for batched, single in zip(body["predictions"], singles, strict=True):
        assert batched["probabilities"] == pytest.approx(single["probabilities"], abs=1e-5)


def test_kserve_v1_bodies_answer_predictions(handler, model_dir):
    # The bodies of KServe's Hugging Face text-classification example.
    v1 = {"instances": ["Hello, my dog is cute", "I am feeling sad"]}
    v1_objects = {"instances": [{"text": "Hello, my dog is cute"}, {"text": "I am feeling sad"}]}
    (first, second) = run(handler, model_dir, [({"body": v1}, JSON_TYPE), ({"body": v1_objects}, JSON_TYPE)])
    assert first[0] == second[0] == 200
    assert first[1] == second[1]
    assert len(first[1]["predictions"]) == 2


def test_kserve_v2_body_answers_output_tensors(handler, model_dir):
    v2 = {
        "id": "42",
        "inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": ["Hello, my dog is cute", "sad"]}],
    }
    ((status, body, _),) = run(handler, model_dir, [({"body": v2}, JSON_TYPE)])
    assert status == 200
    assert body["model_name"] == "sentiment" and body["id"] == "42"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["sentiment"]["shape"] == [2] and outputs["sentiment"]["datatype"] == "BYTES"
    probabilities = outputs["probabilities"]
    assert probabilities["shape"] == [2, 3] and len(probabilities["data"]) == 6
    assert probabilities["parameters"]["class_names"] == "negative,neutral,positive"
    assert sum(probabilities["data"][:3]) == pytest.approx(1.0, abs=1e-4)


def test_every_form_in_one_torchserve_batch_shares_the_forward_passes(handler, model_dir):
    requests = [
        ({"body": {"texts": BATCH}}, JSON_TYPE),
        ({"body": "great phone"}, TEXT_TYPE),
        ({"body": {"instances": BATCH[:2]}}, JSON_TYPE),
        ({"body": {"texts": ["good", 3]}}, JSON_TYPE),
        ({"body": {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": ["bad"]}]}}, JSON_TYPE),
    ]
    encoded, predicted = [], []
    encode, predict = handler.classifier.encode, handler.classifier.predict_encoded
    handler.classifier.encode = lambda texts: encoded.append(len(texts)) or encode(texts)
    handler.classifier.predict_encoded = lambda encodings, *options: (
        predicted.append(len(encodings)) or predict(encodings, *options)
    )
    statuses = [status for status, _, _ in run(handler, model_dir, requests)]
    assert statuses == [200, 200, 200, 400, 200]
    # One tokenizer call and one prediction for all the valid texts of the batch: nothing tokenized twice.
    assert encoded == [4 + 1 + 2 + 1]
    assert predicted == [4 + 1 + 2 + 1]


def test_explanations_and_predictions_in_one_batch_each_get_their_own_answer(handler, model_dir):
    requests = [
        ({"body": {"text": "awful waste of time"}}, JSON_TYPE),
        ({"body": {"text": "awful waste of time"}}, JSON_TYPE),
        ({"body": {"texts": ["love the app", "bad phone"]}}, JSON_TYPE),
        ({"body": {"text": " ".join(["a"] * 33)}}, JSON_TYPE),
        ({"body": {"texts": ["good"] * 3}}, JSON_TYPE),
    ]
    results = run(handler, model_dir, requests, explain={1, 2, 3, 4})
    assert [status for status, _, _ in results] == [200, 200, 200, 400, 400]
    prediction, explanation = results[0][1], results[1][1]
    assert "attributions" not in prediction
    assert [a["word"] for a in explanation["attributions"]] == ["awful", "waste", "of", "time"]
    assert explanation["sentiment"] == prediction["sentiment"]
    assert [len(p["attributions"]) for p in results[2][1]["predictions"]] == [3, 2]
    assert "at most 32 words to explain. Given: 33" in results[3][1]["error"]
    assert "1 to 2 texts. Given: 3" in results[4][1]["error"]


def test_requests_beyond_the_batch_s_work_budget_get_503_with_retry_after(tmp_path, tiny_bert_dir):
    from tests.tiny_models import write_model_dir

    # 64 texts x 16 tokens: the smallest budget the config allows holds one full request.
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, MAX_HANDLE_TOKENS=64 * 16)
    busy = SentimentHandler()
    busy.initialize(make_context(model_dir, []))
    # Truncated, each text is 16 tokens (read whole, 2 windows).
    full = ({"body": {"texts": ["good bad movie phone app time " * 3] * 64, "truncate": True}}, JSON_TYPE)
    nearly_full = ({"body": {"texts": ["good bad movie phone app time " * 3] * 63, "truncate": True}}, JSON_TYPE)
    requests = [nearly_full, ({"body": {"text": "good"}}, JSON_TYPE), full]
    context = make_context(model_dir, [ctype for _, ctype in requests])
    bodies = busy.handle([row for row, _ in requests], context)
    assert [context.get_response_status(i)[0] or 200 for i in range(3)] == [200, 200, 503]
    assert context.get_response_headers(2)["Retry-After"] == "1"
    assert "the server is busy" in json.loads(bodies[2])["error"]


def test_when_every_text_fails_the_batch_fails_as_a_server_error(handler, model_dir, monkeypatch):
    def broken(encodings, *options):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(handler.classifier, "predict_encoded", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(handler, model_dir, GOOD)


def test_every_metric_the_handler_emits_is_declared_in_metrics_yaml(handler, model_dir, caplog):
    """TorchServe publishes only what metrics.yaml declares (auto-detection is off): a metric the
    handler emits under another name, type or dimensions would silently vanish from :8082/metrics."""
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(str(HANDLER_FILE.parents[1] / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "sentiment"
    metrics.set_request_ids({0: "a", 1: "b", 2: "c"})
    declared = set(metrics.cache_keys())
    context = make_context(model_dir, [TEXT_TYPE, JSON_TYPE, JSON_TYPE])
    context.metrics = metrics
    long_text = "great " * 600  # longer than MAX_SEQUENCE_LEN, so SentimentTruncated counts
    with caplog.at_level(logging.INFO):
        handler.handle([b"fine", {"body": {"texts": ["good", long_text]}}, {"body": {"text": 3}}], context)
    assert set(metrics.cache_keys()) == declared, "the handler emitted a metric metrics.yaml does not declare"
    assert "Failed to update metric" not in caplog.text
    emitted = set(re.findall(r"\[METRICS\](\w+)\.", caplog.text))
    assert emitted >= {
        "SentimentRejected",
        "SentimentTruncated",
        "SentimentWindows",
        "SentimentWindowedTexts",
        "SentimentForwardSeconds",
        "SentimentPassKilotokens",
    }


@pytest.mark.parametrize(
    ("stamp", "seconds_ago"),
    [
        ("t={:.3f}", 0.5),  # nginx: proxy_set_header X-Request-Start "t=${msec}"
        ("t={:.0f}", 0.5),  # microseconds (as some proxies send), read by their size
        ("{:.0f}", 0.5),  # milliseconds, no prefix
        ("t=soon", None),
        ("t={:.3f}", None),  # two hours ago: a clock that disagrees, not a queue
    ],
)
def test_the_queue_time_comes_from_the_proxy_s_x_request_start(handler, model_dir, stamp, seconds_ago):
    now = time.time()
    if "soon" in stamp:
        value = stamp
    elif seconds_ago is None:
        value = stamp.format(now - 7200)
    else:
        scale = {"t={:.3f}": 1, "t={:.0f}": 1e6, "{:.0f}": 1e3}[stamp]
        value = stamp.format((now - seconds_ago) * scale)
    context = make_context(model_dir, [JSON_TYPE])
    headers = {"body": {"content-type": JSON_TYPE}, "Content-Type": JSON_TYPE, "X-Request-Start": value}
    context.request_processor = [RequestProcessor(headers)]
    handler.handle([{"body": {"text": "good"}}], context)
    headers = context.get_response_headers(0)
    if seconds_ago is None:
        assert "x-queue-time" not in headers
    else:
        assert 500 <= int(headers["x-queue-time"]) < 5000
    assert headers["x-compute-characters"] == "4"
