//! worker.toml: relative paths in it are read from its directory, and
//! `shutdown_grace_secs` has a default and a range.

use std::path::{Path, PathBuf};

use taskrun_worker::WorkerConfig;
use taskrun_worker::daemon::MAX_SHUTDOWN_GRACE_SECS;

const BASE: &str = "id = \"w1\"\ninsecure = true\n";

/// Each path key, set relative, absolute, with `.`/`..`, or left to its
/// default, read from a file in `/etc/taskrun` (or given as a bare file
/// name, whose directory is the working one).
#[test]
fn relative_paths_in_the_file_are_read_from_its_directory() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "/etc/taskrun",
            "data_dir = \"data\"\ntrust_policy = \"trust.toml\"",
            "/etc/taskrun/data",
            "/etc/taskrun/trust.toml",
        ),
        (
            "/etc/taskrun",
            "data_dir = \"/var/lib/worker\"\ntrust_policy = \"/etc/keys/trust.toml\"",
            "/var/lib/worker",
            "/etc/keys/trust.toml",
        ),
        (
            "/etc/taskrun",
            "data_dir = \"../state/w1\"\ntrust_policy = \"./keys/trust.toml\"",
            "/etc/taskrun/../state/w1",
            "/etc/taskrun/./keys/trust.toml",
        ),
        // The default is not in the file: it stays relative to the working directory.
        ("/etc/taskrun", "trust_policy = \"trust.toml\"", "taskrun-worker-data", "/etc/taskrun/trust.toml"),
        ("", "data_dir = \"data\"\ntrust_policy = \"trust.toml\"", "data", "trust.toml"),
    ];
    for (dir, toml, data_dir, trust_policy) in cases {
        let config = WorkerConfig::from_toml_in(&format!("{BASE}{toml}"), Path::new(dir)).expect(toml);
        assert_eq!(config.data_dir, PathBuf::from(data_dir), "{dir}: {toml:?}");
        assert_eq!(config.trust_policy, PathBuf::from(trust_policy), "{dir}: {toml:?}");
    }
    // Without a file to be relative to, paths stay as written.
    let config = WorkerConfig::from_toml(&format!("{BASE}trust_policy = \"trust.toml\"")).expect("parses");
    assert_eq!(config.trust_policy, PathBuf::from("trust.toml"));
}

/// A Worker started from a config file elsewhere finds the trust policy
/// beside the file and keeps its data there.
#[test]
fn a_worker_reads_its_files_from_the_config_file_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir");
    taskrun_signing::TrustPolicy::new().save(conf.join("trust.toml")).expect("policy");
    let file = conf.join("worker.toml");
    std::fs::write(&file, format!("{BASE}data_dir = \"state\"\ntrust_policy = \"trust.toml\"\n")).expect("write");
    let config = WorkerConfig::from_file(&file).expect("loads");
    assert_eq!((config.data_dir.clone(), config.trust_policy.clone()), (conf.join("state"), conf.join("trust.toml")));
    taskrun_worker::Worker::new(config).expect("the worker starts");
    assert!(conf.join("state").is_dir(), "data_dir made beside the config file");
}

#[test]
fn the_shutdown_grace_period_defaults_to_30_s_and_is_bounded() {
    let parse = |extra: &str| {
        let config = WorkerConfig::from_toml(&format!("{BASE}trust_policy = \"t.toml\"\n{extra}"))?;
        config.validate().map(|()| config.shutdown_grace_secs)
    };
    assert_eq!(parse("").expect("default"), 30);
    assert_eq!(parse("shutdown_grace_secs = 0").expect("stop at once"), 0);
    assert_eq!(parse("shutdown_grace_secs = 3600").expect("an hour"), MAX_SHUTDOWN_GRACE_SECS);
    let error = parse("shutdown_grace_secs = 3601").expect_err("over an hour").to_string();
    assert_eq!(
        error,
        "worker config: shutdown_grace_secs must be 0 to 3600 (seconds), not 3601: a Run that needs longer is better \
         stopped and retried on another Worker"
    );
    let error = parse("shutdown_grace_secs = -1").expect_err("negative").to_string();
    assert_eq!(error, "worker config: line 4, column 23: invalid value: integer `-1`, expected u64");
}

/// A data_dir that earlier versions read from the working directory, and
/// that exists there but not beside the config file, is refused naming
/// both: starting on an empty data dir would lose the rollback floor.
#[test]
fn a_data_dir_left_where_earlier_versions_read_it_is_refused() {
    let conf = tempfile::tempdir().expect("tempdir");
    // Tests run in the crate's directory, which has a `src`.
    let error =
        WorkerConfig::from_toml_in(&format!("{BASE}trust_policy = \"t.toml\"\ndata_dir = \"src\""), conf.path())
            .expect_err("src exists only in the working directory")
            .to_string();
    assert!(error.contains(&format!("as {}", conf.path().join("src").display())), "{error}");
    assert!(error.contains("but src does") && error.contains("absolute path"), "{error}");
    // Once it is beside the file, that one is used.
    std::fs::create_dir(conf.path().join("src")).expect("mkdir");
    let config =
        WorkerConfig::from_toml_in(&format!("{BASE}trust_policy = \"t.toml\"\ndata_dir = \"src\""), conf.path())
            .expect("moved");
    assert_eq!(config.data_dir, conf.path().join("src"));
}
