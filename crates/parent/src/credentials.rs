//! AWS credentials for the enclave: taken from the parent's default chain
//! (environment, profile, instance metadata) and pushed over the RPC. The
//! enclave keeps them in memory only; the parent never sees a plaintext
//! they open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aws_credential_types::provider::ProvideCredentials;
use nekms_rpc::{Client, CredentialsInfo, CredentialsUpdate, SecretString};
use nekms_transport::Address;

/// A Unix time as RFC 3339 (UTC), or the number if it is out of range.
pub fn time_text(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// The enclave's credentials in one line: key id, kind, region, expiry.
pub fn describe(c: &CredentialsInfo) -> String {
    let kind = if c.temporary { "temporary" } else { "long-term" };
    match c.expiration {
        Some(e) => format!("{} ({kind}, region {}, expires {})", c.access_key_id, c.region, time_text(e)),
        None => format!("{} ({kind}, region {})", c.access_key_id, c.region),
    }
}

/// Credentials from the default chain (environment, profile, IMDS), and the chain's region.
pub async fn default_chain(
    profile: Option<&str>,
    region: Option<&str>,
) -> anyhow::Result<(aws_credential_types::provider::SharedCredentialsProvider, Option<String>)> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r.to_owned()));
    }
    let config = loader.load().await;
    let provider = config.credentials_provider().context("the default chain has no credentials provider")?;
    Ok((provider, config.region().map(|r| r.to_string())))
}

/// Push credentials from the default chain into the enclave at `enclave`;
/// with `watch`, again five minutes before they expire or every `interval`,
/// whichever is sooner, retrying every 5 s after a failure. `on_push` hears
/// of each push.
pub async fn push(
    enclave: &Address,
    profile: Option<String>,
    region: Option<String>,
    watch: bool,
    interval: Duration,
    on_push: impl Fn(&CredentialsInfo),
) -> anyhow::Result<()> {
    let (provider, region) = default_chain(profile.as_deref(), region.as_deref()).await?;
    let mut client: Option<Client> = None;
    loop {
        let pushed = async {
            let c = provider.provide_credentials().await.context("getting credentials from the default chain")?;
            let expiration = c.expiry().map(|e| e.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
            let update = CredentialsUpdate {
                access_key_id: c.access_key_id().to_owned(),
                secret_access_key: SecretString::new(c.secret_access_key()),
                session_token: c.session_token().map(SecretString::new),
                region: region.clone(),
                expiration,
            };
            if client.is_none() {
                client = Some(crate::enclave::connect(enclave).await?);
            }
            let info = client.as_ref().expect("connected above").set_credentials(update).await;
            if info.is_err() {
                client = None;
            }
            anyhow::Ok((info?, c.expiry()))
        }
        .await;
        let wait = match pushed {
            Ok((info, expiry)) => {
                on_push(&info);
                if !watch {
                    return Ok(());
                }
                // Push again five minutes before expiry, or at the interval, whichever is sooner.
                let until_refresh = expiry
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .map(|left| left.saturating_sub(Duration::from_secs(300)))
                    .unwrap_or(interval);
                until_refresh.min(interval).max(Duration::from_secs(1))
            }
            Err(e) if !watch => return Err(e),
            Err(e) => {
                tracing::warn!("pushing credentials failed, retrying in 5 s: {e:#}");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(wait).await;
    }
}
