#!/usr/bin/env bash
# Installs what is missing and runs every test: unit, integration (real files, real processes),
# formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
# fuse3 for the mount tests; python3 for scripts/gen-phone; util-linux for setpriv; time and
# coreutils are used by the tests and the benchmark; rsync by the mount tests; bindfs (a FUSE
# filesystem) stands for a phone mounted over MTP in the push tests; curl and openssl serve the
# object-store tests (a ready probe, a private certificate authority).
need_debs fuse3 python3 python3-venv util-linux time coreutils rsync bindfs curl openssl
# A real object store (SeaweedFS) for the tests of S3 repositories (tests/object_store.rs).
need_seaweedfs

# Whatever a test starts writes its per-user state and caches here, never in the user's own.
scratch_home=$(mktemp -d)
trap 'rm -rf "$scratch_home"' EXIT
export XDG_STATE_HOME="$scratch_home/state" XDG_CACHE_HOME="$scratch_home/cache"

cargo fmt --all -- --check
cargo clippy --all-targets --all-features --quiet -- -D warnings
# test-hooks: numbered crash points for tests/crash_points.rs (inert unless its variables are set).
cargo test --all-targets --features test-hooks
# The suites that apply to both kinds of repository run again with the repository in the
# object store (tests/common: PHONEBAK_TEST_STORE=s3), so the two cannot drift.
PHONEBAK_TEST_STORE=s3 cargo test --features test-hooks --test backup_restore --test staging --test mount_model --test android
