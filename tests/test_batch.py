"""The serving core without TorchServe: parse, count tokens, admit, predict, regroup, render."""

from __future__ import annotations

import time

import pytest

from sentiment.serving.batch import TIMEOUT_FRACTION, Incoming, WorkBudget, answer_batch
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from tests.tiny_models import write_model_dir

JSON = "application/json"


def budget(tokens: int) -> WorkBudget:
    return WorkBudget(tokens, tokens_per_second=1000.0, response_timeout=4.0)


def texts_request(texts: list[str]) -> Incoming:
    return Incoming({"texts": texts}, JSON)


def test_replies_come_back_in_order_each_with_its_own_status(classifier):
    incoming = [
        Incoming(b"great phone", "text/plain"),
        Incoming(b'{"texts": ["good", ""]}', JSON),
        Incoming({"text": "awful waste of time"}, JSON),
        Incoming(b"\x89PNG", "image/png"),
    ]
    replies, stats = answer_batch(incoming, classifier, budget(10_000), "sentiment")
    assert [reply.status for reply in replies] == [200, 400, 200, 415]
    assert replies[1].body == {"error": "texts[1] is empty or whitespace only"}
    assert replies[0].body == classifier.predict(["great phone"])[0].to_dict()
    assert replies[2].body == classifier.predict(["awful waste of time"])[0].to_dict()
    assert (stats.requests, stats.rejected, stats.texts) == (4, 2, 2)


def test_admission_counts_the_tokenizer_s_tokens_not_characters(classifier):
    """Text BERT splits per character (CJK) costs about four times what a characters/4 estimate says: the
    budget must see the true count, or a batch would run far past it."""
    cjk = "这个手机很好用我喜欢"  # 10 characters: 10 tokens + [CLS] [SEP]
    (encoding,) = classifier.encode([cjk])
    assert len(encoding.ids) == 12 > len(cjk) // 4 + 2
    replies, stats = answer_batch(
        [texts_request([cjk] * 3), texts_request([cjk] * 3)], classifier, budget(3 * 12), "sentiment"
    )
    assert [reply.status for reply in replies] == [200, 503]
    assert replies[1].headers == {"Retry-After": "1"}
    assert "already carries 36 of its 36 tokens of work and this request needs 36" in replies[1].body["error"]
    assert stats.tokens == 36


def test_a_request_larger_than_the_budget_alone_gets_413_naming_the_limit(classifier):
    replies, _ = answer_batch(
        [texts_request(["good movie"] * 8), Incoming("bad", "text/plain")], classifier, budget(20), "sentiment"
    )
    assert [reply.status for reply in replies] == [413, 200]
    error = replies[0].body["error"]
    assert "this request needs 32 tokens of model work" in error
    assert "at most 20 tokens of model work per batch" in error
    assert "25% of its 4 s response timeout at its measured 1000 tokens/s" in error


def test_explanation_variants_count_against_the_budget(classifier):
    explain = Incoming({"text": "love the app"}, JSON, explain=True)  # itself and 3 variants: 5+4+4+4 tokens
    replies, stats = answer_batch([explain], classifier, budget(17), "sentiment")
    assert replies[0].status == 200 and stats.tokens == 17
    replies, _ = answer_batch([explain], classifier, budget(16), "sentiment")
    assert replies[0].status == 413


def test_texts_are_tokenized_once_and_the_ids_go_to_the_model(classifier, monkeypatch):
    calls = []
    encode = classifier.encode
    monkeypatch.setattr(classifier, "encode", lambda texts: calls.append(list(texts)) or encode(texts))
    monkeypatch.setattr(classifier, "predict", None)  # the core must not tokenize again through predict()
    incoming = [texts_request(["good", "bad"]), Incoming({"text": "good app"}, JSON, explain=True)]
    replies, _ = answer_batch(incoming, classifier, budget(1000), "sentiment")
    assert [reply.status for reply in replies] == [200, 200]
    assert calls == [["good", "bad", "good app", "app", "good"]]


def test_an_answer_does_not_depend_on_the_requests_it_shares_a_batch_with(classifier):
    text = "awful waste of time , bad phone"
    (alone,), _ = answer_batch([Incoming(text, "text/plain")], classifier, budget(10_000), "sentiment")
    crowd = [texts_request(["great " * 40, "good", "love the app"] * 20), Incoming(text, "text/plain")]
    replies, _ = answer_batch(crowd, classifier, budget(10_000), "sentiment")
    assert replies[1].body == alone.body


def test_the_budget_is_what_the_worker_runs_in_a_quarter_of_the_timeout(tmp_path, tiny_bert_dir):
    """A model made slow on purpose: every forward pass takes at least 50 ms. The budget follows its
    speed, and a full request that no longer fits is refused with 413 instead of timing out."""
    classifier = SentimentClassifier(
        ModelConfig.from_file(write_model_dir(tmp_path / "m", tiny_bert_dir) / "config.json")
    ).load()
    forward = classifier.forward

    def slow(inputs):
        time.sleep(0.05)
        return forward(inputs)

    classifier.forward = slow
    measured = WorkBudget.measure(classifier, response_timeout=0.2)
    config = classifier.config
    pass_tokens = (config.max_batch_tokens // config.max_sequence_len) * config.max_sequence_len
    assert measured.tokens_per_second <= pass_tokens / 0.05
    assert measured.tokens == int(measured.tokens_per_second * 0.2 * TIMEOUT_FRACTION)
    assert measured.tokens < config.max_batch_texts * config.max_sequence_len  # a full request no longer fits
    full = texts_request(["good bad movie phone app time " * 3] * config.max_batch_texts)
    replies, _ = answer_batch([full], classifier, measured, "sentiment")
    assert replies[0].status == 413


def test_the_budget_never_exceeds_max_handle_tokens(classifier):
    measured = WorkBudget.measure(classifier, response_timeout=1000.0)
    assert measured.tokens == classifier.config.max_handle_tokens


@pytest.mark.parametrize("explain", [False, True])
def test_when_every_text_fails_the_batch_fails(classifier, monkeypatch, explain):
    def broken(encodings, *options):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(classifier, "predict_encoded", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        answer_batch([Incoming("good app", "text/plain", explain=explain)] * 2, classifier, budget(1000), "s")


def test_an_explanation_s_prediction_is_the_prediction_of_the_same_text(classifier):
    """The explanation runs the text among its variants; its answer is still the text's own."""
    text = "awful waste of time , love the app though"
    replies, _ = answer_batch(
        [Incoming(text, "text/plain"), Incoming(text, "text/plain", explain=True)], classifier, budget(10_000), "s"
    )
    prediction, explanation = replies[0].body, replies[1].body
    assert {key: explanation[key] for key in prediction} == prediction


def test_a_text_the_tokenizer_fails_on_fails_its_request_alone(classifier, monkeypatch):
    encode = classifier.encode

    def breaks_on_poison(texts):
        if "poison" in texts:
            raise ValueError("the tokenizer broke")
        return encode(texts)

    monkeypatch.setattr(classifier, "encode", breaks_on_poison)
    incoming = [Incoming("good app", "text/plain"), texts_request(["bad", "poison"]), Incoming("bad", "text/plain")]
    replies, _ = answer_batch(incoming, classifier, budget(1000), "s")
    assert [reply.status for reply in replies] == [200, 400, 200]
    assert replies[1].body == {"error": "a text of this request could not be tokenized (ValueError)"}
