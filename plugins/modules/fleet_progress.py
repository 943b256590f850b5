#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: fleet_progress
short_description: Print one line of progress for the whole batch, once per poll round of the migrate role
version_added: 0.1.0
description:
  - "Reads the follow state of every host of O(hosts) (C(ansible_facts.migrate_follow), set by
    M(durable.mover.follow)) and prints one line, for example
    C(FLEET poll 12: 24 host(s): 20 done, 3 running, 1 failed, 0 unreachable | files 1200/2400 (50.0%) |
    bytes 1.2 GiB/2.4 GiB (50.0%) | 45.3 MiB/s, 120 files/s | ETA 3m12s)."
  - Files and bytes are summed over the hosts' jobs (done by any run of each job, out of its total); the rates
    are the sum of the hosts' moving averages; the ETA is that of the slowest running host (the hosts move in
    parallel), C(unknown) while one of them cannot say.
  - Prints nothing when no host was looked at since its last line.
  - Meant to run once per round (C(run_once)); runs on the controller only.
  - With O(text), prints that text instead (the report role's summary), as the role's own output, not as a task
    result, so it shows whatever the stdout callback's C(display_ok_hosts) says.
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
    description: The controller.
  action:
    support: full
    description: Implemented by an action plugin on the controller.
options:
  hosts:
    description: The hosts of the batch. Required unless O(text) is given.
    type: list
    elements: str
  text:
    description: A text to print as is, instead of the fleet's line.
    type: str
  only_from:
    description: Print only when the task runs for this host (for strategies that ignore C(run_once)).
    type: str
seealso:
  - module: durable.mover.follow
"""

EXAMPLES = r"""
- name: Show the fleet's progress
  durable.mover.fleet_progress:
    hosts: "{{ ansible_play_batch }}"
  run_once: true
"""

RETURN = r"""
printed:
  description: Whether a line was printed.
  returned: always
  type: bool
line:
  description: The line.
  returned: when printed
  type: str
hosts:
  description: Hosts by status (C(done), C(running), C(failed), C(unreachable)).
  returned: when printed
  type: dict
progress:
  description: C(files_total), C(files_done), C(files_failed), C(bytes_total), C(bytes_done) of the batch.
  returned: when printed
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec=dict(hosts=dict(type='list', elements='str'),
                                              only_from=dict(type='str'), text=dict(type='str')),
                           required_one_of=[('hosts', 'text')],
                           supports_check_mode=True)
    module.fail_json(msg='durable.mover.fleet_progress runs on the controller as an action plugin')


if __name__ == '__main__':
    main()
