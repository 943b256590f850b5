# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Process crash at every syscall.

One clean run of the real core is recorded under ``strace -f -y``; every
mutating or syncing syscall it makes is a crash point. For each point N the
same run is repeated from the same setup with
``strace --inject=SYSCALL:signal=KILL:when=N`` (strace counts each syscall per
task: every thread and process on its own; the run is deterministic: one
worker, sorted listings, PYTHONHASHSEED=0), the invariant is checked, a clean
rerun recovers, and the final state is checked. A sample of points is crashed
a second time during the recovery run. The large-file copy's writer thread,
whose calls the main thread's counts would reach first, is aimed at with
strace's path filter (-P) and checked in each run's trace to have been hit.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections import defaultdict, namedtuple
from pathlib import Path

import pytest

from crashlib import (
    CLI,
    build_tree,
    check_final,
    check_invariant,
    journal_details,
    params,
    reset,
    result_of,
    run_core,
    snapshot,
)
from ordercheck import _fd_path, _split_args, batch_flushed

pytestmark = [pytest.mark.root]

SYSCALLS = ('write', 'pwrite64', 'fsync', 'fdatasync', 'syncfs', 'rename', 'renameat', 'renameat2',
            'unlink', 'unlinkat', 'openat', 'ftruncate', 'mkdir', 'mkdirat', 'linkat',
            'symlinkat', 'fsetxattr', 'lsetxattr', 'setxattr', 'fchmod', 'fchown', 'fchownat',
            'utimensat', 'mknodat', 'copy_file_range', 'sendfile', 'rmdir')
# A traced call as strace writes it: complete, or entered and left unfinished
# (another task's call was printed before it returned). strace counts a call
# for --inject when it enters it.
LINE = re.compile(r'^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)')
UNFINISHED = re.compile(r'^(\d+)\s+(\w+)\((.*?)\s*<unfinished \.\.\.>$')
Point = namedtuple('Point', 'name n args tid main')


def _strace():
    path = shutil.which('strace')
    if path is None:
        pytest.skip('strace is not installed (apt-get install strace)')
    return path


def _entries(text: str):
    """(tid, syscall, args) of every traced call, in the order the calls were entered."""
    for line in text.splitlines():
        match = LINE.match(line) or UNFINISHED.match(line)
        if match:
            yield match.group(1), match.group(2), match.group(3)


def _mutating(name: str, args: str) -> bool:
    if name == 'openat' and not re.search(r'O_CREAT|O_TRUNC', args):
        return False
    return not (name in ('write', 'pwrite64') and re.match(r'\d+<(pipe|socket|/dev/)', args))


def crash_points(trace: Path) -> list:
    """Every point (syscall, n) of a traced run at which
    ``strace --inject=SYSCALL:...:when=n`` fires, as strace counts: per syscall
    and per traced task, every thread and process of the run on its own. A
    point fires in whichever task first makes its n-th such call: that call
    (its args, its task's id, and whether the task is the run's main thread)
    is the point's. Kept: points where some task's n-th call mutates (a
    write, flush, rename, creating open...); with worker processes each of
    them dies at its own n-th call.

    A trace recorded with ``-P PATH`` (strace counts only calls on PATH)
    gives the points of the same filter: that is how a point aims at a
    thread whose calls another thread's count would otherwise reach first
    (the large-file copy's writer thread, see writer_points)."""
    counts = defaultdict(int)
    first, mutates = {}, set()
    main = None
    for tid, name, args in _entries(trace.read_text(errors='replace')):
        if main is None:
            main = tid          # strace's child: the first task to make a traced call
        counts[tid, name] += 1
        key = (name, counts[tid, name])
        first.setdefault(key, (args, tid))
        if _mutating(name, args):
            mutates.add(key)
    return [Point(name, n, args, tid, tid == main)
            for (name, n), (args, tid) in first.items() if (name, n) in mutates]


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

    def trace(self, out: Path, paths=()):
        """A clean run under ``strace -f -y``; with `paths`, only the calls on
        them are recorded (``-P``: the filter a point aimed with them counts
        under)."""
        return run_core(self.values, prefix=[_strace(), '-f', '-y', '-qq', '-o', str(out),
                                             '-e', 'trace=' + ','.join(SYSCALLS)] + _only(paths))

    def crash(self, point, paths=(), out=None):
        return self.inject(point, 'signal=KILL', paths, out)

    def inject(self, point, action, paths=(), out=None):
        """Run with `action` (signal=KILL, error=EIO...) injected at `point`.
        With `paths`, strace counts only the calls on them (and the main
        thread's opening of the CLI script, which names that thread); `out`
        keeps the trace of the point's syscall, to see which task it hit."""
        name, n = point[:2]
        trace = name if not paths else name + ',openat'
        assert not (paths and name == 'openat'), 'a point aimed with paths cannot be an openat'
        return run_core(self.values, prefix=[_strace(), '-f', '-y', '-qq', '-o', str(out or '/dev/null'),
                                             '-e', 'trace=' + trace, '--inject=%s:%s:when=%d' % (name, action, n)]
                        + _only(paths))

    def recover(self):
        return run_core(self.values)


def _only(paths) -> list:
    """strace -P options for `paths`, and for the CLI script: the main thread
    opens it first thing, so the first task in such a trace is the main thread."""
    if not paths:
        return []
    return [arg for path in list(paths) + [str(CLI)] for arg in ('-P', str(path))]


WRITER_KINDS = ('pwrite64', 'fdatasync', 'fsync')


def writer_points(sweep: Sweep, work: Path, per_kind: int) -> list:
    """(point, paths) aimed at the large-file copy's writer thread
    (_copy.Pipeline): its writes and checkpoint fdatasyncs of the part, and
    the writes and flushes of the checkpoint journal commits it makes.

    strace counts --inject per task, so an unfiltered point (pwrite64, n)
    fires in the main thread, whose count of pwrite64 runs far ahead of the
    writer's. Counted only on the part (``-P part``), the writer's calls are
    the first to reach each n; on the journal's WAL the writer's count
    passes the main thread's (which made the commits before the copy) once
    it has made more commits than those: the points past it are the
    writer's. Each category is sampled evenly down to `per_kind` points."""
    sweep.setup()
    full = work / 'writer-full.trace'
    proc = sweep.trace(full)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = full.read_text(errors='replace')
    parts = set(re.findall(r'^\d+\s+pwrite64\(\d+<([^>]*/\.big\.bin\.[0-9a-f]{12}\.part)>', text, re.MULTILINE))
    wals = set(re.findall(r'^\d+\s+pwrite64\(\d+<([^>]*/journal\.sqlite-wal)>', text, re.MULTILINE))
    assert len(parts) == 1 and len(wals) == 1, (parts, wals)
    aimed = []
    for label, path in (('part', parts.pop()), ('wal', wals.pop())):
        sweep.setup()
        out = work / ('writer-%s.trace' % label)
        proc = sweep.trace(out, paths=[path])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for kind in WRITER_KINDS:
            found = [p for p in crash_points(out) if p.name == kind and not p.main]
            step = max(1, -(-len(found) // per_kind))
            chosen = found[::step]
            if found and chosen[-1] != found[-1]:
                chosen[-1] = found[-1]
            print('writer thread, %s of the %s: %d points, %d swept' % (kind, label, len(found), len(chosen)))
            aimed.extend((point, (path,)) for point in chosen)
    return aimed


def hit_call(out: Path, point, action='signal=KILL'):
    """([(task id, args)] of the calls a point's run hit, in order; the main
    thread's id), from the run's trace (recorded with paths: the main thread
    is the one that opened the CLI script)."""
    text = out.read_text(errors='replace')
    main = re.search(r'^(\d+)\s+openat\(.*"%s"' % re.escape(str(CLI)), text, re.MULTILINE)
    if action.startswith('error='):
        tail = r'\)\s+=\s+-1 \w+ .*\(INJECTED\)$'
    else:
        tail = r'(?:\)\s+=\s+\?|\s*<unfinished \.\.\.>)$'
    hits = re.findall(r'^(\d+)\s+%s\((.*?)%s' % (point.name, tail), text, re.MULTILINE)
    return hits, main.group(1) if main else None


def writer_hit(out: Path, point, action='signal=KILL') -> bool:
    """Did the point's run hit the expected call (`point.args`) in a thread
    other than the main thread, first? (As the process dies, strace may
    print another thread entering a call too: only the first counts.)"""
    hits, main = hit_call(out, point, action)
    return bool(main and hits) and hits[0][0] != main and same_call(point.name, hits[0][1], point.args)


def same_call(name: str, args: str, expected: str) -> bool:
    """The same call of a deterministic run: same file (fd path), and for a
    write the same length and offset."""
    got, want = _split_args(args), _split_args(expected)
    if _fd_path(got[0]) != _fd_path(want[0]):
        return False
    return name != 'pwrite64' or got[-2:] == want[-2:]


def small_files(sweep: Sweep) -> set:
    """The tree's regular files that the batch path stages: up to 4 buffers
    (larger ones go through the pipeline and are flushed on their own);
    hard-link followers left out (they are linked, not copied)."""
    buffer = sweep.values['buffer_size']
    found, inodes = set(), set()
    for rel, (kind, _digest) in sorted(sweep.original.items()):
        st = (sweep.template / rel).lstat()
        if kind == 'file' and st.st_size <= 4 * buffer and st.st_ino not in inodes:
            found.add(rel)
            inodes.add(st.st_ino)
    return found


def _sweep(tmp_path: Path, dest_parent: Path, label: str, processes=1, batch_path=False, **extra):
    sweep = Sweep(tmp_path, dest_parent, processes=processes, **extra)
    sweep.setup()
    clean = sweep.trace(tmp_path / 'clean.trace')
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
    if batch_path:
        problems = batch_flushed((tmp_path / 'clean.trace').read_text(errors='replace'), str(sweep.dest),
                                 small_files(sweep))
        assert not problems, problems
    renamers = {pid for pid, name in re.findall(r'^(\d+)\s+(rename\w*)\(', (tmp_path / 'clean.trace').read_text(),
                                                re.MULTILINE)}
    assert len(renamers) == processes, renamers
    points = crash_points(tmp_path / 'clean.trace')
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
    """An ext4 destination: small copies are flushed per batch with syncfs (the
    clean run is checked to have done so: a syncfs of the destination's
    filesystem, no fsync of a small file's part)."""
    _sweep(tmp_path, loopfs('ext4'), 'cross-device, batch flush (ext4)', batch_path=True)


@pytest.mark.timeout(900)
@pytest.mark.loop
def test_crash_at_every_syscall_worker_processes(tmp_path, loopfs):
    """Two worker processes, each with its own journal connection and batches:
    a crash of either, or of both at the same step, or of the parent (which
    takes its workers with it), loses nothing."""
    _sweep(tmp_path, loopfs('ext4'), 'cross-device, 2 worker processes (ext4)', processes=2, batch_files=2)


# The large file copied in 4 KiB chunks, each flushed and committed as a
# checkpoint: the writer thread makes more journal commits (48) than the main
# thread made before the copy, so points on the journal reach the writer's.
PIPELINE = {'buffer_size': 4096, 'checkpoint_size': 4096}


@pytest.mark.timeout(900)
def test_crash_in_the_large_copy_writer_thread(tmp_path, tmpfs):
    """Crash points inside the pipelined large-file copy's writer thread: its
    writes of the part, its checkpoint fdatasyncs, and the checkpoint journal
    commits it makes. Each run's trace shows that the call killed was that
    one, in a thread other than the main thread; and crashes leave the large
    file's part with a committed checkpoint short of its size (what a rerun
    resumes from)."""
    sweep = Sweep(tmp_path, tmpfs('64m'), **PIPELINE)
    aimed = writer_points(sweep, tmp_path, per_kind=10)
    assert {p.name for p, _paths in aimed} >= {'pwrite64', 'fdatasync'}, aimed
    violations, missed = [], []
    resumable = 0
    big = 'd1/d2/big.bin'
    started = time.monotonic()
    for point, paths in aimed:
        sweep.setup()
        out = tmp_path / 'crash.trace'
        proc = sweep.crash(point, paths, out)
        if proc.returncode != -signal.SIGKILL or not writer_hit(out, point):
            missed.append((point.name, point.n, paths[0], proc.returncode, out.read_text(errors='replace')[-3000:]))
            continue
        row = journal_details(sweep.state).get(big, {})
        part = list(sweep.dest.glob('d1/d2/.big.bin.*.part'))
        if (row.get('state') == 'copying' and 0 < row['checkpoint'] < row['size'] and len(part) == 1
                and part[0].stat().st_size >= row['checkpoint']):
            resumable += 1
        problems = check_invariant(sweep.original, sweep.src, sweep.dest, sweep.state)
        if problems:
            violations.append((point[:2], paths, 'after crash', problems))
            continue
        proc = sweep.recover()
        problems = check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
        if proc.returncode != 0 or problems:
            violations.append((point[:2], paths, 'after recovery', problems or proc.stdout[-2000:] + proc.stderr[-2000:]))
    elapsed = time.monotonic() - started
    print('writer thread: %d crash points swept in %.1f s (%d left a resumable checkpoint)'
          % (len(aimed), elapsed, resumable))
    assert not missed, 'points that did not kill the writer thread at the expected call: %s' % missed[:3]
    assert resumable >= len(aimed) // 2, resumable
    assert not violations, violations[:5]


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
