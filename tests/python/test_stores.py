"""Key stores as an operator meets them, on SQLite and on DynamoDB (moto's
server): one damaged record is listed as damaged and the others stay listed
and usable; a read-only command on a mistyped store creates nothing;
`key delete` schedules deletion as KMS does (7-30 days), the record signs
nothing meanwhile, `key cancel-deletion` brings it back, and `--now` needs
a confirmation or `--yes`.
"""

import json
import sqlite3

import boto3
import pytest


@pytest.fixture(scope="module")
def up(dev_up):
    u = dev_up("stores")
    u.start_moto()
    u.nekms("store", "create-table", "--store", "dynamodb:nekms-stores")
    return u


STORES = ["sqlite", "dynamodb"]


def url(up, kind):
    return f"sqlite:{up.base / 'stores.db'}" if kind == "sqlite" else "dynamodb:nekms-stores"


def damage(up, kind, name):
    """What a disk error or a careless hand does to one record."""
    if kind == "sqlite":
        with sqlite3.connect(up.base / "stores.db") as db:
            db.execute("UPDATE key_records SET encryption_context = 'not json' WHERE key_id = ?", (name,))
    else:
        ddb = boto3.client("dynamodb", endpoint_url=up.env["NEKMS_STORE_ENDPOINT"], region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        ddb.update_item(TableName="nekms-stores", Key={"key_id": {"S": name}}, UpdateExpression="SET created_at = :s",
                        ExpressionAttributeValues={":s": {"S": "yesterday"}})


@pytest.mark.parametrize("kind", STORES)
def test_a_damaged_record_is_listed_as_damaged_and_the_others_still_work(up, kind):
    store = url(up, kind)
    for name in (f"{kind}-a", f"{kind}-b", f"{kind}-c"):
        up.nekms("key", "create", "--store", store, "--name", name, "--spec", "p256")
    damage(up, kind, f"{kind}-b")
    listed = json.loads(up.nekms("key", "list", "--store", store, "--json").stdout)
    good = sorted(k["key_id"] for k in listed if "damaged" not in k)
    bad = [k for k in listed if "damaged" in k]
    assert {f"{kind}-a", f"{kind}-c"} <= set(good) and f"{kind}-b" not in good, listed
    assert [k["key_id"] for k in bad] == [f"{kind}-b"] and bad[0]["damaged"], bad
    text = up.nekms("key", "list", "--store", store).stdout
    assert f"{kind}-b" in text and "DAMAGED" in text, text
    up.nekms("sign", "--store", store, "--key", f"{kind}-a", "--message", "still works")
    r = up.nekms("sign", "--store", store, "--key", f"{kind}-b", "--message", "x", check=False)
    assert r.returncode == 5 and "damaged" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("kind", STORES)
def test_deletion_is_scheduled_signs_nothing_meanwhile_and_can_be_cancelled(up, kind):
    store = url(up, kind)
    name = f"{kind}-del"
    up.nekms("key", "create", "--store", store, "--name", name, "--spec", "ed25519")
    r = up.nekms("key", "delete", "--store", store, name, "--pending-days", "3", check=False)
    assert r.returncode == 2 and "7 to 30 days" in r.stderr, r.stderr
    out = up.nekms("key", "delete", "--store", store, name, "--pending-days", "7").stdout
    assert "scheduled for deletion at" in out and "(7 days)" in out, out
    r = up.nekms("sign", "--store", store, "--key", name, "--message", "x", check=False)
    assert r.returncode == 4 and "scheduled for deletion" in r.stderr and f"cancel-deletion {name}" in r.stderr, r.stderr
    listed = {k["key_id"]: k for k in json.loads(up.nekms("key", "list", "--store", store, "--json").stdout)}
    assert listed[name]["pending_deletion"].endswith("Z"), listed[name]
    assert "scheduled for deletion" in up.nekms("key", "show", "--store", store, name).stderr
    up.nekms("key", "cancel-deletion", "--store", store, name)
    up.nekms("sign", "--store", store, "--key", name, "--message", "back")
    # --now asks; without a terminal it needs --yes, and nothing is deleted until then.
    r = up.nekms("key", "delete", "--store", store, name, "--now", check=False)
    assert r.returncode == 2 and "--yes" in r.stderr, r.stderr
    up.nekms("sign", "--store", store, "--key", name, "--message", "still here")
    up.nekms("key", "delete", "--store", store, name, "--now", "--yes")
    r = up.nekms("sign", "--store", store, "--key", name, "--message", "x", check=False)
    assert r.returncode == 3, (r.returncode, r.stderr)


def test_reading_a_mistyped_store_creates_nothing(up, tmp_path):
    missing = tmp_path / "mistyped" / "dir" / "keys.db"
    for args in (["key", "list"], ["key", "show", "k"], ["sign", "--key", "k", "--message", "x"]):
        r = up.nekms(*args, "--store", f"sqlite:{missing}", check=False)
        assert r.returncode == 3 and "no key store at" in r.stderr, (args, r.returncode, r.stderr)
    assert not (tmp_path / "mistyped").exists()


@pytest.mark.parametrize("kind", STORES)
def test_aliases_and_key_metadata_of_the_kms_api_live_beside_the_records(up, kind):
    """The agent's KMS API keeps its aliases, and keys' tags and disabled state, in the store: a name taken once, moved,
    deleted; listings of records never show them (on DynamoDB they are items of the same table)."""
    from conftest import NEKMS, free_port, port_open
    store = url(up, kind)
    secret, access = up.base / f"{kind}.secret", up.base / f"{kind}-access.toml"
    secret.write_text("s" * 40)
    secret.chmod(0o600)
    access.write_text(f'[[client]]\nname = "ops"\nkms-access-key-id = "AKIANEKMSSTORES00001"\nkms-secret-file = "{secret}"\n'
                      f'keys = ["*"]\nmanage = true\nkms-key-prefix = "{kind}-kms-"\ndelete = true\n')
    access.chmod(0o600)
    port, ready = free_port(), up.base / f"{kind}-agent.json"
    agent = up.start([NEKMS, "agent", "--listen", "127.0.0.1:0", "--access", str(access), "--store", store, "--no-credentials",
                      "--ready-file", str(ready), "--kms-api", f"127.0.0.1:{port}"], lambda: ready.exists() and port_open(port),
                     "the agent", up.base / f"{kind}-agent.log")
    try:
        kms = boto3.client("kms", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
                           aws_access_key_id="AKIANEKMSSTORES00001", aws_secret_access_key="s" * 40)
        a, b = (kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"] for _ in range(2))
        kms.create_alias(AliasName="alias/ops", TargetKeyId=a)
        with pytest.raises(kms.exceptions.AlreadyExistsException):
            kms.create_alias(AliasName="alias/ops", TargetKeyId=b)
        assert kms.describe_key(KeyId="alias/ops")["KeyMetadata"]["KeyId"] == a
        kms.update_alias(AliasName="alias/ops", TargetKeyId=b)
        assert kms.describe_key(KeyId="alias/ops")["KeyMetadata"]["KeyId"] == b
        assert [x["TargetKeyId"] for x in kms.list_aliases(KeyId=b)["Aliases"]] == [b]
        listed = json.loads(up.nekms("key", "list", "--store", store, "--json").stdout)
        # (the first test of this module damaged {kind}-b on purpose)
        assert {a, b} <= {k["key_id"] for k in listed} and not [k for k in listed if "alias" in k["key_id"] or k["key_id"].startswith("#")], listed
        assert [k["key_id"] for k in listed if "damaged" in k] in ([], [f"{kind}-b"]), listed
        kms.delete_alias(AliasName="alias/ops")
        with pytest.raises(kms.exceptions.NotFoundException):
            kms.describe_key(KeyId="alias/ops")
        # A key's tags and disabled state live beside it too, and are not listed as records either.
        kms.tag_resource(KeyId=a, Tags=[{"TagKey": "store", "TagValue": kind}])
        kms.disable_key(KeyId=a)
        assert kms.list_resource_tags(KeyId=a)["Tags"] == [{"TagKey": "store", "TagValue": kind}]
        assert kms.describe_key(KeyId=a)["KeyMetadata"]["KeyState"] == "Disabled"
        listed = json.loads(up.nekms("key", "list", "--store", store, "--json").stdout)
        assert not [k for k in listed if "meta" in k["key_id"] or k["key_id"].startswith("#")], listed
        assert [k["key_id"] for k in listed if "damaged" in k] in ([], [f"{kind}-b"]), listed
    finally:
        agent.terminate()
        agent.wait(10)
