#!/usr/bin/env python
# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Create a deterministic demo source tree for ``make demo``.

The tree has a few hundred regular files of mixed sizes (empty, tiny, a few
KiB, and a handful of 1-4 MiB files) in nested directories, an empty
directory, one relative symlink and one hard-link pair, so that a migration
run exercises every kind of entry the mover handles.

Usage: make_demo_tree.py DEST [--files N] [--seed S]
DEST must not exist yet (or be an empty directory).
"""

from __future__ import annotations

import argparse
import os
import random
import sys

KIB = 1024
MIB = 1024 * KIB

# (weight, min size, max size) buckets for regular file sizes.
SIZE_BUCKETS = (
    (5, 0, 0),
    (50, 1, 512),
    (35, 512, 64 * KIB),
    (9, 64 * KIB, 512 * KIB),
    (1, 1 * MIB, 4 * MIB),
)


def pick_size(rng: random.Random) -> int:
    """Return a file size drawn from SIZE_BUCKETS."""
    weights = [bucket[0] for bucket in SIZE_BUCKETS]
    _weight, low, high = rng.choices(SIZE_BUCKETS, weights=weights)[0]
    return rng.randint(low, high)


def write_file(path: str, size: int, rng: random.Random) -> None:
    """Write ``size`` pseudo-random bytes to ``path`` (new file only)."""
    with open(path, "xb") as handle:
        remaining = size
        while remaining:
            chunk = min(remaining, MIB)
            handle.write(rng.randbytes(chunk))
            remaining -= chunk


def build_tree(dest: str, n_files: int, seed: int) -> dict[str, int]:
    """Build the demo tree under ``dest`` and return counts by kind."""
    rng = random.Random(seed)
    dirs = [dest]
    for depth_one in range(6):
        top = os.path.join(dest, f"dir{depth_one:02d}")
        dirs.append(top)
        for depth_two in range(rng.randint(1, 4)):
            sub = os.path.join(top, f"sub{depth_two}")
            dirs.append(sub)
            if rng.random() < 0.5:
                dirs.append(os.path.join(sub, "deeper", "deepest"))
    dirs.append(os.path.join(dest, "empty-dir"))
    for directory in dirs:
        os.makedirs(directory, exist_ok=True)

    total_bytes = 0
    for index in range(n_files):
        directory = rng.choice(dirs[:-1])
        name = f"file{index:04d}{rng.choice(('.txt', '.bin', '.dat', ''))}"
        size = pick_size(rng)
        write_file(os.path.join(directory, name), size, rng)
        total_bytes += size

    with open(os.path.join(dest, "README.txt"), "x", encoding="utf-8") as handle:
        handle.write("demo tree for durable.mover\n")
    os.symlink("README.txt", os.path.join(dest, "link-to-readme"))

    hard_a = os.path.join(dest, "dir00", "hardlink-a.dat")
    write_file(hard_a, 10 * KIB, rng)
    os.link(hard_a, os.path.join(dest, "dir01", "hardlink-b.dat"))
    total_bytes += 10 * KIB

    return {
        "regular_files": n_files + 2,
        "directories": sum(len(subdirs) for _root, subdirs, _files in os.walk(dest)),
        "symlinks": 1,
        "hardlink_pairs": 1,
        "bytes": total_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the tree, print a one-line summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)

    if os.path.exists(args.dest) and os.listdir(args.dest):
        print(f"{args.dest}: exists and is not empty", file=sys.stderr)
        return 1
    os.makedirs(args.dest, exist_ok=True)
    counts = build_tree(args.dest, args.files, args.seed)
    summary = ", ".join(f"{key}={value}" for key, value in counts.items())
    print(f"demo tree at {os.path.abspath(args.dest)}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
