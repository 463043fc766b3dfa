"""Key custody across real processes: `nekms dev up` (local KMS, proxy,
simulated enclave), moto's server for DynamoDB and Secrets Manager, and
verifiers nobody on this project wrote: OpenSSL, Python's cryptography,
eth-account.

Records are sealed only under the custody KMS key dev up pinned in the
enclave's measured configuration (any other key, alias or ARN is refused by
rule pinned-kms-key), imports take only the administrator's import
ciphertexts (rule import-ciphertext: the context binds the name and the
spec), and every record carries an origin document committing to the whole
record, which the enclave checks before it opens the record (rule
provenance); the parent checks it too, against PCR0 values it is given, never
ones it asks the enclave for, and accepts imported keys only when told to.
"""

import base64
import hashlib
import json
import os
import sqlite3
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from conftest import enclave_policy, secret_forms


@pytest.fixture(scope="module")
def up(dev_up):
    u = dev_up("keys")
    u.store = f"sqlite:{u.base / 'keys.db'}"
    u.env["NEKMS_STORE"] = u.store
    # Custody: the key dev up set up and pinned in the enclave's measured configuration.
    u.key = u.info["custody_kms_key"]
    # Another key the enclave image may use (its policy names this PCR0), with an alias:
    # fine for the generic Decrypt flow, never for custody.
    u.other = u.client("admin").create_key(Policy=json.dumps(enclave_policy(u.info["pcr0"])))["KeyMetadata"]["Arn"]
    u.client("admin").create_alias(AliasName="alias/signing", TargetKeyId=u.other)
    return u


def create(up, name, spec, *extra):
    """A generated key, under the only pinned custody key (the default)."""
    return json.loads(up.nekms("key", "create", "--name", name, "--spec", spec, "--json", *extra).stdout)


def import_ciphertext(up, name, spec, plaintext, **extra_context):
    """The administrator's import ciphertext: KMS Encrypt under the custody key with the import context."""
    context = {"nekms:purpose": "import", "nekms:key-id": name, "nekms:key-spec": spec, **extra_context}
    return up.client("admin").encrypt(KeyId=up.key, Plaintext=plaintext, EncryptionContext=context)["CiphertextBlob"]


def origin_commitment(record):
    """What the origin document's user_data must be, computed here from the record alone:
    nekms-key:v2:<origin>:<key id>:<spec>:<sha256(spki) hex>:<sha256 over the KMS key ARN and the context, hex>."""
    binding = hashlib.sha256(b"nekms-key binding v2\0")

    def put(b: bytes):
        binding.update(len(b).to_bytes(8, "big"))
        binding.update(b)

    put(record["kms_key_id"].encode())
    for k, v in sorted(record["encryption_context"].items(), key=lambda kv: kv[0].encode()):
        put(k.encode())
        put(v.encode())
    spki = base64.b64decode(record["public_key"])
    return (f"nekms-key:v2:{record['origin']}:{record['key_id']}:{record['spec']}:"
            f"{hashlib.sha256(spki).hexdigest()}:{binding.hexdigest()}").encode()


def sign(up, name, *args):
    return json.loads(up.nekms("sign", "--key", name, "--json", *args).stdout)


def pem(up, name, tmp_path):
    path = tmp_path / f"{name}.pem"
    path.write_text(up.nekms("key", "public-key", name, "--pem").stdout)
    return path


def openssl_verify(args, tmp_path, sig: bytes, data):
    sig_path = tmp_path / "sig.bin"
    sig_path.write_bytes(sig)
    cmd = ["openssl", *args, "-signature", str(sig_path), str(data)] if "dgst" in args else \
        ["openssl", *args, "-sigfile", str(sig_path), "-in", str(data)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return r.returncode == 0, r.stdout + r.stderr


def test_generated_keys_sign_and_openssl_and_cryptography_verify(up, tmp_path):
    msg = tmp_path / "msg.txt"
    msg.write_bytes(b"Hello World")
    cases = [("p256", "ecdsa", ["dgst", "-sha256"]), ("p384", "ecdsa", ["dgst", "-sha384"]),
             ("rsa2048", "rsa-pkcs1-sha256", ["dgst", "-sha256"]),
             ("rsa2048", "rsa-pss-sha384", ["dgst", "-sha384", "-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:-2"]),
             ("rsa2048", "rsa-pkcs1-sha512", ["dgst", "-sha512"]),
             ("ed25519", "ed25519", ["pkeyutl", "-verify", "-rawin"])]
    made = set()
    for spec, scheme, tool in cases:
        name = f"gen-{spec}"
        if name not in made:
            record = create(up, name, spec)
            assert record["spec"] == spec and record["origin"] == "generated"
            assert record["kms_key_id"] == up.key
            assert record["encryption_context"] == {"nekms:key-id": name, "nekms:key-spec": spec, "nekms:origin": "generated"}
            made.add(name)
        sig = bytes.fromhex(sign(up, name, "--message", "Hello World", "--scheme", scheme)["signature"])
        key = pem(up, name, tmp_path)
        args = [*tool, "-verify", str(key)] if tool[0] == "dgst" else [*tool, "-pubin", "-inkey", str(key)]
        ok, out = openssl_verify(args, tmp_path, sig, msg)
        assert ok, f"{spec} {scheme}: {out}"
        # A flipped bit is refused by OpenSSL too.
        bad = bytearray(sig)
        bad[len(bad) // 2] ^= 1
        ok, _ = openssl_verify(args, tmp_path, bytes(bad), msg)
        assert not ok, f"{spec} {scheme} accepted a damaged signature"
        # nekms verify agrees.
        up.nekms("verify", "--key", name, "--message", "Hello World", "--scheme", scheme, "--signature", sig.hex())

    # secp256k1: Python's cryptography verifies DER; raw r||s is the same signature.
    create(up, "gen-k1", "secp256k1")
    public = serialization.load_pem_public_key(pem(up, "gen-k1", tmp_path).read_bytes())
    der = bytes.fromhex(sign(up, "gen-k1", "--message", "Hello World")["signature"])
    public.verify(der, b"Hello World", ec.ECDSA(hashes.SHA256()))
    digest = hashlib.sha256(b"Hello World").hexdigest()
    raw = bytes.fromhex(sign(up, "gen-k1", "--digest", digest, "--scheme", "ecdsa-raw")["signature"])
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
    public.verify(encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")), b"Hello World",
                  ec.ECDSA(hashes.SHA256()))
    # A P-384 prehash must be 48 bytes.
    r = up.nekms("sign", "--key", "gen-p384", "--digest", digest, check=False)
    assert r.returncode != 0 and "48-byte" in r.stderr, r.stderr
    # A scheme the key cannot use is refused before the enclave opens anything.
    r = up.nekms("sign", "--key", "gen-ed25519", "--message", "x", "--scheme", "ecdsa", check=False)
    assert r.returncode != 0 and "cannot sign with ecdsa" in r.stderr


def test_ethereum_signatures_recover_to_the_keys_address(up, tmp_path):
    create(up, "eth", "secp256k1", "--entropy", "kms")
    address = up.nekms("key", "public-key", "eth", "--address").stdout.strip()
    to = "0x000000000000000000000000000000000000dEaD"
    tx1559 = {"type": 2, "chainId": 11155111, "nonce": 7, "to": to, "value": 10**16, "gas": 21000,
              "maxFeePerGas": 30 * 10**9, "maxPriorityFeePerGas": 10**9, "data": "0x", "accessList": []}
    legacy = {"chainId": 1, "nonce": 3, "to": to, "value": "0x2386f26fc10000", "gas": 21000, "gasPrice": 20 * 10**9, "data": "0xabcd"}
    for tx in (tx1559, legacy):
        f = tmp_path / "tx.json"
        f.write_text(json.dumps(tx))
        s = sign(up, "eth", "--eth-tx", str(f))
        raw = bytes.fromhex(s["raw_transaction"])
        assert Account.recover_transaction(raw) == address
        assert bytes.fromhex(s["transaction_hash"]) == bytes(__import__("eth_hash.auto", fromlist=["keccak"]).keccak(raw))
    # personal_sign
    s = sign(up, "eth", "--eth-personal", "Hello World")
    assert Account.recover_message(encode_defunct(text="Hello World"), signature=bytes.fromhex(s["signature"])) == address
    # EIP-712, from the JSON and from the digest
    typed = {"types": {"EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                                        {"name": "chainId", "type": "uint256"}],
                       "Mail": [{"name": "from", "type": "address"}, {"name": "contents", "type": "string"}]},
             "primaryType": "Mail", "domain": {"name": "nekms", "version": "1", "chainId": 1},
             "message": {"from": to, "contents": "Hello, Bob!"}}
    f = tmp_path / "typed.json"
    f.write_text(json.dumps(typed))
    s = sign(up, "eth", "--eip712", str(f))
    assert Account.recover_message(encode_typed_data(full_message=typed), signature=bytes.fromhex(s["signature"])) == address
    s2 = sign(up, "eth", "--digest", s["digest"], "--scheme", "eip712")
    assert s2["signature"] == s["signature"]
    # Bad transactions get clear errors.
    f.write_text(json.dumps({k: v for k, v in legacy.items() if k != "chainId"}))
    r = up.nekms("sign", "--key", "eth", "--eth-tx", str(f), check=False)
    assert r.returncode != 0 and "chainId" in r.stderr
    f.write_text(json.dumps({**tx1559, "to": "0x1234"}))
    r = up.nekms("sign", "--key", "eth", "--eth-tx", str(f), check=False)
    assert r.returncode != 0 and "address" in r.stderr


def test_the_creation_document_commits_to_the_whole_record(up, tmp_path):
    """The origin document's user_data is the v2 commitment (origin, id, spec, public key, KMS key ARN and
    encryption context), recomputed here independently; `key verify-origin` agrees, and `key show` reports
    the document's size rather than claiming anything about it."""
    record = create(up, "attested", "p256", "--nonce", "c0ffee", "--kms-key", up.key)
    doc = tmp_path / "doc.cbor"
    up.nekms("key", "show", "attested", "--attestation-out", str(doc))
    pcrs = [a for i in range(3) for a in ("--pcr", f"{i}={up.info[f'pcr{i}']}")]
    out = json.loads(up.nekms("attest", "verify", "--dev-root", "--dir", str(up.dev), "--nonce", "c0ffee", *pcrs, "--json", str(doc)).stdout)
    user_data = out["document"]["user_data"]
    user_data = bytes.fromhex(user_data) if isinstance(user_data, str) else bytes(user_data)
    spki = base64.b64decode(record["public_key"])
    assert user_data.startswith(f"nekms-key:v2:generated:attested:p256:{hashlib.sha256(spki).hexdigest()}:".encode()), user_data
    assert user_data == origin_commitment(record)

    shown = json.loads(up.nekms("key", "show", "attested").stdout)
    assert "attested" not in shown and shown["origin_document_bytes"] == doc.stat().st_size > 0
    verified = json.loads(up.nekms("key", "verify-origin", "attested", "--dev-root", "--pcr0", up.info["pcr0"], "--json").stdout)
    assert verified["origin_verified"] is True and verified["document"]["pcr0"] == up.info["pcr0"]
    assert verified["document"]["commitment"].encode() == origin_commitment(record)
    # Another image's PCR0 is refused.
    r = up.nekms("key", "verify-origin", "attested", "--dev-root", "--pcr0", "00" * 48, check=False)
    assert r.returncode != 0 and "rule provenance" in r.stderr, r.stderr
    # The AWS root (the default) does not vouch for a simulated enclave's document.
    r = up.nekms("key", "verify-origin", "attested", "--pcr0", up.info["pcr0"], check=False)
    assert r.returncode != 0 and "rule provenance" in r.stderr, r.stderr


def test_custody_uses_only_the_pinned_kms_key(up):
    """Another KMS key, by alias, ARN or key id, is refused before KMS is asked, even one whose policy admits
    this image; the pinned key by its bare key id is accepted."""
    for other in ("alias/signing", up.other, up.other.rsplit("/", 1)[1]):
        r = up.nekms("key", "create", "--name", "unpinned", "--spec", "p256", "--kms-key", other, check=False)
        assert r.returncode != 0 and "rule pinned-kms-key" in r.stderr, (other, r.stderr)
    assert up.nekms("key", "show", "unpinned", check=False).returncode != 0, "nothing stored after a refusal"
    record = create(up, "pinned-by-id", "ed25519", "--kms-key", up.key.rsplit("/", 1)[1])
    assert record["kms_key_id"] == up.key


def test_imported_keys_work_and_their_secrets_never_reach_the_parent(up, tmp_path):
    secrets = []

    # An Ethereum key, as 0x-hex text, encrypted by the administrator with boto3 and the import context.
    eth_key = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    secrets.append(eth_key)
    ct = import_ciphertext(up, "imp-eth", "secp256k1", b"0x" + eth_key.hex().encode())
    (tmp_path / "eth.ct").write_bytes(ct)
    rec = json.loads(up.nekms("key", "import", "--name", "imp-eth", "--spec", "secp256k1",
                              "--ciphertext-file", str(tmp_path / "eth.ct"), "--json").stdout)
    assert rec["origin"] == "imported" and rec["kms_key_id"] == up.key
    assert rec["encryption_context"]["nekms:origin"] == "imported"
    assert up.nekms("key", "public-key", "imp-eth", "--address").stdout.strip() == Account.from_key(eth_key).address
    # The parent accepts an imported key's origin only when told to: its secret is as safe as the administrator kept it.
    r = up.nekms("key", "verify-origin", "imp-eth", "--dev-root", "--pcr0", up.info["pcr0"], check=False)
    assert r.returncode != 0 and "rule import-disabled" in r.stderr, r.stderr
    up.nekms("key", "verify-origin", "imp-eth", "--dev-root", "--pcr0", up.info["pcr0"], "--allow-imported")

    # tmkms softsign: base64 of the Ed25519 seed, encrypted with `nekms key encrypt-for-import` as the administrator.
    seed = os.urandom(32)
    secrets.append(seed)
    (tmp_path / "tm.key").write_bytes(base64.b64encode(seed) + b"\n")
    ct_b64 = up.nekms("key", "encrypt-for-import", "--name", "imp-tm", "--spec", "ed25519", "--kms-key", up.key,
                      "--profile", "admin", str(tmp_path / "tm.key")).stdout.strip()
    (tmp_path / "tm.ct.b64").write_text(ct_b64)
    up.nekms("key", "import", "--name", "imp-tm", "--spec", "ed25519", "--kms-key", up.key,
             "--ciphertext-file", str(tmp_path / "tm.ct.b64"))
    sig = bytes.fromhex(sign(up, "imp-tm", "--message", "block 1")["signature"])
    ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().verify(sig, b"block 1")

    # PKCS#8 PEM from OpenSSL (P-384), with an extra (non-reserved) entry in the import context.
    key_pem = tmp_path / "p384.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", str(key_pem)], check=True)
    priv = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    secrets.append(priv.private_numbers().private_value.to_bytes(48, "big"))
    ct = import_ciphertext(up, "imp-p384", "p384", key_pem.read_bytes(), ticket="OPS-42")
    # Without the extra entry the context does not match: refused.
    r = up.nekms("key", "import", "--name", "imp-p384", "--spec", "p384", "--ciphertext", base64.b64encode(ct).decode(), check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    # Nor as another spec than the one the administrator bound.
    r = up.nekms("key", "import", "--name", "imp-p384", "--spec", "p256", "--ciphertext-context", "ticket=OPS-42",
                 "--ciphertext", base64.b64encode(ct).decode(), check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    up.nekms("key", "import", "--name", "imp-p384", "--spec", "p384", "--ciphertext-context", "ticket=OPS-42",
             "--ciphertext", base64.b64encode(ct).decode())
    ours = serialization.load_pem_public_key(pem(up, "imp-p384", tmp_path).read_bytes())
    assert ours.public_numbers() == priv.public_key().public_numbers()
    der = bytes.fromhex(sign(up, "imp-p384", "--message", "m")["signature"])
    priv.public_key().verify(der, b"m", ec.ECDSA(hashes.SHA384()))

    # A wrong declared spec (the administrator's, bound consistently) is refused, and nothing is stored.
    bad = import_ciphertext(up, "imp-bad", "p256", key_pem.read_bytes())
    r = up.nekms("key", "import", "--name", "imp-bad", "--spec", "p256", "--ciphertext", base64.b64encode(bad).decode(), check=False)
    assert r.returncode != 0 and "p384" in r.stderr
    assert up.nekms("key", "show", "imp-bad", check=False).returncode != 0

    # Only import ciphertexts made for this name: one made for another name is refused...
    r = up.nekms("key", "import", "--name", "imp-other", "--spec", "p384", "--ciphertext", base64.b64encode(ct).decode(),
                 "--ciphertext-context", "ticket=OPS-42", check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    # ... as is a record's own data key (no import context), which would otherwise reseal a key the parent could open.
    r = up.nekms("key", "import", "--name", "imp-dk", "--spec", "secp256k1", "--ciphertext", rec["encrypted_data_key"], check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    # ... and a ciphertext under any other KMS key than the pinned one.
    other_ct = up.client("instance").encrypt(KeyId=up.other, Plaintext=key_pem.read_bytes())["CiphertextBlob"]
    r = up.nekms("key", "import", "--name", "imp-other", "--spec", "p384", "--kms-key", "alias/signing",
                 "--ciphertext", base64.b64encode(other_ct).decode(), check=False)
    assert r.returncode != 0 and "rule pinned-kms-key" in r.stderr, r.stderr
    for name in ("imp-other", "imp-dk"):
        assert up.nekms("key", "show", name, check=False).returncode != 0, name
    # The instance role may not Encrypt under the custody key at all, and the administrator only for imports.
    with pytest.raises(Exception) as denied:
        up.client("instance").encrypt(KeyId=up.key, Plaintext=b"0x" + eth_key.hex().encode(),
                                      EncryptionContext={"nekms:purpose": "import", "nekms:key-id": "imp-inst", "nekms:key-spec": "secp256k1"})
    assert "AccessDenied" in str(denied.value)
    with pytest.raises(Exception) as denied:
        up.client("admin").encrypt(KeyId=up.key, Plaintext=b"not an import")
    assert "AccessDenied" in str(denied.value)

    # No form of any secret is on the parent: the store, every output, the processes' logs.
    haystacks = [(up.base / "keys.db").read_bytes()]
    for extra in (up.base / "keys.db-wal",):
        if extra.exists():
            haystacks.append(extra.read_bytes())
    haystacks += [o.encode() for o in up.outputs]
    haystacks.append(up.log.read_bytes())
    for secret in secrets:
        for form in secret_forms(secret):
            for h in haystacks:
                assert form not in h


def tampered(record, **changes):
    r = dict(record)
    r.update(changes)
    return r


def write_record(path, record):
    """Put a record straight into a SQLite store, past `key add`'s checks, as anyone able to write the
    parent's store could."""
    db = sqlite3.connect(path)
    db.execute("""CREATE TABLE IF NOT EXISTS key_records (
        key_id TEXT PRIMARY KEY NOT NULL, spec TEXT NOT NULL, public_key BLOB NOT NULL, kms_key_id TEXT NOT NULL,
        encryption_context TEXT NOT NULL, encrypted_data_key BLOB NOT NULL, sealed_private_key BLOB NOT NULL,
        origin TEXT NOT NULL, created_at INTEGER NOT NULL, attestation BLOB) STRICT""")
    blob = lambda k: base64.b64decode(record[k]) if record.get(k) is not None else None
    db.execute("INSERT INTO key_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (record["key_id"], record["spec"], blob("public_key"), record["kms_key_id"],
                json.dumps(record["encryption_context"]), blob("encrypted_data_key"), blob("sealed_private_key"),
                record["origin"], record["created_at"], blob("attestation")))
    db.commit()
    db.close()


def test_tampered_records_are_refused_with_a_clear_error(up, tmp_path):
    a = create(up, "tamper-a", "secp256k1")
    b = create(up, "tamper-b", "secp256k1")
    other = tmp_path / "tampered.db"
    no_document = {k: v for k, v in a.items() if k != "attestation"}
    # What each tampering is refused with when the enclave is asked to sign with it.
    cases = {
        "sealed key from another record": (tampered(a, sealed_private_key=b["sealed_private_key"]), "tampered"),
        "data key from another record": (tampered(a, encrypted_data_key=b["encrypted_data_key"]), "tampered"),
        "public key from another record": (tampered(a, public_key=b["public_key"]), "rule provenance"),
        "encryption context changed": (tampered(a, encryption_context={**a["encryption_context"], "tenant": "mallory"}), "rule provenance"),
        "origin document removed": (no_document, "rule provenance"),
        "origin document from another record": (tampered(a, attestation=b["attestation"]), "rule provenance"),
        "sealed under an unpinned KMS key": (tampered(a, kms_key_id=up.other), "rule pinned-kms-key"),
    }
    for i, (what, (record, refusal)) in enumerate(cases.items()):
        path = f"{other}-{i}"
        write_record(path, record)
        r = up.nekms("sign", "--store", f"sqlite:{path}", "--key", "tamper-a", "--message", "x", check=False)
        assert r.returncode != 0, what
        assert refusal in r.stderr, f"{what}: {r.stderr}"
        # `key add` checks the origin document the same way, so such records never reach a store through it.
        if refusal.startswith("rule"):
            f = tmp_path / f"t{i}.json"
            f.write_text(json.dumps(record))
            r = up.nekms("key", "add", "--dev-root", "--pcr0", up.info["pcr0"], "--store", f"sqlite:{other}-add-{i}", str(f), check=False)
            assert r.returncode != 0 and "rule provenance" in r.stderr, f"{what}: {r.stderr}"
    # A record renamed is refused when added: its context binds the old name.
    f = tmp_path / "renamed.json"
    f.write_text(json.dumps(tampered(a, key_id="tamper-c")))
    r = up.nekms("key", "add", "--dev-root", "--pcr0", up.info["pcr0"], "--store", f"sqlite:{other}-r", str(f), check=False)
    assert r.returncode != 0 and "nekms:key-id" in r.stderr
    # Junk is refused by `key add` too.
    f.write_text("{\"key_id\": \"junk\"}")
    assert up.nekms("key", "add", "--dev-root", "--pcr0", up.info["pcr0"], "--store", f"sqlite:{other}-j", str(f), check=False).returncode != 0
    # An untouched copy is added (its origin checked) and signs; the original still signs; a record is never overwritten.
    f.write_text(json.dumps(a))
    up.nekms("key", "add", "--dev-root", "--pcr0", up.info["pcr0"], "--store", f"sqlite:{other}-copy", str(f))
    sign(up, "tamper-a", "--store", f"sqlite:{other}-copy", "--message", "x")
    sign(up, "tamper-a", "--message", "x")
    f.write_text(json.dumps(b))
    r = up.nekms("key", "add", "--dev-root", "--pcr0", up.info["pcr0"], str(f), check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = up.nekms("key", "create", "--name", "tamper-a", "--spec", "p256", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
