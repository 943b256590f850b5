# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Following moves while they run: one host's progress state and the fleet's line.

PRIVATE to the durable.mover collection; not a public API. The action plugins
``follow`` (one look at one host's job) and ``fleet_progress`` (the fleet's
line of one poll round) call it; it imports nothing from Ansible.

A host's follow state (the fact ``migrate_follow``) is a plain dict::

    {'polls': 12,                    # looks this play made at this host
     'current': {...},               # the job being followed (see look())
     'jobs': {'0': progress, ...}}   # the latest progress of every job followed so far

Progress is the job's, not the run's: files and bytes done are counted from
the job's journal (done or skipped, by any run of the job), out of the job's
total, so a resumed job goes on from where the earlier runs left it and a
number never goes back within a play. Rates and the ETA come from a moving
average over the looks of the last ``WINDOW`` seconds of this play.
"""

from __future__ import annotations

import math
import time

from ansible_collections.durable.mover.plugins.module_utils._report import (
    human_bytes,
    human_duration,
    human_rate,
    one_line,
    time_left,
)

# Seconds of looks the moving average spans (at least two looks are kept).
WINDOW = 60.0
MAX_SAMPLES = 32
PROGRESS_KEYS = ('files_total', 'files_done', 'files_failed', 'bytes_total', 'bytes_done')

STATUS_STARTING = 'starting'
STATUS_LISTING = 'listing'
STATUS_MOVING = 'moving'
STATUS_WAITING = 'waiting for an earlier run'
STATUS_FINISHED = 'finished'
STATUS_FAILED = 'failed'
STATUS_UNREACHABLE = 'unreachable'
OVER = (STATUS_FINISHED, STATUS_FAILED, STATUS_UNREACHABLE)

HOST_DONE, HOST_RUNNING, HOST_FAILED, HOST_UNREACHABLE = 'done', 'running', 'failed', 'unreachable'


def _int(value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        try:
            number = int(float(value))
        except (TypeError, ValueError):
            return 0
    return max(number, 0)


def _float(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if not math.isnan(number) and number >= 0 else 0.0


def progress_of(info):
    """The job-level counters of a move_info result (all zero without a journal)."""
    raw = info.get('progress') if isinstance(info, dict) and isinstance(info.get('progress'), dict) else {}
    return {key: _int(raw.get(key)) for key in PROGRESS_KEYS}


def progress_of_result(result, before=None):
    """The job-level counters of a move that ended, from its result (its stats),
    as move_info would count them from the journal: every file but the failed
    ones done when the job is complete, else what the last look saw (the done
    counters never go back: _monotonic)."""
    stats = result.get('stats') if isinstance(result, dict) and isinstance(result.get('stats'), dict) else {}
    progress = {key: _int(stats.get(key)) for key in ('files_total', 'bytes_total', 'files_failed')}
    complete = bool(result.get('complete'))
    progress['files_done'] = max(0, progress['files_total'] - progress['files_failed']) if complete else 0
    progress['bytes_done'] = progress['bytes_total'] if complete else 0
    return _monotonic(progress, before if isinstance(before, dict) else None)


def _monotonic(progress, before):
    """Done counters never go back within a play (a look can only race a commit)."""
    if not before:
        return progress
    merged = dict(progress)
    for key in ('files_done', 'bytes_done'):
        merged[key] = max(progress[key], _int(before.get(key)))
    for key, done in (('files_total', 'files_done'), ('bytes_total', 'bytes_done')):
        merged[key] = max(merged[key], merged[done])
    return merged


def moving_average(samples, now_progress, now, window=WINDOW):
    """Append a look to ``samples`` ([t, files_done, bytes_done], oldest first) and
    return (samples kept, files per second, bytes per second) over the window."""
    kept = [list(s) for s in samples if isinstance(s, (list, tuple)) and len(s) == 3]
    kept.append([round(now, 3), now_progress['files_done'], now_progress['bytes_done']])
    while len(kept) > 2 and (now - kept[1][0] >= window or len(kept) > MAX_SAMPLES):
        kept.pop(0)
    first, last = kept[0], kept[-1]
    span = last[0] - first[0]
    if span <= 0:
        return kept, 0.0, 0.0
    return kept, max(0.0, (last[1] - first[1]) / span), max(0.0, (last[2] - first[2]) / span)


def eta_seconds(progress, files_rate, bytes_rate):
    """Seconds left at the current (moving-average) rates, or None when they
    cannot say: _report.time_left over the job's files and bytes left."""
    files_left = max(0, progress['files_total'] - progress['files_done'] - progress['files_failed'])
    bytes_left = max(0, progress['bytes_total'] - progress['bytes_done'])
    return time_left(files_left, bytes_left, files_rate, bytes_rate)[0]


def look(state, info, async_status, kind, name, job_index, jobs, now=None, run=''):
    """The new follow state of a host after one look at its job.

    ``info``: what move_info returned (or {'unreachable': True, 'msg': ...});
    ``async_status``: async_status's result when it was asked (the move looked
    not running), else None; ``kind``: 'async' (this play's move: over once
    async_status says finished) or 'running' (a run of an earlier play: over
    once move_info says it no longer runs).
    """
    now = time.time() if now is None else now
    state = dict(state) if isinstance(state, dict) else {}
    if state.get('run', '') != run:
        state = {}      # the state of an earlier play (facts outlive a play)
    jobs_seen = dict(state.get('jobs') or {})
    before = state.get('current') if isinstance(state.get('current'), dict) else {}
    same_job = before.get('job_index') == job_index and before.get('kind') == kind and not before.get('over')
    if not same_job:
        before = {}
    current = {
        'name': name, 'kind': kind, 'job_index': job_index, 'jobs': jobs,
        'looks': _int(before.get('looks')) + 1,
        'started': before.get('started') or now,
        'last_line': before.get('last_line'), 'last_status': before.get('last_status'),
        'msg': '',
    }
    info = info if isinstance(info, dict) else {}
    if info.get('unreachable') or (async_status or {}).get('unreachable'):
        msg = info.get('msg') if info.get('unreachable') else (async_status or {}).get('msg')
        last = before.get('progress') or jobs_seen.get(str(job_index)) or {}
        progress = progress_of({'progress': last})
        current.update(status=STATUS_UNREACHABLE, over=True, unreachable=True,
                       msg='host unreachable: %s' % one_line(msg or ''), progress=progress,
                       samples=before.get('samples') or [], files_per_second=0.0, bytes_per_second=0.0,
                       eta_seconds=None)
    else:
        has_journal = bool(info.get('exists'))
        progress = _monotonic(progress_of(info), before.get('progress'))
        running = bool(info.get('running'))
        if kind == 'async':
            finished = async_status is not None and bool(async_status.get('finished')) and not running
        else:
            finished = not running
        if finished:
            failed = bool((async_status or {}).get('failed')) or _int((async_status or {}).get('stats', {}).get(
                'files_failed') if isinstance((async_status or {}).get('stats'), dict) else 0) > 0
            status = STATUS_FAILED if failed else STATUS_FINISHED
        elif kind == 'running':
            status = STATUS_WAITING
        elif not has_journal or not running:
            status = STATUS_STARTING
        elif not info.get('scan_complete', True):
            status = STATUS_LISTING
        else:
            status = STATUS_MOVING
        samples, files_rate, bytes_rate = moving_average(before.get('samples') or [], progress, now)
        eta = None
        if status in (STATUS_MOVING, STATUS_WAITING) and info.get('scan_complete', True):
            eta = eta_seconds(progress, files_rate, bytes_rate)
        current.update(status=status, over=finished, unreachable=False, progress=progress, samples=samples,
                       files_per_second=round(files_rate, 1), bytes_per_second=round(bytes_rate, 1),
                       eta_seconds=eta, scan_complete=bool(info.get('scan_complete', True)),
                       msg=one_line(info.get('msg') or '') if info.get('failed') else '')
    if current.get('progress') and (has_progress(current['progress']) or str(job_index) not in jobs_seen):
        jobs_seen[str(job_index)] = current['progress']
    return {'run': run, 'polls': _int(state.get('polls')) + 1, 'current': current, 'jobs': jobs_seen}


def has_progress(progress):
    return any(_int(progress.get(key)) for key in PROGRESS_KEYS)


def host_line_due(current, now, interval):
    """Print this host's line now? On a change of status, and every ``interval`` seconds."""
    if current.get('status') != current.get('last_status') or current.get('last_line') is None:
        return True
    return now - _float(current.get('last_line')) >= _float(interval)


def _count(done, total):
    return '%d/%d (%s)' % (done, total, '%.1f%%' % (100.0 * done / total) if total else '100.0%')


def _bytes(done, total):
    return '%s/%s (%s)' % (human_bytes(done), human_bytes(total),
                           '%.1f%%' % (100.0 * done / total) if total else '100.0%')


def _rates(files_rate, bytes_rate):
    return '%s, %s files/s' % (human_rate(bytes_rate), ('%.1f' % files_rate) if files_rate < 10 else '%d' % files_rate)


def host_line(host, current):
    """One line for one host's job: its status, job-level counts, rates and ETA."""
    progress = current.get('progress') or {}
    parts = ['%s: %s: %s' % (one_line(host), one_line(current.get('name') or 'job'), current.get('status'))]
    bare = current.get('status') == STATUS_STARTING and not has_progress(progress)
    if current.get('status') == STATUS_UNREACHABLE or bare:
        if current.get('msg'):
            parts.append(current['msg'])
        return ', '.join(parts)
    listing = current.get('status') == STATUS_LISTING
    parts.append('files %s%s' % (_count(progress.get('files_done', 0), progress.get('files_total', 0)),
                                 ' so far' if listing else ''))
    parts.append('bytes %s' % _bytes(progress.get('bytes_done', 0), progress.get('bytes_total', 0)))
    if progress.get('files_failed'):
        parts.append('%d failed' % progress['files_failed'])
    if current.get('status') in (STATUS_MOVING, STATUS_LISTING, STATUS_WAITING, STATUS_STARTING):
        parts.append(_rates(_float(current.get('files_per_second')), _float(current.get('bytes_per_second'))))
        eta = current.get('eta_seconds')
        parts.append('ETA %s' % (human_duration(eta) if eta is not None else
                                 'after the listing' if listing else 'unknown'))
    if current.get('msg'):
        parts.append(current['msg'])
    return ', '.join(parts)


def _follow_of(facts):
    follow = facts.get('migrate_follow') if isinstance(facts.get('migrate_follow'), dict) else {}
    return follow if follow.get('run', '') == facts.get('migrate_follow_run', '') else {}


def host_status(facts):
    """'done', 'running', 'failed' or 'unreachable' of one host, from its facts
    (migrate_follow, migrate_follow_run, migrate_job_results, migrate_plan, migrate_unreachable_msg,
    migrate_result, migrate_running)."""
    follow = _follow_of(facts)
    current = follow.get('current') if isinstance(follow.get('current'), dict) else {}
    result = facts.get('migrate_result') if isinstance(facts.get('migrate_result'), dict) else None
    if facts.get('migrate_unreachable_msg') or current.get('unreachable'):
        return HOST_UNREACHABLE
    if current and not current.get('over'):
        return HOST_RUNNING
    if result is not None and not facts.get('migrate_running'):
        if result.get('unreachable'):
            return HOST_UNREACHABLE
        return HOST_FAILED if result.get('failed') else HOST_DONE
    recorded = facts.get('migrate_job_results') if isinstance(facts.get('migrate_job_results'), list) else []
    plan = facts.get('migrate_plan') if isinstance(facts.get('migrate_plan'), dict) else {}
    total = len(plan.get('jobs') or [])
    finished = len(recorded)
    if current.get('over') and current.get('kind') == 'async' and current.get('job_index') == finished:
        finished += 1
    if plan.get('errors'):
        return HOST_FAILED
    if finished < total:
        return HOST_RUNNING
    failed = any(isinstance(job, dict) and (job.get('failed') or job.get('unreachable')) for job in recorded)
    if current.get('over') and current.get('status') == STATUS_FAILED:
        failed = True
    return HOST_FAILED if failed else HOST_DONE


def fleet_numbers(hosts):
    """{host: facts} -> the fleet's counts, sums, rates and ETA."""
    counts = {HOST_DONE: 0, HOST_RUNNING: 0, HOST_FAILED: 0, HOST_UNREACHABLE: 0}
    sums = dict.fromkeys(PROGRESS_KEYS, 0)
    files_rate = bytes_rate = 0.0
    etas = []
    unknown = False
    for facts in hosts.values():
        status = host_status(facts)
        counts[status] += 1
        follow = _follow_of(facts)
        for progress in (follow.get('jobs') or {}).values():
            for key in PROGRESS_KEYS:
                sums[key] += _int((progress or {}).get(key))
        current = follow.get('current') if isinstance(follow.get('current'), dict) else {}
        if status == HOST_RUNNING and current and not current.get('over'):
            files_rate += _float(current.get('files_per_second'))
            bytes_rate += _float(current.get('bytes_per_second'))
            if current.get('eta_seconds') is None:
                unknown = True
            else:
                etas.append(_float(current['eta_seconds']))
    return {'hosts': counts, 'progress': sums, 'files_per_second': files_rate, 'bytes_per_second': bytes_rate,
            'eta_seconds': None if unknown or not etas else max(etas), 'eta_known': not unknown}


def fleet_line(hosts, poll):
    """The fleet's line of one poll round."""
    numbers = fleet_numbers(hosts)
    counts, sums = numbers['hosts'], numbers['progress']
    if counts[HOST_RUNNING] == 0:
        eta = '-'
    elif numbers['eta_seconds'] is not None:
        eta = human_duration(numbers['eta_seconds'])
    else:
        eta = 'unknown'
    return ('FLEET poll %d: %d host(s): %d done, %d running, %d failed, %d unreachable | files %s | bytes %s | %s | ETA %s'
            % (poll, len(hosts), counts[HOST_DONE], counts[HOST_RUNNING], counts[HOST_FAILED],
               counts[HOST_UNREACHABLE], _count(sums['files_done'], sums['files_total']),
               _bytes(sums['bytes_done'], sums['bytes_total']),
               _rates(numbers['files_per_second'], numbers['bytes_per_second']), eta))


def polls_of(facts):
    """How many looks this play made at one host (all its jobs)."""
    return _int(_follow_of(facts).get('polls'))


def looks_of(facts):
    """A number that changes whenever the host was looked at (its looks so far this play)."""
    return _int(_follow_of(facts).get('polls'))
