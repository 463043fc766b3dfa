//! Tags: TagResource, UntagResource, ListResourceTags.

use serde_json::{json, Value};

use crate::error::KmsError;
use crate::model::KeyState;

use super::Call;

impl Call<'_> {
    pub(super) fn tag_resource(&mut self) -> Result<Value, KmsError> {
        let tags = self.req.tags("Tags")?;
        let key = self.authorized_key("KeyId", "kms:TagResource", &|_| {})?;
        if key.metadata.key_state == KeyState::PendingDeletion {
            return Err(KmsError::invalid_state(format!("{} is pending deletion.", key.metadata.arn)));
        }
        self.store().tag(&key.metadata.key_id, &tags)?;
        Ok(json!({}))
    }

    pub(super) fn untag_resource(&mut self) -> Result<Value, KmsError> {
        let keys = self.req.str_list("TagKeys")?;
        let key = self.authorized_key("KeyId", "kms:UntagResource", &|_| {})?;
        self.store().untag(&key.metadata.key_id, &keys)?;
        Ok(json!({}))
    }

    pub(super) fn list_resource_tags(&mut self) -> Result<Value, KmsError> {
        let key = self.authorized_key("KeyId", "kms:ListResourceTags", &|_| {})?;
        let tags: Vec<Value> =
            self.store().tags(&key.metadata.key_id)?.into_iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect();
        self.page(tags, "Tags", 50, 50)
    }
}
