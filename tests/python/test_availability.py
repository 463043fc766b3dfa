"""Availability against any local user of the parent (not root): what such a
user can reach (kmstool's port, the PKCS#11 module's socket through p11-kit)
must not let it stop the enclave serving root and the token's users.

1. kmstool's SetClient: a client's credentials belong to its connection. A
   local user sending credentials KMS does not know gets its own Decrypts
   refused; key creation, signing and everyone else's kmstool Decrypts go on
   with the credentials they set, and the enclave's own credentials (those
   root pushed over the RPC) are unchanged.
2. PKCS#11 handles: one module process (one connection to the module's
   socket) holds at most 4 handles on a token, and its handles close with
   its connection; when a token's 1,024 are taken, a new Open displaces the
   handle not logged in that has gone longest without logged-in use (calls
   that need no PIN never count as use), never a logged-in one. So a user
   who fills a token and keeps its handles busy neither keeps a new module
   process out nor takes a logged-in process's handle.
"""

import base64
import json
import os
import socket
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from conftest import Rpc, enclave_policy, nekms

CKR_SESSION_COUNT, CKR_USER_NOT_LOGGED_IN = 0xB1, 0x101


@pytest.fixture(scope="module")
def up(dev_up):
    u = dev_up("availability")
    u.env["NEKMS_STORE"] = f"sqlite:{u.base / 'keys.db'}"
    return u


class Kmstool:
    """kmstool's protocol: JSON objects, each ended by a zero byte."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(address.removeprefix("unix://"))
        self.sock.settimeout(60)
        self.buf = b""

    def send(self, msg):
        self.sock.sendall(json.dumps(msg).encode() + b"\0")
        while b"\0" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "kmstool's port closed the connection"
            self.buf += chunk
        reply, self.buf = self.buf.split(b"\0", 1)
        return json.loads(reply)


def set_client(k, creds):
    msg = {"Operation": "SetClient", "AwsAccessKeyId": creds["access_key_id"], "AwsSecretAccessKey": creds["secret_access_key"],
           "AwsRegion": "us-east-1"}
    if creds.get("session_token"):
        msg["AwsSessionToken"] = creds["session_token"]
    return k.send(msg)


def test_a_kmstool_client_cannot_replace_the_credentials_of_the_enclave_or_of_other_clients(up):
    admin, instance = up.client("admin"), up.client("instance")
    key = admin.create_key(Policy=json.dumps(enclave_policy(up.info["pcr0"])))["KeyMetadata"]["Arn"]
    ct = base64.b64encode(instance.encrypt(KeyId=key, Plaintext=b"still served")["CiphertextBlob"]).decode()
    pushed = json.loads(up.nekms("enclave", "describe", "--json").stdout)["credentials"]["access_key_id"]
    victim = Kmstool(up.info["kmstool"])
    assert set_client(victim, up.creds["instance"]) == {"Status": "Ok"}

    # The attacker's credentials, which KMS does not know, on its own connection, sent again and again.
    attacker = Kmstool(up.info["kmstool"])
    for _ in range(20):
        assert set_client(attacker, {"access_key_id": "AKIAEVILEVILEVILEVIL", "secret_access_key": "x" * 40}) == {"Status": "Ok"}
    r = attacker.send({"Operation": "Decrypt", "Ciphertext": ct})
    assert r["Status"] == "Error" and "UnrecognizedClient" in r["Message"], r

    # Custody goes on with the credentials root pushed: a key made (GenerateDataKey), a cold signature (Decrypt).
    assert json.loads(up.nekms("enclave", "describe", "--json").stdout)["credentials"]["access_key_id"] == pushed
    up.nekms("key", "create", "--name", "still-here", "--spec", "p256")
    pem = up.nekms("key", "public-key", "still-here", "--pem").stdout.encode()
    sig = bytes.fromhex(json.loads(up.nekms("sign", "--key", "still-here", "--message", "m", "--json").stdout)["signature"])
    serialization.load_pem_public_key(pem).verify(sig, b"m", ec.ECDSA(hashes.SHA256()))
    # The victim's connection and a new kmstool client decrypt with their own credentials.
    r = victim.send({"Operation": "Decrypt", "Ciphertext": ct})
    assert r["Status"] == "Ok" and base64.b64decode(r["Message"]) == b"still served", r
    assert up.nekms("kmstool", "decrypt", "--address", up.info["kmstool"], "--region", "us-east-1", ct).stdout == "still served"
    # A connection that never sent SetClient decrypts nothing, not even with the credentials root pushed.
    r = Kmstool(up.info["kmstool"]).send({"Operation": "Decrypt", "Ciphertext": ct})
    assert r["Status"] == "Error" and "send SetClient first" in r["Message"], r


def p11_call(rpc, request):
    kind, value = rpc.call({"P11": request})
    return kind, value


def test_a_full_token_still_takes_a_new_module_process_and_keeps_logged_in_ones(up, tmp_path):
    d = tmp_path
    rpc, p11 = d / "rpc.sock", d / "p11.sock"
    args = [*up.enclave_args(), "--rpc", f"unix://{rpc}", "--kmstool", f"unix://{d / 'kmstool.sock'}", "--p11", f"unix://{p11}"]
    up.start(args, p11, "an enclave of its own", log=d / "enclave.log", stdout=subprocess.DEVNULL)
    env = {**up.env, "NEKMS_ENCLAVE": f"unix://{rpc}", "NEKMS_P11_RPC": f"unix://{rpc}", "NEKMS_P11_DB": str(d / "tokens.json")}
    pin = d / "pin"
    pin.write_text("1234-pin")
    os.chmod(pin, 0o600)
    nekms("enclave", "credentials", env=env)
    nekms("key", "create", "--name", "full-web", "--spec", "p256", env=env)
    nekms("p11", "token", "add", "--label", "full", "--pin-file", str(pin), "--key", "full-web:01", env=env)
    kind, slots = p11_call(Rpc(f"unix://{rpc}"), "Slots")
    (slot,) = [s["slot"] for s in slots["P11"]["Slots"] if s["label"] == "full"]

    # A module process that logged in before the flood.
    early = Rpc(f"unix://{p11}")
    early_handle = p11_call(early, {"Open": {"slot": slot}})[1]["P11"]["Opened"]["handle"]
    assert p11_call(early, {"Login": {"handle": early_handle, "pin": "1234-pin"}})[0] == "Ok"
    # One connection, one module process: four handles, not five.
    first = Rpc(f"unix://{p11}")
    handles = [(first, p11_call(first, {"Open": {"slot": slot}})[1]["P11"]["Opened"]["handle"]) for _ in range(4)]
    kind, err = p11_call(first, {"Open": {"slot": slot}})
    assert kind == "Err" and err["pkcs11"] == CKR_SESSION_COUNT and "already holds 4 handles" in err["message"], err
    # 255 more module processes fill the rest of the token's 1,024 (one is the early process's).
    conns = [first]
    for i in range(255):
        c = Rpc(f"unix://{p11}")
        conns.append(c)
        handles += [(c, p11_call(c, {"Open": {"slot": slot}})[1]["P11"]["Opened"]["handle"]) for _ in range(4 if i < 254 else 3)]
    assert len(handles) == 1023
    # The attacker keeps every handle busy with calls that need no PIN; none of them counts as use.
    for _ in range(3):
        for c, h in handles:
            kind, err = p11_call(c, {"Logout": {"handle": h}})
            assert kind == "Err" and err["pkcs11"] == CKR_USER_NOT_LOGGED_IN, err
    # A new module process still gets a handle (one of the attacker's is displaced), logs in and signs.
    late = Rpc(f"unix://{p11}")
    kind, opened = p11_call(late, {"Open": {"slot": slot}})
    assert kind == "Ok", opened
    handle = opened["P11"]["Opened"]["handle"]
    assert p11_call(late, {"Login": {"handle": handle, "pin": "1234-pin"}})[0] == "Ok"
    digest = os.urandom(32)
    kind, signed = p11_call(late, {"Sign": {"handle": handle, "id": b"\x01", "scheme": "ecdsa", "payload": {"digest": digest}}})
    assert kind == "Ok", signed
    public = serialization.load_pem_public_key(nekms("key", "public-key", "full-web", "--pem", env=env).stdout.encode())
    public.verify(signed["P11"]["Signature"], digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    # The process logged in before the flood was never displaced.
    kind, signed = p11_call(early, {"Sign": {"handle": early_handle, "id": b"\x01", "scheme": "ecdsa", "payload": {"digest": digest}}})
    assert kind == "Ok", signed
    # Connections that end take their handles with them.
    for c in conns:
        c.sock.close()
    time.sleep(0.5)
    for _ in range(8):
        c = Rpc(f"unix://{p11}")
        for _ in range(4):
            assert p11_call(c, {"Open": {"slot": slot}})[0] == "Ok"
