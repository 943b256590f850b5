# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A job's state and progress, read from its journal without touching any file.

PRIVATE to the durable.mover collection; not a public API.
"""

from __future__ import annotations

import os
import time

from ansible_collections.durable.mover.plugins.module_utils import _lock, _mover, _result
from ansible_collections.durable.mover.plugins.module_utils._errors import display_path
from ansible_collections.durable.mover.plugins.module_utils._journal import JOURNAL_NAME, STATES, Journal
from ansible_collections.durable.mover.plugins.module_utils._report import time_left


def job_info(params):
    """Progress of the job named by job_id, or by src and dest."""
    state_root = os.path.abspath(params.get('state_dir') or _mover.DEFAULT_STATE_DIR)
    identity = {}
    if params.get('job_id'):
        job_id = str(params['job_id'])
    else:
        opts = _mover.Options.from_params(dict(src=params.get('src'), dest=params.get('dest'),
                                               state_dir=state_root))
        job = _mover.Job(opts)
        job_id = job.job_id
        identity = job.identity
    state_dir = os.path.join(state_root, job_id)
    path = os.path.join(state_dir, JOURNAL_NAME)
    info = {'changed': False, 'job_id': job_id, 'journal': path, 'exists': os.path.exists(path)}
    if not info['exists']:
        info.update(running=False, pid=None, complete=False)
        return info
    journal = Journal.open(path, identity, create=False, readonly=True)
    try:
        meta = journal.meta()
        counts = journal.counts()
        failures = [_result.failure(os.path.join(meta.get('src', ''), p) if p != '.' else meta.get('src', p),
                                    e, a, q) for p, e, a, q in
                    journal.failures(100 if params.get('max_failures_reported') is None
                                     else int(params['max_failures_reported']))]
        failed, quarantined = journal.failure_counts()
        dirs = journal.dir_count()
        kinds = journal.kind_counts()
    finally:
        journal.close()
    pid = _lock.holder_pid(state_dir)
    files_total = sum(c[0] for c in counts.values()) - kinds.get('dir', 0)
    bytes_total = sum(c[1] for c in counts.values())
    files_done = counts['done'][0] + counts['skipped'][0]
    bytes_done = counts['done'][1] + counts['skipped'][1]
    pending = sum(counts[s][0] for s in ('pending', 'copying', 'copied'))
    started = float(meta.get('run_started') or 0)
    finished = float(meta.get('run_finished') or 0)
    running = pid is not None
    end = time.time() if running or finished < started else finished
    elapsed = max(0.0, end - started) if started else 0.0
    bytes_this_run = max(0, counts['done'][1] - int(meta.get('run_start_bytes') or 0))
    files_this_run = max(0, counts['done'][0] - int(meta.get('run_start_files') or 0))
    rate = bytes_this_run / elapsed if elapsed > 0 else 0.0
    file_rate = files_this_run / elapsed if elapsed > 0 else 0.0
    remaining = max(0, bytes_total - bytes_done - counts['failed'][1])
    scan_complete = meta.get('scan_complete') == '1'
    eta, basis = time_left(pending, remaining, file_rate, rate) if running else (None, None)
    info.update(
        running=running,
        pid=pid if pid and pid > 0 else None,
        source=display_path(meta['src']) if meta.get('src') else meta.get('src'),
        destination=display_path(meta['dest']) if meta.get('dest') else meta.get('dest'),
        runs=int(meta.get('run', '0')),
        scan_complete=scan_complete,
        complete=scan_complete and pending == 0 and failed == 0,
        states={state: {'files': counts[state][0], 'bytes': counts[state][1]} for state in STATES},
        progress={
            'files_total': files_total, 'files_done': files_done, 'files_pending': pending,
            'files_failed': failed, 'files_quarantined': quarantined, 'dirs': max(0, dirs - 1),
            'bytes_total': bytes_total, 'bytes_done': bytes_done,
            'percent_files': round(100.0 * files_done / files_total, 1) if files_total else 100.0,
            'percent_bytes': round(100.0 * bytes_done / bytes_total, 1) if bytes_total else 100.0,
            'bytes_per_second': round(rate, 1), 'files_per_second': round(file_rate, 1),
            'elapsed_seconds': round(elapsed, 1),
            # While the source is listed, what is listed so far only gives the least time left.
            'eta_seconds': eta if scan_complete else None,
            'eta_lower_bound_seconds': None if scan_complete else eta,
            'eta_basis': basis,
        },
        failures=failures,
    )
    return info
