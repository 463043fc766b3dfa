//! The audit log: one JSON line per request, in CloudTrail's shape.
//!
//! Fields follow CloudTrail's KMS events: `eventTime`, `eventName`,
//! `userIdentity.arn`, `sourceIPAddress`, `requestParameters` (never a
//! plaintext, ciphertext, signature or attestation document),
//! `errorCode`/`errorMessage`, and for requests with a Recipient,
//! `additionalEventData.recipient` with the document's module id, image
//! digest and PCRs. Each line is written with one `write` call and flushed
//! before the response is sent.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where audit lines go.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Append to `path` (created 0600).
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(AuditLog { path: path.to_owned(), file: Mutex::new(file) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one event. A failure to write is reported, never fatal to the request.
    pub fn write(&self, event: &Value) {
        let mut line = serde_json::to_vec(event).expect("JSON");
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!("cannot write the audit log {}: {e}", self.path.display());
        }
    }
}

/// The facts of one request, gathered while it is handled.
#[derive(Default)]
pub struct AuditFacts {
    pub request_parameters: Map<String, Value>,
    pub resources: Vec<String>,
    pub recipient: Option<Value>,
    /// The grant that allowed the request, when the policies alone did not.
    pub grant_id: Option<String>,
    pub read_only: bool,
}

/// Who sent a request, for the log.
pub struct Identity<'a> {
    pub arn: Option<&'a str>,
    pub account: &'a str,
    pub access_key_id: Option<&'a str>,
}

/// Build the CloudTrail-shaped event.
#[allow(clippy::too_many_arguments)]
pub fn event(
    time: OffsetDateTime,
    name: &str,
    region: &str,
    who: &Identity<'_>,
    source_ip: &str,
    user_agent: &str,
    request_id: &str,
    facts: &AuditFacts,
    error: Option<(&str, &str)>,
) -> Value {
    let identity_type = match who.arn {
        Some(a) if a.ends_with(":root") => "Root",
        Some(a) if a.contains(":assumed-role/") => "AssumedRole",
        Some(a) if a.contains(":role/") => "AssumedRole",
        Some(_) => "IAMUser",
        None => "Unknown",
    };
    let mut e = json!({
        "eventVersion": "1.08",
        "userIdentity": {
            "type": identity_type,
            "arn": who.arn,
            "accountId": who.account,
            "accessKeyId": who.access_key_id,
        },
        "eventTime": time.replace_nanosecond(0).unwrap_or(time).format(&Rfc3339).unwrap_or_default(),
        "eventSource": "kms.amazonaws.com",
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": source_ip,
        "userAgent": user_agent,
        "requestParameters": if facts.request_parameters.is_empty() { Value::Null } else { Value::Object(facts.request_parameters.clone()) },
        "responseElements": Value::Null,
        "requestID": request_id,
        "eventID": crate::service::uuid(),
        "readOnly": facts.read_only,
        "resources": facts.resources.iter().map(|arn| json!({"accountId": who.account, "type": "AWS::KMS::Key", "ARN": arn})).collect::<Vec<_>>(),
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": who.account,
        "eventCategory": "Management",
    });
    if let Some((code, message)) = error {
        e["errorCode"] = code.into();
        e["errorMessage"] = message.into();
    }
    if let Some(r) = &facts.recipient {
        e["additionalEventData"] = json!({ "recipient": r });
    }
    if let Some(g) = &facts.grant_id {
        e["additionalEventData"]["grantId"] = g.clone().into();
    }
    e
}

/// One line of `nekms dev kms audit`: time, operation, caller, key, outcome,
/// and the recipient's image when there was one.
pub fn render(event: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let caller = event["userIdentity"]["arn"].as_str().map(short_arn).unwrap_or_else(|| "(unauthenticated)".into());
    let key = event["resources"].get(0).and_then(|r| r["ARN"].as_str()).map(short_arn).unwrap_or_else(|| "-".into());
    let outcome = match event["errorCode"].as_str() {
        Some(
            code @ ("AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignatureException"
            | "MissingAuthenticationTokenException"
            | "ExpiredTokenException"),
        ) => {
            format!("DENIED {code}: {}", s(&event["errorMessage"]))
        }
        Some(code) => format!("FAILED {code}: {}", s(&event["errorMessage"])),
        None => "ok".into(),
    };
    let mut line = format!("{}  {:<22} {:<40} {:<44} {}", s(&event["eventTime"]), s(&event["eventName"]), caller, key, outcome);
    if let Some(r) = event["additionalEventData"]["recipient"].as_object() {
        let image = r.get("attestationDocumentEnclaveImageDigest").and_then(Value::as_str).unwrap_or("-");
        let module = r.get("attestationDocumentModuleId").and_then(Value::as_str).unwrap_or("-");
        line.push_str(&format!("\n    recipient {module} image {}…", &image[..image.len().min(16)]));
        if let Some(note) = r.get("nekmsNote").and_then(Value::as_str) {
            line.push_str(&format!("\n    WARNING {note}"));
        }
    }
    line
}

fn short_arn(arn: &str) -> String {
    arn.rsplit_once(':').map(|(_, tail)| tail.to_owned()).unwrap_or_else(|| arn.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_cloudtrail_fields_and_render_in_one_readable_line() {
        let mut facts = AuditFacts::default();
        facts.request_parameters.insert("keyId".into(), "alias/x".into());
        facts.resources.push("arn:aws:kms:us-east-1:111122223333:key/k1".into());
        facts.recipient =
            Some(json!({"attestationDocumentModuleId": "i-0abc-enc0123", "attestationDocumentEnclaveImageDigest": "ab".repeat(48)}));
        let who = Identity {
            arn: Some("arn:aws:sts::111122223333:assumed-role/nekms-instance/i-0abc"),
            account: "111122223333",
            access_key_id: Some("ASIAX"),
        };
        let at = time::macros::datetime!(2026-11-23 10:00:00.123 UTC);
        let e = event(at, "Decrypt", "us-east-1", &who, "127.0.0.1", "test", "rid", &facts, Some(("AccessDeniedException", "no")));
        assert_eq!(e["eventTime"], "2026-11-23T10:00:00Z");
        assert_eq!(e["userIdentity"]["type"], "AssumedRole");
        assert_eq!(e["resources"][0]["ARN"], "arn:aws:kms:us-east-1:111122223333:key/k1");
        assert_eq!(e["additionalEventData"]["recipient"]["attestationDocumentModuleId"], "i-0abc-enc0123");
        let line = render(&e);
        assert!(line.starts_with("2026-11-23T10:00:00Z  Decrypt"), "{line}");
        assert!(
            line.contains("assumed-role/nekms-instance/i-0abc") && line.contains("key/k1") && line.contains("DENIED AccessDeniedException"),
            "{line}"
        );
        assert!(line.contains("recipient i-0abc-enc0123 image abababababababab"), "{line}");
        let debug = AuditFacts {
            recipient: Some(json!({"attestationDocumentModuleId": "m", "attestationDocumentEnclaveImageDigest": "00".repeat(48),
                                   "nekmsNote": "debug-mode document: all-zero PCRs"})),
            ..AuditFacts::default()
        };
        let line = render(&event(at, "Decrypt", "us-east-1", &who, "127.0.0.1", "t", "r", &debug, None));
        assert!(line.contains("WARNING debug-mode document"), "{line}");
        let ok = event(at, "GenerateRandom", "us-east-1", &who, "127.0.0.1", "t", "r", &AuditFacts::default(), None);
        assert!(ok.get("errorCode").is_none());
        assert!(render(&ok).ends_with(" ok"));
        let failed =
            event(at, "Encrypt", "us-east-1", &who, "1", "t", "r", &AuditFacts::default(), Some(("ValidationException", "too long")));
        assert!(render(&failed).contains("FAILED ValidationException: too long"));
    }
}
