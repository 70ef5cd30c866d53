//! The config file: relative paths in it are read from its directory.

use std::path::{Path, PathBuf};

use taskrun_control_plane::Config;

/// Each path key, set relative, absolute, with `.`/`..`, or left to its
/// default, read from a file in `/etc/taskrun` (or given as a bare file
/// name, whose directory is the working one).
#[test]
fn relative_paths_in_the_file_are_read_from_its_directory() {
    let cases: &[(&str, &str, &str, Option<&str>)] = &[
        (
            "/etc/taskrun",
            "data_dir = \"cp-data\"\ntrust_policy = \"trust.toml\"",
            "/etc/taskrun/cp-data",
            Some("/etc/taskrun/trust.toml"),
        ),
        (
            "/etc/taskrun",
            "data_dir = \"/var/lib/taskrun\"\ntrust_policy = \"/etc/keys/trust.toml\"",
            "/var/lib/taskrun",
            Some("/etc/keys/trust.toml"),
        ),
        (
            "/etc/taskrun",
            "data_dir = \"../state/cp\"\ntrust_policy = \"./keys/trust.toml\"",
            "/etc/taskrun/../state/cp",
            Some("/etc/taskrun/./keys/trust.toml"),
        ),
        // Defaults are not in the file: they stay relative to the working directory.
        ("/etc/taskrun", "", "taskrun-data", None),
        ("/etc/taskrun", "trust_policy = \"trust.toml\"", "taskrun-data", Some("/etc/taskrun/trust.toml")),
        ("", "data_dir = \"cp-data\"\ntrust_policy = \"trust.toml\"", "cp-data", Some("trust.toml")),
    ];
    for (dir, toml, data_dir, trust_policy) in cases {
        let config = Config::from_toml_in(toml, Path::new(dir)).expect(toml);
        assert_eq!(config.data_dir, PathBuf::from(data_dir), "{dir}: {toml:?}");
        assert_eq!(config.trust_policy, trust_policy.map(PathBuf::from), "{dir}: {toml:?}");
    }
    // Without a file to be relative to, paths stay as written.
    let config = Config::from_toml("data_dir = \"cp-data\"").expect("parses");
    assert_eq!(config.data_dir, PathBuf::from("cp-data"));
}

#[test]
fn a_config_file_reads_its_paths_from_its_own_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir");
    let file = conf.join("cp.toml");
    std::fs::write(&file, "data_dir = \"state\"\ntrust_policy = \"trust.toml\"\n[transport]\ninsecure = true\n")
        .expect("write");
    let config = Config::from_file(&file).expect("loads");
    assert_eq!(config.data_dir, conf.join("state"));
    assert_eq!(config.trust_policy, Some(conf.join("trust.toml")));
}

/// A data_dir that earlier versions read from the working directory, and
/// that exists there but not beside the config file, is refused naming
/// both: starting on an empty data dir would hide every Task.
#[test]
fn a_data_dir_left_where_earlier_versions_read_it_is_refused() {
    let conf = tempfile::tempdir().expect("tempdir");
    // Tests run in the crate's directory, which has a `src`.
    let error = Config::from_toml_in("data_dir = \"src\"", conf.path())
        .expect_err("src exists only in the working directory")
        .to_string();
    assert!(error.contains(&format!("as {}", conf.path().join("src").display())), "{error}");
    assert!(error.contains("but src does") && error.contains("absolute path"), "{error}");
    std::fs::create_dir(conf.path().join("src")).expect("mkdir");
    let config = Config::from_toml_in("data_dir = \"src\"", conf.path()).expect("moved");
    assert_eq!(config.data_dir, conf.path().join("src"));
}
