//! The end of the demo's step 10: the imported tmkms key as a validator
//! signer's consensus key, spoken to over its privval socket as a
//! validator would, and the double sign refused.

use nekms_keys::{KeyRecord, Payload, Scheme};
use serde_json::json;

use super::custody::Running;

/// The validator signer: a chain configured, votes signed over the privval
/// protocol, and the double sign refused.
pub(super) async fn privval_signer(e: &Running, record: &KeyRecord) -> anyhow::Result<()> {
    use nekms_privval::prost::Message as _;
    use nekms_privval::proto::privval::{message::Sum, Message as Envelope, SignVoteRequest};
    use nekms_privval::proto::types::{BlockId, PartSetHeader, Vote};
    use nekms_rpc::{PrivvalChain, PrivvalRequest};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let chain = "demo-chain";
    e.client
        .privval(PrivvalRequest::InitState { key: Box::new(record.clone()), chain_id: chain.into(), height: Some(1), import: None })
        .await?;
    let config = PrivvalChain {
        chain_id: chain.into(),
        key: record.clone(),
        protocol_version: "v0.38".into(),
        max_height: None,
        max_height_jump: Some(1000),
        identity: None,
    };
    e.client.privval(PrivvalRequest::Configure(Box::new(config))).await?;
    println!("    validator signer: chain {chain} (CometBFT v0.38), state started at height 1 and kept by the parent's store, each new");
    println!("      state acknowledged durably before a signature leaves the enclave; what a validator sends over its privval socket:");
    let mut conn = nekms_transport::connect(&e.path.privval).await?;
    let hello = json!({"chain_id": chain, "validator": "unix:///demo"}).to_string();
    nekms_transport::frame::write_frame(&mut conn, hello.as_bytes(), 4096).await?;
    let mut leftover = Vec::new();
    let answer = nekms_transport::frame::read_frame(&mut conn, &mut leftover, 4096).await?;
    anyhow::ensure!(answer.as_deref() == Some(&b"ok"[..]), "the signer refused the demo chain: {answer:?}");
    let block = |b: u8| Some(BlockId { hash: vec![b; 32], part_set_header: Some(PartSetHeader { total: 1, hash: vec![b; 32] }) });
    let mut ask = async |vote: Vote| -> anyhow::Result<Result<Vote, String>> {
        let body =
            Envelope { sum: Some(Sum::SignVoteRequest(SignVoteRequest { vote: Some(vote), chain_id: chain.into() })) }.encode_to_vec();
        conn.write_all(&nekms_privval::frame::encode(&body, nekms_privval::frame::MAX_REQUEST)?).await?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the signer closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            if let Some((_, reply)) = nekms_privval::frame::decode(&buf, nekms_privval::frame::MAX_REPLY)? {
                return Ok(match Envelope::decode(reply)?.sum {
                    Some(Sum::SignedVoteResponse(r)) => match (r.vote, r.error) {
                        (_, Some(err)) => Err(err.description),
                        (Some(v), None) => Ok(v),
                        _ => Err("an empty reply".into()),
                    },
                    _ => Err("not a vote reply".into()),
                });
            }
        }
    };
    let stamp = Some(nekms_privval::Timestamp { seconds: 1_767_225_600, nanos: 0 });
    let prevote = Vote { r#type: 1, height: 1, round: 0, block_id: block(0xb1), timestamp: stamp, ..Default::default() };
    let signed = ask(prevote.clone()).await?.map_err(anyhow::Error::msg)?;
    let public = nekms_keys::PublicKey::from_spki(&record.public_key)?;
    public.verify(Scheme::Ed25519, &Payload::Message(nekms_privval::sign_bytes::vote(chain, &prevote)), &signed.signature)?;
    println!(
        "      prevote for block B1 at 1/0          -> signed ({}…), verified over its canonical bytes with {}…",
        &hex::encode(&signed.signature)[..16],
        &hex::encode(public.point())[..16]
    );
    let again = ask(prevote.clone()).await?.map_err(anyhow::Error::msg)?;
    println!("      the same prevote again               -> the same signature: {}", again.signature == signed.signature);
    let conflict = Vote { block_id: block(0xb2), ..prevote.clone() };
    println!(
        "      prevote for block B2 at 1/0          -> refused: {}",
        ask(conflict).await?.err().unwrap_or_else(|| "SIGNED (unexpected)".into())
    );
    let jump = Vote { height: 5000, ..prevote.clone() };
    println!(
        "      prevote at height 5000               -> refused: {}",
        ask(jump).await?.err().unwrap_or_else(|| "SIGNED (unexpected)".into())
    );
    let precommit = Vote { r#type: 2, extension: b"oracle price 42".to_vec(), ..prevote };
    let pc = ask(precommit.clone()).await?.map_err(anyhow::Error::msg)?;
    public.verify(
        Scheme::Ed25519,
        &Payload::Message(nekms_privval::sign_bytes::vote_extension(chain, &precommit)),
        &pc.extension_signature,
    )?;
    println!("      precommit for B1 with an extension   -> signed, and its extension signed too (verified)");
    Ok(())
}
