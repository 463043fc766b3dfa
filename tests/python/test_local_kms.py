"""The local KMS (nekms-kms, started here as its own process) driven by
clients nobody on this project wrote: boto3 and the aws CLI, over HTTP and
HTTPS, with the AWS profiles `nekms dev init` writes. Signatures are checked
with `cryptography`, and CiphertextForRecipient is opened with OpenSSL
`cms -decrypt`.
"""

import base64
import json
import os
import pathlib
import subprocess

import boto3
import botocore.exceptions
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import ACCOUNT, ADMIN, INSTANCE, ROOT, nekms, start_kms, stop


class LocalKms:
    """nekms-kms on its own, serving a new development world `dev`."""

    def __init__(self, dev: pathlib.Path, principals_extra: str = ""):
        self.dev = dev
        nekms("dev", "init", "--dir", str(dev))
        if principals_extra:
            with open(dev / "principals.toml", "a") as f:
                f.write(principals_extra)
        self.proc, info = start_kms(dev, dev / "ready.json")
        self.http, self.https, self.ca = info["http"], info["https"], info["ca"]
        self.env = {**os.environ,
                    "AWS_SHARED_CREDENTIALS_FILE": str(dev / "aws" / "credentials"),
                    "AWS_CONFIG_FILE": str(dev / "aws" / "config"),
                    "NEKMS_DEV_DIR": str(dev)}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
            self.env.pop(k, None)

    def client(self, profile, https=False):
        """A boto3 client from the profile files alone (no keys passed in code)."""
        old = {k: os.environ.get(k) for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")}
        os.environ.update({k: self.env[k] for k in old})
        try:
            session = boto3.Session(profile_name=profile)
            if https:
                return session.client("kms", endpoint_url=self.https, verify=self.ca)
            return session.client("kms", endpoint_url=self.http)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def aws(self, profile, *args, https=True):
        endpoint = ["--endpoint-url", self.https, "--ca-bundle", self.ca] if https else ["--endpoint-url", self.http]
        return subprocess.run(["aws", "--profile", profile, *endpoint, "--output", "json", "kms", *args],
                              env=self.env, capture_output=True, text=True)

    def stop(self):
        stop(self.proc)


@pytest.fixture(scope="module")
def kms(tmp_path_factory):
    k = LocalKms(tmp_path_factory.mktemp("kms") / "dev")
    yield k
    k.stop()


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_boto3_key_lifecycle_and_symmetric_cryptography(kms):
    admin = kms.client("admin")
    key = admin.create_key(Description="boto3", Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]
    assert key["KeySpec"] == "SYMMETRIC_DEFAULT" and key["KeyState"] == "Enabled"
    admin.create_alias(AliasName="alias/boto3", TargetKeyId=key["KeyId"])
    policy = json.loads(admin.get_key_policy(KeyId="alias/boto3", PolicyName="default")["Policy"])
    assert policy["Statement"][0]["Principal"]["AWS"] == f"arn:aws:iam::{ACCOUNT}:root"
    policy["Statement"].append({"Sid": "Admins", "Effect": "Allow",
                                "Principal": {"AWS": ADMIN},
                                "Action": "kms:*", "Resource": "*"})
    admin.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=json.dumps(policy))
    assert "Admins" in admin.get_key_policy(KeyId=key["Arn"])["Policy"]

    ct = admin.encrypt(KeyId="alias/boto3", Plaintext=b"hello", EncryptionContext={"app": "test"})
    assert ct["KeyId"] == key["Arn"]
    pt = admin.decrypt(CiphertextBlob=ct["CiphertextBlob"], EncryptionContext={"app": "test"})
    assert pt["Plaintext"] == b"hello"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.decrypt(CiphertextBlob=ct["CiphertextBlob"])
    assert error_code(e) == "InvalidCiphertextException"

    dk = admin.generate_data_key(KeyId=key["KeyId"], KeySpec="AES_256")
    assert len(dk["Plaintext"]) == 32
    assert admin.decrypt(CiphertextBlob=dk["CiphertextBlob"])["Plaintext"] == dk["Plaintext"]
    pair = admin.generate_data_key_pair(KeyId=key["KeyId"], KeyPairSpec="RSA_2048")
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    public = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert public == pair["PublicKey"]
    assert len(admin.generate_random(NumberOfBytes=100)["Plaintext"]) == 100

    # Over HTTPS with the development CA.
    secure = kms.client("admin", https=True)
    assert secure.describe_key(KeyId="alias/boto3")["KeyMetadata"]["KeyId"] == key["KeyId"]
    aliases = [a["AliasName"] for a in secure.list_aliases()["Aliases"]]
    assert "alias/boto3" in aliases


def test_boto3_signatures_verify_with_cryptography(kms):
    admin = kms.client("admin")
    for spec, alg, curve_hash in [("ECC_NIST_P256", "ECDSA_SHA_256", hashes.SHA256()),
                                  ("ECC_SECG_P256K1", "ECDSA_SHA_256", hashes.SHA256()),
                                  ("ECC_NIST_P384", "ECDSA_SHA_384", hashes.SHA384())]:
        key = admin.create_key(KeyUsage="SIGN_VERIFY", KeySpec=spec)["KeyMetadata"]
        sig = admin.sign(KeyId=key["KeyId"], Message=b"msg", SigningAlgorithm=alg)["Signature"]
        public = serialization.load_der_public_key(admin.get_public_key(KeyId=key["KeyId"])["PublicKey"])
        public.verify(sig, b"msg", ec.ECDSA(curve_hash))
        assert admin.verify(KeyId=key["KeyId"], Message=b"msg", Signature=sig, SigningAlgorithm=alg)["SignatureValid"]
    key = admin.create_key(KeyUsage="SIGN_VERIFY", KeySpec="RSA_2048")["KeyMetadata"]
    from cryptography.hazmat.primitives.asymmetric import padding
    sig = admin.sign(KeyId=key["KeyId"], Message=b"msg", SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
    public = serialization.load_der_public_key(admin.get_public_key(KeyId=key["KeyId"])["PublicKey"])
    public.verify(sig, b"msg", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    sig = admin.sign(KeyId=key["KeyId"], Message=b"msg", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_512")["Signature"]
    public.verify(sig, b"msg", padding.PKCS1v15(), hashes.SHA512())


def test_aws_cli_with_the_dev_profiles_over_https(kms):
    r = kms.aws("admin", "create-key", "--description", "cli")
    assert r.returncode == 0, r.stderr
    key = json.loads(r.stdout)["KeyMetadata"]
    r = kms.aws("instance", "generate-random", "--number-of-bytes", "32")
    assert r.returncode == 0, r.stderr
    assert len(base64.b64decode(json.loads(r.stdout)["Plaintext"])) == 32
    r = kms.aws("instance", "encrypt", "--key-id", key["Arn"], "--plaintext", "fileb:///dev/null")
    assert r.returncode != 0 and "ValidationException" in r.stderr
    msg = kms.dev / "msg.txt"
    msg.write_bytes(b"from the cli")
    r = kms.aws("instance", "encrypt", "--key-id", key["Arn"], "--plaintext", f"fileb://{msg}",
                "--encryption-context", "k=v")
    assert r.returncode == 0, r.stderr
    blob = kms.dev / "blob.bin"
    blob.write_bytes(base64.b64decode(json.loads(r.stdout)["CiphertextBlob"]))
    r = kms.aws("instance", "decrypt", "--ciphertext-blob", f"fileb://{blob}", "--encryption-context", "k=v", https=False)
    assert r.returncode == 0, r.stderr
    assert base64.b64decode(json.loads(r.stdout)["Plaintext"]) == b"from the cli"
    # Without the CA bundle, TLS verification fails: the endpoint really is HTTPS with our CA.
    r = subprocess.run(["aws", "--profile", "admin", "--endpoint-url", kms.https, "kms", "list-keys"],
                       env=kms.env, capture_output=True, text=True)
    assert r.returncode != 0 and "SSL" in r.stderr


def test_aws_cli_policies_aliases_data_keys_signatures_and_lockout(kms):
    def ok(*args, profile="admin"):
        r = kms.aws(profile, *args)
        assert r.returncode == 0, (args, r.stderr)
        return json.loads(r.stdout) if r.stdout.strip() else None

    key = ok("create-key", "--description", "cli policies")["KeyMetadata"]
    ok("create-alias", "--alias-name", "alias/cli", "--target-key-id", key["KeyId"])
    policy = json.loads(ok("get-key-policy", "--key-id", "alias/cli", "--policy-name", "default")["Policy"])
    # Lock the root user out: only the administrators keep the key.
    policy["Statement"] = [{"Sid": "Admins", "Effect": "Allow",
                            "Principal": {"AWS": ADMIN},
                            "Action": "kms:*", "Resource": "*"}]
    policy_file = kms.dev / "cli-policy.json"
    policy_file.write_text(json.dumps(policy))
    ok("put-key-policy", "--key-id", key["KeyId"], "--policy-name", "default", "--policy", f"file://{policy_file}")
    assert "Admins" in ok("get-key-policy", "--key-id", key["Arn"], "--policy-name", "default")["Policy"]
    r = kms.aws("root", "describe-key", "--key-id", "alias/cli")
    assert r.returncode != 0 and "AccessDeniedException" in r.stderr
    dk = ok("generate-data-key", "--key-id", "alias/cli", "--key-spec", "AES_256")
    assert len(base64.b64decode(dk["Plaintext"])) == 32

    signing = ok("create-key", "--key-usage", "SIGN_VERIFY", "--key-spec", "ECC_NIST_P256")["KeyMetadata"]
    msg = kms.dev / "to-sign.txt"
    msg.write_bytes(b"sign me")
    sig = ok("sign", "--key-id", signing["KeyId"], "--message", f"fileb://{msg}", "--signing-algorithm", "ECDSA_SHA_256")
    sig_file = kms.dev / "sig.bin"
    sig_file.write_bytes(base64.b64decode(sig["Signature"]))
    v = ok("verify", "--key-id", signing["KeyId"], "--message", f"fileb://{msg}", "--signature", f"fileb://{sig_file}",
           "--signing-algorithm", "ECDSA_SHA_256")
    assert v["SignatureValid"] is True
    msg.write_bytes(b"sign me!")
    r = kms.aws("admin", "verify", "--key-id", signing["KeyId"], "--message", f"fileb://{msg}", "--signature",
                f"fileb://{sig_file}", "--signing-algorithm", "ECDSA_SHA_256")
    assert r.returncode != 0 and "KMSInvalidSignatureException" in r.stderr


def enclave(kms, name: str, image: bytes):
    """A simulated enclave: an image, its RSA-2048 key, and a fresh document."""
    d = kms.dev / name
    d.mkdir(exist_ok=True)
    (d / "image").write_bytes(image)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    (d / "spki.der").write_bytes(key.public_key().public_bytes(serialization.Encoding.DER,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    pcrs = json.loads(nekms("pcr", "sim", str(d / "image"), env=kms.env).stdout)["Measurements"]
    return d, pcrs["PCR0"]


def document(kms, d):
    nekms("attest", "sim", "--image", str(d / "image"), "--public-key", str(d / "spki.der"), "-o", str(d / "doc.cbor"), env=kms.env)
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": (d / "doc.cbor").read_bytes()}


def openssl_cms_decrypt(d, ciphertext_for_recipient: bytes) -> bytes:
    (d / "cms.ber").write_bytes(ciphertext_for_recipient)
    return subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(d / "cms.ber"),
                           "-inkey", str(d / "key.pem")], check=True, capture_output=True).stdout


def test_lockout_seed_scenarios_with_boto3_and_simulated_enclaves(kms):
    good, pcr0 = enclave(kms, "good", b"the image the key policy names")
    bad, bad_pcr0 = enclave(kms, "bad", b"an image with another PCR0")
    assert pcr0 != bad_pcr0
    admin, instance, root = kms.client("admin"), kms.client("instance"), kms.client("root")
    # kms-lockout-demo.md step 9: decrypt only from the enclave image, no root block,
    # administrators manage but cannot decrypt.
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable decrypt from enclave", "Effect": "Allow",
         "Principal": {"AWS": INSTANCE}, "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0.upper()}}},
        {"Sid": "Enable encrypt from instance", "Effect": "Allow",
         "Principal": {"AWS": INSTANCE}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
         "Principal": {"AWS": ADMIN},
         "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                    "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource",
                    "kms:UntagResource", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"], "Resource": "*"}]}
    key = admin.create_key(Description="lockout", Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    blob = instance.encrypt(KeyId=key, Plaintext=b"db password")["CiphertextBlob"]

    with pytest.raises(botocore.exceptions.ClientError) as e:
        root.decrypt(CiphertextBlob=blob)
    assert error_code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        root.describe_key(KeyId=key)
    assert error_code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        instance.decrypt(CiphertextBlob=blob)
    assert error_code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        instance.decrypt(CiphertextBlob=blob, Recipient=document(kms, bad))
    assert error_code(e) == "AccessDeniedException"
    out = instance.decrypt(CiphertextBlob=blob, Recipient=document(kms, good))
    assert "Plaintext" not in out
    assert openssl_cms_decrypt(good, out["CiphertextForRecipient"]) == b"db password"
    # Same ASN.1 shape as a real KMS response.
    (good / "ours.ber").write_bytes(out["CiphertextForRecipient"])
    real = ROOT / "crates" / "cms" / "tests" / "data" / "kms-ciphertext-for-recipient.ber"
    ours_shape, real_shape = (json.loads(nekms("cms", "inspect", "--json", str(f)).stdout) for f in (good / "ours.ber", real))
    for shape in (ours_shape, real_shape):
        shape["ski_len"] = len(shape["recipient"].pop("subject_key_identifier")) // 2
        shape["iv_len"] = len(shape.pop("iv")) // 2
        for k in ("size", "encrypted_content_len"):
            shape.pop(k)
    assert ours_shape == real_shape
    with pytest.raises(subprocess.CalledProcessError):
        openssl_cms_decrypt(bad, out["CiphertextForRecipient"])

    # GenerateRandom with a Recipient (kmstool's genrandom) comes back sealed too.
    r = instance.generate_random(NumberOfBytes=32, Recipient=document(kms, good))
    assert "Plaintext" not in r and len(openssl_cms_decrypt(good, r["CiphertextForRecipient"])) == 32

    # The audit log names the image of every Recipient request.
    r = nekms("dev", "kms", "audit", "--json", env=kms.env)
    events = [json.loads(l) for l in r.stdout.splitlines()]
    decrypts = [e for e in events if e["eventName"] == "Decrypt" and "additionalEventData" in e]
    digests = {e["additionalEventData"]["recipient"]["attestationDocumentEnclaveImageDigest"] for e in decrypts}
    assert {pcr0, bad_pcr0} <= digests
    readable = nekms("dev", "kms", "audit", "-n", "5", env=kms.env)
    assert "GenerateRandom" in readable.stdout and "recipient" in readable.stdout


def test_kmstool_debug_mode_policy_admits_only_zero_pcrs(kms):
    """kmstool.md's test policy names PCR0 = 48 zero bytes: an enclave started
    with --debug-mode. A production-mode document of any image is refused."""
    d, pcr0 = enclave(kms, "kmstool", b"kmstool enclave image")
    admin, instance = kms.client("admin"), kms.client("instance")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable decrypt from enclave", "Effect": "Allow",
         "Principal": {"AWS": INSTANCE}, "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": "0" * 96}}},
        {"Sid": "Enable encrypt from instance", "Effect": "Allow",
         "Principal": {"AWS": INSTANCE}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Allow access for Key Administrators", "Effect": "Allow",
         "Principal": {"AWS": ADMIN},
         "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*"], "Resource": "*"}]}
    key = admin.create_key(Description="Nitro Enclaves Test Key", Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    blob = instance.encrypt(KeyId=key, Plaintext=b"Hello, KMS!")["CiphertextBlob"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        instance.decrypt(CiphertextBlob=blob, Recipient=document(kms, d))
    assert error_code(e) == "AccessDeniedException"
    nekms("attest", "sim", "--debug-mode", "--image", str(d / "image"), "--public-key", str(d / "spki.der"), "-o", str(d / "debug.cbor"),
          env=kms.env)
    out = instance.decrypt(CiphertextBlob=blob, Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                                                           "AttestationDocument": (d / "debug.cbor").read_bytes()})
    assert openssl_cms_decrypt(d, out["CiphertextForRecipient"]) == b"Hello, KMS!"


def test_a_signed_request_cannot_be_replayed_as_another_operation(kms):
    """SigV4 as AWS enforces it: the operation (x-amz-target) and the body's
    type are signed, so a DescribeKey cannot become a ScheduleKeyDeletion;
    a request whose signature leaves them out is incomplete. Signed by
    botocore, sent over HTTP as a replaying attacker would."""
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    admin = kms.client("admin")
    key = admin.create_key(Description="replay target")["KeyMetadata"]["KeyId"]
    creds = admin._request_signer._credentials.get_frozen_credentials()
    body = json.dumps({"KeyId": key}).encode()

    def send(headers):
        req = urllib.request.Request(kms.http + "/", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def signed(headers):
        r = AWSRequest(method="POST", url=kms.http + "/", data=body, headers=headers)
        SigV4Auth(creds, "kms", "us-east-1").add_auth(r)
        return dict(r.headers.items())

    h = signed({"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.DescribeKey"})
    assert send(h)[0] == 200
    h["X-Amz-Target"] = "TrentService.ScheduleKeyDeletion"
    status, err = send(h)
    assert status == 400 and err["__type"] == "InvalidSignatureException", err
    # Signed without the target, which is added afterwards.
    h = signed({"Content-Type": "application/x-amz-json-1.1"})
    h["X-Amz-Target"] = "TrentService.ScheduleKeyDeletion"
    status, err = send(h)
    assert status == 400 and err["__type"] == "IncompleteSignatureException" and "x-amz-target" in err["message"], err
    assert admin.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled", "nothing changed"


def test_a_policy_naming_a_condition_key_this_kms_does_not_set_is_refused(kms):
    """Otherwise the key would always be absent here while AWS sets it, and
    the policy would decide differently in development."""
    admin = kms.client("admin")
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/nekms-key-admin"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringNotEquals": {"aws:SourceVpc": "vpc-1a2b3c4d"}}}]}
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.create_key(Policy=json.dumps(policy))
    assert error_code(e) == "UnsupportedOperationException" and "aws:SourceVpc" in str(e.value)
    key = admin.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    assert error_code(e) == "UnsupportedOperationException"


def test_a_grant_opens_a_key_its_policy_keeps_closed_until_retired_or_revoked(kms):
    """Grants as AWS documents them (Developer Guide, "Grants in AWS KMS";
    API reference for CreateGrant, GrantConstraints, RetireGrant,
    RevokeGrant): a grant only adds permissions, carries no condition keys
    (so no attestation condition), is bound by its encryption-context
    constraint, and an explicit Deny in the key policy still wins."""
    admin, instance = kms.client("admin"), kms.client("instance")
    admin_arn = ADMIN
    instance_arn = INSTANCE
    manage = {"Sid": "Administrators", "Effect": "Allow", "Principal": {"AWS": admin_arn},
              "Action": ["kms:Create*", "kms:Describe*", "kms:List*", "kms:Put*", "kms:Get*", "kms:Revoke*",
                         "kms:Encrypt"], "Resource": "*"}
    encrypt_only = {"Sid": "Instance encrypts", "Effect": "Allow", "Principal": {"AWS": instance_arn},
                    "Action": "kms:Encrypt", "Resource": "*"}
    policy = {"Version": "2012-10-17", "Statement": [manage, encrypt_only]}
    key = admin.create_key(Description="grants", Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    blob = instance.encrypt(KeyId=key, Plaintext=b"payroll db", EncryptionContext={"app": "billing"})["CiphertextBlob"]
    other = instance.encrypt(KeyId=key, Plaintext=b"other", EncryptionContext={"app": "crm"})["CiphertextBlob"]

    def refused(code, f, *args, **kwargs):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            f(*args, **kwargs)
        assert error_code(e) == code, e.value
        return e.value

    refused("AccessDeniedException", instance.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "billing"})

    g = admin.create_grant(KeyId=key, GranteePrincipal=instance_arn, Operations=["Decrypt"],
                           RetiringPrincipal=admin_arn, Constraints={"EncryptionContextSubset": {"APP": "billing"}})
    token, grant_id = g["GrantToken"], g["GrantId"]
    assert len(grant_id) == 64
    # Open now: with the grant token (as AWS asks before the grant propagates) and without.
    out = instance.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"}, GrantTokens=[token])
    assert out["Plaintext"] == b"payroll db"
    assert instance.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})["Plaintext"] == b"payroll db"
    # The constraint binds: another context stays closed. Keys compare case-insensitively.
    refused("AccessDeniedException", instance.decrypt, CiphertextBlob=other, EncryptionContext={"app": "crm"})
    # Not an operation of the grant.
    refused("AccessDeniedException", instance.generate_data_key, KeyId=key, KeySpec="AES_256",
            EncryptionContext={"app": "billing"})
    # A token this KMS never issued.
    refused("InvalidGrantTokenException", instance.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "billing"},
            GrantTokens=["AQpAM2RhZTk1MGMyNTk2ZmZmMzEyYWVhOWViN2I1MWM4Mzc0MWFiYjc0ZDE1ODkyNGFlNTIzODZhMzgy"])

    listed = admin.list_grants(KeyId=key)["Grants"]
    assert len(listed) == 1
    entry = listed[0]
    assert (entry["GrantId"], entry["KeyId"], entry["GranteePrincipal"], entry["RetiringPrincipal"]) == \
        (grant_id, key, instance_arn, admin_arn)
    assert entry["Operations"] == ["Decrypt"] and entry["IssuingAccount"] == f"arn:aws:iam::{ACCOUNT}:root"
    assert entry["Constraints"] == {"EncryptionContextSubset": {"APP": "billing"}}
    assert [x["GrantId"] for x in admin.list_retirable_grants(RetiringPrincipal=admin_arn)["Grants"]] == [grant_id]

    # A grant carries no attestation condition: only a Deny in the key policy binds a grantee.
    deny = {"Sid": "Decrypt only in the enclave", "Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt",
            "Resource": "*", "Condition": {"StringNotEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": "ab" * 48}}}
    admin.put_key_policy(KeyId=key, PolicyName="default",
                         Policy=json.dumps({"Version": "2012-10-17", "Statement": [manage, encrypt_only, deny]}))
    refused("AccessDeniedException", instance.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "billing"})
    admin.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    assert instance.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})["Plaintext"] == b"payroll db"

    # The grantee cannot retire a grant that does not give it RetireGrant; the retiring principal can.
    refused("AccessDeniedException", instance.retire_grant, GrantToken=token)
    admin.retire_grant(GrantToken=token)
    refused("AccessDeniedException", instance.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "billing"},
            GrantTokens=[token])
    assert admin.list_grants(KeyId=key)["Grants"] == []
    refused("NotFoundException", admin.retire_grant, KeyId=key, GrantId=grant_id)

    # A Name makes CreateGrant idempotent: the same parameters give the same grant.
    named = dict(KeyId=key, GranteePrincipal=instance_arn, Operations=["Decrypt", "RetireGrant"], Name="billing-reader",
                 Constraints={"EncryptionContextEquals": {"app": "billing"}})
    first, again = admin.create_grant(**named), admin.create_grant(**named)
    assert first["GrantId"] == again["GrantId"] and first["GrantToken"] != again["GrantToken"]
    assert instance.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})["Plaintext"] == b"payroll db"
    admin.revoke_grant(KeyId=key, GrantId=first["GrantId"])
    refused("AccessDeniedException", instance.decrypt, CiphertextBlob=blob, EncryptionContext={"app": "billing"})

    # A grant that lets its grantee create grants: only narrower ones.
    parent = admin.create_grant(KeyId=key, GranteePrincipal=instance_arn, Operations=["Decrypt", "CreateGrant"],
                                Constraints={"EncryptionContextSubset": {"app": "billing"}})
    child = instance.create_grant(KeyId=key, GranteePrincipal=admin_arn, Operations=["Decrypt"],
                                  Constraints={"EncryptionContextEquals": {"app": "billing"}})
    assert admin.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "billing"})["Plaintext"] == b"payroll db"
    refused("AccessDeniedException", instance.create_grant, KeyId=key, GranteePrincipal=admin_arn,
            Operations=["Decrypt", "Encrypt"], Constraints={"EncryptionContextSubset": {"app": "billing"}})
    refused("AccessDeniedException", instance.create_grant, KeyId=key, GranteePrincipal=admin_arn, Operations=["Decrypt"])
    for g in (parent, child):
        admin.revoke_grant(KeyId=key, GrantId=g["GrantId"])

    # The audit log names the grant that allowed a request.
    r = nekms("dev", "kms", "audit", "--json", env=kms.env)
    assert any(json.loads(l).get("additionalEventData", {}).get("grantId") == grant_id for l in r.stdout.splitlines())

    # Bad input: AWS's exceptions, and nothing changed.
    for code, kwargs in [
        ("ValidationException", dict(GranteePrincipal=instance_arn, Operations=["Fly"])),
        ("ValidationException", dict(GranteePrincipal=instance_arn, Operations=["Sign"])),
        ("ValidationException", dict(GranteePrincipal="not a principal", Operations=["Decrypt"])),
        ("ValidationException", dict(GranteePrincipal=instance_arn, Operations=["Decrypt"],
                                     Constraints={"EncryptionContextSubset": {f"k{i}": "v" for i in range(9)}})),
        ("ValidationException", dict(GranteePrincipal=instance_arn, Operations=["Decrypt"],
                                     Constraints={"EncryptionContextEquals": {"k": "v" * 385}})),
    ]:
        refused(code, admin.create_grant, KeyId=key, **kwargs)
    refused("InvalidGrantIdException", admin.revoke_grant, KeyId=key, GrantId="not-a-grant")
    refused("NotFoundException", admin.revoke_grant, KeyId=key, GrantId="0" * 64)
    refused("InvalidGrantTokenException", admin.retire_grant, GrantToken="made-up")
    refused("ValidationException", admin.retire_grant, GrantId="0" * 64)
    assert admin.list_grants(KeyId=key)["Grants"] == []


def test_a_policy_limits_what_grants_a_principal_may_create(kms):
    """kms:GrantOperations and kms:GranteePrincipal in a key policy: the
    instance may hand out Encrypt to one role and nothing else."""
    admin, instance = kms.client("admin"), kms.client("instance")
    admin_arn = ADMIN
    instance_arn = INSTANCE
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": admin_arn}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": instance_arn}, "Action": "kms:CreateGrant", "Resource": "*",
         "Condition": {"ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt"]},
                       "StringEquals": {"kms:GranteePrincipal": admin_arn},
                       "Bool": {"kms:GrantIsForAWSResource": "false"}}}]}
    key = admin.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    instance.create_grant(KeyId=key, GranteePrincipal=admin_arn, Operations=["Encrypt"])
    with pytest.raises(botocore.exceptions.ClientError) as e:
        instance.create_grant(KeyId=key, GranteePrincipal=admin_arn, Operations=["Encrypt", "Decrypt"])
    assert error_code(e) == "AccessDeniedException"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        instance.create_grant(KeyId=key, GranteePrincipal=instance_arn, Operations=["Encrypt"])
    assert error_code(e) == "AccessDeniedException"
    assert len(admin.list_grants(KeyId=key)["Grants"]) == 1


def test_principal_tags_and_userid_decide_as_on_aws(tmp_path):
    """aws:PrincipalTag/<key> from principals.toml, aws:userid as AWS forms
    it for a role session (AROA...:<session>), and both as policy variables:
    attribute-based access where the caller's team must be the ciphertext's."""
    local = LocalKms(tmp_path / "dev", principals_extra='\n[principal.tags]\nteam = "payments"\n')
    try:
        admin, instance = local.client("admin"), local.client("instance")
        admin_arn = ADMIN
        instance_arn = INSTANCE

        def key_with(condition):
            return admin.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"AWS": admin_arn}, "Action": "kms:*", "Resource": "*"},
                {"Effect": "Allow", "Principal": {"AWS": instance_arn}, "Action": ["kms:Encrypt", "kms:Decrypt"],
                 "Resource": "*", "Condition": condition}]}))["KeyMetadata"]["Arn"]

        def decrypts(key, context):
            blob = admin.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=context)["CiphertextBlob"]
            try:
                instance.decrypt(CiphertextBlob=blob, EncryptionContext=context)
                return True
            except botocore.exceptions.ClientError as e:
                assert e.response["Error"]["Code"] == "AccessDeniedException", e
                return False

        assert decrypts(key_with({"StringEquals": {"aws:PrincipalTag/team": "payments"}}), {})
        assert not decrypts(key_with({"StringEquals": {"aws:PrincipalTag/team": "billing"}}), {})
        assert not decrypts(key_with({"StringEquals": {"aws:PrincipalTag/project": "x"}}), {}), "an absent tag"
        assert decrypts(key_with({"StringLike": {"aws:userid": "AROA*:i-*"}}), {}), "a role session's userid"
        abac = key_with({"StringEquals": {"kms:EncryptionContext:team": "${aws:PrincipalTag/team}"}})
        assert decrypts(abac, {"team": "payments"})
        assert not decrypts(abac, {"team": "billing"})
    finally:
        local.stop()


DENIED = """
[[principal]]
name = "denied"
arn = "arn:aws:iam::111122223333:user/denied"
access_key_id = "AKIANEKMSDENIEDUSER1"
secret_access_key = "denied/secret/key/for/the/grant/test/0000"
policies = ['{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": ["kms:Decrypt", "kms:RetireGrant"], "Resource": "*"}]}']
"""


def test_an_identity_policy_deny_beats_a_grant(tmp_path):
    """A grant only adds permissions: an explicit Deny in the grantee's IAM
    policy still refuses Decrypt, and stops it retiring a grant that names
    it as the retiring principal, even when the key policy does not
    delegate to IAM."""
    local = LocalKms(tmp_path / "dev", principals_extra=DENIED)
    try:
        admin = local.client("admin")
        denied = boto3.client("kms", region_name="us-east-1", endpoint_url=local.http,
                              aws_access_key_id="AKIANEKMSDENIEDUSER1", aws_secret_access_key="denied/secret/key/for/the/grant/test/0000")
        user = "arn:aws:iam::111122223333:user/denied"
        policy = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:role/nekms-key-admin"}, "Action": "kms:*", "Resource": "*"}]}
        key = admin.create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
        blob = admin.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
        g = admin.create_grant(KeyId=key, GranteePrincipal=user, RetiringPrincipal=user, Operations=["Decrypt", "DescribeKey"])
        assert denied.describe_key(KeyId=key)["KeyMetadata"]["Arn"] == key, "the grant works where IAM says nothing"
        for call, kwargs in [(denied.decrypt, {"CiphertextBlob": blob}), (denied.retire_grant, {"GrantToken": g["GrantToken"]})]:
            with pytest.raises(botocore.exceptions.ClientError) as e:
                call(**kwargs)
            assert error_code(e) == "AccessDeniedException" and "identity-based policy" in str(e.value), e.value
        assert len(admin.list_grants(KeyId=key)["Grants"]) == 1
    finally:
        local.stop()
