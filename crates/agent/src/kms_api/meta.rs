//! EnableKey, DisableKey, TagResource, UntagResource, ListResourceTags, and
//! the checks that a key is usable: its metadata (`nekms_store::meta`),
//! read through a cache of the records' TTL in front of the store.

use std::time::Instant;

use nekms_keys::KeyRecord;
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::Request as Fields;
use nekms_store::meta::KeyMeta;
use serde_json::json;

use super::{store_error, Answer, Ctx};
use crate::state::RECORD_TTL;

/// Most tags a key carries (as KMS).
const MAX_TAGS: usize = 50;

/// The metadata of `record`, possibly a few seconds old.
pub(super) async fn cached(ctx: &Ctx<'_>, record: &KeyRecord) -> Result<KeyMeta, KmsError> {
    if let Some((m, at)) = ctx.state.metas.lock().unwrap_or_else(|p| p.into_inner()).get(&record.key_id) {
        if at.elapsed() < RECORD_TTL && m.record == record.created_at {
            return Ok(m.clone());
        }
    }
    let meta = ctx.state.store.meta(&record.key_id, record.created_at).await.map_err(store_error)?;
    let mut cache = ctx.state.metas.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= 4096 {
        cache.retain(|_, (_, at)| at.elapsed() < RECORD_TTL);
    }
    if cache.len() < 4096 {
        cache.insert(record.key_id.clone(), (meta.clone(), Instant::now()));
    }
    Ok(meta)
}

/// Write `meta` for `name`, and forget what this agent cached.
pub(super) async fn put(ctx: &Ctx<'_>, name: &str, meta: &KeyMeta) -> Result<(), KmsError> {
    ctx.state.store.put_meta(name, meta).await.map_err(store_error)?;
    ctx.state.metas.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    Ok(())
}

/// Refused when the key is disabled (KMS's DisabledException).
pub(super) async fn usable(ctx: &Ctx<'_>, record: &KeyRecord) -> Result<(), KmsError> {
    if cached(ctx, record).await?.disabled {
        return Err(KmsError::new("DisabledException", format!("{} is disabled.", ctx.arn(&record.key_id))));
    }
    Ok(())
}

/// The record and fresh metadata of a key this caller may manage, not pending deletion.
async fn managed(ctx: &Ctx<'_>, f: &Fields, action: &str) -> Result<(String, KeyMeta), KmsError> {
    ctx.manages(action)?;
    let name = ctx.resolve(f.key_id("KeyId")?, action).await?;
    let (record, deletion) = super::keys::entry(ctx, &name).await?;
    if deletion.is_some() {
        return Err(KmsError::invalid_state(format!("{} is pending deletion.", ctx.arn(&name))));
    }
    let meta = ctx.state.store.meta(&name, record.created_at).await.map_err(store_error)?;
    Ok((name, meta))
}

pub(super) async fn enable_key(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let (name, mut meta) = managed(ctx, f, "EnableKey").await?;
    meta.disabled = false;
    put(ctx, &name, &meta).await?;
    Ok(json!({}))
}

pub(super) async fn disable_key(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let (name, mut meta) = managed(ctx, f, "DisableKey").await?;
    meta.disabled = true;
    put(ctx, &name, &meta).await?;
    Ok(json!({}))
}

/// Tags for a new or tagged key, at most [`MAX_TAGS`] in all.
pub(super) fn add_tags(meta: &mut KeyMeta, f: &Fields) -> Result<(), KmsError> {
    for (k, v) in f.tags("Tags")? {
        meta.tags.insert(k, v);
    }
    if meta.tags.len() > MAX_TAGS {
        return Err(KmsError::new("TagException", format!("a key carries at most {MAX_TAGS} tags")));
    }
    Ok(())
}

pub(super) async fn tag_resource(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let (name, mut meta) = managed(ctx, f, "TagResource").await?;
    add_tags(&mut meta, f)?;
    put(ctx, &name, &meta).await?;
    Ok(json!({}))
}

pub(super) async fn untag_resource(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let (name, mut meta) = managed(ctx, f, "UntagResource").await?;
    for k in f.str_list("TagKeys")? {
        meta.tags.remove(&k);
    }
    put(ctx, &name, &meta).await?;
    Ok(json!({}))
}

pub(super) async fn list_resource_tags(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "ListResourceTags").await?;
    let (record, _) = super::keys::entry(ctx, &name).await?;
    let meta = ctx.state.store.meta(&name, record.created_at).await.map_err(store_error)?;
    let tags: Vec<_> = meta.tags.iter().map(|(k, v)| json!({"TagKey": k, "TagValue": v})).collect();
    Ok(json!({"Tags": tags, "Truncated": false}))
}
