"""The enclave's audit trail, end to end: a `nekms dev up` session (a key
made, signatures, a signature refused by a rule, a kmstool decryption, a
wrong PIN and a PKCS#11 signature through p11-kit, a validator's prevote
and a refused double sign) leaves RUN/audit.jsonl, which `nekms audit
verify` accepts: every line chained to the one before, checkpoints signed
by the enclave's audit key, which its start document binds to the image's
PCR0. The parent, as attacker, edits a record, deletes one, swaps two,
forges a checkpoint and cuts the file short: each is found and named. No
secret (the PIN, the signed messages) is in the file.

The same session runs every program at RUST_LOG=debug with JSON log lines:
each child's log is in RUN/logs, the enclave's stream reached the parent's
collector, and no secret the session used (PINs, an imported seed, the
messages and plaintexts, the world's AWS secret keys) is in any log.
"""

import base64
import json
import os
import subprocess

import pytest

import privval_emu as emu
from conftest import NEKMS, Up, enclave_policy, nekms, secret_forms
from p11_support import P11KIT_CLIENT
from privval_support import block, pubkey, tmkms_toml

PIN = "2468-pin"
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")


@pytest.fixture(scope="module")
def trail(tmp_path_factory):
    base = tmp_path_factory.mktemp("audit")
    chain = "audit-chain"
    v = emu.Validator(base / "validator.sock")
    toml = base / "tmkms.toml"
    toml.write_text(tmkms_toml([chain], 'key = "audit-consensus"', [(chain, v.addr)]))
    pin = base / "pin"
    pin.write_text(PIN)
    os.chmod(pin, 0o600)
    (base / "seed.key").write_bytes(base64.b64encode(SEED) + b"\n")
    debug = {**os.environ, "RUST_LOG": "debug", "NEKMS_LOG_FORMAT": "json"}
    with Up(base, env=debug) as up:
        env = {**up.env, "NEKMS_STORE": f"sqlite:{base / 'keys.db'}", "NEKMS_P11_DB": str(base / "tokens.json")}
        run = lambda *a, check=True: nekms(*a, env=env, check=check, timeout=120)
        run("key", "create", "--name", "audit-k", "--spec", "p256")
        run("sign", "--key", "audit-k", "--message", "the first secret message")
        # An imported Ed25519 seed, encrypted for import by the administrator.
        ct = run("key", "encrypt-for-import", "--name", "audit-imported", "--spec", "ed25519", "--kms-key", up.info["custody_kms_key"],
                 "--profile", "admin", str(base / "seed.key")).stdout.strip()
        run("key", "import", "--name", "audit-imported", "--spec", "ed25519", "--ciphertext", ct)
        run("sign", "--key", "audit-imported", "--message", "an imported key's message")
        run("key", "create", "--name", "audit-consensus", "--spec", "ed25519", "--privval")
        r = run("sign", "--key", "audit-consensus", "--message", "not a vote", check=False)
        assert r.returncode == 4 and "rule key-usage" in r.stderr, r.stderr
        admin, instance = up.client("admin"), up.client("instance")
        key = admin.create_key(Policy=json.dumps(enclave_policy(up.info["pcr0"])))["KeyMetadata"]["Arn"]
        ct = base64.b64encode(instance.encrypt(KeyId=key, Plaintext=b"kmstool secret")["CiphertextBlob"]).decode()
        assert run("kmstool", "decrypt", "--address", up.info["kmstool"], "--region", "us-east-1", ct).stdout == "kmstool secret"
        # PKCS#11 through p11-kit: a wrong PIN, then a signature.
        run("p11", "token", "add", "--label", "audited", "--pin-file", str(pin), "--key", "audit-k:01")
        (base / "h.bin").write_bytes(os.urandom(32))
        tool = ["pkcs11-tool", "--module", P11KIT_CLIENT, "--token-label", "audited", "--login", "--sign", "-m", "ECDSA", "--id", "01",
                "-i", str(base / "h.bin"), "-o", str(base / "sig.bin")]
        kit_env = {**env, "P11_KIT_SERVER_ADDRESS": up.info["p11_kit"]}
        r = subprocess.run([*tool, "--pin", "0000-pin"], env=kit_env, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "CKR_PIN_INCORRECT" in r.stderr, r.stderr
        r = subprocess.run([*tool, "--pin", PIN], env=kit_env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        # The validator: a prevote, then another block at the same height, round and step.
        run("privval", "state", "init", "--key", "audit-consensus", "--chain-id", chain, "--height", "1")
        run("privval", "push-config", "-c", str(toml))
        up.spawn([NEKMS, "privval", "proxy", "--privval", up.info["privval"], "-c", str(toml)], base / "proxy.log", env=env)
        v.accept(timeout=60)
        pubkey(v, chain)
        vote = {"type": emu.PREVOTE, "height": 5, "round": 0, "block_id": block(), "timestamp": (1_770_000_000, 0)}
        assert emu.decode_reply(v.request(emu.sign_vote_request(chain, vote)))[2] is None
        vote["block_id"] = block()
        assert emu.decode_reply(v.request(emu.sign_vote_request(chain, vote)))[2] is not None, "a double sign was signed"
        info = up.info
        info["secrets"] = [up.creds[p][k] for p in up.creds for k in ("secret_access_key", "session_token") if up.creds[p].get(k)]
    # dev up stopped: the enclave signed a last checkpoint on its way out.
    return base, info, pathlib_of(info["audit"])


def pathlib_of(p):
    import pathlib
    return pathlib.Path(p)


def verify(base, info, path, *extra):
    return nekms("audit", "verify", str(path), "--dev-root", "--dir", str(base / "dev"), "--pcr0", info["pcr0"], *extra, check=False)


def test_the_session_is_recorded_and_verifies(trail):
    base, info, path = trail
    r = verify(base, info, path)
    assert r.returncode == 0 and "chain intact, signed up to seq" in r.stdout and "0 after it not signed yet" in r.stdout, r.stdout + r.stderr
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    decisions = [(d["channel"], d["op"], d["result"].split(":")[0], d.get("key"), d.get("caller")) for d in lines if d["kind"] == "decision"]
    want = [("rpc", "GenerateKey", "ok", "audit-k", None), ("rpc", "Sign", "ok", "audit-k", None),
            ("rpc", "Sign", "refused", "audit-consensus", None), ("kmstool", "Decrypt", "ok", None, None),
            ("rpc", "P11 AddToken", "ok", None, "token audited"), ("p11", "P11 Login", "refused", None, "token audited"), ("p11", "P11 Login", "ok", None, "token audited"),
            ("p11", "P11 Sign", "ok", "01", "token audited")]
    for w in want:
        assert w in decisions, (w, decisions)
    privval = [d for d in lines if d["kind"] == "decision" and d["channel"] == "privval"]
    assert [d["result"].split(":")[0] for d in privval] == ["ok", "refused"], privval
    assert "conflicting data at height 5" in privval[1]["result"], privval
    assert all(d["caller"] == "chain audit-chain" and d["op"].startswith("Vote 5/0") for d in privval), privval
    signed = next(d for d in lines if d["kind"] == "decision" and d["op"] == "Sign" and d["result"] == "ok")
    assert len(signed["payload_sha256"]) == 64 and len(signed["key_sha256"]) == 64 and signed["scheme"] == "default"
    text = path.read_text()
    for secret in (PIN, "0000-pin", "the first secret message", "kmstool secret"):
        assert secret not in text
    # Per-child logs stayed in the run directory.
    logs = sorted(p.name for p in (base / "dev" / "up" / "logs").iterdir())
    assert {"audit.log", "enclave.log", "kms.log", "proxy.log"} <= set(logs), logs


def tampered(trail, tmp_path, change):
    base, info, path = trail
    lines = path.read_text().splitlines()
    out = tmp_path / "tampered.jsonl"
    out.write_text("\n".join(change(lines)) + "\n")
    return verify(base, info, out)


def middle(lines):
    """The index of a decision line with more lines after it."""
    return next(i for i, l in enumerate(lines) if '"kind":"decision"' in l and i > 2)


def test_each_program_logs_apart_in_json_and_no_secret_reaches_a_log(trail):
    base, info, audit = trail
    logs = audit.parent / "logs"
    names = {p.name for p in logs.iterdir()}
    assert {"kms.log", "proxy.log", "privval-persist.log", "audit.log", "logs.log", "enclave.log", "enclave-stream.log"} <= names, names
    # Every line a program wrote is a JSON object with a time and a level (the stream too: the enclave's own lines).
    for name in ("enclave.log", "enclave-stream.log", "kms.log", "proxy.log"):
        lines = (logs / name).read_text().splitlines()
        assert lines, name
        for line in lines:
            entry = json.loads(line)
            assert entry["timestamp"].endswith("Z") and entry["level"] in ("ERROR", "WARN", "INFO", "DEBUG", "TRACE"), line
    stream = [json.loads(l) for l in (logs / "enclave-stream.log").read_text().splitlines()]
    said = lambda op, result: [e for e in stream if e.get("op") == op and e["message"].startswith(result)]
    # The enclave said what it decided (keys by name, never their bytes), and the parent's collector has it.
    assert said("Sign", "ok") and said("ImportKey", "ok")
    assert said("P11 Login", "refused"), stream[-20:]
    assert [e for e in stream if e.get("channel") == "privval" and e["message"].startswith("refused")], stream[-20:]
    assert any(e["message"].startswith("RPC on unix://") for e in stream)
    # No secret the session used, in any form, in any log, at debug level.
    secrets = [PIN.encode(), b"0000-pin", SEED, b"the first secret message", b"an imported key's message", b"kmstool secret"]
    secrets += [s.encode() for s in info["secrets"]]
    files = [*logs.iterdir(), base / "up.log", base / "proxy.log"]
    for secret in secrets:
        for form in secret_forms(secret, unpadded=True):
            for f in files:
                assert form not in f.read_bytes(), f"{form!r} in {f}"


def test_an_edited_record_is_named(trail, tmp_path):
    def edit(lines):
        i = middle(lines)
        lines[i] = lines[i].replace('"result":"ok"', '"result":"refused: nothing"').replace('"result":"refused', '"result":"ok-ish')
        return lines
    r = tampered(trail, tmp_path, edit)
    assert r.returncode == 5 and "that record was edited" in r.stderr, r.stderr


def test_a_removed_or_reordered_record_is_named(trail, tmp_path):
    r = tampered(trail, tmp_path, lambda lines: lines[:middle(lines)] + lines[middle(lines) + 1:])
    assert r.returncode == 5 and "a record was removed or reordered" in r.stderr, r.stderr
    def swap(lines):
        i = middle(lines)
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return lines
    r = tampered(trail, tmp_path, swap)
    assert r.returncode == 5 and ("removed or reordered" in r.stderr or "was edited" in r.stderr), r.stderr


def test_a_forged_checkpoint_is_refused(trail, tmp_path):
    def forge(lines):
        i = next(i for i, l in enumerate(lines) if '"kind":"checkpoint"' in l)
        v = json.loads(lines[i])
        v["signature"] = base64.b64encode(b"\0" * 64).decode()
        lines[i] = json.dumps(v, separators=(",", ":"))
        return lines[: i + 1]
    r = tampered(trail, tmp_path, forge)
    assert r.returncode == 5 and "checkpoint" in r.stderr, r.stderr


def test_a_file_cut_short_after_a_verify_is_found(trail, tmp_path):
    base, info, path = trail
    state = tmp_path / "seen.json"
    assert verify(base, info, path, "--state", str(state)).returncode == 0
    lines = path.read_text().splitlines()
    last_checkpoint = max(i for i, l in enumerate(lines) if '"kind":"checkpoint"' in l)
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:last_checkpoint]) + "\n")
    assert verify(base, info, cut).returncode == 0, "without the state, a clean cut is only an unsigned tail"
    r = verify(base, info, cut, "--state", str(state))
    assert r.returncode == 5 and "no longer in the file" in r.stderr, r.stderr
