//! A model-based test of a real FUSE mount. One thread changes the repository the way its users
//! do (backups of a changing phone, two in one second now and then, forgets that rename such a
//! pair, prunes) while two others look up, list and read through the mount. Each command's
//! outcome is recorded as a version of the name map (`snapshots/p/NAME` -> snapshot id), and the
//! phone as it was at each backup is the model of that snapshot, which `restore` must give too.
//! At the end every observation is judged: a reader may see any version in effect during its
//! operation or up to `STALE` before it (the kernel caches names that long), and nothing else:
//! no byte of another file, no name of a forgotten snapshot.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after a change the mount may still show what was before it.
const STALE: Duration = Duration::from_secs(1);
const WRITER_STEPS: usize = 36;
const READERS: usize = 2;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

/// A snapshot's files: path -> content.
type Files = BTreeMap<String, Arc<Vec<u8>>>;

/// What `snapshots/p/` means between two commands.
#[derive(Clone, Debug, Default)]
struct Names {
    /// Folder name -> snapshot id.
    by_name: BTreeMap<String, String>,
    latest: Option<String>,
}

struct Version {
    /// When the command that made it began: it may be seen from then on.
    began: Instant,
    /// When the command that replaced it ended: it may be seen until `STALE` after that.
    replaced: Option<Instant>,
    names: Names,
}

#[derive(Default)]
struct History {
    versions: Vec<Version>,
    files: HashMap<String, Arc<Files>>,
}

impl History {
    /// The versions a reader may have seen during `[t0, t1]`.
    fn visible(&self, t0: Instant, t1: Instant) -> Vec<&Names> {
        self.versions
            .iter()
            .filter(|v| v.began <= t1 && v.replaced.is_none_or(|end| end + STALE >= t0))
            .map(|v| &v.names)
            .collect()
    }
}

#[derive(Debug)]
enum Op {
    List,
    Read { name: String, path: String },
    ReadAt { name: String, path: String, offset: u64, len: usize },
    Stat { name: String, path: String },
    Walk { name: String },
}

#[derive(Debug)]
enum Outcome {
    Names(BTreeSet<String>),
    Bytes(blake3::Hash),
    Size(u64),
    Paths(BTreeSet<String>),
    Missing,
    Failed(#[allow(dead_code)] String),
}

struct Observation {
    t0: Instant,
    t1: Instant,
    op: Op,
    outcome: Outcome,
}

/// The phone being backed up, and what it holds.
struct Phone {
    root: PathBuf,
    files: Files,
    made: u64,
    /// Each change gets its own mtime: two same-size writes in one clock tick would look
    /// unchanged to any backup tool.
    clock: i64,
}

impl Phone {
    fn put(&mut self, path: &str, content: Vec<u8>) {
        let at = self.root.join(path);
        write(&at, &content);
        self.clock += 1;
        set_mtime(&at, self.clock, 0);
        self.files.insert(path.to_string(), Arc::new(content));
    }

    fn change(&mut self, rng: &mut Rng) {
        self.made += 1;
        let seed = rng.next();
        match rng.below(5) {
            0 | 1 => {
                let len = 20_000 + rng.below(1_200_000);
                self.put(&format!("DCIM/Camera/IMG_{:04}.jpg", self.made), bytes(seed, len, false));
            }
            2 => {
                let deletable: Vec<&String> = self.files.keys().filter(|p| p.starts_with("DCIM/")).collect();
                let path = rng.pick(&deletable).map(|p| p.to_string());
                if let Some(path) = path.filter(|_| deletable.len() > 2) {
                    std::fs::remove_file(self.root.join(&path)).unwrap();
                    self.files.remove(&path);
                }
            }
            3 => {
                let len = 1_000 + rng.below(30_000);
                self.put(&format!("Documents/note_{}.txt", rng.below(4)), bytes(seed, len, true));
            }
            _ => {
                // A database changed in place: same size, some bytes different.
                let mut db = self.files.get("Android/data/app/main.db").map(|c| c.to_vec()).unwrap();
                for _ in 0..4 {
                    let at = rng.below(db.len());
                    db[at] ^= 0x5a;
                }
                self.put("Android/data/app/main.db", db);
            }
        }
    }
}

fn names_now(s: &Scratch) -> Names {
    let mut names = Names::default();
    for snapshot in s.json(&["snapshots"]).as_array().unwrap() {
        let name = snapshot["name"].as_str().unwrap().to_string();
        names.by_name.insert(name.clone(), snapshot["id"].as_str().unwrap().to_string());
        names.latest = Some(name); // oldest first
    }
    names
}

/// Restores snapshot `id` and compares it with the model.
fn restore_matches(s: &Scratch, id: &str, files: &Files, into: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(into);
    s.ok(&["restore", id, "--target", into.to_str().unwrap()]);
    let mut restored = Files::new();
    for file in files_under(into) {
        let rel = file.strip_prefix(into).unwrap().to_str().unwrap().to_string();
        restored.insert(rel, Arc::new(std::fs::read(&file).unwrap()));
    }
    std::fs::remove_dir_all(into).unwrap();
    (restored == *files).then_some(()).ok_or_else(|| format!("restore of {id} differs from the phone it backed up"))
}

/// Changes the repository step by step, recording each version of the names.
fn writer(s: &Scratch, phone: &mut Phone, history: &Mutex<History>, rng: &mut Rng, failures: &Mutex<Vec<String>>) {
    let mut second = 1_000;
    let mut fraction = 0;
    for step in 0..WRITER_STEPS {
        let began = Instant::now();
        // The first steps make sure names change meaning: two more backups in the first
        // snapshot's second (NAME.2, NAME.3), then a forget that renames both.
        let choice = match step {
            0 | 1 => 0,
            2 => 5,
            _ => rng.below(10),
        };
        let restore_check = match choice {
            0..=4 => {
                for _ in 0..=rng.below(3) {
                    phone.change(rng);
                }
                // Often in the same second as the one before: named NAME.2, renamed by a forget.
                if step > 1 && rng.below(2) == 0 {
                    second += 1;
                    fraction = 0;
                } else {
                    fraction += 1;
                }
                let time = format!("2026-01-01T00:{:02}:{:02}.{fraction}+00:00", second / 60 % 60, second % 60);
                s.ok(&["backup", "--device", "p", "--time", &time, phone.root.to_str().unwrap()]);
                let id = s.json(&["snapshots"]).as_array().unwrap().iter().last().unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                history.lock().unwrap().files.insert(id, Arc::new(phone.files.clone()));
                None
            }
            5 | 6 => {
                let count = names_now(s).by_name.len();
                let keep = if step == 2 { count - 1 } else { 1 + rng.below(count.max(1)) };
                s.ok(&["forget", "--keep-last", &keep.to_string()]);
                None
            }
            7 | 8 => {
                s.ok(&["prune"]);
                None
            }
            _ => {
                let names = names_now(s);
                let ids: Vec<&String> = names.by_name.values().collect();
                rng.pick(&ids).map(|id| id.to_string())
            }
        };
        let names = names_now(s);
        let ended = Instant::now();
        let mut h = history.lock().unwrap();
        if let Some(last) = h.versions.last_mut() {
            last.replaced = Some(ended);
        }
        h.versions.push(Version { began, replaced: None, names });
        if let Some(id) = restore_check {
            let files = h.files[&id].clone();
            drop(h);
            if let Err(e) = restore_matches(s, &id, &files, &s.path(&format!("restored-{step}"))) {
                failures.lock().unwrap().push(e);
            }
        }
    }
}

fn errno_of(e: &std::io::Error) -> Outcome {
    if e.kind() == std::io::ErrorKind::NotFound {
        Outcome::Missing
    } else {
        Outcome::Failed(e.to_string())
    }
}

/// Files below an open folder, read through /proc/self/fd so that the walk stays in the
/// snapshot the folder was when opened (as `find` does with its open folders).
fn walk(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let top = std::fs::File::open(dir)?;
    let base = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&top)));
    let mut found = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(base.join(&rel))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else {
                found.insert(path.to_str().unwrap().to_string());
            }
        }
    }
    Ok(found)
}

fn observe(device: &Path, op: &Op) -> Outcome {
    let attempt = || -> std::io::Result<Outcome> {
        Ok(match op {
            Op::List => Outcome::Names(
                std::fs::read_dir(device)?
                    .map(|e| e.map(|e| e.file_name().to_str().unwrap().to_string()))
                    .collect::<Result<_, _>>()?,
            ),
            Op::Read { name, path } => Outcome::Bytes(blake3::hash(&std::fs::read(device.join(name).join(path))?)),
            Op::ReadAt { name, path, offset, len } => {
                let mut file = std::fs::File::open(device.join(name).join(path))?;
                file.seek(SeekFrom::Start(*offset))?;
                let mut got = Vec::new();
                file.take(*len as u64).read_to_end(&mut got)?;
                Outcome::Bytes(blake3::hash(&got))
            }
            Op::Stat { name, path } => Outcome::Size(std::fs::metadata(device.join(name).join(path))?.len()),
            Op::Walk { name } => Outcome::Paths(walk(&device.join(name))?),
        })
    };
    attempt().unwrap_or_else(|e| errno_of(&e))
}

/// Looks, lists and reads at random until the writer is done.
fn reader(device: &Path, history: &Mutex<History>, done: &AtomicBool, seed: u64) -> Vec<Observation> {
    let mut rng = Rng(seed | 1);
    let mut seen = Vec::new();
    let mut listed: Vec<String> = vec!["latest".into()];
    while !done.load(Ordering::Relaxed) {
        // A path some snapshot has (or had): it may not be in the one read.
        let paths: Vec<String> = {
            let h = history.lock().unwrap();
            let files = h.files.values().nth(rng.below(h.files.len())).cloned().unwrap_or_default();
            files.keys().cloned().collect()
        };
        let name = rng.pick(&listed).cloned().unwrap_or_else(|| "latest".into());
        let path = rng.pick(&paths).cloned().unwrap_or_default();
        let op = match rng.below(6) {
            0 => Op::List,
            1 | 2 => Op::Read { name, path },
            3 => Op::ReadAt { name, path, offset: rng.below(1_300_000) as u64, len: 1 + rng.below(300_000) },
            4 => Op::Stat { name, path },
            _ => Op::Walk { name },
        };
        let t0 = Instant::now();
        let outcome = observe(device, &op);
        let t1 = Instant::now();
        if let Outcome::Names(names) = &outcome {
            listed = names.iter().cloned().collect();
        }
        seen.push(Observation { t0, t1, op, outcome });
        std::thread::sleep(Duration::from_millis(rng.below(15) as u64));
    }
    seen
}

/// The snapshots `name` may have meant: each visible version's, and for `latest` each visible
/// version's target looked up in each visible version (the link and the name it leads to are
/// two lookups, each of which may lag).
fn meanings(visible: &[&Names], name: &str) -> Vec<Option<String>> {
    let mut ids = Vec::new();
    for v in visible {
        if name == "latest" {
            for target in visible.iter().filter_map(|t| t.latest.as_ref()) {
                ids.push(v.by_name.get(target).cloned());
            }
        } else {
            ids.push(v.by_name.get(name).cloned());
        }
    }
    ids.sort();
    ids.dedup();
    ids
}

fn judge(history: &History, seen: &Observation) -> Result<(), String> {
    let visible = history.visible(seen.t0, seen.t1);
    let fail = |why: &str| Err(format!("{:?} gave {:?}: {why}", seen.op, seen.outcome));
    let file = |id: &Option<String>, path: &str| id.as_ref().and_then(|id| history.files[id].get(path).cloned());
    let (name, path) = match &seen.op {
        Op::List => {
            let Outcome::Names(got) = &seen.outcome else { return fail("a listing failed") };
            let matches = visible.iter().any(|v| {
                let mut want: BTreeSet<String> = v.by_name.keys().cloned().collect();
                want.insert("latest".into());
                *got == want
            });
            return if matches { Ok(()) } else { fail("no version of the names in effect then") };
        }
        Op::Read { name, path } | Op::ReadAt { name, path, .. } | Op::Stat { name, path } => {
            (name.clone(), path.clone())
        }
        Op::Walk { name } => (name.clone(), String::new()),
    };
    let ids = meanings(&visible, &name);
    // Errors other than "not there" are allowed only while the name changes meaning.
    let settled = ids.len() == 1 && ids[0].is_some();
    match &seen.outcome {
        Outcome::Missing => {
            let could_miss = ids.iter().any(|id| match &seen.op {
                Op::Walk { .. } => id.is_none(),
                _ => file(id, &path).is_none(),
            });
            if could_miss {
                Ok(())
            } else {
                fail("there in every version in effect")
            }
        }
        Outcome::Failed(_) if !settled => Ok(()),
        Outcome::Failed(_) => fail("an error while the name meant one snapshot throughout"),
        Outcome::Bytes(got) => {
            let expected = |id: &Option<String>| -> Option<blake3::Hash> {
                let content = file(id, &path)?;
                Some(match &seen.op {
                    Op::ReadAt { offset, len, .. } => {
                        let start = (*offset as usize).min(content.len());
                        blake3::hash(&content[start..(start + len).min(content.len())])
                    }
                    _ => blake3::hash(&content),
                })
            };
            if ids.iter().any(|id| expected(id) == Some(*got)) {
                Ok(())
            } else {
                fail("bytes of no snapshot this name meant")
            }
        }
        Outcome::Size(got) => {
            if ids.iter().any(|id| file(id, &path).is_some_and(|c| c.len() as u64 == *got)) {
                Ok(())
            } else {
                fail("the size of no snapshot's file this name meant")
            }
        }
        Outcome::Paths(got) => {
            let any = ids.iter().flatten().any(|id| history.files[id].keys().cloned().collect::<BTreeSet<_>>() == *got);
            if any {
                Ok(())
            } else {
                fail("files of no snapshot this name meant")
            }
        }
        Outcome::Names(_) => fail("a listing where a file was read"),
    }
}

#[test]
fn the_mount_never_shows_a_wrong_byte_or_a_stale_name_while_the_repository_changes() {
    let seed = std::env::var("PHONEBAK_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("model seed {seed} (PHONEBAK_MODEL_SEED={seed} repeats the writer's steps)");
    let mut rng = Rng(seed | 1);
    let s = Scratch::with_repo();
    let mut phone = Phone { root: s.path("phone"), files: Files::new(), made: 0, clock: 1_700_000_000 };
    phone.put("Android/data/app/main.db", bytes(rng.next(), 200_000, true));
    for _ in 0..4 {
        phone.change(&mut rng);
    }
    let history = Mutex::new(History::default());
    s.ok(&["backup", "--device", "p", "--time", "2026-01-01T00:16:40+00:00", phone.root.to_str().unwrap()]);
    {
        let mut h = history.lock().unwrap();
        let names = names_now(&s);
        h.files.insert(names.by_name.values().next().unwrap().clone(), Arc::new(phone.files.clone()));
        h.versions.push(Version { began: Instant::now(), replaced: None, names });
    }
    let m = Mounted::new(&s, &[]);
    let device = m.snapshots().join("p");
    let failures = Mutex::new(Vec::new());
    let done = AtomicBool::new(false);
    let observations: Vec<Observation> = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..READERS as u64)
            .map(|n| {
                let (device, history, done) = (&device, &history, &done);
                scope.spawn(move || reader(device, history, done, seed.wrapping_add(n + 1)))
            })
            .collect();
        // Readers stop when the writer ends, even by a panic.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let stop = Stop(&done);
        writer(&s, &mut phone, &history, &mut rng, &failures);
        drop(stop);
        readers.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });

    let history = history.into_inner().unwrap();
    let mut failures = failures.into_inner().unwrap();
    failures.extend(observations.iter().filter_map(|seen| judge(&history, seen).err()));
    // Once settled, each snapshot folder holds exactly its phone, as `restore` gives it.
    std::thread::sleep(STALE);
    let last = &history.versions.last().unwrap().names;
    for (name, id) in &last.by_name {
        let files = &history.files[id];
        match walk(&device.join(name)) {
            Ok(paths) if paths == files.keys().cloned().collect::<BTreeSet<_>>() => {}
            other => failures.push(format!("{name} lists {other:?} at the end")),
        }
        for (path, content) in files.iter() {
            if std::fs::read(device.join(name).join(path)).ok().as_deref() != Some(content.as_slice()) {
                failures.push(format!("{name}/{path} differs at the end"));
            }
        }
        if let Err(e) = restore_matches(&s, id, files, &s.path("restored-last")) {
            failures.push(e);
        }
    }
    let kinds = |pred: fn(&Op) -> bool| observations.iter().filter(|o| pred(&o.op)).count();
    let reads = kinds(|op| matches!(op, Op::Read { .. } | Op::ReadAt { .. }));
    let renamed = history.versions.iter().any(|v| v.names.by_name.keys().any(|n| n.contains('.')));
    eprintln!(
        "{} observations ({reads} reads, {} listings, {} walks) over {} versions; a same-second name: {renamed}",
        observations.len(),
        kinds(|op| matches!(op, Op::List)),
        kinds(|op| matches!(op, Op::Walk { .. })),
        history.versions.len()
    );
    assert!(reads > 50, "the readers read while the writer worked");
    assert!(
        failures.is_empty(),
        "seed {seed}: {} failures, the first:\n{}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n")
    );
}
