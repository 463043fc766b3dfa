"""Root on the parent instance against nekms's custody boundary.

The attacker here has everything the parent has under `nekms dev up`: the
enclave's native RPC (through the nekms CLI and through a CBOR client written
here from the protocol's description), kmstool's port, the `nekms-enclave cli`
verbs, the agent, the key store (it writes rows itself), the instance role's
credentials and, where said, the key administrator's. Each attack from the
custody-boundary issue, and variants of it, must end refused with an error
naming the rule, with nothing stored; the last test scans everything the
attacker saw (every output, every log, the store, the KMS audit log) for the
imported secrets in raw, hex and base64 forms, and tries every 32-byte value
the attacker saw as the data key of every record.

What the dev world cannot model: its simulated NSM signs with a development
CA whose key is on this machine, so a parent that reads it could forge
documents; on Nitro the key is the hypervisor's. The attacker here does not
read it, as it could not on AWS.
"""

import base64
import hashlib
import json
import os
import re
import socket
import sqlite3
import struct
import subprocess

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import ACCOUNT, ADMIN, INSTANCE, NEKMS, Rpc, Up, cbor_record, nekms, spawn, stop, wait_for


class World:
    """`nekms dev up`, its key store, and what the attacker collects."""

    def __init__(self, up):
        self.up = up
        self.base = up.base
        self.store_path = up.base / "keys.db"
        up.env["NEKMS_STORE"] = f"sqlite:{self.store_path}"
        self.env = up.env
        self.custody = up.info["custody_kms_key"]
        self.seen = up.outputs  # every text and byte string the attacker saw (the CLI's outputs among them)
        self.secrets = []  # what must never be seen
        self.nekms = up.nekms

    def refused(self, *args, rule):
        """Run `nekms ARGS`: it must fail, naming `rule`; returns stderr."""
        r = self.nekms(*args, check=False)
        assert r.returncode != 0, f"nekms {' '.join(args)} was allowed: {r.stdout}"
        assert f"rule {rule}" in r.stderr, f"nekms {' '.join(args)}: expected rule {rule}: {r.stderr}"
        return r.stderr

    def rpc(self):
        return Rpc(self.up.info["rpc"])

    def kms(self, who):
        return self.up.client(who)

    def record(self, name):
        return json.loads(self.nekms("key", "show", name, "--json").stdout)

    def names(self):
        with sqlite3.connect(self.store_path) as db:
            return {row[0] for row in db.execute("SELECT key_id FROM key_records")}

    def plant(self, record):
        """Write a record into the store as the attacker can, bypassing `key add`."""
        with sqlite3.connect(self.store_path) as db:
            db.execute("DELETE FROM key_records WHERE key_id = ?", (record["key_id"],))
            db.execute(
                "INSERT INTO key_records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (record["key_id"], record["spec"], base64.b64decode(record["public_key"]), record["kms_key_id"],
                 json.dumps(record["encryption_context"]), base64.b64decode(record["encrypted_data_key"]),
                 base64.b64decode(record["sealed_private_key"]), record["origin"], record["created_at"],
                 base64.b64decode(record["attestation"]) if record.get("attestation") else None,
                 base64.b64decode(record["migration"]) if record.get("migration") else None))


# A key policy that gives the instance role and the administrators everything.
OPEN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": [INSTANCE, ADMIN]}, "Action": "kms:*", "Resource": "*"}]}


def import_context(name, spec="secp256k1"):
    return {"nekms:purpose": "import", "nekms:key-id": name, "nekms:key-spec": spec}


def kms_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as e:  # botocore.exceptions.ClientError
        return e.response["Error"]["Code"]
    raise AssertionError(f"KMS allowed {fn.__name__}")


@pytest.fixture(scope="module")
def world(dev_up):
    w = World(dev_up("attacker"))
    # The victims: a key made in the enclave, and a key the administrator imported.
    w.nekms("key", "create", "--name", "victim", "--spec", "secp256k1")
    w.imported_secret = os.urandom(32)
    w.secrets.append(w.imported_secret)
    blob = w.kms("admin").encrypt(KeyId=w.custody, Plaintext=w.imported_secret.hex().encode(),
                                  EncryptionContext=import_context("imported"))["CiphertextBlob"]
    w.import_blob = base64.b64encode(blob).decode()
    w.nekms("key", "import", "--name", "imported", "--spec", "secp256k1", "--ciphertext", w.import_blob)
    # A KMS key the parent controls outright (the administrator made it for the instance).
    w.parent_key = w.kms("admin").create_key(Policy=json.dumps(OPEN_POLICY))["KeyMetadata"]["Arn"]
    return w


def test_the_enclave_does_not_decrypt_custody_material_for_the_parent(world):
    """The decryption oracle: a record's data key and an import ciphertext,
    through RPC Decrypt, kmstool's port and the enclave-CLI verb, with the
    reserved context in every casing and shape."""
    victim = world.record("victim")
    edk = victim["encrypted_data_key"]
    context = victim["encryption_context"]
    variants = [
        context,
        {k.upper(): v for k, v in context.items()},
        {k.replace("nekms", "NeKmS"): v for k, v in context.items()},
        {**context, "app": "extra"},
        {"nekms:key-id": "victim"},
        {"Nekms:key-id": "victim", "app": "x"},
        {"ne\u212ams:key-id": "victim"},  # KELVIN SIGN, which lowercases to k
    ]
    for ctx in variants:
        args = [a for k, v in ctx.items() for a in ("--encryption-context", f"{k}={v}")]
        world.refused("enclave", "decrypt", *args, edk, rule="reserved-context")
        world.refused("kmstool", "decrypt", "--address", world.up.info["kmstool"], "--region", "us-east-1", *args, edk,
                      rule="reserved-context")
        r = world.up.enclave_cli("decrypt", "--ciphertext", edk, *args)
        assert r.returncode != 0 and "rule reserved-context" in r.stderr, r.stderr
    # Without the context KMS refuses; naming the custody key is refused before KMS.
    world.refused("enclave", "decrypt", "--key-id", world.custody, edk, rule="custody-key")
    r = world.nekms("enclave", "decrypt", edk, check=False)
    assert r.returncode != 0 and "InvalidCiphertextException" in r.stderr, r.stderr
    # The administrator's import ciphertext, the same ways.
    args = [a for k, v in import_context("imported").items() for a in ("--encryption-context", f"{k}={v}")]
    world.refused("enclave", "decrypt", *args, world.import_blob, rule="reserved-context")
    world.refused("kmstool", "decrypt", "--address", world.up.info["kmstool"], "--region", "us-east-1", *args,
                  world.import_blob, rule="reserved-context")

    # Raw protocol: a context key given twice (a decoder would keep the last) is refused.
    def duplicate(call_id):
        request = {"Decrypt": {"ciphertext": base64.b64decode(edk), "encryption_context": {"apX": "x", "apY": "y"}}}
        return cbor2.dumps({"Call": {"id": call_id, "request": request}}).replace(b"apX", b"app").replace(b"apY", b"app")
    kind, err = world.rpc().call(None, raw=duplicate)
    assert kind == "Err" and "duplicate-context-key" in err["message"], err
    # kmstool's JSON: the same key twice.
    s = socket.socket(socket.AF_UNIX)
    s.connect(world.up.info["kmstool"].removeprefix("unix://"))
    c = world.up.creds["instance"]
    s.sendall(json.dumps({"Operation": "SetClient", "AwsAccessKeyId": c["access_key_id"], "AwsSecretAccessKey": c["secret_access_key"],
                          "AwsSessionToken": c["session_token"]}).encode() + b"\0")
    assert b'"Ok"' in s.recv(4096)
    s.sendall(b'{"Operation": "Decrypt", "Ciphertext": "' + edk.encode() + b'", "EncryptionContext": {"app": "x", "app": "y"}}\0')
    reply = s.recv(4096)
    world.seen.append(reply.decode())
    assert b"duplicate-context-key" in reply and b'"Error"' in reply, reply
    s.close()


def test_import_takes_only_ciphertexts_made_for_import(world):
    """ImportKey as an oracle: the victim's data key, the import ciphertext
    under another name, a ciphertext the parent made itself."""
    victim = world.record("victim")
    before = world.names()
    world.refused("key", "import", "--name", "stolen", "--spec", "secp256k1", "--ciphertext", victim["encrypted_data_key"],
                  rule="import-ciphertext")
    for k, v in victim["encryption_context"].items():
        world.refused("key", "import", "--name", "stolen", "--spec", "secp256k1", "--ciphertext", victim["encrypted_data_key"],
                      "--ciphertext-context", f"{k}={v}", rule="reserved-context")
    world.refused("key", "import", "--name", "imported2", "--spec", "secp256k1", "--ciphertext", world.import_blob,
                  rule="import-ciphertext")
    # One secret, imported again as a key of another kind: the import context binds the spec.
    world.nekms("key", "delete", "imported", "--now", "--yes")
    try:
        for spec in ("p256", "ed25519"):
            world.refused("key", "import", "--name", "imported", "--spec", spec, "--ciphertext", world.import_blob, rule="import-ciphertext")
    finally:
        world.nekms("key", "import", "--name", "imported", "--spec", "secp256k1", "--ciphertext", world.import_blob)
    own = world.kms("instance").encrypt(KeyId=world.parent_key, Plaintext=b"11" * 32, EncryptionContext=import_context("mine"))
    world.refused("key", "import", "--name", "mine", "--spec", "secp256k1",
                  "--ciphertext", base64.b64encode(own["CiphertextBlob"]).decode(), rule="import-ciphertext")
    # The instance role cannot mint an import ciphertext under the custody key.
    assert kms_error(world.kms("instance").encrypt, KeyId=world.custody, Plaintext=b"11" * 32,
                     EncryptionContext=import_context("mine")) == "AccessDeniedException"
    assert world.names() == before


def test_the_enclave_attests_only_keys_it_holds(world, tmp_path):
    """A document over the parent's RSA key would be a KMS Recipient for the
    parent; caller data is kept apart from the enclave's own statements."""
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "mine.der").write_bytes(der)
    world.refused("enclave", "attest", "--public-key", str(tmp_path / "mine.der"), "-o", str(tmp_path / "d"), rule="attest-own-keys")
    kind, err = world.rpc().call({"Attest": {"public_key": der}})
    assert kind == "Err" and err["code"] == "Refused" and "attest-own-keys" in err["message"], err
    assert not (tmp_path / "d").exists()

    # A document the parent may have: no public key, and its user_data behind the caller prefix.
    victim = world.record("victim")
    spki = base64.b64decode(victim["public_key"])
    forged = f"nekms-key:v2:generated:victim:secp256k1:{hashlib.sha256(spki).hexdigest()}:{'00' * 32}".encode()
    kind, ok = world.rpc().call({"Attest": {"user_data": forged, "nonce": b"n"}})
    assert kind == "Ok"
    doc = ok["Attested"]["document"]
    (tmp_path / "doc").write_bytes(doc)
    shown = world.nekms("attest", "verify", "--dev-root", "--dir", str(world.up.dev), str(tmp_path / "doc")).stdout
    assert "a caller's data (nekms-caller:v1)" in shown and re.search(r"public_key\s+\(none\)", shown), shown
    # As a Recipient it gets the parent nothing: KMS has no key to seal to.
    code = kms_error(world.kms("instance").decrypt, CiphertextBlob=base64.b64decode(victim["encrypted_data_key"]),
                     EncryptionContext=victim["encryption_context"],
                     Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": doc})
    assert code in ("ValidationException", "AccessDeniedException"), code


def test_custody_never_seals_under_a_key_the_parent_chose(world):
    before = world.names()
    key_id = world.parent_key.rsplit("/", 1)[1]
    blob = world.kms("admin").encrypt(KeyId=world.custody, Plaintext=os.urandom(32).hex().encode(),
                                      EncryptionContext=import_context("evil-import"))["CiphertextBlob"]
    for kms_key in (world.parent_key, key_id, "alias/aws/kms", world.custody.replace(ACCOUNT, "444455556666")):
        world.refused("key", "create", "--name", "evil", "--spec", "secp256k1", "--kms-key", kms_key, rule="pinned-kms-key")
        world.refused("key", "import", "--name", "evil-import", "--spec", "secp256k1", "--kms-key", kms_key,
                      "--ciphertext", base64.b64encode(blob).decode(), rule="pinned-kms-key")
    kind, err = world.rpc().call({"GenerateKey": {"key_id": "evil", "spec": "p256", "kms_key_id": world.parent_key}})
    assert kind == "Err" and err["code"] == "Refused" and "pinned-kms-key" in err["message"], err
    assert world.names() == before


def test_the_parent_cannot_mint_custody_ciphertexts_or_reopen_the_key(world):
    victim = world.record("victim")
    ctx = victim["encryption_context"]
    args = [a for k, v in ctx.items() for a in ("--encryption-context", f"{k}={v}")]
    # Through the enclave: a data key bound to a record's context, under either key.
    world.refused("enclave", "data-key", "--key-id", world.custody, *args, rule="reserved-context")
    world.refused("enclave", "data-key", "--key-id", world.parent_key, *args, rule="reserved-context")
    world.refused("enclave", "data-key", "--key-id", world.custody, rule="custody-key")
    r = world.up.enclave_cli("genkey", "--key-id", world.custody, "--key-spec", "AES-256")
    assert r.returncode != 0 and "rule custody-key" in r.stderr, r.stderr
    # Directly at KMS, as the instance role and as the administrator.
    instance, admin = world.kms("instance"), world.kms("admin")
    assert kms_error(instance.encrypt, KeyId=world.custody, Plaintext=b"k" * 32, EncryptionContext=ctx) == "AccessDeniedException"
    assert kms_error(instance.generate_data_key, KeyId=world.custody, KeySpec="AES_256", EncryptionContext=ctx) == "AccessDeniedException"
    assert kms_error(instance.generate_data_key_without_plaintext, KeyId=world.custody, KeySpec="AES_256",
                     EncryptionContext=ctx) == "AccessDeniedException"
    assert kms_error(admin.encrypt, KeyId=world.custody, Plaintext=b"k" * 32, EncryptionContext=ctx) == "AccessDeniedException"
    assert kms_error(admin.generate_data_key, KeyId=world.custody, KeySpec="AES_256", EncryptionContext=ctx) == "AccessDeniedException"
    # The data key re-encrypted to a key the parent holds.
    for who in (instance, admin):
        assert kms_error(who.re_encrypt, CiphertextBlob=base64.b64decode(victim["encrypted_data_key"]), SourceEncryptionContext=ctx,
                         DestinationKeyId=world.parent_key) == "AccessDeniedException"
    # The administrator cannot reopen the key.
    open_policy = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]})
    assert kms_error(admin.put_key_policy, KeyId=world.custody, PolicyName="default", Policy=open_policy,
                     BypassPolicyLockoutSafetyCheck=True) == "AccessDeniedException"
    assert kms_error(admin.decrypt, CiphertextBlob=base64.b64decode(victim["encrypted_data_key"]), EncryptionContext=ctx) == "AccessDeniedException"
    policy = json.loads(admin.get_key_policy(KeyId=world.custody, PolicyName="default")["Policy"])
    assert not any("*" in a for s in policy["Statement"] if s["Effect"] == "Allow"
                   for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])), policy


def aad(r):
    def put(b):
        return struct.pack(">I", len(b)) + b
    out = b"nekms sealed key v1\0" + put(r["key_id"].encode()) + put(r["spec"].encode()) + put(base64.b64decode(r["public_key"]))
    out += put(r["kms_key_id"].encode()) + put(r["origin"].encode()) + struct.pack(">I", len(r["encryption_context"]))
    for k in sorted(r["encryption_context"], key=lambda k: k.encode()):
        out += put(k.encode()) + put(r["encryption_context"][k].encode())
    return out


def seal(data_key, r, secret):
    nonce = os.urandom(12)
    return base64.b64encode(b"\x01" + nonce + AESGCM(data_key).encrypt(nonce, secret, aad(r))).decode()


def test_planted_and_forged_records_are_refused(world, tmp_path):
    """The parent seals a key it made under a data key it holds, labels it
    generated, borrows a genuine origin document, or copies a record to
    another name; `key add` refuses it and, written into the store directly,
    the enclave does not sign with it."""
    victim = world.record("victim")
    mine = ec.generate_private_key(ec.SECP256K1())
    secret = mine.private_numbers().private_value.to_bytes(32, "big")
    world.secrets.append(secret)
    spki = mine.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    dk = world.kms("instance").generate_data_key(KeyId=world.parent_key, KeySpec="AES_256")
    planted = dict(victim, key_id="planted", public_key=base64.b64encode(spki).decode(),
                   encryption_context={"nekms:key-id": "planted", "nekms:key-spec": "secp256k1", "nekms:origin": "generated"},
                   encrypted_data_key=base64.b64encode(dk["CiphertextBlob"]).decode())
    cases = {
        # Under the parent's own KMS key, with the victim's genuine origin document.
        "under-parent-key": (dict(planted, kms_key_id=world.parent_key), "pinned-kms-key"),
        # Claiming the custody key.
        "claims-custody": (dict(planted, kms_key_id=world.custody), "provenance"),
        # No origin document at all.
        "no-document": (dict(planted, kms_key_id=world.custody, attestation=None), "provenance"),
        # Junk bytes where the document goes.
        "junk-document": (dict(planted, kms_key_id=world.custody, attestation=base64.b64encode(b"\xa0junk").decode()), "provenance"),
    }
    # A document the parent obtained with a commitment to its own key in user_data.
    commitment_like = f"nekms-key:v2:generated:planted:secp256k1:{hashlib.sha256(spki).hexdigest()}:{'00' * 32}".encode()
    _, ok = world.rpc().call({"Attest": {"user_data": commitment_like}})
    cases["caller-document"] = (dict(planted, kms_key_id=world.custody, attestation=base64.b64encode(ok["Attested"]["document"]).decode()), "provenance")
    # The victim itself, copied to another name (context rewritten to match) and with its origin changed.
    copied = dict(victim, key_id="copied", encryption_context={**victim["encryption_context"], "nekms:key-id": "copied"})
    cases["copied"] = (copied, "provenance")
    relabelled = dict(victim, key_id="relabelled", origin="imported",
                      encryption_context={**victim["encryption_context"], "nekms:key-id": "relabelled", "nekms:origin": "imported"})
    cases["relabelled"] = (relabelled, "provenance")
    cases["copied-as-is"] = (dict(victim, key_id="copied-as-is"), "record-binding")
    for name, (record, rule) in cases.items():
        record = dict(record, key_id=record["key_id"] if name in ("copied", "relabelled") else name)
        if name not in ("copied", "relabelled", "copied-as-is"):
            record["encryption_context"] = {**record["encryption_context"], "nekms:key-id": name}
            record["sealed_private_key"] = seal(dk["Plaintext"], record, secret)
        f = tmp_path / f"{name}.json"
        f.write_text(json.dumps({k: v for k, v in record.items() if v is not None}))
        r = world.nekms("key", "add", "--dev-root", "--dir", str(world.up.dev), "--pcr0", world.up.info["pcr0"], str(f), check=False)
        assert r.returncode != 0, f"key add accepted {name}"
        assert record["key_id"] not in world.names()
        world.plant(record)
        r = world.nekms("sign", "--key", record["key_id"], "--message", "pay the attacker", check=False)
        assert r.returncode != 0, f"{name} signed"
        # The same record straight to the enclave, past the parent-side checks.
        kind, err = world.rpc().call({"Sign": {"record": cbor_record(record), "payload": {"message": b"pay the attacker"}}})
        assert kind == "Err" and err["code"] == "RecordRejected" and f"rule {rule}" in err["message"], (name, err)
        shown = world.nekms("key", "show", record["key_id"], check=False)
        assert "attested" not in shown.stdout and (shown.returncode == 0 or "is damaged" in shown.stderr), shown
    # The genuine records pass the same check.
    for name in ("victim", "imported"):
        out = world.nekms("key", "verify-origin", name, "--dev-root", "--dir", str(world.up.dev), "--pcr0", world.up.info["pcr0"],
                          "--allow-imported").stdout
        assert "origin verified" in out, out
        world.refused("key", "verify-origin", name, "--dev-root", "--dir", str(world.up.dev), "--pcr0", "00" * 48, "--allow-imported",
                      rule="provenance")
    # An imported key is accepted only when asked for: its secret is the administrator's.
    world.refused("key", "verify-origin", "imported", "--dev-root", "--dir", str(world.up.dev), "--pcr0", world.up.info["pcr0"],
                  rule="import-disabled")
    world.nekms("sign", "--key", "victim", "--message", "still works")
    with sqlite3.connect(world.store_path) as db:
        db.executemany("DELETE FROM key_records WHERE key_id = ?", [(n,) for n in [*cases, "copied", "relabelled"]])


def test_parent_side_access_control(world, tmp_path):
    """The agent wants a token over TCP, checks Host, limits callers to their
    keys; the RPC, kmstool and agent sockets admit only their owner (and root,
    which is why the rules above live in the enclave)."""
    token_file = tmp_path / "agent.token"
    access = tmp_path / "access.toml"
    (tmp_path / "wallet.token").write_text("wallet-token-0123456789abcdef\n")
    os.chmod(tmp_path / "wallet.token", 0o600)
    access.write_text(f'[[client]]\nname = "wallet"\ntoken-file = "{tmp_path / "wallet.token"}"\nkeys = ["imported"]\n\n'
                      f'[[client]]\nname = "ops"\ntoken-file = "{token_file}"\nkeys = ["*"]\nmanage = true\n')
    token_file.write_text("ops-token-0123456789abcdef0123\n")
    os.chmod(token_file, 0o600)
    ready = tmp_path / "agent.json"
    agent = spawn([NEKMS, "agent", "--listen", "127.0.0.1:0", "--access", str(access), "--no-credentials", "--ready-file", str(ready)],
                  tmp_path / "agent.log", env=world.env)
    sock = tmp_path / "agent.sock"
    agent_unix = spawn([NEKMS, "agent", "--listen", f"unix://{sock}", "--access", str(access), "--no-credentials"],
                       tmp_path / "agent-unix.log", env=world.env)
    try:
        wait_for(ready, agent, "the agent", log=tmp_path / "agent.log")
        wait_for(sock, agent_unix, "the agent on a Unix socket", log=tmp_path / "agent-unix.log")
        port = int(json.loads(ready.read_text())["url"].rsplit(":", 1)[1])

        def call(method, path, token=None, host=None, body=None):
            s = socket.create_connection(("127.0.0.1", port))
            data = json.dumps(body).encode() if body is not None else b""
            head = f"{method} {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            if token:
                head += f"Authorization: Bearer {token}\r\n"
            s.sendall(head.encode() + b"\r\n" + data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            s.close()
            world.seen.append(out.decode(errors="replace"))
            return int(out.split(b" ", 2)[1]), out

        assert call("GET", "/v1/keys")[0] == 401
        assert call("GET", "/v1/keys", token="not-a-token-at-all-0000")[0] == 401
        assert call("GET", "/healthz")[0] == 200
        # DNS rebinding: a page served from evil.example reaches 127.0.0.1 with its own Host.
        assert call("GET", "/v1/keys", token="ops-token-0123456789abcdef0123", host="evil.example")[0] == 421
        assert call("GET", "/healthz", host=f"evil.example:{port}")[0] == 421
        wallet = "wallet-token-0123456789abcdef"
        status, out = call("GET", "/v1/keys", token=wallet)
        assert status == 200 and b'"imported"' in out and b'"victim"' not in out, out
        assert call("POST", "/v1/keys/victim/sign", token=wallet, body={"message": "x"})[0] == 403
        assert call("POST", "/v1/keys/imported/sign", token=wallet, body={"message": "x"})[0] == 200
        assert call("POST", "/v1/keys", token=wallet, body={"name": "imported-2", "spec": "p256"})[0] == 403
        assert call("POST", "/v1/keys", token="ops-token-0123456789abcdef0123",
                    body={"name": "by-ops", "spec": "p256", "kms_key_id": world.parent_key})[0] == 403, "refused by the enclave"
        assert call("POST", "/v1/attestation", token=wallet, body={"public_key": "00"})[0] in (400, 422)

        # Sockets: another uid cannot connect at all.
        for path in (world.up.info["rpc"], world.up.info["kmstool"], f"unix://{sock}"):
            path = path.removeprefix("unix://")
            assert os.stat(path).st_mode & 0o077 == 0, path
            if os.geteuid() != 0:
                continue  # only root can become another uid to try
            probe = subprocess.run(["python3", "-c", f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r})"],
                                   user=65534, capture_output=True, text=True)
            assert probe.returncode != 0 and "Permission denied" in probe.stderr, (path, probe.stderr)
    finally:
        stop(agent, agent_unix)
        for log in ("agent.log", "agent-unix.log"):
            world.seen.append((tmp_path / log).read_text())
    # A token file others can read is refused.
    os.chmod(token_file, 0o644)
    r = world.nekms("agent", "--listen", "127.0.0.1:0", "--access", str(access), "--no-credentials", check=False)
    assert r.returncode != 0 and "0600" in r.stderr


def test_an_old_record_is_refused_after_re_pinning(world, tmp_path):
    """A new custody key pinned (a new measured configuration): records under
    the old key are neither opened nor decryptable through the parent's
    paths; reusing the old pin (the same image and configuration) opens them."""
    base = tmp_path / "repin"
    with Up(base, "--trust", "pcr0") as first:
        env = {**first.env, "NEKMS_STORE": f"sqlite:{base / 'keys.db'}"}
        run = lambda *a, check=True: nekms(*a, env=env, check=check, timeout=120)
        run("key", "create", "--name", "old", "--spec", "ed25519")
        old_key = first.info["custody_kms_key"]
        record = json.loads(run("key", "show", "old", "--json").stdout)
    with Up(base, "--trust", "pcr0") as second:
        assert second.info["custody_kms_key"] != old_key
        r = run("sign", "--key", "old", "--message", "m", check=False)
        assert r.returncode != 0 and "rule pinned-kms-key" in r.stderr, r.stderr
        args = [a for k, v in record["encryption_context"].items() for a in ("--encryption-context", f"{k}={v}")]
        r = run("enclave", "decrypt", *args, record["encrypted_data_key"], check=False)
        assert r.returncode != 0 and "rule reserved-context" in r.stderr, r.stderr
        # The old key's policy names the old image: its PCR0 covered the old pin.
        r = run("enclave", "data-key", "--key-id", old_key, check=False)
        assert r.returncode != 0 and "AccessDeniedException" in r.stderr, r.stderr
    with Up(base, "--trust", "pcr0", "--custody-kms-key", old_key) as third:
        assert third.info["pcr0"] == first.info["pcr0"], "the same image and configuration measure the same"
        run("sign", "--key", "old", "--message", "m")
        loose = third.client("admin").create_key(Policy=json.dumps(OPEN_POLICY))["KeyMetadata"]["Arn"]
    # Reusing a key whose policy is not the custody policy for this image is refused before anything starts.
    r = nekms("dev", "up", "--dir", str(first.dev), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0", "--trust", "pcr0", "--custody-kms-key", loose,
              check=False, timeout=120)
    assert r.returncode != 0 and "not the custody policy" in r.stderr, r.stderr


def test_parent_decryption_can_be_turned_off(tmp_path):
    """An operator who does not want kmstool's service turns it off in the
    measured configuration; custody is unaffected."""
    with Up(tmp_path / "off", "--no-parent-decrypt") as u:
        key = u.client("admin").create_key(Policy=json.dumps(OPEN_POLICY))["KeyMetadata"]["Arn"]
        blob = base64.b64encode(u.client("instance").encrypt(KeyId=key, Plaintext=b"Hello, KMS!")["CiphertextBlob"]).decode()
        for args in (["enclave", "decrypt", blob], ["kmstool", "decrypt", "--address", u.info["kmstool"], "--region", "us-east-1", blob]):
            r = u.nekms(*args, check=False)
            assert r.returncode != 0 and "rule parent-decrypt" in r.stderr, r.stderr
        env = {**u.env, "NEKMS_STORE": f"sqlite:{tmp_path / 'keys.db'}"}
        nekms("key", "create", "--name", "k", "--spec", "p256", env=env)
        nekms("sign", "--key", "k", "--message", "m", env=env)


def test_no_secret_reached_the_parent(world):
    """Runs last: everything the attacker saw, every log and the store."""
    texts = list(world.seen)
    for f in [world.up.log, world.store_path, *world.up.dev.rglob("*")]:
        if f.is_file():
            texts.append(f.read_bytes().decode("latin-1"))
    blob = "\n".join(t if isinstance(t, str) else t.decode("latin-1") for t in texts)
    for secret in world.secrets:
        for form in (secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode().rstrip("=")):
            assert form not in blob, "a secret reached the parent"
        assert secret.decode("latin-1") not in blob
    # Every 32-byte value the attacker saw, tried as a data key of every record.
    candidates = {bytes.fromhex(h) for h in re.findall(r"\b[0-9a-fA-F]{64}\b", blob)}
    for b in re.findall(r"[A-Za-z0-9+/]{43}=", blob):
        candidates.add(base64.b64decode(b))
    with sqlite3.connect(world.store_path) as db:
        rows = db.execute("SELECT key_id, spec, public_key, kms_key_id, encryption_context, sealed_private_key, origin FROM key_records "
                          "WHERE key_id IN ('victim', 'imported')").fetchall()
    assert len(rows) == 2 and candidates
    for key_id, spec, public_key, kms_key_id, context, sealed, origin in rows:
        r = {"key_id": key_id, "spec": spec, "public_key": base64.b64encode(public_key).decode(), "kms_key_id": kms_key_id,
             "encryption_context": json.loads(context), "origin": origin}
        for c in candidates:
            try:
                AESGCM(c).decrypt(sealed[1:13], sealed[13:], aad(r))
            except Exception:
                continue
            raise AssertionError(f"the data key of {key_id} reached the parent")
