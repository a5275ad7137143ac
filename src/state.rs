//! What belongs to one user on one machine rather than to the repository, which many machines
//! may share: the staging folder behind the mount's `restore/`, push journals (state, under
//! `$XDG_STATE_HOME/phonebak/<repository id>/`) and an object store's local cache (under
//! `$XDG_CACHE_HOME/phonebak/s3-<hash of its address>/`). Folder repositories made by earlier
//! versions kept the first two inside the repository; where those still exist they are used.

use std::path::{Path, PathBuf};

use crate::repo::config::Config;

#[derive(Debug, thiserror::Error)]
#[error("no place for this machine's phonebak state: set HOME (or XDG_STATE_HOME and XDG_CACHE_HOME)")]
pub struct NoHome;

/// The folders of one repository's local state.
pub struct LocalState {
    state: PathBuf,
    /// The repository's own folder, where earlier versions kept staging and journals.
    legacy: Option<PathBuf>,
}

impl LocalState {
    pub fn new(config: &Config, repository_folder: Option<&Path>) -> Result<LocalState, NoHome> {
        let key = folder_key(&config.repository_id);
        Ok(LocalState {
            state: base("XDG_STATE_HOME", ".local/state")?.join("phonebak").join(&key),
            legacy: repository_folder.map(Path::to_path_buf),
        })
    }

    /// The staging folder behind `restore/` (made on first use by the mount).
    pub fn staging(&self) -> PathBuf {
        self.kept_or_new("staging")
    }

    /// Where journals of unfinished pushes and the per-phone push locks are.
    pub fn push_journals(&self) -> PathBuf {
        self.kept_or_new("push-journal")
    }

    /// `name` inside the repository folder if an earlier version left it there, else in the
    /// state folder.
    fn kept_or_new(&self, name: &str) -> PathBuf {
        match &self.legacy {
            // A real folder only: a link there (planted in a shared repository folder) would
            // lead this user's staged files, and the mode it is given, somewhere else.
            Some(folder) if std::fs::symlink_metadata(folder.join(name)).is_ok_and(|m| m.is_dir()) => folder.join(name),
            _ => self.state.join(name),
        }
    }
}

/// Where the object store at `location` (its `s3:` address) is cached by default; known before
/// the repository is read, so the first reads are cached too.
pub fn object_store_cache(location: &str) -> Result<PathBuf, NoHome> {
    let key = &blake3::hash(location.as_bytes()).to_hex()[..32];
    Ok(base("XDG_CACHE_HOME", ".cache")?.join("phonebak").join(format!("s3-{key}")))
}

/// `$VAR`, or `$HOME/fallback`; relative values are ignored, as the XDG rules say.
fn base(var: &str, fallback: &str) -> Result<PathBuf, NoHome> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(dir) = std::env::var_os(var).and_then(absolute) {
        return Ok(dir);
    }
    std::env::var_os("HOME").and_then(absolute).map(|home| home.join(fallback)).ok_or(NoHome)
}

/// A folder name for a repository id: the id itself when it is plain hex (as `init` makes
/// them), else its hash (a config is data, and its id must not steer a path).
fn folder_key(id: &str) -> String {
    if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id.to_ascii_lowercase()
    } else {
        blake3::hash(id.as_bytes()).to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::folder_key;

    #[test]
    fn a_crafted_repository_id_cannot_steer_the_state_folder() {
        assert_eq!(folder_key("ABcd01"), "abcd01");
        for hostile in ["../../etc", "", "/abs", "a/b"] {
            let key = folder_key(hostile);
            assert!(key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()), "{hostile} -> {key}");
        }
    }
}
