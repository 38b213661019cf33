"""TorchServe handler: a thin adapter between TorchServe's batches and `SentimentClassifier`.

TorchServe accepts exactly one class in this module; everything else lives in the package
`sentiment.serving`, which the archive ships beside it (and which the worker imports from there).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from pathlib import Path

import sentiment.serving
from sentiment.serving.classifier import PassStats, SentimentClassifier, choose_device
from sentiment.serving.config import ModelConfig
from sentiment.serving.contract import (
    EXAMPLE,
    InvalidRequest,
    ParsedRequest,
    ServerBusy,
    UnprocessableText,
    parse_explanation_request,
    parse_request,
    render,
)

log = logging.getLogger(__name__)

JSON = "application/json"


class SentimentHandler:
    def __init__(self):
        self.classifier: SentimentClassifier | None = None
        self.initialized = False

    def initialize(self, context) -> None:
        import torch
        from transformers.utils import logging as transformers_logging

        # Its load report lists the head tensors as "newly initialized"; they come from our weights.
        # Its progress bars would land in model_log.log as warnings.
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        properties = context.system_properties
        config = ModelConfig.from_file(Path(properties["model_dir"]) / "config.json")
        device = choose_device(properties.get("gpu_id"), torch.cuda.is_available())
        # Which copy of the serving code runs: the archive's own, not one that happens to be installed.
        log.info("serving code from %s", Path(sentiment.serving.__file__).parent)
        self.classifier = SentimentClassifier(config, device).load()
        self.initialized = True

    def preprocess(self, data: list, context) -> list[ParsedRequest | InvalidRequest]:
        """One entry per request: its texts, or the reason it cannot be classified."""
        config = self.classifier.config
        outcomes: list[ParsedRequest | InvalidRequest] = []
        for idx, row in enumerate(data):
            try:
                content_type = _content_type(context, idx, row)
                # The frontend sets "explain" from the path (/explanations/...), over any header a client sends.
                if context.get_request_header(idx, "explain") == "True":
                    outcomes.append(parse_explanation_request(row, content_type, config))
                else:
                    outcomes.append(parse_request(row, content_type, config.max_text_chars, config.max_batch_texts))
            except InvalidRequest as error:
                outcomes.append(error)
            except Exception as error:  # whatever one body does, it must not fail the others
                log.warning("request %d of the batch could not be read: %s", idx, type(error).__name__)
                outcomes.append(InvalidRequest(f"request could not be read ({type(error).__name__}): {EXAMPLE}"))
        return self._admit(outcomes)

    def _admit(self, outcomes: list) -> list:
        """The requests, in arrival order, while the batch's estimated work fits MAX_HANDLE_TOKENS; the
        rest get 503, so that no batch runs near responseTimeout (which would fail all of it)."""
        config, spent = self.classifier.config, 0
        admitted = []
        for outcome in outcomes:
            if isinstance(outcome, ParsedRequest):
                cost = outcome.estimated_tokens(config.max_sequence_len)
                if spent and spent + cost > config.max_handle_tokens:
                    outcome = ServerBusy(
                        f"the server is busy: this batch already carries {spent} of its {config.max_handle_tokens} "
                        f"tokens of work and this request needs {cost}; retry in a second"
                    )
                else:
                    spent += cost
            admitted.append(outcome)
        return admitted

    def inference(self, texts: list[str], explain: list[str]) -> tuple[list, list]:
        """Every text of every request of the batch together, in forward passes the token budget
        bounds; then the texts to explain. A text the model fails on fails alone (an exception in
        its place), unless every text fails: that is the server's fault, and the batch fails."""
        predictions = self.classifier.predict_isolated(texts)
        explanations = self.classifier.explain(explain)
        results = predictions + explanations
        if len(results) > 1 and all(isinstance(result, Exception) for result in results):
            raise results[0]
        return predictions, explanations

    def postprocess(self, outcomes: list, results: tuple[list, list], context) -> list[str]:
        """One JSON body per request, in order: its answer, or an error with its own status."""
        predictions, explanations = (iter(part) for part in results)
        responses = []
        for idx, outcome in enumerate(outcomes):
            answer = outcome
            if isinstance(outcome, ParsedRequest):
                source = explanations if outcome.explain else predictions
                answers = [next(source) for _ in outcome.texts]
                answer = _failure(outcome, answers) or render(
                    outcome, [a.to_dict() for a in answers], context.model_name, self.classifier.config.class_names
                )
            context.set_response_content_type(idx, JSON)
            if isinstance(answer, InvalidRequest):
                context.set_response_status(answer.status, HTTPStatus(answer.status).phrase, idx=idx)
                for name, value in answer.headers.items():
                    context.set_response_header(idx, name, value)
                answer = {"error": str(answer)}
            responses.append(json.dumps(answer))
        return responses

    def handle(self, data: list, context) -> list[str]:
        outcomes = self.preprocess(data, context)
        accepted = [outcome for outcome in outcomes if isinstance(outcome, ParsedRequest)]
        texts = [text for request in accepted if not request.explain for text in request.texts]
        explain = [text for request in accepted if request.explain for text in request.texts]
        rejected = len(outcomes) - len(accepted)
        _count(context, batches=1, requests=len(outcomes), rejected=rejected, texts=len(texts) + len(explain))
        self.classifier.stats = PassStats()
        results = self.inference(texts, explain)
        _observe(context, self.classifier.stats)
        return self.postprocess(outcomes, results, context)


def _failure(request: ParsedRequest, predictions: list) -> UnprocessableText | None:
    """A 422 naming the first text of the request that the model failed on, if any."""
    for i, prediction in enumerate(predictions):
        if isinstance(prediction, Exception):
            where = "" if request.form == "single" else f"text {i} of the request: "
            return UnprocessableText(f"{where}the model could not classify this text ({type(prediction).__name__})")
    return None


def _observe(context, stats: PassStats) -> None:
    """Histograms per TorchServe batch and per forward pass. TorchServe 0.12 gives a handler's
    histograms Prometheus' default buckets (0.005 to 10), so sizes go out in thousands of tokens
    and hundreds of texts to land in them."""
    if context.metrics is None or not stats.passes:  # unit tests; a batch of rejections only
        return
    from ts.metrics.metric_type_enum import MetricTypes

    def observe(name: str, value: float, unit: str) -> None:
        context.metrics.add_metric(name, value, unit, metric_type=MetricTypes.HISTOGRAM)

    observe("SentimentTokenizeSeconds", stats.tokenize_seconds, "Seconds")
    observe("SentimentForwardSeconds", stats.forward_seconds, "Seconds")
    for texts, tokens in stats.passes:
        observe("SentimentPassHectotexts", texts / 100, "Hectotexts")
        observe("SentimentPassKilotokens", tokens / 1000, "Kilotokens")
    context.metrics.add_counter("SentimentTruncated", stats.truncated)


def _count(context, **counters: int) -> None:
    """Prometheus counters (Sentiment{Batches,Requests,Rejected,Texts}): requests/batches is the mean batch."""
    if context.metrics is None:  # unit tests
        return
    for name, value in counters.items():
        context.metrics.add_counter(f"Sentiment{name.capitalize()}", value)


def _content_type(context, idx: int, row) -> str | None:
    """The Content-Type the client declared, parameters (charset) included.

    TorchServe passes the request's HTTP headers, and per body parameter its media type only.
    """
    declared = context.get_request_header(idx, "Content-Type") or context.get_request_header(idx, "content-type")
    if declared:
        return declared
    for name in ("data", "body"):
        if isinstance(row, dict) and name in row:
            parameter = context.get_request_header(idx, name)
            if isinstance(parameter, dict):
                return parameter.get("content-type")
    return None
