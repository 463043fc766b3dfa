"""The PKCS#11 module's public operations (P11 Verify, RsaPublic, Encrypt), which the enclave does so that
libnekms_p11.so carries no cryptography: played by root on the parent straight over the enclave's RPC (and the
module's socket), against a real `nekms dev up`. They compute only with the public key the request carries: the
answers are what Python computes from that public key alone, and nothing in the enclave changes."""

import base64
import json

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from conftest import Rpc

CKR_DATA_LEN_RANGE, CKR_DEVICE_ERROR, CKR_MECHANISM_INVALID, CKR_SIGNATURE_INVALID = 0x21, 0x30, 0x70, 0xC0


def spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_p11_public_operations_use_only_the_given_public_key(dev_up):
    up = dev_up("p11-public")
    up.env["NEKMS_STORE"] = f"sqlite:{up.base / 'keys.db'}"
    up.nekms("key", "create", "--name", "tls-rsa", "--spec", "rsa2048")
    record = json.loads(up.nekms("key", "show", "tls-rsa", "--json").stdout)
    theirs = serialization.load_der_public_key(base64.b64decode(record["public_key"]))
    mine = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    before = (up.nekms("key", "list").stdout, Rpc(up.info["rpc"]).call({"P11": "Slots"}))

    sockets = [up.info["rpc"]] + ([up.info["p11"]] if up.info.get("p11") else [])
    for address in sockets:
        rpc = Rpc(address)
        # RsaPublic is s^e mod n, the public operation, on the enclave's own key as on the attacker's: never s^d.
        for public in (theirs, mine.public_key()):
            n, e = public.public_numbers().n, public.public_numbers().e
            s = 0x1234567890ABCDEF << 1000
            kind, out = rpc.call({"P11": {"RsaPublic": {"public_key": spki(public), "input": s.to_bytes(256, "big")}}})
            assert kind == "Ok", out
            assert int.from_bytes(out["P11"]["Output"], "big") == pow(s, e, n)
        kind, err = rpc.call({"P11": {"RsaPublic": {"public_key": spki(mine.public_key()), "input": b"\xff" * 256}}})
        assert kind == "Err" and err["pkcs11"] == CKR_SIGNATURE_INVALID, err

        # Verify answers yes for a good signature under the given key, CKR_SIGNATURE_INVALID otherwise.
        digest = hashes.Hash(hashes.SHA256())
        digest.update(b"hello")
        digest = digest.finalize()
        good = mine.sign(b"hello", padding.PKCS1v15(), hashes.SHA256())
        verify = {"public_key": spki(mine.public_key()), "scheme": "rsa-pkcs1-sha256", "payload": {"digest": digest}}
        assert rpc.call({"P11": {"Verify": {**verify, "signature": good}}}) == ("Ok", {"P11": "Done"})
        kind, err = rpc.call({"P11": {"Verify": {**verify, "signature": bytes(256)}}})
        assert kind == "Err" and err["pkcs11"] == CKR_SIGNATURE_INVALID, err
        ec_key = ec.generate_private_key(ec.SECP256R1())
        der = ec_key.sign(b"hello", ec.ECDSA(hashes.SHA256()))
        ec_verify = {"public_key": spki(ec_key.public_key()), "scheme": "ecdsa", "payload": {"message": b"hello"}}
        assert rpc.call({"P11": {"Verify": {**ec_verify, "signature": der}}}) == ("Ok", {"P11": "Done"})
        # No PKCS#11 mechanism is an Ethereum scheme: their parsers (typed-data JSON) stay out of this path.
        k1 = ec.generate_private_key(ec.SECP256K1())
        kind, err = rpc.call({"P11": {"Verify": {"public_key": spki(k1.public_key()), "scheme": "eip712",
                                                 "payload": {"typed_data": "{}"}, "signature": bytes(65)}}})
        assert kind == "Err" and err["pkcs11"] == CKR_MECHANISM_INVALID, err

        # Encrypt is a public encryption under the given key: the attacker's own private key opens it.
        kind, out = rpc.call({"P11": {"Encrypt": {"public_key": spki(mine.public_key()), "padding": {"Oaep": "Sha256"},
                                                  "plaintext": b"attack at dawn", "label": None}}})
        assert kind == "Ok", out
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        assert mine.decrypt(out["P11"]["Output"], oaep) == b"attack at dawn"
        kind, err = rpc.call({"P11": {"Encrypt": {"public_key": spki(mine.public_key()), "padding": "Pkcs1",
                                                  "plaintext": bytes(300), "label": None}}})
        assert kind == "Err" and err["pkcs11"] == CKR_DATA_LEN_RANGE, err
        kind, err = rpc.call({"P11": {"Encrypt": {"public_key": b"not a key", "padding": "Pkcs1", "plaintext": b"x", "label": None}}})
        assert kind == "Err" and err["pkcs11"] == CKR_DEVICE_ERROR, err

    # Nothing was planted or changed: the same records, the same tokens.
    assert (up.nekms("key", "list").stdout, Rpc(up.info["rpc"]).call({"P11": "Slots"})) == before
