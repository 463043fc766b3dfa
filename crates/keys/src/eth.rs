//! Ethereum: EIP-191 and EIP-712 hashes, and transactions (legacy with
//! EIP-155, and EIP-1559) built and encoded with alloy.
//!
//! A transaction is given as JSON in the shape eth-account and web3 use:
//!
//! ```json
//! {"type": 2, "chainId": 1, "nonce": 0, "to": "0x…", "value": "1000000000000000000",
//!  "gas": 21000, "maxFeePerGas": 30000000000, "maxPriorityFeePerGas": 1000000000,
//!  "data": "0x", "accessList": []}
//! ```
//!
//! Numbers may be JSON numbers, decimal strings or 0x-hex strings. `type` is
//! 0 (legacy) or 2 (EIP-1559), or is inferred from `gasPrice` versus
//! `maxFeePerGas`. A legacy transaction must name its chain: without EIP-155
//! it could be replayed on any chain.

use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
use alloy_eips::eip2718::Encodable2718;
use alloy_eips::eip2930::{AccessList, AccessListItem};
use alloy_primitives::{Address, Bytes, TxKind, B256, U256};
use serde_json::{Map, Value};

use crate::public::PublicKey;
use crate::verify::prehash;
use crate::{KeyError, KeySpec, Payload, Scheme};

fn bad(msg: impl Into<String>) -> KeyError {
    KeyError::Transaction(msg.into())
}

/// keccak256("\x19Ethereum Signed Message:\n" || len || message).
pub fn personal_hash(message: &[u8]) -> [u8; 32] {
    alloy_primitives::eip191_hash_message(message).0
}

/// The EIP-712 signing hash of typed data given as JSON.
pub fn typed_data_hash(json: &str) -> Result<[u8; 32], KeyError> {
    let typed: alloy_dyn_abi::TypedData = serde_json::from_str(json).map_err(|e| KeyError::TypedData(e.to_string()))?;
    typed.eip712_signing_hash().map(|h| h.0).map_err(|e| KeyError::TypedData(e.to_string()))
}

/// A transaction ready to be signed.
pub enum TxRequest {
    Legacy(TxLegacy),
    Eip1559(TxEip1559),
}

/// A signed transaction: the bytes to broadcast and their hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTransaction {
    pub raw: Vec<u8>,
    pub hash: [u8; 32],
}

fn number(obj: &Map<String, Value>, names: &[&str]) -> Result<Option<U256>, KeyError> {
    let Some((name, v)) = names.iter().find_map(|n| obj.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v))) else {
        return Ok(None);
    };
    let parsed = match v {
        Value::Number(n) => n.as_u64().map(U256::from),
        Value::String(s) => match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some("") => Some(U256::ZERO),
            Some(h) => U256::from_str_radix(h, 16).ok(),
            None => U256::from_str_radix(s, 10).ok(),
        },
        _ => None,
    };
    parsed.map(Some).ok_or_else(|| bad(format!("{name} must be a non-negative integer (number, decimal or 0x-hex string), not {v}")))
}

fn narrow<T: TryFrom<U256>>(name: &str, v: U256) -> Result<T, KeyError> {
    T::try_from(v).map_err(|_| bad(format!("{name} is too large")))
}

fn required<T: TryFrom<U256>>(obj: &Map<String, Value>, names: &[&str]) -> Result<T, KeyError> {
    let v = number(obj, names)?.ok_or_else(|| bad(format!("{} is required", names[0])))?;
    narrow(names[0], v)
}

fn bytes_field(obj: &Map<String, Value>, names: &[&str]) -> Result<Bytes, KeyError> {
    match names.iter().find_map(|n| obj.get(*n).filter(|v| !v.is_null())) {
        None => Ok(Bytes::new()),
        Some(Value::String(s)) => {
            let h = s.strip_prefix("0x").unwrap_or(s);
            hex::decode(h).map(Bytes::from).map_err(|_| bad(format!("{} must be 0x-hex", names[0])))
        }
        Some(v) => Err(bad(format!("{} must be a 0x-hex string, not {v}", names[0]))),
    }
}

fn address(v: &Value, what: &str) -> Result<Address, KeyError> {
    v.as_str().and_then(|s| s.parse::<Address>().ok()).ok_or_else(|| bad(format!("{what} must be a 20-byte 0x-hex address, not {v}")))
}

fn access_list(obj: &Map<String, Value>) -> Result<AccessList, KeyError> {
    let Some(list) = obj.get("accessList").filter(|v| !v.is_null()) else {
        return Ok(AccessList::default());
    };
    let items = list.as_array().ok_or_else(|| bad("accessList must be a list"))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let address = address(&item["address"], "accessList[].address")?;
        let keys = item["storageKeys"].as_array().map(Vec::as_slice).unwrap_or_default();
        let storage_keys = keys
            .iter()
            .map(|k| k.as_str().and_then(|s| s.parse::<B256>().ok()).ok_or_else(|| bad("accessList[].storageKeys must be 32-byte 0x-hex")))
            .collect::<Result<_, _>>()?;
        out.push(AccessListItem { address, storage_keys });
    }
    Ok(AccessList(out))
}

impl TxRequest {
    pub fn from_json(json: &str) -> Result<TxRequest, KeyError> {
        let v: Value = serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v.as_object().ok_or_else(|| bad("a transaction is a JSON object"))?;
        let to = match obj.get("to") {
            None | Some(Value::Null) => TxKind::Create,
            Some(Value::String(s)) if s.is_empty() => TxKind::Create,
            Some(v) => TxKind::Call(address(v, "to")?),
        };
        let value = number(obj, &["value"])?.unwrap_or_default();
        let input = bytes_field(obj, &["data", "input"])?;
        let nonce = required(obj, &["nonce"])?;
        let gas_limit = required(obj, &["gas", "gasLimit"])?;
        let chain_id: Option<u64> = number(obj, &["chainId"])?.map(|c| narrow("chainId", c)).transpose()?;
        let kind: Option<u64> = number(obj, &["type"])?.map(|t| narrow("type", t)).transpose()?;
        let kind = match kind {
            Some(k) => k,
            None if obj.contains_key("gasPrice") => 0,
            None => 2,
        };
        match kind {
            0 => {
                if obj.contains_key("maxFeePerGas") {
                    return Err(bad("a legacy transaction has gasPrice, not maxFeePerGas"));
                }
                let chain_id = chain_id
                    .ok_or_else(|| bad("chainId is required: a legacy transaction without EIP-155 can be replayed on any chain"))?;
                Ok(TxRequest::Legacy(TxLegacy {
                    chain_id: Some(chain_id),
                    nonce,
                    gas_price: required(obj, &["gasPrice"])?,
                    gas_limit,
                    to,
                    value,
                    input,
                }))
            }
            2 => {
                if obj.contains_key("gasPrice") {
                    return Err(bad("an EIP-1559 transaction has maxFeePerGas and maxPriorityFeePerGas, not gasPrice"));
                }
                Ok(TxRequest::Eip1559(TxEip1559 {
                    chain_id: chain_id.ok_or_else(|| bad("chainId is required"))?,
                    nonce,
                    gas_limit,
                    max_fee_per_gas: required(obj, &["maxFeePerGas"])?,
                    max_priority_fee_per_gas: required(obj, &["maxPriorityFeePerGas"])?,
                    to,
                    value,
                    access_list: access_list(obj)?,
                    input,
                }))
            }
            other => Err(bad(format!("transaction type {other} is not supported; use 0 (legacy) or 2 (EIP-1559)"))),
        }
    }

    /// The hash the sender signs.
    pub fn signature_hash(&self) -> [u8; 32] {
        match self {
            TxRequest::Legacy(tx) => tx.signature_hash().0,
            TxRequest::Eip1559(tx) => tx.signature_hash().0,
        }
    }

    /// Attach `r || s` and the recovery id, and encode for broadcast.
    pub fn into_signed(self, rs: &[u8; 64], recovery_id: bool) -> SignedTransaction {
        let sig =
            alloy_primitives::Signature::from_scalars_and_parity(B256::from_slice(&rs[..32]), B256::from_slice(&rs[32..]), recovery_id);
        let envelope: TxEnvelope = match self {
            TxRequest::Legacy(tx) => tx.into_signed(sig).into(),
            TxRequest::Eip1559(tx) => tx.into_signed(sig).into(),
        };
        SignedTransaction { raw: envelope.encoded_2718(), hash: envelope.tx_hash().0 }
    }
}

/// The 32-byte hash an Ethereum scheme signs, and the transaction if any.
pub(crate) fn eth_hash(scheme: Scheme, payload: &Payload) -> Result<([u8; 32], Option<TxRequest>), KeyError> {
    match (scheme, payload) {
        (Scheme::EthPersonal, Payload::Message(m)) => Ok((personal_hash(m), None)),
        (Scheme::Eip712, Payload::TypedData(json)) => Ok((typed_data_hash(json)?, None)),
        (Scheme::Eip712, Payload::Digest(d)) => Ok((
            d.as_slice().try_into().map_err(|_| KeyError::Payload(format!("an EIP-712 signing hash is 32 bytes, not {}", d.len())))?,
            None,
        )),
        (Scheme::EthTransaction, Payload::Transaction(json)) => {
            let tx = TxRequest::from_json(json)?;
            Ok((tx.signature_hash(), Some(tx)))
        }
        (Scheme::EcdsaRecoverable, p) => {
            let (_, d) = prehash(scheme, KeySpec::Secp256k1, p)?;
            Ok((d.try_into().expect("SHA-256"), None))
        }
        (Scheme::EthPersonal, _) => Err(KeyError::Payload("eth-personal signs a message".into())),
        (Scheme::Eip712, _) => Err(KeyError::Payload("eip712 signs typed-data JSON or its 32-byte signing hash".into())),
        _ => Err(KeyError::Payload("eth-tx signs a transaction (JSON)".into())),
    }
}

/// Check a recoverable secp256k1 signature (`ecdsa-recoverable`,
/// `eth-personal`, `eip712`): recover the signer and compare it with `public`.
pub(crate) fn verify_recoverable(public: &PublicKey, scheme: Scheme, payload: &Payload, signature: &[u8]) -> Result<(), KeyError> {
    let invalid = || KeyError::BadSignature(format!("the {scheme} signature does not verify with this {} key", public.spec()));
    let pk = secp256k1::PublicKey::from_slice(public.point()).map_err(|_| KeyError::PublicKey("not a secp256k1 point".into()))?;
    let (hash, _) = eth_hash(scheme, payload)?;
    let msg = secp256k1::Message::from_digest(hash);
    if signature.len() != 65 {
        return Err(KeyError::BadSignature(format!("a recoverable signature is 65 bytes, not {}", signature.len())));
    }
    let v = signature[64];
    let rid = match (scheme, v) {
        (Scheme::EcdsaRecoverable, 0 | 1) => v,
        (Scheme::EthPersonal | Scheme::Eip712, 27 | 28) => v - 27,
        _ => return Err(KeyError::BadSignature(format!("recovery byte {v} is not valid for {scheme}"))),
    };
    let rid = secp256k1::ecdsa::RecoveryId::try_from(rid as i32).map_err(|_| invalid())?;
    let rs = secp256k1::ecdsa::RecoverableSignature::from_compact(&signature[..64], rid).map_err(|_| invalid())?;
    let recovered = secp256k1::SECP256K1.recover_ecdsa(&msg, &rs).map_err(|_| invalid())?;
    if recovered == pk {
        Ok(())
    } else {
        Err(invalid())
    }
}

impl PublicKey {
    /// The Ethereum address of a secp256k1 key.
    pub fn eth_address(&self) -> Option<alloy_primitives::Address> {
        (self.spec() == KeySpec::Secp256k1).then(|| alloy_primitives::Address::from_raw_public_key(&self.point()[1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_hash_matches_the_published_vector() {
        // eth-account: encode_defunct(text="Hello World") hashes to this.
        assert_eq!(hex::encode(personal_hash(b"Hello World")), "a1de988600a42c4b4ab089b619297c17d53cffae5d5120d82d8a92d0bb3b78f2");
    }

    #[test]
    fn transactions_are_parsed_with_clear_errors() {
        let ok = TxRequest::from_json(r#"{"chainId":1,"nonce":0,"to":"0x000000000000000000000000000000000000dEaD","value":"0x10","gas":21000,"maxFeePerGas":"2000000000","maxPriorityFeePerGas":1}"#).unwrap();
        assert!(matches!(ok, TxRequest::Eip1559(_)));
        let legacy_without_chain = TxRequest::from_json(r#"{"nonce":0,"gas":21000,"gasPrice":1}"#).err().unwrap();
        assert!(legacy_without_chain.to_string().contains("chainId"));
        let bad_to =
            TxRequest::from_json(r#"{"chainId":1,"nonce":0,"gas":1,"maxFeePerGas":1,"maxPriorityFeePerGas":1,"to":"0x12"}"#).err().unwrap();
        assert!(bad_to.to_string().contains("address"));
        assert!(TxRequest::from_json(r#"{"chainId":1,"nonce":-1,"gas":1,"gasPrice":1}"#).is_err());
        assert!(TxRequest::from_json(r#"{"type":3,"chainId":1,"nonce":0,"gas":1}"#).is_err());
    }
}
