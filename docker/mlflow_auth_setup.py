"""Accounts of the compose registry, set up before `mlflow server --app-name basic-auth` starts.

Run by docker/mlflow-entrypoint.sh on every start, as the server's own user. It writes MLflow's
auth configuration (default permission READ, the user database on the mlflow volume) and makes
the auth database hold exactly these accounts with these passwords:

    admin  (MLFLOW_ADMIN_USERNAME, default admin)  MLflow admin: users and permissions
    api    (MLFLOW_API_USERNAME, default api)      the model API: reads what the registry holds
    lab    (MLFLOW_LAB_USERNAME, default lab)      the lab: creates experiments, runs, models

Each password is the environment's (MLFLOW_ADMIN_PASSWORD, MLFLOW_API_PASSWORD,
MLFLOW_LAB_PASSWORD) when set, otherwise the one generated at first start and kept in the volume,
so there is no published default. The api and lab passwords are written, with their usernames, to
MLflow's credentials file (``~/.mlflow/credentials``) on a volume that only the mlflow container
and that one service mount; MLflow's client reads it by itself (``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` in the service's environment take precedence). No password is ever
printed.

The accounts are written to the auth database directly, through MLflow's own auth store, rather
than through the REST API after start-up: the server never answers while an account is missing
or still has an old password, and a password set in the environment takes effect at the next
start without needing a working admin login. A password changed in the MLflow UI for one of
these three accounts is therefore reset at the next start; other users are left alone.

Permissions: non-admin users start from the default permission, READ, on everything; whoever
creates an experiment or a registered model gets MANAGE on it. The lab account also holds EDIT on
every experiment and registered model (wildcard grants, set here): it is the team's read-write
account, so it may log runs and register versions and move aliases of models it did not create
itself (e.g. those of a store from before authentication was on). The API's account holds no
grant: it reads every model and artifact and writes nothing of the lab's (403). Requests without
valid credentials get 401.
"""

from __future__ import annotations

import configparser
import os
import secrets
import sys
from pathlib import Path

AUTH_DIR = Path(os.environ.get("MLFLOW_AUTH_DIR", "/mlflow/auth"))
CREDENTIALS_DIR = Path(os.environ.get("MLFLOW_CREDENTIALS_DIR", "/credentials"))
DEFAULT_PERMISSION = "READ"
LAB_GRANT = "EDIT"  # on every experiment and registered model: write, not delete or manage


def _write(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` atomically, created with ``mode`` (never readable by others first)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)


def _kept_secret(env: str, path: Path, what: str) -> str:
    """The environment's value, else the one kept at ``path``, else a new one kept there."""
    given = os.environ.get(env, "")
    if given:
        return given
    if path.exists():
        kept = path.read_text(encoding="utf-8").strip()
        if kept:
            return kept
    value = secrets.token_urlsafe(24)
    _write(path, value + "\n", 0o600)
    print(f"generated {what}, kept in the mlflow volume ({path}); {env} overrides it", flush=True)
    return value


def _service_password(env: str, credentials: Path, what: str) -> str:
    """The environment's value, else the one in the service's credentials file, else new."""
    given = os.environ.get(env, "")
    if given:
        return given
    if credentials.exists():
        config = configparser.ConfigParser()
        config.read(credentials)
        kept = config.get("mlflow", "mlflow_tracking_password", fallback="")
        if kept:
            return kept
    print(f"generated the password of the {what} account; {env} overrides it", flush=True)
    return secrets.token_urlsafe(24)


def _credentials_file(path: Path, username: str, password: str) -> None:
    # MLflow reads this file with configparser's interpolation: a literal % is written as %%.
    lines = ["# Written by the mlflow container at each start (docker/mlflow_auth_setup.py)."]
    lines += ["[mlflow]", f"mlflow_tracking_username = {username.replace('%', '%%')}"]
    lines += [f"mlflow_tracking_password = {password.replace('%', '%%')}", ""]
    # Readable by the service's own user, which differs from the mlflow container's; only the
    # mlflow container and that one service mount this volume.
    _write(path, "\n".join(lines), 0o644)


def main() -> int:
    AUTH_DIR.mkdir(parents=True, exist_ok=True)
    AUTH_DIR.chmod(0o700)
    database_uri = os.environ.get("MLFLOW_AUTH_DATABASE_URI") or (
        f"sqlite:///{AUTH_DIR / 'basic_auth.db'}"
    )
    admin = os.environ.get("MLFLOW_ADMIN_USERNAME") or "admin"
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        # MLflow reads the file with configparser's interpolation: a literal % is written as %%.
        "database_uri": database_uri.replace("%", "%%"),
        "admin_username": admin,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    config_path = AUTH_DIR / "basic_auth.ini"
    with open(config_path.with_name("basic_auth.ini.tmp"), "w", encoding="utf-8") as f:
        config.write(f)
    config_path.with_name("basic_auth.ini.tmp").replace(config_path)
    _kept_secret("MLFLOW_FLASK_SERVER_SECRET_KEY", AUTH_DIR / "flask-secret-key", "a secret key")
    admin_password = _kept_secret(
        "MLFLOW_ADMIN_PASSWORD", AUTH_DIR / "admin-password", "the admin password"
    )

    accounts: dict[str, tuple[str, bool, Path | None]] = {admin: (admin_password, True, None)}
    names: dict[str, str] = {}
    for service in ("api", "lab"):
        name = names[service] = os.environ.get(f"MLFLOW_{service.upper()}_USERNAME") or service
        credentials = CREDENTIALS_DIR / service / "credentials"
        password = _service_password(f"MLFLOW_{service.upper()}_PASSWORD", credentials, service)
        if name in accounts:
            sys.exit(f"MLFLOW_{service.upper()}_USERNAME={name} is already another account")
        accounts[name] = (password, False, credentials)
    for name, (password, _, _) in accounts.items():
        if len(password) < 12 or password != password.strip() or "\n" in password:
            sys.exit(
                f"the password of MLflow account {name!r} must be at least 12 characters, "
                "on one line, without leading or trailing spaces"
            )

    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    for name, (password, is_admin, credentials) in accounts.items():
        if not store.has_user(name, use_primary=True):
            store.create_user(name, password, is_admin=is_admin)
            print(f"created MLflow account {name!r}{' (admin)' if is_admin else ''}", flush=True)
        elif not store.authenticate_user(name, password, use_primary=True) or (
            store.get_user(name).is_admin != is_admin
        ):
            store.update_user(name, password=password, is_admin=is_admin)
            print(f"updated MLflow account {name!r}", flush=True)
        if credentials is not None:
            credentials.parent.mkdir(parents=True, exist_ok=True)
            if credentials.parent.stat().st_uid == os.geteuid():
                credentials.parent.chmod(0o755)  # the service's user differs from ours
            _credentials_file(credentials, name, password)
    for resource_type in ("experiment", "registered_model"):
        store.grant_user_permission(names["lab"], resource_type, "*", LAB_GRANT)
    print(
        f"registry authentication on: accounts {', '.join(accounts)}; default permission "
        f"{DEFAULT_PERMISSION}; {names['lab']} may {LAB_GRANT} every experiment and model",
        flush=True,
    )
    print(
        "the admin password: `docker-compose exec mlflow cat "
        f"{AUTH_DIR / 'admin-password'}`, unless MLFLOW_ADMIN_PASSWORD is set",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
