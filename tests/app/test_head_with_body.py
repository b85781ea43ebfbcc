"""``HeadWithBody``: an answer's head goes out with the first write of its body, in one send;
interim answers at once; nothing held past the answer's end or the connection's close."""

from __future__ import annotations

from typing import Any

from app.connections import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_a_head_goes_out_with_its_body_in_one_write() -> None:
    transport = Transport()
    writes = HeadWithBody(transport)  # type: ignore[arg-type]
    writes.write(HEAD)
    assert transport.sent == []
    writes.write(b"{}")
    assert transport.sent == [HEAD + b"{}"]
    writes.write(b"more")  # a later write of the same answer: as it comes
    writes.flush()
    assert transport.sent == [HEAD + b"{}", b"more"]


def test_an_answer_without_a_body_goes_out_when_it_completes_or_closes() -> None:
    transport = Transport()
    writes = HeadWithBody(transport)  # type: ignore[arg-type]
    writes.write(HEAD)
    writes.flush()  # on_response_complete
    assert transport.sent == [HEAD]
    writes.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n")
    writes.close()
    assert transport.sent[-1].startswith(b"HTTP/1.1 431") and transport.closed


def test_interim_answers_and_other_writes_are_not_held() -> None:
    transport = Transport()
    writes = HeadWithBody(transport)  # type: ignore[arg-type]
    for interim in (b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 101 Switching Protocols\r\n\r\n"):
        writes.write(interim)
        assert transport.sent[-1] == interim
    writes.write(memoryview(b"a chunk"))
    assert transport.sent[-1] == b"a chunk"
    assert writes.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest passed through
    assert not writes.is_closing()
