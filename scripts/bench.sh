#!/usr/bin/env bash
# Benchmark: phonebak side by side with restic and borg on the same generated phone, in one run.
#
#   scripts/bench.sh                                # ~1.5 GB, 24.5k files, 3 rounds
#   BENCH_SCALE=0.1 BENCH_RUNS=1 scripts/bench.sh   # a quick look
#   BENCH_ONLY=ios scripts/bench.sh                 # one part: phone (issues 2-4), ios (15), android (16), s3 (17)
#
# Each round gives every tool a fresh repository and measures: first backup, unchanged
# re-backup, next-day backup (new photos, databases changed in place, deletions, a renamed
# folder), restore of the latest snapshot, repository size, peak memory. The figures printed are
# medians over the rounds (this machine is shared; single runs vary by up to 50%). As root, the
# run happens on a fresh ext4 file system (a loop device), because ext4 slows down the creation of
# files for minutes after many were deleted, which would favour whichever tool comes last.
# All tools read the same files from a warm page cache, encrypt (borg: repokey-blake2) and
# compress with zstd level 3 (restic: its "auto" mode, zstd). Results: $BENCH_DIR.results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
# fuse3 first: restic and borg recommend `fuse`, which fuse3 provides; installed without it,
# apt brings fuse 2, which removes fuse3 (and with it fusermount3, which the mount tests need).
need_debs fuse3
need_debs restic borgbackup python3 python3-venv time rsync curl

scale=${BENCH_SCALE:-1}
runs=${BENCH_RUNS:-3}
work=${BENCH_DIR:-/tmp/phonebak-bench}
want() { [ -z "${BENCH_ONLY:-}" ] || [ "$BENCH_ONLY" = "$1" ]; }
cargo build --release --quiet
phonebak=$PWD/target/release/phonebak

fresh_filesystem() {
    image=${work%/}.img
    umount "$work" 2> /dev/null || true
    for dev in $(losetup -j "$image" -O NAME -n 2> /dev/null); do losetup -d "$dev"; done
    rm -rf "$work" "$image"
    mkdir -p "$work"
    [ "$(id -u)" = 0 ] || { echo "(not root: measuring on $work as it is)"; return; }
    truncate -s "${BENCH_FS_SIZE:-60G}" "$image"
    dev=$(losetup --show -f --direct-io=on "$image")
    mkfs.ext4 -q -F "$dev"
    mount "$dev" "$work"
    echo "measuring on a fresh ext4 file system ($dev, backed by $image)"
}
fresh_filesystem
# This virtual machine hands free memory back to its host at once (free page reporting): the
# next large write then waits for the host to back fresh pages, which made single runs of
# cp -a or push 3 to 10 times slower at random. As root, the run keeps freed pages for two
# minutes first (min_free_ms), and puts the setting back at the end.
reporting=/sys/module/page_reporting/parameters/min_free_ms
if [ "$(id -u)" = 0 ] && [ -w "$reporting" ]; then
    reporting_was=$(cat "$reporting")
    echo 120000 > "$reporting"
    trap 'echo "$reporting_was" > "$reporting"' EXIT
fi
export PHONEBAK_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$work/borg-home RESTIC_CACHE_DIR=$work/restic-cache
csv=$work/figures.csv
: > "$csv"
: > "${work%/}.results.txt"

echo "generating the phone (scale $scale) ..."
scripts/gen-phone "$work/day1" --scale "$scale"
cp -a "$work/day1" "$work/day2"
scripts/gen-phone "$work/day2" --next-day --scale "$scale"
phone=$work/phone
mkdir -p "$phone"

become() { rsync -a --delete "$work/$1/" "$phone/"; }
warm() { tar cf - -C "$phone" . | cat > /dev/null; }

# measure TOOL STEP COMMAND... : runs it, records "step,tool,seconds,peak_mib".
measure() {
    local tool=$1 step=$2; shift 2
    local log=$work/time.txt
    /usr/bin/time -f "%e %M" -o "$log" "$@" > "$work/last.out" 2> "$work/last.err" || {
        echo "$tool $step failed:"; cat "$work/last.err"; exit 1; }
    read -r secs kib < "$log"
    printf '  %-9s %-10s %8.2f s %6d MiB\n' "$tool" "$step" "$secs" $((kib / 1024))
    echo "$step,$tool,$secs,$((kib / 1024))" >> "$csv"
}

can_drop=$([ "$(id -u)" = 0 ] && echo yes || echo no)
drop_caches() { sync; [ "$can_drop" = yes ] && echo 3 > /proc/sys/vm/drop_caches || true; }
wait_for() { for _ in $(seq 2000); do [ -e "$1" ] && return; sleep 0.01; done; echo "timed out waiting for $1"; exit 1; }

backup() { # TOOL STEP REPO
    case $1 in
        phonebak) measure "$1" "$2" "$phonebak" backup --repo "$3" --device phone "$phone" ;;
        restic) measure "$1" "$2" restic -r "$3" backup -q "$phone" ;;
        borg) measure "$1" "$2" borg create --compression zstd,3 "$3::$2" "$phone" ;;
    esac
}

# The phone benchmarks (issues 2, 3 and 4); BENCH_ONLY=phone, ios or android runs one part.
if want phone; then
order=(phonebak restic borg)
for round in $(seq "$runs"); do
    echo "round $round of $runs"
    order=("${order[@]:1}" "${order[0]}")  # every tool takes every place in the order
    rm -rf "$work"/repo-*
    become day1
    "$phonebak" init --repo "$work/repo-phonebak" > /dev/null
    restic init -q -r "$work/repo-restic"
    borg init -e repokey-blake2 "$work/repo-borg" 2> /dev/null
    for tool in "${order[@]}"; do warm; backup "$tool" first "$work/repo-$tool"; done
    for tool in "${order[@]}"; do warm; backup "$tool" unchanged "$work/repo-$tool"; done
    become day2
    for tool in "${order[@]}"; do warm; backup "$tool" next-day "$work/repo-$tool"; done
    out=$work/out-$round
    for tool in "${order[@]}"; do
        case $tool in
            phonebak) measure phonebak restore "$phonebak" restore --repo "$work/repo-phonebak" latest --target "$out-phonebak" ;;
            restic) measure restic restore restic -r "$work/repo-restic" restore latest --target "$out-restic" ;;
            borg) mkdir -p "$out-borg"
                measure borg restore bash -c "cd '$out-borg' && borg extract '$work/repo-borg::next-day'" ;;
        esac
    done
    diff -r "$phone" "$out-phonebak" > /dev/null || { echo "phonebak restore differs from the phone"; exit 1; }
    for tool in phonebak restic borg; do
        echo "size,$tool,$(du -sb "$work/repo-$tool" | cut -f1),0" >> "$csv"
    done
done

# --- The mount (issue 3): every tool's mount of a repository of 20 snapshots, read cold (fresh
# mount, page cache dropped) and warm, next to the same reads on the plain folder.
echo "mount benchmarks: filling each repository up to 20 snapshots ..."
for n in $(seq 4 20); do
    "$phonebak" backup --repo "$work/repo-phonebak" --device phone "$phone" > /dev/null
    restic -r "$work/repo-restic" backup -q "$phone" > /dev/null
    borg create --compression zstd,3 "$work/repo-borg::extra-$n" "$phone" 2> /dev/null
done
mcsv=$work/mount.csv
: > "$mcsv"
seconds() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); python3 -c "print(f'{$t1 - $t0:.3f}')"; }
read_all() { tar cf - -C "$1" . | wc -c > /dev/null; }
count_all() { find "$1" | wc -l > /dev/null; }
record() { echo "$1,$2,$3" >> "$mcsv"; printf '  %-9s %-16s %s\n' "$1" "$2" "$3"; }

# reads TOOL ROOT: the same reads on ROOT, cold then warm.
reads() {
    drop_caches; record "$1" find_cold "$(seconds count_all "$2")"
    record "$1" find_warm "$(seconds count_all "$2")"
    drop_caches; record "$1" tar_cold "$(seconds read_all "$2")"
    record "$1" tar_warm "$(seconds read_all "$2")"
    drop_caches; record "$1" random_per_s "$(python3 scripts/random-reads.py "$2")"
}

peak_rss() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status" 2> /dev/null || echo 0; }

# The mount figures are medians of as many rounds as the backup figures (single runs of a
# mount vary even more than backups here).
mnt=$work/mnt; mkdir -p "$mnt"
for round in $(seq "$runs"); do
    echo "mount round $round of $runs"
    reads plain "$phone"

    start=$(date +%s.%N)
    "$phonebak" mount --repo "$work/repo-phonebak" "$mnt"
    ls "$mnt/snapshots/phone/latest/" > /dev/null
    record phonebak mount_s "$(python3 -c "print(f'{$(date +%s.%N) - $start:.3f}')")"
    reads phonebak "$mnt/snapshots/phone/latest/"
    record phonebak rss_mib "$(peak_rss "$(pgrep -f "phonebak mount --repo $work/repo-phonebak" | head -1)")"
    umount "$mnt"

    start=$(date +%s.%N)
    restic -r "$work/repo-restic" mount "$mnt" > /dev/null 2>&1 &
    restic_pid=$!
    wait_for "$mnt/snapshots/latest$phone"
    record restic mount_s "$(python3 -c "print(f'{$(date +%s.%N) - $start:.3f}')")"
    reads restic "$mnt/snapshots/latest$phone/"
    record restic rss_mib "$(peak_rss "$restic_pid")"
    umount "$mnt"; wait "$restic_pid" || true

    start=$(date +%s.%N)
    borg mount "$work/repo-borg" "$mnt"
    ls "$mnt/extra-20$phone/" > /dev/null
    record borg mount_s "$(python3 -c "print(f'{$(date +%s.%N) - $start:.3f}')")"
    reads borg "$mnt/extra-20$phone/"
    record borg rss_mib "$(peak_rss "$(pgrep -f "borg mount $work/repo-borg" | head -1)")"
    umount "$mnt"
done

# --- Staging and push (issue 4). `cp -a` of the latest snapshot's DCIM (about 1 GB at scale 1)
# from the mount into its restore/ folder, against the same copy between two local folders
# (both read cold); and `cp -a` of the local folder into restore/ (the writing side alone, as
# restore/ leads to the staging folder on disk). Then `phonebak push` of what was staged to a
# dir: device on the same disk, against `cp -a` of the same folder there, alone (its data is then
# only in the page cache) and followed by `sync` (push makes every file durable, and reads it
# back to verify it). The three take turns three times a round: on this virtual machine a run
# of any of the three writes 1 GB either fast or 3 to 10 times slower, at random (the host
# backing fresh guest memory), so the fastest runs are printed next to the medians.
scsv=$work/staging.csv; : > "$scsv"
timed() { printf '  %-12s %s\n' "$1" "$2"; echo "$1,$2" >> "$scsv"; }
staged=$work/repo-phonebak/staging
fresh_devices() { rm -rf "$work/device-cp" "$work/device-push"; mkdir -p "$work/device-cp" "$work/device-push"; sync; read_all "$staged/DCIM"; }
for round in $(seq "$runs"); do
    echo "staging round $round of $runs"
    rm -rf "$work/local-copy"; drop_caches
    timed local_copy "$(seconds cp -a "$phone/DCIM" "$work/local-copy")"
    "$phonebak" mount --repo "$work/repo-phonebak" "$mnt"
    rm -rf "$mnt/restore/DCIM"; drop_caches
    timed stage_local "$(seconds cp -a "$phone/DCIM" "$mnt/restore/")"
    rm -rf "$mnt/restore/DCIM"; drop_caches
    timed stage_copy "$(seconds cp -a "$mnt/snapshots/phone/latest/DCIM" "$mnt/restore/")"
    umount "$mnt"
    for pair in 1 2 3; do
        fresh_devices
        timed cp "$(seconds cp -a "$staged/DCIM" "$work/device-cp/")"
        fresh_devices
        # sync -f: the device's file system alone, as push's syncfs (a plain sync also flushed
        # the root file system that holds the image, for either side at random).
        timed cp_sync "$(seconds sh -c "cp -a '$staged/DCIM' '$work/device-cp/' && sync -f '$work/device-cp'")"
        fresh_devices
        timed push "$(seconds "$phonebak" push --repo "$work/repo-phonebak" --device "dir:$work/device-push" --keep)"
    done
    diff -r "$staged/DCIM" "$work/device-push/DCIM" > /dev/null || { echo "push differs from the staged folder"; exit 1; }
    rm -rf "$work/local-copy" "$work/device-cp" "$work/device-push" "$staged"
done

python3 - "$csv" "$(du -sb "$phone" | cut -f1)" "$(find "$phone" -type f | wc -l)" "$mcsv" "$can_drop" "$scsv" "$(du -sb "$phone/DCIM" | cut -f1)" <<'PY' | tee -a "${work%/}.results.txt"
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
phone_bytes, phone_files = int(sys.argv[2]), int(sys.argv[3])
def med(step, tool, col=2):
    return statistics.median(float(r[col]) for r in rows if r[0] == step and r[1] == tool)
tools = ["phonebak", "restic", "borg"]
print(f"phone (next day): {phone_bytes / 1e9:.2f} GB in {phone_files} files; medians of {len([r for r in rows if r[0] == 'first' and r[1] == 'phonebak'])} round(s)")
print(f"{'':22}" + "".join(f"{t:>12}" for t in tools))
for step in ["first", "unchanged", "next-day", "restore"]:
    print(f"{step + ' (s)':22}" + "".join(f"{med(step, t):12.2f}" for t in tools))
print(f"{'restore (MB/s)':22}" + "".join(f"{phone_bytes / med('restore', t) / 1e6:12.0f}" for t in tools))
print(f"{'repository (MiB)':22}" + "".join(f"{med('size', t) / 2**20:12.0f}" for t in tools))
for step in ["first", "next-day"]:
    print(f"{'peak RSS ' + step + ' (MiB)':22}" + "".join(f"{med(step, t, 3):12.0f}" for t in tools))
ok = lambda c: "met" if c else "NOT met"
pb = lambda step: med(step, "phonebak")
print("targets (issue 2):")
print(f"  first backup >= 2x faster: restic/phonebak {med('first', 'restic') / pb('first'):.2f}x, borg/phonebak {med('first', 'borg') / pb('first'):.2f}x: "
      + ok(med('first', 'restic') >= 2 * pb('first') and med('first', 'borg') >= 2 * pb('first')))
print(f"  next-day backup < 1 s: {pb('next-day'):.2f} s (restic {med('next-day', 'restic'):.2f} s): " + ok(pb('next-day') < 1))
print(f"  restore >= 2x restic: {med('restore', 'restic') / pb('restore'):.2f}x: " + ok(med('restore', 'restic') >= 2 * pb('restore')))
print(f"  repository <= borg's: phonebak/borg {med('size', 'phonebak') / med('size', 'borg'):.3f}: " + ok(med('size', 'phonebak') <= med('size', 'borg')))
peak = max(med('first', 'phonebak', 3), med('next-day', 'phonebak', 3))
print(f"  backup peak memory < 200 MiB: {peak:.0f} MiB: " + ok(peak < 200))

mrows = {}
for r in csv.reader(open(sys.argv[4])):
    mrows.setdefault((r[0], r[1]), []).append(float(r[2]))
m = lambda tool, what: statistics.median(mrows[(tool, what)])
cold = "cold = fresh mount, page cache dropped" if sys.argv[5] == "yes" else "cold: page cache NOT dropped (not root)"
print(f"\nmount of a 20-snapshot repository, reading the latest snapshot ({cold}); medians of {len(mrows[('phonebak', 'mount_s')])} round(s):")
tools4 = ["phonebak", "restic", "borg", "plain"]
print(f"{'':22}" + "".join(f"{t:>12}" for t in tools4))
print(f"{'mount ready (s)':22}" + "".join(f"{m(t, 'mount_s'):12.3f}" if t != "plain" else f"{'':>12}" for t in tools4))
for what in ["find_cold", "find_warm"]:
    print(f"{what.replace('_', ' ') + ' (s)':22}" + "".join(f"{m(t, what):12.2f}" for t in tools4))
for what in ["tar_cold", "tar_warm"]:
    print(f"{what.replace('_', ' ') + ' (MB/s)':22}" + "".join(f"{phone_bytes / m(t, what) / 1e6:12.0f}" for t in tools4))
print(f"{'random 4K reads/s':22}" + "".join(f"{m(t, 'random_per_s'):12.0f}" for t in tools4))
print(f"{'daemon peak RSS (MiB)':22}" + "".join(f"{m(t, 'rss_mib'):12.0f}" if t != "plain" else f"{'':>12}" for t in tools4))
mbps = lambda t, what: phone_bytes / m(t, what) / 1e6
print("targets (issue 3):")
print(f"  mount ready < 100 ms: {m('phonebak', 'mount_s') * 1000:.0f} ms: " + ok(m('phonebak', 'mount_s') < 0.1))
print(f"  cold read >= 5x restic mount: {mbps('phonebak', 'tar_cold') / mbps('restic', 'tar_cold'):.1f}x: " + ok(mbps('phonebak', 'tar_cold') >= 5 * mbps('restic', 'tar_cold')))
print(f"  cold read >= 80% of the plain folder: {100 * mbps('phonebak', 'tar_cold') / mbps('plain', 'tar_cold'):.0f}%: " + ok(mbps('phonebak', 'tar_cold') >= 0.8 * mbps('plain', 'tar_cold')))
print(f"  warm read >= 75% of the plain folder: {100 * mbps('phonebak', 'tar_warm') / mbps('plain', 'tar_warm'):.0f}%: " + ok(mbps('phonebak', 'tar_warm') >= 0.75 * mbps('plain', 'tar_warm')))
print(f"  random 4K reads >= 10x restic mount: {m('phonebak', 'random_per_s') / m('restic', 'random_per_s'):.1f}x: " + ok(m('phonebak', 'random_per_s') >= 10 * m('restic', 'random_per_s')))
print(f"  find within 2x of the plain folder: cold {m('phonebak', 'find_cold') / m('plain', 'find_cold'):.1f}x, warm {m('phonebak', 'find_warm') / m('plain', 'find_warm'):.1f}x: " + ok(m('phonebak', 'find_cold') <= 2 * m('plain', 'find_cold') and m('phonebak', 'find_warm') <= 2 * m('plain', 'find_warm')))
print(f"  daemon peak RSS < cache_size (256 MiB) + 64 MiB: {m('phonebak', 'rss_mib'):.0f} MiB: " + ok(m('phonebak', 'rss_mib') < 320))

srows = {}
for r in csv.reader(open(sys.argv[6])):
    srows.setdefault(r[0], []).append(float(r[1]))
dcim = int(sys.argv[7])
print(f"\nstaging and push of DCIM ({dcim / 1e9:.2f} GB); {len(srows['local_copy'])} round(s), the last three lines {len(srows['push'])} runs each:")
print(f"  {'':44} {'median':>9} {'':9} {'fastest':>9}")
for what, label in [("local_copy", "cp -a local folder to local folder (cold)"), ("stage_local", "cp -a local folder into restore/ (cold)"),
                    ("stage_copy", "cp -a snapshot into restore/ (cold)"),
                    ("cp", "cp -a staged folder to a device folder"), ("cp_sync", "cp -a ... && sync -f"), ("push", "phonebak push to dir:")]:
    s = statistics.median(srows[what])
    print(f"  {label:44} {s:7.2f} s {dcim / s / 1e6:6.0f} MB/s {min(srows[what]):7.2f} s")
print("targets (issue 4), on medians and on the fastest runs:")
for name, s in [("medians", lambda what: statistics.median(srows[what])), ("fastest", lambda what: min(srows[what]))]:
    print(f"  {name}: staging writes >= 70% of local copy speed: from a snapshot {100 * s('local_copy') / s('stage_copy'):.0f}%, "
          f"from a local folder {100 * s('local_copy') / s('stage_local'):.0f}%: " + ok(s('stage_copy') <= s('local_copy') / 0.7))
    print(f"  {name}: push >= 80% of cp -a to the same folder: {100 * s('cp_sync') / s('push'):.0f}% of cp -a && sync -f "
          f"({100 * s('cp') / s('push'):.0f}% of cp -a alone): " + ok(s('push') <= s('cp_sync') / 0.8))
PY
fi

# --- iPhone backups (issue 15). The day-1 phone made into an encrypted iPhone backup with iOS's
# own key derivation costs (scripts/gen-ios-backup; there is no iPhone here), then updated in
# place with the next day's phone, as iOS does. Measured: phonebak's first import against restic
# backing up the same folder raw, and against iphone_backup_decrypt (PyPI) decrypting it to a
# folder; the next day's import, and what it stores against what changed; the key derivation
# alone (a run with a wrong password); export of the latest snapshot against `cp -r` of the
# folder (alone, and followed by `sync -f`, as export makes its copy durable).
if want ios; then
python3 -c "import cryptography" 2> /dev/null || pip install -q cryptography
decryptor=yes
python3 -c "import iphone_backup_decrypt" 2> /dev/null || pip install -q iphone_backup_decrypt > /dev/null 2>&1 || decryptor=no
export PHONEBAK_ARCHIVE_PASSWORD=bench-iphone
ios_root=$work/ios-backup
ios=$ios_root/00008030-001A2B3C4D5E802E
for round in $(seq "$runs"); do
    echo "iPhone round $round of $runs"
    rm -rf "$work"/repo-* "$ios_root" "$ios.keys.json" "$work"/ios-*
    scripts/gen-ios-backup "$work/day1" "$ios" --password "$PHONEBAK_ARCHIVE_PASSWORD" > /dev/null
    "$phonebak" init --repo "$work/repo-phonebak" > /dev/null
    restic init -q -r "$work/repo-restic"
    tar cf - -C "$ios_root" . | cat > /dev/null
    measure phonebak ios-first "$phonebak" backup --repo "$work/repo-phonebak" "ios-backup:$ios"
    measure restic ios-first restic -r "$work/repo-restic" backup -q "$ios"
    if [ "$decryptor" = yes ]; then
        measure iphone_backup_decrypt ios-first python3 -c "
import sys
from iphone_backup_decrypt import EncryptedBackup
EncryptedBackup(backup_directory=sys.argv[1], passphrase=sys.argv[2]).extract_files(
    relative_paths_like='%', output_folder=sys.argv[3], preserve_folders=True, domain_subfolders=True)
" "$ios" "$PHONEBAK_ARCHIVE_PASSWORD" "$work/ios-decrypted"
    fi
    changes=$(scripts/gen-ios-backup "$work/day2" "$ios" --password "$PHONEBAK_ARCHIVE_PASSWORD")
    tar cf - -C "$ios_root" . | cat > /dev/null
    measure phonebak ios-next-day "$phonebak" backup --repo "$work/repo-phonebak" --json "ios-backup:$ios"
    python3 -c "import json, sys; c = json.loads(sys.argv[1]); s = json.load(open(sys.argv[2]))['stats']
print(f\"ios-stored,phonebak,{s['new_bytes']},{c['changed_bytes']}\")" "$changes" "$work/last.out" >> "$csv"
    echo "ios-manifest,phonebak,$(stat -c %s "$ios/Manifest.db"),0" >> "$csv"
    measure phonebak ios-key-derivation sh -c "PHONEBAK_ARCHIVE_PASSWORD=wrong '$phonebak' backup --repo '$work/repo-phonebak' 'ios-backup:$ios' 2> /dev/null; [ \$? = 19 ]"
    # Each copy into a folder of its own, none deleted until the round ends: ext4 skips inodes
    # freed in the last minute when it makes files, which slowed whichever copy came next.
    for turn in 1 2; do
        sync
        measure phonebak ios-export "$phonebak" export --repo "$work/repo-phonebak" latest --format ios-backup "$work/ios-export-$turn"
        measure cp ios-export cp -r "$ios" "$work/ios-copy-$turn"
        sync
        measure cp_sync ios-export sh -c "cp -r '$ios' '$work/ios-copy-sync-$turn' && sync -f '$work/ios-copy-sync-$turn'"
    done
    diff -r "$ios" "$work/ios-export-1" > /dev/null || { echo "the exported iPhone backup differs from the imported one"; exit 1; }
done
python3 - "$csv" "$(du -sb "$ios" | cut -f1)" "$(find "$ios" -type f | wc -l)" "$decryptor" <<'PY' | tee -a "${work%/}.results.txt"
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
size, files, decryptor = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "yes"
med = lambda step, tool, col=2: statistics.median(float(r[col]) for r in rows if r[0] == step and r[1] == tool)
ok = lambda c: "met" if c else "NOT met"
rounds = len([r for r in rows if r[0] == "ios-first" and r[1] == "phonebak"])
print(f"\niPhone backup, encrypted with iOS's key derivation costs (next day: {size / 1e9:.2f} GB in {files} files); medians of {rounds} round(s):")
print(f"  {'':52} {'s':>7} {'MB/s':>7} {'peak MiB':>9}")
lines = [("ios-first", "phonebak", "phonebak backup ios-backup: (first import)"),
         ("ios-first", "restic", "restic backup of the raw folder"),
         ("ios-first", "iphone_backup_decrypt", "iphone_backup_decrypt, decrypting to a folder"),
         ("ios-next-day", "phonebak", "phonebak backup ios-backup: (next day)"),
         ("ios-key-derivation", "phonebak", "  of which the key derivation (a wrong password)"),
         ("ios-export", "phonebak", "phonebak export --format ios-backup"),
         ("ios-export", "cp", "cp -r of the backup folder"),
         ("ios-export", "cp_sync", "cp -r ... && sync -f")]
for step, tool, label in lines:
    if tool == "iphone_backup_decrypt" and not decryptor:
        print(f"  {label:52} (iphone_backup_decrypt does not install here)")
        continue
    print(f"  {label:52} {med(step, tool):7.2f} {size / med(step, tool) / 1e6:7.0f} {med(step, tool, 3):9.0f}")
stored, changed, manifest = med("ios-stored", "phonebak"), med("ios-stored", "phonebak", 3), med("ios-manifest", "phonebak")
print(f"  next day stored {stored / 1e6:.1f} MB; the changed and new files are {changed / 1e6:.1f} MB, and Manifest.db {manifest / 1e6:.1f} MB")
print("targets (issue 15):")
print(f"  first import at least as fast as restic on the raw folder: {med('ios-first', 'restic') / med('ios-first', 'phonebak'):.2f}x: "
      + ok(med('ios-first', 'phonebak') <= med('ios-first', 'restic')))
print(f"  next-day import stores no more than the changes: {stored / 1e6:.1f} MB <= {(changed + manifest) / 1e6:.1f} MB: " + ok(stored <= changed + manifest))
print(f"  next-day import under 2 s: {med('ios-next-day', 'phonebak'):.2f} s (the key derivation alone {med('ios-key-derivation', 'phonebak'):.2f} s): "
      + ok(med('ios-next-day', 'phonebak') < 2))
print(f"  export at least as fast as cp -r: {med('ios-export', 'cp') / med('ios-export', 'phonebak'):.2f}x of cp -r, "
      f"{med('ios-export', 'cp_sync') / med('ios-export', 'phonebak'):.2f}x of cp -r && sync -f: " + ok(med('ios-export', 'phonebak') <= med('ios-export', 'cp')))
peak = max(med(s, "phonebak", 3) for s in ["ios-first", "ios-next-day", "ios-export"])
print(f"  peak memory under 200 MiB: {peak:.0f} MiB: " + ok(peak < 200))
PY
fi

# --- Android (issue 16). The day-1 phone as a tar (GNU tar) and as an unencrypted, compressed
# .ab (version 5, written here with Python's zlib; there is no phone here). Measured: phonebak's
# import of each against `tar -xf` of the same archive into a folder (for the .ab, inflated by
# Python into tar -x) and against restic backing up that extracted folder; peak memory. Then the
# phone behind the fake adb (tests/fake-adb, serving a local folder, so its costs stand in for a
# USB cable's): the first backup and the next day's, with how many times adb ran and the bytes
# its streams carried, against what changed.
if want android; then
ab_of() { python3 - "$1" "$2" <<'PY'
import sys, zlib
src, dst = sys.argv[1], sys.argv[2]
z = zlib.compressobj(6)
with open(src, "rb") as i, open(dst, "wb") as o:
    o.write(b"ANDROID BACKUP\n5\n1\nnone\n")
    while block := i.read(1 << 20):
        o.write(z.compress(block))
    o.write(z.flush())
PY
}
cat > "$work/inflate-ab.py" <<'PY'
import sys, zlib
i = open(sys.argv[1], "rb")
for _ in range(4):
    i.readline()
z, o = zlib.decompressobj(), sys.stdout.buffer
while block := i.read(1 << 20):
    o.write(z.decompress(block))
o.write(z.flush())
PY
fake_adb=$PWD/tests/fake-adb
tar cf "$work/android.tar" -C "$work/day1" .
ab_of "$work/android.tar" "$work/android.ab"
for round in $(seq "$runs"); do
    echo "Android round $round of $runs"
    rm -rf "$work"/repo-* "$work"/android-x-* "$work"/android-xs-* "$work/adb-phone"
    for kind in tar ab; do
        # A fresh repository for each: the second import would find all its data stored.
        "$phonebak" init --repo "$work/repo-phonebak-$kind" > /dev/null
        restic init -q -r "$work/repo-restic-$kind"
        cat "$work/android.$kind" > /dev/null
        measure phonebak "$kind-import" "$phonebak" backup --repo "$work/repo-phonebak-$kind" --device phone "$kind:$work/android.$kind"
        mkdir -p "$work/android-x-$kind"
        # phonebak's packs are durable when it ends; tar's files are in the page cache: the same
        # extraction followed by `sync -f` is shown beside it.
        if [ "$kind" = tar ]; then
            mkdir -p "$work/android-xs-$kind"
            sync
            measure tar_x_sync "$kind-import" sh -c "tar -xf '$work/android.tar' -C '$work/android-xs-$kind' && sync -f '$work/android-xs-$kind'"
            cat "$work/android.$kind" > /dev/null
        fi
        case $kind in
            tar) measure tar_x "$kind-import" tar -xf "$work/android.tar" -C "$work/android-x-$kind" ;;
            ab) measure tar_x "$kind-import" sh -c "python3 '$work/inflate-ab.py' '$work/android.ab' | tar -xf - -C '$work/android-x-$kind'" ;;
        esac
        measure restic "$kind-import" restic -r "$work/repo-restic-$kind" backup -q "$work/android-x-$kind"
    done
    mkdir -p "$work/adb-phone"
    cp -a "$work/day1" "$work/adb-phone/sdcard"
    "$phonebak" init --repo "$work/repo-phonebak-adb" > /dev/null
    adb_backup() { # STEP
        rm -f "$work/adb-phone/.adb-calls" "$work/adb-phone/.adb-bytes" "$work/adb-phone/.adb-shell-bytes"
        measure phonebak "$1" env PATH="$fake_adb:$PATH" FAKE_ADB_ROOT="$work/adb-phone" \
            "$phonebak" backup --repo "$work/repo-phonebak-adb" --device phone --json adb:
        sum() { awk '{s += $1} END {print s + 0}' "$1" 2> /dev/null || echo 0; }
        echo "$1-calls,phonebak,$(wc -l < "$work/adb-phone/.adb-calls"),$(sum "$work/adb-phone/.adb-bytes")" >> "$csv"
        echo "$1-listing,phonebak,$(sum "$work/adb-phone/.adb-shell-bytes"),0" >> "$csv"
    }
    adb_backup adb-first
    # The next day: 1% of the phone's bytes changed in place (edited photos, a database), sizes
    # kept, times new.
    python3 - "$work/adb-phone/sdcard" "$round" <<'PY' >> "$csv"
import os, random, sys
files = []
for folder, _, names in os.walk(sys.argv[1]):
    files += [os.path.join(folder, n) for n in sorted(names)]
files = [(p, os.path.getsize(p)) for p in sorted(files)]
total = sum(size for _, size in files)
random.seed(int(sys.argv[2]))
random.shuffle(files)
changed = count = 0
for path, size in files:
    if changed >= total / 100:
        break
    if size == 0:
        continue
    with open(path, "r+b") as f:
        f.write(os.urandom(min(size, 65536)))
    os.utime(path, (1_800_000_000, 1_800_000_000))
    changed += size
    count += 1
print(f"adb-changed,phonebak,{changed},{count}")
PY
    adb_backup adb-next-day
done
python3 - "$csv" "$(stat -c %s "$work/android.tar")" "$(stat -c %s "$work/android.ab")" "$(find "$work/day1" -type f | wc -l)" "$(du -sb "$work/day2" | cut -f1)" <<'PY' | tee -a "${work%/}.results.txt"
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
tar_size, ab_size, files, phone_size = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
med = lambda step, tool, col=2: statistics.median(float(r[col]) for r in rows if r[0] == step and r[1] == tool)
ok = lambda c: "met" if c else "NOT met"
rounds = len([r for r in rows if r[0] == "tar-import" and r[1] == "phonebak"])
print(f"\nAndroid archives: a {tar_size / 1e9:.2f} GB tar of {files} files, and the same as a {ab_size / 1e9:.2f} GB .ab; medians of {rounds} round(s):")
print(f"  {'':52} {'s':>7} {'MB/s':>7} {'peak MiB':>9}")
for kind, size in [("tar", tar_size), ("ab", ab_size)]:
    tools = [("phonebak", f"phonebak backup {kind}: (first import)"), ("tar_x", f"tar -xf into a folder{' (inflated by Python)' if kind == 'ab' else ''}")]
    if kind == "tar":
        tools.append(("tar_x_sync", "tar -xf ... && sync -f"))
    tools.append(("restic", "restic backup of the extracted folder"))
    for tool, label in tools:
        print(f"  {label:52} {med(kind + '-import', tool):7.2f} {tar_size / med(kind + '-import', tool) / 1e6:7.0f} {med(kind + '-import', tool, 3):9.0f}")
for step, label in [("adb-first", "fake adb phone, first backup"), ("adb-next-day", "fake adb phone, next day (1% changed)")]:
    calls, moved, listing = med(step + "-calls", "phonebak"), med(step + "-calls", "phonebak", 3), med(step + "-listing", "phonebak")
    print(f"  {label:52} {med(step, 'phonebak'):7.2f} s, {calls:.0f} adb calls, {moved / 1e6:.1f} MB of files + {listing / 1e6:.1f} MB listing, peak {med(step, 'phonebak', 3):.0f} MiB")
changed, changed_files = med("adb-changed", "phonebak"), med("adb-changed", "phonebak", 3)
print(f"  next day: {changed / 1e6:.1f} MB changed in {changed_files:.0f} files of the {phone_size / 1e9:.2f} GB phone")
print("targets (issue 16):")
for kind in ["tar", "ab"]:
    ratio = med(kind + "-import", "tar_x") / med(kind + "-import", "phonebak")
    synced = f", {med('tar-import', 'tar_x_sync') / med('tar-import', 'phonebak'):.2f}x tar -xf && sync -f" if kind == "tar" else ""
    print(f"  {kind} import faster than tar -xf: {ratio:.2f}x{synced}: " + ok(ratio > 1)
          + f"; {med(kind + '-import', 'restic') / med(kind + '-import', 'phonebak'):.2f}x restic on the extracted folder")
moved = med("adb-next-day-calls", "phonebak", 3)
overhead = changed_files * 1024  # a tar header and at most a block of padding per file
print(f"  next day over adb moves only the changed files: {moved / 1e6:.1f} MB for {changed / 1e6:.1f} MB changed: "
      + ok(moved <= changed + overhead))
print(f"  adb calls do not grow with the files: {med('adb-first-calls', 'phonebak'):.0f} first, {med('adb-next-day-calls', 'phonebak'):.0f} next day: "
      + ok(med('adb-next-day-calls', 'phonebak') <= med('adb-first-calls', 'phonebak')))
peak = max(med(s, "phonebak", 3) for s in ["tar-import", "ab-import", "adb-first", "adb-next-day"])
print(f"  peak memory under 200 MiB: {peak:.0f} MiB: " + ok(peak < 200))
PY
fi

# --- Object storage (issue 17): phonebak and restic, each in its own bucket of one SeaweedFS
# server on loopback, on the same phone: first backup, an unchanged re-backup, the next day,
# restore, and the mount read cold (fresh mount, empty local caches, page cache dropped) and
# warm. Requests and bytes are counted by the server itself (its Prometheus metrics, per bucket).
if want s3; then
need_seaweedfs
s3dir=$work/seaweedfs
rm -rf "$s3dir"; mkdir -p "$s3dir/data"
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret-key
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","List","Tagging","Write"]}]}' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$s3dir/s3.json"
ports=($(python3 -c 'import socket
ss = [socket.socket() for _ in range(9)]
[s.bind(("127.0.0.1", 0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))'))
"$PHONEBAK_WEED" server -dir="$s3dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -volume.max=100 -master.volumeSizeLimitMB=1024 \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" -volume.port="${ports[2]}" -volume.port.grpc="${ports[3]}" \
    -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" -s3 -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" \
    -s3.port.iceberg=0 -s3.port.lance=0 -metricsPort="${ports[8]}" -s3.config="$s3dir/s3.json" > "$s3dir/log" 2>&1 &
weed_pid=$!
trap 'kill $weed_pid 2> /dev/null || true' EXIT
endpoint=http://127.0.0.1:${ports[6]}
for _ in $(seq 300); do curl -s -o /dev/null "$endpoint/" && break; sleep 0.2; done
sleep 2
# traffic BUCKET: "requests bytes_in bytes_out" so far, as the server counts them.
traffic() {
    curl -s "127.0.0.1:${ports[8]}/metrics" | python3 -c '
import re, sys
bucket = sys.argv[1]
requests = received = sent = 0
for line in sys.stdin:
    m = re.match(r"(SeaweedFS_s3_\w+)\{([^}]*)\} (\S+)", line)
    if not m or f"bucket=\"{bucket}\"" not in m.group(2):
        continue
    name, value = m.group(1), float(m.group(3))
    if name == "SeaweedFS_s3_request_total": requests += value
    elif name == "SeaweedFS_s3_bucket_traffic_received_bytes_total": received += value
    elif name == "SeaweedFS_s3_bucket_traffic_sent_bytes_total": sent += value
print(int(requests), int(received), int(sent))' "$1"
}
# s3_step TOOL STEP COMMAND...: measures it and what it asked of the store.
s3_step() {
    local tool=$1 step=$2 bucket=bench-$1-$round; shift 2
    read -r r0 i0 o0 < <(traffic "$bucket")
    measure "$tool" "s3-$step" "$@"
    read -r r1 i1 o1 < <(traffic "$bucket")
    echo "s3-$step-traffic,$tool,$((r1 - r0)),$((i1 - i0)),$((o1 - o0))" >> "$csv"
    printf '  %-9s %-16s %6d requests, %8.1f MB to the store, %8.1f MB from it\n' "$tool" "$step" \
        $((r1 - r0)) "$(python3 -c "print(($i1 - $i0) / 1e6)")" "$(python3 -c "print(($o1 - $o0) / 1e6)")"
}
s3mnt=$work/s3-mnt; mkdir -p "$s3mnt"
# A tree read whole, as an external command (measure times commands, not shell functions).
read_tree=(bash -c 'tar cf - -C "$0" . | wc -c > /dev/null')
for round in $(seq "$runs"); do
    echo "object storage round $round of $runs"
    pb_repo=s3:$endpoint/bench-phonebak-$round/phones
    rs_repo=s3:$endpoint/bench-restic-$round/phones
    export XDG_CACHE_HOME=$work/s3-cache-$round XDG_STATE_HOME=$work/s3-state-$round RESTIC_CACHE_DIR=$work/s3-restic-cache-$round
    "$phonebak" init --repo "$pb_repo" --create-bucket > /dev/null
    restic -r "$rs_repo" init -q
    become day1
    for step in first unchanged; do
        warm; s3_step phonebak "$step" "$phonebak" backup --repo "$pb_repo" --device phone "$phone"
        warm; s3_step restic "$step" restic -r "$rs_repo" backup -q "$phone"
    done
    become day2
    warm; s3_step phonebak next-day "$phonebak" backup --repo "$pb_repo" --device phone "$phone"
    warm; s3_step restic next-day restic -r "$rs_repo" backup -q "$phone"
    rm -rf "$work/s3-out-"*
    s3_step phonebak restore "$phonebak" restore --repo "$pb_repo" latest --target "$work/s3-out-phonebak"
    s3_step restic restore restic -r "$rs_repo" restore latest --target "$work/s3-out-restic"
    diff -r "$phone" "$work/s3-out-phonebak" > /dev/null || { echo "phonebak's restore from the bucket differs"; exit 1; }
    # The mounts: cold (fresh mount and local caches, page cache dropped), then warm.
    rm -rf "$XDG_CACHE_HOME" "$RESTIC_CACHE_DIR"
    "$phonebak" mount --repo "$pb_repo" "$s3mnt"
    drop_caches
    s3_step phonebak mount-cold "${read_tree[@]}" "$s3mnt/snapshots/phone/latest/"
    s3_step phonebak mount-warm "${read_tree[@]}" "$s3mnt/snapshots/phone/latest/"
    umount "$s3mnt"
    restic -r "$rs_repo" mount "$s3mnt" > /dev/null 2>&1 &
    restic_pid=$!
    wait_for "$s3mnt/snapshots/latest$phone"
    drop_caches
    s3_step restic mount-cold "${read_tree[@]}" "$s3mnt/snapshots/latest$phone/"
    s3_step restic mount-warm "${read_tree[@]}" "$s3mnt/snapshots/latest$phone/"
    umount "$s3mnt"; wait "$restic_pid" || true
done
kill "$weed_pid" 2> /dev/null || true
wait "$weed_pid" 2> /dev/null || true
python3 - "$csv" "$(du -sb "$work/day2" | cut -f1)" <<'PY' | tee -a "${work%/}.results.txt"
import csv, statistics, sys
rows = list(csv.reader(open(sys.argv[1])))
size = int(sys.argv[2])
med = lambda step, tool, col=2: statistics.median(float(r[col]) for r in rows if r[0] == step and r[1] == tool)
ok = lambda c: "met" if c else "NOT met"
rounds = len([r for r in rows if r[0] == "s3-first" and r[1] == "phonebak"])
print(f"\nObject storage (SeaweedFS on loopback), a {size / 1e9:.2f} GB phone; medians of {rounds} round(s):")
print(f"  {'':22} {'phonebak s':>10} {'restic s':>9} {'ratio':>6}   {'phonebak requests / MB up / MB down':>36}   {'restic requests / MB up / MB down':>34}")
for step in ["first", "unchanged", "next-day", "restore", "mount-cold", "mount-warm"]:
    p, r = med("s3-" + step, "phonebak"), med("s3-" + step, "restic")
    t = lambda tool: f"{med('s3-' + step + '-traffic', tool):.0f} / {med('s3-' + step + '-traffic', tool, 3) / 1e6:.1f} / {med('s3-' + step + '-traffic', tool, 4) / 1e6:.1f}"
    print(f"  {step:22} {p:10.2f} {r:9.2f} {r / p:5.2f}x   {t('phonebak'):>36}   {t('restic'):>34}")
print("targets (issue 17):")
for step in ["first", "next-day", "restore"]:
    ratio = med("s3-" + step, "restic") / med("s3-" + step, "phonebak")
    print(f"  {step} at least 2x restic: {ratio:.2f}x: " + ok(ratio >= 2))
cold = med("s3-restore", "phonebak") / med("s3-mount-cold", "phonebak")
print(f"  a cold mount read at least 80% of restore's speed: {cold * 100:.0f}%: " + ok(cold >= 0.8))
unchanged = med("s3-unchanged-traffic", "phonebak")
print(f"  an unchanged phone's next backup under 20 requests plus its new data: {unchanged:.0f} requests: " + ok(unchanged < 20))
PY
fi

if [ -z "${BENCH_KEEP:-}" ] && mountpoint -q "$work"; then
    umount "$work" && losetup -j "${work%/}.img" -O NAME -n | xargs -r -n1 losetup -d && rm -f "${work%/}.img"
fi
