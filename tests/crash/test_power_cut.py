# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Power cut at every point.

Source, destination and state directory are three powerfs mounts (FUSE, a
volatile page cache: data is durable only after fsync/fdatasync of its file, a
directory's entries only after fsync of the directory; sync/syncfs do nothing).
One clean run of the real core is recorded under strace; for each mutating or
syncing syscall N the run is repeated from the same saved disk state, killed
at N, and then the power is cut: everything not durable is dropped. The
invariant is checked, a clean rerun recovers, the power is cut again, and the
final state is checked.

The harness proves it can fail: the deliberately broken chains (no flush of
the part file, no fsync of the destination directory, sources unlinked before
the journal commit) lose files, and the sweep reports it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import time

import pytest

import crashlib
from powerfs_harness import PowerRig, powerfs_unavailable
from test_crash_sweep import SYSCALLS, _strace, crash_points

pytestmark = [pytest.mark.root]
LIBC = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    reason = powerfs_unavailable()
    if reason:
        pytest.skip(reason)
    rig = PowerRig(tmp_path_factory.mktemp('power-cut'), ('src', 'dest', 'state'))
    crashlib.build_tree(rig['src'])
    rig.sync_all()
    rig.save_all('base')
    yield rig, crashlib.snapshot(rig['src'])
    rig.close()


def _values(rig):
    return crashlib.params(rig['src'], rig['dest'] / 'out', rig['state'])


def _killed_then_cut(rig, point, faults=''):
    name, n = point[:2]
    rig.restore_all('base')
    proc = crashlib.run_core(_values(rig), faults=faults, prefix=[
        _strace(), '-f', '-qq', '-o', '/dev/null', '-e', 'trace=' + name,
        '--inject=%s:signal=KILL:when=%d' % (name, n)])
    rig.cut_all()
    return proc


def _record(rig, tmp_path, faults=''):
    rig.restore_all('base')
    trace = tmp_path / ('clean%s.trace' % faults.replace('=', '-'))
    proc = crashlib.run_core(_values(rig), faults=faults, prefix=[
        _strace(), '-f', '-y', '-qq', '-o', str(trace), '-e', 'trace=' + ','.join(SYSCALLS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return crash_points(trace)


@pytest.mark.timeout(900)
def test_power_cut_at_every_point(rig, tmp_path):
    rig, original = rig
    src, dest, state = rig['src'], rig['dest'] / 'out', rig['state']
    points = _record(rig, tmp_path)
    assert len(points) > 50
    violations = []
    started = time.monotonic()
    for point in points:
        _killed_then_cut(rig, point)
        problems = crashlib.check_invariant(original, src, dest, state)
        if problems:
            violations.append((point[:2], 'after the cut', problems))
            continue
        recovery = crashlib.run_core(_values(rig))
        rig.cut_all()            # the recovery itself must have left everything durable
        problems = crashlib.check_final(original, src, dest, state)
        if recovery.returncode != 0 or problems:
            violations.append((point[:2], 'after recovery and another cut',
                               problems or recovery.stdout[-1500:] + recovery.stderr[-1500:]))
    elapsed = time.monotonic() - started
    print('power cut: %d points swept in %.1f s (%.0f ms per point)'
          % (len(points), elapsed, 1000 * elapsed / len(points)))
    assert not violations, violations[:5]


@pytest.mark.timeout(900)
@pytest.mark.parametrize('variant', ['no_part_fdatasync', 'no_dest_dir_fsync', 'unlink_before_journal'])
def test_power_cut_catches_each_broken_chain(rig, tmp_path, variant):
    """Each broken variant loses a file at some point of the sweep, and the invariant says so."""
    rig, original = rig
    src, dest, state = rig['src'], rig['dest'] / 'out', rig['state']
    faults = 'broken=' + variant
    points = _record(rig, tmp_path, faults)
    losses = []
    for point in points:
        proc = _killed_then_cut(rig, point, faults)
        if proc.returncode != -signal.SIGKILL:
            continue
        problems = crashlib.check_invariant(original, src, dest, state)
        if any('LOST' in p or 'corrupt' in p for p in problems):
            losses.append((point[:2], problems))
            break
    print('%s: loss found at %s' % (variant, losses[0][0] if losses else None))
    assert losses, 'the power-cut sweep did not catch the broken chain %s' % variant


@pytest.mark.parametrize('flush', ['sync', 'syncfs'])
def test_sync_and_syncfs_make_nothing_durable_here(rig, flush):
    """The suite's premise: on powerfs only fsync/fdatasync count (so the core's
    durability cannot rest on sync()/syncfs(), which never reach a FUSE
    daemon). Each is called on its own, and returns success; the file written
    before it is gone after the cut."""
    rig, _original = rig
    rig.restore_all('base')
    path = rig['dest'] / 'unsynced'
    path.write_bytes(b'not durable')
    before = rig.mounts['dest'].stats()['ops']
    if flush == 'sync':
        os.sync()
    else:
        fd = os.open(rig['dest'], os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert LIBC.syncfs(fd) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)
    after = rig.mounts['dest'].stats()['ops']
    assert after.get('fsync', 0) == before.get('fsync', 0), (before, after)
    assert after.get('fsyncdir', 0) == before.get('fsyncdir', 0), (before, after)
    rig.cut_all()
    assert not path.exists()
