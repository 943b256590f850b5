#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: prune_dirs
short_description: Remove the emptied source directories of a tree, durably
version_added: 0.1.0
description:
  - Removes each directory of O(paths) (relative to O(root)) that is empty, the deepest first, with C(rmdir) followed
    by an fsync of its parent, so that each removal is on disk before the next one is tried.
  - A directory that is not empty is kept and listed in RV(kept), never removed with what it holds; O(root) itself
    is never removed. A path that does not exist is listed in RV(missing).
  - The last step of the shards of the C(durable.mover.migrate) role (C(migrate_shard_group)), run once after every
    host moved its shard.
author:
  - Durable Mover Maintainers (@durable-mover)
attributes:
  check_mode:
    support: full
    description: Lists in RV(removed) the directories that are empty now, and removes nothing.
  diff_mode:
    support: none
    description: No diff is produced.
  platform:
    support: full
    platforms: posix
    description: Linux and other POSIX systems with C(fsync) semantics.
  idempotent:
    support: full
    description: A second run finds nothing to remove.
options:
  root:
    description: The tree's root, an existing directory.
    type: path
    required: true
  paths:
    description: The directories to remove when empty, relative to O(root) (no C(..)).
    type: list
    elements: str
    required: true
seealso:
  - module: durable.mover.shard_plan
"""

EXAMPLES = r"""
- name: Remove the emptied directories above the units
  durable.mover.prune_dirs:
    root: /mnt/old/projects
    paths: "{{ plan.plan.parents }}"
  run_once: true
"""

RETURN = r"""
removed:
  description: The directories removed (in check mode, those that would be), deepest first.
  returned: success
  type: list
  elements: str
kept:
  description: The directories left in place, each with its C(path) and C(reason) (not empty, a mount point, not a directory).
  returned: success
  type: list
  elements: dict
missing:
  description: The paths that did not exist.
  returned: success
  type: list
  elements: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError
from ansible_collections.durable.mover.plugins.module_utils._shard import prune

ARGUMENT_SPEC = dict(
    root=dict(type='path', required=True),
    paths=dict(type='list', elements='str', required=True),
)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        found = prune(module.params['root'], module.params['paths'], check_mode=module.check_mode)
    except MoverError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # a bug: say so plainly, with the traceback
        module.fail_json(msg='unexpected error: %s' % exc, exception=traceback.format_exc())
    module.exit_json(changed=bool(found['removed']), **found)


if __name__ == '__main__':
    main()
