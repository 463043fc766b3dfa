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
    assert_eq!(report.created.len(), 3, "{report}");
    assert_eq!(mode(&dir.path().join("root.key")), 0o600);
    assert_eq!(mode(&dir.path().join("intermediate.key")), 0o600);
    assert_eq!(mode(dir.path()), 0o700);
    assert!(dir.root_cert_path().ends_with("root.pem"));
    let config = dir.config().unwrap();
    assert!(config.instance_id.starts_with("i-0") && config.instance_id.len() == 19, "{}", config.instance_id);
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
