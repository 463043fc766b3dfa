"""The agent under slow and greedy clients, with short limits so the test
is quick (the defaults: 10 s for headers and for a body, 512 connections,
64 requests per caller, 30 s for a call to the enclave):

- connections that never finish their headers are closed after the header
  timeout, and past the connection cap the next one gets a 503 at once;
- a body declared over the limit is refused at once (413), a body that
  stops arriving gets a 408 after the body timeout;
- calls to a stopped enclave end with a retryable 503 at the deadline, a
  caller's requests past its cap get a 429 at once, and all recovers when
  the enclave runs again;
- memory after a flood of 200 idle connections, measured against the
  baseline.
"""

import json
import os
import signal
import socket
import threading
import time
import urllib.request

import pytest

from conftest import NEKMS


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="module")
def agent(dev_up):
    u = dev_up("bounds")
    u.env["NEKMS_STORE"] = f"sqlite:{u.base / 'keys.db'}"
    ready, token = u.base / "agent.json", u.base / "agent.token"
    u.proc_agent = u.start([NEKMS, "agent", "--listen", "127.0.0.1:0", "--token-file", str(token), "--ready-file", str(ready),
                            "--header-timeout", "2", "--body-timeout", "2", "--max-connections", "50", "--max-per-caller", "4",
                            "--enclave-deadline", "2"], ready, "the agent", u.base / "agent.log")
    url = json.loads(ready.read_text())["url"]
    u.host, u.port = url.removeprefix("http://").rsplit(":", 1)
    u.port = int(u.port)
    u.token = token.read_text().strip()
    u.nekms("key", "create", "--name", "bounded", "--spec", "p256")
    return u


def raw(a, data, timeout=10):
    """Send `data` on a new connection; what comes back before the server closes it (or the timeout)."""
    s = socket.create_connection((a.host, a.port), timeout=timeout)
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    s.close()
    return out


def call(a, method, path, body=None):
    req = urllib.request.Request(f"http://{a.host}:{a.port}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {a.token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_idle_connections_are_closed_and_past_the_cap_a_503_at_once(agent):
    a = agent
    before = rss_kib(a.proc_agent.pid)
    idle = []
    for _ in range(50):
        s = socket.create_connection((a.host, a.port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # never finished
        idle.append(s)
    time.sleep(0.3)
    started = time.monotonic()
    over = raw(a, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n", timeout=5)
    assert over.startswith(b"HTTP/1.1 503") and b"too_many_connections" in over and time.monotonic() - started < 2, over
    # The header timeout closes every idle one.
    closed = 0
    for s in idle:
        s.settimeout(10)
        try:
            data = s.recv(65536)
            closed += data == b"" or data.startswith(b"HTTP/1.1 408")
        except (ConnectionResetError, TimeoutError):
            closed += 1
        s.close()
    assert closed == 50
    assert call(a, "GET", "/v1/keys")[0] == 200
    # A flood of 200 more idle connections (150 of them past the cap), then the baseline again.
    for _ in range(4):
        flood = [socket.create_connection((a.host, a.port), timeout=10) for _ in range(50)]
        for s in flood:
            s.sendall(b"POST /v1/keys HTTP/1.1\r\nHost: localhost\r\n")
        for s in flood:
            s.close()
    time.sleep(3)
    assert call(a, "GET", "/v1/keys")[0] == 200
    after = rss_kib(a.proc_agent.pid)
    print(f"\nagent RSS {before // 1024} MiB before 250 idle connections, {after // 1024} MiB after ({(after - before) / 1024:+.1f} MiB)")
    assert after - before < 16 * 1024, (before, after)


def test_bodies_over_the_limit_or_too_slow_are_refused(agent):
    a = agent
    head = f"POST /v1/keys/bounded/sign HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {a.token}\r\ncontent-type: application/json\r\n"
    started = time.monotonic()
    out = raw(a, (head + "Content-Length: 1000000000\r\n\r\n{}").encode())
    assert out.startswith(b"HTTP/1.1 413") and b"body_too_large" in out and time.monotonic() - started < 2, out
    started = time.monotonic()
    out = raw(a, (head + "Content-Length: 100\r\n\r\n{}").encode())
    took = time.monotonic() - started
    assert out.startswith(b"HTTP/1.1 408") and b"body_timeout" in out and 1.5 < took < 8, (took, out)


def test_a_stopped_enclave_gets_a_retryable_503_at_the_deadline_and_a_busy_caller_a_429(agent):
    a = agent
    assert call(a, "POST", "/v1/keys/bounded/sign", {"message": "before"})[0] == 200
    enclave = a.info["pids"]["enclave"]
    os.kill(enclave, signal.SIGSTOP)
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append((time.monotonic(), call(a, "POST", "/v1/keys/bounded/sign", {"message": "x"}))))
                   for _ in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(0.5)
        status, e = call(a, "POST", "/v1/keys/bounded/sign", {"message": "fifth"})
        assert status == 429 and e["error"]["code"] == "too_many_requests" and e["error"]["retryable"] is True, e
        for t in threads:
            t.join(30)
        for done, (status, e) in results:
            assert status == 503 and e["error"]["retryable"] is True and "did not answer within 2 s" in e["error"]["message"], e
            assert done - started < 8, done - started
    finally:
        os.kill(enclave, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while call(a, "POST", "/v1/keys/bounded/sign", {"message": "after"})[0] != 200:
        assert time.monotonic() < deadline, "the agent did not recover"
        time.sleep(0.5)
