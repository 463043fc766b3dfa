"""`nekms image`: an enclave image (EIF) built without Docker from the
static nekms-enclave, its enclave.toml and a blobs directory, checked by
three readers that share no code (nekms's own `image measure`, AWS's crate
behind `image describe`, and eif_reader.py here), signed with a local P-384
key made by OpenSSL and with a P-384 key in the local KMS, and refused, with
the file named and nothing written, whenever an input is unfit.

The blobs: Debian's cloud kernel and its in-tree nsm.ko (scripts/guest-kernel)
stand in for AWS's, and /sbin/ldconfig (a static x86_64 program) stands in
for AWS's init: nothing here boots these images, so only the bytes matter."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess

import pytest

import eif_reader
from conftest import ACCOUNT, ADMIN, NEKMS_ENCLAVE, ROOT, nekms
from test_local_kms import LocalKms

IMAGE_ENCLAVE = os.environ.get("NEKMS_IMAGE_ENCLAVE_BIN", str(ROOT / "target" / "image" / "nekms-enclave"))
ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
CONFIG = f'custody-kms-keys = ["{ARN}"]\nregion = "us-east-1"\n'
CMDLINE = "reboot=k panic=30 pci=off nomodules console=ttyS0 random.trust_cpu=on\n"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    kernel = os.environ.get("NEKMS_GUEST_KERNEL_DIR") or subprocess.run(
        [str(ROOT / "scripts" / "guest-kernel")], check=True, capture_output=True, text=True).stdout.strip()
    d = tmp_path_factory.mktemp("blobs")
    shutil.copy(pathlib.Path(kernel) / "bzImage", d / "bzImage")
    shutil.copy(pathlib.Path(kernel) / "modules" / "nsm.ko", d / "nsm.ko")
    shutil.copy("/sbin/ldconfig", d / "init")
    (d / "cmdline").write_text(CMDLINE)
    return d


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "enclave.toml"
    p.write_text(CONFIG)
    return p


def build(blobs, config, out, *extra, check=True, enclave=IMAGE_ENCLAVE, env=None):
    r = nekms("image", "build", "--enclave-bin", str(enclave), "--config", str(config), "--blobs", str(blobs),
              "-o", str(out), *extra, check=check, env=env, timeout=180)
    return json.loads(r.stdout)["Measurements"] if r.returncode == 0 else r


def pcrs_of(m):
    return {k: v for k, v in m.items() if k.startswith("PCR")}


def test_an_image_is_reproducible_and_three_readers_agree(blobs, config, tmp_path):
    a, b = tmp_path / "a.eif", tmp_path / "b.eif"
    printed = build(blobs, config, a)
    assert build(blobs, config, b) == printed
    assert a.read_bytes() == b.read_bytes(), "the same inputs must give the same bytes"
    assert printed["HashAlgorithm"] == "Sha384 { ... }" and set(printed) == {"HashAlgorithm", "PCR0", "PCR1", "PCR2"}

    data = a.read_bytes()
    assert eif_reader.pcrs(data) == pcrs_of(printed)
    assert json.loads(nekms("image", "measure", str(a)).stdout)["Measurements"] == printed
    described = json.loads(nekms("image", "describe", str(a)).stdout)
    assert described["Measurements"] == printed
    assert (described["EifVersion"], described["CheckCRC"], described["IsSigned"]) == (4, True, False)
    assert described["ImageName"] == "nekms-enclave"
    assert described["Metadata"]["BuildTime"] == "1970-01-01T00:00:00Z"
    assert described["Metadata"]["KernelVersion"].startswith("6.")
    assert eif_reader.header(data)["flags"] == 0  # x86_64

    # The layout nitro-cli writes: kernel, cmdline, metadata, bootstrap ramdisk, customer ramdisk.
    secs = eif_reader.sections(data)
    assert [k for k, _ in secs] == ["kernel", "cmdline", "metadata", "ramdisk", "ramdisk"]
    assert secs[0][1] == (blobs / "bzImage").read_bytes()
    assert secs[1][1] == CMDLINE.strip().encode()
    boot = eif_reader.ramdisk_files(secs[3][1])
    assert list(boot) == ["dev", "init", "nsm.ko"]
    assert boot["init"] == (0o100755, (blobs / "init").read_bytes())
    assert boot["nsm.ko"][1] == (blobs / "nsm.ko").read_bytes()
    app = eif_reader.ramdisk_files(secs[4][1])
    assert app["rootfs/usr/bin/nekms-enclave"] == (0o100755, pathlib.Path(IMAGE_ENCLAVE).read_bytes())
    assert app["rootfs/etc/nekms/enclave.toml"] == (0o100644, CONFIG.encode())
    assert app["cmd"][1] == b"/usr/bin/nekms-enclave\n--config\n/etc/nekms/enclave.toml\n"
    assert app["env"][1] == b""
    for d in ("rootfs", "rootfs/dev", "rootfs/proc", "rootfs/run", "rootfs/sys", "rootfs/tmp", "rootfs/usr/bin"):
        assert app[d][0] == 0o040755, d
    assert list(app) == sorted(app), "entries sorted, each directory before what it holds"


def test_one_changed_byte_changes_pcr0_and_pcr2_but_not_pcr1(blobs, config, tmp_path):
    base = build(blobs, config, tmp_path / "base.eif")
    changed = tmp_path / "changed.toml"
    changed.write_text(CONFIG.replace("us-east-1\"\n", "us-east-2\"\n"))
    assert len(changed.read_bytes()) == len(config.read_bytes())
    other = build(blobs, changed, tmp_path / "other.eif")
    assert other["PCR1"] == base["PCR1"]
    assert other["PCR0"] != base["PCR0"] and other["PCR2"] != base["PCR2"]
    # An argument or an environment line is measured too.
    assert build(blobs, config, tmp_path / "arg.eif", "--enclave-arg", "--key-cache=0")["PCR2"] != base["PCR2"]
    assert build(blobs, config, tmp_path / "env.eif", "--env", "RUST_LOG=info")["PCR2"] != base["PCR2"]

    # The custody key's final policy names the image's PCR0, read from the file.
    policy = json.loads(nekms("policy", "custody", "--account", ACCOUNT, "--image", str(tmp_path / "base.eif")).stdout)
    text = json.dumps(policy)
    assert base["PCR0"] in text and other["PCR0"] not in text


def make_signer(tmp_path, name):
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subprocess.run(["openssl", "ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", str(key)], check=True)
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", str(key), "-sha384", "-days", "30", "-subj",
                    f"/CN=nekms test {name}/O=nekms", "-out", str(cert)], check=True, capture_output=True)
    return key, cert


def cert_pcr8(cert):
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"], check=True, capture_output=True).stdout
    return hashlib.sha384(b"\0" * 48 + hashlib.sha384(der).digest()).hexdigest()


def check_signed(eif, printed, cert, unsigned):
    data = eif.read_bytes()
    assert pcrs_of(printed) == {**pcrs_of(unsigned), "PCR8": cert_pcr8(cert)}
    assert eif_reader.pcrs(data) == pcrs_of(printed)
    assert eif_reader.verify_signature(data) == {"index": 0, "value": printed["PCR0"]}
    described = json.loads(nekms("image", "describe", str(eif)).stdout)
    assert described["Measurements"] == printed
    assert (described["IsSigned"], described["SignatureCheck"], described["CheckCRC"]) == (True, True, True)
    assert json.loads(nekms("image", "pcr8", "--cert", str(cert)).stdout)["PCR8"] == printed["PCR8"]
    return described


def test_signed_with_a_local_p384_key(blobs, config, tmp_path):
    unsigned = build(blobs, config, tmp_path / "u.eif")
    key, cert = make_signer(tmp_path, "signer")
    first = build(blobs, config, tmp_path / "s1.eif", "--sign-key", str(key), "--sign-cert", str(cert))
    second = build(blobs, config, tmp_path / "s2.eif", "--sign-key", str(key), "--sign-cert", str(cert))
    assert first == second, "ECDSA signatures differ between builds; the measurements do not"
    d = check_signed(tmp_path / "s1.eif", first, cert, unsigned)
    assert d["SigningCertificate"]["IssuerName"]["commonName"] == "nekms test signer"
    check_signed(tmp_path / "s2.eif", second, cert, unsigned)

    # nekms's own check of the signature (what run-enclave checks) passes; a signature section copied from
    # another image signed by the same key (so the same certificate, the same PCR8) fails it, and the VM
    # launcher will not boot such an image.
    assert json.loads(nekms("image", "measure", "--check-signature", str(tmp_path / "s1.eif")).stdout)["Measurements"] == first
    changed = tmp_path / "changed.toml"
    changed.write_text(CONFIG.replace("us-east-1\"\n", "us-east-2\"\n"))
    build(blobs, changed, tmp_path / "other.eif", "--sign-key", str(key), "--sign-cert", str(cert))
    spliced = tmp_path / "spliced.eif"
    mine, theirs = (tmp_path / "s1.eif").read_bytes(), (tmp_path / "other.eif").read_bytes()
    (sig_theirs,) = [b for k, b in eif_reader.sections(theirs) if k == "signature"]
    spliced.write_bytes(eif_reader.with_signature(mine, sig_theirs))
    assert eif_reader.pcrs(spliced.read_bytes()) == pcrs_of(first), "the copied section claims the same PCR8"
    r = nekms("image", "measure", "--check-signature", str(spliced), check=False)
    assert r.returncode == 5 and "over another image's PCR0" in r.stderr, r.stderr
    r = nekms("dev", "vm", str(spliced), "--dir", str(tmp_path / "dev"), check=False)
    assert r.returncode == 1 and "nitro-cli would not boot it" in r.stderr, r.stderr

    # A certificate that is not the key's: refused, nothing written.
    _, other_cert = make_signer(tmp_path, "other")
    r = build(blobs, config, tmp_path / "bad.eif", "--sign-key", str(key), "--sign-cert", str(other_cert), check=False)
    assert r.returncode == 1 and "does --sign-cert hold --sign-key's public key" in r.stderr, r.stderr
    assert not (tmp_path / "bad.eif").exists()


def test_signed_with_a_p384_key_in_the_local_kms(blobs, config, tmp_path):
    kms = LocalKms(tmp_path / "dev")
    try:
        admin = kms.client("admin")
        # Only the administrator may use the signing key.
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": ADMIN}, "Action": "kms:*", "Resource": "*"}]}
        arn = admin.create_key(KeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY", Policy=json.dumps(policy),
                               BypassPolicyLockoutSafetyCheck=True)["KeyMetadata"]["Arn"]
        spki = admin.get_public_key(KeyId=arn)["PublicKey"]
        pub = tmp_path / "kms.pub.der"
        pub.write_bytes(spki)
        subprocess.run(["openssl", "pkey", "-pubin", "-inform", "DER", "-in", str(pub), "-out", str(tmp_path / "kms.pub.pem")], check=True)
        # An organisation's CA certifies the KMS key (the key itself never leaves KMS).
        ca_key, ca_cert = make_signer(tmp_path, "ca")
        cert = tmp_path / "kms-signer.pem"
        subprocess.run(["openssl", "x509", "-new", "-subj", "/CN=nekms image signer in KMS", "-force_pubkey", str(tmp_path / "kms.pub.pem"),
                        "-CA", str(ca_cert), "-CAkey", str(ca_key), "-days", "30", "-sha384", "-out", str(cert)], check=True, capture_output=True)
        env = {**kms.env, "AWS_PROFILE": "admin", "AWS_ENDPOINT_URL_KMS": kms.http}
        unsigned = build(blobs, config, tmp_path / "u.eif")
        printed = build(blobs, config, tmp_path / "kms.eif", "--sign-key", arn, "--sign-cert", str(cert), env=env)
        check_signed(tmp_path / "kms.eif", printed, cert, unsigned)
        assert json.loads(nekms("image", "measure", "--check-signature", str(tmp_path / "kms.eif")).stdout)["Measurements"] == printed

        # A principal KMS does not let sign: the KMS error, and no image.
        denied = {**env, "AWS_PROFILE": "instance"}
        r = build(blobs, config, tmp_path / "denied.eif", "--sign-key", arn, "--sign-cert", str(cert), check=False, env=denied)
        assert r.returncode == 1 and "AccessDenied" in r.stderr, r.stderr
        assert not (tmp_path / "denied.eif").exists()
    finally:
        kms.stop()


def aarch64_copy(src, dst):
    b = bytearray(pathlib.Path(src).read_bytes())
    b[0x12:0x14] = (183).to_bytes(2, "little")
    dst.write_bytes(bytes(b))
    return dst


def test_unfit_inputs_are_refused_with_the_file_named_and_nothing_written(blobs, config, tmp_path):
    def refused(path_named, words, *, blobs_dir=blobs, conf=config, enclave=IMAGE_ENCLAVE, extra=()):
        out = tmp_path / "out" / "x.eif"
        out.parent.mkdir(exist_ok=True)
        r = build(blobs_dir, conf, out, *extra, check=False, enclave=enclave)
        assert r.returncode in (1, 3), (r.returncode, r.stderr)  # 3: a file that is not there
        assert str(path_named) in r.stderr and words in r.stderr, r.stderr
        assert "panicked" not in r.stderr
        assert list(out.parent.iterdir()) == [], "a refused build leaves nothing behind"

    def blobs_without(name, replace=None):
        d = tmp_path / f"blobs-{name}"
        shutil.copytree(blobs, d)
        (d / name).unlink()
        if replace is not None:
            (d / name).write_bytes(replace)
        return d

    d = blobs_without("nsm.ko")
    refused(d / "nsm.ko", "no such file", blobs_dir=d)
    d = blobs_without("bzImage", b"MZ not a kernel" * 100)
    refused(d / "bzImage", "not an x86_64 bzImage", blobs_dir=d)
    d = blobs_without("init", pathlib.Path("/bin/ls").read_bytes())
    refused(d / "init", "dynamically linked", blobs_dir=d)
    refused(tmp_path / "no-blobs", "no such blobs directory", blobs_dir=tmp_path / "no-blobs")

    # The development nekms-enclave (the workspace build): dynamic, and it holds the simulator.
    refused(NEKMS_ENCLAVE, "dynamically linked", enclave=NEKMS_ENCLAVE)
    with_sim = tmp_path / "with-sim"
    with_sim.write_bytes(pathlib.Path(IMAGE_ENCLAVE).read_bytes() + b"this nekms-enclave is built with the simulated NSM, for development only")
    refused(with_sim, "holds the simulated NSM", enclave=with_sim)
    refused(aarch64_copy(IMAGE_ENCLAVE, tmp_path / "arm"), "is for aarch64", enclave=tmp_path / "arm")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\nexit 0\n")
    refused(script, "not an ELF file", enclave=script)
    refused(tmp_path / "missing", "no such file", enclave=tmp_path / "missing")

    def conf(text, name):
        p = tmp_path / name
        p.write_text(text)
        return p

    c = conf("custody-kms-keys = [\n", "broken.toml")
    refused(c, "not an enclave configuration", conf=c)
    c = conf(CONFIG + "no-such-setting = 1\n", "unknown.toml")
    refused(c, "not an enclave configuration", conf=c)
    c = conf('region = "us-east-1"\n', "pins-nothing.toml")
    refused(c, "pins no KMS key", conf=c)
    c = conf(CONFIG + "sim = true\n", "sim.toml")
    refused(c, "settings of the simulator", conf=c)
    c = conf(CONFIG + 'kms-ca = "/etc/nekms/kms-ca.pem"\n', "ca.toml")
    refused(c, "add --file SOURCE:/etc/nekms/kms-ca.pem", conf=c)
    refused(config, "not a plain absolute file path", extra=("--file", f"{config}:etc/relative"))
    refused(tmp_path / "nope.key", "no such file", extra=("--sign-key", str(tmp_path / "nope.key"), "--sign-cert", str(config)))


def test_describe_and_measure_refuse_damaged_images(blobs, config, tmp_path):
    good = tmp_path / "good.eif"
    build(blobs, config, good)
    data = good.read_bytes()
    damaged = {
        "truncated": data[:-1000],
        "short": data[:100],
        "oversized-section": data[:548] + data[548:550] + b"\0\0" + (2**63).to_bytes(8, "big") + data[560:],
        "unknown-section": data[:548] + b"\0\x09" + data[550:],
        "not-an-eif": b"\x7fELF" + data[4:],
    }
    for name, bytes_ in damaged.items():
        p = tmp_path / f"{name}.eif"
        p.write_bytes(bytes_)
        for verb in ("describe", "measure"):
            r = nekms("image", verb, str(p), check=False)
            assert r.returncode == 1 and str(p) in r.stderr and "panicked" not in r.stderr, (name, verb, r.stderr)
