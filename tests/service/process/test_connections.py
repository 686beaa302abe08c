"""Connection deadlines and bounds against a real normserve, on both transports.

HTTP (service/connections.py): a connection that never completes its request is answered 408
(or closed, if it sent nothing) once its deadline passes, while good clients are served beside
thousands of such connections; past --max-connections a new connection gets a 503 JSON refusal
with Retry-After, and established connections keep being served.
gRPC (service/grpc/server.py): what each core option set there does, shown on the wire.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import grpc
import httpx
import numpy as np
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import (
    assert_matches_reference,
    decode_response,
    infer_binary_body,
    running_server,
    sample_input,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

LN = "layer_norm_1024"
INFER = f"/v2/models/{LN}/infer"
HEADER_S = 4.0  # --request-header-timeout of the HTTP deadline test
BODY_S = 5.0  # --request-timeout of the HTTP deadline test: a body's deadline
WAIT_S = 30.0  # the most any test waits for something that must happen (not a speed bound)

# What a stalled client sends before it stops: half a request line; the line and part of the
# headers; complete headers and part of the body it declared.
STALLS = [
    ("line", b"POST /v2/models/layer_no"),
    ("headers", b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nAccept: appl"),
    ("body", b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: x\r\n"
             b"Content-Type: application/json\r\nContent-Length: 8192\r\n\r\n{\"inputs\": ["),
]


def _parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length (what normserve sends) off a socket."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {raw!r}")
        raw += chunk
    status, headers, body = _parse_response(raw)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed in the body after {body!r}")
        body += chunk
    return status, headers, body


def _read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


# -- HTTP: deadlines ---------------------------------------------------------------------


async def _hold_and_serve(server, n_idle: int, n_slow: int, n_good: int) -> dict:
    """Open ``n_idle`` silent and ``n_slow`` stalled connections, serve ``n_good`` good
    requests beside them, then read what each held connection gets until the server closes it.
    """
    loop = asyncio.get_running_loop()
    held: list[tuple[str, asyncio.StreamReader, asyncio.StreamWriter]] = []
    for i in range(n_idle + n_slow):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        if i < n_idle:
            kind = "idle"
        else:
            kind, payload = STALLS[i % len(STALLS)]
            writer.write(payload)
        held.append((kind, reader, writer))
    for _, _, writer in held:
        await writer.drain()

    async def outcome(reader: asyncio.StreamReader) -> tuple[bytes, float]:
        data = await reader.read()  # until the server closes the connection
        return data, loop.time()

    outcomes = [asyncio.ensure_future(outcome(r)) for _, r, _ in held]

    x = sample_input(LN, 2, "FP32", seed=7)
    body, headers = infer_binary_body(x, "FP32")
    results: list[bool] = []

    async def good(client: httpx.AsyncClient, i: int) -> None:
        if i % 2:
            resp = await client.get("/v2/health/ready")
            results.append(resp.status_code == 200 and resp.json() == {"ready": True})
        else:
            resp = await client.post(INFER, content=body, headers=headers)
            assert resp.status_code == 200, resp.text
            assert_matches_reference(LN, x, decode_response(resp), "FP32")
            results.append(True)

    limits = httpx.Limits(max_connections=10)
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S, limits=limits) as client:
        await asyncio.gather(*(good(client, i) for i in range(n_good)))
    good_done = loop.time()

    done = await asyncio.wait_for(asyncio.gather(*outcomes), WAIT_S)
    for _, _, writer in held:
        writer.close()
    return {"good": results, "good_done": good_done,
            "held": [(kind, data, at)
                     for (kind, _, _), (data, at) in zip(held, done, strict=True)]}


@pytest.fixture(scope="module")
def deadline_server():
    with running_server("--request-header-timeout", str(HEADER_S),
                        "--request-timeout", str(BODY_S)) as srv:
        yield srv


def test_stalled_connections_are_answered_and_good_clients_are_served(deadline_server):
    """1000 silent and 1000 stalled connections at once beside 50 good requests: every good
    request succeeds while all 2000 are still open; past the deadlines the server closes the
    silent ones and answers each stalled one 408 naming what did not arrive, then closes."""
    out = asyncio.run(_hold_and_serve(deadline_server, 1000, 1000, 50))
    assert out["good"] == [True] * 50
    # Every held connection was still open when the good requests were done (the server held
    # all 2000 while serving them), and every one was then closed by the server.
    assert min(at for _, _, at in out["held"]) >= out["good_done"]
    expected = {"line": "request line and headers", "headers": "request line and headers",
                "body": "body"}
    for kind, data, _ in out["held"]:
        if kind == "idle":
            assert data == b"", data  # nothing arrived: closed without an answer
            continue
        status, headers, body = _parse_response(data)
        assert status == 408, data
        assert headers["content-type"] == "application/json"
        error = orjson.loads(body)["error"]
        assert expected[kind] in error and "not received within" in error, error
    assert httpx.get(f"{deadline_server.url}/v2/health/ready").status_code == 200


def test_deadline_counts_from_the_first_byte_on_a_kept_alive_connection(deadline_server):
    """A served request leaves the connection open (keep-alive); a next request that stalls
    there is answered 408 too (uvicorn alone cancels its keep-alive timer on any byte)."""
    with socket.create_connection(("127.0.0.1", deadline_server.port), timeout=WAIT_S) as s:
        s.sendall(_get("/v2/health/live"))
        status, _, body = _read_response(s)
        assert (status, orjson.loads(body)) == (200, {"live": True})
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHo")
        status, headers, body = _parse_response(_read_to_eof(s))
    assert status == 408 and headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert f"request line and headers: not received within {HEADER_S:g} s" in error


async def _echo(scope, receive, send) -> None:
    """A tiny ASGI app for the in-process test: answers a request with its body."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body, more = body + message.get("body", b""), message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("protocol", ["HttpToolsConnection", "H11Connection"])
def test_both_parsers_enforce_deadlines_and_bound(protocol):
    """The h11 subclass (what uvicorn uses without httptools) behaves as the httptools one
    the server runs: in process, on a bare uvicorn, with short limits."""
    import threading

    import uvicorn

    from normserve.service.http import connections
    from normserve.service.settings import Settings

    connections.configure(Settings(request_header_timeout=0.5, request_timeout=1.0,
                                   max_connections=2))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_echo, http=getattr(connections, protocol),
                                           log_level="error", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def exchange(sent: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as s:
            s.sendall(sent)
            return _read_to_eof(s)

    try:
        deadline = time.monotonic() + WAIT_S
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
        assert exchange(b"") == b""
        for sent, what in [(b"GET / HT", "request line and headers"),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab",
                            "request body: not received within 1 s"),
                           (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab"
                            b"GET / HTTP/1.1\r\n", "request line and headers")]:
            data = exchange(sent)
            if sent.count(b"HTTP/1.1") == 2:  # pipelined: the first is answered, then a 408
                assert data.startswith(b"HTTP/1.1 200 ") and b"\r\n\r\nab" in data
                data = data[data.index(b"\r\n\r\nab") + 6:]
            status, headers, body = _parse_response(data)
            assert status == 408 and what in orjson.loads(body)["error"], data
        while server.server_state.connections:  # the closes above, seen by the server
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as a, \
                socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as b:
            for s in (a, b):
                s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok")
                assert _read_response(s)[2] == b"ok"
            status, headers, _ = _parse_response(exchange(b"GET / HTTP/1.1\r\n\r\n"))
            assert status == 503 and headers["retry-after"] == "1"
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        connections._limits = None


# -- HTTP: the bound on connections --------------------------------------------------------

MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def bounded_server():
    with running_server("--max-connections", str(MAX_CONNECTIONS)) as srv:
        yield srv


def _established(port: int) -> socket.socket:
    """A connection the server has counted: it has served a request on it (a connection
    the server closed a moment ago may still count for a moment; then it retries)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        s.sendall(_get("/v2/health/live"))
        status, _, _ = _read_response(s)
        if status == 200:
            return s
        s.close()
        assert status == 503 and time.monotonic() < deadline
        time.sleep(0.05)


def test_connections_past_the_bound_are_refused_and_served_again(bounded_server):
    port = bounded_server.port
    held = [_established(port) for _ in range(MAX_CONNECTIONS)]
    try:
        # A new connection: 503, JSON, Retry-After, then the server closes it.
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as s:
            s.sendall(_get("/v2/health/ready"))
            status, headers, body = _parse_response(_read_to_eof(s))
        assert status == 503 and headers["retry-after"] == "1"
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert f"limit of {MAX_CONNECTIONS} open connections" in orjson.loads(body)["error"]
        # The same through an HTTP client.
        resp = httpx.get(f"{bounded_server.url}/v2/health/ready", timeout=WAIT_S)
        assert resp.status_code == 503 and "error" in resp.json()
        assert resp.headers["retry-after"] == "1"
        # The established connections are served as before.
        for s in held:
            s.sendall(_get("/v2/health/ready"))
            status, _, body = _read_response(s)
            assert (status, orjson.loads(body)) == (200, {"ready": True})
        # Once some close, new connections are served again.
        for s in held[:3]:
            s.close()
        del held[:3]
        fresh = [_established(port) for _ in range(3)]
        held += fresh
        x = sample_input(LN, 1, "FP32", seed=3)
        body, headers = infer_binary_body(x, "FP32")
        request = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                   f"Inference-Header-Content-Length: "
                   f"{headers['Inference-Header-Content-Length']}\r\n\r\n").encode() + body
        fresh[0].sendall(request)
        status, resp_headers, resp_body = _read_response(fresh[0])
        assert status == 200
        resp = httpx.Response(200, headers=resp_headers, content=resp_body)
        assert_matches_reference(LN, x, decode_response(resp), "FP32")
    finally:
        for s in held:
            s.close()


# -- gRPC ------------------------------------------------------------------------------

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
SETTINGS_TYPE, GOAWAY = 4, 7
GRPC_MAX_RPCS = 2
GRPC_MAX_CONNECTIONS = 3
HANDSHAKE_S = 1.5


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """The HTTP/2 frames (type, payload) in what a server sent."""
    frames = []
    while len(data) >= 9:
        length = struct.unpack(">I", b"\x00" + data[:3])[0]
        frames.append((data[3], data[9:9 + length]))
        data = data[9 + length:]
    return frames


def _goaway_text(data: bytes) -> str | None:
    """The debug text of the GOAWAY frame in what a server sent (None: there is none)."""
    for kind, payload in _frames(data):
        if kind == GOAWAY:
            return payload[8:].decode()
    return None


def _channel(url: str) -> grpc.Channel:
    # Its own subchannel pool: a connection of its own, not one shared with other channels.
    return grpc.insecure_channel(url, options=[("grpc.use_local_subchannel_pool", 1)])


def _live(url: str) -> grpc.StatusCode:
    with _channel(url) as channel:
        try:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=WAIT_S)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def _until_live(url: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while (code := _live(url)) != grpc.StatusCode.OK:
        assert time.monotonic() < deadline, code
        time.sleep(0.1)


@pytest.fixture(scope="module")
def grpc_server():
    with running_server("--grpc-max-concurrent-rpcs", str(GRPC_MAX_RPCS),
                        "--max-connections", str(GRPC_MAX_CONNECTIONS),
                        "--request-header-timeout", str(HANDSHAKE_S)) as srv:
        yield srv


def test_grpc_rpcs_past_the_bound_get_resource_exhausted(grpc_server):
    """maximum_concurrent_rpcs: two open health Watch streams hold both places; a third RPC
    is refused RESOURCE_EXHAUSTED; once one stream ends, RPCs are served again."""
    with _channel(grpc_server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(GRPC_MAX_RPCS)]
        for watch in watches:  # each stream is open at the server: it answered
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=WAIT_S)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        watches[0].cancel()
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=WAIT_S).live
                break
            except grpc.RpcError as exc:  # the cancelled stream's place is freed just after
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline
                time.sleep(0.05)
        watches[1].cancel()


@pytest.mark.parametrize("sent", [b"", PREFACE[:10], PREFACE],
                         ids=["nothing", "half-preface", "preface-without-settings"])
def test_grpc_connection_without_handshake_is_closed(grpc_server, sent):
    """grpc.server_handshake_timeout_ms (--request-header-timeout): a connection that does not
    complete the HTTP/2 handshake is closed by the server (the default would wait 120 s)."""
    with socket.create_connection(("127.0.0.1", grpc_server.grpc_port), timeout=WAIT_S) as s:
        if sent:
            s.sendall(sent)
        data = _read_to_eof(s)  # a socket.timeout here: the server never closed it
    assert "handshake timeout" in _goaway_text(data)


def test_grpc_connections_past_the_bound_are_closed(grpc_server):
    """grpc.max_allowed_incoming_connections (--max-connections): with that many connections
    open, a new one is closed at once (the client's RPC: UNAVAILABLE); once one closes, new
    connections are served."""
    _until_live(grpc_server.grpc_url)  # earlier tests' connections are gone
    held = []
    try:
        for _ in range(GRPC_MAX_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", grpc_server.grpc_port), timeout=WAIT_S)
            s.sendall(PREFACE + SETTINGS)  # a completed handshake: it stays open
            assert _frames(s.recv(65536))[0][0] == SETTINGS_TYPE  # the server's: accepted
            held.append(s)
        assert _live(grpc_server.grpc_url) == grpc.StatusCode.UNAVAILABLE
        with socket.create_connection(("127.0.0.1", grpc_server.grpc_port),
                                      timeout=WAIT_S) as s:
            s.sendall(PREFACE + SETTINGS)
            assert _read_to_eof(s) == b""  # closed before a single frame
        held.pop().close()
        _until_live(grpc_server.grpc_url)
    finally:
        for s in held:
            s.close()


def test_grpc_idle_connection_gets_goaway_and_clients_reconnect():
    """grpc.max_connection_idle_ms (--grpc-idle-timeout): a connection with no RPC is sent a
    GOAWAY and closed; a client's next call on its channel reconnects and succeeds."""
    with running_server("--grpc-idle-timeout", "1") as srv:
        with socket.create_connection(("127.0.0.1", srv.grpc_port), timeout=WAIT_S) as s:
            s.sendall(PREFACE + SETTINGS)
            data = _read_to_eof(s)
        assert _frames(data)[0][0] == SETTINGS_TYPE and _goaway_text(data) == "connection idle"
        with _channel(srv.grpc_url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=WAIT_S).live
            state = []
            channel.subscribe(state.append)
            deadline = time.monotonic() + WAIT_S
            while grpc.ChannelConnectivity.IDLE not in state:  # the server said goodbye
                assert time.monotonic() < deadline, state
                time.sleep(0.05)
            request = service_pb2.ModelInferRequest(model_name=LN)
            x = np.ones((1, 1024), np.float32)
            tensor = request.inputs.add(name="input", datatype="FP32", shape=[1, 1024])
            tensor.contents.fp32_contents.extend(x.ravel().tolist())
            out = stub.ModelInfer(request, timeout=WAIT_S)
        y = np.frombuffer(out.raw_output_contents[0], np.float32).reshape(1, 1024)
        assert_matches_reference(LN, x, y, "FP32")


# -- HTTP: one write per small answer -----------------------------------------------------


def test_small_answers_arrive_in_one_segment(deadline_server):
    """The status line and headers go out with the body (``HeldHeaders``): a client blocked in
    ``recv`` wakes to the whole answer, never to the headers alone (uvicorn writes them
    separately, and with TCP_NODELAY each write is a segment of its own)."""
    x = sample_input(LN, 1, "FP32", seed=11)
    body, headers = infer_binary_body(x, "FP32")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}"
               "\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", deadline_server.port), timeout=WAIT_S) as sock:
        for i in range(40):
            sock.sendall(request if i % 2 else _get("/v2/health/ready"))
            first = sock.recv(1 << 20)
            status, resp_headers, got = _parse_response(first)
            assert status == 200
            assert len(got) == int(resp_headers["content-length"]) > 0, first[:300]


def test_head_and_large_answers_still_complete(deadline_server):
    """HEAD answers (headers, no body: nothing held; FastAPI's GET routes refuse HEAD) and
    answers too large to join."""
    with socket.create_connection(("127.0.0.1", deadline_server.port), timeout=WAIT_S) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw:
            raw += sock.recv(65536)
        status, resp_headers, rest = _parse_response(raw)
        assert status == 405 and resp_headers["allow"] == "GET" and rest == b""
        sock.sendall(_get("/v2/health/live"))  # the connection goes on
        assert _read_response(sock)[2] == b'{"live":true}'
    x = sample_input(LN, 64, "FP32", seed=12)  # a 256 KiB answer: headers + writelines
    body, headers = infer_binary_body(x, "FP32")
    resp = httpx.post(deadline_server.url + INFER, content=body, headers=headers, timeout=WAIT_S)
    assert resp.status_code == 200
    assert_matches_reference(LN, x, decode_response(resp), "FP32")
