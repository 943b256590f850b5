# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Part files left at the destination: this job's orphans go; nothing else is ever removed.

A name shaped like a part file (``.<name>.<12 hex>.part``) may be a user's file that
the job itself just moved, with its old mtime: only this job's own tag is removed,
and never a name the journal records.
"""

from __future__ import annotations

import os
import time

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover

from fstree import XFS, Site
from helpers_recovery import run_cli

YEAR = 365 * 86400


def test_part_files_are_cleaned_by_owner_only(tmp_path):
    src, dest, state = tmp_path / 'src', tmp_path / 'dest', tmp_path / 'state'
    (src / 'sub').mkdir(parents=True)
    (src / 'sub' / 'f').write_bytes(b'data\n')
    params = {'src': str(src), 'dest': str(dest), 'state_dir': str(state), 'mode': 'copy'}
    job = _mover.Job(_mover.Options.from_params(params))
    (dest / 'sub').mkdir(parents=True)
    ours = dest / 'sub' / ('.gone.%s.part' % job.job_tag)            # an orphan of this job
    old = dest / 'sub' / '.x.0123456789ab.part'                       # another job's, 3 years old
    recent = dest / 'sub' / '.y.0123456789ab.part'                    # another job's, 1 day old
    unrelated = dest / 'sub' / '.z.part'                              # not a part name of ours
    for path in (ours, old, recent, unrelated):
        path.write_bytes(b'partial')
    now = time.time()
    os.utime(old, (now - 3 * YEAR, now - 3 * YEAR))
    os.utime(recent, (now - 86400, now - 86400))
    result = _mover.run(params)
    assert not result.get('failed'), result
    left = sorted(os.listdir(dest / 'sub'))
    assert left == sorted(['f', old.name, recent.name, unrelated.name])


def test_a_moved_file_named_like_a_part_file_survives(site: Site) -> None:
    """A user's file named like another job's part, years old, is moved like any file
    and is still whole at the destination once the job is complete."""
    (site.src / 'sub').mkdir()
    data = b'user data that only looks like a part file\n' * 100
    names = ('.data.0123456789ab.part', 'sub/.notes.txt.fedcba987654.part')
    old = time.time() - 3 * YEAR
    for rel in names:
        (site.src / rel).write_bytes(data)
        os.utime(site.src / rel, (old, old))
    first = _mover.run(site.params())
    assert not first.get('failed'), first.get('msg')
    assert first['complete'] is True and first['stats']['files_moved'] == 2
    for rel in names:
        assert not (site.src / rel).exists()
        assert (site.dest / rel).read_bytes() == data, rel
    again = _mover.run(site.params())
    assert (again['changed'], again['complete']) == (False, True)
    for rel in names:
        assert (site.dest / rel).read_bytes() == data, rel


@pytest.mark.parametrize("site", [XFS], indirect=True)
def test_own_part_left_by_a_killed_run_is_removed(site: Site) -> None:
    """A run killed with a part written leaves it; once its source is gone (deleted by
    someone), the next run completes and removes the orphan part of this job."""
    (site.src / 'sub').mkdir()
    (site.src / 'sub' / 'f').write_bytes(b'x' * 5000)
    params = site.params(processes=1)
    killed = run_cli(params, faults='kill=after_part_write')
    assert killed.killed, killed.describe()
    job = _mover.Job(_mover.Options.from_params(params))
    part = site.dest / 'sub' / ('.f.%s.part' % job.job_tag)
    assert part.exists()
    foreign = site.dest / 'sub' / '.g.0123456789ab.part'        # another job's, left alone
    foreign.write_bytes(b'partial')
    os.utime(foreign, (time.time() - 3 * YEAR,) * 2)
    (site.src / 'sub' / 'f').unlink()
    result = _mover.run(params)
    assert not result.get('failed'), result.get('msg')
    assert result['complete'] is True
    assert sorted(os.listdir(site.dest / 'sub')) == [foreign.name]
