//! Sandbox benchmarks: what a Run costs the Worker.
//!
//! `cargo bench -p taskrun-worker --bench sandbox` (release). Measures, on
//! the `echo` agent:
//! - compile: `prepare` with an empty cache (Cranelift);
//! - cached load: `prepare` in a fresh Sandbox on a warm disk cache;
//! - warm Run: a Run of a prepared agent (new store + WASI context +
//!   instantiate from the InstancePre + `run` + teardown), trivial input,
//!   through `Sandbox::run_async` on a one-thread tokio runtime: the way
//!   the Worker runs them (one task of its runtime per Run). The blocking
//!   entry point `Sandbox::run`, which adds a `block_on` per Run, is
//!   timed too;
//! - the same trivial work as a native process spawned per Run
//!   (`/bin/echo`), the usual alternative to a sandbox;
//! - warm Runs of `echo-lean`, the same agent built `#![no_std]` with the
//!   SDK's lean runtime (its component imports no WASI interface);
//! - warm Runs on two threads at once;
//! - paired: short rounds of warm Runs and native spawns back to back, so
//!   the ratio compares the two under the same machine conditions.
//!
//! Prints a Markdown table (copied into docs/benchmarks.md).
//!
//! `SANDBOX_BENCH_VERSUS=a.wasm,b.wasm,…` instead compares builds of the
//! `echo` agent (e.g. with other link or SDK settings): warm Runs of each,
//! in rounds that alternate between them in one process, so that all see
//! the same machine; it prints each build's median and its per-round ratio
//! to the first build's.

#![allow(clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use taskrun_core::AgentDigest;
use taskrun_worker::{Outcome, Prepared, RunLimits, RunRequest, Sandbox, SandboxConfig};

const INPUT: &str = r#""hi""#;
const BATCH: u32 = 2_000;
/// Rounds of the paired measurement, and what each round times.
const PAIRED_ROUNDS: usize = 40;
const PAIRED_RUNS: usize = 500;
const PAIRED_SPAWNS: usize = 10;

fn sandbox(cache: &std::path::Path) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig { cache_dir: Some(cache.to_owned()), ..SandboxConfig::default() })?)
}

fn limits() -> RunLimits {
    RunLimits { deadline: Duration::from_secs(10), ..RunLimits::default() }
}

/// One warm Run, as the Worker runs it.
async fn run_once(sandbox: &Sandbox, prepared: &Prepared) -> anyhow::Result<()> {
    let report = sandbox.run_async(prepared.clone(), RunRequest::new(INPUT).limits(limits())).await?;
    check(report.outcome)
}

/// One warm Run through the blocking entry point (callers outside a
/// runtime).
fn run_blocking(sandbox: &Sandbox, prepared: &Prepared) -> anyhow::Result<()> {
    check(sandbox.run(prepared, RunRequest::new(INPUT).limits(limits()))?.outcome)
}

fn check(outcome: Outcome) -> anyhow::Result<()> {
    match outcome {
        Outcome::Completed(json) if json.as_str() == INPUT => Ok(()),
        other => bail!("echo run ended {other:?}"),
    }
}

/// A one-thread runtime, like each thread of the Worker's.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_time().build()?)
}

/// The mean of `n` warm Runs in a row.
async fn batch(sandbox: &Sandbox, prepared: &Prepared, n: u32) -> anyhow::Result<Duration> {
    let started = Instant::now();
    for _ in 0..n {
        run_once(sandbox, prepared).await?;
    }
    Ok(started.elapsed() / n.max(1))
}

/// `n` warm Runs, each timed on its own.
async fn timed(sandbox: &Sandbox, prepared: &Prepared, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        run_once(sandbox, prepared).await?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// One native process doing the same trivial work as the `echo` agent.
fn spawn_once() -> anyhow::Result<Duration> {
    let started = Instant::now();
    let output = Command::new("/bin/echo").arg(INPUT).output()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(output.status.success() && output.stdout.trim_ascii() == INPUT.as_bytes());
    Ok(elapsed)
}

struct Stats {
    samples: Vec<Duration>,
}

impl Stats {
    fn new(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats { samples }
    }

    fn pct(&self, p: f64) -> Duration {
        let i = ((self.samples.len() - 1) as f64 * p).round() as usize;
        self.samples[i]
    }

    fn median(&self) -> Duration {
        self.pct(0.5)
    }
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Alternating rounds of warm Runs of the components at `paths` (comma
/// separated); prints each one's median and its per-round ratio to the
/// first.
fn versus(paths: &str) -> anyhow::Result<()> {
    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let mut builds = Vec::new();
    for path in paths.split(',') {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let prepared = sandbox.prepare(&AgentDigest::of(&bytes), &bytes)?;
        builds.push((path, prepared, Vec::new(), Vec::new()));
    }
    let rt = runtime()?;
    for (_, prepared, _, _) in &builds {
        rt.block_on(batch(&sandbox, prepared, 1000))?;
    }
    for _ in 0..PAIRED_ROUNDS {
        let mut first = None;
        for (_, prepared, samples, ratios) in &mut builds {
            let round = Stats::new(rt.block_on(timed(&sandbox, prepared, PAIRED_RUNS))?);
            let median = round.median().as_secs_f64();
            ratios.push(median / *first.get_or_insert(median));
            samples.extend(round.samples);
        }
    }
    for (path, _, samples, mut ratios) in builds {
        let stats = Stats::new(samples);
        ratios.sort_by(f64::total_cmp);
        println!(
            "{path}: median {} · p10 {} · p90 {} · per-round median / first build's {:.3}",
            us(stats.median()),
            us(stats.pct(0.1)),
            us(stats.pct(0.9)),
            ratios[ratios.len() / 2]
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let bytes = std::fs::read(taskrun_agent_artifacts::ECHO).context("echo component")?;
    let digest = AgentDigest::of(&bytes);
    let lean_bytes = std::fs::read(taskrun_agent_artifacts::ECHO_LEAN).context("echo-lean component")?;
    let lean_digest = AgentDigest::of(&lean_bytes);

    // `SANDBOX_BENCH_PROFILE=n`: only n warm Runs, for `perf record`.
    if let Some(n) = std::env::var("SANDBOX_BENCH_PROFILE").ok().and_then(|n| n.parse::<u32>().ok()) {
        let sandbox = Sandbox::new(SandboxConfig::default())?;
        // `SANDBOX_BENCH_AGENT=echo-lean` profiles the lean build instead.
        let prepared = match std::env::var("SANDBOX_BENCH_AGENT").as_deref() {
            Ok("echo-lean") => sandbox.prepare(&lean_digest, &lean_bytes)?,
            _ => sandbox.prepare(&digest, &bytes)?,
        };
        let each = runtime()?.block_on(batch(&sandbox, &prepared, n))?;
        println!("{n} warm Runs: {} each", us(each));
        return Ok(());
    }

    // `SANDBOX_BENCH_VERSUS=a.wasm,b.wasm`: only warm Runs of these
    // components (builds of `echo` to compare), one by one, in rounds that
    // alternate between them, so that every build sees the same machine.
    if let Ok(paths) = std::env::var("SANDBOX_BENCH_VERSUS") {
        return versus(&paths);
    }

    // Compile: a fresh engine and an empty cache each time.
    let mut compiles = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir()?;
        let sandbox = sandbox(dir.path())?;
        let started = Instant::now();
        sandbox.prepare(&digest, &bytes)?;
        compiles.push(started.elapsed());
        anyhow::ensure!(sandbox.metrics().compiles == 1);
    }
    let compile = Stats::new(compiles);

    // Cached load: a fresh Sandbox (a restarted Worker) on a warm cache.
    let dir = tempfile::tempdir()?;
    sandbox(dir.path())?.prepare(&digest, &bytes)?;
    let mut loads = Vec::new();
    for _ in 0..20 {
        let sandbox = sandbox(dir.path())?;
        let started = Instant::now();
        sandbox.prepare(&digest, &bytes)?;
        loads.push(started.elapsed());
        anyhow::ensure!(sandbox.metrics().compiles == 0 && sandbox.metrics().cache_loads == 1);
    }
    let load = Stats::new(loads);

    // Warm Runs.
    let sandbox = sandbox(dir.path())?;
    let prepared = sandbox.prepare(&digest, &bytes)?;
    let rt = runtime()?;
    rt.block_on(batch(&sandbox, &prepared, 1000))?;
    let warm = Stats::new(rt.block_on(timed(&sandbox, &prepared, 20_000))?);
    // Means of batches: robust to the other work on a shared machine
    // (the best batch is the least disturbed one).
    let mut batches = Vec::new();
    for _ in 0..30 {
        batches.push(rt.block_on(batch(&sandbox, &prepared, BATCH))?);
    }
    let batches = Stats::new(batches);
    // The blocking entry point, batches alternating with `run_async` ones
    // so that both see the same machine.
    let mut blocking = Vec::new();
    let mut alongside = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        for _ in 0..BATCH {
            run_blocking(&sandbox, &prepared)?;
        }
        blocking.push(started.elapsed() / BATCH);
        alongside.push(rt.block_on(batch(&sandbox, &prepared, BATCH))?);
    }
    let (blocking, alongside) = (Stats::new(blocking), Stats::new(alongside));

    // The lean build of the same agent, timed one by one in rounds that
    // alternate with the std build's, so that both see the same machine.
    let lean = sandbox.prepare(&lean_digest, &lean_bytes)?;
    rt.block_on(batch(&sandbox, &lean, 1000))?;
    let (mut lean_warm, mut std_warm) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        lean_warm.extend(rt.block_on(timed(&sandbox, &lean, 2_000))?);
        std_warm.extend(rt.block_on(timed(&sandbox, &prepared, 2_000))?);
    }
    let (lean_warm, std_warm) = (Stats::new(lean_warm), Stats::new(std_warm));

    // Two threads of warm Runs at once, each on its own one-thread runtime.
    let per_thread = 10_000u32;
    let started = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (sandbox, prepared) = (sandbox.clone(), prepared.clone());
                scope.spawn(move || -> anyhow::Result<()> {
                    runtime()?.block_on(batch(&sandbox, &prepared, per_thread))?;
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().map_err(|_| anyhow::anyhow!("bench thread panicked"))??;
        }
        Ok(())
    })?;
    let parallel_rate = f64::from(2 * per_thread) / started.elapsed().as_secs_f64();

    // A native process per Run.
    let mut spawns = Vec::new();
    for _ in 0..300 {
        spawns.push(spawn_once()?);
    }
    let native = Stats::new(spawns);

    // Paired: short rounds of warm Runs and native spawns, one after the
    // other, so both sides of the ratio see the same machine. On a shared
    // (virtual) machine the speed of a core drifts over seconds, which moves
    // a median taken minutes apart from the other one; the median of the
    // per-round ratios does not depend on that drift.
    let mut paired_runs = Vec::new();
    let mut paired_lean = Vec::new();
    let mut paired_spawns = Vec::new();
    let mut round_ratios = Vec::new();
    let mut lean_round_ratios = Vec::new();
    for _ in 0..PAIRED_ROUNDS {
        let runs = rt.block_on(timed(&sandbox, &prepared, PAIRED_RUNS))?;
        let lean_runs = rt.block_on(timed(&sandbox, &lean, PAIRED_RUNS))?;
        let mut spawns = Vec::with_capacity(PAIRED_SPAWNS);
        for _ in 0..PAIRED_SPAWNS {
            spawns.push(spawn_once()?);
        }
        let (runs, lean_runs, spawns) = (Stats::new(runs), Stats::new(lean_runs), Stats::new(spawns));
        round_ratios.push(spawns.median().as_secs_f64() / runs.median().as_secs_f64());
        lean_round_ratios.push(spawns.median().as_secs_f64() / lean_runs.median().as_secs_f64());
        paired_runs.extend(runs.samples);
        paired_lean.extend(lean_runs.samples);
        paired_spawns.extend(spawns.samples);
    }
    let (paired_runs, paired_lean, paired_spawns) =
        (Stats::new(paired_runs), Stats::new(paired_lean), Stats::new(paired_spawns));
    round_ratios.sort_by(f64::total_cmp);
    lean_round_ratios.sort_by(f64::total_cmp);
    let pick = |ratios: &[f64], p: f64| ratios[((ratios.len() - 1) as f64 * p).round() as usize];
    let round_ratio = |p: f64| pick(&round_ratios, p);
    let lean_round_ratio = |p: f64| pick(&lean_round_ratios, p);
    // Like for like: each native spawn is timed on its own, so compare it
    // with warm Runs timed on their own; the batch mean (which carries the
    // occasional slow Run) is reported too.
    let ratio = native.median().as_secs_f64() / warm.median().as_secs_f64();
    let lean_ratio = native.median().as_secs_f64() / lean_warm.median().as_secs_f64();
    let batch_ratio = native.median().as_secs_f64() / batches.median().as_secs_f64();

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("echo component: {} bytes, digest {digest}, {cores} cores, load average {}", bytes.len(), loadavg.trim());
    println!("echo-lean component: {} bytes, digest {lean_digest}", lean_bytes.len());
    println!();
    println!("| measurement | median | p99 | min | notes |");
    println!("|---|---|---|---|---|");
    println!(
        "| compile (Cranelift, empty cache) | {} | {} | {} | 5 runs, fresh engine each |",
        ms(compile.median()),
        ms(compile.pct(0.99)),
        ms(compile.pct(0.0))
    );
    println!(
        "| cached load (new Sandbox, warm disk cache) | {} | {} | {} | 20 runs: read + checksum + deserialize + link |",
        ms(load.median()),
        ms(load.pct(0.99)),
        ms(load.pct(0.0))
    );
    println!(
        "| warm Run, timed one by one (new store + instantiate + run + teardown) | {} | {} | {} | 20 000 Runs |",
        us(warm.median()),
        us(warm.pct(0.99)),
        us(warm.pct(0.0))
    );
    println!(
        "| warm Run, mean of a batch | {} | {} | {} | 30 batches of {BATCH} Runs |",
        us(batches.median()),
        us(batches.pct(0.99)),
        us(batches.pct(0.0))
    );
    println!(
        "| warm Run through the blocking entry point (`Sandbox::run`), mean of a batch | {} | {} | {} | 10 batches of {BATCH}; `run_async` batches alternating with them: {} |",
        us(blocking.median()),
        us(blocking.pct(0.99)),
        us(blocking.pct(0.0)),
        us(alongside.median())
    );
    println!(
        "| warm Run of `echo-lean` (no_std, no WASI imports), one by one | {} | {} | {} | 10 rounds of 2 000, alternating with `echo` rounds: {} |",
        us(lean_warm.median()),
        us(lean_warm.pct(0.99)),
        us(lean_warm.pct(0.0)),
        us(std_warm.median())
    );
    println!("| warm Runs on 2 threads | {parallel_rate:.0} Runs/s | | | 2 × 10 000 Runs, a one-thread runtime each |");
    println!(
        "| native process per Run (`/bin/echo`) | {} | {} | {} | 300 spawns |",
        ms(native.median()),
        ms(native.pct(0.99)),
        ms(native.pct(0.0))
    );
    println!(
        "| paired: warm Run | {} | {} | {} | {PAIRED_ROUNDS} rounds of {PAIRED_RUNS} Runs, each round followed by its spawns |",
        us(paired_runs.median()),
        us(paired_runs.pct(0.99)),
        us(paired_runs.pct(0.0))
    );
    println!(
        "| paired: warm Run of `echo-lean` | {} | {} | {} | {PAIRED_ROUNDS} rounds of {PAIRED_RUNS} Runs |",
        us(paired_lean.median()),
        us(paired_lean.pct(0.99)),
        us(paired_lean.pct(0.0))
    );
    println!(
        "| paired: native process per Run | {} | {} | {} | {PAIRED_ROUNDS} rounds of {PAIRED_SPAWNS} spawns |",
        ms(paired_spawns.median()),
        ms(paired_spawns.pct(0.99)),
        ms(paired_spawns.pct(0.0))
    );
    println!();
    println!(
        "warm Run deciles (one by one): p10 {} · p25 {} · p50 {} · p75 {} · p90 {}",
        us(warm.pct(0.1)),
        us(warm.pct(0.25)),
        us(warm.median()),
        us(warm.pct(0.75)),
        us(warm.pct(0.9))
    );
    println!(
        "native spawn / warm Run: {ratio:.0}× (medians, each timed on its own); {batch_ratio:.0}× against the batch mean"
    );
    println!(
        "paired: {:.0}× (medians of all paired samples); per-round ratio median {:.0}×, p10 {:.0}×, p90 {:.0}×",
        paired_spawns.median().as_secs_f64() / paired_runs.median().as_secs_f64(),
        round_ratio(0.5),
        round_ratio(0.1),
        round_ratio(0.9)
    );
    println!(
        "echo-lean: native spawn / warm Run {lean_ratio:.0}× (medians); paired {:.0}×, per-round ratio median {:.0}×, p10 {:.0}×, p90 {:.0}×",
        paired_spawns.median().as_secs_f64() / paired_lean.median().as_secs_f64(),
        lean_round_ratio(0.5),
        lean_round_ratio(0.1),
        lean_round_ratio(0.9)
    );
    Ok(())
}
