"""Upgrades keep every key: trust by signer (PCR8), in the development world.

`nekms dev init` makes the world's image signer and one custody key whose
policy trusts that signer's PCR8; every `nekms dev up` signs the simulated
image with it and pins the same key (`custody-trust = "pcr8"`). So a restart,
a rebuilt nekms-enclave (a new PCR0) and a changed configuration all keep
every key and token. The parent, root here, holds neither the signer nor a
way around the policy: an image it signs itself, a signature it copies onto
another image, and an unsigned image open nothing.
"""

import base64
import json
import os
import shutil
import subprocess

import pytest

import privval_emu as emu
from conftest import NEKMS, NEKMS_ENCLAVE, Up, nekms, verify_default_scheme
from privval_support import block, pubkey, tmkms_toml

SPECS = ["secp256k1", "ed25519", "p256", "p384", "rsa2048"]


def sign_all(run, tag):
    for spec in SPECS:
        out = json.loads(run("sign", "--key", f"k-{spec}", "--message", tag, "--json").stdout)
        public = base64.b64decode(json.loads(run("key", "show", f"k-{spec}", "--json").stdout)["public_key"])
        verify_default_scheme(spec, public, tag.encode(), bytes.fromhex(out["signature"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("upgrade")
    init = nekms("dev", "init", "--dir", str(base / "dev"), timeout=120).stdout
    assert "created custody.toml" in init or "created  custody.toml" in init, init
    return base


def test_restarts_and_rebuilds_keep_every_key_and_token(world):
    base = world
    env_of = lambda u: {**u.env, "NEKMS_STORE": f"sqlite:{base / 'keys.db'}", "NEKMS_P11_DB": str(base / "tokens.json")}
    pin = base / "pin"
    pin.write_text("123456")
    with Up(base) as first:
        run = lambda *a, check=True: nekms(*a, env=env_of(first), check=check, timeout=120)
        for spec in SPECS:
            run("key", "create", "--name", f"k-{spec}", "--spec", spec)
        sign_all(run, "before")
        run("p11", "token", "add", "--label", "web", "--pin-file", str(pin), "--key", "k-p256:01")
        custody, pcr0, pcr8 = first.info["custody_kms_key"], first.info["pcr0"], first.info["pcr8"]
        assert pcr8 != "00" * 48 and custody in (base / "dev" / "custody.toml").read_text()
        assert 'custody-trust = "pcr8"' in open(first.info["enclave_config"]).read()
        described = json.loads(run("enclave", "describe", "--json").stdout)
        assert described["trust"]["custody_trust"] == "pcr8" and described["trust"]["origin_pcr8"] == [pcr8]

    # A restart: the same key, the same records.
    with Up(base) as second:
        run = lambda *a, check=True: nekms(*a, env=env_of(second), check=check, timeout=120)
        assert second.info["custody_kms_key"] == custody and second.info["pcr0"] == pcr0
        sign_all(run, "after a restart")
        run("p11", "token", "restore")
        assert "web" in run("p11", "slots").stdout

    # A rebuilt nekms-enclave (one byte more: a new PCR0), signed by the same signer.
    rebuilt = base / "nekms-enclave-rebuilt"
    shutil.copy(NEKMS_ENCLAVE, rebuilt)
    with open(rebuilt, "ab") as f:
        f.write(b"\0")
    with Up(base, "--image", str(rebuilt), "--no-import") as third:
        run = lambda *a, check=True: nekms(*a, env=env_of(third), check=check, timeout=120)
        assert third.info["custody_kms_key"] == custody
        assert third.info["pcr0"] != pcr0 and third.info["pcr8"] == pcr8
        sign_all(run, "after a rebuild")
        run("p11", "token", "restore")
        # On the parent: the origin is proven by the signer, not by this image's PCR0.
        root = ["--dev-root", "--dir", str(base / "dev")]
        origin = json.loads(run("key", "verify-origin", "k-ed25519", "--pcr8", pcr8, *root, "--json").stdout)
        assert origin["document"]["pcr0"] == pcr0 and origin["document"]["pcr8"] == pcr8, origin
        r = run("key", "verify-origin", "k-ed25519", "--pcr0", third.info["pcr0"], *root, check=False)
        assert r.returncode != 0 and "rule provenance" in r.stderr and "not trusted" in r.stderr, r.stderr
        r = run("key", "verify-origin", "k-ed25519", "--pcr8", "00" * 48, *root, check=False)
        assert r.returncode != 0 and "unsigned" in r.stderr, r.stderr


def test_images_root_signs_or_copies_a_signature_onto_open_nothing(world, tmp_path):
    """The parent (root) builds an image of its own: signed by a key it holds
    (PCR8 U), or carrying the world signer's signature copied from the real
    image, or unsigned. None of them opens the world's custody key."""
    base = world
    with Up(base) as u:
        env = {**u.env, "NEKMS_STORE": f"sqlite:{tmp_path / 'keys.db'}"}
        nekms("key", "create", "--name", "victim", "--spec", "ed25519", env=env)
        own = tmp_path / "attacker.toml"
        text = open(u.info["enclave_config"]).read()
        # The attacker's configuration accepts the real signer's records, so only KMS stands in the way.
        own.write_text(text + f'origin-pcr8 = ["{u.info["pcr8"]}"]\n')
        image = tmp_path / "nekms-enclave-attacker"
        shutil.copy(NEKMS_ENCLAVE, image)

        # 1. Signed by the attacker's own P-384 key: a valid signature, another PCR8.
        key, cert = tmp_path / "u.key", tmp_path / "u.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", str(key),
                        "-out", str(cert), "-days", "30", "-subj", "/CN=not the signer"], check=True, capture_output=True)
        sig = tmp_path / "u.sig"
        m = json.loads(nekms("pcr", "sim", str(image), "--config", str(own), "--sign-key", str(key), "--sign-cert", str(cert),
                             "--signature", str(sig)).stdout)["Measurements"]
        assert m["PCR8"] != u.info["pcr8"]
        rpc = tmp_path / "attacker.sock"
        u.start([*u.enclave_args(own), "--image", str(image), "--sim-signature", str(sig), "--rpc", f"unix://{rpc}",
                 "--kmstool", f"unix://{tmp_path / 'attacker-kmstool.sock'}"], rpc, "attacker enclave", tmp_path / "attacker.log")
        attacker = {**env, "NEKMS_ENCLAVE": f"unix://{rpc}"}
        nekms("enclave", "credentials", env=attacker)
        assert json.loads(nekms("enclave", "describe", "--json", env=attacker).stdout)["pcrs"]["PCR8"] == m["PCR8"].lower()
        r = nekms("sign", "--key", "victim", "--message", "m", env=attacker, check=False)
        assert r.returncode != 0 and "AccessDeniedException" in r.stderr, r.stderr
        r = nekms("key", "create", "--name", "planted", "--spec", "p256", env=attacker, check=False)
        assert r.returncode != 0 and "AccessDeniedException" in r.stderr, r.stderr

        # 2. The world signer's signature, copied from the real image onto the attacker's: refused at boot.
        copied = nekms_enclave(u, own, image, u.info["sim_signature"], tmp_path / "copied")
        assert copied.returncode != 0 and "another image's PCR0" in copied.stderr, copied.stderr

        # 3. Unsigned, claiming signer trust: refused at start.
        unsigned = nekms_enclave(u, own, image, None, tmp_path / "unsigned")
        assert unsigned.returncode != 0 and "not signed" in unsigned.stderr, unsigned.stderr

        # The real enclave still signs.
        nekms("sign", "--key", "victim", "--message", "m", env=env)


def nekms_enclave(u, config, image, signature, prefix):
    """nekms-enclave run to its first failure (it should not get as far as serving)."""
    args = [*u.enclave_args(config), "--image", str(image), "--rpc", f"unix://{prefix}.sock", "--kmstool", f"unix://{prefix}-k.sock"]
    if signature:
        args += ["--sim-signature", str(signature)]
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"it started: {e.stderr}") from e


def test_a_world_whose_key_or_signer_is_gone_says_what_to_do(tmp_path):
    base = tmp_path / "gone"
    with Up(base) as u:
        custody = u.info["custody_kms_key"]
        u.client("admin").schedule_key_deletion(KeyId=custody, PendingWindowInDays=7)
    r = nekms("dev", "up", "--dir", str(base / "dev"), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0", check=False, timeout=120)
    assert r.returncode != 0 and "not usable in the local KMS" in r.stderr and "--new-custody-key" in r.stderr, r.stderr
    # A new key, then a signer that is not the one the key trusts.
    made = nekms("dev", "init", "--dir", str(base / "dev"), "--new-custody-key", timeout=120).stdout
    assert "created custody.toml" in made.replace("  ", " "), made
    os.remove(base / "dev" / "image-signer.key")
    os.remove(base / "dev" / "image-signer.pem")
    r = nekms("dev", "up", "--dir", str(base / "dev"), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0", check=False, timeout=120)
    assert r.returncode != 0 and "is another" in r.stderr and "image-signer.pem" in r.stderr, r.stderr


def test_a_rebuilt_image_continues_the_validators_state(world, tmp_path, monkeypatch):
    """A validator's consensus key made in one run signs a prevote; after a rebuild (a new PCR0, the same signer)
    dev up pushes the same configuration, the enclave reads the kept state: the same height, round and step with
    another block is refused, the next height is signed with the same key."""
    base = world
    chain = "upgrade-chain"
    env_of = lambda u: {**u.env, "NEKMS_STORE": f"sqlite:{tmp_path / 'keys.db'}"}
    v = emu.Validator(tmp_path / "validator.sock")
    toml = tmp_path / "tmkms.toml"
    toml.write_text(tmkms_toml([chain], 'key = "consensus"', [(chain, v.addr)]))
    vote = lambda h, blk: {"type": emu.PREVOTE, "height": h, "round": 0, "block_id": blk, "timestamp": (1_770_000_000 + h, 0)}
    ask = lambda msg: emu.decode_reply(v.request(emu.sign_vote_request(chain, msg)))
    with Up(base) as first:
        run = lambda *a: nekms(*a, env=env_of(first), timeout=120)
        run("key", "create", "--name", "consensus", "--spec", "ed25519", "--privval")
        run("privval", "state", "init", "--key", "consensus", "--chain-id", chain, "--height", "1")
        run("privval", "push-config", "-c", str(toml))
        first.spawn([NEKMS, "privval", "proxy", "--privval", first.info["privval"], "-c", str(toml)], tmp_path / "proxy.log")
        v.accept(timeout=60)
        key = pubkey(v, chain)
        _, value, err = ask(vote(5, block()))
        assert err is None, err
    rebuilt = tmp_path / "nekms-enclave-rebuilt"
    shutil.copy(NEKMS_ENCLAVE, rebuilt)
    with open(rebuilt, "ab") as f:
        f.write(b"\1")
    # dev up pushes the configuration itself, reading the records from this store.
    monkeypatch.setenv("NEKMS_STORE", f"sqlite:{tmp_path / 'keys.db'}")
    second = Up(base, "--image", str(rebuilt), "--privval-config", str(toml))
    try:
        assert second.info["pcr8"] != "00" * 48
        v.accept(timeout=90)
        assert pubkey(v, chain) == key
        _, _, err = ask(vote(5, block()))
        assert err is not None, "a second prevote at height 5 with another block was signed"
        msg = vote(6, block())
        _, value, err = ask(msg)
        assert err is None, err
        emu.verify(key, emu.canonical_vote(chain, msg), value["signature"])
    finally:
        second.stop()
