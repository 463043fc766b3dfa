//! `/openapi.json`: the OpenAPI 3.0 description of the routes (schemathesis
//! drives the agent from it in the Python tests).

use serde_json::{json, Value};

/// The OpenAPI 3.0 description of the routes.
pub fn openapi() -> Value {
    let error = json!({"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"}});
    let ok = |d: &str, schema: Value| json!({"description": d, "content": {"application/json": {"schema": schema}}});
    let body = |schema: Value| json!({"required": true, "content": {"application/json": {"schema": schema}}});
    let errors = |codes: &[&str]| codes.iter().map(|c| (c.to_string(), error.clone())).collect::<serde_json::Map<_, _>>();
    let with = |mut m: serde_json::Map<String, Value>, code: &str, v: Value| {
        m.insert(code.into(), v);
        Value::Object(m)
    };
    json!({
        "openapi": "3.0.3",
        "info": {"title": "nekms agent", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Keys sealed by KMS and usable only inside an attested Nitro Enclave. The agent stores public records and relays to the enclave."},
        "paths": {
            "/healthz": {"get": {"summary": "Whether the enclave and the store answer", "responses": {"200": ok("Healthy", json!({"type": "object"})), "503": ok("Degraded", json!({"type": "object"}))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": ok("OpenAPI", json!({"type": "object"}))}}},
            "/v1/keys": {
                "get": {"summary": "List keys", "parameters": [
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": with(errors(&["400", "503"]), "200", ok("A page of keys", json!({"type": "object", "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}, "damaged": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "damaged": {"type": "string"}}}}, "next": {"type": "string", "nullable": true}}})))},
                "post": {"summary": "Make a key inside the enclave and store its sealed record", "requestBody": body(json!({"$ref": "#/components/schemas/CreateKey"})),
                    "responses": with(errors(&["400", "403", "404", "409", "422", "503"]), "201", ok("Created", json!({"$ref": "#/components/schemas/Key"})))}
            },
            "/v1/keys/import": {"post": {"summary": "Reseal a KMS-encrypted private key (or one from Secrets Manager) into a record", "requestBody": body(json!({"$ref": "#/components/schemas/ImportKey"})),
                "responses": with(errors(&["400", "403", "404", "409", "422", "503"]), "201", ok("Imported", json!({"$ref": "#/components/schemas/Key"})))}},
            "/v1/keys/{name}": {"get": {"summary": "A key and its record", "parameters": [name.clone()],
                "responses": with(errors(&["400", "404", "503"]), "200", ok("The key", json!({"$ref": "#/components/schemas/Key"})))}},
            "/v1/keys/{name}/public-key": {"get": {"summary": "The public key (PEM, SPKI, Ethereum address)", "parameters": [name.clone()],
                "responses": with(errors(&["400", "404", "503"]), "200", ok("The public key", json!({"type": "object"})))}},
            "/v1/keys/{name}/sign": {"post": {"summary": "Sign inside the enclave", "parameters": [name.clone()], "requestBody": body(json!({"$ref": "#/components/schemas/Sign"})),
                "responses": with(errors(&["400", "403", "404", "422", "503"]), "200", ok("The signature", json!({"$ref": "#/components/schemas/Signature"})))}},
            "/v1/keys/{name}/eth/transaction": {"post": {"summary": "Sign an Ethereum transaction (legacy with chainId, or EIP-1559)", "parameters": [name],
                "requestBody": body(json!({"$ref": "#/components/schemas/EthTransaction"})),
                "responses": with(errors(&["400", "403", "404", "422", "503"]), "200", ok("The signed transaction", json!({"type": "object", "properties": {"raw_transaction": {"type": "string"}, "transaction_hash": {"type": "string"}, "signature": {"type": "string"}}})))}},
            "/v1/attestation": {"post": {"summary": "An attestation document from the enclave", "requestBody": body(json!({"type": "object", "additionalProperties": false,
                "properties": {"nonce": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"}, "user_data": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"}}})),
                "responses": with(errors(&["400", "503"]), "200", ok("The document", json!({"type": "object", "properties": {"document": {"type": "string", "format": "byte"}}})))}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "retryable": {"type": "boolean"}}}}},
            "Key": {"type": "object", "properties": {"name": {"type": "string"}, "spec": {"type": "string"}, "origin": {"type": "string"}, "kms_key_id": {"type": "string"},
                    "created_at": {"type": "integer"}, "public_key_pem": {"type": "string", "nullable": true}, "eth_address": {"type": "string", "nullable": true},
                    "public_key_unverified": {"type": "string"}, "record": {"type": "object"}}},
            "CreateKey": {"type": "object", "required": ["name", "spec"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                "spec": {"type": "string", "enum": ["secp256k1", "ed25519", "p256", "p384", "rsa2048", "rsa3072", "rsa4096"]},
                "kms_key_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "entropy": {"type": "string", "enum": ["nsm", "kms"]},
                "encryption_context": {"type": "object", "additionalProperties": {"type": "string"}},
                "nonce": {"type": "string", "pattern": "^([0-9a-f]{2}){0,64}$"}}},
            "ImportKey": {"type": "object", "required": ["name", "spec"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9._:@-]{1,128}$"},
                "spec": {"type": "string", "enum": ["secp256k1", "ed25519", "p256", "p384", "rsa2048", "rsa3072", "rsa4096"]},
                "kms_key_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "ciphertext": {"type": "string", "format": "byte"},
                "secret_id": {"type": "string", "minLength": 1, "maxLength": 2048},
                "ciphertext_context": {"type": "object", "additionalProperties": {"type": "string"}},
                "encryption_context": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "Sign": {"type": "object", "additionalProperties": false, "properties": {
                "message": {"type": "string"}, "message_hex": {"type": "string"}, "message_base64": {"type": "string"},
                "digest": {"type": "string", "pattern": "^(0x)?([0-9a-f]{2})*$"}, "typed_data": {"type": "object"},
                "scheme": {"type": "string", "enum": ["ecdsa", "ecdsa-raw", "ecdsa-recoverable", "eth-personal", "eip712", "ed25519",
                    "rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512", "rsa-pss-sha256", "rsa-pss-sha384", "rsa-pss-sha512"]}}},
            "Signature": {"type": "object", "properties": {"scheme": {"type": "string"}, "signature": {"type": "string"}, "digest": {"type": "string"}}},
            "EthTransaction": {"type": "object", "required": ["chainId", "nonce", "gas"], "properties": {
                "type": {"type": "integer", "enum": [0, 2]}, "chainId": {"type": "integer", "minimum": 1}, "nonce": {"type": "integer", "minimum": 0},
                "to": {"type": "string", "nullable": true}, "value": {"type": ["integer", "string"]}, "gas": {"type": "integer", "minimum": 0},
                "gasPrice": {"type": "integer"}, "maxFeePerGas": {"type": "integer"}, "maxPriorityFeePerGas": {"type": "integer"},
                "data": {"type": "string"}, "accessList": {"type": "array"}}}
        }}
    })
}
