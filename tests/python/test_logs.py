"""The enclave's log stream (`logs` in its configuration) and the parent's
`nekms logs collect`, against a real simulated enclave on dev up's proxy.

A production enclave has no console: its lines reach the parent only this
way. The enclave keeps them in a bounded queue until the collector takes
them, so lines said before the collector started still arrive; a parent
(root) that accepts the stream and never reads costs the enclave a bounded
queue, never its service, and the lines it dropped are said, with their
number, in the next lines the parent takes. The collector appends to its
file and echoes to stderr, keeps its socket root's alone, and closes a
connection that sends an endless line without touching the file.
"""

import os
import re
import socket
import stat
import time

import pytest

from conftest import NEKMS, Rpc, Up, wait_for

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z +(ERROR|WARN|INFO|DEBUG|TRACE) nekms-enclave: ")


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    with Up(tmp_path_factory.mktemp("logs")) as u:
        yield u


def enclave(up, d, logs, env=None):
    """A simulated enclave like dev up's, serving in `d`, its log lines to `logs`."""
    rpc = d / "rpc.sock"
    args = [*up.enclave_args(), "--rpc", f"unix://{rpc}", "--kmstool", f"unix://{d / 'kmstool.sock'}", "--logs", f"unix://{logs}"]
    up.start(args, rpc, "nekms-enclave", log=d / "enclave.err", env=env)
    return rpc


def test_lines_said_before_the_collector_started_arrive_and_are_echoed(up, tmp_path):
    sock, out, err = tmp_path / "logs.sock", tmp_path / "enclave.log", tmp_path / "collect.err"
    rpc = enclave(up, tmp_path, sock)
    # The enclave started first: its start-up lines wait for the collector.
    up.start([NEKMS, "logs", "collect", "--listen", f"unix://{sock}", "-o", str(out)], sock, "nekms logs collect", log=err)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    wait_for(lambda: out.exists() and "RPC on unix://" in out.read_text(), what="the enclave's start-up line", timeout=20)
    lines = out.read_text().splitlines()
    assert all(TEXT_LINE.match(l) for l in lines), lines
    assert any(" INFO nekms-enclave: RPC on unix://" in l for l in lines), lines
    wait_for(lambda: "RPC on unix://" in err.read_text(), what="the echo", timeout=10)
    # A line with no end (a local root process may write here): the connection is closed, the file unchanged.
    before = out.read_bytes()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.settimeout(20)
        try:
            s.sendall(b"x" * (128 * 1024))
            assert s.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert out.read_bytes() == before
    # The collector still serves the enclave.
    Rpc(f"unix://{rpc}").call("Describe")


def test_a_withheld_stream_costs_a_bounded_queue_and_the_loss_is_said(up, tmp_path):
    # The parent accepts the enclave's stream and reads nothing while the enclave logs a line per call.
    sock = tmp_path / "withheld.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(sock))
    srv.listen(1)
    rpc = enclave(up, tmp_path, sock, env={**up.env, "RUST_LOG": "debug"})
    srv.settimeout(20)
    conn, _ = srv.accept()
    client = Rpc(f"unix://{rpc}")
    calls = 12_000
    started = time.monotonic()
    for _ in range(calls):
        kind, _ = client.call("Describe")
        assert kind == "Ok"  # the enclave serves while the parent withholds its stream
    served = time.monotonic() - started
    # Now the parent reads: what the socket held, a line saying how many were dropped, then the queue.
    conn.settimeout(3)
    got = b""
    while True:
        try:
            chunk = conn.recv(1 << 20)
        except socket.timeout:
            break
        if not chunk:
            break
        got += chunk
    conn.close()
    srv.close()
    lines = got.decode().splitlines()
    answered = sum(1 for l in lines if "call answered" in l and "Describe" in l)
    said = [int(m.group(1)) for l in lines for m in [re.search(r"log lines dropped.* lost=(\d+)", l)] if m]
    assert said, lines[-5:]
    # Nothing is lost but what is said to be, and at most the queue (4,096 lines) waited in memory.
    assert answered + sum(said) >= calls, (answered, said)
    assert answered < calls and answered <= 4096 + 4096, (answered, said)
    assert served < 120
