//! Reading a KMS JSON request body: typed members with KMS's errors.
//!
//! Wrong JSON types are `SerializationException`s (the request cannot be
//! read); values out of range are `ValidationException`s worded as KMS words
//! them. Unknown members are ignored, as the service does.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::error::KmsError;

/// An encryption context: KMS's name-value pairs, in canonical (sorted) order.
pub type EncryptionContext = std::collections::BTreeMap<String, String>;

/// Largest request body the server reads.
pub const MAX_BODY: usize = 256 * 1024;

/// A parsed request body.
pub struct Request {
    members: Map<String, Value>,
}

impl Request {
    /// Parse a body. An empty body is an empty request.
    pub fn parse(body: &[u8]) -> Result<Request, KmsError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Request { members: Map::new() });
        }
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(members)) => Ok(Request { members }),
            Ok(_) => Err(KmsError::serialization("The request body must be a JSON object")),
            Err(e) => Err(KmsError::serialization(format!("The request body is not valid JSON: {e}"))),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.members.get(name).filter(|v| !v.is_null())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(KmsError::serialization(format!("{name} must be a string"))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str, KmsError> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    /// A string member with KMS's length limits.
    pub fn str_len(&self, name: &str, min: usize, max: usize) -> Result<Option<&str>, KmsError> {
        let s = self.opt_str(name)?;
        if let Some(v) = s {
            let n = v.chars().count();
            if n < min {
                return Err(KmsError::constraint(name, format!("Member must have length greater than or equal to {min}")));
            }
            if n > max {
                return Err(KmsError::constraint(name, format!("Member must have length less than or equal to {max}")));
            }
        }
        Ok(s)
    }

    /// A KeyId (1..2048 characters).
    pub fn key_id(&self, name: &str) -> Result<&str, KmsError> {
        self.str_len(name, 1, 2048)?.ok_or_else(|| missing(name))
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(KmsError::serialization(format!("{name} must be a boolean"))),
        }
    }

    /// An integer member within `min..=max`.
    pub fn opt_int(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, KmsError> {
        let v = match self.get(name) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| KmsError::serialization(format!("{name} must be an integer")))?,
            Some(_) => return Err(KmsError::serialization(format!("{name} must be an integer"))),
        };
        if v < min {
            return Err(KmsError::constraint(name, format!("Member must have value greater than or equal to {min}")));
        }
        if v > max {
            return Err(KmsError::constraint(name, format!("Member must have value less than or equal to {max}")));
        }
        Ok(Some(v))
    }

    /// A base64 blob member with length limits on the decoded bytes.
    pub fn opt_blob(&self, name: &str, min: usize, max: usize) -> Result<Option<Zeroizing<Vec<u8>>>, KmsError> {
        let Some(text) = self.opt_str(name)? else { return Ok(None) };
        // Bound the work before decoding: base64 is 4 characters per 3 bytes.
        if text.len() > max.div_ceil(3) * 4 + 4 {
            return Err(KmsError::constraint(name, format!("Member must have length less than or equal to {max}")));
        }
        let bytes = Zeroizing::new(B64.decode(text).map_err(|e| KmsError::serialization(format!("{name} is not valid base64: {e}")))?);
        if bytes.len() < min {
            return Err(KmsError::constraint(name, format!("Member must have length greater than or equal to {min}")));
        }
        if bytes.len() > max {
            return Err(KmsError::constraint(name, format!("Member must have length less than or equal to {max}")));
        }
        Ok(Some(bytes))
    }

    pub fn blob(&self, name: &str, min: usize, max: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.opt_blob(name, min, max)?.ok_or_else(|| missing(name))
    }

    /// A map of strings (EncryptionContext).
    pub fn context(&self, name: &str) -> Result<EncryptionContext, KmsError> {
        let mut out = EncryptionContext::new();
        match self.get(name) {
            None => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        _ => return Err(KmsError::serialization(format!("{name} values must be strings ({k:?} is not)"))),
                    }
                }
            }
            Some(_) => return Err(KmsError::serialization(format!("{name} must be a map of strings"))),
        }
        let size: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > 8192 {
            return Err(KmsError::validation(format!("{name} is {size} bytes; the limit is 8192")));
        }
        Ok(out)
    }

    /// A list of strings (TagKeys, GrantTokens).
    pub fn str_list(&self, name: &str) -> Result<Vec<String>, KmsError> {
        match self.get(name) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| KmsError::serialization(format!("{name} must be a list of strings"))))
                .collect(),
            Some(_) => Err(KmsError::serialization(format!("{name} must be a list of strings"))),
        }
    }

    /// `Tags`: `[{"TagKey": .., "TagValue": ..}]`.
    pub fn tags(&self, name: &str) -> Result<Vec<(String, String)>, KmsError> {
        let Some(v) = self.get(name) else { return Ok(vec![]) };
        let items = v.as_array().ok_or_else(|| KmsError::serialization(format!("{name} must be a list")))?;
        let mut out = Vec::new();
        for item in items {
            let key = item.get("TagKey").and_then(Value::as_str);
            let value = item.get("TagValue").and_then(Value::as_str);
            match (key, value) {
                (Some(k), Some(v)) => {
                    if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
                        return Err(KmsError::new("TagException", format!("Tag {k:?}: keys are 1..128 characters, values up to 256")));
                    }
                    if k.starts_with("aws:") {
                        return Err(KmsError::new("TagException", "Tag keys may not begin with aws:"));
                    }
                    out.push((k.to_owned(), v.to_owned()));
                }
                _ => return Err(KmsError::serialization(format!("each of {name} needs a string TagKey and TagValue"))),
            }
        }
        Ok(out)
    }

    /// A nested structure (Recipient).
    pub fn object(&self, name: &str) -> Result<Option<Request>, KmsError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Request { members: m.clone() })),
            Some(_) => Err(KmsError::serialization(format!("{name} must be a structure"))),
        }
    }

    /// `GrantTokens`: at most 10, each 1 to 8192 characters. Whether each
    /// was issued here is the service's check.
    pub fn grant_tokens(&self) -> Result<Vec<String>, KmsError> {
        let tokens = self.str_list("GrantTokens")?;
        if tokens.len() > 10 {
            return Err(KmsError::constraint("GrantTokens", "Member must have length less than or equal to 10"));
        }
        if tokens.iter().any(|t| t.is_empty() || t.len() > 8192) {
            return Err(KmsError::constraint("GrantTokens", "Member must have length between 1 and 8192"));
        }
        Ok(tokens)
    }
}

fn missing(name: &str) -> KmsError {
    KmsError::constraint(name, "Member must not be null")
}

/// Base64 for responses.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}
