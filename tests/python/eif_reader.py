"""An EIF reader of the tests' own, written from the format's description
(docs/image.md) with hashlib and cbor2 only: the sections, the PCRs, the
newc ramdisks' files, and the signature checked with `cryptography`. It
shares no code with nekms or with AWS's crate, so three readers must agree."""

import hashlib
import struct

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

HEADER = 548
KINDS = {1: "kernel", 2: "cmdline", 3: "ramdisk", 4: "signature", 5: "metadata"}


def sections(data: bytes):
    assert data[:4] == b".eif", "no .eif magic"
    out, at = [], HEADER
    while at < len(data):
        kind, _flags, size = struct.unpack(">HHQ", data[at:at + 12])
        out.append((KINDS[kind], data[at + 12:at + 12 + size]))
        at += 12 + size
    assert at == len(data)
    return out


def with_signature(data: bytes, signature_section: bytes) -> bytes:
    """`data` with its signature section's body replaced (the header's own table is left as it was)."""
    out, at = bytearray(data[:HEADER]), HEADER
    while at < len(data):
        kind, flags, size = struct.unpack(">HHQ", data[at:at + 12])
        body = signature_section if kind == 4 else data[at + 12:at + 12 + size]
        out += struct.pack(">HHQ", kind, flags, len(body)) + body
        at += 12 + size
    return bytes(out)


def header(data: bytes):
    version, flags, mem, cpus = struct.unpack(">HHQQ", data[4:24])
    return {"version": version, "flags": flags, "default_mem": mem, "default_cpus": cpus}


def extend(digest: bytes) -> str:
    return hashlib.sha384(b"\0" * 48 + digest).hexdigest()


def _bytes(v):
    return bytes(v) if isinstance(v, list) else v


def signature(data: bytes):
    """The first signature: (certificate PEM, COSE_Sign1 bytes), or None."""
    for kind, body in sections(data):
        if kind == "signature":
            first = cbor2.loads(body)[0]
            return _bytes(first["signing_certificate"]), _bytes(first["signature"])
    return None


def pcrs(data: bytes):
    image, boot, app = hashlib.sha384(), hashlib.sha384(), hashlib.sha384()
    ramdisks = 0
    for kind, body in sections(data):
        if kind in ("kernel", "cmdline") or (kind == "ramdisk" and ramdisks == 0):
            image.update(body)
            boot.update(body)
        elif kind == "ramdisk":
            image.update(body)
            app.update(body)
        ramdisks += kind == "ramdisk"
    out = {"PCR0": extend(image.digest()), "PCR1": extend(boot.digest()), "PCR2": extend(app.digest())}
    sig = signature(data)
    if sig:
        der = x509.load_pem_x509_certificate(sig[0]).public_bytes(serialization.Encoding.DER)
        out["PCR8"] = extend(hashlib.sha384(der).digest())
    return out


def verify_signature(data: bytes):
    """Check the COSE_Sign1 over PCR0 with the certificate's key (ES384/ES256/ES512); return its payload."""
    cert_pem, cose = signature(data)
    msg = cbor2.loads(cose)
    if isinstance(msg, cbor2.CBORTag):
        msg = msg.value
    protected, _unprotected, payload, sig = msg
    alg = cbor2.loads(protected)[1] if protected else None
    hash_alg = {-7: hashes.SHA256(), -35: hashes.SHA384(), -36: hashes.SHA512()}[alg]
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    half = len(sig) // 2
    der = encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    key.verify(der, to_sign, ec.ECDSA(hash_alg))  # raises InvalidSignature
    info = cbor2.loads(payload)
    return {"index": info["register_index"], "value": _bytes(info["register_value"]).hex()}


def ramdisk_files(body: bytes):
    """A newc archive's entries: {path: (mode, data)}; checks every header field nekms fixes."""
    out, at, inodes = {}, 0, []
    while True:
        assert body[at:at + 6] == b"070701", f"no newc magic at {at}"
        f = [int(body[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, namesize = f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[11]
        name = body[at + 110:at + 110 + namesize - 1].decode()
        at = (at + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            assert len(body) % 512 == 0
            return out
        assert (uid, gid) == (0, 0) and mtime == 1492533000, (name, uid, gid, mtime)
        assert nlink == (2 if mode & 0o040000 else 1)
        inodes.append(ino)
        assert inodes == list(range(721, 721 + len(inodes)))
        out[name] = (mode, body[at:at + size])
        at = (at + size + 3) & ~3
