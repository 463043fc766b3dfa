"""What test_privval.py and test_privval_anchor.py build their tests from:
the signer's world under `nekms dev up` (`World`), tmkms.toml files, the
validator emulator's connections (privval_emu.py), signers of a test's own
beside dev up's (`OwnSigner`), and the scan of the parent for secrets.
"""

import base64
import json
import os
import pathlib

import privval_emu as emu
from conftest import NEKMS, secret_forms, wait_for

TMKMS = pathlib.Path(os.environ.get("NEKMS_TMKMS_BIN", pathlib.Path.home() / ".cache/nekms/peers/tmkms-0.15.0/bin/tmkms"))
TMKMS_014 = pathlib.Path(os.environ.get("NEKMS_TMKMS014_BIN", pathlib.Path.home() / ".cache/nekms/peers/tmkms-0.14.0/bin/tmkms"))


class World:
    """`nekms dev up` in base/up (its options after `up_args`), started by the `dev_up` fixture (so stopped at the
    module's end), the key store base/keys.db, and every output the parent's CLI printed (`outputs`). What
    `spawn()` starts runs in the same environment and is stopped with dev up."""

    def __init__(self, dev_up, base, *up_args):
        self.base = base
        # Heights up to 2**40 in one script: the measured configuration allows such jumps; chains lower it.
        self.up = dev_up(base / "up", "--privval-max-height-jump", str(2**41), *up_args)
        self.up.env["NEKMS_STORE"] = f"sqlite:{base / 'keys.db'}"
        self.env = self.up.env
        self.custody = self.up.info["custody_kms_key"]
        self.outputs = self.up.outputs
        self.nekms, self.spawn = self.up.nekms, self.up.spawn

    def encrypt_consensus_key(self, name, secret, spec="ed25519"):
        """As the administrator: the key as a softsign-style file (base64) and its import ciphertext."""
        path = self.base / f"{name}.softsign"
        path.write_bytes(base64.b64encode(secret))
        ct = self.nekms("key", "encrypt-for-import", "--privval", "--name", name, "--spec", spec, "--kms-key", self.custody,
                        "--profile", "admin", str(path)).stdout.strip()
        return path, ct

    def import_consensus_key(self, name, secret, spec="ed25519"):
        path, ct = self.encrypt_consensus_key(name, secret, spec)
        self.nekms("key", "import", "--privval", "--name", name, "--spec", spec, "--ciphertext", ct)
        return path

    def start_proxy(self, toml, log, privval=None):
        """`nekms privval proxy` with the configuration `toml`, to dev up's enclave (or the one listening at `privval`)."""
        return self.spawn([NEKMS, "privval", "proxy", "--privval", privval or self.up.info["privval"], "-c", str(toml)], log)

    def start_tmkms(self, toml, log, tmkms=TMKMS):
        return self.spawn([str(tmkms), "start", "-c", str(toml)], log)

    def stop(self):
        self.up.stop()


def tmkms_toml(chains, key_line, validators, state_dir=None):
    """A tmkms.toml; `chains` is a list of chain ids, `validators` (chain, addr)."""
    out = ""
    for c in chains:
        out += f'[[chain]]\nid = "{c}"\nkey_format = {{ type = "hex" }}\n'
        if state_dir:
            out += f'state_file = "{state_dir}/{c}_priv_validator_state.json"\n'
        out += "\n"
    out += f"[[providers.softsign]]\nchain_ids = {json.dumps(chains)}\nkey_type = \"consensus\"\n{key_line}\n\n"
    for c, addr in validators:
        out += f'[[validator]]\nchain_id = "{c}"\naddr = "{addr}"\nprotocol_version = "v0.38"\nreconnect = true\n\n'
    return out


def connect_nekms(w, name, chains, key="validator"):
    """Validators for `chains` (one each), the configuration pushed, the proxy started and connected."""
    validators = {c: emu.Validator(w.base / f"{name}-{i}.sock") for i, c in enumerate(chains)}
    toml = w.base / f"{name}.toml"
    toml.write_text(tmkms_toml(chains, f'key = "{key}"', [(c, v.addr) for c, v in validators.items()]))
    w.nekms("privval", "push-config", "-c", str(toml))
    w.start_proxy(toml, w.base / f"{name}.proxy.log")
    for v in validators.values():
        v.accept()
    return validators


def run_script(validators, steps):
    """Send each request to its chain's validator connection; the decoded replies."""
    replies = []
    for chain, kind, msg in steps:
        body = validators[chain].request(emu.encode(chain, kind, msg))
        assert body is not None, f"the signer closed the connection at {chain} {kind} {msg['height']}/{msg['round']}"
        replies.append(emu.decode_reply(body))
    return replies


def pubkey(v, chain):
    kind, value, err = emu.decode_reply(v.request(emu.pubkey_request(chain)))
    assert kind == "pubkey" and err is None, err
    return value


def status(w, chain):
    rows = json.loads(w.nekms("privval", "status", "--json").stdout)
    (row,) = [r for r in rows if r["chain_id"] == chain]
    return row


def hrs(w, chain):
    s = status(w, chain)
    return s["height"], s["round"], s["step"], s["counter"]


def ask(v, chain, kind, msg):
    body = v.request(emu.encode(chain, kind, msg))
    return None if body is None else emu.decode_reply(body)


def block():
    return (os.urandom(32), 1, os.urandom(32))


class OwnSigner:
    """An enclave and a state store of this test's own, beside dev up's (the
    same image, measured configuration, KMS and proxy), so that they can be
    killed and started again."""

    def __init__(self, w, name, chain, init=True, record=False):
        self.w, self.chain = w, chain
        self.dir = w.base / name
        self.dir.mkdir()
        self.state_dir = self.dir / "state"
        self.rpc, self.privval, self.state = (f"unix://{self.dir / n}" for n in ("rpc.sock", "privval.sock", "state.sock"))
        # With record=True the enclave's state-store traffic and the proxy's privval traffic pass through recorders.
        self.enclave_state, self.proxy_privval, self.recorders = self.state, self.privval, []
        if record:
            self.enclave_state, self.proxy_privval = f"unix://{self.dir / 'state-rec.sock'}", f"unix://{self.dir / 'privval-rec.sock'}"
            for listen, target in ((self.enclave_state, self.state), (self.proxy_privval, self.privval)):
                self.recorders.append(emu.Recorder(listen.removeprefix("unix://"), target.removeprefix("unix://")))
        self.enclave = self.persist = None
        self.validator = emu.Validator(self.dir / "validator.sock")
        self.toml = self.dir / "tmkms.toml"
        self.toml.write_text(tmkms_toml([chain], 'key = "validator"', [(chain, self.validator.addr)]))
        self.start_persist()
        self.start_enclave()
        if init:
            w.nekms("privval", "state", "init", "--enclave", self.rpc, "--key", "validator", "--chain-id", chain, "--height", "1")
        self.configure()
        w.start_proxy(self.toml, self.dir / "proxy.log", privval=self.proxy_privval)
        self.validator.accept()

    def start_persist(self):
        path = self.state.removeprefix("unix://")
        if os.path.exists(path):
            os.unlink(path)
        self.persist = self.w.spawn([NEKMS, "privval", "persist", "--listen", self.state, "--dir", str(self.state_dir)], self.dir / "persist.log")
        wait_for(path, self.persist, "nekms privval persist", log=self.dir / "persist.log")

    def start_enclave(self):
        up = self.w.up
        for s in (self.rpc, self.privval):
            if os.path.exists(s.removeprefix("unix://")):
                os.unlink(s.removeprefix("unix://"))
        self.enclave = self.w.spawn(
            [*up.enclave_args(), "--rpc", self.rpc, "--kmstool", f"unix://{self.dir / 'kmstool.sock'}", "--privval", self.privval,
             "--privval-state", self.enclave_state, "--privval-anchor-proxy", up.info["privval_anchor_proxy"]], self.dir / "enclave.log")
        wait_for(self.privval.removeprefix("unix://"), self.enclave, "the signer's enclave", log=self.dir / "enclave.log")
        self.w.nekms("enclave", "credentials", "--enclave", self.rpc)
        if up.info.get("privval_anchor_table"):
            self.w.nekms("privval", "anchor", "credentials", "--enclave", self.rpc, "--ciphertext-file", str(self.w.anchor_credentials))

    def configure(self, check=True):
        return self.w.nekms("privval", "push-config", "--enclave", self.rpc, "-c", str(self.toml), check=check)

    def restart_enclave(self, configure=True):
        self.enclave.kill()
        self.enclave.wait()
        self.start_enclave()
        if configure:
            self.configure()

    def status(self):
        (row,) = json.loads(self.w.nekms("privval", "status", "--enclave", self.rpc, "--json").stdout)
        return row

    def slots(self):
        """The store's two slot files for this chain (the newest valid record counts)."""
        files = sorted(self.state_dir.glob("*.state.[01]"))
        assert len(files) == 2, files
        return files

    def snapshot(self):
        return {f: f.read_bytes() for f in self.slots()}

    def restore(self, snapshot):
        for f, b in snapshot.items():
            f.write_bytes(b)

    def ask(self, kind, msg):
        """The reply, reconnecting first if the proxy's connection was closed."""
        body = self.validator.request(emu.encode(self.chain, kind, msg))
        return None if body is None else emu.decode_reply(body)


def scan_parent(w, secrets, skip=()):
    """Every output the parent saw and every file under the test's directory
    (logs, state records, the key store, dev up's run directory), for each
    secret in raw, hex and base64 forms."""
    seen = [o.encode() for o in w.outputs]
    for path in w.base.rglob("*"):
        if path.is_file() and not path.is_socket() and path not in skip:
            seen.append(path.read_bytes())
    for name, secret in secrets.items():
        for form in secret_forms(secret, unpadded=True):
            for blob in seen:
                assert form not in blob, f"{name} found on the parent"
