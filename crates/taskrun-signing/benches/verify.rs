//! Verification cost for an 8 MiB component.
//!
//! `cargo bench -p taskrun-signing --bench verify` (plain `main`, no
//! harness). Prints one line per case: median, p90 and min of N runs.

#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use taskrun_core::{AgentDigest, ManualClock, Timestamp};
use taskrun_signing::{AgentDetails, Envelope, Expect, SigningKey, TrustPolicy, TrustedKey, Verifier};

const SIZE: usize = 8 << 20;

fn measure(name: &str, runs: usize, mut f: impl FnMut()) {
    // Warm up caches and the CPU's clock.
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    let pct = |p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!("{name:<50} median {:>10.3?}  p90 {:>10.3?}  min {:>10.3?}  ({runs} runs)", pct(50), pct(90), times[0]);
}

fn main() {
    let seed: [u8; 32] = Sha256::digest(b"taskrun-signing bench key").into();
    let key = SigningKey::from_seed(&seed);
    let mut component = vec![0u8; SIZE];
    let mut block: [u8; 32] = Sha256::digest(b"component").into();
    for chunk in component.chunks_mut(32) {
        chunk.copy_from_slice(&block[..chunk.len()]);
        block = Sha256::digest(block).into();
    }
    let component = Bytes::from(component);
    let now = Timestamp(1_700_000_000_000);
    let details = AgentDetails::new("echo".parse().unwrap(), "1.0.0".parse().unwrap(), now);
    let envelope = key.sign_component(&component, details.clone()).unwrap();
    let mut policy = TrustPolicy::new();
    policy.trust(TrustedKey::new(key.public_key())).unwrap();
    let clock = Arc::new(ManualClock::new(now));
    let expect = Expect::name("echo".parse().unwrap());

    println!(
        "taskrun-signing verify benchmark: component {} MiB, envelope {} bytes",
        SIZE >> 20,
        envelope.as_bytes().len()
    );

    measure("sha256 of 8 MiB (baseline)", 50, || {
        black_box(AgentDigest::of(black_box(&component)));
    });
    measure("sign 8 MiB (hash + sign manifest)", 50, || {
        black_box(key.sign_component(black_box(&component), details.clone()).unwrap());
    });
    measure("parse envelope", 10_000, || {
        black_box(Envelope::parse(black_box(envelope.as_bytes())).unwrap());
    });

    let cold = Verifier::new(policy.clone(), clock.clone()).with_cache_capacity(0);
    measure("verify 8 MiB, cold (parse+hash+signature+policy)", 50, || {
        black_box(cold.verify(envelope.as_bytes(), component.clone(), &expect).unwrap());
    });

    let cached = Verifier::new(policy.clone(), clock.clone());
    cached.verify(envelope.as_bytes(), component.clone(), &expect).unwrap();
    measure("verify 8 MiB, cache hit (hash+policy)", 50, || {
        black_box(cached.verify(envelope.as_bytes(), component.clone(), &expect).unwrap());
    });

    let agent = cached.verify(envelope.as_bytes(), component.clone(), &expect).unwrap();
    measure("recheck a VerifiedAgent (policy only, no hash)", 10_000, || {
        cached.recheck(black_box(&agent), &expect).unwrap();
    });

    let small = Bytes::from_static(b"\0asm\x0d\0\x01\0");
    let small_env = key.sign_component(&small, details).unwrap();
    measure("verify 8-byte component, cold (signature-bound)", 2_000, || {
        black_box(cold.verify(small_env.as_bytes(), small.clone(), &expect).unwrap());
    });
    let stats = cached.cache_stats();
    println!("cache: {} hits, {} misses, {} entries", stats.hits, stats.misses, stats.entries);
}
