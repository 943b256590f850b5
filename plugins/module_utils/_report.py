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
    "conflicts_skipped",
    "mounts_skipped",
    "setid_cleared",
    "readback_from_cache",
    "bytes_total",
    "bytes_moved",
)

# Entries a move skipped by decision, by kind: the counter of ``stats`` that
# counts them, the name of their JUnit testcase, and the sentence for a count.
# Special files, conflicts and mount points stay at the source: a host with
# any is never reported as a plain ok.
SKIP_KINDS = (
    ("special_file", "special_skipped", "special files left at the source",
     "%d special file(s) left at the source (FIFOs, sockets, devices)"),
    ("conflict", "conflicts_skipped", "conflicts left at the source",
     "%d conflict(s) skipped (on_conflict=skip), left at the source"),
    ("mount_point", "mounts_skipped", "mount points left alone",
     "%d mount point(s) inside the source left alone (not entered, not removed)"),
    ("vanished", None, "entries gone before they were moved",
     "%d entr(ies) vanished from the source before they were moved (deleted by someone else)"),
)
LEFT_AT_SOURCE = ("special_file", "conflict", "mount_point")
# How many paths of each kind the Markdown summary shows (fleet.json and
# junit.xml have all the module listed).
SUMMARY_SAMPLE = 5

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

def time_left(files_left, bytes_left, files_per_second, bytes_per_second):
    """(seconds, 'files' or 'bytes'): the longer of the times the files left
    take at the file rate and the bytes left at the byte rate (small files
    are paced by the files, large ones by the bytes). (None, None) when
    something is left that has no rate to pace it: a large file being copied
    shows no byte rate until it is done, and a guess from files alone would
    promise too little. The one rule for every ETA (move_info, follow)."""
    found = []
    for left, rate, basis in ((files_left, files_per_second, 'files'), (bytes_left, bytes_per_second, 'bytes')):
        if left <= 0:
            found.append((0.0, basis))
        elif rate > 0:
            found.append((left / rate, basis))
        else:
            return None, None
    seconds, basis = max(found)
    return round(seconds, 1), basis


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


def _normalise_listed(entries, keys=("path", "reason")) -> list:
    """A list of path entries (mount_points, readback_from_cache, skipped_entries): each a
    dict with `keys` as text; anything else is dropped."""
    if not isinstance(entries, (list, tuple)):
        return []
    return [{key: _as_text(entry.get(key)) for key in keys} for entry in entries
            if isinstance(entry, Mapping) and "path" in entry]


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
        "skipped_entries": _normalise_listed(result.get("skipped_entries"), ("path", "kind", "reason")),
        "mount_points": _normalise_listed(result.get("mount_points")),
        "readback_from_cache": _normalise_listed(result.get("readback_from_cache")),
    }
    if isinstance(result.get("plan"), Mapping):
        normalised["plan"] = dict(result["plan"])
    return normalised


def skipped_groups(entry) -> list:
    """What a job or host (normalised) skipped, by kind: ``{kind, name, count,
    message, sample}`` for each kind with a count, ``sample`` the paths listed.

    ``skipped_entries`` of the module carry their kind; mount points come from
    ``mount_points``. A count is the module's counter (its lists are capped),
    and never less than the paths listed (a hand-made result).
    """
    stats = entry["stats"]
    listed = {kind: [] for kind, _key, _name, _message in SKIP_KINDS}
    for item in entry.get("skipped_entries") or ():
        listed.setdefault(item["kind"] or "vanished", []).append(item["path"])
    listed["mount_point"] = [item["path"] for item in entry.get("mount_points") or ()]
    counted = {kind: stats[key] for kind, key, _name, _message in SKIP_KINDS if key}
    counted["vanished"] = max(0, stats["files_skipped"] - stats["special_skipped"] - stats["conflicts_skipped"])
    groups = []
    for kind, _key, name, message in SKIP_KINDS:
        count = max(counted[kind], len(listed[kind]))
        if count:
            groups.append({"kind": kind, "name": name, "count": count, "message": message % count,
                           "sample": listed[kind]})
    return groups


def left_at_source(entry) -> int:
    """How many entries a job or host left at the source on purpose (skipped
    special files and conflicts, mount points left alone)."""
    return sum(group["count"] for group in skipped_groups(entry) if group["kind"] in LEFT_AT_SOURCE)


def notes(entry) -> list:
    """Sentences for what an operator must know before wiping the source, beyond
    failures: what was left there, set-id bits cleared, read-backs not from the device."""
    found = [group["message"] for group in skipped_groups(entry)]
    stats = entry["stats"]
    if stats["setid_cleared"]:
        found.append(setid_message(stats["setid_cleared"]))
    if stats["readback_from_cache"]:
        found.append(readback_message(stats["readback_from_cache"]))
    return found


def setid_message(count) -> str:
    return "%d %s set-id/sticky bits (the owner was not kept)" % (
        count, "entry lost its" if count == 1 else "entries lost their")


def readback_message(count) -> str:
    return ("%d file(s) read back from the page cache, not the device (no O_DIRECT at the destination, "
            "or data inline in its metadata)" % count)


def status_text(entry) -> str:
    """A host's or job's status as a person reads it: ``ok``, or ``ok, 5 left at the source``."""
    left = left_at_source(entry)
    if left:
        return "%s, %d left at the source" % (entry["status"], left)
    others = sum(group["count"] for group in skipped_groups(entry))
    return "%s, %d skipped" % (entry["status"], others) if others else entry["status"]


def _job_status(norm) -> str:
    """'ok', 'failed' or 'unreachable' for one normalised job result."""
    if norm["unreachable"]:
        return STATUS_UNREACHABLE
    if norm["failed"] or norm["skipped"] or norm["stats"]["files_failed"] > 0:
        return STATUS_FAILED
    return STATUS_OK


def _job_message(norm, status) -> str:
    msg = norm["msg"]
    if msg:
        return msg
    if status == STATUS_UNREACHABLE:
        return MSG_UNREACHABLE
    if status == STATUS_FAILED:
        if norm["skipped"]:
            return MSG_SKIPPED
        if norm["stats"]["files_failed"]:
            return "%d file(s) failed to move" % norm["stats"]["files_failed"]
        return "the move failed without a message"
    return ""


def job_name(src, dest, job_id="") -> str:
    """How a job is named in reports: ``<src> -> <dest>`` (as the migrate role names
    it), else ``move <job_id>`` (a bare module result)."""
    if src or dest:
        return "%s -> %s" % (src, dest)
    return "move %s" % job_id if job_id else "move"


def job_entry(job) -> dict:
    """One job of a host: a move result (foreground or from async_status) with its src and dest.

    The role adds ``name``, ``src`` and ``dest`` to the module's result; a job
    that never ran (its preflight failed, the host became unreachable) is just
    ``failed``/``unreachable`` and ``msg``. Normalising an entry again gives
    the same entry.
    """
    if not isinstance(job, Mapping):
        job = {}
    norm = normalise_result(job)
    if not job:
        norm["failed"] = True
        norm["msg"] = MSG_NO_RESULT
    status = _job_status(norm)
    src = _as_text(job.get("src"))
    dest = _as_text(job.get("dest"))
    entry = {
        "name": _as_text(job.get("name")) or job_name(src, dest, norm["job_id"]),
        "src": src,
        "dest": dest,
        "status": status,
        "changed": norm["changed"],
        "failed": status == STATUS_FAILED,
        "unreachable": status == STATUS_UNREACHABLE,
        "msg": _job_message(norm, status),
        "job_id": norm["job_id"],
        "journal": norm["journal"],
        "complete": norm["complete"],
        "interrupted": norm["interrupted"],
        "hash_algorithm": norm["hash_algorithm"],
        "stats": norm["stats"],
        "failures": norm["failures"],
        "elapsed_seconds": norm["elapsed_seconds"],
        "bytes_per_second": norm["bytes_per_second"],
        "skipped_entries": norm["skipped_entries"],
        "mount_points": norm["mount_points"],
        "readback_from_cache": norm["readback_from_cache"],
    }
    if "plan" in norm:
        entry["plan"] = norm["plan"]
    if isinstance(job.get("last_progress"), Mapping) and job["last_progress"]:
        # The role's last look at a job whose host became unreachable.
        last = dict(job["last_progress"])
        entry["last_progress"] = last
        if status == STATUS_UNREACHABLE and last.get("files_total") and "(last seen: " not in entry["msg"]:
            entry["msg"] = "%s (last seen: %d of %d files done, %s of %s)" % (
                entry["msg"], _as_int(last.get("files_done")), _as_int(last.get("files_total")),
                human_bytes(last.get("bytes_done")), human_bytes(last.get("bytes_total")))
    return entry


def preflight_entry(found) -> dict:
    """One job's preflight as the role records it: name, src, dest, ok, problems, findings."""
    if not isinstance(found, Mapping):
        found = {}
    problems = found.get("problems")
    problems = [_as_text(p) for p in problems] if isinstance(problems, (list, tuple)) else []
    findings = found.get("findings")
    entry = {
        "name": _as_text(found.get("name")),
        "src": _as_text(found.get("src")),
        "dest": _as_text(found.get("dest")),
        "ok": _as_bool(found.get("ok", not problems)) and not problems,
        "problems": problems,
        "findings": dict(findings) if isinstance(findings, Mapping) else {},
    }
    if found.get("msg"):
        entry["msg"] = _as_text(found.get("msg"))
    return entry


def _sum_plans(plans) -> dict:
    keys = []
    for plan in plans:
        keys.extend(key for key in plan if key not in keys)
    return {key: sum(_as_int(plan.get(key)) for plan in plans) for key in keys}


def host_result(host) -> dict:
    """A host's jobs aggregated into one result: what the migrate role records.

    ``host`` is ``{'jobs': [...], 'preflight': [...]}`` with optional
    host-level ``failed``/``unreachable``/``msg`` (for what went wrong outside
    any job). Stats are summed over the jobs, failures concatenated; the host
    changed if any job did, failed if any job failed or the host-level flag
    says so, unreachable if any job or the flag says so. A host without jobs
    has failed (nothing ran). Aggregating a result again gives the same result.
    """
    if not isinstance(host, Mapping):
        host = {}
    raw_jobs = host.get("jobs")
    jobs = [job_entry(job) for job in raw_jobs] if isinstance(raw_jobs, (list, tuple)) else []
    raw_pre = host.get("preflight")
    preflight = [preflight_entry(p) for p in raw_pre] if isinstance(raw_pre, (list, tuple)) else []
    host_msg = _as_text(host.get("host_msg"))
    unreachable = _as_bool(host.get("unreachable", False)) or any(j["unreachable"] for j in jobs)
    # idle: a host of a shard group that the shard plan gave nothing to move
    idle = _as_bool(host.get("idle", False)) and not jobs
    failed = _as_bool(host.get("host_failed", False)) or (not jobs and not idle) or \
        any(j["status"] == STATUS_FAILED for j in jobs)

    stats = {key: sum(j["stats"][key] for j in jobs) for key in STAT_KEYS}
    stats["resumed"] = any(j["stats"]["resumed"] for j in jobs)
    # Jobs run one after the other: the host's time is their sum, its rate
    # the bytes of all over that time (one job: the module's own figures).
    elapsed = sum(j["elapsed_seconds"] for j in jobs)
    if len(jobs) == 1:
        rate = jobs[0]["bytes_per_second"]
    elif elapsed > 0:
        rate = stats["bytes_moved"] / elapsed
    else:
        rate = 0.0

    messages = [host_msg] if host_msg else []
    if len(jobs) == 1:
        if jobs[0]["msg"]:
            messages.append(jobs[0]["msg"])
    elif jobs:
        bad = [j for j in jobs if j["status"] != STATUS_OK]
        shown = bad if bad else jobs
        if not bad:
            messages.append("%d jobs" % len(jobs))
        messages.extend("%s: %s" % (j["name"], j["msg"] or j["status"]) for j in shown)
    elif not host_msg:
        messages.append(MSG_UNREACHABLE if unreachable else MSG_NO_RESULT)

    def one(key):
        values = [j[key] for j in jobs if j[key]]
        return values[0] if len(jobs) == 1 and values else ""

    result = {
        "changed": any(j["changed"] for j in jobs),
        "failed": failed and not unreachable,
        "unreachable": unreachable,
        "msg": "; ".join(messages),
        "job_id": one("job_id"),
        "journal": one("journal"),
        "complete": bool(jobs) and all(j["complete"] for j in jobs),
        "interrupted": any(j["interrupted"] for j in jobs),
        "hash_algorithm": ", ".join(sorted({j["hash_algorithm"] for j in jobs if j["hash_algorithm"]})),
        "stats": stats,
        "failures": [f for j in jobs for f in j["failures"]],
        "elapsed_seconds": elapsed,
        "bytes_per_second": rate,
        "skipped_entries": [e for j in jobs for e in j["skipped_entries"]],
        "mount_points": [e for j in jobs for e in j["mount_points"]],
        "readback_from_cache": [e for j in jobs for e in j["readback_from_cache"]],
        "jobs": jobs,
        "preflight": preflight,
    }
    if host_msg:
        result["host_msg"] = host_msg
    if idle:
        result["idle"] = True
    if _as_bool(host.get("host_failed", False)):
        result["host_failed"] = True
    plans = [j["plan"] for j in jobs if "plan" in j]
    if plans:
        result["plan"] = _sum_plans(plans)
    return result


def _as_host(result, known_unreachable: bool = False) -> dict:
    """Any host result (the role's, a bare module result, or none) as a host_result()."""
    if isinstance(result, Mapping) and isinstance(result.get("jobs"), (list, tuple)):
        host = host_result(result)
    elif isinstance(result, Mapping) and result:
        # One registered durable.mover.move result: a host with one job.
        host = host_result({"jobs": [result]})
        host["msg"] = host["jobs"][0]["msg"]
    else:
        host = host_result({})
    if known_unreachable:
        host["unreachable"] = True
        host["failed"] = False
        if not host["msg"] or host["msg"] == MSG_NO_RESULT:
            host["msg"] = MSG_UNREACHABLE
    return host


def _status_of(host) -> str:
    if host["unreachable"]:
        return STATUS_UNREACHABLE
    if host["failed"] or not (host["jobs"] or host.get("idle")) or host["stats"]["files_failed"] > 0 or \
            any(j["status"] != STATUS_OK for j in host["jobs"]):
        return STATUS_FAILED
    return STATUS_OK


def host_status(result, unreachable: bool = False) -> str:
    """'ok', 'failed' or 'unreachable' for one host's (raw) result.

    ``unreachable`` is what the caller knows from outside (the host had no
    connection); a result registered with ``ignore_unreachable`` says so
    itself. No result, a skipped task, ``failed``, or any failed file or job
    make a host 'failed': a report must never call a host ok that did not move.
    """
    return _status_of(_as_host(result, unreachable))


# ---------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------

def _host_entry(result, known_unreachable: bool) -> dict:
    host = _as_host(result, known_unreachable)
    status = _status_of(host)
    msg = host["msg"]
    if not msg:
        msg = MSG_UNREACHABLE if status == STATUS_UNREACHABLE else (
            "the move failed without a message" if status == STATUS_FAILED else "")
    entry = {
        "status": status,
        "changed": host["changed"],
        "stats": host["stats"],
        "failures": host["failures"],
        "msg": msg,
        "preflight": host["preflight"],
        "jobs": host["jobs"],
        "job_id": host["job_id"],
        "complete": host["complete"],
        "interrupted": host["interrupted"],
        "elapsed_seconds": host["elapsed_seconds"],
        "bytes_per_second": host["bytes_per_second"],
        "journal": host["journal"],
        "hash_algorithm": host["hash_algorithm"],
        "skipped_kinds": skipped_groups(host),
        "left_at_source": left_at_source(host),
        "mount_points": host["mount_points"],
        "readback_from_cache": host["readback_from_cache"],
        "notes": notes(host),
    }
    if "plan" in host:
        entry["plan"] = host["plan"]
    if host.get("idle"):
        entry["idle"] = True
    return entry


def fleet_report(host_results, unreachable=None, pending=None) -> dict:
    """Aggregate ``{host: result or None}`` into one fleet report.

    A result is what the migrate role records for a host (``jobs``,
    ``preflight``: see :func:`host_result`) or one registered
    ``durable.mover.move`` result (a host with one job).

    ``unreachable`` lists hosts known to be unreachable; such a host may be
    missing from ``host_results``. ``pending`` lists hosts of the play that
    have not run yet (later ``serial`` batches): they are named in
    ``pending`` and counted in ``totals.hosts_pending``, not reported as
    hosts. Hosts are reported in sorted order so two runs over the same data
    give the same report.

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
    pending_names = sorted({_as_text(name) for name in (pending or ())} - set(results))

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
        hosts_with_skipped=sum(1 for entry in hosts.values() if entry["skipped_kinds"]),
        hosts_pending=len(pending_names),
        jobs=sum(len(entry["jobs"]) for entry in hosts.values()),
        jobs_failed=sum(1 for entry in hosts.values() for job in entry["jobs"] if job["status"] != STATUS_OK),
        bytes_per_second=sum(entry["bytes_per_second"] for entry in hosts.values()),
        elapsed_seconds=max((entry["elapsed_seconds"] for entry in hosts.values()), default=0.0),
    )
    return {"hosts": hosts, "totals": totals, "pending": pending_names}


def _fleet_hosts(fleet) -> dict:
    """The ``hosts`` of a fleet report, re-normalised (input may be hand-made).

    An entry without ``jobs`` (a hand-made or older report) is one job: itself.
    """
    if not isinstance(fleet, Mapping) or not isinstance(fleet.get("hosts"), Mapping):
        return {}
    hosts = {}
    for name, entry in fleet["hosts"].items():
        if not isinstance(entry, Mapping):
            entry = {}
        status = entry.get("status")
        if status not in (STATUS_OK, STATUS_FAILED, STATUS_UNREACHABLE):
            status = STATUS_FAILED
        if isinstance(entry.get("jobs"), (list, tuple)):
            host = host_result(entry)
        else:
            job = dict(entry)
            job.update(failed=status == STATUS_FAILED, unreachable=status == STATUS_UNREACHABLE)
            host = host_result({"jobs": [job], "preflight": entry.get("preflight")})
        host["status"] = status
        host["msg"] = _as_text(entry.get("msg")) or host["msg"]
        hosts[_as_text(name)] = host
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


def human_duration(seconds) -> str:
    """A duration for people: ``45s``, ``3m12s``, ``2h05m``, ``1d03h``."""
    total = int(round(_as_float(seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return "%dd%02dh" % (days, hours)
    if hours:
        return "%dh%02dm" % (hours, minutes)
    if minutes:
        return "%dm%02ds" % (minutes, secs)
    return "%ds" % secs


def _percent(done, total) -> str:
    return "%.1f%%" % (100.0 * done / total) if total else "100.0%"


def progress_line(info, name="") -> str:
    """One line of progress from a ``durable.mover.move_info`` result.

    ``files 120/1000 (12.0%), bytes 1.2 GiB/10.0 GiB (12.0%), 45.3 MiB/s,
    ETA 3m12s``, prefixed with the job's ``name``; while the source is still
    being listed the totals are what was found so far, and say so.
    """
    prefix = "%s: " % one_line(name) if name else ""
    if not isinstance(info, Mapping):
        info = {}
    if info.get("unreachable"):
        return prefix + "host unreachable: %s" % one_line(info.get("msg") or "")
    if info.get("failed") or ("exists" not in info and info.get("msg")):
        # move_info failed (registered with failed_when: false, it is not 'failed')
        return prefix + "progress unavailable: %s" % one_line(info.get("msg") or "move_info failed")
    if not _as_bool(info.get("exists", False)):
        return prefix + "starting (no journal yet)"
    progress = info.get("progress") if isinstance(info.get("progress"), Mapping) else {}
    files_total = _as_int(progress.get("files_total"))
    files_done = _as_int(progress.get("files_done"))
    bytes_total = _as_int(progress.get("bytes_total"))
    bytes_done = _as_int(progress.get("bytes_done"))
    parts = []
    if not _as_bool(info.get("scan_complete", True)):
        parts.append("listing the source (totals so far)")
    parts.append("files %d/%d (%s)" % (files_done, files_total, _percent(files_done, files_total)))
    parts.append("bytes %s/%s (%s)" % (human_bytes(bytes_done), human_bytes(bytes_total),
                                       _percent(bytes_done, bytes_total)))
    parts.append(human_rate(progress.get("bytes_per_second")))
    if progress.get("files_per_second") is not None:
        parts.append("%.1f files/s" % _as_float(progress.get("files_per_second")))
    failed = _as_int(progress.get("files_failed"))
    if failed:
        parts.append("%d failed" % failed)
    running = _as_bool(info.get("running", False))
    eta = progress.get("eta_seconds")
    at_least = progress.get("eta_lower_bound_seconds")
    if running and eta is not None:
        parts.append("ETA %s" % human_duration(eta))
    elif running and at_least is not None:
        parts.append("ETA at least %s (a lower bound until listed)" % human_duration(at_least))
    elif running:
        parts.append("ETA unknown")
    else:
        parts.append("complete" if _as_bool(info.get("complete", False)) else "not running")
    return prefix + ", ".join(parts)


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


def _job_details(job: dict) -> str:
    stats = job["stats"]
    text = "files moved %d of %d, already done %d, failed %d, quarantined %d; bytes moved %d" % (
        stats["files_moved"], stats["files_total"], stats["files_already_done"],
        stats["files_failed"], stats["files_quarantined"], stats["bytes_moved"],
    )
    return "\n".join([text] + notes(job))


def _skipped_cases(job: dict) -> list:
    """(name, message, paths) of the skipped testcases of a job: one per kind of
    entry it skipped, and one for files whose read-back did not reach the device."""
    cases = [(group["name"], group["message"], group["sample"]) for group in skipped_groups(job)]
    if job["stats"]["readback_from_cache"]:
        cases.append(("read-back from the device", readback_message(job["stats"]["readback_from_cache"]),
                      ["%s (%s)" % (item["path"], item["reason"]) for item in job["readback_from_cache"]]))
    return cases


def junit_xml(fleet) -> str:
    """The fleet report as JUnit XML, for CI systems that show test results.

    One ``<testsuite>`` per host and one ``<testcase>`` per job of the host
    (``<src> -> <dest>`` or the job's name, ``move <job_id>`` for a bare module
    result): it carries a ``<failure>`` when the job failed (its preflight
    included) and an ``<error>`` when the host became unreachable during it.
    Each reported failed or quarantined file adds a ``<testcase>`` named
    after its path with a ``<failure>``. Each kind of entry a job skipped
    (special files, conflicts, mount points, vanished sources), and its files
    read back from the page cache rather than the device, add a
    ``<testcase>`` ``<job>: <what>`` with a ``<skipped>`` whose message is the
    count and whose text lists the paths. A host that failed or was
    unreachable with no job to blame (no result at all, a host-level error)
    gets a ``migrate`` testcase with that failure or error. Counts on every
    suite and on the root add up.
    """
    hosts = _fleet_hosts(fleet)
    root = ET.Element("testsuites", name="durable.mover")
    all_tests = all_failures = all_errors = all_skipped = 0
    all_time = 0.0
    for name, host in hosts.items():
        classname = one_line(name)
        suite = ET.SubElement(root, "testsuite", name=classname)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        blamed = False

        def case(case_name, seconds=0.0):
            counts["tests"] += 1
            return ET.SubElement(suite, "testcase", classname=classname, name=one_line(case_name),
                                 time=_seconds(seconds))

        def mark(element_case, kind, message, text, type_):
            element = ET.SubElement(element_case, kind, type=type_, message=one_line(message))
            element.text = xml_safe(text)
            counts["failures" if kind == "failure" else "errors"] += 1

        for job in host["jobs"]:
            job_case = case(job["name"], job["elapsed_seconds"])
            details = _job_details(job)
            unreachable = job["status"] == STATUS_UNREACHABLE or (
                host["status"] == STATUS_UNREACHABLE and job["status"] != STATUS_OK)
            if unreachable:
                message = job["msg"] or MSG_UNREACHABLE
                mark(job_case, "error", message, "%s\n%s" % (message, details), "unreachable")
                blamed = True
            elif job["status"] == STATUS_FAILED:
                message = job["msg"] or "move failed"
                mark(job_case, "failure", message, "%s\n%s" % (message, details), "move")
                blamed = True
            else:
                out = ET.SubElement(job_case, "system-out")
                out.text = xml_safe("%s\n%s" % (job["msg"], details) if job["msg"] else details)
            for failure in job["failures"]:
                file_case = case(failure["path"] or "(unknown path)")
                kind = "quarantined" if failure["quarantined"] else "file"
                mark(file_case, "failure", failure["error"] or "failed", _file_failure_text(failure), kind)
            for what, message, paths in _skipped_cases(job):
                element = ET.SubElement(case("%s: %s" % (job["name"], what)), "skipped", message=one_line(message))
                listed = "\n".join(one_line(path) for path in paths)
                element.text = xml_safe("%s\n%s" % (message, listed) if listed else message)
                counts["skipped"] += 1

        if host["status"] != STATUS_OK and not blamed:
            host_case = case("migrate")
            if host["status"] == STATUS_UNREACHABLE:
                message = host["msg"] or MSG_UNREACHABLE
                mark(host_case, "error", message, message, "unreachable")
            else:
                message = host["msg"] or "move failed"
                mark(host_case, "failure", message, message, "move")

        suite.set("tests", str(counts["tests"]))
        suite.set("failures", str(counts["failures"]))
        suite.set("errors", str(counts["errors"]))
        suite.set("skipped", str(counts["skipped"]))
        suite.set("time", _seconds(host["elapsed_seconds"]))
        all_tests += counts["tests"]
        all_failures += counts["failures"]
        all_errors += counts["errors"]
        all_skipped += counts["skipped"]
        all_time += host["elapsed_seconds"]

    root.set("tests", str(all_tests))
    root.set("failures", str(all_failures))
    root.set("errors", str(all_errors))
    root.set("skipped", str(all_skipped))
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


def _jobs_table(hosts) -> list:
    """One row per job, for hosts that have several."""
    lines = [
        "",
        "## Jobs",
        "",
        "| Host | Job | Status | Files moved / total | Bytes moved / total | Failed files | Rate |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, host in hosts.items():
        for job in host["jobs"]:
            stats = job["stats"]
            lines.append("| %s | %s | %s | %d / %d | %s / %s | %d | %s |" % (
                md_text(name), md_text(job["name"]), status_text(job),
                stats["files_moved"], stats["files_total"],
                human_bytes(stats["bytes_moved"]), human_bytes(stats["bytes_total"]),
                stats["files_failed"], human_rate(job["bytes_per_second"]),
            ))
    return lines


def _preflight_table(hosts) -> list:
    """What each job's preflight found: space, filesystem, Python, hash."""
    rows = []
    for name, host in hosts.items():
        for found in host["preflight"]:
            findings = found["findings"]
            space = findings.get("space") if isinstance(findings.get("space"), Mapping) else {}
            python = findings.get("python") if isinstance(findings.get("python"), Mapping) else {}
            hashing = findings.get("hash") if isinstance(findings.get("hash"), Mapping) else {}
            if space:
                same_fs = "same" if space.get("same_filesystem") else "other"
                needed = human_bytes(space.get("bytes_needed"))
                if space.get("upper_bound"):
                    needed = "at most " + needed
                free = human_bytes(space.get("free_bytes")) if space.get("free_bytes") is not None else "?"
            else:
                same_fs = needed = free = "?"
            algorithm = _as_text(hashing.get("algorithm")) or "?"
            if hashing.get("fallback"):
                algorithm += " (no blake3)"
            rows.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                md_text(name),
                md_text(found["name"] or job_name(found["src"], found["dest"])),
                "ok" if found["ok"] else "**%d problem(s)**" % len(found["problems"]),
                same_fs, needed, free,
                md_text(python.get("version") or "?"),
                md_text(algorithm),
            ))
    if not rows:
        return []
    return [
        "",
        "## Preflight",
        "",
        "| Host | Job | Result | Filesystem | Space needed | Free at dest | Python | Hash |",
        "| --- | --- | --- | --- | ---: | ---: | --- | --- |",
    ] + rows + [
        "",
        "Space needed is what the destination will allocate: each copied file's data (holes excluded) in "
        "whole blocks, inodes and directories, a 5% margin (at least 1 MiB when files are copied), and the "
        "journal when it is on the same filesystem (fleet.json: `findings.space.estimate`). \"At most\": a "
        "large job whose source was not listed, bounded by all its filesystem holds.",
    ]


def _paths_text(paths, count) -> str:
    """Up to SUMMARY_SAMPLE paths as code spans, and how many more."""
    shown = [md_code(path) for path in paths[:SUMMARY_SAMPLE]]
    more = count - len(shown)
    if more > 0:
        shown.append("and %d more" % more)
    return ", ".join(shown)


def _left_and_notes(hosts) -> list:
    """What each host left at the source, by kind with its paths, then what
    else to know before wiping the source (set-id bits, read-backs)."""
    left, other = [], []
    for name, host in hosts.items():
        for group in skipped_groups(host):
            line = "- %s: %s: %s" % (md_code(name), md_text(group["message"]),
                                     _paths_text(group["sample"], group["count"]))
            (left if group["kind"] in LEFT_AT_SOURCE else other).append(line)
        stats = host["stats"]
        if stats["setid_cleared"]:
            other.append("- %s: %s; see the audit log" % (md_code(name), md_text(setid_message(stats["setid_cleared"]))))
        if stats["readback_from_cache"]:
            other.append("- %s: %s: %s" % (md_code(name), md_text(readback_message(stats["readback_from_cache"])),
                                           _paths_text([e["path"] for e in host["readback_from_cache"]],
                                                       stats["readback_from_cache"])))
    lines = []
    if left:
        lines += ["", "## Left at the source", "",
                  "Not moved, by the job's options: still on the source, and lost if it is wiped.", ""] + left
    if other:
        lines += ["", "## Notes", ""] + other
    return lines


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
                status_text(host),
                stats["files_moved"],
                stats["files_total"],
                stats["files_already_done"],
                human_bytes(stats["bytes_moved"]),
                human_bytes(stats["bytes_total"]),
                stats["files_failed"],
                human_rate(host["bytes_per_second"]),
            )
        )
    left = sum(1 for host in hosts.values() if host["status"] == STATUS_OK and left_at_source(host))
    lines.append(
        "%d host(s): %d ok%s, %d failed, %d unreachable." % (
            len(hosts), counts[STATUS_OK], " (%d with entries left at the source)" % left if left else "",
            counts[STATUS_FAILED], counts[STATUS_UNREACHABLE],
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

    pending = fleet.get("pending") if isinstance(fleet, Mapping) else None
    if isinstance(pending, (list, tuple)) and pending:
        lines.append("")
        lines.append("%d host(s) of the play not run (later serial batches, or the play stopped before them): %s." % (
            len(pending), ", ".join(md_code(name) for name in pending)))

    if any(len(host["jobs"]) > 1 for host in hosts.values()):
        lines.extend(_jobs_table(hosts))

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

    lines.extend(_preflight_table(hosts))
    lines.extend(_left_and_notes(hosts))

    problems = []
    for name, host in hosts.items():
        if host["status"] != STATUS_OK:
            problems.append("- %s: %s: %s" % (md_code(name), host["status"], md_text(host["msg"] or host["status"], SUMMARY_MAX_MESSAGE)))
        for found in host["preflight"]:
            for problem in found["problems"]:
                if problem in host["msg"]:
                    continue    # the job failed on it: the host's line says it already
                problems.append("- %s: preflight of %s: %s" % (
                    md_code(name), md_text(found["name"] or job_name(found["src"], found["dest"])),
                    md_text(problem, SUMMARY_MAX_MESSAGE)))
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
