//! Keys as KMS describes them: specs, usages, states, metadata.

use serde::{Deserialize, Serialize};

/// `KeySpec` values the local KMS supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySpec {
    #[serde(rename = "SYMMETRIC_DEFAULT")]
    SymmetricDefault,
    #[serde(rename = "RSA_2048")]
    Rsa2048,
    #[serde(rename = "RSA_3072")]
    Rsa3072,
    #[serde(rename = "RSA_4096")]
    Rsa4096,
    #[serde(rename = "ECC_NIST_P256")]
    EccNistP256,
    #[serde(rename = "ECC_NIST_P384")]
    EccNistP384,
    #[serde(rename = "ECC_NIST_P521")]
    EccNistP521,
    #[serde(rename = "ECC_SECG_P256K1")]
    EccSecgP256k1,
}

/// `KeyUsage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyUsage {
    EncryptDecrypt,
    SignVerify,
    KeyAgreement,
}

/// `KeyState` values this KMS uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
}

impl KeySpec {
    pub fn parse(s: &str) -> Option<KeySpec> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Rsa2048 => "RSA_2048",
            KeySpec::Rsa3072 => "RSA_3072",
            KeySpec::Rsa4096 => "RSA_4096",
            KeySpec::EccNistP256 => "ECC_NIST_P256",
            KeySpec::EccNistP384 => "ECC_NIST_P384",
            KeySpec::EccNistP521 => "ECC_NIST_P521",
            KeySpec::EccSecgP256k1 => "ECC_SECG_P256K1",
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096)
    }

    /// Whether KMS allows this spec with this usage (as this KMS implements it).
    pub fn allows(self, usage: KeyUsage) -> bool {
        match usage {
            KeyUsage::EncryptDecrypt => self == KeySpec::SymmetricDefault,
            KeyUsage::SignVerify => self != KeySpec::SymmetricDefault,
            KeyUsage::KeyAgreement => matches!(self, KeySpec::EccNistP256 | KeySpec::EccNistP384 | KeySpec::EccNistP521),
        }
    }

    /// The algorithms DescribeKey lists for this spec and usage.
    pub fn algorithms(self, usage: KeyUsage) -> Vec<&'static str> {
        match (usage, self) {
            (KeyUsage::EncryptDecrypt, _) => vec!["SYMMETRIC_DEFAULT"],
            (KeyUsage::KeyAgreement, _) => vec!["ECDH"],
            (KeyUsage::SignVerify, s) if s.is_rsa() => vec![
                "RSASSA_PSS_SHA_256",
                "RSASSA_PSS_SHA_384",
                "RSASSA_PSS_SHA_512",
                "RSASSA_PKCS1_V1_5_SHA_256",
                "RSASSA_PKCS1_V1_5_SHA_384",
                "RSASSA_PKCS1_V1_5_SHA_512",
            ],
            (KeyUsage::SignVerify, KeySpec::EccNistP384) => vec!["ECDSA_SHA_384"],
            (KeyUsage::SignVerify, KeySpec::EccNistP521) => vec!["ECDSA_SHA_512"],
            (KeyUsage::SignVerify, _) => vec!["ECDSA_SHA_256"],
        }
    }
}

/// `KeyMetadata`, with the field names KMS's JSON uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    pub account_id: String,
    #[serde(rename = "KeyId")]
    pub key_id: String,
    #[serde(rename = "Arn")]
    pub arn: String,
    /// Seconds since the epoch, as the JSON protocol sends timestamps.
    #[serde(rename = "CreationDate")]
    pub creation_date: f64,
    #[serde(rename = "Enabled")]
    pub enabled: bool,
    #[serde(rename = "Description")]
    pub description: String,
    #[serde(rename = "KeyUsage")]
    pub key_usage: KeyUsage,
    #[serde(rename = "KeyState")]
    pub key_state: KeyState,
    #[serde(rename = "DeletionDate", skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<f64>,
    #[serde(rename = "Origin")]
    pub origin: String,
    #[serde(rename = "KeyManager")]
    pub key_manager: String,
    #[serde(rename = "CustomerMasterKeySpec")]
    pub customer_master_key_spec: KeySpec,
    #[serde(rename = "KeySpec")]
    pub key_spec: KeySpec,
    #[serde(rename = "EncryptionAlgorithms", skip_serializing_if = "Option::is_none")]
    pub encryption_algorithms: Option<Vec<String>>,
    #[serde(rename = "SigningAlgorithms", skip_serializing_if = "Option::is_none")]
    pub signing_algorithms: Option<Vec<String>>,
    #[serde(rename = "KeyAgreementAlgorithms", skip_serializing_if = "Option::is_none")]
    pub key_agreement_algorithms: Option<Vec<String>>,
    #[serde(rename = "MultiRegion")]
    pub multi_region: bool,
}

impl KeyMetadata {
    /// Metadata for a new key.
    pub fn new(account: &str, region: &str, key_id: &str, spec: KeySpec, usage: KeyUsage, description: &str, now: f64) -> KeyMetadata {
        let algs = Some(spec.algorithms(usage).into_iter().map(str::to_owned).collect());
        KeyMetadata {
            account_id: account.to_owned(),
            key_id: key_id.to_owned(),
            arn: format!("arn:aws:kms:{region}:{account}:key/{key_id}"),
            creation_date: now,
            enabled: true,
            description: description.to_owned(),
            key_usage: usage,
            key_state: KeyState::Enabled,
            deletion_date: None,
            origin: "AWS_KMS".into(),
            key_manager: "CUSTOMER".into(),
            customer_master_key_spec: spec,
            key_spec: spec,
            encryption_algorithms: if usage == KeyUsage::EncryptDecrypt { algs.clone() } else { None },
            signing_algorithms: if usage == KeyUsage::SignVerify { algs.clone() } else { None },
            key_agreement_algorithms: if usage == KeyUsage::KeyAgreement { algs } else { None },
            multi_region: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_serialises_with_kms_field_names() {
        let m = KeyMetadata::new("111122223333", "us-east-1", "k-1", KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt, "", 1.5);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["AWSAccountId"], "111122223333");
        assert_eq!(v["Arn"], "arn:aws:kms:us-east-1:111122223333:key/k-1");
        assert_eq!(v["KeySpec"], "SYMMETRIC_DEFAULT");
        assert_eq!(v["KeyUsage"], "ENCRYPT_DECRYPT");
        assert_eq!(v["KeyState"], "Enabled");
        assert_eq!(v["EncryptionAlgorithms"][0], "SYMMETRIC_DEFAULT");
        assert!(v.get("SigningAlgorithms").is_none());
    }

    #[test]
    fn specs_and_usages_combine_as_kms_allows() {
        assert_eq!(KeySpec::parse("ECC_SECG_P256K1"), Some(KeySpec::EccSecgP256k1));
        assert_eq!(KeySpec::parse("ECC_NIST_P999"), None);
        assert!(KeySpec::SymmetricDefault.allows(KeyUsage::EncryptDecrypt));
        assert!(!KeySpec::SymmetricDefault.allows(KeyUsage::SignVerify));
        assert!(KeySpec::EccNistP384.allows(KeyUsage::KeyAgreement));
        assert!(!KeySpec::Rsa2048.allows(KeyUsage::KeyAgreement));
        assert_eq!(KeySpec::EccNistP521.algorithms(KeyUsage::SignVerify), ["ECDSA_SHA_512"]);
    }
}
