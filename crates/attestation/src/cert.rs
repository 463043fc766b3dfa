//! X.509 checks for the attestation chain: ECDSA only, as every Nitro chain is.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;

use crate::error::CertError;

const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";

/// The curve of an ECDSA public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
}

/// A parsed certificate with the fields the chain checks need.
pub(crate) struct Cert<'a> {
    pub x509: X509Certificate<'a>,
    pub curve: Curve,
}

/// What `nekms attest verify` prints about each certificate.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertificateSummary {
    pub subject: String,
    pub issuer: String,
    pub not_before: String,
    pub not_after: String,
}

impl<'a> Cert<'a> {
    pub fn parse(der: &'a [u8]) -> Result<Cert<'a>, CertError> {
        let (rest, x509) = X509Certificate::from_der(der).map_err(|e| CertError::Parse(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CertError::Parse(format!("{} bytes after the certificate", rest.len())));
        }
        if x509.signature_algorithm != x509.tbs_certificate.signature {
            return Err(CertError::Parse("outer and inner signature algorithms differ".into()));
        }
        x509.extensions_map().map_err(|e| CertError::Parse(e.to_string()))?;
        for ext in x509.extensions() {
            let understood = matches!(ext.parsed_extension(), ParsedExtension::BasicConstraints(_) | ParsedExtension::KeyUsage(_));
            if ext.critical && !understood {
                return Err(CertError::UnknownCriticalExtension(ext.oid.to_id_string()));
            }
            if let ParsedExtension::ParseError { error } = ext.parsed_extension() {
                return Err(CertError::Parse(format!("extension {}: {error}", ext.oid.to_id_string())));
            }
        }
        let spki = x509.public_key();
        let alg = spki.algorithm.algorithm.to_id_string();
        if alg != EC_PUBLIC_KEY {
            return Err(CertError::UnsupportedKey(format!("algorithm {alg}")));
        }
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok()).map(|o| o.to_id_string());
        let curve = match curve.as_deref() {
            Some(P256) => Curve::P256,
            Some(P384) => Curve::P384,
            other => return Err(CertError::UnsupportedKey(format!("curve {}", other.unwrap_or("absent")))),
        };
        Ok(Cert { x509, curve })
    }

    pub fn subject(&self) -> String {
        self.x509.subject().to_string()
    }

    pub fn summary(&self) -> CertificateSummary {
        let v = self.x509.validity();
        CertificateSummary {
            subject: self.subject(),
            issuer: self.x509.issuer().to_string(),
            not_before: v.not_before.to_string(),
            not_after: v.not_after.to_string(),
        }
    }

    /// The uncompressed EC point.
    pub fn public_key_bytes(&self) -> &[u8] {
        &self.x509.public_key().subject_public_key.data
    }

    pub fn check_validity(&self, at_unix: i64, at_text: &str) -> Result<(), CertError> {
        let v = self.x509.validity();
        if at_unix < v.not_before.timestamp() {
            return Err(CertError::NotYetValid { not_before: v.not_before.to_string(), at: at_text.to_owned() });
        }
        if at_unix > v.not_after.timestamp() {
            return Err(CertError::Expired { not_after: v.not_after.to_string(), at: at_text.to_owned() });
        }
        Ok(())
    }

    /// A CA that may have `below` more CA certificates under it.
    pub fn check_ca(&self, below: u32) -> Result<(), CertError> {
        let bc = self.x509.basic_constraints().map_err(|e| CertError::Parse(e.to_string()))?;
        let Some(bc) = bc.filter(|bc| bc.value.ca) else { return Err(CertError::NotCa) };
        if let Some(allowed) = bc.value.path_len_constraint {
            if below > allowed {
                return Err(CertError::PathLength { allowed, below });
            }
        }
        let ku = self.x509.key_usage().map_err(|e| CertError::Parse(e.to_string()))?;
        match ku {
            Some(ku) if ku.value.key_cert_sign() => Ok(()),
            _ => Err(CertError::NoKeyCertSign),
        }
    }

    /// An end-entity certificate allowed to sign documents.
    pub fn check_leaf(&self) -> Result<(), CertError> {
        let bc = self.x509.basic_constraints().map_err(|e| CertError::Parse(e.to_string()))?;
        if bc.is_some_and(|bc| bc.value.ca) {
            return Err(CertError::LeafIsCa);
        }
        let ku = self.x509.key_usage().map_err(|e| CertError::Parse(e.to_string()))?;
        match ku {
            Some(ku) if ku.value.digital_signature() => Ok(()),
            _ => Err(CertError::NoDigitalSignature),
        }
    }

    /// Check that `issuer` issued and signed this certificate.
    pub fn check_issued_by(&self, issuer: &Cert<'_>) -> Result<(), CertError> {
        if self.x509.issuer().as_raw() != issuer.x509.subject().as_raw() {
            return Err(CertError::IssuerMismatch { found: self.x509.issuer().to_string(), expected: issuer.subject() });
        }
        let sig_alg = self.x509.signature_algorithm.algorithm.to_id_string();
        let alg: &'static dyn VerificationAlgorithm = match (sig_alg.as_str(), issuer.curve) {
            (ECDSA_SHA256, Curve::P256) => &signature::ECDSA_P256_SHA256_ASN1,
            (ECDSA_SHA384, Curve::P256) => &signature::ECDSA_P256_SHA384_ASN1,
            (ECDSA_SHA256, Curve::P384) => &signature::ECDSA_P384_SHA256_ASN1,
            (ECDSA_SHA384, Curve::P384) => &signature::ECDSA_P384_SHA384_ASN1,
            _ => return Err(CertError::UnsupportedSignatureAlgorithm(sig_alg)),
        };
        UnparsedPublicKey::new(alg, issuer.public_key_bytes())
            .verify(self.x509.tbs_certificate.as_ref(), &self.x509.signature_value.data)
            .map_err(|_| CertError::BadSignature)
    }
}
