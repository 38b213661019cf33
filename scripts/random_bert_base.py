"""A bert-base-sized checkpoint in the classic tutorial's layout, with random weights: for measuring what
serving a model of that size costs here (no model hub, so no real bert-base-cased).

    .venv/bin/python scripts/random_bert_base.py OUT_DIR

Writes OUT_DIR/bert (BertConfig's defaults: 12 layers, hidden 768, 110M parameters, with the packaged
backbone's uncased vocabulary) and OUT_DIR/best_model_state.bin (keys `bert.*` and `out.*`, as the
tutorial's SentimentClassifier saved them). Its answers are meaningless; its cost per token is real.
Then: sentiment-import --bert-dir OUT_DIR/bert --state-dict OUT_DIR/best_model_state.bin --output models/big
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from sentiment.serving.classifier import resolve_bert_dir
from sentiment.serving.config import ModelConfig

log = logging.getLogger(__name__)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) != 2:
        raise SystemExit("usage: random_bert_base.py OUT_DIR")
    out = Path(sys.argv[1])
    backbone = resolve_bert_dir(ModelConfig().bert_model)
    (out / "bert").mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (backbone / name).is_file():
            shutil.copy2(backbone / name, out / "bert" / name)
    torch.manual_seed(0)
    bert = BertModel(BertConfig())
    bert.save_pretrained(out / "bert", safe_serialization=True)
    head = torch.nn.Linear(bert.config.hidden_size, 3)
    state = {f"bert.{k}": v for k, v in bert.state_dict().items()} | {
        f"out.{k}": v for k, v in head.state_dict().items()
    }
    torch.save(state, out / "best_model_state.bin")
    log.info("wrote %s: %.0fM parameters", out, sum(p.numel() for p in bert.parameters()) / 1e6)


if __name__ == "__main__":
    main()
