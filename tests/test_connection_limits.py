"""Hostile connections against a real ``chatbots serve`` on 127.0.0.1, over raw sockets
(app.connection_limits): oversized request heads, idle and slow connections, too many
connections, and the server's memory under oversized heads.

One server for the module on the embedded default, with small limits so that each test is
bounded in bytes (heads just over 4 KiB, not 64 MiB) and in time (timeouts of a second or two).
"""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import free_port, serve, wait_for_banner

MAX_HEADER_BYTES = 4096
HEADER_TIMEOUT = 1.5
KEEP_ALIVE = 1.0
MAX_CONNECTIONS = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(port, pid) of a ``chatbots serve`` with the limits above."""
    port = free_port()
    settings = {
        "max_header_bytes": str(MAX_HEADER_BYTES),
        "header_timeout_seconds": str(HEADER_TIMEOUT),
        "keep_alive_seconds": str(KEEP_ALIVE),
        "max_connections": str(MAX_CONNECTIONS),
    }
    proc = serve(tmp_path_factory.mktemp("limits"), port, settings=settings)
    try:
        wait_for_banner(proc, port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def head(size: int, *, finished: bool = True) -> bytes:
    """A GET /healthz request head of exactly ``size`` bytes (padded with one header)."""
    start = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: "
    end = b"\r\n\r\n" if finished else b""
    return start + b"a" * (size - len(start) - len(end)) + end


def read_until_closed(sock: socket.socket, limit: int = 65536) -> bytes:
    data = b""
    while len(data) < limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and its Content-Length of body), the connection left open."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head_part.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))  # fmt: skip
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        body += chunk
    return head_part + b"\r\n\r\n" + body


def status_and_body(response: bytes) -> tuple[int, dict]:
    head_part, _, body = response.partition(b"\r\n\r\n")
    return int(head_part.split(b" ", 2)[1]), json.loads(body) if body else {}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_head_within_the_limit_is_answered(server):
    port, _ = server
    with connect(port) as sock:
        sock.sendall(head(MAX_HEADER_BYTES - 100))
        response = read_response(sock)
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]


def test_a_finished_head_over_the_limit_is_431_and_closed(server):
    port, _ = server
    with connect(port) as sock:
        sock.sendall(head(MAX_HEADER_BYTES + 100))
        response = read_until_closed(sock)  # returns only once the server closed
    assert status_and_body(response) == (431, {"detail": "Request header fields too large."})
    assert b"connection: close" in response.lower()


def test_an_unfinished_head_over_the_limit_is_431_and_closed(server):
    port, _ = server
    with connect(port) as sock:
        sock.sendall(head(MAX_HEADER_BYTES + 1, finished=False))
        response = read_until_closed(sock)
    assert status_and_body(response)[0] == 431


def test_oversized_heads_leave_the_servers_memory_flat(server):
    """Before the limit, four connections sending 64 MiB of unfinished header each raised the
    server's RSS by 256 MiB. Here each tries to send 4 MiB (16 MiB in all, which an unbounded
    parser would hold) and is cut off after 4 KiB."""
    port, pid = server
    before = rss_kib(pid)
    chunk = b"a" * 65536
    for _ in range(4):
        with connect(port) as sock:
            sent = 0
            try:
                sock.sendall(head(200, finished=False))
                while sent < 4 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server closed the connection: what it should do
    time.sleep(0.3)
    grown_kib = rss_kib(pid) - before
    assert grown_kib < 4 * 1024, f"RSS grew by {grown_kib} KiB"


def test_an_idle_connection_is_closed_within_the_header_timeout(server):
    port, _ = server
    with connect(port) as sock:
        started = time.monotonic()
        data = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert data == b""  # it sent nothing: it is closed without an answer
    assert HEADER_TIMEOUT - 0.2 <= elapsed <= HEADER_TIMEOUT + 1.5, elapsed


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(server):
    port, _ = server
    with connect(port) as sock:
        sock.sendall(head(200))
        response = read_response(sock)
        assert response.startswith(b"HTTP/1.1 200 "), response[:200]
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        elapsed = time.monotonic() - started
    assert KEEP_ALIVE - 0.2 <= elapsed <= KEEP_ALIVE + 1.5, elapsed


def test_a_slowloris_is_answered_408_and_closed_within_the_header_timeout(server):
    """A byte every 0.2 s (a slowloris sends one a second or slower: the head never ends)."""
    port, _ = server
    with connect(port) as sock:
        sock.settimeout(0.2)
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        response = b""
        while time.monotonic() - started < HEADER_TIMEOUT + 3:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:  # nothing from the server for 0.2 s: one more byte
                try:
                    sock.sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    break
                continue
            except ConnectionResetError:
                break
            if not chunk:
                break
            response += chunk
        elapsed = time.monotonic() - started
    assert status_and_body(response) == (408, {"detail": "Timed out reading the request headers."})
    assert elapsed <= HEADER_TIMEOUT + 1.0, elapsed


def test_connections_past_the_limit_get_503_with_retry_after(server):
    port, _ = server
    idle = [connect(port) for _ in range(MAX_CONNECTIONS)]  # each counts once accepted
    try:
        time.sleep(0.2)
        with connect(port) as sock:
            sock.sendall(head(200))
            response = read_until_closed(sock)
        status, body = status_and_body(response)
        assert (status, body) == (503, {"detail": "Too many connections; try again shortly."})
        assert b"retry-after: 1" in response.lower()
    finally:
        for sock in idle:
            sock.close()
    # Their slots free again, the next request is served.
    deadline = time.monotonic() + 3
    while True:
        with connect(port) as sock:
            sock.sendall(head(200))
            response = read_response(sock)
        if response.startswith(b"HTTP/1.1 200 ") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
