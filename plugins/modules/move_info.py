#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: move_info
short_description: Read a durable.mover job's state and progress from its journal
version_added: 0.1.0
description:
  - Reads the journal of a M(durable.mover.move) job and reports its state, progress, rate and failures,
    without touching any file and without taking the job's lock, so it can run while the job is running.
  - The job is named by O(job_id), or derived from O(src) and O(dest) as M(durable.mover.move) derives it.
author:
  - Durable Mover Maintainers (@durable-mover)
attributes:
  check_mode:
    support: full
    description: Reads only; behaves the same in check mode.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Linux and other POSIX systems with C(fsync) semantics.
  idempotent:
    support: full
    description: Never changes anything.
options:
  src:
    description: The O(durable.mover.move#module:src) of the job; needed with O(dest) when O(job_id) is not given.
    type: path
  dest:
    description: The O(durable.mover.move#module:dest) of the job.
    type: path
  job_id:
    description: The job's name, as returned by M(durable.mover.move).
    type: str
  state_dir:
    description: The O(durable.mover.move#module:state_dir) of the job.
    type: path
    default: /var/lib/durable-mover
  max_failures_reported:
    description: At most this many failures are listed.
    type: int
    default: 100
seealso:
  - module: durable.mover.move
"""

EXAMPLES = r"""
- name: Show the progress of a running migration
  durable.mover.move_info:
    src: /srv/old-disk/data
    dest: /srv/new-disk/data
  register: progress

- name: Print it
  ansible.builtin.debug:
    msg: "{{ progress.progress.percent_bytes }} % of {{ progress.progress.bytes_total }} bytes"
"""

RETURN = r"""
job_id:
  description: The job's name.
  returned: always
  type: str
journal:
  description: Path of the journal.
  returned: always
  type: str
exists:
  description: Whether the job has a journal (it has run at least once).
  returned: always
  type: bool
running:
  description: Whether a run of the job holds its lock now.
  returned: always
  type: bool
pid:
  description: The pid of the running run; null when none is running.
  returned: always
  type: int
complete:
  description: Whether every file is done (or skipped by decision) and none failed.
  returned: always
  type: bool
source:
  description: The job's source, as recorded in the journal.
  returned: when RV(exists)
  type: str
destination:
  description: The job's destination, as recorded in the journal.
  returned: when RV(exists)
  type: str
runs:
  description: How many runs the job has had.
  returned: when RV(exists)
  type: int
scan_complete:
  description: Whether the source has been fully listed into the journal.
  returned: when RV(exists)
  type: bool
states:
  description: Files and bytes per journal state (pending, copying, copied, done, failed, skipped).
  returned: when RV(exists)
  type: dict
progress:
  description: Totals, what is done, and the rate and estimated time left of the current or last run.
  returned: when RV(exists)
  type: dict
  contains:
    files_total:
      description: Entries known to the job.
      type: int
    files_done:
      description: Entries done or skipped.
      type: int
    files_pending:
      description: Entries still to move.
      type: int
    files_failed:
      description: Entries that failed.
      type: int
    files_quarantined:
      description: Failed entries no longer retried.
      type: int
    dirs:
      description: Directories below the source root.
      type: int
    bytes_total:
      description: >-
        Bytes of all files, as a move carries them: a file's data (a sparse file's holes are not bytes), and a file
        with several names once.
      type: int
    bytes_done:
      description: Bytes of files done or skipped, counted the same way.
      type: int
    percent_files:
      description: Share of entries done.
      type: float
    percent_bytes:
      description: Share of bytes done.
      type: float
    bytes_per_second:
      description: Rate of the current (or last) run.
      type: float
    files_per_second:
      description: File rate of the current (or last) run.
      type: float
    elapsed_seconds:
      description: Time since the current (or last) run started, or its duration.
      type: float
    eta_seconds:
      description:
        - Estimated seconds left, while running, once the source is fully listed and a rate is known; null otherwise.
        - The longer of the files left at RV(progress.files_per_second) and the bytes left at
          RV(progress.bytes_per_second) (many small files are paced by the files, large ones by the bytes).
      type: float
    eta_lower_bound_seconds:
      description:
        - While the source is still being listed, the same estimate for what is listed so far; the least time left,
          since the listing may find more. Null once it is listed.
      type: float
    eta_basis:
      description: V(files) or V(bytes), whichever rate the estimate came from; null without one.
      type: str
failures:
  description: Failed entries (path, error, attempts, quarantined).
  returned: when RV(exists)
  type: list
  elements: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError
from ansible_collections.durable.mover.plugins.module_utils._info import job_info

ARGUMENT_SPEC = dict(
    src=dict(type='path'),
    dest=dict(type='path'),
    job_id=dict(type='str'),
    state_dir=dict(type='path', default='/var/lib/durable-mover'),
    max_failures_reported=dict(type='int', default=100),
)


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[('job_id', 'src')],
        required_together=[('src', 'dest')],
        supports_check_mode=True,
    )
    try:
        result = job_info(module.params)
    except MoverError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a bug: say so plainly, with the traceback
        module.fail_json(msg='unexpected error: %s' % exc, exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
