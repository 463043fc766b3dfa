"""The enclave as an image in a guest VM: `nekms dev up --vm-blobs` builds
the EIF around the custody key it sets up, and `nekms dev vm`'s launcher
boots it under QEMU with vhost-device-vsock, handing the guest's simulated
NSM the PCRs it measured from the EIF (fw_cfg). Inside, nekms-init starts
nekms-enclave on real AF_VSOCK sockets in a real kernel; the parent's tools
reach it through the launcher's Unix sockets, and it reaches the KMS proxy
and the state store through the host's side of the vsock device.

Checked with clients nobody here wrote: boto3 (KMS), `cryptography`
(signatures), pkcs11-tool through p11-kit's client, tmkms 0.15.0 (a validator script signed byte for byte alike),
and eif_reader.py for the PCRs. The parent, as attacker, boots an image one
byte different signed with its own key, and opens the guest's RPC from a
non-reserved port. The upgrade path end to end: the same image signed by the
world's signer (B) serves the real image's keys of every spec, its PKCS#11
token and its validator's state; a quorum moves them all to a key trusting
another signer, whose image (D) serves all of it and continues the state."""

import base64
import json
import os
import pathlib
import re
import shutil
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

import eif_reader
import privval_emu as emu
from conftest import NEKMS, ROOT, enclave_policy, nekms, spawn, start, stop, verify_default_scheme
from p11_support import P11KIT_CLIENT
from privval_support import TMKMS, World, block, connect_nekms, pubkey, run_script, tmkms_toml

IMAGE_DIR = ROOT / "target" / "image"
INIT = os.environ.get("NEKMS_IMAGE_INIT_BIN", str(IMAGE_DIR / "nekms-init"))
VM_ENCLAVE = os.environ.get("NEKMS_VM_ENCLAVE_BIN", str(IMAGE_DIR / "nekms-enclave-dev"))
MODULES = ["vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport", "qemu_fw_cfg"]
CMDLINE = "console=ttyS0 reboot=k panic=-1 random.trust_cpu=on nekms.parent_cid=2\n"


def guest_blobs(d: pathlib.Path):
    """A blobs directory for the guest: Debian's kernel and modules (scripts/guest-kernel), nekms-init."""
    kernel = pathlib.Path(os.environ.get("NEKMS_GUEST_KERNEL_DIR") or subprocess.run(
        [str(ROOT / "scripts" / "guest-kernel")], check=True, capture_output=True, text=True).stdout.strip())
    (d / "modules").mkdir(parents=True)
    shutil.copy(kernel / "bzImage", d / "bzImage")
    shutil.copy(kernel / "modules" / "nsm.ko", d / "nsm.ko")
    for m in MODULES:
        shutil.copy(kernel / "modules" / f"{m}.ko", d / "modules" / f"{m}.ko")
    (d / "modules" / "order").write_text("".join(f"{m}.ko\n" for m in MODULES))
    shutil.copy(INIT, d / "init")
    (d / "cmdline").write_text(CMDLINE)
    return d


SPECS = {"vm-k1": "secp256k1", "vm-p256": "p256", "vm-ed": "ed25519", "vm-p384": "p384", "vm-rsa": "rsa2048"}


@pytest.fixture(scope="module")
def world(dev_up, tmp_path_factory):
    base = tmp_path_factory.mktemp("vm")
    blobs = guest_blobs(base / "blobs")
    # Migration approvers in the measured configuration: two Ed25519 files and a P-256 one, two needed.
    approvers = []
    for name, key in (("a1", ed25519.Ed25519PrivateKey.generate()), ("a2", ec.generate_private_key(ec.SECP256R1())),
                      ("a3", ed25519.Ed25519PrivateKey.generate())):
        (base / f"{name}.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
        (base / f"{name}.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
        approvers += ["--migration-approver", str(base / f"{name}.pub")]
    w = World(dev_up, base, "--vm-blobs", str(blobs), "--vm-enclave-bin", VM_ENCLAVE, *approvers, "--migration-threshold", "2")
    w.blobs = blobs
    w.vm = w.up.info["vm"]
    w.eif = pathlib.Path(w.vm["image"])
    return w


def test_the_guest_reports_the_measurements_the_launcher_took_from_the_eif(world, tmp_path):
    w = world
    pcrs = eif_reader.pcrs(w.eif.read_bytes())
    assert {k: v for k, v in w.vm["measurements"].items() if k.startswith("PCR")} == pcrs
    described = json.loads(w.nekms("enclave", "describe", "--json").stdout)
    assert described["simulated"] is True
    for i in range(3):
        assert described["pcrs"][f"PCR{i}"] == pcrs[f"PCR{i}"] == w.up.info[f"pcr{i}"]
    # A document from the guest chains to the development root through the boot CA and carries the EIF's PCRs.
    doc = tmp_path / "doc.cbor"
    w.nekms("enclave", "attest", "--nonce", "0badc0de", "-o", str(doc))
    pcr_args = [a for i in range(3) for a in ("--pcr", f"{i}={pcrs[f'PCR{i}']}")]
    v = json.loads(w.nekms("attest", "verify", "--dev-root", "--dir", str(w.up.dev), "--nonce", "0badc0de", *pcr_args, "--json",
                           str(doc)).stdout)
    assert len(v["document"]["cabundle"]) == 2
    # The guest ran nekms-init and nekms-enclave on real vsock, with no other device.
    console = pathlib.Path(w.vm["serial_log"]).read_text()
    assert "nekms-init: loaded /modules/vmw_vsock_virtio_transport.ko" in console
    assert "heartbeat answered" in console, console[-2000:]
    assert "RPC on vsock://any:5000" in console and "KMS through vsock://2:8000" in console
    assert w.vm["heartbeat_ms"] is not None and w.vm["ready_ms"] < 60000
    print(f"\nguest VM under {w.vm['accel']}: heartbeat {w.vm['heartbeat_ms']} ms, RPC ready {w.vm['ready_ms']} ms, "
          f"QEMU RSS {w.vm['qemu_rss_kib'] // 1024} MiB")


def test_key_create_and_sign_through_the_guest(world):
    w = world
    for name, spec in SPECS.items():
        w.nekms("key", "create", "--name", name, "--spec", spec)
        pem = w.nekms("key", "public-key", name, "--pem").stdout.encode()
        sig = json.loads(w.nekms("sign", "--key", name, "--message", "through the guest", "--json").stdout)
        verify_default_scheme(spec, pem, b"through the guest", bytes.fromhex(sig["signature"]))


def test_kmstool_decrypt_through_the_guest_and_the_instance_is_denied(world):
    w = world
    admin, instance = w.up.client("admin"), w.up.client("instance")
    key = admin.create_key(Policy=json.dumps(enclave_policy(w.up.info["pcr0"])))["KeyMetadata"]["Arn"]
    ct = base64.b64encode(instance.encrypt(KeyId=key, Plaintext=b"Hello from the guest")["CiphertextBlob"]).decode()
    out = w.nekms("kmstool", "decrypt", "--address", w.up.info["kmstool"], "--region", "us-east-1", ct)
    assert out.stdout == "Hello from the guest"
    w.ciphertext = ct
    with pytest.raises(instance.exceptions.ClientError) as denied:
        instance.decrypt(CiphertextBlob=base64.b64decode(ct))
    assert "AccessDenied" in str(denied.value)


def test_a_validator_script_through_the_guest_matches_tmkms_byte_for_byte(world):
    w = world
    if not TMKMS.exists():
        pytest.fail(f"tmkms 0.15.0 is not built at {TMKMS} (./scripts/test builds it)")
    seed = os.urandom(32)
    softsign = w.import_consensus_key("vm-validator", seed)
    chain = "vm-chain"
    w.nekms("privval", "state", "init", "--key", "vm-validator", "--chain-id", chain, "--height", "1")
    steps = emu.script([chain], heights=8)
    ours = connect_nekms(w, "vm", [chain], key="vm-validator")
    ours_key, ours_replies = pubkey(ours[chain], chain), run_script(ours, steps)
    w.validator_key, w.validator_height = ours_key, max(m["height"] for _, _, m in steps)
    tdir = w.base / "tmkms"
    tdir.mkdir()
    theirs = {chain: emu.Validator(tdir / "v.sock")}
    (tdir / "tmkms.toml").write_text(tmkms_toml([chain], f'path = "{softsign}"', [(chain, theirs[chain].addr)], state_dir=tdir))
    w.start_tmkms(tdir / "tmkms.toml", tdir / "tmkms.log")
    theirs[chain].accept()
    assert pubkey(theirs[chain], chain) == ours_key
    # Every signature byte for byte tmkms's, and over the rebuilt canonical bytes (tmkms 0.15 drops extensions).
    for (_, kind, msg), (_, ours_v, ours_e), (_, theirs_v, theirs_e) in zip(steps, ours_replies, run_script(theirs, steps)):
        assert ours_e is None and theirs_e is None, (ours_e, theirs_e)
        assert ours_v["signature"] == theirs_v["signature"], (kind, msg["height"], msg["round"])
        canonical = emu.canonical_proposal(chain, msg) if kind == "proposal" else emu.canonical_vote(chain, msg)
        emu.verify(ours_key, canonical, ours_v["signature"])


def test_a_pkcs11_signature_through_p11_kit_in_the_guest(world, tmp_path):
    """ACM for Nitro Enclaves' layout: p11-kit's server runs in the guest beside nekms-enclave (which starts it,
    as the measured configuration says), loads libnekms_p11.so and listens on vsock port 9999; p11-kit's
    client module on the parent reaches it, here through the launcher's socket."""
    w = world
    kit = w.up.info["p11_kit"]
    assert kit and kit.startswith("unix:path="), kit
    env = {**w.env, "NEKMS_P11_DB": str(w.base / "tokens.json"), "NEKMS_P11_RPC": w.up.info["rpc"], "P11_KIT_SERVER_ADDRESS": kit}
    pin = tmp_path / "pin"
    pin.write_text("1234-pin")
    os.chmod(pin, 0o600)
    nekms("key", "create", "--name", "vm-web", "--spec", "p256", env=env)
    nekms("p11", "token", "add", "--label", "vmweb", "--pin-file", str(pin), "--key", "vm-web:01", env=env)
    digest = os.urandom(32)
    (tmp_path / "h.bin").write_bytes(digest)
    tool = ["pkcs11-tool", "--module", P11KIT_CLIENT, "--token-label", "vmweb", "--login", "--sign", "-m", "ECDSA", "--id", "01",
            "-i", str(tmp_path / "h.bin"), "-o", str(tmp_path / "sig.bin")]
    r = subprocess.run([*tool, "--pin", "1234-pin"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sig = (tmp_path / "sig.bin").read_bytes()
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public = serialization.load_pem_public_key(nekms("key", "public-key", "vm-web", "--pem", env=env).stdout.encode())
    public.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    # The parent without the PIN gets nothing signed.
    r = subprocess.run([*tool, "--pin", "0000-pin"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "CKR_PIN_INCORRECT" in r.stderr, r.stderr
    assert "p11-kit's server started: /usr/libexec/p11-kit/p11-kit-server" in pathlib.Path(w.vm["serial_log"]).read_text()


def boot(w, eif, tmp_path, name, all_ports=False):
    """`nekms dev vm EIF` beside the real guest (CID 17), on the same KMS proxy; its run directory and the process.
    With `all_ports`, also its validator and p11-kit ports, and its connections to the validator state store."""
    run, ready = tmp_path / name, tmp_path / f"{name}.json"
    proxy = w.up.info["proxy"].removeprefix("unix://")
    ports = ["--link", f"8000={proxy}"]
    if all_ports:
        ports += ["--link", f"5101={w.up.info['privval_state'].removeprefix('unix://')}"]
        ports += [a for port, sock in ((5000, "rpc"), (3000, "kmstool"), (5100, "privval"), (9999, "p11kit"))
                  for a in ("--forward", f"{port}={run / sock}.sock")]
    vm = start([NEKMS, "dev", "vm", str(eif), "--dir", str(w.up.dev), "--run-dir", str(run), "--cid", "17", *ports,
                "--ready-file", str(ready)], ready, "dev vm", log=tmp_path / f"{name}.log", timeout=120)
    return run, vm


def test_an_image_one_byte_different_opens_the_keys_only_when_the_same_signer_signed_it(world, tmp_path):
    """dev up signs the image with the development signer and its custody key trusts that signer (PCR8). The parent
    changes one byte of the configuration and builds the image twice: signed with a P-384 key of its own, the KMS and
    the enclave refuse it; signed by the real signer (a rebuilt, upgraded image) it serves the real image's keys."""
    w = world
    config = tmp_path / "enclave.toml"
    original = pathlib.Path(w.up.info["enclave_config"]).read_bytes()
    config.write_bytes(original.replace(b"written by nekms dev up", b"written by nekms dev uP"))
    assert len(config.read_bytes()) == len(original) and config.read_bytes() != original
    key, cert = tmp_path / "u.key", tmp_path / "u.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "30", "-subj", "/CN=the parent"], check=True, capture_output=True)
    # dev up's own build, with the changed configuration: signed by the world's signer, then by the parent's key.
    args = json.loads(w.eif.with_suffix(".build.json").read_text())
    args[args.index("--config") + 1] = str(config)
    upgraded, foreign = tmp_path / "upgraded.eif", tmp_path / "foreign.eif"
    nekms(*[str(upgraded) if a == args[args.index("-o") + 1] else a for a in args])
    args[args.index("-o") + 1], args[args.index("--sign-key") + 1], args[args.index("--sign-cert") + 1] = str(foreign), str(key), str(cert)
    nekms(*args)
    pcrs, foreign_pcrs = eif_reader.pcrs(upgraded.read_bytes()), eif_reader.pcrs(foreign.read_bytes())
    assert pcrs["PCR0"] == foreign_pcrs["PCR0"] != w.up.info["pcr0"] and pcrs["PCR2"] != w.up.info["pcr2"] and pcrs["PCR1"] == w.up.info["pcr1"]
    assert pcrs["PCR8"] == w.up.info["pcr8"] != foreign_pcrs["PCR8"]

    run, vm = boot(w, foreign, tmp_path, "foreign")
    try:
        rpc = f"unix://{run / 'rpc.sock'}"
        env = {**w.env, "NEKMS_ENCLAVE": rpc}
        described = json.loads(nekms("enclave", "describe", "--json", env=env).stdout)["pcrs"]
        assert (described["PCR0"], described["PCR8"]) == (pcrs["PCR0"], foreign_pcrs["PCR8"])
        nekms("enclave", "credentials", env=env)
        r = nekms("key", "create", "--name", "from-changed", "--spec", "p256", env=env, check=False)
        assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
        # A record the real image made does not open in the foreign one: it does not trust the record's origin.
        r = nekms("sign", "--key", "vm-k1", "--message", "x", env=env, check=False)
        assert r.returncode != 0 and "rule provenance" in r.stderr and w.up.info["pcr0"] in r.stderr, r.stderr
        # kmstool's ciphertext, under a key whose policy names the real image's PCR0: KMS refuses the changed one.
        r = nekms("kmstool", "decrypt", "--address", f"unix://{run / 'kmstool.sock'}", "--region", "us-east-1", w.ciphertext,
                  env=env, check=False)
        assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
        # The validator's consensus key, made into a record by the real image, does not open in the foreign one.
        toml = tmp_path / "tmkms.toml"
        toml.write_text(tmkms_toml(["vm-chain"], 'key = "vm-validator"', []))
        r = nekms("privval", "push-config", "-c", str(toml), env=env, check=False)
        assert r.returncode != 0 and "rule provenance" in r.stderr, r.stderr
    finally:
        stop(vm, timeout=30)

    # The upgrade: the same change, signed by the world's signer, serves the real image's keys, token and validator.
    run, vm = boot(w, upgraded, tmp_path, "upgraded", all_ports=True)
    proxy = None
    try:
        env = {**w.env, "NEKMS_ENCLAVE": f"unix://{run / 'rpc.sock'}"}
        assert json.loads(nekms("enclave", "describe", "--json", env=env).stdout)["pcrs"]["PCR0"] == pcrs["PCR0"]
        proxy = serve_everything(w, run, env, tmp_path, "b")
    finally:
        stop(proxy, vm, timeout=30)
    # The real guest still signs.
    w.nekms("sign", "--key", "vm-k1", "--message", "x")


def test_a_quorum_moves_every_key_the_token_and_the_validator_to_an_image_of_another_signer(world, tmp_path):
    """The guest (signer S, the world's) re-seals its keys (every spec, the PKCS#11 token's key and the validator's
    consensus key) under a new custody key trusting signer T, approved by two of three approvers. The same image rebuilt
    pinning the new key and signed by T boots and signs with every key, serves the token through p11-kit in the guest,
    and continues the validator's state (the last height with another block refused, the next one signed); the guest
    signed by S does not open the moved records."""
    w = world
    names = [*SPECS, "vm-web", "vm-validator"]
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    key, cert = tmp_path / "t.key", tmp_path / "t.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "3650", "-subj", "/CN=the next signer"], check=True, capture_output=True)
    t = json.loads(nekms("image", "pcr8", "--cert", str(cert)).stdout)["PCR8"]
    policy = w.nekms("policy", "custody", "--account", "111122223333", "--pcr8", t, "--window-from-pcr8", w.up.info["pcr8"],
                     "--window-until", until).stdout
    target = w.up.client("admin").create_key(Policy=policy, BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]["Arn"]
    plan = tmp_path / "plan"
    w.nekms("migrate", "plan", "--target-kms-key", target, "--target-pcr8", t, "--window-until", until,
            *[a for n in names for a in ("--name", n)], "--profile", "admin", "--kms-endpoint-url", w.up.info["kms_http"], "-o", str(plan))
    sigs = []
    for name in ("a1", "a2"):
        w.nekms("migrate", "approve", str(plan / "statement.json"), "--key-file", str(w.base / f"{name}.pem"), "-o", str(plan / f"{name}.sig"))
        sigs += ["--signature", str(plan / f"{name}.sig")]
    moved = f"sqlite:{tmp_path / 'moved.db'}"
    started = time.monotonic()
    # One reply carries all seven records (about 60 KiB): it crosses vsock only in writes of 16 KiB (see nekms_transport).
    out = w.nekms("migrate", "run", str(plan), *sigs, "--to", moved).stdout
    assert f"migrated {len(names)} record(s)" in out, out
    print(f"\nthe guest re-sealed {len(names)} records in {time.monotonic() - started:.1f} s")

    # Image D: the guest's build pinning the new key, signed by T.
    config = tmp_path / "enclave.toml"
    # D trusts its own signer, and S as the source of migrated records.
    config.write_text(pathlib.Path(w.up.info["enclave_config"]).read_text().replace(w.custody, target)
                      + f'origin-pcr8 = ["{w.up.info["pcr8"]}"]\n')
    args = json.loads(w.eif.with_suffix(".build.json").read_text())
    eif = tmp_path / "d.eif"
    for flag, value in (("--config", config), ("-o", eif), ("--sign-key", key), ("--sign-cert", cert)):
        args[args.index(flag) + 1] = str(value)
    nekms(*args)
    run, vm = boot(w, eif, tmp_path, "d", all_ports=True)
    proxy = None
    try:
        rpc = f"unix://{run / 'rpc.sock'}"
        env = {**w.env, "NEKMS_STORE": moved}
        assert json.loads(nekms("enclave", "describe", "--json", env={**env, "NEKMS_ENCLAVE": rpc}).stdout)["pcrs"]["PCR8"] == t
        proxy = serve_everything(w, run, env, tmp_path, "d")
    finally:
        stop(proxy, vm, timeout=30)
    # The S guest does not open them.
    r = w.nekms("sign", "--key", "vm-k1", "--message", "x", env={**w.env, "NEKMS_STORE": moved}, check=False)
    assert r.returncode != 0 and "rule pinned-kms-key" in r.stderr, r.stderr
    # The guest's audit trail reached the parent over vsock (port 5102) and verifies, the migration in it.
    audit = pathlib.Path(w.up.info["audit"])
    time.sleep(3)  # a checkpoint within 2 s of the last decision
    r = nekms("audit", "verify", str(audit), "--dev-root", "--dir", str(w.up.dev), "--pcr0", w.up.info["pcr0"], check=False)
    assert r.returncode == 0 and "chain intact, signed up to seq" in r.stdout, r.stdout + r.stderr
    assert '"op":"Migrate"' in audit.read_text() and '"channel":"p11"' in audit.read_text()
    # The guest's log lines reached the parent's collector over vsock (port 5103): a production enclave's only way out.
    stream = (audit.parent / "logs" / "enclave-stream.log").read_text()
    assert "RPC on vsock://" in stream and " nekms-enclave: " in stream, stream[:2000]


def start_proxy_to(privval, toml, log, env):
    """`nekms privval proxy` to the enclave listening at `privval` (a Unix socket)."""
    return spawn([NEKMS, "privval", "proxy", "--privval", f"unix://{privval}", "-c", str(toml)], log, env=env)


def serve_everything(w, run, env, tmp_path, name):
    """Through the guest booted in `run` (with all its ports): every spec's key signs, the token (restored from the
    world's database) signs through p11-kit's server in that guest, and the validator continues: the last height the
    state store holds with another block is refused, the next is signed with the same key. Returns the privval proxy."""
    rpc = f"unix://{run / 'rpc.sock'}"
    env = {**env, "NEKMS_ENCLAVE": rpc, "NEKMS_P11_RPC": rpc, "NEKMS_P11_DB": str(w.base / "tokens.json")}
    nekms("enclave", "credentials", env=env)
    for key, spec in SPECS.items():
        sig = bytes.fromhex(json.loads(nekms("sign", "--key", key, "--message", name, "--json", env=env).stdout)["signature"])
        verify_default_scheme(spec, w.nekms("key", "public-key", key, "--pem").stdout.encode(), name.encode(), sig)
    nekms("p11", "token", "restore", env=env)
    digest = os.urandom(32)
    (tmp_path / f"{name}.h").write_bytes(digest)
    r = subprocess.run(["pkcs11-tool", "--module", P11KIT_CLIENT, "--token-label", "vmweb", "--login", "--pin", "1234-pin", "--sign", "-m",
                        "ECDSA", "--id", "01", "-i", str(tmp_path / f"{name}.h"), "-o", str(tmp_path / f"{name}.sig")],
                       env={**env, "P11_KIT_SERVER_ADDRESS": f"unix:path={run / 'p11kit.sock'}"}, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sig = (tmp_path / f"{name}.sig").read_bytes()
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    serialization.load_pem_public_key(w.nekms("key", "public-key", "vm-web", "--pem").stdout.encode()).verify(
        der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    chain, v = "vm-chain", emu.Validator(tmp_path / f"{name}-validator.sock")
    toml = tmp_path / f"{name}-tmkms.toml"
    toml.write_text(tmkms_toml([chain], 'key = "vm-validator"', [(chain, v.addr)]))
    nekms("privval", "push-config", "-c", str(toml), env=env)
    proxy = start_proxy_to(run / "privval.sock", toml, tmp_path / f"{name}-proxy.log", env)
    v.accept()
    assert pubkey(v, chain) == w.validator_key
    vote = lambda h: {"type": emu.PREVOTE, "height": h, "round": 0, "block_id": block(), "timestamp": (1_800_000_000, 0)}
    last = w.validator_height
    _, _, err = emu.decode_reply(v.request(emu.sign_vote_request(chain, vote(last))))
    assert err is not None, f"{name} signed a prevote at height {last}, where an earlier image had signed"
    msg = vote(last + 1)
    _, value, err = emu.decode_reply(v.request(emu.sign_vote_request(chain, msg)))
    assert err is None, err
    emu.verify(w.validator_key, emu.canonical_vote(chain, msg), value["signature"])
    w.validator_height = last + 1
    return proxy


def test_the_guest_serves_the_rpc_only_to_reserved_ports_up_to_the_1025th_connection(world):
    """vhost-device-vsock gives host connections source ports 0, 1, 2, ... per boot, whoever opens them, so
    the guest sees the first 1,024 as from reserved ports and refuses the rest (threat-model.md: the guest
    cannot tell root from another local user there). Runs last: the guest's RPC is unusable afterwards."""
    w = world
    served, refusals = 0, []
    for i in range(1100):
        r = nekms("enclave", "describe", "--json", env=w.env, check=False)
        if r.returncode == 0:
            assert not refusals, f"connection {i} served after a refusal: {refusals[0]}"
            served += 1
        else:
            m = re.search(r"vsock://2:(\d+): this port serves only connections from a vsock port below 1024", r.stderr)
            assert m, r.stderr
            refusals.append(int(m.group(1)))
        if len(refusals) == 3:
            break
    # The first port refused is 1024: every one below it was served. (Other host connections to the guest, such as a
    # reconnecting privval proxy, draw from the same counter, so the later refusals need not be consecutive.)
    assert refusals[0] == 1024 and refusals == sorted(refusals), (served, refusals)
    print(f"\nthe guest served {served} RPC connections of this test, then refused ports {refusals}")
