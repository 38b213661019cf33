"""BERT (and MPNet) on the CPU over each text's own tokens: answers that do not depend on the other texts.

Why a forward of our own. With Hugging Face's forward, a text padded to the longest text of its pass
meets other lengths in attention (its softmax sums over masked keys in another order), and int8
dynamic quantization picks one activation scale for the whole pass: the largest activation of any
text set everyone's rounding. A text's sentiment then changed with its neighbours
(docs/batch-invariance.md). Here:

- the tokens of all texts of a pass are packed into one [tokens, hidden] matrix with no padding, so
  every matrix product, layer norm and activation sees each token's row alone (and no work is spent
  on padding);
- attention runs per text over its own tokens (BERT texts of equal length together: the same kernel
  on the same shapes, bit for bit what the text gets alone; MPNet adds its relative position bias,
  one call per text);
- int8 layers quantize activations per token (one scale per row), so a row's rounding depends on
  that row only; the integer products are exact, and the scales are applied after.

The tensors are the model's own (`BertForSequenceClassification`, the mean-pooling variants, MPNet
under the mean-pooling head), so training, the tests' tiny models, imported checkpoints and
sentiment-large all run through it unchanged.
"""

from __future__ import annotations

import functools
import logging
from functools import cache

log = logging.getLogger(__name__)


@cache
def has_vnni() -> bool:
    """Whether 8-bit activations are exact on this CPU's oneDNN kernels. With VNNI they are; without it
    (AVX2, early AVX-512) oneDNN sums pairs of u8 x s8 products in 16 bits, which overflows for 8-bit
    activations around 128. Tested on the kernel itself, with the one input that overflows (every
    activation and weight at the top of its range), rather than read from /proc/cpuinfo: oneDNN may be
    told to use less than the CPU has (ONEDNN_MAX_CPU_ISA)."""
    import torch

    linear = torch.nn.Linear(64, 8, bias=False)
    with torch.no_grad():
        linear.weight.fill_(1.0)
    out = RowwiseInt8Linear(linear, levels=127)(torch.ones(1, 64))
    return bool(torch.allclose(out, torch.full_like(out, 64.0)))


# The activations the packed forward runs, by their Hugging Face names: exact GELU, its tanh form, ReLU.
ACTIVATIONS = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "relu": "relu"}


def supports(model) -> bool:
    """Whether `model` is a classifier on an encoder this forward knows how to run: BERT (absolute
    positions), or MPNet (relative position biases) under the mean-pooling head."""
    bert = getattr(model, "bert", None)
    if bert is not None:
        config = bert.config
        return (
            getattr(config, "position_embedding_type", "absolute") == "absolute"
            and config.hidden_act in ACTIVATIONS
            and not config.is_decoder
        )
    encoder = getattr(model, "encoder", None)
    return encoder is not None and encoder.config.model_type == "mpnet" and encoder.config.hidden_act in ACTIVATIONS


class RowwiseInt8Linear:
    """A Linear layer with int8 weights (one scale per output channel) whose activations are quantized
    per row: each token's largest magnitude maps to `levels` (127, or 63 where 8 bits are not exact).
    oneDNN multiplies the integers; the row and channel scales are applied to the fp32 result."""

    def __init__(self, linear, levels: int):
        import torch

        weight = linear.weight.detach().float()
        self.out_features = weight.shape[0]
        self.weight_scale = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127).contiguous()
        quantized = torch.round(weight / self.weight_scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qlinear_prepack(quantized, None)
        self.weight_zero = torch.zeros(self.out_features, dtype=torch.int64)
        self.bias = None if linear.bias is None else linear.bias.detach().float()
        # Activations in [-levels, levels], stored as uint8 around a zero point: 127 around 128 where the
        # CPU has VNNI; without it oneDNN sums pairs of u8 x s8 products in 16 bits, which overflowed for
        # 8-bit activations (results off by up to 14% under ONEDNN_MAX_CPU_ISA=AVX2) and is exact for
        # 63 around 64 (127 x 127 x 2 < 32,768).
        self.levels = levels
        self.zero_point = levels + 1

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / self.levels
        # oneDNN's u8 x s8 kernels (its s8 x s8 path ran 1,000x slower here). Rounded to int8, then the zero
        # point added in uint8 (wrapping): converting floats to uint8 directly took twice as long as all
        # the rest of the quantization.
        quantized = torch.round(x / scale).to(torch.int8).view(torch.uint8).add_(self.zero_point)
        rows = quantized.shape[0]
        # oneDNN compiles and caches a kernel per row count: a new count cost 1.6 ms more than a known one
        # here, and 300 of them 121 MB. Rows of zeros up to a bucket keep the counts few.
        quantized = F.pad(quantized, (0, 0, 0, row_bucket(rows) - rows), value=self.zero_point)
        out = torch.ops.onednn.qlinear_pointwise(
            quantized, 1.0, self.zero_point, self.packed, self.weight_scale, self.weight_zero, None,
            1.0, 0, torch.float32, "none", [], "",
        )[:rows]  # fmt: skip
        # The row scales, then the bias, in one pass over the output.
        return out.mul_(scale) if self.bias is None else torch.addcmul(self.bias, out, scale)


def row_bucket(rows: int) -> int:
    """`rows`, rounded up to one of 8 steps per power of two above 32 (at most 1/8 more rows): about 100
    row counts up to 8,192 tokens, so oneDNN's kernel cache (1,024 kernels) holds them all."""
    if rows <= 32:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


class Fp32Linear:
    def __init__(self, linear):
        self.weight = linear.weight.detach().float().contiguous()
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def __call__(self, x):
        import torch.nn.functional as F

        return F.linear(x, self.weight, self.bias)


def _attention_parts(attention, mpnet: bool):
    """query, key, value, output projection and layer norm of one layer's attention block."""
    if mpnet:
        return attention.attn.q, attention.attn.k, attention.attn.v, attention.attn.o, attention.LayerNorm
    own, output = attention.self, attention.output
    return own.query, own.key, own.value, output.dense, output.LayerNorm


def _fused(*linears):
    """One Linear doing the work of several that read the same input (query, key, value)."""
    import torch

    fused = torch.nn.Linear(linears[0].in_features, sum(linear.out_features for linear in linears))
    with torch.no_grad():
        fused.weight.copy_(torch.cat([linear.weight for linear in linears]))
        fused.bias.copy_(torch.cat([linear.bias for linear in linears]))
    return fused


class PackedBertClassifier:
    """The logits of a BERT (or MPNet) classifier for padded inputs, computed on each text's real tokens.

    `precision` is "int8" (activations per token, weights per channel) or "fp32". `pooling` is "mean"
    (of the text's token vectors) or "pooler" ([CLS] through BERT's pooler). The classifier head
    stays in fp32: it is 3 rows, and it sets the answer.
    """

    def __init__(self, model, precision: str, pooling: str):
        import torch

        if precision == "int8":
            levels = 127 if has_vnni() else 63
            linear = lambda layer: RowwiseInt8Linear(layer, levels)  # noqa: E731
        else:
            linear = Fp32Linear
        encoder = getattr(model, "bert", None) or model.encoder
        config = encoder.config
        self.config = model.config
        self.hidden = config.hidden_size
        self.heads = config.num_attention_heads
        self.eps = config.layer_norm_eps
        kind = ACTIVATIONS[config.hidden_act]
        if kind == "relu":
            self.activation = torch.nn.functional.relu
        else:
            self.activation = functools.partial(
                torch.nn.functional.gelu, approximate="tanh" if kind == "tanh" else "none"
            )
        embeddings = encoder.embeddings
        self.word = embeddings.word_embeddings.weight.detach()
        self.position = embeddings.position_embeddings.weight.detach()
        self.embedding_norm = self._norm(embeddings.LayerNorm)
        self.layers = []
        self.mpnet = config.model_type == "mpnet"
        if self.mpnet:
            # MPNet counts positions from padding_idx + 1, has no token types, and adds to the attention
            # scores a bias learnt per head for each bucket of relative distance.
            self.first_position = embeddings.padding_idx + 1
            self.token_type = None
            # The bias depends on the distance between two positions only: computed once for the longest
            # text, a shorter text's is its top-left corner.
            longest = config.max_position_embeddings - self.first_position
            positions = torch.arange(longest)
            buckets = encoder.encoder.relative_position_bucket(positions[None, :] - positions[:, None])
            with torch.no_grad():
                self.position_bias = encoder.encoder.relative_attention_bias(buckets).permute(2, 0, 1).contiguous()
        else:
            self.first_position = 0
            self.token_type = embeddings.token_type_embeddings.weight.detach()
        for layer in encoder.encoder.layer:
            query, key, value, out, norm = _attention_parts(layer.attention, self.mpnet)
            self.layers.append(
                (
                    linear(_fused(query, key, value)),
                    linear(out),
                    self._norm(norm),
                    linear(layer.intermediate.dense),
                    linear(layer.output.dense),
                    self._norm(layer.output.LayerNorm),
                )
            )
        self.pooling = pooling
        pooler = getattr(encoder, "pooler", None)
        self.pooler = Fp32Linear(pooler.dense) if pooling == "pooler" else None
        self.head = Fp32Linear(model.classifier)
        self.precision = precision

    @staticmethod
    def _norm(layer_norm):
        return layer_norm.weight.detach(), layer_norm.bias.detach()

    def __call__(self, inputs: dict):
        """Logits [texts, classes] for padded `inputs` (input_ids, attention_mask, token_type_ids),
        padding on the right."""
        import torch
        import torch.nn.functional as F

        mask = inputs["attention_mask"].bool()
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        ids = inputs["input_ids"][mask]
        positions = (inputs["attention_mask"].cumsum(dim=1) - 1)[mask] + self.first_position
        x = self.word[ids] + self.position[positions]
        if self.token_type is not None:
            types = inputs["token_type_ids"][mask] if "token_type_ids" in inputs else torch.zeros_like(ids)
            x = x + self.token_type[types]
        x = F.layer_norm(x, (self.hidden,), *self.embedding_norm, self.eps)
        # Texts of equal length share an attention call; with MPNet's bias as the mask, a call over two texts
        # gave other last bits than one per text (measured), so each MPNet text has its own.
        runs = [(1, length) for length in lengths] if self.mpnet else _equal_runs(lengths)
        for qkv, out, norm1, up, down, norm2 in self.layers:
            x = F.layer_norm(x + out(self._attention(qkv(x), runs)), (self.hidden,), *norm1, self.eps)
            x = F.layer_norm(x + down(self.activation(up(x))), (self.hidden,), *norm2, self.eps)
        texts = x.split(lengths)
        if self.pooling == "mean":
            pooled = torch.stack([text.mean(dim=0, keepdim=True) for text in texts])
        else:
            pooled = torch.tanh(_rowwise(self.pooler, torch.stack([text[:1] for text in texts])))
        return _rowwise(self.head, pooled).squeeze(1)

    def _attention(self, qkv, runs: list[tuple[int, int]]):
        """Self-attention of each text over its own tokens; texts of equal length in one call."""
        import torch
        import torch.nn.functional as F

        heads, size = self.heads, self.hidden // self.heads
        contexts = []
        for count, length in runs:
            block, qkv = qkv[: count * length], qkv[count * length :]
            # [count * length, 3 * hidden] -> three [count, heads, length, size]
            query, key, value = block.view(count, length, 3, heads, size).permute(2, 0, 3, 1, 4).unbind(0)
            bias = self._position_bias(length) if self.mpnet else None
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
            contexts.append(context.transpose(1, 2).reshape(count * length, self.hidden))
        return torch.cat(contexts)

    def _position_bias(self, length: int):
        """MPNet's relative position bias for a text of `length` tokens, [heads, length, length], as
        `MPNetEncoder.compute_position_bias` makes it."""
        return self.position_bias[:, :length, :length]


def _rowwise(linear: Fp32Linear, rows):
    """`linear` on [texts, 1, features], one product per text: a matrix product's kernel changes with the
    row count (and with it the last bits), so each text gets the product it gets alone."""
    import torch

    return torch.stack([linear(row) for row in rows])


def _equal_runs(lengths: list[int]) -> list[tuple[int, int]]:
    """(count, length) for each run of consecutive texts of the same length."""
    runs: list[tuple[int, int]] = []
    for length in lengths:
        if runs and runs[-1][1] == length:
            runs[-1] = (runs[-1][0] + 1, length)
        else:
            runs.append((1, length))
    return runs
