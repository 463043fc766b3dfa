use std::os::unix::fs::PermissionsExt;

use nekms_attestation::{Verifier, VerifyOptions};
use nekms_devworld::{DevDir, DevError};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_the_pki_with_private_files_at_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DevDir::new(tmp.path().join("dev"));
    let report = dir.init().unwrap();
    assert_eq!(report.created.len(), 8, "{report}");
    for private in ["root.key", "intermediate.key", "principals.toml", "aws/credentials", "tls-ca.key", "kms-tls.key", "image-signer.key"] {
        assert_eq!(mode(&dir.path().join(private)), 0o600, "{private}");
    }
    assert_eq!(mode(dir.path()), 0o700);
    assert!(dir.root_cert_path().ends_with("root.pem"));
    let config = dir.config().unwrap();
    assert!(config.instance_id.starts_with("i-0") && config.instance_id.len() == 19, "{}", config.instance_id);
}

#[test]
fn init_writes_three_principals_and_matching_aws_profiles() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DevDir::new(tmp.path());
    dir.init().unwrap();
    let principals = dir.principals().unwrap();
    let names: Vec<&str> = principals.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["root", "admin", "instance"]);
    assert_eq!(principals[0].arn, "arn:aws:iam::111122223333:root");
    let instance = &principals[2];
    assert!(instance.arn.starts_with("arn:aws:sts::111122223333:assumed-role/nekms-instance/i-0"), "{}", instance.arn);
    assert!(instance.session_token.is_some() && instance.access_key_id.starts_with("ASIA"));
    assert!(!format!("{instance:?}").contains(&instance.secret_access_key), "Debug must not show the secret");
    let credentials = std::fs::read_to_string(dir.aws_credentials_path()).unwrap();
    for p in &principals {
        assert!(credentials.contains(&format!(
            "[{}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            p.name, p.access_key_id, p.secret_access_key
        )));
    }
    let config = std::fs::read_to_string(dir.aws_config_path()).unwrap();
    assert!(
        config.contains("[profile instance]\nregion = us-east-1") && config.contains("endpoint_url = http://127.0.0.1:7700"),
        "{config}"
    );
    std::fs::set_permissions(dir.path().join("principals.toml"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(dir.principals(), Err(DevError::KeyPermissions { .. })));
}

#[test]
fn init_is_idempotent_and_keeps_existing_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DevDir::new(tmp.path());
    dir.init().unwrap();
    let root = std::fs::read(dir.path().join("root.key")).unwrap();
    let inter = std::fs::read(dir.path().join("intermediate.pem")).unwrap();
    let config = std::fs::read(dir.path().join("config.toml")).unwrap();
    let again = dir.init().unwrap();
    assert!(again.created.is_empty(), "{again}");
    assert_eq!(std::fs::read(dir.path().join("root.key")).unwrap(), root);
    assert_eq!(std::fs::read(dir.path().join("intermediate.pem")).unwrap(), inter);
    assert_eq!(std::fs::read(dir.path().join("config.toml")).unwrap(), config);
}

#[test]
fn a_lost_intermediate_is_recreated_under_the_same_root() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DevDir::new(tmp.path());
    dir.init().unwrap();
    let root = dir.root_pem().unwrap();
    std::fs::remove_file(dir.path().join("intermediate.key")).unwrap();
    let report = dir.init().unwrap();
    assert_eq!(report.created.len(), 1, "{report}");
    assert_eq!(dir.root_pem().unwrap(), root);
    // And documents signed through it still chain to the root.
    let signer = dir.document_signer().unwrap();
    let doc = signer
        .sign(
            nekms_attestation::pki::DocumentFields {
                module_id: "i-0-enc0".into(),
                pcrs: [(0, nekms_attestation::Pcr48::ZERO)].into(),
                ..Default::default()
            },
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    Verifier::from_pem(&root).unwrap().verify(&doc, &VerifyOptions::now()).unwrap();
}

#[test]
fn a_key_readable_by_others_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DevDir::new(tmp.path());
    dir.init().unwrap();
    let key = dir.path().join("intermediate.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = dir.document_signer().unwrap_err();
    assert!(matches!(err, DevError::KeyPermissions { mode: 0o644, .. }), "{err}");
}

#[test]
fn an_uninitialised_directory_says_how_to_fix_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = DevDir::new(tmp.path().join("nothing")).document_signer().unwrap_err();
    assert!(err.to_string().contains("nekms dev init --dir"), "{err}");
}
