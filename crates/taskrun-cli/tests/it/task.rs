//! `taskrun task ...` against a control plane without Workers: Tasks stay
//! PENDING until cancelled.

use std::time::Duration;

use crate::support::{Env, dead_url, path_str, run, run_with_stdin, taskrun, wait};
use taskrun_store::StoreConfig;

#[tokio::test]
async fn bad_json_is_refused_locally_before_any_request() {
    // A listener that would see any connection the command made.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());

    let out = run(Some(&url), &["task", "create", "echo", "--input", "{\"text\": hello}"]).await;
    out.expect_code(64);
    assert_eq!(out.stderr.trim(), "error: --input is not valid JSON: expected value at line 1 column 10");
    assert!(out.stdout.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input.json");
    std::fs::write(&file, "[1, 2,").unwrap();
    let out = run(Some(&url), &["task", "create", "echo", "--input-file", path_str(&file)]).await;
    out.expect_code(64);
    assert!(out.stderr.contains(&format!("--input-file {} is not valid JSON", file.display())), "{}", out.stderr);

    let out = run_with_stdin(Some(&url), &["task", "create", "echo", "--input", "-"], "not json").await;
    out.expect_code(64);
    assert!(out.stderr.contains("the input read from stdin (--input -) is not valid JSON"), "{}", out.stderr);

    let out = run(Some(&url), &["task", "create", "echo", "--label", "a=1", "--label", "a=2"]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("--label a is given twice"), "{}", out.stderr);

    let out = run(Some(&url), &["task", "create", "echo", "--fan-out", "65"]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("--fan-out 65: must be 1 to 64"), "{}", out.stderr);

    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "no command may have connected to the control plane");
}

#[tokio::test]
async fn an_unreachable_control_plane_is_one_line_that_says_what_to_do() {
    let url = dead_url();
    let out = run(Some(&url), &["task", "list"]).await;
    out.expect_code(1);
    let message = out.stderr.trim();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!(
            "error: cannot reach the control plane at {url}: is it running? (set --server or TASKRUN_SERVER"
        )),
        "{message}"
    );

    // TASKRUN_SERVER is read too.
    let mut cmd = taskrun(None, &["task", "get", "task_x"]);
    cmd.env("TASKRUN_SERVER", &url);
    let out = wait(cmd.spawn().unwrap()).await;
    out.expect_code(1);
    assert!(out.stderr.contains(&format!("cannot reach the control plane at {url}")), "{}", out.stderr);
}

#[tokio::test]
async fn a_malformed_server_url_is_a_usage_error_that_says_why() {
    for (server, why) in [
        ("http://127.0.0.1:notaport", "the port \"notaport\" is not a number from 1 to 65535"),
        ("http://127.0.0.1:70000", "the port \"70000\" is not a number from 1 to 65535"),
        ("127.0.0.1:", "the port \"\" is not a number from 1 to 65535"),
        ("http://:7070", "it has no host"),
    ] {
        let out = run(Some(server), &["task", "list"]).await;
        out.expect_code(64);
        assert_eq!(
            out.stderr.trim(),
            format!("error: --server {server} is not a valid URL: {why} (e.g. http://127.0.0.1:7070)"),
            "{server}"
        );
    }
    // Commands that never connect do not care.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    run(Some("http://127.0.0.1:notaport"), &["keys", "generate", "--out", path_str(&key)]).await.ok();
}

#[tokio::test]
async fn an_input_no_request_can_carry_is_refused_before_sending() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.json");
    // A JSON string of 20 MB.
    let mut text = String::with_capacity(20_000_000);
    text.push('"');
    text.extend(std::iter::repeat_n('x', 20_000_000 - 2));
    text.push('"');
    std::fs::write(&file, &text).unwrap();

    let out = run(Some(&url), &["task", "create", "echo", "--input-file", path_str(&file)]).await;
    out.expect_code(64);
    assert_eq!(
        out.stderr.trim(),
        format!(
            "error: --input-file {} is 19.1 MiB (20000000 bytes), more than a request to the control plane can \
             carry (16.0 MiB); the control plane's limits.max_input_bytes (1 MiB by default) decides how large an \
             input may be: pass a smaller input",
            file.display()
        )
    );
    // Just under 16 MiB of input, but not with the rest of the request.
    text.truncate((16 << 20) - 10);
    text.push('"');
    let out = run_with_stdin(Some(&url), &["task", "create", "echo", "--input", "-", "--label", "a=b"], &text).await;
    out.expect_code(64);
    assert!(
        out.stderr.starts_with("error: the input is 16.0 MiB (16777207 bytes), more than a request"),
        "{}",
        out.stderr
    );

    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "nothing may have been sent");
}

#[tokio::test]
async fn cancelling_a_task_that_has_ended_says_so() {
    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;
    let id = env.run(&["task", "create", "echo"]).await.stdout.trim().to_owned();
    env.run(&["task", "cancel", &id]).await.ok();
    let out = env.run(&["task", "cancel", &id]).await;
    out.expect_code(1);
    assert_eq!(out.stderr.trim(), format!("error: task {id} is already CANCELLED"));
    env.stop().await;
}

#[tokio::test]
async fn creating_a_task_for_an_unknown_agent_prints_the_not_found_message() {
    let env = Env::start().await;
    let out = env.run(&["task", "create", "nope", "--input", "{}"]).await;
    out.expect_code(1);
    assert_eq!(out.stderr.trim(), "error: agent nope is not published (publish it with `taskrun agent publish`)");
    assert!(out.stdout.is_empty());

    let out = env.run(&["task", "get", "task_doesnotexist"]).await;
    out.expect_code(1);
    assert!(out.stderr.starts_with("error: ") && out.stderr.contains("task_doesnotexist"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1);
    env.stop().await;
}

#[tokio::test]
async fn create_get_list_cancel_round_trip() {
    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;

    let input = r#"{"text": "hi",   "n": [1, 2]}"#;
    let out = env
        .run(&[
            "task",
            "create",
            "echo@1.0.0",
            "--input",
            input,
            "--label",
            "team=search",
            "--label",
            "env=dev",
            "--worker-label",
            "gpu=a100",
            "--priority",
            "-5",
            "--max-attempts",
            "2",
            "--timeout",
            "1m30s",
            "--schedule-timeout",
            "10m",
            "--fan-out",
            "2",
        ])
        .await;
    out.ok();
    let id = out.stdout.trim().to_owned();
    assert!(id.starts_with("task_"), "{id}");
    assert_eq!(out.stdout.lines().count(), 1, "only the id on stdout");

    let out = env.run(&["task", "get", &id]).await;
    out.ok();
    for expected in [
        "Task:".to_owned(),
        id.clone(),
        "echo@1.0.0".to_owned(),
        "PENDING".to_owned(),
        "env=dev,team=search".to_owned(),
        "gpu=a100".to_owned(),
        "1m30s".to_owned(),
        "10m".to_owned(),
    ] {
        assert!(out.stdout.contains(&expected), "{expected:?} missing from:\n{}", out.stdout);
    }
    let run_rows = out.stdout.lines().skip_while(|l| !l.starts_with("RUN")).skip(1).count();
    assert_eq!(run_rows, 2, "one Run per shard:\n{}", out.stdout);

    let out = env.run(&["task", "get", &id, "--json"]).await;
    out.ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["task"]["task_id"], id.as_str());
    assert_eq!(json["task"]["status"], "PENDING");
    assert_eq!(json["task"]["priority"], -5);
    assert_eq!(json["task"]["max_attempts"], 2);
    assert_eq!(json["task"]["run_timeout_ms"], 90_000);
    assert_eq!(json["task"]["schedule_to_start_timeout_ms"], 600_000);
    assert_eq!(json["task"]["labels"], serde_json::json!({"team": "search", "env": "dev"}));
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);
    assert_eq!(json["runs"][0]["status"], "PENDING");
    // The input is kept byte for byte, spaces included.
    assert!(out.stdout.contains(input), "{}", out.stdout);

    let second = env.run(&["task", "create", "echo", "--label", "team=ads"]).await;
    second.ok();
    let second_id = second.stdout.trim().to_owned();

    let out = env.run(&["task", "list"]).await;
    out.ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("TASK"), "{}", out.stdout);
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines.iter().any(|l| l.starts_with(&id)) && lines.iter().any(|l| l.starts_with(&second_id)));

    let out = env.run(&["task", "list", "--label", "team=search", "--json"]).await;
    out.ok();
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["task_id"], id.as_str());

    let out = env.run(&["task", "cancel", &id, "--reason", "changed my mind"]).await;
    out.ok();
    assert_eq!(out.stdout.trim(), format!("{id} CANCELLED: changed my mind"));

    let out = env.run(&["task", "get", &id, "--json"]).await;
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["task"]["status"], "CANCELLED");
    assert_eq!(json["task"]["error"], "changed my mind");
    assert!(json["runs"].as_array().unwrap().iter().all(|r| r["status"] == "CANCELLED"));

    let out = env.run(&["task", "list", "--status", "cancelled", "--json"]).await;
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(tasks.iter().map(|t| t["task_id"].as_str().unwrap()).collect::<Vec<_>>(), [id.as_str()]);
    let out = env.run(&["task", "list", "--status", "pending", "--agent", "echo", "--json"]).await;
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(tasks.iter().map(|t| t["task_id"].as_str().unwrap()).collect::<Vec<_>>(), [second_id.as_str()]);
    // Several states, newest first: by commas or by repeating the flag.
    for args in [&["--status", "pending,cancelled"][..], &["--status", "cancelled", "--status", "pending"]] {
        let out = env.run(&[&["task", "list", "--json"][..], args].concat()).await;
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        let listed: Vec<&str> = tasks.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
        assert_eq!(listed, [second_id.as_str(), id.as_str()], "{args:?}");
    }
    let out = env.run(&["task", "list", "--status", "running,done"]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("\"done\" is not a Task status"), "{}", out.stderr);
    env.stop().await;
}

#[tokio::test]
async fn input_comes_from_stdin_or_a_file_and_idempotency_keys_repeat() {
    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;

    let out = run_with_stdin(env.url(), &["task", "create", "echo", "--input", "-"], "{\"from\": \"stdin\"}\n").await;
    out.ok();
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["task", "get", out.stdout.trim(), "--json"]).await.stdout).unwrap();
    assert_eq!(json["task"]["input"], serde_json::json!({"from": "stdin"}));

    let file = env.path("input.json");
    std::fs::write(&file, "[1, 2, 3]").unwrap();
    let out = env.run(&["task", "create", "echo", "--input-file", path_str(&file)]).await;
    out.ok();
    let json: serde_json::Value =
        serde_json::from_str(&env.run(&["task", "get", out.stdout.trim(), "--json"]).await.stdout).unwrap();
    assert_eq!(json["task"]["input"], serde_json::json!([1, 2, 3]));

    let first = env.run(&["task", "create", "echo", "--idempotency-key", "order-17"]).await;
    first.ok();
    let again = env.run(&["task", "create", "echo", "--idempotency-key", "order-17"]).await;
    again.ok();
    assert_eq!(first.stdout, again.stdout, "the same key returns the same Task");
    assert!(again.stderr.contains("same idempotency key"), "{}", again.stderr);
    env.stop().await;
}

#[tokio::test]
async fn list_follows_pages_only_when_asked() {
    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(env.run(&["task", "create", "echo"]).await.stdout.trim().to_owned());
    }
    let ids = |out: &crate::support::Output| -> Vec<String> {
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        tasks.iter().map(|t| t["task_id"].as_str().unwrap().to_owned()).collect()
    };

    // Every page, one Task per request.
    let out = env.run(&["task", "list", "--all", "--page-size", "1", "--json"]).await;
    out.ok();
    let all = ids(&out);
    created.reverse();
    assert_eq!(all, created, "newest first");
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    // The first two of the same order, one per request; --limit says how
    // many, so no note that there are more.
    let out = env.run(&["task", "list", "--limit", "2", "--page-size", "1", "--json"]).await;
    out.ok();
    assert_eq!(ids(&out), all[..2]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    // --limit larger than a page, smaller than the total.
    let out = env.run(&["task", "list", "--limit", "2", "--json"]).await;
    assert_eq!(ids(&out), all[..2]);
    let out = env.run(&["task", "list", "--limit", "1"]).await;
    out.ok();
    assert_eq!(out.stdout.lines().count(), 2, "a header and one Task: {}", out.stdout);
    assert!(out.stderr.is_empty(), "{}", out.stderr);

    // --page-size alone: one page of that size, and the note.
    let out = env.run(&["task", "list", "--page-size", "2", "--json"]).await;
    out.ok();
    assert_eq!(ids(&out), all[..2]);
    assert_eq!(out.stderr.trim(), "more Tasks match: use --all, or --limit N to see more");
    let out = env.run(&["task", "list", "--page-size", "3", "--json"]).await;
    assert_eq!(ids(&out), all);
    assert!(out.stderr.is_empty(), "all fit in the page: {}", out.stderr);
    env.stop().await;
}

/// The control plane looks at a bounded number of Tasks per ListTasks
/// call, so a filter few Tasks match gets short or empty pages with a
/// token: `task list` carries on until it has a page's worth.
#[tokio::test]
async fn list_fills_its_page_from_short_answers() {
    let env = Env::start_with(StoreConfig { max_tasks_examined_per_list: 2, ..StoreConfig::default() }).await;
    env.publish("echo", "1.0.0").await;
    let mut labelled = Vec::new();
    for _ in 0..2 {
        labelled.push(env.run(&["task", "create", "echo", "--label", "team=a"]).await.stdout.trim().to_owned());
    }
    for _ in 0..5 {
        env.run(&["task", "create", "echo"]).await.ok();
    }
    labelled.reverse();
    let ids = |out: &crate::support::Output| -> Vec<String> {
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
        tasks.iter().map(|t| t["task_id"].as_str().unwrap().to_owned()).collect()
    };
    // The first answers hold nothing (five newer Tasks without the label).
    let out = env.run(&["task", "list", "--label", "team=a", "--json"]).await;
    out.ok();
    assert_eq!(ids(&out), labelled);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let out = env.run(&["task", "list", "--label", "team=a", "--page-size", "1", "--json"]).await;
    assert_eq!(ids(&out), labelled[..1]);
    assert_eq!(out.stderr.trim(), "more Tasks match: use --all, or --limit N to see more");
    let out = env.run(&["task", "list", "--label", "team=a", "--all", "--page-size", "1", "--json"]).await;
    assert_eq!(ids(&out), labelled);
    env.stop().await;
}

#[tokio::test]
async fn watching_a_cancelled_task_exits_with_code_2() {
    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;
    let id = env.run(&["task", "create", "echo"]).await.stdout.trim().to_owned();
    env.run(&["task", "cancel", &id, "--reason", "not needed"]).await.ok();

    let out = env.run(&["task", "watch", &id]).await;
    out.expect_code(2);
    assert!(out.stdout.is_empty(), "no result for a cancelled Task: {}", out.stdout);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.first().copied(), Some(format!("[PENDING] task {id}: task created with 1 run(s)").as_str()));
    assert!(
        lines.iter().any(|l| l.starts_with(&format!("[CANCELLED] run {id}.0.1 ")) && l.contains("attempt 1")),
        "{}",
        out.stderr
    );
    assert!(lines.contains(&format!("[CANCELLED] task {id}: not needed").as_str()), "{}", out.stderr);
    assert_eq!(lines.last().copied(), Some(format!("task {id} was cancelled: not needed").as_str()));

    // From a cursor: the events up to it are not shown again.
    let out = env.run(&["task", "watch", &id, "--cursor", "1"]).await;
    out.expect_code(2);
    assert!(!out.stderr.contains("[PENDING]"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("[CANCELLED] task {id}")), "{}", out.stderr);

    // From past the last event: nothing to show, the Task's end at once
    // (no reconnecting to wait for events that will never come).
    let out = env.run(&["task", "watch", &id, "--cursor", "1000"]).await;
    out.expect_code(2);
    assert!(!out.stderr.contains("reconnecting"), "{}", out.stderr);
    assert_eq!(out.stderr.trim(), format!("task {id} was cancelled: not needed"));
    env.stop().await;
}

#[tokio::test]
async fn create_with_watch_follows_the_task_live() {
    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;
    let child = taskrun(env.url(), &["task", "create", "echo", "--watch"]).spawn().unwrap();

    let id = wait_for_one_task(&env).await;
    env.run(&["task", "cancel", &id]).await.ok();
    let out = wait(child).await;
    out.expect_code(2);
    assert!(out.stdout.is_empty(), "the id goes to stderr with --watch: {}", out.stdout);
    assert!(out.stderr.starts_with(&format!("created {id}\n")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("[CANCELLED] task {id}: cancelled by a client")), "{}", out.stderr);
    env.stop().await;
}

#[tokio::test]
async fn watch_resumes_after_the_control_plane_restarts() {
    let mut env = Env::start().await;
    env.publish("echo", "1.0.0").await;
    let id = env.run(&["task", "create", "echo"]).await.stdout.trim().to_owned();
    let child = taskrun(env.url(), &["task", "watch", &id]).spawn().unwrap();
    // Let the watch see the first event before the control plane goes away.
    tokio::time::sleep(Duration::from_millis(500)).await;

    env.restart().await;
    env.run(&["task", "cancel", &id, "--reason", "after restart"]).await.ok();
    let out = wait(child).await;
    out.expect_code(2);
    assert!(out.stderr.contains("reconnecting"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("[PENDING] task").count(), 1, "no event is shown twice:\n{}", out.stderr);
    assert!(out.stderr.contains(&format!("[CANCELLED] task {id}: after restart")), "{}", out.stderr);
    env.stop().await;
}

/// The id of the only Task, once there is one.
async fn wait_for_one_task(env: &Env) -> String {
    for _ in 0..100 {
        let out = env.run(&["task", "list", "--json"]).await;
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap_or_default();
        if let Some(task) = tasks.first() {
            return task["task_id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no Task appeared");
}

/// Results too large for one GetTask reply are shown as left out, with
/// their size; `--run` fetches one whole.
#[tokio::test]
async fn results_left_out_of_a_reply_are_shown_as_such_and_fetched_with_run() {
    use taskrun_core::{Clock as _, Json, RunId, RunOutcome, SystemClock, TaskId};
    use taskrun_store::RunStore as _;

    let env = Env::start().await;
    env.publish("echo", "1.0.0").await;
    let id = env.run(&["task", "create", "echo", "--fan-out", "3"]).await.stdout.trim().to_owned();
    let task: TaskId = id.parse().unwrap();
    // Each shard completes with 1.2 MiB of its own: the Task (with shard
    // 0's) and shard 0's fill most of the reply, the others do not fit.
    let result = |shard: u32| format!(r#"{{"shard":{shard},"text":"{}"}}"#, "x".repeat(1200 << 10));
    let worker = "w1".parse().unwrap();
    let now = SystemClock.now();
    for shard in 0..3 {
        let run = RunId::of(&task, shard, 1);
        let lease = env.store.assign_run(&run, &worker, 0, now).await.unwrap().run.lease;
        let outcome = RunOutcome::Completed { result: Json::parse("result", result(shard)).unwrap() };
        env.store.finish_run(&run, lease, outcome, now).await.unwrap();
    }

    let out = env.run(&["task", "get", &id]).await;
    out.ok();
    let rows: Vec<&str> = out.stdout.lines().skip_while(|l| !l.starts_with("RUN")).collect();
    assert!(rows[0].contains("RESULT"), "{}", out.stdout);
    assert!(rows[1].contains("1.2 MiB") && !rows[1].contains("left out"), "{}", out.stdout);
    for row in &rows[2..] {
        assert!(row.contains("left out (1.2 MiB)"), "{}", out.stdout);
    }
    assert!(out.stderr.contains(&format!("taskrun task get {id} --run {id}.1.1")), "{}", out.stderr);

    let out = env.run(&["task", "get", &id, "--json"]).await;
    out.ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["task"]["result"]["shard"], 0);
    assert_eq!(json["runs"][0]["result"]["shard"], 0);
    assert!(json["runs"][0].get("result_omitted_bytes").is_none(), "{}", json["runs"][0]);
    for shard in [1, 2] {
        let run = &json["runs"][shard];
        assert!(run["result"].is_null(), "{run}");
        assert_eq!(run["result_omitted_bytes"], result(shard as u32).len());
    }

    let run = format!("{id}.2.1");
    let out = env.run(&["task", "get", &id, "--run", &run, "--json"]).await;
    out.ok();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 1);
    assert_eq!(json["runs"][0]["run_id"], run.as_str());
    assert_eq!(json["runs"][0]["result"].to_string(), result(2));
    let out = env.run(&["task", "get", &id, "--run", &run]).await;
    out.ok();
    for expected in
        ["Run:".to_owned(), run.clone(), "COMPLETED".to_owned(), r#"{"shard":2,"#.to_owned(), "1.2 MiB".to_owned()]
    {
        assert!(out.stdout.contains(&expected), "{expected:?} missing from:\n{}", out.stdout);
    }

    // A Run of another Task is refused before anything is sent; a Run the
    // Task does not have is the control plane's NOT_FOUND.
    let out = env.run(&["task", "get", &id, "--run", "task_other.0.1"]).await;
    out.expect_code(64);
    assert!(out.stderr.contains(&format!("--run task_other.0.1 is not a Run of task {id}")), "{}", out.stderr);
    let out = env.run(&["task", "get", &id, "--run", &format!("{id}.0.2")]).await;
    out.expect_code(1);
    assert!(out.stderr.contains(&format!("{id}.0.2")), "{}", out.stderr);
    let out = env.run(&["task", "get", &id, "--run", "nope"]).await;
    out.expect_code(64);
    assert!(out.stderr.contains("is not a run id"), "{}", out.stderr);
    env.stop().await;
}
