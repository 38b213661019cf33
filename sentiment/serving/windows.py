"""Long texts read whole: overlapping token windows, and the rules that turn their answers into one.

A text longer than MAX_SEQUENCE_LEN tokens is cut by the tokenizer into windows of MAX_SEQUENCE_LEN
tokens (`[CLS]` and `[SEP]` included) that share WINDOW_OVERLAP_PERCENT of them with the window before:
`tokenizers` does the cutting (truncation with a stride), so the first window is exactly the text as
truncation reads it, and a text that fits one window is one window, answered as it always was. Every
window runs through the model as a text of its own, in the same length-sorted passes as other texts;
`aggregate` then combines the windows' calibrated probabilities into the text's answer. Which rule,
and how much overlap, were chosen by cross-validation on development reviews
(docs/long-texts.md).
"""

from __future__ import annotations

from typing import Any


def windows(encoding, truncate: bool = False) -> list:
    """The windows a text is read in: the tokenizer's first window and the ones it overflowed into, or the
    first alone when the text is to be truncated."""
    return [encoding] if truncate else [encoding, *encoding.overflowing]


def content_tokens(encoding) -> int:
    """The window's tokens that come from the text: not `[CLS]`, `[SEP]` or padding."""
    mask = encoding.special_tokens_mask
    return sum(1 for special, attended in zip(mask, encoding.attention_mask, strict=True) if attended and not special)


def span(encoding) -> tuple[int, int]:
    """The window's characters in the text: [start, end), as Python indexes the string."""
    offsets = [
        offset for offset, special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True) if not special
    ]
    return (offsets[0][0], offsets[-1][1]) if offsets else (0, 0)


def _mean(probabilities, weights):
    return (probabilities * weights.unsqueeze(-1)).sum(dim=0) / weights.sum()


def _by_length(probabilities, encodings):
    import torch

    return torch.tensor([float(content_tokens(e)) for e in encodings], dtype=probabilities.dtype)


def _by_confidence(probabilities, encodings):
    return probabilities.max(dim=-1).values


def _uniform(probabilities, encodings):
    import torch

    return torch.ones(len(encodings), dtype=probabilities.dtype)


def _ends(probabilities, encodings):
    """The first and the last window count twice: reviews tend to open and close with their verdict."""
    weights = _uniform(probabilities, encodings)
    weights[0] = weights[-1] = 2.0
    return weights


def _geometric(probabilities, encodings):
    """The normalized product of the windows' probabilities (the mean of their log-probabilities)."""
    import torch

    log_mean = probabilities.clamp(min=1e-12).log().mean(dim=0)
    return torch.softmax(log_mean, dim=-1)


def _weighted(weigh):
    return lambda probabilities, encodings: _mean(probabilities, weigh(probabilities, encodings))


# Each rule: the windows' probabilities [windows, classes] and their encodings -> the text's [classes].
AGGREGATIONS: dict[str, Any] = {
    "mean": _weighted(_uniform),
    "length": _weighted(_by_length),
    "confidence": _weighted(_by_confidence),
    "ends": _weighted(_ends),
    "geometric": _geometric,
}


def aggregate(probabilities, encodings: list, rule: str):
    """The text's probabilities from its windows' (a text of one window: that window's, unchanged)."""
    if len(encodings) == 1:
        return probabilities[0]
    return AGGREGATIONS[rule](probabilities, encodings)
