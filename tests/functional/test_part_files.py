# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Part files left at the destination: this job's orphans go; other jobs' go after part_max_age days."""

from __future__ import annotations

import os
import time

from ansible_collections.durable.mover.plugins.module_utils import _mover


def test_part_files_are_cleaned_by_owner_and_age(tmp_path):
    src, dest, state = tmp_path / 'src', tmp_path / 'dest', tmp_path / 'state'
    (src / 'sub').mkdir(parents=True)
    (src / 'sub' / 'f').write_bytes(b'data\n')
    params = {'src': str(src), 'dest': str(dest), 'state_dir': str(state), 'mode': 'copy', 'part_max_age': 2}
    job = _mover.Job(_mover.Options.from_params(params))
    (dest / 'sub').mkdir(parents=True)
    ours = dest / 'sub' / ('.gone.%s.part' % job.job_tag)            # an orphan of this job
    old = dest / 'sub' / '.x.0123456789ab.part'                       # another job's, 3 days old
    recent = dest / 'sub' / '.y.0123456789ab.part'                    # another job's, 1 day old
    unrelated = dest / 'sub' / '.z.part'                              # not a part name of ours
    for path in (ours, old, recent, unrelated):
        path.write_bytes(b'partial')
    now = time.time()
    os.utime(old, (now - 3 * 86400, now - 3 * 86400))
    os.utime(recent, (now - 86400, now - 86400))
    result = _mover.run(params)
    assert not result.get('failed'), result
    left = sorted(os.listdir(dest / 'sub'))
    assert left == sorted(['f', recent.name, unrelated.name])
