//! The double-sign state other signers leave, read so a validator moves to
//! nekms without starting from height 0:
//!
//! - tmkms's state file: `{"height":"123","round":"0","step":1,"block_id":…}`
//!   (height and round as strings, steps 0 proposal, 1 prevote, 2 precommit;
//!   no sign bytes);
//! - CometBFT's `priv_validator_state.json`: `{"height":"123","round":0,
//!   "step":3,"signature":"<base64>","signbytes":"<hex>"}` (steps 1
//!   propose, 2 prevote, 3 precommit; 0 before anything was signed).
//!
//! Height 0 is a validator that never signed: refused, so no signer starts
//! from it silently (`state init` says the height instead).

use base64::Engine;
use serde_json::Value;

use crate::state::{LastSigned, Step};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("neither tmkms's state file nor CometBFT's priv_validator_state.json: {0}")]
    Format(String),
    #[error("the state is at height 0 (nothing signed yet): give the chain's current height with `nekms privval state init` instead")]
    HeightZero,
}

fn int_field(v: &Value, name: &str, as_string: bool) -> Result<i64, ImportError> {
    let field = v.get(name).ok_or_else(|| ImportError::Format(format!("no {name:?}")))?;
    let n = match (field, as_string) {
        (Value::String(s), true) => s.parse::<i64>().ok(),
        (Value::Number(n), false) => n.as_i64(),
        _ => None,
    };
    n.ok_or_else(|| ImportError::Format(format!("{name:?} is not {}", if as_string { "an integer in a string" } else { "an integer" })))
}

/// Read either file into the last thing signed.
pub fn import_state(json: &[u8]) -> Result<LastSigned, ImportError> {
    let v: Value = serde_json::from_slice(json).map_err(|e| ImportError::Json(e.to_string()))?;
    let obj = v.as_object().ok_or_else(|| ImportError::Format("not a JSON object".into()))?;
    let tmkms = matches!(obj.get("round"), Some(Value::String(_)));
    let known: &[&str] =
        if tmkms { &["height", "round", "step", "block_id"] } else { &["height", "round", "step", "signature", "signbytes"] };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ImportError::Format(format!("unknown field {k:?}")));
    }
    let height = int_field(&v, "height", true)?;
    let round = i32::try_from(int_field(&v, "round", tmkms)?).map_err(|_| ImportError::Format("round out of range".into()))?;
    let step_n = int_field(&v, "step", false)?;
    if height < 0 || round < 0 {
        return Err(ImportError::Format("a negative height or round".into()));
    }
    if height == 0 {
        return Err(ImportError::HeightZero);
    }
    let step = match (tmkms, step_n) {
        (true, 0) | (false, 1) => Step::Propose,
        (true, 1) | (false, 2) => Step::Prevote,
        (true, 2) | (false, 3) => Step::Precommit,
        (false, 0) => Step::None,
        _ => return Err(ImportError::Format(format!("step {step_n} is not a step"))),
    };
    let (mut sign_bytes, mut signature) = (None, None);
    if !tmkms {
        if let Some(s) = obj.get("signature").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            signature = Some(
                base64::engine::general_purpose::STANDARD.decode(s).map_err(|_| ImportError::Format("signature is not base64".into()))?,
            );
        }
        if let Some(s) = obj.get("signbytes").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            sign_bytes = Some(hex::decode(s).map_err(|_| ImportError::Format("signbytes is not hex".into()))?);
        }
        if sign_bytes.is_some() != signature.is_some() {
            return Err(ImportError::Format("signature and signbytes come together".into()));
        }
    }
    Ok(LastSigned { height, round, step: Some(step), sign_bytes, signature })
}
