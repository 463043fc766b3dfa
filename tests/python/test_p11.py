"""libnekms_p11.so against tools nobody on this project wrote: OpenSC's
pkcs11-tool, PyKCS11 and OpenSSL, loaded direct and through p11-kit's
server and client (as ACM for Nitro Enclaves runs it), with tokens
provisioned by `nekms p11 token` under `nekms dev up`.

The attacker tests play root on the parent: it has the p11-kit socket, the
token database, the key store and the enclave's RPC, and tries to get a
token key out, change its attributes, copy or wrap it, guess the PIN, and
slip in a record the enclave did not make.
"""

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

from conftest import Rpc, Up, cbor_record, free_port, nekms, stop, wait_for
from p11_support import (HOLDER, MODULE, NGINX_CONF, OPENSSL_CNF, P11KIT_CLIENT, PIN, PROVIDER, PROVIDER_CNF, SERVER, Tokens, handshake,
                         children, lattice_split, logged_in, provisioned, pss_kib, pykcs11, rss_kib, serves, stop_nginx, verify)

pytestmark = pytest.mark.skipif(shutil.which("pkcs11-tool") is None or shutil.which("p11-kit") is None,
                                reason="scripts/test installs opensc and p11-kit")


@pytest.fixture(scope="module")
def tokens(dev_up):
    return provisioned(Tokens(dev_up("p11")))


def test_pkcs11_tool_lists_the_token_its_mechanisms_and_objects(tokens):
    out = tokens.tool("-L").stdout.decode()
    assert "token label        : web" in out and "login required" in out and "readonly" in out
    mechs = tokens.tool("-M").stdout.decode()
    for m in ["RSA-PKCS,", "SHA256-RSA-PKCS,", "RSA-PKCS-PSS,", "SHA256-RSA-PKCS-PSS", "ECDSA,", "ECDSA-SHA256", "EDDSA"]:
        assert m in mechs, m
    public = tokens.tool("--token-label", "web", "-O").stdout.decode()
    assert "Private Key Object" not in public, "private keys appear only after login"
    assert public.count("Certificate Object") == 8
    private = tokens.tool("--token-label", "web", "--login", "--pin", PIN, "-O").stdout.decode()
    assert private.count("Private Key Object") == 4
    assert private.count("sensitive, always sensitive, never extractable") == 4


@pytest.mark.parametrize("name,key_id,mech", [
    ("web-rsa", "01", "SHA256-RSA-PKCS"), ("web-rsa", "01", "SHA384-RSA-PKCS-PSS"), ("web-rsa4k", "04", "SHA512-RSA-PKCS"),
    ("web-ec", "02", "ECDSA"), ("web-ec", "02", "ECDSA-SHA256"), ("web-p384", "03", "ECDSA-SHA384"),
    ("web-ed", "05", "EDDSA"), ("web-k1", "06", "ECDSA-SHA256"),
    # The legacy hashes of ACM's list.
    ("web-rsa", "01", "SHA1-RSA-PKCS"), ("web-rsa4k", "04", "SHA224-RSA-PKCS"), ("web-rsa", "01", "SHA1-RSA-PKCS-PSS"),
    ("web-rsa", "01", "SHA224-RSA-PKCS-PSS"), ("web-ec", "02", "ECDSA-SHA1"), ("web-p384", "03", "ECDSA-SHA224"),
])
def test_signatures_verify_with_cryptography(tokens, name, key_id, mech):
    data = b"nekms signs inside the enclave"
    if mech == "ECDSA":
        data = hashes.Hash(hashes.SHA256())
        data.update(b"prehashed")
        data = data.finalize()
    (tokens.base / "in").write_bytes(data)
    extra = []
    if "PSS" in mech:
        h = mech.split("-")[0]
        extra = ["--mgf", f"MGF1-{h}", "--salt-len", str(getattr(hashes, h)().digest_size)]
    token = "other" if name in ("web-ed", "web-k1") else "web"
    tokens.tool("--token-label", token, "--login", "--pin", PIN, "--sign", "-m", mech, "--id", key_id, "-i", str(tokens.base / "in"),
                "-o", str(tokens.base / "sig"), *extra)
    verify(tokens.public_key(name), mech, data, (tokens.base / "sig").read_bytes())


@pytest.mark.skipif(shutil.which("p11tool") is None, reason="scripts/test installs gnutls-bin")
def test_gnutls_p11tool_lists_and_test_signs(tokens):
    out = subprocess.run(["p11tool", "--provider", MODULE, "--list-all", "pkcs11:token=web"], env=tokens.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "type=cert" in out.stdout and "Public key (RSA-2048)" in out.stdout, out.stderr
    for key_id, algorithm in [("%01", "RSA-SHA256"), ("%02", "ECDSA-SHA256")]:
        r = subprocess.run(["p11tool", "--provider", MODULE, "--login", "--test-sign", f"pkcs11:token=web;id={key_id};type=private"],
                           env={**tokens.env, "GNUTLS_PIN": PIN}, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and f"Signing using {algorithm}... ok" in r.stdout + r.stderr, r.stdout + r.stderr
        assert "Verifying against public key in the token... ok" in r.stdout + r.stderr


def test_pkcs11_tool_fork_and_thread_tests(tokens):
    """libp11 re-initialises after fork, as nginx's workers need; several
    threads call into the module at once."""
    r = tokens.tool("--token-label", "web", "--login", "--pin", PIN, "--test-fork")
    assert b"Calling C_Initialize in forked child process" in r.stdout + r.stderr
    # Each thread: C_Initialize (a second one is CKR_CRYPTOKI_ALREADY_INITIALIZED, which the tool accepts), then slot calls.
    r = tokens.tool("--test-threads", "INGISLGISL", "--test-threads", "INGISLGISL", "--test-threads", "INGISLGISL")
    assert b"all threads have ended with CKR_OK" in r.stdout + r.stderr, r


def test_the_module_verifies_and_digests(tokens):
    import hashlib
    b = tokens.base
    (b / "v.msg").write_bytes(b"verify me")
    for key_id, mech in [("01", "SHA256-RSA-PKCS"), ("02", "ECDSA-SHA256"), ("03", "ECDSA-SHA384")]:
        tokens.tool("--token-label", "web", "--login", "--pin", PIN, "--sign", "-m", mech, "--id", key_id, "-i", str(b / "v.msg"), "-o", str(b / "v.sig"))
        out = tokens.tool("--token-label", "web", "--verify", "-m", mech, "--id", key_id, "-i", str(b / "v.msg"), "--signature-file", str(b / "v.sig"))
        assert "Signature is valid" in out.stdout.decode(), out
        sig = bytearray((b / "v.sig").read_bytes())
        sig[5] ^= 1
        (b / "bad.sig").write_bytes(sig)
        r = tokens.tool("--token-label", "web", "--verify", "-m", mech, "--id", key_id, "-i", str(b / "v.msg"), "--signature-file", str(b / "bad.sig"), check=False)
        assert "Invalid signature" in (r.stdout + r.stderr).decode() or "CKR_SIGNATURE_INVALID" in r.stderr.decode(), r
    for mech, h in [("SHA-1", hashlib.sha1), ("SHA224", hashlib.sha224), ("SHA256", hashlib.sha256), ("SHA384", hashlib.sha384), ("SHA512", hashlib.sha512)]:
        out = tokens.tool("--token-label", "web", "--hash", "-m", mech, "-i", str(b / "v.msg")).stdout
        assert out == h(b"verify me").digest(), mech


def test_rsa_decryption_pkcs1_and_oaep(tokens):
    """OpenSSL encrypts to the token key's certificate; the module decrypts
    in the enclave (PKCS#1 v1.5 and OAEP with SHA-1 and SHA-256)."""
    b = tokens.base
    subprocess.run(["openssl", "x509", "-in", str(tokens.chains["web-rsa"]), "-pubkey", "-noout", "-out", str(b / "enc.pub")], check=True)
    (b / "secret").write_bytes(b"a premaster secret, say")
    for mech, opts, extra in [("RSA-PKCS", [], []),
                              ("RSA-PKCS-OAEP", ["-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256"],
                               ["--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256"]),
                              ("RSA-PKCS-OAEP", ["-pkeyopt", "rsa_padding_mode:oaep"], ["--hash-algorithm", "SHA-1", "--mgf", "MGF1-SHA1"])]:
        subprocess.run(["openssl", "pkeyutl", "-encrypt", "-pubin", "-inkey", str(b / "enc.pub"), "-in", str(b / "secret"),
                        "-out", str(b / "secret.enc"), *opts], check=True)
        out = tokens.tool("--token-label", "web", "--login", "--pin", PIN, "--decrypt", "-m", mech, "--id", "01",
                          "-i", str(b / "secret.enc"), *extra).stdout
        assert out == b"a premaster secret, say", (mech, extra, out)
    # C_Encrypt runs in the module with the public key (pkcs11-tool encrypts with secret keys only: PyKCS11 asks);
    # the enclave decrypts what it made, and a raw CKM_RSA_X_509 encryption is c = m^e mod n.
    P, lib, session = logged_in(tokens, "web")
    try:
        public = session.findObjects([(P.CKA_CLASS, P.CKO_PUBLIC_KEY), (P.CKA_ID, (1,))])[0]
        private = session.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_ID, (1,))])[0]
        for m in [P.Mechanism(P.CKM_RSA_PKCS), P.RSAOAEPMechanism(P.CKM_SHA256, P.CKG_MGF1_SHA256), P.RSAOAEPMechanism(P.CKM_SHA_1, P.CKG_MGF1_SHA1)]:
            ct = bytes(session.encrypt(public, b"a premaster secret, say", m))
            assert len(ct) == 256 and bytes(session.decrypt(private, ct, m)) == b"a premaster secret, say"
        raw = bytes(session.encrypt(public, b"\x07" * 10, P.Mechanism(P.CKM_RSA_X_509)))
        n = tokens.public_key("web-rsa").public_numbers()
        assert int.from_bytes(raw, "big") == pow(int.from_bytes(b"\x07" * 10, "big"), n.e, n.n)
        with pytest.raises(P.PyKCS11Error) as e:
            session.encrypt(public, b"x" * 246, P.Mechanism(P.CKM_RSA_PKCS))
        assert e.value.value == P.CKR_DATA_LEN_RANGE
    finally:
        session.logout()
        session.closeSession()
    # An EC key does not decrypt; nor does an RSA key provisioned to sign only (the default).
    for key_id in ("02", "04"):
        r = tokens.tool("--token-label", "web", "--login", "--pin", PIN, "--decrypt", "-m", "RSA-PKCS", "--id", key_id, "-i", str(b / "secret.enc"), check=False)
        assert r.returncode != 0, key_id


def test_openssl_verifies_and_random_comes_from_the_nsm(tokens):
    b = tokens.base
    (b / "msg").write_bytes(b"hello from openssl")
    tokens.tool("--token-label", "web", "--login", "--pin", PIN, "--sign", "-m", "SHA256-RSA-PKCS", "--id", "01", "-i", str(b / "msg"), "-o", str(b / "rsa.sig"))
    subprocess.run(["openssl", "x509", "-in", str(tokens.chains["web-rsa"]), "-pubkey", "-noout", "-out", str(b / "rsa.pub")], check=True)
    r = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(b / "rsa.pub"), "-signature", str(b / "rsa.sig"), str(b / "msg")],
                       capture_output=True, text=True)
    assert "Verified OK" in r.stdout, r.stderr
    random = tokens.tool("--generate-random", "64").stdout
    assert len(random) == 64 and random != tokens.tool("--generate-random", "64").stdout


def test_through_p11_kit_server_and_client(tokens):
    env = tokens.start_kit()
    out = tokens.tool("-L", module=P11KIT_CLIENT, env=env).stdout.decode()
    assert "token label        : web" in out
    b = tokens.base
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"through p11-kit")
    h = digest.finalize()
    (b / "h").write_bytes(h)
    for name, key_id, mech in [("web-ec", "02", "ECDSA"), ("web-rsa", "01", "RSA-PKCS-PSS")]:
        extra = ["--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256", "--salt-len", "32"] if "PSS" in mech else []
        tokens.tool("--token-label", "web", "--login", "--pin", PIN, "--sign", "-m", mech, "--id", key_id, "-i", str(b / "h"), "-o", str(b / "kit.sig"),
                    *extra, module=P11KIT_CLIENT, env=env)
        sig = (b / "kit.sig").read_bytes()
        public = tokens.public_key(name)
        if mech == "ECDSA":
            verify(public, "ECDSA", h, sig)
        else:
            public.verify(sig, h, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), utils.Prehashed(hashes.SHA256()))


def test_the_parent_cannot_get_a_token_key_out(tokens):
    """CKA_VALUE and the private exponent are sensitive; the key cannot be
    made extractable, copied, wrapped or destroyed; the CKA_EXTRACTABLE the
    tools read stays false."""
    P, lib, s = logged_in(tokens, "web")
    key = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_ID, (1,))])[0]
    # PyKCS11 turns CKR_ATTRIBUTE_SENSITIVE into None; the raw call says which error it was.
    for attr in (P.CKA_VALUE, P.CKA_PRIVATE_EXPONENT, P.CKA_PRIME_1, P.CKA_COEFFICIENT):
        assert s.getAttributeValue(key, [attr], allAsBinary=True) == [None]
        template = P.LowLevel.ckattrlist(1)
        template[0].SetType(attr)
        assert lib.lib.C_GetAttributeValue(s.session, key, template) == P.CKR_ATTRIBUTE_SENSITIVE
    assert s.getAttributeValue(key, [P.CKA_EXTRACTABLE, P.CKA_SENSITIVE]) == [False, True]
    with pytest.raises(P.PyKCS11Error) as e:
        s.setAttributeValue(key, [(P.CKA_EXTRACTABLE, True)])
    assert e.value.value == P.CKR_ATTRIBUTE_READ_ONLY
    with pytest.raises(P.PyKCS11Error) as e:
        s.destroyObject(key)
    assert e.value.value == P.CKR_ACTION_PROHIBITED
    with pytest.raises(P.PyKCS11Error) as e:
        s.wrapKey(key, key, P.Mechanism(P.CKM_RSA_PKCS))
    assert e.value.value == P.CKR_KEY_NOT_WRAPPABLE
    assert s.getAttributeValue(key, [P.CKA_EXTRACTABLE]) == [False]
    # Signing still works: the key is usable, never readable.
    sig = bytes(s.sign(key, b"still usable", P.Mechanism(P.CKM_SHA256_RSA_PKCS)))
    verify(tokens.public_key("web-rsa"), "SHA256-RSA-PKCS", b"still usable", sig)
    s.logout()
    s.closeSession()


def test_wrong_pins_lock_the_token_across_processes(tokens, tmp_path):
    """The counter lives in the enclave: each pkcs11-tool run is a new
    process (a new p11-kit connection in production), and the tenth wrong
    PIN in a row locks the token until it is provisioned again."""
    pem = tokens.key("lock-ec", "p256")
    tokens.nekms("p11", "token", "add", "--label", "lockme", "--pin-file", str(tokens.pin_file), "--key", "lock-ec:01", "--cert", f"lock-ec:{pem}")
    slot = next(s for s in json.loads(tokens.nekms("p11", "slots", "--json").stdout) if s["label"] == "lockme")["slot"]
    for i in range(10):
        r = tokens.tool("--slot", str(slot), "--login", "--pin", f"wrong-{i}", "-O", check=False)
        assert r.returncode != 0
        want = "CKR_PIN_LOCKED" if i == 9 else "CKR_PIN_INCORRECT"
        assert want in r.stderr.decode(), r.stderr.decode()
    r = tokens.tool("--slot", str(slot), "--login", "--pin", PIN, "-O", check=False)
    assert r.returncode != 0 and "CKR_PIN_LOCKED" in r.stderr.decode(), "the right PIN does not open a locked token"
    assert "user PIN locked" in tokens.tool("--slot", str(slot), "-T").stdout.decode()
    # Provisioning it again (a new PIN) unlocks it.
    (tmp_path / "pin2").write_text("another-pin\n")
    tokens.nekms("p11", "token", "update", "--label", "lockme", "--pin-file", str(tmp_path / "pin2"), "--key", "lock-ec:01", "--cert", f"lock-ec:{pem}")
    tokens.tool("--slot", str(slot), "--login", "--pin", "another-pin", "-O")
    tokens.nekms("p11", "token", "remove", "--label", "lockme")


def test_a_running_client_sees_new_tokens_and_loses_removed_ones(tokens):
    P, lib = pykcs11(tokens)
    before = len(lib.getSlotList(tokenPresent=True))
    pem = tokens.key("hot-ec", "p256")
    tokens.nekms("p11", "token", "add", "--label", "hot", "--pin-file", str(tokens.pin_file), "--key", "hot-ec:07", "--cert", f"hot-ec:{pem}")
    slots = lib.getSlotList(tokenPresent=True)
    assert len(slots) == before + 1, "the same loaded module sees the new token at its next C_GetSlotList"
    hot = next(s for s in slots if lib.getTokenInfo(s).label.strip() == "hot")
    s = lib.openSession(hot)
    s.login(PIN)
    key = s.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY)])[0]
    sig = bytes(s.sign(key, b"hot", P.Mechanism(P.CKM_ECDSA_SHA256)))
    verify(tokens.public_key("hot-ec"), "ECDSA-SHA256", b"hot", sig)
    tokens.nekms("p11", "token", "remove", "--label", "hot")
    with pytest.raises(P.PyKCS11Error) as e:
        s.sign(key, b"hot", P.Mechanism(P.CKM_ECDSA_SHA256))
    assert e.value.value in (P.CKR_TOKEN_NOT_PRESENT, P.CKR_SESSION_HANDLE_INVALID)
    assert len(lib.getSlotList(tokenPresent=True)) == before


def test_provisioning_refuses_what_the_enclave_would_not_sign_with(tokens, tmp_path):
    """A duplicate label, a certificate for another key, a key the store
    does not have, a record the parent wrote itself (a key it knows,
    sealed under nothing the enclave accepts), and decryption for a key
    made to sign only (the parent granting itself a decryption oracle):
    refused, nothing added."""
    before = tokens.nekms("p11", "slots", "--json").stdout
    ec_pem = tokens.chains["web-ec"]

    def refused(*args, says):
        r = tokens.nekms("p11", "token", *args, check=False)
        assert r.returncode != 0 and says in r.stderr, r.stderr

    refused("add", "--label", "web", "--pin-file", str(tokens.pin_file), "--key", "web-ec:01", says="already has a token labelled")
    refused("add", "--label", "mismatch", "--pin-file", str(tokens.pin_file), "--key", "web-rsa:01", "--cert", f"web-rsa:{ec_pem}",
            says="another public key")
    refused("add", "--label", "nokey", "--pin-file", str(tokens.pin_file), "--key", "absent:01", says="no key named")
    refused("add", "--label", "oracle", "--pin-file", str(tokens.pin_file), "--key", "web-rsa4k:01", "--decrypt", "web-rsa4k", says="rule key-usage")
    # Only RSA keys are made to decrypt.
    r = tokens.nekms("key", "create", "--name", "not-rsa", "--spec", "p256", "--decrypt", check=False)
    assert r.returncode != 0 and "only RSA keys" in r.stderr, r.stderr
    (tmp_path / "short").write_text("12\n")
    refused("add", "--label", "shortpin", "--pin-file", str(tmp_path / "short"), "--key", "web-ec:01", says="4 to 64 bytes")
    # Past the CLI (which checks the store's rows), straight to the enclave's
    # RPC: a record renamed, and a record whose sealed key is another's.
    ec_record = json.loads(tokens.nekms("key", "show", "web-ec", "--json").stdout)
    rsa_record = json.loads(tokens.nekms("key", "show", "web-rsa", "--json").stdout)
    renamed = {**ec_record, "key_id": "planted"}
    swapped = {**ec_record, "sealed_private_key": rsa_record["sealed_private_key"]}
    # The usage is in the record's sealed context: a record edited to claim it no longer opens.
    rsa4k = json.loads(tokens.nekms("key", "show", "web-rsa4k", "--json").stdout)
    claims = {**rsa4k, "encryption_context": {**rsa4k["encryption_context"], "nekms:usage": "sign,decrypt"}}
    for record, rule in [(renamed, "record-binding"), (swapped, ""), (claims, "")]:
        decrypt = record is claims
        token = {"label": "planted", "pin": PIN, "keys": [{"id": b"\x01", "label": "planted", "record": cbor_record(record), "decrypt": decrypt}]}
        kind, err = Rpc(tokens.up.info["rpc"]).call({"P11": {"AddToken": {"token": token, "replace": False}}})
        assert kind == "Err" and f"rule {rule}" in err["message"] if rule else kind == "Err", err
    assert tokens.nekms("p11", "slots", "--json").stdout == before


@pytest.mark.skipif(shutil.which("nginx") is None, reason="scripts/test installs nginx-light")
def test_nginx_serves_tls_with_token_keys_through_p11_kit(tokens):
    """ACM's deployment: nginx (two workers) loads the key through libp11's
    engine and p11-kit's client; the key stays in the enclave, the PIN in a
    0600 file. RSA-2048 and P-256, TLS 1.2 and 1.3, 500 handshakes, a killed
    worker, a reload, and a token added while nginx runs (served after a
    binary upgrade)."""
    env = tokens.start_kit()
    b = tokens.base / "nginx"
    (b / "tmp").mkdir(parents=True, exist_ok=True)
    ca = tokens.ca_pem
    (b / "openssl.cnf").write_text(OPENSSL_CNF.format(module=P11KIT_CLIENT))
    # libp11 takes the whole file as the PIN: no newline.
    pin = b / "pin"
    pin.write_text(PIN)
    os.chmod(pin, 0o600)
    ports = {"rsa": free_port(), "ec": free_port()}
    servers = [SERVER.format(port=ports["rsa"], chain=tokens.chains["web-rsa"], token="web", id="01", pin=pin),
               SERVER.format(port=ports["ec"], chain=tokens.chains["web-ec"], token="web", id="02", pin=pin)]
    conf = b / "nginx.conf"
    conf.write_text(NGINX_CONF.format(base=b, servers="".join(servers)))
    nginx_env = {**env, "OPENSSL_CONF": str(b / "openssl.cnf")}
    # Daemonised, as in production: nginx's binary upgrade needs a master whose parent is init.
    # By its full path: the binary upgrade executes argv[0] again.
    started = subprocess.run([shutil.which("nginx"), "-c", str(conf), "-p", str(b)], env=nginx_env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    master = int((b / "nginx.pid").read_text())
    try:
        wait_for(lambda: serves(ports["ec"], ca), what="nginx", log=b / "nginx-error.log", interval=0.2)
        for name, port in ports.items():
            for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
                got, body = handshake(port, ca, version)
                assert got in ("TLSv1.2", "TLSv1.3") and body.startswith(b"web:"), (name, got, body)
        for i in range(500):
            handshake(ports["rsa" if i % 2 else "ec"], ca, ssl.TLSVersion.TLSv1_2 if i % 3 else ssl.TLSVersion.TLSv1_3)
        # A killed worker is replaced, and its replacement signs.
        workers = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[0]), signal.SIGKILL)
        time.sleep(1)
        for _ in range(10):
            handshake(ports["rsa"], ca, ssl.TLSVersion.TLSv1_3)
        # A reload (same master) keeps serving.
        subprocess.run(["nginx", "-c", str(conf), "-p", str(b), "-s", "reload"], env=nginx_env, check=True)
        time.sleep(1)
        assert handshake(ports["rsa"], ca, ssl.TLSVersion.TLSv1_2)[1] == b"web:01\n", "still serving after the reload"
        # A token added while nginx runs. libp11 0.4.12's engine reads the
        # slot list once per process, so the same master cannot see it after
        # `nginx -s reload`; nginx's binary upgrade (USR2: a new master from
        # the new configuration, then QUIT to the old one) serves it without
        # dropping a connection or stopping the server.
        pem = tokens.key("new-ec", "p256")
        tokens.nekms("p11", "token", "add", "--label", "added", "--pin-file", str(tokens.pin_file), "--key", "new-ec:09", "--cert", f"new-ec:{pem}")
        ports["added"] = free_port()
        servers.append(SERVER.format(port=ports["added"], chain=pem, token="added", id="09", pin=pin))
        conf.write_text(NGINX_CONF.format(base=b, servers="".join(servers)))
        os.kill(master, signal.SIGUSR2)
        assert wait_for(lambda: serves(ports["added"], ca), what="the new master", log=b / "nginx-error.log", interval=0.2)[1] == b"added:09\n"
        new_master = int((b / "nginx.pid").read_text())
        assert new_master != master
        os.kill(master, signal.SIGQUIT)
        wait_for(lambda: not os.path.exists(f"/proc/{master}"), what="the old master quitting", interval=0.1)
        for port in ports.values():
            handshake(port, ca, ssl.TLSVersion.TLSv1_3)
        # No PIN in any nginx file.
        for f in [conf, b / "openssl.cnf"]:
            assert PIN not in f.read_text()
    finally:
        stop_nginx(b, master)


def test_error_codes_of_the_module_loaded_direct(tokens):
    """What p11-kit's client would answer itself (NULL pointers) reaches the
    module only when it is loaded direct: every entry point answers with the
    PKCS#11 error, and nothing crashes."""
    import ctypes as C
    import gc
    ul = C.c_ulong
    # PyKCS11 in earlier tests loaded this same library into this process;
    # its objects finalize the module when collected, which must happen now,
    # not in the middle of this test. Then the module starts uninitialised.
    gc.collect()
    lib = C.CDLL(MODULE)
    lib.C_Finalize(None)
    os.environ["NEKMS_P11_RPC"] = tokens.env["NEKMS_P11_RPC"]
    OK, ARGS, SLOT, PROTECTED, PARALLEL, HANDLE, NOT_INIT, ACTIVE = 0, 0x7, 0x3, 0xE2, 0xB4, 0xB3, 0x91, 0x90
    info = C.create_string_buffer(256)
    assert lib.C_GetInfo(info) == 0x190, "before C_Initialize"
    assert lib.C_Initialize(None) == OK
    assert lib.C_Initialize(None) == 0x191, "a second C_Initialize"
    try:
        assert lib.C_GetInfo(None) == ARGS
        count = ul(0)
        assert lib.C_GetSlotList(0, None, None) == ARGS
        assert lib.C_GetSlotList(0, None, C.byref(count)) == OK and count.value >= 2
        one = (ul * 1)()
        short = ul(1)
        assert lib.C_GetSlotList(0, one, C.byref(short)) == 0x150 and short.value == count.value, "CKR_BUFFER_TOO_SMALL with the length"
        slots = (ul * count.value)()
        assert lib.C_GetSlotList(0, slots, C.byref(count)) == OK
        assert lib.C_GetSlotInfo(99999, info) == SLOT
        web = next(s for s in slots if lib.C_GetTokenInfo(s, info) == OK and info.raw[:32].rstrip() == b"web")
        session = ul(0)
        assert lib.C_OpenSession(web, 0x4 | 0x2, None, None, C.byref(session)) == PROTECTED, "RW on a write-protected token"
        assert lib.C_OpenSession(web, 0x2, None, None, C.byref(session)) == PARALLEL
        assert lib.C_OpenSession(web, 0x4, None, None, None) == ARGS
        assert lib.C_OpenSession(web, 0x4, None, None, C.byref(session)) == OK
        s = session.value
        sig_len = ul(0)
        assert lib.C_Sign(s + 1000, b"x", 1, None, C.byref(sig_len)) == HANDLE
        assert lib.C_Sign(s, b"x", 1, None, C.byref(sig_len)) == NOT_INIT, "C_Sign before C_SignInit"
        assert lib.C_GenerateRandom(s, None, 0) == OK, "a zero-length buffer is what p11-kit's server passes as NULL"
        assert lib.C_GenerateRandom(s, None, 16) == ARGS

        class Attr(C.Structure):
            _fields_ = [("type", ul), ("value", C.c_void_p), ("len", ul)]

        class Mech(C.Structure):
            _fields_ = [("mechanism", ul), ("param", C.c_void_p), ("len", ul)]

        def find(cls, key_id):
            c, i = ul(cls), C.c_ubyte(key_id)
            t = (Attr * 2)(Attr(0x0, C.cast(C.byref(c), C.c_void_p), C.sizeof(c)), Attr(0x102, C.cast(C.byref(i), C.c_void_p), 1))
            assert lib.C_FindObjectsInit(s, t, 2) == OK
            assert lib.C_FindObjectsInit(s, t, 2) == ACTIVE
            found, n = (ul * 4)(), ul(0)
            assert lib.C_FindObjects(s, found, 4, C.byref(n)) == OK
            assert lib.C_FindObjectsFinal(s) == OK
            return list(found[:n.value])

        assert find(3, 1) == [], "no private key before login"
        pub = find(2, 1)[0]
        mech = Mech(0x40, None, 0)  # CKM_SHA256_RSA_PKCS
        assert lib.C_SignInit(s, C.byref(mech), pub) == 0x101, "sign before login"
        assert lib.C_Login(s, 1, b"wrong-pin", 9) == 0xA0
        assert lib.C_Login(s, 1, None, 4) == ARGS
        assert lib.C_Login(s, 1, PIN.encode(), len(PIN)) == OK
        assert lib.C_Login(s, 1, PIN.encode(), len(PIN)) == 0x100
        key = find(3, 1)[0]
        assert lib.C_SignInit(s, C.byref(mech), pub) == 0x68, "a public key does not sign"
        assert lib.C_SignInit(s, None, key) == ARGS
        assert lib.C_SignInit(s, C.byref(Mech(0x1041, None, 0)), key) == 0x63, "ECDSA on an RSA key"
        assert lib.C_SignInit(s, C.byref(Mech(0x9999, None, 0)), key) == 0x70, "an unknown mechanism"
        assert lib.C_SignInit(s, C.byref(Mech(0x0D, None, 0)), key) == 0x71, "PSS without parameters"
        assert lib.C_SignInit(s, C.byref(mech), key) == OK
        assert lib.C_SignInit(s, C.byref(mech), key) == ACTIVE, "a second C_SignInit"
        data = b"error codes"
        assert lib.C_Sign(s, data, len(data), None, None) == ARGS
        assert lib.C_SignInit(s, C.byref(mech), key) == OK
        assert lib.C_Sign(s, data, len(data), None, C.byref(sig_len)) == OK and sig_len.value == 256, "a NULL buffer asks for the length"
        small, small_len = C.create_string_buffer(10), ul(10)
        assert lib.C_Sign(s, data, len(data), small, C.byref(small_len)) == 0x150 and small_len.value == 256
        sig = C.create_string_buffer(256)
        assert lib.C_Sign(s, data, len(data), sig, C.byref(sig_len)) == OK
        verify(tokens.public_key("web-rsa"), "SHA256-RSA-PKCS", data, sig.raw[:sig_len.value])
        value = Attr(0x11, None, 0)  # CKA_VALUE
        assert lib.C_GetAttributeValue(s, key, C.byref(value), 1) == 0x11 and value.len == 2**64 - 1, "CKR_ATTRIBUTE_SENSITIVE"
        assert lib.C_GetAttributeValue(s, key + 77, C.byref(value), 1) == 0x82, "CKR_OBJECT_HANDLE_INVALID"
        assert lib.C_GetAttributeValue(s, key, None, 1) == ARGS
        assert lib.C_CloseSession(s) == OK
        assert lib.C_CloseSession(s) == HANDLE
        assert lib.C_Finalize(C.c_void_p(1)) == ARGS
    finally:
        assert lib.C_Finalize(None) == OK
    assert lib.C_GetInfo(info) == 0x190, "after C_Finalize"


def test_the_1025th_token_is_refused_and_1024_fit(tokens):
    """1024 tokens, each with a key and a two-certificate chain, added over
    the RPC; the 1025th is refused. The enclave's memory is reported."""
    record = cbor_record(json.loads(tokens.nekms("key", "show", "web-rsa", "--json").stdout))
    chain = tokens.chains["web-rsa"].read_text()
    ders = [x509.load_pem_x509_certificate(p.encode()).public_bytes(serialization.Encoding.DER)
            for p in chain.split("-----END CERTIFICATE-----")[:2] for p in [p + "-----END CERTIFICATE-----"]]
    rpc = Rpc(tokens.up.info["rpc"])
    kind, slots = rpc.call({"P11": "Slots"})
    have = len(slots["P11"]["Slots"])
    pid = int(subprocess.run(["pgrep", "-f", "nekms-enclave.*" + str(tokens.up.dev)], capture_output=True, text=True).stdout.split()[0])
    before = rss_kib(pid)
    verifier = None
    added = []
    for i in range(1024 - have):
        token = {"label": f"bulk-{i}", "keys": [{"id": b"\x01", "label": "k", "record": record, "certificates": ders}]}
        if verifier:
            token["pin_verifier"] = verifier
        else:
            token["pin"] = PIN
        kind, out = rpc.call({"P11": {"AddToken": {"token": token, "replace": False}}})
        assert kind == "Ok", out
        verifier = out["P11"]["TokenAdded"]["pin_verifier"]
        added.append(f"bulk-{i}")
    after = rss_kib(pid)
    token = {"label": "one-too-many", "pin_verifier": verifier, "keys": [{"id": b"\x01", "label": "k", "record": record}]}
    kind, err = rpc.call({"P11": {"AddToken": {"token": token, "replace": False}}})
    assert kind == "Err" and "1024 tokens" in err["message"], err
    # All 1024 still list, in one frame (certificates come per slot), and a client sees them.
    kind, slots = rpc.call({"P11": "Slots"})
    assert kind == "Ok" and len(slots["P11"]["Slots"]) == 1024
    assert tokens.tool("-L").stdout.decode().count("token label") == 1024
    # Eight p11-kit connections, each a module process that listed the 1024
    # slots, logged in and signed, held open while the memory is measured:
    # the enclave and every p11-kit process together (PSS, so shared pages
    # count once) must fit ACM's default 256 MiB enclave.
    env = tokens.start_kit()
    holders = [subprocess.Popen([sys.executable, "-c", HOLDER, P11KIT_CLIENT, PIN], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(8)]
    try:
        for h in holders:
            assert h.stdout.readline().strip() == "ready"
        kit = children(tokens.kit.pid)
        assert len(kit) >= 9, kit  # the server and one module process per connection
        total = pss_kib(pid) + sum(pss_kib(p) for p in kit)
        print(f"\n1024 tokens: nekms-enclave RSS {before // 1024} MiB -> {after // 1024} MiB; with 8 p11-kit connections, "
              f"the enclave and {len(kit)} p11-kit processes: {total // 1024} MiB PSS")
        assert total < 256 * 1024, total
    finally:
        for h in holders:
            h.stdin.close()
            h.wait(30)
    for label in added:
        assert rpc.call({"P11": {"RemoveToken": {"label": label}}})[0] == "Ok"


@pytest.mark.skipif(not os.path.exists("/usr/lib/softhsm/libsofthsm2.so"), reason="scripts/test installs softhsm2")
def test_the_p11_benchmark_measures_both_modules_on_every_path(tmp_path):
    r = nekms("bench", "p11", "--seconds", "0.3", "--module", MODULE, env={**os.environ, "HOME": str(tmp_path)}, timeout=300)
    for row in ["through p11-kit", "two connections / one", "direct (no p11-kit)", "p11-kit's cost", "first signature through p11-kit"]:
        assert r.stdout.count(row) >= 2, (row, r.stdout)
    for line in r.stdout.splitlines():
        if line.strip().startswith(("through p11-kit", "direct")):
            nekms_rate, hsm_rate = (float(x) for x in line.split()[-3:-1])
            assert nekms_rate > 0 and hsm_rate > 0, line
    if shutil.which("nginx"):
        rows = [l.split() for l in r.stdout.splitlines() if l.strip().startswith(("RSA-2048 ", "P-256 ")) and not l.rstrip().endswith(":")]
        assert len(rows) == 4, r.stdout
        for row in rows:
            assert all(float(x) > 0 for x in row[2:5]), row


def test_dev_up_serves_the_module_through_p11_kit(tokens):
    """`nekms dev up` runs p11-kit's server with the module, on the enclave's
    own PKCS#11 socket, and says where in its environment."""
    address = tokens.up.info["env"].get("P11_KIT_SERVER_ADDRESS")
    assert address and tokens.up.info["p11_kit"] == address, tokens.up.info
    env = {**tokens.env, "P11_KIT_SERVER_ADDRESS": address}
    out = tokens.tool("-L", module=P11KIT_CLIENT, env=env).stdout.decode()
    assert "token label        : web" in out and "token label        : other" in out
    # The module's socket serves the module's calls only: no provisioning, no other RPC.
    p11 = Rpc(tokens.up.info["p11"])
    for request in ({"P11": {"RemoveToken": {"label": "web"}}}, "Describe", {"GenerateRandom": {"length": 16}}):
        kind, err = p11.call(request)
        assert kind == "Err" and "not served on the PKCS#11 module's socket" in err["message"], (request, err)
    assert p11.call({"P11": "Slots"})[0] == "Ok"


def test_key_pairs_generated_in_a_token_sign_at_once_and_survive_a_restart(tmp_path):
    """pkcs11-tool --keypairgen on a writable token: the enclave makes the
    key as a custody record with an origin document; it signs at once;
    `nekms p11 token sync` stores it; after `nekms dev up` restarts (same
    custody key), `nekms p11 token restore` brings the token back and the key
    still signs. Read-only sessions, write-protected tokens and small RSA
    keys are refused."""
    t = Tokens(Up(tmp_path / "gen"))
    try:
        pem = t.key("seed-ec", "p256")
        t.nekms("p11", "token", "add", "--label", "gen", "--writable", "--pin-file", str(t.pin_file), "--key", "seed-ec:01", "--cert", f"seed-ec:{pem}")
        t.nekms("p11", "token", "add", "--label", "ro", "--pin-file", str(t.pin_file), "--key", "seed-ec:01")
        login = ["--login", "--pin", PIN]
        for kind, key_id in [("EC:prime256v1", "0a"), ("rsa:2048", "0b"), ("EC:secp384r1", "0c")]:
            out = t.tool("--token-label", "gen", *login, "--keypairgen", "--key-type", kind, "--id", key_id, "--label", f"gen-{key_id}")
            assert "Private Key Object" in out.stdout.decode(), out
        r = t.tool("--token-label", "gen", *login, "--keypairgen", "--key-type", "rsa:1024", "--id", "0d", check=False)
        assert r.returncode != 0 and "CKR_KEY_SIZE_RANGE" in r.stderr.decode()
        r = t.tool("--token-label", "ro", *login, "--keypairgen", "--key-type", "EC:prime256v1", "--id", "0e", check=False)
        assert r.returncode != 0 and "CKR_TOKEN_WRITE_PROTECTED" in r.stderr.decode()
        keys = {k["id"]: k for s in json.loads(t.nekms("p11", "slots", "--json").stdout) if s["label"] == "gen" for k in s["keys"]}
        (t.base / "m").write_bytes(b"made inside the enclave")
        for key_id, mech in [("0a", "ECDSA-SHA256"), ("0b", "SHA256-RSA-PKCS")]:
            t.tool("--token-label", "gen", *login, "--sign", "-m", mech, "--id", key_id, "-i", str(t.base / "m"), "-o", str(t.base / "s"))
            public = serialization.load_der_public_key(base64.b64decode(keys[key_id]["public_key"]))
            verify(public, mech, b"made inside the enclave", (t.base / "s").read_bytes())
        # Stored on the parent, with an origin document any verifier can check.
        t.nekms("p11", "token", "sync", "--label", "gen")
        names = [k["key"] for tok in json.loads((t.base / "tokens.json").read_text())["tokens"] if tok["label"] == "gen" for k in tok["keys"]]
        assert {"p11/gen/0a", "p11/gen/0b", "p11/gen/0c"} <= set(names), names
        pcr0 = t.up.info["pcr0"]
        t.nekms("key", "verify-origin", "p11/gen/0a", "--pcr0", pcr0, "--dev-root", "--dir", str(t.up.dev))
        custody = t.up.info["custody_kms_key"]
        t.up.stop()
        t.up = Up(t.base, "--custody-kms-key", custody)
        t.env.update({"NEKMS_ENCLAVE": t.up.info["rpc"], "NEKMS_P11_RPC": t.up.info["rpc"]})
        assert "gen" not in t.nekms("p11", "slots").stdout, "tokens live in the enclave's memory"
        t.nekms("p11", "token", "restore")
        t.tool("--token-label", "gen", *login, "--sign", "-m", "ECDSA-SHA256", "--id", "0a", "-i", str(t.base / "m"), "-o", str(t.base / "s2"))
        public = serialization.load_der_public_key(base64.b64decode(keys["0a"]["public_key"]))
        verify(public, "ECDSA-SHA256", b"made inside the enclave", (t.base / "s2").read_bytes())
    finally:
        t.stop()


def test_pkcs11_tool_self_test(tokens):
    """`pkcs11-tool -t`: digests, signatures with every mechanism it tries
    (raw CKM_RSA_PKCS over arbitrary bytes, CKM_RSA_X_509, SHA-1 and
    SHA-224 ones included), verification, decryption and random."""
    # pkcs11-tool -t opens a read-write session: a writable token with the same keys.
    tokens.nekms("p11", "token", "add", "--label", "selftest", "--pin-file", str(tokens.pin_file), "--writable", "--decrypt", "web-rsa",
                 "--key", "web-rsa:01", "--cert", f"web-rsa:{tokens.chains['web-rsa']}", "--key", "web-ec:02", "--cert", f"web-ec:{tokens.chains['web-ec']}")
    r = tokens.tool("--token-label", "selftest", "--login", "--pin", PIN, "-t", check=False)
    out = (r.stdout + r.stderr).decode()
    print(out)
    assert r.returncode == 0 and "No errors" in out, out
    env = tokens.start_kit()
    r = tokens.tool("--token-label", "selftest", "--login", "--pin", PIN, "-t", module=P11KIT_CLIENT, env=env, check=False)
    out = (r.stdout + r.stderr).decode()
    try:
        # Through p11-kit 0.24.1, one error that its client makes itself
        # (it turns an empty answer into CKR_BUFFER_TOO_SMALL; see the README).
        assert "1 errors" in out and "C_GenerateRandom(buf1,0) failed: CKR_BUFFER_TOO_SMALL" in out, out
        for line in ["RSA-X-509: OK", "SHA1-RSA-PKCS: OK", "SHA256-RSA-PKCS: OK"]:
            assert line in out, line
    finally:
        tokens.nekms("p11", "token", "remove", "--label", "selftest")


def test_acm_mechanisms_and_raw_rsa(tokens):
    """Loaded direct, the module lists all 24 of ACM's mechanisms; raw
    CKM_RSA_PKCS signs any bytes up to k-11, PSS takes any hash, MGF1 hash
    and salt that fit, and CKM_RSA_X_509 (the raw private operation, which
    decrypts) works only for a key provisioned to decrypt."""
    mechs = tokens.tool("-M").stdout.decode()
    acm = ["SHA-1", "SHA224", "SHA256", "SHA384", "SHA512", "RSA-PKCS,", "RSA-X-509", "RSA-PKCS-PSS,", "ECDSA,"]
    acm += [f"{h}-RSA-PKCS," for h in ("SHA1", "SHA224", "SHA256", "SHA384", "SHA512")]
    acm += [f"{h}-RSA-PKCS-PSS" for h in ("SHA1", "SHA224", "SHA256", "SHA384", "SHA512")]
    acm += [f"ECDSA-{h}" for h in ("SHA1", "SHA224", "SHA256", "SHA384", "SHA512")]
    assert len(acm) == 24
    for m in acm:
        assert m in mechs, (m, mechs)
    b = tokens.base
    rsa = tokens.public_key("web-rsa")
    sign = ["--token-label", "web", "--login", "--pin", PIN, "--sign", "-i", str(b / "raw.in"), "-o", str(b / "raw.sig")]
    (b / "raw.in").write_bytes(b"not a DigestInfo at all: just bytes")
    tokens.tool(*sign, "-m", "RSA-PKCS", "--id", "01")
    assert rsa.recover_data_from_signature((b / "raw.sig").read_bytes(), padding.PKCS1v15(), None) == b"not a DigestInfo at all: just bytes"
    # One byte more than k-11 (pkcs11-tool feeds that much part by part, so PyKCS11 asks).
    P, lib, session = logged_in(tokens, "web")
    key = session.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_ID, (1,))])[0]
    with pytest.raises(P.PyKCS11Error) as e:
        session.sign(key, b"x" * 246, P.Mechanism(P.CKM_RSA_PKCS))
    assert e.value.value == P.CKR_DATA_LEN_RANGE
    assert bytes(session.sign(key, b"x" * 245, P.Mechanism(P.CKM_RSA_PKCS)))
    session.logout()
    session.closeSession()
    # PSS with MGF1-SHA1 and no salt, and with the largest salt that fits.
    digest = hashes.Hash(hashes.SHA256())
    digest.update(b"pss")
    (b / "raw.in").write_bytes(digest.finalize())
    for mgf, salt in [("SHA1", 0), ("SHA256", 256 - 32 - 2)]:
        tokens.tool(*sign, "-m", "RSA-PKCS-PSS", "--id", "01", "--hash-algorithm", "SHA256", "--mgf", f"MGF1-{mgf}",
                    "--salt-len", str(salt))
        rsa.verify((b / "raw.sig").read_bytes(), (b / "raw.in").read_bytes(),
                   padding.PSS(mgf=padding.MGF1(getattr(hashes, mgf)()), salt_length=salt), utils.Prehashed(hashes.SHA256()))
    r = tokens.tool(*sign, "-m", "RSA-PKCS-PSS", "--id", "01", "--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256", "--salt-len", "223", check=False)
    assert b"CKR_MECHANISM_PARAM_INVALID" in r.stderr, r.stderr
    # CKM_RSA_X_509: m^d mod n for the key that may decrypt, refused for a sign-only one.
    (b / "raw.in").write_bytes(b"\x01" * 40)
    tokens.tool(*sign, "-m", "RSA-X-509", "--id", "01")
    n = rsa.public_numbers()
    assert pow(int.from_bytes((b / "raw.sig").read_bytes(), "big"), n.e, n.n) == int.from_bytes(b"\x01" * 40, "big")
    r = tokens.tool(*sign, "-m", "RSA-X-509", "--id", "04", check=False)
    assert b"CKR_KEY_FUNCTION_NOT_PERMITTED" in r.stderr, r.stderr


def test_raw_pkcs1_signing_is_no_decryption_oracle_for_sign_only_keys(tokens, tmp_path):
    """The attacker holds a token's PIN (or is root on the parent) and a
    ciphertext made for a sign-only RSA key. Raw CKM_RSA_PKCS signing of
    freely chosen bytes would decrypt it: two signatures over the lattice
    split of the ciphertext multiply into c^d. The enclave signs a
    DigestInfo for such a key and nothing else, so the attack stops at its
    first signature; the same attack against the key provisioned to decrypt
    succeeds, which shows the attack itself is sound."""
    P, lib, session = logged_in(tokens, "web")
    try:
        for name, key_id, decrypts in [("web-rsa", 1, True), ("web-rsa4k", 4, False)]:
            public = tokens.public_key(name)
            n = public.public_numbers().n
            k = (n.bit_length() + 7) // 8
            ciphertext = public.encrypt(b"the session key of someone else", padding.PKCS1v15())
            c = int.from_bytes(ciphertext, "big")
            x, y = lattice_split(c, n, k)
            key = session.findObjects([(P.CKA_CLASS, P.CKO_PRIVATE_KEY), (P.CKA_ID, (key_id,))])[0]
            if not decrypts:
                with pytest.raises(P.PyKCS11Error) as err:
                    session.sign(key, y, P.Mechanism(P.CKM_RSA_PKCS))
                assert err.value.value == P.CKR_DATA_INVALID, name
                # A DigestInfo is still signed (what TLS and openssl ask for).
                digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)
                sig = bytes(session.sign(key, digest_info, P.Mechanism(P.CKM_RSA_PKCS)))
                public.verify(sig, bytes(32), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
                continue
            s1 = int.from_bytes(bytes(session.sign(key, y, P.Mechanism(P.CKM_RSA_PKCS))), "big")
            s2 = int.from_bytes(bytes(session.sign(key, x, P.Mechanism(P.CKM_RSA_PKCS))), "big")
            block = (s1 * pow(s2, -1, n) % n).to_bytes(k, "big")
            assert block.endswith(b"\x00the session key of someone else") and block[:2] == b"\x00\x02", name
    finally:
        session.logout()
        session.closeSession()
    # Over the raw RPC there is no scheme that signs caller-chosen bytes at all.
    record = json.loads(tokens.nekms("key", "show", "web-rsa4k", "--json").stdout)
    rpc = Rpc(tokens.up.info["rpc"])
    for scheme in ("rsa-pkcs1-raw", "rsa-x509", "raw"):
        kind, err = rpc.call({"Sign": {"record": cbor_record(record), "scheme": scheme, "payload": {"digest": y}}})
        assert kind == "Err" and "unknown scheme" in err["message"], (scheme, err)


def test_describe_device_and_a_database_packed_without_the_enclave(tokens, tmp_path):
    """`nekms p11 token describe` and `nekms p11 device` show what the
    enclave holds and where the database differs; `nekms p11 db pack`
    writes a token (PIN verifier, never the PIN) without the enclave, and
    `token restore` provisions it."""
    d = json.loads(tokens.nekms("p11", "token", "describe", "--label", "web", "--json").stdout)
    assert d["label"] == "web" and len(d["keys"]) == 4 and d["database"]["differences"] == [], d
    rsa = next(k for k in d["keys"] if k["label"] == "web-rsa")
    assert rsa["decrypt"] and len(rsa["certificates"]) == 2
    assert "localhost" in rsa["certificates"][0]["subject"] and "nekms test CA" in rsa["certificates"][0]["issuer"]
    assert "agrees" in tokens.nekms("p11", "token", "describe", "--label", "web").stdout
    r = tokens.nekms("p11", "token", "describe", "--label", "absent", check=False)
    assert r.returncode != 0 and "no token labelled" in r.stderr
    device = json.loads(tokens.nekms("p11", "device", "--json").stdout)
    assert device["max_tokens"] == 1024 and device["tokens"] >= 2 and device["simulated"] and len(device["pcr0"]) == 96, device

    db = tmp_path / "packed.json"
    pack = ["p11", "db", "pack", "--db", str(db), "--label", "packed", "--pin-file", str(tokens.pin_file)]
    tokens.nekms(*pack, "--key", "web-ec:0a", "--cert", f"web-ec:{tokens.chains['web-ec']}")
    assert PIN not in db.read_text() and oct(db.stat().st_mode & 0o777) == "0o600"
    for extra, says in [([], "already has a token labelled"),
                        (["--replace", "--cert", f"web-ec:{tokens.chains['web-rsa']}"], "not for that key's public key"),
                        (["--replace", "--key", "absent:01"], "no key named")]:
        args = extra if "--key" in extra else [*extra, "--key", "web-ec:0a"]
        r = tokens.nekms(*pack, *args, check=False)
        assert r.returncode != 0 and says in r.stderr, (extra, r.stderr)
    try:
        tokens.nekms("p11", "token", "restore", "--db", str(db))
        (tmp_path / "h").write_bytes(bytes(32))
        tokens.tool("--token-label", "packed", "--login", "--pin", PIN, "--sign", "-m", "ECDSA", "--id", "0a", "-i", str(tmp_path / "h"),
                    "-o", str(tmp_path / "sig"))
        verify(tokens.public_key("web-ec"), "ECDSA", bytes(32), (tmp_path / "sig").read_bytes())
        assert json.loads(tokens.nekms("p11", "token", "describe", "--label", "packed", "--db", str(db), "--json").stdout)["database"]["differences"] == []
        # Against the other database, the token is one it does not know.
        other = json.loads(tokens.nekms("p11", "token", "describe", "--label", "packed", "--json").stdout)
        assert other["database"]["differences"] == ["the database has no entry for it"], other
    finally:
        tokens.nekms("p11", "token", "remove", "--label", "packed", "--db", str(db))


@pytest.mark.skipif(not os.path.exists(PROVIDER), reason="pkcs11-provider is in bookworm-backports; scripts/test installs it where it can")
def test_openssl_3_provider_signs_and_serves_tls_through_p11_kit(tokens, tmp_path):
    """OpenSSL 3's provider path (pkcs11-provider, not the deprecated
    engine), through p11-kit's client and server: `openssl dgst -sign`
    with the RSA and P-256 token keys, checked with `cryptography`, and a
    TLS 1.3 handshake of `openssl s_server` holding the key in the token."""
    env = tokens.start_kit()
    pin = tmp_path / "pin"
    pin.write_text(PIN)
    os.chmod(pin, 0o600)
    cnf = tmp_path / "provider.cnf"
    cnf.write_text(PROVIDER_CNF.format(provider=PROVIDER, module=P11KIT_CLIENT, pin=pin))
    env = {**env, "OPENSSL_CONF": str(cnf)}
    (tmp_path / "msg").write_bytes(b"signed through OpenSSL 3's provider")
    for name, key_id in [("web-rsa", "%01"), ("web-ec", "%02")]:
        r = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"pkcs11:token=web;id={key_id};type=private", "-out", str(tmp_path / "sig"),
                            str(tmp_path / "msg")], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        sig = (tmp_path / "sig").read_bytes()
        public = tokens.public_key(name)
        if name == "web-rsa":
            public.verify(sig, (tmp_path / "msg").read_bytes(), padding.PKCS1v15(), hashes.SHA256())
        else:
            public.verify(sig, (tmp_path / "msg").read_bytes(), ec.ECDSA(hashes.SHA256()))
    # s_server with the token's P-256 key; s_client checks the handshake against the CA.
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(tokens.chains["web-ec"]),
                               "-key", "pkcs11:token=web;id=%02;type=private", "-tls1_3", "-naccept", "1", "-www"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until it listens, without connecting (a probe would use up its one accept).
        listening = f"0100007F:{port:04X}"
        wait_for(lambda: any(line.split()[1] == listening and line.split()[3] == "0A" for line in open("/proc/net/tcp").readlines()[1:]),
                 server, "openssl s_server", timeout=20, log=lambda: server.stderr.read(), interval=0.1)
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(tokens.ca_pem), "-verify_return_error",
                            "-servername", "localhost", "-tls1_3"], input="GET / HTTP/1.0\r\n\r\n", capture_output=True, text=True, timeout=30,
                           env={k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"})
        assert "Verify return code: 0 (ok)" in r.stdout and "TLSv1.3" in r.stdout, r.stdout + r.stderr
    finally:
        stop(server, sig=signal.SIGKILL)


def test_an_acm_token_database_moves_over_and_its_swaps_are_refused(tokens, tmp_path):
    """An ACM for Nitro Enclaves key database (p11ne-db: each key's PEM
    encrypted under a KMS key with no encryption context) moves to nekms:
    the administrator converts it (each PEM opened in KMS, checked against
    its certificate, encrypted again for the import path, bound to its new
    name and spec), the parent imports the bundle. ACM's format binds
    nothing, so an entry's ciphertext swapped for another's is accepted by
    KMS; the conversion refuses it by its certificate, and a swap inside
    nekms's bundle is refused by the import context."""
    admin = tokens.up.client("admin")
    acm_key = admin.create_key(Description="ACM for Nitro Enclaves p11ne-db")["KeyMetadata"]["Arn"]
    custody = tokens.up.info["custody_kms_key"]
    entries, privates = [], {}
    for i, algorithm in [(1, ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]), (2, ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])]:
        pem = subprocess.run(["openssl", "genpkey", *algorithm], check=True, capture_output=True).stdout
        private = serialization.load_pem_private_key(pem, None)
        privates[i] = private
        leaf = tokens.leaf(f"acm-{i}.example", private.public_key()).sign(tokens.ca, hashes.SHA256())
        chain = (leaf.public_bytes(serialization.Encoding.PEM) + tokens.ca_cert.public_bytes(serialization.Encoding.PEM)).decode()
        # What `p11ne-db pack-key` writes: aws kms encrypt of the PEM text, no context; id a number.
        blob = admin.encrypt(KeyId=acm_key, Plaintext=pem)["CiphertextBlob"]
        entries.append({"encrypted_pem_b64": base64.b64encode(blob).decode(), "id": i, "label": f"acm-key-{i}", "cert_pem": chain})
    db = tmp_path / "p11ne.db"
    convert = ["p11", "acm", "convert", "--in", str(db), "--token-label", "acm-web", "--kms-key", custody, "--acm-kms-key", acm_key, "--profile", "admin",
               "--out", str(tmp_path / "bundle.json")]
    # The attack ACM's format allows: one entry's ciphertext under another's label and certificate.
    swapped = [{**entries[0], "encrypted_pem_b64": entries[1]["encrypted_pem_b64"]}, {**entries[1], "encrypted_pem_b64": entries[0]["encrypted_pem_b64"]}]
    db.write_text(json.dumps(swapped))
    r = tokens.nekms(*convert, check=False)
    assert r.returncode != 0 and "another public key" in r.stderr, r.stderr
    assert not (tmp_path / "bundle.json").exists()
    db.write_text(json.dumps(entries))
    tokens.nekms(*convert)
    bundle = json.loads((tmp_path / "bundle.json").read_text())
    text = (tmp_path / "bundle.json").read_text()
    assert "PRIVATE KEY" not in text and [k["name"] for k in bundle["keys"]] == ["acm-acm-web-01", "acm-acm-web-02"]
    # The parent swaps the import ciphertexts in the bundle: the import context (name and spec) refuses it, nothing stays.
    before = tokens.nekms("key", "list").stdout
    bad = {**bundle, "keys": [{**bundle["keys"][0], "import_ciphertext": bundle["keys"][1]["import_ciphertext"]}, bundle["keys"][1]]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = tokens.nekms("p11", "acm", "import", "--in", str(tmp_path / "bad.json"), "--pin-file", str(tokens.pin_file), check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    assert tokens.nekms("key", "list").stdout == before
    try:
        tokens.nekms("p11", "acm", "import", "--in", str(tmp_path / "bundle.json"), "--pin-file", str(tokens.pin_file))
        (tmp_path / "m").write_bytes(b"served by the moved key")
        for i, mech in [(1, "SHA256-RSA-PKCS"), (2, "ECDSA-SHA256")]:
            tokens.tool("--token-label", "acm-web", "--login", "--pin", PIN, "--sign", "-m", mech, "--id", f"{i:02x}",
                        "-i", str(tmp_path / "m"), "-o", str(tmp_path / "s"))
            verify(privates[i].public_key(), mech, b"served by the moved key", (tmp_path / "s").read_bytes())
        # The records say they were imported, and their origin is accepted only when told so.
        record = json.loads(tokens.nekms("key", "show", "acm-acm-web-01", "--json").stdout)
        assert record["origin"] == "imported"
        r = tokens.nekms("key", "verify-origin", "acm-acm-web-01", "--dev-root", "--pcr0", tokens.up.info["pcr0"], check=False)
        assert r.returncode != 0 and "import" in r.stderr
    finally:
        tokens.nekms("p11", "token", "remove", "--label", "acm-web", check=False)


def test_an_imported_keys_decryption_is_the_administrators_choice(tokens, tmp_path):
    """Decryption is fixed when a key is made, also for an imported key: the
    administrator binds it into the import ciphertext's context
    (`encrypt-for-import --decrypt`). The parent holds the ciphertext and
    may replay it, but asking for decryption the administrator did not
    grant fails in KMS, and so does the token provisioned from it."""
    key_pem = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(key_pem)], check=True)
    custody = tokens.up.info["custody_kms_key"]

    def encrypt(name, *extra):
        out = tmp_path / f"{name}.ct"
        tokens.nekms("key", "encrypt-for-import", "--name", name, "--spec", "rsa2048", "--kms-key", custody, "--profile", "admin",
                     "-o", str(out), *extra, str(key_pem))
        return out

    sign_only = encrypt("imp-sign")
    r = tokens.nekms("key", "import", "--name", "imp-sign", "--spec", "rsa2048", "--ciphertext-file", str(sign_only), "--decrypt", check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr and "nekms:usage=sign,decrypt" in r.stderr, r.stderr
    tokens.nekms("key", "import", "--name", "imp-sign", "--spec", "rsa2048", "--ciphertext-file", str(sign_only))
    r = tokens.nekms("p11", "token", "add", "--label", "imp", "--pin-file", str(tokens.pin_file), "--key", "imp-sign:01", "--decrypt", "imp-sign",
                     check=False)
    assert r.returncode != 0 and "rule key-usage" in r.stderr, r.stderr
    both = encrypt("imp-both", "--decrypt")
    r = tokens.nekms("key", "import", "--name", "imp-both", "--spec", "rsa2048", "--ciphertext-file", str(both), check=False)
    assert r.returncode != 0 and "rule import-ciphertext" in r.stderr, r.stderr
    tokens.nekms("key", "import", "--name", "imp-both", "--spec", "rsa2048", "--ciphertext-file", str(both), "--decrypt")
    try:
        tokens.nekms("p11", "token", "add", "--label", "imp", "--pin-file", str(tokens.pin_file), "--key", "imp-both:01", "--decrypt", "imp-both")
        private = serialization.load_pem_private_key(key_pem.read_bytes(), None)
        (tmp_path / "ct").write_bytes(private.public_key().encrypt(b"for the administrator's key", padding.PKCS1v15()))
        out = tokens.tool("--token-label", "imp", "--login", "--pin", PIN, "--decrypt", "-m", "RSA-PKCS", "--id", "01", "-i", str(tmp_path / "ct")).stdout
        assert out == b"for the administrator's key"
    finally:
        tokens.nekms("p11", "token", "remove", "--label", "imp", check=False)
