"""The serving core: the requests of one batch in, one reply per request out, nothing of TorchServe.

    answer_batch(incoming, classifier, budget, model_name) -> (replies, stats)

Each request is parsed (`contract`), its texts tokenized once (the token ids go on to the model as
they are), admitted against the batch's token budget by their true token counts, and then every
admitted text of every request runs through the model together, in the classifier's length-sorted
passes. A text's answer does not depend on the others (see `packed`), so batching changes nothing
but the speed. Replies come back in request order, each with its own status: a bad request never
fails its neighbours.

Every answer carries text-embeddings-inference's timing headers (whole milliseconds): `x-compute-time`
(this batch in the worker, parsing to answers), `x-tokenization-time` and `x-inference-time` (the
batch's tokenizer call and forward passes, shared by its requests), `x-compute-characters` and
`x-compute-tokens` (the request's own), `x-compute-type`; and `x-queue-time` / `x-total-time` where the
request says when it arrived (`Incoming.arrived`: TorchServe does not tell a worker how long a request
queued, a proxy in front can, with X-Request-Start).

The token budget per batch is what the worker measured it can run in a quarter of its
`responseTimeout` (`WorkBudget.measure`): the heaviest admitted batch finishes in a quarter of the
timeout at the measured speed, so a worker slowed three times over (another process on its core, a
noisy neighbour) still answers inside the timeout, and TorchServe never kills a worker for it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from sentiment.serving.classifier import PassStats, explanation, explanation_variants
from sentiment.serving.contract import (
    EXAMPLE,
    InvalidRequest,
    ParsedRequest,
    ServerBusy,
    TooMuchWork,
    UnprocessableText,
    parse_explanation_request,
    parse_request,
    render,
)
from sentiment.serving.windows import windows

log = logging.getLogger(__name__)

# The share of responseTimeout that the heaviest admitted batch may take at the measured speed.
TIMEOUT_FRACTION = 0.25


@dataclass(frozen=True)
class Incoming:
    """One request as the server received it."""

    # bytes, a str, or JSON a front end already parsed; None when there was none; the exception the front
    # end met reading it, if it met one
    body: Any
    content_type: str | None  # as the client declared it, parameters included; None if it declared none
    explain: bool = False  # an explanation request (/explanations)
    arrived: float | None = None  # when the request reached the server (epoch seconds), where known


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # JSON: the answer, or {"error": message}
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class BatchStats(PassStats):
    """What one batch held and cost: for the server's metrics."""

    requests: int = 0
    rejected: int = 0  # requests answered with an error
    texts: int = 0  # texts the model ran, explanation variants included
    tokens: int = 0  # their tokens, as admitted (every window)


@dataclass(frozen=True)
class WorkBudget:
    """How many tokens of model work one batch may carry."""

    tokens: int
    tokens_per_second: float  # measured at start (0 when not measured)
    response_timeout: float  # seconds

    @classmethod
    def measure(cls, classifier, response_timeout: float) -> WorkBudget:
        """The budget for this worker: what it runs in TIMEOUT_FRACTION of `response_timeout` at the speed it
        measures now, on texts of MAX_SEQUENCE_LEN tokens, at most MAX_HANDLE_TOKENS."""
        started = time.perf_counter()
        rate = classifier.tokens_per_second()
        cap = classifier.config.max_handle_tokens
        tokens = max(1, min(cap, math.floor(rate * response_timeout * TIMEOUT_FRACTION)))
        budget = cls(tokens, rate, response_timeout)
        log.info(
            "work budget: %d tokens per batch (measured %.0f tokens/s in %.1f s; %.0f%% of responseTimeout %g s; "
            "MAX_HANDLE_TOKENS %d)",
            tokens,
            rate,
            time.perf_counter() - started,
            100 * TIMEOUT_FRACTION,
            response_timeout,
            cap,
        )
        full = classifier.config.max_batch_texts * classifier.config.max_sequence_len
        if tokens < full:
            log.warning(
                "a full request (%d texts of %d tokens) needs more than this budget and will be answered 413: "
                "raise responseTimeout in model-config.yaml to at least %.0f s for it to fit",
                classifier.config.max_batch_texts,
                classifier.config.max_sequence_len,
                math.ceil(full / rate / TIMEOUT_FRACTION),
            )
        return budget

    def explain(self) -> str:
        if not self.tokens_per_second:
            return f"at most {self.tokens} tokens of model work per batch"
        return (
            f"at most {self.tokens} tokens of model work per batch: what this worker runs in "
            f"{TIMEOUT_FRACTION:.0%} of its {self.response_timeout:g} s response timeout at its measured "
            f"{self.tokens_per_second:.0f} tokens/s"
        )


def response_timeout_for(full_request_tokens: int, tokens_per_second: float, headroom: float = 3.0) -> int:
    """The responseTimeout (seconds) under which a request of `full_request_tokens` still fits one batch's
    budget on a machine `headroom` times slower than the one that measured `tokens_per_second` (the CPUs
    these models run on differ by 2-3x in int8 alone)."""
    return math.ceil(full_request_tokens / (tokens_per_second * TIMEOUT_FRACTION) * headroom)


@dataclass
class _Admitted:
    index: int  # the request's place in the batch
    request: ParsedRequest
    runs: list[str]  # the texts the model runs for it: its texts, or their explanation variants
    encodings: list
    truncate: bool  # read only each text's first window
    tokens: int  # the model work it costs: every window's tokens


def answer_batch(
    incoming: list[Incoming], classifier, budget: WorkBudget, model_name: str
) -> tuple[list[Reply], BatchStats]:
    """One reply per request, in order, and what the batch cost. Raises only when every text of the
    batch failed in the model (the server's fault, not a request's)."""
    started, now = time.perf_counter(), time.time()
    stats = BatchStats(requests=len(incoming))
    outcomes: list[ParsedRequest | InvalidRequest] = [_parse(item, classifier.config) for item in incoming]
    admitted = _admit(outcomes, classifier, budget, stats)
    encodings = [encoding for work in admitted for encoding in work.encodings]
    truncate = [work.truncate for work in admitted for _ in work.encodings]
    detail = [work.request.windows for work in admitted for _ in work.encodings]
    stats.texts, stats.tokens = len(encodings), sum(work.tokens for work in admitted)
    results = classifier.predict_isolated(encodings, stats, truncate, detail)
    if len(results) > 1 and all(isinstance(result, Exception) for result in results):
        raise results[0]
    start = 0
    for work in admitted:
        own = results[start : start + len(work.runs)]
        start += len(work.runs)
        outcomes[work.index] = _answer(work, own, model_name, classifier.config.class_names)
    replies = [_reply(outcome) for outcome in outcomes]
    stats.rejected = sum(reply.status != 200 for reply in replies)
    compute = time.perf_counter() - started
    device = "gpu" if classifier.device.startswith("cuda") else "cpu"
    for work in admitted:
        headers = replies[work.index].headers
        headers.update(_timing(stats, compute, device, work, incoming[work.index].arrived, now))
    return replies, stats


def _timing(stats: BatchStats, compute: float, device: str, work: _Admitted, arrived: float | None, now: float):
    """text-embeddings-inference's timing headers for one request, in whole milliseconds."""
    headers = {
        "x-compute-type": device,
        "x-compute-time": _ms(compute),
        "x-tokenization-time": _ms(stats.tokenize_seconds),
        "x-inference-time": _ms(stats.forward_seconds),
        "x-compute-characters": str(sum(len(text) for text in work.request.texts)),
        "x-compute-tokens": str(work.tokens),
    }
    if arrived is not None:
        queued = max(0.0, now - arrived)
        headers.update({"x-queue-time": _ms(queued), "x-total-time": _ms(queued + compute)})
    return headers


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def _parse(item: Incoming, config) -> ParsedRequest | InvalidRequest:
    try:
        if isinstance(item.body, Exception):
            raise item.body
        if item.explain:
            return parse_explanation_request(item.body, item.content_type, config)
        return parse_request(item.body, item.content_type, config.max_text_chars, config.max_batch_texts)
    except InvalidRequest as error:
        return error
    except Exception as error:  # whatever one body does, it must not fail the others
        log.warning("a request of the batch could not be read: %s", type(error).__name__)
        return InvalidRequest(f"request could not be read ({type(error).__name__}): {EXAMPLE}")


def _admit(outcomes: list, classifier, budget: WorkBudget, stats: BatchStats) -> list[_Admitted]:
    """Tokenize every parsed request's texts in one call, then admit requests in arrival order while the
    batch's tokens fit the budget: the rest get 503 (retry), a request that alone exceeds it 413."""
    parsed = [(i, outcome) for i, outcome in enumerate(outcomes) if isinstance(outcome, ParsedRequest)]
    runs = [_runs(request) for _, request in parsed]
    started = time.perf_counter()
    try:
        everything = classifier.encode([text for texts in runs for text in texts])
        start, encoded = 0, []
        for texts in runs:
            encoded.append(everything[start : start + len(texts)])
            start += len(texts)
    except Exception:  # the contract lets no known input through that does this; if one does, it fails alone
        encoded = [_encode_alone(classifier, texts) for texts in runs]
    stats.tokenize_seconds += time.perf_counter() - started
    admitted, spent = [], 0
    for (index, request), texts, own in zip(parsed, runs, encoded, strict=True):
        if isinstance(own, Exception):
            outcomes[index] = InvalidRequest(f"a text of this request could not be tokenized ({type(own).__name__})")
            continue
        truncate = classifier.config.truncate if request.truncate is None else request.truncate
        cost = sum(len(window) for encoding in own for window in windows(encoding, truncate))
        if cost > budget.tokens:
            what = "its texts' explanation variants" if request.explain else "its texts"
            what += "" if truncate else ", long texts read whole in windows"
            advice = "send fewer or shorter texts" + ("" if truncate else ', or ask for "truncate": true')
            outcomes[index] = TooMuchWork(
                f"this request needs {cost} tokens of model work ({what}), more than the server takes in one "
                f"batch: {budget.explain()}; {advice}"
            )
        elif spent + cost > budget.tokens:
            outcomes[index] = ServerBusy(
                f"the server is busy: this batch already carries {spent} of its {budget.tokens} tokens of work and "
                f"this request needs {cost}; retry in a second"
            )
        else:
            spent += cost
            admitted.append(_Admitted(index, request, texts, own, truncate, cost))
    return admitted


def _encode_alone(classifier, texts: list[str]) -> list | Exception:
    try:
        return classifier.encode(texts)
    except Exception as error:
        log.warning("the tokenizer failed on a request: %s", type(error).__name__)
        return error


def _runs(request: ParsedRequest) -> list[str]:
    if not request.explain:
        return request.texts
    return [variant for text in request.texts for variant in explanation_variants(text)]


def _answer(work: _Admitted, results: list, model_name: str, class_names: tuple[str, ...]):
    """The request's rendered answer, or a 422 naming its first text the model failed on."""
    request = work.request
    if request.explain:
        answers, start = [], 0
        for text in request.texts:
            count = len(explanation_variants(text))
            answers.append(explanation(text, results[start : start + count]))
            start += count
    else:
        answers = results
    for i, answer in enumerate(answers):
        if isinstance(answer, Exception):
            where = "" if request.form == "single" else f"text {i} of the request: "
            return UnprocessableText(f"{where}the model could not classify this text ({type(answer).__name__})")
    return render(request, [answer.to_dict() for answer in answers], model_name, class_names)


def _reply(outcome) -> Reply:
    if isinstance(outcome, InvalidRequest):
        return Reply(outcome.status, {"error": str(outcome)}, dict(outcome.headers))
    return Reply(200, outcome)
