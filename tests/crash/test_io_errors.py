# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""I/O errors at every write, flush and rename of a run (strace --inject=...:error=).

After each injected error the invariant holds, the run does not claim success
(it fails, or it reports the file failed), and a clean rerun completes.
"""

from __future__ import annotations

import re
import time

import pytest

from crashlib import check_final, check_invariant, result_of, run_core
from test_crash_sweep import Sweep, _strace, crash_points

pytestmark = [pytest.mark.root]
ERROR_SYSCALLS = {'write', 'pwrite64', 'fsync', 'fdatasync', 'rename', 'renameat', 'renameat2'}


def _inject(sweep, point, error):
    name, n = point[:2]
    return run_core(sweep.values, prefix=[_strace(), '-f', '-qq', '-o', '/dev/null', '-e', 'trace=' + name,
                                          '--inject=%s:error=%s:when=%d' % (name, error, n)])


@pytest.mark.timeout(900)
@pytest.mark.parametrize('error', ['EIO', 'ENOSPC'])
def test_io_error_at_every_point(tmp_path, tmpfs, error):
    sweep = Sweep(tmp_path, tmpfs('64m'))
    sweep.setup()
    assert sweep.trace(tmp_path / 'clean.trace').returncode == 0
    # SQLite fsyncs the state directory when it creates its journal files and, by
    # design, ignores an error there; the mover fsyncs that directory itself
    # right after (and that error is reported). Those calls are not sweep points.
    state_dir_sync = re.compile(r'^\d+<%s/[0-9a-f]+>$' % re.escape(str(sweep.state)))
    points = [p for p in crash_points(tmp_path / 'clean.trace') if p[0] in ERROR_SYSCALLS
              and not (p[0] == 'fdatasync' and state_dir_sync.match(p[2]))]
    if error == 'ENOSPC':
        points = [p for p in points if p[0] in ('write', 'pwrite64')]
    claimed_success, violations = [], []
    started = time.monotonic()
    for point in points:
        sweep.setup()
        proc = _inject(sweep, point, error)
        result = result_of(proc)
        if proc.returncode == 0 and not result.get('failed'):
            claimed_success.append(point[:2])
        problems = check_invariant(sweep.original, sweep.src, sweep.dest, sweep.state)
        if problems:
            violations.append((point[:2], 'after error', problems))
            continue
        recovery = sweep.recover()
        problems = check_final(sweep.original, sweep.src, sweep.dest, sweep.state)
        if recovery.returncode != 0 or problems:
            violations.append((point[:2], 'after rerun', problems or recovery.stdout[-1500:] + recovery.stderr[-1500:]))
    print('%s injected at %d points in %.1f s' % (error, len(points), time.monotonic() - started))
    assert not violations, violations[:5]
    assert not claimed_success, 'runs that hit %s and reported success: %s' % (error, claimed_success)
