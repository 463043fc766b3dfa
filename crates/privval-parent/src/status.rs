//! `nekms privval status`: what the enclave's signer reports for every
//! chain it holds, and the two lines a person reads for each.

use std::fmt;

use anyhow::bail;
use nekms_rpc::{Client, PrivvalRequest, PrivvalResponse, PrivvalStatus};

/// Every chain the signer holds (served or not), as it reports them.
pub async fn status(client: &Client) -> anyhow::Result<Vec<PrivvalStatus>> {
    let PrivvalResponse::Status(chains) = client.privval(PrivvalRequest::Status).await? else {
        bail!("the enclave answered Status with something else");
    };
    Ok(chains)
}

/// A chain's status as two lines, each ending in a newline: the key, the
/// version and the last signed state; then the counters and connections.
pub struct Report<'a>(pub &'a PrivvalStatus);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        writeln!(
            f,
            "{}: key {} ({}, {}), {}; last signed height {} round {} step {}; state record {} (acknowledged {}); freshness {}",
            c.chain_id,
            c.key_id,
            c.key_type,
            hex::encode(&c.public_key),
            c.protocol_version,
            c.height,
            c.round,
            c.step,
            c.counter,
            c.committed,
            if c.freshness == "local" { "local (none across enclave restarts: see the README)" } else { &c.freshness }
        )?;
        let refusals: Vec<String> = c.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(
            f,
            "  {} signatures ({} extensions), refusals: {}; {} connection(s) now, {} in all",
            c.signatures,
            c.extension_signatures,
            if refusals.is_empty() { "none".into() } else { refusals.join(", ") },
            c.connections,
            c.connections_total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> PrivvalStatus {
        PrivvalStatus {
            chain_id: "test-chain".into(),
            key_id: "validator-1".into(),
            key_fingerprint: "00".repeat(32),
            key_type: "ed25519".into(),
            public_key: vec![0xab, 0xcd],
            protocol_version: "v0.38".into(),
            served: true,
            height: 12,
            round: 1,
            step: 3,
            counter: 40,
            committed: 40,
            freshness: "local".into(),
            max_height: None,
            max_height_jump: 1_000_000,
            signatures: 30,
            extension_signatures: 10,
            refusals: Default::default(),
            store_failures: 0,
            connections: 1,
            connections_total: 2,
            latency_buckets: Vec::new(),
            latency_sum: 0.0,
            latency_count: 0,
        }
    }

    #[test]
    fn a_report_is_two_lines_and_says_local_mode_has_no_freshness() {
        assert_eq!(
            Report(&chain()).to_string(),
            "test-chain: key validator-1 (ed25519, abcd), v0.38; last signed height 12 round 1 step 3; state record 40 (acknowledged 40); \
             freshness local (none across enclave restarts: see the README)\n  \
             30 signatures (10 extensions), refusals: none; 1 connection(s) now, 2 in all\n"
        );
    }

    #[test]
    fn a_report_lists_refusals_by_reason() {
        let mut c = chain();
        c.freshness = "anchored".into();
        c.refusals = [("double-sign".to_string(), 2), ("regression".to_string(), 1)].into();
        let report = Report(&c).to_string();
        assert!(report.contains("; freshness anchored\n"), "{report}");
        assert!(report.contains("refusals: double-sign 2, regression 1;"), "{report}");
    }
}
