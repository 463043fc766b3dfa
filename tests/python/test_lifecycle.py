"""`nekms dev up`'s life as an operator lives it: a closed terminal (SIGHUP),
a killed supervisor (SIGKILL), and a second start while the first still
runs. Checked against the processes themselves (/proc) and the run
directory: no child outlives dev up, no stale file is left behind, each
child's output is in RUN/logs/NAME.log and echoed with a [NAME] prefix, and
a start that cannot work says which process stands in the way.
"""

import json
import pathlib
import signal
import subprocess
import time

from conftest import NEKMS, Up


def alive(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


RUNTIME_FILES = ["env", "kms.ready.json", "proxy.sock", "rpc.sock", "kmstool.sock", "p11.sock", "p11-kit.sock", "privval.sock",
                 "privval-state.sock", "pids.json", "audit.sock", "logs.sock"]


def test_sighup_stops_every_child_and_leaves_no_stale_file(tmp_path):
    u = Up(tmp_path / "hup")
    run = u.dev / "up"
    children = {c["name"]: c["pid"] for c in u.info["children"]}
    assert {"kms", "proxy", "privval-persist", "enclave"} <= set(children), children
    if u.info["p11_kit"]:
        assert "p11-kit-server" in children, children
    recorded = {name: pid for name, pid, _ in json.loads((run / "pids.json").read_text())}
    assert recorded == children
    for f in ["env", "kms.ready.json", "rpc.sock", "pids.json"]:
        assert (run / f).exists(), f
    # Each child's output in its own log, and in dev up's with its name in front.
    u.nekms("enclave", "describe")
    assert "RPC on unix://" in (run / "logs" / "enclave.log").read_text()
    assert any(line.startswith("[enclave] ") and " INFO nekms-enclave: RPC on unix://" in line for line in u.log.read_text().splitlines())
    # The enclave's log stream, as the parent's collector took it over its socket.
    assert "RPC on unix://" in (run / "logs" / "enclave-stream.log").read_text()
    assert (run / "logs" / "kms.log").stat().st_size > 0

    u.proc.send_signal(signal.SIGHUP)
    assert u.proc.wait(30) == 0
    assert wait_gone(list(children.values())) == [], "children outlived dev up"
    left = [f for f in [*RUNTIME_FILES, "../../up.json"] if (run / f).exists()]
    assert left == [], f"left behind: {left}"
    assert "SIGHUP: stopping" in u.log.read_text()
    # The logs stay, for whoever looks after.
    assert (run / "logs" / "enclave.log").exists()


def test_children_die_with_a_killed_dev_up_and_the_next_run_starts(tmp_path):
    u = Up(tmp_path / "kill")
    children = [c["pid"] for c in u.info["children"]]
    u.proc.send_signal(signal.SIGKILL)
    u.proc.wait(10)
    assert wait_gone(children) == [], "children outlived a killed dev up"
    # Its files are stale now; the next run in the same directory replaces them.
    with Up(tmp_path / "kill") as again:
        again.nekms("enclave", "describe")


def test_a_second_start_names_what_stands_in_its_way(tmp_path):
    with Up(tmp_path / "first") as first:
        kms = next(c["pid"] for c in first.info["children"] if c["name"] == "kms")
        # The same ports, from another directory: the holder of the port is named.
        http = first.info["kms_http"].removeprefix("http://").rstrip("/")
        r = subprocess.run([NEKMS, "dev", "up", "--dir", str(tmp_path / "second" / "dev"), "--kms-http", http, "--kms-https", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and f"{http} is already in use by pid {kms}" in r.stderr and "--kms-http" in r.stderr, r.stderr
        # The same run directory while its children run: every one of them is named.
        r = subprocess.run([NEKMS, "dev", "up", "--dir", str(first.dev), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "still has children running" in r.stderr and f"pid {kms}" in r.stderr, r.stderr
        first.nekms("enclave", "describe")
    # A signal during start-up stops what had started.
    p = subprocess.Popen([NEKMS, "dev", "up", "--dir", str(tmp_path / "third" / "dev"), "--kms-http", "127.0.0.1:0", "--kms-https",
                          "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids_file = tmp_path / "third" / "dev" / "up" / "pids.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (pids_file.exists() and pids_file.read_text().strip()):
        time.sleep(0.01)
    started = [pid for _, pid, _ in json.loads(pids_file.read_text())]
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "SIGTERM during start-up" in err, err
    assert wait_gone(started) == [], started
    assert not pids_file.exists()
