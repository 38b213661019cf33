"""Classification metrics without scikit-learn (serving does not need its 100+ MB)."""

from __future__ import annotations


def confusion_matrix(labels: list[int], predictions: list[int], n_classes: int) -> list[list[int]]:
    """Rows are the true class, columns the predicted one."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for truth, guess in zip(labels, predictions, strict=True):
        matrix[truth][guess] += 1
    return matrix


def classification_report(labels: list[int], predictions: list[int], class_names) -> dict:
    matrix = confusion_matrix(labels, predictions, len(class_names))
    per_class = {}
    for k, name in enumerate(class_names):
        true_positive = matrix[k][k]
        predicted = sum(row[k] for row in matrix)
        actual = sum(matrix[k])
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return {
        "accuracy": sum(matrix[k][k] for k in range(len(class_names))) / max(len(labels), 1),
        "macro_f1": sum(c["f1"] for c in per_class.values()) / len(class_names),
        "per_class": per_class,
        "confusion_matrix": matrix,
    }


def calibration_bins(probabilities: list[list[float]], labels: list[int], n_bins: int = 15) -> list[dict]:
    """Equal-width confidence bins: mean confidence, accuracy and count of each."""
    bins = [{"confidence": 0.0, "correct": 0, "count": 0} for _ in range(n_bins)]
    for row, truth in zip(probabilities, labels, strict=True):
        confidence = max(row)
        guess = row.index(confidence)
        b = bins[min(int(confidence * n_bins), n_bins - 1)]
        b["confidence"] += confidence
        b["correct"] += guess == truth
        b["count"] += 1
    return [
        {
            "lower": i / n_bins,
            "upper": (i + 1) / n_bins,
            "count": b["count"],
            "confidence": b["confidence"] / b["count"] if b["count"] else None,
            "accuracy": b["correct"] / b["count"] if b["count"] else None,
        }
        for i, b in enumerate(bins)
    ]


def expected_calibration_error(probabilities: list[list[float]], labels: list[int], n_bins: int = 15) -> float:
    """ECE: the count-weighted gap between confidence and accuracy over equal-width bins."""
    total = len(labels)
    return sum(
        b["count"] / total * abs(b["confidence"] - b["accuracy"])
        for b in calibration_bins(probabilities, labels, n_bins)
        if b["count"]
    )


def probability_report(probabilities: list[list[float]], labels: list[int], class_names) -> dict:
    """`classification_report` of the most probable classes, with the probabilities' ECE."""
    report = classification_report(labels, [row.index(max(row)) for row in probabilities], class_names)
    report["ece"] = expected_calibration_error(probabilities, labels)
    return report
