//! `/metrics`: Prometheus text. The agent's own counters (requests by route,
//! method and status; errors by code; latency histograms), filled by the
//! [`track`] middleware, and the enclave's (the opened-key cache, the
//! validator signer per chain), asked for on each scrape.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::errors::ErrorLabel;
use crate::state::Shared;

/// Counters and histograms for /metrics.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    errors: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

const BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// Count every request by its route (the pattern, not the path), method,
/// status and error code, and time it.
pub(crate) async fn track(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let start = Instant::now();
    let response = next.run(request).await;
    let elapsed = start.elapsed().as_secs_f64();
    let m = &state.metrics;
    *m.requests.lock().unwrap_or_else(|p| p.into_inner()).entry((route.clone(), method, response.status().as_u16())).or_default() += 1;
    if let Some(ErrorLabel(code)) = response.extensions().get::<ErrorLabel>() {
        *m.errors.lock().unwrap_or_else(|p| p.into_inner()).entry((route.clone(), code)).or_default() += 1;
    }
    let mut latency = m.latency.lock().unwrap_or_else(|p| p.into_inner());
    let h = latency.entry(route).or_default();
    for (i, b) in BUCKETS.iter().enumerate() {
        if elapsed <= *b {
            h.counts[i] += 1;
        }
    }
    h.sum += elapsed;
    h.count += 1;
    response
}

/// A Prometheus label value, escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub(crate) async fn metrics(State(state): State<Shared>) -> Response {
    let mut out = String::new();
    out.push_str(
        "# HELP nekms_agent_requests_total HTTP requests served, by route, method and status.\n# TYPE nekms_agent_requests_total counter\n",
    );
    for ((route, method, status), n) in state.metrics.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!("nekms_agent_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {n}\n", label(route)));
    }
    out.push_str(
        "# HELP nekms_agent_errors_total Requests that failed, by route and error code.\n# TYPE nekms_agent_errors_total counter\n",
    );
    for ((route, code), n) in state.metrics.errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        out.push_str(&format!("nekms_agent_errors_total{{route=\"{}\",code=\"{code}\"}} {n}\n", label(route)));
    }
    out.push_str(
        "# HELP nekms_agent_request_duration_seconds Time to answer, by route.\n# TYPE nekms_agent_request_duration_seconds histogram\n",
    );
    for (route, h) in state.metrics.latency.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let r = label(route);
        for (i, b) in BUCKETS.iter().enumerate() {
            out.push_str(&format!("nekms_agent_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}\n", h.counts[i]));
        }
        out.push_str(&format!("nekms_agent_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}\n", h.count));
        out.push_str(&format!("nekms_agent_request_duration_seconds_sum{{route=\"{r}\"}} {}\n", h.sum));
        out.push_str(&format!("nekms_agent_request_duration_seconds_count{{route=\"{r}\"}} {}\n", h.count));
    }
    let described = state.enclave.call(|c| async move { c.describe().await }).await.ok();
    let (cache, audit) = described.map_or((None, None), |d| (d.key_cache, d.audit));
    if let Some(a) = audit {
        out.push_str(
            "# HELP nekms_audit_records_total Lines the enclave wrote to its audit trail.\n# TYPE nekms_audit_records_total counter\n",
        );
        out.push_str(&format!("nekms_audit_records_total {}\n", a.written));
        out.push_str(
            "# HELP nekms_audit_lost_total Audit lines the enclave dropped because the parent did not take them.\n# TYPE nekms_audit_lost_total counter\n",
        );
        out.push_str(&format!("nekms_audit_lost_total {}\n", a.lost));
    }
    out.push_str("# HELP nekms_enclave_up Whether the enclave answered Describe.\n# TYPE nekms_enclave_up gauge\n");
    out.push_str(&format!("nekms_enclave_up {}\n", cache.is_some() as u8));
    if let Some(c) = cache {
        out.push_str("# HELP nekms_enclave_key_cache_hits_total Signatures made with an already opened key.\n# TYPE nekms_enclave_key_cache_hits_total counter\n");
        out.push_str(&format!("nekms_enclave_key_cache_hits_total {}\n", c.hits));
        out.push_str("# HELP nekms_enclave_key_cache_misses_total Signatures that had to open the record (KMS Decrypt).\n# TYPE nekms_enclave_key_cache_misses_total counter\n");
        out.push_str(&format!("nekms_enclave_key_cache_misses_total {}\n", c.misses));
        out.push_str("# HELP nekms_enclave_key_cache_entries Opened keys held now.\n# TYPE nekms_enclave_key_cache_entries gauge\n");
        out.push_str(&format!("nekms_enclave_key_cache_entries {}\n", c.entries));
    }
    if let Ok(nekms_rpc::PrivvalResponse::Status(chains)) =
        state.enclave.call(|c| async move { c.privval(nekms_rpc::PrivvalRequest::Status).await }).await
    {
        privval_metrics(&mut out, &chains);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The validator signer's figures, per chain (tmkms #692's list).
fn privval_metrics(out: &mut String, chains: &[nekms_rpc::PrivvalStatus]) {
    let gauge = |out: &mut String, name: &str, help: &str, kind: &str, value: &dyn Fn(&nekms_rpc::PrivvalStatus) -> String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for c in chains {
            out.push_str(&format!("{name}{{chain_id=\"{}\"}} {}\n", label(&c.chain_id), value(c)));
        }
    };
    gauge(out, "nekms_privval_last_height", "Last signed height (or the height the state starts at).", "gauge", &|c| c.height.to_string());
    gauge(out, "nekms_privval_last_round", "Last signed round.", "gauge", &|c| c.round.to_string());
    gauge(out, "nekms_privval_last_step", "Last signed step: 0 none, 1 proposal, 2 prevote, 3 precommit.", "gauge", &|c| {
        c.step.to_string()
    });
    gauge(out, "nekms_privval_signatures_total", "Consensus signatures released.", "counter", &|c| c.signatures.to_string());
    gauge(out, "nekms_privval_extension_signatures_total", "Vote-extension signatures released.", "counter", &|c| {
        c.extension_signatures.to_string()
    });
    gauge(out, "nekms_privval_store_failures_total", "State commits that failed (nothing released for them).", "counter", &|c| {
        c.store_failures.to_string()
    });
    gauge(out, "nekms_privval_state_uncommitted", "1 while the newest state has not been acknowledged by the store.", "gauge", &|c| {
        ((c.counter > c.committed) as u8).to_string()
    });
    gauge(out, "nekms_privval_connections", "Validator connections open now.", "gauge", &|c| c.connections.to_string());
    gauge(out, "nekms_privval_connections_total", "Validator connections accepted.", "counter", &|c| c.connections_total.to_string());
    out.push_str("# HELP nekms_privval_refusals_total Requests refused, by reason.\n# TYPE nekms_privval_refusals_total counter\n");
    for c in chains {
        for (reason, n) in &c.refusals {
            out.push_str(&format!(
                "nekms_privval_refusals_total{{chain_id=\"{}\",reason=\"{}\"}} {n}\n",
                label(&c.chain_id),
                label(reason)
            ));
        }
    }
    out.push_str("# HELP nekms_privval_sign_duration_seconds Time from request to signed reply inside the enclave (state commit included).\n# TYPE nekms_privval_sign_duration_seconds histogram\n");
    for c in chains {
        let chain = label(&c.chain_id);
        for (le, n) in &c.latency_buckets {
            out.push_str(&format!("nekms_privval_sign_duration_seconds_bucket{{chain_id=\"{chain}\",le=\"{le}\"}} {n}\n"));
        }
        out.push_str(&format!("nekms_privval_sign_duration_seconds_bucket{{chain_id=\"{chain}\",le=\"+Inf\"}} {}\n", c.latency_count));
        out.push_str(&format!("nekms_privval_sign_duration_seconds_sum{{chain_id=\"{chain}\"}} {}\n", c.latency_sum));
        out.push_str(&format!("nekms_privval_sign_duration_seconds_count{{chain_id=\"{chain}\"}} {}\n", c.latency_count));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label("/v1/keys/{name}/sign"), "/v1/keys/{name}/sign");
    }
}
