//! Key rotation: EnableKeyRotation, DisableKeyRotation,
//! GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations.

use serde_json::{json, Value};

use crate::crypto;
use crate::error::KmsError;
use crate::model::KeySpec;
use crate::store::StoredKey;

use super::Call;

impl Call<'_> {
    fn rotatable(&self, key: &StoredKey) -> Result<(), KmsError> {
        if key.metadata.key_spec != KeySpec::SymmetricDefault {
            return Err(KmsError::unsupported(format!("{} is an asymmetric key; only symmetric keys rotate", key.metadata.arn)));
        }
        self.usable(key)
    }

    pub(super) fn set_rotation(&mut self, enabled: bool) -> Result<Value, KmsError> {
        let action = if enabled { "kms:EnableKeyRotation" } else { "kms:DisableKeyRotation" };
        let period = self.req.opt_int("RotationPeriodInDays", 90, 2560)?;
        let key = self.authorized_key("KeyId", action, &|_| {})?;
        self.rotatable(&key)?;
        if !enabled && period.is_some() {
            return Err(KmsError::validation("RotationPeriodInDays is only for EnableKeyRotation"));
        }
        self.store().set_rotation(&key.metadata.key_id, enabled)?;
        Ok(json!({}))
    }

    pub(super) fn get_rotation_status(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:GetKeyRotationStatus", &|_| {})?;
        let mut out = json!({"KeyRotationEnabled": key.rotation_enabled, "KeyId": key.metadata.arn});
        if key.rotation_enabled {
            out["RotationPeriodInDays"] = 365.into();
        }
        Ok(out)
    }

    pub(super) fn rotate_on_demand(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:RotateKeyOnDemand", &|_| {})?;
        self.rotatable(&key)?;
        self.store().rotate(&key.metadata.key_id, &crypto::random(32))?;
        Ok(json!({"KeyId": key.metadata.key_id}))
    }

    pub(super) fn list_key_rotations(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:ListKeyRotations", &|_| {})?;
        let (current, _) = self.store().current_material(&key.metadata.key_id)?;
        let rotations: Vec<Value> =
            (2..=current).map(|v| json!({"KeyId": key.metadata.key_id, "RotationType": "ON_DEMAND", "MaterialVersion": v})).collect();
        self.page(rotations, "Rotations", 1000, 100)
    }
}
