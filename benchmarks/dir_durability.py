# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Directory durability per batch (issue 13): the core alone (tests/tools/mover_cli.py),
two trees of the collection side by side, on many small files spread over many
directories, loop-mounted ext4 -> xfs (root needed).

    python3 benchmarks/dir_durability.py BEFORE_REPO AFTER_REPO [--files 20000] [--dirs 2000,100] [--rounds 3]

Each round runs BEFORE then AFTER (the order alternates every round) on the
same freshly written tree, page cache dropped before each run; then one more
run of each under `strace -f -c -w -e trace=fsync,fdatasync,syncfs` counts the
flushes and the wall-clock seconds spent in them (not timed). Prints one JSON
line per run and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1024 * 1024


def sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def mount(work, name, fstype, size_mb):
    image, point = os.path.join(work, name + '.img'), os.path.join(work, name)
    with open(image, 'wb') as handle:
        handle.truncate(size_mb * MIB)
    if fstype == 'ext4':
        sh('mkfs.ext4', '-F', '-q', '-N', '200000', '-E', 'lazy_itable_init=0,lazy_journal_init=0', image)
    else:
        sh('mkfs.xfs', '-f', '-q', image)
    os.makedirs(point)
    sh('mount', '-o', 'loop', image, point)
    return point


def write_tree(root, files, dirs):
    block = os.urandom(4096)
    for index in range(files):
        sub = os.path.join(root, 'd%04d' % (index % dirs))
        if index < dirs:
            os.makedirs(sub)
        with open(os.path.join(sub, 'f%06d' % index), 'wb') as handle:
            handle.write(block[:4000] + b'%08d' % index + block[4008:])


def drop_caches():
    os.sync()
    with open('/proc/sys/vm/drop_caches', 'w') as handle:
        handle.write('3\n')
    time.sleep(1)


def run(repo, src_fs, dest_fs, files, dirs, strace=None):
    src, dest, state = (os.path.join(src_fs, 'tree'), os.path.join(dest_fs, 'tree'),
                        os.path.join(dest_fs, 'state'))
    for path in (src, dest, state):
        shutil.rmtree(path, ignore_errors=True)
    write_tree(src, files, dirs)
    drop_caches()
    cmd = [sys.executable, os.path.join(repo, 'tests', 'tools', 'mover_cli.py'),
           json.dumps({'src': src, 'dest': dest, 'state_dir': state})]
    if strace:
        cmd = ['strace', '-f', '-c', '-w', '-o', strace, '-e', 'trace=fsync,fdatasync,syncfs'] + cmd
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0 or os.listdir(src):
        raise SystemExit('%s failed: %s %s' % (repo, proc.stdout[-2000:], proc.stderr[-2000:]))
    return elapsed


def counts(path):
    """{syscall: [calls, seconds spent in them]} from an `strace -c` summary."""
    found = {}
    with open(path, encoding='utf-8') as handle:
        for line in handle:
            parts = line.split()
            if parts and parts[-1] in ('fsync', 'fdatasync', 'syncfs'):
                found[parts[-1]] = [int(parts[3]), float(parts[1])]
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('before')
    parser.add_argument('after')
    parser.add_argument('--files', type=int, default=20000)
    parser.add_argument('--dirs', default='2000,100')
    parser.add_argument('--rounds', type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix='dirdur-')
    src_fs = mount(work, 'src', 'ext4', 1024)
    dest_fs = mount(work, 'dest', 'xfs', 1024)
    summary = []
    try:
        for dirs in [int(d) for d in args.dirs.split(',')]:
            times = {'before': [], 'after': []}
            for index in range(args.rounds):
                order = ('before', 'after') if index % 2 == 0 else ('after', 'before')
                for name in order:
                    elapsed = run(getattr(args, name), src_fs, dest_fs, args.files, dirs)
                    times[name].append(elapsed)
                    print(json.dumps({'dirs': dirs, 'round': index, 'tree': name, 'seconds': round(elapsed, 2)}),
                          flush=True)
            flushes = {}
            for name in ('before', 'after'):
                out = os.path.join(work, 'strace-%s' % name)
                run(getattr(args, name), src_fs, dest_fs, args.files, dirs, strace=out)
                flushes[name] = counts(out)
            summary.append({'files': args.files, 'dirs': dirs,
                            'before_s': [round(x, 2) for x in times['before']],
                            'after_s': [round(x, 2) for x in times['after']],
                            'median_before': round(statistics.median(times['before']), 2),
                            'median_after': round(statistics.median(times['after']), 2),
                            'ratio_after_before_same_round': round(statistics.median(
                                [a / b for a, b in zip(times['after'], times['before'])]), 3),
                            'flushes': flushes})
            print(json.dumps(summary[-1]), flush=True)
    finally:
        for point in (src_fs, dest_fs):
            subprocess.run(['umount', point], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
