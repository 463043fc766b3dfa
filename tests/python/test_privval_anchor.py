"""The validator signer's freshness anchor, on moto's DynamoDB with IAM
enforced: each new state is a conditional write by the enclave under
credentials only it opens (an administrator's KMS ciphertext), while the
instance role may read the table but not write it. Two enclaves with one
key and one anchor, sent the same heights at once with different blocks,
sign exactly one of each; a restarted enclave starts from the anchor, not
from anything the parent keeps.
"""

import base64
import hashlib
import json
import os
import sys
import threading
import time

import pytest

import privval_emu as emu
from conftest import Moto, Rpc, secret_forms
from privval_support import OwnSigner, World, block, connect_nekms, pubkey, scan_parent, status

TABLE = "nekms-privval-anchor"


# moto's own server is threaded, and its DynamoDB does not make a conditional
# write atomic: two UpdateItems at once can both pass their condition (this
# test caught two signers each signing one height that way). DynamoDB makes
# each item's conditional writes atomic, so moto is served one request at a
# time here, which is what the anchor relies on.
MOTO_SERIAL = """
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
os.environ.setdefault("MOTO_PORT", sys.argv[1])
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
"""


class IamMoto(Moto):
    """moto's server, one request at a time, with IAM enforced once the
    setup's `setup_actions` calls are made."""

    def __init__(self, log, setup_actions):
        self.env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(setup_actions)}
        super().__init__(log)

    def command(self):
        return [sys.executable, "-c", MOTO_SERIAL, str(self.port)]


@pytest.fixture(scope="module")
def anchored(dev_up, tmp_path_factory):
    # Whatever fails during the setup, `dev_up` stops all it was given (dev up with the signer's processes, moto).
    base = tmp_path_factory.mktemp("anchor")
    moto = dev_up.keep(IamMoto(base / "moto.log", setup_actions=7))
    root_ddb, iam = moto.client("dynamodb"), moto.client("iam")
    root_ddb.create_table(TableName=TABLE, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                          AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    # moto's IAM checks match the action but not a table ARN as the resource (it denies then), so the
    # policies name "*"; on AWS they name the table. The difference that matters is the actions.
    users = {}
    for name, actions in (("anchor-writer", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"]),
                          ("instance", ["dynamodb:GetItem", "dynamodb:DescribeTable"])):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="anchor", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
        users[name] = iam.create_access_key(UserName=name)["AccessKey"]
    # From here moto enforces IAM. The enclave's traffic to it goes through a recorder (the capture).
    recorder = emu.Recorder(("127.0.0.1", 0), ("127.0.0.1", moto.port))
    w = World(dev_up, base, "--privval-anchor-table", TABLE, "--privval-anchor-endpoint", f"http://127.0.0.1:{recorder.address[1]}")
    w.moto, w.users, w.recorder = moto, users, recorder
    secret = base / "writer.secret"
    secret.write_text(users["anchor-writer"]["SecretAccessKey"])
    w.anchor_credentials = base / "anchor.ct"
    w.nekms("privval", "anchor", "encrypt-credentials", "--kms-key", w.custody, "--table", TABLE, "--access-key-id", users["anchor-writer"]["AccessKeyId"],
            "--secret-access-key-file", str(secret), "--profile", "admin", "-o", str(w.anchor_credentials))
    w.nekms("privval", "anchor", "credentials", "--ciphertext-file", str(w.anchor_credentials))
    w.seed = os.urandom(32)
    w.softsign = w.import_consensus_key("validator", w.seed)
    return w


def test_only_the_enclave_writes_the_watermark(anchored):
    w = anchored
    # The parent cannot have the enclave open the credentials' ciphertext: their context is reserved.
    rpc = Rpc(w.up.info["rpc"])
    outcome, err = rpc.call({"Decrypt": {"ciphertext": w.anchor_credentials.read_bytes(),
                                         "encryption_context": {"nekms:purpose": "privval-anchor-credentials"}}})
    assert outcome == "Err" and "rule reserved-context" in err["message"], err
    # Credentials made for another table are not taken for this one (the table is in their context).
    other = w.base / "other.ct"
    w.nekms("privval", "anchor", "encrypt-credentials", "--kms-key", w.custody, "--table", "another-table", "--access-key-id", "AKIAOTHER",
            "--secret-access-key-file", str(w.base / "writer.secret"), "--profile", "admin", "-o", str(other))
    r = w.nekms("privval", "anchor", "credentials", "--ciphertext-file", str(other), check=False)
    assert r.returncode != 0 and "InvalidCiphertextException" in r.stderr, r.stderr
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", "anchored", "--height", "10")
    r = w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", "anchored", "--height", "1", check=False)
    assert r.returncode != 0 and "not overwritten" in r.stderr, r.stderr
    inst = w.moto.client("dynamodb", w.users["instance"]["AccessKeyId"], w.users["instance"]["SecretAccessKey"])
    spki = base64.b64decode(json.loads(w.nekms("key", "show", "validator", "--json").stdout)["public_key"])
    key_fp = hashlib.sha256(spki).hexdigest()
    item = inst.get_item(TableName=TABLE, Key={"pk": {"S": f"{key_fp}/anchored"}}, ConsistentRead=True)["Item"]
    assert item["counter"]["N"] == "1"
    with pytest.raises(Exception) as e:
        inst.update_item(TableName=TABLE, Key={"pk": {"S": f"{key_fp}/anchored"}}, UpdateExpression="SET #c = :c",
                         ExpressionAttributeNames={"#c": "counter"}, ExpressionAttributeValues={":c": {"N": "0"}})
    assert "AccessDenied" in str(e.value) or "not authorized" in str(e.value), e.value
    with pytest.raises(Exception) as e:
        inst.put_item(TableName=TABLE, Item={"pk": {"S": f"{key_fp}/anchored"}, "counter": {"N": "0"}})
    assert "AccessDenied" in str(e.value) or "not authorized" in str(e.value), e.value


def test_two_signers_one_anchor_one_signature_per_height_round_step(anchored):
    """Two enclaves (dev up's and one of this test's), one consensus key, one
    anchor; 1,000 heights sent to both at once with different blocks: the
    anchor's conditional write lets exactly one sign each; the other reads
    the anchor again and refuses. A restarted enclave starts from the anchor."""
    w = anchored
    chain = "two-signers"
    w.nekms("privval", "state", "init", "--key", "validator", "--chain-id", chain, "--height", "1")
    (v1,) = connect_nekms(w, "first", [chain]).values()
    second = OwnSigner(w, "second", chain, init=False)
    v2 = second.validator
    key = pubkey(v1, chain)
    assert pubkey(v2, chain) == key
    assert status(w, chain)["freshness"].startswith("anchored")
    signed = {}
    started = time.time()
    for h in range(1, 1001):
        msgs = [{"type": emu.PREVOTE, "height": h, "round": 0, "block_id": block(), "timestamp": (1_790_000_000 + h, 0)} for _ in range(2)]
        replies = [None, None]
        barrier = threading.Barrier(2)

        def go(i, v):
            barrier.wait()
            replies[i] = emu.decode_reply(v.request(emu.sign_vote_request(chain, msgs[i])))

        threads = [threading.Thread(target=go, args=(i, v)) for i, v in enumerate((v1, v2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok = [(i, r[1]) for i, r in enumerate(replies) if r[2] is None]
        assert len(ok) == 1, (h, replies)
        i, value = ok[0]
        emu.verify(key, emu.canonical_vote(chain, msgs[i]), value["signature"])
        loser = replies[1 - i][2]
        assert "double sign" in loser[1], loser
        signed[h] = i
    elapsed = time.time() - started
    wins = [sum(1 for i in signed.values() if i == k) for k in (0, 1)]
    print(f"two signers, one anchor: 1000 heights in {elapsed:.1f} s; signer wins {wins}")
    assert min(wins) > 0, "both signers won some heights (the race was real)"

    # Uncontested, closed loop on one signer: what a conditional write on moto costs (reported, not budgeted).
    latencies = []
    for h in range(1001, 1201):
        for t in (emu.PREVOTE, emu.PRECOMMIT):
            msg = {"type": t, "height": h, "round": 0, "block_id": (bytes(32), 1, bytes(32)), "timestamp": (1_790_100_000 + h, 0)}
            start = time.perf_counter()
            _, value, err = emu.decode_reply(v1.request(emu.sign_vote_request(chain, msg)))
            latencies.append(time.perf_counter() - start)
            assert err is None, err
    latencies.sort()
    print(f"anchored on moto, one signer, {len(latencies)} requests: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
          f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms")

    # Restarted, the second enclave takes the anchor's state (the first signer's last): nothing before it again.
    second.restart_enclave()
    second.validator.accept()
    row = second.status()
    assert (row["height"], row["step"]) == (1200, 3) and row["freshness"].startswith("anchored"), row
    _, value, err = second.ask("vote", {"type": emu.PREVOTE, "height": 999, "round": 0, "block_id": block(), "timestamp": (1, 0)})
    assert value is None and "regression" in err[1], err
    # The parent's own state store saw no record: in anchored mode the anchor is the only copy.
    assert not list(second.state_dir.glob("*.state.*"))


def test_the_anchors_credentials_never_reach_the_parent(anchored):
    w = anchored
    secret = w.users["anchor-writer"]["SecretAccessKey"].encode()
    # writer.secret is the administrator's input to encrypt-credentials; moto's log is AWS's side.
    scan_parent(w, {"the anchor's secret access key": secret, "consensus seed": w.seed},
                skip={w.base / "writer.secret", w.base / "moto.log", w.softsign})
    # The capture of the enclave's DynamoDB traffic: signed requests (the access key id, SigV4), never the secret.
    traffic = bytes(w.recorder.captured)
    assert b"UpdateItem" in traffic and w.users["anchor-writer"]["AccessKeyId"].encode() in traffic
    for form in secret_forms(secret) | secret_forms(w.seed):
        assert form not in traffic
