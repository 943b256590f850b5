# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet reporting for durable.mover: aggregate per-host move results.

PRIVATE to the durable.mover collection; not a public API. The filter plugin
``plugins/filter/report.py`` and the unit tests call it; it imports nothing
from Ansible and runs on Python 3.9+ with the standard library only.

The input is what ``durable.mover.move`` returns for each host (as registered
by a task), any key of which may be missing: a host that failed before the
module ran has no result at all, and an unreachable host only has
``unreachable``/``msg``. Every function here normalises first, so the rest of
the code never has to ask whether a key exists.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

# Integer counters of the module's ``stats``; ``resumed`` is the one bool.
STAT_KEYS = (
    "files_total",
    "files_moved",
    "files_already_done",
    "files_skipped",
    "files_failed",
    "files_quarantined",
    "dirs",
    "symlinks",
    "hardlinks",
    "special_skipped",
    "bytes_total",
    "bytes_moved",
)

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_UNREACHABLE = "unreachable"

MSG_NO_RESULT = "no result (host failed before the move ran)"
MSG_UNREACHABLE = "host unreachable"
MSG_SKIPPED = "the move task was skipped on this host"

# How many problems the Markdown summary lists ("first N of M" beyond that).
SUMMARY_MAX_FAILURES = 20

# Characters XML 1.0 cannot carry at all, not even as character references
# (C0 controls other than TAB/LF/CR, lone surrogates, U+FFFE and U+FFFF), and
# CR, which a parser would turn into LF.
_XML_INVALID = re.compile("[\x00-\x08\x0b-\x1f\ud800-\udfff\ufffe\uffff]")
# For one-line text (table cells, attributes read by people): every control
# character, including TAB/LF/CR and DEL/C1, is shown escaped.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


# ---------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------

def _as_int(value) -> int:
    """A counter as a non-negative int; anything unusable counts as 0."""
    if isinstance(value, bool):
        return int(value)
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        try:
            number = int(float(value))
        except (TypeError, ValueError, OverflowError):
            return 0
    return number if number > 0 else 0


def _as_float(value) -> float:
    """A duration or a rate as a finite non-negative float (else 0.0)."""
    if isinstance(value, bool):
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if math.isnan(number) or math.isinf(number) or number < 0:
        return 0.0
    return number


def _as_bool(value) -> bool:
    """A flag: real bools, and the strings Ansible/YAML use for them."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _normalise_failure(entry) -> dict:
    """One entry of ``failures``: always path, error, attempts, quarantined."""
    if not isinstance(entry, Mapping):
        return {"path": "", "error": _as_text(entry), "attempts": 0, "quarantined": False}
    return {
        "path": _as_text(entry.get("path")),
        "error": _as_text(entry.get("error")),
        "attempts": _as_int(entry.get("attempts")),
        "quarantined": _as_bool(entry.get("quarantined", False)),
    }


def normalise_result(result) -> dict:
    """One host's module result with every key present.

    Missing counters are 0, missing flags False, missing text "". The keys the
    reports do not read (``journal``, ``hash_algorithm``, ``plan``) are kept
    when present so a per-host report loses nothing.
    """
    if not isinstance(result, Mapping):
        result = {}
    raw_stats = result.get("stats")
    if not isinstance(raw_stats, Mapping):
        raw_stats = {}
    stats = {key: _as_int(raw_stats.get(key)) for key in STAT_KEYS}
    stats["resumed"] = _as_bool(raw_stats.get("resumed", False))

    raw_failures = result.get("failures")
    if isinstance(raw_failures, (list, tuple)):
        failures = [_normalise_failure(entry) for entry in raw_failures]
    else:
        failures = []

    normalised = {
        "changed": _as_bool(result.get("changed", False)),
        "failed": _as_bool(result.get("failed", False)),
        "unreachable": _as_bool(result.get("unreachable", False)),
        "skipped": _as_bool(result.get("skipped", False)),
        "msg": _as_text(result.get("msg")),
        "job_id": _as_text(result.get("job_id")),
        "journal": _as_text(result.get("journal")),
        "complete": _as_bool(result.get("complete", False)),
        "interrupted": _as_bool(result.get("interrupted", False)),
        "hash_algorithm": _as_text(result.get("hash_algorithm")),
        "stats": stats,
        "failures": failures,
        "elapsed_seconds": _as_float(result.get("elapsed_seconds")),
        "bytes_per_second": _as_float(result.get("bytes_per_second")),
    }
    if isinstance(result.get("plan"), Mapping):
        normalised["plan"] = dict(result["plan"])
    return normalised


def host_status(result, unreachable: bool = False) -> str:
    """'ok', 'failed' or 'unreachable' for one host's (raw) result.

    ``unreachable`` is what the caller knows from outside (the host had no
    connection); a result registered with ``ignore_unreachable`` says so
    itself. No result, a skipped task, ``failed``, or any failed file make a
    host 'failed': a report must never call a host ok that did not move.
    """
    if unreachable:
        return STATUS_UNREACHABLE
    if not isinstance(result, Mapping) or not result:
        return STATUS_FAILED
    norm = normalise_result(result)
    if norm["unreachable"]:
        return STATUS_UNREACHABLE
    if norm["failed"] or norm["skipped"] or norm["stats"]["files_failed"] > 0:
        return STATUS_FAILED
    return STATUS_OK


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------

def _host_entry(result, known_unreachable: bool) -> dict:
    status = host_status(result, unreachable=known_unreachable)
    norm = normalise_result(result)
    msg = norm["msg"]
    if status == STATUS_UNREACHABLE and not msg:
        msg = MSG_UNREACHABLE
    elif status == STATUS_FAILED and not msg:
        if not isinstance(result, Mapping) or not result:
            msg = MSG_NO_RESULT
        elif norm["skipped"]:
            msg = MSG_SKIPPED
        elif norm["stats"]["files_failed"]:
            msg = "%d file(s) failed to move" % norm["stats"]["files_failed"]
        else:
            msg = "the move failed without a message"
    entry = {
        "status": status,
        "changed": norm["changed"],
        "stats": norm["stats"],
        "failures": norm["failures"],
        "msg": msg,
        "job_id": norm["job_id"],
        "complete": norm["complete"],
        "interrupted": norm["interrupted"],
        "elapsed_seconds": norm["elapsed_seconds"],
        "bytes_per_second": norm["bytes_per_second"],
        "journal": norm["journal"],
        "hash_algorithm": norm["hash_algorithm"],
    }
    if "plan" in norm:
        entry["plan"] = norm["plan"]
    return entry


def fleet_report(host_results, unreachable=None) -> dict:
    """Aggregate ``{host: result or None}`` into one fleet report.

    ``unreachable`` lists hosts known to be unreachable; such a host may be
    missing from ``host_results``. Hosts are reported in sorted order so two
    runs over the same data give the same report.

    ``totals`` sums every counter of ``STAT_KEYS`` over all hosts and counts
    hosts by status. ``totals.bytes_per_second`` is the sum of the per-host
    rates (the fleet's throughput while the hosts move in parallel) and
    ``totals.elapsed_seconds`` the longest host's run.
    """
    if not isinstance(host_results, Mapping):
        host_results = {}
    unreachable_names = {_as_text(name) for name in (unreachable or ())}
    results = {_as_text(name): result for name, result in host_results.items()}
    for name in unreachable_names:
        results.setdefault(name, None)

    hosts = {}
    for name in sorted(results):
        hosts[name] = _host_entry(results[name], name in unreachable_names)

    totals = {key: sum(entry["stats"][key] for entry in hosts.values()) for key in STAT_KEYS}
    statuses = [entry["status"] for entry in hosts.values()]
    totals.update(
        hosts=len(hosts),
        hosts_ok=statuses.count(STATUS_OK),
        hosts_failed=statuses.count(STATUS_FAILED),
        hosts_unreachable=statuses.count(STATUS_UNREACHABLE),
        hosts_changed=sum(1 for entry in hosts.values() if entry["changed"]),
        bytes_per_second=sum(entry["bytes_per_second"] for entry in hosts.values()),
        elapsed_seconds=max((entry["elapsed_seconds"] for entry in hosts.values()), default=0.0),
    )
    return {"hosts": hosts, "totals": totals}


def _fleet_hosts(fleet) -> dict:
    """The ``hosts`` of a fleet report, re-normalised (input may be hand-made)."""
    if not isinstance(fleet, Mapping) or not isinstance(fleet.get("hosts"), Mapping):
        return {}
    hosts = {}
    for name, entry in fleet["hosts"].items():
        if not isinstance(entry, Mapping):
            entry = {}
        status = entry.get("status")
        if status not in (STATUS_OK, STATUS_FAILED, STATUS_UNREACHABLE):
            status = STATUS_FAILED
        norm = normalise_result(entry)
        norm["status"] = status
        hosts[_as_text(name)] = norm
    return hosts


# ---------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------

def _escape_char(match) -> str:
    char = match.group(0)
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        # A byte that was not UTF-8, decoded with surrogateescape: show the byte.
        return "\\x%02x" % (code - 0xDC00)
    if code <= 0xFF:
        return "\\x%02x" % code
    return "\\u%04x" % code


def xml_safe(text) -> str:
    """Text that XML 1.0 can carry: characters it cannot are shown escaped.

    ``\\x01`` becomes the four characters ``\\x01``; a surrogate-escaped byte
    becomes ``\\xNN`` of that byte; CR becomes ``\\x0d`` (a parser would read
    it as LF). TAB and LF are kept. ElementTree escapes ``<``, ``&`` and
    quotes itself. Attributes use :func:`one_line`, which escapes TAB and LF
    too.
    """
    return _XML_INVALID.sub(_escape_char, _as_text(text))


def one_line(text) -> str:
    """Text for one line a person reads: every control character escaped."""
    return _CONTROL.sub(_escape_char, _as_text(text))


def human_bytes(count) -> str:
    """A byte count in binary units: ``0 B``, ``512 B``, ``1.5 KiB``, ``2.0 GiB``."""
    value = _as_float(count)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024.0
        unit += 1
    if unit == 0:
        return "%d B" % int(value)
    return "%.1f %s" % (value, units[unit])


def human_rate(bytes_per_second) -> str:
    return human_bytes(bytes_per_second) + "/s"


# ---------------------------------------------------------------------------
# JUnit XML
# ---------------------------------------------------------------------------

def _seconds(value) -> str:
    return "%.3f" % _as_float(value)


def _file_failure_text(failure: dict) -> str:
    return "path: %s\nerror: %s\nattempts: %d\nquarantined: %s" % (
        one_line(failure["path"]),
        failure["error"],
        failure["attempts"],
        "yes" if failure["quarantined"] else "no",
    )


def junit_xml(fleet) -> str:
    """The fleet report as JUnit XML, for CI systems that show test results.

    One ``<testsuite>`` per host. Its first ``<testcase>`` is the host's move
    job (``move <job_id>``): it carries a ``<failure>`` when the host failed
    and an ``<error>`` when it was unreachable. Each reported failed or
    quarantined file adds a ``<testcase>`` named after its path with a
    ``<failure>``. Counts on every suite and on the root add up.
    """
    hosts = _fleet_hosts(fleet)
    root = ET.Element("testsuites", name="durable.mover")
    all_tests = all_failures = all_errors = 0
    all_time = 0.0
    for name, host in hosts.items():
        classname = one_line(name)
        suite = ET.SubElement(root, "testsuite", name=classname)
        tests = failures = errors = 0

        job_name = "move %s" % host["job_id"] if host["job_id"] else "move"
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=one_line(job_name),
            time=_seconds(host["elapsed_seconds"]),
        )
        tests += 1
        stats = host["stats"]
        details = "files moved %d of %d, already done %d, failed %d, quarantined %d; bytes moved %d" % (
            stats["files_moved"], stats["files_total"], stats["files_already_done"],
            stats["files_failed"], stats["files_quarantined"], stats["bytes_moved"],
        )
        if host["status"] == STATUS_UNREACHABLE:
            element = ET.SubElement(
                case, "error", type="unreachable", message=one_line(host["msg"] or MSG_UNREACHABLE),
            )
            element.text = xml_safe(host["msg"] or MSG_UNREACHABLE)
            errors += 1
        elif host["status"] == STATUS_FAILED:
            message = host["msg"] or "move failed"
            element = ET.SubElement(case, "failure", type="move", message=one_line(message))
            element.text = xml_safe("%s\n%s" % (message, details))
            failures += 1
        else:
            out = ET.SubElement(case, "system-out")
            out.text = xml_safe("%s\n%s" % (host["msg"], details) if host["msg"] else details)

        for failure in host["failures"]:
            file_case = ET.SubElement(
                suite, "testcase", classname=classname,
                name=one_line(failure["path"] or "(unknown path)"),
            )
            kind = "quarantined" if failure["quarantined"] else "file"
            element = ET.SubElement(
                file_case, "failure", type=kind, message=one_line(failure["error"] or "failed"),
            )
            element.text = xml_safe(_file_failure_text(failure))
            tests += 1
            failures += 1

        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
        suite.set("skipped", "0")
        suite.set("time", _seconds(host["elapsed_seconds"]))
        all_tests += tests
        all_failures += failures
        all_errors += errors
        all_time += host["elapsed_seconds"]

    root.set("tests", str(all_tests))
    root.set("failures", str(all_failures))
    root.set("errors", str(all_errors))
    root.set("time", _seconds(all_time))
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


# ---------------------------------------------------------------------------
# Markdown summary
# ---------------------------------------------------------------------------

# Markup characters; '_' only where it could open or close emphasis: inside a
# word (host_name, migrate_dest) it cannot, and stays readable in a terminal.
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z]))")
_WHITESPACE_RUN = re.compile(r"[ \t\n\r]+")
# Messages longer than this are cut in the summary (fleet.json has them whole).
SUMMARY_MAX_MESSAGE = 300


def md_text(text, limit: int = 0) -> str:
    """Plain text for Markdown on one line: markup and control characters escaped.

    Line breaks and tabs become single spaces (messages from Ansible span many
    lines); with ``limit``, longer text is cut and ends with ``...``.
    """
    text = _WHITESPACE_RUN.sub(" ", _as_text(text)).strip()
    if limit and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    # Markup first: the backslashes of the control-character escapes must stay single.
    return one_line(_MD_SPECIAL.sub(r"\\\1", text))


def md_code(text) -> str:
    """Text as an inline code span, whatever backticks it contains."""
    text = one_line(text)
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or not text.strip():
        text = " %s " % text
    return "%s%s%s" % (fence, text, fence)


def summary_markdown(fleet, max_failures: int = SUMMARY_MAX_FAILURES) -> str:
    """The fleet report as Markdown for a CI page: a table and the first failures."""
    hosts = _fleet_hosts(fleet)
    max_failures = _as_int(max_failures)
    counts = {STATUS_OK: 0, STATUS_FAILED: 0, STATUS_UNREACHABLE: 0}
    totals = {key: 0 for key in STAT_KEYS}
    total_rate = 0.0
    lines = [
        "# durable.mover migration report",
        "",
    ]
    rows = []
    for name, host in hosts.items():
        counts[host["status"]] += 1
        stats = host["stats"]
        for key in STAT_KEYS:
            totals[key] += stats[key]
        total_rate += host["bytes_per_second"]
        rows.append(
            "| %s | %s | %d / %d | %d | %s / %s | %d | %s |" % (
                md_text(name),
                host["status"],
                stats["files_moved"],
                stats["files_total"],
                stats["files_already_done"],
                human_bytes(stats["bytes_moved"]),
                human_bytes(stats["bytes_total"]),
                stats["files_failed"],
                human_rate(host["bytes_per_second"]),
            )
        )
    lines.append(
        "%d host(s): %d ok, %d failed, %d unreachable." % (
            len(hosts), counts[STATUS_OK], counts[STATUS_FAILED], counts[STATUS_UNREACHABLE],
        )
    )
    lines.append("")
    lines.append("| Host | Status | Files moved / total | Already done | Bytes moved / total | Failed files | Rate |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    lines.extend(rows)
    lines.append(
        "| **Total** | %d ok, %d failed, %d unreachable | %d / %d | %d | %s / %s | %d | %s |" % (
            counts[STATUS_OK], counts[STATUS_FAILED], counts[STATUS_UNREACHABLE],
            totals["files_moved"], totals["files_total"], totals["files_already_done"],
            human_bytes(totals["bytes_moved"]), human_bytes(totals["bytes_total"]),
            totals["files_failed"], human_rate(total_rate),
        )
    )

    planned = [host["plan"] for host in hosts.values() if isinstance(host.get("plan"), Mapping)]
    if planned:
        lines.append("")
        lines.append(
            "Check mode: nothing was moved. %d host(s) planned %d file(s), %s (%d already done, %d conflict(s))." % (
                len(planned),
                sum(_as_int(plan.get("files")) for plan in planned),
                human_bytes(sum(_as_int(plan.get("bytes")) for plan in planned)),
                sum(_as_int(plan.get("already_done")) for plan in planned),
                sum(_as_int(plan.get("conflicts")) for plan in planned),
            )
        )

    problems = []
    for name, host in hosts.items():
        if host["status"] != STATUS_OK:
            problems.append("- %s: %s: %s" % (md_code(name), host["status"], md_text(host["msg"] or host["status"], SUMMARY_MAX_MESSAGE)))
        for failure in host["failures"]:
            problems.append(
                "- %s: %s: %s (attempts: %d%s)" % (
                    md_code(name),
                    md_code(failure["path"]),
                    md_text(failure["error"] or "failed", SUMMARY_MAX_MESSAGE),
                    failure["attempts"],
                    ", quarantined" if failure["quarantined"] else "",
                )
            )
        unreported = host["stats"]["files_failed"] - len(host["failures"])
        if unreported > 0:
            problems.append("- %s: %d more failed file(s) not listed by the module" % (md_code(name), unreported))
    if problems:
        lines.append("")
        shown = problems[:max_failures]
        if len(problems) > len(shown):
            lines.append("## Failures (first %d of %d)" % (len(shown), len(problems)))
        else:
            lines.append("## Failures")
        lines.append("")
        lines.extend(shown)
    return "\n".join(lines) + "\n"
