//! The command line: every command, flag and help text (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use taskrun_core::{AgentName, AgentRef, AgentVersion, RunId, TaskId, TaskStatus};
use taskrun_signing::KeyId;

use crate::parse;

/// Where the control plane listens unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

const EXIT_CODES: &str = "\
Exit codes:
  0    success; `task watch`: the Task COMPLETED
  1    error (the message says what to do); `task watch`: the Task FAILED
  2    `task watch`: the Task was CANCELLED
  64   usage error (bad flag or value, input that is not JSON); nothing was sent
  130  `task watch` interrupted (Ctrl-C); resume with --cursor";

/// Run signed WebAssembly agents on remote Workers.
///
/// `taskrun` talks to a TaskRun control plane (--server) to create and
/// follow Tasks and to publish agents, and works on local files to make
/// signing keys, keep trust policies and sign agents.
#[derive(Debug, Parser)]
#[command(name = "taskrun", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The control plane's URL.
    #[arg(long, global = true, env = "TASKRUN_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, cancel and watch Tasks.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Make signing keys and keep a trust policy (local files only).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign, publish and inspect agents.
    #[command(subcommand)]
    Agent(AgentCommand),
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Create a Task and print its id.
    Create(CreateArgs),
    /// Show a Task and its Runs.
    Get {
        #[arg(value_parser = parse::task_id)]
        task_id: TaskId,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show only this Run of the Task, with its result however large
        /// (the whole Task leaves out results that do not fit in one reply).
        #[arg(long, value_name = "RUN_ID", value_parser = parse::run_id)]
        run: Option<RunId>,
    },
    /// List Tasks, newest first.
    List(ListArgs),
    /// Cancel a Task that has not finished; its active Runs are stopped.
    Cancel {
        #[arg(value_parser = parse::task_id)]
        task_id: TaskId,
        /// Why, for people (up to 1024 bytes); recorded on the Task and its
        /// Runs.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Follow a Task until it ends: output to stdout, status changes to
    /// stderr, then the result.
    ///
    /// Output chunks are written to stdout as they arrive; status changes go
    /// to stderr. When the Task ends, its result JSON is printed to stdout
    /// (COMPLETED) or its error to stderr. A dropped stream is resumed from
    /// the last event seen. Exit code: 0 COMPLETED, 1 FAILED, 2 CANCELLED.
    #[command(after_help = EXIT_CODES)]
    Watch {
        #[arg(value_parser = parse::task_id)]
        task_id: TaskId,
        /// Start after this event (the cursor printed when a watch was
        /// interrupted); 0 = from the beginning.
        #[arg(long, value_name = "N", default_value_t = 0)]
        cursor: u64,
    },
}

#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct CreateArgs {
    /// The agent: NAME (highest version), NAME@1.2.3 or NAME@sha256:<hex>.
    #[arg(value_name = "AGENT_REF", value_parser = parse::agent_ref)]
    pub agent: AgentRef,
    /// The agent's input as JSON text, or `-` to read it from stdin.
    /// Without --input or --input-file the input is `null`.
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the agent's input (JSON) from a file.
    #[arg(long, value_name = "PATH")]
    pub input_file: Option<PathBuf>,
    /// A label of the Task, for listing and filtering (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::label)]
    pub labels: Vec<(String, String)>,
    /// A label a Worker must carry, with this value, to run the Task (repeatable).
    #[arg(long = "worker-label", value_name = "KEY=VALUE", value_parser = parse::label)]
    pub worker_labels: Vec<(String, String)>,
    /// Higher runs first: -1000 to 1000 [default: 0].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Attempts in all per shard, the first included: 1 to 100 [default: 3].
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Wall-clock limit of one Run once it starts, e.g. 30s, 5m, 1500ms
    /// [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub timeout: Option<Duration>,
    /// Fail the Task if no Worker starts it within this time [default: wait forever].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub schedule_timeout: Option<Duration>,
    /// Make the request safe to repeat: the same key returns the Task created first.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// Run this many shards side by side, each with the same input: 1 to 64 [default: 1].
    #[arg(long, value_name = "N")]
    pub fan_out: Option<u32>,
    /// Follow the Task like `task watch` (the id then goes to stderr, so
    /// that stdout holds only the agent's output and result).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only Tasks in this state (pending, running, completed, failed,
    /// cancelled); repeat it, or separate states with commas, for any of several.
    #[arg(long, value_name = "STATUS", value_parser = parse::task_status, value_delimiter = ',')]
    pub status: Vec<TaskStatus>,
    /// Only Tasks of this agent.
    #[arg(long, value_name = "NAME", value_parser = parse::agent_name)]
    pub agent: Option<AgentName>,
    /// Only Tasks that carry this label (repeatable; all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse::label)]
    pub labels: Vec<(String, String)>,
    /// Show at most N Tasks [default: one page, 100].
    #[arg(long, value_name = "N", conflicts_with = "all", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// Show every matching Task, following page after page.
    #[arg(long)]
    pub all: bool,
    /// Tasks asked for per request (1 to 1000) [default: 1000 with --all
    /// or --limit; otherwise 100]. Without --all or --limit, one page of
    /// this size is shown.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,
    /// Print JSON (an array of Tasks) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make an Ed25519 signing key: PATH (private, mode 0600) and PATH.pub.
    Generate {
        /// Where to write the private key; the public key goes to PATH.pub.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Replace existing files (the old key is lost).
        #[arg(long)]
        force: bool,
    },
    /// Pin a public key in a trust policy (created if absent).
    Trust {
        /// A public key file (PATH.pub) or the key itself (ed25519:<base64>).
        #[arg(value_name = "PUBKEY_FILE|ed25519:...")]
        key: String,
        /// The trust policy file (TOML).
        #[arg(long, value_name = "PATH")]
        policy: PathBuf,
        /// Who holds the key, what it is for.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Allow the key to sign only this agent (repeatable) [default: any agent].
        #[arg(long = "agent", value_name = "NAME", value_parser = parse::agent_name)]
        agents: Vec<AgentName>,
    },
    /// Revoke a key in a trust policy: nothing it signed verifies any more.
    Revoke {
        /// The key id, ed25519-<16 hex digits>.
        #[arg(value_name = "KEY_ID", value_parser = parse::key_id)]
        key_id: KeyId,
        /// The trust policy file (TOML); it must exist.
        #[arg(long, value_name = "PATH")]
        policy: PathBuf,
        /// Why, for the record.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Show the keys a trust policy pins and revokes.
    List {
        /// The trust policy file (TOML).
        #[arg(long, value_name = "PATH")]
        policy: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Sign a component: write its signed envelope (COMPONENT.wasm.sig).
    Sign {
        /// The agent's WebAssembly component.
        #[arg(value_name = "COMPONENT.wasm")]
        component: PathBuf,
        #[command(flatten)]
        signer: SignArgs,
        /// Where to write the envelope [default: COMPONENT.wasm.sig].
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Publish a signed component to the control plane.
    ///
    /// Uses the envelope next to the component (COMPONENT.wasm.sig) or
    /// --envelope; with --key, --name and --version it signs first and
    /// publishes in one step.
    Publish {
        /// The agent's WebAssembly component.
        #[arg(value_name = "COMPONENT.wasm")]
        component: PathBuf,
        /// The signed envelope [default: COMPONENT.wasm.sig].
        #[arg(long, value_name = "PATH", conflicts_with = "key")]
        envelope: Option<PathBuf>,
        /// Sign with this private key, then publish.
        #[arg(long, value_name = "PATH", requires_all = ["name", "version"])]
        key: Option<PathBuf>,
        /// The agent's name (with --key).
        #[arg(long, value_name = "NAME", requires = "key", value_parser = parse::agent_name)]
        name: Option<AgentName>,
        /// The agent's version, MAJOR.MINOR.PATCH (with --key).
        #[arg(long, value_name = "X.Y.Z", requires = "key", value_parser = parse::agent_version)]
        version: Option<AgentVersion>,
        /// The signature stops being accepted after this long, e.g. 90d (with --key).
        #[arg(long, value_name = "DURATION", requires = "key", value_parser = parse::duration)]
        expires_in: Option<Duration>,
        /// Show upload progress on stderr even when it is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// List published agent builds.
    List {
        /// Only builds of this agent.
        #[arg(long, value_name = "NAME", value_parser = parse::agent_name)]
        name: Option<AgentName>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one published build: NAME (highest version), NAME@1.2.3 or NAME@sha256:<hex>.
    Show {
        #[arg(value_name = "AGENT_REF", value_parser = parse::agent_ref)]
        agent: AgentRef,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What `agent sign` (and `agent publish --key`) sign with.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The private key file (from `taskrun keys generate`).
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// The agent's name: a-z, 0-9 and '-', starting with a letter.
    #[arg(long, value_name = "NAME", value_parser = parse::agent_name)]
    pub name: AgentName,
    /// The agent's version, MAJOR.MINOR.PATCH.
    #[arg(long, value_name = "X.Y.Z", value_parser = parse::agent_version)]
    pub version: AgentVersion,
    /// The signature stops being accepted after this long, e.g. 90d [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub expires_in: Option<Duration>,
    /// The WIT world the component targets.
    #[arg(long, value_name = "WORLD", default_value = taskrun_core::WIT_WORLD)]
    pub wit_world: String,
}
