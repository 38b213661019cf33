"""Package a model into a TorchServe archive: model_store/NAME.mar.

    sentiment-archive [--config config.json] [--name NAME] [--model-yaml model-config.yaml]
                      [--model-store model_store] [--device auto|cpu|gpu]

The archive holds the handler, the `sentiment.serving` package it wraps (the same files the tests
import), the BERT folder (config, tokenizer, backbone weights), the fine-tuned tensors, a
config.json whose paths point inside the archive, and TorchServe's per-model settings
(model-config.yaml: the one beside the config.json if there is one, else the project's), so a
worker needs nothing from the project folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import yaml

import sentiment
from sentiment.console import command
from sentiment.ops.devices import gpu_count
from sentiment.project import DEFAULT_CONFIG, MODEL_STORE, PROJECT_DIR, model_name_for
from sentiment.serving.classifier import resolve_bert_dir
from sentiment.serving.config import ModelConfig

log = logging.getLogger(__name__)
HANDLER = PROJECT_DIR / "handler" / "sentiment_handler.py"
# TorchServe's per-model settings (batching, timeouts, workers), not to be confused with config.json.
MODEL_YAML = "model-config.yaml"
# What serving needs from a Hugging Face folder; weights only as safetensors, never pickles.
BERT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def serving_sources() -> list[Path]:
    """The package files a worker imports: `sentiment/__init__.py` and `sentiment/serving/*.py`."""
    package = Path(sentiment.__file__).parent
    return [package / "__init__.py", *sorted((package / "serving").glob("*.py"))]


def stage_model_files(config: ModelConfig, staging: Path) -> None:
    """Lay out in `staging` the files the archive carries beside the handler.

    torch-model-archiver flattens each extra file into the archive's root but keeps the folders
    inside an extra *directory*, so everything is staged here and passed as one directory.
    """
    bert_src = resolve_bert_dir(config.bert_model)
    bert_dst = staging / "bert"
    bert_dst.mkdir()
    for name in BERT_FILES:
        if (bert_src / name).is_file():
            shutil.copy2(bert_src / name, bert_dst / name)
    if not (bert_dst / "model.safetensors").is_file():
        raise SystemExit(f"{bert_src} has no model.safetensors: convert its weights to safetensors first")
    weights = Path(config.pre_trained_model)
    if not weights.is_file():
        raise SystemExit(f"{weights} is missing: run `make model` to train it")
    shutil.copy2(weights, staging / weights.name)
    archived = dataclasses.replace(config, bert_model=str(bert_dst), pre_trained_model=str(staging / weights.name))
    # Fail here, not in a worker: the archived config must parse.
    ModelConfig.from_file(archived.write(staging / "config.json"))
    package = Path(sentiment.__file__).parent.parent
    for source in serving_sources():
        target = staging / source.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def model_yaml_for(config_path: Path) -> Path:
    """The model-config.yaml beside a model's config.json if it has one, else the project's."""
    beside = Path(config_path).resolve().parent / MODEL_YAML
    return beside if beside.is_file() else PROJECT_DIR / MODEL_YAML


def model_settings(source: Path, device: str = "cpu") -> dict:
    """TorchServe's per-model settings for `device` (cpu or gpu: the `gpu` section replaces the values
    it names)."""
    settings = yaml.safe_load(source.read_text())
    gpu_settings = settings.pop("gpu", None) or {}
    if device == "gpu":
        settings.update(gpu_settings)
    return settings


def write_model_yaml(source: Path, path: Path, overrides: dict | None = None, device: str = "cpu") -> Path:
    """A copy of TorchServe's per-model settings for `device`, with `overrides` applied."""
    settings = {**model_settings(source, device), **(overrides or {})}
    if "minWorkers" in settings:
        # TorchServe ignores a worker count unless maxWorkers >= minWorkers > 0 (and warns then).
        settings.setdefault("maxWorkers", settings["minWorkers"])
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def build(
    config_path: Path,
    model_store: Path = MODEL_STORE,
    name: str | None = None,
    torchserve_settings: dict | None = None,
    model_yaml: Path | None = None,
    device: str = "auto",
) -> Path:
    """Build NAME.mar from a config.json for `device` (auto: gpu where this machine has one, else cpu);
    `torchserve_settings` override those of the model-config.yaml."""
    started = time.monotonic()
    if device == "auto":
        device = "gpu" if gpu_count() else "cpu"
    config = ModelConfig.from_file(config_path)
    name = name or model_name_for(config_path)
    model_yaml = model_yaml or model_yaml_for(config_path)
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sentiment-archive-") as tmp:
        staging = Path(tmp) / "files"
        staging.mkdir()
        stage_model_files(config, staging)
        command = [
            str(Path(sys.executable).with_name("torch-model-archiver")),
            "--model-name",
            name,
            "--version",
            config.model_version,
            "--handler",
            str(HANDLER),
            "--extra-files",
            str(staging),
            "--config-file",
            str(write_model_yaml(model_yaml, Path(tmp) / MODEL_YAML, torchserve_settings, device)),
            "--export-path",
            str(model_store),
            "--force",
        ]
        # The archiver assembles in $TMPDIR/<model name>: keep concurrent builds apart.
        subprocess.run(command, check=True, env={**os.environ, "TMPDIR": tmp})
    archive = model_store / f"{name}.mar"
    log.info(
        "built %s: model %r version %s from %s and %s, %s settings (%.0f MB) in %.1f s",
        archive,
        name,
        config.model_version,
        config_path,
        model_yaml,
        device.upper(),
        archive.stat().st_size / 1e6,
        time.monotonic() - started,
    )
    return archive


def describe(archive: Path) -> str:
    """One line on what an archive serves: name, version, weights, classes, precision."""
    with zipfile.ZipFile(archive) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        config = json.loads(mar.read("config.json"))
    return (
        f"{manifest['modelName']!r} version {manifest['modelVersion']} from {archive}: "
        f"weights {config['PRE_TRAINED_MODEL']}, classes {config['CLASS_NAMES']}, PRECISION {config['PRECISION']}"
    )


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--name", help="model name and archive file name (default: sentiment, or the config's folder)")
    parser.add_argument(
        "--model-yaml", type=Path, help=f"default: the {MODEL_YAML} beside --config, else the project's"
    )
    parser.add_argument("--model-store", type=Path, default=MODEL_STORE)
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="whose TorchServe settings to pack (auto: gpu if this machine has one)",
    )
    args = parser.parse_args()
    build(args.config, args.model_store, args.name, model_yaml=args.model_yaml, device=args.device)


if __name__ == "__main__":
    main()
