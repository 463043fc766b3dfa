"""The approvers' side of moving custody to another KMS key: `nekms migrate
approve|verify` on a migration statement.

The statement here is written by Python's own json module (sorted keys, no
whitespace), which must be byte for byte the canonical form nekms accepts.
Approvals are made with key files from `cryptography` (Ed25519, P-256) and
with a P-256 key in the local KMS (its own process, KMS Sign), and checked by
`cryptography` over `"nekms-migration:v1\\0" || SHA-256(statement)`; an
approval Python makes itself counts in `nekms migrate verify`. Refused, each
by its rule: a statement in another byte form, too few distinct approvers,
an outsider, approvals of another statement.
"""

import base64
import hashlib
import json
import pathlib
import sqlite3
import subprocess
import time
import tomllib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conftest import INSTANCE, NEKMS_ENCLAVE, Up, kms_client, nekms, principals, start_kms, stop


def statement(**change):
    s = {
        "version": 1, "kind": "nekms-migration", "expires": "2030-01-01T00:00:00Z", "nonce": base64.b64encode(bytes(range(32))).decode(),
        "records": {"count": 12, "root": "ab" * 32},
        "source": {"custody_kms_key": "arn:aws:kms:us-east-1:111122223333:key/source", "enclave": {"pcr8": ["5a" * 48]}},
        "target": {"custody_kms_key": "arn:aws:kms:us-east-1:111122223333:key/target", "policy_sha256": "cd" * 32,
                   "roles": {"admin": "arn:aws:iam::111122223333:role/nekms-key-admin", "instance": "arn:aws:iam::111122223333:role/nekms-instance"},
                   "trust": {"pcr8": ["0f" * 48]}, "window_until": "2030-01-01T00:00:00Z"},
    }
    s["target"].update(change)
    return json.dumps(s, sort_keys=True, separators=(",", ":")).encode()


def pem_private(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def pem_public(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    base = tmp_path_factory.mktemp("migrate")
    nekms("dev", "init", "--dir", str(base / "dev"), timeout=120)
    proc, ready = start_kms(base / "dev", base / "kms.json")
    yield base, ready["http"], principals(base / "dev")
    stop(proc)


def test_approvals_from_files_and_kms_reach_the_threshold_and_nothing_less(kms, tmp_path):
    base, endpoint, creds = kms
    doc = tmp_path / "statement.json"
    doc.write_bytes(statement())
    message = b"nekms-migration:v1\0" + hashlib.sha256(doc.read_bytes()).digest()

    ed, p256, outsider = ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    files = {}
    for name, key in (("ed", ed), ("p256", p256), ("outsider", outsider)):
        (tmp_path / f"{name}.pem").write_bytes(pem_private(key))
        (tmp_path / f"{name}.pub").write_bytes(pem_public(key))
        out = nekms("migrate", "approve", str(doc), "--key-file", str(tmp_path / f"{name}.pem"), "-o", str(tmp_path / f"{name}.sig")).stdout
        assert "move 12 record(s)" in out and "to custody key arn:aws:kms:us-east-1:111122223333:key/target" in out, out
        files[name] = json.loads((tmp_path / f"{name}.sig").read_text())
    ed.public_key().verify(base64.b64decode(files["ed"]["signature"]), message)
    p256.public_key().verify(base64.b64decode(files["p256"]["signature"]), message, ec.ECDSA(hashes.SHA256()))
    assert files["ed"]["algorithm"] == "ed25519" and files["p256"]["algorithm"] == "ecdsa-p256-sha256"

    # A P-256 key in the local KMS approves through KMS Sign.
    admin = kms_client(endpoint, creds["admin"])
    arn = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    (tmp_path / "kms.der").write_bytes(admin.get_public_key(KeyId=arn)["PublicKey"])
    env = {"AWS_ACCESS_KEY_ID": creds["admin"]["access_key_id"], "AWS_SECRET_ACCESS_KEY": creds["admin"]["secret_access_key"],
           "AWS_REGION": "us-east-1", "PATH": "/usr/bin:/bin"}
    nekms("migrate", "approve", str(doc), "--kms-key", arn, "--endpoint-url", endpoint, "-o", str(tmp_path / "kms.sig"), env=env)
    kms_sig = json.loads((tmp_path / "kms.sig").read_text())
    serialization.load_der_public_key((tmp_path / "kms.der").read_bytes()).verify(
        base64.b64decode(kms_sig["signature"]), message, ec.ECDSA(hashes.SHA256()))

    # Python's own approval counts the same.
    py = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "py.pub").write_bytes(pem_public(py))
    (tmp_path / "py.sig").write_text(json.dumps({"approver": base64.b64encode(py.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode(), "algorithm": "ed25519",
        "signature": base64.b64encode(py.sign(message)).decode()}))

    approvers = [a for n in ("ed", "p256", "kms.der", "py") for a in ("--approver", str(tmp_path / (n if "." in n else n + ".pub")))]
    verify = lambda *sigs, threshold, doc=doc, check=True: nekms(
        "migrate", "verify", str(doc), *[a for s in sigs for a in ("--signature", str(tmp_path / f"{s}.sig"))], *approvers,
        "--threshold", str(threshold), check=check)
    assert "approved by 4 of 3 needed" in verify("ed", "p256", "kms", "py", threshold=3).stdout
    assert "approved by 2 of 2 needed" in verify("ed", "kms", threshold=2).stdout
    # The same approver twice counts once; an outsider never counts.
    r = verify("ed", "ed", "outsider", threshold=2, check=False)
    assert r.returncode != 0 and "rule migration-quorum: 1 valid approval(s) of the 2 needed" in r.stderr and "is not an approver" in r.stderr, r.stderr
    # The target changed after signing: every approval is over another statement.
    changed = tmp_path / "changed.json"
    changed.write_bytes(statement(trust={"pcr8": ["1f" * 48]}))
    r = verify("ed", "p256", "kms", threshold=1, doc=changed, check=False)
    assert r.returncode != 0 and "rule migration-quorum: 0 valid" in r.stderr and "does not verify" in r.stderr, r.stderr
    # Another byte form of the same content is refused before any signature is looked at.
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(doc.read_bytes()), indent=1))
    r = verify("ed", "p256", threshold=1, doc=pretty, check=False)
    assert r.returncode != 0 and "rule migration-statement" in r.stderr and "canonical" in r.stderr, r.stderr
    r = nekms("migrate", "approve", str(pretty), "--key-file", str(tmp_path / "ed.pem"), "-o", str(tmp_path / "x.sig"), check=False)
    assert r.returncode != 0 and "rule migration-statement" in r.stderr and not (tmp_path / "x.sig").exists(), r.stderr
    # An approver key that may not approve (P-384), and a threshold nobody can reach.
    p384 = tmp_path / "p384.der"
    p384.write_bytes(admin.get_public_key(KeyId=admin.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"])["PublicKey"])
    r = nekms("migrate", "verify", str(doc), "--signature", str(tmp_path / "ed.sig"), "--approver", str(p384), "--threshold", "1", check=False)
    assert r.returncode != 0 and "approvers hold Ed25519 or P-256 keys" in r.stderr, r.stderr
    r = verify("ed", threshold=5, check=False)
    assert r.returncode != 0 and "never reachable" in r.stderr, r.stderr
    # A statement whose target administrator is the instance role (whose credentials the parent holds) is never signed.
    same = tmp_path / "same.json"
    same.write_bytes(statement(roles={"admin": INSTANCE, "instance": INSTANCE}))
    r = nekms("migrate", "approve", str(same), "--key-file", str(tmp_path / "ed.pem"), "-o", str(tmp_path / "y.sig"), check=False)
    assert r.returncode != 0 and "rule migration-statement" in r.stderr and "administrator is its instance role" in r.stderr, r.stderr


# ---- the enclave's checks, before anything is re-sealed --------------------------------------------------------


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def signer_pcr8(tmp_path, name):
    """A P-384 image-signing certificate made by OpenSSL, and its PCR8 as nekms computes it."""
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "3650", "-subj", f"/CN={name}"], check=True, capture_output=True)
    return json.loads(nekms("image", "pcr8", "--cert", str(cert)).stdout)["PCR8"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """dev up with three approvers (an Ed25519 file, a P-256 file, a P-256 key in the local KMS), two needed, and two records."""
    base = tmp_path_factory.mktemp("source")
    dev = base / "dev"
    nekms("dev", "init", "--dir", str(dev), timeout=120)
    proc, ready = start_kms(dev, base / "kms.json")
    try:
        admin = kms_client(ready["http"], principals(dev)["admin"])
        kms_arn = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
        (base / "kms.der").write_bytes(admin.get_public_key(KeyId=kms_arn)["PublicKey"])
    finally:
        stop(proc)
    ed, p256 = ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())
    for name, key in (("ed", ed), ("p256", p256)):
        (base / f"{name}.pem").write_bytes(pem_private(key))
        (base / f"{name}.pub").write_bytes(pem_public(key))
    approvers = ["--migration-approver", str(base / "ed.pub"), "--migration-approver", str(base / "p256.pub"),
                 "--migration-approver", str(base / "kms.der"), "--migration-threshold", "2"]
    up = Up(base, *approvers)
    try:
        up.store = f"sqlite:{base / 'keys.db'}"
        up.run = lambda *a, check=True: up.nekms(*a, env={**up.env, "NEKMS_STORE": up.store}, check=check)
        for name, spec in (("m-ed", "ed25519"), ("m-p256", "p256")):
            up.run("key", "create", "--name", name, "--spec", spec)
        up.base, up.approvers, up.kms_arn = base, approvers, kms_arn
        yield up
    finally:
        up.stop()


def target_key(u, policy):
    return u.client("admin").create_key(Policy=json.dumps(policy), BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]["Arn"]


def window_policy(u, trusted, until):
    return json.loads(u.nekms("policy", "custody", "--account", "111122223333", "--pcr8", trusted, "--window-from-pcr8", u.info["pcr8"],
                              "--window-until", until).stdout)


def plan(u, out, arn, trusted, until, *extra):
    u.run("migrate", "plan", "--target-kms-key", arn, "--target-pcr8", trusted, "--window-until", until, "--profile", "admin",
          "--kms-endpoint-url", u.info["kms_http"], "-o", str(out), *extra)
    return out


def approve(u, out, *who):
    sigs = []
    for name in who:
        sig = out / f"{name}.sig"
        if name == "kms":
            u.nekms("migrate", "approve", str(out / "statement.json"), "--kms-key", u.kms_arn, "--profile", "admin",
                    "--endpoint-url", u.info["kms_http"], "-o", str(sig))
        else:
            u.nekms("migrate", "approve", str(out / "statement.json"), "--key-file", str(u.base / f"{name}.pem"), "-o", str(sig))
        sigs += ["--signature", str(sig)]
    return sigs


def check(u, out, sigs, ok=True):
    r = u.nekms("migrate", "check", str(out), *sigs, check=ok)
    return r.stdout if ok else r.stderr


def test_the_enclave_checks_a_quorum_approved_migration_and_refuses_each_attack(source, tmp_path):
    """A statement planned against the running enclave, approved by two of three (a key file and a KMS key), passes every
    check; what the parent can do to it is refused by a named rule, and the target key never sees a GenerateDataKey."""
    u = source
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    t, other = signer_pcr8(tmp_path, "t"), signer_pcr8(tmp_path, "u")
    target = target_key(u, window_policy(u, t, until))
    good = plan(u, tmp_path / "good", target, t, until)
    statement = json.loads((good / "statement.json").read_bytes())
    assert statement["records"]["count"] == 2 and statement["source"]["enclave"] == {"pcr8": [u.info["pcr8"]]}, statement
    out = check(u, good, approve(u, good, "ed", "kms"))
    assert "the enclave accepts this migration: approved by 2 of 2 needed" in out and target in out and "nothing was sealed" in out, out
    targets = [target]

    # Fewer approvals than the threshold.
    err = check(u, good, approve(u, good, "p256"), ok=False)
    assert "rule migration-quorum: 1 valid approval(s) of the 2 needed" in err, err
    # The target changed after signing: the approvals are over another statement.
    changed = tmp_path / "changed"
    changed.mkdir()
    statement["target"]["trust"] = {"pcr8": [other]}
    (changed / "statement.json").write_bytes(canonical(statement))
    err = check(u, changed, approve(u, good, "ed", "kms"), ok=False)
    assert "rule migration-quorum: 0 valid" in err, err
    # A target whose policy lets the instance decrypt outside any image.
    loose_policy = window_policy(u, t, until)
    loose_policy["Statement"].append({"Sid": "Instance decrypts", "Effect": "Allow", "Principal": {"AWS": INSTANCE}, "Action": "kms:Decrypt",
                                      "Resource": "*"})
    loose = target_key(u, loose_policy)
    targets.append(loose)
    p = plan(u, tmp_path / "loose", loose, t, until)
    err = check(u, p, approve(u, p, "ed", "p256"), ok=False)
    assert "rule migration-target-policy" in err, err
    # A target trusting a signer the approvers were not told of.
    elsewhere = target_key(u, window_policy(u, other, until))
    targets.append(elsewhere)
    p = plan(u, tmp_path / "elsewhere", elsewhere, t, until)
    err = check(u, p, approve(u, p, "ed", "p256"), ok=False)
    assert "rule migration-target-pcr" in err, err
    # A statement naming other roles than the target's policy does (the enclave never takes them from the policy).
    p = plan(u, tmp_path / "roles", target, t, until, "--admin-role", "arn:aws:iam::111122223333:role/someone-else")
    err = check(u, p, approve(u, p, "ed", "p256"), ok=False)
    assert "rule migration-target-policy" in err, err
    # An approval that has expired.
    p = plan(u, tmp_path / "expired", target, t, until, "--expires", "2021-01-01T00:00:00Z")
    err = check(u, p, approve(u, p, "ed", "p256"), ok=False)
    assert "rule migration-expired" in err, err
    # A nonce this boot never issued.
    forged = tmp_path / "forged"
    forged.mkdir()
    statement = json.loads((good / "statement.json").read_bytes())
    statement["nonce"] = base64.b64encode(b"\1" * 32).decode()
    (forged / "statement.json").write_bytes(canonical(statement))
    err = check(u, forged, approve(u, forged, "ed", "p256"), ok=False)
    assert "rule migration-replay" in err, err

    # Nothing was ever sealed under any target.
    audit = (u.dev / "kms" / "audit.log").read_text()
    for arn in targets:
        assert not [line for line in audit.splitlines() if arn in line and "GenerateDataKey" in line], arn


def test_a_migration_moves_every_record_to_images_of_the_new_signer(source, tmp_path):
    """The source image (signer S) re-seals both records under a target trusting signer T, with the window its policy
    grants; an image signed by T pinning the target signs with them (the same public keys), S's image does not open
    them, a record whose approval was cut below the threshold is refused, and the spent statement re-seals nothing."""
    u = source
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    t = signer_pcr8(tmp_path, "t")
    target = target_key(u, window_policy(u, t, until))
    p = plan(u, tmp_path / "plan", target, t, until)
    sigs = approve(u, p, "ed", "kms")
    new_store = f"sqlite:{tmp_path / 'migrated.db'}"
    out = u.run("migrate", "run", str(p), *sigs, "--to", new_store).stdout
    assert "migrated 2 record(s)" in out, out
    err = u.run("migrate", "run", str(p), *sigs, "--to", f"sqlite:{tmp_path / 'again.db'}", check=False).stderr
    assert "rule migration-replay" in err, err

    # An image signed by T, pinning the target, with the same approvers.
    measured = tomllib.loads(pathlib.Path(u.info["enclave_config"]).read_text())
    config = tmp_path / "t.toml"
    config.write_text(f'custody-kms-keys = ["{target}"]\ncustody-trust = "pcr8"\norigin-pcr8 = ["{u.info["pcr8"]}"]\nallow-import = true\n'
                      f'migration-approvers = {json.dumps(measured["migration-approvers"])}\nmigration-threshold = 2\n')
    sig = tmp_path / "t.sig"
    nekms("pcr", "sim", NEKMS_ENCLAVE, "--config", str(config), "--sign-key", str(tmp_path / "t.key"), "--sign-cert", str(tmp_path / "t.pem"),
          "--signature", str(sig))
    rpc = tmp_path / "t.sock"
    u.start([*u.enclave_args(config), "--sim-signature", str(sig), "--rpc", f"unix://{rpc}", "--kmstool", f"unix://{tmp_path / 't-k.sock'}"],
            rpc, "enclave T", tmp_path / "t.log")
    t_env = {**u.env, "NEKMS_ENCLAVE": f"unix://{rpc}", "NEKMS_STORE": new_store}
    nekms("enclave", "credentials", env=t_env)

    # Cut one record's approval below the threshold: refused before KMS is asked.
    db = sqlite3.connect(tmp_path / "migrated.db")
    (blob,) = db.execute("SELECT migration FROM key_records WHERE key_id = 'm-p256'").fetchone()
    carried = json.loads(blob)
    carried["approvals"] = carried["approvals"][:1]
    db.execute("UPDATE key_records SET migration = ? WHERE key_id = 'm-p256'", (json.dumps(carried).encode(),))
    db.commit()
    r = nekms("sign", "--key", "m-p256", "--message", "m", env=t_env, check=False)
    assert r.returncode != 0 and "rule provenance" in r.stderr and "migration-quorum" in r.stderr, r.stderr
    db.execute("UPDATE key_records SET migration = ? WHERE key_id = 'm-p256'", (blob,))
    db.commit()

    for name in ("m-ed", "m-p256"):
        old = json.loads(u.run("key", "show", name, "--json").stdout)
        new = json.loads(nekms("key", "show", name, "--json", env=t_env).stdout)
        assert new["public_key"] == old["public_key"] and new["kms_key_id"] == target and new["origin"] == "migrated", new
        signature = bytes.fromhex(json.loads(nekms("sign", "--key", name, "--message", "moved", "--json", env=t_env).stdout)["signature"])
        public = serialization.load_der_public_key(base64.b64decode(new["public_key"]))
        if name == "m-ed":
            public.verify(signature, b"moved")
        else:
            public.verify(signature, b"moved", ec.ECDSA(hashes.SHA256()))
    # On the parent: the origin is the approved migration, checked against the approvers.
    root = ["--dev-root", "--dir", str(u.dev)]
    approvers = [a for n in ("ed.pub", "p256.pub", "kms.der") for a in ("--approver", str(u.base / n))]
    trusted = ["--pcr8", t, "--pcr8", u.info["pcr8"]]
    nekms("key", "verify-origin", "m-ed", *trusted, *approvers, "--threshold", "2", *root, env=t_env)
    r = nekms("key", "verify-origin", "m-ed", *trusted, *root, env=t_env, check=False)
    assert r.returncode != 0 and "migration-quorum" in r.stderr, r.stderr
    # An image that does not trust the source signer does not accept what it re-sealed.
    r = nekms("key", "verify-origin", "m-ed", "--pcr8", t, *approvers, "--threshold", "2", *root, env=t_env, check=False)
    assert r.returncode != 0 and "source image that re-sealed it is not one this image trusts" in r.stderr, r.stderr
    # S's image does not open the migrated records: the target is not pinned there, and its policy denies S Decrypt.
    r = u.nekms("sign", "--key", "m-ed", "--message", "m", env={**u.env, "NEKMS_STORE": new_store}, check=False)
    assert r.returncode != 0 and "rule pinned-kms-key" in r.stderr, r.stderr


def test_an_old_approval_is_refused_after_the_enclave_restarts(source, tmp_path):
    u = source
    until = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    t = signer_pcr8(tmp_path, "t")
    p = plan(u, tmp_path / "old", target_key(u, window_policy(u, t, until)), t, until)
    sigs = approve(u, p, "ed", "p256")
    assert "accepts this migration" in check(u, p, sigs)
    u.stop()
    # Without approvers in its configuration, the enclave migrates nothing.
    with Up(u.base) as plain:
        r = plain.nekms("migrate", "check", str(p), *sigs, check=False)
        assert r.returncode != 0 and "rule migration-disabled" in r.stderr, r.stderr
    restarted = Up(u.base, *u.approvers)
    try:
        r = restarted.nekms("migrate", "check", str(p), *sigs, check=False)
        assert r.returncode != 0 and "rule migration-replay" in r.stderr, r.stderr
    finally:
        restarted.stop()
