//! `taskrun agent ...`: sign components, publish them, look at what is
//! published.

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use serde::Serialize;
use taskrun_core::{AgentDigest, AgentManifest, AgentName, AgentRef, Clock as _, SystemClock};
use taskrun_proto::pb;
use taskrun_proto::pb::publish_agent_request::Part;
use taskrun_signing::{AgentDetails, Envelope, PublicKey, SigningKey};
use tonic::Code;

use crate::cli::{AgentCommand, SignArgs};
use crate::client::Connection;
use crate::error::{EXIT_OK, usage};
use crate::output::{self, line, note};

/// Component bytes per PublishAgent message.
pub const CHUNK_BYTES: usize = 256 * 1024;

pub async fn run(
    server: impl FnOnce() -> anyhow::Result<Connection>,
    command: AgentCommand,
) -> anyhow::Result<ExitCode> {
    match command {
        AgentCommand::Sign { component, signer, out } => sign(&component, &signer, out)?,
        AgentCommand::Publish { component, envelope, key, name, version, expires_in, progress } => {
            let signer = match (key, name, version) {
                (Some(key), Some(name), Some(version)) => {
                    Some(SignArgs { key, name, version, expires_in, wit_world: taskrun_core::WIT_WORLD.to_owned() })
                }
                _ => None,
            };
            publish(&server()?, &component, envelope, signer, progress).await?;
        }
        AgentCommand::List { name, json } => list(&server()?, name, json).await?,
        AgentCommand::Show { agent, json } => show(&server()?, &agent, json).await?,
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// `COMPONENT.wasm.sig` next to `COMPONENT.wasm`.
pub fn envelope_path(component: &Path) -> PathBuf {
    let mut name = OsString::from(component.as_os_str());
    name.push(".sig");
    PathBuf::from(name)
}

fn read_component(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading the component {}", path.display()))?;
    if bytes.is_empty() {
        return Err(usage(format!("{} is empty: that is not a WebAssembly component", path.display())));
    }
    Ok(bytes)
}

/// The private key `--key` names, with a message that says what to give
/// instead when it is missing, a public key, or not a key file at all.
fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let shown = path.display();
    let make_one = "make one with `taskrun keys generate --out PATH`";
    match path.metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage(format!(
                "--key {shown}: no such file; give the private key file `taskrun keys generate` wrote, or {make_one}"
            )));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(usage(format!("--key {shown} is not a file; give the private key file (or {make_one})")));
        }
        _ => {}
    }
    // A public key given by mistake (KEY.pub for KEY): say so before
    // anything about its mode, which is right for a public key.
    if PublicKey::load(path).is_ok() {
        let private = path.to_str().and_then(|p| p.strip_suffix(".pub")).map(Path::new).filter(|p| p.is_file());
        let instead = match private {
            Some(private) => format!("{}, the file next to it without .pub", private.display()),
            None => "the file `taskrun keys generate --out PATH` wrote to PATH (not PATH.pub)".to_owned(),
        };
        return Err(usage(format!("--key {shown} is a public key; signing needs the private key: give {instead}")));
    }
    SigningKey::load(path).map_err(|e| match e.root() {
        taskrun_signing::Error::InvalidKey { reason, .. } => usage(format!(
            "--key {shown} is not a private key file ({reason}); give the file `taskrun keys generate` wrote, or \
             {make_one}"
        )),
        taskrun_signing::Error::TooLarge { .. } => usage(format!(
            "--key {shown} is too large to be a private key file; give the file `taskrun keys generate` wrote"
        )),
        // Names the file and says to run chmod 600.
        taskrun_signing::Error::KeyFilePermissions { .. } => anyhow::Error::new(e),
        _ => anyhow::Error::new(e).context("cannot read the private key (--key)"),
    })
}

/// Signs `component` as `signer` says.
fn sign_bytes(component: &[u8], signer: &SignArgs) -> anyhow::Result<Envelope> {
    let key = load_signing_key(&signer.key)?;
    let now = SystemClock.now();
    let mut details =
        AgentDetails::new(signer.name.clone(), signer.version, now).with_wit_world(signer.wit_world.clone());
    if let Some(expires_in) = signer.expires_in {
        details = details.with_expires_at(now.saturating_add(expires_in));
    }
    Ok(key.sign_component(component, details)?)
}

fn sign(component_path: &Path, signer: &SignArgs, out: Option<PathBuf>) -> anyhow::Result<()> {
    let component = read_component(component_path)?;
    let envelope = sign_bytes(&component, signer)?;
    let out = out.unwrap_or_else(|| envelope_path(component_path));
    write_replacing(&out, envelope.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    let m = envelope.manifest();
    line(format!("signed {}@{} {} ({}) with key {}", m.name, m.version, m.digest, output::bytes(m.size), m.key_id))?;
    if let Some(expires_at) = m.expires_at {
        note(format!("the signature expires at {}", output::time(expires_at)));
    }
    note(format!("wrote {}", out.display()));
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same
/// directory, so a reader never sees half an envelope.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = OsString::from(path.as_os_str());
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn publish(
    conn: &Connection,
    component_path: &Path,
    envelope_file: Option<PathBuf>,
    signer: Option<SignArgs>,
    progress: bool,
) -> anyhow::Result<()> {
    let component = read_component(component_path)?;
    let envelope = match &signer {
        Some(signer) => sign_bytes(&component, signer)?,
        None => {
            let path = envelope_file.unwrap_or_else(|| envelope_path(component_path));
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(usage(format!(
                        "no signed envelope at {}: sign the component first (taskrun agent sign {} --key KEY \
                         --name NAME --version X.Y.Z), pass --envelope, or sign and publish in one step with \
                         --key, --name and --version",
                        path.display(),
                        component_path.display()
                    )));
                }
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            Envelope::parse(&bytes).with_context(|| format!("{} is not a signed envelope", path.display()))?
        }
    };
    let manifest = envelope.manifest().clone();
    let digest = AgentDigest::of(&component);
    if manifest.digest != digest || manifest.size != component.len() as u64 {
        return Err(usage(format!(
            "the envelope signs {} ({} bytes) but {} is {digest} ({} bytes): sign the component again",
            manifest.digest,
            manifest.size,
            component_path.display(),
            component.len()
        )));
    }
    let size = component.len() as u64;
    let label = format!("{}@{}", manifest.name, manifest.version);
    let header = pb::PublishAgentRequest {
        part: Some(Part::Header(pb::PublishAgentHeader {
            name: manifest.name.to_string(),
            version: manifest.version.to_string(),
            digest: digest.to_string(),
            size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
            wit_world: manifest.wit_world.clone(),
            envelope: envelope.as_bytes().to_vec(),
        })),
    };
    let terminal = std::io::stderr().is_terminal();
    let show_progress = progress || (terminal && size > CHUNK_BYTES as u64);
    let mut meter = Progress::new(label, size, show_progress, terminal);
    let component = Arc::new(component);
    let chunks = (0..component.len()).step_by(CHUNK_BYTES).map(move |start| {
        let end = (start + CHUNK_BYTES).min(component.len());
        meter.update(end as u64);
        pb::PublishAgentRequest { part: Some(Part::Chunk(component[start..end].to_vec())) }
    });
    let requests = futures::stream::iter(std::iter::once(header).chain(chunks));
    let result = conn.agents().publish_agent(requests).await;
    Progress::finish_line(show_progress, terminal);
    let response = result
        .map_err(|status| {
            let base = conn.remote(&status);
            match status.code() {
                Code::PermissionDenied => anyhow::anyhow!(
                    "{base}; the control plane's operator must pin key {} (taskrun keys trust <its .pub file> \
                     --policy <the control plane's trust policy>) and restart the control plane",
                    manifest.key_id
                ),
                _ => anyhow::Error::new(base),
            }
        })?
        .into_inner();
    let stored = AgentManifest::try_from(response.manifest.context("the control plane answered without a manifest")?)
        .context("the control plane sent an invalid manifest")?;
    let how = if response.existing { "existing: this digest was already published" } else { "new" };
    line(format!("published {}@{} {} ({how})", stored.name, stored.version, stored.digest))?;
    Ok(())
}

/// The progress line of an upload on stderr: rewritten in place on a
/// terminal, one line per tenth otherwise.
#[derive(Debug)]
struct Progress {
    label: String,
    total: u64,
    enabled: bool,
    terminal: bool,
    last_tenth: u64,
}

impl Progress {
    fn new(label: String, total: u64, enabled: bool, terminal: bool) -> Progress {
        Progress { label, total, enabled, terminal, last_tenth: 0 }
    }

    fn update(&mut self, sent: u64) {
        if !self.enabled || self.total == 0 {
            return;
        }
        let percent = sent * 100 / self.total;
        let text = format!(
            "publishing {}: {percent:>3}% ({} of {})",
            self.label,
            output::bytes(sent),
            output::bytes(self.total)
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{text}\x1b[K");
            let _ = err.flush();
        } else if percent / 10 > self.last_tenth || sent == self.total {
            self.last_tenth = percent / 10;
            let _ = writeln!(err, "{text}");
        }
    }

    /// Ends the line a terminal progress display left open.
    fn finish_line(enabled: bool, terminal: bool) {
        if enabled && terminal {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

async fn list(conn: &Connection, name: Option<AgentName>, json: bool) -> anyhow::Result<()> {
    let mut client = conn.agents();
    let mut manifests = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = pb::ListAgentsRequest {
            name: name.as_ref().map(ToString::to_string),
            page_size: 1000,
            page_token: std::mem::take(&mut page_token),
        };
        let response = client.list_agents(request).await.map_err(|s| conn.error(s))?.into_inner();
        for m in response.agents {
            manifests.push(AgentManifest::try_from(m).context("the control plane sent an invalid manifest")?);
        }
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    if json {
        return output::print_json(&manifests.iter().map(|m| ManifestView::of(m, None)).collect::<Vec<_>>());
    }
    if manifests.is_empty() {
        note(match &name {
            Some(name) => format!("no builds of agent {name} are published"),
            None => "no agents are published (publish one with `taskrun agent publish`)".to_owned(),
        });
        return Ok(());
    }
    let rows: Vec<Vec<String>> = manifests
        .iter()
        .map(|m| {
            vec![
                m.name.to_string(),
                m.version.to_string(),
                short_digest(&m.digest),
                output::bytes(m.size),
                m.signer.clone(),
                output::time(m.published_at),
            ]
        })
        .collect();
    let text = output::table(&["NAME", "VERSION", "DIGEST", "SIZE", "SIGNER", "PUBLISHED"], &rows);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `sha256:` and the first 12 hex digits; `agent show` and `--json` give
/// the whole digest.
fn short_digest(digest: &AgentDigest) -> String {
    let text = digest.to_string();
    text[..AgentDigest::PREFIX.len() + 12].to_owned()
}

async fn show(conn: &Connection, agent: &AgentRef, json: bool) -> anyhow::Result<()> {
    let request = pb::GetAgentRequest { agent: Some(agent.clone().into()) };
    let response = conn.agents().get_agent(request).await.map_err(|s| conn.error(s))?.into_inner();
    let manifest = AgentManifest::try_from(response.manifest.context("the control plane answered without a manifest")?)
        .context("the control plane sent an invalid manifest")?;
    // The control plane verified it when it was published; this only reads it.
    let envelope = Envelope::parse(&response.envelope).ok();
    let signed = envelope.as_ref().map(|e| e.manifest());
    if json {
        return output::print_json(&ManifestView::of(&manifest, signed));
    }
    let mut pairs = vec![
        ("Agent", manifest.name.to_string()),
        ("Version", manifest.version.to_string()),
        ("Digest", manifest.digest.to_string()),
        ("Size", format!("{} ({} bytes)", output::bytes(manifest.size), manifest.size)),
        ("WIT world", manifest.wit_world.clone()),
        ("Signer", manifest.signer.clone()),
    ];
    if let Some(signed) = signed {
        pairs.push(("Public key", signed.public_key.to_string()));
        pairs.push(("Signed at", output::time(signed.created_at)));
        pairs.push(("Expires", signed.expires_at.map_or_else(|| "never".to_owned(), output::time)));
    }
    pairs.push(("Published", output::time(manifest.published_at)));
    let mut out = std::io::stdout().lock();
    out.write_all(output::fields(&pairs).as_bytes())?;
    out.flush()?;
    Ok(())
}

/// An agent build in `--json` output (the wire contract's field names).
#[derive(Serialize)]
struct ManifestView {
    name: String,
    version: String,
    digest: String,
    size_bytes: u64,
    wit_world: String,
    signer: String,
    published_at: String,
    published_at_unix_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signed_at_unix_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at_unix_ms: Option<i64>,
}

impl ManifestView {
    fn of(m: &AgentManifest, signed: Option<&taskrun_signing::Manifest>) -> ManifestView {
        ManifestView {
            name: m.name.to_string(),
            version: m.version.to_string(),
            digest: m.digest.to_string(),
            size_bytes: m.size,
            wit_world: m.wit_world.clone(),
            signer: m.signer.clone(),
            published_at: output::time(m.published_at),
            published_at_unix_ms: m.published_at.as_millis(),
            public_key: signed.map(|s| s.public_key.to_string()),
            signed_at_unix_ms: signed.map(|s| s.created_at.as_millis()),
            expires_at_unix_ms: signed.and_then(|s| s.expires_at.map(|t| t.as_millis())),
        }
    }
}
