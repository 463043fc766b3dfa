//! Keys set up the way an operator sets them up on AWS, on the local KMS:
//! a custody key in the two steps of the CLI's `key_policy` (and the check
//! that nothing was left behind in between), a key only one enclave image
//! may decrypt with, and the trust part of an enclave's configuration that
//! pins them.

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_devworld::DevDir;
use serde_json::json;

use crate::key_policy::{self, Roles};
use crate::kms::{Conn, InProcessKms, Target};

/// A key policy without a root statement for kmstool's flow: the instance
/// role may encrypt, and decrypt only from an enclave whose PCR0 is
/// `pcr0_hex`; the administrator manages the key, never decrypts, and cannot
/// reopen it; nobody mints ciphertexts in nekms's reserved context.
pub fn enclave_only_policy(account: &str, pcr0_hex: &str) -> serde_json::Value {
    let roles = Roles::standard(account);
    let mut policy = key_policy::custody(&roles, &[pcr0_hex.to_owned()]);
    let statements = policy["Statement"].as_array_mut().expect("statements");
    statements[0] = json!({"Sid": "Decrypt only inside the enclave image", "Effect": "Allow",
             "Principal": {"AWS": roles.instance}, "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {"kms:RecipientAttestation:ImageSha384": pcr0_hex}}});
    statements.insert(
        1,
        json!({"Sid": "Encrypt from the instance", "Effect": "Allow",
             "Principal": {"AWS": roles.instance}, "Action": "kms:Encrypt", "Resource": "*"}),
    );
    policy
}

/// The admin creates a key with [`enclave_only_policy`] and the instance
/// encrypts `plaintext` under it: (key ARN, base64 ciphertext blob).
pub async fn enclave_only_secret(
    dev: &DevDir,
    local: &InProcessKms,
    pcr0_hex: &str,
    description: &str,
    plaintext: &[u8],
) -> anyhow::Result<(String, String)> {
    let mut instance = Conn::open(&local.target(dev, "instance")?).await?;
    let policy = enclave_only_policy(&dev.config()?.account_id, pcr0_hex);
    let arn = create_key(dev, local, description, &policy).await?;
    let ct = instance.call("Encrypt", &json!({"KeyId": arn, "Plaintext": B64.encode(plaintext)})).await?;
    let blob = ct["CiphertextBlob"].as_str().context("Encrypt gave no CiphertextBlob")?.to_owned();
    Ok((arn, blob))
}

/// The admin creates a key with a final `policy` (one that locks the
/// administrator out, hence the bypass): its ARN.
pub async fn create_key(dev: &DevDir, local: &InProcessKms, description: &str, policy: &serde_json::Value) -> anyhow::Result<String> {
    let mut admin = Conn::open(&local.target(dev, "admin")?).await?;
    let key = admin
        .call("CreateKey", &json!({"Description": description, "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true}))
        .await?;
    Ok(key["KeyMetadata"]["Arn"].as_str().context("CreateKey gave no Arn")?.to_owned())
}

/// A custody key set up in the two steps of `key_policy`: the admin
/// creates it with the bootstrap policy, `configure` turns its ARN into the
/// enclave configuration(s) and their measurements, and the admin then puts
/// the final policy `finish` makes from those, locking itself out.
pub async fn custody_key<T>(
    dev: &DevDir,
    target: &Target,
    description: &str,
    configure: impl FnOnce(&str) -> anyhow::Result<T>,
    finish: impl FnOnce(&Roles, &T) -> serde_json::Value,
) -> anyhow::Result<(String, T)> {
    let roles = Roles::standard(&dev.config()?.account_id);
    let mut admin = Conn::open(target).await?;
    let key = admin.call("CreateKey", &json!({"Description": description, "Policy": key_policy::bootstrap(&roles).to_string()})).await?;
    let arn = key["KeyMetadata"]["Arn"].as_str().context("CreateKey gave no Arn")?.to_owned();
    let configured = configure(&arn)?;
    let policy = finish(&roles, &configured);
    admin
        .call(
            "PutKeyPolicy",
            &json!({"KeyId": arn, "PolicyName": "default", "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true}),
        )
        .await?;
    check_custody_key(&mut admin, &arn, &policy).await?;
    Ok((arn, configured))
}

/// What the bootstrap window could have left behind is not there: the
/// policy in force is `policy`, the key is a single-Region AWS_KMS symmetric
/// key in no custom key store, and it has no grants.
pub async fn check_custody_key(admin: &mut Conn, arn: &str, policy: &serde_json::Value) -> anyhow::Result<()> {
    let got = admin.call("GetKeyPolicy", &json!({"KeyId": arn, "PolicyName": "default"})).await?;
    let in_force: serde_json::Value = serde_json::from_str(got["Policy"].as_str().context("GetKeyPolicy gave no Policy")?)?;
    anyhow::ensure!(&in_force == policy, "{arn}: the key policy in force is not the custody policy nekms wrote");
    let meta = &admin.call("DescribeKey", &json!({"KeyId": arn})).await?["KeyMetadata"];
    let field = |k: &str| meta[k].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        field("KeySpec") == "SYMMETRIC_DEFAULT" && field("Origin") == "AWS_KMS",
        "{arn}: not an AWS_KMS symmetric key ({} {})",
        field("KeySpec"),
        field("Origin")
    );
    anyhow::ensure!(
        meta["MultiRegion"].as_bool() != Some(true) && meta.get("CustomKeyStoreId").is_none_or(|v| v.is_null()),
        "{arn}: a multi-Region key or one in a custom key store"
    );
    let grants = admin.call("ListGrants", &json!({"KeyId": arn, "Limit": 100})).await?;
    anyhow::ensure!(
        grants["Grants"].as_array().is_some_and(|g| g.is_empty()),
        "{arn} has grants, which someone made while the key was open; revoke them and check again: {}",
        grants["Grants"]
    );
    Ok(())
}

/// The trust part of an enclave configuration (TOML): the custody keys and
/// the other images whose records it accepts.
pub fn trust_toml(custody: &[&str], origin_pcr0: &[String]) -> String {
    let list = |v: Vec<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let mut out = format!("custody-kms-keys = [{}]\n", list(custody.iter().map(|s| s.to_string()).collect()));
    if !origin_pcr0.is_empty() {
        out.push_str(&format!("origin-pcr0 = [{}]\n", list(origin_pcr0.to_vec())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack the check after setup exists for: an administrator who turns
    /// bad during the bootstrap window opens the policy, encrypts a secret of
    /// its choosing, grants the instance role Decrypt and lets the setup
    /// finish. The check finds the grant, and the final policy's Deny already
    /// keeps the grant from opening anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_grant_left_in_the_bootstrap_window_is_found_and_opens_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = DevDir::new(tmp.path().join("dev"));
        dev.init().unwrap();
        let local = InProcessKms::start(&dev, &tmp.path().join("kms"), false).await.unwrap();
        let roles = Roles::standard(&dev.config().unwrap().account_id);
        let mut admin = Conn::open(&local.target(&dev, "admin").unwrap()).await.unwrap();
        let mut instance = Conn::open(&local.target(&dev, "instance").unwrap()).await.unwrap();
        let key = admin.call("CreateKey", &json!({"Policy": key_policy::bootstrap(&roles).to_string()})).await.unwrap();
        let arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
        let grant = json!({"KeyId": arn, "GranteePrincipal": roles.instance, "Operations": ["Decrypt"]});
        let (status, err) = admin.call_raw("CreateGrant", &grant).await.unwrap();
        assert_eq!((status, err["__type"].as_str()), (400, Some("AccessDeniedException")), "the bootstrap policy allows no grant: {err}");

        let open = json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": [roles.admin, roles.instance]}, "Action": "kms:*", "Resource": "*"}]});
        admin.call("PutKeyPolicy", &json!({"KeyId": arn, "PolicyName": "default", "Policy": open.to_string()})).await.unwrap();
        let blob =
            instance.call("Encrypt", &json!({"KeyId": arn, "Plaintext": B64.encode(b"planted")})).await.unwrap()["CiphertextBlob"].clone();
        admin.call("CreateGrant", &grant).await.unwrap();

        let policy = key_policy::custody(&roles, &["ab".repeat(48)]);
        let put = json!({"KeyId": arn, "PolicyName": "default", "Policy": policy.to_string(), "BypassPolicyLockoutSafetyCheck": true});
        admin.call("PutKeyPolicy", &put).await.unwrap();
        let err = check_custody_key(&mut admin, &arn, &policy).await.unwrap_err().to_string();
        assert!(err.contains("has grants"), "{err}");
        let (status, err) = instance.call_raw("Decrypt", &json!({"CiphertextBlob": blob})).await.unwrap();
        assert_eq!(status, 400);
        assert!(err["message"].as_str().unwrap().contains("explicit deny in a resource-based policy"), "{err}");
    }
}
