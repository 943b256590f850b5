# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Power cuts after whole runs that start from what other programs left behind.

Source, destination and state directory are powerfs mounts (tests/crash/powerfs.py:
data is durable only after fsync of its file, a directory's entries only after
fsync of the directory). Each case prepares what another program (or an earlier,
killed run) would leave: files and directories written but never flushed. The
mover then runs to completion, the power is cut, and the suite's invariant must
hold: every file whole at its source or at its destination, nothing reported
done that is not whole on the disk.
"""

from __future__ import annotations

import os

import pytest

import crashlib
from powerfs_harness import PowerRig, powerfs_unavailable

pytestmark = [pytest.mark.root]


@pytest.fixture(scope='module')
def rig(tmp_path_factory):
    reason = powerfs_unavailable()
    if reason:
        pytest.skip(reason)
    rig = PowerRig(tmp_path_factory.mktemp('power-cases'), ('src', 'dest', 'state'))
    crashlib.build_tree(rig['src'])
    (rig['dest'] / 'out').mkdir()
    rig.sync_all()
    rig.save_all('base')
    yield rig, crashlib.snapshot(rig['src'])
    rig.close()


def _run(rig, dest, **extra):
    proc = crashlib.run_core(crashlib.params(rig['src'], dest, rig['state'], **extra))
    result = crashlib.result_of(proc)
    assert proc.returncode == 0 and result.get('complete'), proc.stdout[-2000:] + proc.stderr[-2000:]
    return result


def _whole_at_destination(original, dest):
    return [rel for rel, want in original.items() if crashlib.entry(dest, rel) != want]


@pytest.mark.parametrize('mode', ['move', 'copy'])
def test_identical_destination_left_unflushed_by_another_program(rig, mode):
    """The destination already holds identical copies (as `cp -a` leaves them:
    in the page cache, not on the disk). The mover may not count on them before
    they are flushed and read back from the disk."""
    rig, original = rig
    rig.restore_all('base')
    dest = rig['dest'] / 'out'
    crashlib.build_tree(dest)            # same names and bytes, nothing flushed
    _run(rig, dest, mode=mode)
    rig.cut_all()
    assert not crashlib.check_invariant(original, rig['src'], dest, rig['state'])
    assert not _whole_at_destination(original, dest)
    if mode == 'move':
        assert not crashlib.check_final(original, rig['src'], dest, rig['state'])


def test_destination_root_made_by_someone_else_and_never_flushed(rig):
    """The destination root exists, but its own name is not durable (made by a
    run killed before it flushed its parent, or by `mkdir` a moment ago). A whole
    run then a cut must not lose every file with the root."""
    rig, original = rig
    rig.restore_all('base')
    dest = rig['dest'] / 'out' / 'new-root'
    os.mkdir(dest)
    _run(rig, dest)
    rig.cut_all()
    assert not crashlib.check_final(original, rig['src'], dest, rig['state'])
