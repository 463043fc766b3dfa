//! The server-side SigV4 verifier against the signer AWS's SDKs use
//! (`aws-sigv4`), request by request: what it signs verifies, and a change
//! to any signed part after signing does not.

use std::time::SystemTime;

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use nekms_kms::sigv4::{Credential, SignedRequest, Verifier};
use time::OffsetDateTime;
use zeroize::Zeroizing;

const HOST: &str = "kms.eu-west-1.amazonaws.com";

fn credential(session_token: Option<&str>) -> Credential {
    Credential {
        access_key_id: "AKIDEXAMPLE".into(),
        secret_access_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into()),
        session_token: session_token.map(str::to_owned),
        expires: None,
        principal_arn: "arn:aws:iam::111122223333:user/peer".into(),
    }
}

/// Sign a KMS call with aws-sigv4 and return the headers as sent.
fn signed_by_aws_sigv4(target: &str, body: &[u8], session_token: Option<&str>) -> Vec<(String, String)> {
    let identity = aws_credential_types::Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token.map(str::to_owned),
        None,
        "test",
    )
    .into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name("kms")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let mut headers = vec![
        ("host".to_owned(), HOST.to_owned()),
        ("content-type".to_owned(), "application/x-amz-json-1.1".to_owned()),
        ("x-amz-target".to_owned(), target.to_owned()),
    ];
    let signable = SignableRequest::new(
        "POST",
        format!("https://{HOST}/"),
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    for (name, value) in instructions.headers() {
        headers.push((name.to_owned(), value.to_owned()));
    }
    headers
}

fn verify(headers: &[(String, String)], body: &[u8], cred: Credential) -> Result<String, &'static str> {
    let req = SignedRequest { method: "POST", path: "/", query: "", headers, body };
    Verifier::new("eu-west-1", "kms")
        .verify(&req, OffsetDateTime::now_utc(), |_| Some(cred))
        .map(|a| a.principal_arn)
        .map_err(|e| e.aws_type())
}

#[test]
fn what_aws_sigv4_signs_verifies() {
    let body = br#"{"KeyId":"alias/custody","Plaintext":"aGk="}"#;
    let headers = signed_by_aws_sigv4("TrentService.Encrypt", body, None);
    assert_eq!(verify(&headers, body, credential(None)).unwrap(), "arn:aws:iam::111122223333:user/peer");
    let headers = signed_by_aws_sigv4("TrentService.Encrypt", body, Some("session-token"));
    assert!(headers.iter().any(|(n, _)| n == "x-amz-security-token"));
    assert!(verify(&headers, body, credential(Some("session-token"))).is_ok());
}

#[test]
fn a_change_after_aws_sigv4_signed_is_refused() {
    let body = br#"{"KeyId":"alias/custody"}"#;
    let headers = signed_by_aws_sigv4("TrentService.DescribeKey", body, None);
    assert_eq!(verify(&headers, br#"{"KeyId":"alias/other!"}"#, credential(None)), Err("InvalidSignatureException"));
    let mut retargeted = headers.clone();
    retargeted.iter_mut().find(|(n, _)| n == "x-amz-target").unwrap().1 = "TrentService.ScheduleKeyDeletion".into();
    assert_eq!(verify(&retargeted, body, credential(None)), Err("InvalidSignatureException"));
    let mut other_secret = credential(None);
    other_secret.secret_access_key = Zeroizing::new("another secret".into());
    assert_eq!(verify(&headers, body, other_secret), Err("InvalidSignatureException"));
}
