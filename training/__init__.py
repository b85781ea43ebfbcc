"""Training: Santander data (``training.data``), the LightGBM pipeline (``training.train``).

LightGBM's OpenMP threads spin while they wait for work by default; on a machine that is busy
with anything else (a test suite, a server, another training run) that spinning made training
several times slower in our measurements. Passive waiting costs next to nothing on an idle
machine. It must be set before the OpenMP runtime loads, that is before ``import lightgbm``,
hence here, and only if the user has not chosen otherwise.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
