#!/usr/bin/env bash
# Installs phonebak for real use: /usr/local/bin/phonebak, and /sbin/mount.phonebak so that
# `mount -t phonebak REPO MOUNTPOINT` and fstab lines work. Needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
need_debs fuse3
cargo build --release --quiet
as_root install -m 0755 target/release/phonebak /usr/local/bin/phonebak
# Cargo cannot put a dot in a binary's name: the helper is built as mount_phonebak.
as_root install -m 0755 target/release/mount_phonebak /sbin/mount.phonebak
echo "installed /usr/local/bin/phonebak and /sbin/mount.phonebak"
