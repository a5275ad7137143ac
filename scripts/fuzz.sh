#!/usr/bin/env bash
# Fuzzes every decoder of on-disk data (tree blobs, index trailers, headers and pages, pack
# trailers and footers, the config, snapshot records, push journal lines, iPhone backups' MBFile
# records, keybags and plists; tar streams, Android backups' headers and encryption; a snapshot's
# archive layout and list of files kept without content) for SECONDS
# each (default 20), with cargo-fuzz (libFuzzer). A crash is saved under fuzz/artifacts/TARGET/;
# turn it into a test in src/fuzz.rs's decoder tests before fixing it.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# cargo-fuzz needs a nightly compiler (sanitizer flags); a stable one can pretend to be one.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
for target in "${targets[@]}"; do
    echo "== fuzzing $target for ${seconds}s"
    mkdir -p "fuzz/corpus/$target"
    cargo "${toolchain[@]}" fuzz run "$target" "fuzz/corpus/$target" fuzz/seeds -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=0 2>&1 | tail -n 3
done
