#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: write_reports
short_description: Write report files on the Ansible controller in one task
version_added: 0.1.0
description:
  - Writes several text files under one directory on the controller, each to a temporary name then
    renamed into place. Used by the M(durable.mover.report) role for the fleet's reports.
  - Runs entirely on the controller (an action plugin), whatever host the task is for.
  - "Reports are not changes to a managed system: the task never reports C(changed)."
author:
  - Durable Mover Maintainers (@durable-mover)
attributes:
  check_mode:
    support: full
    description: Reports are written in check mode too (they describe the check).
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
  dest:
    description: The directory (created if missing) on the controller.
    type: path
    required: true
  files:
    description: Relative path inside O(dest) to the text to write there.
    type: dict
    required: true
  mode:
    description: Permissions of the files written.
    type: str
    default: "0644"
"""

EXAMPLES = r"""
- name: Write the reports
  durable.mover.write_reports:
    dest: ./migrate-reports
    files:
      summary.md: "{{ summary }}"
      hosts/web1.json: "{{ web1 | to_nice_json }}"
"""

RETURN = r"""
written:
  description: The files written.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec=dict(dest=dict(type='path', required=True),
                                              files=dict(type='dict', required=True),
                                              mode=dict(type='str', default='0644')),
                           supports_check_mode=True)
    module.fail_json(msg='durable.mover.write_reports runs on the controller as an action plugin')


if __name__ == '__main__':
    main()
