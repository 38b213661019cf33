"""TorchServe handler: a thin adapter between TorchServe's batches and `SentimentClassifier`.

TorchServe accepts exactly one class in this module; everything else lives in the package
`sentiment.serving`, which the archive ships beside it (and which the worker imports from there).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import sentiment.serving
from sentiment.serving.classifier import Prediction, SentimentClassifier, choose_device
from sentiment.serving.config import ModelConfig
from sentiment.serving.request_parsing import InvalidRequest, extract_text

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
        transformers_logging.set_verbosity_error()
        properties = context.system_properties
        config = ModelConfig.from_file(Path(properties["model_dir"]) / "config.json")
        device = choose_device(properties.get("gpu_id"), torch.cuda.is_available())
        # Which copy of the serving code runs: the archive's own, not one that happens to be installed.
        log.info("serving code from %s", Path(sentiment.serving.__file__).parent)
        self.classifier = SentimentClassifier(config, device).load()
        self.initialized = True

    def preprocess(self, data: list, context) -> list[str | InvalidRequest]:
        """One entry per request: its text, or the reason it cannot be classified."""
        outcomes: list[str | InvalidRequest] = []
        for idx, row in enumerate(data):
            try:
                outcomes.append(
                    extract_text(row, _content_type(context, idx, row), self.classifier.config.max_text_chars)
                )
            except InvalidRequest as error:
                outcomes.append(error)
        return outcomes

    def inference(self, texts: list[str]) -> list[Prediction]:
        return self.classifier.predict(texts)

    def postprocess(self, outcomes: list, predictions: list[Prediction], context) -> list[str]:
        responses = []
        remaining = iter(predictions)
        for idx, outcome in enumerate(outcomes):
            context.set_response_content_type(idx, JSON)
            if isinstance(outcome, InvalidRequest):
                context.set_response_status(400, "Bad Request", idx=idx)
                responses.append(json.dumps({"error": str(outcome)}))
            else:
                responses.append(json.dumps(next(remaining).to_dict()))
        return responses

    def handle(self, data: list, context) -> list[str]:
        outcomes = self.preprocess(data, context)
        texts = [outcome for outcome in outcomes if isinstance(outcome, str)]
        _count(context, batches=1, requests=len(outcomes), rejected=len(outcomes) - len(texts))
        return self.postprocess(outcomes, self.inference(texts), context)


def _count(context, **counters: int) -> None:
    """Prometheus counters (Sentiment{Batches,Requests,Rejected}): requests/batches is the mean batch."""
    if context.metrics is None:  # unit tests
        return
    for name, value in counters.items():
        context.metrics.add_counter(f"Sentiment{name.capitalize()}", value)


def _content_type(context, idx: int, row) -> str | None:
    """The Content-Type the client declared: TorchServe keeps it per body parameter."""
    for name in ("data", "body"):
        if isinstance(row, dict) and name in row:
            declared = context.get_request_header(idx, name)
            if isinstance(declared, dict):
                return declared.get("content-type")
    return context.get_request_header(idx, "Content-Type") or context.get_request_header(idx, "content-type")
