#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: follow
short_description: One look at a host's running move, for the poll rounds of the migrate role
version_added: 0.1.0
description:
  - Waits until the host's next look is due (O(interval) seconds after its last one) or the move ends, whichever
    comes first (the wait runs on the host, checking every quarter of a second whether the async job's result file
    still says it runs, or the process holding the job's lock is alive), runs M(durable.mover.move_info) on the host and, when the move no longer looks running,
    M(ansible.builtin.async_status) for its async job; then updates the host's follow state, the fact
    C(migrate_follow), and prints the host's line when its status changed or every O(host_interval) seconds.
  - Progress is the job's, not the run's (files and bytes done by any run of the job, out of the job's total),
    so it never goes back after a resume; rates and the ETA are a moving average over the looks of the last 60
    seconds.
  - The look that sees an async move end keeps the move's result in the state (C(current.result)), removes the
    async job's result file and the O(marker) (one command), and reports C(changed) as the move did.
  - Used by the C(durable.mover.migrate) role; it is an action plugin (the looks are modules run on the host).
  - A connection failure is not an error here; the state says the host is unreachable.
author:
  - Durable Mover Maintainers (@durable-mover)
attributes:
  check_mode:
    support: full
    description: It only reads.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: The controller runs it; the looks are modules run on the host.
  action:
    support: full
    description: Implemented by an action plugin on the controller.
options:
  src:
    description: The O(durable.mover.move#module:src) of the job.
    type: path
    required: true
  dest:
    description: The O(durable.mover.move#module:dest) of the job.
    type: path
    required: true
  state_dir:
    description: The O(durable.mover.move#module:state_dir) of the job.
    type: path
  job_id:
    description: The O(durable.mover.move#module:job_id) of the job.
    type: str
  name:
    description: The job's name in the host's line.
    type: str
  job_index:
    description: The job's index among the host's jobs; the state keeps the latest progress of each.
    type: int
    default: 0
  jobs:
    description: How many jobs the host has.
    type: int
    default: 1
  jid:
    description:
      - The async job id of the move. Without it the look follows a run it did not start (holding the job's lock),
        which is over once move_info says it no longer runs.
    type: str
  marker:
    description:
      - Name of a file in the host's async directory that keeps the async job id while the move runs (written on
        the first look, removed once it ended), so that the next play finds a move whose play lost its connection.
    type: str
  adopt:
    description: Read the async job id from O(marker) (left by an earlier play) and follow that job.
    type: bool
    default: false
  interval:
    description: Seconds between two looks at the host (0 looks again at once).
    type: float
    default: 10
  host_interval:
    description: Seconds between two lines of a host whose status did not change.
    type: float
    default: 60
  run:
    description: A token of this play; a state of another play is started afresh.
    type: str
  state:
    description: The host's follow state so far (C(ansible_facts.migrate_follow)).
    type: dict
seealso:
  - module: durable.mover.move_info
  - module: durable.mover.fleet_progress
"""

EXAMPLES = r"""
- name: Look at the move
  durable.mover.follow:
    src: /srv/old
    dest: /srv/new
    jid: "{{ started.ansible_job_id }}"
    state: "{{ ansible_facts.migrate_follow | default({}) }}"
"""

RETURN = r"""
over:
  description: The move ended (or the host became unreachable).
  returned: always
  type: bool
status:
  description: V(starting), V(listing), V(moving), V(waiting for an earlier run), V(finished), V(failed) or V(unreachable).
  returned: always
  type: str
pid:
  description: The pid holding the job's lock, as move_info saw it.
  returned: always
  type: int
adopted:
  description: The async job id read from O(marker), with O(adopt).
  returned: always
  type: str
ansible_facts:
  description: C(migrate_follow), the new follow state (C(polls), C(current), C(jobs)).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec=dict(
        src=dict(type='path', required=True), dest=dict(type='path', required=True), state_dir=dict(type='path'),
        job_id=dict(type='str'), name=dict(type='str'), job_index=dict(type='int', default=0),
        jobs=dict(type='int', default=1), jid=dict(type='str'), marker=dict(type='str'),
        adopt=dict(type='bool', default=False), interval=dict(type='float', default=10),
        host_interval=dict(type='float', default=60), run=dict(type='str'), state=dict(type='dict')),
        supports_check_mode=True)
    module.fail_json(msg='durable.mover.follow runs on the controller as an action plugin')


if __name__ == '__main__':
    main()
