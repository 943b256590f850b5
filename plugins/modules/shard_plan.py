#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: shard_plan
short_description: Split one tree into shards for several hosts that all mount it
version_added: 0.1.0
description:
  - Lists the tree at O(src) down to O(depth) levels and cuts it into I(units), each one job of
    M(durable.mover.move) (C(src/unit) to C(dest/unit)), then assigns the units to one shard per host of O(hosts).
  - "A unit is a directory O(depth) levels below O(src), or a shallower directory without subdirectories, or the
    I(loose entries) of a directory above that depth: its files, links and special files, moved by a job on the
    directory itself whose C(exclude) names its subdirectories. Every directory above the units has such a unit,
    even without loose entries: its job gives the directory its metadata at the destination."
  - The units are assigned greedily, the heaviest first, each to the least loaded shard; a unit's weight is its
    share of the tree's bytes plus its share of the tree's files. Ties go to the lowest path and shard index, so
    the same tree and hosts always give the same plan.
  - Each unit gets a job id derived from O(src), O(dest) and the unit, the same whichever host runs it, so that
    a host that takes a unit over from a dead one recognises (and removes) the part files the dead one left.
  - Only reads the tree. Run it once (C(run_once)) on one host that mounts the tree; the C(durable.mover.migrate)
    role does so when C(migrate_shard_group) is set.
author:
  - Durable Mover Maintainers (@durable-mover)
attributes:
  check_mode:
    support: full
    description: Reads only; the same plan in check mode.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Linux and other POSIX systems.
  idempotent:
    support: full
    description: Never changes anything.
options:
  src:
    description: The tree to split, an existing directory (absolute path).
    type: path
    required: true
  dest:
    description: Where the tree goes (absolute path); each unit's destination is below it.
    type: path
    required: true
  hosts:
    description:
      - The hosts that share the tree, one shard each, in order (shard C(0) is the first host).
      - Names must be distinct. More hosts than units leaves some shards empty.
    type: list
    elements: str
    required: true
  depth:
    description:
      - How deep the tree is cut. V(1) makes each top-level directory a unit (and the loose entries of the root
        another); V(2) cuts each top-level directory that has subdirectories into its subdirectories, and so on.
      - From V(1) to V(16).
    type: int
    default: 1
seealso:
  - module: durable.mover.move
  - module: durable.mover.prune_dirs
"""

EXAMPLES = r"""
- name: Plan the shards of the tree once
  durable.mover.shard_plan:
    src: /mnt/old/projects
    dest: /mnt/new/projects
    hosts: "{{ groups['movers'] }}"
    depth: 2
  run_once: true
  register: plan

- name: Show what each host moves
  ansible.builtin.debug:
    msg: "{{ plan.plan.shards }}"
"""

RETURN = r"""
plan:
  description: The plan.
  returned: success
  type: dict
  contains:
    version:
      description: The plan format's version.
      type: int
    src:
      description: The tree, as given.
      type: str
    dest:
      description: The destination, as given.
      type: str
    depth:
      description: The depth the tree was cut at.
      type: int
    units:
      description: Every unit, in path order.
      type: list
      elements: dict
      contains:
        path:
          description: Relative to O(src); empty for the loose entries of the root.
          type: str
        kind:
          description: V(dir) (a whole directory) or V(loose) (the entries of a directory that are not directories).
          type: str
        files:
          description: Entries that are not directories, when planned.
          type: int
        bytes:
          description: Apparent size of the regular files, when planned.
          type: int
        exclude:
          description: Exclude patterns of the unit's job (its subdirectories, for a V(loose) unit).
          type: list
          elements: str
        shard:
          description: The shard's index.
          type: int
        host:
          description: The host of the shard.
          type: str
        job_id:
          description: The job id of the unit's move, the same on every host.
          type: str
        src:
          description: The job's source.
          type: str
        dest:
          description: The job's destination.
          type: str
    shards:
      description: Per shard, its C(index), C(host) and the C(units), C(files) and C(bytes) assigned to it.
      type: list
      elements: dict
    parents:
      description: The directories above the units (relative), removed at the end once empty.
      type: list
      elements: str
    unreadable:
      description: Directories that could not be listed (C(path), C(msg)); their entries are in no count.
      type: list
      elements: dict
    totals:
      description: C(units), C(files), C(bytes) and C(shards) of the whole plan.
      type: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError
from ansible_collections.durable.mover.plugins.module_utils._shard import make_plan

ARGUMENT_SPEC = dict(
    src=dict(type='path', required=True),
    dest=dict(type='path', required=True),
    hosts=dict(type='list', elements='str', required=True),
    depth=dict(type='int', default=1),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = module.params
    try:
        plan = make_plan(params['src'], params['dest'], params['hosts'], params['depth'])
    except MoverError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a bug: say so plainly, with the traceback
        module.fail_json(msg='unexpected error: %s' % exc, exception=traceback.format_exc())
    for entry in plan['unreadable']:
        module.warn('cannot list %s (%s): its entries are in no unit' % (entry['path'], entry['msg']))
    module.exit_json(changed=False, plan=plan)


if __name__ == '__main__':
    main()
