//! Reading a private key an administrator brings: raw 32-byte secrets (hex,
//! base64 or binary), PKCS#8 and SEC1/PKCS#1 (DER or PEM), tmkms softsign
//! keys (base64 of the Ed25519 seed) and Tendermint's priv_validator_key.json.
//! The bytes arrive as a KMS plaintext inside the enclave; every buffer made
//! from them is wiped.

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use base64::Engine;
use zeroize::Zeroizing;

use crate::private::{ecdsa_alg, PrivateKey};
use crate::public::pem_block;
use crate::KeyError;
use crate::KeySpec;

/// Parse `material` as a private key. `spec` is required for raw secrets
/// (32 bytes could be secp256k1, Ed25519 or P-256) and, when given, must
/// match what an encoded key says it is.
pub fn parse_private_key(material: &[u8], spec: Option<KeySpec>) -> Result<PrivateKey, KeyError> {
    let key = match std::str::from_utf8(material)
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.chars().all(|c| !c.is_control() || c.is_whitespace()))
    {
        Some(text) => parse_text(text, spec)?,
        None => parse_binary(material, spec)?,
    };
    match spec {
        Some(s) if s != key.spec() => Err(KeyError::Import(format!("the key is {}, not {s}", key.spec()))),
        _ => Ok(key),
    }
}

fn parse_text(text: &str, spec: Option<KeySpec>) -> Result<PrivateKey, KeyError> {
    if text.contains("-----BEGIN ") {
        let (label, der) = pem_block(text.as_bytes()).ok_or_else(|| KeyError::Import("a PEM block that cannot be read".into()))?;
        let der = Zeroizing::new(der);
        return match label {
            "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" => parse_der(&der, spec),
            "ENCRYPTED PRIVATE KEY" => {
                Err(KeyError::Import("an encrypted PKCS#8 key; decrypt it (openssl pkcs8) and encrypt it with KMS instead".into()))
            }
            other => Err(KeyError::Import(format!("a PEM {other}; give a PRIVATE KEY"))),
        };
    }
    if text.starts_with('{') {
        return parse_priv_validator_json(text);
    }
    let hex_text = text.strip_prefix("0x").unwrap_or(text);
    if hex_text.len() % 2 == 0 && hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes = Zeroizing::new(hex::decode(hex_text).map_err(|_| KeyError::Import("bad hex".into()))?);
        return parse_binary(&bytes, spec);
    }
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| KeyError::Import("text that is neither PEM, JSON, hex nor base64".into()))?,
    );
    parse_binary(&bytes, spec)
}

/// Tendermint's and CometBFT's priv_validator_key.json: priv_key.value is
/// base64 of the 64-byte Ed25519 seed followed by the public key
/// (`tendermint/PrivKeyEd25519`), or of the 32-byte secp256k1 scalar
/// (`tendermint/PrivKeySecp256k1`). A pub_key that is not the key's is refused.
fn parse_priv_validator_json(text: &str) -> Result<PrivateKey, KeyError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| KeyError::Import(format!("JSON key file: {e}")))?;
    let priv_key = &v["priv_key"];
    let kind = priv_key["type"].as_str().unwrap_or_default();
    let spec = match kind {
        "tendermint/PrivKeyEd25519" | "cometbft/PrivKeyEd25519" => KeySpec::Ed25519,
        "tendermint/PrivKeySecp256k1" | "cometbft/PrivKeySecp256k1" => KeySpec::Secp256k1,
        other => return Err(KeyError::Import(format!("priv_key.type is {other:?}; Ed25519 and secp256k1 validator keys are read"))),
    };
    let b64 = priv_key["value"].as_str().ok_or_else(|| KeyError::Import("priv_key.value is missing".into()))?;
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| KeyError::Import("priv_key.value is not base64".into()))?,
    );
    let key = parse_binary(&bytes, Some(spec))?;
    if let Some(public) = v["pub_key"]["value"].as_str() {
        let public =
            base64::engine::general_purpose::STANDARD.decode(public).map_err(|_| KeyError::Import("pub_key.value is not base64".into()))?;
        let point = key.public_key().point();
        let matches = match spec {
            // Compressed SEC1 in the file; the key's point is uncompressed.
            KeySpec::Secp256k1 => public.len() == 33 && public[1..] == point[1..33] && public[0] == 2 + (point[64] & 1),
            _ => public == point,
        };
        if !matches {
            return Err(KeyError::Import("pub_key is not the public key of priv_key: the file is damaged or pieced together".into()));
        }
    }
    Ok(key)
}

fn parse_binary(bytes: &[u8], spec: Option<KeySpec>) -> Result<PrivateKey, KeyError> {
    match (bytes.len(), spec) {
        (32, Some(s @ (KeySpec::Secp256k1 | KeySpec::Ed25519 | KeySpec::P256))) => PrivateKey::from_secret(s, bytes),
        (48, Some(KeySpec::P384)) => PrivateKey::from_secret(KeySpec::P384, bytes),
        (32, None) => Err(KeyError::Import("a raw 32-byte secret; say which spec it is (secp256k1, ed25519 or p256)".into())),
        // tmkms's older softsign files and Tendermint keep seed || public key.
        (64, None | Some(KeySpec::Ed25519)) => {
            let key = PrivateKey::from_secret(KeySpec::Ed25519, &bytes[..32])?;
            if key.public_key().point() != &bytes[32..] {
                return Err(KeyError::Import(
                    "a 64-byte Ed25519 key whose second half is not its public key (tmkms writes an expanded key in 64-byte softsign files: give the 32-byte seed)".into(),
                ));
            }
            Ok(key)
        }
        _ if bytes.first() == Some(&0x30) => parse_der(bytes, spec),
        (n, _) => Err(KeyError::Import(format!("{n} bytes that are not a raw secret, PKCS#8, SEC1 or PKCS#1 key"))),
    }
}

/// PKCS#8, SEC1 (RFC 5915) or PKCS#1 DER.
fn parse_der(der: &[u8], spec: Option<KeySpec>) -> Result<PrivateKey, KeyError> {
    let wants = |s: KeySpec| spec.is_none() || spec == Some(s) || (spec.is_some_and(KeySpec::is_rsa) && s.is_rsa());
    if wants(KeySpec::Ed25519) {
        if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            let seed = kp.seed().map_err(|_| KeyError::Crypto("Ed25519 seed"))?;
            let seed = Zeroizing::new(seed.as_be_bytes().map_err(|_| KeyError::Crypto("Ed25519 seed"))?.as_ref().to_vec());
            return PrivateKey::from_secret(KeySpec::Ed25519, &seed);
        }
    }
    for s in [KeySpec::P256, KeySpec::P384] {
        if wants(s) {
            if let Ok(kp) = EcdsaKeyPair::from_private_key_der(ecdsa_alg(s), der) {
                return PrivateKey::from_ecdsa(s, kp);
            }
        }
    }
    if wants(KeySpec::Secp256k1) {
        if let Ok(kp) = EcdsaKeyPair::from_private_key_der(ecdsa_alg(KeySpec::Secp256k1), der) {
            let scalar = Zeroizing::new(kp.private_key().as_be_bytes().map_err(|_| KeyError::Crypto("EC scalar"))?.as_ref().to_vec());
            return PrivateKey::from_secret(KeySpec::Secp256k1, &scalar);
        }
    }
    if wants(KeySpec::Rsa2048) {
        if let Ok(kp) = RsaKeyPair::from_pkcs8(der).or_else(|_| RsaKeyPair::from_der(der)) {
            let spec = match kp.public_modulus_len() * 8 {
                2048 => KeySpec::Rsa2048,
                3072 => KeySpec::Rsa3072,
                4096 => KeySpec::Rsa4096,
                bits => return Err(KeyError::Import(format!("an RSA key of {bits} bits; nekms keeps 2048, 3072 or 4096"))),
            };
            return PrivateKey::from_rsa(spec, kp);
        }
    }
    if let Some(s) = spec {
        if let Ok(actual) = parse_der(der, None) {
            return Err(KeyError::Import(format!("the key is {}, not {s}", actual.spec())));
        }
        return Err(KeyError::Import(format!("DER that is not a {s} private key (PKCS#8, SEC1 or PKCS#1)")));
    }
    Err(KeyError::Import("DER that is not a private key nekms reads (PKCS#8, SEC1 or PKCS#1)".into()))
}
