//! The development PKI: a root and an intermediate (ECDSA P-384) standing in
//! for the AWS Nitro chain, and the signer that issues a leaf certificate for
//! each simulated attestation document.
//!
//! The shapes follow the AWS chain: CA certificates carry a critical
//! basicConstraints with cA set and a critical keyUsage with keyCertSign; the
//! leaf has basicConstraints cA=false, keyUsage digitalSignature and
//! nonRepudiation, and lasts three hours from three seconds before the
//! document's timestamp, exactly as the real NSM's leaves do.

use std::collections::BTreeMap;
use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384,
};
use time::{Duration, OffsetDateTime};
use zeroize::{Zeroize, Zeroizing};

use crate::cose::{es384_protected_header, sig_structure, CoseSign1};
use crate::document::AttestationDocument;
use crate::pcr::Pcr48;

/// What went wrong creating or using development PKI material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the private key is not an ECDSA P-384 PKCS#8 key")]
    Key,
    #[error("the certificate PEM holds no CERTIFICATE block")]
    NoCertificate,
    #[error("the system random generator failed")]
    Random,
}

/// A CA certificate and its private key, both PEM.
pub struct CaMaterial {
    pub cert_pem: String,
    /// PKCS#8 PEM; zeroized on drop, never printed.
    pub key_pem: Zeroizing<String>,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

impl CaMaterial {
    /// The certificate's DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, PkiError> {
        pem_certificate_der(&self.cert_pem)
    }

    /// The private key's PKCS#8 DER.
    pub fn key_der(&self) -> Result<Zeroizing<Vec<u8>>, PkiError> {
        let pem = x509_parser::pem::Pem::iter_from_buffer(self.key_pem.as_bytes())
            .filter_map(Result::ok)
            .find(|p| p.label == "PRIVATE KEY")
            .ok_or(PkiError::Key)?;
        Ok(Zeroizing::new(pem.contents))
    }
}

/// The DER of the first CERTIFICATE block in `pem`.
pub fn pem_certificate_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .ok_or(PkiError::NoCertificate)
}

fn name(common_name: &str, unit: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "nekms development");
    dn.push(DnType::OrganizationalUnitName, unit);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01; // positive, no leading zero
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(cn: &str, path_len: Option<u8>, now: OffsetDateTime, years: i64) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(cn, "development CA");
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(365 * years);
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn ca_material(cert: rcgen::Certificate, key: &KeyPair) -> CaMaterial {
    CaMaterial { cert_pem: cert.pem(), key_pem: Zeroizing::new(key.serialize_pem()) }
}

/// A new self-signed development root, valid for 30 years.
pub fn generate_root(now: OffsetDateTime) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let mut params = ca_params("nekms development root", None, now, 30)?;
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key)?;
    Ok(ca_material(cert, &key))
}

/// A new intermediate under `root`, valid for 10 years, allowed to sign
/// leaves only (pathLenConstraint 0).
pub fn generate_intermediate(root: &CaMaterial, now: OffsetDateTime) -> Result<CaMaterial, PkiError> {
    let issuer = load_issuer(root)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let cert = ca_params("nekms development intermediate", Some(0), now, 10)?.signed_by(&key, &issuer)?;
    Ok(ca_material(cert, &key))
}

/// A CA for one boot of a guest VM (`nekms dev vm`), issued by the root and
/// allowed to sign leaves only, valid for a day: the launcher hands it to
/// the guest's simulated NSM, as the Nitro hypervisor's chain vouches for
/// one enclave's NSM. It stands where AWS's zonal and instance CAs stand.
pub fn generate_boot_ca(root: &CaMaterial, label: &str, now: OffsetDateTime) -> Result<CaMaterial, PkiError> {
    let issuer = load_issuer(root)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let mut p = ca_params(&format!("nekms guest VM {label}"), Some(0), now, 1)?;
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(1);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(ca_material(cert, &key))
}

/// A development image-signing certificate and key (P-384, self-signed,
/// 30 years, digitalSignature only), standing in for the key that signs
/// production images (which belongs in KMS or an HSM): images it signs
/// carry its PCR8, and custody keys may trust that PCR8.
pub fn generate_image_signer(label: &str, now: OffsetDateTime) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = name(&format!("nekms development image signer {label}"), "development image signing");
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(365 * 30);
    p.serial_number = Some(random_serial()?);
    let cert = p.self_signed(&key)?;
    Ok(ca_material(cert, &key))
}

/// A new self-signed CA for the development world's TLS servers (the local
/// KMS's HTTPS endpoint), valid for 30 years. It is deliberately separate
/// from the attestation root: a TLS key can never vouch for a document.
pub fn generate_tls_ca(now: OffsetDateTime) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let mut params = ca_params("nekms development TLS CA", Some(0), now, 30)?;
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key)?;
    Ok(ca_material(cert, &key))
}

/// A TLS server certificate (P-256, 2 years) for `names` (DNS names or IP
/// addresses), issued by `ca`.
pub fn generate_tls_server(ca: &CaMaterial, names: &[&str], now: OffsetDateTime) -> Result<CaMaterial, PkiError> {
    let issuer = load_issuer(ca)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = name(names.first().copied().unwrap_or("localhost"), "development TLS server");
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(730);
    p.serial_number = Some(random_serial()?);
    p.use_authority_key_identifier_extension = true;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(ca_material(cert, &key))
}

fn load_issuer(ca: &CaMaterial) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let key = KeyPair::from_pem(&ca.key_pem).map_err(|_| PkiError::Key)?;
    if key.algorithm() != &PKCS_ECDSA_P384_SHA384 {
        return Err(PkiError::Key);
    }
    let der = ca.cert_der()?;
    Ok(Issuer::from_ca_cert_der(&der.as_slice().into(), key)?)
}

/// The fields of a document the signer does not fill in itself.
#[derive(Clone, Debug, Default)]
pub struct DocumentFields {
    pub module_id: String,
    pub pcrs: BTreeMap<u8, Pcr48>,
    pub public_key: Option<Vec<u8>>,
    pub user_data: Option<Vec<u8>>,
    pub nonce: Option<Vec<u8>>,
}

/// Signs simulated attestation documents: a per-boot leaf key, a fresh leaf
/// certificate for each document, issued by the development intermediate.
pub struct DocumentSigner {
    issuer: Issuer<'static, KeyPair>,
    cabundle: Vec<Vec<u8>>,
    leaf_key: KeyPair,
    leaf_signer: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for DocumentSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DocumentSigner").field("cabundle_len", &self.cabundle.len()).finish_non_exhaustive()
    }
}

impl DocumentSigner {
    /// A signer for the chain `root` -> `intermediate` -> (new leaf key).
    pub fn new(root_cert_pem: &str, intermediate: &CaMaterial) -> Result<DocumentSigner, PkiError> {
        let issuer = load_issuer(intermediate)?;
        let cabundle = vec![pem_certificate_der(root_cert_pem)?, intermediate.cert_der()?];
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
        let mut pkcs8 = leaf_key.serialize_der();
        let leaf_signer = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &pkcs8).map_err(|_| PkiError::Key);
        pkcs8.zeroize();
        Ok(DocumentSigner { issuer, cabundle, leaf_key, leaf_signer: leaf_signer?, rng: SystemRandom::new() })
    }

    /// Produce a tagged COSE_Sign1 document stamped with `now`.
    pub fn sign(&self, fields: DocumentFields, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        let certificate = self.leaf_certificate(&fields.module_id, now)?;
        let doc = AttestationDocument {
            module_id: fields.module_id,
            digest: "SHA384".to_owned(),
            timestamp: (now.unix_timestamp_nanos() / 1_000_000) as u64,
            pcrs: fields.pcrs,
            certificate,
            cabundle: self.cabundle.clone(),
            public_key: fields.public_key,
            user_data: fields.user_data,
            nonce: fields.nonce,
        };
        Ok(sign_payload(&self.leaf_signer, &self.rng, doc.encode())?.encode_tagged())
    }

    fn leaf_certificate(&self, module_id: &str, now: OffsetDateTime) -> Result<Vec<u8>, PkiError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = name(&format!("{module_id}.sim.nekms"), "simulated NSM");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::ContentCommitment];
        let start = now.replace_nanosecond(0).unwrap_or(now);
        p.not_before = start - Duration::seconds(3);
        p.not_after = start + Duration::hours(3);
        p.serial_number = Some(random_serial()?);
        p.use_authority_key_identifier_extension = true;
        Ok(p.signed_by(&self.leaf_key, &self.issuer)?.der().to_vec())
    }
}

/// ES384-sign `payload` into a COSE_Sign1 with the protected header `{1: -35}`.
pub fn sign_payload(key: &EcdsaKeyPair, rng: &SystemRandom, payload: Vec<u8>) -> Result<CoseSign1, PkiError> {
    let protected = es384_protected_header();
    let signature = key.sign(rng, &sig_structure(&protected, &payload)).map_err(|_| PkiError::Random)?;
    Ok(CoseSign1 { protected, payload, signature: signature.as_ref().to_vec() })
}
