//! `nekms-alloy-kms`: an Ethereum account on a KMS key through alloy's
//! `AwsSigner`, used as its users use it (an `aws_sdk_kms::Client`, a key
//! id, a chain id), pointed at an endpoint. It signs an EIP-1559
//! transaction and an EIP-191 message and prints them for another party to
//! recover (the tests use eth-account):
//! `{"address", "raw_transaction", "message", "message_signature"}`.
//!
//! `nekms-alloy-kms ENDPOINT KEY_ID CHAIN_ID`, with AWS_ACCESS_KEY_ID and
//! AWS_SECRET_ACCESS_KEY in the environment; region us-east-1.

use alloy_consensus::{SignableTransaction, TxEip1559};
use alloy_eips::eip2718::Encodable2718;
use alloy_network::TxSigner;
use alloy_primitives::{address, Bytes, TxKind, U256};
use alloy_signer::Signer;
use alloy_signer_aws::AwsSigner;

const MESSAGE: &str = "nekms: signed by alloy's AWS KMS signer";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, key_id, chain_id] = args.as_slice() else {
        anyhow::bail!("usage: nekms-alloy-kms ENDPOINT KEY_ID CHAIN_ID");
    };
    let chain_id: u64 = chain_id.parse()?;
    let credentials = aws_credential_types::Credentials::new(
        std::env::var("AWS_ACCESS_KEY_ID")?,
        std::env::var("AWS_SECRET_ACCESS_KEY")?,
        None,
        None,
        "environment",
    );
    let config = aws_sdk_kms::Config::builder()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .build();
    let signer = AwsSigner::new(aws_sdk_kms::Client::from_conf(config), key_id.clone(), Some(chain_id)).await?;
    let mut tx = TxEip1559 {
        chain_id,
        nonce: 7,
        gas_limit: 21_000,
        max_fee_per_gas: 30_000_000_000,
        max_priority_fee_per_gas: 1_000_000_000,
        to: TxKind::Call(address!("0x7EeD368F105a6eaC9Ac645bC3440fEa9A6C3D531")),
        value: U256::from(12_345u64),
        access_list: Default::default(),
        input: Bytes::new(),
    };
    let signature = signer.sign_transaction(&mut tx).await?;
    let raw = tx.into_signed(signature).encoded_2718();
    let message_signature = signer.sign_message(MESSAGE.as_bytes()).await?;
    let out = serde_json::json!({
        "address": Signer::address(&signer).to_checksum(None),
        "raw_transaction": format!("0x{}", hex::encode(raw)),
        "message": MESSAGE,
        "message_signature": format!("0x{}", hex::encode(message_signature.as_bytes())),
    });
    println!("{out}");
    Ok(())
}
