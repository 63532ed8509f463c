"""Classification errors: per-class accuracy and the most frequent confusions."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["classification_summary"]


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
