//! `taskrun keys ...`: signing keys and trust policies. Local files only;
//! nothing here talks to the control plane.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use taskrun_core::{AgentName, Clock as _, SystemClock};
use taskrun_signing::{
    KeyId, Overwrite, PRIVATE_KEY_PREFIX, PUBLIC_KEY_PREFIX, PublicKey, Revocation, SigningKey, TrustPolicy, TrustedKey,
};

use crate::cli::KeysCommand;
use crate::error::{EXIT_OK, usage};
use crate::output::{self, line, note};

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate { out, force } => generate(&out, force),
        KeysCommand::Trust { key, policy, comment, agents } => trust(&key, &policy, comment, agents),
        KeysCommand::Revoke { key_id, policy, reason } => revoke(key_id, &policy, reason),
        KeysCommand::List { policy } => list(&policy),
    }?;
    Ok(ExitCode::from(EXIT_OK))
}

/// `PATH.pub` next to `PATH`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let mut name = OsString::from(private.as_os_str());
    name.push(".pub");
    PathBuf::from(name)
}

fn generate(out: &Path, force: bool) -> anyhow::Result<()> {
    let public_path = public_key_path(out);
    if !force {
        for path in [out, public_path.as_path()] {
            if path.symlink_metadata().is_ok() {
                return Err(usage(format!(
                    "{} already exists; refusing to overwrite it (pass --force to replace it; the old key is then lost)",
                    path.display()
                )));
            }
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let overwrite = if force { Overwrite::Allow } else { Overwrite::Refuse };
    let key = SigningKey::generate();
    key.write(out, overwrite).context("writing the private key")?;
    key.public_key().write(&public_path, overwrite).context("writing the public key")?;
    line(format!("key id:     {}", key.key_id()))?;
    line(format!("public key: {}", key.public_key()))?;
    note(format!(
        "wrote {} (private, mode 0600: keep it secret) and {} (public: operators pin it with `taskrun keys trust`)",
        out.display(),
        public_path.display()
    ));
    Ok(())
}

/// Creates `dir` (and its parents) readable by its owner only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A public key given as its text (`ed25519:...`) or as a file holding it.
fn load_public_key(arg: &str) -> anyhow::Result<PublicKey> {
    if arg.starts_with(PUBLIC_KEY_PREFIX) {
        return arg.parse::<PublicKey>().map_err(|e| usage(e.to_string()));
    }
    // A private key pasted by mistake: say so without echoing it.
    if arg.trim_start().starts_with(PRIVATE_KEY_PREFIX) {
        return Err(usage(format!(
            "that is a private key ({PRIVATE_KEY_PREFIX}…), which must stay with its author; give the public key \
             instead: its KEY.pub file, or {PUBLIC_KEY_PREFIX}<base64>"
        )));
    }
    let path = Path::new(arg);
    if !path.exists() {
        return Err(usage(format!(
            "{arg}: no such file (give a public key file, e.g. KEY.pub, or the key itself, {PUBLIC_KEY_PREFIX}<base64>)"
        )));
    }
    if starts_with_private_key(path) {
        let public = public_key_path(path);
        let instead = if public.is_file() {
            format!("{}, the file next to it", public.display())
        } else {
            format!("its .pub file (written next to it by `taskrun keys generate`), or {PUBLIC_KEY_PREFIX}<base64>")
        };
        return Err(usage(format!(
            "{arg} is a private key file, which must stay with its author (do not share it); give the public key \
             instead: {instead}"
        )));
    }
    PublicKey::load(path).map_err(|e| match e.root() {
        taskrun_signing::Error::InvalidKey { reason, .. } => usage(format!(
            "{arg} is not a public key file ({reason}); give a public key file, e.g. KEY.pub, or the key itself, \
             {PUBLIC_KEY_PREFIX}<base64>"
        )),
        _ => anyhow::Error::new(e).context("cannot read the public key"),
    })
}

/// Whether the file at `path` holds a private key (read no further than
/// its prefix: the secret is not ours to read).
fn starts_with_private_key(path: &Path) -> bool {
    use std::io::Read as _;
    let mut prefix = Vec::new();
    let Ok(file) = std::fs::File::open(path) else { return false };
    if file.take(PRIVATE_KEY_PREFIX.len() as u64 + 16).read_to_end(&mut prefix).is_err() {
        return false;
    }
    String::from_utf8_lossy(&prefix).trim_start().starts_with(PRIVATE_KEY_PREFIX)
}

fn trust(key: &str, policy_path: &Path, comment: Option<String>, agents: Vec<AgentName>) -> anyhow::Result<()> {
    let public_key = load_public_key(key)?;
    let key_id = public_key.key_id();
    let exists = policy_path.exists();
    let mut policy = if exists { TrustPolicy::load(policy_path)? } else { TrustPolicy::new() };
    if policy.is_revoked(&key_id) {
        anyhow::bail!(
            "key {key_id} is revoked in {}; a revoked key stays revoked (sign with a new key instead)",
            policy_path.display()
        );
    }
    if let Some(pinned) = policy.trusted(&key_id) {
        if pinned.public_key == public_key {
            anyhow::bail!("key {key_id} is already trusted in {}", policy_path.display());
        }
        anyhow::bail!(
            "another key with the id {key_id} is already trusted in {}; refusing to pin a second one",
            policy_path.display()
        );
    }
    let mut entry = TrustedKey::new(public_key).with_added_at(output::date(SystemClock.now()));
    if let Some(comment) = comment {
        entry = entry.with_comment(comment);
    }
    let agents: std::collections::BTreeSet<AgentName> = agents.into_iter().collect();
    let scope = if agents.is_empty() {
        "any agent".to_owned()
    } else {
        format!("agents {}", agents.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
    };
    if !agents.is_empty() {
        entry = entry.with_agents(agents);
    }
    policy.trust(entry)?;
    policy.save(policy_path)?;
    line(format!("trusted {key_id} for {scope} in {}", policy_path.display()))?;
    if !exists {
        note(format!("created {}", policy_path.display()));
    }
    note(APPLY_HINT);
    Ok(())
}

const APPLY_HINT: &str =
    "the control plane and Workers read their trust policy when they start: restart those that use it";

fn revoke(key_id: KeyId, policy_path: &Path, reason: Option<String>) -> anyhow::Result<()> {
    if !policy_path.exists() {
        // Creating a new policy here would leave the real one unrevoked
        // if the path has a typo.
        return Err(usage(format!(
            "{}: no such trust policy (give the policy the control plane or Workers use)",
            policy_path.display()
        )));
    }
    let mut policy = TrustPolicy::load(policy_path)?;
    if policy.is_revoked(&key_id) {
        line(format!("{key_id} is already revoked in {}", policy_path.display()))?;
        return Ok(());
    }
    let was_trusted = policy.trusted(&key_id).is_some();
    policy.revoke(Revocation { key_id, comment: reason, revoked_at: Some(output::date(SystemClock.now())) });
    policy.save(policy_path)?;
    line(format!("revoked {key_id} in {}", policy_path.display()))?;
    if !was_trusted {
        note(format!("{key_id} was not pinned in {}; it is now refused even if pinned later", policy_path.display()));
    }
    note(APPLY_HINT);
    Ok(())
}

fn list(policy_path: &Path) -> anyhow::Result<()> {
    if !policy_path.exists() {
        return Err(usage(format!("{}: no such trust policy", policy_path.display())));
    }
    let policy = TrustPolicy::load(policy_path)?;
    let mut rows = Vec::new();
    for key in policy.trusted_keys() {
        let id = key.key_id();
        let revocation = policy.revocations().find(|r| r.key_id == id);
        let status = if revocation.is_some() { "revoked" } else { "trusted" };
        // A revoked key shows when and why it was revoked.
        let (since, comment) = match revocation {
            Some(r) => (r.revoked_at.clone(), r.comment.clone()),
            None => (key.added_at.clone(), key.comment.clone()),
        };
        let agents = match &key.agents {
            None => "any".to_owned(),
            Some(names) => names.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        };
        rows.push(vec![
            id.to_string(),
            status.to_owned(),
            agents,
            since.unwrap_or_else(|| "-".to_owned()),
            comment.unwrap_or_else(|| "-".to_owned()),
            key.public_key.to_string(),
        ]);
    }
    for revocation in policy.revocations() {
        if policy.trusted(&revocation.key_id).is_some() {
            continue;
        }
        rows.push(vec![
            revocation.key_id.to_string(),
            "revoked".to_owned(),
            "-".to_owned(),
            revocation.revoked_at.clone().unwrap_or_else(|| "-".to_owned()),
            revocation.comment.clone().unwrap_or_else(|| "-".to_owned()),
            "-".to_owned(),
        ]);
    }
    if rows.is_empty() {
        note(format!("{} pins no keys: it accepts no agents", policy_path.display()));
        return Ok(());
    }
    let text = output::table(&["KEY ID", "STATUS", "AGENTS", "SINCE", "COMMENT", "PUBLIC KEY"], &rows);
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
