"""The interleaved one-request-each client of ``bench.load``: every server gets its turn, an
answer is read to its last byte, and a wrong answer stops the measure instead of timing it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import load


def _handler(status: int, answer: bytes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn answers
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert body == b'{"x": 1}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def _server(status: int = 200, answer: bytes = b"[0.5]") -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(status, answer))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/invocations"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_each_server_takes_one_request_in_turn() -> None:
    big = b"[" + b"0.5," * 40_000 + b"0.5]"  # an answer over several reads
    with _server() as a, _server(answer=big) as b:
        taken = load.interleaved(
            {"a": a, "b": b}, b'{"x": 1}', "application/json", seconds=0.3, warmup=5
        )
    assert set(taken) == {"a", "b"}
    assert len(taken["a"]) > 10 and abs(len(taken["a"]) - len(taken["b"])) <= 1
    assert all(t > 0 for t in taken["a"] + taken["b"])


def test_a_failing_server_stops_the_measure() -> None:
    with (
        _server() as a,
        _server(status=503, answer=b"{}") as b,
        pytest.raises(RuntimeError, match="503"),
    ):
        load.interleaved({"a": a, "b": b}, b'{"x": 1}', "application/json", seconds=0.2)
