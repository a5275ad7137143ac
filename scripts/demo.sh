#!/usr/bin/env bash
# A first look at phonebak: builds it, makes a sample phone, backs it up twice (the second time
# after a day of changes), shows the snapshots and their files, mounts the repository so that
# every snapshot is a folder, stages a folder of photos in the mount's restore/ folder and pushes
# it to a sample device folder (a new phone).
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
say "ls -l $mnt   # restore/ leads to the staging folder on disk"
ls -l "$mnt"
say "ls -l $mnt/snapshots/pixel-7/"
ls -l "$mnt/snapshots/pixel-7/"
say "find $mnt/snapshots -maxdepth 4 | head -20"
find "$mnt/snapshots" -maxdepth 4 | head -20
say "head -c 300 $mnt/snapshots/pixel-7/latest/Android/data/com.app0.mobile/cache/d0/f00000.json"
head -c 300 "$mnt/snapshots/pixel-7/latest/Android/data/com.app0.mobile/cache/d0/f00000.json"; echo

echo; echo "A new phone: pick the camera photos and the documents in restore/, then push them ..."
run mkdir -p "$mnt/restore/DCIM"
run cp -a "$mnt/snapshots/pixel-7/latest/DCIM/Camera" "$mnt/restore/DCIM/"
run cp -a "$mnt/snapshots/pixel-7/latest/Documents" "$mnt/restore/"
say "ls $mnt/restore/ $mnt/restore/DCIM/Camera | head"
ls "$mnt/restore/" "$mnt/restore/DCIM/Camera" | head
new_phone=$work/new-phone
mkdir -p "$new_phone"
run "$phonebak" push --device "dir:$new_phone" --dry-run
run "$phonebak" push --device "dir:$new_phone"
say "ls $new_phone $new_phone/DCIM/Camera | head"
ls "$new_phone" "$new_phone/DCIM/Camera" | head
run diff -r "$mnt/snapshots/pixel-7/latest/DCIM/Camera" "$new_phone/DCIM/Camera"
say "ls -A $mnt/restore/   # pushed files leave the staging folder"
ls -A "$mnt/restore/"
run umount "$mnt"
echo
echo "Done. The repository is $PHONEBAK_REPO (password: $PHONEBAK_PASSWORD)."
echo "Mount it again with: PHONEBAK_PASSWORD=$PHONEBAK_PASSWORD $phonebak mount --repo $PHONEBAK_REPO $mnt"
