"""What test_p11.py builds its tests from: tokens provisioned under `nekms
dev up` (`Tokens`), a signature checker written with `cryptography`, the
configuration files of OpenSSL, nginx and pkcs11-provider, a TLS client,
and the lattice step of the raw-RSA attack.
"""

import base64
import datetime
import json
import os
import signal
import socket
import ssl
import subprocess
from fractions import Fraction

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils
from cryptography.x509.oid import NameOID

from conftest import P11_MODULE as MODULE
from conftest import nekms

P11KIT_CLIENT = "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so"
PIN = "1234-pin"


class Tokens:
    """`nekms dev up` (`up`), keys in a store, a token database, and a CA for the keys' certificates."""

    def __init__(self, up):
        self.up = up
        self.base = base = up.base
        self.env = {**up.env, "NEKMS_STORE": f"sqlite:{base / 'keys.db'}", "NEKMS_P11_DB": str(base / "tokens.json"),
                    "NEKMS_P11_RPC": up.info["rpc"]}
        self.pin_file = base / "pin"
        self.pin_file.write_text(PIN + "\n")
        os.chmod(self.pin_file, 0o600)
        self.ca = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nekms test CA")])
        self.ca_cert = (self.certificate(name, self.ca.public_key(), name, serial=1)
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .sign(self.ca, hashes.SHA256()))
        self.ca_pem = base / "ca.pem"
        self.ca_pem.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))
        self.kit = None

    @staticmethod
    def certificate(subject, public_key, issuer, serial=None):
        """A certificate builder: valid from five minutes ago for a day."""
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(serial or x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1)))

    def leaf(self, common_name, public_key):
        """A certificate for `public_key` signed by the CA (unsigned: add extensions, then sign with the CA)."""
        return self.certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), public_key, self.ca_cert.subject)

    def nekms(self, *args, check=True):
        return nekms(*args, env=self.env, check=check, timeout=120)

    def public_key(self, name):
        return serialization.load_der_public_key(base64.b64decode(json.loads(self.nekms("key", "show", name, "--json").stdout)["public_key"]))

    def key(self, name, spec, *extra):
        """A key in the store and a certificate for it (leaf, then the CA)."""
        self.nekms("key", "create", "--name", name, "--spec", spec, *extra)
        leaf = (self.leaf("localhost", self.public_key(name))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                .sign(self.ca, hashes.SHA256()))
        path = self.base / f"{name}.pem"
        path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + self.ca_cert.public_bytes(serialization.Encoding.PEM))
        return path

    def tool(self, *args, module=MODULE, check=True, env=None):
        r = subprocess.run(["pkcs11-tool", "--module", module, *args], env=env or self.env, capture_output=True, timeout=120)
        if check:
            assert r.returncode == 0, f"pkcs11-tool {' '.join(args)}: {r.stderr.decode()}"
        return r

    def start_kit(self):
        """p11-kit's server loading the module, as the enclave runs it (stopped with dev up)."""
        sock = self.base / "p11-kit.sock"
        if self.kit is None:
            # Its own process group: `p11-kit server` runs the real server as a child, which must stop with it.
            self.kit = self.up.start(["p11-kit", "server", "-f", "-p", MODULE, "-n", str(sock), "pkcs11:"], sock, "p11-kit server",
                                     env=self.env, group=True, stderr=subprocess.DEVNULL, timeout=20)
        return {**self.env, "P11_KIT_SERVER_ADDRESS": f"unix:path={sock}"}

    def stop(self):
        self.up.stop()


def provisioned(t):
    """`t` with six keys in its store, on two tokens with their certificates (`t.chains`, by key name):
    "web" (RSA-2048, which may also decrypt, P-256, P-384 and RSA-4096, ids 01 to 04) and "other" (Ed25519 and
    secp256k1, ids 05 and 06)."""
    specs = [("web-rsa", "rsa2048"), ("web-ec", "p256"), ("web-p384", "p384"), ("web-rsa4k", "rsa4096"), ("web-ed", "ed25519"), ("web-k1", "secp256k1")]
    # web-rsa is made to decrypt as well as sign (fixed in its record); the others sign only.
    chains = {name: t.key(name, spec, *(["--decrypt"] if name == "web-rsa" else [])) for name, spec in specs}
    # Ed25519 and secp256k1 keys on a token of their own: libp11 0.4.12
    # (Debian bookworm's OpenSSL engine) stops enumerating a token's keys at
    # the first CKK_EC_EDWARDS key, so a web server's token holds none.
    for label, names in [("web", [n for n, _ in specs[:4]]), ("other", [n for n, _ in specs[4:]])]:
        args = ["p11", "token", "add", "--label", label, "--pin-file", str(t.pin_file)]
        for name in names:
            i = [n for n, _ in specs].index(name) + 1
            args += ["--key", f"{name}:{i:02x}", "--cert", f"{name}:{chains[name]}"]
        if label == "web":
            args += ["--decrypt", "web-rsa"]
        t.nekms(*args)
    t.chains = chains
    return t


def verify(public, mech, data, sig):
    """Check a signature with `cryptography` (for ECDSA, `sig` is r || s)."""
    if mech.startswith("ECDSA"):
        half = len(sig) // 2
        der = utils.encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
        if mech == "ECDSA":
            public.verify(der, data, ec.ECDSA(utils.Prehashed(hashes.SHA256() if len(data) == 32 else hashes.SHA384())))
        else:
            public.verify(der, data, ec.ECDSA(getattr(hashes, mech.split("-")[1])()))
    elif mech == "EDDSA":
        public.verify(sig, data)
    elif "PSS" in mech:
        h = getattr(hashes, mech.split("-")[0])()
        public.verify(sig, data, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
    else:
        public.verify(sig, data, padding.PKCS1v15(), getattr(hashes, mech.split("-")[0])())


def pykcs11(tokens, module=MODULE):
    import PyKCS11
    os.environ["NEKMS_P11_RPC"] = tokens.env["NEKMS_P11_RPC"]
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    return PyKCS11, lib


def logged_in(tokens, label):
    """PyKCS11 with the module loaded direct, and a session on the token `label`, logged in with the PIN."""
    P, lib = pykcs11(tokens)
    slot = next(s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == label)
    session = lib.openSession(slot)
    session.login(PIN)
    return P, lib, session


OPENSSL_CNF = """openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
MODULE_PATH = {module}
# OpenSSL 3 loads the engine only with this.
init = 1
"""

NGINX_CONF = """daemon on;
master_process on;
worker_processes 2;
user root;
pid {base}/nginx.pid;
error_log {base}/nginx-error.log info;
env P11_KIT_SERVER_ADDRESS;
env OPENSSL_CONF;
ssl_engine pkcs11;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {base}/tmp;
    proxy_temp_path {base}/tmp;
    fastcgi_temp_path {base}/tmp;
    uwsgi_temp_path {base}/tmp;
    scgi_temp_path {base}/tmp;
    ssl_session_cache off;
    ssl_session_tickets off;
    ssl_protocols TLSv1.2 TLSv1.3;
{servers}
}}
"""

SERVER = """    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {chain};
        ssl_certificate_key "engine:pkcs11:pkcs11:token={token};id=%{id};type=private?pin-source=file:{pin}";
        location / {{ return 200 "{token}:{id}\\n"; }}
    }}
"""

PROVIDER = "/usr/lib/x86_64-linux-gnu/ossl-modules/pkcs11.so"
PROVIDER_CNF = """openssl_conf = openssl_init
[openssl_init]
providers = provider_sect
[provider_sect]
default = default_sect
pkcs11 = pkcs11_sect
[default_sect]
activate = 1
[pkcs11_sect]
module = {provider}
pkcs11-module-path = {module}
pkcs11-module-token-pin = file:{pin}
activate = 1
"""


def handshake(port, ca, version):
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ctx.maximum_version = version
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            return tls.version(), data.split(b"\r\n\r\n", 1)[1]


def serves(port, ca, version=ssl.TLSVersion.TLSv1_3):
    """handshake(), or None while nothing answers on `port`."""
    try:
        return handshake(port, ca, version)
    except OSError:
        return None


def stop_nginx(base, master):
    """SIGTERM to the masters of the nginx in `base` (daemonised: its pid files say where they are) and to `master`."""
    for pidfile in (base / "nginx.pid", base / "nginx.pid.oldbin"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
    try:
        os.kill(master, signal.SIGTERM)
    except OSError:
        pass


# A p11-kit client that lists the 1024 slots, logs in and signs on "web", says "ready" and holds its connection
# until its stdin closes (argv: the client module, the PIN).
HOLDER = (
    "import os, sys, PyKCS11\n"
    "lib = PyKCS11.PyKCS11Lib(); lib.load(sys.argv[1])\n"
    "slots = lib.getSlotList(tokenPresent=True); assert len(slots) == 1024, len(slots)\n"
    "slot = next(x for x in slots if lib.getTokenInfo(x).label.strip() == 'web')\n"
    "s = lib.openSession(slot); s.login(sys.argv[2])\n"
    "k = s.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), (PyKCS11.CKA_ID, (1,))])[0]\n"
    "s.sign(k, bytes(32), PyKCS11.Mechanism(PyKCS11.CKM_SHA256_RSA_PKCS))\n"
    "print('ready', flush=True); sys.stdin.read()\n"
)


def rss_kib(pid):
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")).split()[1])


def pss_kib(pid):
    """The process's proportional set size (shared pages counted once across processes); 0 once it is gone."""
    try:
        return int(next(l for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:")).split()[1])
    except (FileNotFoundError, StopIteration, ProcessLookupError):
        return 0


def children(pid):
    """The processes whose parent is `pid`."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and os.path.exists(f"/proc/{p}/stat")
            and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[2] == str(pid)]


def lattice_split(c, n, k):
    """Two type-1 blocks whose signatures combine into c^d mod n: find x, y
    below W = 2^(8(k-11)) with A + y = c (A + x) mod n, where A is the fixed
    head 00 01 FF*8 00 of a block whose k-11 trailing bytes are free. The
    pairs (x, c x mod n) form a lattice of determinant n; Gauss reduction
    gives a basis of vectors about sqrt(n) long, far shorter than W, and
    rounding the target's coordinates in it gives a point inside the box."""
    w = 1 << (8 * (k - 11))
    a = int.from_bytes(b"\x00\x01" + b"\xff" * 8 + b"\x00", "big") << (8 * (k - 11))
    b = (c - 1) * a % n  # y - c x = b (mod n)
    u, v = (1, c % n), (0, n)
    dot = lambda p, q: p[0] * q[0] + p[1] * q[1]
    while True:
        if dot(u, u) > dot(v, v):
            u, v = v, u
        m = round(Fraction(dot(u, v), dot(u, u)))
        if m == 0:
            break
        v = (v[0] - m * u[0], v[1] - m * u[1])
    t = (w // 2, w // 2 - b)
    det = u[0] * v[1] - u[1] * v[0]
    a1 = round(Fraction(t[0] * v[1] - t[1] * v[0], det))
    a2 = round(Fraction(u[0] * t[1] - u[1] * t[0], det))
    x, y = a1 * u[0] + a2 * v[0], a1 * u[1] + a2 * v[1] + b
    assert 0 <= x < w and 0 <= y < w and (a + y - c * (a + x)) % n == 0
    return x.to_bytes(k - 11, "big"), y.to_bytes(k - 11, "big")
