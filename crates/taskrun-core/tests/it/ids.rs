use expect_test::{Expect, expect};
use taskrun_core::{AgentDigest, AgentName, AgentRef, AgentVersion, Modality, RunId, TaskId, WorkerId};

fn check<T: std::str::FromStr<Err = taskrun_core::Error> + std::fmt::Display>(input: &str, expect: Expect) {
    let got = match input.parse::<T>() {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("err {e}"),
    };
    expect.assert_eq(&got);
}

#[test]
fn opaque_ids() {
    check::<TaskId>("task_0192", expect!["ok task_0192"]);
    check::<TaskId>("", expect!["err missing task_id"]);
    check::<TaskId>("-x", expect![[r#"err invalid task_id "-x": must start with a letter or digit"#]]);
    check::<RunId>(
        "run 1",
        expect![[r#"err invalid run_id "run 1": character ' ' is not allowed (use a-z, A-Z, 0-9, '.', '_', '-')"#]],
    );
    check::<WorkerId>(
        &"w".repeat(129),
        expect![[
            r#"err invalid worker_id "wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww...": longer than 128 bytes"#
        ]],
    );
    check::<WorkerId>("worker-a.example_1", expect!["ok worker-a.example_1"]);
}

#[test]
fn generated_ids_are_valid_unique_and_ordered() {
    let a = TaskId::generate();
    let b = TaskId::generate();
    assert_ne!(a, b);
    assert!(a < b, "uuid v7 ids sort by creation: {a} {b}");
    assert_eq!(a.as_str().parse::<TaskId>().unwrap(), a);
}

#[test]
fn run_ids_name_their_task_shard_and_attempt() {
    let task = TaskId::generate();
    let run = RunId::of(&task, 3, 12);
    assert_eq!(run.as_str(), format!("{task}.3.12"));
    assert_eq!(run.parts(), Some((task.clone(), 3, 12)));
    assert_eq!(run.as_str().parse::<RunId>().unwrap(), run);
    // The longest Task id still makes a valid Run id.
    let long: TaskId = "t".repeat(TaskId::MAX_LEN).parse().unwrap();
    let run = RunId::of(&long, u32::MAX, u32::MAX);
    assert_eq!(run.as_str().parse::<RunId>().unwrap().task_id(), Some(long));
    // Ids not made by `RunId::of` name no Task.
    for id in ["run_0192", "task_1.0", "task_1.00.1", "task_1.0.x", "task_1.0.4294967296", ".0.1", "task_1.-1.1"] {
        let run: RunId = match id.parse() {
            Ok(run) => run,
            Err(_) => continue,
        };
        assert_eq!(run.parts(), None, "{id}");
    }
}

#[test]
fn agent_names() {
    check::<AgentName>("summarize", expect!["ok summarize"]);
    check::<AgentName>("chat-2", expect!["ok chat-2"]);
    check::<AgentName>("Chat", expect![[r#"err invalid agent_name "Chat": must start with a lowercase letter"#]]);
    check::<AgentName>("chat-", expect![[r#"err invalid agent_name "chat-": must not end with '-'"#]]);
    check::<AgentName>(
        "a_b",
        expect![[r#"err invalid agent_name "a_b": character '_' is not allowed (use a-z, 0-9, '-')"#]],
    );
    check::<AgentName>("", expect!["err missing agent_name"]);
}

#[test]
fn agent_versions() {
    check::<AgentVersion>("1.2.3", expect!["ok 1.2.3"]);
    check::<AgentVersion>(
        "1.2",
        expect![[r#"err invalid agent_version "1.2": expected MAJOR.MINOR.PATCH, e.g. 1.2.3"#]],
    );
    check::<AgentVersion>(
        "1.02.3",
        expect![[r#"err invalid agent_version "1.02.3": each part must be a number without leading zeros"#]],
    );
    check::<AgentVersion>(
        "1.2.99999999999",
        expect![[r#"err invalid agent_version "1.2.99999999999": part does not fit in 32 bits"#]],
    );
    check::<AgentVersion>(
        "1.-2.3",
        expect![[r#"err invalid agent_version "1.-2.3": each part must be a number without leading zeros"#]],
    );
    let v = |s: &str| s.parse::<AgentVersion>().unwrap();
    assert!(v("1.10.0") > v("1.9.9"));
    assert!(v("2.0.0") > v("1.99.99"));
}

#[test]
fn agent_digests() {
    let d = AgentDigest::of(b"hello");
    expect!["sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"].assert_eq(&d.to_string());
    assert_eq!(d.to_string().parse::<AgentDigest>().unwrap(), d);
    check::<AgentDigest>("sha512:00", expect![[r#"err invalid agent_digest "sha512:00": must start with "sha256:""#]]);
    check::<AgentDigest>(
        "sha256:ABCD",
        expect![[r#"err invalid agent_digest "sha256:ABCD": expected 64 lowercase hex digits after "sha256:""#]],
    );
    let upper = format!("sha256:{}", d.hex().to_uppercase());
    assert!(upper.parse::<AgentDigest>().is_err(), "one spelling only");
}

#[test]
fn agent_refs() {
    check::<AgentRef>("echo", expect!["ok echo"]);
    check::<AgentRef>("echo@1.0.0", expect!["ok echo@1.0.0"]);
    let d = AgentDigest::of(b"x");
    let r: AgentRef = format!("echo@{d}").parse().unwrap();
    assert_eq!(r.to_string(), format!("echo@{d}"));
    check::<AgentRef>(
        "echo@latest",
        expect![[r#"err invalid agent_version "latest": expected MAJOR.MINOR.PATCH, e.g. 1.2.3"#]],
    );
    check::<AgentRef>("Echo@1.0.0", expect![[r#"err invalid agent_name "Echo": must start with a lowercase letter"#]]);
}

#[test]
fn ids_round_trip_through_serde() {
    let id = TaskId::generate();
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<TaskId>(&json).unwrap(), id);
    assert!(serde_json::from_str::<TaskId>("\"bad id\"").is_err());
    assert!(serde_json::from_str::<AgentDigest>("\"sha256:zz\"").is_err());
    // Each is written as its text form, and read back.
    let digest = AgentDigest::of(b"hello");
    assert_eq!(serde_json::to_string(&digest).unwrap(), format!("\"{digest}\""));
    assert_eq!(serde_json::from_str::<AgentDigest>(&format!("\"{digest}\"")).unwrap(), digest);
    let worker: WorkerId = "worker-1".parse().unwrap();
    assert_eq!(serde_json::to_string(&worker).unwrap(), "\"worker-1\"");
    let name: AgentName = "echo".parse().unwrap();
    assert_eq!(serde_json::to_string(&name).unwrap(), "\"echo\"");
    assert_eq!(serde_json::to_string(&Modality::Image).unwrap(), "\"image\"");
    assert_eq!("audio".parse::<Modality>().unwrap(), Modality::Audio);
}
