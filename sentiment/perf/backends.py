"""In-process comparison of inference backends, as one served worker runs (1 thread, batch 8).

    .venv/bin/pip install onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2   # not in requirements
    .venv/bin/python -m sentiment.perf.backends

Rounds alternate between backends to spread the machine's noise: torch int8 (the default),
torch int8 with each batch split into two length groups, torch.compile, ONNX Runtime fp32 and
int8 (dynamic quantization). Also scores the ONNX models and torch fp32 on the development products
(labelled data this project may choose on; never the reserved products, which only `make eval`
reads), since a faster backend is only kept if its macro-F1 stays within 0.5 point of fp32.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import load_development_products, review_sentences
from sentiment.training.scores import classification_report

log = logging.getLogger(__name__)
OPTIONAL_PACKAGES = ("onnxruntime", "onnx", "onnxscript")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def texts_per_second(predict, sentences: list[str], batch: int = 8) -> float:
    predict(sentences[:batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(sentences), batch):
        predict(sentences[i : i + batch])
    return len(sentences) / (time.perf_counter() - started)


def onnx_sessions(classifier_fp32: SentimentClassifier, folder: Path) -> dict:
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    example, _ = classifier_fp32.tokenize(["a short one", "and a somewhat longer example"])
    fp32, int8 = folder / "model.onnx", folder / "model-int8.onnx"
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {"logits": {0: "batch"}}
    torch.onnx.export(
        classifier_fp32.model,
        tuple(example[n] for n in INPUTS),
        str(fp32),
        input_names=list(INPUTS),
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return {
        name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for name, path in (("ONNX Runtime fp32", fp32), ("ONNX Runtime int8", int8))
    }


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    missing = [name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:  # before loading any model
        raise SystemExit(f"needs {missing}, which the requirements leave out: see the install line above")
    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    sentences = review_sentences(1024)
    config = dataclasses.replace(ModelConfig.from_file(DEFAULT_CONFIG), threads=1)
    int8 = SentimentClassifier(dataclasses.replace(config, precision="int8")).load()
    fp32 = SentimentClassifier(dataclasses.replace(config, precision="fp32")).load()
    compiled = SentimentClassifier(dataclasses.replace(config, precision="int8")).load()
    compiled.forward = torch.compile(compiled.forward, dynamic=True)

    def length_groups(texts: list[str]) -> None:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for part in (order[: len(order) // 2], order[len(order) // 2 :]):
            int8.predict([texts[i] for i in part])

    with tempfile.TemporaryDirectory() as tmp:
        sessions = onnx_sessions(fp32, Path(tmp))

        def onnx(session):
            def predict(texts: list[str]):
                batch = int8.tokenizer(
                    texts, padding=True, truncation=True, max_length=config.max_sequence_len, return_tensors="np"
                )
                return session.run(None, {n: batch[n] for n in INPUTS})[0]

            return predict

        backends = {
            "torch int8 (default)": int8.predict,
            "torch int8, 2 length groups": length_groups,
            "torch int8, torch.compile": compiled.predict,
            "torch fp32": fp32.predict,
        }
        backends |= {name: onnx(session) for name, session in sessions.items()}
        started = time.monotonic()
        compiled.predict(sentences[:64])
        log.info("torch.compile warm-up: %.0f s", time.monotonic() - started)
        rates = {name: [] for name in backends}
        for _ in range(3):
            for name, predict in backends.items():
                rates[name].append(texts_per_second(predict, sentences))
        for name, values in rates.items():
            log.info(
                "%-30s median %6.1f texts/s  (rounds: %s)",
                name,
                statistics.median(values),
                ", ".join(f"{v:.1f}" for v in values),
            )

        development = load_development_products()
        labels = [config.class_names.index(e.label) for e in development]
        scored = {name: onnx(session) for name, session in sessions.items()}
        scored["torch fp32"] = lambda texts: fp32.logits(fp32.encode(texts)).numpy()
        for name, predict in scored.items():
            guesses = []
            for i in range(0, len(development), 32):
                guesses += predict([e.text for e in development[i : i + 32]]).argmax(1).tolist()
            report = classification_report(labels, guesses, config.class_names)
            log.info(
                "%s on the development products: accuracy %.3f, macro-F1 %.3f",
                name,
                report["accuracy"],
                report["macro_f1"],
            )


if __name__ == "__main__":
    main()
