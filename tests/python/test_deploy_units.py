"""deploy/: the parent's systemd units, the example configurations and the allocator settings, checked
against systemd and against nekms itself.

- `systemd-analyze verify` (systemd 252) accepts every unit, in a temporary root holding Debian's units, a
  stand-in nitro-enclaves-allocator.service and stubs at the executable paths the units name; it catches a
  misspelled directive, a bad value, a missing dependency or executable (an unknown key is only a warning,
  so any output fails).
- Every service restarts on failure, is hardened and runs as no root; only those that dial the enclave's RPC
  or signer get a capability (CAP_NET_BIND_SERVICE: the enclave serves only vsock ports below 1024).
- Every `nekms` flag in an Exec line is in `nekms VERB --help`, and the daemons' command lines start.
- enclave.toml is read by nekms-enclave and runs a simulated one that reports its trust settings;
  access.toml starts the agent; tmkms.toml is read by push-config; ports, CID and sizes agree.
"""

import functools
import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import NEKMS, NEKMS_ENCLAVE, ROOT, nekms, start, stop

DEPLOY = ROOT / "deploy"
UNIT_DIR = DEPLOY / "systemd"
UNITS = sorted(p for p in UNIT_DIR.iterdir() if p.suffix in (".service", ".socket", ".target"))
SERVICES = [p for p in UNITS if p.suffix == ".service"]
EXAMPLES = DEPLOY / "examples"


def parse_unit(text):
    """A unit file as {section: {key: [values]}} (repeated keys keep every value)."""
    unit, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


@functools.cache
def unit(name):
    return parse_unit((UNIT_DIR / name).read_text())


def service(path):
    return unit(path.name).get("Service", {})


def one(path, key):
    return (service(path).get(key) or [None])[-1]


def environment(path):
    """The unit's own Environment= defaults (EnvironmentFile= only overrides them)."""
    return dict(a.split("=", 1) for v in service(path).get("Environment", []) for a in v.split())


def exec_lines(path):
    """Every Exec*= command of the unit, as argv with its `-@:+!` prefixes dropped."""
    return [v.lstrip("-@:+!").split() for k, vs in service(path).items() if k.startswith("Exec") for v in vs]


def nekms_argv(path):
    """The unit's nekms command lines, with its Environment= defaults expanded."""
    env = environment(path)
    return [[re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], a) for a in argv] for argv in exec_lines(path) if argv[0] == "/usr/bin/nekms"]


# ---- systemd-analyze verify ----------------------------------------------------------


def verify(tmp_path, files, missing=()):
    """What `systemd-analyze verify` says of `files` ({name: text}) installed in a fresh root, with a stub at every
    executable path they name but those in `missing`: "" when it accepts them."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: install Debian's systemd package"
    root = tmp_path / "root"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    etc = root / "etc/systemd/system"
    etc.mkdir(parents=True)
    # The aws-nitro-enclaves-cli package's unit, which nekms-enclave.service requires.
    (etc / "nitro-enclaves-allocator.service").write_text("[Service]\nType=oneshot\nExecStart=/usr/bin/nitro-cli --version\n")
    for name, text in files.items():
        (etc / name).write_text(text)
        for key, values in parse_unit(text).get("Service", {}).items():
            for command in (v.lstrip("-@:+!").split()[0] for v in values if key.startswith("Exec")):
                if command.startswith("/") and command not in missing:
                    stub = root / command.lstrip("/")
                    stub.parent.mkdir(parents=True, exist_ok=True)
                    stub.write_text("#!/bin/sh\nexit 0\n")
                    stub.chmod(0o755)
    r = subprocess.run([analyze, "verify", f"--root={root}", "--man=no", "--generators=no", *(str(etc / n) for n in files)],
                       capture_output=True, text=True, timeout=60)
    return (r.stdout + r.stderr).strip() + (f"\n(exit {r.returncode})" if r.returncode else "")


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    assert len(SERVICES) >= 8
    assert verify(tmp_path, {p.name: p.read_text() for p in UNITS}) == ""


@pytest.mark.parametrize("change, missing, says", [
    (("NoNewPrivileges=yes", "NoNewPrivilegs=yes"), (), "Unknown key 'NoNewPrivilegs'"),
    (("Restart=on-failure", "Restart=on-failur"), (), "on-failur"),
    (("Restart=on-failure", "Restart=always"), (), "isn't allowed for Type=oneshot"),
    (("Requires=nitro-enclaves-allocator.service", "Requires=nitro-enclave-allocator.service"), (), "not found"),
    (None, ("/usr/bin/nitro-cli",), "/usr/bin/nitro-cli is not executable"),
], ids=["misspelled directive", "bad value", "forbidden value", "missing dependency", "missing executable"])
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path, change, missing, says):
    text = (UNIT_DIR / "nekms-enclave.service").read_text()
    if change:
        assert change[0] in text
        text = text.replace(change[0], change[1], 1)
    assert says in (problems := verify(tmp_path, {"nekms-enclave.service": text}, missing)), problems


# ---- restart, hardening, order -------------------------------------------------------


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_every_service_restarts_and_is_hardened(path):
    assert one(path, "Restart") == "on-failure" and one(path, "RestartSec")
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"), ("ProtectControlGroups", "yes")]:
        assert one(path, key) == value, key
    assert {"RestrictAddressFamilies", "CapabilityBoundingSet"} <= set(service(path))
    assert one(path, "DynamicUser") == "yes" or one(path, "User") not in (None, "root")
    commands = [" ".join(a) for a in nekms_argv(path)]
    # Only vsock peers on a reserved port (CAP_NET_BIND_SERVICE) reach the enclave's RPC and signer.
    dials_enclave = any("--enclave" in c or "--privval " in c for c in commands)
    caps = one(path, "CapabilityBoundingSet")
    assert caps == ("CAP_NET_BIND_SERVICE" if dials_enclave else ""), caps
    assert (one(path, "AmbientCapabilities") or "") == caps
    if dials_enclave:
        assert "nekms-enclave.service" in " ".join(unit(path.name)["Unit"].get("After", []))
    if dials_enclave or any("vsock" in c or c.split()[1] == "proxy" for c in commands):
        assert "AF_VSOCK" in one(path, "RestrictAddressFamilies")


def test_the_enclave_unit_runs_the_image_and_stops_it():
    e = UNIT_DIR / "nekms-enclave.service"
    assert one(e, "Type") == "oneshot" and one(e, "RemainAfterExit") == "yes"
    assert "nitro-enclaves-allocator.service" in unit(e.name)["Unit"]["Requires"][0]
    run = next(a for a in exec_lines(e) if a[1] == "run-enclave")
    assert "--debug-mode" not in run and run[run.index("--eif-path") + 1] == "/usr/share/nekms/nekms.eif"
    assert service(e)["ExecStop"] == ["/usr/bin/nitro-cli terminate-enclave --enclave-name nekms"]
    assert run[run.index("--enclave-name") + 1] == "nekms"


# ---- nekms's flags and command lines -------------------------------------------------


@functools.cache
def help_text(*verb):
    return nekms(*verb, "--help").stdout


def subcommands(*verb):
    text = help_text(*verb)
    return set(re.findall(r"^  (\S+)\s", text.split("Commands:")[1].split("\n\n")[0], re.M)) if "Commands:" in text else set()


def unknown_flags(argv):
    """The verb of a nekms command line, and the flags it gives that `nekms VERB --help` does not list."""
    verb = []
    for word in argv[1:]:
        if word.startswith("-") or word not in subcommands(*verb):
            break
        verb.append(word)
    # The options' own lines ("  -c, --config <FILE>", "      --watch"), not flags named in descriptions.
    known = {f for m in re.finditer(r"^ {2,}(-[A-Za-z0-9])?,? *(--[\w-]+)?", help_text(*verb), re.M) for f in m.groups() if f}
    return verb, [w.split("=")[0] for w in argv[1 + len(verb):] if w.startswith("-") and w.split("=")[0] not in known]


@pytest.mark.parametrize("path", [p for p in SERVICES if nekms_argv(p)], ids=lambda p: p.name)
def test_every_nekms_flag_in_a_unit_is_in_its_help(path):
    for argv in nekms_argv(path):
        verb, unknown = unknown_flags(argv)
        assert verb, argv
        assert unknown == [], f"{path.name}: nekms {' '.join(verb)} has no {unknown}"


def test_the_flag_check_catches_a_flag_nekms_does_not_have():
    assert unknown_flags(["nekms", "privval", "persist", "--listen", "x", "--dir", "d", "--fsync-never"]) == (["privval", "persist"], ["--fsync-never"])
    assert unknown_flags(["nekms", "agent", "--access=/a", "--tokens", "t"])[1] == ["--tokens"]


def test_unit_environment_names_are_read_by_nekms_and_match_the_example_env():
    example = dict(line.split("=", 1) for line in (EXAMPLES / "nekms.env").read_text().splitlines() if line and not line.startswith("#"))
    helps = "".join(help_text(*v) for v in [("agent",), ("p11", "token", "restore"), ("privval", "proxy")])
    for name in example:
        assert name.startswith("AWS_") or f"[env: {name}=" in helps, name
    for path in SERVICES:
        for name, value in environment(path).items():
            assert example.get(name) == value, f"{path.name}: {name}={value}, nekms.env says {example.get(name)}"


def test_the_daemons_command_lines_start(tmp_path):
    """Each daemon's ExecStart, with /etc/nekms, /var/lib and /run moved under tmp_path and vsock listeners on Unix
    sockets (nothing here may open AF_VSOCK), runs until it listens."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(EXAMPLES / "anchor-allowlist.yaml", etc)
    token = etc / "wallet.token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o600)
    (etc / "access.toml").write_text((EXAMPLES / "access.toml").read_text().replace("/etc/nekms/agent/wallet.token", str(token)))
    (etc / "access.toml").chmod(0o640)
    for name, listens in [("nekms-proxy.service", "8000"), ("nekms-anchor-proxy.service", "8001"),
                          ("nekms-privval-persist.service", "vsock://any:5101"), ("nekms-agent.service", "unix:///run/nekms-agent/agent.sock")]:
        (argv,) = nekms_argv(UNIT_DIR / name)
        sock = tmp_path / f"{name}.sock"
        argv = [f"unix://{sock}" if a == listens else a.replace("/etc/nekms", str(etc)).replace("/var/lib", str(tmp_path))
                for a in argv]
        assert f"unix://{sock}" in argv, argv
        p = start([NEKMS, *argv[1:]], sock, name, log=tmp_path / f"{name}.log", timeout=20)
        stop(p)


# ---- the example configurations ------------------------------------------------------


def test_enclave_toml_keys_are_the_enclaves_and_pin_a_kms_key_arn():
    conf = tomllib.loads((EXAMPLES / "enclave.toml").read_text())
    # EnclaveArgs's fields, kebab-cased; those skipped by clap are the trust settings (read from the file only).
    body = (ROOT / "crates/enclave/src/config.rs").read_text().split("pub struct EnclaveArgs {")[1].split("\n}")[0]
    fields = {m[2].replace("_", "-"): "#[arg(skip)]" in m[1] for m in re.finditer(r"((?:\s*(?:#\[.*\]|//.*))*)\s*pub (\w+):", body)}
    assert {"custody-kms-keys", "parent-decrypt", "allow-import", "rpc-any-vsock-peer"} <= {k for k, trust in fields.items() if trust}
    assert set(conf) <= set(fields), set(conf) - set(fields)
    assert not {"sim", "debug-mode", "dev-dir", "image"} & set(conf), "development settings in a production image"
    assert conf["custody-kms-keys"] and all(re.fullmatch(r"arn:aws:kms:[a-z0-9-]+:\d{12}:key/[0-9a-f-]{36}", k) for k in conf["custody-kms-keys"])
    assert conf["parent-decrypt"] is False and conf["allow-import"] is False and conf["rpc-any-vsock-peer"] is False


def test_enclave_toml_runs_the_enclave_with_its_trust_settings(tmp_path):
    dev = tmp_path / "dev"
    nekms("dev", "init", "--dir", str(dev))
    socks = {k: f"unix://{tmp_path / k}.sock" for k in ["rpc", "kmstool", "proxy", "p11", "privval", "privval-state", "privval-anchor-proxy"]}
    args = [NEKMS_ENCLAVE, "--sim", "--dev-dir", str(dev), *(a for k, v in socks.items() for a in (f"--{k}", v))]
    p = start([*args, "--config", str(EXAMPLES / "enclave.toml")], tmp_path / "rpc.sock", "nekms-enclave", log=tmp_path / "enclave.log")
    try:
        described = json.loads(nekms("enclave", "describe", "--enclave", socks["rpc"], "--json").stdout)
    finally:
        stop(p)
    conf = tomllib.loads((EXAMPLES / "enclave.toml").read_text())
    assert described["trust"]["custody_kms_keys"] == conf["custody-kms-keys"]
    assert described["trust"]["parent_decrypt"] is False
    assert described["region"] == conf["custody-kms-keys"][0].split(":")[3]


def test_enclave_toml_is_read_by_the_image_build_of_the_enclave(tmp_path):
    """Without --sim (as in the image), the file is read before /dev/nsm is opened: the enclave's parser accepts
    it and stops only at the missing device, and names an unknown key."""
    def run(path):
        return subprocess.run([NEKMS_ENCLAVE, "--config", str(path)], capture_output=True, text=True, timeout=30)
    assert "opening /dev/nsm" in (r := run(EXAMPLES / "enclave.toml")).stderr, r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text((EXAMPLES / "enclave.toml").read_text() + "\ncustody-kms-key = []\n")
    assert "unknown field `custody-kms-key`" in (r := run(bad)).stderr and r.returncode != 0, r.stderr


def test_tmkms_toml_is_read_by_push_config(tmp_path):
    def push(path):
        return nekms("privval", "push-config", "--enclave", f"unix://{tmp_path}/none.sock", "--store", f"sqlite:{tmp_path}/keys.db",
                     "-c", str(path), check=False)
    r = push(EXAMPLES / "tmkms.toml")
    assert "cannot connect to the enclave" in r.stderr, r.stderr  # read and accepted; only the enclave is missing
    bad = tmp_path / "tmkms.toml"
    bad.write_text((EXAMPLES / "tmkms.toml").read_text().replace("reconnect = true", 'reconnect = true\ncolour = "blue"'))
    assert "not a tmkms.toml nekms reads" in (r := push(bad)).stderr and "colour" in r.stderr, r.stderr


def test_the_files_agree_on_ports_cid_and_sizes():
    conf = tomllib.loads((EXAMPLES / "enclave.toml").read_text())
    port = lambda addr: addr.rsplit(":", 1)[1]  # noqa: E731
    argv = {p.name: " ".join(" ".join(a) for a in exec_lines(p)) for p in SERVICES}
    assert f" {port(conf['proxy'])} kms." in argv["nekms-proxy.service"]
    assert f"vsock://any:{port(conf['privval-state'])}" in argv["nekms-privval-persist.service"]
    assert f"vsock://any:{port(conf['audit'])}" in argv["nekms-audit.service"]
    assert f"vsock://any:{port(conf['logs'])}" in argv["nekms-logs.service"]
    run = next(a for a in exec_lines(UNIT_DIR / "nekms-enclave.service") if a[1] == "run-enclave")
    cid = run[run.index("--enclave-cid") + 1]
    assert f"--privval vsock://{cid}:{port(conf['privval'])}" in argv["nekms-privval-proxy.service"]
    assert environment(UNIT_DIR / "nekms-agent.service")["NEKMS_ENCLAVE"] == cid and port(conf["rpc"]) == "5000"
    assert f"vsock:cid={cid};port=9999" in (DEPLOY / "pkcs11/nekms.module").read_text()
    assert (DEPLOY / "pkcs11/nekms.module").read_text() == nekms("p11", "module-config").stdout
    allocator = yaml.safe_load((DEPLOY / "nitro_enclaves/allocator.yaml").read_text())
    assert int(run[run.index("--memory") + 1]) <= allocator["memory_mib"]
    assert int(run[run.index("--cpu-count") + 1]) <= allocator["cpu_count"]
    allowlist = yaml.safe_load((EXAMPLES / "anchor-allowlist.yaml").read_text())["allowlist"]
    assert {"address": "dynamodb.us-east-1.amazonaws.com", "port": 443} in allowlist
