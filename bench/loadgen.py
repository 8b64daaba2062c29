"""A bounded, CPU-light HTTP/1.1 load generator (asyncio + raw keep-alive connections).

Each virtual client owns one keep-alive TCP connection and sends its own prebuilt request
(URL, headers and body per client), one at a time: concurrency = number of clients. The run is
bounded by a total request count and a duration cap (whichever comes first) and by a per-request
timeout. Warm-up requests run first and are not measured. With ``shared=True`` (CLI ``--once``)
the clients instead draw from one queue: each request is sent once, in order, by whichever client
is free, and the run also ends when the queue is empty (e.g. a new user's key on every request).

Reports requests/s, p50/p95/p99/max latency (ms), errors (non-2xx, socket errors, timeouts) and
the status counts. No httpx: a Protocol per connection parses the status line, the headers and a
Content-Length (or chunked) body, which keeps the generator's own CPU small next to the service.

As a module::

    from bench.loadgen import Request, run_load
    req = Request.build("POST", "http://127.0.0.1:8000/x", {"X-api-key": k}, b'{"message":"hi"}')
    result = await run_load([req, ...], concurrency=16, total=3000, duration=15, warmup=32)
    result.summary()   # dict: rps, p50_ms, p95_ms, p99_ms, max_ms, errors, status_counts, ...

From the command line (one header file line per client gives each client its own header)::

    python bench/loadgen.py http://127.0.0.1:8000/channels/api/<id>/incoming_message \\
        -c 16 -n 3000 -d 15 --warmup 32 --body '{"message": "hi"}' \\
        --client-header-file keys.txt     # lines like "X-api-key: abc.def"
        # add --once to send each line's request once (a new credential per request)
    python bench/loadgen.py http://127.0.0.1:9000/v1/chat/completions -c 64 -n 3000 \\
        --body '{"model": "latency-200", "messages": [{"role": "user", "content": "hi"}]}'

Only loopback addresses are accepted unless ``--allow-non-loopback`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 30.0
_MAX_HEADER_BYTES = 64 * 1024
_MAX_ERROR_SAMPLES = 5


# ---------------------------------------------------------------------------------------------
# requests


@dataclass(frozen=True)
class Request:
    """One client's prebuilt HTTP/1.1 request."""

    host: str
    port: int
    payload: bytes
    label: str = ""

    @classmethod
    def build(
        cls,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        body: bytes | str | None = None,
        label: str = "",
    ) -> Request:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise ValueError(f"only http:// URLs are supported, got {url!r}")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if isinstance(body, str):
            body = body.encode()
        lines = [f"{method.upper()} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        given = {k.lower() for k in (headers or {})}
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        if body is not None:
            if "content-type" not in given:
                lines.append("Content-Type: application/json")
            lines.append(f"Content-Length: {len(body)}")
        elif method.upper() in ("POST", "PUT", "PATCH"):
            lines.append("Content-Length: 0")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return cls(host=host, port=port, payload=head + (body or b""), label=label)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# one connection


class _Response:
    __slots__ = ("status", "body", "close")

    def __init__(self, status: int, body: bytes, close: bool) -> None:
        self.status = status
        self.body = body
        self.close = close


class _Connection(asyncio.Protocol):
    """A keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[_Response] | None = None
        self.closed = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        try:
            response = self._parse()
        except ValueError as exc:
            waiter.set_exception(ConnectionError(f"bad response: {exc}"))
            return
        if response is not None:
            waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))

    # use
    def send(self, payload: bytes) -> asyncio.Future[_Response]:
        assert self.transport is not None
        self.buf.clear()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self) -> _Response | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEADER_BYTES:
                raise ValueError("headers too large")
            return None
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        status_line = head[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            raise ValueError(f"status line {head[0][:80]!r}")
        status = int(status_line[1])
        length: int | None = None
        chunked = False
        close = status_line[0] == "HTTP/1.0"
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection":
                close = value.strip().lower() == "close"
        start = end + 4
        if chunked:
            body = _parse_chunked(buf, start)
            if body is None:
                return None
            return _Response(status, body, close)
        if length is None:
            if status in (204, 304) or 100 <= status < 200:
                length = 0
            else:
                raise ValueError("no Content-Length (unsupported: read-until-close)")
        if len(buf) - start < length:
            return None
        return _Response(status, bytes(buf[start : start + length]), close)


def _parse_chunked(buf: bytearray, pos: int) -> bytes | None:
    body = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0].strip() or b"0", 16)
        pos = line_end + 2
        if size == 0:
            # trailers end with an empty line
            return bytes(body) if buf.find(b"\r\n", pos) >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos : pos + size]
        pos += size + 2


# ---------------------------------------------------------------------------------------------
# results


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class LoadResult:
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    all_latencies: list[float] = field(default_factory=list)  # seconds, every completed request
    status_counts: Counter = field(default_factory=Counter)
    errors: int = 0
    completed: int = 0
    elapsed: float = 0.0  # measured phase: first send to last completion
    warmup_completed: int = 0
    warmup_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    stopped_by: str = ""  # "total" | "duration" | "exhausted" (a shared queue ran out)
    # With run_load(..., record=True): one (sent at, seconds from the measured phase's start;
    # latency, s; status; the request's label) per measured request, in completion order.
    events: list[tuple[float, float, int | str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = sorted(self.latencies)
        ms = lambda s: round(s * 1000.0, 2)  # noqa: E731
        elapsed = self.elapsed or 1e-9
        return {
            "concurrency": self.concurrency,
            "requests": self.completed,
            "ok": len(ok),
            "errors": self.errors,
            "elapsed_s": round(self.elapsed, 3),
            "rps": round(self.completed / elapsed, 1),
            "ok_rps": round(len(ok) / elapsed, 1),
            "p50_ms": ms(percentile(ok, 50)),
            "p95_ms": ms(percentile(ok, 95)),
            "p99_ms": ms(percentile(ok, 99)),
            "max_ms": ms(ok[-1]) if ok else 0.0,
            "mean_ms": ms(sum(ok) / len(ok)) if ok else 0.0,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items(), key=str)},
            "warmup_requests": self.warmup_completed,
            "warmup_errors": self.warmup_errors,
            "stopped_by": self.stopped_by,
            "error_samples": self.error_samples,
        }


# ---------------------------------------------------------------------------------------------
# the run


class Client:
    """One virtual client: one keep-alive connection, one request at a time."""

    def __init__(self, request: Request, timeout: float) -> None:
        self.request = request
        self.timeout = timeout
        self.conn: _Connection | None = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self.request.host, self.request.port),
            self.timeout,
        )
        return conn

    async def call(self, request: Request | None = None) -> tuple[int | str, bytes]:
        """(status, body) or (error kind, b"") ; never raises for network trouble.
        ``request`` (same host and port) replaces the client's own for this call."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = await self._connect()
            conn = self.conn
            fut = conn.send((request or self.request).payload)
            loop = asyncio.get_running_loop()
            handle = loop.call_later(self.timeout, _expire, fut)
            try:
                response = await fut
            finally:
                handle.cancel()
        except TimeoutError:
            self.close()
            return "timeout", b""
        except (OSError, ConnectionError) as exc:
            self.close()
            return "conn_error", str(exc).encode()[:200]
        if response.close:
            self.close()
        return response.status, response.body

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def run_load(
    requests: Sequence[Request],
    *,
    concurrency: int,
    total: int | None = None,
    duration: float | None = None,
    warmup: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    on_complete: Callable[[int], None] | None = None,
    on_measure_start: Callable[[], None] | None = None,
    allow_non_loopback: bool = False,
    shared: bool = False,
    record: bool = False,
) -> LoadResult:
    """Run ``concurrency`` clients; client i sends ``requests[i % len(requests)]`` repeatedly.
    With ``shared``, the clients take ``requests`` in order from one queue instead, each sent
    once (warm-up first), and the run also stops when the queue is empty ("exhausted").

    Stops issuing after ``total`` measured requests or ``duration`` seconds, whichever first (at
    least one of the two is required); in-flight requests then finish (bounded by ``timeout``).
    ``warmup`` requests run before, over the same connections, and are not measured.
    ``on_complete(n)`` is called after the n-th measured completion (keep it cheap);
    ``on_measure_start()`` once, when the warm-up is over and the measured phase begins.
    ``record``: keep every measured request's time, latency, status and label in ``events``
    (a timeline: second-by-second throughput, an outage's errors, which labels succeeded).
    """
    if not requests:
        raise ValueError("no requests")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if total is None and duration is None:
        raise ValueError("give a total request count and/or a duration cap")
    if not allow_non_loopback:
        for request in requests:
            if not is_loopback(request.host):
                raise ValueError(f"refusing a non-loopback target {request.host!r}")
    # A client keeps its connection, so the requests it may draw must share its host and port.
    if shared and len({(r.host, r.port) for r in requests}) > 1:
        raise ValueError("shared requests must all go to one host and port")
    queue = iter(requests) if shared else None
    clients = [Client(requests[i % len(requests)], timeout) for i in range(concurrency)]
    result = LoadResult(concurrency=concurrency)
    try:
        if warmup > 0:
            await _phase(clients, result, warmup, None, queue, measured=False)
        if on_measure_start is not None:
            on_measure_start()
        await _phase(clients, result, total, duration, queue, measured=True,
                     on_complete=on_complete, record=record)  # fmt: skip
    finally:
        for client in clients:
            client.close()
    return result


async def _phase(
    clients: list[Client],
    result: LoadResult,
    total: int | None,
    duration: float | None,
    queue: Iterator[Request] | None,
    *,
    measured: bool,
    on_complete: Callable[[int], None] | None = None,
    record: bool = False,
) -> None:
    issued = 0
    start = time.perf_counter()
    deadline = start + duration if duration is not None else math.inf
    last_done = start
    stopped = {"by": ""}

    async def worker(client: Client) -> None:
        nonlocal issued, last_done
        perf = time.perf_counter
        while True:
            now = perf()
            if total is not None and issued >= total:
                stopped["by"] = stopped["by"] or "total"
                return
            if now >= deadline:
                stopped["by"] = stopped["by"] or "duration"
                return
            request = client.request if queue is None else next(queue, None)
            if request is None:
                stopped["by"] = stopped["by"] or "exhausted"
                return
            issued += 1
            status, body = await client.call(request)
            done = perf()
            latency = done - now
            if not measured:
                result.warmup_completed += 1
                if not (isinstance(status, int) and 200 <= status < 300):
                    result.warmup_errors += 1
                    if status in ("conn_error", "timeout"):
                        await asyncio.sleep(0.05)
                continue
            last_done = done
            if record:
                result.events.append((now - start, latency, status, request.label))
            result.completed += 1
            result.status_counts[status] += 1
            result.all_latencies.append(latency)
            if isinstance(status, int) and 200 <= status < 300:
                result.latencies.append(latency)
            else:
                result.errors += 1
                if len(result.error_samples) < _MAX_ERROR_SAMPLES:
                    result.error_samples.append(f"{status}: {body[:300].decode('utf-8', 'replace')}")
                if status in ("conn_error", "timeout"):
                    await asyncio.sleep(0.05)  # do not spin against a dead server
            if on_complete is not None:
                on_complete(result.completed)

    await asyncio.gather(*(worker(c) for c in clients))
    if measured:
        result.elapsed = last_done - start
        result.stopped_by = stopped["by"]


def install_uvloop() -> bool:
    """Use uvloop for the current process's event loops, if it is installed."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


# ---------------------------------------------------------------------------------------------
# command line


def _parse_header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {line!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="http://127.0.0.1:PORT/path")
    parser.add_argument("-X", "--method", default=None, help="default: POST with a body, else GET")
    parser.add_argument("-H", "--header", action="append", default=[], type=_parse_header,
                        help="a header for every client, 'Name: value'; repeatable")
    parser.add_argument("--client-header-file", help="one 'Name: value' line per client")
    parser.add_argument("--once", action="store_true",
                        help="send each --client-header-file line's request once, in order, by "
                        "whichever client is free (a new credential per request)")
    parser.add_argument("--body", help="request body (JSON text); @FILE reads a file")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-n", "--requests", type=int, default=None, help="measured requests cap")
    parser.add_argument("-d", "--duration", type=float, default=None, help="seconds cap")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured requests first")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="per request, s")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--allow-non-loopback", action="store_true")
    args = parser.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.requests, args.duration = 1000, 15.0

    body: bytes | None = None
    if args.body is not None:
        body = open(args.body[1:], "rb").read() if args.body.startswith("@") else args.body.encode()
    method = args.method or ("POST" if body is not None else "GET")
    common = dict(args.header)
    per_client: list[dict[str, str]] = [{}]
    if args.client_header_file:
        with open(args.client_header_file) as f:
            per_client = [dict([_parse_header(line)]) for line in f if line.strip()]
    requests = [Request.build(method, args.url, common | extra, body) for extra in per_client]

    install_uvloop()
    result = asyncio.run(
        run_load(
            requests,
            concurrency=args.concurrency,
            total=args.requests,
            duration=args.duration,
            warmup=args.warmup,
            timeout=args.timeout,
            allow_non_loopback=args.allow_non_loopback,
            shared=args.once,
        )
    )
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"c={summary['concurrency']} requests={summary['requests']} "
            f"errors={summary['errors']} rps={summary['rps']} p50={summary['p50_ms']}ms "
            f"p95={summary['p95_ms']}ms p99={summary['p99_ms']}ms max={summary['max_ms']}ms "
            f"status={summary['status_counts']} stopped_by={summary['stopped_by']}"
        )
        for sample in summary["error_samples"]:
            print(f"  error: {sample}")
    return 0 if result.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
