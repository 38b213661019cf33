"""A BERT sentiment classifier that knows nothing of TorchServe.

`ModelConfig` is the one typed view of `config.json`; `SentimentClassifier` turns a batch of texts
into predictions. The handler, the training and evaluation scripts and the tests all share them, so
the server scores texts exactly as they were scored offline.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# BERT_MODEL may name a pip package that ships a Hugging Face folder, e.g. the default backbone.
PACKAGE_PREFIX = "package:"
TEMPERATURE_KEY = "temperature"


class ConfigError(ValueError):
    """config.json or the weights it names are missing, malformed or do not fit together."""


# config.json keeps the tutorial's key names, so its users feel at home.
CONFIG_KEYS: dict[str, type] = {
    "MODEL_VERSION": str,
    "BERT_MODEL": str,
    "PRE_TRAINED_MODEL": str,
    "CLASS_NAMES": list,
    "MAX_SEQUENCE_LEN": int,
    "MAX_TEXT_CHARS": int,
    "PRECISION": str,
    "PADDING": str,
    "POOLING": str,
    "THREADS": int,
}
# auto: int8 dynamic quantization of the Linear layers on CPU, fp16 on GPU.
PRECISIONS = ("auto", "fp32", "int8", "fp16", "bf16")
# longest: pad each batch to its longest text. max_length: pad every text to MAX_SEQUENCE_LEN
# (the tutorial's way, kept to measure against).
PADDINGS = ("longest", "max_length")
# How a text's token vectors become the one vector the head reads. pooler: [CLS] through BERT's
# pooler layer (BertForSequenceClassification, the tutorial). mean: the mean over the text's
# tokens, the pooling the packaged sentence-transformers backbone was pretrained with.
POOLINGS = ("pooler", "mean")


@dataclass(frozen=True)
class ModelConfig:
    model_version: str  # the archive's version; config.properties' per-model settings name it too
    bert_model: str  # Hugging Face folder with config, tokenizer and backbone weights, or package:NAME
    pre_trained_model: Path  # safetensors with the fine-tuned tensors (all that differ from BERT_MODEL)
    class_names: tuple[str, ...]  # output order of the classifier head
    max_sequence_len: int  # tokens per text, [CLS] and [SEP] included; longer texts are truncated
    max_text_chars: int  # longer texts are rejected with 400 before tokenization
    precision: str  # one of PRECISIONS
    padding: str  # one of PADDINGS
    pooling: str  # one of POOLINGS
    threads: int  # torch intra-op threads per worker; 0 leaves torch's default (every core)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], base_dir: Path) -> ModelConfig:
        """Validate every key; relative paths are taken relative to `base_dir`."""
        if not isinstance(raw, dict):
            raise ConfigError("config must be a JSON object")
        missing = sorted(set(CONFIG_KEYS) - set(raw))
        unknown = sorted(set(raw) - set(CONFIG_KEYS))
        if missing or unknown:
            raise ConfigError(f"config keys missing: {missing}, unknown: {unknown}")
        for key, expected in CONFIG_KEYS.items():
            # bool is an int subclass in Python; a `true` here is a typo, not a length.
            if not isinstance(raw[key], expected) or isinstance(raw[key], bool):
                raise ConfigError(f"{key} must be a {expected.__name__}, got {raw[key]!r}")
        class_names = tuple(raw["CLASS_NAMES"])
        if len(class_names) < 2 or len(set(class_names)) != len(class_names):
            raise ConfigError(f"CLASS_NAMES must hold at least two distinct names, got {raw['CLASS_NAMES']}")
        if not all(isinstance(name, str) and name for name in class_names):
            raise ConfigError(f"CLASS_NAMES must be non-empty strings, got {raw['CLASS_NAMES']}")
        if not 8 <= raw["MAX_SEQUENCE_LEN"] <= 4096:
            raise ConfigError(f"MAX_SEQUENCE_LEN must be within 8..4096, got {raw['MAX_SEQUENCE_LEN']}")
        if raw["MAX_TEXT_CHARS"] < 1:
            raise ConfigError(f"MAX_TEXT_CHARS must be positive, got {raw['MAX_TEXT_CHARS']}")
        if raw["PRECISION"] not in PRECISIONS:
            raise ConfigError(f"PRECISION must be one of {PRECISIONS}, got {raw['PRECISION']!r}")
        if raw["PADDING"] not in PADDINGS:
            raise ConfigError(f"PADDING must be one of {PADDINGS}, got {raw['PADDING']!r}")
        if raw["POOLING"] not in POOLINGS:
            raise ConfigError(f"POOLING must be one of {POOLINGS}, got {raw['POOLING']!r}")
        if raw["THREADS"] < 0:
            raise ConfigError(f"THREADS must be 0 (torch's default) or more, got {raw['THREADS']}")
        bert_model = raw["BERT_MODEL"]
        if not bert_model.startswith(PACKAGE_PREFIX):
            bert_model = str(base_dir / bert_model)
        return cls(
            model_version=raw["MODEL_VERSION"],
            bert_model=bert_model,
            pre_trained_model=base_dir / raw["PRE_TRAINED_MODEL"],
            class_names=class_names,
            max_sequence_len=raw["MAX_SEQUENCE_LEN"],
            max_text_chars=raw["MAX_TEXT_CHARS"],
            precision=raw["PRECISION"],
            padding=raw["PADDING"],
            pooling=raw["POOLING"],
            threads=raw["THREADS"],
        )

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ConfigError(f"cannot read model config {path}: {error}") from error
        return cls.from_dict(raw, path.parent)


def resolve_bert_dir(bert_model: str) -> Path:
    """The local Hugging Face folder that BERT_MODEL names; nothing is ever fetched from a hub."""
    if bert_model.startswith(PACKAGE_PREFIX):
        package = importlib.import_module(bert_model[len(PACKAGE_PREFIX) :])
        path = Path(package.get_model_path())
    else:
        path = Path(bert_model)
    if not (path / "config.json").is_file():
        raise ConfigError(f"BERT_MODEL {bert_model!r} is not a Hugging Face model folder ({path})")
    return path


@dataclass(frozen=True)
class Prediction:
    sentiment: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mean_pooling_classifier_class():
    """BertForSequenceClassification whose head reads the mean of the text's token vectors.

    Built on first use so that importing this module stays cheap. The tensor names are those of
    BertForSequenceClassification without the pooler, so checkpoints and tooling carry over.
    """
    from transformers import BertForSequenceClassification, BertModel
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolingBertForSequenceClassification(BertForSequenceClassification):
        def __init__(self, config):
            super().__init__(config)
            self.bert = BertModel(config, add_pooling_layer=False)
            self.post_init()

        def forward(self, input_ids, attention_mask, token_type_ids=None, **_unused):
            hidden = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            # Padding must not count: a text scores the same alone or in a padded batch.
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    return MeanPoolingBertForSequenceClassification


def build_model(bert_dir: Path, class_names: tuple[str, ...], pooling: str = "pooler"):
    """A BERT classifier on the backbone, pooled as POOLING says, with fresh head tensors.

    Returns the model and the names of the tensors that the backbone did not provide (they must
    come from the fine-tuned weights).
    """
    from transformers import AutoModelForSequenceClassification

    if pooling not in POOLINGS:
        raise ConfigError(f"POOLING must be one of {POOLINGS}, got {pooling!r}")
    model_class = _mean_pooling_classifier_class() if pooling == "mean" else AutoModelForSequenceClassification
    model, info = model_class.from_pretrained(
        bert_dir,
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={name: i for i, name in enumerate(class_names)},
        use_safetensors=True,
        output_loading_info=True,
    )
    return model, set(info["missing_keys"])


def load_fine_tuned_weights(model, path: Path, must_cover: set[str]) -> dict[str, str]:
    """Copy the tensors of a safetensors file into `model`, refusing any that do not fit.

    Returns the file's metadata (the calibration temperature lives there).
    """
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise ConfigError(f"PRE_TRAINED_MODEL must be a .safetensors file, got {path.name}")
    if not path.is_file():
        raise ConfigError(f"PRE_TRAINED_MODEL {path} does not exist")
    expected = model.state_dict()
    with safe_open(str(path), framework="pt") as weights:
        names = set(weights.keys())
        unexpected = sorted(names - set(expected))
        if unexpected:
            raise ConfigError(f"{path.name} holds tensors the model does not have: {unexpected[:5]}")
        uncovered = sorted(must_cover - names)
        if uncovered:
            raise ConfigError(f"{path.name} lacks tensors the backbone does not provide: {uncovered[:5]}")
        tensors = {name: weights.get_tensor(name) for name in sorted(names)}
        metadata = weights.metadata() or {}
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ConfigError(
                f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)} (is CLASS_NAMES right?)"
            )
    model.load_state_dict(tensors, strict=False)
    return metadata


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "int8"
    if precision == "int8" and device.startswith("cuda"):
        raise ConfigError("PRECISION int8 (dynamic quantization) runs on CPU only: use fp16 or bf16 on GPU")
    return precision


def with_precision(model, precision: str, device: str):
    """The model in the precision it will serve in; the logits are cast back to fp32 after."""
    import torch

    if precision == "int8":
        # Dynamic quantization: Linear weights stored in int8 with one scale per output row (per
        # channel: as fast here as one scale per matrix, and it agrees with fp32 more often),
        # activations quantized per batch. torch 2.13 still ships it but warns that torchao
        # replaces it; keep that out of the logs.
        from torch.ao.quantization import per_channel_dynamic_qconfig

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=(DeprecationWarning, UserWarning))
            return torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
            )
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return model.to(device=device, dtype=dtypes[precision])


class SentimentClassifier:
    """Tokenizes a batch in one call (padded to its longest text by default) and runs one forward pass."""

    def __init__(self, config: ModelConfig, device: str = "cpu"):
        self.config = config
        self.device = device
        self.tokenizer = None
        self.model = None
        self.temperature = 1.0
        self.precision = config.precision

    def load(self) -> SentimentClassifier:
        import torch
        from transformers import AutoTokenizer

        bert_dir = resolve_bert_dir(self.config.bert_model)
        self.tokenizer = AutoTokenizer.from_pretrained(bert_dir)
        model, new_tensors = build_model(bert_dir, self.config.class_names, self.config.pooling)
        limit = model.config.max_position_embeddings
        if self.config.max_sequence_len > limit:
            raise ConfigError(f"MAX_SEQUENCE_LEN {self.config.max_sequence_len} exceeds the model's limit of {limit}")
        metadata = load_fine_tuned_weights(model, self.config.pre_trained_model, new_tensors)
        self.temperature = float(metadata.get(TEMPERATURE_KEY, 1.0))
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        self.precision = resolve_precision(self.config.precision, self.device)
        self.model = with_precision(model.eval(), self.precision, self.device)
        log.info(
            "loaded %s with %s on %s in %s, %d threads (temperature %.3f)",
            bert_dir.name,
            self.config.pre_trained_model.name,
            self.device,
            self.precision,
            torch.get_num_threads(),
            self.temperature,
        )
        return self

    def tokenize(self, texts: list[str]):
        """Pad as PADDING says (to the batch's longest text by default), cut at MAX_SEQUENCE_LEN."""
        return self.tokenizer(
            texts,
            padding=self.config.padding,
            truncation=True,
            max_length=self.config.max_sequence_len,
            return_tensors="pt",
        )

    def predict(self, texts: list[str]) -> list[Prediction]:
        import torch

        if not texts:
            return []
        batch = self.tokenize(texts)
        # A fast tokenizer keeps what truncation cut off: that is how a text knows it was cut.
        truncated = [bool(encoding.overflowing) for encoding in batch.encodings]
        inputs = {name: tensor.to(self.device) for name, tensor in batch.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        probabilities = torch.softmax(logits / self.temperature, dim=-1).cpu().tolist()
        return [self._prediction(row, cut) for row, cut in zip(probabilities, truncated)]

    def _prediction(self, probabilities: list[float], truncated: bool) -> Prediction:
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return Prediction(
            sentiment=self.config.class_names[best],
            confidence=round(probabilities[best], 6),
            probabilities={name: round(p, 6) for name, p in zip(self.config.class_names, probabilities)},
            truncated=truncated,
        )
