//! `nekms privval push-config`: a tmkms.toml's chains turned into the
//! enclave's [`PrivvalChain`] configurations, each with its consensus key
//! as a custody record (never a key file).
//!
//! What tmkms.toml says that nekms does not follow: `state_file` (the
//! enclave keeps the state: import the file once, a note says how),
//! `sign_extensions = false` (on v0.38+ every non-nil precommit's extension
//! is signed, a note says so), `key_format`, `state_vsock_port`, `timeout`
//! and `aws_region` (read, unused). Refused: `state_hook` (a command run on
//! the parent), a softsign `path` (a key in the clear), a `key_type` other
//! than `consensus`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use base64::Engine;
use nekms_protocol::{KeyRecord, KeySpec};
use nekms_rpc::{Client, ImportKey, PrivvalChain, PrivvalRequest, PrivvalResponse, PrivvalStatus};
use nekms_store::KeyStore;

use crate::config::{toml_height, ChainConfig, SoftsignConfig, TmkmsConfig, ValidatorConfig};

/// The version a validator speaks when its entry names none.
const DEFAULT_PROTOCOL_VERSION: &str = "v0.34";

/// Push every chain of `config` to the enclave behind `client`, in the
/// file's order, the keys' records read from `store`.
///
/// A softsign entry with `encrypted_key_b64` whose key is not in `store`
/// yet is imported first and handed to `keep` (which stores it). Each chain
/// the enclave configures is handed to `configured`; notes about fields
/// nekms reads but does not follow go to stderr. The first error stops the
/// push: what came before it stays done.
pub async fn push_config<S: KeyStore>(
    config: &TmkmsConfig,
    store: &S,
    client: &Client,
    mut keep: impl AsyncFnMut(&KeyRecord) -> anyhow::Result<()>,
    mut configured: impl FnMut(&PrivvalStatus),
) -> anyhow::Result<()> {
    let mut keys: BTreeMap<String, String> = BTreeMap::new();
    for s in &config.providers.softsign {
        let name = softsign_key_name(s)?;
        if let Some(b64) = &s.encrypted_key_b64 {
            if store.get(&name).await?.is_none() {
                let imported = import(client, &name, b64).await?;
                keep(&imported).await?;
            }
        }
        for c in &s.chain_ids {
            if keys.insert(c.clone(), name.clone()).is_some() {
                bail!("chain {c:?} has two consensus keys in [[providers.softsign]]");
            }
        }
    }
    for chain in &config.chain {
        for note in notes(chain) {
            tracing::warn!("{note}");
        }
        if chain.state_hook.is_some() {
            bail!("chain {:?}: state_hook runs a command on the parent to bootstrap the state; nekms starts only from an imported or initialised state", chain.id);
        }
        let key_name = keys.get(&chain.id).with_context(|| format!("chain {:?} has no [[providers.softsign]] key", chain.id))?;
        let key = record(store, key_name).await?;
        let validators: Vec<&ValidatorConfig> = config.validator.iter().filter(|v| v.chain_id == chain.id).collect();
        let protocol_version = protocol_version(chain, &validators)?;
        let identity = match identity_name(chain, &validators)? {
            Some(n) => Some(record(store, n).await?),
            None => None,
        };
        let request = PrivvalChain {
            chain_id: chain.id.clone(),
            key,
            protocol_version,
            max_height: max_height(&validators)?,
            max_height_jump: chain.max_height_jump,
            identity,
        };
        match client.privval(PrivvalRequest::Configure(Box::new(request))).await.with_context(|| format!("chain {:?}", chain.id))? {
            PrivvalResponse::Configured(status) => configured(&status),
            _ => bail!("the enclave answered Configure with something else"),
        }
    }
    Ok(())
}

/// A softsign entry's consensus key: the custody record it names.
fn softsign_key_name(s: &SoftsignConfig) -> anyhow::Result<String> {
    if let Some(t) = &s.key_type {
        if t != "consensus" {
            bail!("[[providers.softsign]] key_type = {t:?}: nekms signs consensus messages only (key_type = \"consensus\")");
        }
    }
    if let Some(path) = &s.path {
        bail!(
            "[[providers.softsign]] path = {path:?}: a softsign file is the consensus key in the clear on the parent; nekms keeps it in custody. As the administrator: nekms key encrypt-for-import --privval --name NAME --spec ed25519 --kms-key ARN FILE; then nekms key import --privval --name NAME ..., and key = \"NAME\" here"
        );
    }
    s.key.clone().context("[[providers.softsign]]: give key = \"NAME\" (the consensus key's custody record)")
}

/// Import `name` into custody from PR 229's `encrypted_key_b64` (an Ed25519 consensus key).
async fn import(client: &Client, name: &str, b64: &str) -> anyhow::Result<KeyRecord> {
    let blob = base64::engine::general_purpose::STANDARD.decode(b64.trim()).context("encrypted_key_b64 is not base64")?;
    let request = ImportKey {
        key_id: name.to_owned(),
        spec: Some(KeySpec::Ed25519),
        kms_key_id: None,
        ciphertext: blob,
        ciphertext_context: Default::default(),
        ciphertext_key_id: None,
        encryption_context: Default::default(),
        nonce: None,
        decrypt: false,
        privval: true,
    };
    client.import_key(request).await.with_context(|| format!("importing {name} from encrypted_key_b64"))
}

async fn record<S: KeyStore>(store: &S, name: &str) -> anyhow::Result<KeyRecord> {
    store.get(name).await?.with_context(|| format!("no key named {name:?} in the store"))
}

/// What the operator should know about `chain`'s fields nekms does not follow.
fn notes(chain: &ChainConfig) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(f) = &chain.state_file {
        notes.push(format!("note: chain {:?}: state_file {} is not used; the enclave keeps the state (import it once: nekms privval state import --key NAME --chain-id {} {})", chain.id, f.display(), chain.id, f.display()));
    }
    if chain.sign_extensions == Some(false) {
        notes.push(format!("note: chain {:?}: sign_extensions = false is not followed; on v0.38+ every non-nil precommit's extension is signed, as CometBFT requires once extensions are enabled", chain.id));
    }
    notes
}

/// The one `protocol_version` a chain's validators give (v0.34 when none does).
fn protocol_version(chain: &ChainConfig, validators: &[&ValidatorConfig]) -> anyhow::Result<String> {
    let versions: BTreeSet<String> =
        validators.iter().map(|v| v.protocol_version.clone().unwrap_or_else(|| DEFAULT_PROTOCOL_VERSION.into())).collect();
    if versions.len() > 1 {
        bail!("chain {:?}: its validators give different protocol_version values ({versions:?})", chain.id);
    }
    Ok(versions.into_iter().next().unwrap_or_else(|| DEFAULT_PROTOCOL_VERSION.into()))
}

/// The SecretConnection identity a chain's validators name, if any: one at most.
fn identity_name<'a>(chain: &ChainConfig, validators: &[&'a ValidatorConfig]) -> anyhow::Result<Option<&'a String>> {
    let identities: BTreeSet<&String> = validators.iter().filter_map(|v| v.identity.as_ref()).collect();
    if identities.len() > 1 {
        bail!("chain {:?}: one SecretConnection identity per chain", chain.id);
    }
    Ok(identities.into_iter().next())
}

/// The lowest `max_height` a chain's validators give.
fn max_height(validators: &[&ValidatorConfig]) -> anyhow::Result<Option<i64>> {
    Ok(validators.iter().filter_map(|v| v.max_height.as_ref()).map(toml_height).collect::<anyhow::Result<Vec<i64>>>()?.into_iter().min())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(text: &str) -> TmkmsConfig {
        TmkmsConfig::parse(text, Path::new("tmkms.toml")).unwrap()
    }

    fn softsign(text: &str) -> anyhow::Result<String> {
        softsign_key_name(&config(text).providers.softsign[0])
    }

    #[test]
    fn a_softsign_entry_names_its_key_in_custody() {
        assert_eq!(softsign("[[providers.softsign]]\nchain_ids = [\"c\"]\nkey_type = \"consensus\"\nkey = \"v1\"\n").unwrap(), "v1");
        let e = softsign("[[providers.softsign]]\nchain_ids = [\"c\"]\n").unwrap_err();
        assert_eq!(e.to_string(), "[[providers.softsign]]: give key = \"NAME\" (the consensus key's custody record)");
    }

    #[test]
    fn a_softsign_key_file_is_refused_as_a_key_in_the_clear() {
        let e = softsign("[[providers.softsign]]\nchain_ids = [\"c\"]\npath = \"/k\"\nkey = \"v1\"\n").unwrap_err();
        assert!(
            e.to_string().starts_with("[[providers.softsign]] path = \"/k\": a softsign file is the consensus key in the clear"),
            "{e}"
        );
    }

    #[test]
    fn only_consensus_keys_are_signed_with() {
        let e = softsign("[[providers.softsign]]\nchain_ids = [\"c\"]\nkey_type = \"account\"\nkey = \"v1\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "[[providers.softsign]] key_type = \"account\": nekms signs consensus messages only (key_type = \"consensus\")"
        );
    }

    const TWO_VALIDATORS: &str = "[[chain]]\nid = \"c\"\n\
        [[validator]]\nchain_id = \"c\"\naddr = \"unix:///a\"\nmax_height = 90\nidentity = \"id\"\n\
        [[validator]]\nchain_id = \"c\"\naddr = \"unix:///b\"\nmax_height = \"70\"\nprotocol_version = \"v0.34\"\n";

    fn validators(c: &TmkmsConfig) -> Vec<&ValidatorConfig> {
        c.validator.iter().collect()
    }

    #[test]
    fn a_chain_speaks_v0_34_unless_its_validators_say_otherwise_and_all_alike() {
        let c = config(TWO_VALIDATORS);
        assert_eq!(protocol_version(&c.chain[0], &validators(&c)).unwrap(), "v0.34");
        assert_eq!(protocol_version(&c.chain[0], &[]).unwrap(), "v0.34");
        let c = config(&TWO_VALIDATORS.replace("\"v0.34\"", "\"v0.38\""));
        let e = protocol_version(&c.chain[0], &validators(&c)).unwrap_err();
        assert_eq!(e.to_string(), "chain \"c\": its validators give different protocol_version values ({\"v0.34\", \"v0.38\"})");
    }

    #[test]
    fn a_chain_has_one_identity_at_most_and_the_lowest_max_height() {
        let c = config(TWO_VALIDATORS);
        assert_eq!(identity_name(&c.chain[0], &validators(&c)).unwrap().map(String::as_str), Some("id"));
        assert_eq!(max_height(&validators(&c)).unwrap(), Some(70));
        let c = config(&TWO_VALIDATORS.replace("protocol_version = \"v0.34\"", "identity = \"other\""));
        let e = identity_name(&c.chain[0], &validators(&c)).unwrap_err();
        assert_eq!(e.to_string(), "chain \"c\": one SecretConnection identity per chain");
    }

    #[test]
    fn state_file_and_sign_extensions_false_are_noted_not_followed() {
        let c = config("[[chain]]\nid = \"c\"\nstate_file = \"/s.json\"\nsign_extensions = false\n");
        let notes = notes(&c.chain[0]);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0], "note: chain \"c\": state_file /s.json is not used; the enclave keeps the state (import it once: nekms privval state import --key NAME --chain-id c /s.json)");
        assert!(notes[1].starts_with("note: chain \"c\": sign_extensions = false is not followed"));
        assert!(super::notes(&config("[[chain]]\nid = \"c\"\nsign_extensions = true\n").chain[0]).is_empty());
    }
}
