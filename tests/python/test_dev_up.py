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

import pytest

from conftest import NEKMS, NEKMS_ENCLAVE, Up, enclave_policy, spawn, stop


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


@pytest.fixture(scope="module")
def up(dev_up):
    u = dev_up("up")
    pcr0 = json.loads(u.nekms("pcr", "sim", NEKMS_ENCLAVE, "--config", u.info["enclave_config"]).stdout)["Measurements"]["PCR0"]
    u.key = u.client("admin").create_key(Policy=json.dumps(enclave_policy(pcr0)))["KeyMetadata"]["Arn"]
    u.ciphertext = base64.b64encode(u.client("instance").encrypt(KeyId=u.key, Plaintext=b"Hello, KMS!")["CiphertextBlob"]).decode()
    return u


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
    watch = spawn([NEKMS, "enclave", "credentials", "--watch", "--interval", "1"], env=up.env, stdout=subprocess.PIPE, text=True)
    try:
        lines = [watch.stdout.readline() for _ in range(2)]
        assert all("credentials set in the enclave" in l for l in lines), lines
    finally:
        stop(watch)
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
    with Up(tmp_path) as u:
        pids = u.info["pids"]
        os.kill(pids["proxy"], signal.SIGKILL)
        assert u.proc.wait(timeout=30) != 0
        log = u.log.read_text()
        assert f"the proxy (pid {pids['proxy']}) exited" in log, log
        for name in ("kms", "enclave"):
            assert not alive(pids[name]), name

    with Up(tmp_path / "again") as u:
        pids = u.info["pids"]
        u.proc.send_signal(signal.SIGTERM)
        assert u.proc.wait(timeout=30) == 0
        for name in ("kms", "proxy", "enclave"):
            assert not alive(pids[name]), name
