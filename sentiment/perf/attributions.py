"""How well the served explanations (occlusion, int8) agree with a slower reference: integrated
gradients on the input embeddings of the fp32 model, and what each costs.

    .venv/bin/python -m sentiment.perf.attributions [--sentences 60] [--steps 50]

For each review sentence: the word the two methods rank first, and the Spearman correlation of
their word scores toward the predicted class; prints the agreement and the time per sentence.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)


def integrated_gradients(classifier: SentimentClassifier, text: str, target: int, steps: int) -> list[float]:
    """Per whitespace word of `text`: integrated gradients from a zero embedding, summed over its tokens."""
    offsets, token_scores = token_gradients(classifier, text, target, steps)
    starts = [i for i, char in enumerate(text) if not char.isspace() and (i == 0 or text[i - 1].isspace())]
    words = [0.0] * len(starts)
    for (start, end), score in zip(offsets, token_scores, strict=True):
        if end > start:  # not [CLS]/[SEP]
            words[max(i for i, word_start in enumerate(starts) if word_start <= start)] += score
    return words


def token_gradients(classifier: SentimentClassifier, text: str, target: int, steps: int):
    """Integrated gradients per token, [CLS] and [SEP] included, with the tokens' character offsets:
    the probability of `target` along the path from zero word embeddings to the text's."""
    import torch

    batch = classifier.tokenizer([text], truncation=True, max_length=classifier.config.max_sequence_len)
    offsets = batch.encodings[0].offsets
    inputs = {name: torch.tensor(values) for name, values in batch.items()}
    embeddings = classifier.model.bert.embeddings.word_embeddings
    original = embeddings(inputs["input_ids"]).detach()
    scaled: list[torch.Tensor] = []

    def scale(_module, _args, _output):  # the forward pass sees alpha * embedding
        return scaled[-1]

    hook = embeddings.register_forward_hook(scale)
    total = torch.zeros_like(original)
    try:
        for alpha in torch.linspace(1 / steps, 1, steps):
            scaled.append((alpha * original).requires_grad_(True))
            logits = classifier.model(**inputs).logits
            torch.softmax(logits, dim=-1)[0, target].backward()
            total += scaled[-1].grad
    finally:
        hook.remove()
    return offsets, (original * total / steps).sum(dim=-1)[0].tolist()


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(values: list[float]) -> list[int]:
        order = sorted(range(len(values)), key=values.__getitem__)
        return [order.index(i) for i in range(len(values))]

    ra, rb = ranks(a), ranks(b)
    if len(a) < 2 or statistics.pstdev(ra) == 0 or statistics.pstdev(rb) == 0:
        return float("nan")
    return statistics.correlation(ra, rb)


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=60)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    config = ModelConfig.from_file(DEFAULT_CONFIG)
    served = SentimentClassifier(config).load()
    reference = SentimentClassifier(dataclasses.replace(config, precision="fp32")).load()
    texts = [t for t in review_sentences(4 * args.sentences) if 4 <= len(t.split()) <= config.explain_max_words]
    texts = texts[: args.sentences]
    same_top, correlations, occlusion_seconds, gradient_seconds = 0, [], 0.0, 0.0
    for text in texts:
        started = time.perf_counter()
        (explanation,) = served.explain([text])
        occlusion_seconds += time.perf_counter() - started
        target = config.class_names.index(explanation.sentiment)
        started = time.perf_counter()
        gradients = integrated_gradients(reference, text, target, args.steps)
        gradient_seconds += time.perf_counter() - started
        occlusion = [a["score"] for a in explanation.attributions]
        same_top += max(range(len(occlusion)), key=occlusion.__getitem__) == max(
            range(len(gradients)), key=gradients.__getitem__
        )
        correlations.append(spearman(occlusion, gradients))
    valid = [c for c in correlations if c == c]
    log.info(
        "%d sentences: same top word %d (%.0f%%), Spearman median %.2f; per sentence occlusion (int8) %.0f ms, "
        "integrated gradients (fp32, %d steps) %.0f ms",
        len(texts),
        same_top,
        100 * same_top / len(texts),
        statistics.median(valid),
        1000 * occlusion_seconds / len(texts),
        args.steps,
        1000 * gradient_seconds / len(texts),
    )


if __name__ == "__main__":
    main()
