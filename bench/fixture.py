"""The fixed benchmark model and rows: trained once from a seed, cached, logged to a temp store."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from training.data import FEATURES, TARGET, synthesize
from training.profile import log_reference_profile

SEED = 7
ROWS_SEED = 11


@dataclass(frozen=True)
class ModelSpec:
    """What the model is: the issue's 1000 trees of 13 leaves over 200 features by default."""

    trees: int = 1000
    leaves: int = 13
    train_rows: int = 20_000

    @property
    def name(self) -> str:
        return f"lgb-{self.trees}t-{self.leaves}l-{self.train_rows}r-s{SEED}"


def fixed_booster(spec: ModelSpec, cache: Path) -> tuple[Any, float]:
    """The benchmark booster, from ``cache`` or trained now. Returns it and the training time."""
    import lightgbm as lgb

    path = cache / f"{spec.name}.txt"
    if path.is_file():
        return lgb.Booster(model_file=str(path)), 0.0
    started = time.perf_counter()
    frame = synthesize(spec.train_rows, seed=SEED)
    params = {
        "objective": "binary",
        "num_leaves": spec.leaves,
        "learning_rate": 0.02,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.5,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "max_bin": 63,  # training speed only; prediction cost is the trees'
        "seed": SEED,
        "deterministic": True,
        "verbose": -1,
    }
    data = lgb.Dataset(frame[FEATURES].to_numpy(), frame[TARGET].to_numpy(), feature_name=FEATURES)
    booster = lgb.train(params, data, num_boost_round=spec.trees)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    booster.save_model(str(tmp))
    os.replace(tmp, path)
    return booster, time.perf_counter() - started


def log_to_store(booster: Any, store: Path) -> str:
    """Log ``booster`` to a fresh SQLite MLflow store under ``store``; returns its model URI.

    Logged as a native ``Booster`` so that ``mlflow models serve`` returns probabilities too.
    """
    import lightgbm as lgb
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    uri = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("bench", artifact_location=(store / "art").as_uri())
    example = synthesize(5, seed=ROWS_SEED)[FEATURES]
    reqs = [f"lightgbm=={lgb.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"]
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.lightgbm.log_model(
            booster,
            name="model",
            signature=infer_signature(example, booster.predict(example.to_numpy())),
            pip_requirements=reqs,
        )
        # With its training profile, as training.train logs it: the service measures drift.
        reference = synthesize(2_000, seed=ROWS_SEED)[FEATURES]
        log_reference_profile(info.model_id, reference, booster.predict(reference.to_numpy()))
    return f"runs:/{run.info.run_id}/model"


def bench_rows(n: int) -> np.ndarray:
    """``n`` Santander-like rows, 4-decimal values as in the real file."""
    return synthesize(n, seed=ROWS_SEED)[FEATURES].to_numpy()


def split_json(x: np.ndarray, mlflow_protocol: bool = False) -> bytes:
    """pandas ``orient="split"`` JSON (the README request); MLflow wants it in dataframe_split."""
    frame = {"columns": FEATURES, "index": list(range(len(x))), "data": x.tolist()}
    return orjson.dumps({"dataframe_split": frame} if mlflow_protocol else frame)


def parquet_body(x: np.ndarray) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({name: x[:, j] for j, name in enumerate(FEATURES)}), out)
    return out.getvalue()


def arrow_body(x: np.ndarray) -> bytes:
    import pyarrow as pa

    table = pa.table({name: x[:, j] for j, name in enumerate(FEATURES)})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
