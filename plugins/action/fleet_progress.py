# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin for durable.mover.fleet_progress: the fleet's line of one poll round (or a text).

Runs on the controller only (no module, no connection): reads the follow
state of every host of the batch from hostvars and prints one line. See
plugins/modules/fleet_progress.py for the options.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.durable.mover.plugins.module_utils import _follow

display = Display()

FACTS = ('migrate_follow_run', 'migrate_job_results', 'migrate_plan', 'migrate_unreachable_msg', 'migrate_result',
         'migrate_running')


def _plain(value):
    """A fact as plain Python data (hostvars hand out lazy, templated mappings)."""
    if isinstance(value, dict) or hasattr(value, 'items'):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(('hosts', 'only_from', 'text'))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        text = self._task.args.get('text')
        if text is not None:
            if not isinstance(text, str):
                raise AnsibleActionFail('fleet_progress: text must be a string')
            display.display(text.rstrip('\n'))
            result.update(changed=False, printed=True)
            return result
        hosts = self._task.args.get('hosts')
        if isinstance(hosts, str) or not isinstance(hosts, (list, tuple)):
            raise AnsibleActionFail('fleet_progress: hosts must be a list of host names')
        hostvars = task_vars.get('hostvars', {})
        facts = {}
        for name in hosts:
            try:
                values = hostvars[name]
            except KeyError:
                continue
            facts[str(name)] = {key: _plain(values.get(key)) if hasattr(values, 'get') else None for key in FACTS}
            gathered = values.get('ansible_facts') if hasattr(values, 'get') else None
            facts[str(name)]['migrate_follow'] = _plain((gathered or {}).get('migrate_follow'))
        only_from = self._task.args.get('only_from')
        if only_from and only_from != task_vars.get('inventory_hostname'):
            result.update(changed=False, skipped=False, printed=False)
            return result
        looks = sum(_follow.looks_of(f) for f in facts.values())
        before = task_vars.get('ansible_facts', {}).get('migrate_fleet_looks')
        if looks == before:
            # Nobody looked since the last line (the rounds left over after the
            # last move ended): nothing new to say.
            result.update(changed=False, printed=False)
            return result
        polls = max([_follow.polls_of(f) for f in facts.values()] or [0])
        line = _follow.fleet_line(facts, polls)
        display.display(line)
        numbers = _follow.fleet_numbers(facts)
        result.update(changed=False, printed=True, line=line, ansible_facts={'migrate_fleet_looks': looks},
                      hosts=numbers['hosts'], progress=numbers['progress'],
                      bytes_per_second=round(numbers['bytes_per_second'], 1),
                      files_per_second=round(numbers['files_per_second'], 1), eta_seconds=numbers['eta_seconds'])
        return result
