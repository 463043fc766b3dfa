//! What `dev up` decides before it starts the enclave: which program runs
//! it, the measured configuration it writes (`DIR/up/enclave.toml`), the
//! anchor's endpoint for its proxy, and where PKCS#11's pieces are.

use std::path::PathBuf;

use super::Options;

/// The enclave program: `nekms-enclave` beside this executable, else this executable's `dev enclave`.
pub(super) fn enclave_program() -> anyhow::Result<(PathBuf, Vec<String>)> {
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("nekms-enclave");
    if beside.is_file() {
        return Ok((beside, Vec::new()));
    }
    Ok((me, vec!["dev".into(), "enclave".into()]))
}

/// nekms-enclave's measured configuration, pinning the custody key `arn`.
pub(super) fn enclave_toml(arn: &str, o: &Options, region: &str) -> String {
    let mut text = String::from("# nekms-enclave's measured configuration, written by nekms dev up: PCR0 covers it.\n");
    text.push_str(&crate::custody::trust_toml(&[arn], &[]));
    if o.by_signer() {
        text.push_str("custody-trust = \"pcr8\"\n");
    }
    text.push_str(&format!("parent-decrypt = {}\n", !o.no_parent_decrypt));
    text.push_str(&format!("allow-import = {}\n", !o.no_import));
    if let (Some(t), Some(e)) = (&o.privval_anchor_table, &o.privval_anchor_endpoint) {
        text.push_str(&format!("privval-anchor-table = {t:?}\nprivval-anchor-endpoint = {e:?}\nprivval-anchor-region = {region:?}\n"));
    }
    if let Some(j) = o.privval_max_height_jump {
        text.push_str(&format!("privval-max-height-jump = {j}\n"));
    }
    if !o.migration_approvers.is_empty() {
        let list = o.migration_approvers.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
        text.push_str(&format!("migration-approvers = [{list}]\n"));
    }
    if let Some(t) = o.migration_threshold {
        text.push_str(&format!("migration-threshold = {t}\n"));
    }
    text
}

/// The host and port of the anchor's endpoint (http or https), for its proxy.
pub(super) fn anchor_host_port(endpoint: &str) -> Result<(String, u16), String> {
    let url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {}: http or https", url.scheme()));
    }
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
    Ok((host.to_owned(), url.port_or_known_default().ok_or("no port")?))
}

/// libnekms_p11.so: `$NEKMS_P11_MODULE`, else beside this executable; if it exists.
pub(super) fn p11_module() -> Option<PathBuf> {
    std::env::var_os("NEKMS_P11_MODULE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("libnekms_p11.so"))))
        .filter(|m| m.exists())
}

/// The first `name` on PATH.
pub(super) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_anchor_endpoint_gives_its_host_and_port_or_the_scheme_default() {
        assert_eq!(anchor_host_port("http://127.0.0.1:5000"), Ok(("127.0.0.1".into(), 5000)));
        assert_eq!(anchor_host_port("https://dynamodb.us-east-1.amazonaws.com"), Ok(("dynamodb.us-east-1.amazonaws.com".into(), 443)));
        assert_eq!(anchor_host_port("ftp://example.com"), Err("scheme ftp: http or https".into()));
        assert!(anchor_host_port("not a url").is_err());
    }

    #[test]
    fn the_measured_configuration_pins_the_key_and_says_what_the_flags_turned_off() {
        let o = Options { no_import: true, privval_max_height_jump: Some(50), trust_by_image: true, ..Options::default() };
        let text = enclave_toml("arn:aws:kms:us-east-1:111122223333:key/k", &o, "us-east-1");
        assert!(text.contains("custody-kms-keys = [\"arn:aws:kms:us-east-1:111122223333:key/k\"]\n"), "{text}");
        assert!(text.contains("parent-decrypt = true\nallow-import = false\n"), "{text}");
        assert!(text.contains("privval-max-height-jump = 50\n") && !text.contains("privval-anchor"), "{text}");
        assert!(!text.contains("custody-trust"), "{text}");
        assert!(enclave_toml("arn:aws:kms:us-east-1:111122223333:key/k", &Options::default(), "us-east-1")
            .contains("custody-trust = \"pcr8\"\n"));
    }
}
