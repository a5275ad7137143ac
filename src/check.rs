//! `check`: is every snapshot complete and every stored byte intact?
//!
//! Without `--read-data` it checks structure: index files, pack footers against the index, and
//! that every tree and chunk every snapshot needs is indexed. With it, it reads every pack,
//! verifies its hash and decodes and verifies every blob, then names the snapshots and files
//! that damaged blobs belong to.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::progress::Progress;
use crate::repo::index::BlobLocation;
use crate::repo::pack::read_footer;
use crate::repo::snapshot::{self, Snapshot};
use crate::repo::{BlobId, PackId, RepoError, Repository, SnapshotId};
use crate::tree::{load_tree, Node};

#[derive(Debug, Default)]
pub struct CheckReport {
    /// Damage: each line says what and where.
    pub errors: Vec<String>,
    /// Harmless findings, such as leftovers of an interrupted backup.
    pub notes: Vec<String>,
    pub snapshots: usize,
    pub packs: usize,
    pub blobs: usize,
    pub damaged_blobs: Vec<BlobId>,
    /// `snapshot id: path` of every file or folder touched by damage.
    pub damaged_paths: Vec<String>,
    /// The repairs that fit what was found, in the order to run them, each with why.
    pub repairs: Vec<String>,
}

const REPAIR_INDEX: &str =
    "phonebak repair index: rebuilds the index from the packs' own lists (damaged or missing index files, missing packs)";
const REPAIR_PACKS: &str = "phonebak repair packs: moves damaged packs aside after copying their intact blobs, so \
                            that the next backup of the phone stores the damaged ones again";
const REPAIR_SNAPSHOTS: &str = "phonebak repair snapshots: moves damaged snapshot records aside and rewrites \
                                snapshots without the files that are lost (back the phone up first if it still has them)";

impl CheckReport {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Adds `repair` to the list, kept in the order they must run in: index, packs, snapshots.
    fn suggest(&mut self, repair: &str) {
        if !self.repairs.iter().any(|r| r == repair) {
            self.repairs.push(repair.to_string());
            let order = [REPAIR_INDEX, REPAIR_PACKS, REPAIR_SNAPSHOTS];
            self.repairs.sort_by_key(|r| order.iter().position(|o| o == r));
        }
    }
}

pub fn run(repo: &Repository, read_data: bool) -> Result<CheckReport, RepoError> {
    let mut report = CheckReport::default();
    let on_disk: HashMap<PackId, u64> = repo.list_packs()?.into_iter().collect();
    report.packs = on_disk.len();
    let mut by_pack: HashMap<PackId, Vec<BlobLocation>> = HashMap::new();
    repo.index().for_each(|loc| by_pack.entry(loc.pack).or_default().push(loc))?;
    // A blob is present when some copy of it lies in a pack that exists.
    let present: HashMap<BlobId, u32> = by_pack
        .iter()
        .filter(|(pack, _)| on_disk.contains_key(pack))
        .flat_map(|(_, e)| e.iter().map(|l| (l.id, l.raw_len)))
        .collect();
    report.blobs = present.len();
    for (_, why) in repo.index().damaged_files() {
        report.errors.push(why);
        report.suggest(REPAIR_INDEX);
    }
    for (_, why) in repo.index().unreadable_packs() {
        report.errors.push(format!("{why} (not covered by the index either)"));
        report.suggest(REPAIR_PACKS);
    }
    check_packs(repo, &on_disk, &by_pack, &mut report)?;
    let snapshots = load_snapshots(repo, &mut report)?;
    report.snapshots = snapshots.len();
    let mut damaged: HashSet<BlobId> = HashSet::new();
    if read_data {
        let (bad, intact) = read_all_data(repo, &on_disk, &by_pack, &mut report)?;
        if !bad.is_empty() {
            report.suggest(REPAIR_PACKS);
        }
        report.damaged_blobs = bad.iter().copied().collect();
        // A blob with one intact copy is not lost.
        damaged = bad.into_iter().filter(|id| !intact.contains(id)).collect();
    }
    let problems = tree_problems(
        repo,
        &snapshots,
        &|id, len| present.get(id).is_some_and(|l| len.is_none_or(|len| len == *l)),
        &damaged,
    )?;
    if problems.iter().any(|p| p.damage) {
        // Damaged copies go aside first, so that the next backup stores them again.
        report.suggest(REPAIR_PACKS);
    }
    if !problems.is_empty() {
        report.suggest(REPAIR_SNAPSHOTS);
    }
    for problem in problems {
        report.errors.push(problem.line);
        report.damaged_paths.push(problem.path);
    }
    for odd in repo.misplaced_packs()? {
        let why = if odd.regular {
            "is in the wrong folder for its name: no command reads it; move it where its name says \
             (data/<its first 2 characters>/) if it is a pack, or remove it"
        } else {
            "is not a regular file (a FIFO, folder, device or dangling link): it holds no pack; remove it"
        };
        report.errors.push(format!("{} is named like a pack but {why}", repo.describe(&odd.name)));
    }
    for tmp in repo.list_temp_files()? {
        report.notes.push(format!(
            "leftover temporary file {} (from an interrupted run; `prune` removes it)",
            repo.describe(&tmp)
        ));
    }
    report.damaged_blobs.sort();
    Ok(report)
}

fn check_packs(
    repo: &Repository,
    on_disk: &HashMap<PackId, u64>,
    by_pack: &HashMap<PackId, Vec<BlobLocation>>,
    report: &mut CheckReport,
) -> Result<(), RepoError> {
    let indexed = repo.index().indexed_packs();
    for (pack, entries) in by_pack {
        if !on_disk.contains_key(pack) {
            report.errors.push(format!("pack {pack} is missing (the index lists {} blobs in it)", entries.len()));
            report.suggest(REPAIR_INDEX);
            continue;
        }
        if !indexed.contains(pack) {
            continue; // its entries were read from its own footer
        }
        match read_footer(repo, pack) {
            Ok(footer) => {
                let in_footer: HashSet<(BlobId, u32, u32)> = footer.iter().map(|e| (e.id, e.offset, e.len)).collect();
                let mismatched = entries.iter().filter(|e| !in_footer.contains(&(e.id, e.offset, e.len))).count();
                if mismatched > 0 {
                    report
                        .errors
                        .push(format!("pack {pack}: {mismatched} index entries do not match the pack's own list"));
                    report.suggest(REPAIR_INDEX);
                }
            }
            Err(e) if e.is_corruption() => {
                report.errors.push(e.to_string());
                report.suggest(REPAIR_PACKS);
            }
            // Not reached (a store that is down): no verdict.
            Err(e) => return Err(e),
        }
    }
    let unindexed = on_disk.keys().filter(|p| !indexed.contains(p)).count();
    if unindexed > 0 {
        report.notes.push(format!(
            "{unindexed} pack(s) are not in the index (left by an interrupted backup or prune): their own lists \
             are used instead; the next backup or `phonebak repair index` indexes them, `prune` removes what no \
             snapshot needs"
        ));
    }
    Ok(())
}

fn load_snapshots(repo: &Repository, report: &mut CheckReport) -> Result<Vec<(SnapshotId, Snapshot)>, RepoError> {
    let (snapshots, damaged) = snapshot::load_all(repo)?;
    for record in damaged {
        report.errors.push(record.why);
        report.suggest(REPAIR_SNAPSHOTS);
    }
    Ok(snapshots)
}

/// Reads every pack that exists in full, on all cores; returns the blobs with a copy that fails
/// to verify, and those with a copy that verifies.
fn read_all_data(
    repo: &Repository,
    on_disk: &HashMap<PackId, u64>,
    by_pack: &HashMap<PackId, Vec<BlobLocation>>,
    report: &mut CheckReport,
) -> Result<(HashSet<BlobId>, HashSet<BlobId>), RepoError> {
    let existing: Vec<(&PackId, &Vec<BlobLocation>)> =
        by_pack.iter().filter(|(p, _)| on_disk.contains_key(p)).collect();
    let progress = Progress::items("check", existing.len() as u64);
    let packs = Mutex::new(existing);
    let damaged = Mutex::new(HashSet::new());
    let intact = Mutex::new(HashSet::new());
    let errors = Mutex::new(Vec::new());
    let failed = Mutex::new(None);
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some((pack, entries)) = packs.lock().expect("queue lock").pop() else {
                    return;
                };
                let (bad, error) = match verify_pack(repo, pack, entries) {
                    Ok(verdict) => verdict,
                    Err(e) => {
                        failed.lock().expect("failure lock").get_or_insert(e);
                        packs.lock().expect("queue lock").clear();
                        return;
                    }
                };
                let good = entries.iter().map(|e| e.id).filter(|id| !bad.contains(id));
                intact.lock().expect("damage lock").extend(good);
                damaged.lock().expect("damage lock").extend(bad);
                errors.lock().expect("error lock").extend(error);
                progress.add(1);
            });
        }
    });
    progress.finish();
    if let Some(e) = failed.into_inner().expect("failure lock") {
        return Err(e);
    }
    report.errors.extend(errors.into_inner().expect("error lock"));
    Ok((damaged.into_inner().expect("damage lock"), intact.into_inner().expect("damage lock")))
}

/// Reads pack `pack` whole and verifies each of `entries` in it: the blobs that fail, and what
/// is wrong with the pack. A pack that could not be reached (a store that is down, access
/// refused) is an error, never a verdict of damage: `repair` would set an intact pack aside.
pub(crate) fn verify_pack(
    repo: &Repository,
    pack: &PackId,
    entries: &[BlobLocation],
) -> Result<(Vec<BlobId>, Option<String>), RepoError> {
    let mut bytes = match repo.read_whole_pack(pack) {
        Ok(bytes) => bytes,
        Err(e) if e.is_corruption() => {
            return Ok((entries.iter().map(|e| e.id).collect(), Some(format!("pack {pack} cannot be read: {e}"))))
        }
        Err(e) => return Err(e),
    };
    let hash_ok = blake3::hash(&bytes).as_bytes() == &pack.0;
    // Each blob once: two index files may list the same pack (a backup indexes packs another
    // left unindexed), and a blob decrypted in place cannot be opened a second time.
    let mut unique: Vec<&BlobLocation> = entries.iter().collect();
    unique.sort_by_key(|e| (e.offset, e.id));
    unique.dedup_by_key(|e| (e.offset, e.id));
    let mut bad = Vec::new();
    for entry in unique {
        let range = entry.offset as usize..entry.offset as usize + entry.len as usize;
        // Blobs are decrypted where they lie: the pack's hash was checked above, before this.
        let ok = bytes
            .get_mut(range)
            .is_some_and(|stored| repo.decode_blob(entry.kind, &entry.id, entry.raw_len, stored).is_ok());
        if !ok {
            bad.push(entry.id);
        }
    }
    let error = match (hash_ok, bad.len()) {
        (true, 0) => None,
        (false, 0) => Some(format!("pack {pack}: content does not match its name (damage outside any blob)")),
        (_, n) => Some(format!("pack {pack}: {n} damaged blob(s)")),
    };
    Ok((bad, error))
}

/// Walks every snapshot's trees (each distinct tree once) and names what is missing (not
/// `present`: given a blob and, for a chunk, the length its folder listing says) or `damaged`:
/// one line per problem, `snapshot <id> (<device>): <path>: <why>`, with
/// `<id>: <path>` beside it.
pub fn tree_problems(
    repo: &Repository,
    snapshots: &[(SnapshotId, Snapshot)],
    present: &dyn Fn(&BlobId, Option<u32>) -> bool,
    damaged: &HashSet<BlobId>,
) -> Result<Vec<TreeProblem>, RepoError> {
    // Results per tree are shared between snapshots: most trees are in many.
    let mut problems_of_tree: HashMap<BlobId, Verdict> = HashMap::new();
    let mut lines = Vec::new();
    let unreachable = std::cell::RefCell::new(None);
    for (id, snapshot) in snapshots {
        let mut problems = Vec::new();
        let known = Known { present, damaged, unreachable: &unreachable };
        collect_tree_problems(repo, &snapshot.root, Path::new(""), 0, &known, &mut problems_of_tree, &mut problems);
        if let Some(extras) = &snapshot.extras {
            let at = Path::new(EXTRAS_SHOWN);
            collect_tree_problems(repo, extras, at, 0, &known, &mut problems_of_tree, &mut problems);
        }
        for (path, why, damage) in problems {
            let shown = if path.as_os_str().is_empty() { "/".into() } else { path.display().to_string() };
            lines.push(TreeProblem {
                line: format!("snapshot {} ({}): {shown}: {why}", id.short(), snapshot.device),
                path: format!("{}: {shown}", id.short()),
                damage,
            });
        }
        // A listing the store would not give (it is down) is no verdict on the repository.
        if let Some(e) = unreachable.borrow_mut().take() {
            return Err(e);
        }
    }
    Ok(lines)
}

/// How problems in a snapshot's extras (src/extras.rs) are placed in reports: beside its folders.
pub const EXTRAS_SHOWN: &str = "(beside the folders)";

/// Something a snapshot needs that cannot be read.
pub struct TreeProblem {
    /// What and where, for the report.
    pub line: String,
    /// `snapshot-id: path`.
    pub path: String,
    /// A stored copy exists but is damaged (`repair packs` sets it aside), rather than missing.
    pub damage: bool,
}

/// A path below a tree, what is wrong there, and whether it is damage rather than a loss.
type Found = (PathBuf, String, bool);

/// What is stored and intact: `present` (given a blob and, for a chunk, its listed length) and
/// not `damaged`.
struct Known<'a> {
    present: &'a dyn Fn(&BlobId, Option<u32>) -> bool,
    damaged: &'a HashSet<BlobId>,
    /// The first listing that could not be reached (the store is down).
    unreachable: &'a std::cell::RefCell<Option<RepoError>>,
}

/// A folder's problems, and how many levels of folders it holds (its verdict holds wherever it
/// is met, as long as those levels stay within `MAX_DEPTH`).
struct Verdict {
    found: Vec<Found>,
    height: usize,
}

/// Returns the height of the folder (see `Verdict`), `None` when the walk stopped below it for
/// depth: a verdict that holds only at this depth, so it is not shared with the same folder
/// met nearer the top (in another snapshot).
fn collect_tree_problems(
    repo: &Repository,
    tree_id: &BlobId,
    at: &Path,
    depth: usize,
    known: &Known,
    memo: &mut HashMap<BlobId, Verdict>,
    out: &mut Vec<Found>,
) -> Option<usize> {
    if depth > crate::tree::MAX_DEPTH {
        out.push((at.to_path_buf(), crate::tree::too_deep().to_string(), false));
        return None;
    }
    if let Some(known) = memo.get(tree_id).filter(|v| depth + v.height <= crate::tree::MAX_DEPTH) {
        out.extend(known.found.iter().map(|(p, why, damage)| (at.join(p), why.clone(), *damage)));
        return Some(known.height);
    }
    let mut found: Vec<Found> = Vec::new();
    let mut height = Some(0);
    if !(known.present)(tree_id, None) {
        found.push((PathBuf::new(), "folder listing is missing from the repository".into(), false));
    } else if known.damaged.contains(tree_id) {
        found.push((PathBuf::new(), "folder listing is damaged".into(), true));
    } else {
        match load_tree(repo, tree_id) {
            Err(e @ RepoError::Storage(_)) => {
                known.unreachable.borrow_mut().get_or_insert(e);
            }
            Err(e) => {
                let damage = e.is_corruption();
                found.push((PathBuf::new(), e.to_string(), damage));
            }
            Ok(tree) => {
                for entry in &tree.entries {
                    let name = PathBuf::from(entry.name_os());
                    match &entry.node {
                        Node::Dir { tree } => {
                            let mut below = Vec::new();
                            let below_height =
                                collect_tree_problems(repo, tree, Path::new(""), depth + 1, known, memo, &mut below);
                            height = height.zip(below_height).map(|(h, b)| h.max(b + 1));
                            found.extend(below.into_iter().map(|(p, why, damage)| (name.join(p), why, damage)));
                        }
                        Node::File { chunks, .. } => {
                            let missing = chunks.iter().filter(|c| !(known.present)(&c.id, Some(c.len))).count();
                            let bad = chunks.iter().filter(|c| known.damaged.contains(&c.id)).count();
                            if missing > 0 {
                                found.push((name.clone(), format!("{missing} chunk(s) missing from the repository (or not of the length its listing says)"), false));
                            }
                            if bad > 0 {
                                found.push((name, format!("{bad} chunk(s) damaged"), true));
                            }
                        }
                        Node::Symlink { .. } => {}
                    }
                }
            }
        }
    }
    out.extend(found.iter().map(|(p, why, damage)| (at.join(p), why.clone(), *damage)));
    if let Some(height) = height {
        memo.insert(*tree_id, Verdict { found, height });
    }
    height
}
