"""The plain classifier and its configuration, on a tiny random BERT."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import SentimentClassifier, forward_passes, weights_metadata
from sentiment.serving.config import ConfigError, ModelConfig
from tests.tiny_models import CLASS_NAMES, save_tiny_mpnet, write_model_dir


def load(model_dir):
    return SentimentClassifier(ModelConfig.from_file(model_dir / "config.json")).load()


def test_prediction_has_the_tutorial_shape(classifier):
    (prediction,) = classifier.predict(["great app, love it"])
    body = prediction.to_dict()
    assert set(body) == {"sentiment", "confidence", "probabilities", "truncated"}
    assert list(body["probabilities"]) == CLASS_NAMES
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == max(body["probabilities"].values())
    assert body["sentiment"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["truncated"] is False


def test_input_padding_is_to_the_longest_text_of_the_batch(classifier):
    batch, _ = classifier.tokenize(["good", "bad movie , awful phone"])
    longest = len(classifier.tokenizer("bad movie , awful phone")["input_ids"])
    assert batch["input_ids"].shape == (2, longest)
    assert longest < classifier.config.max_sequence_len
    assert batch["attention_mask"][0].sum() == 3  # [CLS] good [SEP]


def test_input_truncation_cuts_at_max_sequence_len_and_says_so(classifier):
    long_text = " ".join(["good"] * 40)
    batch, truncated = classifier.tokenize([long_text, "bad"])
    assert batch["input_ids"].shape[1] == classifier.config.max_sequence_len
    assert truncated == [True, False]
    short, cut = classifier.predict(["bad", long_text], truncate=True)
    assert cut.truncated is True
    assert short.truncated is False
    short, whole = classifier.predict(["bad", long_text])  # read whole by default: nothing left unread
    assert whole.truncated is False
    assert short.truncated is False


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_the_tokenizer_backend_gives_the_ids_the_tokenizer_gives(tmp_path, tiny_bert_dir, padding):
    """predict() calls the tokenizer's Rust backend directly, for speed: same ids, masks and types."""
    classifier = load(write_model_dir(tmp_path / "m", tiny_bert_dir, PADDING=padding))
    texts = [
        "good",
        "",
        "  spaces\tand\nnewlines  ",
        "Ünïcödé, émojis 😀👍🏽 and 日本語のテキスト",
        "a zero\u200bwidth space and a right-to-left \u202e mark",
        "bad " * 40,
        "x" * 300,
    ]
    inputs, truncated = classifier.tokenize(texts)
    expected = classifier.tokenizer(
        texts, padding=padding, truncation=True, max_length=classifier.config.max_sequence_len, return_tensors="pt"
    )
    assert set(inputs) == set(expected.keys())
    for name, tensor in inputs.items():
        assert tensor.dtype == expected[name].dtype
        assert tensor.tolist() == expected[name].tolist(), name
    assert truncated == [bool(e.overflowing) for e in expected.encodings]


def test_a_batch_of_n_equals_n_singles(classifier):
    texts = [
        "good",
        "awful waste of time",
        "love the app , easy schedule !",
        "hate",
        " ".join(["great"] * 30),
    ]
    batched = classifier.predict(texts)
    for text, together in zip(texts, batched, strict=True):
        (alone,) = classifier.predict([text])
        assert alone.sentiment == together.sentiment
        for name in CLASS_NAMES:
            assert alone.probabilities[name] == pytest.approx(together.probabilities[name], abs=1e-5)


def test_an_mpnet_encoder_serves_with_mean_pooling_a_batch_equal_to_singles(tmp_path, tiny_bert_dir):
    """Backbones other than BERT (the large model is MPNet) get the generic mean-pooling head."""
    mpnet = save_tiny_mpnet(tmp_path / "mpnet", tiny_bert_dir)
    classifier = load(write_model_dir(tmp_path / "m", mpnet, POOLING="mean"))
    assert type(classifier.model).__name__ == "MeanPoolingEncoderClassifier"
    texts = ["good", "awful waste of time", "love the app , easy schedule !"]
    for text, together in zip(texts, classifier.predict(texts), strict=True):
        (alone,) = classifier.predict([text])
        for name in CLASS_NAMES:
            assert alone.probabilities[name] == pytest.approx(together.probabilities[name], abs=1e-5)


@pytest.mark.parametrize(("backbone", "pooling"), [("bert", "mean"), ("bert", "pooler"), ("mpnet", "mean")])
def test_the_packed_forward_computes_what_hugging_face_s_forward_computes(tmp_path, tiny_bert_dir, backbone, pooling):
    """The packed fp32 forward (each text over its own tokens) against the model's own padded forward."""
    from sentiment.serving.packed import PackedBertClassifier

    folder = save_tiny_mpnet(tmp_path / "mpnet", tiny_bert_dir) if backbone == "mpnet" else tiny_bert_dir
    classifier = load(write_model_dir(tmp_path / "m", folder, POOLING=pooling, PRECISION="fp32"))
    assert isinstance(classifier.forward, PackedBertClassifier)
    # Words of the tiny vocabulary only: MPNet's own forward takes token id 1 for padding (its tokenizer's
    # <pad>), which is [UNK] here.
    inputs, _ = classifier.tokenize(["good", "awful waste , bad phone , hate time", "love app , easy schedule !"])
    with torch.inference_mode():
        padded = classifier.model(**inputs).logits
        packed = classifier.forward(inputs)
    assert torch.allclose(packed, padded, atol=1e-5)


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_an_mpnet_text_s_answer_is_the_same_alone_and_in_any_batch(tmp_path, tiny_bert_dir, precision):
    mpnet = save_tiny_mpnet(tmp_path / "mpnet", tiny_bert_dir)
    classifier = load(write_model_dir(tmp_path / "m", mpnet, POOLING="mean", PRECISION=precision))
    texts = ["good", "awful waste of time", "love the app , easy schedule !", "great " * 30, "bad phone"] * 4
    alone = [classifier.predict([text])[0] for text in texts]
    assert classifier.predict(texts) == alone
    assert classifier.predict(texts[::-1]) == alone[::-1]


def test_an_mpnet_encoder_with_pooler_pooling_is_refused_naming_the_fix(tmp_path, tiny_bert_dir):
    mpnet = save_tiny_mpnet(tmp_path / "mpnet", tiny_bert_dir)
    with pytest.raises(ConfigError, match="'mpnet' encoder: only POOLING \"mean\""):
        load(write_model_dir(tmp_path / "m", mpnet, POOLING="pooler"))


def test_empty_batch_runs_no_model(classifier):
    assert classifier.predict([]) == []


def test_temperature_from_the_weights_metadata_softens_probabilities(tmp_path, tiny_bert_dir, classifier):
    model_dir = write_model_dir(tmp_path / "hot", tiny_bert_dir)
    tensors = {"classifier.weight": torch.randn(3, 32) * 5, "classifier.bias": torch.zeros(3)}
    save_file(tensors, str(model_dir / "head.safetensors"), metadata={"temperature": "1.0"})
    sharp = load(model_dir).predict(["good movie"])[0]
    save_file(tensors, str(model_dir / "head.safetensors"), metadata={"temperature": "4.0"})
    soft = load(model_dir)
    assert soft.temperature == 4.0
    assert soft.predict(["good movie"])[0].confidence < sharp.confidence


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"MAX_SEQUENCE_LEN": "128"}, "MAX_SEQUENCE_LEN must be an integer, got '128'"),
        ({"MAX_SEQUENCE_LEN": True}, "MAX_SEQUENCE_LEN must be an integer, got True"),
        ({"MAX_SEQUENCE_LEN": 4}, "MAX_SEQUENCE_LEN must be within 8..4096, got 4"),
        ({"MODEL_VERSION": 1}, "MODEL_VERSION must be a string, got 1"),
        ({"CLASS_NAMES": ["positive"]}, "at least two distinct"),
        ({"CLASS_NAMES": ["positive", 3]}, "CLASS_NAMES must be a list of non-empty strings"),
        ({"MAX_TEXT_CHARS": 0}, "MAX_TEXT_CHARS must be at least 1, got 0"),
        ({"BATCH": 3}, "unknown config keys: ['BATCH']"),
        ({"PRECISION": "int4"}, "PRECISION must be one of ['auto', 'fp32', 'int8', 'int8-per-pass', 'fp16', 'bf16']"),
        ({"PADDING": "shortest"}, "PADDING must be one of"),
        ({"POOLING": "max"}, "POOLING must be one of"),
        ({"THREADS": -1}, "THREADS must be at least 0, got -1"),
        ({"GPU": "fast"}, "GPU must be an object of config keys, got 'fast'"),
        ({"GPU": {"MAX_BATCH_TOKEN": 9000}}, "GPU: unknown config keys: ['MAX_BATCH_TOKEN']"),
        ({"GPU": {"MAX_BATCH_TOKENS": 4}}, "GPU: MAX_BATCH_TOKENS must be at least MAX_SEQUENCE_LEN"),
        ({"GPU": {"GPU": {}}}, "GPU cannot hold GPU"),
    ],
)
def test_config_errors_name_the_key(model_dir, change, message):
    raw = json.loads((model_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig.from_dict({**raw, **change}, model_dir)


def test_gpu_keys_take_effect_on_a_gpu_only():
    config = ModelConfig().with_keys(GPU={"MAX_BATCH_TOKENS": 4096, "THREADS": 2})
    assert SentimentClassifier(config, "cpu").config.max_batch_tokens == 512
    on_gpu = SentimentClassifier(config, "cuda:1").config
    assert (on_gpu.max_batch_tokens, on_gpu.threads, on_gpu.gpu) == (4096, 2, {})


def test_the_shipped_config_json_is_the_definition_s_defaults():
    assert ModelConfig.from_file(DEFAULT_CONFIG).to_dict(DEFAULT_CONFIG.parent) == ModelConfig().to_dict()


def test_a_written_config_loads_back_equal(tmp_path, model_dir):
    config = ModelConfig.from_file(model_dir / "config.json")
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    assert ModelConfig.from_file(config.write(copy_dir / "config.json")) == config


def test_a_config_written_before_a_key_existed_loads_with_its_default_and_says_so(model_dir, caplog):
    raw = json.loads((model_dir / "config.json").read_text())
    del raw["THREADS"]
    config = ModelConfig.from_dict(raw, model_dir)
    assert config.threads == ModelConfig().threads
    assert "lacks ['THREADS']: using the defaults" in caplog.text


def test_relative_paths_are_read_from_the_config_folder(model_dir):
    config = ModelConfig.from_file(model_dir / "config.json")
    assert config.pre_trained_model == str(model_dir / "head.safetensors")


def test_max_sequence_len_beyond_the_position_limit_is_refused_at_load(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, MAX_SEQUENCE_LEN=512, MAX_HANDLE_TOKENS=64 * 512)
    with pytest.raises(ConfigError, match="exceeds the model's limit of 64"):
        load(model_dir)


def test_weights_for_another_class_count_are_refused(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    save_file(
        {"classifier.weight": torch.randn(2, 32), "classifier.bias": torch.randn(2)},
        str(model_dir / "head.safetensors"),
    )
    with pytest.raises(ConfigError, match=r"tensor classifier.bias has shape \(2,\), the model expects \(3,\)"):
        load(model_dir)


def test_weights_trained_for_another_class_order_are_refused(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    reordered = ("positive", "neutral", "negative")
    save_file(
        {"classifier.weight": torch.randn(3, 32), "classifier.bias": torch.randn(3)},
        str(model_dir / "head.safetensors"),
        metadata=weights_metadata(reordered, 1.0),
    )
    with pytest.raises(ConfigError, match=r"trained for classes \['positive', 'neutral', 'negative'\]"):
        load(model_dir)


def test_weights_with_foreign_tensors_are_refused(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    save_file(
        {
            "classifier.weight": torch.randn(3, 32),
            "classifier.bias": torch.randn(3),
            "out.weight": torch.randn(3, 32),
        },
        str(model_dir / "head.safetensors"),
    )
    with pytest.raises(ConfigError, match=r"does not have: \['out\.weight'\]"):
        load(model_dir)


def test_weights_without_the_head_are_refused(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    save_file({"classifier.bias": torch.randn(3)}, str(model_dir / "head.safetensors"))
    with pytest.raises(ConfigError, match=r"lacks tensors.*classifier\.weight"):
        load(model_dir)


def test_pickled_weights_are_refused(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, PRE_TRAINED_MODEL="head.bin")
    torch.save({"classifier.weight": torch.randn(3, 32)}, model_dir / "head.bin")
    with pytest.raises(ConfigError, match=r"must be a \.safetensors file"):
        load(model_dir)


def test_bert_model_must_be_a_local_folder(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, BERT_MODEL="bert-base-cased")
    with pytest.raises(ConfigError, match="not a Hugging Face model folder"):
        load(model_dir)


def test_max_length_padding_pads_every_text_like_the_tutorial(tmp_path, tiny_bert_dir):
    classifier = load(write_model_dir(tmp_path / "m", tiny_bert_dir, PADDING="max_length"))
    assert classifier.tokenize(["good"])[0]["input_ids"].shape == (1, 16)


def test_int8_precision_quantizes_linear_layers_per_token_and_stays_close_to_fp32(tmp_path, tiny_bert_dir, classifier):
    from sentiment.serving.packed import PackedBertClassifier, RowwiseInt8Linear

    quantized = load(write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION="int8"))
    assert quantized.precision == "int8"
    assert isinstance(quantized.forward, PackedBertClassifier)
    assert all(isinstance(linear, RowwiseInt8Linear) for layer in quantized.forward.layers for linear in layer[::3][:1])
    texts = ["good movie", "awful waste of time", "love the app"]
    for fp32, int8 in zip(classifier.predict(texts), quantized.predict(texts), strict=True):
        for name in CLASS_NAMES:
            assert int8.probabilities[name] == pytest.approx(fp32.probabilities[name], abs=0.05)


@pytest.mark.parametrize("vnni", [True, False])
def test_int8_activations_per_token_match_exact_integer_arithmetic(vnni):
    """oneDNN's integer product against the same product in float64: exact where its kernels are (with
    VNNI, or 7-bit activations without it), so the scales alone decide the rounding."""
    from sentiment.serving.packed import RowwiseInt8Linear, has_vnni

    if vnni and not has_vnni():
        pytest.skip("8-bit activations are served only on CPUs with VNNI")
    torch.manual_seed(0)
    linear = torch.nn.Linear(384, 96)
    int8 = RowwiseInt8Linear(linear, 127 if vnni else 63)
    x = torch.randn(50, 384) * 4
    scale = x.abs().amax(dim=-1, keepdim=True) / int8.levels
    weights = torch.round(linear.weight.detach() / int8.weight_scale[:, None])
    exact = (torch.round(x / scale).double() @ weights.double().t()) * int8.weight_scale.double() * scale.double()
    exact += linear.bias.detach().double()
    assert torch.allclose(int8(x).double(), exact, rtol=1e-5, atol=1e-5)


def test_int8_per_pass_is_pytorch_s_dynamic_quantization(tmp_path, tiny_bert_dir):
    quantized = load(write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION="int8-per-pass"))
    served = quantized.forward.__closure__[0].cell_contents  # the quantized module the forward calls
    linears = [m for m in served.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert linears
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in linears)  # one scale per output row


@pytest.mark.parametrize("precision", ["int8", "int8 without VNNI", "fp32"])
@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_a_text_s_answer_is_the_same_alone_and_in_any_batch(tmp_path, tiny_bert_dir, precision, pooling, monkeypatch):
    """Bit for bit: the packed forward gives each text its own tokens, its own attention and (int8)
    its own activation scales, whatever shares its pass."""
    from sentiment.serving import packed

    if precision == "int8 without VNNI":  # 7-bit activations, as on CPUs without VNNI
        monkeypatch.setattr(packed, "has_vnni", lambda: False)
        precision = "int8"
    classifier = load(write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION=precision, POOLING=pooling))
    words = ["good", "bad", "great", "awful", "love", "hate", "movie", "phone", "app", "waste", "easy", "!"]
    rng = __import__("random").Random(3)
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(96)]
    texts[5] = "great " * 200  # truncated, and far larger activations than its neighbours
    alone = [classifier.predict([text])[0] for text in texts]
    for size in (8, 64, 96):
        together = [p for start in range(0, len(texts), size) for p in classifier.predict(texts[start : start + size])]
        assert together == alone
    assert classifier.predict(texts[::-1]) == alone[::-1]  # order in the batch does not matter either


def test_auto_precision_is_int8_on_cpu(tmp_path, tiny_bert_dir):
    assert load(write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION="auto")).precision == "int8"


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_setting_is_applied(tmp_path, tiny_bert_dir, threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # neither value under test, whatever torch's default is here
        load(write_model_dir(tmp_path / "m", tiny_bert_dir, THREADS=threads))
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_mean_pooling_ignores_padding_and_differs_from_the_pooler(tmp_path, tiny_bert_dir, classifier):
    mean = load(write_model_dir(tmp_path / "m", tiny_bert_dir, POOLING="mean"))
    assert type(mean.model).__name__ == "MeanPoolingBertForSequenceClassification"
    assert "bert.pooler.dense.weight" not in mean.model.state_dict()
    (alone,) = mean.predict(["good"])
    in_batch = mean.predict(["good", "a much longer and padded review of a bad phone"])[0]
    assert in_batch.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
    (pooled,) = classifier.predict(["good"])
    assert pooled.probabilities != pytest.approx(alone.probabilities, abs=1e-3)


def test_the_tiny_tokenizer_knows_its_words(classifier):
    # Unit tests that tell texts apart are only as good as a tokenizer that does.
    ids = classifier.tokenizer("good bad movie")["input_ids"]
    assert classifier.tokenizer.unk_token_id not in ids
    assert len(set(ids)) == 5


def test_forward_passes_sort_by_length_and_keep_each_pass_within_the_token_budget():
    lengths = [5, 30, 6, 31, 7, 8, 120]
    passes = forward_passes(lengths, token_budget=64)
    assert sorted(i for group in passes for i in group) == list(range(len(lengths)))
    for group in passes:
        assert len(group) * max(lengths[i] for i in group) <= 64 or len(group) == 1
    assert passes == [[0, 2, 4, 5], [1, 3], [6]]  # the 120-token text goes alone


def test_a_small_token_budget_splits_the_forward_pass_without_changing_answers(tmp_path, tiny_bert_dir, classifier):
    texts = ["good", "awful waste of time , bad phone", "love it", " ".join(["great"] * 12), "hate"]
    budgeted = load(write_model_dir(tmp_path / "m", tiny_bert_dir, MAX_BATCH_TOKENS=16))
    shapes, forward = [], budgeted.forward
    budgeted.forward = lambda inputs: shapes.append(tuple(inputs["input_ids"].shape)) or forward(inputs)
    split = budgeted.predict(texts)
    assert len(shapes) > 1 and all(rows * width <= 16 or rows == 1 for rows, width in shapes)
    for alone, together in zip(classifier.predict(texts), split, strict=True):
        assert together.probabilities == pytest.approx(alone.probabilities, abs=1e-5)


def test_the_token_budget_must_hold_one_text():
    with pytest.raises(ConfigError, match="MAX_BATCH_TOKENS must be at least MAX_SEQUENCE_LEN \\(128\\)"):
        ModelConfig(max_batch_tokens=64)


def test_an_explanation_scores_each_word_by_what_leaving_it_out_costs_the_prediction(classifier):
    (explanation,) = classifier.explain(["love the app"])
    (alone,) = classifier.predict(["love the app"])
    assert explanation.sentiment == alone.sentiment
    assert [a["word"] for a in explanation.attributions] == ["love", "the", "app"]
    (without_love,) = classifier.predict(["the app"])
    expected = alone.confidence - without_love.probabilities[alone.sentiment]
    assert explanation.attributions[0]["score"] == pytest.approx(expected, abs=1e-5)


def test_integrated_gradients_add_up_to_the_change_from_the_zero_embedding(classifier):
    # Completeness (Sundararajan et al., 2017): the attributions sum to f(x) - f(baseline).
    from sentiment.perf.attributions import integrated_gradients, token_gradients

    text, target = "awful waste of time", 0
    assert len(integrated_gradients(classifier, text, target, steps=4)) == 4  # one score per word
    _, scores = token_gradients(classifier, text, target, steps=300)
    batch = classifier.tokenizer([text], return_tensors="pt")
    embeddings = classifier.model.bert.embeddings.word_embeddings
    with torch.no_grad():
        full = torch.softmax(classifier.model(**batch).logits, -1)[0, target].item()
        hook = embeddings.register_forward_hook(lambda _m, _a, output: torch.zeros_like(output))
        try:
            baseline = torch.softmax(classifier.model(**batch).logits, -1)[0, target].item()
        finally:
            hook.remove()
    assert sum(scores) == pytest.approx(full - baseline, abs=0.01)


class _ReplayEagerly:
    """Stands in for a CUDA graph on the CPU: replaying runs the model on the static buffers."""

    def __init__(self, run):
        self.replay = run


def _capture_on_cpu(self, key, names):
    import torch

    static = {name: torch.zeros(key, dtype=torch.long) for name in names}
    logits = torch.zeros(key[0], self.model.config.num_labels)

    def run():
        logits.copy_(self.model(**static).logits)

    self.graphs[key] = (static, logits, _ReplayEagerly(run))
    return self.graphs[key]


@pytest.mark.parametrize("pooling", ["mean", "pooler"])
def test_cuda_graph_buckets_pad_inputs_without_changing_any_real_row(tmp_path, tiny_bert_dir, monkeypatch, pooling):
    """Graph replay pads rows and tokens up to the bucket: the real rows' logits must not move."""
    import torch

    from sentiment.serving.classifier import CudaGraphForward

    classifier = load(write_model_dir(tmp_path / "m", tiny_bert_dir, POOLING=pooling, PRECISION="fp32"))
    monkeypatch.setattr(CudaGraphForward, "capture", _capture_on_cpu)
    graphs = CudaGraphForward(classifier.model, "cpu", classifier.config.max_sequence_len)
    texts = ["good", "a bad , awful , broken phone", "fine i guess"]
    inputs, _ = classifier.tokenize(texts)
    with torch.inference_mode():
        eager = classifier.model(**inputs).logits
        replayed = graphs(inputs)
    assert inputs["input_ids"].shape[0] == 3 and graphs.bucket(*inputs["input_ids"].shape) in graphs.graphs
    assert replayed.shape == eager.shape
    assert torch.allclose(replayed, eager, atol=1e-5)


def test_a_model_that_cannot_be_captured_runs_eagerly_and_says_so_once(classifier, caplog):
    import torch

    from sentiment.serving.classifier import CudaGraphForward

    graphs = CudaGraphForward(classifier.model, "cpu", classifier.config.max_sequence_len)  # no CUDA here
    inputs, _ = classifier.tokenize(["good", "bad"])
    with torch.inference_mode():
        first, second = graphs(inputs), graphs(inputs)
        eager = classifier.model(**inputs).logits
    assert graphs.broken and not graphs.graphs
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert caplog.text.count("CUDA graphs off") == 1


def test_the_default_model_answers_each_text_alone_as_in_any_batch():
    """The served default (int8 on CPU) over 256 sentences: the same answer, to the last digit, alone and in
    batches of 8 and 64 (the issue it fixes: int8 with one activation scale per pass moved 5% of them)."""
    from tests.sentences import mixed_sentences

    classifier = SentimentClassifier(ModelConfig.from_file(DEFAULT_CONFIG)).load()
    assert classifier.precision == "int8"
    texts = mixed_sentences(256)
    alone = [classifier.predict([text])[0] for text in texts]
    for size in (8, 64):
        together = [p for start in range(0, len(texts), size) for p in classifier.predict(texts[start : start + size])]
        assert together == alone


def test_auto_precision_falls_back_to_per_pass_int8_where_packed_does_not_run_and_says_so(
    tmp_path, tiny_bert_dir, caplog
):
    """PADDING max_length (the tutorial's way) pads every text: the packed forward does not run it."""
    with caplog.at_level("WARNING"):
        fallback = load(write_model_dir(tmp_path / "a", tiny_bert_dir, PRECISION="auto", PADDING="max_length"))
    assert fallback.precision == "int8-per-pass"
    assert "answers depend on the batch" in caplog.text
    with pytest.raises(ConfigError, match=r"PRECISION int8 .* runs BERT and MPNet encoders on CPU"):
        load(write_model_dir(tmp_path / "b", tiny_bert_dir, PRECISION="int8", PADDING="max_length"))


def test_gelu_in_its_tanh_form_is_run_as_the_checkpoint_was_trained(tmp_path):
    """A BERT trained with hidden_act gelu_new (tanh GELU) gets the tanh GELU in the packed forward."""
    from transformers import BertConfig, BertForSequenceClassification

    from sentiment.serving.packed import PackedBertClassifier

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        hidden_act="gelu_new",
    )
    model = BertForSequenceClassification(config).eval()
    inputs = {"input_ids": torch.tensor([[2, 7, 9, 11, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.inference_mode():
        assert torch.allclose(PackedBertClassifier(model, "fp32", "pooler")(inputs), model(**inputs).logits, atol=1e-5)
