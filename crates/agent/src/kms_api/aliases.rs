//! CreateAlias, UpdateAlias, DeleteAlias and ListAliases. An alias is
//! global to the store, like a key name; a caller creates, moves or deletes
//! one only if it manages keys and may use the key it points at (before
//! and after), and sees only aliases of keys it may use. So an alias can
//! never lead one caller to another caller's key.

use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::Request as Fields;
use nekms_store::alias::Alias;
use serde_json::{json, Value};

use super::{store_error, Answer, Ctx};

/// An alias name as KMS allows it for customer aliases, and one this
/// caller may take: what follows `alias/` is within its key globs, so
/// callers with separate keys have separate alias names.
fn check_name(ctx: &Ctx<'_>, name: &str) -> Result<(), KmsError> {
    let ok = name.len() <= 256
        && name.strip_prefix("alias/").is_some_and(|rest| !rest.is_empty())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_-:".contains(&b));
    if !ok {
        return Err(KmsError::validation(format!("AliasName {name:?} must be alias/ then 1-250 of letters, digits and /_-:")));
    }
    if name.starts_with("alias/aws/") {
        return Err(KmsError::new("NotAuthorizedException", "alias/aws/ names are reserved for AWS"));
    }
    if !ctx.caller.may_use(&name["alias/".len()..]) {
        return Err(KmsError::new(
            "AccessDeniedException",
            format!("{name}: {} takes aliases named as the keys it may use (alias/ + a name its key globs allow)", ctx.caller.name),
        ));
    }
    Ok(())
}

/// The target of a new or moved alias: a key (not another alias) this caller may use, which exists.
async fn target(ctx: &Ctx<'_>, f: &Fields, action: &str) -> Result<String, KmsError> {
    let id = f.key_id("TargetKeyId")?;
    if id.starts_with("alias/") || id.contains(":alias/") {
        return Err(KmsError::validation("TargetKeyId must be a key id or key ARN, not an alias"));
    }
    let name = ctx.resolve(id, action).await?;
    super::keys::entry(ctx, &name).await?;
    Ok(name)
}

/// The alias `name`, which must exist and point at a key this caller may
/// use (one that does not is, to this caller, not found).
async fn existing(ctx: &Ctx<'_>, name: &str) -> Result<Alias, KmsError> {
    match ctx.state.store.alias(name).await.map_err(store_error)? {
        Some(a) if ctx.caller.may_use(&a.target) => Ok(a),
        _ => Err(KmsError::not_found(format!("Alias {} is not found.", ctx.alias_arn(name)))),
    }
}

pub(super) async fn create_alias(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    ctx.manages("CreateAlias")?;
    let name = f.str("AliasName")?;
    check_name(ctx, name)?;
    let target = target(ctx, f, "CreateAlias").await?;
    let now = nekms_store::now();
    let alias = Alias { name: name.to_owned(), target, created: now, updated: now };
    match ctx.state.store.put_alias(&alias, None).await {
        Ok(_) => Ok(json!({})),
        Err(nekms_store::StoreError::Exists(_)) => {
            Err(KmsError::new("AlreadyExistsException", format!("An alias with the name {} already exists", ctx.alias_arn(name))))
        }
        Err(e) => Err(store_error(e)),
    }
}

pub(super) async fn update_alias(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    ctx.manages("UpdateAlias")?;
    let name = f.str("AliasName")?;
    check_name(ctx, name)?;
    let mut alias = existing(ctx, name).await?;
    let old = std::mem::replace(&mut alias.target, target(ctx, f, "UpdateAlias").await?);
    alias.updated = nekms_store::now();
    // Only if it still points where it did when checked.
    if !ctx.state.store.put_alias(&alias, Some(&old)).await.map_err(store_error)? {
        return Err(KmsError::new(
            "ConcurrentModificationException",
            format!("Alias {} changed meanwhile; try again.", ctx.alias_arn(name)),
        ));
    }
    Ok(json!({}))
}

pub(super) async fn delete_alias(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    ctx.manages("DeleteAlias")?;
    let name = f.str("AliasName")?;
    let alias = existing(ctx, name).await?;
    if !ctx.state.store.delete_alias(name, &alias.target).await.map_err(store_error)? {
        return Err(KmsError::new(
            "ConcurrentModificationException",
            format!("Alias {} changed meanwhile; try again.", ctx.alias_arn(name)),
        ));
    }
    Ok(json!({}))
}

pub(super) async fn list_aliases(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let only = match f.opt_str("KeyId")? {
        Some(id) => Some(ctx.resolve(id, "ListAliases").await?),
        None => None,
    };
    let limit = f.opt_int("Limit", 1, 100)?.unwrap_or(50) as usize;
    let marker = f.opt_str("Marker")?;
    let visible: Vec<Alias> = ctx
        .state
        .store
        .aliases()
        .await
        .map_err(store_error)?
        .into_iter()
        .filter(|a| ctx.caller.may_use(&a.target) && only.as_ref().is_none_or(|k| *k == a.target))
        .filter(|a| marker.is_none_or(|m| a.name.as_str() > m))
        .collect();
    let truncated = visible.len() > limit;
    let shown: Vec<Value> = visible
        .iter()
        .take(limit)
        .map(|a| {
            json!({"AliasName": a.name, "AliasArn": ctx.alias_arn(&a.name), "TargetKeyId": a.target,
                   "CreationDate": a.created, "LastUpdatedDate": a.updated})
        })
        .collect();
    let mut out = json!({"Aliases": shown, "Truncated": truncated});
    if truncated {
        out["NextMarker"] = json!(visible[limit - 1].name);
    }
    Ok(out)
}
