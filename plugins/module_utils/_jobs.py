# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The job list of the migrate role: which moves a host runs, with which options.

PRIVATE to the durable.mover collection; not a public API. The filter
``durable.mover.migrate_jobs`` calls it; it imports nothing from Ansible.

A host's jobs come from ``migrate_jobs`` (a list of ``{src, dest, options,
name}``) and from the single ``migrate_src``/``migrate_dest`` pair. Every
option ``X`` of ``durable.mover.move`` set as the variable ``migrate_X``
applies to every job, and a job's own ``options`` override it.
"""

from __future__ import annotations

from collections.abc import Mapping

# Every option of durable.mover.move but src and dest (tests/unit/test_jobs.py
# checks this against the module's argument spec).
MODULE_OPTIONS = (
    'mode', 'hash', 'verify_readback', 'buffer_size', 'checkpoint_size', 'workers', 'processes',
    'state_dir', 'job_id', 'max_attempts', 'retry_failed', 'lock_timeout', 'on_conflict', 'preserve',
    'special_files', 'remove_empty_dirs', 'exclude', 'cross_filesystems', 'audit_log',
    'max_failures_reported',
)
# Options of durable.mover.move that the role sets for one run, not for a job.
RUN_OPTIONS = ('prepared', 'preflight')
# Options of durable.mover.preflight shared with the move.
PREFLIGHT_OPTIONS = ('mode', 'hash', 'preserve', 'state_dir', 'job_id', 'exclude', 'on_conflict',
                     'special_files', 'cross_filesystems')
# Options that name one job: a value for all jobs would make them collide.
PER_JOB_OPTIONS = ('job_id',)
JOB_KEYS = ('src', 'dest', 'options', 'name')
NO_JOB = ('no job to run: set migrate_src and migrate_dest, or give migrate_jobs '
          '(a list of {src, dest, options})')


def _text(value):
    return '' if value is None else str(value)


def common_options(role_vars):
    """``{option: value}`` of the ``migrate_<option>`` variables that are set.

    Unset is null, or the empty string: the role hands the variables over as
    ``"{{ migrate_x | default(none) }}"``, which ansible-core before 2.19
    renders as '' (no option of the module takes '' as a value)."""
    if not isinstance(role_vars, Mapping):
        return {}
    found = {}
    for option in MODULE_OPTIONS:
        value = role_vars.get('migrate_' + option)
        if value is not None and not (isinstance(value, str) and value == ''):
            found[option] = value
    return found


def job_list(jobs, src=None, dest=None, role_vars=None):
    """The host's jobs: ``{'jobs': [{index, name, src, dest, params}], 'errors': [...]}``.

    ``params`` holds every option to pass to durable.mover.move (``src`` and
    ``dest`` included); an option not set anywhere is absent, so the module's
    default applies. ``errors`` lists what is wrong with the configuration,
    one sentence each; the jobs are then not to be run.
    """
    errors = []
    common = common_options(role_vars)
    pair_only = {key: common.pop(key) for key in PER_JOB_OPTIONS if key in common}
    entries = []
    if jobs is None:
        jobs = []
    if not isinstance(jobs, (list, tuple)):
        errors.append('migrate_jobs must be a list of {src, dest, options}, not %s' % type(jobs).__name__)
        jobs = []
    for number, job in enumerate(jobs, 1):
        if not isinstance(job, Mapping):
            errors.append('migrate_jobs item %d must be a dict with src and dest, not %r' % (number, job))
            continue
        unknown = sorted(set(job) - set(JOB_KEYS))
        if unknown:
            errors.append('migrate_jobs item %d: unknown key(s) %s (module options go under options)'
                          % (number, ', '.join(map(str, unknown))))
        options = job.get('options')
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            errors.append('migrate_jobs item %d: options must be a dict, not %r' % (number, options))
            options = {}
        bad = sorted(set(options) - set(MODULE_OPTIONS))
        if bad:
            errors.append('migrate_jobs item %d: unknown option(s) %s (choose from %s)'
                          % (number, ', '.join(map(str, bad)), ', '.join(MODULE_OPTIONS)))
        for key in ('src', 'dest'):
            if not _text(job.get(key)):
                errors.append('migrate_jobs item %d: %s is required' % (number, key))
        params = dict(common)
        params.update({key: value for key, value in options.items() if key in MODULE_OPTIONS and value is not None})
        entries.append((_text(job.get('src')), _text(job.get('dest')), _text(job.get('name')), params))
    if src is not None or dest is not None:
        if not _text(src) or not _text(dest):
            errors.append('migrate_src and migrate_dest go together: set both (or use migrate_jobs)')
        params = dict(common)
        params.update(pair_only)
        entries.append((_text(src), _text(dest), '', params))
    elif pair_only and entries:
        errors.append('migrate_job_id names the one job of migrate_src/migrate_dest; with migrate_jobs, '
                      'give each job its own options.job_id')
    if not entries and not errors:
        errors.append(NO_JOB)

    result = []
    seen = {}
    for index, (job_src, job_dest, name, params) in enumerate(entries):
        if (job_src, job_dest) in seen:
            errors.append('the job %s -> %s is listed twice' % (job_src, job_dest))
            continue
        seen[(job_src, job_dest)] = index
        params = dict(params, src=job_src, dest=job_dest)
        result.append({
            'index': len(result),
            'name': name or '%s -> %s' % (job_src, job_dest),
            'src': job_src,
            'dest': job_dest,
            'params': params,
        })
    return {'jobs': result, 'errors': errors}
