"""Resident memory under bursts (issue 19): this service with a memory budget, and ``mlflow models
serve`` for reference, under the same loads; every answer is checked.

``make bench`` runs it as its last part (``python -m bench.run``; ``--no-memory`` skips it), or
alone: ``python -m bench.run --only memory`` (a few minutes, mlflow included).

Each server is started once and takes the loads in turn. For each load: the answers by status,
every 200 compared to in-process ``Booster.predict`` to 1e-9, and the resident memory of the whole
process tree (workers included): before, the peak (sampled every 100 ms from the start of the load
to the end of the settling) and what is kept once the load is over (after ``settle`` seconds, or
earlier once it stopped falling). Targets, this service only: the peak at most the budget, kept at
most 1.3x before, no 5xx other than 503 with ``Retry-After`` (nor requests left unanswered), no
wrong answer. A wrong answer fails the run; a missed memory target only says "no".

The budget: ``MEMORY_LIMIT_MB`` = 1536 per worker, 2 workers (a 3 GiB container). It is the
smallest round limit under which the issue's 62 MiB JSON body is admitted at all: the service
reserves about 12x a JSON body's size to parse it (``app.limits``), 744 MiB here, while a 1024 MiB
worker idles near 350 MiB with the 1000-tree model and would allow one request about 510 MiB, so
every such body would get 413 and the row would measure nothing.

A guard for a shared machine: if the machine's available memory falls under ``GUARD_BYTES``
during a load, the server is killed and its remaining loads are skipped (said in the table).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import psutil

from bench import fixture, servers
from training.data import FEATURES

LIMIT_MB = 1536
WORKERS = 2
KEPT_RATIO = 1.3
TOLERANCE = 1e-9
SAMPLE_SECONDS = 0.1
GUARD_BYTES = 2 * 2**30
CLIENT_TIMEOUT = 90.0  # above both servers' own request timeouts (ours 30 s, mlflow 60 s)
MB = 2**20
JSON = "application/json"
CSV = "text/csv"
RETRY_AFTER = "503 + Retry-After"
NO_ANSWER = "no answer"
MALFORMED = b'{"columns": ["var_0", "var_1"], "data": [[1.0, 2.0], [3.0'


@dataclass(frozen=True)
class Body:
    """One request body for one server; ``expected`` is ``None`` for a malformed one (a 4xx is
    its right answer)."""

    name: str
    content: bytes
    media: str
    expected: np.ndarray | None


@dataclass(frozen=True)
class Load:
    """``connections`` clients sending ``bodies`` in turn until ``seconds`` have passed or
    ``count`` requests were sent."""

    key: str
    label: str
    bodies: tuple[Body, ...]
    connections: int
    seconds: float
    count: int | None = None


@dataclass
class Answers:
    """What one load got back."""

    counts: Counter[str] = field(default_factory=Counter)
    by_body: dict[str, Counter[str]] = field(default_factory=dict)
    checked: int = 0
    wrong: int = 0
    max_abs_diff: float = 0.0
    wrong_examples: list[str] = field(default_factory=list)

    def add(self, body: Body, bucket: str) -> None:
        self.counts[bucket] += 1
        self.by_body.setdefault(body.name, Counter())[bucket] += 1

    def mark_wrong(self, body: Body, why: str) -> None:
        self.wrong += 1
        if len(self.wrong_examples) < 5:
            self.wrong_examples.append(f"{body.name}: {why}")


def judge(body: Body, status: int, headers: httpx.Headers, content: bytes, out: Answers) -> None:
    """Count one answer under its status, and check a 200 against the expected predictions."""
    if status == 503:
        bucket = RETRY_AFTER if headers.get("retry-after") else "503 without Retry-After"
    elif 400 <= status < 500 and body.expected is None:
        bucket = f"{status} to a malformed body"
    else:
        bucket = str(status)
    out.add(body, bucket)
    if status != 200:
        return
    if body.expected is None:
        out.mark_wrong(body, "200 to a malformed body")
        return
    out.checked += 1
    try:
        got = np.asarray(orjson.loads(content)["predictions"], dtype=np.float64)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        out.mark_wrong(body, f"unreadable answer ({exc})")
        return
    if got.shape != body.expected.shape:
        out.mark_wrong(body, f"{got.shape[0] if got.ndim else 0} predictions for "
                       f"{body.expected.shape[0]} rows")  # fmt: skip
        return
    diff = float(np.max(np.abs(got - body.expected))) if got.size else 0.0
    out.max_abs_diff = max(out.max_abs_diff, diff)
    if not diff <= TOLERANCE:
        out.mark_wrong(body, f"differs from Booster.predict by {diff:.3g}")


def drive(url: str, load: Load, stop: threading.Event) -> Answers:
    """Send ``load`` to ``url`` from one thread and connection per client, judging every answer;
    no new request once ``stop`` is set.

    Threads with httpx's blocking client, not its ``AsyncClient``: a server may answer (503, 413)
    before it reads a big body and close the connection; the blocking client, stopped writing,
    still reads that answer, while the async one reports only the connection reset.
    """
    out = Answers()
    lock = threading.Lock()
    sent = 0
    # Clients first: each takes tens of ms to make (TLS settings), not to be spent of the load.
    clients = [httpx.Client(timeout=CLIENT_TIMEOUT) for _ in range(load.connections)]
    deadline = time.monotonic() + load.seconds

    def next_body() -> Body | None:
        nonlocal sent
        with lock:
            over = load.count is not None and sent >= load.count
            if over or time.monotonic() >= deadline or stop.is_set():
                return None
            sent += 1
            return load.bodies[(sent - 1) % len(load.bodies)]

    def client_loop(client: httpx.Client) -> None:
        with client:
            while (body := next_body()) is not None:
                try:
                    r = client.post(url, content=body.content, headers={"Content-Type": body.media})
                except httpx.TimeoutException:
                    bucket = f"{NO_ANSWER} (client timeout {CLIENT_TIMEOUT:g} s)"
                except httpx.TransportError as exc:
                    bucket = f"{NO_ANSWER} ({type(exc).__name__})"
                else:
                    with lock:
                        judge(body, r.status_code, r.headers, r.content, out)
                    continue
                with lock:
                    out.add(body, bucket)

    threads = [threading.Thread(target=client_loop, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of the process tree rooted at ``pid``, RSS of its uvicorn workers) in bytes."""
    total = workers = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            rss = p.memory_info().rss
            is_worker = "--multiprocessing-fork" in p.cmdline()
        except psutil.Error:
            continue
        total += rss
        workers += rss if is_worker else 0
    return total, workers


class Sampler:
    """Samples a process tree's RSS every ``SAMPLE_SECONDS`` in a thread, keeping the peak; kills
    the server (and sets ``tripped``) when the machine runs short of memory."""

    def __init__(self, server: servers.Server) -> None:
        self.server = server
        self.peak = 0
        self.peak_workers = 0
        self.tripped = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.is_set():
            total, workers = tree_rss(self.server.proc.pid)
            self.peak = max(self.peak, total)
            self.peak_workers = max(self.peak_workers, workers)
            if psutil.virtual_memory().available < GUARD_BYTES and not self.tripped.is_set():
                self.tripped.set()
                with suppress(ProcessLookupError):
                    os.killpg(self.server.proc.pid, signal.SIGKILL)
            self._done.wait(SAMPLE_SECONDS)


def settle(pid: int, seconds: float) -> tuple[int, float]:
    """RSS of the tree once it stops falling (no new low for 5 s), at most ``seconds`` after
    now; returns it and the seconds waited."""
    started = time.monotonic()
    low, low_at = tree_rss(pid)[0], started
    while (now := time.monotonic()) - started < seconds and now - low_at < 5.0:
        time.sleep(0.5)
        rss = tree_rss(pid)[0]
        if rss < low * 0.99:
            low, low_at = rss, time.monotonic()
    return tree_rss(pid)[0], time.monotonic() - started


def server_answers(base: str) -> Counter[str] | None:
    """What the server says it answered to ``/invocations``, by status (this service's
    ``/metrics``; ``None`` for a server without them): set beside the client's count, it tells
    an answer the client lost (e.g. a 503 sent before a big body was read, to a client that only
    saw the connection reset) from one the server never gave."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        r = httpx.get(base + "/metrics", timeout=30)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if (
                sample.name == "http_requests_total"
                and sample.labels.get("route") == "/invocations"
            ):
                counts[sample.labels["status"]] += int(sample.value)
    return counts


def run_load(server: servers.Server, load: Load, settle_seconds: float) -> dict[str, Any]:
    """One load on a running server: answers (as the client got them, and as the server counted
    them where it can say) and the tree's RSS before, at peak and kept."""
    pid = server.proc.pid
    counted_before = server_answers(server.base)
    before = tree_rss(pid)[0]
    started = time.monotonic()
    with Sampler(server) as sampler:
        answers = drive(server.base + "/invocations", load, sampler.tripped)
        load_s = time.monotonic() - started
        kept, settle_s = (0, 0.0) if sampler.tripped.is_set() else settle(pid, settle_seconds)
    counted_after = None if sampler.tripped.is_set() else server_answers(server.base)
    counted = (
        dict(counted_after - counted_before)
        if counted_before is not None and counted_after is not None
        else None
    )
    return {
        "server_answers": counted,
        "requests": sum(answers.counts.values()),
        "answers": dict(answers.counts),
        "answers_by_body": {k: dict(v) for k, v in answers.by_body.items()},
        "checked": answers.checked,
        "wrong": answers.wrong,
        "wrong_examples": answers.wrong_examples,
        "max_abs_diff": answers.max_abs_diff,
        "load_s": load_s,
        "settle_s": settle_s,
        "rss_before_mb": before / MB,
        "rss_peak_mb": sampler.peak / MB,
        "rss_workers_peak_mb": sampler.peak_workers / MB,
        "rss_kept_mb": kept / MB if kept else None,
        "guard_tripped": sampler.tripped.is_set(),
    }


def verdicts(run: dict[str, Any], budget_mb: float) -> dict[str, bool | None]:
    """This service's targets for one load (``None``: not measurable, e.g. the guard tripped)."""
    failures = sum(
        n
        for k, n in run["answers"].items()
        if (k[0] == "5" and k != RETRY_AFTER) or k.startswith(NO_ANSWER)
    )
    kept = run["rss_kept_mb"]
    return {
        "peak_within_budget": run["rss_peak_mb"] <= budget_mb,
        "kept_within_1_3x": None if kept is None else kept <= KEPT_RATIO * run["rss_before_mb"],
        "no_other_5xx": failures == 0,
        "no_wrong_answers": run["wrong"] == 0,
    }


def write_csv(x: np.ndarray) -> bytes:
    """A header row, then the rows (``repr`` floats: read back exactly)."""
    lines = [",".join(FEATURES), *(",".join(map(repr, row)) for row in x.tolist())]
    return ("\n".join(lines) + "\n").encode()


def _mib(body: Body) -> str:
    size = len(body.content) / MB
    return f"{size:.0f} MiB" if size >= 10 else f"{size:.2g} MiB"


def make_loads(
    x: np.ndarray,
    expected: np.ndarray,
    *,
    rows: int,
    seconds: float,
    bodies: int,
    mlflow: bool,
) -> list[Load]:
    """The four loads of the issue's table, shortened: a mixed load for ``seconds``, its 2,500-row
    bodies alone for half as long, ``bodies`` bodies of ``rows`` rows, and 32 bodies of all of
    ``x`` (42,500 rows, 62 MiB of split JSON by default)."""

    def split(n: int, name: str) -> Body:
        content = fixture.split_json(x[:n], mlflow_protocol=mlflow)
        return Body(name, content, JSON, expected[:n])

    mid = min(2_500, len(x))
    one, hundred, mid_body = split(1, "1 row"), split(100, "100 rows"), split(mid, f"{mid:,} rows")
    csv = Body("100 rows CSV", write_csv(x[:100]), CSV, expected[:100])
    bad = Body("malformed JSON", MALFORMED, JSON, None)
    many = split(rows, f"{rows:,} rows")
    big = split(len(x), f"{len(x):,} rows")
    counted_s = seconds + 30  # bodies are counted; this only bounds a slow server
    mixed = f"1 row, 100 rows, 100 rows CSV, {mid:,} rows, malformed JSON in turn"
    return [
        Load("mixed", f"mixed: {mixed}, c32, {seconds:g} s (issue: 3 min)",
             (one, hundred, csv, mid_body, bad), 32, seconds),
        Load("mid", f"{mid:,}-row bodies alone, c32, {seconds / 2:g} s (issue: 60 s)",
             (mid_body,), 32, seconds / 2),
        Load("rows", f"{bodies} bodies of {rows:,} rows ({_mib(many)}), "
             "c32 (issue: 192)", (many,), 32, counted_s, bodies),
        Load("big", f"32 bodies of {len(x):,} rows ({_mib(big)}), c32 "
             "(issue: 64 of 62 MiB for this service)", (big,), 32, counted_s, 32),
    ]  # fmt: skip


def measure(
    booster: Any,
    uri: str,
    *,
    big_rows: int,
    rows: int,
    seconds: float,
    bodies: int,
    settle_seconds: float,
    compile_cache: Path,
    tmp: Path,
    log: Any,
) -> dict[str, Any]:
    """Both servers under every load, this service first. ``compile_cache``: where this service
    keeps compiled trees (a fresh folder: a cold start, as the rest of the bench)."""
    x = fixture.bench_rows(big_rows)
    expected = booster.predict(x, num_threads=os.cpu_count() or 1)
    rows = min(rows, big_rows)
    out: dict[str, Any] = {
        "limit_mb": LIMIT_MB,
        "workers": WORKERS,
        "settle_max_s": settle_seconds,
        "big_rows": big_rows,
        "rows": rows,
        "servers": {},
    }
    ours_env = {
        "COMPILED_CACHE_DIR": str(compile_cache),
        "COMPILE_IN_BACKGROUND": "false",
        "MEMORY_LIMIT_MB": str(LIMIT_MB),
    }
    port = servers.free_port()
    runs = [
        ("ours", servers.ours_command(uri, port, WORKERS), port, "/health/ready", ours_env),
    ]
    port = servers.free_port()
    runs.append(("mlflow", servers.mlflow_command(uri, port), port, "/ping", {}))
    for name, command, port, ready, env in runs:
        loads = make_loads(
            x, expected, rows=rows, seconds=seconds, bodies=bodies, mlflow=name == "mlflow"
        )
        out["loads"] = [{"key": load.key, "label": load.label} for load in loads]
        log(f"memory: starting {name}: {' '.join(command[1:])}")
        with servers.running(
            f"{name}_memory", command, port, ready_path=ready, log_dir=tmp, env=env
        ) as server:
            out["servers"][name] = serve_loads(server, loads, settle_seconds, log)
        log(f"memory: {name}: {out['servers'][name]}")
    return out


def serve_loads(
    server: servers.Server, loads: list[Load], settle_seconds: float, log: Any
) -> dict[str, Any]:
    """Every load on one server, in turn; the budget is counted from the tree at ready."""
    total, workers = tree_rss(server.proc.pid)
    others = total - workers
    out: dict[str, Any] = {
        "ready_s": server.ready_s,
        "rss_ready_mb": total / MB,
        "rss_not_workers_mb": others / MB,
        # Only this service has a budget: its workers' limits plus what the rest of the tree
        # (uvicorn's supervisor, multiprocessing's resource tracker) held at ready.
        "budget_mb": (WORKERS * LIMIT_MB * MB + others) / MB if workers else None,
        "loads": {},
    }
    for load in loads:
        if server.proc.poll() is not None:
            out["loads"][load.key] = {"skipped": "the server was stopped by the memory guard"}
            continue
        run = run_load(server, load, settle_seconds)
        if out["budget_mb"] is not None:
            run["holds"] = verdicts(run, out["budget_mb"])
        out["loads"][load.key] = run
        log(f"memory: {server.name} {load.key}: {run['answers']}, {run['rss_before_mb']:.0f} -> "
            f"{run['rss_peak_mb']:.0f} -> {run['rss_kept_mb'] or 0:.0f} MB")  # fmt: skip
    return out


def wrong_answers(r: dict[str, Any]) -> list[str]:
    """Every wrong answer of the memory part, one line per load that had any."""
    lines = []
    for name, srv in (r.get("memory") or {}).get("servers", {}).items():
        for key, run in srv["loads"].items():
            if run.get("wrong"):
                lines.append(f"{name}, load {key}: {run['wrong']} wrong, e.g. "
                             f"{'; '.join(run['wrong_examples'])}")  # fmt: skip
    return lines


def _answers_text(answers: dict[str, int]) -> str:
    order = sorted(answers, key=lambda k: (k != "200", k))
    return ", ".join(f"{answers[k]:,} x {k}" for k in order) or "none"


def _holds(value: bool | None) -> str:
    return "—" if value is None else "yes" if value else "**no**"


def render(r: dict[str, Any]) -> list[str]:
    """The table's lines (empty when the run did not measure memory)."""
    m = r.get("memory")
    if not m:
        return []
    ours = m["servers"].get("ours", {})
    budget = ours.get("budget_mb")
    lines = [
        "",
        f"**Resident memory under bursts** (issue 19; RSS of the whole process tree, workers "
        f"included, MB; this service: {m['workers']} workers, `MEMORY_LIMIT_MB={m['limit_mb']}` "
        f"each; mlflow: `mlflow models serve`, 1 worker, for reference)",
        "",
        f"Budget compared with the peak: {m['workers']} x {m['limit_mb']:,} MiB plus what the "
        f"rest of the tree (uvicorn's supervisor, the resource tracker) held at ready, "
        f"{ours.get('rss_not_workers_mb', 0):.0f} MB: {budget or 0:,.0f} MB. Kept: the tree "
        f"{m['settle_max_s']:g} s after the load, or earlier once it stopped falling (no new low "
        "for 5 s); its target is against the tree just before that load. Every 200 is checked "
        "against in-process `Booster.predict` to 1e-9. Answers are as the client got them (a "
        "timeout or connection reset is no answer and misses the target); this service's own "
        "count of its answers (`/metrics`) is shown beside.",
        "",
        "| load | server | answers | before → peak → kept | peak ≤ budget | kept ≤ 1.3x before "
        "| every answer 200, 4xx or 503 + Retry-After | no wrong answer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for load in m["loads"]:
        for name, label in (("ours", "this service"), ("mlflow", "mlflow")):
            run = m["servers"].get(name, {}).get("loads", {}).get(load["key"])
            if run is None:
                continue
            if "skipped" in run:
                lines.append(f"| {load['label']} | {label} | {run['skipped']} | | | | | |")
                continue
            kept = run["rss_kept_mb"]
            memory = (f"{run['rss_before_mb']:,.0f} → {run['rss_peak_mb']:,.0f} → "
                      f"{'killed by the guard' if kept is None else f'{kept:,.0f}'}")  # fmt: skip
            holds = run.get("holds")
            cells = (
                [_holds(holds[k]) for k in ("peak_within_budget", "kept_within_1_3x",
                                            "no_other_5xx", "no_wrong_answers")]
                if holds else ["reference"] * 3 + [_holds(run["wrong"] == 0)]
            )  # fmt: skip
            answers = _answers_text(run["answers"])
            if run.get("server_answers"):
                answers += f" (the server counted {_answers_text(run['server_answers'])})"
            lines.append(f"| {load['label']} | {label} | {answers} | "
                         f"{memory} | {' | '.join(cells)} |")  # fmt: skip
    return [*lines, ""]
