//! `cargo xtask demo`: the main demonstration, on this machine, with the real
//! binaries. It brings up a control plane on sled and a Worker, makes an
//! author key and a trust policy that pins it, signs and publishes the
//! `echo` agent, creates a Task and watches its output live, then stops
//! everything it started.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{project_root, run, setup};

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    name: &'static str,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                println!("demo: {} stopped", self.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(name: &'static str, program: &Path, args: &[&str], log: &Path) -> Result<Service> {
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    println!("demo: started {name} (pid {}), log in {}", child.id(), log.display());
    Ok(Service { name, child })
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_for_port(port: u16, service: &mut Service, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = service.child.try_wait() {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} exited with {status} before it listened:\n{log}", service.name);
        }
        if Instant::now() > deadline {
            bail!("{} did not listen on port {port} within 30 s", service.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn demo() -> Result<()> {
    let root = project_root();
    setup()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    // The whole workspace, as every other command builds it; this also
    // builds the agents (taskrun-agent-artifacts' build script).
    run(Command::new(&cargo).current_dir(&root).args(["build", "--workspace"]))?;
    let bin: PathBuf = root.join("target/debug");
    let echo = root.join("agents/target/wasm32-wasip2/release/echo.wasm");
    let dir = root.join("target/demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let taskrun = |args: &[&str]| {
        let mut c = Command::new(bin.join("taskrun"));
        c.args(args).env("TASKRUN_SERVER", &url);
        c
    };

    println!("\n== an author key, and a trust policy that pins it");
    run(&mut taskrun(&["keys", "generate", "--out", &path("author.key")]))?;
    run(&mut taskrun(&["keys", "trust", &path("author.key.pub"), "--policy", &path("trust.toml")]))?;

    println!("\n== a control plane on sled, and a Worker");
    let cp_log = dir.join("control-plane.log");
    let listen = format!("127.0.0.1:{port}");
    let mut control_plane = spawn(
        "control plane",
        &bin.join("taskrun-control-plane"),
        &[
            "--insecure",
            "--listen",
            &listen,
            "--data-dir",
            &path("control-plane"),
            "--trust-policy",
            &path("trust.toml"),
        ],
        &cp_log,
    )?;
    wait_for_port(port, &mut control_plane, &cp_log)?;
    let worker_config = format!(
        "control_plane = \"{url}\"\ninsecure = true\nid = \"demo-worker\"\ndata_dir = \"{}\"\nslots = 4\n\
         trust_policy = \"{}\"\n\n[[model_backends]]\nname = \"default\"\nprovider = \"echo\"\n",
        path("worker"),
        path("trust.toml"),
    );
    std::fs::write(dir.join("worker.toml"), worker_config)?;
    let _worker =
        spawn("worker", &bin.join("taskrun-worker"), &["--config", &path("worker.toml")], &dir.join("worker.log"))?;

    println!("\n== sign and publish the echo agent");
    run(&mut taskrun(&[
        "agent",
        "publish",
        &echo.to_string_lossy(),
        "--key",
        &path("author.key"),
        "--name",
        "echo",
        "--version",
        "0.1.0",
    ]))?;
    run(&mut taskrun(&["agent", "list"]))?;

    println!("\n== run a Task and watch its output");
    run(&mut taskrun(&["task", "create", "echo", "--input", r#"{"message":"hello from TaskRun"}"#, "--watch"]))?;
    run(&mut taskrun(&["task", "list"]))?;
    println!("\ndemo: done; state is in {}", dir.display());
    Ok(())
}
