"""AWS KMS's own API for enclave keys (`nekms agent --kms-api`), driven by
clients nobody on this project wrote: the aws CLI and boto3 with
`--endpoint-url`, signatures checked by OpenSSL and `cryptography` against
GetPublicKey's SPKI, against a real simulated enclave under `dev up`.

The parent's other users play the attacker: a caller's key pair used on
another caller's key (by id, ARN or alias), aliases aimed across callers,
a caller that may not manage keys creating or deleting one, requests
signed with a wrong secret, re-signed bodies, old signatures replayed, a
consensus key through Sign. And the same client code against `nekms-kms`'s
own asymmetric keys gives the same fields and error types.
"""

import base64
import datetime
import hashlib
import http.client
import json
import os
import pathlib
import sqlite3
import subprocess
import unittest.mock

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from conftest import NEKMS, ROOT, Rpc, cbor_record, free_port, port_open, wait_for

ACCOUNT = "111122223333"
CALLERS = {
    # name: (access key id, keys, manage, prefix, delete, decrypt)
    "alice": ("AKIANEKMSALICE000001", ["alice-*"], True, "alice-", True, True),
    "bob": ("AKIANEKMSBOB00000001", ["bob-*"], True, "bob-", False, True),
    "auditor": ("AKIANEKMSAUDITOR0001", ["alice-*"], False, "", False, False),
}
SPECS = {
    "ECC_SECG_P256K1": "ECDSA_SHA_256",
    "ECC_NIST_P256": "ECDSA_SHA_256",
    "ECC_NIST_P384": "ECDSA_SHA_384",
    "ECC_NIST_EDWARDS25519": "ED25519_SHA_512",
    "RSA_2048": "RSASSA_PKCS1_V1_5_SHA_256",
}


@pytest.fixture(scope="module")
def api(dev_up):
    u = dev_up("kms-api")
    u.env["NEKMS_STORE"] = f"sqlite:{u.base / 'keys.db'}"
    lines = []
    u.secrets = {}
    for name, (akid, keys, manage, prefix, delete, decrypt) in CALLERS.items():
        secret = base64.b64encode(os.urandom(30)).decode()
        path = u.base / f"{name}.secret"
        path.write_text(secret + "\n")
        path.chmod(0o600)
        u.secrets[name] = (akid, secret)
        lines.append(f'[[client]]\nname = "{name}"\nkms-access-key-id = "{akid}"\nkms-secret-file = "{path}"\n'
                     f'keys = {json.dumps(keys)}\nmanage = {str(manage).lower()}\nkms-key-prefix = "{prefix}"\ndelete = {str(delete).lower()}\n'
                     f'decrypt = {str(decrypt).lower()}\n')
    access = u.base / "access.toml"
    access.write_text("\n".join(lines))
    access.chmod(0o600)
    u.port, ready = free_port(), u.base / "agent.json"
    u.start([NEKMS, "agent", "--listen", "127.0.0.1:0", "--access", str(access), "--no-credentials", "--ready-file", str(ready),
             "--kms-api", f"127.0.0.1:{u.port}", "--kms-account", ACCOUNT], lambda: ready.exists() and port_open(u.port),
            "the agent", u.base / "agent.log")
    u.url = f"http://127.0.0.1:{u.port}"
    return u


def kms(api, who="alice", region="us-east-1"):
    akid, secret = api.secrets[who]
    return boto3.client("kms", region_name=region, endpoint_url=api.url, aws_access_key_id=akid, aws_secret_access_key=secret)


def aws(api, who, *args, check=True):
    akid, secret = api.secrets[who]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": akid, "AWS_SECRET_ACCESS_KEY": secret, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    env.pop("AWS_SESSION_TOKEN", None)
    r = subprocess.run(["aws", "--endpoint-url", api.url, "--output", "json", "kms", *args], capture_output=True, text=True, env=env,
                       timeout=120)
    assert not check or r.returncode == 0, r.stderr
    return r


def error_type(call):
    with pytest.raises(ClientError) as e:
        call()
    return e.value.response["Error"]["Code"]


def openssl_verify(tmp_path, pem, algorithm, message, signature):
    """OpenSSL's verdict on a KMS signature over `message`."""
    (tmp_path / "pub.pem").write_bytes(pem)
    (tmp_path / "msg").write_bytes(message)
    (tmp_path / "sig").write_bytes(signature)
    if algorithm == "ED25519_SHA_512":
        cmd = ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg", "-sigfile", "sig"]
    else:
        digest = "-sha" + algorithm.rsplit("_", 1)[1]
        cmd = ["openssl", "dgst", digest, "-verify", "pub.pem", "-signature", "sig"]
        if "PSS" in algorithm:
            cmd += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:digest"]
        cmd += ["msg"]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)


def test_the_aws_cli_creates_aliases_signs_and_openssl_verifies_every_spec(api, tmp_path):
    message = b"a message the aws CLI sends"
    for spec, algorithm in SPECS.items():
        meta = json.loads(aws(api, "alice", "create-key", "--key-spec", spec, "--key-usage", "SIGN_VERIFY").stdout)["KeyMetadata"]
        assert meta["KeyId"].startswith("alice-") and meta["Arn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{meta['KeyId']}"
        assert meta["KeySpec"] == spec and meta["KeyUsage"] == "SIGN_VERIFY" and meta["KeyState"] == "Enabled"
        alias = f"alias/alice-{spec.lower()}"
        aws(api, "alice", "create-alias", "--alias-name", alias, "--target-key-id", meta["KeyId"])
        public = json.loads(aws(api, "alice", "get-public-key", "--key-id", alias).stdout)
        assert algorithm in public["SigningAlgorithms"] and public["KeyId"] == meta["Arn"]
        pem = serialization.load_der_public_key(base64.b64decode(public["PublicKey"])).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (tmp_path / "m.bin").write_bytes(message)
        out = json.loads(aws(api, "alice", "sign", "--key-id", alias, "--message", f"fileb://{tmp_path / 'm.bin'}",
                             "--message-type", "RAW", "--signing-algorithm", algorithm).stdout)
        signature = base64.b64decode(out["Signature"])
        r = openssl_verify(tmp_path, pem, algorithm, message, signature)
        assert r.returncode == 0 and ("Verified OK" in r.stdout or "Verified Successfully" in r.stdout), (spec, r.stdout, r.stderr)
        assert openssl_verify(tmp_path, pem, algorithm, message + b"!", signature).returncode != 0
        # The same endpoint's Verify agrees; a signature over another message is KMSInvalidSignatureException.
        v = json.loads(aws(api, "alice", "verify", "--key-id", meta["KeyId"], "--message", f"fileb://{tmp_path / 'm.bin'}",
                           "--message-type", "RAW", "--signing-algorithm", algorithm, "--signature",
                           f"fileb://{tmp_path / 'sig'}").stdout)
        assert v["SignatureValid"] is True
        (tmp_path / "other.bin").write_bytes(b"another message")
        r = aws(api, "alice", "verify", "--key-id", meta["KeyId"], "--message", f"fileb://{tmp_path / 'other.bin'}",
                "--message-type", "RAW", "--signing-algorithm", algorithm, "--signature", f"fileb://{tmp_path / 'sig'}", check=False)
        assert r.returncode != 0 and "KMSInvalidSignatureException" in r.stderr, r.stderr


def test_boto3_digest_and_every_rsa_algorithm_verify_with_cryptography(api):
    c = kms(api)
    ec_key = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public = serialization.load_der_public_key(c.get_public_key(KeyId=ec_key)["PublicKey"])
    digest = hashlib.sha256(b"hashed elsewhere").digest()
    sig = c.sign(KeyId=ec_key, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    public.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    public.verify(sig, b"hashed elsewhere", ec.ECDSA(hashes.SHA256()))
    # A digest of the wrong length, and an algorithm the key does not have.
    assert error_type(lambda: c.sign(KeyId=ec_key, Message=digest[:31], MessageType="DIGEST",
                                     SigningAlgorithm="ECDSA_SHA_256")) == "ValidationException"
    assert error_type(lambda: c.sign(KeyId=ec_key, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")) == "InvalidKeyUsageException"
    rsa_key = c.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    public = serialization.load_der_public_key(c.get_public_key(KeyId=rsa_key)["PublicKey"])
    for bits, h in ((256, hashes.SHA256()), (384, hashes.SHA384()), (512, hashes.SHA512())):
        for kind in ("PKCS1_V1_5", "PSS"):
            algorithm = f"RSASSA_{kind}_SHA_{bits}"
            sig = c.sign(KeyId=rsa_key, Message=b"rsa message", SigningAlgorithm=algorithm)["Signature"]
            pad = padding.PKCS1v15() if kind == "PKCS1_V1_5" else padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH)
            public.verify(sig, b"rsa message", pad, h)


def test_a_caller_sees_and_uses_only_its_keys_and_aliases(api):
    alice, bob = kms(api, "alice"), kms(api, "bob")
    key = alice.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    alice.create_alias(AliasName="alias/alice-payments", TargetKeyId=key["KeyId"])
    # Bob's key pair on Alice's key: by id or ARN refused; by her alias, as if it did not exist; nothing listed.
    for key_id in (key["KeyId"], key["Arn"]):
        assert error_type(lambda: bob.sign(KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")) == "AccessDeniedException"
        assert error_type(lambda: bob.get_public_key(KeyId=key_id)) == "AccessDeniedException"
    for alias in ("alias/alice-payments", f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/alice-payments"):
        with pytest.raises(ClientError) as e:
            bob.sign(KeyId=alias, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
        assert e.value.response["Error"]["Code"] == "NotFoundException" and key["KeyId"] not in str(e.value), e.value
    assert key["KeyId"] not in {k["KeyId"] for k in bob.list_keys()["Keys"]}
    assert "alias/alice-payments" not in {a["AliasName"] for a in bob.list_aliases()["Aliases"]}
    assert key["KeyId"] in {k["KeyId"] for k in alice.list_keys()["Keys"]}
    # Bob cannot aim Alice's alias at his key, aim one of his at hers, delete hers, or take a name in her namespace.
    mine = bob.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    assert error_type(lambda: bob.update_alias(AliasName="alias/alice-payments", TargetKeyId=mine)) == "AccessDeniedException"
    assert error_type(lambda: bob.create_alias(AliasName="alias/bob-hers", TargetKeyId=key["KeyId"])) == "AccessDeniedException"
    assert error_type(lambda: bob.delete_alias(AliasName="alias/alice-payments")) == "NotFoundException"
    assert error_type(lambda: bob.create_alias(AliasName="alias/alice-treasury", TargetKeyId=mine)) == "AccessDeniedException"
    # Bob's own alias, to Alice, does not exist: it never leads her to his key.
    bob.create_alias(AliasName="alias/bob-treasury", TargetKeyId=mine)
    assert error_type(lambda: alice.sign(KeyId="alias/bob-treasury", Message=b"m", SigningAlgorithm="ECDSA_SHA_256")) == "NotFoundException"
    # The alias still names Alice's key, which signs for her.
    assert alice.sign(KeyId="alias/alice-payments", Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["KeyId"] == key["Arn"]
    # A caller that may not manage keys reads and signs, but creates, aliases and deletes nothing; Bob (manage,
    # no delete) deletes nothing either.
    auditor = kms(api, "auditor")
    assert auditor.describe_key(KeyId="alias/alice-payments")["KeyMetadata"]["KeyId"] == key["KeyId"]
    assert error_type(lambda: auditor.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")) == "AccessDeniedException"
    assert error_type(lambda: auditor.schedule_key_deletion(KeyId=key["KeyId"])) == "AccessDeniedException"
    assert error_type(lambda: auditor.create_alias(AliasName="alias/alice-a2", TargetKeyId=key["KeyId"])) == "AccessDeniedException"
    assert error_type(lambda: bob.schedule_key_deletion(KeyId=mine)) == "AccessDeniedException"
    # A key of another account or region is not found; an unknown one either.
    assert error_type(lambda: alice.describe_key(KeyId=f"arn:aws:kms:us-east-1:999999999999:key/{key['KeyId']}")) == "NotFoundException"
    assert error_type(lambda: alice.describe_key(KeyId="alice-no-such-key")) == "NotFoundException"


def signed_request(api, who, target, body, when=None, secret=None):
    """A KMS request signed by botocore's SigV4 signer (at `when`)."""
    akid, real = api.secrets[who]
    request = botocore.awsrequest.AWSRequest(method="POST", url=api.url + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": f"TrentService.{target}"})
    signer = botocore.auth.SigV4Auth(botocore.credentials.Credentials(akid, secret or real), "kms", "us-east-1")
    if when is None:
        signer.add_auth(request)
    else:
        with unittest.mock.patch("botocore.auth.get_current_datetime", lambda: when.replace(tzinfo=None)):
            signer.add_auth(request)
    return request


def send(api, request, body=None, host=None):
    c = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
    headers = dict(request.headers.items())
    if host:
        headers["Host"] = host
    c.request("POST", "/", body=body if body is not None else request.body, headers=headers)
    r = c.getresponse()
    out = (r.status, json.loads(r.read() or b"{}"))
    c.close()
    return out


def test_forged_stale_and_rewritten_requests_are_refused(api):
    key = kms(api).create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    body = json.dumps({"KeyId": key, "Message": base64.b64encode(b"pay 10").decode(), "SigningAlgorithm": "ECDSA_SHA_256"}).encode()
    good = signed_request(api, "alice", "Sign", body)
    assert send(api, good)[0] == 200
    # The same request again (within KMS's five minutes) is the same operation again, as with KMS: a new signature of "pay 10".
    assert send(api, good)[0] == 200
    # Its body changed under the same signature: refused.
    status, err = send(api, good, body=body.replace(base64.b64encode(b"pay 10"), base64.b64encode(b"pay 99")))
    assert (status, err["__type"]) == (400, "InvalidSignatureException"), err
    # Signed ten minutes ago: refused.
    old = signed_request(api, "alice", "Sign", body, when=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10))
    status, err = send(api, old)
    assert err["__type"] == "InvalidSignatureException" and "Signature expired" in err["message"], err
    # A wrong secret, an unknown key id, no signature at all.
    assert send(api, signed_request(api, "alice", "Sign", body, secret="x" * 40))[1]["__type"] == "InvalidSignatureException"
    api.secrets["mallory"] = ("AKIANEKMSMALLORY0001", "y" * 40)
    assert send(api, signed_request(api, "mallory", "Sign", body))[1]["__type"] == "UnrecognizedClientException"
    unsigned = botocore.awsrequest.AWSRequest(method="POST", url=api.url + "/", data=body, headers={
        "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.Sign"})
    assert send(api, unsigned)[1]["__type"] == "MissingAuthenticationTokenException"
    # A web page's request by DNS rebinding names another host: refused before anything else.
    status, err = send(api, good, host=f"evil.example:{api.port}")
    assert err["__type"] == "AccessDeniedException" and "loopback" in err["message"], err


def test_a_consensus_key_does_not_sign_through_the_kms_api(api):
    api.nekms("key", "create", "--name", "alice-consensus", "--spec", "ed25519", "--privval")
    c = kms(api)
    assert c.describe_key(KeyId="alice-consensus")["KeyMetadata"]["KeySpec"] == "ECC_NIST_EDWARDS25519"
    assert error_type(lambda: c.sign(KeyId="alice-consensus", Message=b"a vote", SigningAlgorithm="ED25519_SHA_512")) == \
        "InvalidKeyUsageException"
    # Nor is it deleted through it: its administrator does that.
    assert error_type(lambda: c.schedule_key_deletion(KeyId="alice-consensus")) == "AccessDeniedException"


def openssl_oaep_encrypt(tmp_path, pem, message, md):
    """OpenSSL's RSAES-OAEP (MGF1 over the same hash) to GetPublicKey's key."""
    (tmp_path / "enc.pem").write_bytes(pem)
    (tmp_path / "plain").write_bytes(message)
    subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", "enc.pem", "-in", "plain", "-out", "ct", "-pkeyopt",
                    "rsa_padding_mode:oaep", "-pkeyopt", f"rsa_oaep_md:{md}", "-pkeyopt", f"rsa_mgf1_md:{md}"], cwd=tmp_path, check=True)
    return (tmp_path / "ct").read_bytes()


def test_rsa_keys_made_to_decrypt_encrypt_and_decrypt_as_kms_does(api, tmp_path):
    """ENCRYPT_DECRYPT RSA keys: the aws CLI's encrypt and decrypt, ciphertexts
    OpenSSL and `cryptography` make from GetPublicKey decrypted, KMS's
    errors for a wrong algorithm, a wrong usage, an altered ciphertext."""
    message = b"a secret for the enclave's RSA key"
    (tmp_path / "m.bin").write_bytes(message)
    meta = json.loads(aws(api, "alice", "create-key", "--key-spec", "RSA_2048", "--key-usage", "ENCRYPT_DECRYPT").stdout)["KeyMetadata"]
    assert meta["KeyUsage"] == "ENCRYPT_DECRYPT" and meta["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    assert "SigningAlgorithms" not in meta
    key = meta["KeyId"]
    aws(api, "alice", "create-alias", "--alias-name", "alias/alice-decrypt", "--target-key-id", key)
    out = json.loads(aws(api, "alice", "encrypt", "--key-id", "alias/alice-decrypt", "--plaintext", f"fileb://{tmp_path / 'm.bin'}",
                         "--encryption-algorithm", "RSAES_OAEP_SHA_256").stdout)
    ciphertext = base64.b64decode(out["CiphertextBlob"])
    assert len(ciphertext) == 256 and out["EncryptionAlgorithm"] == "RSAES_OAEP_SHA_256" and out["KeyId"] == meta["Arn"]
    (tmp_path / "ct.bin").write_bytes(ciphertext)
    out = json.loads(aws(api, "alice", "decrypt", "--key-id", key, "--ciphertext-blob", f"fileb://{tmp_path / 'ct.bin'}",
                         "--encryption-algorithm", "RSAES_OAEP_SHA_256").stdout)
    assert base64.b64decode(out["Plaintext"]) == message and out["KeyId"] == meta["Arn"]

    # Anyone with GetPublicKey's SPKI encrypts; the enclave decrypts, SHA-1 and SHA-256, 2048 and 3072.
    c = kms(api)
    big = c.create_key(KeySpec="RSA_3072", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    for k in (key, big):
        public = c.get_public_key(KeyId=k)
        assert public["KeyUsage"] == "ENCRYPT_DECRYPT" and "RSAES_OAEP_SHA_1" in public["EncryptionAlgorithms"]
        spki = serialization.load_der_public_key(public["PublicKey"])
        pem = spki.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        ct = openssl_oaep_encrypt(tmp_path, pem, message, "sha256")
        assert c.decrypt(KeyId=k, CiphertextBlob=ct, EncryptionAlgorithm="RSAES_OAEP_SHA_256")["Plaintext"] == message
        ct1 = spki.encrypt(message, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        assert c.decrypt(KeyId=k, CiphertextBlob=ct1, EncryptionAlgorithm="RSAES_OAEP_SHA_1")["Plaintext"] == message
        # The wrong algorithm, or a changed byte, decrypts nothing, and says no more than that.
        assert error_type(lambda: c.decrypt(KeyId=k, CiphertextBlob=ct1, EncryptionAlgorithm="RSAES_OAEP_SHA_256")) == \
            "InvalidCiphertextException"
        altered = ct[:-1] + bytes([ct[-1] ^ 1])
        assert error_type(lambda: c.decrypt(KeyId=k, CiphertextBlob=altered, EncryptionAlgorithm="RSAES_OAEP_SHA_256")) == \
            "InvalidCiphertextException"

    # KMS's answers for what an RSA key does not do.
    signer = c.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    cases = [
        (lambda: c.encrypt(KeyId=key, Plaintext=message), "InvalidKeyUsageException"),  # SYMMETRIC_DEFAULT
        (lambda: c.encrypt(KeyId=key, Plaintext=b"x" * 191, EncryptionAlgorithm="RSAES_OAEP_SHA_256"), "ValidationException"),
        (lambda: c.encrypt(KeyId=key, Plaintext=message, EncryptionAlgorithm="RSAES_OAEP_SHA_256", EncryptionContext={"a": "b"}),
         "ValidationException"),
        (lambda: c.decrypt(CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256"), "ValidationException"),
        (lambda: c.sign(KeyId=key, Message=message, SigningAlgorithm="RSASSA_PSS_SHA_256"), "InvalidKeyUsageException"),
        (lambda: c.encrypt(KeyId=signer, Plaintext=message, EncryptionAlgorithm="RSAES_OAEP_SHA_256"), "InvalidKeyUsageException"),
        (lambda: c.decrypt(KeyId=signer, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256"), "InvalidKeyUsageException"),
        (lambda: c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="ENCRYPT_DECRYPT"), "ValidationException"),
        # Another caller's decryption key is not bob's to use, by id or by alias.
        (lambda: kms(api, "bob").decrypt(KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
         "AccessDeniedException"),
        (lambda: kms(api, "bob").decrypt(KeyId="alias/alice-decrypt", CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
         "NotFoundException"),
        # The auditor's globs cover alice's keys, but the access file does not let it decrypt.
        (lambda: kms(api, "auditor").decrypt(KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
         "AccessDeniedException"),
        # A dry run says only what the request would have done.
        (lambda: c.decrypt(KeyId=signer, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256", DryRun=True),
         "InvalidKeyUsageException"),
        (lambda: c.decrypt(KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256", DryRun=True),
         "DryRunOperationException"),
    ]
    for call, expected in cases:
        assert error_type(call) == expected
    c.disable_key(KeyId=key)
    assert error_type(lambda: c.decrypt(KeyId=key, CiphertextBlob=ciphertext, EncryptionAlgorithm="RSAES_OAEP_SHA_256")) == \
        "DisabledException"
    c.enable_key(KeyId=key)

    # A key made to decrypt signs nothing anywhere else either: not through the CLI (the general Sign), nor in a
    # PKCS#11 token, whose C_Decrypt would compute the raw RSA operation.
    r = api.nekms("sign", "--key", key, "--message", "not a signature", check=False)
    assert r.returncode == 4 and "rule key-usage" in r.stderr and "only to decrypt" in r.stderr, r.stderr
    pin = tmp_path / "pin"
    pin.write_text("123456")
    pin.chmod(0o600)
    for extra in ([], ["--decrypt", key]):
        r = api.nekms("p11", "token", "add", "--label", "decrypt-only", "--pin-file", str(pin), "--key", f"{key}:01", *extra, check=False)
        assert r.returncode == 4 and "rule key-usage" in r.stderr, r.stderr


def test_the_parent_decrypts_only_with_keys_made_to_decrypt(api):
    """The parent, as root, on the enclave's own RPC: KeyDecrypt with a key
    made to sign is refused by rule key-usage; a sign-only record edited to
    claim decryption does not open (KMS holds its data key to the original
    context); a key made to decrypt decrypts, OAEP only."""
    c = kms(api)
    decrypter = c.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    signer = c.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    record = {k: cbor_record(json.loads(api.nekms("key", "show", k, "--json").stdout)) for k in (decrypter, signer)}
    secret = b"only the caller's"
    spki = {k: serialization.load_der_public_key(record[k]["public_key"]) for k in record}
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    rpc = Rpc(api.info["rpc"])

    kind, value = rpc.call({"KeyDecrypt": {"record": record[decrypter], "hash": "Sha256", "ciphertext": spki[decrypter].encrypt(secret, oaep)}})
    assert (kind, bytes(value.get("Decrypted", {}).get("plaintext", b""))) == ("Ok", secret), value
    kind, err = rpc.call({"Sign": {"record": record[decrypter], "payload": {"message": b"a signature by another name"}}})
    assert kind == "Err" and "rule key-usage" in err["message"], err
    kind, err = rpc.call({"KeyDecrypt": {"record": record[signer], "hash": "Sha256", "ciphertext": spki[signer].encrypt(secret, oaep)}})
    assert kind == "Err" and "rule key-usage" in err["message"], err
    claims = {**record[signer], "encryption_context": {**record[signer]["encryption_context"], "nekms:usage": "sign,decrypt"}}
    kind, err = rpc.call({"KeyDecrypt": {"record": claims, "hash": "Sha256", "ciphertext": spki[signer].encrypt(secret, oaep)}})
    assert kind == "Err" and "rule key-usage" not in err["message"], err
    # PKCS#1 v1.5 is no hash KeyDecrypt takes: no padding oracle, no raw private operation.
    for hash_ in ("Pkcs1", "Raw"):
        kind, err = rpc.call({"KeyDecrypt": {"record": record[decrypter], "hash": hash_, "ciphertext": b"\x01" * 256}})
        assert kind == "Err", err
    # The trail records each decryption, carried out or refused, with the ciphertext's digest.
    def decisions():
        lines = [json.loads(l) for l in pathlib.Path(api.info["audit"]).read_text().splitlines() if l.strip()]
        return {(d.get("key"), d["result"].split(":")[0]) for d in lines if d["kind"] == "decision" and d["op"] == "KeyDecrypt"}
    wait_for(lambda: {(decrypter, "ok"), (signer, "refused")} <= decisions(), what="the trail's KeyDecrypt decisions", timeout=15)


def test_a_public_key_planted_in_the_store_is_never_handed_out(api):
    """Whoever can write the store (root, or anyone with the table's rights)
    puts its own RSA public key in a decryption key's record: GetPublicKey,
    Encrypt and Verify answer from a record only once the enclave has opened
    that exact record, so none of them uses the planted key (the agent's own
    /public-key neither: test_agent.py). The record put back, all answer again."""
    c = kms(api)
    key = c.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    signer = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    signature = c.sign(KeyId=signer, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    mine_ec = ec.generate_private_key(ec.SECP256R1())
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    db = sqlite3.connect(api.base / "keys.db")
    real = dict(db.execute("SELECT key_id, public_key FROM key_records WHERE key_id IN (?, ?)", (key, signer)).fetchall())
    try:
        with db:
            db.execute("UPDATE key_records SET public_key = ? WHERE key_id = ?", (mine.public_key().public_bytes(*der), key))
            db.execute("UPDATE key_records SET public_key = ? WHERE key_id = ?", (mine_ec.public_key().public_bytes(*der), signer))
        forged = mine_ec.sign(b"forged", ec.ECDSA(hashes.SHA256()))
        cases = [
            lambda: c.get_public_key(KeyId=key),
            lambda: c.encrypt(KeyId=key, Plaintext=b"for the enclave only", EncryptionAlgorithm="RSAES_OAEP_SHA_256"),
            lambda: c.get_public_key(KeyId=signer),
            lambda: c.verify(KeyId=signer, Message=b"forged", Signature=forged, SigningAlgorithm="ECDSA_SHA_256"),
        ]
        for call in cases:
            assert error_type(call) == "KMSInvalidStateException"
        r = api.nekms("key", "public-key", key, "--pem")
        assert mine.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode() in r.stdout, \
            "the CLI reads the store as it is; key verify-origin is its check"
    finally:
        with db:
            for k, v in real.items():
                db.execute("UPDATE key_records SET public_key = ? WHERE key_id = ?", (v, k))
        db.close()
    assert c.get_public_key(KeyId=key)["KeyUsage"] == "ENCRYPT_DECRYPT"
    assert c.verify(KeyId=signer, Message=b"m", Signature=signature, SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]


def test_deletion_waits_its_window_and_can_be_cancelled(api):
    c = kms(api)
    key = c.create_key(KeySpec="ECC_SECG_P256K1", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    assert error_type(lambda: c.schedule_key_deletion(KeyId=key, PendingWindowInDays=6)) == "ValidationException"
    out = c.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    assert out["KeyState"] == "PendingDeletion" and out["PendingWindowInDays"] == 7
    meta = c.describe_key(KeyId=key)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["Enabled"] is False and "DeletionDate" in meta
    assert error_type(lambda: c.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")) == "KMSInvalidStateException"
    assert error_type(lambda: c.schedule_key_deletion(KeyId=key)) == "KMSInvalidStateException"
    c.cancel_key_deletion(KeyId=key)
    # As with KMS, the key comes back disabled, and signs again once enabled.
    assert c.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
    assert error_type(lambda: c.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")) == "DisabledException"
    c.enable_key(KeyId=key)
    assert c.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"
    c.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    # The CLI's store says the same.
    assert "pending" not in api.nekms("key", "list").stdout.split(key)[1].split("\n")[0]


def test_descriptions_tags_and_disabled_keys(api):
    c, bob, auditor = kms(api), kms(api, "bob"), kms(api, "auditor")
    meta = c.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY", Description="hot wallet",
                        Tags=[{"TagKey": "team", "TagValue": "payments"}])["KeyMetadata"]
    key = meta["KeyId"]
    assert meta["Description"] == "hot wallet" and c.describe_key(KeyId=key)["KeyMetadata"]["Description"] == "hot wallet"
    c.tag_resource(KeyId=key, Tags=[{"TagKey": "env", "TagValue": "prod"}])
    c.untag_resource(KeyId=key, TagKeys=["team"])
    assert auditor.list_resource_tags(KeyId=key)["Tags"] == [{"TagKey": "env", "TagValue": "prod"}]
    # Tags are the managers' own: not another caller's, not a reader's.
    assert error_type(lambda: bob.tag_resource(KeyId=key, Tags=[{"TagKey": "x", "TagValue": "y"}])) == "AccessDeniedException"
    assert error_type(lambda: auditor.untag_resource(KeyId=key, TagKeys=["env"])) == "AccessDeniedException"
    assert error_type(lambda: c.tag_resource(KeyId=key, Tags=[{"TagKey": "aws:x", "TagValue": "y"}])) == "TagException"
    # A disabled key signs, verifies and gives its public key to nobody, until enabled again.
    sig = c.sign(KeyId=key, Message=b"before", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    assert error_type(lambda: auditor.disable_key(KeyId=key)) == "AccessDeniedException"
    c.disable_key(KeyId=key)
    d = c.describe_key(KeyId=key)["KeyMetadata"]
    assert (d["KeyState"], d["Enabled"]) == ("Disabled", False)
    for call in (lambda: c.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256"),
                 lambda: auditor.sign(KeyId=key, Message=b"m", SigningAlgorithm="ECDSA_SHA_256"),
                 lambda: c.verify(KeyId=key, Message=b"before", Signature=sig, SigningAlgorithm="ECDSA_SHA_256"),
                 lambda: c.get_public_key(KeyId=key)):
        assert error_type(call) == "DisabledException"
    c.enable_key(KeyId=key)
    assert c.verify(KeyId=key, Message=b"before", Signature=sig, SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]


def fields(v):
    """A response's shape: its field names, nested (values left out)."""
    if isinstance(v, dict):
        return {k: fields(x) for k, x in v.items() if k != "ResponseMetadata"}
    return type(v).__name__


def test_the_same_client_code_sees_the_same_shapes_from_nekms_kms(api):
    """GetPublicKey, Sign, Verify and DescribeKey, and three errors, from both servers, field by field."""
    admin = api.client("admin")
    theirs_key = admin.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    ours = kms(api)
    ours_key = ours.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]

    def session(c, key, missing):
        out = {"GetPublicKey": c.get_public_key(KeyId=key)}
        out["Sign"] = c.sign(KeyId=key, Message=b"conformance", SigningAlgorithm="ECDSA_SHA_256")
        out["Verify"] = c.verify(KeyId=key, Message=b"conformance", Signature=out["Sign"]["Signature"],
                                 SigningAlgorithm="ECDSA_SHA_256")
        out["DescribeKey"] = c.describe_key(KeyId=key)
        errors = {
            "unknown key": error_type(lambda: c.sign(KeyId=missing, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")),
            "bad signature": error_type(lambda: c.verify(KeyId=key, Message=b"other", Signature=out["Sign"]["Signature"],
                                                         SigningAlgorithm="ECDSA_SHA_256")),
            "long digest": error_type(lambda: c.sign(KeyId=key, Message=b"x" * 33, MessageType="DIGEST",
                                                     SigningAlgorithm="ECDSA_SHA_256")),
        }
        return out, errors

    theirs, theirs_errors = session(admin, theirs_key, "11111111-2222-3333-4444-555555555555")
    mine, mine_errors = session(ours, ours_key, "alice-missing")
    for op in ("GetPublicKey", "Sign", "Verify"):
        assert fields(mine[op]) == fields(theirs[op]), op
    # KeyMetadata: every field nekms-kms gives (its Description, Enabled...) is there with the same type.
    m, t = fields(mine["DescribeKey"]["KeyMetadata"]), fields(theirs["DescribeKey"]["KeyMetadata"])
    assert {k: t[k] for k in t if k in m} == {k: m[k] for k in t if k in m}
    assert set(t) - set(m) <= {"EncryptionAlgorithms", "KeyAgreementAlgorithms", "MacAlgorithms"}, set(t) - set(m)
    assert mine_errors == theirs_errors, (mine_errors, theirs_errors)


ALLOY_KMS = os.environ.get("NEKMS_ALLOY_KMS_BIN", str(ROOT / "target" / "debug" / "nekms-alloy-kms"))


def test_alloys_aws_signer_makes_a_transaction_eth_account_recovers(api):
    """alloy's AwsSigner (crates/ecosystem: an aws_sdk_kms client, a key id, a chain id, as its users write it) on an
    enclave secp256k1 key: eth-account recovers the transaction and the message to the key's address."""
    from eth_account import Account
    from eth_account.messages import encode_defunct
    from eth_keys import keys
    c = kms(api)
    key = c.create_key(KeySpec="ECC_SECG_P256K1", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    akid, secret = api.secrets["alice"]
    r = subprocess.run([ALLOY_KMS, api.url, key, "1"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "AWS_ACCESS_KEY_ID": akid, "AWS_SECRET_ACCESS_KEY": secret})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    point = serialization.load_der_public_key(c.get_public_key(KeyId=key)["PublicKey"]).public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    address = keys.PublicKey(point).to_checksum_address()
    assert out["address"] == address == api.nekms("key", "public-key", key, "--address").stdout.strip()
    assert Account.recover_transaction(out["raw_transaction"]) == address
    assert Account.recover_message(encode_defunct(text=out["message"]), signature=out["message_signature"]) == address
