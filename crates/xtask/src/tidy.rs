//! Tidy checks: the architecture invariants in ARCHITECTURE.md, stated as
//! absences, checked against `cargo metadata`; and the project vocabulary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Crates that do network, storage, async-runtime or wasm work: none may be
/// in taskrun-core's dependency tree.
pub const IMPURE_CRATES: &[&str] = &[
    "tokio",
    "mio",
    "async-std",
    "smol",
    "hyper",
    "h2",
    "tonic",
    "reqwest",
    "ureq",
    "socket2",
    "sled",
    "rocksdb",
    "rusqlite",
    "wasmtime",
    "wasmtime-wasi",
    "wasmparser",
    "wit-bindgen",
    "cranelift-codegen",
];

/// (dependency, the only crates that may depend on it directly).
pub const EXCLUSIVE_DEPENDENCIES: &[(&str, &[&str])] = &[
    ("prost", &["taskrun-proto"]),
    ("prost-types", &["taskrun-proto"]),
    ("tonic-prost", &["taskrun-proto"]),
    ("sled", &["taskrun-store-sled"]),
    ("wasmtime", &["taskrun-worker"]),
    ("wasmtime-wasi", &["taskrun-worker"]),
    ("ed25519-dalek", &["taskrun-signing"]),
];

/// Names other tools gave their own things, which our sources must spell as
/// they are (cargo's environment variables).
pub const OUTSIDE_IDENTIFIERS: &[&str] = &["NUM_JOBS", "CARGO_BUILD_JOBS"];

/// Words the project does not use for its own concepts, one per line in
/// `forbidden-words.txt` (kept out of the sources so that no source line
/// carries them).
pub fn forbidden_words() -> impl Iterator<Item = &'static str> {
    include_str!("../forbidden-words.txt").lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The workspace's packages and their direct and resolved dependencies.
#[derive(Debug)]
pub struct Graph {
    /// package name → names of its direct (non-dev) dependencies
    pub direct: BTreeMap<String, BTreeSet<String>>,
    /// package id → ids of its resolved normal + build dependencies
    resolved: BTreeMap<String, Vec<String>>,
    /// package id → name
    names: BTreeMap<String, String>,
    /// workspace member name → id
    members: BTreeMap<String, String>,
}

impl Graph {
    pub fn load(root: &Path) -> Result<Graph> {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = Command::new(cargo)
            .current_dir(root)
            .args(["metadata", "--format-version", "1"])
            .output()
            .context("running cargo metadata")?;
        if !out.status.success() {
            bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let meta: Value = serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
        Graph::from_metadata(&meta)
    }

    pub fn from_metadata(meta: &Value) -> Result<Graph> {
        let mut names = BTreeMap::new();
        let mut direct = BTreeMap::new();
        let member_ids: BTreeSet<&str> = meta["workspace_members"]
            .as_array()
            .context("metadata without workspace_members")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut members = BTreeMap::new();
        for p in meta["packages"].as_array().context("metadata without packages")? {
            let (Some(id), Some(name)) = (p["id"].as_str(), p["name"].as_str()) else {
                continue;
            };
            names.insert(id.to_owned(), name.to_owned());
            if member_ids.contains(id) {
                members.insert(name.to_owned(), id.to_owned());
                let deps = p["dependencies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| d["kind"].as_str() != Some("dev"))
                    .filter_map(|d| d["name"].as_str().map(str::to_owned))
                    .collect();
                direct.insert(name.to_owned(), deps);
            }
        }
        let mut resolved = BTreeMap::new();
        for n in meta["resolve"]["nodes"].as_array().context("metadata without resolve")? {
            let Some(id) = n["id"].as_str() else { continue };
            let deps = n["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["dep_kinds"].as_array().into_iter().flatten().any(|k| k["kind"].as_str() != Some("dev")))
                .filter_map(|d| d["pkg"].as_str().map(str::to_owned))
                .collect();
            resolved.insert(id.to_owned(), deps);
        }
        Ok(Graph { direct, resolved, names, members })
    }

    /// Names of every crate in `member`'s normal/build dependency tree.
    pub fn closure(&self, member: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&String> = self.members.get(member).into_iter().collect();
        while let Some(id) = stack.pop() {
            for dep in self.resolved.get(id).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    stack.push(dep);
                }
            }
        }
        seen.into_iter().filter_map(|id| self.names.get(&id).cloned()).collect()
    }
}

/// Every invariant violated by `graph`, as one message each.
pub fn dependency_violations(graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    let core = graph.closure("taskrun-core");
    for bad in IMPURE_CRATES {
        if core.contains(*bad) {
            out.push(format!("taskrun-core must stay pure but depends (maybe indirectly) on `{bad}`"));
        }
    }
    for (dep, allowed) in EXCLUSIVE_DEPENDENCIES {
        for (pkg, deps) in &graph.direct {
            if deps.contains(*dep) && !allowed.contains(&pkg.as_str()) {
                out.push(format!("only {} may depend on `{dep}`, but {pkg} does", allowed.join(", ")));
            }
        }
    }
    out
}

/// Lines of our own sources that use a forbidden word or leave a placeholder.
pub fn source_violations(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for dir in ["crates", "proto", "wit", "agents"] {
        visit(&root.join(dir), &mut |path| {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "rs" | "proto" | "wit") {
                return Ok(());
            }
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let is_tidy = path.ends_with("xtask/src/tidy.rs");
            for (i, line) in text.lines().enumerate() {
                let at = || format!("{}:{}", path.strip_prefix(root).unwrap_or(path).display(), i + 1);
                if !is_tidy {
                    let mut line = line.to_owned();
                    for outside in OUTSIDE_IDENTIFIERS {
                        line = line.replace(outside, "");
                    }
                    for word in words(&line) {
                        let lower = word.to_ascii_lowercase();
                        if forbidden_words().any(|w| w == lower) {
                            out.push(format!("{}: uses {word:?}; say Task, Run, Worker, Agent or ModelBackend", at()));
                        }
                    }
                    // Spelled in pieces so that this line is not one of them.
                    for placeholder in [concat!("todo", "!("), concat!("unimplemented", "!("), concat!("#[", "ignore")]
                    {
                        if line.contains(placeholder) {
                            out.push(format!("{}: placeholder {placeholder:?}", at()));
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn words(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty())
}

fn visit(dir: &Path, f: &mut dyn FnMut(&Path) -> Result<()>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            // `vendor`: third-party code we carry (see Cargo.toml), not ours.
            if name != "target" && name != "vendor" && !name.starts_with('.') {
                visit(&path, f)?;
            }
        } else {
            f(&path)?;
        }
    }
    Ok(())
}

/// Runs every tidy check; the error lists every violation.
pub fn check_all(root: &Path) -> Result<()> {
    let mut problems = dependency_violations(&Graph::load(root)?);
    problems.extend(source_violations(root)?);
    if !problems.is_empty() {
        bail!("tidy found {} problem(s):\n  {}", problems.len(), problems.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_is_tidy() {
        if let Err(e) = check_all(&crate::project_root()) {
            panic!("{e:#}");
        }
    }

    fn graph(direct: &[(&str, &[&str])]) -> Graph {
        // Build a metadata document for members with the given direct deps.
        let mut packages = Vec::new();
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        let mut all = BTreeSet::new();
        for (name, deps) in direct {
            all.insert(*name);
            all.extend(deps.iter().copied());
            members.push(Value::from(format!("{name}-id")));
        }
        for name in &all {
            let deps = direct.iter().find(|(n, _)| n == name).map(|(_, d)| *d).unwrap_or(&[]);
            packages.push(serde_json::json!({
                "id": format!("{name}-id"),
                "name": name,
                "dependencies": deps.iter().map(|d| serde_json::json!({"name": d, "kind": null})).collect::<Vec<_>>(),
            }));
            nodes.push(serde_json::json!({
                "id": format!("{name}-id"),
                "deps": deps.iter().map(|d| serde_json::json!({"pkg": format!("{d}-id"), "dep_kinds": [{"kind": null}]})).collect::<Vec<_>>(),
            }));
        }
        let meta = serde_json::json!({"workspace_members": members, "packages": packages, "resolve": {"nodes": nodes}});
        Graph::from_metadata(&meta).expect("synthetic metadata parses")
    }

    #[test]
    fn impure_core_is_caught_even_indirectly() {
        let g = graph(&[("taskrun-core", &["helper"]), ("helper", &["tokio"])]);
        let v = dependency_violations(&g);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("tokio"), "{v:?}");
    }

    #[test]
    fn prost_and_sled_outside_their_crates_are_caught() {
        let g = graph(&[
            ("taskrun-core", &[]),
            ("taskrun-proto", &["prost"]),
            ("taskrun-control-plane", &["prost", "sled"]),
            ("taskrun-store-sled", &["sled"]),
        ]);
        let v = dependency_violations(&g);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().any(|m| m.contains("`prost`, but taskrun-control-plane")), "{v:?}");
        assert!(v.iter().any(|m| m.contains("`sled`, but taskrun-control-plane")), "{v:?}");
    }

    #[test]
    fn forbidden_words_are_whole_words() {
        let banned: Vec<&str> = forbidden_words().collect();
        assert!(banned.len() >= 8, "{banned:?}");
        // Identifiers split at '_': a banned word inside one is found; a
        // longer word that merely starts with it is not that word.
        let w = banned[0];
        let line = format!("let {w}_id = 1; // {w}lib");
        let longer = format!("{w}lib");
        let found: Vec<&str> = words(&line).collect();
        assert_eq!(found, ["let", w, "id", "1", longer.as_str()]);
    }

    #[test]
    fn sources_with_banned_words_or_placeholders_are_caught() {
        let dir = std::env::temp_dir().join(format!("tidy-{}", std::process::id()));
        let src = dir.join("crates/demo/src");
        std::fs::create_dir_all(&src).expect("temp dir");
        let banned = forbidden_words().next().expect("a banned word");
        let text = format!("fn a() {{}}\n// the {banned} queue\nfn b() {{ {}\"later\") }}\n", concat!("todo", "!("));
        std::fs::write(src.join("lib.rs"), text).expect("write");
        let found = source_violations(&dir).expect("scan");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("lib.rs:2") && found[0].contains(banned), "{found:?}");
        assert!(found[1].contains("lib.rs:3") && found[1].contains("placeholder"), "{found:?}");
    }
}
