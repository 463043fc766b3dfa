//! The agent over HTTP with no enclave behind it: who may call, the `Host`
//! check, the error shape, health and metrics, and the Unix socket.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use nekms_agent::{Access, AgentConfig, Listen};
use nekms_store::{SqliteStore, Store};
use nekms_transport::Address;
use serde_json::Value;

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }

    fn error(&self) -> (u16, String, String, bool) {
        let e = &self.json()["error"];
        (self.status, e["code"].as_str().unwrap().into(), e["message"].as_str().unwrap().into(), e["retryable"].as_bool().unwrap())
    }
}

/// One request on a new connection; with a body, as JSON.
async fn request<S>(stream: S, method: &str, path: &str, host: &str, token: Option<&str>, body: Option<&'static str>) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder().method(method).uri(path).header("host", host);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = Full::new(body.map(|b| Bytes::from_static(b.as_bytes())).unwrap_or_default());
    let resp = sender.send_request(req.body(body).unwrap()).await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer { status, headers, text }
}

/// An agent on 127.0.0.1 whose enclave is a socket nobody listens on.
struct Agent {
    addr: std::net::SocketAddr,
    token: String,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Agent {
    async fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("agent.token");
        let access = Access::single_token(&token_file).unwrap();
        let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = nekms_agent::spawn(listener, no_enclave(dir.path()), store(dir.path()), access);
        Agent { addr, token, task, _dir: dir }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call("GET", path, &self.addr.to_string(), token, None).await
    }

    async fn call(&self, method: &str, path: &str, host: &str, token: Option<&str>, body: Option<&'static str>) -> Answer {
        request(tokio::net::TcpStream::connect(self.addr).await.unwrap(), method, path, host, token, body).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn no_enclave(dir: &Path) -> Address {
    format!("unix://{}", dir.join("no-enclave.sock").display()).parse().unwrap()
}

fn store(dir: &Path) -> Store {
    Store::Sqlite(SqliteStore::open(&dir.join("keys.db")).unwrap())
}

#[tokio::test]
async fn a_caller_without_a_known_token_is_401_with_a_bearer_challenge() {
    let agent = Agent::start().await;
    let none = agent.get("/v1/keys", None).await;
    assert_eq!(none.error(), (401, "unauthorized".into(), "send Authorization: Bearer <token> (the agent's token file)".into(), false));
    assert_eq!(none.headers.get("www-authenticate").unwrap(), "Bearer");
    let wrong = agent.get("/v1/keys/k", Some("not-the-token-0000000")).await;
    assert_eq!(wrong.error(), (401, "unauthorized".into(), "the bearer token is not one the agent knows".into(), false));
    // Unknown routes are not public either.
    assert_eq!(agent.get("/nowhere", None).await.status, 401);
}

#[tokio::test]
async fn a_host_that_is_not_loopback_is_421_even_on_public_routes() {
    let agent = Agent::start().await;
    let token = agent.token.clone();
    let a = agent.call("GET", "/healthz", "evil.example:8080", Some(&token), None).await;
    let (status, code, message, _) = a.error();
    assert_eq!((status, code.as_str()), (421, "bad_host"));
    assert!(message.contains("\"evil.example:8080\" is not a loopback name"), "{message}");
    assert_eq!(agent.call("GET", "/openapi.json", "localhost", None, None).await.status, 200);
}

#[tokio::test]
async fn with_the_token_a_caller_lists_keys_and_unknown_routes_are_404() {
    let agent = Agent::start().await;
    let token = agent.token.clone();
    let keys = agent.get("/v1/keys", Some(&token)).await;
    assert_eq!((keys.status, keys.json()), (200, serde_json::json!({"keys": [], "damaged": [], "next": null})));
    let missing = agent.get("/v1/keys/nothing-here", Some(&token)).await;
    assert_eq!(missing.error(), (404, "not_found".into(), "no key named \"nothing-here\"".into(), false));
    let route = agent.get("/v2/keys", Some(&token)).await;
    assert_eq!(route.error(), (404, "not_found".into(), "no such route; see /openapi.json".into(), false));
}

#[tokio::test]
async fn without_an_enclave_health_is_degraded_and_enclave_calls_are_retryable_503s() {
    let agent = Agent::start().await;
    let token = agent.token.clone();
    let health = agent.get("/healthz", None).await;
    let h = health.json();
    assert_eq!(
        (health.status, &h["status"], &h["enclave"]["ok"], &h["store"]["ok"]),
        (503, &"degraded".into(), &false.into(), &true.into())
    );
    let attest = agent.call("POST", "/v1/attestation", "127.0.0.1", Some(&token), Some("{}")).await;
    let (status, code, _, retryable) = attest.error();
    assert_eq!((status, code.as_str(), retryable), (503, "enclave_unavailable", true));
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_errors_by_code() {
    let agent = Agent::start().await;
    let token = agent.token.clone();
    agent.get("/v1/keys", Some(&token)).await;
    agent.get("/v1/keys/k", None).await;
    let m = agent.get("/metrics", None).await;
    assert_eq!((m.status, m.headers.get("content-type").unwrap().to_str().unwrap()), (200, "text/plain; version=0.0.4"));
    for line in [
        "nekms_agent_requests_total{route=\"/v1/keys\",method=\"GET\",status=\"200\"} 1",
        "nekms_agent_errors_total{route=\"/v1/keys/{name}\",code=\"unauthorized\"} 1",
        "nekms_agent_request_duration_seconds_count{route=\"/v1/keys\"} 1",
        "nekms_enclave_up 0",
    ] {
        assert!(m.text.lines().any(|l| l == line), "{line} missing from:\n{}", m.text);
    }
}

#[tokio::test]
async fn over_the_unix_socket_the_owner_needs_no_token_and_the_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let ready = dir.path().join("ready.json");
    let config = AgentConfig {
        listen: Listen::Unix(socket.clone()),
        socket_mode: 0o600,
        enclave: no_enclave(dir.path()),
        store: store(dir.path()),
        access: Access::single_token(&dir.path().join("agent.token")).unwrap(),
        credentials: None,
        secrets_endpoint: None,
        ready_file: Some(ready.clone()),
        store_name: "sqlite:keys.db".into(),
        enclave_name: "none".into(),
        limits: nekms_agent::Limits::default(),
        kms_api: None,
    };
    let task = tokio::spawn(nekms_agent::serve(config));
    let started = std::time::Instant::now();
    while !ready.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "the agent did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url: Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    assert_eq!(url["url"], format!("unix://{}", socket.display()));
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
    // Any Host: a Unix socket is not reachable from a browser.
    let keys = request(tokio::net::UnixStream::connect(&socket).await.unwrap(), "GET", "/v1/keys", "anything", None, None).await;
    assert_eq!(keys.status, 200, "{}", keys.text);
    task.abort();
}
