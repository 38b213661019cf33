"""Long texts read whole: windows, their aggregation, the request options and what admission counts."""

from __future__ import annotations

import itertools
import json
import time

import pytest
import torch

from sentiment.project import DEFAULT_CONFIG
from sentiment.serving import windows as windowing
from sentiment.serving.batch import Incoming, WorkBudget, answer_batch
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ConfigError, ModelConfig
from sentiment.serving.contract import InvalidRequest, parse_request
from tests.tiny_models import write_model_dir

JSON = "application/json"
# 30 words of the tiny vocabulary: 32 tokens with [CLS] and [SEP], over the tiny model's window of 16.
LONG = "good bad movie phone app time " * 5


def budget(tokens: int = 100_000) -> WorkBudget:
    return WorkBudget(tokens, tokens_per_second=1000.0, response_timeout=4.0)


def test_a_long_text_is_read_in_overlapping_windows_that_cover_it(classifier):
    encoding = classifier.encode([LONG])[0]
    reading = windowing.windows(encoding)
    window, overlap = classifier.config.max_sequence_len, classifier.config.window_overlap
    assert len(reading) > 1
    assert all(len(w) <= window for w in reading)
    # The first window is what truncation reads; the others overlap their predecessor by WINDOW_OVERLAP tokens.
    assert windowing.windows(encoding, truncate=True) == [encoding]
    for before, after in itertools.pairwise(reading):
        assert before.ids[-1 - overlap : -1] == after.ids[1 : 1 + overlap]
    spans = [windowing.span(w) for w in reading]
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG.rstrip())
    assert all(start < end_before for (_, end_before), (start, _) in itertools.pairwise(spans))


def test_a_text_that_fits_one_window_is_answered_exactly_as_truncation_answers_it(classifier):
    texts = ["good", "awful waste of time", "good bad movie phone app time good bad"]
    assert classifier.predict(texts) == classifier.predict(texts, truncate=True)
    assert all(len(windowing.windows(e)) == 1 for e in classifier.encode(texts))


def test_the_default_model_reads_short_sentences_as_truncation_does_and_long_ones_whole():
    """The served default: 256 sentences (tweets, CJK, emoji) answer identically read whole or truncated
    when they fit 128 tokens; the one that does not is read in windows and says it was read whole."""
    from tests.sentences import mixed_sentences

    classifier = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load()
    texts = mixed_sentences(256)
    whole, truncated = classifier.predict(texts), classifier.predict(texts, truncate=True)
    long = [i for i, e in enumerate(classifier.encode(texts)) if e.overflowing]
    assert long == [0]  # "great " * 300
    assert [p for i, p in enumerate(whole) if i not in long] == [p for i, p in enumerate(truncated) if i not in long]
    assert truncated[0].truncated and not whole[0].truncated


@pytest.mark.parametrize("rule", windowing.AGGREGATIONS)
def test_every_aggregation_gives_probabilities_and_leaves_one_window_alone(classifier, rule):
    reading = windowing.windows(classifier.encode([LONG])[0])
    probabilities = torch.softmax(torch.randn(len(reading), 3), dim=-1)
    combined = windowing.aggregate(probabilities, reading, rule)
    assert combined.shape == (3,)
    assert torch.isclose(combined.sum(), torch.tensor(1.0))
    assert probabilities.min(dim=0).values.le(combined + 1e-6).all() or rule == "geometric"
    assert torch.equal(windowing.aggregate(probabilities[:1], reading[:1], rule), probabilities[0])


def test_the_aggregation_rules_weigh_windows_as_documented(classifier):
    reading = windowing.windows(classifier.encode([LONG])[0])[:3]
    p = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]])
    assert torch.allclose(windowing.aggregate(p, reading, "mean"), p.mean(dim=0))
    ends = (2 * p[0] + p[1] + 2 * p[2]) / 5
    assert torch.allclose(windowing.aggregate(p, reading, "ends"), ends)
    lengths = torch.tensor([float(windowing.content_tokens(w)) for w in reading])
    assert torch.allclose(windowing.aggregate(p, reading, "length"), (p * lengths[:, None]).sum(0) / lengths.sum())
    confidence = torch.tensor([0.8, 0.6, 0.8])
    assert torch.allclose(
        windowing.aggregate(p, reading, "confidence"), (p * confidence[:, None]).sum(0) / confidence.sum()
    )
    geometric = p.log().mean(dim=0).exp()
    assert torch.allclose(windowing.aggregate(p, reading, "geometric"), geometric / geometric.sum())


def test_the_answer_of_a_long_text_is_its_windows_combined_and_the_detail_lists_them(classifier):
    prediction = classifier.predict([LONG], detail=True)[0]
    assert prediction.truncated is False
    assert len(prediction.windows) == len(windowing.windows(classifier.encode([LONG])[0]))
    names = classifier.config.class_names
    rows = torch.tensor([[w["probabilities"][name] for name in names] for w in prediction.windows])
    mean = rows.mean(dim=0)  # WINDOW_AGGREGATION is mean
    assert [round(float(v), 5) for v in mean] == [round(prediction.probabilities[name], 5) for name in names]
    first = classifier.predict([LONG], truncate=True)[0]
    assert first.truncated is True and first.windows is None and "windows" not in first.to_dict()
    assert prediction.windows[0]["probabilities"] == first.probabilities
    assert classifier.predict(["good"], detail=True)[0].windows == [
        {"start": 0, "end": 4, "probabilities": classifier.predict(["good"])[0].probabilities}
    ]


@pytest.mark.parametrize("rule", windowing.AGGREGATIONS)
def test_a_long_text_s_answer_is_the_same_alone_and_among_other_texts(tmp_path, tiny_bert_dir, rule):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION="int8", WINDOW_AGGREGATION=rule)
    classifier = SentimentClassifier(ModelConfig.from_file(model_dir / "config.json")).load()
    texts = [LONG, "good", LONG + " awful", "bad movie", LONG * 2]
    alone = [classifier.predict([text])[0] for text in texts]
    assert classifier.predict(texts) == alone
    assert classifier.predict(texts[::-1]) == alone[::-1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"WINDOW_OVERLAP_PERCENT": 60}, "WINDOW_OVERLAP_PERCENT must be within 0..50"),
        ({"WINDOW_AGGREGATION": "max"}, "WINDOW_AGGREGATION must be one of"),
        ({"TRUNCATE": "yes"}, "TRUNCATE must be true or false"),
    ],
)
def test_window_settings_are_checked(change, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig().with_keys(**change)


def test_truncate_true_in_the_config_keeps_the_old_reading(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, TRUNCATE=True)
    classifier = SentimentClassifier(ModelConfig.from_file(model_dir / "config.json")).load()
    assert classifier.predict([LONG])[0].truncated is True
    assert classifier.predict([LONG], truncate=False)[0].truncated is False


V2 = {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "data": ["good"]}]}


@pytest.mark.parametrize(
    ("body", "options"),
    [
        ({"text": "good", "truncate": True}, (True, False)),
        ({"texts": ["good"], "windows": True}, (None, True)),
        ({"instances": ["good"], "truncate": False, "windows": True}, (False, True)),
        ({**V2, "parameters": {"truncate": True, "windows": True}}, (True, True)),
        ({**V2, "id": "7"}, (None, False)),
        ({"texts": ["good"]}, (None, False)),
    ],
)
def test_options_are_read_in_every_json_form(body, options):
    request = parse_request(json.dumps(body).encode(), JSON, 100, 4)
    assert (request.truncate, request.windows) == options


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"text": "good", "trunate": True}, 'unknown field "trunate"'),
        ({"texts": ["good"], "truncate": "yes"}, "truncate must be true or false, got a string"),
        ({"instances": ["good"], "windows": 1}, "windows must be true or false, got a number"),
        ({**V2, "parameters": {"truncated": True}}, 'unknown parameter "truncated"'),
        ({**V2, "parameters": ["truncate"]}, "parameters must be an object, got an array"),
        ({**V2, "parameters": {"windows": None}}, "parameters.windows must be true or false, got null"),
        ({**V2, "options": {}}, 'unknown field "options"'),
    ],
)
def test_a_misspelt_or_mistyped_option_is_refused_naming_it(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_request(json.dumps(body).encode(), JSON, 100, 4)


def test_every_form_answers_with_the_windows_when_asked(classifier):
    bodies = [
        {"text": LONG, "windows": True},
        {"texts": [LONG, "good"], "windows": True},
        {"instances": [{"text": LONG}], "windows": True},
        {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": [LONG]}], "parameters": {"windows": True}},
    ]
    replies, _ = answer_batch([Incoming(body, JSON) for body in bodies], classifier, budget(), "s")
    assert [reply.status for reply in replies] == [200] * 4
    expected = classifier.predict([LONG], detail=True)[0].to_dict()
    assert replies[0].body == expected
    assert replies[1].body["predictions"][0] == expected
    assert replies[2].body["predictions"][0] == expected
    outputs = {output["name"]: output for output in replies[3].body["outputs"]}
    assert json.loads(outputs["windows"]["data"][0]) == expected["windows"]
    assert outputs["truncated"]["data"] == [False]


def test_truncate_in_a_request_reads_the_first_window_only(classifier):
    replies, stats = answer_batch(
        [Incoming({"text": LONG, "truncate": True}, JSON), Incoming({"text": LONG}, JSON)], classifier, budget(), "s"
    )
    assert replies[0].body == classifier.predict([LONG], truncate=True)[0].to_dict()
    assert replies[0].body["truncated"] is True
    assert replies[1].body == classifier.predict([LONG])[0].to_dict()
    windows = len(windowing.windows(classifier.encode([LONG])[0]))
    assert (stats.truncated, stats.windows, stats.windowed) == (1, 1 + windows, 1)


def test_admission_counts_every_window_and_names_truncate_as_the_way_out(classifier):
    reading = windowing.windows(classifier.encode([LONG])[0])
    whole, first = sum(len(w) for w in reading), len(reading[0])
    replies, _ = answer_batch(
        [Incoming({"text": LONG}, JSON), Incoming({"text": LONG, "truncate": True}, JSON)],
        classifier,
        budget(whole - 1),
        "s",
    )
    assert replies[0].status == 413
    assert f"needs {whole} tokens" in replies[0].body["error"] and '"truncate": true' in replies[0].body["error"]
    assert replies[1].status == 200 and replies[1].headers["x-compute-tokens"] == str(first)


def test_answers_carry_tei_s_timing_headers_and_the_queue_time_where_the_arrival_is_known(classifier):
    arrived = time.time() - 0.25
    replies, _ = answer_batch(
        [Incoming({"text": "good"}, JSON), Incoming({"text": LONG}, JSON, arrived=arrived), Incoming("", JSON)],
        classifier,
        budget(),
        "s",
    )
    plain, stamped, bad = (reply.headers for reply in replies)
    assert plain["x-compute-type"] == "cpu" and plain["x-compute-characters"] == "4"
    assert {"x-compute-time", "x-tokenization-time", "x-inference-time", "x-compute-tokens"} <= set(plain)
    assert "x-queue-time" not in plain
    assert 250 <= int(stamped["x-queue-time"]) < 10_000
    # Each rounded to whole milliseconds on its own.
    assert abs(int(stamped["x-total-time"]) - int(stamped["x-queue-time"]) - int(stamped["x-compute-time"])) <= 1
    assert int(stamped["x-compute-tokens"]) > classifier.config.max_sequence_len
    assert bad == {}


def test_a_long_text_is_explained_read_whole_each_variant_in_its_windows(classifier):
    """Explanations read a long text as predictions do: the attributions explain the answer the text gets."""
    text = "good bad movie phone app time " * 3 + "awful"  # 19 words, 21 tokens: windows of 16
    assert len(windowing.windows(classifier.encode([text])[0])) > 1
    replies, stats = answer_batch(
        [Incoming({"text": text}, JSON, explain=True), Incoming({"text": text, "truncate": True}, JSON, explain=True)],
        classifier,
        budget(),
        "s",
    )
    whole, truncated = replies[0].body, replies[1].body
    assert {key: whole[key] for key in ("sentiment", "probabilities", "truncated")} == {
        key: value for key, value in classifier.predict([text])[0].to_dict().items() if key != "confidence"
    }
    assert whole["truncated"] is False and truncated["truncated"] is True
    assert [a["word"] for a in whole["attributions"]] == text.split()
    assert whole["attributions"] != truncated["attributions"]  # the last word, "awful", is read only whole
    assert stats.windowed > 1


def test_an_explanation_too_large_for_the_budget_is_refused_naming_it(classifier):
    text = "good bad movie phone app time " * 3 + "awful"
    replies, _ = answer_batch([Incoming({"text": text}, JSON, explain=True)], classifier, budget(100), "s")
    assert replies[0].status == 413
    assert "explanation variants, long texts read whole in windows" in replies[0].body["error"]
