"""Diagnostic figures for a trained model, logged as MLflow artifacts and shown in the notebooks.

Each function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``: no global
figure registry to leak memory in a long session and no display backend to choose, so the same
code runs headless in training and inline in Jupyter.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)


def roc_figure(y: np.ndarray, scores: np.ndarray, title: str = "ROC (out-of-fold)") -> Figure:
    """ROC curve of ``scores`` against the 0/1 labels ``y``, with its AUC in the legend.

    Args:
        y: True labels (0/1).
        scores: Predicted probabilities or any score where higher means positive.
        title: Figure title.

    Returns:
        The figure.
    """
    fpr, tpr, _ = roc_curve(y, scores)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(y, scores):.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def pr_figure(
    y: np.ndarray, scores: np.ndarray, title: str = "Precision-recall (out-of-fold)"
) -> Figure:
    """Precision-recall curve, with average precision and the positive rate (chance level).

    Args:
        y: True labels (0/1).
        scores: Predicted probabilities.
        title: Figure title.

    Returns:
        The figure.
    """
    precision, recall, _ = precision_recall_curve(y, scores)
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot(recall, precision, label=f"AP = {average_precision_score(y, scores):.4f}")
    ax.axhline(float(np.mean(y)), linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig


def importance_figure(booster: lgb.Booster, top: int = 30) -> Figure:
    """Horizontal bars of the ``top`` features by total gain (the most telling, largest on top).

    Gain rather than split count: with ``feature_fraction`` 0.05 every feature gets split about
    equally often, and only gain shows which ones the model leans on.

    Args:
        booster: A trained LightGBM booster.
        top: How many features to show.

    Returns:
        The figure.
    """
    gain = booster.feature_importance(importance_type="gain")
    names = np.array(booster.feature_name())
    order = np.argsort(gain)[::-1][:top][::-1]
    fig = Figure(figsize=(6, max(3.0, 0.22 * len(order) + 1)))
    ax = fig.subplots()
    ax.barh(names[order], gain[order])
    ax.set(xlabel="total gain", title=f"Top {len(order)} features by gain")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def score_distribution_figure(
    y: np.ndarray, scores: np.ndarray, title: str = "Score by class (out-of-fold)"
) -> Figure:
    """Overlaid density histograms of the predicted probability for each class.

    Args:
        y: True labels (0/1).
        scores: Predicted probabilities.
        title: Figure title.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 51).tolist()
    for label, colour in ((0, "tab:blue"), (1, "tab:orange")):
        mask = y == label
        ax.hist(
            scores[mask],
            bins=bins,
            density=True,
            alpha=0.55,
            color=colour,
            label=f"target={label} (n={int(mask.sum()):,})",
        )
    ax.set(xlabel="predicted P(target=1)", ylabel="density", title=title)
    ax.legend(loc="upper right")
    fig.tight_layout()
    return fig
