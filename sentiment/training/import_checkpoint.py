"""Turn your own BERT sentiment checkpoint into a model folder this server can archive and serve.

Two layouts are understood:

  tutorial   a BERT folder (e.g. bert-base-cased) plus the state dict the classic tutorial saved
             from its SentimentClassifier: keys `bert.*` and `out.*` (a Linear on the pooled output)
      sentiment-import --bert-dir ~/bert-base-cased --state-dict best_model_state.bin --output models/tutorial

  hf         a folder saved with `BertForSequenceClassification.save_pretrained`, labels in id2label
      sentiment-import --hf-dir ~/my-finetuned-bert --output models/mine

The output folder holds bert/ (config, tokenizer, safetensors weights), head.safetensors and a
config.json; build it as model_store/mine.mar and serve it beside the default model with
      make archive CONFIG=models/mine/config.json && make stop run MODELS="sentiment mine"

Checkpoints are read with `torch.load(weights_only=True)` or safetensors, never unpickled freely.
A checkpoint whose class count, keys or shapes do not fit is refused with a message naming them.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sentiment.console import command
from sentiment.project import model_name_for
from sentiment.serving.batch import response_timeout_for
from sentiment.serving.classifier import SentimentClassifier, weights_metadata
from sentiment.serving.config import ModelConfig

log = logging.getLogger(__name__)
DEFAULT_CLASS_NAMES = ModelConfig().class_names
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The project's own model-config.yaml's timeout: no imported model gets less.
DEFAULT_RESPONSE_TIMEOUT = 20
# Buffers that some transformers versions save and others do not; never learned.
OPTIONAL_KEYS = {"bert.embeddings.position_ids"}


class CheckpointError(ValueError):
    """The checkpoint does not fit the model its configuration describes."""


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    # weights_only refuses pickled code: a checkpoint cannot run anything while it loads.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_tensors(folder / name)
    raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def tutorial_to_hf_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tutorial's `out.*` Linear sits where BertForSequenceClassification has `classifier.*`."""
    if not any(k.startswith("out.") for k in state):
        raise CheckpointError(f"not a tutorial state dict: no out.* keys (found {sorted(state)[:3]} ...)")
    return {("classifier." + k[4:] if k.startswith("out.") else k): v for k, v in state.items()}


def class_names_from_config(folder: Path) -> tuple[str, ...]:
    config = json.loads((folder / "config.json").read_text())
    id2label = config.get("id2label") or {}
    names = tuple(id2label[k] for k in sorted(id2label, key=int))
    if not names or all(name.startswith("LABEL_") for name in names):
        raise CheckpointError(f"{folder}/config.json has no class names in id2label: pass --class-names")
    return names


def build_classifier(bert_dir: Path, state: dict[str, torch.Tensor], class_names: tuple[str, ...]):
    """A BertForSequenceClassification with every tensor from `state`, after checking they all fit."""
    from transformers import AutoConfig, BertForSequenceClassification

    head = state.get("classifier.weight")
    if head is None:
        raise CheckpointError("the checkpoint has no classifier weights (classifier.weight or out.weight)")
    if head.shape[0] != len(class_names):
        raise CheckpointError(
            f"the checkpoint has {head.shape[0]} classes (classifier weight {tuple(head.shape)}), "
            f"but {len(class_names)} class names were given: {list(class_names)}"
        )
    config = AutoConfig.from_pretrained(
        bert_dir,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
    )
    if config.model_type != "bert":
        raise CheckpointError(f"{bert_dir} holds a {config.model_type!r} model; this server serves BERT")
    model = BertForSequenceClassification(config)
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k not in OPTIONAL_KEYS}
    missing = sorted(set(expected) - set(state) - OPTIONAL_KEYS)
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    if mismatched:
        problems.append(f"shapes differ from {bert_dir.name}/config.json: {mismatched[:3]}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=False)
    return model.eval()


def write_model_folder(model, tokenizer_dir: Path, output: Path, max_sequence_len: int | None) -> Path:
    """`max_sequence_len` None takes the default token limit, or the model's position limit if lower."""
    limit = model.config.max_position_embeddings
    if max_sequence_len is None:
        max_sequence_len = min(ModelConfig().max_sequence_len, limit)
    elif max_sequence_len > limit:
        raise CheckpointError(f"--max-sequence-len {max_sequence_len} exceeds the model's position limit of {limit}")
    bert_out = output / "bert"
    if output.exists():
        shutil.rmtree(output)
    bert_out.mkdir(parents=True)
    model.save_pretrained(bert_out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, bert_out / name)
    class_names = tuple(model.config.id2label[i] for i in range(model.config.num_labels))
    head = {k: v.contiguous() for k, v in model.state_dict().items() if k.startswith("classifier.")}
    save_file(head, str(output / "head.safetensors"), metadata=weights_metadata(class_names, 1.0))
    config = ModelConfig(
        bert_model=str(bert_out),
        pre_trained_model=str(output / "head.safetensors"),
        class_names=class_names,
        max_sequence_len=max_sequence_len,
        pooling="pooler",  # both layouts read [CLS] through BERT's pooler
    )
    return config.write(output / "config.json")


def import_checkpoint(
    output: Path,
    *,
    bert_dir: Path | None = None,
    state_dict: Path | None = None,
    hf_dir: Path | None = None,
    class_names: tuple[str, ...] | None = None,
    max_sequence_len: int | None = None,
) -> Path:
    """Convert, write the folder, and load it back the way a worker will. Returns its config.json."""
    if hf_dir is not None:
        names = class_names or class_names_from_config(hf_dir)
        model = build_classifier(hf_dir, hf_weights(hf_dir), names)
        tokenizer_dir = hf_dir
    elif bert_dir is not None and state_dict is not None:
        names = class_names or DEFAULT_CLASS_NAMES
        model = build_classifier(bert_dir, tutorial_to_hf_keys(read_tensors(state_dict)), names)
        tokenizer_dir = bert_dir
    else:
        raise CheckpointError("give --hf-dir, or --bert-dir with --state-dict")
    config_path = write_model_folder(model, tokenizer_dir, output, max_sequence_len)
    served = SentimentClassifier(ModelConfig.from_file(config_path)).load()
    served.predict(["a quick self-check"])
    write_model_yaml(served, output / "model-config.yaml")
    log.info("wrote %s: classes %s", output, list(names))
    return config_path


def write_model_yaml(served: SentimentClassifier, path: Path) -> Path:
    """TorchServe's settings for this model, from what it costs: the model is timed here, on texts of
    MAX_SEQUENCE_LEN tokens, and the timeout is set so that a full request fits a worker's budget even on
    a CPU three times slower (a bert-base-sized model costs about 8x the default per token)."""
    config = served.config
    rate = served.tokens_per_second()
    full_request = config.max_batch_texts * config.max_sequence_len
    timeout = max(DEFAULT_RESPONSE_TIMEOUT, response_timeout_for(full_request, rate))
    path.write_text(
        f"# {path.parent.name}, sized from its measured speed: {rate:.0f} tokens/s on one worker here, so a full\n"
        f"# request ({config.max_batch_texts} texts of {config.max_sequence_len} tokens) takes about "
        f"{full_request / rate:.1f} s. Each worker admits at most a quarter of\n"
        "# responseTimeout's worth of work per batch (it measures its own speed at start): see docs/architecture.md.\n"
        "batchSize: 8\n"
        "maxBatchDelay: 2\n"
        f"responseTimeout: {timeout}\n"
        "gpu:\n"
        "  batchSize: 64\n"
        "  maxBatchDelay: 1\n"
        f"  responseTimeout: {timeout}\n"
    )
    log.info("%s: responseTimeout %d s (%.0f tokens/s measured here)", path.name, timeout, rate)
    return path


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="the model folder to write")
    parser.add_argument("--bert-dir", type=Path, help="tutorial layout: the BERT folder it fine-tuned")
    parser.add_argument("--state-dict", type=Path, help="tutorial layout: its saved state dict (bert.*, out.*)")
    parser.add_argument("--hf-dir", type=Path, help="a BertForSequenceClassification save_pretrained folder")
    parser.add_argument("--class-names", help="comma-separated, in the head's output order")
    parser.add_argument(
        "--max-sequence-len",
        type=int,
        help=f"tokens per text (default {ModelConfig().max_sequence_len}, or the model's position limit if lower)",
    )
    args = parser.parse_args()
    try:
        config = import_checkpoint(
            args.output,
            bert_dir=args.bert_dir,
            state_dict=args.state_dict,
            hf_dir=args.hf_dir,
            class_names=tuple(args.class_names.split(",")) if args.class_names else None,
            max_sequence_len=args.max_sequence_len,
        )
    except CheckpointError as error:
        raise SystemExit(f"refused: {error}") from None
    log.info('next: make archive CONFIG=%s && make stop run MODELS="sentiment %s"', config, model_name_for(config))


if __name__ == "__main__":
    main()
