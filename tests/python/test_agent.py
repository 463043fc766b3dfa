"""`nekms agent`, the HTTP API on 127.0.0.1, in front of a real enclave (under
`nekms dev up`), a SQLite or DynamoDB (moto) store, with outside verifiers:
cryptography, eth-account, `nekms attest verify`; and schemathesis driving
the OpenAPI document.

Callers authenticate with the bearer token from the agent's 0600 token file
(only /healthz, /metrics and /openapi.json answer without it), and the Host
header must be a loopback name. Keys are sealed under the custody KMS key dev
up pinned in the enclave's configuration; the enclave's refusals (another KMS
key, a ciphertext not made for this import) come back as 403 "refused" with
the rule's name.
"""

import base64
import json
import sqlite3
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from eth_account.messages import encode_defunct

from conftest import NEKMS, secret_forms, stop


class Agent:
    def __init__(self, up, name, *args, env=None):
        self.ready = up.base / f"{name}.json"
        self.log = up.base / f"{name}.log"
        # The agent makes the token file (0600, a random token) if it is missing; every agent here shares it.
        self.token_file = up.base / "agent.token"
        self.proc = up.start([NEKMS, "agent", "--listen", "127.0.0.1:0", "--token-file", str(self.token_file),
                              "--ready-file", str(self.ready), *args], self.ready, f"the agent {name}", self.log, env=env)
        self.url = json.loads(self.ready.read_text())["url"]
        self.token = self.token_file.read_text().strip()
        self.responses = []

    def call(self, method, path, body=None, raw=None, token=True, headers=None):
        """`token`: True sends the agent's bearer token, False none, a string that one."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        h = {"content-type": "application/json", **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {self.token if token is True else token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, text = r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        self.responses.append(text)
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def stop(self):
        stop(self.proc)


@pytest.fixture(scope="module")
def env(dev_up):
    u = dev_up("agent")
    u.env["NEKMS_STORE"] = f"sqlite:{u.base / 'keys.db'}"
    u.moto = u.start_moto()
    # The custody key dev up pinned in the enclave's measured configuration.
    u.key = u.info["custody_kms_key"]
    u.agent = Agent(u, "agent")
    return u


def test_callers_need_the_token_and_a_loopback_host(env):
    a = env.agent
    mode = a.token_file.stat().st_mode
    assert stat.S_IMODE(mode) == 0o600 and len(a.token) >= 16, oct(mode)
    # Without a token, or with a wrong one: 401, for reads, signing and making keys alike.
    for token in (False, "0" * 64, a.token[:-1]):
        for method, path, body in (("GET", "/v1/keys", None), ("POST", "/v1/keys", {"name": "intruder", "spec": "p256"}),
                                   ("POST", "/v1/attestation", {"nonce": "00"})):
            status, e = a.call(method, path, body, token=token)
            assert status == 401 and e["error"]["code"] == "unauthorized", (token, path, status, e)
    assert a.call("GET", "/v1/keys/intruder")[0] == 404, "nothing made without a token"
    # The public routes answer without one.
    for path in ("/healthz", "/metrics", "/openapi.json"):
        assert a.call("GET", path, token=False)[0] == 200, path
    # A Host that is not a loopback name (DNS rebinding) is refused even with the token, and on public routes.
    for path in ("/v1/keys", "/healthz"):
        status, e = a.call("GET", path, headers={"Host": "attacker.example"})
        assert status == 421 and e["error"]["code"] == "bad_host", (path, status, e)
    for host in ("localhost", "127.0.0.1", "localhost:8080"):
        assert a.call("GET", "/v1/keys", headers={"Host": host})[0] == 200, host


def test_keys_are_made_listed_and_used_through_the_api(env):
    a = env.agent
    status, health = a.call("GET", "/healthz")
    assert status == 200 and health["enclave"]["credentials"] is True, health
    # The kms key defaults to the only custody key pinned in the enclave's configuration.
    status, created = a.call("POST", "/v1/keys", {"name": "app-1", "spec": "secp256k1"})
    assert status == 201, created
    assert created["eth_address"] and "sealed_private_key" in created["record"]
    assert created["record"]["kms_key_id"] == env.key
    status, _ = a.call("POST", "/v1/keys", {"name": "app-2", "spec": "p256", "kms_key_id": env.key, "entropy": "kms"})
    assert status == 201
    status, page = a.call("GET", "/v1/keys?limit=1")
    assert status == 200 and len(page["keys"]) == 1 and page["next"] == "app-1"
    status, page = a.call("GET", f"/v1/keys?after={page['next']}")
    assert [k["name"] for k in page["keys"]] == ["app-2"] and page["next"] is None

    status, pk = a.call("GET", "/v1/keys/app-2/public-key")
    public = serialization.load_pem_public_key(pk["pem"].encode())
    # A public key planted in the store is not handed out: the enclave does not open that record.
    planted = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(serialization.Encoding.DER,
                                                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    with sqlite3.connect(env.base / "keys.db") as db:
        real = db.execute("SELECT public_key FROM key_records WHERE key_id = 'app-2'").fetchone()[0]
        db.execute("UPDATE key_records SET public_key = ? WHERE key_id = 'app-2'", (planted,))
    status, e = a.call("GET", "/v1/keys/app-2/public-key")
    shown = a.call("GET", "/v1/keys/app-2")[1]
    listed = [k for k in a.call("GET", "/v1/keys")[1]["keys"] if k["name"] == "app-2"]
    with sqlite3.connect(env.base / "keys.db") as db:
        db.execute("UPDATE key_records SET public_key = ? WHERE key_id = 'app-2'", (real,))
    assert status == 422 and e["error"]["code"] == "record_rejected", (status, e)
    assert shown["public_key_pem"] is None and "public_key_unverified" in shown and shown["record"]["key_id"] == "app-2", shown
    assert listed and listed[0]["public_key_pem"] is None and listed[0]["eth_address"] is None, listed
    assert a.call("GET", "/v1/keys/app-2")[1]["public_key_pem"] == pk["pem"], "the record put back is vouched for again"
    status, s = a.call("POST", "/v1/keys/app-2/sign", {"message": "Hello World"})
    assert status == 200, s
    public.verify(bytes.fromhex(s["signature"]), b"Hello World", ec.ECDSA(hashes.SHA256()))

    address = created["eth_address"]
    tx = {"chainId": 1, "nonce": 1, "to": "0x000000000000000000000000000000000000dEaD", "value": 5, "gas": 21000,
          "maxFeePerGas": 2 * 10**10, "maxPriorityFeePerGas": 10**9}
    status, signed = a.call("POST", "/v1/keys/app-1/eth/transaction", tx)
    assert status == 200, signed
    assert Account.recover_transaction(signed["raw_transaction"]) == address
    status, s = a.call("POST", "/v1/keys/app-1/sign", {"message": "gm", "scheme": "eth-personal"})
    assert Account.recover_message(encode_defunct(text="gm"), signature=bytes.fromhex(s["signature"])) == address

    # Attestation for a nonce, checked by `nekms attest verify`; the caller's user_data sits behind the caller prefix.
    status, att = a.call("POST", "/v1/attestation", {"nonce": "abcdef01", "user_data": b"app".hex()})
    assert status == 200, att
    doc = env.base / "agent-doc.cbor"
    doc.write_bytes(base64.b64decode(att["document"]))
    out = json.loads(env.nekms("attest", "verify", "--dev-root", "--dir", str(env.dev), "--nonce", "abcdef01",
                               "--pcr", f"0={env.info['pcr0']}", "--json", str(doc)).stdout)
    user_data = out["document"]["user_data"]
    user_data = bytes.fromhex(user_data) if isinstance(user_data, str) else bytes(user_data)
    assert user_data == b"nekms-caller:v1:app", user_data
    # A caller's public key is never attested.
    status, _ = a.call("POST", "/v1/attestation", {"nonce": "abcdef01", "public_key": base64.b64encode(b"k" * 91).decode()})
    assert 400 <= status < 500


def test_errors_are_clear_and_change_nothing(env):
    a = env.agent
    a.call("POST", "/v1/keys", {"name": "dup", "spec": "ed25519", "kms_key_id": env.key})
    status, e = a.call("POST", "/v1/keys", {"name": "dup", "spec": "ed25519", "kms_key_id": env.key})
    assert status == 409 and e["error"]["code"] == "exists"
    assert a.call("GET", "/v1/keys/nope")[0] == 404
    status, e = a.call("POST", "/v1/keys", {"name": "x", "spec": "rsa1024", "kms_key_id": env.key})
    assert status == 400 and "rsa1024" in e["error"]["message"]
    # A KMS key other than the pinned custody key is refused by the enclave before KMS is asked, existing or not.
    other = env.client("admin").create_key()["KeyMetadata"]["Arn"]
    for kms_key in ("alias/no-such-key", other):
        status, e = a.call("POST", "/v1/keys", {"name": "x", "spec": "p256", "kms_key_id": kms_key})
        assert status == 403 and e["error"]["code"] == "refused" and "rule pinned-kms-key" in e["error"]["message"], e
    assert a.call("GET", "/v1/keys/x")[0] == 404, "nothing stored after a refusal"
    status, e = a.call("POST", "/v1/keys/dup/sign", {"message": "a", "digest": "00"})
    assert status == 400
    status, e = a.call("POST", "/v1/keys/dup/sign", {"digest": "00" * 32})
    assert status == 400 and "digest" in e["error"]["message"]
    status, _ = a.call("POST", "/v1/keys", raw=b"{not json")
    assert 400 <= status < 500
    status, _ = a.call("POST", "/v1/keys/dup/eth/transaction", {"chainId": 1, "nonce": 0, "gas": 1, "gasPrice": 1})
    assert status == 400
    assert a.call("GET", "/no/such/route")[0] == 404


def test_metrics_count_requests_errors_latency_and_cache_hits(env):
    a = env.agent
    a.call("POST", "/v1/keys", {"name": "metered", "spec": "ed25519"})
    _, before = a.call("GET", "/metrics")
    hits = lambda text: int(next(l for l in text.splitlines() if l.startswith("nekms_enclave_key_cache_hits_total")).split()[1])
    for _ in range(3):
        assert a.call("POST", "/v1/keys/metered/sign", {"message": "m"})[0] == 200
    _, after = a.call("GET", "/metrics")
    assert hits(after) >= hits(before) + 2, "warm signatures come from the cache"
    assert 'nekms_agent_requests_total{route="/v1/keys/{name}/sign",method="POST",status="200"}' in after
    assert 'nekms_agent_request_duration_seconds_bucket{route="/v1/keys/{name}/sign",le="+Inf"}' in after
    assert "nekms_agent_errors_total{" in after and "nekms_enclave_up 1" in after
    # The audit trail's counters: three signatures are three more lines (and checkpoints), none lost under dev up.
    audit = lambda text, name: int(next(l for l in text.splitlines() if l.startswith(name + " ")).split()[1])
    assert audit(after, "nekms_audit_records_total") >= audit(before, "nekms_audit_records_total") + 3
    assert audit(after, "nekms_audit_lost_total") == 0


def test_lockout_relay_imports_from_secrets_manager_and_no_secret_reaches_the_parent(env):
    a = env.agent
    seed = bytes.fromhex("1f2e3d4c5b6a79880102030405060708090a0b0c0d0e0f1011121314151617ff")
    # The administrator's import ciphertext for the name "relayed" (the instance may not Encrypt under the custody key).
    blob = env.client("admin").encrypt(KeyId=env.key, Plaintext=seed,
                                       EncryptionContext={"nekms:purpose": "import", "nekms:key-id": "relayed",
                                                          "nekms:key-spec": "secp256k1"})["CiphertextBlob"]
    env.moto.client("secretsmanager").create_secret(Name="agent-seed", SecretBinary=blob)
    # Imported under another name: refused, the import context binds "relayed".
    status, e = a.call("POST", "/v1/keys/import", {"name": "relayed-copy", "spec": "secp256k1", "secret_id": "agent-seed"})
    assert 400 <= status < 500 and "rule import-ciphertext" in e["error"]["message"], e
    assert a.call("GET", "/v1/keys/relayed-copy")[0] == 404
    status, created = a.call("POST", "/v1/keys/import", {"name": "relayed", "spec": "secp256k1", "kms_key_id": env.key, "secret_id": "agent-seed"})
    assert status == 201, created
    assert created["eth_address"] == Account.from_key(seed).address
    assert created["record"]["origin"] == "imported"
    status, e = a.call("POST", "/v1/keys/import", {"name": "relayed2", "secret_id": "agent-seed"})
    assert status == 400 and "spec" in e["error"]["message"], e
    status, e = a.call("POST", "/v1/keys/import", {"name": "relayed2", "spec": "secp256k1", "kms_key_id": env.key, "secret_id": "missing"})
    assert status == 400 and e["error"]["code"] == "secret_unreadable"
    haystacks = [r.encode() for r in a.responses] + [a.log.read_bytes(), env.log.read_bytes(), (env.base / "keys.db").read_bytes()]
    for form in secret_forms(seed):
        for h in haystacks:
            assert form not in h


def test_a_dynamodb_backed_agent_survives_moto_restarting(env):
    env.nekms("store", "create-table", "--store", "dynamodb:agent-keys")
    dyn = Agent(env, "agent-dynamo", "--store", "dynamodb:agent-keys", "--no-credentials")
    try:
        assert dyn.call("POST", "/v1/keys", {"name": "d1", "spec": "ed25519"})[0] == 201
        env.moto.stop()
        status, e = dyn.call("GET", "/v1/keys")
        assert status == 503 and e["error"]["retryable"] is True and "retry later" in e["error"]["message"], e
        assert dyn.call("GET", "/healthz")[0] == 503
        env.moto.start()
        env.nekms("store", "create-table", "--store", "dynamodb:agent-keys")
        status, page = dyn.call("GET", "/v1/keys")
        assert status == 200 and page["keys"] == []
        assert dyn.call("POST", "/v1/keys", {"name": "d2", "spec": "ed25519", "kms_key_id": env.key})[0] == 201
        assert dyn.call("POST", "/v1/keys/d2/sign", {"message": "after the restart"})[0] == 200
    finally:
        dyn.stop()


def test_every_error_has_the_documented_shape_body_errors_included(env):
    """Errors axum would answer in plain text (a wrong content type, malformed JSON, a wrong field, a body over the
    limit, a method a route does not take) come back as {"error": {"code", "message", "retryable"}}."""
    a = env.agent
    cases = [
        ({"content-type": "text/plain"}, b'{"name": "x", "spec": "p256"}', "POST", 415, "unsupported_media_type"),
        (None, b"{not json", "POST", 400, "malformed_json"),
        (None, b'{"name": 5, "spec": "p256"}', "POST", 422, "invalid_body"),
        (None, b'{"name": "' + b"x" * (300 * 1024) + b'"}', "POST", 413, "body_too_large"),
        (None, None, "DELETE", 405, "method_not_allowed"),
    ]
    for headers, raw, method, want, code in cases:
        status, e = a.call(method, "/v1/keys", raw=raw, headers=headers)
        assert status == want and isinstance(e, dict), (code, status, e)
        assert e["error"]["code"] == code and e["error"]["message"] and e["error"]["retryable"] is False, e
    assert a.call("GET", "/v1/keys/body-error-x")[0] == 404, "nothing was made"
    # The agent said where its token is.
    assert f"the bearer token is in {a.token_file}" in a.log.read_text()


def test_the_agent_lists_damaged_records_and_refuses_keys_pending_deletion(env):
    a = env.agent
    for name in ("store-ok", "store-bad", "store-del"):
        assert a.call("POST", "/v1/keys", {"name": name, "spec": "p256", "kms_key_id": env.key})[0] == 201
    with sqlite3.connect(env.base / "keys.db") as db:
        db.execute("UPDATE key_records SET spec = 'rsa9' WHERE key_id = 'store-bad'")
    status, page = a.call("GET", "/v1/keys?limit=1000")
    assert status == 200 and "store-ok" in [k["name"] for k in page["keys"]], page
    assert [d["name"] for d in page["damaged"]] == ["store-bad"] and page["damaged"][0]["damaged"], page["damaged"]
    assert a.call("POST", "/v1/keys/store-ok/sign", {"message": "fine"})[0] == 200
    env.nekms("key", "delete", "store-del")
    status, e = a.call("POST", "/v1/keys/store-del/sign", {"message": "x"})
    assert status == 409 and e["error"]["code"] == "pending_deletion" and "cancel-deletion" in e["error"]["message"], e
    status, shown = a.call("GET", "/v1/keys/store-del")
    assert status == 200 and shown["pending_deletion"].endswith("Z"), shown
    env.nekms("key", "cancel-deletion", "store-del")
    assert a.call("POST", "/v1/keys/store-del/sign", {"message": "back"})[0] == 200
    # A damaged record can still be deleted at once; then it is listed no more.
    env.nekms("key", "delete", "store-bad", "--now", "--yes")
    assert a.call("GET", "/v1/keys?limit=1000")[1]["damaged"] == []


def test_schemathesis_finds_no_server_error(env):
    a = env.agent
    # Something to find behind the path parameters.
    a.call("POST", "/v1/keys", {"name": "fuzz-k1", "spec": "secp256k1"})
    cli = "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()"
    # With the token: otherwise every request stops at 401 and nothing behind it is exercised.
    r = subprocess.run([sys.executable, "-c", cli, "run", f"{a.url}/openapi.json", "-H", f"Authorization: Bearer {a.token}",
                        "--checks", "not_a_server_error", "--max-examples", "25",
                        "--workers", "1", "--seed", "1", "--request-timeout", "60", "--generation-codec", "ascii",
                        "--suppress-health-check", "all", "--phases", "examples,coverage,fuzzing"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "generated" in r.stdout and a.proc.poll() is None
