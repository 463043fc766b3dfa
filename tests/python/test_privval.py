"""The validator signer across real processes: `nekms dev up` (local KMS,
simulated enclave, the state store `nekms privval persist`), `nekms privval
proxy` dialling a validator emulator (privval_emu.py, written here from the
.proto files), and tmkms 0.15.0 built from crates.io with the same Ed25519
seed, driven by the same script.

The parent here is root: it drives the enclave's RPC and CLI, owns the state
store's directory and its process, and tries to get a second signature for
one height, round and step, or any signature, with the consensus key by
another path.
"""

import base64
import hashlib
import json
import os
import signal
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

import privval_emu as emu
from conftest import NEKMS, SC_BRIDGE, secret_forms, stop, wait_for
from privval_support import (TMKMS, TMKMS_014, OwnSigner, World, ask, block, connect_nekms, hrs, pubkey, run_script, scan_parent, status,
                             tmkms_toml)
CHAIN_A = "a"
CHAIN_B = "chain-" + "b" * 44  # 50 characters
assert len(CHAIN_B) == 50


@pytest.fixture(scope="module")
def world(dev_up, tmp_path_factory):
    w = World(dev_up, tmp_path_factory.mktemp("privval"))
    w.seed = os.urandom(32)
    w.softsign = w.import_consensus_key("validator", w.seed)
    return w


def test_the_general_sign_pkcs11_and_a_relabelled_record_refuse_a_consensus_key(world, tmp_path):
    w = world
    r = w.nekms("sign", "--key", "validator", "--message", "a canonical vote", check=False)
    assert r.returncode != 0 and "rule key-usage" in r.stderr and "consensus key" in r.stderr, r.stderr
    pin = tmp_path / "pin"
    pin.write_text("1234")
    r = w.nekms("p11", "token", "add", "--label", "val", "--pin-file", str(pin), "--key", "validator:01", check=False)
    assert r.returncode != 0 and "rule key-usage" in r.stderr, r.stderr
    # The record with its usage removed: the usage is in KMS's context and the seal, so it no longer opens.
    record = json.loads(w.nekms("key", "show", "validator", "--json").stdout)
    assert record["encryption_context"]["nekms:usage"] == "privval"
    del record["encryption_context"]["nekms:usage"]
    record["key_id"] = "validator-plain"
    record["encryption_context"]["nekms:key-id"] = "validator-plain"
    (tmp_path / "plain.json").write_text(json.dumps(record))
    r = w.nekms("key", "add", str(tmp_path / "plain.json"), "--dev-root", "--pcr0", w.up.info["pcr0"], "--allow-imported", check=False)
    assert r.returncode != 0, "the origin document commits to the record as made"
    # Imported again as a plain key from the same ciphertext: KMS refuses the context.
    ct = w.nekms("key", "encrypt-for-import", "--privval", "--name", "v2", "--spec", "ed25519", "--kms-key", w.custody,
                 "--profile", "admin", str(w.softsign)).stdout.strip()
    r = w.nekms("key", "import", "--name", "v2", "--spec", "ed25519", "--ciphertext", ct, check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    # And the signer refuses a key not made for it.
    w.nekms("key", "create", "--name", "plain-ed", "--spec", "ed25519")
    r = w.nekms("privval", "state", "init", "--key", "plain-ed", "--chain-id", "x", "--height", "1", check=False)
    assert r.returncode != 0 and "rule key-usage" in r.stderr, r.stderr


def test_a_chain_never_starts_from_nothing_and_a_state_is_never_overwritten(world):
    w = world
    toml = w.base / "nostate.toml"
    toml.write_text(tmkms_toml(["nostate"], 'key = "validator"', []))
    r = w.nekms("privval", "push-config", "-c", str(toml), check=False)
    assert r.returncode != 0 and "rule privval-state" in r.stderr and "state init" in r.stderr, r.stderr
    r = w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", "nostate", "--height", "0", check=False)
    assert r.returncode != 0 and "heights start at 1" in r.stderr, r.stderr
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", "nostate", "--height", "5")
    r = w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", "nostate", "--height", "1", check=False)
    assert r.returncode != 0 and "not overwritten" in r.stderr, r.stderr
    # A key file in the clear on the parent is refused: the key lives in custody.
    toml.write_text(tmkms_toml(["nostate"], f'path = "{w.softsign}"', []))
    r = w.nekms("privval", "push-config", "-c", str(toml), check=False)
    assert r.returncode != 0 and "in the clear" in r.stderr, r.stderr
    toml.write_text(tmkms_toml(["nostate"], 'key = "validator"', []) + "[unknown]\nx = 1\n")
    r = w.nekms("privval", "push-config", "-c", str(toml), check=False)
    assert r.returncode != 0 and "unknown" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def compared(world):
    """The same script through nekms (proxy -> enclave) and through tmkms 0.15.0."""
    w = world
    if not TMKMS.exists():
        pytest.skip(f"tmkms 0.15.0 is not built at {TMKMS} (./scripts/test builds it)")
    for c in (CHAIN_A, CHAIN_B):
        w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", c, "--height", "1")
    steps = emu.script([CHAIN_A, CHAIN_B])
    assert len(steps) >= 200
    nekms_validators = connect_nekms(w, "cmp", [CHAIN_A, CHAIN_B])
    nekms_keys = {c: pubkey(v, c) for c, v in nekms_validators.items()}
    nekms_replies = run_script(nekms_validators, steps)

    tdir = w.base / "tmkms"
    tdir.mkdir()
    tm_validators = {c: emu.Validator(tdir / f"{i}.sock") for i, c in enumerate((CHAIN_A, CHAIN_B))}
    (tdir / "tmkms.toml").write_text(tmkms_toml([CHAIN_A, CHAIN_B], f'path = "{w.softsign}"',
                                                [(c, v.addr) for c, v in tm_validators.items()], state_dir=tdir))
    w.start_tmkms(tdir / "tmkms.toml", tdir / "tmkms.log")
    for v in tm_validators.values():
        v.accept()
    tm_keys = {c: pubkey(v, c) for c, v in tm_validators.items()}
    tm_replies = run_script(tm_validators, steps)
    return steps, nekms_keys, nekms_replies, tm_keys, tm_replies, nekms_validators, tm_validators


def test_every_signature_is_byte_identical_to_tmkms_and_verifies_over_rebuilt_canonical_bytes(world, compared):
    steps, nekms_keys, nekms_replies, tm_keys, tm_replies, _, _ = compared
    assert nekms_keys == tm_keys
    assert nekms_keys[CHAIN_A] == ("ed25519", ed25519.Ed25519PrivateKey.from_private_bytes(world.seed).public_key().public_bytes_raw())
    for (chain, kind, msg), (k1, v1, e1), (k2, v2, e2) in zip(steps, nekms_replies, tm_replies):
        assert e1 is None, (chain, kind, msg["height"], msg["round"], e1)
        assert e2 is None, ("tmkms", e2)
        assert v1["signature"] == v2["signature"], (chain, kind, msg["height"], msg["round"])
        assert v1["timestamp"] == msg["timestamp"]
        canonical = emu.canonical_proposal(chain, msg) if kind == "proposal" else emu.canonical_vote(chain, msg)
        emu.verify(nekms_keys[chain], canonical, v1["signature"])
    assert max(m["height"] for _, _, m in steps) == 2**40 and max(m["round"] for _, _, m in steps) == 1000


def test_extensions_are_signed_on_non_nil_precommits_only_and_tmkms_0_15_drops_them(world, compared):
    steps, nekms_keys, _, _, _, nv, tv = compared
    key = nekms_keys[CHAIN_A]
    height = max(m["height"] for c, _, m in steps if c == CHAIN_A) + 1
    bid = (os.urandom(32), 1, os.urandom(32))
    for ext in (b"", b"\x01", os.urandom(8192)):
        ts = (1_800_000_000, 123456789)
        precommit = {"type": emu.PRECOMMIT, "height": height, "round": 0, "block_id": bid, "timestamp": ts, "extension": ext}
        prevote = {"type": emu.PREVOTE, "height": height, "round": 0, "block_id": bid, "timestamp": ts}
        for v, who in ((nv[CHAIN_A], "nekms"), (tv[CHAIN_A], "tmkms")):
            _, pv, err = emu.decode_reply(v.request(emu.sign_vote_request(CHAIN_A, prevote)))
            assert err is None and not pv["extension_signature"], (who, err)
            _, pc, err = emu.decode_reply(v.request(emu.sign_vote_request(CHAIN_A, precommit)))
            assert err is None, (who, err)
            if who == "nekms":
                emu.verify(key, emu.canonical_vote(CHAIN_A, precommit), pc["signature"])
                emu.verify(key, emu.canonical_vote_extension(CHAIN_A, precommit), pc["extension_signature"])
                assert pc["extension"] == ext
            else:
                # tmkms 0.15.0 decodes v0.34-shaped votes: the extension and its signature are gone.
                assert not pc["extension_signature"] and not pc["extension"], "tmkms 0.15.0 was expected to drop extensions"
        height += 1
    # A nil precommit gets no extension signature; a prevote carrying extension bytes is refused (the connection closes).
    nil = {"type": emu.PRECOMMIT, "height": height, "round": 0, "block_id": None, "timestamp": (1_800_000_001, 0)}
    _, pc, err = emu.decode_reply(nv[CHAIN_A].request(emu.sign_vote_request(CHAIN_A, nil)))
    assert err is None and not pc["extension_signature"]


def test_the_double_sign_matrix_row_by_row(world):
    """Each row: a request, what the signer answers, and the state after it."""
    w = world
    chain = "matrix"
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", chain, "--height", "100")
    toml = w.base / "matrix.toml"
    v1, v2 = emu.Validator(w.base / "m1.sock"), emu.Validator(w.base / "m2.sock")
    text = tmkms_toml([chain], 'key = "validator"', [(chain, v1.addr), (chain, v2.addr)])
    text = text.replace('[[chain]]\nid = "matrix"\n', '[[chain]]\nid = "matrix"\nmax_height_jump = 1000\n')
    text = text.replace('reconnect = true\n', 'reconnect = true\nmax_height = "5000"\n')
    toml.write_text(text)
    w.nekms("privval", "push-config", "-c", str(toml))
    w.start_proxy(toml, w.base / "matrix.proxy.log")
    v1.accept()
    v2.accept()
    key = pubkey(v1, chain)
    B, C = block(), block()
    ts = (1_750_000_000, 5)

    def pv(h, r, bid, t=ts, **kw):
        return {"type": emu.PREVOTE, "height": h, "round": r, "block_id": bid, "timestamp": t, **kw}

    def pc(h, r, bid, t=ts, **kw):
        return {"type": emu.PRECOMMIT, "height": h, "round": r, "block_id": bid, "timestamp": t, **kw}

    def signed(reply, msg):
        kind, value, err = reply
        assert err is None, err
        emu.verify(key, emu.canonical_vote(chain, msg, value["timestamp"]), value["signature"])
        return value

    def refused(reply, says, code=None):
        kind, value, err = reply
        assert value is None and err is not None and says in err[1], (says, reply)
        if code is not None:
            assert err[0] == code, err

    assert hrs(w, chain) == (100, 0, 0, 1)
    first = signed(ask(v1, chain, "vote", pv(100, 0, B)), pv(100, 0, B))
    assert hrs(w, chain) == (100, 0, 2, 2)
    # The identical request again: the signature already given, no new state.
    again = signed(ask(v1, chain, "vote", pv(100, 0, B)), pv(100, 0, B))
    assert again["signature"] == first["signature"] and hrs(w, chain) == (100, 0, 2, 2)
    # Only the timestamp differs: the same signature and the old timestamp back.
    later = ask(v1, chain, "vote", pv(100, 0, B, t=(1_750_000_099, 7)))
    assert later[1]["signature"] == first["signature"] and later[1]["timestamp"] == ts and hrs(w, chain) == (100, 0, 2, 2)
    # Another block, or nil, at the same height, round and step: the double sign, refused.
    refused(ask(v1, chain, "vote", pv(100, 0, C)), "double sign refused", code=2)
    refused(ask(v1, chain, "vote", pv(100, 0, None)), "double sign refused", code=2)
    assert hrs(w, chain) == (100, 0, 2, 2)
    # A precommit for C after a prevote for B: another step, signed (FilePV; tmkms refuses it).
    signed(ask(v1, chain, "vote", pc(100, 0, C)), pc(100, 0, C))
    assert hrs(w, chain) == (100, 0, 3, 3)
    # Nil then a block at one height, round and step: refused.
    signed(ask(v1, chain, "vote", pc(100, 1, None)), pc(100, 1, None))
    refused(ask(v1, chain, "vote", pc(100, 1, B)), "double sign refused", code=2)
    # Regressions: height, round, step.
    refused(ask(v1, chain, "vote", pv(99, 5, B)), "height regression")
    refused(ask(v1, chain, "vote", pc(100, 0, C)), "round regression")
    refused(ask(v1, chain, "vote", pv(100, 1, B)), "step regression")
    assert hrs(w, chain) == (100, 1, 3, 4)
    # A huge jump, and beyond max_height: refused, nothing moves.
    refused(ask(v1, chain, "vote", pv(100 + 1001, 0, B)), "more than 1000 above")
    refused(ask(v1, chain, "vote", pv(5001, 0, B)), "above max_height 5000")
    refused(ask(v1, chain, "proposal", {"height": 2**62, "round": 0, "pol_round": -1, "block_id": B, "timestamp": ts}), "above max_height")
    assert hrs(w, chain) == (100, 1, 3, 4)
    # Another chain's id: an error reply, and the connection stays up.
    refused(emu.decode_reply(v1.request(emu.sign_vote_request("other-chain", pv(101, 0, B)))), "this connection serves")
    assert emu.decode_reply(v1.request(emu.ping_request()))[0] == "ping"
    assert hrs(w, chain) == (100, 1, 3, 4)

    # Two sentries ask for one height, round and step with different blocks at once: exactly one is signed.
    for h in range(200, 210):
        results = {}
        barrier = threading.Barrier(2)

        def go(name, v, bid):
            barrier.wait()
            results[name] = ask(v, chain, "vote", pv(h, 0, bid))

        threads = [threading.Thread(target=go, args=("one", v1, block())), threading.Thread(target=go, args=("two", v2, block()))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [r for r in results.values() if r[2] is None]
        assert len(ok) == 1, results
        assert hrs(w, chain)[:3] == (h, 0, 2)

    # A prevote carrying extension bytes is no request: the connection closes and nothing moves.
    before = hrs(w, chain)
    assert ask(v1, chain, "vote", pv(300, 0, B, extension=b"x")) is None
    assert hrs(w, chain) == before
    refusals = status(w, chain)["refusals"]
    assert refusals["double-sign"] == 13 and refusals["regression"] == 3 and refusals["max-height"] == 2 and refusals["height-jump"] == 1, refusals
    assert refusals["malformed"] == 1 and refusals["chain-id"] == 1, refusals


def test_crashes_a_failing_store_and_tampered_state(world):
    w = world
    s = OwnSigner(w, "crash", "crash-chain")
    key = pubkey(s.validator, s.chain)
    B, C = block(), block()
    vote = {"type": emu.PREVOTE, "height": 10, "round": 0, "block_id": B, "timestamp": (1_760_000_000, 1)}
    _, first, err = s.ask("vote", vote)
    assert err is None
    emu.verify(key, emu.canonical_vote(s.chain, vote), first["signature"])

    # A crash after the state was acknowledged (whatever was released): the retry gets the same signature,
    # and another block at that height, round and step is refused.
    s.restart_enclave()
    s.validator.accept()
    _, again, err = s.ask("vote", vote)
    assert err is None and again["signature"] == first["signature"]
    _, _, err = s.ask("vote", {**vote, "block_id": C})
    assert err and "double sign" in err[1]

    # A crash before the acknowledgement: the store is stopped, so nothing is released; the enclave dies waiting.
    os.kill(s.persist.pid, signal.SIGSTOP)
    pending = {"type": emu.PRECOMMIT, "height": 11, "round": 0, "block_id": B, "timestamp": (1_760_000_001, 0)}
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("reply", s.ask("vote", pending)))
    t.start()
    time.sleep(1)
    assert "reply" not in got, "a signature left before its state was acknowledged"
    s.enclave.kill()
    t.join(timeout=30)
    assert got["reply"] is None, "nothing is released when the enclave dies before the acknowledgement"
    os.kill(s.persist.pid, signal.SIGCONT)
    s.start_enclave()
    s.configure()
    s.validator.accept()

    # The store failing: an error, no signature; a conflicting request is still refused; the store back, the retry is signed.
    s.persist.kill()
    s.persist.wait()
    failing = {"type": emu.PREVOTE, "height": 12, "round": 0, "block_id": B, "timestamp": (1_760_000_002, 0)}
    _, value, err = s.ask("vote", failing)
    assert value is None and "not committed" in err[1], err
    row = s.status()
    assert row["counter"] == row["committed"] + 1 and row["store_failures"] == 1 and row["height"] == 12
    _, value, err = s.ask("vote", {**failing, "block_id": C})
    assert value is None and "double sign" in err[1], "the uncommitted state already binds"
    s.start_persist()
    _, value, err = s.ask("vote", failing)
    assert err is None
    emu.verify(key, emu.canonical_vote(s.chain, failing), value["signature"])
    row = s.status()
    assert row["counter"] == row["committed"]

    # The state records on the parent: while the enclave runs, replacing them changes nothing (it holds the state).
    older = s.snapshot()  # a valid copy from this point (height 12)
    _, value, err = s.ask("vote", {**failing, "type": emu.PRECOMMIT, "height": 13})
    assert err is None
    s.restore(older)
    s.configure()
    _, value, err = s.ask("vote", {**failing, "type": emu.PRECOMMIT, "height": 13, "block_id": C})
    assert err and "double sign" in err[1], "the enclave kept its state, not the file's"
    s.ask("vote", {**failing, "type": emu.PRECOMMIT, "height": 13})  # committed again: the slots hold height 13

    # After a restart: tampered, truncated or deleted records are refused (the chain is not served).
    current = s.snapshot()
    for name, spoil in (("tampered", lambda b: b[:44] + bytes([b[44] ^ 1]) + b[45:]), ("truncated", lambda b: b[:30])):
        s.restore({f: spoil(b) for f, b in current.items()})
        s.restart_enclave(configure=False)
        r = s.configure(check=False)
        assert r.returncode != 0 and "rule privval-state" in r.stderr, (name, r.stderr)
    for f in current:
        f.unlink()
    s.restart_enclave(configure=False)
    r = s.configure(check=False)
    assert r.returncode != 0 and "no state" in r.stderr, r.stderr
    # An older valid copy after a restart: accepted. Local mode has no freshness, and says so.
    s.restore(older)
    s.configure()
    row = s.status()
    assert row["height"] == 12 and row["freshness"] == "local", row


def test_an_imported_state_cannot_smuggle_other_bytes_to_sign(world):
    """CometBFT's priv_validator_state.json keeps the last sign bytes and
    signature; the enclave signs such bytes again when the same request
    returns, so it takes only canonical bytes for exactly the state's height,
    round, step and chain, with the key's own signature over them."""
    w = world
    seed_key = ed25519.Ed25519PrivateKey.from_private_bytes(w.seed)
    msg = {"type": emu.PREVOTE, "height": 7, "round": 0, "block_id": block(), "timestamp": (1_770_000_000, 0)}

    def state(chain, signbytes, signature):
        path = w.base / f"{chain}.json"
        path.write_text(json.dumps({"height": "7", "round": 0, "step": 2, "signature": base64.b64encode(signature).decode(),
                                    "signbytes": signbytes.hex().upper()}))
        return w.nekms("privval", "state", "import", "--key", "validator", "--chain-id", chain, str(path), check=False)

    canonical = emu.canonical_vote("imp", msg)
    smuggled = canonical + b"attacker's payload"
    r = state("imp", smuggled, seed_key.sign(smuggled))
    assert r.returncode != 0 and "canonical" in r.stderr, r.stderr
    unknown = emu.uvarint(len(canonical) - 1 + 6) + canonical[1:] + emu.bytes_field(15, b"evil")
    r = state("imp", unknown, seed_key.sign(unknown))
    assert r.returncode != 0 and "rule privval-state" in r.stderr, r.stderr
    other_chain = emu.canonical_vote("other", msg)
    r = state("imp", other_chain, seed_key.sign(other_chain))
    assert r.returncode != 0 and "rule privval-state" in r.stderr, r.stderr
    r = state("imp", canonical, os.urandom(64))
    assert r.returncode != 0 and "not this key's" in r.stderr, r.stderr
    # The file CometBFT would have written is taken.
    r = state("imp", canonical, seed_key.sign(canonical))
    assert r.returncode == 0, r.stderr
    # A tmkms state file (no sign bytes): nothing at its height, round and step is signed again.
    path = w.base / "tmkms-state.json"
    path.write_text(json.dumps({"height": "9", "round": "1", "step": 1, "block_id": None}))
    w.nekms("privval", "state", "import", "--key", "validator", "--chain-id", "imp-tmkms", str(path))


def test_durability_ten_thousand_requests_two_hundred_sigkills(world):
    """10,000 requests, many of them conflicting on purpose, while the enclave
    and the state store are SIGKILLed 200 times at random moments (often in
    the middle of a request). An independent check over every reply: no two
    signatures for one (type, height, round) over different block ids, and
    every signature verifies over the canonical bytes of the request it answers."""
    import random
    w = world
    rng = random.Random(20261126)
    s = OwnSigner(w, "durable", "durable-chain")
    key = pubkey(s.validator, s.chain)
    total, n_kills = 10_000, 200
    kill_at = set(rng.sample(range(total), n_kills))
    blocks = [block() for _ in range(4)] + [None]
    height, rnd = 1, 0
    signed_blocks = {}  # (type, height, round) -> {block id}
    signatures = errors = closed = 0
    kills = {"enclave": 0, "persist": 0}
    restart_seconds = []

    def kill(which):
        p = s.enclave if which == "enclave" else s.persist
        if p.poll() is None:
            p.kill()

    def ensure_alive():
        if s.persist.poll() is not None:
            s.start_persist()
        if s.enclave.poll() is not None:
            started = time.time()
            s.start_enclave()
            s.configure()
            s.validator.accept()
            restart_seconds.append(time.time() - started)

    for i in range(total):
        timer = None
        if i in kill_at:
            which = rng.choice(["enclave", "persist"])
            kills[which] += 1
            timer = threading.Timer(rng.uniform(0, 0.0015), kill, args=(which,))
            timer.start()
        # Mostly forward, sometimes a retry, a conflicting block, nil, or a new timestamp.
        roll = rng.random()
        if roll < 0.45:
            height += rng.choice([0, 1, 1, 2])
            rnd = 0 if roll < 0.3 else rnd + rng.randrange(0, 3)
        kind = "proposal" if rng.random() < 0.1 else "vote"
        bid = rng.choice(blocks)
        ts = (1_780_000_000 + i // 10, rng.choice([0, 1, 999_999_999]))
        if kind == "proposal":
            msg = {"height": height, "round": rnd, "pol_round": -1, "block_id": bid or blocks[0], "timestamp": ts}
            mtype = emu.PROPOSAL
        else:
            mtype = rng.choice([emu.PREVOTE, emu.PRECOMMIT])
            msg = {"type": mtype, "height": height, "round": rnd, "block_id": bid, "timestamp": ts}
        try:
            reply = s.ask(kind, msg)
        except OSError:
            reply = None
        if reply is None:
            closed += 1
        else:
            _, value, err = reply
            if err is not None:
                errors += 1
            else:
                canonical = (emu.canonical_proposal(s.chain, msg, value["timestamp"]) if kind == "proposal"
                             else emu.canonical_vote(s.chain, msg, value["timestamp"]))
                emu.verify(key, canonical, value["signature"])
                signed_blocks.setdefault((mtype, height, rnd), set()).add(msg["block_id"])
                signatures += 1
        if timer:
            timer.join()
            time.sleep(0.01)
        ensure_alive()
    time.sleep(0.05)
    ensure_alive()
    doubles = {k: v for k, v in signed_blocks.items() if len(v) > 1}
    assert not doubles, f"double signs: {list(doubles)[:5]}"
    assert sum(kills.values()) == n_kills
    assert signatures > 2000 and len(signed_blocks) > 1000, (signatures, len(signed_blocks))
    print(f"durability: {total} requests, {signatures} signatures over {len(signed_blocks)} (type, height, round), "
          f"{errors} refusals or store errors, {closed} closed mid-request; kills {kills}; "
          f"enclave restarts {len(restart_seconds)} (median {sorted(restart_seconds)[len(restart_seconds) // 2] if restart_seconds else 0:.2f} s)")


def bridge(w, name, emulator):
    """A validator's TCP priv_validator_laddr with SecretConnection (tendermint-p2p), relaying to `emulator`."""
    ready = w.base / f"{name}.bridge.json"
    seed = os.urandom(32).hex()
    p = w.spawn([SC_BRIDGE, "127.0.0.1:0", seed, emulator.path, str(ready)], w.base / f"{name}.bridge.log")
    wait_for(ready, p, "nekms-sc-bridge", log=w.base / f"{name}.bridge.log")
    info = json.loads(ready.read_text())
    return f"tcp://{info['node_id']}@127.0.0.1:{info['port']}", ready.with_name(ready.name + ".peers")


def node_id(raw_public):
    return hashlib.sha256(raw_public).digest()[:20].hex()


def test_over_tcp_with_secretconnection_byte_identical_to_tmkms(world):
    """The same script over TCP: SecretConnection terminated inside the
    enclave (cometbft-p2p) against the validator side of tendermint-p2p;
    tmkms 0.15.0 likewise. The signer's identity is a custody record."""
    w = world
    if not TMKMS.exists():
        pytest.skip(f"tmkms 0.15.0 is not built at {TMKMS}")
    chains = ["t", "tcp-" + "c" * 46]
    steps = emu.script(chains, seed=2)
    identity = json.loads(w.nekms("key", "create", "--name", "sc-identity", "--spec", "ed25519", "--json").stdout)
    identity_raw = base64.b64decode(identity["public_key"])[-32:]
    for c in chains:
        w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", c, "--height", "1")

    def setup(who, key_line, identity_line, state_dir=None):
        emus = {c: emu.Validator(w.base / f"{who}-tcp-{i}.sock") for i, c in enumerate(chains)}
        addrs = {c: bridge(w, f"{who}-{i}", emus[c]) for i, c in enumerate(chains)}
        text = tmkms_toml(chains, key_line, [(c, addrs[c][0]) for c in chains], state_dir=state_dir)
        text = text.replace("reconnect = true\n", f"reconnect = true\n{identity_line}\n")
        toml = w.base / f"{who}-tcp.toml"
        toml.write_text(text)
        return emus, addrs, toml

    emus, addrs, toml = setup("nekms", 'key = "validator"', 'identity = "sc-identity"')
    w.nekms("privval", "push-config", "-c", str(toml))
    w.start_proxy(toml, w.base / "nekms-tcp.proxy.log")
    for v in emus.values():
        v.accept()
    nekms_keys = {c: pubkey(v, c) for c, v in emus.items()}
    nekms_replies = run_script(emus, steps)
    for _, peers in addrs.values():
        assert peers.read_text().split() == [node_id(identity_raw)], "the enclave's SecretConnection key is the identity record's"

    tdir = w.base / "tmkms-tcp"
    tdir.mkdir()
    (tdir / "identity.key").write_bytes(base64.b64encode(os.urandom(32)))
    temus, _, ttoml = setup("tmkms", f'path = "{w.softsign}"', f'secret_key = "{tdir / "identity.key"}"', state_dir=tdir)
    w.start_tmkms(ttoml, tdir / "tmkms.log")
    for v in temus.values():
        v.accept()
    assert {c: pubkey(v, c) for c, v in temus.items()} == nekms_keys
    tm_replies = run_script(temus, steps)
    for (chain, kind, msg), (_, v1, e1), (_, v2, e2) in zip(steps, nekms_replies, tm_replies):
        assert e1 is None and e2 is None, (chain, kind, msg["height"], e1, e2)
        assert v1["signature"] == v2["signature"], (chain, kind, msg["height"], msg["round"])
        canonical = emu.canonical_proposal(chain, msg) if kind == "proposal" else emu.canonical_vote(chain, msg)
        emu.verify(nekms_keys[chain], canonical, v1["signature"])


def test_a_secp256k1_consensus_key_signs_sha256_low_s_and_matches_tmkms_where_it_signs(world):
    """secp256k1 consensus keys: ECDSA over SHA-256 of the sign bytes, 64
    bytes r||s, low s (CometBFT refuses a high s). tmkms's softsign has no
    secp256k1 consensus keys; its only secp256k1 path is an `account` key,
    which its keyring uses when it is the chain's only key. Where tmkms
    signs, the signatures are compared (RFC 6979 makes both deterministic)."""
    w = world
    path = w.import_consensus_key("validator-k1", os.urandom(32), "secp256k1")
    chain = "k1-chain"
    w.nekms("privval", "state", "init", "--key", "validator-k1", "--chain-id", chain, "--height", "1")
    (v,) = connect_nekms(w, "k1", [chain], key="validator-k1").values()
    key = pubkey(v, chain)
    assert key[0] == "secp256k1" and len(key[1]) == 33
    steps = [s for s in emu.script([chain], heights=20, seed=3)]
    replies = run_script({chain: v}, steps)
    for (c, kind, msg), (_, value, err) in zip(steps, replies):
        assert err is None, err
        canonical = emu.canonical_proposal(c, msg) if kind == "proposal" else emu.canonical_vote(c, msg)
        emu.verify(key, canonical, value["signature"])  # asserts low s too

    if not TMKMS.exists():
        return
    tdir = w.base / "tmkms-k1"
    tdir.mkdir()
    tv = emu.Validator(tdir / "v.sock")
    text = tmkms_toml([chain], f'path = "{path}"\nkey_format = "base64"', [(chain, tv.addr)], state_dir=tdir)
    (tdir / "tmkms.toml").write_text(text.replace('key_type = "consensus"', 'key_type = "account"'))
    w.start_tmkms(tdir / "tmkms.toml", tdir / "tmkms.log")
    try:
        tv.accept(timeout=10)
    except OSError:
        print(f"tmkms 0.15.0 with a secp256k1 account key did not connect: {(tdir / 'tmkms.log').read_text()[-500:]}")
        return
    same = differ = 0
    for (c, kind, msg), (_, value, _) in zip(steps, replies):
        body = tv.request(emu.encode(c, kind, msg), timeout=10)
        if body is None:
            break
        _, tm, err = emu.decode_reply(body)
        if err is None and tm["signature"]:
            if tm["signature"] == value["signature"]:
                same += 1
            else:
                differ += 1
    print(f"secp256k1: tmkms 0.15.0 (account key) signed {same + differ} of {len(steps)}; identical {same}, different {differ}")
    assert differ == 0, "tmkms and nekms differ on secp256k1 signatures"


def test_the_agent_shows_the_signers_figures_and_refuses_consensus_keys(world):
    """Prometheus /metrics on the agent: last height/round/step per chain,
    signatures, refusals by reason, the sign latency histogram,
    connections. And the agent's sign route is the general Sign: refused."""
    import urllib.request
    w = world
    ready, token = w.base / "agent.json", w.base / "agent.token"
    agent = w.spawn([NEKMS, "agent", "--listen", "127.0.0.1:0", "--token-file", str(token), "--ready-file", str(ready)], w.base / "agent.log")
    wait_for(ready, agent, "the agent", log=w.base / "agent.log")
    url = json.loads(ready.read_text())["url"]
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    assert 'nekms_privval_last_height{chain_id="matrix"} 209' in text, text
    assert 'nekms_privval_refusals_total{chain_id="matrix",reason="double-sign"} 13' in text
    assert 'nekms_privval_last_step{chain_id="matrix"} 2' in text
    assert f'nekms_privval_signatures_total{{chain_id="{CHAIN_A}"}}' in text
    assert 'nekms_privval_sign_duration_seconds_bucket{chain_id="matrix",le="+Inf"}' in text
    assert 'nekms_privval_connections{chain_id="matrix"}' in text
    req = urllib.request.Request(f"{url}/v1/keys/validator/sign", method="POST", data=json.dumps({"message": "aGk="}).encode(),
                                 headers={"Authorization": f"Bearer {token.read_text().strip()}", "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=30)
        raise AssertionError("the agent signed with a consensus key")
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        assert "rule key-usage" in body, (e.code, body)


def test_bad_input_closes_or_errors_and_changes_nothing(world):
    """Malformed frames and requests from a validator: the connection closes
    (or an error comes back), the state does not move, and the enclave keeps
    signing for other chains."""
    w = world
    chain, other = "bad-input", "bad-input-other"
    for c in (chain, other):
        w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", c, "--height", "50")
    vs = connect_nekms(w, "bad", [chain, other])
    v, o = vs[chain], vs[other]
    key = pubkey(v, chain)
    good = {"type": emu.PREVOTE, "height": 50, "round": 0, "block_id": block(), "timestamp": (1_760_000_000, 0)}
    assert emu.decode_reply(v.request(emu.sign_vote_request(chain, good)))[2] is None
    before = hrs(w, chain)
    vote_body = lambda **kw: emu.sign_vote_request(chain, {**good, "height": 60, **kw})
    cases = {
        "garbage": b"\xff\xff\xff\xff",
        "unknown tag": emu.envelope(15, b"\x0a\x01x"),
        "a reply, not a request": emu.envelope(8, b""),
        "negative height": vote_body(height=-5),
        "round -1": vote_body(round=-1),
        "nanos out of range": vote_body(timestamp=(1_760_000_000, 2_000_000_000)),
        "year 10000": vote_body(timestamp=(253_402_300_800, 0)),
        "31-byte block hash": vote_body(block_id=(b"\x01" * 31, 1, b"\x02" * 32)),
        "a vote of type 3": vote_body(type=3),
        "a prevote with extension bytes": vote_body(extension=b"x"),
    }
    for name, body in cases.items():
        assert v.request(body) is None, f"{name}: the connection stays open"
        v.accept()
        assert hrs(w, chain) == before, name
    # Frames: a prefix announcing more than 1 MiB, and a non-minimal prefix.
    for name, raw in (("over 1 MiB", emu.uvarint((1 << 20) + 1) + b"x" * 16), ("non-minimal prefix", b"\x85\x00" + b"x" * 5)):
        v.send_raw(raw)
        assert v.read_frame() is None, name
        v.accept()
    # A request for a chain the connection does not serve: an error reply; the connection stays.
    kind, value, err = emu.decode_reply(v.request(emu.sign_vote_request(other, {**good, "height": 61})))
    assert value is None and "this connection serves" in err[1]
    assert hrs(w, chain) == before
    # The other chain signed throughout, and this one signs again.
    for c, conn in ((other, o), (chain, v)):
        msg = {**good, "height": 70}
        _, value, err = emu.decode_reply(conn.request(emu.sign_vote_request(c, msg)))
        assert err is None, (c, err)
        emu.verify(key, emu.canonical_vote(c, msg), value["signature"])
    assert status(w, chain)["refusals"]["malformed"] >= 7


def test_a_v0_34_chain_gets_replies_without_extension_fields(world):
    w = world
    chain = "old-chain"
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", chain, "--height", "1")
    toml = w.base / "v034.toml"
    v = emu.Validator(w.base / "v034.sock")
    toml.write_text(tmkms_toml([chain], 'key = "validator"', [(chain, v.addr)]).replace('protocol_version = "v0.38"', 'protocol_version = "v0.34"'))
    w.nekms("privval", "push-config", "-c", str(toml))
    w.start_proxy(toml, w.base / "v034.proxy.log")
    v.accept()
    key = pubkey(v, chain)
    pc = {"type": emu.PRECOMMIT, "height": 1, "round": 0, "block_id": block(), "timestamp": (1_760_000_000, 0)}
    _, value, err = emu.decode_reply(v.request(emu.sign_vote_request(chain, pc)))
    assert err is None and not value["has_extension_signature_field"] and not value["extension_signature"]
    emu.verify(key, emu.canonical_vote(chain, pc), value["signature"])
    # An extension on a v0.34 chain is no request there.
    assert v.request(emu.sign_vote_request(chain, {**pc, "height": 2, "extension": b"x"})) is None


def test_tmkms_0_14_signs_the_same_vote_extensions(world, compared):
    """tmkms 0.14.0 (`sign_extensions = true`, "v0.34" in its configuration,
    which names the SecretConnection version) signs vote extensions; its
    extension signatures are nekms's, byte for byte, for extensions of 0
    bytes, 1 byte and 8 KiB."""
    w = world
    if not TMKMS_014.exists():
        pytest.skip(f"tmkms 0.14.0 is not built at {TMKMS_014} (./scripts/test builds it where it builds)")
    _, nekms_keys, _, _, _, nv, _ = compared
    chain = "ext-014"
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", chain, "--height", "1")
    (v,) = connect_nekms(w, "ext014", [chain]).values()
    tdir = w.base / "tmkms-014"
    tdir.mkdir()
    tv = emu.Validator(tdir / "v.sock")
    text = tmkms_toml([chain], f'path = "{w.softsign}"', [(chain, tv.addr)], state_dir=tdir)
    text = text.replace('protocol_version = "v0.38"', 'protocol_version = "v0.34"').replace('key_format = { type = "hex" }\n', 'key_format = { type = "hex" }\nsign_extensions = true\n')
    (tdir / "tmkms.toml").write_text(text)
    w.start_tmkms(tdir / "tmkms.toml", tdir / "tmkms.log", TMKMS_014)
    tv.accept()
    key = pubkey(v, chain)
    for h, ext in enumerate((b"", b"\x01", os.urandom(8192)), start=1):
        pc = {"type": emu.PRECOMMIT, "height": h, "round": 0, "block_id": block(), "timestamp": (1_800_000_000 + h, 7), "extension": ext}
        _, mine, err = emu.decode_reply(v.request(emu.sign_vote_request(chain, pc)))
        assert err is None, err
        _, theirs, err = emu.decode_reply(tv.request(emu.sign_vote_request(chain, pc)))
        assert err is None, ("tmkms 0.14.0", err)
        assert theirs["signature"] == mine["signature"]
        assert theirs["extension_signature"] == mine["extension_signature"] != b"", len(ext)
        emu.verify(key, emu.canonical_vote_extension(chain, pc), mine["extension_signature"])


def test_tmkms_agrees_on_the_rows_where_its_rules_are_filepvs(world, compared):
    """The double-sign rows tmkms answers as FilePV does, run against tmkms
    0.15.0 and nekms side by side: the identical request again, another
    block at the same height, round and step (code 2 from both)."""
    steps, nekms_keys, _, _, _, nv, tv = compared
    height = 2**41
    bid, other = block(), block()
    for v, who in ((nv[CHAIN_B], "nekms"), (tv[CHAIN_B], "tmkms")):
        pv = {"type": emu.PREVOTE, "height": height, "round": 0, "block_id": bid, "timestamp": (1_800_000_000, 0), "address": b"\x11" * 20}
        _, first, err = emu.decode_reply(v.request(emu.sign_vote_request(CHAIN_B, pv)))
        assert err is None, (who, err)
        _, again, err = emu.decode_reply(v.request(emu.sign_vote_request(CHAIN_B, pv)))
        assert err is None and again["signature"] == first["signature"], who
        _, value, err = emu.decode_reply(v.request(emu.sign_vote_request(CHAIN_B, {**pv, "block_id": other})))
        assert value is None and err[0] == 2, (who, err)


def test_push_config_reads_pr_229s_nitro_fields(world):
    """tmkms PR 229's tmkms.toml: the key as `encrypted_key_b64` with
    `aws_region`, the chain's `state_vsock_port`. The ciphertext must be an
    import ciphertext for a consensus key (`encrypt-for-import --privval`);
    push-config imports it once, as a record in the store."""
    w = world
    seed = os.urandom(32)
    _, ct = w.encrypt_consensus_key("pr229", seed)
    v = emu.Validator(w.base / "pr229.sock")
    toml = w.base / "pr229.toml"
    toml.write_text(f'''[[chain]]
id = "pr229-chain"
key_format = {{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }}
state_vsock_port = 5101

[[providers.softsign]]
chain_ids = ["pr229-chain"]
key_type = "consensus"
key = "pr229"
encrypted_key_b64 = "{ct}"
aws_region = "us-east-1"

[[validator]]
chain_id = "pr229-chain"
addr = "{v.addr}"
protocol_version = "v0.38"
reconnect = true
''')
    r = w.nekms("privval", "push-config", "-c", str(toml), check=False)
    assert r.returncode != 0 and "rule privval-state" in r.stderr, r.stderr
    record = json.loads(w.nekms("key", "show", "pr229", "--json").stdout)
    assert record["encryption_context"]["nekms:usage"] == "privval" and record["origin"] == "imported"
    w.nekms("privval", "state", "init", "--key", "pr229", "--chain-id", "pr229-chain", "--height", "1")
    w.nekms("privval", "push-config", "-c", str(toml))
    w.start_proxy(toml, w.base / "pr229.proxy.log")
    v.accept()
    assert pubkey(v, "pr229-chain") == ("ed25519", ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw())


def test_dev_up_runs_a_signer_for_a_chain(world):
    """`nekms dev up --privval-config tmkms.toml`: a second dev up on the same
    development world (its KMS state, its custody key, so the same consensus
    record opens) pushes the configuration and runs the proxy itself."""
    w = world
    chain = "dev-up-chain"
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", chain, "--height", "1")
    v = emu.Validator(w.base / "devup-validator.sock")
    toml = w.base / "devup.toml"
    toml.write_text(tmkms_toml([chain], 'key = "validator"', [(chain, v.addr)]))
    run, ready = w.base / "devup-run", w.base / "devup.json"
    proc = w.spawn([NEKMS, "dev", "up", "--dir", str(w.up.dev), "--run-dir", str(run), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0",
                    "--ready-file", str(ready), "--custody-kms-key", w.custody, "--privval-max-height-jump", str(2**41),
                    "--privval-config", str(toml)], w.base / "devup.log", mode="wb")
    try:
        v.accept(timeout=90)
        key = pubkey(v, chain)
        msg = {"type": emu.PREVOTE, "height": 1, "round": 0, "block_id": block(), "timestamp": (1_770_000_000, 0)}
        _, value, err = emu.decode_reply(v.request(emu.sign_vote_request(chain, msg)))
        assert err is None, err
        emu.verify(key, emu.canonical_vote(chain, msg), value["signature"])
        assert "validator signer" in (w.base / "devup.log").read_text()
    finally:
        stop(proc, timeout=30)


def mac_keys(seed, chains):
    import hmac as std_hmac
    return {f"MAC key of {c}": std_hmac.new(seed, b"nekms-privval-state-mac:v1\0" + c.encode(), "sha256").digest() for c in chains}


def test_the_parents_traffic_carries_no_key_and_no_signature_before_its_state(world):
    """A capture of the enclave's state-store traffic and the proxy's privval
    traffic: no consensus seed, no state MAC key; and no record holds a
    signature (the signatures seen are the replies')."""
    w = world
    s = OwnSigner(w, "captured", "captured-chain", record=True)
    pubkey(s.validator, s.chain)
    sigs = []
    for h in range(2, 12):
        for t in (emu.PREVOTE, emu.PRECOMMIT):
            msg = {"type": t, "height": h, "round": 0, "block_id": block(), "timestamp": (1_770_000_000 + h, 0)}
            _, value, err = s.ask("vote", msg)
            assert err is None, err
            sigs.append(value["signature"])
    s.restart_enclave()
    s.validator.accept()
    store_traffic, privval_traffic = (bytes(r.captured) for r in s.recorders)
    assert len(store_traffic) > 20 * 300 and len(privval_traffic) > 20 * 100
    for name, secret in {"consensus seed": w.seed, **mac_keys(w.seed, [s.chain])}.items():
        for form in secret_forms(secret, unpadded=True):
            assert form not in store_traffic and form not in privval_traffic, name
    for sig in sigs:
        assert sig not in store_traffic, "a signature went to the state store"
        assert sig in privval_traffic


def test_no_consensus_key_or_state_mac_key_reaches_the_parent(world):
    w = world
    secrets = {"consensus seed": w.seed,
               **mac_keys(w.seed, [CHAIN_A, CHAIN_B, "matrix", "crash-chain", "durable-chain", "t", "bad-input", "old-chain", "captured-chain"])}
    # The softsign file is the administrator's input to encrypt-for-import (and tmkms's key file): not the parent's.
    scan_parent(w, secrets, skip={w.softsign})
