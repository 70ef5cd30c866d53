//! Running the real `taskrun` binary against a real control plane, in
//! process, on 127.0.0.1:0 with a memory store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use taskrun_control_plane::config::TransportConfig;
use taskrun_control_plane::{Config, Server};
use taskrun_core::{Clock, SystemClock};
use taskrun_signing::{Overwrite, SigningKey, TrustPolicy, TrustedKey, Verifier};
use taskrun_store::StoreConfig;
use taskrun_store_memory::MemoryStore;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt as _;

/// Bytes that stand in for a component: the control plane never looks inside.
pub const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00taskrun-cli test component";

/// What one run of the binary did.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fails the test, showing everything, unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Output {
        assert_eq!(self.code, code, "unexpected exit code; stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn ok(&self) -> &Output {
        self.expect_code(0)
    }

    /// The first line of stdout.
    pub fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or("")
    }
}

/// A `taskrun` command, not started yet.
pub fn taskrun(server: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskrun"));
    cmd.env_remove("TASKRUN_SERVER");
    if let Some(server) = server {
        cmd.arg("--server").arg(server);
    }
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    cmd
}

/// Runs `taskrun [--server server] args...` to the end (at most a minute).
pub async fn run(server: Option<&str>, args: &[&str]) -> Output {
    wait(taskrun(server, args).spawn().expect("spawn taskrun")).await
}

/// Runs it with `stdin` as standard input.
pub async fn run_with_stdin(server: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut cmd = taskrun(server, args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn taskrun");
    let mut input = child.stdin.take().expect("stdin is piped");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    wait(child).await
}

/// Waits for a started `taskrun` (at most a minute).
pub async fn wait(child: tokio::process::Child) -> Output {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("taskrun finished within a minute")
        .expect("taskrun ran");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A control plane whose trust policy pins one key, with that key on disk.
#[derive(Debug)]
pub struct Env {
    pub dir: TempDir,
    pub server: Option<Server>,
    pub store: Arc<MemoryStore>,
    pub verifier: Arc<Verifier>,
    pub url: String,
    /// The trusted private key file (its public key is `key.pub`).
    pub key: PathBuf,
    /// A component to publish, `COMPONENT` in `dir/agent.wasm`.
    pub component: PathBuf,
}

impl Env {
    pub async fn start() -> Env {
        Env::start_with(StoreConfig::default()).await
    }

    /// A control plane whose store is set up with `config`.
    pub async fn start_with(config: StoreConfig) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let key_path = dir.path().join("author.key");
        let key = SigningKey::generate();
        key.write(&key_path, Overwrite::Refuse).expect("write key");
        key.public_key().write(dir.path().join("author.key.pub"), Overwrite::Refuse).expect("write public key");
        let mut policy = TrustPolicy::new();
        policy.trust(TrustedKey::new(key.public_key()).with_comment("test author")).expect("trust");
        let verifier = Arc::new(Verifier::new(policy, Arc::new(SystemClock)));
        let component = dir.path().join("agent.wasm");
        std::fs::write(&component, COMPONENT).expect("write component");
        let store = Arc::new(MemoryStore::with_config(config));
        let server = start_server("127.0.0.1:0".parse().expect("addr"), &store, &verifier).await;
        let url = server.url();
        Env { dir, server: Some(server), store, verifier, url, key: key_path, component }
    }

    pub fn url(&self) -> Option<&str> {
        Some(&self.url)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn run(&self, args: &[&str]) -> Output {
        run(self.url(), args).await
    }

    /// Signs and publishes `COMPONENT` as `name@version` with the trusted key.
    pub async fn publish(&self, name: &str, version: &str) -> Output {
        let component = path_str(&self.component);
        let key = path_str(&self.key);
        let out = self.run(&["agent", "publish", component, "--key", key, "--name", name, "--version", version]).await;
        out.ok();
        out
    }

    /// Stops the control plane and starts another on the same address with
    /// the same store, as a restart would.
    pub async fn restart(&mut self) {
        let server = self.server.take().expect("server running");
        let addr: SocketAddr = server.addr();
        server.shutdown().await.expect("shutdown");
        self.server = Some(start_server(addr, &self.store, &self.verifier).await);
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("shutdown");
        }
    }
}

async fn start_server(addr: SocketAddr, store: &Arc<MemoryStore>, verifier: &Arc<Verifier>) -> Server {
    let config = Config { listen: addr, transport: TransportConfig { insecure: true }, ..Default::default() };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // The port may take a moment to be free again after a shutdown.
    let mut tries = 0;
    loop {
        match Server::start_with(config.clone(), store.clone(), Arc::clone(&clock), Some(Arc::clone(verifier))).await {
            Ok(server) => return server,
            Err(e) if tries < 50 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("control plane did not start: {e}"),
        }
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A URL where nothing listens.
pub fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}
