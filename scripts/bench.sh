#!/usr/bin/env bash
# Benchmark: phonebak side by side with restic and borg on the same generated phone, in one run.
#
#   scripts/bench.sh                 # about 1.5 GB, 24.5k files (BENCH_SCALE=1)
#   BENCH_SCALE=0.1 scripts/bench.sh # a quick run
#
# Every tool reads the same files from a warm page cache (each run is preceded by a read of the
# whole phone), encrypts (phonebak and restic always; borg with repokey-blake2) and compresses
# with zstd level 3 (restic: its "auto" mode, zstd). Times are wall-clock seconds; memory is
# peak RSS. Figures go to stdout and to $BENCH_DIR/results.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
need_debs restic borgbackup python3 time

scale=${BENCH_SCALE:-1}
work=${BENCH_DIR:-/tmp/phonebak-bench}
cargo build --release --quiet
phonebak=$PWD/target/release/phonebak

rm -rf "$work"
mkdir -p "$work"
phone=$work/phone
export PHONEBAK_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes BORG_BASE_DIR=$work/borg-home RESTIC_CACHE_DIR=$work/restic-cache
results=$work/results.txt
: > "$results"

echo "generating the phone (scale $scale) ..."
scripts/gen-phone "$phone" --scale "$scale"
phone_bytes=$(du -sb "$phone" | cut -f1)
phone_files=$(find "$phone" -type f | wc -l)

warm() { tar cf - -C "$phone" . | cat > /dev/null; }

# measure NAME COMMAND... : runs it and records "NAME seconds peak_kib".
measure() {
    local name=$1; shift
    local log=$work/time.$$
    /usr/bin/time -f "%e %M" -o "$log" "$@" > "$work/$name.out" 2> "$work/$name.err" || {
        echo "$name failed:"; cat "$work/$name.err"; exit 1; }
    read -r secs kib < "$log"
    printf '%-34s %8.2f s %8d MiB\n' "$name" "$secs" $((kib / 1024)) | tee -a "$results"
    eval "T_${name//[^A-Za-z0-9]/_}=$secs M_${name//[^A-Za-z0-9]/_}=$((kib / 1024))"
}

printf 'phone: %s bytes in %s files\n' "$phone_bytes" "$phone_files" | tee -a "$results"
echo "--- first backup" | tee -a "$results"
"$phonebak" init --repo "$work/pb" > /dev/null
restic init -q -r "$work/restic"
borg init -e repokey-blake2 "$work/borg" 2> /dev/null
warm; measure phonebak_first "$phonebak" backup --repo "$work/pb" --device phone "$phone"
warm; measure restic_first restic -r "$work/restic" backup -q "$phone"
warm; measure borg_first borg create --compression zstd,3 "$work/borg::first" "$phone"

echo "--- unchanged re-backup" | tee -a "$results"
warm; measure phonebak_unchanged "$phonebak" backup --repo "$work/pb" --device phone "$phone"
warm; measure restic_unchanged restic -r "$work/restic" backup -q "$phone"
warm; measure borg_unchanged borg create --compression zstd,3 "$work/borg::unchanged" "$phone"

echo "--- next-day backup" | tee -a "$results"
scripts/gen-phone "$phone" --next-day --scale "$scale"
cp -a "$phone" "$work/phone-next-a"; cp -a "$phone" "$work/phone-next-b"
warm; measure phonebak_next_day "$phonebak" backup --repo "$work/pb" --device phone "$phone"
warm; measure restic_next_day restic -r "$work/restic" backup -q "$phone"
warm; measure borg_next_day borg create --compression zstd,3 "$work/borg::next" "$phone"

echo "--- restore of the latest snapshot" | tee -a "$results"
restored_bytes=$(du -sb "$phone" | cut -f1)
measure phonebak_restore "$phonebak" restore --repo "$work/pb" latest --target "$work/out-pb"
measure restic_restore restic -r "$work/restic" restore latest --target "$work/out-restic"
mkdir -p "$work/out-borg"
measure borg_restore bash -c "cd '$work/out-borg' && borg extract '$work/borg::next'"
diff -r "$phone" "$work/out-pb" > /dev/null && echo "phonebak restore verified identical" | tee -a "$results"

echo "--- repository size" | tee -a "$results"
size_pb=$(du -sb "$work/pb" | cut -f1); size_restic=$(du -sb "$work/restic" | cut -f1); size_borg=$(du -sb "$work/borg" | cut -f1)
printf '%-34s %8d MiB\n' phonebak_repo $((size_pb >> 20)) restic_repo $((size_restic >> 20)) borg_repo $((size_borg >> 20)) | tee -a "$results"

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mbps() { python3 -c "print(f'{$restored_bytes / $1 / 1e6:.0f}')"; }
verdict() { python3 -c "print('met' if $1 else 'NOT met')"; }
{
echo "--- ratios and targets (issue 2)"
echo "first backup: restic/phonebak $(ratio "$T_restic_first" "$T_phonebak_first")x, borg/phonebak $(ratio "$T_borg_first" "$T_phonebak_first")x  (target >= 2x both: $(verdict "$T_restic_first >= 2 * $T_phonebak_first and $T_borg_first >= 2 * $T_phonebak_first"))"
echo "unchanged re-backup: phonebak ${T_phonebak_unchanged} s, restic ${T_restic_unchanged} s, borg ${T_borg_unchanged} s"
echo "next-day backup: phonebak ${T_phonebak_next_day} s, restic ${T_restic_next_day} s  (target < 1 s: $(verdict "$T_phonebak_next_day < 1"))"
echo "restore: phonebak $(mbps "$T_phonebak_restore") MB/s, restic $(mbps "$T_restic_restore") MB/s, borg $(mbps "$T_borg_restore") MB/s  (target >= 2x restic: $(verdict "$T_restic_restore >= 2 * $T_phonebak_restore"))"
echo "repository: phonebak/borg $(ratio "$size_pb" "$size_borg"), phonebak/restic $(ratio "$size_pb" "$size_restic")  (target <= borg: $(verdict "$size_pb <= $size_borg"))"
echo "backup peak memory: phonebak ${M_phonebak_first} MiB first, ${M_phonebak_next_day} MiB next day  (target < 200 MiB: $(verdict "$M_phonebak_first < 200 and $M_phonebak_next_day < 200"))"
} | tee -a "$results"
