//! EnvelopedData: typed parsing, the KMS form for writing, and decryption.

use std::fmt;

use aws_lc_rs::cipher::{DecryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey, OAEP_SHA256_MGF1SHA256,
};
use base64::Engine;
use zeroize::Zeroizing;

use crate::ber::{self, der, indefinite, BerError, Element};

/// Largest CiphertextForRecipient accepted (KMS plaintexts are a few KiB).
pub const MAX_CMS_SIZE: usize = 64 * 1024;

const OID_ENVELOPED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03];
const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_RSAES_OAEP: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_AES256_CBC: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const NULL: u8 = 0x05;
const CTX0_PRIMITIVE: u8 = 0x80;
const CTX0_CONSTRUCTED: u8 = 0xa0;
const CTX1_CONSTRUCTED: u8 = 0xa1;

/// What is wrong with a CMS message, or why it cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmsError {
    #[error("CMS message is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not BER: {0}")]
    Ber(#[from] BerError),
    #[error("unexpected structure at {0}")]
    Structure(&'static str),
    #[error("content type is {0}, not envelopedData")]
    NotEnvelopedData(String),
    #[error("{0} recipients; KMS sends exactly one")]
    RecipientCount(usize),
    #[error("the recipient is identified by issuer and serial number; only subjectKeyIdentifier is supported")]
    IssuerAndSerial,
    #[error("key encryption is {0}; expected rsaesOaep with SHA-256 and MGF1-SHA-256")]
    KeyEncryption(String),
    #[error("content encryption is {0}; expected aes-256-cbc")]
    ContentEncryption(String),
    #[error("IV is {0} bytes; AES-CBC needs 16")]
    IvLength(usize),
    #[error("the message is for recipient {found}, not this key ({ours})")]
    RecipientMismatch { found: String, ours: String },
    #[error("RSA-OAEP unwrapping of the content key failed (wrong key or altered message)")]
    Unwrap,
    #[error("the unwrapped content key is {0} bytes; AES-256 needs 32")]
    ContentKeyLength(usize),
    #[error("AES-256-CBC decryption failed (altered ciphertext or bad padding)")]
    Decrypt,
    #[error("the recipient public key is not an RSA SubjectPublicKeyInfo")]
    PublicKey,
    #[error("the recipient key must be RSA-2048; it is RSA-{0}")]
    KeySize(usize),
    #[error("the private key is not an RSA PKCS#8 key (PEM \"PRIVATE KEY\" or DER)")]
    PrivateKey,
    #[error("cryptographic failure")]
    Crypto,
}

/// One KeyTransRecipientInfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTransRecipient {
    pub version: u64,
    pub subject_key_identifier: Vec<u8>,
    /// Dotted OID of the key encryption algorithm.
    pub key_encryption: String,
    /// Hash and MGF1 hash of RSAES-OAEP, when its parameters are present.
    pub oaep_hash: Option<String>,
    pub oaep_mgf1_hash: Option<String>,
    pub encrypted_key: Vec<u8>,
}

/// A parsed ContentInfo/EnvelopedData.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvelopedData {
    pub version: u64,
    pub recipient: KeyTransRecipient,
    pub content_type: String,
    pub content_encryption: String,
    pub iv: Vec<u8>,
    pub encrypted_content: Vec<u8>,
    /// Whether the outer ContentInfo used an indefinite length (KMS's BER form).
    pub indefinite_lengths: bool,
}

fn oid_text(bytes: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut acc: u64 = 0;
    for (i, b) in bytes.iter().enumerate() {
        acc = (acc << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (acc / 40).min(2);
                parts.push(first);
                parts.push(acc - first * 40);
            } else {
                parts.push(acc);
            }
            acc = 0;
        } else if i == bytes.len() - 1 || acc > u64::MAX >> 8 {
            return format!("malformed OID {}", hex::encode(bytes));
        }
    }
    let name = match bytes {
        OID_ENVELOPED_DATA => " (envelopedData)",
        OID_DATA => " (data)",
        OID_RSAES_OAEP => " (rsaesOaep)",
        OID_SHA256 => " (sha256)",
        OID_AES256_CBC => " (aes-256-cbc)",
        OID_MGF1 => " (mgf1)",
        _ => "",
    };
    let dotted: Vec<String> = parts.iter().map(u64::to_string).collect();
    format!("{}{name}", dotted.join("."))
}

fn take<'e, 'a>(items: &'e [Element<'a>], i: usize, tag: u8, what: &'static str) -> Result<&'e Element<'a>, CmsError> {
    items.get(i).filter(|e| e.tag == tag).ok_or(CmsError::Structure(what))
}

fn seq<'e, 'a>(e: &'e Element<'a>, what: &'static str) -> Result<&'e [Element<'a>], CmsError> {
    e.children().ok_or(CmsError::Structure(what))
}

fn oid<'a>(e: &Element<'a>, what: &'static str) -> Result<&'a [u8], CmsError> {
    if e.tag != OID {
        return Err(CmsError::Structure(what));
    }
    e.primitive().filter(|b| !b.is_empty()).ok_or(CmsError::Structure(what))
}

fn small_int(e: &Element<'_>, what: &'static str) -> Result<u64, CmsError> {
    let b = e.primitive().filter(|b| !b.is_empty() && b.len() <= 4 && e.tag == INTEGER).ok_or(CmsError::Structure(what))?;
    if b[0] & 0x80 != 0 {
        return Err(CmsError::Structure(what));
    }
    Ok(b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64))
}

/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }` whose
/// parameters name a hash: `[n] SEQUENCE { sha256, NULL? }`.
fn hash_of(e: &Element<'_>) -> Option<String> {
    let alg = e.children()?.first()?;
    let items = alg.children()?;
    Some(oid_text(items.first().filter(|o| o.tag == OID)?.primitive()?))
}

impl EnvelopedData {
    /// Parse a BER ContentInfo holding an EnvelopedData with one
    /// KeyTransRecipientInfo.
    pub fn parse(bytes: &[u8]) -> Result<EnvelopedData, CmsError> {
        if bytes.len() > MAX_CMS_SIZE {
            return Err(CmsError::TooLarge { len: bytes.len(), max: MAX_CMS_SIZE });
        }
        let root = ber::parse(bytes)?;
        if root.tag != SEQUENCE {
            return Err(CmsError::Structure("ContentInfo"));
        }
        let ci = seq(&root, "ContentInfo")?;
        let ct = oid(take(ci, 0, OID, "ContentInfo.contentType")?, "ContentInfo.contentType")?;
        if ct != OID_ENVELOPED_DATA {
            return Err(CmsError::NotEnvelopedData(oid_text(ct)));
        }
        let wrapper = seq(take(ci, 1, CTX0_CONSTRUCTED, "ContentInfo.content")?, "ContentInfo.content")?;
        let ed = seq(take(wrapper, 0, SEQUENCE, "EnvelopedData")?, "EnvelopedData")?;
        let version = small_int(take(ed, 0, INTEGER, "EnvelopedData.version")?, "EnvelopedData.version")?;
        if ed.get(1).is_some_and(|e| e.tag == CTX0_CONSTRUCTED) {
            return Err(CmsError::Structure("EnvelopedData.originatorInfo (not used by KMS)"));
        }
        let recipients = seq(take(ed, 1, SET, "EnvelopedData.recipientInfos")?, "recipientInfos")?;
        if recipients.len() != 1 {
            return Err(CmsError::RecipientCount(recipients.len()));
        }
        let recipient = parse_recipient(&recipients[0])?;
        let eci = seq(take(ed, 2, SEQUENCE, "EncryptedContentInfo")?, "EncryptedContentInfo")?;
        let content_type = oid_text(oid(take(eci, 0, OID, "EncryptedContentInfo.contentType")?, "contentType")?);
        let alg = seq(take(eci, 1, SEQUENCE, "contentEncryptionAlgorithm")?, "contentEncryptionAlgorithm")?;
        let alg_oid = oid(take(alg, 0, OID, "contentEncryptionAlgorithm.algorithm")?, "algorithm")?;
        let iv = take(alg, 1, OCTET_STRING, "contentEncryptionAlgorithm IV")?.primitive().ok_or(CmsError::Structure("IV"))?.to_vec();
        let content = eci.get(2).ok_or(CmsError::Structure("encryptedContent (absent)"))?;
        if content.tag != CTX0_PRIMITIVE && content.tag != CTX0_CONSTRUCTED {
            return Err(CmsError::Structure("encryptedContent"));
        }
        let encrypted_content = content.octets().ok_or(CmsError::Structure("encryptedContent chunks"))?;
        Ok(EnvelopedData {
            version,
            recipient,
            content_type,
            content_encryption: oid_text(alg_oid),
            iv,
            encrypted_content,
            indefinite_lengths: root.indefinite,
        })
    }
}

fn parse_recipient(e: &Element<'_>) -> Result<KeyTransRecipient, CmsError> {
    if e.tag != SEQUENCE {
        return Err(CmsError::Structure("KeyTransRecipientInfo (only key transport is supported)"));
    }
    let ktri = seq(e, "KeyTransRecipientInfo")?;
    let version = small_int(take(ktri, 0, INTEGER, "KeyTransRecipientInfo.version")?, "version")?;
    let rid = ktri.get(1).ok_or(CmsError::Structure("KeyTransRecipientInfo.rid"))?;
    let subject_key_identifier = match rid.tag {
        CTX0_PRIMITIVE => rid.primitive().ok_or(CmsError::Structure("rid"))?.to_vec(),
        SEQUENCE => return Err(CmsError::IssuerAndSerial),
        _ => return Err(CmsError::Structure("KeyTransRecipientInfo.rid")),
    };
    let alg = seq(take(ktri, 2, SEQUENCE, "keyEncryptionAlgorithm")?, "keyEncryptionAlgorithm")?;
    let key_encryption = oid_text(oid(take(alg, 0, OID, "keyEncryptionAlgorithm.algorithm")?, "algorithm")?);
    let (mut oaep_hash, mut oaep_mgf1_hash) = (None, None);
    if let Some(params) = alg.get(1).and_then(Element::children) {
        for p in params {
            match p.tag {
                CTX0_CONSTRUCTED => oaep_hash = hash_of(p),
                CTX1_CONSTRUCTED => {
                    // [1] SEQUENCE { mgf1, SEQUENCE { hash, NULL? } }
                    let mgf = p.children().and_then(|c| c.first()).and_then(Element::children);
                    oaep_mgf1_hash = mgf.and_then(|m| m.get(1)).and_then(|h| h.children()?.first()?.primitive()).map(oid_text);
                }
                _ => {}
            }
        }
    }
    let encrypted_key = take(ktri, 3, OCTET_STRING, "encryptedKey")?.octets().ok_or(CmsError::Structure("encryptedKey"))?;
    Ok(KeyTransRecipient { version, subject_key_identifier, key_encryption, oaep_hash, oaep_mgf1_hash, encrypted_key })
}

/// The subjectKeyIdentifier KMS-style messages carry: SHA-256 of the
/// recipient's SubjectPublicKeyInfo DER.
pub fn subject_key_identifier(spki_der: &[u8]) -> [u8; 32] {
    digest(&SHA256, spki_der).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

fn sha256_alg() -> Vec<u8> {
    der(SEQUENCE, &[der(OID, OID_SHA256), der(NULL, &[])].concat())
}

fn recipient_public_key(spki_der: &[u8]) -> Result<PublicEncryptingKey, CmsError> {
    let public = PublicEncryptingKey::from_der(spki_der).map_err(|_| CmsError::PublicKey)?;
    if public.key_size_bits() != 2048 {
        return Err(CmsError::KeySize(public.key_size_bits()));
    }
    Ok(public)
}

/// Check that `spki_der` is an RSA-2048 public key, as KMS requires of a
/// Recipient's key, before doing any work for it.
pub fn check_recipient_key(spki_der: &[u8]) -> Result<(), CmsError> {
    recipient_public_key(spki_der).map(|_| ())
}

/// Encrypt `plaintext` for the RSA-2048 key in `recipient_spki_der`, in
/// exactly the form AWS KMS uses for `CiphertextForRecipient`.
pub fn seal_for_recipient(plaintext: &[u8], recipient_spki_der: &[u8]) -> Result<Vec<u8>, CmsError> {
    let public = recipient_public_key(recipient_spki_der)?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| CmsError::PublicKey)?;
    let rng = SystemRandom::new();
    let mut cek = Zeroizing::new([0u8; 32]);
    rng.fill(&mut cek[..]).map_err(|_| CmsError::Crypto)?;
    let mut wrapped = vec![0u8; oaep.ciphertext_size()];
    let wrapped_len = oaep.encrypt(&OAEP_SHA256_MGF1SHA256, &cek[..], &mut wrapped, None).map_err(|_| CmsError::Crypto)?.len();
    wrapped.truncate(wrapped_len);

    let key = UnboundCipherKey::new(&AES_256, &cek[..]).map_err(|_| CmsError::Crypto)?;
    let mut content = plaintext.to_vec();
    let ctx = PaddedBlockEncryptingKey::cbc_pkcs7(key).and_then(|k| k.encrypt(&mut content)).map_err(|_| CmsError::Crypto)?;
    let iv: &[u8] = (&ctx).try_into().map_err(|_| CmsError::Crypto)?;

    let oaep_params = der(
        SEQUENCE,
        &[der(CTX0_CONSTRUCTED, &sha256_alg()), der(CTX1_CONSTRUCTED, &der(SEQUENCE, &[der(OID, OID_MGF1), sha256_alg()].concat()))]
            .concat(),
    );
    let ktri = der(
        SEQUENCE,
        &[
            der(INTEGER, &[2]),
            der(CTX0_PRIMITIVE, &subject_key_identifier(recipient_spki_der)),
            der(SEQUENCE, &[der(OID, OID_RSAES_OAEP), oaep_params].concat()),
            der(OCTET_STRING, &wrapped),
        ]
        .concat(),
    );
    let chunks: Vec<Vec<u8>> = content.chunks(1024).map(|c| der(OCTET_STRING, c)).collect();
    let chunk_refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
    let eci = indefinite(
        SEQUENCE,
        &[
            &der(OID, OID_DATA),
            &der(SEQUENCE, &[der(OID, OID_AES256_CBC), der(OCTET_STRING, iv)].concat()),
            &indefinite(CTX0_CONSTRUCTED, &chunk_refs),
        ],
    );
    let enveloped = indefinite(SEQUENCE, &[&der(INTEGER, &[2]), &der(SET, &ktri), &eci]);
    Ok(indefinite(SEQUENCE, &[&der(OID, OID_ENVELOPED_DATA), &indefinite(CTX0_CONSTRUCTED, &[&enveloped])]))
}

/// An RSA-2048 recipient key: made in enclave memory, or loaded for debugging.
pub struct RecipientKey {
    private: OaepPrivateDecryptingKey,
    public_der: Vec<u8>,
}

impl fmt::Debug for RecipientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecipientKey(ski={})", hex::encode(subject_key_identifier(&self.public_der)))
    }
}

impl RecipientKey {
    /// A fresh RSA-2048 key.
    pub fn generate() -> Result<RecipientKey, CmsError> {
        Self::from_private(PrivateDecryptingKey::generate(KeySize::Rsa2048).map_err(|_| CmsError::Crypto)?)
    }

    /// From PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<RecipientKey, CmsError> {
        Self::from_private(PrivateDecryptingKey::from_pkcs8(der).map_err(|_| CmsError::PrivateKey)?)
    }

    /// From PEM ("PRIVATE KEY", PKCS#8) or raw PKCS#8 DER.
    pub fn from_pem_or_der(bytes: &[u8]) -> Result<RecipientKey, CmsError> {
        let text = std::str::from_utf8(bytes).ok();
        match text.and_then(|t| t.find("-----BEGIN PRIVATE KEY-----").map(|i| &t[i..])) {
            Some(pem) => {
                let body: String = pem.lines().skip(1).take_while(|l| !l.starts_with("-----END")).collect::<Vec<_>>().concat();
                let der = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(body.trim()).map_err(|_| CmsError::PrivateKey)?);
                Self::from_pkcs8_der(&der)
            }
            None if text.is_some_and(|t| t.contains("-----BEGIN")) => Err(CmsError::PrivateKey),
            None => Self::from_pkcs8_der(bytes),
        }
    }

    fn from_private(key: PrivateDecryptingKey) -> Result<RecipientKey, CmsError> {
        let public_der = key.public_key().as_der().map_err(|_| CmsError::Crypto)?.as_ref().to_vec();
        let private = OaepPrivateDecryptingKey::new(key).map_err(|_| CmsError::PrivateKey)?;
        Ok(RecipientKey { private, public_der })
    }

    /// The SubjectPublicKeyInfo DER that goes in an attestation document's `public_key`.
    pub fn public_key_der(&self) -> Result<Vec<u8>, CmsError> {
        Ok(self.public_der.clone())
    }

    /// Decrypt a CiphertextForRecipient addressed to this key.
    pub fn open(&self, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, CmsError> {
        let env = EnvelopedData::parse(bytes)?;
        let r = &env.recipient;
        let sha256 = oid_text(OID_SHA256);
        if r.key_encryption != oid_text(OID_RSAES_OAEP)
            || r.oaep_hash.as_deref() != Some(&sha256)
            || r.oaep_mgf1_hash.as_deref() != Some(&sha256)
        {
            return Err(CmsError::KeyEncryption(format!(
                "{} (hash {}, mgf1 {})",
                r.key_encryption,
                r.oaep_hash.as_deref().unwrap_or("SHA-1 default"),
                r.oaep_mgf1_hash.as_deref().unwrap_or("SHA-1 default")
            )));
        }
        if env.content_encryption != oid_text(OID_AES256_CBC) {
            return Err(CmsError::ContentEncryption(env.content_encryption));
        }
        let iv: [u8; 16] = env.iv.as_slice().try_into().map_err(|_| CmsError::IvLength(env.iv.len()))?;
        // Producers derive the subjectKeyIdentifier differently (nekms: SHA-256
        // of the SPKI; OpenSSL: SHA-1 of the key), so the key itself decides;
        // the identifier only explains a failure.
        let mut cek = Zeroizing::new(vec![0u8; self.private.min_output_size()]);
        let n = match self.private.decrypt(&OAEP_SHA256_MGF1SHA256, &r.encrypted_key, &mut cek, None) {
            Ok(k) => k.len(),
            Err(_) => {
                let ours = subject_key_identifier(&self.public_der);
                if r.subject_key_identifier != ours {
                    return Err(CmsError::RecipientMismatch { found: hex::encode(&r.subject_key_identifier), ours: hex::encode(ours) });
                }
                return Err(CmsError::Unwrap);
            }
        };
        if n != 32 {
            return Err(CmsError::ContentKeyLength(n));
        }
        let key = UnboundCipherKey::new(&AES_256, &cek[..32]).map_err(|_| CmsError::Crypto)?;
        let mut buf = Zeroizing::new(env.encrypted_content);
        let len = PaddedBlockDecryptingKey::cbc_pkcs7(key)
            .map_err(|_| CmsError::Crypto)?
            .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(&iv)))
            .map_err(|_| CmsError::Decrypt)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}
