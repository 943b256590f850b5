# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The result of a run: one builder for check mode, real runs and verify.

PRIVATE to the durable.mover collection; not a public API. The reporting
filter plugins read results with the same keys (see _report.py).
"""

from __future__ import annotations

from ansible_collections.durable.mover.plugins.module_utils._errors import display_path

STAT_KEYS = ('files_total', 'files_moved', 'files_already_done', 'files_skipped', 'files_failed',
             'files_quarantined', 'dirs', 'symlinks', 'hardlinks', 'special_skipped', 'conflicts_skipped',
             'mounts_skipped', 'setid_cleared', 'readback_from_cache', 'bytes_total', 'bytes_moved')
# Kinds of `skipped_entries` (mount points are listed in `mount_points`).
SKIP_KINDS = ('special_file', 'conflict', 'vanished')
PLAN_KEYS = ('files', 'bytes', 'renames', 'copies', 'conflicts', 'already_done', 'skipped')


def empty_stats():
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats['resumed'] = False
    return stats


def failure(path, error, attempts=1, quarantined=False):
    return {'path': display_path(path), 'error': str(error), 'attempts': int(attempts or 0),
            'quarantined': bool(quarantined)}


def mount_point(path, reason):
    return {'path': display_path(path), 'reason': str(reason)}


def not_from_device(path, reason):
    return {'path': display_path(path), 'reason': str(reason)}


def unverifiable(path, reason):
    """A file verify counted but could not check (its content has nothing to be compared with)."""
    return {'path': display_path(path), 'reason': str(reason)}


def skipped_entry(path, kind, reason):
    return {'path': display_path(path), 'kind': kind, 'reason': str(reason)}


def build(job_id, journal_path, hash_algorithm, stats, failures, elapsed, changed,
          complete, interrupted, errors=(), plan=None, mode='move', mount_points=(), readback_from_cache=(),
          unverifiable=None, reasons=None, skipped=()):
    """The module's result dict. `errors`: run-level errors (e.g. disk full).
    `mount_points`: those inside src left alone (mount_point() each).
    `readback_from_cache`: files whose read-back could not come from the
    device (not_from_device() each). `skipped`: entries skipped by decision
    (skipped_entry() each; a sample of each kind). In verify mode:
    `unverifiable` (the files that could not be checked, at most
    max_failures_reported) and `reasons` ({why: how many}, of all)."""
    result = {
        'changed': bool(changed),
        'job_id': job_id,
        'journal': journal_path,
        'mode': mode,
        'complete': bool(complete),
        'interrupted': bool(interrupted),
        'hash_algorithm': hash_algorithm,
        'stats': stats,
        'failures': list(failures),
        'mount_points': list(mount_points),
        'readback_from_cache': list(readback_from_cache),
        # not 'skipped': Ansible reads that key as 'the task was skipped'
        'skipped_entries': list(skipped),
        'elapsed_seconds': round(elapsed, 3),
        'bytes_per_second': round(stats.get('bytes_moved', 0) / elapsed, 1) if elapsed > 0 else 0.0,
    }
    if plan is not None:
        result['plan'] = plan
    if mode == 'verify':
        result['unverifiable'] = list(unverifiable or ())
        result['unverifiable_reasons'] = dict(reasons or {})
    messages = [str(e) for e in errors]
    if stats.get('files_failed'):
        messages.append('%d file(s) failed (%d quarantined); see failures'
                        % (stats['files_failed'], stats.get('files_quarantined', 0)))
    if interrupted:
        messages.append('interrupted by a signal; the journal is consistent: run again to resume')
    if messages:
        result['failed'] = True
        if mode == 'verify':
            messages.append(summary(result))
        result['msg'] = '; '.join(messages)
    else:
        result['msg'] = summary(result)
    return result


def summary(result):
    text = _summary(result)
    stats = result['stats']
    if stats.get('special_skipped'):
        text += '; %d special file(s) left at the source (see skipped_entries)' % stats['special_skipped']
    if stats.get('conflicts_skipped'):
        text += '; %d conflict(s) skipped, left at the source (see skipped_entries)' % stats['conflicts_skipped']
    mounts = stats.get('mounts_skipped')
    if mounts:
        text += '; %d mount point(s) inside src left alone (see mount_points)' % mounts
    return text


def _summary(result):
    stats = result['stats']
    if 'plan' in result:
        plan = result['plan']
        return ('check mode: would move %d file(s), %d bytes (%d rename(s), %d copy(ies)), '
                '%d conflict(s), %d already done'
                % (plan['files'], plan['bytes'], plan['renames'], plan['copies'], plan['conflicts'],
                   plan['already_done']))
    if result.get('mode') == 'verify':
        return verify_summary(stats, result.get('unverifiable_reasons') or {})
    if not result['changed']:
        return 'nothing to do: %d file(s) already at the destination' % stats['files_already_done']
    return '%s %d file(s), %d bytes' % ('copied' if result.get('mode') == 'copy' else 'moved',
                                        stats['files_moved'], stats['bytes_moved'])


def verify_summary(stats, reasons):
    """'verified N of M files', and why the others could not be, if any were not."""
    text = 'verified %d of %d files' % (stats.get('files_verified', 0), stats.get('files_total', 0))
    if stats.get('files_unverifiable'):
        why = ['%s (%d)' % (reason, count) for reason, count in sorted(reasons.items(), key=lambda r: -r[1])]
        why = ' and '.join([', '.join(why[:-1]), why[-1]]) if len(why) > 1 else ''.join(why)
        text += '; %d could not be verified because %s; see unverifiable' % (stats['files_unverifiable'], why)
    return text
