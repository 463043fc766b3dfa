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

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conftest import kms_client, nekms, principals, start_kms, stop


def statement(**change):
    s = {
        "version": 1, "kind": "nekms-migration", "expires": "2030-01-01T00:00:00Z", "nonce": base64.b64encode(bytes(range(32))).decode(),
        "records": {"count": 12, "root": "ab" * 32},
        "source": {"custody_kms_key": "arn:aws:kms:us-east-1:111122223333:key/source", "enclave": {"pcr8": ["5a" * 48]}},
        "target": {"custody_kms_key": "arn:aws:kms:us-east-1:111122223333:key/target", "policy_sha256": "cd" * 32,
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
