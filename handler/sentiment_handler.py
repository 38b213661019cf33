"""TorchServe handler: a thin adapter between TorchServe's batches and the serving core.

It maps TorchServe's rows and context to plain `Incoming` requests, hands them to
`sentiment.serving.batch.answer_batch`, and maps the replies back (status, headers, JSON body),
emitting the metrics. TorchServe accepts exactly one class in this module; everything else lives in
the package `sentiment.serving`, which the archive ships beside it.
"""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus
from pathlib import Path

import sentiment.serving
from sentiment.serving.batch import BatchStats, Incoming, WorkBudget, answer_batch
from sentiment.serving.classifier import SentimentClassifier, choose_device
from sentiment.serving.config import ModelConfig

log = logging.getLogger(__name__)

JSON = "application/json"
# TorchServe's own default, for an archive whose model-config.yaml does not set one.
DEFAULT_RESPONSE_TIMEOUT = 120


class SentimentHandler:
    def __init__(self):
        self.classifier: SentimentClassifier | None = None
        self.budget: WorkBudget | None = None
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
        self.budget = WorkBudget.measure(self.classifier, response_timeout(context))
        self.initialized = True

    def handle(self, data: list, context) -> list[str]:
        incoming = [
            Incoming(
                body=_body(row),
                content_type=_content_type(context, idx, row),
                # The frontend sets "explain" from the path (/explanations/...), over any header a client sends.
                explain=context.get_request_header(idx, "explain") == "True",
                arrived=_arrival(context, idx),
            )
            for idx, row in enumerate(data)
        ]
        replies, stats = answer_batch(incoming, self.classifier, self.budget, context.model_name)
        _emit_metrics(context, stats)
        bodies = []
        for idx, reply in enumerate(replies):
            context.set_response_content_type(idx, JSON)
            if reply.status != 200:
                context.set_response_status(reply.status, HTTPStatus(reply.status).phrase, idx=idx)
            for name, value in reply.headers.items():
                context.set_response_header(idx, name, value)
            bodies.append(json.dumps(reply.body) + "\n")  # a line of its own, as curl users expect
        return bodies


def _body(row):
    """The request's body from TorchServe's row ({"body": ...} or {"data": ...}), or the exception reading
    it raised: the core answers that request 400 and the others as usual."""
    try:
        return row.get("data", row.get("body")) if isinstance(row, dict) else row
    except Exception as error:
        return error


def _arrival(context, idx: int) -> float | None:
    """When the request reached the proxy in front, from its X-Request-Start header (nginx: `t=${msec}`,
    seconds; others send milli- or microseconds): TorchServe does not tell the worker when a request came
    in. None without the header, or with a value that is not a time within the last hour."""
    stamp = context.get_request_header(idx, "X-Request-Start") or context.get_request_header(idx, "x-request-start")
    if not isinstance(stamp, str):
        return None
    try:
        value = float(stamp.removeprefix("t=").strip())
    except ValueError:
        return None
    for scale in (1.0, 1e3, 1e6):  # seconds, milliseconds, microseconds since the epoch
        if 0 <= time.time() - value / scale < 3600:
            return value / scale
    return None


def response_timeout(context) -> float:
    """The archive's responseTimeout (model-config.yaml), in seconds."""
    settings = getattr(context, "model_yaml_config", None) or {}
    return float(settings.get("responseTimeout", DEFAULT_RESPONSE_TIMEOUT))


def _emit_metrics(context, stats: BatchStats) -> None:
    """Counters (Sentiment{Batches,Requests,Rejected,Texts}: requests/batches is the mean batch) and
    histograms per batch and per forward pass. TorchServe 0.12 gives a handler's histograms
    Prometheus' default buckets (0.005 to 10), so sizes go out in thousands of tokens and hundreds of
    texts to land in them."""
    if context.metrics is None:  # unit tests
        return
    from ts.metrics.metric_type_enum import MetricTypes

    counters = {
        "Batches": 1,
        "Requests": stats.requests,
        "Rejected": stats.rejected,
        "Texts": stats.texts,
        # SentimentWindows / SentimentTexts: windows read per text; SentimentWindowedTexts: texts read in several.
        "Windows": stats.windows,
        "WindowedTexts": stats.windowed,
    }
    for name, value in counters.items():
        context.metrics.add_counter(f"Sentiment{name}", value)
    if not stats.passes:  # a batch of rejections only
        return

    def observe(name: str, value: float, unit: str) -> None:
        context.metrics.add_metric(name, value, unit, metric_type=MetricTypes.HISTOGRAM)

    observe("SentimentTokenizeSeconds", stats.tokenize_seconds, "Seconds")
    observe("SentimentForwardSeconds", stats.forward_seconds, "Seconds")
    for texts, tokens in stats.passes:
        observe("SentimentPassHectotexts", texts / 100, "Hectotexts")
        observe("SentimentPassKilotokens", tokens / 1000, "Kilotokens")
    context.metrics.add_counter("SentimentTruncated", stats.truncated)


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
