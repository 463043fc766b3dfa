"""kmstool's protocol, end to end across real processes:

    this client --unix--> nekms-enclave --unix--> nekms proxy --TCP--> nekms-kms (HTTPS)

The client below is written from kmstool's protocol description alone (JSON
objects separated by a zero byte; SetClient, Decrypt; replies with Status and
Message). The enclave is simulated; its PCR0 is whatever `nekms pcr sim`
prints for its executable, and the key policy is written from that.
"""

import base64
import json
import pathlib
import socket
import subprocess
import threading

import pytest

from conftest import ADMIN, INSTANCE, NEKMS, NEKMS_ENCLAVE, enclave_args, free_port, kms_client, nekms, principals, start, start_kms, stop


class KmstoolClient:
    """kmstool's protocol, from its description."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, obj):
        self.sock.sendall(json.dumps(obj).encode() + b"\0")
        return self.recv()

    def recv(self):
        while b"\0" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self):
        self.sock.close()


class World:
    """nekms-kms, `nekms proxy` and a simulated enclave, each started on its own (and stopped by close())."""

    def __init__(self, base: pathlib.Path):
        self.base = base
        self.dev = base / "dev"
        self.port = free_port()
        self.procs = {}
        try:
            nekms("dev", "init", "--dir", str(self.dev))
            self.start_kms()
            self.start_proxy()
            self.enclave_log = base / "enclave.log"
            self.start_enclave("enclave", self.enclave_log)
            self.creds = principals(self.dev)
        except BaseException:
            self.close()
            raise

    def start_kms(self):
        self.procs["kms"], _ = start_kms(self.dev, self.base / "kms.ready", http="off", https=f"127.0.0.1:{self.port}")

    def start_proxy(self):
        allow = self.base / "allowlist.yaml"
        allow.write_text(f"allowlist:\n- {{address: 127.0.0.1, port: {self.port}}}\n")
        sock = self.base / "proxy.sock"
        sock.unlink(missing_ok=True)
        self.procs["proxy"] = start([NEKMS, "proxy", f"unix://{sock}", "127.0.0.1", str(self.port), "--config", str(allow)], sock,
                                    "nekms proxy", stderr=subprocess.DEVNULL, interval=0.02)

    def start_enclave(self, name, log, image=None):
        sock = self.base / f"{name}.sock"
        sock.unlink(missing_ok=True)
        args = [*enclave_args(self.dev, f"unix://{self.base / 'proxy.sock'}", self.port), "--kmstool", f"unix://{sock}",
                "--rpc", f"unix://{self.base / (name + '.rpc.sock')}"]
        if image:
            args += ["--image", str(image)]
        # The enclave's stderr is its log.
        self.procs[name] = start(args, sock, name, log, stdout=subprocess.DEVNULL, interval=0.02)
        return sock

    def stop(self, name):
        stop(self.procs.pop(name))

    def client(self, profile):
        return kms_client(f"https://localhost:{self.port}", self.creds[profile], verify=str(self.dev / "tls-ca.pem"))

    def set_client(self, kc, profile="instance", **override):
        c = self.creds[profile]
        msg = {"Operation": "SetClient", "AwsAccessKeyId": c["access_key_id"],
               "AwsSecretAccessKey": c["secret_access_key"], "AwsRegion": "us-east-1"}
        if c.get("session_token"):
            msg["AwsSessionToken"] = c["session_token"]
        msg.update(override)
        return kc.send(msg)

    def close(self):
        stop(*self.procs.values())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("kmstool"))
    try:
        pcr0 = json.loads(nekms("pcr", "sim", NEKMS_ENCLAVE).stdout)["Measurements"]["PCR0"]
        policy = {"Version": "2012-10-17", "Statement": [
            {"Sid": "Enable decrypt from enclave", "Effect": "Allow",
             "Principal": {"AWS": INSTANCE}, "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}},
            {"Sid": "Enable encrypt from instance", "Effect": "Allow",
             "Principal": {"AWS": INSTANCE}, "Action": "kms:Encrypt", "Resource": "*"},
            {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": ADMIN},
             "Action": ["kms:Create*", "kms:Describe*", "kms:Put*", "kms:Get*"], "Resource": "*"}]}
        w.key = w.client("admin").create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
        w.ciphertext = base64.b64encode(
            w.client("instance").encrypt(KeyId=w.key, Plaintext=b"Hello, KMS!")["CiphertextBlob"]).decode()
        yield w
    finally:
        w.close()


def test_decrypt_through_enclave_proxy_and_local_kms(world):
    kc = KmstoolClient(world.base / "enclave.sock")
    assert world.set_client(kc) == {"Status": "Ok"}
    r = kc.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
    assert r["Status"] == "Ok", r
    assert base64.b64decode(r["Message"]) == b"Hello, KMS!"
    # The instance's own Decrypt is denied: only the enclave image can read it.
    with pytest.raises(Exception) as e:
        world.client("instance").decrypt(CiphertextBlob=base64.b64decode(world.ciphertext))
    assert "AccessDeniedException" in str(e.value)
    kc.close()


def test_a_different_image_is_refused(world, tmp_path):
    other = tmp_path / "rebuilt-image"
    other.write_bytes(pathlib.Path(NEKMS_ENCLAVE).read_bytes() + b"one more byte")
    sock = world.start_enclave("rebuilt", world.base / "rebuilt.log", image=other)
    kc = KmstoolClient(sock)
    world.set_client(kc)
    r = kc.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
    assert r["Status"] == "Error" and "AccessDeniedException" in r["Message"], r
    kc.close()
    world.stop("rebuilt")


def test_bad_input_gets_an_error_or_a_closed_connection_and_others_are_unaffected(world):
    good = KmstoolClient(world.base / "enclave.sock")
    world.set_client(good)
    # Invalid JSON, a non-object, an unknown operation, missing fields: Error replies, connection stays open.
    bad = KmstoolClient(world.base / "enclave.sock")
    bad.sock.sendall(b"{not json\0")
    assert bad.recv()["Status"] == "Error"
    assert bad.send([1, 2])["Status"] == "Error"
    r = bad.send({"Operation": "Explode"})
    assert r["Status"] == "Error" and "Explode" in r["Message"]
    assert bad.send({"Operation": "Decrypt"})["Status"] == "Error"
    assert bad.send({"Operation": "Decrypt", "Ciphertext": "!!!"})["Status"] == "Error"
    assert bad.send({"Operation": "SetClient"})["Status"] == "Error"
    bad.close()
    # No zero byte, then hang up: nothing breaks.
    silent = KmstoolClient(world.base / "enclave.sock")
    silent.sock.sendall(b'{"Operation": "Decrypt"')
    silent.close()
    # 10 MB without a separator, while another client works.
    flood = KmstoolClient(world.base / "enclave.sock")
    results = []

    def flooding():
        try:
            flood.sock.sendall(b"x" * (10 * 1024 * 1024))
        except OSError:
            pass
        results.append(flood.recv())

    t = threading.Thread(target=flooding)
    t.start()
    r = good.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
    assert r["Status"] == "Ok", r
    t.join(30)
    assert results and (results[0] is None or results[0]["Status"] == "Error"), results
    flood.close()
    assert world.procs["enclave"].poll() is None, "the enclave is still running"
    r = good.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
    assert r["Status"] == "Ok"
    good.close()


def test_faults_are_reported_and_the_enclave_recovers(world):
    kc = KmstoolClient(world.base / "enclave.sock")
    # Wrong credentials: KMS's refusal is relayed.
    world.set_client(kc, AwsSecretAccessKey="not the secret")
    r = kc.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
    assert r["Status"] == "Error" and "InvalidSignatureException" in r["Message"], r
    world.set_client(kc)
    # KMS, then the proxy, stopped: an Error naming the cause; back again: it works.
    for name, restart, cause in (("kms", world.start_kms, "cannot reach KMS"), ("proxy", world.start_proxy, "proxy")):
        world.stop(name)
        r = kc.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
        assert r["Status"] == "Error" and cause in r["Message"], (name, r)
        restart()
        r = kc.send({"Operation": "Decrypt", "Ciphertext": world.ciphertext})
        assert r["Status"] == "Ok", (name, r)
    kc.close()


def test_the_enclave_never_logs_plaintext_or_credentials(world):
    log = world.enclave_log.read_bytes()
    assert b"Hello, KMS!" not in log and base64.b64encode(b"Hello, KMS!") not in log
    for c in world.creds.values():
        assert c["secret_access_key"].encode() not in log
        if c.get("session_token"):
            assert c["session_token"].encode() not in log
