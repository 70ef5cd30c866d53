//! The whole path on a real Worker (in process) running the real `echo`
//! agent: keys, signing, publishing and `task create --watch` all through
//! the binary.

use std::time::Duration;

use taskrun_worker::{Worker, WorkerConfig};

use crate::support::{Env, path_str, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_a_real_worker_streams_its_output_then_prints_its_result() {
    let env = Env::start().await;
    let wasm = env.path("echo.wasm");
    std::fs::copy(taskrun_agent_artifacts::ECHO, &wasm).expect("the echo agent is built");
    let key = path_str(&env.key);
    env.run(&["agent", "sign", path_str(&wasm), "--key", key, "--name", "echo", "--version", "1.0.0"]).await.ok();
    env.run(&["agent", "publish", path_str(&wasm)]).await.ok();

    // The Worker's own trust policy, made with the binary too.
    let policy = env.path("worker-policy.toml");
    let public_key = env.path("author.key.pub");
    run(None, &["keys", "trust", path_str(&public_key), "--policy", path_str(&policy), "--agent", "echo"]).await.ok();
    let config =
        WorkerConfig::new("worker-e2e".parse().expect("worker id"), env.url.clone(), policy, env.path("worker-data"));
    let worker = Worker::new(config).expect("worker");
    let session = tokio::spawn({
        let worker = worker.clone();
        async move { worker.run().await }
    });

    let input = r#"{"text":"a longer input that the echo agent emits back in several chunks"}"#;
    let out = env.run(&["task", "create", "echo", "--input", input, "--label", "e2e=yes", "--watch"]).await;
    out.ok();
    // The output (the input, in chunks, without a newline), a newline to end
    // it, then the result (the input again).
    assert_eq!(out.stdout, format!("{input}\n{input}\n"), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("attempt 1 on worker worker-e2e"), "{}", out.stderr);
    // A quick Run goes from ASSIGNED straight to COMPLETED.
    assert!(
        out.stderr.lines().any(|l| l.starts_with("[COMPLETED] run task_") && l.contains("on worker worker-e2e")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.lines().any(|l| l.starts_with("[COMPLETED] task task_")), "{}", out.stderr);

    let listed = env.run(&["task", "list", "--label", "e2e=yes", "--json"]).await;
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    let id = tasks[0]["task_id"].as_str().unwrap().to_owned();
    let got = env.run(&["task", "get", &id, "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
    assert_eq!(json["task"]["status"], "COMPLETED");
    assert_eq!(json["task"]["result"], serde_json::from_str::<serde_json::Value>(input).unwrap());
    assert_eq!(json["runs"][0]["worker_id"], "worker-e2e");

    // Watching it again replays everything and exits 0 too.
    let again = env.run(&["task", "watch", &id]).await;
    again.ok();
    assert_eq!(again.stdout, out.stdout);

    worker.shut_down();
    let _ = tokio::time::timeout(Duration::from_secs(10), session).await;
    env.stop().await;
}
