"""Simulated nekms attestation documents checked by libraries nobody on this
project wrote: cbor2 for the encoding, pycose for the COSE_Sign1 signature,
cryptography for the X.509 chain, hashlib for the documented PCR recipe.

The same verifier first proves itself on the real AWS documents, so a pass on
ours means "standard COSE/X.509", not "agrees with itself".
"""

import datetime
import hashlib
import os

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pycose.keys import EC2Key
from pycose.keys.curves import P384
from pycose.messages import CoseMessage

from conftest import NEKMS, ROOT, nekms

REAL = ROOT / "crates" / "attestation" / "tests" / "data"
AWS_ROOT = ROOT / "crates" / "attestation" / "src" / "aws-nitro-root-g1.pem"


def independent_verify(raw: bytes, root_pem: bytes, at: datetime.datetime) -> dict:
    """Verify a Nitro attestation document from its specification alone."""
    obj = cbor2.loads(raw)
    if isinstance(obj, cbor2.CBORTag):
        assert obj.tag == 18, "COSE_Sign1 tag"
        raw_tagged = raw
        obj = obj.value
    else:
        raw_tagged = cbor2.dumps(cbor2.CBORTag(18, obj))
    assert isinstance(obj, list) and len(obj) == 4
    assert cbor2.loads(obj[0]) == {1: -35}, "protected header is ES384"
    doc = cbor2.loads(obj[2])
    for field in ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"]:
        assert field in doc, field
    assert doc["digest"] == "SHA384"
    assert all(len(v) == 48 for v in doc["pcrs"].values())

    # Chain: pinned root == cabundle[0], then each certificate signed by the one above.
    root = x509.load_pem_x509_certificate(root_pem)
    chain = [x509.load_der_x509_certificate(c) for c in doc["cabundle"]]
    leaf = x509.load_der_x509_certificate(doc["certificate"])
    assert chain[0] == root, "cabundle[0] is the pinned root"
    certs = chain + [leaf]
    for issuer, cert in zip(certs, certs[1:]):
        assert cert.issuer == issuer.subject
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                   ec.ECDSA(cert.signature_hash_algorithm))
    root.public_key().verify(root.signature, root.tbs_certificate_bytes,
                             ec.ECDSA(root.signature_hash_algorithm))
    for i, cert in enumerate(certs):
        assert cert.not_valid_before_utc <= at <= cert.not_valid_after_utc, f"certificate {i} valid"
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if cert is leaf:
            assert not bc.ca and ku.digital_signature
        else:
            assert bc.ca and ku.key_cert_sign

    # COSE signature with the leaf's key, by pycose.
    pub = leaf.public_key()
    assert isinstance(pub.curve, ec.SECP384R1)
    nums = pub.public_numbers()
    msg = CoseMessage.decode(raw_tagged)
    msg.key = EC2Key(crv=P384, x=nums.x.to_bytes(48, "big"), y=nums.y.to_bytes(48, "big"))
    assert msg.verify_signature(), "COSE_Sign1 signature"
    return doc


def documented_pcrs(binary: bytes, config: bytes = b""):
    """The README's recipe, written again from its text."""
    H = lambda b: hashlib.sha384(b).digest()
    Z = bytes(48)
    kernel = H(b"nekms simulated kernel v1")
    app = H(b"nekms simulated application v1" + len(binary).to_bytes(8, "big") + binary
            + len(config).to_bytes(8, "big") + config)
    return {0: H(Z + H(b"nekms simulated image v1" + kernel + app)), 1: H(Z + kernel), 2: H(Z + app)}


@pytest.mark.parametrize("name", sorted(p.name for p in REAL.glob("attestation-*.cbor")))
def test_the_independent_verifier_accepts_real_aws_documents(name):
    raw = (REAL / name).read_bytes()
    ts = cbor2.loads(cbor2.loads(raw)[2])["timestamp"]
    at = datetime.datetime.fromtimestamp(ts / 1000, datetime.timezone.utc)
    independent_verify(raw, AWS_ROOT.read_bytes(), at)


def test_the_independent_verifier_rejects_a_flipped_signature_bit():
    raw = bytearray((REAL / "attestation-evervault.cbor").read_bytes())
    raw[-1] ^= 1
    ts = cbor2.loads(cbor2.loads(bytes(raw))[2])["timestamp"]
    at = datetime.datetime.fromtimestamp(ts / 1000, datetime.timezone.utc)
    with pytest.raises(Exception):
        independent_verify(bytes(raw), AWS_ROOT.read_bytes(), at)


def test_simulated_documents_are_standard_cose_and_x509(tmp_path):
    dev = tmp_path / "dev"
    env = {**os.environ, "NEKMS_DEV_DIR": str(dev)}
    nekms("dev", "init", env=env)
    image = tmp_path / "enclave.bin"
    image.write_bytes(b"\x7fELF pretend enclave" * 100)
    config = tmp_path / "enclave.toml"
    config.write_text("port = 5000\n")
    pub = tmp_path / "pub.der"
    pub.write_bytes(bytes(range(256)) + bytes(38))  # 294 bytes, the size of an RSA-2048 SPKI
    out = tmp_path / "doc.cbor"
    nekms("attest", "sim", "--image", str(image), "--image-config", str(config), "--nonce", "00ff" * 8,
          "--user-data", "68656c6c6f", "--public-key", str(pub), "-o", str(out), env=env)

    raw = out.read_bytes()
    assert cbor2.loads(raw).tag == 18
    doc = independent_verify(raw, (dev / "root.pem").read_bytes(), datetime.datetime.now(datetime.timezone.utc))
    assert doc["nonce"] == bytes.fromhex("00ff" * 8)
    assert doc["user_data"] == b"hello"
    assert doc["public_key"] == pub.read_bytes()
    assert sorted(doc["pcrs"]) == list(range(16))

    want = documented_pcrs(image.read_bytes(), config.read_bytes())
    for i in (0, 1, 2):
        assert doc["pcrs"][i] == want[i], f"PCR{i} follows the documented recipe"
    instance = (dev / "config.toml").read_text().split('instance_id = "')[1].split('"')[0]
    assert doc["pcrs"][4] == hashlib.sha384(bytes(48) + instance.encode()).digest()
    assert doc["module_id"].startswith(instance + "-enc")

    # nitro-cli-shaped output of `nekms pcr sim` agrees too.
    import json
    m = json.loads(nekms("pcr", "sim", str(image), "--config", str(config), env=env).stdout)["Measurements"]
    assert m["HashAlgorithm"] == "Sha384 { ... }"
    assert [m["PCR0"], m["PCR1"], m["PCR2"]] == [want[i].hex() for i in (0, 1, 2)]


def test_a_tampered_simulated_document_fails_independent_verification(tmp_path):
    dev = tmp_path / "dev"
    env = {**os.environ, "NEKMS_DEV_DIR": str(dev)}
    nekms("dev", "init", env=env)
    out = tmp_path / "doc.cbor"
    nekms("attest", "sim", "--image", NEKMS, "--user-data", "41414141", "-o", str(out), env=env)
    raw = bytearray(out.read_bytes())
    raw[raw.index(b"AAAA")] ^= 1
    with pytest.raises(Exception):
        independent_verify(bytes(raw), (dev / "root.pem").read_bytes(), datetime.datetime.now(datetime.timezone.utc))
