"""`nekms agent`, the HTTP API on 127.0.0.1, in front of a real enclave (under
`nekms dev up`), a SQLite or DynamoDB (moto) store, with outside verifiers:
cryptography, eth-account, `nekms attest verify`; and schemathesis driving
the OpenAPI document.
"""

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account
from eth_account.messages import encode_defunct

from test_dev_up import NEKMS, Up
from test_keys import Moto, enclave_policy, secret_forms


class Agent:
    def __init__(self, up, name, *args, env=None):
        self.ready = up.base / f"{name}.json"
        self.log = up.base / f"{name}.log"
        self.proc = subprocess.Popen([NEKMS, "agent", "--listen", "127.0.0.1:0", "--ready-file", str(self.ready), *args],
                                     env=env or up.env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while not self.ready.exists():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.time() < deadline
            time.sleep(0.05)
        self.url = json.loads(self.ready.read_text())["url"]
        self.responses = []

    def call(self, method, path, body=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"content-type": "application/json"})
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
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("agent")
    u = Up(base)
    u.env["NEKMS_STORE"] = f"sqlite:{base / 'keys.db'}"
    u.moto = Moto(base / "moto.log")
    u.env["NEKMS_SECRETS_ENDPOINT"] = u.moto.url
    u.env["NEKMS_STORE_ENDPOINT"] = u.moto.url
    u.key = u.client("admin").create_key(Policy=json.dumps(enclave_policy(u.info["pcr0"])))["KeyMetadata"]["Arn"]
    u.agent = Agent(u, "agent")
    yield u
    u.agent.stop()
    u.moto.stop()
    u.stop()


def test_keys_are_made_listed_and_used_through_the_api(env):
    a = env.agent
    status, health = a.call("GET", "/healthz")
    assert status == 200 and health["enclave"]["credentials"] is True, health
    status, created = a.call("POST", "/v1/keys", {"name": "app-1", "spec": "secp256k1", "kms_key_id": env.key})
    assert status == 201, created
    assert created["eth_address"] and "sealed_private_key" in created["record"]
    status, _ = a.call("POST", "/v1/keys", {"name": "app-2", "spec": "p256", "kms_key_id": env.key, "entropy": "kms"})
    assert status == 201
    status, page = a.call("GET", "/v1/keys?limit=1")
    assert status == 200 and len(page["keys"]) == 1 and page["next"] == "app-1"
    status, page = a.call("GET", f"/v1/keys?after={page['next']}")
    assert [k["name"] for k in page["keys"]] == ["app-2"] and page["next"] is None

    status, pk = a.call("GET", "/v1/keys/app-2/public-key")
    public = serialization.load_pem_public_key(pk["pem"].encode())
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

    # Attestation for a nonce, checked by `nekms attest verify`.
    status, att = a.call("POST", "/v1/attestation", {"nonce": "abcdef01"})
    doc = env.base / "agent-doc.cbor"
    doc.write_bytes(base64.b64decode(att["document"]))
    env.nekms("attest", "verify", "--dev-root", "--dir", str(env.dev), "--nonce", "abcdef01", "--pcr", f"0={env.info['pcr0']}", str(doc))


def test_errors_are_clear_and_change_nothing(env):
    a = env.agent
    a.call("POST", "/v1/keys", {"name": "dup", "spec": "ed25519", "kms_key_id": env.key})
    status, e = a.call("POST", "/v1/keys", {"name": "dup", "spec": "ed25519", "kms_key_id": env.key})
    assert status == 409 and e["error"]["code"] == "exists"
    assert a.call("GET", "/v1/keys/nope")[0] == 404
    status, e = a.call("POST", "/v1/keys", {"name": "x", "spec": "rsa1024", "kms_key_id": env.key})
    assert status == 400 and "rsa1024" in e["error"]["message"]
    status, e = a.call("POST", "/v1/keys", {"name": "x", "spec": "p256", "kms_key_id": "alias/no-such-key"})
    assert status == 404 and e["error"]["code"] == "kms_key_not_found", e
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
    a.call("POST", "/v1/keys", {"name": "metered", "spec": "ed25519", "kms_key_id": env.key})
    _, before = a.call("GET", "/metrics")
    hits = lambda text: int(next(l for l in text.splitlines() if l.startswith("nekms_enclave_key_cache_hits_total")).split()[1])
    for _ in range(3):
        assert a.call("POST", "/v1/keys/metered/sign", {"message": "m"})[0] == 200
    _, after = a.call("GET", "/metrics")
    assert hits(after) >= hits(before) + 2, "warm signatures come from the cache"
    assert 'nekms_agent_requests_total{route="/v1/keys/{name}/sign",method="POST",status="200"}' in after
    assert 'nekms_agent_request_duration_seconds_bucket{route="/v1/keys/{name}/sign",le="+Inf"}' in after
    assert "nekms_agent_errors_total{" in after and "nekms_enclave_up 1" in after


def test_lockout_relay_imports_from_secrets_manager_and_no_secret_reaches_the_parent(env):
    a = env.agent
    seed = bytes.fromhex("1f2e3d4c5b6a79880102030405060708090a0b0c0d0e0f1011121314151617ff")
    blob = env.client("instance").encrypt(KeyId=env.key, Plaintext=seed)["CiphertextBlob"]
    env.moto.client("secretsmanager").create_secret(Name="agent-seed", SecretBinary=blob)
    status, created = a.call("POST", "/v1/keys/import", {"name": "relayed", "spec": "secp256k1", "kms_key_id": env.key, "secret_id": "agent-seed"})
    assert status == 201, created
    assert created["eth_address"] == Account.from_key(seed).address
    status, e = a.call("POST", "/v1/keys/import", {"name": "relayed2", "kms_key_id": env.key, "secret_id": "missing"})
    assert status == 400 and e["error"]["code"] == "secret_unreadable"
    haystacks = [r.encode() for r in a.responses] + [a.log.read_bytes(), env.log.read_bytes(), (env.base / "keys.db").read_bytes()]
    for form in secret_forms(seed):
        for h in haystacks:
            assert form not in h


def test_a_dynamodb_backed_agent_survives_moto_restarting(env):
    env.nekms("store", "create-table", "--store", "dynamodb:agent-keys")
    dyn = Agent(env, "agent-dynamo", "--store", "dynamodb:agent-keys", "--no-credentials")
    try:
        assert dyn.call("POST", "/v1/keys", {"name": "d1", "spec": "ed25519", "kms_key_id": env.key})[0] == 201
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


def test_schemathesis_finds_no_server_error(env):
    a = env.agent
    # Something to find behind the path parameters.
    a.call("POST", "/v1/keys", {"name": "fuzz-k1", "spec": "secp256k1", "kms_key_id": env.key})
    cli = "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()"
    r = subprocess.run([sys.executable, "-c", cli, "run", f"{a.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
                        "--workers", "1", "--seed", "1", "--request-timeout", "60", "--generation-codec", "ascii",
                        "--suppress-health-check", "all", "--phases", "examples,coverage,fuzzing"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "generated" in r.stdout and a.proc.poll() is None
