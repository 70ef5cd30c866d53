//! Test helper for the kill -9 crash test (tests/it/crash.rs); not a tool.
//!
//! `taskrun-store-crash-child <db dir> <tag> <seed>` writes through a
//! `SledStore` from many tokio tasks at once — creating Tasks, assigning,
//! starting, emitting output, finishing, losing Workers, cancelling — and
//! prints one line per write the store acknowledged, until it is killed:
//!
//! ```text
//! created <task> <idempotency key>
//! assigned <run> <lease>
//! started <run> <lease>
//! output <run> <seq>
//! finished <run> <lease> <RUN STATUS>
//! lost <run> <new lease>
//! cancelled <task>
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use taskrun_core::{AgentRef, Json, RetryPolicy, RunOutcome, RunStatus, Task, TaskId, TaskSpec, Timestamp, WorkerId};
use taskrun_store::{Error, Store, StoreConfig};
use taskrun_store_sled::SledStore;

const WRITERS: u64 = 16;

type BoxResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Prints one acknowledgement line and pushes it out at once, so the parent
/// has it even if the next instant is a SIGKILL.
fn ack(line: String) {
    let mut out = std::io::stdout().lock();
    // The parent reading our stdout is the whole point; if it went away,
    // there is nobody left to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }
}

fn now() -> Timestamp {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    Timestamp(ms)
}

fn main() -> BoxResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, tag, seed] = args.as_slice() else {
        return Err("usage: taskrun-store-crash-child <db dir> <tag> <seed>".into());
    };
    let seed: u64 = seed.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir, StoreConfig::default())?);
        let mut writers = Vec::new();
        for n in 0..WRITERS {
            let store = store.clone();
            let tag = tag.clone();
            let rng = Rng((seed ^ (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
            writers.push(tokio::spawn(writer(store, tag, n, rng)));
        }
        for w in writers {
            w.await??;
        }
        BoxResult::Ok(())
    })
}

async fn writer(store: Arc<dyn Store>, tag: String, n: u64, mut rng: Rng) -> BoxResult<()> {
    let me: WorkerId = format!("w-{tag}-{n}").parse()?;
    for i in 0.. {
        let mut spec = TaskSpec::new(
            AgentRef::latest("crash-test".parse()?),
            Json::parse("input", format!(r#"{{"writer":{n},"i":{i}}}"#))?,
        );
        spec.fan_out = 1 + rng.below(3) as u32;
        spec.retry = RetryPolicy { max_attempts: 2, initial_backoff_ms: 0, max_backoff_ms: 0 };
        let key = format!("{tag}-{n}-{i}");
        spec.idempotency_key = Some(key.clone());
        let task = Task::new(TaskId::generate(), spec, now(), usize::MAX)?;
        let task = store.create_task(task).await?.into_inner();
        ack(format!("created {} {key}", task.id));

        if rng.below(10) == 0 {
            store.cancel_task(&task.id, "changed my mind", now()).await?;
            ack(format!("cancelled {}", task.id));
            continue;
        }
        // Work the Task's Runs (retries included) until none is pending.
        loop {
            let runs = store.list_runs(&task.id).await?;
            let Some(run) = runs.iter().find(|r| r.status == RunStatus::Pending) else {
                break;
            };
            let lease = match store.assign_run(&run.id, &me, run.lease, now()).await {
                Ok(change) => change.run.lease,
                // A sibling shard failed the Task meanwhile.
                Err(Error::FailedPrecondition { .. }) => break,
                Err(e) => return Err(e.into()),
            };
            ack(format!("assigned {} {lease}", run.id));
            if rng.below(8) == 0 {
                for change in store.fail_runs_of_worker(&me, "worker lost", now()).await?.changes {
                    ack(format!("lost {} {}", change.run.id, change.run.lease));
                }
                continue;
            }
            store.start_run(&run.id, lease, now()).await?;
            ack(format!("started {} {lease}", run.id));
            for seq in 1..=rng.below(3) {
                store.append_output(&run.id, lease, seq, format!("chunk {seq}"), now()).await?;
                ack(format!("output {} {seq}", run.id));
            }
            let outcome = if rng.below(3) == 0 {
                RunOutcome::Failed { error: "unlucky".into() }
            } else {
                RunOutcome::Completed { result: Json::parse("result", format!("{i}"))? }
            };
            let change = store.finish_run(&run.id, lease, outcome, now()).await?;
            ack(format!("finished {} {lease} {}", run.id, change.run.status.as_str()));
        }
    }
    Ok(())
}
