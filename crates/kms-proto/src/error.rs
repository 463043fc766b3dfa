//! KMS errors as the JSON 1.1 protocol carries them.
//!
//! Real KMS answers every client error with HTTP 400 (including
//! `NotFoundException`, `DisabledException` and authentication failures,
//! whatever the service model's `httpStatusCode` traits say), server faults
//! with 500, and `DependencyTimeoutException` with 503. The body is
//! `{"__type": NAME, "message": TEXT}`; clients key on `__type`.

use std::fmt;

/// An error a KMS operation returns.
#[derive(Clone, PartialEq, Eq)]
pub struct KmsError {
    /// The exception name (`__type`).
    pub kind: &'static str,
    pub message: String,
}

impl KmsError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> KmsError {
        KmsError { kind, message: message.into() }
    }

    /// The HTTP status real KMS uses for this exception.
    pub fn status(&self) -> u16 {
        match self.kind {
            "KMSInternalException" | "KeyUnavailableException" => 500,
            "DependencyTimeoutException" => 503,
            "RequestEntityTooLarge" => 413,
            _ => 400,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"__type": self.kind, "message": self.message})).expect("JSON")
    }

    pub fn validation(message: impl Into<String>) -> KmsError {
        KmsError::new("ValidationException", message)
    }

    /// A single constraint violation, worded as KMS words it.
    pub fn constraint(member: &str, constraint: impl fmt::Display) -> KmsError {
        KmsError::validation(format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: {constraint}",
            lower_first(member)
        ))
    }

    pub fn serialization(message: impl Into<String>) -> KmsError {
        KmsError::new("SerializationException", message)
    }

    pub fn not_found(message: impl Into<String>) -> KmsError {
        KmsError::new("NotFoundException", message)
    }

    pub fn invalid_ciphertext(message: impl Into<String>) -> KmsError {
        KmsError::new("InvalidCiphertextException", message)
    }

    pub fn internal(message: impl Into<String>) -> KmsError {
        KmsError::new("KMSInternalException", message)
    }

    pub fn invalid_state(message: impl Into<String>) -> KmsError {
        KmsError::new("KMSInvalidStateException", message)
    }

    pub fn key_usage(message: impl Into<String>) -> KmsError {
        KmsError::new("InvalidKeyUsageException", message)
    }

    pub fn unsupported(message: impl Into<String>) -> KmsError {
        KmsError::new("UnsupportedOperationException", message)
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

impl fmt::Debug for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for KmsError {}
