"""Load LightGBM models without running code from the model: native text, or an allowlist.

Whoever can write to the model registry decides what a pickle does when it is loaded, so the
service only loads what cannot run code of its choosing:

- a ``Booster`` (the ``lightgbm`` flavor's ``model.lgb``): LightGBM's own text format, parsed by
  ``lightgbm.Booster(model_file=...)``; nothing is unpickled;
- an ``LGBMClassifier`` pickled by the flavor (``pickle`` or ``cloudpickle``): unpickled by
  ``AllowlistUnpickler``, which resolves only the globals in ``PICKLE_ALLOWLIST`` (found by
  pickling fitted classifiers and recording every global their unpickling looks up, in the spirit
  of skops) and refuses any other, so no ``os.system`` or ``builtins.eval`` can be reached;
- an ``LGBMClassifier`` saved by skops (MLflow's default): ``skops.io.load`` with our own trusted
  types (``SKOPS_TRUSTED``), never the list the model's MLmodel file carries.

Anything else (any other python-function model) is refused unless the caller allows untrusted
models (``ALLOW_UNTRUSTED_MODELS``). Each path is named (``NATIVE_TEXT`` ...) so ``/model`` can
say which one loaded the model served.
"""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path
from typing import Any

NATIVE_TEXT = "lightgbm native text"
ALLOWLISTED_PICKLE = "allowlisted pickle"
ALLOWLISTED_SKOPS = "allowlisted skops"
UNTRUSTED_LIGHTGBM = "lightgbm flavor loader (untrusted allowed)"
UNTRUSTED_PYFUNC = "pyfunc (untrusted allowed)"


def import_lightgbm_for_serving(untrusted_allowed: bool = False) -> None:
    """Import LightGBM without scikit-learn, unless either is imported already or untrusted
    models are allowed.

    ``import lightgbm`` imports scikit-learn, and with it most of SciPy (~65 MB of a worker's
    memory), for LightGBM's scikit-learn API alone, which a server never calls: it scores a
    ``Booster``, and an ``LGBMClassifier`` is read for its Booster. With scikit-learn hidden
    while LightGBM is imported, LightGBM builds its scikit-learn classes on its own stand-in
    bases; a classifier model still loads (scikit-learn is imported then, for the label
    encoder its pickle holds) and its Booster scores. For server processes only: fitting an
    ``LGBMClassifier`` needs the real bases (training and tests import LightGBM as usual), and
    so may an untrusted python-function model (a scikit-learn pipeline around a classifier
    calls the classifier's scikit-learn methods): with ``untrusted_allowed`` LightGBM is left
    to import as usual.
    """
    if untrusted_allowed or "lightgbm" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # makes "import sklearn" fail
    try:
        import lightgbm  # noqa: F401
    finally:
        del sys.modules["sklearn"]


BOOSTER_CLASS = "lightgbm.basic.Booster"
CLASSIFIER_CLASS = "lightgbm.sklearn.LGBMClassifier"

# Every global the unpickling of a fitted LGBMClassifier looks up (pickle protocols 2 to 5 and
# cloudpickle; fitted on a DataFrame or an array, with and without an eval set), plus the
# numpy < 2 names of the same numpy functions (``numpy.core`` became ``numpy._core``).
PICKLE_ALLOWLIST: frozenset[tuple[str, str]] = frozenset(
    {
        ("lightgbm.sklearn", "LGBMClassifier"),
        ("lightgbm.basic", "Booster"),  # its __setstate__ parses the model's native text
        ("sklearn.preprocessing._label", "LabelEncoder"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(str, "latin1")
    }
)

# What skops needs beyond its own safe defaults (numpy, builtins) for an LGBMClassifier.
SKOPS_TRUSTED = ["collections.OrderedDict", BOOSTER_CLASS, CLASSIFIER_CLASS]


class UntrustedModel(Exception):
    """The model would need code or globals outside what is trusted; ``str()`` says which."""


class AllowlistUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed`` and refuses any other."""

    def __init__(
        self, file: io.BufferedIOBase, allowed: frozenset[tuple[str, str]] = PICKLE_ALLOWLIST
    ) -> None:
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.allowed:
            raise UntrustedModel(f"the pickle needs {module}.{name}, which is not allowlisted")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UntrustedModel("the pickle uses persistent ids, which are not allowed")


def allowlisted_loads(data: bytes, allowed: frozenset[tuple[str, str]] = PICKLE_ALLOWLIST) -> Any:
    """Unpickle ``data`` resolving only ``allowed`` globals. Raises ``UntrustedModel``."""
    return AllowlistUnpickler(io.BytesIO(data), allowed).load()


def _data_path(local: Path, conf: dict[str, Any]) -> Path:
    """The flavor's data file, which must lie inside the model folder."""
    data = conf.get("data")
    if not isinstance(data, str) or not data:
        raise UntrustedModel("the lightgbm flavor names no data file")
    root = local.resolve()
    path = (root / data).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise UntrustedModel(f"the lightgbm flavor's data file {data!r} is not in the model")
    return path


def read_lightgbm(local: Path, conf: dict[str, Any], allow_untrusted: bool) -> tuple[Any, str]:
    """The ``lightgbm.Booster`` of the ``lightgbm`` flavor in ``local``, and the path taken.

    ``conf`` is the flavor's entry in the MLmodel file (``data``, ``model_class``,
    ``serialization_format``).

    Raises:
        UntrustedModel: neither native text nor an allowlisted LGBMClassifier, and
            ``allow_untrusted`` is false.
    """
    import lightgbm as lgb

    model_class = str(conf.get("model_class", BOOSTER_CLASS))
    path = _data_path(local, conf)
    if model_class == BOOSTER_CLASS:
        return lgb.Booster(model_file=str(path)), NATIVE_TEXT
    fmt = str(conf.get("serialization_format", "cloudpickle"))
    try:
        if model_class != CLASSIFIER_CLASS:
            raise UntrustedModel(f"a lightgbm model of class {model_class} is not trusted")
        if fmt in ("pickle", "cloudpickle"):
            # cloudpickle pickles importable classes by reference: plain pickle reads it.
            model, how = allowlisted_loads(path.read_bytes()), ALLOWLISTED_PICKLE
        elif fmt == "skops":
            model, how = _skops_load(path), ALLOWLISTED_SKOPS
        else:
            raise UntrustedModel(f"unknown serialization format {fmt!r}")
        if not isinstance(model, lgb.LGBMClassifier) or not isinstance(
            getattr(model, "_Booster", None), lgb.Booster
        ):
            raise UntrustedModel(f"the {fmt} file does not hold a fitted LGBMClassifier")
    except UntrustedModel:
        if not allow_untrusted:
            raise
        import mlflow

        model, how = mlflow.lightgbm.load_model(str(local)), UNTRUSTED_LIGHTGBM
    return getattr(model, "booster_", model), how


def _skops_load(path: Path) -> Any:
    import skops.io

    untrusted = set(skops.io.get_untrusted_types(file=str(path))) - set(SKOPS_TRUSTED)
    if untrusted:
        raise UntrustedModel(f"the skops file needs untrusted types {sorted(untrusted)}")
    return skops.io.load(str(path), trusted=SKOPS_TRUSTED)
