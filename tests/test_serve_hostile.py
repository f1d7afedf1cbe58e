"""The service's HTTP surface against hostile clients: another Host, a cross-origin POST, too many requests from one
client, a trickling body or header, a docs page loading third-party scripts, and `serve` options it cannot run with.
A stand-in answerer keeps these free of the model."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import cli


class Stub:
    """Stands in for the model's answerer; holds each request until `release` is set."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()

    def answer(self, data, name, inputs):
        self.entered.set()
        self.release.wait(10)
        return {"image": name}


def _png(side=200) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 7).save(buf, "PNG")
    return buf.getvalue()


def _post(client, headers=None):
    return client.post("/predict", files={"file": ("x.png", _png())}, data={"sex": "M"}, headers=headers or {})


def _app(stub=None, **kw):
    from boneage.serving.app import create_app

    return create_app(stub or Stub(), **kw)


def test_a_host_not_allowed_is_a_400():
    from boneage.serving.guards import allowed_hosts

    client = TestClient(_app(allowed_hosts=allowed_hosts("127.0.0.1", ["ward-pc.example.org"])),
                        base_url="http://127.0.0.1:8000")
    assert client.get("/").status_code == 200
    for host in ("localhost:8000", "[::1]:8000", "ward-pc.example.org"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    for host in ("rebind.attacker.example", "127.0.0.1.attacker.example:8000"):
        r = client.get("/", headers={"Host": host})
        assert r.status_code == 400 and "host" in r.text.lower() and "attacker" not in r.text
        assert _post(client, {"Host": host}).status_code == 400


def test_allowed_hosts_names_the_bad_one():
    from boneage.errors import UserError
    from boneage.serving.guards import allowed_hosts

    assert allowed_hosts("0.0.0.0") == ["localhost", "127.0.0.1", "[::1]"]  # every interface: names must be given
    assert allowed_hosts("::1", ["10.1.2.3", "fe80::1"])[-1] == "[fe80::1]"
    with pytest.raises(UserError, match="--allow-host: 'http://x/' is not a host name"):
        allowed_hosts("127.0.0.1", ["http://x/"])


def test_a_cross_origin_post_is_a_403_and_a_same_origin_one_is_answered():
    client = TestClient(_app(), base_url="http://127.0.0.1:8000")
    r = _post(client, {"Origin": "http://evil.example"})
    assert r.status_code == 403 and r.json()["detail"].startswith("cross-origin request refused (Origin ")
    assert _post(client, {"Origin": "null"}).status_code == 403  # a sandboxed frame or a file:// page
    assert _post(client, {"Origin": "http://127.0.0.1:8000"}).status_code == 200
    assert _post(client).status_code == 200  # curl and scripts send no Origin


def test_no_docs_pages_that_load_third_party_scripts():
    client = TestClient(_app())
    for path in ("/docs", "/docs/", "/redoc", "/docs/oauth2-redirect"):
        assert client.get(path, follow_redirects=False).status_code == 404, path
    assert "/predict" in client.get("/openapi.json").json()["paths"]  # the schema itself stays (plain JSON)


def test_more_requests_in_progress_from_one_client_than_allowed_is_a_429():
    stub = Stub()
    client = TestClient(_app(stub, per_client=1))
    stub.release.clear()
    stub.entered.clear()
    first = []
    thread = threading.Thread(target=lambda: first.append(_post(client).status_code))
    thread.start()
    assert stub.entered.wait(10)
    r = _post(client)
    assert r.status_code == 429 and "too many requests at once from testclient" in r.json()["detail"]
    stub.release.set()
    thread.join(10)
    assert first == [200] and _post(client).status_code == 200  # the count goes down when an answer is sent


def test_a_trickling_body_is_a_408():
    from starlette.responses import JSONResponse

    from boneage.serving.guards import SlowBody

    async def endpoint(scope, receive, send):
        while (await receive()).get("more_body"):
            pass
        await JSONResponse({"ok": True})(scope, receive, send)

    async def run(delay):
        sent, parts = [], iter([b"a", b"b", b"c"])

        async def receive():
            await asyncio.sleep(delay)
            part = next(parts, None)
            return {"type": "http.request", "body": part or b"", "more_body": part is not None}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        await SlowBody(endpoint, idle=0.2, total=5)(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    assert asyncio.run(run(0.0))[0] == 200
    status, body = asyncio.run(run(0.5))
    assert status == 408 and b"upload too slow" in body


def test_a_connection_whose_headers_never_finish_is_closed():
    import uvicorn

    from boneage.serving.guards import HeaderTimeoutH11

    class Quick(HeaderTimeoutH11):
        HEADER_TIMEOUT = 0.5

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, log_level="warning", http=Quick))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as slow:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            t0 = time.monotonic()
            assert slow.recv(100) == b""  # closed by the server
            assert time.monotonic() - t0 < 3
        with socket.create_connection(("127.0.0.1", port), timeout=5) as ok:
            ok.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert ok.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize(("args", "message"), [
    (["--max-upload-mb", "0"], "--max-upload-mb 0: expected a positive number"),
    (["--max-upload-mb", "nan"], "--max-upload-mb nan: expected a positive number"),
    (["--port", "99999"], "--port 99999: expected 1 to 65535"),
    (["--per-client", "0"], "--per-client 0: expected at least 1"),
    (["--allow-host", "a b"], "--allow-host: 'a b' is not a host name"),
])
def test_serve_refuses_options_it_cannot_run_with(args, message):
    r = cli("serve", *args)
    assert r.returncode == 2 and r.stderr.startswith(f"boneage: error: {message}")
    assert len(r.stderr.strip().splitlines()) == 1


def test_heatmaps_go_one_at_a_time_beside_normal_films():
    from boneage.serving.app import Admission

    admission = Admission(100.0)
    inside, leave = [], threading.Event()
    lock = threading.Lock()

    def hold(pixels, heatmap, tag):
        with admission.hold(pixels, heatmap):
            with lock:
                inside.append(tag)
            leave.wait(10)

    threads = [threading.Thread(target=hold, args=(4_000_000, True, f"heat{i}")) for i in range(3)]
    threads += [threading.Thread(target=hold, args=(12_250_000, False, "medium"))]  # 3,500 x 3,500: heavy too
    threads += [threading.Thread(target=hold, args=(4_000_000, False, f"film{i}")) for i in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    with lock:
        heavy = [t for t in inside if not t.startswith("film")]
        assert len(heavy) == 1 and sorted(t for t in inside if t.startswith("film")) == ["film0", "film1"]
    leave.set()
    for t in threads:
        t.join(10)
    assert len(inside) == 6


def test_films_are_prepared_on_a_few_threads_whatever_the_number_of_clients():
    """Memory a thread keeps after a large film stays bounded by the lanes' threads, not by the clients at once."""
    from concurrent.futures import ThreadPoolExecutor

    threads = set()

    class Recorder(Stub):
        def answer(self, data, name, inputs):
            threads.add(threading.current_thread().name)
            time.sleep(0.02)
            return {"image": name}

    client = TestClient(_app(Recorder(), per_client=32))
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: client.post("/predict", files={"file": ("x.png", _png())},
                                                    data={"sex": "M", "heatmap": str(i % 2 == 0).lower()}
                                                    ).status_code, range(32)))
    assert codes == [200] * 32
    assert any(t.startswith("boneage-heavy") for t in threads) and len(threads) <= 5, threads
