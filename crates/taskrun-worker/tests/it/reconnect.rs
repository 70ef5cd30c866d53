//! After a reconnect, a Worker resends the output the control plane lacks
//! before anything new of the Run: per Run, the seqs on the new stream
//! never go down, and the final report comes after every chunk (a control
//! plane refuses chunks that arrive after the Run's end).

use std::time::Duration;

use taskrun_agent_artifacts as artifacts;
use taskrun_proto::pb;
use taskrun_worker::model::{BackendConfig, ProviderKind};

use crate::scripted::*;

/// The chunks a session ends after, once the Run is going.
const CHUNKS_PER_SESSION: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_output_comes_before_anything_new() {
    let mut scripted = Scripted::start().await;
    let chat = scripted.serve("chat", artifacts::CHAT);
    let mut config = scripted.worker_config("w1");
    // A token every millisecond: the Run emits output for a few seconds.
    config.model_backends =
        vec![BackendConfig { token_delay_ms: Some(1), ..BackendConfig::new("default", ProviderKind::Echo) }];
    let (worker, running) = scripted.start_worker(config);
    let mut session = scripted.session().await;
    session.accept(vec![]);

    let words = 5000;
    let input = serde_json::json!({ "prompt": "w ".repeat(words), "max_tokens": words }).to_string();
    session.send(Down::Assignment(assignment("run_chat", &chat, &input, Duration::from_secs(120))));

    // Each session reads a few new chunks, then the control plane ends it;
    // the next one says it has none of the Run's output, so everything so
    // far is resent while the agent goes on emitting.
    let mut reconnects = 0;
    let mut held_seq = 0;
    let terminal = loop {
        let mut last_seq = 0;
        let mut new_chunks = 0;
        let end = loop {
            match session.next().await.expect("the worker keeps its session") {
                Up::Output(chunk) if chunk.run_id == "run_chat" => {
                    assert!(
                        chunk.seq >= last_seq,
                        "after {reconnects} reconnects, chunk {} came after chunk {last_seq}",
                        chunk.seq
                    );
                    last_seq = chunk.seq;
                    if chunk.seq > held_seq {
                        new_chunks += 1;
                    }
                    if new_chunks == CHUNKS_PER_SESSION {
                        break None;
                    }
                }
                Up::Status(s) if s.run_id == "run_chat" && s.status != i32::from(pb::RunStatus::Running) => {
                    assert!(s.last_output_seq >= last_seq, "ends at {} after chunk {last_seq}", s.last_output_seq);
                    break Some(s);
                }
                _ => {}
            }
        };
        if let Some(end) = end {
            // Nothing of the Run follows its final report: read on until it
            // is resent (it is not acked yet).
            loop {
                match session.next().await.expect("the worker keeps its session") {
                    Up::Output(chunk) if chunk.run_id == "run_chat" => {
                        panic!("chunk {} after the run's final report", chunk.seq)
                    }
                    Up::Status(s) if s.run_id == "run_chat" && s.nonce == end.nonce => break,
                    _ => {}
                }
            }
            break end;
        }
        session.end();
        session = scripted.session().await;
        let held = session.hello.in_flight.iter().find(|r| r.run_id == "run_chat").expect("the run in the hello");
        held_seq = held.last_output_seq;
        session.accept(vec![pb::InFlightRunVerdict {
            run_id: "run_chat".into(),
            lease: 1,
            verdict: pb::InFlightVerdict::Continue.into(),
            output_seq_acked: 0,
            reason: String::new(),
        }]);
        reconnects += 1;
    };
    assert_eq!(terminal.status, i32::from(pb::RunStatus::Completed), "{terminal:?}");
    assert!(reconnects >= 3, "only {reconnects} reconnects while the run went on");
    session.send(status_ack(&terminal));
    eventually("the run to be forgotten", || worker.active_runs().is_empty()).await;

    worker.shut_down();
    let _ = running.await;
}
