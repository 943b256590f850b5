# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin for durable.mover.follow: one look at a host's running move.

One task per host and poll round: it waits until the host's next look is due,
runs durable.mover.move_info on the host (and async_status when the move no
longer looks running), updates the host's follow state (the fact
migrate_follow) and prints the host's line when its status changed or its
last line is old. See plugins/modules/follow.py for the options.
"""

from __future__ import annotations

import json
import shlex
import time

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.durable.mover.plugins.module_utils import _follow

display = Display()

MARKER_PREFIX = 'durable.mover-'
# Seconds between two checks, on the host, of whether the move it waits for has ended.
WAIT_STEP = 0.25
# The first look at a move this play just started waits this long (at most
# the poll interval) for it to end: a short move's result is then read from
# its async result file, and no module runs on the host to follow it.
FIRST_WAIT = 1.0
# Keys of async_status's answer that are not the move's result.
RESULT_DROP = frozenset(('ansible_job_id', 'results_file', 'started', 'invocation', 'stdout', 'stdout_lines',
                         'stderr_lines', '_ansible_no_log', 'erased'))


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(('src', 'dest', 'state_dir', 'job_id', 'name', 'job_index', 'jobs', 'jid',
                             'marker', 'adopt', 'interval', 'host_interval', 'state', 'run'))

    def _async_dir(self):
        return self.get_shell_option('async_dir', default='~/.ansible_async')

    def _shell_path(self, path):
        """Shell text of a remote path (a leading ~ left for the shell to expand)."""
        if path == '~' or path.startswith('~/'):
            return '~/' + shlex.quote(path[2:] or '.')
        return shlex.quote(path)

    def _job_path(self, jid):
        """Shell text of the async job's result file."""
        return self._shell_path('%s/%s' % (self._async_dir().rstrip('/'), jid))

    def _marker_path(self, marker):
        return self._shell_path('%s/%s%s' % (self._async_dir().rstrip('/'), MARKER_PREFIX, marker))

    def _shell(self, command):
        try:
            result = self._low_level_execute_command(command, sudoable=True)
        except AnsibleConnectionFailure as exc:
            self._connection_error = str(exc)
            return None
        if result.get('rc') != 0:
            return None
        return result.get('stdout', '')

    def _module(self, name, args, task_vars):
        try:
            result = self._execute_module(module_name=name, module_args=args, task_vars=task_vars)
        except AnsibleConnectionFailure as exc:
            return {'unreachable': True, 'msg': str(exc)}
        return result

    def _async_status(self, jid, task_vars, mode='status'):
        async_dir = self._async_dir()
        if async_dir.startswith('~'):
            async_dir = self._remote_expand_user(async_dir)
        return self._module('ansible.legacy.async_status', {'jid': jid, 'mode': mode, '_async_dir': async_dir},
                            task_vars)

    def _ended(self, jid):
        """The async job's result, read from its result file on the host, once
        the move has ended (what async_status would answer, without a module
        run); None while it runs, or when the file cannot be read or parsed
        (async_status is then asked, as before)."""
        text = self._shell('cat %s 2>/dev/null || true' % self._job_path(jid))
        if not text or not text.strip():
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or ('started' in data and not data.get('finished')):
            return None
        # as async_status: a file without "started" holds the module's own result
        return dict(data, finished=True, ansible_job_id=jid)

    def _wait(self, due, before):
        """Wait until `due` (a time.time()), on the host in steps of WAIT_STEP
        seconds while the move it follows still runs: its async job's result
        file still says it is not finished, or (a run this play did not start)
        the process holding the job's lock is alive. The end is noticed within
        a step, not at the next look. The look that follows decides whether
        the move ended; the wait only decides when it comes. Without anything
        to watch, or when the host cannot run the wait, the rest is waited
        here."""
        left = due - time.time()
        if left <= 0:
            return
        watch = None
        if before.get('jid'):
            # async_wrapper writes {"started": ..., "finished": false (0 before ansible-core 2.19)} first,
            # then replaces it with the module's result.
            watch = 'grep -qE \'"finished": (false|0)[,}]\' %s 2>/dev/null' % self._job_path(before['jid'])
        elif before.get('pid'):
            pid = int(before['pid'])
            watch = 'kill -0 %d 2>/dev/null || [ -d /proc/%d ]' % (pid, pid)
        if watch is not None and left > WAIT_STEP:
            steps = int(left / WAIT_STEP)
            command = ('n=%d; while [ "$n" -gt 0 ] && { %s; }; do sleep %s 2>/dev/null || exit 3; n=$((n - 1)); done'
                       % (steps, watch, WAIT_STEP))
            if self._shell(command) is not None:
                return
        time.sleep(max(0.0, due - time.time()))

    def run(self, tmp=None, task_vars=None):
        try:
            return self._run(tmp, task_vars)
        finally:
            try:
                self._remove_tmp_path(self._connection._shell.tmpdir)
            except AnsibleConnectionFailure:
                pass

    def _run(self, tmp, task_vars):
        result = super().run(tmp, task_vars)
        args = self._task.args
        for key in ('src', 'dest'):
            if not args.get(key) or not isinstance(args.get(key), str):
                raise AnsibleActionFail('follow: %s is required' % key)
        try:
            interval = max(0.0, float(args.get('interval', 10)))
            host_interval = max(0.0, float(args.get('host_interval', 60)))
            job_index = int(args.get('job_index', 0))
            jobs = int(args.get('jobs', 1))
        except (TypeError, ValueError) as exc:
            raise AnsibleActionFail('follow: interval, host_interval, job_index and jobs must be numbers: %s' % exc)
        run = str(args.get('run') or '')
        state = args.get('state') if isinstance(args.get('state'), dict) else {}
        if state.get('run', '') != run:
            state = {}
        jid = str(args.get('jid') or '')
        marker = str(args.get('marker') or '')
        name = str(args.get('name') or '%s -> %s' % (args['src'], args['dest']))
        before = state.get('current') if isinstance(state.get('current'), dict) else {}
        same_job = before.get('job_index') == job_index and not before.get('over')

        # Wait until this host's next look is due (a host later in the round waited already),
        # or until the move ends, whichever comes first.
        if same_job and before.get('looked_at'):
            self._wait(float(before['looked_at']) + interval, before)

        adopted = ''
        if args.get('adopt') and marker and not same_job:
            # A move started by an earlier play whose connection dropped left its
            # async job id here: follow that job and collect its result.
            text = self._shell('cat %s 2>/dev/null || true' % self._marker_path(marker))
            if text is None:
                return self._unreachable(result, state, name, job_index, jobs,
                                         getattr(self, '_connection_error', '') or 'cannot read the async marker')
            adopted = text.strip() if text.strip().replace('.', '').replace('_', '').isalnum() else ''
            jid = adopted
        elif same_job and before.get('jid'):
            jid = before['jid']
            adopted = before.get('adopted') or ''

        if jid and not same_job and not adopted:
            # The first look at this play's move: a short move ends meanwhile.
            self._wait(time.time() + min(FIRST_WAIT, interval), {'jid': jid})
        ended = self._ended(jid) if jid else None
        if ended is not None:
            # The move ended: its result says what the journal would; no module run.
            info = {'exists': True, 'running': False, 'scan_complete': True,
                    'progress': _follow.progress_of_result(ended, before.get('progress') if same_job else None)}
        else:
            info = self._module('durable.mover.move_info', {
                'src': args['src'], 'dest': args['dest'], 'state_dir': args.get('state_dir'),
                'job_id': args.get('job_id'), 'max_failures_reported': 0}, task_vars)
        status = ended
        if status is None and jid and not info.get('unreachable') and not info.get('running'):
            status = self._async_status(jid, task_vars)
            if not status.get('unreachable') and not status.get('finished') and status.get('failed') \
                    and 'could not find job' in str(status.get('msg', '')):
                # No such job (already collected, or its results were removed): nothing to follow.
                status = {'finished': True, 'missing': True}
        kind = 'async' if jid else 'running'
        new_state = _follow.look(state, info, status, kind, name, job_index, jobs, run=run)
        current = new_state['current']
        current['looked_at'] = time.time()
        current['jid'] = jid
        if info.get('pid'):
            current['pid'] = info['pid']
        if adopted:
            current['adopted'] = adopted
        if status is not None and status.get('missing'):
            current['missing'] = True

        remove = []
        if current['over'] and kind == 'async' and status is not None and status.get('finished'):
            # The move ended: keep its result, and remove its async result file.
            if status.get('missing'):
                current['result'] = {'finished': True, 'failed': True,
                                     'msg': 'the async job %s of the move is gone (its result was collected or '
                                            'removed by someone else); run the play again' % jid}
            else:
                current['result'] = {k: v for k, v in status.items() if k not in RESULT_DROP}
                # (what async_status's cleanup removes, with the marker below: one command)
                remove.append(self._job_path(jid))

        if marker and not current.get('unreachable'):
            if kind == 'async' and current['looks'] == 1 and not adopted and not current['over']:
                # Where the next play finds this job if the connection drops.
                self._shell('mkdir -p %s && printf %%s %s > %s' % (
                    self._shell_path(self._async_dir()), shlex.quote(jid), self._marker_path(marker)))
            elif current['over'] and jid:
                remove.append(self._marker_path(marker))
        if remove:
            self._shell('rm -f %s' % ' '.join(remove))

        now = time.time()
        if _follow.host_line_due(current, now, host_interval) and not (kind == 'running' and current['over']
                                                                       and current['looks'] == 1):
            display.display(_follow.host_line(task_vars.get('inventory_hostname', ''), current))
            current['last_line'] = now
            current['last_status'] = current['status']
        # The look that collected the move's result reports its change (the
        # task that started the move in the background did not).
        changed = bool((current.get('result') or {}).get('changed')) and not (same_job and before.get('over'))
        result.update(changed=changed, over=current['over'], status=current['status'], pid=info.get('pid'),
                      adopted=adopted, ansible_facts={'migrate_follow': new_state})
        return result

    def _unreachable(self, result, state, name, job_index, jobs, msg):
        new_state = _follow.look(state, {'unreachable': True, 'msg': msg}, None, 'running', name, job_index, jobs,
                                 run=str(self._task.args.get('run') or ''))
        result.update(changed=False, over=True, status=_follow.STATUS_UNREACHABLE,
                      ansible_facts={'migrate_follow': new_state})
        return result
