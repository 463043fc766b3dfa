//! Start a real `nekms-kms` process on loopback for a test, and stop it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use nekms_devworld::DevDir;

/// A running local KMS in its own development world.
pub struct LocalKms {
    pub dir: tempfile::TempDir,
    pub http: String,
    pub https: String,
    child: Child,
}

impl LocalKms {
    pub fn start() -> LocalKms {
        let dir = tempfile::tempdir().unwrap();
        DevDir::new(dir.path()).init().unwrap();
        let (child, http, https) = spawn(dir.path());
        LocalKms { dir, http, https, child }
    }

    pub fn dev(&self) -> DevDir {
        DevDir::new(self.dir.path())
    }

    /// Stop and start again on the same state (new ports).
    pub fn restart(&mut self) {
        stop(&mut self.child);
        self.respawn();
    }

    fn respawn(&mut self) {
        let (child, http, https) = spawn(self.dir.path());
        self.child = child;
        self.http = http;
        self.https = https;
    }

    /// Kill the server with SIGKILL (no clean shutdown), then start it again.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn();
    }

    /// An AWS SDK client signed as `profile` (root, admin, instance).
    pub fn client(&self, profile: &str) -> aws_sdk_kms::Client {
        let p = self.dev().principals().unwrap().into_iter().find(|p| p.name == profile).unwrap();
        let creds = Credentials::new(&p.access_key_id, &p.secret_access_key, p.session_token.clone(), None, "nekms-test");
        let conf = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(creds)
            .endpoint_url(&self.http)
            .build();
        aws_sdk_kms::Client::from_conf(conf)
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("kms/audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn spawn(dir: &Path) -> (Child, String, String) {
    let ready: PathBuf = dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(env!("CARGO_BIN_EXE_nekms-kms"))
        .arg("--dir")
        .arg(dir)
        .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0", "--exit-after", "600", "--ready-file"])
        .arg(&ready)
        .arg("--unix")
        .arg(dir.join("kms.sock"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nekms-kms");
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            return (child, v["http"].as_str().unwrap().to_owned(), v["https"].as_str().unwrap().to_owned());
        }
        if start.elapsed() > Duration::from_secs(30) || matches!(child.try_wait(), Ok(Some(_))) {
            stop(&mut child);
            panic!("nekms-kms did not become ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    // SIGTERM first so the server stops cleanly; then make sure.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for LocalKms {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The error code of an SDK error.
pub fn code<E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_kms::error::SdkError<E, R>,
) -> String {
    use aws_sdk_kms::error::ProvideErrorMetadata;
    let code = e.code().map(str::to_owned);
    code.unwrap_or_else(|| format!("no code: {}", aws_sdk_kms::error::DisplayErrorContext(&e)))
}

/// The error message of an SDK error.
pub fn message<E: aws_sdk_kms::error::ProvideErrorMetadata, R>(e: &aws_sdk_kms::error::SdkError<E, R>) -> String {
    use aws_sdk_kms::error::ProvideErrorMetadata;
    e.message().unwrap_or_default().to_owned()
}
