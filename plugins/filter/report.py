# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Filters of the migrate and report roles: job lists, host results, progress, reports.

The documentation of each filter is in the YAML file named after it beside
this file. The work is done in module_utils/_report.py and _jobs.py, shared
with the unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible import template as _ansible_template
from ansible.errors import AnsibleFilterError

from ansible_collections.durable.mover.plugins.module_utils._jobs import job_list
from ansible_collections.durable.mover.plugins.module_utils._report import (
    SUMMARY_MAX_FAILURES,
    fleet_report,
    host_result,
    junit_xml,
    progress_line,
    summary_markdown,
)

if hasattr(_ansible_template, "trust_as_template"):
    # ansible-core >= 2.19: what a filter returns is never trusted as a
    # template, so a file named '{{ ... }}' stays text.
    def _untrusted(value):
        return value
else:
    # Older cores template a fact's strings again when it is read, and mark a
    # result unsafe only when the template read an unsafe variable. Mark the
    # report unsafe whatever its input was, so a path or a message from a host
    # ('{{ ... }}' is a valid file name) is never evaluated.
    from ansible.utils.unsafe_proxy import wrap_var as _untrusted


def _check_mapping(value, name: str, what: str) -> None:
    if not isinstance(value, Mapping):
        raise AnsibleFilterError(
            "durable.mover.%s: the input must be %s, not %s" % (name, what, type(value).__name__)
        )


def _host_names(value, name: str, option: str) -> list:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise AnsibleFilterError(
            "durable.mover.%s: %s must be a list of host names, not %s" % (name, option, type(value).__name__)
        )
    return list(value)


def fleet_report_filter(host_results, unreachable=None, pending=None):
    """``{host: registered result or None}`` -> fleet report dict."""
    _check_mapping(host_results, "fleet_report", "a dict of host name to move result")
    unreachable = _host_names(unreachable, "fleet_report", "unreachable")
    pending = _host_names(pending, "fleet_report", "pending")
    return _untrusted(fleet_report(host_results, unreachable, pending))


def host_result_filter(host):
    """``{jobs, preflight, ...}`` of one host -> the aggregated host result."""
    _check_mapping(host, "host_result", "a dict with jobs and preflight")
    return _untrusted(host_result(host))


def progress_line_filter(info, name=""):
    """A durable.mover.move_info result -> one line of progress text."""
    return _untrusted(progress_line(info, name))


def migrate_jobs_filter(jobs, src=None, dest=None, role_vars=None):
    """migrate_jobs, migrate_src/dest and the migrate_* variables -> the host's job list."""
    if role_vars is not None:
        _check_mapping(role_vars, "migrate_jobs", "a dict of variable name to value")
    return _untrusted(job_list(jobs, src=src, dest=dest, role_vars=role_vars))


def junit_xml_filter(fleet):
    """Fleet report -> JUnit XML text."""
    _check_mapping(fleet, "junit_xml", "a fleet report (the output of durable.mover.fleet_report)")
    return _untrusted(junit_xml(fleet))


def summary_markdown_filter(fleet, max_failures=SUMMARY_MAX_FAILURES):
    """Fleet report -> Markdown summary text."""
    _check_mapping(fleet, "summary_markdown", "a fleet report (the output of durable.mover.fleet_report)")
    try:
        max_failures = int(max_failures)
    except (TypeError, ValueError):
        raise AnsibleFilterError(
            "durable.mover.summary_markdown: max_failures must be an integer, not %r" % (max_failures,)
        )
    if max_failures < 0:
        raise AnsibleFilterError("durable.mover.summary_markdown: max_failures must not be negative")
    return _untrusted(summary_markdown(fleet, max_failures=max_failures))


class FilterModule:
    """durable.mover reporting filters."""

    def filters(self):
        return {
            "fleet_report": fleet_report_filter,
            "host_result": host_result_filter,
            "junit_xml": junit_xml_filter,
            "migrate_jobs": migrate_jobs_filter,
            "progress_line": progress_line_filter,
            "summary_markdown": summary_markdown_filter,
        }
