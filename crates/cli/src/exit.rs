//! The exit codes of every `nekms` command (docs/commands.md#exit-codes):
//!
//! | code | class | e.g. |
//! |---|---|---|
//! | 0 | success | |
//! | 1 | internal or unclassified | a bug (a panic), an answer nekms cannot read |
//! | 2 | usage | an unknown flag, a missing or contradictory argument |
//! | 3 | not found | no such key in the store, no such file |
//! | 4 | refused by a rule | the enclave's `rule NAME`, KMS's AccessDenied, a wrong or locked PIN |
//! | 5 | verification failed | a signature, a document, an origin or an approval that does not verify |
//! | 6 | unavailable, worth retrying | the enclave, KMS, the proxy or the store unreachable, no credentials yet |
//!
//! A command says its class where it knows it ([`Classified`]); otherwise
//! the error chain is read: the enclave's error codes, KMS's exceptions,
//! I/O error kinds. A reader that goes away (`nekms ... | head -1`) ends
//! the command quietly, as SIGPIPE would.

use nekms_rpc::{ClientError, ErrorCode, RpcError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Internal = 1,
    Usage = 2,
    NotFound = 3,
    Refused = 4,
    VerificationFailed = 5,
    Unavailable = 6,
}

/// An error a command classified itself.
#[derive(Debug)]
pub struct Classified {
    pub class: Class,
    pub message: String,
}

impl std::fmt::Display for Classified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

pub fn error(class: Class, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified { class, message: message.into() })
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    error(Class::Usage, message)
}

pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    error(Class::NotFound, message)
}

/// Mark an error (with its whole chain kept in the message) as a failed verification.
pub fn verification(e: anyhow::Error) -> anyhow::Error {
    error(Class::VerificationFailed, format!("{e:#}"))
}

fn of_rpc(e: &RpcError) -> Class {
    match e.code {
        ErrorCode::Refused => Class::Refused,
        ErrorCode::RecordRejected => Class::VerificationFailed,
        ErrorCode::BadRequest => Class::Usage,
        ErrorCode::Unavailable | ErrorCode::NoCredentials | ErrorCode::CredentialsExpired => Class::Unavailable,
        ErrorCode::Kms => of_kms(e.kms_code.as_deref().unwrap_or_default()),
        // CKR_PIN_INCORRECT, CKR_PIN_LOCKED, CKR_USER_NOT_LOGGED_IN, CKR_KEY_FUNCTION_NOT_PERMITTED.
        ErrorCode::Pkcs11 if matches!(e.pkcs11, Some(0xA0 | 0xA4 | 0x101 | 0x68)) => Class::Refused,
        ErrorCode::Pkcs11 if matches!(e.pkcs11, Some(0x03 | 0x60 | 0xB3 | 0xE0)) => Class::NotFound,
        ErrorCode::Pkcs11 | ErrorCode::Attestation | ErrorCode::Internal => Class::Internal,
    }
}

fn of_kms(exception: &str) -> Class {
    match exception.trim_end_matches("Exception") {
        "AccessDenied" | "Disabled" | "KMSInvalidState" | "IncorrectKey" | "InvalidGrantToken" => Class::Refused,
        "NotFound" => Class::NotFound,
        "KMSInternal" | "DependencyTimeout" | "Throttling" | "LimitExceeded" | "KeyUnavailable" => Class::Unavailable,
        "UnrecognizedClient" | "ExpiredToken" | "InvalidSignature" => Class::Refused,
        "Validation" | "InvalidCiphertext" | "InvalidKeyUsage" | "InvalidArn" => Class::Usage,
        _ => Class::Internal,
    }
}

fn of_io(e: &std::io::Error) -> Option<Class> {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => Some(Class::NotFound),
        K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::TimedOut | K::BrokenPipe | K::AddrNotAvailable => {
            Some(Class::Unavailable)
        }
        K::PermissionDenied => Some(Class::Refused),
        _ => None,
    }
}

/// The class of a command's error.
pub fn classify(e: &anyhow::Error) -> Class {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<Classified>() {
            return c.class;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Connect { .. } | ClientError::Closed(_) | ClientError::Deadline(_) => Class::Unavailable,
                ClientError::Handshake(why) if why.contains("below 1024") => Class::Refused,
                // A protocol or version mismatch: retrying will not help.
                ClientError::Handshake(_) => Class::Internal,
                ClientError::TooLarge { .. } => Class::Usage,
                ClientError::Unexpected { .. } => Class::Internal,
                ClientError::Remote(r) => of_rpc(r),
            };
        }
        if let Some(r) = cause.downcast_ref::<RpcError>() {
            return of_rpc(r);
        }
        if let Some(s) = cause.downcast_ref::<nekms_store::StoreError>() {
            use nekms_store::StoreError as S;
            return match s {
                S::Missing(_) => Class::NotFound,
                S::Unavailable(_) => Class::Unavailable,
                S::Exists(_) | S::PendingDeletion { .. } => Class::Refused,
                S::Corrupt { .. } => Class::VerificationFailed,
                S::Backend(_) => Class::Internal,
            };
        }
        if let Some(class) = cause.downcast_ref::<std::io::Error>().and_then(of_io) {
            return class;
        }
    }
    // Errors carried as text on their way here: the enclave's refusals always name their rule.
    let text = format!("{e:#}");
    if text.contains("rule ") {
        Class::Refused
    } else if text.contains("cannot connect to") {
        Class::Unavailable
    } else {
        Class::Internal
    }
}

/// A panic is an internal error (exit 1), said as one; a write to a reader
/// that went away ends the command quietly (141, as SIGPIPE would).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        eprintln!("nekms: internal error (a bug; please report it): {info}");
        std::process::exit(Class::Internal as i32);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_of_error_has_its_class() {
        let rpc = |code, kms: Option<&str>| {
            anyhow::Error::new(ClientError::Remote(RpcError { kms_code: kms.map(str::to_owned), ..RpcError::new(code, "x") }))
        };
        assert_eq!(classify(&rpc(ErrorCode::Refused, None)), Class::Refused);
        assert_eq!(classify(&rpc(ErrorCode::Kms, Some("AccessDeniedException"))), Class::Refused);
        assert_eq!(classify(&rpc(ErrorCode::Kms, Some("NotFoundException"))), Class::NotFound);
        assert_eq!(classify(&rpc(ErrorCode::Unavailable, None)), Class::Unavailable);
        assert_eq!(classify(&rpc(ErrorCode::RecordRejected, None)), Class::VerificationFailed);
        let connect = anyhow::Error::new(ClientError::Connect { address: "unix:///x".into(), message: "no such file".into() });
        assert_eq!(classify(&connect.context("describing the enclave")), Class::Unavailable);
        let missing = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::NotFound)).context("reading tmkms.toml");
        assert_eq!(classify(&missing), Class::NotFound);
        assert_eq!(classify(&not_found("no key named \"k\"").context("signing")), Class::NotFound);
        assert_eq!(classify(&verification(anyhow::anyhow!("bad signature"))), Class::VerificationFailed);
        assert_eq!(classify(&anyhow::anyhow!("the enclave refused: rule provenance: ...")), Class::Refused);
        assert_eq!(classify(&anyhow::anyhow!("something else")), Class::Internal);
    }
}
