# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Process crash at every syscall.

One clean run of the real core is recorded under ``strace -f -y``; every
mutating or syncing syscall it makes is a crash point. For each point N the
same run is repeated from the same setup with
``strace --inject=SYSCALL:signal=KILL:when=N`` (strace counts each syscall per
process, and the run is deterministic: one worker, sorted listings,
PYTHONHASHSEED=0), the invariant is checked, a clean rerun recovers, and the
final state is checked. A sample of points is crashed a second time during
the recovery run.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

import pytest

from crashlib import (
    build_tree,
    check_final,
    check_invariant,
    params,
    reset,
    result_of,
    run_core,
    snapshot,
)

pytestmark = [pytest.mark.root]

SYSCALLS = ('write', 'pwrite64', 'fsync', 'fdatasync', 'syncfs', 'rename', 'renameat', 'renameat2',
            'unlink', 'unlinkat', 'openat', 'ftruncate', 'mkdir', 'mkdirat', 'linkat',
            'symlinkat', 'fsetxattr', 'lsetxattr', 'setxattr', 'fchmod', 'fchown', 'fchownat',
            'utimensat', 'mknodat', 'copy_file_range', 'sendfile', 'rmdir')
LINE = re.compile(r'^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)')


def _strace():
    path = shutil.which('strace')
    if path is None:
        pytest.skip('strace is not installed (apt-get install strace)')
    return path


def crash_points(trace: Path, every_process=False) -> list:
    """(syscall, n, args) for every mutating call of the traced process, n counted per syscall.

    `every_process`: of every traced process and thread, each counted on its
    own, as strace counts for --inject; a point (syscall, n) then kills every
    one that makes its n-th such call (the run's worker processes each die at
    the same step of their own work)."""
    counts = defaultdict(int)
    points, seen = [], set()
    main_pid = None
    for line in trace.read_text(errors='replace').splitlines():
        match = LINE.match(line)
        if not match:
            continue
        pid, name, args, _ret = match.groups()
        if main_pid is None:
            main_pid = pid
        if pid != main_pid and not every_process:
            continue
        counts[pid, name] += 1
        if name == 'openat' and not re.search(r'O_CREAT|O_TRUNC', args):
            continue
        if name in ('write', 'pwrite64') and re.match(r'\d+<(pipe|socket|/dev/)', args):
            continue
        if (name, counts[pid, name]) not in seen:
            seen.add((name, counts[pid, name]))
            points.append((name, counts[pid, name], args))
    return points


class Sweep:
    def __init__(self, work: Path, dest_parent: Path, **extra):
        self.template = work / 'template'
        self.src = work / 'src'
        self.dest = dest_parent / 'dest'
        self.state = work / 'state'
        build_tree(self.template)
        self.original = snapshot(self.template)
        self.values = params(self.src, self.dest, self.state, **extra)

    def setup(self):
        reset(self.src, self.dest, self.state)
        shutil.copytree(self.template, self.src, symlinks=True)
        # copytree does not keep hard links: recreate the pair as in the template
        os.unlink(self.src / 'd1' / 'hard.txt')
        os.link(self.src / 'a.txt', self.src / 'd1' / 'hard.txt')
        os.utime(self.src / 'a.txt', ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))

    def trace(self, out: Path):
        proc = run_core(self.values, prefix=[_strace(), '-f', '-y', '-qq', '-o', str(out),
                                             '-e', 'trace=' + ','.join(SYSCALLS)])
        return proc

    def crash(self, point):
        name, n = point[:2]
        return run_core(self.values, prefix=[_strace(), '-f', '-qq', '-o', '/dev/null', '-e', 'trace=' + name,
                                             '--inject=%s:signal=KILL:when=%d' % (name, n)])

    def recover(self):
        return run_core(self.values)


def _sweep(tmp_path: Path, dest_parent: Path, label: str, processes=1, **extra):
    sweep = Sweep(tmp_path, dest_parent, processes=processes, **extra)
    sweep.setup()
    clean = sweep.trace(tmp_path / 'clean.trace')
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
    renamers = {pid for pid, name in re.findall(r'^(\d+)\s+(rename\w*)\(', (tmp_path / 'clean.trace').read_text(),
                                                re.MULTILINE)}
    assert len(renamers) == processes, renamers
    points = crash_points(tmp_path / 'clean.trace', every_process=processes > 1)
    assert len(points) > 50, points
    violations = []
    killed = 0
    started = time.monotonic()
    for point in points:
        sweep.setup()
        proc = sweep.crash(point)
        if proc.returncode == 0 and result_of(proc).get('complete'):
            continue            # not reached (e.g. a stdout write): nothing to check
        killed += 1
        problems = check_invariant(sweep.original, sweep.src, sweep.dest, sweep.state)
        if problems:
            violations.append((point, 'after crash', problems))
            continue
        proc = sweep.recover()
        problems = check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
        if proc.returncode != 0 or problems:
            violations.append((point, 'after recovery', problems or proc.stdout[-2000:] + proc.stderr[-2000:]))
    elapsed = time.monotonic() - started
    print('%s: %d crash points swept (%d killed) in %.1f s (%.0f ms per point)'
          % (label, len(points), killed, elapsed, 1000 * elapsed / max(1, len(points))))
    assert killed > 0.8 * len(points)
    assert not violations, violations[:5]
    return sweep, points


@pytest.mark.timeout(900)
def test_crash_at_every_syscall_across_devices(tmp_path, tmpfs):
    _sweep(tmp_path, tmpfs('64m'), 'cross-device')


@pytest.mark.timeout(900)
@pytest.mark.loop
def test_crash_at_every_syscall_batch_flush(tmp_path, loopfs):
    """An ext4 destination: small copies are flushed per batch with syncfs."""
    _sweep(tmp_path, loopfs('ext4'), 'cross-device, batch flush (ext4)')


@pytest.mark.timeout(900)
@pytest.mark.loop
def test_crash_at_every_syscall_worker_processes(tmp_path, loopfs):
    """Two worker processes, each with its own journal connection and batches:
    a crash of either, or of both at the same step, or of the parent (which
    takes its workers with it), loses nothing."""
    _sweep(tmp_path, loopfs('ext4'), 'cross-device, 2 worker processes (ext4)', processes=2, batch_files=2)


@pytest.mark.timeout(900)
def test_crash_at_every_syscall_same_filesystem(tmp_path):
    (tmp_path / 'same').mkdir()
    _sweep(tmp_path, tmp_path / 'same', 'same-filesystem')


@pytest.mark.timeout(900)
def test_crash_during_recovery(tmp_path, tmpfs):
    """Kill at N, then kill the recovery at M, then recover: the invariant always holds."""
    sweep = Sweep(tmp_path, tmpfs('64m'))
    sweep.setup()
    assert sweep.trace(tmp_path / 'clean.trace').returncode == 0
    points = crash_points(tmp_path / 'clean.trace')
    firsts = points[len(points) // 10::max(1, len(points) // 6)][:6]
    pairs = violations = 0
    problems_seen = []
    for first in firsts:
        sweep.setup()
        sweep.crash(first)
        recovery_trace = tmp_path / 'recovery.trace'
        sweep.trace(recovery_trace)
        seconds = crash_points(recovery_trace)
        for second in seconds[::max(1, len(seconds) // 5)][:5]:
            sweep.setup()
            sweep.crash(first)
            sweep.crash(second)
            pairs += 1
            problems = check_invariant(sweep.original, sweep.src, sweep.dest, sweep.state)
            sweep.recover()
            problems += check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
            if problems:
                violations += 1
                problems_seen.append((first, second, problems))
    print('crash during recovery: %d pairs' % pairs)
    assert pairs >= 10
    assert not problems_seen, problems_seen[:5]


def test_invariant_checker_can_fail(tmp_path, tmpfs):
    """The checker itself: a lost file, a corrupt destination and a false 'done' are reported."""
    sweep = Sweep(tmp_path, tmpfs('64m'))
    sweep.setup()
    assert sweep.recover().returncode == 0
    assert not check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
    (sweep.dest / 'd1' / 'b.txt').write_bytes(b'bravo\n' * 99)
    (sweep.dest / 'empty').unlink()
    problems = check_invariant(sweep.original, sweep.src, sweep.dest, sweep.state)
    assert any(p.startswith('d1/b.txt: corrupt') for p in problems), problems
    assert any(p.startswith('empty: LOST') for p in problems), problems
    assert any(p.startswith('empty: journal says done') for p in problems), problems
