"""`nekms dev up` and the parent-side commands, across real processes:

    nekms enclave / nekms kmstool / nekms-enclave cli
        --unix--> nekms-enclave (simulated) --unix--> nekms proxy --TCP--> nekms-kms (HTTPS)

all started by one `nekms dev up` supervisor. Checks that the PCRs the running
enclave reports (Describe and its documents) are what `nekms pcr sim` prints
for its image together with its measured configuration (which pins the
custody KMS key dev up set up), the kmstool flow with the instance denied, the
generic flow refused the custody key (rule custody-key), the enclave-CLI
verbs, credentials from aws-config's default chain (profiles, environment,
credential_process with an expiry), and the supervisor's handling of a dying
child and of SIGTERM.
"""

import base64
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import tomllib

import boto3
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NEKMS = os.environ.get("NEKMS_BIN", str(ROOT / "target" / "debug" / "nekms"))
NEKMS_ENCLAVE = os.environ.get("NEKMS_ENCLAVE_BIN", str(ROOT / "target" / "debug" / "nekms-enclave"))
ACCOUNT = "111122223333"


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone.
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


class Up:
    def __init__(self, base: pathlib.Path, *extra):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.dev = base / "dev"
        self.ready = base / "up.json"
        self.log = base / "up.log"
        self.proc = subprocess.Popen(
            [NEKMS, "dev", "up", "--dir", str(self.dev), "--kms-http", "127.0.0.1:0", "--kms-https", "127.0.0.1:0",
             "--ready-file", str(self.ready), *extra],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while not self.ready.exists():
            assert self.proc.poll() is None, f"dev up exited: {self.log.read_text()}"
            assert time.time() < deadline, "dev up did not come up"
            time.sleep(0.05)
        self.info = json.loads(self.ready.read_text())
        self.env = {**os.environ, **self.info["env"]}
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            self.env.pop(k, None)
        principals = tomllib.loads((self.dev / "principals.toml").read_text())["principal"]
        self.creds = {p["name"]: p for p in principals}

    def nekms(self, *args, check=True, env=None):
        r = subprocess.run([NEKMS, *args], capture_output=True, text=True, env=env or self.env, timeout=60)
        if check:
            assert r.returncode == 0, f"nekms {' '.join(args)}: {r.stderr}"
        return r

    def client(self, profile):
        c = self.creds[profile]
        return boto3.client("kms", region_name="us-east-1", endpoint_url=self.info["kms_http"],
                            aws_access_key_id=c["access_key_id"], aws_secret_access_key=c["secret_access_key"],
                            aws_session_token=c.get("session_token"))

    def enclave_cli(self, verb, *args, profile="instance"):
        c = self.creds[profile]
        https_port = self.info["kms_https"].rsplit(":", 1)[1]
        # The same image with the same measured configuration as the running enclave (so the same PCR0).
        cmd = [NEKMS_ENCLAVE, "--config", self.info["enclave_config"], "--sim", "--dev-dir", str(self.dev), "--proxy", self.info["proxy"],
               "--kms-endpoint", f"https://localhost:{https_port}", "--kms-ca", str(self.dev / "tls-ca.pem"),
               "cli", verb, "--region", "us-east-1", "--aws-access-key-id", c["access_key_id"],
               "--aws-secret-access-key", c["secret_access_key"], *args]
        if c.get("session_token"):
            cmd += ["--aws-session-token", c["session_token"]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    u = Up(tmp_path_factory.mktemp("up"))
    pcr0 = json.loads(u.nekms("pcr", "sim", NEKMS_ENCLAVE, "--config", u.info["enclave_config"]).stdout)["Measurements"]["PCR0"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Enclave", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/nekms-instance"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:GenerateRandom"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0}}},
        {"Sid": "Instance encrypts", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/nekms-instance"},
         "Action": "kms:Encrypt", "Resource": "*"},
        {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/nekms-key-admin"},
         "Action": "kms:*", "Resource": "*"}]}
    u.key = u.client("admin").create_key(Policy=json.dumps(policy))["KeyMetadata"]["Arn"]
    u.ciphertext = base64.b64encode(u.client("instance").encrypt(KeyId=u.key, Plaintext=b"Hello, KMS!")["CiphertextBlob"]).decode()
    yield u
    u.stop()


def test_describe_and_documents_carry_the_pcrs_nekms_pcr_sim_prints(up, tmp_path):
    # The enclave's configuration pins the custody key dev up set up, and is measured with the image.
    config = tomllib.loads(pathlib.Path(up.info["enclave_config"]).read_text())
    assert config["custody-kms-keys"] == [up.info["custody_kms_key"]]
    assert up.info["env"]["NEKMS_CUSTODY_KMS_KEY"] == up.info["custody_kms_key"]
    sim = json.loads(up.nekms("pcr", "sim", NEKMS_ENCLAVE, "--config", up.info["enclave_config"]).stdout)["Measurements"]
    described = json.loads(up.nekms("enclave", "describe", "--json").stdout)
    assert described["simulated"] is True and described["protocol_version"] == 1
    for i in range(3):
        assert described["pcrs"][f"PCR{i}"] == sim[f"PCR{i}"].lower(), i
        assert up.info[f"pcr{i}"] == sim[f"PCR{i}"].lower()
    assert described["credentials"]["access_key_id"] == up.creds["instance"]["access_key_id"]
    # The image alone measures differently: PCR0 covers the configuration too.
    image_only = json.loads(up.nekms("pcr", "sim", NEKMS_ENCLAVE).stdout)["Measurements"]
    assert image_only["PCR0"].lower() != described["pcrs"]["PCR0"]

    doc = tmp_path / "doc.cbor"
    up.nekms("enclave", "attest", "--nonce", "00112233", "--user-data", "6869", "-o", str(doc))
    pcr_args = [a for i in range(3) for a in ("--pcr", f"{i}={sim[f'PCR{i}']}")]
    verified = json.loads(up.nekms("attest", "verify", "--dev-root", "--dir", str(up.dev), "--nonce", "00112233",
                                   *pcr_args, "--json", str(doc)).stdout)
    # The caller's user_data is stored behind the caller prefix, so it never passes for the enclave's own.
    caller = b"nekms-caller:v1:hi"
    assert verified["document"]["user_data"] in (caller.hex(), list(caller), base64.b64encode(caller).decode()), verified["document"]["user_data"]
    # A different PCR0 expectation is refused.
    wrong = up.nekms("attest", "verify", "--dev-root", "--dir", str(up.dev), "--pcr", "0=" + "00" * 48, str(doc), check=False)
    assert wrong.returncode != 0 and "PCR0" in wrong.stderr
    too_long = up.nekms("enclave", "attest", "--nonce", "00" * 513, check=False)
    assert too_long.returncode != 0 and "at most 512" in too_long.stderr


def test_kmstool_decrypt_through_the_enclave_and_the_instance_is_denied(up):
    out = up.nekms("kmstool", "decrypt", "--address", up.info["kmstool"], "--region", "us-east-1", up.ciphertext)
    assert out.stdout == "Hello, KMS!"
    # The same through the native RPC.
    out = up.nekms("enclave", "decrypt", up.ciphertext)
    assert base64.b64decode(out.stdout) == b"Hello, KMS!"
    with pytest.raises(up.client("instance").exceptions.ClientError) as denied:
        up.client("instance").decrypt(CiphertextBlob=base64.b64decode(up.ciphertext))
    assert "AccessDenied" in str(denied.value)
    # Root and the wrong credentials through kmstool: KMS's refusal is relayed.
    root = up.creds["root"]
    r = up.nekms("kmstool", "decrypt", "--address", up.info["kmstool"], "--aws-access-key-id", root["access_key_id"],
                 "--aws-secret-access-key", root["secret_access_key"], up.ciphertext, check=False)
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
    r = up.nekms("kmstool", "decrypt", "--address", up.info["kmstool"], "--aws-access-key-id", "AKIAWRONGWRONGWRONG1",
                 "--aws-secret-access-key", "nope", up.ciphertext, check=False)
    assert r.returncode != 0 and "Error" in r.stderr, r.stderr


def test_enclave_cli_verbs_print_kmstool_enclave_cli_lines(up):
    r = up.enclave_cli("decrypt", "--ciphertext", up.ciphertext)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["PLAINTEXT: " + base64.b64encode(b"Hello, KMS!").decode()]

    r = up.enclave_cli("genkey", "--key-id", up.key, "--key-spec", "AES-256")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert set(lines) == {"CIPHERTEXT", "PLAINTEXT"}
    assert len(base64.b64decode(lines["PLAINTEXT"])) == 32
    # The data key's ciphertext opens inside the enclave to the same key, and not for the instance.
    again = up.enclave_cli("decrypt", "--ciphertext", lines["CIPHERTEXT"])
    assert again.stdout.strip() == "PLAINTEXT: " + lines["PLAINTEXT"]

    r = up.enclave_cli("genkey", "--key-id", up.key, "--key-spec", "AES-128")
    assert len(base64.b64decode(r.stdout.splitlines()[1].split(": ")[1])) == 16

    r = up.enclave_cli("genrandom", "--length", "48")
    assert r.returncode == 0, r.stderr
    assert len(base64.b64decode(r.stdout.strip().removeprefix("PLAINTEXT: "))) == 48

    r = up.enclave_cli("decrypt", "--ciphertext", up.ciphertext, profile="root")
    assert r.returncode != 0 and "AccessDenied" in r.stderr, r.stderr
    r = up.enclave_cli("decrypt", "--ciphertext", "!!notbase64")
    assert r.returncode != 0 and "base64" in r.stderr
    r = up.enclave_cli("genkey", "--key-id", up.key, "--key-spec", "AES-512")
    assert r.returncode != 0
    # The custody key never serves the parent, whatever the verb.
    r = up.enclave_cli("genkey", "--key-id", up.info["custody_kms_key"], "--key-spec", "AES-256")
    assert r.returncode != 0 and "rule custody-key" in r.stderr and "PLAINTEXT" not in r.stdout, r.stderr


def test_credentials_come_from_the_default_chain_and_expiry_is_enforced(up, tmp_path):
    # Profiles (AWS_PROFILE=instance from dev up's environment).
    r = up.nekms("enclave", "credentials")
    assert up.creds["instance"]["access_key_id"] in r.stdout and "temporary" in r.stdout

    # The environment, with wrong keys: KMS's answer is relayed.
    env = {**up.env, "AWS_ACCESS_KEY_ID": "AKIAWRONGWRONGWRONG1", "AWS_SECRET_ACCESS_KEY": "nope"}
    env.pop("AWS_PROFILE")
    up.nekms("enclave", "credentials", env=env)
    r = up.nekms("enclave", "random", "--length", "16", check=False)
    assert r.returncode != 0 and ("UnrecognizedClient" in r.stderr or "AccessDenied" in r.stderr), r.stderr

    # credential_process with an expiry a few seconds away.
    inst = up.creds["instance"]
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 4))
    script = tmp_path / "creds.py"
    script.write_text("import json\nprint(json.dumps(" + repr({
        "Version": 1, "AccessKeyId": inst["access_key_id"], "SecretAccessKey": inst["secret_access_key"],
        "SessionToken": inst["session_token"], "Expiration": expires}) + "))\n")
    config = tmp_path / "config"
    config.write_text(f"[profile shortlived]\ncredential_process = {sys.executable} {script}\nregion = us-east-1\n")
    env = {**up.env, "AWS_CONFIG_FILE": str(config), "AWS_PROFILE": "shortlived"}
    r = up.nekms("enclave", "credentials", env=env)
    assert "expires" in r.stdout, r.stdout
    assert len(base64.b64decode(up.nekms("enclave", "random", "--length", "16").stdout)) == 16
    time.sleep(5)
    r = up.nekms("enclave", "random", "--length", "16", check=False)
    assert r.returncode != 0 and "expired" in r.stderr, r.stderr

    # --watch keeps pushing; the enclave is usable again.
    watch = subprocess.Popen([NEKMS, "enclave", "credentials", "--watch", "--interval", "1"], env=up.env,
                             stdout=subprocess.PIPE, text=True)
    try:
        lines = [watch.stdout.readline() for _ in range(2)]
        assert all("credentials set in the enclave" in l for l in lines), lines
    finally:
        watch.terminate()
        watch.wait(timeout=10)
    assert len(base64.b64decode(up.nekms("enclave", "random", "--length", "16").stdout)) == 16


def test_no_secret_reaches_the_logs(up):
    up.nekms("kmstool", "decrypt", "--address", up.info["kmstool"], up.ciphertext)
    up.nekms("enclave", "credentials")
    log = up.log.read_text()  # the supervisor's, the KMS's, the proxy's and the enclave's output
    assert "nekms-enclave: RPC on" in log
    inst = up.creds["instance"]
    for secret in (inst["secret_access_key"], inst["session_token"], "Hello, KMS!", base64.b64encode(b"Hello, KMS!").decode()):
        assert secret not in log


def test_no_enclave_is_a_clear_error(up, tmp_path):
    r = up.nekms("enclave", "describe", "--enclave", f"unix://{tmp_path}/nothing.sock", check=False)
    assert r.returncode != 0 and "cannot connect to the enclave" in r.stderr
    env = {k: v for k, v in up.env.items() if k != "NEKMS_ENCLAVE"}
    r = up.nekms("enclave", "describe", check=False, env=env)
    assert r.returncode != 0 and "--enclave" in r.stderr


def test_the_supervisor_reports_a_dead_child_and_stops_the_rest(tmp_path):
    u = Up(tmp_path)
    pids = u.info["pids"]
    os.kill(pids["proxy"], signal.SIGKILL)
    assert u.proc.wait(timeout=30) != 0
    log = u.log.read_text()
    assert f"the proxy (pid {pids['proxy']}) exited" in log, log
    for name in ("kms", "enclave"):
        assert not alive(pids[name]), name

    u = Up(tmp_path / "again")
    pids = u.info["pids"]
    u.proc.send_signal(signal.SIGTERM)
    assert u.proc.wait(timeout=30) == 0
    for name in ("kms", "proxy", "enclave"):
        assert not alive(pids[name]), name
