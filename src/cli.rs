//! The `phonebak` command line: one small function per subcommand; the work is in the library.
//! Both binaries (`phonebak` and the mount(8) helper `mount.phonebak`) come here.

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use crate::backup::{self, BackupOptions, PathFilter};
use crate::forget::Policy;
use crate::push::{OnConflict, PushOptions, PushReport, Source as PushSource};
use crate::repo::snapshot::{self, SnapshotInfo};
use crate::repo::storage::s3::S3Options;
use crate::repo::storage::RepoLocation;
use crate::repo::{InitOptions, RepoError, Repository, Storage};
use crate::source::SourceError;
use crate::state::LocalState;
use crate::tree::{lookup_path, Entry, Node};
use crate::{check, device, exit, export, forget, mount, origin, prune, push, repair, restore, say, source, stats};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::ffi::OsString;

#[derive(Parser)]
#[command(
    name = "phonebak",
    version,
    about = "Every backup of every phone in one deduplicated, encrypted, verified repository"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// Repository: a folder, or s3:https://HOST[:PORT]/BUCKET[/PREFIX] on an S3-compatible
    /// object store (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE).
    #[arg(long, short = 'r', global = true, env = "PHONEBAK_REPO")]
    repo: Option<std::ffi::OsString>,
    /// Object store: the region requests are signed for (default: AWS_REGION, else us-east-1).
    #[arg(long, global = true, env = "PHONEBAK_S3_REGION", value_name = "REGION")]
    s3_region: Option<String>,
    /// Object store: also trust the certificate authorities in this PEM file (a private store).
    #[arg(long, global = true, env = "PHONEBAK_S3_CA_FILE", value_name = "FILE")]
    s3_ca_file: Option<PathBuf>,
    /// Object store: address the bucket as BUCKET.HOST (virtual-host style, as AWS prefers)
    /// instead of HOST/BUCKET.
    #[arg(long, global = true)]
    s3_virtual_host: bool,
    /// Read the password from this file (or set PHONEBAK_PASSWORD).
    #[arg(long, global = true, env = "PHONEBAK_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Print a machine-readable JSON summary instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new repository.
    Init {
        /// Store data unencrypted (still checksummed).
        #[arg(long)]
        no_encryption: bool,
        /// zstd level, 0 (off) to 22.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(0..=22))]
        compression: i32,
        /// Target size of a pack file in MiB.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
        pack_size_mib: u64,
        /// Object store: create the bucket if it does not exist.
        #[arg(long)]
        create_bucket: bool,
    },
    /// Take a snapshot of a phone: SOURCE is a folder (`dir:PATH` or a plain path), an iPhone
    /// backup (`ios-backup:DIR`), a live Android phone (`adb[:SERIAL][:PATH]`), an Android
    /// backup (`ab:FILE`, `ab:-`) or a tar (`tar:FILE`, `tar:-`).
    Backup {
        /// Device name: snapshots are grouped by it (a folder name in the mount). An iPhone
        /// backup's own name is the default.
        #[arg(long)]
        device: Option<String>,
        /// Leave out paths matching this glob (a pattern without `/` matches names at any depth).
        #[arg(long)]
        exclude: Vec<String>,
        /// Take only paths matching this glob (and the folders leading to them).
        #[arg(long)]
        include: Vec<String>,
        /// Record files matching this glob (or inside a folder matching it) by name, size and
        /// time only, without their content: `ls --omitted` lists them; restore, push and the
        /// mount's folders leave them out.
        #[arg(long, value_name = "GLOB")]
        metadata_only: Vec<String>,
        #[arg(long)]
        tag: Vec<String>,
        /// Record this time instead of now (`2026-11-21T08:00:00`, local time, or RFC 3339); an
        /// iPhone backup's own date is the default.
        #[arg(long)]
        time: Option<String>,
        /// Read every file, even those unchanged since the last snapshot.
        #[arg(long)]
        force: bool,
        /// An encrypted iPhone or Android (.ab) backup's password, from this file (or set
        /// PHONEBAK_ARCHIVE_PASSWORD; on a terminal it is asked for).
        #[arg(long)]
        archive_password_file: Option<PathBuf>,
        source: String,
    },
    /// List snapshots.
    Snapshots {
        #[arg(long)]
        device: Option<String>,
    },
    /// List the files of a snapshot.
    Ls {
        snapshot: String,
        path: Option<PathBuf>,
        /// Show type, mode, owner, size and time.
        #[arg(long, short = 'l')]
        long: bool,
        /// List the files recorded without content (`backup --metadata-only`): size, time
        /// and path.
        #[arg(long, conflicts_with = "long")]
        omitted: bool,
    },
    /// Restore SNAPSHOT[:PATH] into a folder. What is already there and differs is left as it
    /// is and reported (exit 3), unless --overwrite.
    Restore {
        snapshot: String,
        #[arg(long)]
        target: PathBuf,
        /// Replace files and symlinks in the way (a folder in the way is never deleted).
        #[arg(long)]
        overwrite: bool,
    },
    /// Give a snapshot back in a form phone tools take. `--format ios-backup` writes the iPhone
    /// backup folder it was imported from, byte for byte (encrypted ones too, with their
    /// password), ready for Finder or `idevicebackup2 restore`; OUT must be a new or empty
    /// folder. `--format tar` and `--format ab` write SNAPSHOT[:PATH] as a tar or an Android
    /// backup for `adb restore` (the same entries, byte for byte, when it was imported from
    /// one) into the new file OUT, or to standard output with `-`.
    Export {
        /// SNAPSHOT, or SNAPSHOT:PATH for a folder of it (tar and ab).
        snapshot: String,
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// The password, from this file (or set PHONEBAK_ARCHIVE_PASSWORD): an encrypted
        /// iPhone backup's (on a terminal it is asked for), or the one an .ab is encrypted
        /// with (AES-256; without it the .ab is not encrypted).
        #[arg(long)]
        archive_password_file: Option<PathBuf>,
        /// A new folder (ios-backup), a new file, or `-` for standard output (tar, ab).
        out: PathBuf,
    },
    /// Copy snapshots into another repository (a folder to an object store and back, each
    /// with its own password), storing only the data it does not have: a local repository for
    /// speed and a remote one for the lake. Snapshots the destination has are skipped.
    Copy {
        /// The repository to copy from (default: --repo).
        #[arg(long, value_name = "REPO")]
        from: Option<std::ffi::OsString>,
        /// The repository to copy into (default: --repo).
        #[arg(long, value_name = "REPO")]
        to: Option<std::ffi::OsString>,
        /// The source repository's password, from this file (or PHONEBAK_FROM_PASSWORD; else
        /// the one --password-file or PHONEBAK_PASSWORD gives).
        #[arg(long, value_name = "FILE")]
        from_password_file: Option<PathBuf>,
        /// The destination's password, from this file (or PHONEBAK_TO_PASSWORD; else the one
        /// --password-file or PHONEBAK_PASSWORD gives).
        #[arg(long, value_name = "FILE")]
        to_password_file: Option<PathBuf>,
        /// The snapshots to copy (as for `restore`); all of them if none is named.
        snapshots: Vec<String>,
    },
    /// Verify the repository; --read-data also reads and verifies every stored byte.
    Check {
        #[arg(long)]
        read_data: bool,
    },
    /// Remove snapshots by a retention policy, per device.
    Forget {
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        keep_last: Option<u32>,
        #[arg(long)]
        keep_daily: Option<u32>,
        #[arg(long)]
        keep_weekly: Option<u32>,
        #[arg(long)]
        keep_monthly: Option<u32>,
        /// Only show what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Delete the data no remaining snapshot needs.
        #[arg(long)]
        prune: bool,
    },
    /// Delete data no snapshot needs.
    Prune,
    /// Put a damaged repository back in order (`check` says which repair fits); nothing that
    /// holds data is deleted: damaged files are moved into REPO/damaged/.
    Repair {
        #[command(subcommand)]
        what: RepairWhat,
    },
    /// Sizes, deduplication and compression.
    Stats,
    /// Put staged files (the mount's restore/ folder, each checked against the snapshots) or a snapshot back on a phone, verified.
    Push {
        /// Where to: dir:PATH (a phone mounted over MTP, or any folder) or adb[:SERIAL][:/sdcard].
        #[arg(long)]
        device: String,
        /// Push SNAPSHOT[:PATH] straight from the repository instead of the staging folder.
        #[arg(long)]
        from: Option<String>,
        /// The staging folder, if the mount was given -o staging=DIR (default: this user's, under
        /// ~/.local/state/phonebak/).
        #[arg(long)]
        staging: Option<PathBuf>,
        /// Show what would be pushed, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// What to do where the phone already has a different file of the same name.
        #[arg(long, value_enum, default_value = "skip")]
        on_conflict: Conflict,
        /// Leave pushed files in the staging folder.
        #[arg(long)]
        keep: bool,
    },
    /// Show every snapshot as a read-only folder: MOUNTPOINT/snapshots/<device>/<time>/.
    Mount {
        mountpoint: PathBuf,
        /// Mount options, comma-separated: cache_size=256M, password_file=F, allow_other,
        /// allow_root, uid=N, gid=N, threads=N, log=FILE, staging=DIR, ro, and for an object
        /// store cache_dir=DIR, disk_cache_size=512M (0: no local cache) (and mount(8)'s
        /// generic ones).
        #[arg(short = 'o', long = "options")]
        options: Vec<String>,
        /// Stay in the foreground (log to stderr) instead of returning once the mount is ready.
        #[arg(long, short = 'f')]
        foreground: bool,
    },
}

#[derive(Subcommand)]
enum RepairWhat {
    /// Rebuild the index from the packs' own lists of their blobs.
    Index,
    /// Read every pack; copy the intact blobs of damaged packs to new packs and move the damaged
    /// packs aside, so that the next backup stores the lost blobs again.
    Packs,
    /// Move damaged snapshot records aside, and rewrite snapshots without the files whose data
    /// is lost (tagged `repaired`; the originals are moved aside).
    Snapshots,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Conflict {
    /// Leave the phone's file alone; the staged one stays staged.
    Skip,
    Overwrite,
    /// Push under a free name: "IMG_1 (1).jpg".
    Rename,
}

/// Runs the command line `args` (program name first) and returns the exit code.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE as u8 } else { 0 });
        }
    };
    let code = match run(cli) {
        Ok(code) => code,
        Err(error) => {
            crate::tell!("phonebak: {error:#}");
            exit::for_error(&error)
        }
    };
    match crate::stdout::finish() {
        Some(e) if code == exit::OK || code == exit::PARTIAL => {
            crate::tell!("phonebak: the command's report could not be written to standard output: {e}");
            let full = e.raw_os_error() == Some(libc::ENOSPC);
            ExitCode::from(if full { exit::NO_SPACE } else { exit::ERROR } as u8)
        }
        _ => ExitCode::from(code as u8),
    }
}

fn run(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    match cli.command {
        Command::Init { no_encryption, compression, pack_size_mib, create_bucket } => {
            let options = InitOptions {
                compression_level: compression,
                pack_size: pack_size_mib << 20,
                ..InitOptions::default()
            };
            cmd_init(g, no_encryption, options, create_bucket)
        }
        Command::Backup {
            device,
            exclude,
            include,
            metadata_only,
            tag,
            time,
            force,
            archive_password_file,
            source,
        } => {
            let time_ns = time.as_deref().map(parse_time).transpose()?;
            let filter = PathFilter::new(&exclude, &include, &metadata_only)?;
            let archive_password = archive_password_file.as_deref();
            cmd_backup(g, &source, archive_password, device, time_ns, |device, time_ns| BackupOptions {
                device,
                tags: tag,
                filter,
                time_ns,
                force,
            })
        }
        Command::Snapshots { device } => cmd_snapshots(g, device.as_deref()),
        Command::Ls { snapshot, path, omitted: true, .. } => cmd_ls_omitted(g, &snapshot, path.as_deref()),
        Command::Ls { snapshot, path, long, .. } => cmd_ls(g, &snapshot, path.as_deref(), long),
        Command::Restore { snapshot, target, overwrite } => cmd_restore(g, &snapshot, &target, overwrite),
        Command::Export { snapshot, format: ExportFormat::IosBackup, archive_password_file, out } => {
            cmd_export(g, &snapshot, &out, archive_password_file.as_deref())
        }
        Command::Export { snapshot, format, archive_password_file, out } => {
            let format = match format {
                ExportFormat::Ab => export::ArchiveFormat::Ab,
                _ => export::ArchiveFormat::Tar,
            };
            cmd_export_archive(g, &snapshot, format, &out, archive_password_file.as_deref())
        }
        Command::Check { read_data } => cmd_check(g, read_data),
        Command::Copy { from, to, from_password_file, to_password_file, snapshots } => cmd_copy(
            g,
            (from.as_deref(), from_password_file.as_deref()),
            (to.as_deref(), to_password_file.as_deref()),
            &snapshots,
        ),
        Command::Forget { device, keep_last, keep_daily, keep_weekly, keep_monthly, dry_run, prune } => {
            let policy = Policy { keep_last, keep_daily, keep_weekly, keep_monthly };
            cmd_forget(g, &policy, device.as_deref(), dry_run, prune)
        }
        Command::Prune => cmd_prune(g),
        Command::Repair { what } => cmd_repair(g, what),
        Command::Stats => cmd_stats(g),
        Command::Push { device, from, staging, dry_run, on_conflict, keep } => {
            let on_conflict = match on_conflict {
                Conflict::Skip => OnConflict::Skip,
                Conflict::Overwrite => OnConflict::Overwrite,
                Conflict::Rename => OnConflict::Rename,
            };
            let options = PushOptions { dry_run, on_conflict, keep };
            cmd_push(g, &device, from.as_deref(), staging.as_deref(), &options)
        }
        Command::Mount { mountpoint, options, foreground } => cmd_mount(g, &mountpoint, &options, foreground),
    }
}

fn repo_location(g: &Global) -> Result<RepoLocation> {
    let text = g.repo.as_deref().context("no repository given: use --repo REPO or set PHONEBAK_REPO")?;
    Ok(RepoLocation::parse(text).map_err(RepoError::from)?)
}

/// The object store's settings for `location`, with its default local cache (none where this
/// user has no cache folder).
fn s3_options(g: &Global, location: &RepoLocation) -> S3Options {
    let cache = match location {
        RepoLocation::S3(at) => crate::state::object_store_cache(&at.to_string()).ok().map(|dir| (dir, DISK_CACHE)),
        RepoLocation::Folder(_) => None,
    };
    S3Options { region: g.s3_region.clone(), ca_file: g.s3_ca_file.clone(), virtual_host: g.s3_virtual_host, cache }
}

/// How much an object store's local cache holds by default (index pages, folder listings and
/// snapshot records of a repository of a few hundred thousand files).
const DISK_CACHE: u64 = 512 << 20;

/// The repository's storage (a folder, or a bucket), not yet read.
fn open_storage(g: &Global) -> Result<Arc<dyn Storage>> {
    let location = repo_location(g)?;
    Ok(location.open(&s3_options(g, &location)).map_err(RepoError::from)?)
}

/// The password, from PHONEBAK_PASSWORD, a password file, or a prompt on a terminal.
fn password(g: &Global, prompt: &str) -> Result<Vec<u8>, RepoError> {
    password_from(g.password_file.as_deref(), prompt)
}

fn password_from(password_file: Option<&Path>, prompt: &str) -> Result<Vec<u8>, RepoError> {
    if let Ok(password) = std::env::var("PHONEBAK_PASSWORD") {
        return Ok(password.into_bytes());
    }
    if let Some(file) = password_file {
        return read_password_file(file)
            .map_err(|e| RepoError::Io { context: format!("reading password file {}", file.display()), source: e });
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .map(String::into_bytes)
            .map_err(|e| RepoError::Io { context: "reading the password".into(), source: e });
    }
    Err(RepoError::PasswordRequired)
}

/// A password file's content, less the line ending an editor leaves at its end.
fn read_password_file(file: &Path) -> std::io::Result<Vec<u8>> {
    let mut text = std::fs::read(file)?;
    while text.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        text.pop();
    }
    Ok(text)
}

/// An encrypted backup's password (`what`: "iPhone backup", "Android backup"):
/// PHONEBAK_ARCHIVE_PASSWORD, the file given, or a prompt on a terminal.
fn archive_password(file: Option<&Path>, what: &str) -> Result<Vec<u8>, SourceError> {
    if let Ok(password) = std::env::var("PHONEBAK_ARCHIVE_PASSWORD") {
        return Ok(password.into_bytes());
    }
    if let Some(file) = file {
        return read_password_file(file).map_err(|e| {
            SourceError::ArchivePassword(format!("cannot read the backup's password file {}: {e}", file.display()))
        });
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("the {what}'s password: "))
            .map(String::into_bytes)
            .map_err(|e| SourceError::ArchivePassword(format!("reading the backup's password: {e}")));
    }
    Err(SourceError::ArchivePassword(format!(
        "this {what} is encrypted: give its password with --archive-password-file FILE or PHONEBAK_ARCHIVE_PASSWORD"
    )))
}

fn open_repo(g: &Global) -> Result<Repository> {
    Ok(Repository::open(open_storage(g)?, || password(g, "repository password: "))?)
}

/// This user's state for the repository (staging, push journals, caches).
fn local_state(config: &crate::repo::config::Config, storage: &dyn Storage) -> Result<LocalState> {
    Ok(LocalState::new(config, storage.local_folder())?)
}

/// Opens one side of a `copy`: `repo` (default --repo), its password from `file`, `$variable`,
/// or as for every command.
fn open_side(
    g: &Global,
    (repo, file): (Option<&std::ffi::OsStr>, Option<&Path>),
    variable: &str,
    what: &str,
) -> Result<Repository> {
    let location = match repo {
        Some(text) => RepoLocation::parse(text).map_err(RepoError::from)?,
        None => repo_location(g).with_context(|| format!("no {what} repository given"))?,
    };
    let storage = location.open(&s3_options(g, &location)).map_err(RepoError::from)?;
    let prompt = format!("{what} repository password: ");
    let password = || match (std::env::var(variable), file) {
        (Ok(password), _) => Ok(password.into_bytes()),
        (_, Some(file)) => read_password_file(file)
            .map_err(|e| RepoError::Io { context: format!("reading password file {}", file.display()), source: e }),
        _ => password(g, &prompt),
    };
    Repository::open(storage, password).with_context(|| format!("opening the {what} repository"))
}

fn cmd_copy(
    g: &Global,
    from: (Option<&std::ffi::OsStr>, Option<&Path>),
    to: (Option<&std::ffi::OsStr>, Option<&Path>),
    specs: &[String],
) -> Result<i32> {
    if from.0.is_none() && to.0.is_none() {
        bail!("copy needs --from REPO or --to REPO (the other one defaults to --repo)");
    }
    let source = open_side(g, from, "PHONEBAK_FROM_PASSWORD", "source")?;
    let destination = open_side(g, to, "PHONEBAK_TO_PASSWORD", "destination")?;
    let place = |repo: &Repository| match repo.local_folder() {
        Some(folder) => std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf()).display().to_string(),
        None => repo.location(),
    };
    if place(&source) == place(&destination) {
        bail!("--from and --to are the same repository ({})", source.location());
    }
    let all = snapshot::list(&source)?;
    let chosen: Vec<SnapshotInfo> = if specs.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for spec in specs {
            let info = snapshot::select(&all, spec)?;
            if !chosen.iter().any(|c: &SnapshotInfo| c.id == info.id) {
                chosen.push(info.clone());
            }
        }
        chosen
    };
    let report = crate::copy::run(&source, &destination, &chosen)?;
    if g.json {
        let copied: Vec<_> = report
            .copied
            .iter()
            .map(|(from, to, name)| json!({"from": from.to_hex(), "to": to.to_hex(), "snapshot": name}))
            .collect();
        print_json(json!({"copied": copied, "already_there": report.already_there,
                          "blobs_stored": report.blobs_stored, "bytes_stored": report.bytes_stored,
                          "blobs_already_there": report.blobs_already_there,
                          "blobs_read": report.blobs_read}));
    } else {
        for (_, to, name) in &report.copied {
            say!("copied {name} as {}", to.short());
        }
        say!(
            "copied {} into {} ({} already there); stored {} new blobs ({}), {} were there",
            count(report.copied.len() as u64, "snapshot"),
            destination.location(),
            report.already_there.len(),
            report.blobs_stored,
            human(report.bytes_stored),
            report.blobs_already_there
        );
    }
    Ok(exit::OK)
}

/// What the command asked of an object store, for `--json` (`null` for a folder repository).
fn store_traffic(repo: &Repository) -> serde_json::Value {
    repo.traffic().map_or(
        serde_json::Value::Null,
        |t| json!({"requests": t.requests, "bytes_from_store": t.bytes_in, "bytes_to_store": t.bytes_out}),
    )
}

fn print_json(value: serde_json::Value) {
    say!("{}", serde_json::to_string_pretty(&value).expect("json prints"));
}

fn cmd_init(g: &Global, no_encryption: bool, options: InitOptions, create_bucket: bool) -> Result<i32> {
    let storage = open_storage(g)?;
    let secret = if no_encryption {
        None
    } else {
        let first = password(g, "new repository password: ")?;
        if std::env::var_os("PHONEBAK_PASSWORD").is_none() && g.password_file.is_none() {
            let again = password(g, "repeat the password: ")?;
            if again != first {
                bail!("the passwords do not match");
            }
        }
        if first.is_empty() {
            bail!("an empty password protects nothing: choose one, or use --no-encryption");
        }
        Some(first)
    };
    Repository::init(&*storage, secret.as_deref(), options, create_bucket)?;
    if g.json {
        print_json(json!({"repository": storage.location(), "encrypted": !no_encryption}));
    } else {
        say!(
            "created {} phonebak repository at {}",
            if no_encryption { "an unencrypted" } else { "an encrypted" },
            storage.location()
        );
    }
    Ok(exit::OK)
}

fn parse_time(text: &str) -> Result<i64> {
    use chrono::{DateTime, Local, NaiveDateTime, TimeZone};
    let parsed = DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_nanos_opt()).or_else(|_| {
        NaiveDateTime::parse_from_str(text, snapshot::TIME_FORMAT)
            .map(|naive| Local.from_local_datetime(&naive).earliest().and_then(|t| t.timestamp_nanos_opt()))
    });
    match parsed {
        Ok(Some(ns)) => Ok(ns),
        _ => bail!("cannot read the time {text:?}: use 2026-11-21T08:00:00 or RFC 3339"),
    }
}

fn cmd_backup(
    g: &Global,
    source_spec: &str,
    archive_password_file: Option<&Path>,
    device: Option<String>,
    time_ns: Option<i64>,
    options: impl FnOnce(String, Option<i64>) -> BackupOptions,
) -> Result<i32> {
    let repo = open_repo(g)?;
    let what = if source_spec.starts_with("ab:") { "Android backup" } else { "iPhone backup" };
    let source = source::open_source(source_spec, &mut || archive_password(archive_password_file, what))?;
    // The source's own name and date, where it records them, unless given.
    let Some(device) = device.or_else(|| source.device_name()) else {
        bail!("--device is needed: name the phone this backup is of (snapshots are grouped by it)");
    };
    let options = options(device, time_ns.or_else(|| source.taken_at_ns()));
    let outcome = backup::run(&repo, source.as_ref(), &options)?;
    let s = &outcome.snapshot;
    let name = snapshot::list(&repo)?.into_iter().find(|i| i.id == outcome.id).map(|i| i.name).unwrap_or_default();
    if g.json {
        print_json(json!({
            "id": outcome.id.to_hex(), "device": s.device, "name": name, "parent": s.parent.map(|p| p.to_hex()),
            "stats": s.stats, "unreadable": outcome.unreadable, "skipped": outcome.skipped,
            "notes": outcome.notes, "facts": s.facts, "store": store_traffic(&repo),
        }));
    } else {
        say!(
            "snapshot {} of {} saved as {}/{}\n  {}, {}, {} in all; {} new, {} added to the repository, in {:.1} s",
            outcome.id.short(),
            s.source,
            s.device,
            name,
            count(s.stats.files, "file"),
            count(s.stats.dirs, "folder"),
            human(s.stats.bytes),
            human(s.stats.new_bytes),
            human(s.stats.added_bytes),
            s.stats.duration_ms as f64 / 1000.0
        );
        if s.stats.omitted > 0 {
            say!(
                "  {} ({}) recorded without content: `phonebak ls {} --omitted` lists them",
                count(s.stats.omitted, "file"),
                human(s.stats.omitted_bytes),
                outcome.id.short()
            );
        }
        for path in &outcome.skipped {
            say!("  skipped special file {path}");
        }
    }
    Ok(report_paths(&outcome.unreadable, "could not be read and are not in the snapshot", exit::PARTIAL))
}

/// OK when `paths` is empty; otherwise lists them on stderr and gives `code`.
fn report_paths(paths: &[(String, String)], what: &str, code: i32) -> i32 {
    if paths.is_empty() {
        return exit::OK;
    }
    crate::tell!("phonebak: {} path(s) {what}:", paths.len());
    for (path, why) in paths {
        crate::tell!("  {path}: {why}");
    }
    code
}

fn human(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// "1 file", "2 files".
fn count(n: u64, one: &str) -> String {
    format!("{n} {one}{}", if n == 1 { "" } else { "s" })
}

fn cmd_snapshots(g: &Global, device: Option<&str>) -> Result<i32> {
    let repo = open_repo(g)?;
    let list: Vec<SnapshotInfo> =
        snapshot::list(&repo)?.into_iter().filter(|s| device.is_none_or(|d| s.snapshot.device == d)).collect();
    if g.json {
        let items: Vec<_> = list
            .iter()
            .map(|i| {
                let s = &i.snapshot;
                json!({"id": i.id.to_hex(), "short_id": i.id.short(), "device": s.device, "name": i.name,
                       "time": s.local_time().to_rfc3339(), "hostname": s.hostname, "tags": s.tags, "source": s.source,
                       "parent": s.parent.map(|p| p.to_hex()), "root": s.root.to_hex(), "stats": s.stats,
                       "facts": s.facts})
            })
            .collect();
        print_json(json!(items));
        return Ok(exit::OK);
    }
    say!("{:<10} {:<20} {:<21} {:>10} {:>9}  tags", "id", "device", "time", "size", "files");
    for i in &list {
        let s = &i.snapshot;
        say!(
            "{:<10} {:<20} {:<21} {:>10} {:>9}  {}",
            i.id.short(),
            s.device,
            i.name,
            human(s.stats.bytes),
            s.stats.files,
            s.tags.join(",")
        );
        if !s.facts.is_empty() {
            let facts: Vec<String> = s.facts.iter().map(|(k, v)| format!("{}: {v}", k.replace('_', " "))).collect();
            say!("{:<10} {}", "", facts.join(", "));
        }
    }
    say!("{}", count(list.len() as u64, "snapshot"));
    Ok(exit::OK)
}

/// Splits `SNAPSHOT[:PATH]` (or takes PATH from `path`) and finds both.
fn find_entry(repo: &Repository, spec: &str, path: Option<&Path>) -> Result<(SnapshotInfo, PathBuf, Entry)> {
    let list = snapshot::list(repo)?;
    let (info, inner) = match snapshot::select_with_path(&list, spec) {
        Ok(found) => found,
        Err(e @ snapshot::SelectError::NotFound(_)) => {
            // The id of a record that cannot be read: say so, not that there is no such snapshot.
            let id = spec.split(':').next().unwrap_or_default();
            let (_, damaged) = snapshot::load_all(repo)?;
            match damaged.into_iter().find(|r| id.len() >= 4 && r.id.to_hex().starts_with(id)) {
                Some(record) => return Err(RepoError::Corrupt(record.why).into()),
                None => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let path = if inner.is_empty() { path.map(Path::to_path_buf).unwrap_or_default() } else { PathBuf::from(inner) };
    // `pixel/latest:/DCIM` means the snapshot's /DCIM: paths in a snapshot are from its root.
    let path = path.strip_prefix("/").map(Path::to_path_buf).unwrap_or(path);
    let entry = lookup_path(repo, &info.snapshot.root, &path)?;
    Ok((info.clone(), path, entry))
}

/// `ls --omitted`: the files under PATH that the snapshot records without content (a folder
/// that held only such files may not be in the snapshot's folders, so PATH is not looked up).
fn cmd_ls_omitted(g: &Global, spec: &str, path: Option<&Path>) -> Result<i32> {
    let repo = open_repo(g)?;
    let list = snapshot::list(&repo)?;
    let (info, inner) = snapshot::select_with_path(&list, spec)?;
    let path = if inner.is_empty() { path.map(Path::to_path_buf).unwrap_or_default() } else { PathBuf::from(inner) };
    let base = path.strip_prefix("/").unwrap_or(&path).as_os_str().as_bytes().to_vec();
    let base = base.strip_suffix(b"/").unwrap_or(&base).to_vec();
    let mut files = Vec::new();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let listed = (|| -> Result<()> {
        if let Some(reader) = crate::extras::open(&repo, info.snapshot.extras.as_ref(), crate::extras::OMITTED)? {
            let mut reader = crate::extras::OmittedReader::new(reader);
            while let Some(file) = reader.next_file().map_err(|e| RepoError::Corrupt(e.to_string()))? {
                let under = base.is_empty()
                    || file.path == base
                    || (file.path.starts_with(&base) && file.path.get(base.len()) == Some(&b'/'));
                match (under, g.json) {
                    (false, _) => {}
                    (true, true) => files.push(file),
                    (true, false) => out.write_all(&crate::extras::omitted_line(&file))?,
                }
            }
        }
        if g.json {
            // Made whole first: a reader that stops early is then a closed pipe like any other.
            out.write_all(&serde_json::to_vec_pretty(&files)?)?;
            out.write_all(b"\n")?;
        }
        Ok(out.flush()?)
    })();
    listing_written(listed)
}

/// The exit of a command whose output is a listing written as it goes.
fn listing_written(listed: Result<()>) -> Result<i32> {
    match listed {
        // The reader stopped early (`| head`): the listing ends there.
        Err(e) if is_closed_pipe(&e) => Ok(exit::OK),
        // Writing the listing failed (`> /dev/full`): said, with its exit code, as for any report.
        Err(e) if e.is::<std::io::Error>() => {
            crate::stdout::failed(e.downcast::<std::io::Error>().expect("an io error"));
            Ok(exit::OK)
        }
        Err(e) => Err(e),
        Ok(()) => Ok(exit::OK),
    }
}

fn cmd_ls(g: &Global, spec: &str, path: Option<&Path>, long: bool) -> Result<i32> {
    let repo = open_repo(g)?;
    let (_, path, start) = find_entry(&repo, spec, path)?;
    let base = PathBuf::from("/").join(path);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut show = |rel: &Path, entry: &Entry| -> Result<()> {
        let full = base.join(rel);
        if long {
            let (kind, size) = match &entry.node {
                Node::Dir { .. } => ('d', 0),
                Node::File { size, .. } => ('-', *size),
                Node::Symlink { target } => ('l', target.len() as u64),
            };
            let time =
                chrono::DateTime::from_timestamp(entry.meta.mtime_sec, entry.meta.mtime_nsec).unwrap_or_default();
            let time = time.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S");
            write!(
                out,
                "{kind}{:04o} {:>6} {:>6} {:>12} {time} ",
                entry.meta.mode, entry.meta.uid, entry.meta.gid, size
            )?;
        }
        out.write_all(full.as_os_str().as_bytes())?;
        if let (true, Node::Symlink { target }) = (long, &entry.node) {
            out.write_all(b" -> ")?;
            out.write_all(target)?;
        }
        out.write_all(b"\n")?;
        Ok(())
    };
    let listed = match &start.node {
        Node::Dir { tree } => crate::tree::walk(&repo, tree, &mut |rel: &Path, e: &Entry| show(rel, e)),
        _ => show(Path::new(""), &start),
    };
    listing_written(listed.and_then(|()| Ok(out.flush()?)))
}

fn is_closed_pipe(error: &anyhow::Error) -> bool {
    let pipe = |cause: &(dyn std::error::Error + 'static)| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    };
    error.chain().any(pipe)
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExportFormat {
    /// The iPhone backup folder the snapshot was imported from.
    IosBackup,
    /// A tar stream (ustar and PAX, or the imported archive's own headers).
    Tar,
    /// An Android backup (.ab) that `adb restore` takes.
    Ab,
}

fn cmd_export(g: &Global, spec: &str, out: &Path, archive_password_file: Option<&Path>) -> Result<i32> {
    let repo = open_repo(g)?;
    let list = snapshot::list(&repo)?;
    let info = snapshot::select(&list, spec)?;
    let report = export::ios_backup(&repo, info, out, || archive_password(archive_password_file, "iPhone backup"))?;
    if g.json {
        print_json(json!({"snapshot": info.id.to_hex(), "out": report.out, "files": report.files,
                          "bytes": report.bytes, "missing": report.missing}));
    } else {
        say!(
            "exported {}/{} as an iPhone backup into {}: {} ({})",
            info.snapshot.device,
            info.name,
            report.out.display(),
            count(report.files, "file"),
            human(report.bytes)
        );
    }
    Ok(report_paths(
        &report.missing,
        "of the backup's catalogue have no file in the snapshot, as at import",
        exit::PARTIAL,
    ))
}

fn cmd_export_archive(
    g: &Global,
    spec: &str,
    format: export::ArchiveFormat,
    out: &Path,
    password_file: Option<&Path>,
) -> Result<i32> {
    let password = match (format, password_file) {
        (export::ArchiveFormat::Tar, Some(_)) => {
            crate::tell!("phonebak: --archive-password-file encrypts an .ab: a tar is never encrypted");
            return Ok(exit::USAGE);
        }
        (export::ArchiveFormat::Tar, None) => None,
        (export::ArchiveFormat::Ab, Some(file)) => Some(read_password_file(file).map_err(|e| {
            SourceError::ArchivePassword(format!("cannot read the password file {}: {e}", file.display()))
        })?),
        (export::ArchiveFormat::Ab, None) => std::env::var("PHONEBAK_ARCHIVE_PASSWORD").ok().map(String::into_bytes),
    };
    if password.as_ref().is_some_and(|p| p.is_empty()) {
        return Err(SourceError::ArchivePassword("the .ab's password is empty".into()).into());
    }
    let repo = open_repo(g)?;
    let (info, path, entry) = find_entry(&repo, spec, None)?;
    let to =
        if out.as_os_str() == "-" { export::ArchiveOut::Stdout } else { export::ArchiveOut::File(out.to_path_buf()) };
    let encrypted = password.is_some();
    let report = export::archive(&repo, &info, &path, &entry, format, password, &to)?;
    let kind = match (format, encrypted) {
        (export::ArchiveFormat::Tar, _) => "a tar",
        (export::ArchiveFormat::Ab, false) => "an Android backup",
        (export::ArchiveFormat::Ab, true) => "an encrypted Android backup",
    };
    let shown = format!(
        "{}/{}{}",
        info.snapshot.device,
        info.name,
        if path.as_os_str().is_empty() { String::new() } else { format!(":/{}", path.display()) }
    );
    if g.json {
        print_json(json!({"snapshot": info.id.to_hex(), "out": report.out, "files": report.files,
                          "bytes": report.bytes, "missing": report.missing, "omitted": report.omitted}));
    } else if !matches!(to, export::ArchiveOut::Stdout) {
        say!(
            "exported {shown} as {kind} into {}: {} ({})",
            report.out.display(),
            count(report.files, "file"),
            human(report.bytes)
        );
    }
    if report.omitted > 0 {
        crate::tell!(
            "phonebak: not in the archive: {} recorded without content (--metadata-only); `phonebak ls {} --omitted` lists them",
            count(report.omitted, "file"),
            info.id.short()
        );
    }
    Ok(report_paths(
        &report.missing,
        "of the archive the snapshot was imported from are not in the export",
        exit::PARTIAL,
    ))
}

fn cmd_restore(g: &Global, spec: &str, target: &Path, overwrite: bool) -> Result<i32> {
    let repo = open_repo(g)?;
    let (info, path, entry) = find_entry(&repo, spec, None)?;
    let whole = path.as_os_str().is_empty().then_some(info.snapshot.stats.bytes);
    let report = restore::run(&repo, &entry, target, whole, overwrite)?;
    if g.json {
        print_json(json!({"snapshot": info.id.to_hex(), "files": report.files, "dirs": report.dirs,
                          "symlinks": report.symlinks, "bytes": report.bytes, "unchanged": report.unchanged,
                          "failed": report.failed, "conflicts": report.conflicts, "store": store_traffic(&repo)}));
    } else {
        say!(
            "restored {}, {}, {} ({}) from {}/{} into {}{}",
            count(report.files, "file"),
            count(report.dirs, "folder"),
            count(report.symlinks, "symlink"),
            human(report.bytes),
            info.snapshot.device,
            info.name,
            target.display(),
            if report.unchanged > 0 {
                format!("; {} already there", count(report.unchanged, "file"))
            } else {
                String::new()
            }
        );
    }
    let damaged = report_paths(&report.failed, "could not be restored because their data is damaged", exit::CORRUPTION);
    let kept = report_paths(&report.conflicts, "were in the way and are left as they were", exit::PARTIAL);
    Ok(if damaged != exit::OK { damaged } else { kept })
}

fn cmd_check(g: &Global, read_data: bool) -> Result<i32> {
    let repo = open_repo(g)?;
    let report = check::run(&repo, read_data)?;
    if g.json {
        print_json(json!({"ok": report.is_ok(), "errors": report.errors, "notes": report.notes,
                          "snapshots": report.snapshots, "packs": report.packs, "blobs": report.blobs,
                          "damaged_blobs": report.damaged_blobs.iter().map(|b| b.to_hex()).collect::<Vec<_>>(),
                          "damaged_paths": report.damaged_paths, "repairs": report.repairs}));
    } else {
        for note in &report.notes {
            say!("note: {note}");
        }
        for error in &report.errors {
            say!("error: {error}");
        }
        for blob in report.damaged_blobs.iter().take(20) {
            say!("damaged blob {blob}");
        }
        if report.damaged_blobs.len() > 20 {
            say!("... and {} more damaged blobs (--json lists them all)", report.damaged_blobs.len() - 20);
        }
        for repair in &report.repairs {
            say!("repair: {repair}");
        }
        let what = if read_data { "structure and data" } else { "structure" };
        say!(
            "checked {what} of {} snapshots, {} packs, {} blobs: {}",
            report.snapshots,
            report.packs,
            report.blobs,
            if report.is_ok() { "no errors".to_string() } else { format!("{} error(s)", report.errors.len()) }
        );
    }
    Ok(if report.is_ok() { exit::OK } else { exit::CORRUPTION })
}

fn cmd_forget(g: &Global, policy: &Policy, device: Option<&str>, dry_run: bool, then_prune: bool) -> Result<i32> {
    if policy.is_empty() {
        bail!("nothing to forget by: give at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly");
    }
    let repo = open_repo(g)?;
    let decisions = forget::run(&repo, policy, device, dry_run)?;
    let removed = decisions.iter().filter(|d| !d.keep).count();
    if g.json {
        let items: Vec<_> = decisions
            .iter()
            .map(|d| json!({"id": d.info.id.to_hex(), "device": d.info.snapshot.device, "name": d.info.name, "keep": d.keep, "reasons": d.reasons}))
            .collect();
        print_json(json!({"dry_run": dry_run, "snapshots": items}));
    } else {
        for d in &decisions {
            let fate = if d.keep { format!("keep ({})", d.reasons.join(", ")) } else { "remove".into() };
            say!("{} {}/{}  {fate}", d.info.id.short(), d.info.snapshot.device, d.info.name);
        }
        say!("{} {}removed", count(removed as u64, "snapshot"), if dry_run { "would be " } else { "" });
    }
    if then_prune && !dry_run {
        return cmd_prune(g);
    }
    Ok(exit::OK)
}

fn cmd_prune(g: &Global) -> Result<i32> {
    let repo = open_repo(g)?;
    let report = prune::run(&repo)?;
    if g.json {
        print_json(json!({"packs_deleted": report.packs_deleted, "packs_repacked": report.packs_repacked,
                          "bytes_freed": report.bytes_freed, "blobs_kept": report.blobs_kept, "blobs_removed": report.blobs_removed}));
    } else {
        say!(
            "pruned: {} blobs removed, {} kept; {} packs deleted ({} repacked); {} freed",
            report.blobs_removed,
            report.blobs_kept,
            report.packs_deleted,
            report.packs_repacked,
            human(report.bytes_freed.max(0) as u64)
        );
    }
    Ok(exit::OK)
}

fn cmd_repair(g: &Global, what: RepairWhat) -> Result<i32> {
    let repo = open_repo(g)?;
    let print_index = |r: &repair::IndexRepair| {
        say!(
            "index rebuilt from {} ({} blobs); {} old index file(s) replaced",
            count(r.packs_read, "pack"),
            r.blobs_indexed,
            r.index_files_replaced
        );
        for why in &r.unreadable_packs {
            say!("  left in place, its list unreadable: {why} (`phonebak repair packs` handles it)");
        }
    };
    match what {
        RepairWhat::Index => {
            let r = repair::index(&repo)?;
            if g.json {
                print_json(json!({"packs_read": r.packs_read, "blobs_indexed": r.blobs_indexed,
                                  "index_files_replaced": r.index_files_replaced, "unreadable_packs": r.unreadable_packs}));
            } else {
                print_index(&r);
            }
        }
        RepairWhat::Packs => {
            let r = repair::packs(&repo)?;
            if g.json {
                print_json(json!({"packs_checked": r.packs_checked, "moved_aside": r.moved_aside,
                                  "blobs_salvaged": r.blobs_salvaged, "blobs_lost": r.blobs_lost}));
            } else {
                for why in &r.moved_aside {
                    say!("moved aside: {why}");
                }
                say!(
                    "checked {}: {} damaged moved into {}, {} intact blobs copied out of them, {} lost",
                    count(r.packs_checked, "pack"),
                    r.moved_aside.len(),
                    repo.describe(&format!("{}/data", repair::DAMAGED_DIR)),
                    r.blobs_salvaged,
                    r.blobs_lost
                );
                if r.blobs_lost > 0 {
                    say!("the next backup of a phone that still has the lost data stores it again; `phonebak check` names what is still missing");
                }
            }
        }
        RepairWhat::Snapshots => {
            let r = repair::snapshots(&repo)?;
            if g.json {
                let rewritten: Vec<_> = r
                    .rewritten
                    .iter()
                    .map(|(old, new, device, lost)| json!({"old": old, "new": new, "device": device, "lost": lost}))
                    .collect();
                print_json(json!({"records_moved_aside": r.records_moved_aside, "rewritten": rewritten,
                                  "unrecoverable": r.unrecoverable, "left_unreadable": r.left_unreadable}));
            } else {
                for why in &r.records_moved_aside {
                    say!("moved aside: {why}");
                }
                for (old, new, device, lost) in &r.rewritten {
                    say!(
                        "snapshot {old} of {device} rewritten as {new} (tagged {}) without {}:",
                        repair::REPAIRED_TAG,
                        count(lost.len() as u64, "lost path")
                    );
                    for path in lost {
                        say!("  {path}");
                    }
                }
                for why in &r.left_unreadable {
                    say!("left in place: {why} (not shown to be damaged: make it readable, then check again)");
                }
                for which in &r.unrecoverable {
                    say!("snapshot {which}: its top folder is lost; its record was moved aside");
                }
                if r.records_moved_aside.is_empty()
                    && r.rewritten.is_empty()
                    && r.unrecoverable.is_empty()
                    && r.left_unreadable.is_empty()
                {
                    say!("every snapshot is whole: nothing to repair");
                }
            }
        }
    }
    Ok(exit::OK)
}

fn cmd_stats(g: &Global) -> Result<i32> {
    let repo = open_repo(g)?;
    let s = stats::run(&repo)?;
    if g.json {
        print_json(serde_json::to_value(&s).expect("stats serialize"));
    } else {
        say!("snapshots:          {} of {} device(s)", s.snapshots, s.devices);
        say!("raw bytes:          {} (all files of all snapshots)", human(s.raw_bytes));
        say!("unique bytes:       {} (after deduplication)", human(s.unique_bytes));
        say!("stored bytes:       {} in {} packs", human(s.stored_bytes), s.packs);
        say!("dedup ratio:        {:.2}x", s.dedup_ratio);
        say!("compression ratio:  {:.2}x", s.compression_ratio);
        say!("blobs:              {} data, {} trees", s.data_blobs, s.tree_blobs);
    }
    Ok(exit::OK)
}

fn cmd_push(
    g: &Global,
    device_spec: &str,
    from: Option<&str>,
    staging: Option<&Path>,
    options: &PushOptions,
) -> Result<i32> {
    let storage = open_storage(g)?;
    let state = local_state(&Repository::read_config(&*storage)?, &*storage)?;
    let device = device::open(device_spec)?;
    let repo;
    let source = match from {
        Some(spec) => {
            repo = open_repo(g)?;
            let (info, path, entry) = find_entry(&repo, spec, None)?;
            let label = format!("{}/{}:{}", info.snapshot.device, info.name, path.display());
            PushSource::Snapshot { repo: &repo, entry, base: path, label }
        }
        None => {
            let dir = staging.map(Path::to_path_buf).unwrap_or_else(|| state.staging());
            if !dir.is_dir() {
                bail!("nothing is staged: {} does not exist (copy files into the mount's restore/ folder first, or use --from SNAPSHOT)", dir.display());
            }
            if staging.is_none() {
                mount::keep_staging_private(&dir).with_context(|| format!("checking {}", dir.display()))?;
            }
            warn_if_full(&dir);
            // Staged files are checked against the snapshots they were copied from.
            repo = open_repo(g)?;
            let folder = std::fs::File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
            PushSource::Staging { root: dir, dir: folder.into(), snapshots: origin::Snapshots::open(&repo)? }
        }
    };
    let started = std::time::Instant::now();
    let outcome = push::run(&source, device.as_ref(), &state.push_journals(), options);
    let r = &outcome.report;
    let attempted = r.pushed + r.already + r.would_push > 0 || !r.failed.is_empty() || !r.conflicts.is_empty();
    if outcome.stopped.is_none() || attempted {
        print_push_report(g, r, &device.describe(), options, started.elapsed());
    }
    if let Some(error) = outcome.stopped {
        let error = anyhow::Error::new(error);
        crate::tell!("phonebak: {error:#}");
        if outcome.report.pushed > 0 {
            crate::tell!("phonebak: run the same command again to resume: finished files are not pushed again");
        }
        return Ok(exit::for_error(&error));
    }
    for path in &outcome.report.conflicts {
        crate::tell!("phonebak: skipped {path}: the device has a different file there (see --on-conflict)");
    }
    let code = report_paths(&outcome.report.failed, "could not be pushed", exit::PARTIAL);
    // Skipped files stay staged, not pushed: as `restore` does with what is in its way.
    Ok(if outcome.report.conflicts.is_empty() { code } else { exit::PARTIAL })
}

/// A staging disk that ran full may hold copies cut short: `cp` leaves the start of a file
/// under its real name. Push keeps those (see `origin`); this says why it may find some.
fn warn_if_full(staging: &Path) {
    const NEARLY_NOTHING: u64 = 1 << 20;
    if crate::repo::free_space(staging).is_some_and(|free| free < NEARLY_NOTHING) {
        crate::tell!(
            "phonebak: warning: the disk of the staging folder {} is full: copies into it may have been cut short (push keeps any staged file that is not what its snapshot holds)",
            staging.display()
        );
    }
}

fn print_push_report(g: &Global, r: &PushReport, device: &str, options: &PushOptions, took: std::time::Duration) {
    if g.json {
        print_json(json!({"device": device, "dry_run": options.dry_run, "pushed": r.pushed, "bytes": r.bytes,
                          "folders": r.dirs, "already_there": r.already, "conflicts": r.conflicts,
                          "failed": r.failed, "would_push": r.would_push, "would_push_bytes": r.would_bytes}));
    } else if options.dry_run {
        say!(
            "would push {} ({}) to {device}; {} already there, {} conflicting",
            count(r.would_push, "file"),
            human(r.would_bytes),
            r.already,
            r.conflicts.len()
        );
    } else {
        say!(
            "pushed {} ({}) to {device} in {:.1} s; {} already there, {} skipped (conflicts), {} failed",
            count(r.pushed, "file"),
            human(r.bytes),
            took.as_secs_f64(),
            r.already,
            r.conflicts.len(),
            r.failed.len()
        );
    }
}

fn cmd_mount(g: &Global, mountpoint: &Path, option_lists: &[String], foreground: bool) -> Result<i32> {
    let options = mount::parse_options(option_lists)?;
    let location = repo_location(g)?;
    let mut s3 = s3_options(g, &location);
    if let Some(dir) = &options.cache_dir {
        s3.cache = Some((dir.clone(), s3.cache.map_or(DISK_CACHE, |(_, limit)| limit)));
    }
    match options.disk_cache_bytes {
        Some(0) => s3.cache = None,
        Some(limit) => s3.cache = s3.cache.map(|(dir, _)| (dir, limit)),
        None => {}
    }
    let storage = location.open(&s3).map_err(RepoError::from)?;
    // `-o password_file=` (an fstab line) wins over the environment's password file.
    let password_file = options.password_file.clone().or(g.password_file.clone());
    let repo = Repository::open(storage, || password_from(password_file.as_deref(), "repository password: "))?;
    mount::check_mountpoint(mountpoint)?;
    let state = local_state(repo.config(), &**repo.storage())?;
    let staging = mount::find_staging(&state, &options)?;
    let log = mount::logger(foreground, options.log.clone());
    if foreground {
        mount::serve(repo, staging, mountpoint, &options, log, |_| {})?;
    } else {
        mount::daemonize(|ready| mount::serve(repo, staging, mountpoint, &options, log, ready))?;
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn counts_say_one_file_and_two_files() {
        assert_eq!(count(1, "file"), "1 file");
        assert_eq!(count(0, "folder"), "0 folders");
        assert_eq!(count(2, "snapshot"), "2 snapshots");
    }
}
