//! Any request body for any read-only, cryptographic or grant KMS operation, as an
//! authenticated caller: a KMS error or a response, never a panic. The
//! state holds a symmetric, a signing and a key-agreement key (aliases
//! alias/sym, alias/sig, alias/ka) so inputs can reach the cryptography.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nekms_kms::audit::AuditFacts;
use nekms_kms::service::{Caller, Kms};

const OPS: &[&str] = &[
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateRandom",
    "DescribeKey",
    "ListKeys",
    "ListAliases",
    "GetKeyPolicy",
    "Sign",
    "Verify",
    "GetPublicKey",
    "DeriveSharedSecret",
    "ListResourceTags",
    "GetKeyRotationStatus",
    "ListKeyPolicies",
    "CreateGrant",
    "ListGrants",
    "ListRetirableGrants",
    "RetireGrant",
    "RevokeGrant",
    "NoSuchOperation",
];

fn kms() -> &'static (Kms, Caller) {
    static KMS: OnceLock<(Kms, Caller)> = OnceLock::new();
    KMS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("nekms-fuzz-kms-{}", std::process::id()));
        let dev = nekms_devworld::DevDir::new(&dir);
        dev.init().unwrap();
        let mut config = nekms_kms::run::config_from_dev(&dev, true, Duration::from_secs(300)).unwrap();
        config.principals = HashMap::new();
        let kms = Kms::open(&dir.join("kms"), config).unwrap();
        let caller = Caller {
            principal_arn: "arn:aws:iam::111122223333:root".into(),
            access_key_id: "AKIAFUZZ".into(),
            source_ip: "127.0.0.1".into(),
            secure_transport: true,
        };
        let now = time::OffsetDateTime::now_utc();
        for (body, alias) in [
            ("{}", "alias/sym"),
            (r#"{"KeyUsage": "SIGN_VERIFY", "KeySpec": "ECC_NIST_P256"}"#, "alias/sig"),
            (r#"{"KeyUsage": "KEY_AGREEMENT", "KeySpec": "ECC_NIST_P256"}"#, "alias/ka"),
        ] {
            let created = kms.call("CreateKey", &caller, body.as_bytes(), now, &mut AuditFacts::default()).unwrap();
            let id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
            let alias = format!(r#"{{"AliasName": "{alias}", "TargetKeyId": "{id}"}}"#);
            let _ = kms.call("CreateAlias", &caller, alias.as_bytes(), now, &mut AuditFacts::default());
        }
        (kms, caller)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, body)) = data.split_first() else { return };
    let (kms, caller) = kms();
    let op = OPS[op as usize % OPS.len()];
    let mut facts = AuditFacts::default();
    if let Err(e) = kms.call(op, caller, body, time::OffsetDateTime::now_utc(), &mut facts) {
        assert!(!e.kind.is_empty() && !e.message.is_empty());
        assert_ne!(e.kind, "KMSInternalException", "{op}: {e}");
    }
});
