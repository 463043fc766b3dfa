"""What the Python tests share: the binaries under test, running the nekms
CLI, starting and stopping processes, `nekms dev up` (the `dev_up`
fixture), nekms-kms on its own, moto's server, and the enclave's native RPC.

The binaries come from the environment, as `scripts/test` sets it:
NEKMS_BIN, NEKMS_KMS_BIN, NEKMS_ENCLAVE_BIN (and NEKMS_P11_MODULE,
NEKMS_SC_BRIDGE_BIN); each one not set is taken from beside NEKMS_BIN,
which defaults to target/debug/nekms.

Everything a test or fixture starts is stopped when it is done, also when
its setup fails half-way: a process that does not get ready is stopped
before the failure is reported, an `Up` stops what was started through it,
and `dev_up` stops every `Up` (and whatever it was asked to keep) at the end
of the module.
"""

import base64
import json
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib

import boto3
import cbor2
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NEKMS = os.environ.get("NEKMS_BIN", str(ROOT / "target" / "debug" / "nekms"))


def _beside_nekms(variable, name):
    return os.environ.get(variable, str(pathlib.Path(NEKMS).with_name(name)))


NEKMS_KMS = _beside_nekms("NEKMS_KMS_BIN", "nekms-kms")
NEKMS_ENCLAVE = _beside_nekms("NEKMS_ENCLAVE_BIN", "nekms-enclave")
P11_MODULE = _beside_nekms("NEKMS_P11_MODULE", "libnekms_p11.so")
SC_BRIDGE = _beside_nekms("NEKMS_SC_BRIDGE_BIN", "nekms-sc-bridge")

ACCOUNT = "111122223333"
INSTANCE = f"arn:aws:iam::{ACCOUNT}:role/nekms-instance"
ADMIN = f"arn:aws:iam::{ACCOUNT}:role/nekms-key-admin"


def nekms(*args, env=None, check=True, timeout=60):
    """Runs the nekms CLI with `args` (and `env`, else this process's environment); with `check`, it must succeed."""
    r = subprocess.run([NEKMS, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if check:
        assert r.returncode == 0, f"nekms {' '.join(args)}: {r.stderr}"
    return r


# ---- processes ----------------------------------------------------------------


def spawn(args, log=None, env=None, mode="ab", stdout=None, **popen):
    """Starts `args`. With `log`, its output goes to that file (opened with `mode`): stdout and stderr, or
    stderr alone where `stdout` says where stdout goes. Without, stdout goes nowhere (or to `stdout`)."""
    if log is None:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL if stdout is None else stdout, **popen)
    with open(log, mode) as f:
        return subprocess.Popen(args, env=env, stdout=f if stdout is None else stdout, stderr=f, **popen)


def stop(*procs, timeout=10, sig=signal.SIGTERM, group=False):
    """Stops the processes still running (`sig`, to the process group with `group`), waits for them, and
    SIGKILLs any that does not stop within `timeout` seconds."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        try:
            if group:
                os.killpg(p.pid, sig)
            elif p.poll() is None:
                p.send_signal(sig)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL) if group else p.kill()
            except ProcessLookupError:
                pass
            p.wait()


def _text(log, exited=True):
    """What `log` says (a file, or a callable read only once the process `exited`, such as its stderr pipe)."""
    if log is None or (callable(log) and not exited):
        return ""
    try:
        return ": " + (log() if callable(log) else pathlib.Path(log).read_text(errors="replace"))[-8000:]
    except OSError:
        return ""


def wait_for(ready, proc=None, what="the process", timeout=30, log=None, interval=0.05):
    """Waits until `ready` (a path that exists, or a callable that returns something true) and returns that;
    fails if `proc` exits first or after `timeout` seconds, with `log` in the message."""
    deadline = time.time() + timeout
    while True:
        done = ready() if callable(ready) else os.path.exists(ready)
        if done:
            return done
        if proc is not None:
            assert proc.poll() is None, f"{what} exited{_text(log)}"
        assert time.time() < deadline, f"{what}: not ready after {timeout} s{_text(log, exited=False)}"
        time.sleep(interval)


def start(args, ready, what, log=None, timeout=30, interval=0.05, group=False, **spawn_args):
    """spawn() and wait_for(`ready`); a process that does not get ready is stopped before the failure is raised.
    With `group`, the process leads a process group of its own (and is stopped with it)."""
    p = spawn(args, log, start_new_session=group, **spawn_args)
    try:
        wait_for(ready, p, what, timeout, log, interval)
    except BaseException:
        stop(p, group=group)
        raise
    return p


def stop_all(stops):
    """Calls every function in `stops`, last first, all of them even when one fails (the first failure is raised)."""
    failure = None
    while stops:
        try:
            stops.pop()()
        except BaseException as e:  # noqa: BLE001 (the rest are still stopped)
            failure = failure or e
    if failure is not None:
        raise failure


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


# ---- the development world ------------------------------------------------------


def principals(dev):
    """The principals `nekms dev init` wrote into `dev`, by name."""
    return {p["name"]: p for p in tomllib.loads((pathlib.Path(dev) / "principals.toml").read_text())["principal"]}


def kms_client(endpoint, principal, **kwargs):
    """boto3's KMS client at `endpoint` with a principal's keys (a principals.toml entry)."""
    return boto3.client("kms", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id=principal["access_key_id"],
                        aws_secret_access_key=principal["secret_access_key"], aws_session_token=principal.get("session_token"), **kwargs)


def enclave_policy(pcr0, actions=("kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom")):
    """A key policy: the enclave image `pcr0` may use `actions`, the instance role encrypts, the administrators manage."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": INSTANCE}, "Action": list(actions), "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}},
        {"Sid": "Instance encrypts", "Effect": "Allow", "Principal": {"AWS": INSTANCE}, "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Admins manage", "Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]}


def enclave_args(dev, proxy, kms_https_port, config=None):
    """A simulated nekms-enclave of the development world `dev`, reaching its KMS at `kms_https_port` through `proxy`."""
    args = [NEKMS_ENCLAVE, "--sim", "--dev-dir", str(dev), "--proxy", proxy, "--kms-endpoint", f"https://localhost:{kms_https_port}",
            "--kms-ca", str(pathlib.Path(dev) / "tls-ca.pem")]
    return args + ["--config", str(config)] if config else args


def start_kms(dev, ready, http="127.0.0.1:0", https="127.0.0.1:0"):
    """nekms-kms serving the development world `dev`, once it wrote `ready`: the process and what it wrote."""
    ready = pathlib.Path(ready)
    ready.unlink(missing_ok=True)
    p = start([NEKMS_KMS, "--dir", str(dev), "--http", http, "--https", https, "--exit-after", "900", "--ready-file", str(ready)],
              ready, "nekms-kms", interval=0.02)
    return p, json.loads(ready.read_text())


class Up:
    """`nekms dev up` in `base` (the development world in base/dev): the local KMS, the proxy and the simulated
    enclave under one supervisor, ready when it has written base/up.json. `nekms()` runs the CLI in its
    environment and keeps every output in `outputs`; what is started through `spawn()`/`start()`, and what is
    given to `keep()`, is stopped by `stop()` (or at the end of a `with` block), before dev up itself."""

    def __init__(self, base, *extra, env=None):
        self.base = pathlib.Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.dev, self.ready, self.log = self.base / "dev", self.base / "up.json", self.base / "up.log"
        self.outputs = []
        self._stops = []
        self.ready.unlink(missing_ok=True)  # a previous dev up's, in the same place
        self.proc = start([NEKMS, "dev", "up", "--dir", str(self.dev), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0",
                           "--ready-file", str(self.ready), *extra], self.ready, "dev up", log=self.log, mode="wb", timeout=60, env=env)
        try:
            self.info = json.loads(self.ready.read_text())
            self.env = {**os.environ, **self.info["env"]}
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
                self.env.pop(k, None)
            self.creds = principals(self.dev)
        except BaseException:
            self.stop()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def nekms(self, *args, check=True, env=None):
        r = nekms(*args, env=env or self.env, check=check, timeout=120)
        self.outputs += [r.stdout, r.stderr]
        return r

    def client(self, profile):
        return kms_client(self.info["kms_http"], self.creds[profile])

    def enclave_args(self, config=None):
        """Another simulated enclave on dev up's proxy and KMS; with dev up's measured configuration (so its PCR0, and its
        signature, so its PCR8), unless `config`."""
        args = enclave_args(self.dev, self.info["proxy"], self.info["kms_https"].rsplit(":", 1)[1], config or self.info["enclave_config"])
        if config is None and self.info.get("sim_signature"):
            args += ["--sim-signature", self.info["sim_signature"]]
        return args

    def enclave_cli(self, verb, *args, profile="instance"):
        """kmstool-enclave-cli's verb, run by an enclave like dev up's, with `profile`'s credentials."""
        c = self.creds[profile]
        cmd = [*self.enclave_args(), "cli", verb, "--region", "us-east-1", "--aws-access-key-id", c["access_key_id"],
               "--aws-secret-access-key", c["secret_access_key"], *args]
        if c.get("session_token"):
            cmd += ["--aws-session-token", c["session_token"]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        self.outputs += [r.stdout, r.stderr]
        return r

    def keep(self, thing):
        """`thing` (anything with a stop()) is stopped with dev up."""
        self._stops.append(thing.stop)
        return thing

    def spawn(self, args, log=None, env=None, **kwargs):
        """spawn() in dev up's environment (unless `env`); stopped with dev up."""
        p = spawn(args, log, env=env or self.env, **kwargs)
        self._stops.append(lambda: stop(p))
        return p

    def start(self, args, ready, what, log=None, env=None, group=False, **kwargs):
        """start() in dev up's environment (unless `env`); stopped with dev up."""
        p = start(args, ready, what, log, env=env or self.env, group=group, **kwargs)
        self._stops.append(lambda: stop(p, group=group))
        return p

    def start_moto(self):
        """moto's server for the DynamoDB store and Secrets Manager, logging to base/moto.log."""
        moto = self.keep(Moto(self.base / "moto.log"))
        self.env["NEKMS_STORE_ENDPOINT"] = self.env["NEKMS_SECRETS_ENDPOINT"] = moto.url
        return moto

    def stop(self):
        """Stops what was started through this dev up (last first), then dev up, which stops its children."""
        self._stops.insert(0, lambda: stop(self.proc, timeout=30))
        stop_all(self._stops)


class DevUps:
    """The `dev_up` fixture: `dev_up(where, *options)` starts `nekms dev up` with those options in `where` (a
    path, or the name of a new temporary directory); `dev_up.keep(thing)` takes anything else with a stop().
    All are stopped, last started first, when the module is done."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.things = []

    def __call__(self, where="up", *extra):
        base = where if isinstance(where, pathlib.Path) else self.tmp_path_factory.mktemp(where)
        return self.keep(Up(base, *extra))

    def keep(self, thing):
        self.things.append(thing)
        return thing

    def stop(self):
        stop_all([thing.stop for thing in self.things])
        self.things.clear()


@pytest.fixture(scope="module")
def dev_up(tmp_path_factory):
    ups = DevUps(tmp_path_factory)
    try:
        yield ups
    finally:
        ups.stop()


# ---- peers --------------------------------------------------------------------


class Moto:
    """moto's server on 127.0.0.1, started (and started again after stop()) by the test."""

    env = None  # the server's environment: this process's

    def __init__(self, log: pathlib.Path, port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.start()

    def command(self):
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def start(self):
        self.proc = start(self.command(), lambda: port_open(self.port), "moto_server", self.log, env=self.env, interval=0.1)

    def stop(self):
        stop(self.proc)

    def client(self, service, key_id="testing", secret="testing"):
        return boto3.client(service, region_name="us-east-1", endpoint_url=self.url, aws_access_key_id=key_id,
                            aws_secret_access_key=secret)


def verify_default_scheme(spec, public_key, message, signature):
    """Checks a signature made with a key spec's default scheme (`nekms sign` without --scheme) with `cryptography`;
    `public_key` is PEM or DER."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    load = serialization.load_pem_public_key if public_key.startswith(b"-----") else serialization.load_der_public_key
    key = load(public_key)
    if spec == "ed25519":
        key.verify(signature, message)
    elif spec.startswith("rsa"):
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    else:
        key.verify(signature, message, ec.ECDSA(hashes.SHA384() if spec == "p384" else hashes.SHA256()))


def secret_forms(secret: bytes, unpadded=False):
    """A secret raw, in hex (both cases) and in base64 (also without its padding, with `unpadded`)."""
    forms = {secret, secret.hex().encode(), secret.hex().upper().encode(), base64.b64encode(secret)}
    return forms | {base64.b64encode(secret).rstrip(b"=")} if unpadded else forms


class Rpc:
    """The enclave's native RPC as its module documentation describes it: 4-byte
    big-endian length, CBOR body; Hello/Welcome, then Call/Reply."""

    def __init__(self, address):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(address.removeprefix("unix://"))
        self.id = 0
        self.send({"Hello": {"protocol": "nekms-rpc", "versions": [1], "agent": "attacker"}})
        assert "Welcome" in self.recv()

    def send_raw(self, body: bytes):
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def send(self, frame):
        self.send_raw(cbor2.dumps(frame))

    def recv(self):
        head = self.read(4)
        return cbor2.loads(self.read(struct.unpack(">I", head)[0]))

    def read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "the enclave closed the connection"
            out += chunk
        return out

    def call(self, request, raw=None):
        """The outcome: ("Ok", value) or ("Err", {code, message, ...})."""
        self.id += 1
        if raw is None:
            self.send({"Call": {"id": self.id, "request": request}})
        else:
            self.send_raw(raw(self.id))
        reply = self.recv()["Reply"]
        assert reply["id"] == self.id
        (kind, value), = reply["outcome"].items()
        return kind, value


def cbor_record(r):
    """A key record as the RPC carries it (bytes as CBOR byte strings)."""
    out = dict(r)
    for k in ("public_key", "encrypted_data_key", "sealed_private_key", "attestation"):
        if out.get(k) is not None:
            out[k] = base64.b64decode(out[k])
    return out
