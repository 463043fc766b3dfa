"""A validator node's side of CometBFT's privval connection, for the tests.

It is not the code under test: it listens on a Unix socket as a validator's
`priv_validator_laddr` does, waits for a signer to dial in, sends requests
and records the replies. The protobuf codec is written here from the .proto
files (tendermint/privval/types.proto, tendermint/types/types.proto,
tendermint/types/canonical.proto, v0.38), not taken from any signer, and so
is the checker that rebuilds the canonical sign bytes and verifies every
signature with `cryptography`.
"""

import os
import socket

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PREVOTE, PRECOMMIT, PROPOSAL = 1, 2, 32
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# ---- protobuf, by hand -------------------------------------------------------


def uvarint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint_field(num, v):
    """int32/int64/enum: negative values take ten bytes (two's complement)."""
    if v == 0:
        return b""
    if v < 0:
        v += 1 << 64
    return uvarint(num << 3) + uvarint(v)


def sfixed64_field(num, v):
    if v == 0:
        return b""
    return uvarint(num << 3 | 1) + (v & (1 << 64) - 1).to_bytes(8, "little")


def bytes_field(num, b, always=False):
    if not b and not always:
        return b""
    return uvarint(num << 3 | 2) + uvarint(len(b)) + b


def timestamp(seconds, nanos):
    return varint_field(1, seconds) + varint_field(2, nanos)


def block_id(bid, canonical=False):
    """bid: None (nil) or (hash, total, parts_hash)."""
    if bid is None:
        # Go's BlockID{} : its part_set_header is non-nullable, so written empty.
        return bytes_field(2, b"", always=True)
    h, total, ph = bid
    header = varint_field(1, total) + bytes_field(2, ph)
    return bytes_field(1, h) + bytes_field(2, header, always=True)


def vote(v):
    """A Vote as Go's gogoproto writes it: block_id and timestamp are
    non-nullable, so present even when empty."""
    return (varint_field(1, v["type"]) + varint_field(2, v["height"]) + varint_field(3, v["round"])
            + bytes_field(4, block_id(v.get("block_id")), always=True)
            + bytes_field(5, timestamp(*v["timestamp"]), always=True)
            + bytes_field(6, v.get("address", b"\x11" * 20)) + varint_field(7, v.get("index", 0))
            + bytes_field(9, v.get("extension", b"")))


def proposal(p):
    return (varint_field(1, PROPOSAL) + varint_field(2, p["height"]) + varint_field(3, p["round"])
            + varint_field(4, p["pol_round"]) + bytes_field(5, block_id(p.get("block_id")), always=True)
            + bytes_field(6, timestamp(*p["timestamp"]), always=True))


def envelope(tag, body):
    return bytes_field(tag, body, always=True)


def sign_vote_request(chain_id, v):
    return envelope(3, bytes_field(1, vote(v), always=True) + bytes_field(2, chain_id.encode()))


def sign_proposal_request(chain_id, p):
    return envelope(5, bytes_field(1, proposal(p), always=True) + bytes_field(2, chain_id.encode()))


def pubkey_request(chain_id):
    return envelope(1, bytes_field(1, chain_id.encode()))


def ping_request():
    return envelope(7, b"")


def parse(buf):
    """Fields of one message: {number: [values]} (ints, or bytes for length-delimited)."""
    out, i = {}, 0
    while i < len(buf):
        key, i = read_uvarint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_uvarint(buf, i)
        elif wt == 1:
            v, i = int.from_bytes(buf[i:i + 8], "little"), i + 8
        elif wt == 2:
            n, i = read_uvarint(buf, i)
            v, i = bytes(buf[i:i + n]), i + n
        elif wt == 5:
            v, i = int.from_bytes(buf[i:i + 4], "little"), i + 4
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(num, []).append(v)
    return out


def read_uvarint(buf, i):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def signed(n):
    return n - (1 << 64) if n >= 1 << 63 else n


def one(fields, num, default=None):
    return fields.get(num, [default])[-1]


def decode_reply(body):
    """("pubkey"|"vote"|"proposal"|"ping", value or None, error or None)."""
    env = parse(body)
    kinds = {2: "pubkey", 4: "vote", 6: "proposal", 8: "ping"}
    (tag, [inner]), = env.items()
    kind = kinds[tag]
    if kind == "ping":
        return kind, None, None
    f = parse(inner)
    err = None
    if 2 in f:
        e = parse(one(f, 2))
        err = (signed(one(e, 1, 0)), one(e, 2, b"").decode())
    value = None
    if 1 in f:
        m = parse(one(f, 1))
        if kind == "pubkey":
            value = ("ed25519", one(m, 1)) if 1 in m else ("secp256k1", one(m, 2))
        else:
            ts = parse(one(m, 5 if kind == "vote" else 6, b""))
            value = {"height": signed(one(m, 2, 0)), "round": signed(one(m, 3, 0)),
                     "timestamp": (signed(one(ts, 1, 0)), one(ts, 2, 0)),
                     "signature": one(m, 8 if kind == "vote" else 7, b""),
                     "extension": one(m, 9, b"") if kind == "vote" else None,
                     "extension_signature": one(m, 10, b"") if kind == "vote" else None,
                     "has_extension_signature_field": kind == "vote" and 10 in m}
    return kind, value, err


# ---- canonical sign bytes and the checker -----------------------------------


def canonical_block_id(bid):
    if bid is None:
        return b""
    h, total, ph = bid
    return bytes_field(1, h) + bytes_field(2, varint_field(1, total) + bytes_field(2, ph), always=True)


def canonical_vote(chain_id, v, ts=None):
    ts = ts or v["timestamp"]
    body = (varint_field(1, v["type"]) + sfixed64_field(2, v["height"]) + sfixed64_field(3, v["round"])
            + bytes_field(4, canonical_block_id(v.get("block_id"))) + bytes_field(5, timestamp(*ts), always=True)
            + bytes_field(6, chain_id.encode()))
    return uvarint(len(body)) + body


def canonical_proposal(chain_id, p, ts=None):
    ts = ts or p["timestamp"]
    body = (varint_field(1, PROPOSAL) + sfixed64_field(2, p["height"]) + sfixed64_field(3, p["round"])
            + varint_field(4, p["pol_round"]) + bytes_field(5, canonical_block_id(p.get("block_id")))
            + bytes_field(6, timestamp(*ts), always=True) + bytes_field(7, chain_id.encode()))
    return uvarint(len(body)) + body


def canonical_vote_extension(chain_id, v):
    body = (bytes_field(1, v.get("extension", b"")) + sfixed64_field(2, v["height"]) + sfixed64_field(3, v["round"])
            + bytes_field(4, chain_id.encode()))
    return uvarint(len(body)) + body


def verify(pubkey, message, signature):
    """Raise unless `signature` is the consensus key's over `message`
    (Ed25519, or secp256k1 over SHA-256 with a low s)."""
    kind, raw = pubkey
    if kind == "ed25519":
        ed25519.Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)
        return
    assert len(signature) == 64, len(signature)
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    assert s <= SECP256K1_N // 2, "high s: CometBFT refuses it"
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw)
    key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))


# ---- the validator's socket ---------------------------------------------------


class Validator:
    """Listens like a validator's priv_validator_laddr (unix://)."""

    def __init__(self, path):
        self.path = str(path)
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(8)
        self.conn = None

    @property
    def addr(self):
        return f"unix://{self.path}"

    def accept(self, timeout=30):
        self.listener.settimeout(timeout)
        conn, _ = self.listener.accept()
        conn.settimeout(timeout)
        if self.conn:
            self.conn.close()
        self.conn = conn
        return conn

    def send_raw(self, data):
        self.conn.sendall(data)

    def request(self, body, timeout=30):
        """One frame out, one frame back: the reply's body, or None if the signer closed."""
        self.conn.settimeout(timeout)
        self.conn.sendall(uvarint(len(body)) + body)
        return self.read_frame()

    def read_frame(self):
        n = shift = 0
        while True:
            b = self.conn.recv(1)
            if not b:
                return None
            n |= (b[0] & 0x7F) << shift
            shift += 7
            if not b[0] & 0x80:
                break
        assert n <= 10 * 1024, f"a reply of {n} bytes: the validator would drop it"
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def close(self):
        if self.conn:
            self.conn.close()
        self.listener.close()


def script(chain_ids, heights=60, seed=1):
    """At least 200 requests: proposals (pol_round -1 and >= 0), prevotes and
    precommits nil and not, heights climbing to 2**40, rounds up to 1000,
    timestamps with nanoseconds, over the given chains in turn. Each request
    only moves forward, so a correct signer signs every one."""
    import random
    rng = random.Random(seed)
    out = []
    height_values = sorted({1, 2, 3, 1000, 2**31, 2**32 + 7, 2**40} | {rng.randrange(4, 2**40) for _ in range(heights - 7)})
    for i, h in enumerate(height_values):
        chain = chain_ids[i % len(chain_ids)]
        rounds = [0] if i % 5 else [0, rng.randrange(1, 1000)]
        if i == len(height_values) - 1:
            rounds = [0, 1000]
        for r in rounds:
            bid = (rng.randbytes(32), rng.randrange(1, 1 << 32), rng.randbytes(32))
            ts = (1_700_000_000 + h % 10**8, rng.randrange(0, 10**9))
            pol = -1 if r == 0 or rng.random() < 0.5 else rng.randrange(0, r)
            out.append((chain, "proposal", {"height": h, "round": r, "pol_round": pol, "block_id": bid, "timestamp": ts}))
            pv_nil = rng.random() < 0.25
            out.append((chain, "vote", {"type": PREVOTE, "height": h, "round": r, "block_id": None if pv_nil else bid,
                                        "timestamp": (ts[0] + 1, rng.randrange(0, 10**9))}))
            pc_nil = pv_nil or rng.random() < 0.2
            out.append((chain, "vote", {"type": PRECOMMIT, "height": h, "round": r, "block_id": None if pc_nil else bid,
                                        "timestamp": (ts[0] + 2, rng.randrange(0, 10**9))}))
    return out


def encode(chain, kind, msg):
    return sign_proposal_request(chain, msg) if kind == "proposal" else sign_vote_request(chain, msg)


class Recorder:
    """A relay that keeps every byte it carries, both ways: the test's
    traffic capture between two parent-side endpoints (Unix paths, or TCP
    ("host", port) pairs)."""

    def __init__(self, listen, target):
        import threading
        self.target = target
        self.captured = bytearray()
        self.lock = threading.Lock()
        if isinstance(listen, str):
            if os.path.exists(listen):
                os.unlink(listen)
            self.listener = socket.socket(socket.AF_UNIX)
        else:
            self.listener = socket.socket()
        self.listener.bind(listen)
        self.listener.listen(16)
        self.address = self.listener.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import threading
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            b = socket.socket(socket.AF_UNIX if isinstance(self.target, str) else socket.AF_INET)
            try:
                b.connect(self.target)
            except OSError:
                a.close()
                continue
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.lock:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
