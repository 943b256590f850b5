# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A file name is written the same way wherever it is shown (issue 12).

Names may hold any byte but '/' and NUL: a newline, a tab, an escape, bytes
that are not UTF-8. Each is shown as the same one-line text (control
characters and undecodable bytes as \\xNN) in the result's failures (path and
error), its skipped entries, the audit log, move_info, fleet.json,
summary.md and junit.xml. Real runs of the core; the reports are built from
the real result.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

from ansible_collections.durable.mover.plugins.module_utils import _mover
from ansible_collections.durable.mover.plugins.module_utils._info import job_info
from ansible_collections.durable.mover.plugins.module_utils._report import (
    fleet_report,
    junit_xml,
    md_text,
    summary_markdown,
)

from fstree import Site, b

# name on disk -> how it is shown
NAMES = {
    b"new\nline.txt": "new\\x0aline.txt",
    b"tab\there\x1b[31m.txt": "tab\\x09here\\x1b[31m.txt",
    b"caf\xe9-latin1.txt": "caf\\xe9-latin1.txt",
    "caf\u00e9-utf8.txt".encode(): "caf\u00e9-utf8.txt",
}


def write(path: bytes, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def shown(site: Site, name: str) -> str:
    return "%s/sub/%s" % (site.src, name)


def test_a_name_is_shown_the_same_in_every_field_and_report(site: Site) -> None:
    src, dest = b(site.src), b(site.dest)
    for name in NAMES:
        write(os.path.join(src, b"sub", name), b"the source's")
        write(os.path.join(dest, b"sub", name), b"someone else's")          # a conflict: each one fails
    os.mkfifo(os.path.join(src, b"sub", b"fifo\nname"))
    audit = site.base / "audit.jsonl"

    result = _mover.run(site.params(max_attempts=1, audit_log=str(audit)))

    assert result["stats"]["files_failed"] == len(NAMES), result["msg"]
    expected = {shown(site, text) for text in NAMES.values()}
    failures = {f["path"]: f["error"] for f in result["failures"]}
    assert set(failures) == expected
    for path, error in failures.items():
        assert path in error, (path, error)              # the error names it the same way
        assert "\n" not in error and "\t" not in error
    fifo = shown(site, "fifo\\x0aname")
    assert [e["path"] for e in result["skipped_entries"]] == [fifo]

    # The audit log: its paths are relative, written the same way.
    events = [json.loads(line) for line in audit.read_text(encoding="utf-8").splitlines()]
    failed = {e["path"]: e["error"] for e in events if e["event"] == "file_failed"}
    assert set(failed) == {"sub/" + text for text in NAMES.values()}
    for rel, error in failed.items():
        assert shown(site, rel[4:]) in error
    assert [e["path"] for e in events if e["event"] == "file_skipped"] == []   # skipped by the scan
    start = [e for e in events if e["event"] == "run_start"][0]
    assert start["src"] == str(site.src)

    # move_info
    info = job_info({"src": str(site.src), "dest": str(site.dest), "state_dir": str(site.state)})
    assert {f["path"]: f["error"] for f in info["failures"]} == failures

    # The reports, from the real result.
    fleet = fleet_report({"host": result})
    assert {f["path"] for f in fleet["hosts"]["host"]["failures"]} == expected
    markdown = summary_markdown(fleet, max_failures=100)
    junit = ET.fromstring(junit_xml(fleet))
    case_names = {case.get("name") for case in junit.iter("testcase")}
    messages = [failure.get("message") for failure in junit.iter("failure")]
    for path in expected:
        assert "`%s`" % path in markdown, (path, markdown)
        assert path in case_names
        # the error, with the path in it, is shown as the module gave it
        assert any(message == failures[path] for message in messages), (failures[path], messages)
        # (as Markdown source: its markup characters escaped, the text itself the same)
        assert md_text(failures[path]) in markdown, failures[path]
    assert fifo in markdown
    assert any(fifo in (element.text or "") for element in junit.iter("skipped"))


def test_a_source_whose_own_name_is_not_utf8(tmp_path) -> None:
    """The source directory's own name has a byte that is not UTF-8 and a
    newline (e.g. reached through a link): the job runs, and its paths are
    shown the same in the result and in move_info."""
    src = os.path.join(os.fsencode(tmp_path), b"s\xffrc\n")
    dest = os.path.join(os.fsencode(tmp_path), b"dest")
    write(os.path.join(src, b"f"), b"the source's")
    write(os.path.join(dest, b"f"), b"someone else's")
    params = {"src": os.fsdecode(src), "dest": os.fsdecode(dest), "state_dir": str(tmp_path / "state"),
              "max_attempts": 1}

    result = _mover.run(params)

    expected = "%s/s\\xffrc\\x0a/f" % tmp_path
    assert [f["path"] for f in result["failures"]] == [expected], result["msg"]
    info = job_info(params)
    assert info["source"] == "%s/s\\xffrc\\x0a" % tmp_path
    assert [f["path"] for f in info["failures"]] == [expected]
    assert _mover.run(params)["failures"][0]["path"] == expected      # the journal is its own again
