#!/usr/bin/env bash
# A first look at phonebak: builds it, makes a sample phone, backs it up twice (the second time
# after a day of changes), shows the snapshots and their files, and mounts the repository so that
# every snapshot is a folder.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
need_debs python3 fuse3

cargo build --release --quiet
phonebak=$PWD/target/release/phonebak
work=${DEMO_DIR:-$PWD/demo}
rm -rf "$work"
mkdir -p "$work"
export PHONEBAK_REPO=$work/repo PHONEBAK_PASSWORD=demo-password

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

echo "Generating a sample phone in $work/phone ..."
scripts/gen-phone "$work/phone" --scale 0.02
run "$phonebak" init
run "$phonebak" backup --device pixel-7 "$work/phone"
echo; echo "A day passes: new photos, chats change, a folder is renamed ..."
scripts/gen-phone "$work/phone" --next-day --scale 0.02
run "$phonebak" backup --device pixel-7 "$work/phone"
run "$phonebak" snapshots
say "$phonebak ls -l pixel-7/latest DCIM | head"
"$phonebak" ls -l pixel-7/latest DCIM | head
run "$phonebak" stats
run "$phonebak" check --read-data
run "$phonebak" restore pixel-7/latest:Documents --target "$work/restored-documents"

mnt=$work/mnt
mkdir -p "$mnt"
run "$phonebak" mount "$mnt"
say "ls -l $mnt/snapshots/pixel-7/"
ls -l "$mnt/snapshots/pixel-7/"
say "find $mnt/snapshots -maxdepth 4 | head -20"
find "$mnt/snapshots" -maxdepth 4 | head -20
say "head -c 300 $mnt/snapshots/pixel-7/latest/Android/data/com.app0.mobile/cache/d0/f00000.json"
head -c 300 "$mnt/snapshots/pixel-7/latest/Android/data/com.app0.mobile/cache/d0/f00000.json"; echo
run umount "$mnt"
echo
echo "Done. The repository is $PHONEBAK_REPO (password: $PHONEBAK_PASSWORD)."
echo "Mount it again with: PHONEBAK_PASSWORD=$PHONEBAK_PASSWORD $phonebak mount --repo $PHONEBAK_REPO $mnt"
