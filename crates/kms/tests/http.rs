//! The wire protocol with a hand-written HTTP client: SigV4 failures and
//! bad input get the exception types AWS returns, and the server survives.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::LocalKms;
use nekms_kms::sigv4::{self, Credential};
use time::OffsetDateTime;
use zeroize::Zeroizing;

struct Reply {
    status: u16,
    headers: String,
    body: serde_json::Value,
}

impl Reply {
    fn kind(&self) -> &str {
        self.body["__type"].as_str().unwrap_or("")
    }
}

fn credential(kms: &LocalKms, profile: &str) -> Credential {
    nekms_kms::dev_credential(&kms.dev().principals().unwrap().into_iter().find(|p| p.name == profile).unwrap())
}

fn addr(kms: &LocalKms) -> String {
    kms.http.trim_start_matches("http://").to_owned()
}

fn signed_headers(kms: &LocalKms, target: &str, body: &[u8], cred: &Credential, at: OffsetDateTime) -> Vec<(String, String)> {
    let mut headers = vec![
        ("host".to_owned(), addr(kms)),
        ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
        ("x-amz-target".to_owned(), format!("TrentService.{target}")),
    ];
    sigv4::sign("POST", "/", "", &mut headers, body, cred, "us-east-1", "kms", at);
    headers
}

fn send_raw(kms: &LocalKms, head: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr(kms)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers[9..12].parse().unwrap();
    Reply { status, headers: headers.to_ascii_lowercase(), body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null) }
}

fn send(kms: &LocalKms, headers: &[(String, String)], body: &[u8]) -> Reply {
    let mut head = String::from("POST / HTTP/1.1\r\nconnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    send_raw(kms, &head, body)
}

fn call(kms: &LocalKms, profile: &str, target: &str, body: &str) -> Reply {
    let cred = credential(kms, profile);
    let headers = signed_headers(kms, target, body.as_bytes(), &cred, OffsetDateTime::now_utc());
    send(kms, &headers, body.as_bytes())
}

#[test]
fn sigv4_failures_get_the_error_types_aws_returns() {
    let kms = LocalKms::start();
    let body = br#"{"NumberOfBytes": 16}"#;
    let now = OffsetDateTime::now_utc();
    let good = credential(&kms, "admin");

    let ok = send(&kms, &signed_headers(&kms, "GenerateRandom", body, &good, now), body);
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert!(
        ok.headers.contains("x-amzn-requestid: ")
            && ok.headers.contains("content-type: application/x-amz-json-1.1")
            && ok.headers.contains("\r\ndate: ")
    );

    let mut wrong_secret = good.clone();
    wrong_secret.secret_access_key = Zeroizing::new("not the secret".into());
    let r = send(&kms, &signed_headers(&kms, "GenerateRandom", body, &wrong_secret, now), body);
    assert_eq!((r.status, r.kind()), (400, "InvalidSignatureException"), "{:?}", r.body);
    assert!(r.body["message"].as_str().unwrap().contains("does not match"));

    let mut unknown = good.clone();
    unknown.access_key_id = "AKIAUNKNOWNUNKNOWN00".into();
    let r = send(&kms, &signed_headers(&kms, "GenerateRandom", body, &unknown, now), body);
    assert_eq!((r.status, r.kind()), (400, "UnrecognizedClientException"));

    let r = send(&kms, &signed_headers(&kms, "GenerateRandom", body, &good, now - time::Duration::minutes(6)), body);
    assert_eq!(r.kind(), "InvalidSignatureException");
    assert!(r.body["message"].as_str().unwrap().starts_with("Signature expired"), "{:?}", r.body);
    let r = send(&kms, &signed_headers(&kms, "GenerateRandom", body, &good, now + time::Duration::minutes(6)), body);
    assert!(r.body["message"].as_str().unwrap().starts_with("Signature not yet current"), "{:?}", r.body);

    let headers = signed_headers(&kms, "GenerateRandom", body, &good, now);
    let r = send(&kms, &headers, br#"{"NumberOfBytes": 17}"#);
    assert_eq!(r.kind(), "InvalidSignatureException", "body changed after signing");

    // A signed header that was not sent; then a required header left unsigned.
    let mut missing = headers.clone();
    missing.retain(|(n, _)| n != "x-amz-target");
    let r = send(&kms, &missing, body);
    assert_eq!(r.kind(), "IncompleteSignatureException", "{:?}", r.body);
    let mut unsigned_host = vec![
        ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
        ("x-amz-target".to_owned(), "TrentService.GenerateRandom".to_owned()),
    ];
    sigv4::sign("POST", "/", "", &mut unsigned_host, body, &good, "us-east-1", "kms", now);
    unsigned_host.push(("host".into(), addr(&kms)));
    let r = send(&kms, &unsigned_host, body);
    assert_eq!(r.kind(), "IncompleteSignatureException", "{:?}", r.body);

    let r = send(&kms, &[("host".into(), addr(&kms)), ("x-amz-target".into(), "TrentService.GenerateRandom".into())], body);
    assert_eq!((r.status, r.kind()), (400, "MissingAuthenticationTokenException"));

    // The instance's temporary credential without its session token.
    let mut no_token = credential(&kms, "instance");
    no_token.session_token = None;
    let r = send(&kms, &signed_headers(&kms, "GenerateRandom", body, &no_token, now), body);
    assert_eq!(r.kind(), "UnrecognizedClientException");

    // Scope: another region or service.
    let mut h = vec![("host".to_owned(), addr(&kms)), ("x-amz-target".to_owned(), "TrentService.GenerateRandom".to_owned())];
    sigv4::sign("POST", "/", "", &mut h, body, &good, "eu-west-1", "kms", now);
    assert_eq!(send(&kms, &h, body).kind(), "InvalidSignatureException");

    // Every refusal is in the audit log, unauthenticated ones without a caller.
    let lines = kms.audit_lines();
    assert!(lines.iter().any(|l| l["errorCode"] == "UnrecognizedClientException" && l["userIdentity"]["arn"].is_null()));
}

#[test]
fn the_unix_socket_serves_the_same_protocol() {
    use std::os::unix::net::UnixStream;
    let kms = LocalKms::start();
    let body = br#"{"NumberOfBytes": 12}"#;
    let headers = signed_headers(&kms, "GenerateRandom", body, &credential(&kms, "instance"), OffsetDateTime::now_utc());
    let mut head = String::from("POST / HTTP/1.1\r\nconnection: close\r\n");
    for (n, v) in &headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut s = UnixStream::connect(kms.dir.path().join("kms.sock")).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let json: serde_json::Value = serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap();
    let random = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, json["Plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(random.len(), 12);
    assert!(kms.audit_lines().iter().any(|l| l["sourceIPAddress"] == "unix"));
}

#[test]
fn bad_input_gets_the_right_exception_and_changes_nothing() {
    let kms = LocalKms::start();
    let cases: &[(&str, &str, &str)] = &[
        ("GenerateRandom", "{not json", "SerializationException"),
        ("GenerateRandom", "[1, 2]", "SerializationException"),
        ("GenerateRandom", r#"{"NumberOfBytes": "16"}"#, "SerializationException"),
        ("GenerateRandom", r#"{"NumberOfBytes": 0}"#, "ValidationException"),
        ("GenerateRandom", r#"{"NumberOfBytes": 1025}"#, "ValidationException"),
        ("GenerateRandom", r#"{"NumberOfBytes": 1e400}"#, "SerializationException"),
        ("GenerateRandom", "{}", "ValidationException"),
        ("NoSuchOperation", "{}", "UnknownOperationException"),
        ("Encrypt", r#"{"KeyId": "alias/none", "Plaintext": "aGk="}"#, "NotFoundException"),
        ("Encrypt", r#"{"KeyId": "alias/none", "Plaintext": "!!!not base64"}"#, "SerializationException"),
        ("Decrypt", r#"{"CiphertextBlob": "aGVsbG8gd29ybGQ="}"#, "InvalidCiphertextException"),
        ("Decrypt", r#"{"CiphertextBlob": "AAAA", "GrantTokens": ["x"]}"#, "InvalidGrantTokenException"),
        ("CreateKey", r#"{"KeySpec": "ECC_NIST_P999"}"#, "ValidationException"),
        ("CreateKey", r#"{"KeySpec": "ECC_NIST_P256"}"#, "ValidationException"),
        ("CreateKey", r#"{"Policy": "{\"Statement\": 5}"}"#, "MalformedPolicyDocumentException"),
        ("CreateAlias", r#"{"AliasName": "noprefix", "TargetKeyId": "x"}"#, "ValidationException"),
        ("ListKeys", r#"{"Limit": 1001}"#, "ValidationException"),
        ("ListKeys", r#"{"Marker": "zzz"}"#, "InvalidMarkerException"),
    ];
    for (target, body, want) in cases {
        let r = call(&kms, "admin", target, body);
        assert_eq!((r.status, r.kind()), (400, *want), "{target} {body}: {:?}", r.body);
        assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()), "{target} {body}");
    }
    // Nothing was created by any of them.
    let keys = call(&kms, "admin", "ListKeys", "{}");
    assert_eq!(keys.body["Keys"].as_array().unwrap().len(), 0);

    // Oversized bodies are refused before they are read.
    let head = format!("POST / HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: 104857600\r\n\r\n", addr(&kms));
    let r = send_raw(&kms, &head, b"");
    assert_eq!((r.status, r.kind()), (413, "RequestEntityTooLarge"));
    let big = format!(r#"{{"Plaintext": "{}"}}"#, "A".repeat(300 * 1024));
    let head = format!("POST / HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n", addr(&kms));
    let chunked = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    assert_eq!(send_raw(&kms, &head, chunked.as_bytes()).status, 413);
    // Not POST /.
    let head = format!("GET /keys HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", addr(&kms));
    assert_eq!(send_raw(&kms, &head, b"").kind(), "UnknownOperationException");

    // Still serving.
    assert_eq!(call(&kms, "admin", "GenerateRandom", r#"{"NumberOfBytes": 8}"#).status, 200);
    let key = call(&kms, "admin", "CreateKey", "{}");
    let arn = key.body["KeyMetadata"]["Arn"].as_str().unwrap().to_owned();
    // Errors never carry plaintext.
    let r = call(&kms, "admin", "Encrypt", &format!(r#"{{"KeyId": "{arn}", "Plaintext": "{}"}}"#, "c2VjcmV0".repeat(1000)));
    assert_eq!(r.kind(), "ValidationException");
    assert!(!r.body["message"].as_str().unwrap().contains("c2VjcmV0"));
}
