//! The RPC over real Unix sockets: pipelining, the handshake, limits and bad frames.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use nekms_rpc::protocol::{self, ClientFrame, Hello, ServerFrame};
use nekms_rpc::{Client, ClientError, ErrorCode, Handler, Request, Response, RpcError, Secret, ServerOptions};
use nekms_transport::{Address, FrameCodec, Listener};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;

/// Answers GenerateRandom{n} with n bytes of value n%256 after n%7 ms (so
/// replies overtake each other); Decrypt echoes; Describe is refused.
#[derive(Default)]
struct TestHandler {
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Handler for TestHandler {
    async fn handle(&self, request: Request) -> Result<Response, RpcError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        let out = match request {
            Request::GenerateRandom { length } => {
                tokio::time::sleep(Duration::from_millis(u64::from(length % 7))).await;
                Ok(Response::Random { bytes: Secret::new(vec![length as u8; length as usize]) })
            }
            Request::Decrypt { ciphertext, .. } => Ok(Response::Decrypted { plaintext: Secret::new(ciphertext) }),
            // As an enclave that has not opened the record: the origin document is needed.
            Request::Sign { record, .. } => match record.attestation {
                None => Err(RpcError::new(
                    ErrorCode::RecordRejected,
                    format!("rule provenance: key record {} {}", record.key_id, nekms_keys::origin::MISSING),
                )),
                Some(doc) => Ok(Response::Signed(nekms_keys::Signature {
                    scheme: nekms_keys::Scheme::Ed25519,
                    signature: doc,
                    digest: vec![],
                    raw_transaction: None,
                    transaction_hash: None,
                })),
            },
            other => Err(RpcError::new(ErrorCode::Internal, format!("{} is not served here", other.name()))),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
}

struct Server {
    address: Address,
    handler: Arc<TestHandler>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn server(options: ServerOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let address: Address = format!("unix://{}/rpc.sock", dir.path().display()).parse().unwrap();
    let listener = Listener::bind(&address).await.unwrap();
    let handler = Arc::new(TestHandler::default());
    let task = tokio::spawn(nekms_rpc::serve(listener, handler.clone(), options));
    Server { address, handler, task, _dir: dir }
}

async fn raw(address: &Address) -> Framed<nekms_transport::Stream, FrameCodec> {
    Framed::new(nekms_transport::connect(address).await.unwrap(), FrameCodec::new(1 << 24))
}

async fn next_frame(framed: &mut Framed<nekms_transport::Stream, FrameCodec>) -> Option<ServerFrame> {
    let frame = tokio::time::timeout(Duration::from_secs(10), framed.next()).await.expect("the server answers")?;
    Some(protocol::decode(&frame.unwrap()).unwrap())
}

fn hello(versions: Vec<u16>) -> Vec<u8> {
    protocol::encode(&ClientFrame::Hello(Hello { protocol: protocol::PROTOCOL.into(), versions, agent: "test".into() }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_connection_each_get_their_own_reply() {
    let s = server(ServerOptions { max_in_flight: 16, ..Default::default() }).await;
    let client = Client::connect(&s.address, "test").await.unwrap();
    assert_eq!(client.version(), 1);
    let calls = (1..=400u32).map(|n| {
        let client = client.clone();
        async move { (n, client.generate_random(n).await.unwrap()) }
    });
    for (n, bytes) in futures::future::join_all(calls).await {
        assert_eq!(bytes.expose(), &vec![n as u8; n as usize][..], "reply for call {n}");
    }
    let most = s.handler.most.load(Ordering::SeqCst);
    assert!(most > 1, "calls ran one at a time");
    assert!(most <= 16, "{most} calls ran at once with a limit of 16");

    let e = client.describe().await.unwrap_err();
    assert_eq!(e.remote().unwrap().code, ErrorCode::Internal);
    let plain = client.decrypt(b"abc".to_vec(), BTreeMap::new(), None).await.unwrap();
    assert_eq!(plain.expose(), b"abc");
}

#[tokio::test]
async fn an_unknown_operation_fails_that_call_only() {
    let s = server(ServerOptions::default()).await;
    let client = Client::connect(&s.address, "test").await.unwrap();
    let newer = ciborium::Value::Map(vec![(ciborium::Value::Text("SignWithQuantumKey".into()), ciborium::Value::Map(vec![]))]);
    let e = client.call_value(newer).await.unwrap_err();
    let remote = e.remote().expect("an error reply");
    assert_eq!(remote.code, ErrorCode::BadRequest);
    assert!(remote.message.contains("SignWithQuantumKey"), "{remote:?}");
    let wrong_type = ciborium::Value::Map(vec![(
        ciborium::Value::Text("GenerateRandom".into()),
        ciborium::Value::Map(vec![(ciborium::Value::Text("length".into()), ciborium::Value::Text("many".into()))]),
    )]);
    assert_eq!(client.call_value(wrong_type).await.unwrap_err().remote().unwrap().code, ErrorCode::BadRequest);
    assert_eq!(client.generate_random(3).await.unwrap().expose(), &[3, 3, 3]);
}

#[tokio::test]
async fn the_handshake_refuses_other_versions_and_protocols_with_a_reason() {
    let s = server(ServerOptions::default()).await;
    let mut c = raw(&s.address).await;
    c.send(hello(vec![7, 9])).await.unwrap();
    match next_frame(&mut c).await {
        Some(ServerFrame::Goodbye { message }) => {
            assert!(message.contains("no common protocol version") && message.contains("[7, 9]"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(next_frame(&mut c).await.is_none(), "the connection closes");

    let mut c = raw(&s.address).await;
    let other = protocol::encode(&ClientFrame::Hello(Hello { protocol: "p11-kit".into(), versions: vec![1], agent: "x".into() }));
    c.send(other).await.unwrap();
    assert!(matches!(next_frame(&mut c).await, Some(ServerFrame::Goodbye { message }) if message.contains("p11-kit")));

    let mut c = raw(&s.address).await;
    c.send(protocol::encode(&ClientFrame::Call { id: 1, request: protocol::request_to_value(&Request::Describe) })).await.unwrap();
    assert!(matches!(next_frame(&mut c).await, Some(ServerFrame::Goodbye { message }) if message.contains("must be Hello")));

    let mut c = raw(&s.address).await;
    c.send(hello(vec![1, 2])).await.unwrap();
    assert!(matches!(next_frame(&mut c).await, Some(ServerFrame::Welcome { version: 1, .. })));
}

#[tokio::test]
async fn bad_frames_close_that_connection_and_nobody_else_notices() {
    let s = server(ServerOptions { max_frame: 4096, ..Default::default() }).await;
    let bystander = Client::connect(&s.address, "bystander").await.unwrap();

    // A frame over the limit: refused from its length prefix alone.
    let mut c = raw(&s.address).await;
    c.send(hello(vec![1])).await.unwrap();
    assert!(matches!(next_frame(&mut c).await, Some(ServerFrame::Welcome { max_frame: 4096, .. })));
    let mut huge = BytesMut::new();
    huge.extend_from_slice(&(u32::MAX).to_be_bytes());
    c.get_mut().write_all_buf(&mut huge).await.unwrap();
    match next_frame(&mut c).await {
        Some(ServerFrame::Goodbye { message }) => assert!(message.contains("exceeds the maximum of 4096"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(next_frame(&mut c).await.is_none());

    // A frame that is not CBOR at all.
    let mut c = raw(&s.address).await;
    c.send(hello(vec![1])).await.unwrap();
    next_frame(&mut c).await;
    c.send(vec![0xff, 0x00, 0x13]).await.unwrap();
    assert!(matches!(next_frame(&mut c).await, Some(ServerFrame::Goodbye { message }) if message.contains("not a Call")));

    // The client refuses to send what the server would refuse.
    let client = Client::connect(&s.address, "test").await.unwrap();
    let e = client.decrypt(vec![0; 8000], BTreeMap::new(), None).await.unwrap_err();
    assert!(matches!(e, ClientError::TooLarge { max: 4096, .. }), "{e}");
    // A reply too large for the frame limit becomes an error reply.
    let e = client.generate_random(5000).await.unwrap_err();
    assert!(e.to_string().contains("exceeds the frame limit"), "{e}");

    assert_eq!(bystander.generate_random(2).await.unwrap().expose(), &[2, 2]);
}

#[tokio::test]
async fn a_duplicate_id_in_flight_is_refused_and_the_first_call_still_answers() {
    let s = server(ServerOptions::default()).await;
    let mut c = raw(&s.address).await;
    c.send(hello(vec![1])).await.unwrap();
    next_frame(&mut c).await;
    let slow = protocol::encode(&ClientFrame::Call { id: 5, request: protocol::request_to_value(&Request::GenerateRandom { length: 6 }) });
    c.send(slow.clone()).await.unwrap();
    c.send(slow).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        match next_frame(&mut c).await {
            Some(ServerFrame::Reply { id: 5, outcome }) => seen.push(outcome),
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(&seen[0], Err(e) if e.message.contains("already in flight")), "{seen:?}");
    assert!(matches!(&seen[1], Ok(Response::Random { bytes }) if bytes.expose().len() == 6));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let s = server(ServerOptions { handshake_timeout: Duration::from_millis(200), ..Default::default() }).await;
    let mut c = raw(&s.address).await;
    assert!(next_frame(&mut c).await.is_none(), "the server hangs up");
}

#[tokio::test]
async fn calls_waiting_when_the_server_goes_away_fail_with_closed() {
    let s = server(ServerOptions::default()).await;
    let client = Client::connect(&s.address, "test").await.unwrap();
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.generate_random(6).await }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(s);
    // Stopping the server stops its connections; the call (6 ms in the handler) never completes.
    let e = waiting.await.unwrap().unwrap_err();
    assert!(matches!(e, ClientError::Closed(_)), "{e}");
    let e = client.generate_random(1).await.unwrap_err();
    assert!(matches!(e, ClientError::Closed(_)), "{e}");
}

#[tokio::test]
async fn sign_sends_the_origin_document_only_when_the_enclave_asks_for_it() {
    let s = server(ServerOptions::default()).await;
    let client = Client::connect(&s.address, "test").await.unwrap();
    let key = nekms_keys::PrivateKey::generate(nekms_keys::KeySpec::Ed25519, &[1; 32]).unwrap();
    let record = nekms_keys::KeyRecord {
        key_id: "k".into(),
        spec: key.spec(),
        public_key: key.public_key().spki().to_vec(),
        kms_key_id: "arn".into(),
        encryption_context: BTreeMap::new(),
        encrypted_data_key: vec![1],
        sealed_private_key: vec![2],
        origin: nekms_keys::Origin::Generated,
        created_at: 0,
        attestation: Some(b"the document".to_vec()),
        migration: None,
    };
    let payload = nekms_keys::Payload::Message(b"m".to_vec());
    let sig = client.sign(record.clone(), None, payload.clone()).await.unwrap();
    assert_eq!(sig.signature, b"the document", "sent again, whole, after the enclave asked");
    let err = client.sign(nekms_keys::KeyRecord { attestation: None, ..record }, None, payload).await.unwrap_err();
    assert_eq!(err.remote().unwrap().code, ErrorCode::RecordRejected, "no document to send: the refusal stands");
}

/// A vsock peer on an ordinary port is refused with a reason (the check on
/// the port itself is `nekms_transport::from_reserved_vsock_port`; vsock is
/// not available to tests, so the refusal is driven over a Unix socket).
#[tokio::test]
async fn a_refused_peer_gets_a_goodbye_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let address: Address = format!("unix://{}", dir.path().join("r.sock").display()).parse().unwrap();
    let listener = Listener::bind(&address).await.unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let refusal = Some("vsock://3:49152: only root".to_string());
        nekms_rpc::server::serve_checked(stream, Arc::new(TestHandler::default()), Arc::new(ServerOptions::default()), refusal).await
    });
    let mut c = raw(&address).await;
    c.send(hello(vec![1])).await.unwrap();
    assert!(matches!(next_frame(&mut c).await, Some(ServerFrame::Goodbye { message }) if message.contains("only root")));
    assert!(next_frame(&mut c).await.is_none(), "the connection closes");
    assert!(task.await.unwrap().is_err());
}
