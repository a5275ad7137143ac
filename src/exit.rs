//! Exit codes (documented in the README): scripts and schedulers act on them.

use crate::backup::BackupError;
use crate::device::DeviceError;
use crate::export::ExportError;
use crate::push::PushError;
use crate::repo::{RepoError, StorageError};
use crate::restore::RestoreError;
use crate::source::SourceError;

pub const OK: i32 = 0;
pub const ERROR: i32 = 1;
/// Command-line usage error (clap's own code).
pub const USAGE: i32 = 2;
/// The snapshot was made, but some source files could not be read (they are listed).
pub const PARTIAL: i32 = 3;
pub const NO_REPOSITORY: i32 = 10;
pub const LOCKED: i32 = 11;
pub const WRONG_PASSWORD: i32 = 12;
/// Damage found: `check` errors, or data that could not be restored.
pub const CORRUPTION: i32 = 13;
pub const NEWER_FORMAT: i32 = 14;
pub const NO_SPACE: i32 = 15;
/// The source disappeared during a backup (phone unplugged): no snapshot was written.
pub const SOURCE_VANISHED: i32 = 16;
/// A push target cannot be used: missing, read-only, not connected, gone during the push, or
/// `adb` is not installed. Nothing staged was lost; a rerun resumes.
pub const DEVICE: i32 = 17;
/// `restore` cannot write to its target folder (read-only, not allowed): the repository is fine.
pub const TARGET: i32 = 18;
/// An encrypted backup's (iPhone, .ab) password is wrong or missing: nothing was imported.
pub const ARCHIVE_PASSWORD: i32 = 19;
/// An archive being imported is cut short or damaged: no snapshot was written.
pub const SOURCE_DAMAGED: i32 = 20;
/// The object store holding the repository cannot be reached (down, unreachable, timing out,
/// also after retries): nothing half-done was left; run the command again.
pub const STORE_UNREACHABLE: i32 = 21;
/// The object store refused the credentials or the request.
pub const STORE_DENIED: i32 = 22;

fn for_device_error(error: &DeviceError) -> i32 {
    match error {
        DeviceError::Full { .. } => NO_SPACE,
        DeviceError::File { .. } => PARTIAL,
        DeviceError::Unavailable { .. } | DeviceError::AdbMissing | DeviceError::Vanished { .. } => DEVICE,
    }
}

pub fn for_repo_error(error: &RepoError) -> i32 {
    match error {
        RepoError::NotFound(_) => NO_REPOSITORY,
        RepoError::Locked(_) => LOCKED,
        RepoError::WrongPassword | RepoError::PasswordRequired => WRONG_PASSWORD,
        RepoError::Corrupt(_) | RepoError::MissingBlob(_) | RepoError::MissingPack(_) | RepoError::ConfigMissing(_) => {
            CORRUPTION
        }
        RepoError::NewerFormat { .. } => NEWER_FORMAT,
        RepoError::NoSpace(_) | RepoError::NoTempSpace(_) => NO_SPACE,
        RepoError::AlreadyExists(_) | RepoError::Io { .. } => ERROR,
        RepoError::SameRepository(_) => USAGE,
        RepoError::Storage(storage) => match storage {
            StorageError::Unreachable { .. } => STORE_UNREACHABLE,
            StorageError::Denied { .. } => STORE_DENIED,
            StorageError::NoBucket { .. } => NO_REPOSITORY,
            StorageError::BadLocation(_) => USAGE,
            StorageError::NoSpace(_) => NO_SPACE,
            StorageError::NotAFile { .. } | StorageError::TooLarge { .. } | StorageError::Truncated { .. } => {
                CORRUPTION
            }
            StorageError::NotFound(_) | StorageError::Io { .. } | StorageError::Store { .. } => ERROR,
        },
    }
}

/// The exit code for an error anywhere in `error`'s chain.
pub fn for_error(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if let Some(repo) = cause.downcast_ref::<RepoError>() {
            return for_repo_error(repo);
        }
        let source_error = match cause.downcast_ref::<BackupError>() {
            Some(BackupError::Source(source)) => Some(source),
            _ => cause.downcast_ref::<SourceError>(),
        };
        match source_error {
            Some(SourceError::Vanished { .. }) => return SOURCE_VANISHED,
            Some(SourceError::ArchivePassword(_)) => return ARCHIVE_PASSWORD,
            Some(SourceError::Damaged { .. }) => return SOURCE_DAMAGED,
            Some(SourceError::Unavailable { .. }) => return DEVICE,
            Some(SourceError::Scratch { error, .. }) if error.raw_os_error() == Some(libc::ENOSPC) => return NO_SPACE,
            _ => {}
        }
        if let Some(device) = cause.downcast_ref::<DeviceError>() {
            return for_device_error(device);
        }
        match cause.downcast_ref::<PushError>() {
            Some(PushError::Device(device)) => return for_device_error(device),
            Some(PushError::Repo(repo)) => return for_repo_error(repo),
            Some(PushError::Busy { .. }) => return LOCKED,
            _ => {}
        }
        match cause.downcast_ref::<RestoreError>() {
            Some(e) if e.target_is_full() => return NO_SPACE,
            Some(RestoreError::Target { .. }) => return TARGET,
            Some(RestoreError::Repo(repo)) => return for_repo_error(repo),
            _ => {}
        }
        match cause.downcast_ref::<ExportError>() {
            Some(e) if e.target_is_full() => return NO_SPACE,
            Some(ExportError::Target { .. } | ExportError::OutUnusable { .. }) => return TARGET,
            Some(ExportError::Repo(repo)) => return for_repo_error(repo),
            Some(ExportError::Damaged { .. }) => return CORRUPTION,
            Some(ExportError::Password(SourceError::ArchivePassword(_))) => return ARCHIVE_PASSWORD,
            _ => {}
        }
        match cause.downcast_ref::<BackupError>() {
            Some(BackupError::Repo(repo)) => return for_repo_error(repo),
            Some(BackupError::Pattern { .. }) => return USAGE,
            _ => {}
        }
    }
    ERROR
}
