"""Promotion by alias: move ``champion`` to a new model version when the policy says so.

The decision (:func:`should_promote`) is a pure function of the two scores and the policy; the
MLflow side (:func:`champion_score`, :func:`promote`) only reads the current champion's CV AUC
from its run and moves the alias.
"""

from __future__ import annotations

import math
import sys
from typing import Literal

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

Policy = Literal["if-better", "always", "never"]
POLICIES: tuple[Policy, ...] = ("if-better", "always", "never")
CHAMPION = "champion"
CV_METRIC = "cv_auc_mean"
# Runs logged before this project named the metric differently (e.g. the test fixtures' "cv_auc").
FALLBACK_METRICS = ("cv_auc",)


def should_promote(candidate: float, champion: float | None, policy: Policy) -> bool:
    """Whether a candidate with CV AUC ``candidate`` should replace the champion.

    Args:
        candidate: The new model's mean CV AUC.
        champion: The current champion's mean CV AUC; ``None`` when there is no champion, or it
            has no comparable score.
        policy: ``"if-better"`` promotes a first model or a strictly better one (a tie keeps the
            champion, so re-running the same training does not churn the alias); ``"always"`` and
            ``"never"`` do what they say.

    Returns:
        True to move the alias to the candidate.
    """
    if policy == "always":
        return True
    if policy == "never":
        return False
    if policy != "if-better":
        raise ValueError(f"unknown promotion policy {policy!r}; expected one of {POLICIES}")
    if math.isnan(candidate):
        return False
    return champion is None or candidate > champion


def champion_score(client: MlflowClient, name: str) -> tuple[str, float | None] | None:
    """The current champion of registered model ``name``: its version and its run's CV AUC.

    Args:
        client: An MLflow client on the registry.
        name: Registered model name.

    Returns:
        ``None`` if there is no champion; else ``(version, cv_auc)``, where ``cv_auc`` is ``None``
        if the champion's run logged no CV AUC.
    """
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if not version.run_id:
        return str(version.version), None
    metrics = client.get_run(version.run_id).data.metrics
    for key in (CV_METRIC, *FALLBACK_METRICS):
        if key in metrics:
            return str(version.version), float(metrics[key])
    return str(version.version), None


def promote(
    client: MlflowClient, name: str, version: str, cv_auc: float, policy: Policy = "if-better"
) -> bool:
    """Move alias ``champion`` of ``name`` to ``version`` if :func:`should_promote` says so.

    Also tags the version with ``cv_auc_mean`` and the decision, so the registry page tells why.

    Args:
        client: An MLflow client on the registry.
        name: Registered model name.
        version: The candidate version.
        cv_auc: The candidate's mean CV AUC.
        policy: See :func:`should_promote`.

    Returns:
        True if the candidate is now the champion.
    """
    current = champion_score(client, name)
    champion_version, champion_auc = current if current is not None else (None, None)
    decision = should_promote(cv_auc, champion_auc, policy)
    if champion_version == str(version):
        decision = True  # already the champion (e.g. promoted by hand): nothing to move
    client.set_model_version_tag(name, str(version), CV_METRIC, f"{cv_auc:.6f}")
    if decision:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    versus = (
        "no champion yet"
        if current is None
        else f"champion v{champion_version} has "
        + ("no CV AUC" if champion_auc is None else f"CV AUC {champion_auc:.5f}")
    )
    outcome = "promoted to" if decision else "not promoted to"
    client.set_model_version_tag(name, str(version), "promotion", f"{outcome} {CHAMPION}: {versus}")
    print(
        f"{name} v{version} (CV AUC {cv_auc:.5f}) {outcome} @{CHAMPION} "
        f"[policy {policy}; {versus}]",
        file=sys.stderr,
    )
    return decision


CHALLENGER = "challenger"


def promote_challenger(client: MlflowClient, name: str) -> str:
    """Move alias ``champion`` of ``name`` to the version alias ``challenger`` points at.

    The step after a good shadow or split test: servers on ``models:/<name>@champion`` follow by
    their polling or ``POST /admin/reload``.

    Args:
        client: An MLflow client on the registry.
        name: Registered model name.

    Returns:
        The version now champion.

    Raises:
        MlflowException: ``name`` has no ``challenger`` alias.
    """
    version = str(client.get_model_version_by_alias(name, CHALLENGER).version)
    before = champion_score(client, name)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(
        name, version, "promotion", f"promoted to {CHAMPION} from {CHALLENGER}"
    )
    was = f"v{before[0]}" if before is not None else "none"
    print(f"{name} v{version} (@{CHALLENGER}) is now @{CHAMPION} (was {was})", file=sys.stderr)
    return version


def main(argv: list[str] | None = None) -> int:
    """``python -m training.promote --name santander --challenger-to-champion``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.promote", description=__doc__)
    parser.add_argument("--name", default="santander", help="registered model name")
    parser.add_argument(
        "--challenger-to-champion",
        action="store_true",
        help=f"move @{CHAMPION} to the version @{CHALLENGER} points at",
    )
    args = parser.parse_args(argv)
    if not args.challenger_to_champion:
        parser.error("nothing to do: pass --challenger-to-champion")
    try:
        print(promote_challenger(MlflowClient(), args.name))
    except MlflowException as exc:
        print(f"error: {args.name}: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
