//! Signing mechanisms: which a key takes, and how each becomes the
//! enclave's scheme and payload.

use cryptoki_sys::*;
use nekms_protocol::digest_info::parse_digest_info;
use nekms_protocol::{Hash, KeySpec, Payload, Scheme};

use crate::hash::digest;

/// The mechanisms this module offers, with their CK_MECHANISM_INFO. Those
/// the enclave performs (signing, decryption, key-pair generation) carry
/// CKF_HW: the enclave is the device; verification and digests run here.
const SV: CK_FLAGS = CKF_HW | CKF_SIGN | CKF_VERIFY;
const EC: CK_FLAGS = SV | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

pub const MECHANISMS: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)] = &[
    (CKM_RSA_PKCS, 2048, 4096, SV | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_RSA_PKCS_OAEP, 2048, 4096, CKF_HW | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_RSA_X_509, 2048, 4096, SV | CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_SHA1_RSA_PKCS, 2048, 4096, SV),
    (CKM_SHA224_RSA_PKCS, 2048, 4096, SV),
    (CKM_SHA256_RSA_PKCS, 2048, 4096, SV),
    (CKM_SHA384_RSA_PKCS, 2048, 4096, SV),
    (CKM_SHA512_RSA_PKCS, 2048, 4096, SV),
    (CKM_RSA_PKCS_PSS, 2048, 4096, SV),
    (CKM_SHA1_RSA_PKCS_PSS, 2048, 4096, SV),
    (CKM_SHA224_RSA_PKCS_PSS, 2048, 4096, SV),
    (CKM_SHA256_RSA_PKCS_PSS, 2048, 4096, SV),
    (CKM_SHA384_RSA_PKCS_PSS, 2048, 4096, SV),
    (CKM_SHA512_RSA_PKCS_PSS, 2048, 4096, SV),
    (CKM_ECDSA, 256, 384, EC),
    (CKM_ECDSA_SHA1, 256, 384, EC),
    (CKM_ECDSA_SHA224, 256, 384, EC),
    (CKM_ECDSA_SHA256, 256, 384, EC),
    (CKM_ECDSA_SHA384, 256, 384, EC),
    (CKM_ECDSA_SHA512, 256, 384, EC),
    (CKM_EDDSA, 255, 255, SV),
    (CKM_RSA_PKCS_KEY_PAIR_GEN, 2048, 4096, CKF_HW | CKF_GENERATE_KEY_PAIR),
    (CKM_EC_KEY_PAIR_GEN, 256, 384, CKF_HW | CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS),
    (CKM_SHA_1, 0, 0, CKF_DIGEST),
    (CKM_SHA224, 0, 0, CKF_DIGEST),
    (CKM_SHA256, 0, 0, CKF_DIGEST),
    (CKM_SHA384, 0, 0, CKF_DIGEST),
    (CKM_SHA512, 0, 0, CKF_DIGEST),
];

/// A digest mechanism's hash.
pub fn digest_algorithm(m: CK_MECHANISM_TYPE) -> Option<Hash> {
    Some(match m {
        CKM_SHA_1 => Hash::Sha1,
        CKM_SHA224 => Hash::Sha224,
        CKM_SHA256 => Hash::Sha256,
        CKM_SHA384 => Hash::Sha384,
        CKM_SHA512 => Hash::Sha512,
        _ => return None,
    })
}

/// A signing operation's mechanism, read and checked at SignInit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mech {
    /// Raw ECDSA over a hash the caller computed.
    Ecdsa,
    EcdsaWith(Hash),
    /// PKCS#1 v1.5 over bytes the caller built: a DigestInfo for any key;
    /// other bytes (up to the modulus length less 11) only for keys
    /// provisioned to decrypt, since signing freely chosen bytes is a
    /// decryption by another name (two such signatures combine into a raw
    /// private operation).
    RsaPkcs,
    RsaPkcsWith(Hash),
    /// PSS over a hash the caller computed (the hash named by the parameters).
    RsaPss(Pss),
    RsaPssWith(Pss),
    /// The raw private operation: only for keys provisioned to decrypt,
    /// since it is a decryption.
    RsaX509,
    EdDsa,
}

/// PSS parameters: the message hash, MGF1's hash, the salt length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pss {
    pub hash: Hash,
    pub mgf: Hash,
    pub salt: u16,
}

impl Pss {
    /// TLS's parameters (MGF1 over the message hash, a salt as long as the
    /// hash) take AWS-LC's usual path; others are spelled out.
    fn scheme(self) -> Scheme {
        if self.mgf == self.hash && usize::from(self.salt) == self.hash.output_len() {
            Scheme::RsaPss(self.hash)
        } else {
            Scheme::RsaPssParams(self.hash, self.mgf, self.salt)
        }
    }
}

/// An RSA key's modulus length in bytes (k).
pub fn modulus_len(spec: KeySpec) -> usize {
    spec.rsa_bits().unwrap_or(0) / 8
}

fn hash_of(m: CK_MECHANISM_TYPE) -> Option<Hash> {
    match m {
        CKM_SHA_1 => Some(Hash::Sha1),
        CKM_SHA224 => Some(Hash::Sha224),
        CKM_SHA256 => Some(Hash::Sha256),
        CKM_SHA384 => Some(Hash::Sha384),
        CKM_SHA512 => Some(Hash::Sha512),
        _ => None,
    }
}

fn mgf_hash(mgf: CK_RSA_PKCS_MGF_TYPE) -> Option<Hash> {
    match mgf {
        CKG_MGF1_SHA1 => Some(Hash::Sha1),
        CKG_MGF1_SHA224 => Some(Hash::Sha224),
        CKG_MGF1_SHA256 => Some(Hash::Sha256),
        CKG_MGF1_SHA384 => Some(Hash::Sha384),
        CKG_MGF1_SHA512 => Some(Hash::Sha512),
        _ => None,
    }
}

fn is_rsa(spec: KeySpec) -> bool {
    matches!(spec, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
}

/// The mechanism for a key, from its type and parameters (`params`: the
/// PSS parameters, when given). Errors are CK_RVs.
pub fn mechanism(
    spec: KeySpec,
    mechanism: CK_MECHANISM_TYPE,
    params: Option<&CK_RSA_PKCS_PSS_PARAMS>,
    param_len: usize,
) -> Result<Mech, CK_RV> {
    let ec = matches!(spec, KeySpec::P256 | KeySpec::P384 | KeySpec::Secp256k1);
    let pss = |fixed: Option<Hash>| -> Result<Pss, CK_RV> {
        let p = params.filter(|_| param_len == std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>()).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
        let hash = hash_of(p.hashAlg).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
        let mgf = mgf_hash(p.mgf).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
        // The encoded message holds the hash, the salt and two more bytes
        // (RFC 8017, 9.1.1; every key here is a whole number of bytes).
        if fixed.is_some_and(|f| f != hash) || (p.sLen as usize).saturating_add(hash.output_len() + 2) > modulus_len(spec) {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        Ok(Pss { hash, mgf, salt: p.sLen as u16 })
    };
    let m = match mechanism {
        CKM_ECDSA if ec => Mech::Ecdsa,
        CKM_ECDSA_SHA1 if ec => Mech::EcdsaWith(Hash::Sha1),
        CKM_ECDSA_SHA224 if ec => Mech::EcdsaWith(Hash::Sha224),
        CKM_ECDSA_SHA256 if ec => Mech::EcdsaWith(Hash::Sha256),
        CKM_ECDSA_SHA384 if ec => Mech::EcdsaWith(Hash::Sha384),
        CKM_ECDSA_SHA512 if ec => Mech::EcdsaWith(Hash::Sha512),
        CKM_EDDSA if spec == KeySpec::Ed25519 => {
            // CK_EDDSA_PARAMS may ask for Ed25519ph or a context: not offered.
            if param_len != 0 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            Mech::EdDsa
        }
        CKM_RSA_PKCS if is_rsa(spec) => Mech::RsaPkcs,
        CKM_RSA_X_509 if is_rsa(spec) => Mech::RsaX509,
        CKM_SHA1_RSA_PKCS if is_rsa(spec) => Mech::RsaPkcsWith(Hash::Sha1),
        CKM_SHA224_RSA_PKCS if is_rsa(spec) => Mech::RsaPkcsWith(Hash::Sha224),
        CKM_SHA256_RSA_PKCS if is_rsa(spec) => Mech::RsaPkcsWith(Hash::Sha256),
        CKM_SHA384_RSA_PKCS if is_rsa(spec) => Mech::RsaPkcsWith(Hash::Sha384),
        CKM_SHA512_RSA_PKCS if is_rsa(spec) => Mech::RsaPkcsWith(Hash::Sha512),
        CKM_RSA_PKCS_PSS if is_rsa(spec) => Mech::RsaPss(pss(None)?),
        CKM_SHA1_RSA_PKCS_PSS if is_rsa(spec) => Mech::RsaPssWith(pss(Some(Hash::Sha1))?),
        CKM_SHA224_RSA_PKCS_PSS if is_rsa(spec) => Mech::RsaPssWith(pss(Some(Hash::Sha224))?),
        CKM_SHA256_RSA_PKCS_PSS if is_rsa(spec) => Mech::RsaPssWith(pss(Some(Hash::Sha256))?),
        CKM_SHA384_RSA_PKCS_PSS if is_rsa(spec) => Mech::RsaPssWith(pss(Some(Hash::Sha384))?),
        CKM_SHA512_RSA_PKCS_PSS if is_rsa(spec) => Mech::RsaPssWith(pss(Some(Hash::Sha512))?),
        m if MECHANISMS.iter().any(|x| x.0 == m && x.3 & CKF_SIGN != 0) => return Err(CKR_KEY_TYPE_INCONSISTENT),
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    Ok(m)
}

impl Mech {
    /// Whether C_SignUpdate may feed it (the mechanisms that hash).
    pub fn multi_part(self) -> bool {
        matches!(self, Mech::EcdsaWith(_) | Mech::RsaPkcsWith(_) | Mech::RsaPssWith(_))
    }
}

/// ECDSA's input as the enclave takes it: a digest as long as the curve's
/// hash. A longer hash keeps its leftmost bytes and a shorter one is padded
/// on the left with zeros, which is what ECDSA does with it for these
/// curves (their orders are a whole number of bytes).
fn ecdsa_digest(spec: KeySpec, hash: &[u8]) -> Vec<u8> {
    let n = if spec == KeySpec::P384 { 48 } else { 32 };
    if hash.len() >= n {
        hash[..n].to_vec()
    } else {
        let mut out = vec![0u8; n - hash.len()];
        out.extend_from_slice(hash);
        out
    }
}

/// The hash a multi-part mechanism feeds C_SignUpdate/C_VerifyUpdate into.
pub fn running_hash(mech: Mech) -> Option<Hash> {
    match mech {
        Mech::EcdsaWith(h) | Mech::RsaPkcsWith(h) => Some(h),
        Mech::RsaPssWith(p) => Some(p.hash),
        _ => None,
    }
}

/// The scheme and payload for a hashing mechanism whose message was hashed
/// part by part into `digest`.
pub fn to_scheme_hashed(spec: KeySpec, mech: Mech, digest: &[u8]) -> Result<(Scheme, Payload), CK_RV> {
    Ok(match mech {
        Mech::EcdsaWith(_) => (Scheme::EcdsaRaw, Payload::Digest(ecdsa_digest(spec, digest))),
        Mech::RsaPkcsWith(h) => (Scheme::RsaPkcs1(h), Payload::Digest(digest.to_vec())),
        Mech::RsaPssWith(p) => (p.scheme(), Payload::Digest(digest.to_vec())),
        _ => return Err(CKR_FUNCTION_NOT_SUPPORTED),
    })
}

/// The scheme and payload the enclave signs for `data`.
pub fn to_scheme(spec: KeySpec, mech: Mech, data: &[u8]) -> Result<(Scheme, Payload), CK_RV> {
    Ok(match mech {
        Mech::Ecdsa => {
            if data.is_empty() || data.len() > 64 {
                return Err(CKR_DATA_LEN_RANGE);
            }
            (Scheme::EcdsaRaw, Payload::Digest(ecdsa_digest(spec, data)))
        }
        Mech::EcdsaWith(h) => (Scheme::EcdsaRaw, Payload::Digest(ecdsa_digest(spec, &digest(h, data)))),
        Mech::EdDsa => (Scheme::Ed25519, Payload::Message(data.to_vec())),
        Mech::RsaPkcs => match parse_digest_info(data) {
            Some((h, digest)) => (Scheme::RsaPkcs1(h), Payload::Digest(digest.to_vec())),
            None => return Err(CKR_DATA_INVALID),
        },
        Mech::RsaPkcsWith(h) => (Scheme::RsaPkcs1(h), Payload::Digest(digest(h, data))),
        Mech::RsaPss(p) => {
            if data.len() != p.hash.output_len() {
                return Err(CKR_DATA_LEN_RANGE);
            }
            (p.scheme(), Payload::Digest(data.to_vec()))
        }
        Mech::RsaPssWith(p) => (p.scheme(), Payload::Digest(digest(p.hash, data))),
        Mech::RsaX509 => return Err(CKR_FUNCTION_NOT_SUPPORTED),
    })
}

/// The block a raw RSA mechanism needs the raw private operation on, if
/// it needs one: CKM_RSA_X_509's input, or CKM_RSA_PKCS's when it is not a
/// DigestInfo (padded here with PKCS#1 v1.5 type 1). The enclave performs
/// it only for keys provisioned to decrypt.
pub fn raw_block(spec: KeySpec, mech: Mech, data: &[u8]) -> Result<Option<Vec<u8>>, CK_RV> {
    match mech {
        Mech::RsaX509 => x509_block(spec, data).map(Some),
        Mech::RsaPkcs if parse_digest_info(data).is_none() => {
            let k = modulus_len(spec);
            if data.is_empty() || data.len() + 11 > k {
                return Err(CKR_DATA_LEN_RANGE);
            }
            // 00 01 FF..FF 00 T (RFC 8017, 9.2, steps 4-5).
            let mut block = vec![0u8, 1];
            block.resize(k - data.len() - 1, 0xff);
            block.push(0);
            block.extend_from_slice(data);
            Ok(Some(block))
        }
        _ => Ok(None),
    }
}

/// CKM_RSA_X_509's input as the raw operation takes it: up to k bytes,
/// padded on the left with zeros to k (PKCS#11 2.40, 2.1.10).
pub fn x509_block(spec: KeySpec, data: &[u8]) -> Result<Vec<u8>, CK_RV> {
    let k = modulus_len(spec);
    if data.is_empty() || data.len() > k {
        return Err(CKR_DATA_LEN_RANGE);
    }
    let mut block = vec![0u8; k - data.len()];
    block.extend_from_slice(data);
    Ok(block)
}

/// A sign or verify `CK_MECHANISM` as the ABI layer read it.
#[derive(Clone, Copy, Debug)]
pub struct SigningMechanism {
    pub mechanism: CK_MECHANISM_TYPE,
    /// The parameters, when `pParameter` is not NULL and `ulParameterLen`
    /// is the size of CK_RSA_PKCS_PSS_PARAMS.
    pub pss: Option<CK_RSA_PKCS_PSS_PARAMS>,
    /// `ulParameterLen`, or 0 when `pParameter` is NULL.
    pub param_len: usize,
}

impl SigningMechanism {
    /// The mechanism for a key of this type, with its PSS parameters if any.
    pub fn for_key(&self, spec: KeySpec) -> Result<Mech, CK_RV> {
        mechanism(spec, self.mechanism, self.pss.as_ref(), self.param_len)
    }
}

/// Longest OAEP label (CKZ_DATA_SPECIFIED source data) taken.
pub const MAX_OAEP_LABEL: usize = 4096;

/// An encrypt or decrypt `CK_MECHANISM` as the ABI layer read it.
#[derive(Clone, Copy, Debug)]
pub struct CipherMechanism<'a> {
    pub mechanism: CK_MECHANISM_TYPE,
    /// `ulParameterLen` as the caller gave it, whatever `pParameter` is.
    pub param_len: CK_ULONG,
    /// The parameters, for CKM_RSA_PKCS_OAEP when `pParameter` is not NULL
    /// and `ulParameterLen` is the size of CK_RSA_PKCS_OAEP_PARAMS.
    pub oaep: Option<OaepParams<'a>>,
}

/// CK_RSA_PKCS_OAEP_PARAMS as the ABI layer read it.
#[derive(Clone, Copy, Debug)]
pub struct OaepParams<'a> {
    pub hash_alg: CK_MECHANISM_TYPE,
    pub mgf: CK_RSA_PKCS_MGF_TYPE,
    pub source: CK_RSA_PKCS_OAEP_SOURCE_TYPE,
    /// `ulSourceDataLen`.
    pub source_len: CK_ULONG,
    /// `pSourceData`'s `source_len` bytes; `None` when it is NULL or
    /// longer than [`MAX_OAEP_LABEL`] (then it is not read).
    pub source_data: Option<&'a [u8]>,
}

/// A decryption mechanism: CKM_RSA_PKCS, or CKM_RSA_PKCS_OAEP with
/// CK_RSA_PKCS_OAEP_PARAMS (SHA-1/256/384/512, MGF1 over the same hash, an
/// optional label as CKZ_DATA_SPECIFIED source data).
pub fn decryption(m: &CipherMechanism<'_>) -> Result<(nekms_protocol::RsaPadding, Option<Vec<u8>>), CK_RV> {
    use nekms_protocol::{OaepHash, RsaPadding};
    match m.mechanism {
        CKM_RSA_PKCS if m.param_len == 0 => Ok((RsaPadding::Pkcs1, None)),
        CKM_RSA_X_509 if m.param_len == 0 => Ok((RsaPadding::Raw, None)),
        CKM_RSA_PKCS_OAEP => {
            let p = m.oaep.as_ref().ok_or(CKR_MECHANISM_PARAM_INVALID)?;
            let (hash, mgf) = match p.hash_alg {
                CKM_SHA_1 => (OaepHash::Sha1, CKG_MGF1_SHA1),
                CKM_SHA256 => (OaepHash::Sha256, CKG_MGF1_SHA256),
                CKM_SHA384 => (OaepHash::Sha384, CKG_MGF1_SHA384),
                CKM_SHA512 => (OaepHash::Sha512, CKG_MGF1_SHA512),
                _ => return Err(CKR_MECHANISM_PARAM_INVALID),
            };
            if p.mgf != mgf {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            let label = match (p.source, p.source_len, p.source_data) {
                (_, 0, _) => None,
                (CKZ_DATA_SPECIFIED, _, Some(data)) => Some(data.to_vec()),
                _ => return Err(CKR_MECHANISM_PARAM_INVALID),
            };
            Ok((RsaPadding::Oaep(hash), label))
        }
        CKM_RSA_PKCS | CKM_RSA_X_509 => Err(CKR_MECHANISM_PARAM_INVALID),
        m if MECHANISMS.iter().any(|x| x.0 == m) => Err(CKR_KEY_FUNCTION_NOT_PERMITTED),
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_fit_their_keys() {
        assert_eq!(mechanism(KeySpec::P256, CKM_ECDSA, None, 0), Ok(Mech::Ecdsa));
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_ECDSA, None, 0), Err(CKR_KEY_TYPE_INCONSISTENT));
        assert_eq!(mechanism(KeySpec::P256, 0x9999, None, 0), Err(CKR_MECHANISM_INVALID));
        let good = CK_RSA_PKCS_PSS_PARAMS { hashAlg: CKM_SHA256, mgf: CKG_MGF1_SHA256, sLen: 32 };
        let n = std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>();
        let tls = Pss { hash: Hash::Sha256, mgf: Hash::Sha256, salt: 32 };
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_RSA_PKCS_PSS, Some(&good), n), Ok(Mech::RsaPss(tls)));
        assert_eq!(tls.scheme(), Scheme::RsaPss(Hash::Sha256));
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_RSA_PKCS_PSS, None, 0), Err(CKR_MECHANISM_PARAM_INVALID));
        let salt = CK_RSA_PKCS_PSS_PARAMS { sLen: 20, mgf: CKG_MGF1_SHA1, ..good };
        let other = Pss { hash: Hash::Sha256, mgf: Hash::Sha1, salt: 20 };
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_RSA_PKCS_PSS, Some(&salt), n), Ok(Mech::RsaPss(other)));
        assert_eq!(other.scheme(), Scheme::RsaPssParams(Hash::Sha256, Hash::Sha1, 20));
        // The largest salt that fits a 2048-bit key, and one byte more.
        let max = CK_RSA_PKCS_PSS_PARAMS { sLen: 256 - 32 - 2, ..good };
        assert!(mechanism(KeySpec::Rsa2048, CKM_RSA_PKCS_PSS, Some(&max), n).is_ok());
        for sLen in [256 - 32 - 1, CK_ULONG::MAX] {
            let over = CK_RSA_PKCS_PSS_PARAMS { sLen, ..good };
            assert_eq!(mechanism(KeySpec::Rsa2048, CKM_RSA_PKCS_PSS, Some(&over), n), Err(CKR_MECHANISM_PARAM_INVALID));
        }
        let bad_mgf = CK_RSA_PKCS_PSS_PARAMS { mgf: 0x77, ..good };
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_RSA_PKCS_PSS, Some(&bad_mgf), n), Err(CKR_MECHANISM_PARAM_INVALID));
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_SHA384_RSA_PKCS_PSS, Some(&good), n), Err(CKR_MECHANISM_PARAM_INVALID));
        assert_eq!(mechanism(KeySpec::Rsa2048, CKM_RSA_X_509, None, 0), Ok(Mech::RsaX509));
        assert_eq!(mechanism(KeySpec::P256, CKM_ECDSA_SHA1, None, 0), Ok(Mech::EcdsaWith(Hash::Sha1)));
    }

    #[test]
    fn a_digest_info_names_its_hash() {
        let di = nekms_protocol::digest_info::digest_info(Hash::Sha256, &[7u8; 32]);
        assert!(
            matches!(to_scheme(KeySpec::Rsa2048, Mech::RsaPkcs, &di), Ok((Scheme::RsaPkcs1(Hash::Sha256), Payload::Digest(d))) if d == [7u8; 32])
        );
        let sha1 = nekms_protocol::digest_info::digest_info(Hash::Sha1, &[7u8; 20]);
        assert!(matches!(to_scheme(KeySpec::Rsa2048, Mech::RsaPkcs, &sha1), Ok((Scheme::RsaPkcs1(Hash::Sha1), _))));
        assert_eq!(raw_block(KeySpec::Rsa2048, Mech::RsaPkcs, &sha1), Ok(None));
        // Other bytes need the raw operation, on a type-1 block, up to k-11.
        assert_eq!(to_scheme(KeySpec::Rsa2048, Mech::RsaPkcs, &[1, 2, 3]).unwrap_err(), CKR_DATA_INVALID);
        let block = raw_block(KeySpec::Rsa2048, Mech::RsaPkcs, &[1, 2, 3]).unwrap().unwrap();
        assert_eq!((block.len(), &block[..3], &block[250..]), (256, &[0, 1, 0xff][..], &[0xff, 0xff, 0, 1, 2, 3][..]));
        assert_eq!(raw_block(KeySpec::Rsa2048, Mech::RsaPkcs, &[1; 246]).unwrap_err(), CKR_DATA_LEN_RANGE);
        assert_eq!(raw_block(KeySpec::Rsa2048, Mech::RsaPkcs, &[]).unwrap_err(), CKR_DATA_LEN_RANGE);
        assert!(raw_block(KeySpec::Rsa2048, Mech::RsaPkcs, &[1; 245]).unwrap().is_some());
        assert_eq!(x509_block(KeySpec::Rsa2048, &[9; 3]).unwrap()[253..], [9; 3]);
        assert_eq!(x509_block(KeySpec::Rsa2048, &[9; 257]).unwrap_err(), CKR_DATA_LEN_RANGE);
        assert_eq!(ecdsa_digest(KeySpec::P256, &[1u8; 48]), vec![1u8; 32]);
        assert_eq!(ecdsa_digest(KeySpec::P384, &[1u8; 32])[..16], [0u8; 16]);
    }
}
