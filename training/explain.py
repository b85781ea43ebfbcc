"""A model's global explanation: mean |contribution| per feature on a sample of rows.

Gain importance says how much each feature's splits improved the training loss; the mean
absolute contribution (TreeSHAP, LightGBM's own ``pred_contrib``, the numbers ``POST /explain``
serves per row) says how much each feature moves the scores the model actually gives. Both are
logged, side by side, so a reviewer can see where they disagree.
"""

from __future__ import annotations

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

SAMPLE_ROWS = 2_000
FIGURE_PATH = "explain/mean_abs_contribution.png"
TABLE_PATH = "explain/global_explanation.json"


def global_explanation(
    booster: lgb.Booster,
    x: pd.DataFrame | np.ndarray,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> pd.DataFrame:
    """Per feature: mean |contribution| and mean contribution (log-odds) on a sample of ``x``,
    beside the total gain, ranked by mean |contribution|, largest first.

    Args:
        booster: A trained LightGBM booster (binary objective: contributions in log-odds).
        x: Rows to explain: a frame with the booster's feature columns (any order), or a matrix
            in the booster's feature order.
        sample_rows: At most this many rows, drawn without replacement (seeded).
        seed: Seed of the draw.

    Returns:
        Columns ``feature``, ``mean_abs_contribution``, ``mean_contribution``, ``gain``,
        ``rank`` (1 = most telling by contribution), ``gain_rank``; one row per feature.
    """
    names = list(booster.feature_name())
    matrix = (
        x[names].to_numpy(dtype=np.float64)
        if isinstance(x, pd.DataFrame)
        else np.asarray(x, np.float64)
    )
    if len(matrix) > sample_rows:
        pick = np.random.default_rng(seed).choice(len(matrix), sample_rows, replace=False)
        matrix = matrix[np.sort(pick)]
    contributions = np.asarray(booster.predict(matrix, pred_contrib=True))[:, :-1]
    gain = booster.feature_importance(importance_type="gain")
    table = pd.DataFrame(
        {
            "feature": names,
            "mean_abs_contribution": np.abs(contributions).mean(axis=0),
            "mean_contribution": contributions.mean(axis=0),
            "gain": gain.astype(np.float64),
        }
    )
    table["gain_rank"] = table["gain"].rank(ascending=False, method="first").astype(int)
    table = table.sort_values(
        ["mean_abs_contribution", "gain_rank"], ascending=[False, True], kind="stable"
    )
    table.insert(4, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def global_explanation_figure(
    table: pd.DataFrame, top: int = 30, rows: int | None = None
) -> Figure:
    """Horizontal bars of the ``top`` features by mean |contribution| (largest on top), each
    labelled with its rank by gain.

    Args:
        table: What ``global_explanation`` returns.
        top: How many features to show.
        rows: How many rows were explained (said in the title).

    Returns:
        The figure.
    """
    shown = table.head(top).iloc[::-1]
    fig = Figure(figsize=(6.5, max(3.0, 0.22 * len(shown) + 1)))
    ax = fig.subplots()
    ax.barh(shown["feature"], shown["mean_abs_contribution"])
    for y, (value, rank) in enumerate(
        zip(shown["mean_abs_contribution"], shown["gain_rank"], strict=True)
    ):
        ax.annotate(
            f"gain #{rank}",
            (value, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="grey",
        )
    ax.set(
        xlabel="mean |contribution| (log-odds)",
        title=f"Top {len(shown)} features by mean |contribution|"
        + (f" ({rows:,} rows)" if rows else ""),
    )
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(x=0.15)
    fig.tight_layout()
    return fig


def log_global_explanation(
    booster: lgb.Booster, x: pd.DataFrame | np.ndarray, sample_rows: int = SAMPLE_ROWS
) -> pd.DataFrame:
    """Log the global explanation to the active MLflow run: the figure (``FIGURE_PATH``; gain
    importance stays in ``plots/feature_importance.png``) and the whole table (``TABLE_PATH``, an
    MLflow table: the UI shows it, ``mlflow.load_table`` reads it back).

    Args:
        booster: The final model.
        x: Its training rows (a sample of them is explained).
        sample_rows: At most this many rows.

    Returns:
        The table that was logged.
    """
    table = global_explanation(booster, x, sample_rows)
    rows = min(len(x), sample_rows)
    mlflow.log_figure(global_explanation_figure(table, rows=rows), FIGURE_PATH)
    mlflow.log_table(data=table, artifact_file=TABLE_PATH)
    return table
