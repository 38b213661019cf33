"""A BERT sentiment classifier that knows nothing of TorchServe.

`SentimentClassifier` turns a batch of texts into predictions, as `ModelConfig` says. The handler,
training, evaluation and the tests all share it, so the server scores texts exactly as they were
scored offline.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sentiment.serving.config import PACKAGE_PREFIX, ConfigError, ModelConfig
from sentiment.serving.windows import aggregate, span, windows

log = logging.getLogger(__name__)

TEMPERATURE_KEY = "temperature"
CLASS_NAMES_KEY = "class_names"


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
    truncated: bool  # part of the text was not read (it was longer than MAX_SEQUENCE_LEN and truncated)
    # When asked for: each window the text was read in, {"start", "end" (its characters), "probabilities"}.
    windows: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        answer = dataclasses.asdict(self)
        if answer["windows"] is None:
            del answer["windows"]
        return answer


@dataclass(frozen=True)
class Explanation(Prediction):
    # Per whitespace-separated word, in order: how much the predicted class's probability drops
    # when the word is left out (occlusion). Positive: the word speaks for the prediction.
    attributions: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def mean_pool(hidden, attention_mask):
    """The mean of each text's token vectors. Padding must not count: a text scores the same alone or in a
    padded batch."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


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
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(mean_pool(hidden, attention_mask))))

    return MeanPoolingBertForSequenceClassification


def mean_pooling_encoder_classifier(encoder, class_names: tuple[str, ...]):
    """Any transformer encoder (MPNet: the large model), its token vectors averaged, then a linear head.

    For backbones other than BERT, whose classes transformers names differently; tensor names
    `encoder.*` and `classifier.*`.
    """
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutput

    class MeanPoolingEncoderClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.config = encoder, encoder.config
            self.config.num_labels = len(class_names)
            self.config.id2label = dict(enumerate(class_names))
            self.config.label2id = {name: i for i, name in enumerate(class_names)}
            self.dropout = torch.nn.Dropout(0.1)
            self.classifier = torch.nn.Linear(encoder.config.hidden_size, len(class_names))

        def get_input_embeddings(self):
            return self.encoder.get_input_embeddings()

        def forward(self, input_ids, attention_mask, **_unused):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(mean_pool(hidden, attention_mask))))

    return MeanPoolingEncoderClassifier()


def build_model(bert_dir: Path, config: ModelConfig):
    """A classifier on the backbone, pooled as POOLING says, with fresh head tensors: BERT's own
    classes for BERT, `mean_pooling_encoder_classifier` for other encoders (mean pooling only).

    Returns the model and the names of the tensors that the backbone did not provide (they must
    come from the fine-tuned weights).
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    model_type = AutoConfig.from_pretrained(bert_dir).model_type
    if model_type != "bert":
        if config.pooling != "mean":
            raise ConfigError(f'{bert_dir} holds a {model_type!r} encoder: only POOLING "mean" serves it')
        # fp32 whatever the folder was saved in: int8 quantization and the CPU want fp32 tensors.
        encoder = AutoModel.from_pretrained(bert_dir, dtype=torch.float32, use_safetensors=True)
        model = mean_pooling_encoder_classifier(encoder, config.class_names)
        _check_position_limit(model, config)
        return model, {"classifier.weight", "classifier.bias"}
    model_class = _mean_pooling_classifier_class() if config.pooling == "mean" else AutoModelForSequenceClassification
    model, info = model_class.from_pretrained(
        bert_dir,
        num_labels=len(config.class_names),
        id2label=dict(enumerate(config.class_names)),
        label2id={name: i for i, name in enumerate(config.class_names)},
        use_safetensors=True,
        output_loading_info=True,
    )
    _check_position_limit(model, config)
    return model, set(info["missing_keys"])


def _check_position_limit(model, config: ModelConfig) -> None:
    limit = model.config.max_position_embeddings
    if model.config.model_type == "mpnet":  # its positions start after padding_idx (1): 2 of them unused
        limit -= 2
    if config.max_sequence_len > limit:
        raise ConfigError(f"MAX_SEQUENCE_LEN {config.max_sequence_len} exceeds the model's limit of {limit}")


def load_fine_tuned_weights(model, path: Path, must_cover: set[str], class_names: tuple[str, ...]) -> dict[str, str]:
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
    trained_for = metadata.get(CLASS_NAMES_KEY)
    if trained_for is None:
        log.warning("%s does not say which classes it was trained for: trusting CLASS_NAMES %s", path.name, class_names)
    elif trained_for != ",".join(class_names):
        # Same count, other order: the shapes fit, and every answer would be silently wrong.
        raise ConfigError(
            f"{path.name} was trained for classes {trained_for.split(',')}, CLASS_NAMES is {list(class_names)}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ConfigError(
                f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)} (is CLASS_NAMES right?)"
            )
    model.load_state_dict(tensors, strict=False)
    return metadata


def weights_metadata(class_names: tuple[str, ...], temperature: float, **extra: str) -> dict[str, str]:
    """What a weights file says about itself: the classes it was trained for, its calibration."""
    return {CLASS_NAMES_KEY: ",".join(class_names), TEMPERATURE_KEY: f"{temperature:.6f}", **extra}


def choose_device(gpu_id: int | None, cuda_available: bool) -> str:
    """The GPU TorchServe assigned to this worker, else the CPU."""
    return f"cuda:{gpu_id}" if gpu_id is not None and cuda_available else "cpu"


def resolve_precision(precision: str, device: str) -> str:
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "int8"
    if precision.startswith("int8") and device.startswith("cuda"):
        raise ConfigError(f"PRECISION {precision} runs on CPU only: use fp16 or bf16 on GPU")
    return precision


def with_precision(model, precision: str, device: str):
    """Hugging Face's module in the precision it will serve in, for the forwards that are not packed
    (GPU, non-BERT encoders, the tutorial's max_length padding); the logits are cast back to fp32 after."""
    import torch

    if precision == "int8-per-pass":
        # Dynamic quantization: Linear weights stored in int8 with one scale per output row,
        # activations quantized with ONE scale per forward pass: the largest activation of any text
        # in the pass sets every text's rounding, so answers move with the batch (opt-in only).
        # torch 2.13 still ships it but warns that torchao replaces it; keep that out of the logs.
        from torch.ao.quantization import per_channel_dynamic_qconfig

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=(DeprecationWarning, UserWarning))
            return torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
            )
    if precision == "int8":  # per token: only the packed forward runs it (`served_precision` decides)
        raise ConfigError("PRECISION int8 runs through the packed forward only: use fp32 or int8-per-pass here")
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return model.to(device=device, dtype=dtypes[precision])


def packs(model, device: str, config: ModelConfig) -> bool:
    """Whether the server runs `model` through the packed forward (each text over its own tokens)."""
    from sentiment.serving import packed

    return device == "cpu" and config.padding == "longest" and packed.supports(model)


def served_precision(model, config: ModelConfig, device: str) -> str:
    """The precision `model` serves in on `device`. `auto` on a CPU is int8 per token where the packed
    forward runs the model, else PyTorch's per-pass int8 (said in the log: its answers move with the
    batch); an explicit `int8` that cannot run packed is refused."""
    precision = resolve_precision(config.precision, device)
    if precision == "int8" and not packs(model, device, config):
        if config.precision != "auto":
            raise ConfigError(
                "PRECISION int8 (activations per token) runs BERT and MPNet encoders on CPU with PADDING longest: "
                "use fp32, or int8-per-pass (whose answers depend on the batch)"
            )
        log.warning("int8 per token does not run this model here: int8-per-pass, whose answers depend on the batch")
        return "int8-per-pass"
    return precision


def served_forward(model, precision: str, device: str, config: ModelConfig):
    """The function from padded input tensors to logits, as the server runs `model`: on the CPU BERT and
    MPNet run packed (each text over its own tokens, int8 activations per token: answers that do not
    depend on the batch); elsewhere Hugging Face's forward in `precision`."""
    from sentiment.serving import packed

    model = model.eval()
    if precision in ("int8", "fp32") and packs(model, device, config):
        return packed.PackedBertClassifier(model, precision, config.pooling)
    served = with_precision(model, precision, device)
    return lambda inputs: served(**inputs).logits


@dataclass
class PassStats:
    """What the predictions of one TorchServe batch cost: for the server's metrics."""

    tokenize_seconds: float = 0.0
    forward_seconds: float = 0.0  # forward passes and softmax, copies to and from the device included
    passes: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (texts, padded tokens) per pass
    truncated: int = 0  # texts cut at MAX_SEQUENCE_LEN
    windows: int = 0  # windows the model read: one per text, more for texts read whole in windows
    windowed: int = 0  # texts read in more than one window


def forward_passes(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices of texts grouped into forward passes: shortest first, each pass holding at most
    `token_budget` tokens once padded to its longest text (a text longer than the budget alone)."""
    passes: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) + 1) * lengths[i] > token_budget:
            passes.append(current)
            current = []
        current.append(i)
    return [*passes, current] if current else passes


# CUDA graph buckets: rows a power of two, tokens a multiple of 16; larger passes run eagerly.
GRAPH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GRAPH_TOKEN_STEP = 16


class CudaGraphForward:
    """The model's forward replayed from CUDA graphs, one per (rows, tokens) bucket.

    An eager forward of this 6-layer model issues hundreds of small kernels from Python: a few
    milliseconds whatever the batch, while the GPU work of a small batch takes a fraction of that. A
    graph replays them with one launch. Inputs are padded up to their bucket (padding rows and
    columns have attention mask 0, so they change no real row, and their logits are dropped). Shapes
    outside the buckets, or a model that cannot be captured, run eagerly.
    """

    def __init__(self, model, device: str, max_tokens_per_text: int):
        self.model = model
        self.device = device
        top = -(-max_tokens_per_text // GRAPH_TOKEN_STEP) * GRAPH_TOKEN_STEP
        self.widths = tuple(range(GRAPH_TOKEN_STEP, top + 1, GRAPH_TOKEN_STEP))
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.pool = None  # one memory pool for all graphs: they never run at the same time
        self.broken = False

    def bucket(self, rows: int, width: int) -> tuple[int, int] | None:
        bucket_rows = next((r for r in GRAPH_ROWS if r >= rows), None)
        bucket_width = next((w for w in self.widths if w >= width), None)
        return (bucket_rows, bucket_width) if bucket_rows and bucket_width else None

    def __call__(self, inputs: dict):
        """The logits for `inputs` (tensors on the device), through a graph where one fits."""
        rows, width = inputs["input_ids"].shape
        key = None if self.broken else self.bucket(rows, width)
        entry = (self.graphs.get(key) or self.capture(key, list(inputs))) if key else None
        if entry is None:
            return self.model(**inputs).logits
        static, logits, graph = entry
        for name, tensor in inputs.items():
            static[name].zero_()
            static[name][:rows, :width].copy_(tensor)
        graph.replay()
        # A copy: the next replay overwrites the graph's output, and a batch's passes are read after the last.
        return logits[:rows].clone()

    def capture(self, key: tuple[int, int], names: list[str]):
        """Record the forward for one bucket; on failure, say why once and run eagerly from then on."""
        import torch

        static = {name: torch.zeros(key, dtype=torch.long, device=self.device) for name in names}
        # A padding pattern in the mask, so that the captured path is the masked one.
        static["attention_mask"][:, : max(1, key[1] // 2)] = 1
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.model(**static)  # lazy initialisation (cuBLAS workspaces) outside the capture
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                logits = self.model(**static).logits
            self.pool = graph.pool()
        except Exception as error:  # a model whose forward syncs with the host cannot be captured
            self.broken = True
            log.warning("CUDA graphs off: capturing %s failed (%s: %s)", key, type(error).__name__, error)
            return None
        self.graphs[key] = (static, logits, graph)
        return self.graphs[key]


class SentimentClassifier:
    """Tokenizes texts, then runs forward passes of similar lengths, each padded to its own longest text."""

    def __init__(self, config: ModelConfig, device: str = "cpu"):
        self.config = config.for_device(device)
        self.device = device
        self.tokenizer = None
        self.encoder = None  # the tokenizer's Rust backend, set to truncate as configured (and pad, for max_length)
        self.forward = None  # the model's logits for a dict of padded input tensors
        self.model = None  # Hugging Face's module, fp32 on the CPU (tools and tests read its tensors)
        self.temperature = 1.0
        self.precision = self.config.precision
        self.input_names: list[str] = []

    @classmethod
    def from_model(cls, config: ModelConfig, tokenizer, model, precision: str) -> SentimentClassifier:
        """A classifier over a model in memory (training's), served on the CPU exactly as a worker serves it:
        same tokenization, forward and passes; temperature 1."""
        classifier = cls(config)
        classifier.tokenizer = tokenizer
        classifier.input_names = [name for name in INPUT_COLUMNS if name in tokenizer.model_input_names]
        classifier.encoder = classifier._encoder()
        classifier.precision = precision
        classifier.model = model
        classifier.forward = served_forward(model, precision, "cpu", classifier.config)
        return classifier

    def load(self) -> SentimentClassifier:
        import torch
        from transformers import AutoTokenizer

        if self.config.threads:
            # The tokenizer's Rust thread pool, like torch, gets THREADS threads (set before its first use).
            os.environ.setdefault("RAYON_NUM_THREADS", str(self.config.threads))
        bert_dir = resolve_bert_dir(self.config.bert_model)
        self.tokenizer = AutoTokenizer.from_pretrained(bert_dir)
        self.input_names = [name for name in INPUT_COLUMNS if name in self.tokenizer.model_input_names]
        self.encoder = self._encoder()
        model, new_tensors = build_model(bert_dir, self.config)
        weights = Path(self.config.pre_trained_model)
        metadata = load_fine_tuned_weights(model, weights, new_tensors, self.config.class_names)
        self.temperature = float(metadata.get(TEMPERATURE_KEY, 1.0))
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.device.startswith("cuda"):
            # cuDNN's attention plans each (batch, length) shape on first sight: on an H200, fp16's
            # first pass ran 2-3x slower than its warm one with it, and as fast without (docs/performance.md, On a GPU).
            torch.backends.cuda.enable_cudnn_sdp(False)
        self.precision = served_precision(model, self.config, self.device)
        self.forward = served_forward(model, self.precision, self.device, self.config)
        self.model = model  # on a GPU, moved there in its precision by served_forward (Module.to is in place)
        if self.device.startswith("cuda"):
            if self.config.cuda_graphs == "on":
                self.forward = CudaGraphForward(self.model, self.device, self.config.max_sequence_len)
            self.warm_up()
        log.info(
            "loaded %s with %s on %s in %s (%s), %d threads (temperature %.3f)",
            bert_dir.name,
            weights.name,
            self.device,
            self.precision,
            type(self.forward).__name__,
            torch.get_num_threads(),
            self.temperature,
        )
        return self

    def _encoder(self):
        """A copy of the tokenizer's Rust backend that truncates at MAX_SEQUENCE_LEN, keeping the rest as
        windows that overlap by WINDOW_OVERLAP tokens (`windows`), and pads to it for PADDING max_length: the
        same ids as calling the tokenizer, without its per-call Python work (1.7x faster for 64 sentences
        here), which is what bounds a GPU worker."""
        encoder = copy.deepcopy(self.tokenizer.backend_tokenizer)
        encoder.enable_truncation(self.config.max_sequence_len, stride=self.config.window_overlap)
        encoder.no_padding()
        if self.config.padding == "max_length":
            encoder.enable_padding(
                pad_id=self.tokenizer.pad_token_id,
                pad_type_id=self.tokenizer.pad_token_type_id,
                pad_token=self.tokenizer.pad_token,
                length=self.config.max_sequence_len,
            )
        return encoder

    def encode(self, texts: list[str]) -> list:
        """Each text's tokens (a `tokenizers.Encoding`: ids, type ids, and the windows truncation cut off), not
        padded: what the server counts against its budget and hands to `predict_encoded` as it is."""
        return self.encoder.encode_batch(texts) if texts else []

    def inputs(self, encodings: list) -> dict[str, Any]:
        """Padded CPU tensors for `encodings`, in their order, padded on the right to the longest."""
        import numpy as np
        import torch

        width = max(len(e) for e in encodings)
        pads = {"input_ids": self.tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        inputs = {}
        for name in self.input_names:
            array = np.full((len(encodings), width), pads[name], dtype=np.int64)
            for row, encoding in enumerate(encodings):
                values = getattr(encoding, INPUT_COLUMNS[name])
                array[row, : len(values)] = values
            inputs[name] = torch.from_numpy(array)
        return inputs

    def tokenize(self, texts: list[str]) -> tuple[dict[str, Any], list[bool]]:
        """The model's inputs for `texts` as CPU tensors, padded as PADDING says, and for each text whether
        it was cut at MAX_SEQUENCE_LEN."""
        encodings = self.encode(texts)
        return self.inputs(encodings), [bool(e.overflowing) for e in encodings]

    def predict(
        self, texts: list[str], stats: PassStats | None = None, truncate: Options = None, detail: Options = False
    ) -> list[Prediction]:
        """Tokenize all the texts in one call, then `predict_encoded`."""
        stats = stats if stats is not None else PassStats()
        started = time.perf_counter()
        encodings = self.encode(texts)
        stats.tokenize_seconds += time.perf_counter() - started
        return self.predict_encoded(encodings, stats, truncate, detail)

    def predict_encoded(
        self, encodings: list, stats: PassStats | None = None, truncate: Options = None, detail: Options = False
    ) -> list[Prediction]:
        """The predictions for tokenized texts: every window of every text through `logits` together, each
        window calibrated by the temperature, then each text's windows aggregated (`windows.aggregate`).

        `truncate` (read the first window only; None: the config's TRUNCATE) and `detail` (list the windows in
        the answer) apply to every text, or per text as lists."""
        import torch

        if not encodings:
            return []
        stats = stats if stats is not None else PassStats()
        started = time.perf_counter()
        truncate = _per_text(self.config.truncate if truncate is None else truncate, len(encodings))
        detail = _per_text(detail, len(encodings))
        readings = [windows(encoding, cut) for encoding, cut in zip(encodings, truncate, strict=True)]
        every_window = [window for reading in readings for window in reading]
        truncated = [cut and bool(encoding.overflowing) for encoding, cut in zip(encodings, truncate, strict=True)]
        stats.truncated += sum(truncated)
        stats.windows += len(every_window)
        stats.windowed += sum(len(reading) > 1 for reading in readings)
        probabilities = torch.softmax(self.logits(every_window, stats) / self.temperature, dim=-1).cpu()
        predictions, start = [], 0
        for reading, cut, show in zip(readings, truncated, detail, strict=True):
            own = probabilities[start : start + len(reading)]
            start += len(reading)
            text = aggregate(own, reading, self.config.window_aggregation).tolist()
            predictions.append(self._prediction(text, cut, self._windows(own, reading) if show else None))
        stats.forward_seconds += time.perf_counter() - started
        return predictions

    def _windows(self, probabilities, reading: list) -> list[dict[str, Any]]:
        described = []
        for row, window in zip(probabilities.tolist(), reading, strict=True):
            start, end = span(window)
            scores = {name: round(p, 6) for name, p in zip(self.config.class_names, row, strict=True)}
            described.append({"start": start, "end": end, "probabilities": scores})
        return described

    def logits(self, encodings: list, stats: PassStats | None = None):
        """The model's fp32 logits [texts, classes] for tokenized texts, in their order, on the device: forward
        passes of similar lengths that each pad to their own longest text and hold at most MAX_BATCH_TOKENS
        padded tokens. A text's logits do not depend on the others (the packed forward, on CPU)."""
        import torch

        stats = stats if stats is not None else PassStats()
        lengths = [len(e) for e in encodings]
        passes = forward_passes(lengths, self.config.max_batch_tokens)
        order = [i for group in passes for i in group]
        # Rows in pass order, so that each pass is a slice: no gathers, no index tensors on the device.
        batch = self.inputs([encodings[i] for i in order])
        if self.device.startswith("cuda"):  # one copy of the whole batch, queued behind the GPU's work
            batch = {name: t.pin_memory().to(self.device, non_blocking=True) for name, t in batch.items()}
        outputs, start = [], 0
        with torch.inference_mode():
            for group in passes:
                # Padding sits on the right, so the pass's rows cut at its longest text are its own batch.
                width = max(lengths[i] for i in group)
                rows = slice(start, start + len(group))
                start += len(group)
                stats.passes.append((len(group), len(group) * width))
                outputs.append(self.forward({name: t[rows, :width] for name, t in batch.items()}).float())
            in_pass_order = torch.cat(outputs)
            # Back to the texts' order; the GPU runs the passes without waiting on the host until the caller reads.
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            return in_pass_order[inverse.to(in_pass_order.device)]

    def predict_isolated(
        self, encodings: list, stats: PassStats | None = None, truncate: Options = None, detail: Options = False
    ) -> list[Prediction | Exception]:
        """`predict_encoded`, except that a text on which the forward pass fails fails alone.

        A failing batch is retried in halves, down to single texts, so its other texts still get
        their predictions (at the cost of smaller batches, only when something failed).
        """
        try:
            return self.predict_encoded(encodings, stats, truncate, detail)
        except Exception as error:
            if len(encodings) == 1:
                log.warning("the model failed on one text of %d tokens: %s", len(encodings[0]), type(error).__name__)
                return [error]
            truncate = _per_text(self.config.truncate if truncate is None else truncate, len(encodings))
            detail = _per_text(detail, len(encodings))
            half = len(encodings) // 2
            first = self.predict_isolated(encodings[:half], stats, truncate[:half], detail[:half])
            return first + self.predict_isolated(encodings[half:], stats, truncate[half:], detail[half:])

    def tokens_per_second(self, max_seconds: float = 2.0) -> float:
        """The forward passes' rate, in tokens per second, on texts as long as MAX_SEQUENCE_LEN allows (the
        costliest tokens: attention grows with length), in passes as full as MAX_BATCH_TOKENS allows.
        One pass to warm up, then up to 8 passes or `max_seconds`; the fastest pass sets the rate (a pass slowed by
        another process starting beside it would set too small a budget for the worker's life)."""
        import torch

        length = self.config.max_sequence_len
        rows = max(1, self.config.max_batch_tokens // length)
        # Ids from the middle of the vocabulary: ordinary word pieces, not special tokens.
        ids = torch.arange(rows * length).remainder(self.tokenizer.vocab_size // 2).add(self.tokenizer.vocab_size // 4)
        inputs = {
            "input_ids": ids.reshape(rows, length),
            "attention_mask": torch.ones(rows, length, dtype=torch.long),
            "token_type_ids": torch.zeros(rows, length, dtype=torch.long),
        }
        inputs = {name: t.to(self.device) for name, t in inputs.items() if name in self.input_names}
        timings: list[float] = []
        started = time.perf_counter()
        with torch.inference_mode():
            self.forward(inputs)  # warms up; does not count
            while len(timings) < 8 and (not timings or time.perf_counter() - started < max_seconds):
                begun = time.perf_counter()
                self.forward(inputs)
                if self.device.startswith("cuda"):
                    torch.cuda.synchronize(self.device)
                timings.append(time.perf_counter() - begun)
        return rows * length / min(timings)

    def warm_up(self, budget_seconds: float = 30.0) -> None:
        """Run the common shapes once (with CUDA graphs: every bucket), so that the first requests do
        not pay for CUDA's lazy setup or a capture. Bounded in time, and logged."""
        import torch

        started, shapes = time.perf_counter(), 0
        graphs = isinstance(self.forward, CudaGraphForward)
        rows = GRAPH_ROWS if graphs else (1, 8, 64, 256)
        widths = self.forward.widths if graphs else (16, 64, self.config.max_sequence_len)
        with torch.inference_mode():
            for n in rows:
                for width in widths:
                    if time.perf_counter() - started > budget_seconds:
                        break
                    inputs = {
                        name: torch.ones((n, width), dtype=torch.long, device=self.device) for name in self.input_names
                    }
                    self.forward(inputs)
                    shapes += 1
        torch.cuda.synchronize(self.device)
        how = "CUDA graphs" if graphs and not self.forward.broken else "eager"
        log.info("warmed %d shapes on %s (%s) in %.1f s", shapes, self.device, how, time.perf_counter() - started)

    def explain(self, texts: list[str], truncate: bool | None = None) -> list[Explanation | Exception]:
        """Each text's prediction with an attribution per word, by occlusion (see `explanation_variants`);
        all variants of all texts in the same budgeted forward passes, read whole or truncated as the text."""
        variants = [explanation_variants(text) for text in texts]
        predictions = self.predict_isolated(self.encode([v for group in variants for v in group]), truncate=truncate)
        explanations, start = [], 0
        for text, group in zip(texts, variants, strict=True):
            explanations.append(explanation(text, predictions[start : start + len(group)]))
            start += len(group)
        return explanations

    def _prediction(self, probabilities: list[float], truncated: bool, windows: list | None = None) -> Prediction:
        best = max(range(len(probabilities)), key=probabilities.__getitem__)
        return Prediction(
            sentiment=self.config.class_names[best],
            confidence=round(probabilities[best], 6),
            probabilities={name: round(p, 6) for name, p in zip(self.config.class_names, probabilities, strict=True)},
            truncated=truncated,
            windows=windows,
        )


# A per-text option: one value for every text, or one per text.
Options = bool | list[bool] | None


def _per_text(option: bool | list[bool], count: int) -> list[bool]:
    return list(option) if isinstance(option, list) else [bool(option)] * count


# The model inputs the tokenizer may name, and the `tokenizers.Encoding` field that holds each.
INPUT_COLUMNS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def explanation_variants(text: str) -> list[str]:
    """The text, then the text without each of its whitespace-separated words in turn (occlusion).
    A text of one word without that word is empty: the tokenizer gives [CLS] [SEP], which is fine."""
    words = text.split()
    return [text, *(" ".join(words[:i] + words[i + 1 :]) for i in range(len(words)))]


def explanation(text: str, predictions: list[Prediction | Exception]) -> Explanation | Exception:
    """The explanation of `text` from the predictions of its `explanation_variants`: per word, how much
    the predicted class's probability drops without it. A failed variant fails the explanation."""
    failed = next((p for p in predictions if isinstance(p, Exception)), None)
    if failed is not None:
        return failed
    full, *without = predictions
    scores = [full.confidence - p.probabilities[full.sentiment] for p in without]
    attributions = [{"word": word, "score": round(score, 6)} for word, score in zip(text.split(), scores, strict=True)]
    return Explanation(**dataclasses.asdict(full), attributions=attributions)
