"""Package the classifier into a TorchServe archive: model_store/sentiment.mar.

    python scripts/build_archive.py [--config config.json] [--model-store model_store]

The archive holds the handler and its modules, the BERT folder (config, tokenizer, backbone
weights), the fine-tuned tensors and a config.json whose paths point inside the archive, so a
worker needs nothing from the project folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sentiment_model import ModelConfig, resolve_bert_dir

log = logging.getLogger("build_archive")
ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = ROOT / "handler"
HANDLER = HANDLER_DIR / "sentiment_handler.py"
HANDLER_MODULES = [HANDLER_DIR / "sentiment_model.py", HANDLER_DIR / "request_parsing.py"]
MODEL_NAME = "sentiment"
# What serving needs from a Hugging Face folder; weights only as safetensors, never pickles.
BERT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def stage_model_files(config_path: Path, staging: Path) -> None:
    """Lay out in `staging` the files the archive carries beside the handler.

    torch-model-archiver flattens each extra file into the archive's root but keeps the folders
    inside an extra *directory*, so everything is staged here and passed as one directory.
    """
    config = ModelConfig.from_file(config_path)
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    bert_src = resolve_bert_dir(config.bert_model)
    bert_dst = staging / "bert"
    bert_dst.mkdir()
    for name in BERT_FILES:
        if (bert_src / name).is_file():
            shutil.copy2(bert_src / name, bert_dst / name)
    if not (bert_dst / "model.safetensors").is_file():
        raise SystemExit(f"{bert_src} has no model.safetensors: convert its weights to safetensors first")
    if not config.pre_trained_model.is_file():
        raise SystemExit(f"{config.pre_trained_model} is missing: run `make model` to train it")
    weights = staging / config.pre_trained_model.name
    shutil.copy2(config.pre_trained_model, weights)
    archived = {**raw, "BERT_MODEL": "bert", "PRE_TRAINED_MODEL": weights.name}
    (staging / "config.json").write_text(json.dumps(archived, indent=2) + "\n")
    # Fail here, not in a worker: the archived config must parse and its files must load.
    ModelConfig.from_file(staging / "config.json")
    for module in HANDLER_MODULES:
        shutil.copy2(module, staging / module.name)


def build(config_path: Path, model_store: Path, model_name: str = MODEL_NAME) -> Path:
    started = time.monotonic()
    version = ModelConfig.from_file(config_path).model_version
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sentiment-archive-") as tmp:
        staging = Path(tmp) / "files"
        staging.mkdir()
        stage_model_files(config_path, staging)
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name",
            model_name,
            "--version",
            version,
            "--handler",
            str(HANDLER),
            "--extra-files",
            str(staging),
            "--export-path",
            str(model_store),
            "--force",
        ]
        # The archiver assembles in $TMPDIR/<model name>: keep concurrent builds apart.
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": tmp})
    archive = model_store / f"{model_name}.mar"
    log.info(
        "built %s (version %s, %.0f MB) in %.1f s",
        archive,
        version,
        archive.stat().st_size / 1e6,
        time.monotonic() - started,
    )
    return archive


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "config.json")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model-name", default=MODEL_NAME)
    args = parser.parse_args()
    build(args.config, args.model_store, args.model_name)


if __name__ == "__main__":
    main()
