"""Training: Santander data, the LightGBM pipeline, MLflow logging, promotion, tuning.

One module per job; imports only go down this list (``tests/training/test_layout.py``)::

    train, tune        command lines (``python -m training.train`` / ``training.tune``)
    local, distributed the backends: this machine, a Dask cluster (``--dask-scheduler``)
    tracking           MLflow: datasets, signature, logging, registration (+ promotion)
    modelling          parameters, cross-validation, final fit: pure functions
    config, promote    settings and presets; the champion alias
    data, plots, progress

LightGBM's OpenMP threads spin while they wait for work by default; on a machine that is busy
with anything else (a test suite, a server, another training run) that spinning made training
several times slower in our measurements. Passive waiting costs next to nothing on an idle
machine. It must be set before the OpenMP runtime loads, that is before ``import lightgbm``,
hence here, and only if the user has not chosen otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
