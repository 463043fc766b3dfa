//! The digests the module computes itself (C_Digest*, and the hash of a
//! hash-and-sign mechanism fed part by part): SHA-1 and SHA-2, through the
//! RustCrypto `sha1`/`sha2` crates, so the module links no AWS-LC. Every
//! signature, verification and encryption happens in the enclave.

use nekms_protocol::Hash;
use sha2::Digest as _;

/// A running digest.
#[derive(Clone)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(hash: Hash) -> Hasher {
        match hash {
            Hash::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Hash::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Hash::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Hash::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Hash::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn output_len(&self) -> usize {
        match self {
            Hasher::Sha1(_) => 20,
            Hasher::Sha224(_) => 28,
            Hasher::Sha256(_) => 32,
            Hasher::Sha384(_) => 48,
            Hasher::Sha512(_) => 64,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha224(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha384(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha224(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha384(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        }
    }
}

/// The digest of `data` in one go.
pub fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
    let mut h = Hasher::new(hash);
    h.update(data);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_known_answers() {
        // FIPS 180 "abc" vectors.
        let hex = |h| hex_string(&digest(h, b"abc"));
        assert_eq!(hex(Hash::Sha1), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex(Hash::Sha256), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(hex(Hash::Sha512).starts_with("ddaf35a193617aba"));
        let mut parts = Hasher::new(Hash::Sha384);
        parts.update(b"a");
        parts.update(b"bc");
        assert_eq!(parts.finish(), digest(Hash::Sha384, b"abc"));
        for h in [Hash::Sha1, Hash::Sha224, Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            assert_eq!(Hasher::new(h).output_len(), h.output_len());
            assert_eq!(digest(h, b"").len(), h.output_len());
        }
    }

    fn hex_string(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
