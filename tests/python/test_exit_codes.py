"""The exit codes an operator (or a script) acts on, one test per class
(docs/commands.md#exit-codes): 2 usage, 3 not found, 4 refused by a rule,
5 verification failed, 6 unavailable and worth retrying; 1 is left for
internal errors. A reader that goes away ends a command quietly, and
`policy check --strict` gates CI on any warning.
"""

import json
import subprocess

import pytest

from conftest import NEKMS


@pytest.fixture(scope="module")
def up(dev_up):
    u = dev_up("exit-codes")
    u.env["NEKMS_STORE"] = f"sqlite:{u.base / 'keys.db'}"
    u.nekms("key", "create", "--name", "exit-k", "--spec", "p256")
    u.nekms("key", "create", "--name", "exit-consensus", "--spec", "ed25519", "--privval")
    return u


def run(up, *args, env=None, stdin=None):
    return subprocess.run([NEKMS, *args], capture_output=True, text=True, env={**up.env, **(env or {})}, input=stdin, timeout=120)


def test_usage_is_2(up):
    for args in (["sign", "--key", "exit-k"], ["sign", "--no-such-flag"], ["verify", "--message", "x", "--signature", "00"]):
        r = run(up, *args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)


def test_not_found_is_3(up, tmp_path):
    r = run(up, "sign", "--key", "no-such-key", "--message", "x")
    assert r.returncode == 3 and 'no key named "no-such-key"' in r.stderr, r.stderr
    r = run(up, "privval", "push-config", "-c", str(tmp_path / "missing.toml"))
    assert r.returncode == 3, (r.returncode, r.stderr)


def test_refused_by_a_rule_is_4(up):
    # A consensus key signs only through the validator signer.
    r = run(up, "sign", "--key", "exit-consensus", "--message", "x")
    assert r.returncode == 4 and "rule key-usage" in r.stderr, (r.returncode, r.stderr)


def test_verification_failed_is_5(up, tmp_path):
    sig = json.loads(up.nekms("sign", "--key", "exit-k", "--message", "signed", "--json").stdout)["signature"]
    assert run(up, "verify", "--key", "exit-k", "--message", "signed", "--signature", sig).returncode == 0
    r = run(up, "verify", "--key", "exit-k", "--message", "not what was signed", "--signature", sig)
    assert r.returncode == 5, (r.returncode, r.stderr)
    doc = tmp_path / "doc.cbor"
    up.nekms("enclave", "attest", "--nonce", "00", "-o", str(doc))
    r = run(up, "attest", "verify", "--dev-root", "--dir", str(up.dev), "--nonce", "01", str(doc))
    assert r.returncode == 5 and "verification failed" in r.stderr, (r.returncode, r.stderr)
    # policy check --strict: any warning fails it, so CI can gate on it.
    anyone = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]})
    assert run(up, "policy", "check", "-", stdin=anyone).returncode == 0
    r = run(up, "policy", "check", "--strict", "-", stdin=anyone)
    assert r.returncode == 5 and "any principal of any AWS account" in r.stdout and "--strict" in r.stderr, (r.stdout, r.stderr)
    custody = up.nekms("policy", "custody", "--account", "111122223333", "--pcr0", up.info["pcr0"]).stdout
    r = run(up, "policy", "check", "--strict", "-", stdin=custody)
    assert r.returncode == 0 and "0 warning(s)" in r.stdout, r.stdout


def test_unavailable_is_6(up, tmp_path):
    r = run(up, "enclave", "describe", env={"NEKMS_ENCLAVE": f"unix://{tmp_path / 'no-enclave.sock'}"})
    assert r.returncode == 6 and "cannot connect" in r.stderr, (r.returncode, r.stderr)


def test_a_reader_that_goes_away_ends_a_command_quietly(up):
    r = subprocess.run(f"'{NEKMS}' enclave describe --json | head -c1", shell=True, capture_output=True, text=True, env=up.env,
                       timeout=60, executable="/bin/bash")
    assert r.stdout == "{" and "panicked" not in r.stderr and "internal error" not in r.stderr, r.stderr
    # A reader gone before the first write: the write fails (EPIPE), the status is SIGPIPE's, never a panic's 101.
    r = subprocess.run(f"set -o pipefail; '{NEKMS}' enclave describe --json | true", shell=True, capture_output=True, text=True,
                       env=up.env, timeout=60, executable="/bin/bash")
    assert r.returncode == 141 and r.stderr == "", (r.returncode, r.stderr)
