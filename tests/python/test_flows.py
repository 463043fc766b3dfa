"""The original documents' flows, with real processes:

- two enclaves from two images under the two-enclave document's Deny policy:
  the custody keys are set up in two steps (the administrator creates them,
  both enclaves' measured configurations pin them, enclave 2's also trusts
  enclave 1's records, then the final policies name the measured PCRs);
  enclave 1 generates, the parent stores the record in DynamoDB (moto's
  server) and SQLite, enclave 2 signs, the parent verifies;
- the lock-out document: a seed encrypted by the administrator for import
  under dev up's custody key (no root statement; the administrator locked
  out), kept in Secrets Manager (moto), decrypted by the enclave and used to
  sign a transaction;
- the DynamoDB store across moto going away and coming back.
"""

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from eth_account import Account

from conftest import ADMIN, INSTANCE, secret_forms

TABLE = "nekms-keys"


@pytest.fixture(scope="module")
def world(dev_up):
    u = dev_up("flows")
    u.moto = u.start_moto()
    u.env["NEKMS_STORE"] = f"sqlite:{u.base / 'keys.db'}"
    return u


def measure(u, name, image_bytes, custody_keys, origin_pcr0=()):
    """Another simulated enclave's image and measured configuration (pinning `custody_keys`, trusting records
    from the images `origin_pcr0`): the paths and the PCRs `nekms pcr sim` prints for them."""
    image = u.base / f"{name}.eif"
    image.write_bytes(image_bytes)
    config = u.base / f"{name}.toml"
    text = "custody-kms-keys = [" + ", ".join(json.dumps(k) for k in custody_keys) + "]\n"
    if origin_pcr0:
        text += "origin-pcr0 = [" + ", ".join(json.dumps(p) for p in origin_pcr0) + "]\n"
    config.write_text(text)
    sim = json.loads(u.nekms("pcr", "sim", str(image), "--config", str(config)).stdout)["Measurements"]
    return image, config, {f"PCR{i}": sim[f"PCR{i}"].lower() for i in range(3)}


def start_enclave(u, name, image, config):
    """Another simulated enclave, from another image and configuration, on the same proxy (stopped with dev up)."""
    rpc = u.base / f"{name}.sock"
    u.start([*u.enclave_args(config), "--image", str(image), "--rpc", f"unix://{rpc}",
             "--kmstool", f"unix://{u.base / (name + '-kmstool.sock')}"], rpc, name, u.base / f"{name}.log")
    address = f"unix://{rpc}"
    u.nekms("enclave", "credentials", "--enclave", address)
    pcrs = json.loads(u.nekms("enclave", "describe", "--json", "--enclave", address).stdout)["pcrs"]
    return address, pcrs


def deny_unless(actions, pcrs, one_statement):
    """The two-enclave document's Deny: StringNotEqualsIgnoreCase on PCR0/1/2."""
    keys = {f"kms:RecipientAttestation:PCR{i}": pcrs[f"PCR{i}"] for i in range(3)}
    if one_statement:
        return [{"Effect": "Deny", "Principal": {"AWS": INSTANCE}, "Action": actions, "Resource": "*",
                 "Condition": {"StringNotEqualsIgnoreCase": keys}}]
    return [{"Effect": "Deny", "Principal": {"AWS": INSTANCE}, "Action": actions, "Resource": "*",
             "Condition": {"StringNotEqualsIgnoreCase": {k: v}}} for k, v in keys.items()]


def bootstrap_policy():
    """Step 1: the administrator may only look at the key and set its policy once the images are measured."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Bootstrap", "Effect": "Allow", "Principal": {"AWS": ADMIN},
         "Action": ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:PutKeyPolicy"], "Resource": "*"}]}


def two_enclave_policy(e1, e2, one_statement):
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Instance role", "Effect": "Allow", "Principal": {"AWS": INSTANCE},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom", "kms:Encrypt"], "Resource": "*"},
        {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"},
        *deny_unless(["kms:GenerateDataKey", "kms:GenerateRandom"], e1, one_statement),
        *deny_unless(["kms:Decrypt"], e2, one_statement)]}


def test_two_enclaves_generate_store_sign_and_verify(world, tmp_path):
    u = world
    admin = u.client("admin")
    # Step 1: the custody keys, before anything can use them. `key` gets nekms's policy (one Deny per PCR),
    # `literal` the document's policy as written (below).
    key, literal = (admin.create_key(Policy=json.dumps(bootstrap_policy()))["KeyMetadata"]["Arn"] for _ in range(2))
    # Step 2: both enclaves' measured configurations pin them; enclave 2's also trusts records enclave 1 makes.
    image1, config1, pcrs1 = measure(u, "enclave1", b"the generating enclave's image", [key, literal])
    image2, config2, pcrs2 = measure(u, "enclave2", b"the signing enclave's image", [key, literal], [pcrs1["PCR0"]])
    assert pcrs1["PCR0"] != pcrs2["PCR0"] and pcrs1["PCR2"] != pcrs2["PCR2"]
    assert pcrs1["PCR1"] == pcrs2["PCR1"], "simulated images share the kernel, as real ones built by one nitro-cli do"
    # Step 3: the final policies name the measured images.
    admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(two_enclave_policy(pcrs1, pcrs2, one_statement=False)))
    admin.put_key_policy(KeyId=literal, PolicyName="default", Policy=json.dumps(two_enclave_policy(pcrs1, pcrs2, one_statement=True)))
    e1 = start_enclave(u, "enclave1", image1, config1)
    e2 = start_enclave(u, "enclave2", image2, config2)
    for (_, reported), measured in ((e1, pcrs1), (e2, pcrs2)):
        assert {k: reported[k] for k in measured} == measured, "the enclaves report what nekms pcr sim measured"

    dynamo = f"dynamodb:{TABLE}"
    assert "created" in u.nekms("store", "create-table", "--store", dynamo).stdout
    assert "already exists" in u.nekms("store", "create-table", "--store", dynamo).stdout

    # Enclave 1 generates (with KMS GenerateRandom, as the document does); the parent stores the record.
    rec = json.loads(u.nekms("key", "create", "--enclave", e1[0], "--store", dynamo, "--name", "u001", "--spec", "secp256k1",
                             "--kms-key", key, "--entropy", "kms", "--json").stdout)
    item = u.moto.client("dynamodb").get_item(TableName=TABLE, Key={"key_id": {"S": "u001"}})["Item"]
    assert set(item) >= {"encrypted_data_key", "sealed_private_key", "public_key"}
    assert base64.b64decode(rec["public_key"]) == item["public_key"]["B"]
    # ... and the same record in SQLite.
    f = tmp_path / "u001.json"
    f.write_text(u.nekms("key", "show", "u001", "--store", dynamo, "--json").stdout)
    sqlite = f"sqlite:{tmp_path / 'keys.db'}"
    # Added after checking its origin document: made by enclave 1's image.
    added = u.nekms("key", "add", "--dev-root", "--pcr0", pcrs1["PCR0"], "--store", sqlite, str(f)).stdout
    assert pcrs1["PCR0"] in added, added
    # Trusting only another image (dev up's enclave), the record's origin is refused.
    r = u.nekms("key", "add", "--dev-root", "--pcr0", u.info["pcr0"], "--store", f"sqlite:{tmp_path / 'other.db'}", str(f), check=False)
    assert r.returncode != 0 and "rule provenance" in r.stderr, r.stderr

    # Enclave 2 signs "Hello World" from either store; the parent verifies with the public key.
    for store in (dynamo, sqlite):
        s = json.loads(u.nekms("sign", "--enclave", e2[0], "--store", store, "--key", "u001", "--message", "Hello World", "--json").stdout)
        u.nekms("verify", "--store", store, "--key", "u001", "--message", "Hello World", "--signature", s["signature"])
        public = serialization.load_der_public_key(item["public_key"]["B"])
        public.verify(bytes.fromhex(s["signature"]), b"Hello World", ec.ECDSA(hashes.SHA256()))

    # Enclave 1 cannot sign, enclave 2 cannot generate, the instance role alone cannot decrypt.
    r = u.nekms("sign", "--enclave", e1[0], "--store", dynamo, "--key", "u001", "--message", "x", check=False)
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
    r = u.nekms("key", "create", "--enclave", e2[0], "--store", dynamo, "--name", "u002", "--spec", "secp256k1", "--kms-key", key, check=False)
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
    assert u.nekms("key", "show", "u002", "--store", dynamo, check=False).returncode != 0, "nothing stored after a refusal"
    with pytest.raises(Exception) as denied:
        u.client("instance").decrypt(CiphertextBlob=item["encrypted_data_key"]["B"], EncryptionContext=rec["encryption_context"])
    assert "AccessDenied" in str(denied.value)

    # The document's policy as written puts PCR0, PCR1 and PCR2 in one condition, which KMS
    # ANDs: with the kernel (PCR1) shared, the Deny never matches another image of the same
    # kernel, so enclave 1 can decrypt too. nekms's policy gives each PCR its own statement.
    u.nekms("key", "create", "--enclave", e1[0], "--store", sqlite, "--name", "literal", "--spec", "p256", "--kms-key", literal)
    r = u.nekms("sign", "--enclave", e1[0], "--store", sqlite, "--key", "literal", "--message", "x", check=False)
    assert r.returncode == 0, "the one-statement Deny lets enclave 1 decrypt when PCR1 is shared"


def test_lockout_seed_in_secrets_manager_signs_a_transaction(world, tmp_path):
    u = world
    # dev up's custody key: its final policy has no statement for the account root, lets only this enclave
    # image decrypt, and locks the administrator out (it may only manage the key and encrypt imports).
    key = u.info["custody_kms_key"]
    seed = bytes.fromhex("8da4ef21b864d2cc526dbdb2a120bd2874c36c9d0a1fb7f8c63d7f7a8b41de8f")
    context = {"nekms:purpose": "import", "nekms:key-id": "lockout", "nekms:key-spec": "secp256k1"}
    blob = u.client("admin").encrypt(KeyId=key, Plaintext=seed.hex().encode(), EncryptionContext=context)["CiphertextBlob"]
    sm = u.moto.client("secretsmanager")
    sm.create_secret(Name="secretlock", SecretString=base64.b64encode(blob).decode())

    # Root, the instance role and the administrator are all denied.
    for who in ("root", "instance", "admin"):
        with pytest.raises(Exception) as denied:
            u.client(who).decrypt(CiphertextBlob=blob, EncryptionContext=context)
        assert "AccessDenied" in str(denied.value), who
    # The administrator cannot reopen the policy, nor can the instance role mint an import ciphertext.
    with pytest.raises(Exception) as denied:
        u.client("admin").put_key_policy(KeyId=key, PolicyName="default", BypassPolicyLockoutSafetyCheck=True, Policy=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]}))
    assert "AccessDenied" in str(denied.value)
    with pytest.raises(Exception) as denied:
        u.client("instance").encrypt(KeyId=key, Plaintext=seed.hex().encode(), EncryptionContext=context)
    assert "AccessDenied" in str(denied.value)
    # The parent asking the enclave for the import's plaintext is refused by the enclave itself (rule reserved-context).
    r = u.nekms("enclave", "decrypt", "--encryption-context", "nekms:purpose=import", "--encryption-context", "nekms:key-id=lockout",
                base64.b64encode(blob).decode(), check=False)
    assert r.returncode != 0 and "rule reserved-context" in r.stderr, r.stderr

    dynamo = f"dynamodb:{TABLE}"
    u.nekms("store", "create-table", "--store", dynamo)
    # Imported under another name: the import context binds "lockout".
    r = u.nekms("key", "import", "--store", dynamo, "--name", "lockout-copy", "--spec", "secp256k1", "--secret-id", "secretlock", check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    u.nekms("key", "import", "--store", dynamo, "--name", "lockout", "--spec", "secp256k1", "--kms-key", key, "--secret-id", "secretlock")
    f = tmp_path / "lockout.json"
    f.write_text(u.nekms("key", "show", "lockout", "--store", dynamo, "--json").stdout)
    # The parent accepts an imported record only when told to (its secret is as safe as the administrator kept it).
    r = u.nekms("key", "add", "--dev-root", "--pcr0", u.info["pcr0"], str(f), check=False)
    assert r.returncode != 0 and "rule import-disabled" in r.stderr, r.stderr
    u.nekms("key", "add", "--dev-root", "--pcr0", u.info["pcr0"], "--allow-imported", str(f))
    address = u.nekms("key", "public-key", "lockout", "--address").stdout.strip()
    assert address == Account.from_key(seed).address
    tx = tmp_path / "tx.json"
    tx.write_text(json.dumps({"chainId": 1, "nonce": 0, "to": "0x000000000000000000000000000000000000dEaD", "value": 1,
                              "gas": 21000, "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9}))
    s = json.loads(u.nekms("sign", "--key", "lockout", "--eth-tx", str(tx), "--json").stdout)
    assert Account.recover_transaction(bytes.fromhex(s["raw_transaction"])) == address

    r = u.nekms("key", "import", "--name", "lockout2", "--spec", "secp256k1", "--secret-id", "no-such-secret", check=False)
    assert r.returncode != 0 and "ResourceNotFound" in r.stderr, r.stderr

    # No form of the seed in the DynamoDB items, the SQLite file, or the logs.
    items = u.moto.client("dynamodb").scan(TableName=TABLE)["Items"]
    item_bytes = b"".join(v.get("B", b"") or str(v).encode() for i in items for v in i.values())
    assert any(i["key_id"]["S"] == "lockout" for i in items)
    for form in secret_forms(seed):
        for haystack in (item_bytes, u.log.read_bytes(), (u.base / "moto.log").read_bytes(), (u.base / "keys.db").read_bytes()):
            assert form not in haystack


def test_the_dynamodb_store_reports_moto_being_down_as_retryable(world, tmp_path):
    u = world
    store = "dynamodb:nekms-restart"
    u.nekms("store", "create-table", "--store", store)
    key = u.info["custody_kms_key"]
    u.nekms("key", "create", "--store", store, "--name", "r1", "--spec", "ed25519", "--kms-key", key)
    saved = tmp_path / "r1.json"
    saved.write_text(u.nekms("key", "show", "r1", "--store", store, "--json").stdout)
    # Listing pages through more records than a page holds.
    for i in range(4):
        u.nekms("key", "create", "--store", store, "--name", f"page{i}", "--spec", "ed25519", "--kms-key", key)
    paged = json.loads(u.nekms("key", "list", "--store", store, "--page-size", "2", "--json").stdout)
    assert sorted(k["key_id"] for k in paged) == ["page0", "page1", "page2", "page3", "r1"]
    rec = json.loads(saved.read_text())
    u.moto.stop()
    r = u.nekms("key", "list", "--store", store, check=False)
    assert r.returncode != 0 and "retry later" in r.stderr, r.stderr
    # Creating a key while the store is down fails before the enclave makes anything.
    r = u.nekms("key", "create", "--store", store, "--name", "r2", "--spec", "p256", "--kms-key", key, check=False)
    assert r.returncode != 0 and "retry later" in r.stderr, r.stderr
    u.moto.start()
    # moto keeps nothing across a restart: recreate the table and put the records back.
    u.nekms("store", "create-table", "--store", store)
    u.nekms("key", "add", "--dev-root", "--pcr0", u.info["pcr0"], "--store", store, str(saved))
    listed = json.loads(u.nekms("key", "list", "--store", store, "--json").stdout)
    assert [k["key_id"] for k in listed] == ["r1"]
    s = json.loads(u.nekms("sign", "--store", store, "--key", "r1", "--message", "back", "--json").stdout)
    u.nekms("verify", "--store", store, "--key", "r1", "--message", "back", "--signature", s["signature"])
    assert rec["key_id"] == "r1"
