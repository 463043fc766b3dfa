"""Key custody across real processes: `nekms dev up` (local KMS, proxy,
simulated enclave), moto's server for DynamoDB and Secrets Manager, and
verifiers nobody on this project wrote: OpenSSL, Python's cryptography,
eth-account.
"""

import base64
import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import boto3
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from eth_account import Account
from eth_account.messages import encode_defunct, encode_typed_data

from test_dev_up import ACCOUNT, NEKMS, NEKMS_ENCLAVE, Up

INSTANCE = f"arn:aws:iam::{ACCOUNT}:role/nekms-instance"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/nekms-key-admin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Moto:
    """moto's server on 127.0.0.1, started and stopped by the test."""

    def __init__(self, log: pathlib.Path, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.start()

    def start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def client(self, service):
        return boto3.client(service, region_name="us-east-1", endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")


def enclave_policy(pcr0, actions=("kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom")):
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": INSTANCE}, "Action": list(actions), "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}},
        {"Sid": "Instance encrypts", "Effect": "Allow", "Principal": {"AWS": INSTANCE}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Admins manage", "Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    u = Up(tmp_path_factory.mktemp("keys"))
    u.store = f"sqlite:{u.base / 'keys.db'}"
    u.env["NEKMS_STORE"] = u.store
    u.key = u.client("admin").create_key(Policy=json.dumps(enclave_policy(u.info["pcr0"])))["KeyMetadata"]["Arn"]
    u.client("admin").create_alias(AliasName="alias/signing", TargetKeyId=u.key)
    u.outputs = []
    yield u
    u.stop()


def run(up, *args, check=True, env=None):
    r = up.nekms(*args, check=check, env=env)
    up.outputs.append(r.stdout + r.stderr)
    return r


def create(up, name, spec, *extra):
    return json.loads(run(up, "key", "create", "--name", name, "--spec", spec, "--kms-key", "alias/signing", "--json", *extra).stdout)


def sign(up, name, *args):
    return json.loads(run(up, "sign", "--key", name, "--json", *args).stdout)


def pem(up, name, tmp_path):
    path = tmp_path / f"{name}.pem"
    path.write_text(run(up, "key", "public-key", name, "--pem").stdout)
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
        run(up, "verify", "--key", name, "--message", "Hello World", "--scheme", scheme, "--signature", sig.hex())

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
    r = run(up, "sign", "--key", "gen-p384", "--digest", digest, check=False)
    assert r.returncode != 0 and "48-byte" in r.stderr, r.stderr
    # A scheme the key cannot use is refused before the enclave opens anything.
    r = run(up, "sign", "--key", "gen-ed25519", "--message", "x", "--scheme", "ecdsa", check=False)
    assert r.returncode != 0 and "cannot sign with ecdsa" in r.stderr


def test_ethereum_signatures_recover_to_the_keys_address(up, tmp_path):
    create(up, "eth", "secp256k1", "--entropy", "kms")
    address = run(up, "key", "public-key", "eth", "--address").stdout.strip()
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
    r = run(up, "sign", "--key", "eth", "--eth-tx", str(f), check=False)
    assert r.returncode != 0 and "chainId" in r.stderr
    f.write_text(json.dumps({**tx1559, "to": "0x1234"}))
    r = run(up, "sign", "--key", "eth", "--eth-tx", str(f), check=False)
    assert r.returncode != 0 and "address" in r.stderr


def test_the_creation_document_commits_to_the_public_key(up, tmp_path):
    record = create(up, "attested", "p256", "--nonce", "c0ffee")
    doc = tmp_path / "doc.cbor"
    run(up, "key", "show", "attested", "--attestation-out", str(doc))
    pcrs = [a for i in range(3) for a in ("--pcr", f"{i}={up.info[f'pcr{i}']}")]
    out = json.loads(run(up, "attest", "verify", "--dev-root", "--dir", str(up.dev), "--nonce", "c0ffee", *pcrs, "--json", str(doc)).stdout)
    user_data = out["document"]["user_data"]
    user_data = bytes.fromhex(user_data) if isinstance(user_data, str) else bytes(user_data)
    spki = base64.b64decode(record["public_key"])
    assert user_data == f"nekms-key:v1:attested:p256:{hashlib.sha256(spki).hexdigest()}".encode()


def secret_forms(secret: bytes):
    return [secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret)]


def test_imported_keys_work_and_their_secrets_never_reach_the_parent(up, tmp_path):
    kms = up.client("instance")
    secrets = []

    # An Ethereum key, as 0x-hex text.
    eth_key = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    secrets.append(eth_key)
    ct = kms.encrypt(KeyId=up.key, Plaintext=b"0x" + eth_key.hex().encode())["CiphertextBlob"]
    (tmp_path / "eth.ct").write_bytes(ct)
    rec = json.loads(run(up, "key", "import", "--name", "imp-eth", "--spec", "secp256k1", "--kms-key", "alias/signing",
                         "--ciphertext-file", str(tmp_path / "eth.ct"), "--json").stdout)
    assert rec["origin"] == "imported"
    assert run(up, "key", "public-key", "imp-eth", "--address").stdout.strip() == Account.from_key(eth_key).address

    # tmkms softsign: base64 of the Ed25519 seed, encrypted with `aws kms encrypt --output text`.
    seed = os.urandom(32)
    secrets.append(seed)
    ct = kms.encrypt(KeyId=up.key, Plaintext=base64.b64encode(seed) + b"\n")["CiphertextBlob"]
    (tmp_path / "tm.ct.b64").write_text(base64.b64encode(ct).decode())
    run(up, "key", "import", "--name", "imp-tm", "--spec", "ed25519", "--kms-key", "alias/signing",
        "--ciphertext-file", str(tmp_path / "tm.ct.b64"))
    sig = bytes.fromhex(sign(up, "imp-tm", "--message", "block 1")["signature"])
    ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().verify(sig, b"block 1")

    # PKCS#8 PEM from OpenSSL (P-384).
    key_pem = tmp_path / "p384.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", str(key_pem)], check=True)
    priv = serialization.load_pem_private_key(key_pem.read_bytes(), None)
    secrets.append(priv.private_numbers().private_value.to_bytes(48, "big"))
    ct = kms.encrypt(KeyId=up.key, Plaintext=key_pem.read_bytes())["CiphertextBlob"]
    run(up, "key", "import", "--name", "imp-p384", "--kms-key", "alias/signing", "--ciphertext", base64.b64encode(ct).decode())
    ours = serialization.load_pem_public_key(pem(up, "imp-p384", tmp_path).read_bytes())
    assert ours.public_numbers() == priv.public_key().public_numbers()
    der = bytes.fromhex(sign(up, "imp-p384", "--message", "m")["signature"])
    priv.public_key().verify(der, b"m", ec.ECDSA(hashes.SHA384()))

    # Wrong declared spec and an encrypted PEM are refused, and nothing is stored.
    r = run(up, "key", "import", "--name", "imp-bad", "--spec", "p256", "--kms-key", "alias/signing",
            "--ciphertext", base64.b64encode(ct).decode(), check=False)
    assert r.returncode != 0 and "p384" in r.stderr
    assert run(up, "key", "show", "imp-bad", check=False).returncode != 0

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


def test_tampered_records_are_refused_with_a_clear_error(up, tmp_path):
    a = create(up, "tamper-a", "secp256k1")
    b = create(up, "tamper-b", "secp256k1")
    other = tmp_path / "tampered.db"
    cases = {
        "sealed key from another record": tampered(a, sealed_private_key=b["sealed_private_key"]),
        "data key from another record": tampered(a, encrypted_data_key=b["encrypted_data_key"]),
        "public key from another record": tampered(a, public_key=b["public_key"]),
        "encryption context changed": tampered(a, encryption_context={**a["encryption_context"], "tenant": "mallory"}),
    }
    for i, (what, record) in enumerate(cases.items()):
        store = f"sqlite:{other}-{i}"
        f = tmp_path / f"t{i}.json"
        f.write_text(json.dumps(record))
        run(up, "key", "add", "--store", store, str(f))
        r = run(up, "sign", "--store", store, "--key", "tamper-a", "--message", "x", check=False)
        assert r.returncode != 0, what
        assert "tampered" in r.stderr, f"{what}: {r.stderr}"
    # A record renamed is refused when added: its context binds the old name.
    f = tmp_path / "renamed.json"
    f.write_text(json.dumps(tampered(a, key_id="tamper-c")))
    r = run(up, "key", "add", "--store", f"sqlite:{other}-r", str(f), check=False)
    assert r.returncode != 0 and "nekms:key-id" in r.stderr
    # The untouched record still signs, and a record is never overwritten.
    sign(up, "tamper-a", "--message", "x")
    f.write_text(json.dumps(b))
    r = run(up, "key", "add", str(f), check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = run(up, "key", "create", "--name", "tamper-a", "--spec", "p256", "--kms-key", "alias/signing", check=False)
    assert r.returncode != 0 and "already exists" in r.stderr
