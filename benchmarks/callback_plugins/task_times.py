# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a play's time goes: seconds per task name, for benchmarks/ansible_share.py.

Enabled with ANSIBLE_CALLBACK_PLUGINS=benchmarks/callback_plugins and
ANSIBLE_CALLBACKS_ENABLED=task_times; writes {task name: [count, seconds]} as
JSON to $DURABLE_MOVER_TASK_TIMES at the end of the play (ansible.posix's
profile_tasks does the same on screen, but is not installed everywhere).
"""

from __future__ import annotations

DOCUMENTATION = '''
name: task_times
type: aggregate
short_description: seconds per task name, written as JSON (benchmarks only)
description: Writes a JSON object (task name to runs and seconds) to the file named by DURABLE_MOVER_TASK_TIMES.
requirements: [enable in configuration]
'''

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'task_times'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.times = {}
        self.current = None
        self.started = None
        self.play_started = time.monotonic()

    def _close(self):
        if self.current is not None:
            entry = self.times.setdefault(self.current, [0, 0.0])
            entry[0] += 1
            entry[1] += time.monotonic() - self.started
        self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = task.get_name()
        self.started = time.monotonic()

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        self.times['(whole play)'] = [1, time.monotonic() - self.play_started]
        path = os.environ.get('DURABLE_MOVER_TASK_TIMES')
        if path:
            with open(path, 'w') as handle:
                json.dump(self.times, handle, indent=1, sort_keys=True)
