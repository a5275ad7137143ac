#!/usr/bin/env python3
"""random-reads.py ROOT [COUNT]: COUNT (2000) random 4 KiB preads across the files over 1 MB under
ROOT, with a fixed seed; prints reads per second. Used by scripts/bench.sh."""
import os, random, sys, time

root, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2000
files = []
for folder, _, names in os.walk(root):
    for name in sorted(names):
        path = os.path.join(folder, name)
        if not os.path.islink(path) and os.path.getsize(path) > 1 << 20:
            files.append((path, os.path.getsize(path)))
files.sort()
rng = random.Random(7)
plan = [(p, rng.randrange(0, size - 4096)) for p, size in (rng.choice(files) for _ in range(count))]
fds = {p: os.open(p, os.O_RDONLY) for p, _ in files}
start = time.perf_counter()
for path, offset in plan:
    if len(os.pread(fds[path], 4096, offset)) != 4096:
        sys.exit(f"short read in {path}")
print(f"{count / (time.perf_counter() - start):.0f}")
