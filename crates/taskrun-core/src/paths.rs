//! Paths in config files, read from the file's directory as Cargo and Spin
//! read theirs. Pure path arithmetic: what a check needs to know of the
//! filesystem, the caller passes in.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The keys of a config file (the control plane's, a Worker's) that name
/// files or directories, as the file sets them: none = left to its default,
/// which stays relative to the working directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ConfigPaths {
    pub data_dir: Option<PathBuf>,
    pub trust_policy: Option<PathBuf>,
}

impl ConfigPaths {
    /// The paths of a config file in directory `dir`, read from there
    /// ([`in_config_dir`]); `data_dir` checked as [`data_dir_in_config_dir`]
    /// checks it, with `exists` and `is_dir` answering for the filesystem.
    pub fn in_config_dir(
        self,
        dir: &Path,
        exists: impl Fn(&Path) -> bool,
        is_dir: impl Fn(&Path) -> bool,
    ) -> Result<ConfigPaths, String> {
        Ok(ConfigPaths {
            data_dir: self.data_dir.map(|d| data_dir_in_config_dir(dir, d, exists, is_dir)).transpose()?,
            trust_policy: self.trust_policy.map(|p| in_config_dir(dir, p)),
        })
    }
}

/// `path`, written in a config file in directory `dir`: as it is when
/// absolute, else from `dir`.
fn in_config_dir(dir: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() { path } else { dir.join(path) }
}

/// A config file's `data_dir`, read from `dir` ([`in_config_dir`]);
/// refused when that directory does not exist but the same relative path is
/// a directory from the working directory, where earlier versions read it:
/// starting on a new, empty data dir would hide what the old one holds.
/// `exists` and `is_dir` answer for the filesystem (`Path::exists`,
/// `Path::is_dir`). The error is the message to show.
fn data_dir_in_config_dir(
    dir: &Path,
    path: PathBuf,
    exists: impl Fn(&Path) -> bool,
    is_dir: impl Fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    let resolved = in_config_dir(dir, path.clone());
    if resolved != path && !exists(&resolved) && is_dir(&path) {
        return Err(format!(
            "data_dir {:?} is read from the config file's directory, as {}, which does not exist, but {} does \
             (earlier versions read data_dir from the working directory): move that directory there, or set \
             data_dir to an absolute path",
            path.display().to_string(),
            resolved.display(),
            path.display()
        ));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{ConfigPaths, data_dir_in_config_dir, in_config_dir};

    #[test]
    fn relative_paths_are_read_from_the_config_dir() {
        let dir = Path::new("/etc/taskrun");
        assert_eq!(in_config_dir(dir, "data".into()), PathBuf::from("/etc/taskrun/data"));
        assert_eq!(in_config_dir(dir, "/var/lib/taskrun".into()), PathBuf::from("/var/lib/taskrun"));
        assert_eq!(in_config_dir(Path::new(""), "data".into()), PathBuf::from("data"));
    }

    /// The data dir that only exists where earlier versions looked (from the
    /// working directory) is refused, naming both places; otherwise the
    /// path from the config's directory stands, existing or not.
    #[test]
    fn a_data_dir_left_where_earlier_versions_read_it_is_refused() {
        let dir = Path::new("/etc/taskrun");
        let only = |there: &'static str| move |p: &Path| p == Path::new(there);
        let err = data_dir_in_config_dir(dir, "data".into(), only("none"), only("data")).unwrap_err();
        assert!(err.contains("as /etc/taskrun/data, which does not exist, but data does"), "{err}");
        // Both exist, or only the new place, or neither: the new place.
        for (exists, is_dir) in [("/etc/taskrun/data", "data"), ("/etc/taskrun/data", "none"), ("none", "none")] {
            let got = data_dir_in_config_dir(dir, "data".into(), only(exists), only(is_dir)).unwrap();
            assert_eq!(got, PathBuf::from("/etc/taskrun/data"));
        }
        // Absolute, or a config in the working directory: nothing to confuse.
        let got = data_dir_in_config_dir(dir, "/srv/data".into(), only("none"), only("/srv/data")).unwrap();
        assert_eq!(got, PathBuf::from("/srv/data"));
        let got = data_dir_in_config_dir(Path::new(""), "data".into(), only("none"), only("data")).unwrap();
        assert_eq!(got, PathBuf::from("data"));
    }

    #[test]
    fn config_paths_resolve_only_what_the_file_sets() {
        let dir = Path::new("/etc/taskrun");
        let set = ConfigPaths { data_dir: Some("data".into()), trust_policy: Some("trust.toml".into()) };
        let got = set.in_config_dir(dir, |_| true, |_| false).unwrap();
        assert_eq!(got.data_dir, Some(PathBuf::from("/etc/taskrun/data")));
        assert_eq!(got.trust_policy, Some(PathBuf::from("/etc/taskrun/trust.toml")));
        assert_eq!(ConfigPaths::default().in_config_dir(dir, |_| true, |_| true).unwrap(), ConfigPaths::default());
        let old = ConfigPaths { data_dir: Some("data".into()), trust_policy: None };
        assert!(old.in_config_dir(dir, |_| false, |p| p == Path::new("data")).is_err());
    }
}
