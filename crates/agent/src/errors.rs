//! Errors as the API reports them: `{"error": {"code", "message", "retryable"}}`
//! with an HTTP status, and how the store's and the enclave's errors map to them.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nekms_rpc::{ClientError, ErrorCode};
use nekms_store::StoreError;
use serde_json::json;

/// An error as the API reports it.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retryable: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retryable: status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS,
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "retryable": self.retryable}});
        let mut r = (self.status, Json(body)).into_response();
        r.extensions_mut().insert(ErrorLabel(self.code));
        r
    }
}

/// A JSON request body whose every rejection (no or another content type,
/// malformed JSON, a missing or unknown field, a body over the limit)
/// answers in the API's error shape, never as axum's plain text.
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        use axum::extract::rejection::JsonRejection as R;
        // Headers are in; the body must follow within the body timeout.
        let timeout = req.extensions().get::<crate::listen::Limits>().map_or(std::time::Duration::from_secs(10), |l| l.body_timeout);
        let Ok(read) = tokio::time::timeout(timeout, Json::<T>::from_request(req, state)).await else {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the request body did not arrive within {} s", timeout.as_secs()),
            ));
        };
        match read {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => {
                let code = match &r {
                    R::MissingJsonContentType(_) => "unsupported_media_type",
                    R::JsonSyntaxError(_) => "malformed_json",
                    R::JsonDataError(_) => "invalid_body",
                    R::BytesRejection(_) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
                    _ => "bad_request",
                };
                Err(ApiError::new(r.status(), code, r.body_text()))
            }
        }
    }
}

/// The error code of a response, for the metrics (see [`crate::metrics`]).
#[derive(Clone, Copy)]
pub(crate) struct ErrorLabel(pub(crate) &'static str);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            StoreError::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt"),
            StoreError::Backend(_) | StoreError::Missing(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            StoreError::PendingDeletion { .. } => (StatusCode::CONFLICT, "pending_deletion"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> ApiError {
        let Some(remote) = e.remote() else {
            return match e {
                ClientError::Connect { .. } | ClientError::Closed(_) | ClientError::Deadline(_) => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "enclave_unavailable", e.to_string())
                }
                ClientError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()),
                _ => ApiError::new(StatusCode::BAD_GATEWAY, "enclave_protocol", e.to_string()),
            };
        };
        let (status, code) = match remote.code {
            ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorCode::NoCredentials | ErrorCode::CredentialsExpired => (StatusCode::SERVICE_UNAVAILABLE, "enclave_credentials"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "kms_unavailable"),
            ErrorCode::RecordRejected => (StatusCode::UNPROCESSABLE_ENTITY, "record_rejected"),
            ErrorCode::Refused => (StatusCode::FORBIDDEN, "refused"),
            ErrorCode::Kms => match remote.kms_code.as_deref().unwrap_or_default() {
                "AccessDeniedException" => (StatusCode::FORBIDDEN, "kms_access_denied"),
                "NotFoundException" => (StatusCode::NOT_FOUND, "kms_key_not_found"),
                "InvalidCiphertextException" | "IncorrectKeyException" => (StatusCode::UNPROCESSABLE_ENTITY, "kms_invalid_ciphertext"),
                "DisabledException" | "KMSInvalidStateException" => (StatusCode::CONFLICT, "kms_key_state"),
                "ThrottlingException" | "LimitExceededException" => (StatusCode::TOO_MANY_REQUESTS, "kms_throttled"),
                "KMSInternalException" | "DependencyTimeoutException" => (StatusCode::BAD_GATEWAY, "kms_internal"),
                _ => (StatusCode::BAD_REQUEST, "kms_refused"),
            },
            ErrorCode::Attestation | ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "enclave_internal"),
            ErrorCode::Pkcs11 => (StatusCode::BAD_REQUEST, "pkcs11"),
        };
        ApiError::new(status, code, remote.message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn answer(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_error_is_a_code_a_message_and_whether_to_retry() {
        let (status, v) = answer(ApiError::bad("the ciphertext is empty")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(v, json!({"error": {"code": "bad_request", "message": "the ciphertext is empty", "retryable": false}}));
    }

    #[tokio::test]
    async fn an_unavailable_store_is_a_retryable_503_and_an_existing_key_a_409() {
        let (status, v) = answer(StoreError::Unavailable("throttled".into()).into()).await;
        assert_eq!(
            (status, &v["error"]["code"], &v["error"]["retryable"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("store_unavailable"), &json!(true))
        );
        let (status, v) = answer(StoreError::Exists("k".into()).into()).await;
        assert_eq!((status, &v["error"]["code"], &v["error"]["retryable"]), (StatusCode::CONFLICT, &json!("exists"), &json!(false)));
    }
}
