"""Classification errors: per-class accuracy, the most frequent confusions, and calibration (ECE)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["classification_summary", "calibration", "ECE_BINS"]

ECE_BINS = 15   # equal-width confidence bins (Guo et al. 2017 use 15)


def classification_summary(labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str],
                           top: int = 5) -> dict:
    """Error rate, per-class accuracy (recall) and the ``top`` most frequent confusions.

    Returns a JSON-safe dict: ``error_rate``, ``per_class_acc`` (class name -> fraction),
    ``worst_class``, and ``top_confusions``: list of ``{"true", "pred", "count", "share_of_true"}``
    sorted by count (off-diagonal cells of the confusion matrix).
    """
    from sklearn.metrics import confusion_matrix

    n = len(class_names)
    cm = confusion_matrix(labels, preds, labels=list(range(n)))
    support = cm.sum(axis=1)
    per_class = {class_names[i]: float(cm[i, i] / support[i]) if support[i] else math.nan for i in range(n)}
    off = [(int(cm[i, j]), i, j) for i in range(n) for j in range(n) if i != j and cm[i, j] > 0]
    off.sort(reverse=True)
    return {
        "error_rate": float(1.0 - np.trace(cm) / cm.sum()),
        "per_class_acc": per_class,
        "worst_class": min(per_class, key=lambda k: per_class[k]),
        "top_confusions": [{"true": class_names[i], "pred": class_names[j], "count": c,
                            "share_of_true": float(c / support[i])} for c, i, j in off[:top]],
    }


def calibration(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = ECE_BINS) -> dict:
    """Expected calibration error and the reliability diagram of top-1 predictions.

    ``confidence[i]`` is the predicted probability of sample ``i``'s predicted class, ``correct[i]``
    whether that prediction is right. Confidences fall into ``n_bins`` equal-width bins
    ``(k/n, (k+1)/n]`` (a confidence of exactly 0 goes into the first); per bin the accuracy and
    mean confidence; ``ece = sum_b (n_b / N) |acc_b - conf_b|`` (Guo et al. 2017), and the mean
    confidence minus the accuracy (``overconfidence``, > 0: confident beyond what is earned).

    Returns a JSON-safe dict: ``ece``, ``overconfidence``, ``n``, ``n_bins``, and per bin ``bin_count``,
    ``bin_accuracy``, ``bin_confidence`` (None for an empty bin).

    Raises:
        ValueError: lengths differ, no samples, a confidence outside [0, 1], or n_bins < 1.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape or conf.size == 0:
        raise ValueError(f"need equally many confidences and outcomes (> 0), got {conf.size} and {ok.size}")
    if n_bins < 1 or not np.all((conf >= 0) & (conf <= 1)):
        raise ValueError("confidences must lie in [0, 1] and n_bins must be >= 1")
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    acc_sum = np.bincount(bins, weights=ok.astype(float), minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    filled = count > 0
    acc_b = np.divide(acc_sum, count, out=np.zeros(n_bins), where=filled)
    conf_b = np.divide(conf_sum, count, out=np.zeros(n_bins), where=filled)
    ece = float(np.sum(count[filled] / conf.size * np.abs(acc_b[filled] - conf_b[filled])))
    return {"ece": ece, "overconfidence": float(conf.mean() - ok.mean()), "n": int(conf.size), "n_bins": n_bins,
            "bin_count": count.tolist(),
            "bin_accuracy": [float(a) if f else None for a, f in zip(acc_b, filled)],
            "bin_confidence": [float(c) if f else None for c, f in zip(conf_b, filled)]}
