//! The digests behind [`Hash`].

use nekms_protocol::Hash;

/// AWS-LC's algorithm for a [`Hash`], and a one-shot digest.
pub trait HashExt {
    fn algorithm(self) -> &'static aws_lc_rs::digest::Algorithm;
    fn digest(self, message: &[u8]) -> Vec<u8>;
}

impl HashExt for Hash {
    fn algorithm(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Hash::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha224 => &aws_lc_rs::digest::SHA224,
            Hash::Sha256 => &aws_lc_rs::digest::SHA256,
            Hash::Sha384 => &aws_lc_rs::digest::SHA384,
            Hash::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }

    fn digest(self, message: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(self.algorithm(), message).as_ref().to_vec()
    }
}
