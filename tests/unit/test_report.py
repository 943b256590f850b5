# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_report.py (fleet reports)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _report as report
from ansible_collections.durable.mover.plugins.module_utils._report import (
    MSG_NO_RESULT,
    STAT_KEYS,
    fleet_report,
    host_status,
    human_bytes,
    junit_xml,
    normalise_result,
    summary_markdown,
)

MiB = 1024 * 1024


def module_result(**overrides):
    """A complete, successful durable.mover.move result; overrides replace keys."""
    result = {
        "changed": True,
        "failed": False,
        "job_id": "job-1",
        "journal": "/var/lib/mover/job-1.journal",
        "complete": True,
        "interrupted": False,
        "hash_algorithm": "sha256",
        "stats": {
            "files_total": 10,
            "files_moved": 8,
            "files_already_done": 2,
            "files_skipped": 0,
            "files_failed": 0,
            "files_quarantined": 0,
            "dirs": 3,
            "symlinks": 1,
            "hardlinks": 0,
            "special_skipped": 0,
            "bytes_total": 10 * MiB,
            "bytes_moved": 8 * MiB,
            "resumed": False,
        },
        "failures": [],
        "elapsed_seconds": 2.0,
        "bytes_per_second": 4.0 * MiB,
    }
    stats = overrides.pop("stats", None)
    result.update(overrides)
    if stats is not None:
        result["stats"] = dict(result["stats"], **stats)
    return result


def failed_result(failures, **overrides):
    """A run in which some files failed, as the module reports it."""
    stats = {
        "files_total": 5,
        "files_moved": 5 - len(failures),
        "files_already_done": 0,
        "files_failed": len(failures),
        "files_quarantined": sum(1 for f in failures if f.get("quarantined")),
        "bytes_total": 5000,
        "bytes_moved": 1000 * (5 - len(failures)),
    }
    return module_result(
        failed=True,
        msg="%d file(s) could not be moved" % len(failures),
        job_id="job-2",
        complete=False,
        stats=stats,
        failures=failures,
        **overrides,
    )


# ---------------------------------------------------------------------------
# normalise_result
# ---------------------------------------------------------------------------

class TestNormalise:
    def test_empty_result_has_every_key_with_a_neutral_value(self):
        norm = normalise_result({})
        assert set(norm["stats"]) == set(STAT_KEYS) | {"resumed"}
        assert all(norm["stats"][key] == 0 for key in STAT_KEYS)
        assert norm["stats"]["resumed"] is False
        assert norm["failures"] == []
        assert norm["changed"] is False and norm["failed"] is False
        assert norm["complete"] is False and norm["interrupted"] is False
        assert norm["msg"] == "" and norm["job_id"] == ""
        assert norm["elapsed_seconds"] == 0.0 and norm["bytes_per_second"] == 0.0

    @pytest.mark.parametrize("value", [None, "not a dict", 42, ["a"]])
    def test_non_mapping_counts_as_empty(self, value):
        assert normalise_result(value) == normalise_result({})

    def test_present_values_are_kept(self):
        norm = normalise_result(module_result())
        assert norm["stats"]["files_moved"] == 8
        assert norm["stats"]["bytes_total"] == 10 * MiB
        assert norm["job_id"] == "job-1"
        assert norm["hash_algorithm"] == "sha256"
        assert norm["complete"] is True

    def test_partial_stats_fill_the_rest_with_zero(self):
        norm = normalise_result({"stats": {"files_moved": 3, "resumed": True}})
        assert norm["stats"]["files_moved"] == 3
        assert norm["stats"]["resumed"] is True
        assert norm["stats"]["files_total"] == 0

    def test_bad_counter_values_become_zero_and_numeric_strings_count(self):
        norm = normalise_result({
            "stats": {"files_moved": "7", "files_total": "x", "bytes_moved": None, "dirs": -4, "symlinks": 2.9},
            "elapsed_seconds": "nan",
            "bytes_per_second": float("inf"),
        })
        assert norm["stats"]["files_moved"] == 7
        assert norm["stats"]["files_total"] == 0
        assert norm["stats"]["bytes_moved"] == 0
        assert norm["stats"]["dirs"] == 0  # a negative count is nonsense
        assert norm["stats"]["symlinks"] == 2
        assert norm["elapsed_seconds"] == 0.0
        assert norm["bytes_per_second"] == 0.0

    def test_failure_entries_are_completed(self):
        norm = normalise_result({"failures": [{"path": "/a"}, "bare string", {"error": "EIO", "attempts": "3"}]})
        assert norm["failures"] == [
            {"path": "/a", "error": "", "attempts": 0, "quarantined": False},
            {"path": "", "error": "bare string", "attempts": 0, "quarantined": False},
            {"path": "", "error": "EIO", "attempts": 3, "quarantined": False},
        ]

    def test_plan_is_kept_in_check_mode(self):
        plan = {"files": 3, "bytes": 10, "renames": 3, "copies": 0, "conflicts": 0, "already_done": 0}
        assert normalise_result({"plan": plan})["plan"] == plan
        assert "plan" not in normalise_result({})

    def test_input_is_not_modified(self):
        result = {"stats": {"files_moved": 1}}
        normalise_result(result)
        assert result == {"stats": {"files_moved": 1}}


# ---------------------------------------------------------------------------
# host_status
# ---------------------------------------------------------------------------

class TestHostStatus:
    def test_successful_run_is_ok(self):
        assert host_status(module_result()) == "ok"

    def test_unchanged_rerun_is_ok(self):
        assert host_status(module_result(changed=False, stats={"files_moved": 0})) == "ok"

    def test_failed_flag_is_failed(self):
        assert host_status({"failed": True, "msg": "src does not exist"}) == "failed"

    def test_failed_file_without_failed_flag_is_still_failed(self):
        # A host whose stats say a file failed did not finish its move, whatever
        # else the result says.
        assert host_status(module_result(stats={"files_failed": 1})) == "failed"

    @pytest.mark.parametrize("result", [None, {}])
    def test_missing_result_is_failed(self, result):
        assert host_status(result) == "failed"

    def test_known_unreachable_wins_over_anything(self):
        assert host_status(module_result(), unreachable=True) == "unreachable"
        assert host_status(None, unreachable=True) == "unreachable"

    def test_result_registered_with_ignore_unreachable(self):
        assert host_status({"unreachable": True, "msg": "ssh: connect refused"}) == "unreachable"

    def test_skipped_task_is_failed(self):
        assert host_status({"skipped": True, "changed": False}) == "failed"


# ---------------------------------------------------------------------------
# fleet_report
# ---------------------------------------------------------------------------

class TestFleetReport:
    def test_host_entry_keys(self):
        fleet = fleet_report({"web1": module_result()}, [])
        entry = fleet["hosts"]["web1"]
        for key in ("status", "changed", "stats", "failures", "msg", "job_id", "complete",
                    "interrupted", "elapsed_seconds", "bytes_per_second"):
            assert key in entry, key
        assert entry["status"] == "ok"
        assert entry["job_id"] == "job-1"

    def test_statuses_and_messages(self):
        fleet = fleet_report(
            {
                "ok1": module_result(),
                "bad": {"failed": True, "msg": "src does not exist"},
                "nothing": None,
                "empty": {},
            },
            ["gone"],
        )
        hosts = fleet["hosts"]
        assert hosts["ok1"]["status"] == "ok"
        assert hosts["bad"]["status"] == "failed"
        assert hosts["bad"]["msg"] == "src does not exist"
        assert hosts["nothing"]["status"] == "failed"
        assert hosts["nothing"]["msg"] == MSG_NO_RESULT
        assert hosts["empty"]["msg"] == MSG_NO_RESULT
        # Listed unreachable but absent from the results: still reported.
        assert hosts["gone"]["status"] == "unreachable"
        assert hosts["gone"]["msg"]
        totals = fleet["totals"]
        assert (totals["hosts"], totals["hosts_ok"], totals["hosts_failed"], totals["hosts_unreachable"]) == (5, 1, 3, 1)

    def test_unreachable_result_keeps_its_message(self):
        fleet = fleet_report({"db": {"unreachable": True, "msg": "Connection refused"}}, None)
        assert fleet["hosts"]["db"]["status"] == "unreachable"
        assert fleet["hosts"]["db"]["msg"] == "Connection refused"
        assert fleet["totals"]["hosts_unreachable"] == 1

    def test_failed_files_without_message_get_one(self):
        fleet = fleet_report({"h": module_result(stats={"files_failed": 2})})
        assert fleet["hosts"]["h"]["status"] == "failed"
        assert "2" in fleet["hosts"]["h"]["msg"]

    def test_totals_are_sums_over_hosts(self):
        a = module_result(stats={"files_total": 10, "files_moved": 8, "bytes_moved": 100, "dirs": 1},
                          bytes_per_second=50.0, elapsed_seconds=2.0)
        b = module_result(stats={"files_total": 5, "files_moved": 5, "bytes_moved": 40, "dirs": 2},
                          bytes_per_second=20.0, elapsed_seconds=7.5)
        fleet = fleet_report({"a": a, "b": b, "c": None}, ["d"])
        totals = fleet["totals"]
        assert totals["files_total"] == 15
        assert totals["files_moved"] == 13
        assert totals["bytes_moved"] == 140
        assert totals["dirs"] == 3
        # Every int stat is summed, including those at 0 everywhere.
        assert set(STAT_KEYS) <= set(totals)
        assert totals["hardlinks"] == 0
        # Rates add up (hosts move in parallel); elapsed is the longest host.
        assert totals["bytes_per_second"] == pytest.approx(70.0)
        assert totals["elapsed_seconds"] == pytest.approx(7.5)
        assert totals["hosts_changed"] == 2

    def test_hosts_are_sorted(self):
        fleet = fleet_report({"zeta": None, "alpha": None, "mid": None}, ["beta"])
        assert list(fleet["hosts"]) == ["alpha", "beta", "mid", "zeta"]

    def test_empty_fleet(self):
        fleet = fleet_report({}, [])
        assert fleet["hosts"] == {}
        assert fleet["totals"]["hosts"] == 0
        assert fleet["totals"]["files_moved"] == 0
        assert fleet["totals"]["bytes_per_second"] == 0

    def test_report_is_json_serialisable(self):
        fleet = fleet_report({"a": failed_result([{"path": "/x", "error": "EIO", "attempts": 3}])}, ["b"])
        assert json.loads(json.dumps(fleet)) == fleet


# ---------------------------------------------------------------------------
# junit_xml
# ---------------------------------------------------------------------------

HOSTILE_PATH = '/data/a<b>&"c\'\x01\x1b[31m\udcff\r\n\ttab ]]> `x` | end'


def parse(xml_text):
    # ET.fromstring rejects invalid XML, so this is also the validity check.
    return ET.fromstring(xml_text.encode("utf-8"))


def suites_by_name(root):
    return {suite.get("name"): suite for suite in root.findall("testsuite")}


class TestJunitXml:
    def fleet(self):
        return fleet_report(
            {
                "ok1": module_result(),
                "bad": failed_result([
                    {"path": "/srv/a", "error": "EIO reading", "attempts": 3, "quarantined": False},
                    {"path": "/srv/b", "error": "checksum mismatch", "attempts": 2, "quarantined": True},
                ]),
                "early": None,
            },
            ["down"],
        )

    def test_structure_and_counts(self):
        root = parse(junit_xml(self.fleet()))
        assert root.tag == "testsuites"
        suites = suites_by_name(root)
        assert set(suites) == {"ok1", "bad", "early", "down"}

        # ok1: one job testcase, nothing failed.
        assert (suites["ok1"].get("tests"), suites["ok1"].get("failures"), suites["ok1"].get("errors")) == ("1", "0", "0")
        # bad: the job (failed) + one testcase per failed file (2).
        assert (suites["bad"].get("tests"), suites["bad"].get("failures"), suites["bad"].get("errors")) == ("3", "3", "0")
        # early: no result -> job testcase with a failure.
        assert (suites["early"].get("tests"), suites["early"].get("failures")) == ("1", "1")
        # down: unreachable -> an error, not a failure.
        assert (suites["down"].get("tests"), suites["down"].get("failures"), suites["down"].get("errors")) == ("1", "0", "1")

        # Root counts are the sums, and they agree with the elements present.
        assert root.get("tests") == str(len(root.findall("testsuite/testcase"))) == "6"
        assert root.get("failures") == str(len(root.findall("testsuite/testcase/failure"))) == "4"
        assert root.get("errors") == str(len(root.findall("testsuite/testcase/error"))) == "1"
        for suite in suites.values():
            assert suite.get("tests") == str(len(suite.findall("testcase")))
            assert suite.get("failures") == str(len(suite.findall("testcase/failure")))
            assert suite.get("errors") == str(len(suite.findall("testcase/error")))

    def test_testcase_names_and_messages(self):
        suites = suites_by_name(parse(junit_xml(self.fleet())))
        ok_cases = suites["ok1"].findall("testcase")
        assert [case.get("name") for case in ok_cases] == ["move job-1"]
        assert ok_cases[0].find("failure") is None
        assert "files moved 8 of 10" in ok_cases[0].find("system-out").text

        bad_cases = suites["bad"].findall("testcase")
        assert [case.get("name") for case in bad_cases] == ["move job-2", "/srv/a", "/srv/b"]
        assert bad_cases[0].find("failure").get("message") == "2 file(s) could not be moved"
        assert bad_cases[1].find("failure").get("message") == "EIO reading"
        assert "attempts: 3" in bad_cases[1].find("failure").text
        assert bad_cases[2].find("failure").get("type") == "quarantined"
        assert "quarantined: yes" in bad_cases[2].find("failure").text

        early = suites["early"].find("testcase/failure")
        assert early.get("message") == MSG_NO_RESULT
        down = suites["down"].find("testcase/error")
        assert down.get("type") == "unreachable"

    def test_hostile_path_characters(self):
        fleet = fleet_report({"h<&>": failed_result([{"path": HOSTILE_PATH, "error": "bad\x00error", "attempts": 1}])})
        text = junit_xml(fleet)
        root = parse(text)  # would raise on an unescaped '<', '&' or a control character
        suite = root.find("testsuite")
        assert suite.get("name") == "h<&>"
        case = suite.findall("testcase")[1]
        name = case.get("name")
        # Printable characters, markup included, come back exactly.
        for part in ("/data/a<b>&\"c'", "]]> `x` | end", "tab"):
            assert part in name
        # Characters XML cannot carry, and line breaks in a one-line
        # attribute, are shown as visible escapes.
        assert "\\x01" in name and "\\x1b" in name
        assert "\\xff" in name  # the undecodable byte behind the surrogate
        assert "\\x0d" in name and "\\x0a" in name and "\\x09" in name
        assert not re.search("[\x00-\x1f\ud800-\udfff]", name)
        assert case.find("failure").get("message") == "bad\\x00error"
        # The element text keeps line breaks but not what XML cannot carry.
        assert "error: bad\\x00error" in case.find("failure").text
        # The document encodes to UTF-8 (a lone surrogate would not).
        text.encode("utf-8")

    def test_hostile_message_in_element_text(self):
        fleet = fleet_report({"h": {"failed": True, "msg": "line one\nline\x1b two \udcfe\r end"}})
        text = junit_xml(fleet)
        failure = parse(text).find("testsuite/testcase/failure")
        assert failure.text.startswith("line one\nline\\x1b two \\xfe\\x0d end")
        assert failure.get("message") == "line one\\x0aline\\x1b two \\xfe\\x0d end"
        text.encode("utf-8")

    def test_empty_fleet_is_valid(self):
        root = parse(junit_xml(fleet_report({}, [])))
        assert root.get("tests") == "0"
        assert root.findall("testsuite") == []

    def test_hand_made_fleet_with_missing_keys(self):
        root = parse(junit_xml({"hosts": {"x": {"status": "failed"}, "y": {}}}))
        suites = suites_by_name(root)
        assert suites["x"].get("failures") == "1"
        # An entry without a status cannot be called ok.
        assert suites["y"].get("failures") == "1"


# ---------------------------------------------------------------------------
# summary_markdown
# ---------------------------------------------------------------------------

def table_rows(markdown):
    return [line for line in markdown.splitlines() if line.startswith("|")]


def cells(row):
    # Split on pipes that are not escaped.
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]]


class TestSummaryMarkdown:
    def test_human_bytes(self):
        assert human_bytes(0) == "0 B"
        assert human_bytes(1023) == "1023 B"
        assert human_bytes(1024) == "1.0 KiB"
        assert human_bytes(1536) == "1.5 KiB"
        assert human_bytes(5 * MiB) == "5.0 MiB"
        assert human_bytes(3 * 1024 ** 4) == "3.0 TiB"
        assert human_bytes(None) == "0 B"

    def test_table_has_a_row_per_host_and_a_totals_row(self):
        fleet = fleet_report(
            {
                "web1": module_result(),
                "web2": module_result(stats={"files_total": 6, "files_moved": 6, "files_already_done": 0,
                                             "bytes_total": 2 * MiB, "bytes_moved": 2 * MiB},
                                      bytes_per_second=1.0 * MiB),
            },
            ["web3"],
        )
        markdown = summary_markdown(fleet)
        rows = table_rows(markdown)
        header, _separator, *body = rows
        assert cells(header)[0] == "Host"
        assert len(body) == 4  # three hosts and the totals
        by_host = {cells(row)[0]: cells(row) for row in body}

        web1 = by_host["web1"]
        assert web1[1] == "ok"
        assert web1[2] == "8 / 10"  # moved / total from the module's stats
        assert web1[4] == "8.0 MiB / 10.0 MiB"
        assert web1[6] == "4.0 MiB/s"
        assert by_host["web3"][1] == "unreachable"

        total = by_host["**Total**"]
        assert total[2] == "14 / 16"  # 8 + 6 of 10 + 6
        assert total[3] == "2"  # already done: 2 + 0
        assert total[4] == "10.0 MiB / 12.0 MiB"
        assert total[6] == "5.0 MiB/s"  # 4 + 1
        assert "2 ok" in total[1] and "1 unreachable" in total[1]
        assert "3 host(s): 2 ok, 0 failed, 1 unreachable." in markdown

    def test_failures_are_listed(self):
        fleet = fleet_report({
            "bad": failed_result([{"path": "/srv/a", "error": "EIO reading", "attempts": 3, "quarantined": True}]),
            "early": None,
        })
        markdown = summary_markdown(fleet)
        assert "## Failures" in markdown
        assert "`/srv/a`" in markdown
        assert "EIO reading" in markdown
        assert "attempts: 3, quarantined" in markdown
        assert "no result (host failed before the move ran)" in markdown

    def test_list_is_capped(self):
        failures = [{"path": "/f%02d" % i, "error": "EIO", "attempts": 1} for i in range(30)]
        markdown = summary_markdown(fleet_report({"h": failed_result(failures)}), max_failures=5)
        listed = [line for line in markdown.splitlines() if line.startswith("- ")]
        assert len(listed) == 5
        # 30 files + the host's own failure line
        assert "first 5 of 31" in markdown
        assert "/f00" in markdown and "/f29" not in markdown

    def test_unlisted_failures_are_counted(self):
        # The module lists at most max_failures_reported files; the count says more.
        result = failed_result([{"path": "/a", "error": "EIO", "attempts": 1}])
        result["stats"]["files_failed"] = 40
        markdown = summary_markdown(fleet_report({"h": result}))
        assert "39 more failed file(s)" in markdown

    def test_hostile_names_cannot_break_the_table(self):
        fleet = fleet_report({"evil|host\n": failed_result([{"path": HOSTILE_PATH, "error": "x|y\nz", "attempts": 1}])})
        markdown = summary_markdown(fleet)
        rows = table_rows(markdown)
        # Every row still has the header's number of cells.
        assert len({len(cells(row)) for row in rows}) == 1
        # No raw control character reaches the page; line breaks inside values
        # did not start new lines.
        assert not re.search("[\x00-\x09\x0b-\x1f\x7f\ud800-\udfff]", markdown)
        assert any("evil\\|host" in row for row in rows)
        listed = [line for line in markdown.splitlines() if line.startswith("- ")]
        assert len(listed) == 2  # the host line and the file line
        # The path is a code span whose fence is longer than any backtick run
        # inside it, so the backticks in the path do not end it.
        assert "``" in listed[1]

    def test_markdown_text_escaping(self):
        # Intraword underscores cannot make emphasis: left alone for readability.
        assert report.md_text("web_01 migrate_dest") == "web_01 migrate_dest"
        # Anything that could make emphasis, code, links, HTML or a new cell is escaped.
        assert report.md_text("_em_ *b* `c` [l](u) <i> a|b") == "\\_em\\_ \\*b\\* \\`c\\` \\[l\\](u) \\<i\\> a\\|b"
        # Line breaks become spaces; long text is cut.
        assert report.md_text("one\n\ntwo\tthree") == "one two three"
        assert report.md_text("x" * 50, limit=10) == "xxxxxxx..."

    def test_check_mode_plan_is_summarised(self):
        def planned(files, size, conflicts):
            return module_result(changed=True, stats={"files_moved": 0, "bytes_moved": 0},
                                 plan={"files": files, "bytes": size, "renames": files, "copies": 0,
                                       "conflicts": conflicts, "already_done": 1})
        markdown = summary_markdown(fleet_report({"a": planned(3, 1024, 0), "b": planned(4, 2048, 2)}))
        assert "Check mode: nothing was moved. 2 host(s) planned 7 file(s), 3.0 KiB (2 already done, 2 conflict(s))." in markdown
        assert "Check mode" not in summary_markdown(fleet_report({"a": module_result()}))

    def test_empty_fleet(self):
        markdown = summary_markdown(fleet_report({}, []))
        assert "0 host(s)" in markdown
        assert "## Failures" not in markdown

    def test_module_private_marker(self):
        assert "PRIVATE" in (report.__doc__ or "")


# ---------------------------------------------------------------------------
# Hosts with several jobs (what the migrate role records)
# ---------------------------------------------------------------------------

def job(src, dest, **overrides):
    """One job as the migrate role records it: a module result with name, src and dest."""
    return dict(module_result(**overrides), src=src, dest=dest)


def preflight(src, dest, problems=(), **findings):
    return {"name": "%s -> %s" % (src, dest), "src": src, "dest": dest, "ok": not problems,
            "problems": list(problems), "findings": findings}


class TestHostResult:
    def two_jobs(self, **second):
        return {
            "jobs": [
                job("/a", "/b", job_id="j1", stats={"files_total": 10, "files_moved": 8, "bytes_moved": 800,
                                                    "bytes_total": 1000}, elapsed_seconds=2.0,
                    bytes_per_second=400.0),
                job("/c", "/d", job_id="j2", stats={"files_total": 5, "files_moved": 5, "bytes_moved": 200,
                                                    "bytes_total": 200, "resumed": True}, elapsed_seconds=3.0,
                    bytes_per_second=66.7, **second),
            ],
            "preflight": [preflight("/a", "/b"), preflight("/c", "/d")],
        }

    def test_stats_are_summed_and_flags_combined(self):
        host = report.host_result(self.two_jobs())
        assert host["stats"]["files_total"] == 15
        assert host["stats"]["files_moved"] == 13
        assert host["stats"]["bytes_moved"] == 1000
        assert host["stats"]["resumed"] is True
        assert host["changed"] is True and host["failed"] is False and host["unreachable"] is False
        assert host["complete"] is True
        # Jobs run one after the other: times add up, the rate is over the sum.
        assert host["elapsed_seconds"] == pytest.approx(5.0)
        assert host["bytes_per_second"] == pytest.approx(200.0)
        # With two jobs there is no one job_id or journal for the host.
        assert host["job_id"] == "" and host["journal"] == ""
        assert [j["name"] for j in host["jobs"]] == ["/a -> /b", "/c -> /d"]
        assert [j["status"] for j in host["jobs"]] == ["ok", "ok"]
        assert host["msg"].startswith("2 jobs")
        assert [p["ok"] for p in host["preflight"]] == [True, True]

    def test_a_failed_job_fails_the_host_and_names_itself(self):
        data = self.two_jobs(failed=True, msg="1 file(s) failed",
                             failures=[{"path": "/c/x", "error": "EIO", "attempts": 1}])
        host = report.host_result(data)
        assert host["failed"] is True
        assert host["jobs"][1]["status"] == "failed"
        assert host["msg"] == "/c -> /d: 1 file(s) failed"
        assert host["failures"] == [{"path": "/c/x", "error": "EIO", "attempts": 1, "quarantined": False}]
        assert host_status(data) == "failed"

    def test_a_job_that_did_not_run(self):
        data = {"jobs": [{"name": "data", "src": "/a", "dest": "/b", "failed": True,
                          "msg": "preflight: not enough free space"}]}
        host = report.host_result(data)
        assert host["failed"] is True
        assert host["msg"] == "preflight: not enough free space"
        assert host["jobs"][0]["name"] == "data"
        assert host["stats"]["files_total"] == 0

    def test_unreachable_job_makes_the_host_unreachable(self):
        data = self.two_jobs(unreachable=True, msg="ssh: no route to host",
                             last_progress={"files_total": 5, "files_done": 2})
        host = report.host_result(data)
        assert host["unreachable"] is True and host["failed"] is False
        assert host_status(data) == "unreachable"
        # The last progress seen before the host went away is kept.
        assert host["jobs"][1]["last_progress"] == {"files_total": 5, "files_done": 2}
        assert "last_progress" not in host["jobs"][0]

    def test_host_level_error_without_jobs(self):
        host = report.host_result({"jobs": [], "host_failed": True, "host_msg": "no job to run"})
        assert host["failed"] is True and host["msg"] == "no job to run"
        assert host_status({"jobs": [], "host_failed": True, "host_msg": "x"}) == "failed"
        # No jobs at all is a failure too, whatever else it says.
        assert host_status({"jobs": []}) == "failed"
        assert report.host_result({"jobs": [], "unreachable": True})["msg"] == report.MSG_UNREACHABLE

    def test_check_mode_plans_are_summed(self):
        plan = {"files": 3, "bytes": 30, "renames": 3, "copies": 0, "conflicts": 0, "already_done": 1}
        host = report.host_result({"jobs": [job("/a", "/b", plan=plan), job("/c", "/d", plan=plan)]})
        assert host["plan"]["files"] == 6 and host["plan"]["bytes"] == 60

    def test_aggregating_again_gives_the_same_result(self):
        for data in (self.two_jobs(), self.two_jobs(failed=True, msg="boom"),
                     {"jobs": [], "host_failed": True, "host_msg": "bad config"},
                     {"jobs": [{"unreachable": True, "msg": "gone"}]}):
            once = report.host_result(data)
            assert report.host_result(once) == once
            assert json.loads(json.dumps(once)) == once

    def test_async_keys_and_junk_are_tolerated(self):
        raw = dict(job("/a", "/b"), ansible_job_id="j1.2", finished=1, results_file="/x", invocation={})
        host = report.host_result({"jobs": [raw, "junk", None], "preflight": "junk"})
        assert host["jobs"][0]["status"] == "ok"
        assert host["jobs"][1]["status"] == "failed" and host["jobs"][1]["msg"] == MSG_NO_RESULT
        assert host["preflight"] == []


class TestFleetWithJobs:
    def fleet(self):
        two = TestHostResult().two_jobs()
        bad = {"jobs": [{"name": "data", "src": "/s", "dest": "/full", "failed": True,
                         "msg": "preflight: not enough free space at dest: 2.0 MiB still to move"}],
               "preflight": [preflight("/s", "/full", ["not enough free space at dest: 2.0 MiB still to move"],
                                       space={"same_filesystem": False, "bytes_needed": 2 * MiB,
                                              "free_bytes": MiB})]}
        return fleet_report({"web1": report.host_result(two), "web2": bad, "web3": None},
                            ["down"], pending=["web4", "web1"])

    def test_entries_have_jobs_and_preflight(self):
        fleet = self.fleet()
        web1 = fleet["hosts"]["web1"]
        assert web1["status"] == "ok"
        assert len(web1["jobs"]) == 2 and len(web1["preflight"]) == 2
        assert web1["stats"]["files_moved"] == 13
        web2 = fleet["hosts"]["web2"]
        assert web2["status"] == "failed"
        assert web2["preflight"][0]["ok"] is False
        assert "not enough free space" in web2["msg"]
        totals = fleet["totals"]
        assert (totals["hosts"], totals["hosts_ok"], totals["hosts_failed"], totals["hosts_unreachable"]) == (4, 1, 2, 1)
        assert (totals["jobs"], totals["jobs_failed"]) == (3, 1)
        # A pending host that has a result is not pending.
        assert fleet["pending"] == ["web4"] and totals["hosts_pending"] == 1

    def test_junit_has_a_testcase_per_job(self):
        root = parse(junit_xml(self.fleet()))
        suites = suites_by_name(root)
        assert [c.get("name") for c in suites["web1"].findall("testcase")] == ["/a -> /b", "/c -> /d"]
        assert suites["web1"].get("failures") == "0"
        # The failed job carries the failure: no extra host testcase.
        web2 = suites["web2"].findall("testcase")
        assert [c.get("name") for c in web2] == ["data"]
        assert "not enough free space" in web2[0].find("failure").get("message")
        # No result: a host testcase with the failure; unreachable: an error.
        assert [c.get("name") for c in suites["web3"].findall("testcase")] == ["migrate"]
        assert suites["web3"].find("testcase/failure").get("message") == MSG_NO_RESULT
        assert suites["down"].find("testcase/error").get("type") == "unreachable"
        assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "2", "1")

    def test_junit_marks_the_unfinished_job_of_an_unreachable_host(self):
        data = {"jobs": [job("/a", "/b"), {"src": "/c", "dest": "/d", "unreachable": True, "msg": "gone"}]}
        suite = parse(junit_xml(fleet_report({"h": data}))).find("testsuite")
        cases = suite.findall("testcase")
        assert cases[0].find("error") is None and cases[0].find("failure") is None
        assert cases[1].find("error").get("message") == "gone"
        assert (suite.get("tests"), suite.get("errors")) == ("2", "1")

    def test_summary_has_jobs_preflight_and_pending(self):
        markdown = summary_markdown(self.fleet())
        assert "## Jobs" in markdown
        assert "| web1 | /a -\\> /b | ok | 8 / 10 |" in markdown
        assert "## Preflight" in markdown
        assert "| web2 | /s -\\> /full | **1 problem(s)** | other | 2.0 MiB | 1.0 MiB |" in markdown
        assert "1 host(s) of the play not run" in markdown and "`web4`" in markdown
        # The preflight problem is said once: in the host's line, which the job's message carries.
        assert markdown.count("not enough free space") == 1

    def test_single_job_hosts_have_no_jobs_table(self):
        assert "## Jobs" not in summary_markdown(fleet_report({"a": module_result()}))


# ---------------------------------------------------------------------------
# Entries left at the source, and what else to know before wiping it
# ---------------------------------------------------------------------------

def skipping_result(**overrides):
    """A successful run that skipped entries of every kind, as the module reports it."""
    return module_result(
        stats={"files_total": 30, "files_moved": 20, "files_skipped": 7, "special_skipped": 3,
               "conflicts_skipped": 2, "mounts_skipped": 1, "setid_cleared": 2, "readback_from_cache": 1},
        skipped_entries=[
            {"path": "/src/fifo", "kind": "special_file", "reason": "FIFO skipped (special_files=skip)"},
            {"path": "/src/sock", "kind": "special_file", "reason": "socket skipped"},
            {"path": "/src/a.txt", "kind": "conflict", "reason": "conflict skipped (on_conflict=skip): ..."},
            {"path": "/src/gone", "kind": "vanished", "reason": "source vanished before it was moved"},
        ],
        mount_points=[{"path": "/src/mnt", "reason": "mount point left at the source"}],
        readback_from_cache=[{"path": "/dest/tiny", "reason": "inline"}],
        **overrides)


class TestLeftAtTheSource:
    def test_groups_by_kind_with_counts_from_stats(self):
        host = fleet_report({"h": skipping_result()})["hosts"]["h"]
        groups = {group["kind"]: group for group in host["skipped_kinds"]}
        # The module's lists are capped: the counts are its counters.
        assert {kind: group["count"] for kind, group in groups.items()} == {
            "special_file": 3, "conflict": 2, "mount_point": 1, "vanished": 2}
        assert groups["special_file"]["sample"] == ["/src/fifo", "/src/sock"]
        assert groups["mount_point"]["sample"] == ["/src/mnt"]
        assert host["left_at_source"] == 6       # vanished entries are not at the source
        assert host["status"] == "ok"
        assert report.status_text(host) == "ok, 6 left at the source"
        assert "2 entries lost their set-id/sticky bits (the owner was not kept)" in host["notes"]
        assert any(note.startswith("1 file(s) read back from the page cache") for note in host["notes"])

    def test_a_host_that_only_lost_vanished_entries_is_not_a_plain_ok_either(self):
        result = module_result(stats={"files_skipped": 1},
                               skipped_entries=[{"path": "/src/x", "kind": "vanished", "reason": "gone"}])
        host = fleet_report({"h": result})["hosts"]["h"]
        assert host["left_at_source"] == 0
        assert report.status_text(host) == "ok, 1 skipped"

    def test_totals_and_json(self):
        fleet = fleet_report({"a": skipping_result(), "b": module_result()})
        totals = fleet["totals"]
        assert totals["hosts_with_skipped"] == 1
        assert (totals["special_skipped"], totals["conflicts_skipped"], totals["mounts_skipped"]) == (3, 2, 1)
        assert (totals["setid_cleared"], totals["readback_from_cache"]) == (2, 1)
        assert json.loads(json.dumps(fleet)) == fleet

    def test_jobs_of_a_host_add_up(self):
        one = dict(skipping_result(), name="one", src="/s1", dest="/d1")
        two = dict(skipping_result(), name="two", src="/s2", dest="/d2")
        host = fleet_report({"h": {"jobs": [one, two]}})["hosts"]["h"]
        groups = {group["kind"]: group for group in host["skipped_kinds"]}
        assert groups["special_file"]["count"] == 6 and len(groups["special_file"]["sample"]) == 4
        markdown = summary_markdown(fleet_report({"h": {"jobs": [one, two]}}))
        assert "| h | one | ok, 6 left at the source |" in markdown

    def test_junit_has_a_skipped_testcase_per_kind(self):
        root = parse(junit_xml(fleet_report({"h": skipping_result(), "plain": module_result()})))
        suites = suites_by_name(root)
        suite = suites["h"]
        skipped = {case.get("name"): case.find("skipped") for case in suite.findall("testcase")
                   if case.find("skipped") is not None}
        assert set(skipped) == {"move job-1: special files left at the source",
                                "move job-1: conflicts left at the source",
                                "move job-1: mount points left alone",
                                "move job-1: entries gone before they were moved",
                                "move job-1: read-back from the device"}
        assert skipped["move job-1: special files left at the source"].get("message") == \
            "3 special file(s) left at the source (FIFOs, sockets, devices)"
        assert "/src/fifo\n/src/sock" in skipped["move job-1: special files left at the source"].text
        assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "0", "5")
        assert suites["plain"].get("skipped") == "0"
        assert root.get("skipped") == str(len(root.findall("testsuite/testcase/skipped"))) == "5"
        # The job's own testcase says it too.
        assert "2 entries lost their set-id/sticky bits" in suite.find("testcase/system-out").text

    def test_summary_lists_what_was_left_and_the_notes(self):
        markdown = summary_markdown(fleet_report({"h": skipping_result(), "plain": module_result()}))
        assert "2 host(s): 2 ok (1 with entries left at the source), 0 failed, 0 unreachable." in markdown
        assert "| h | ok, 6 left at the source | 20 / 30 |" in markdown
        assert "| plain | ok | 8 / 10 |" in markdown
        left = markdown.split("## Left at the source")[1].split("## Notes")[0]
        assert "- `h`: 3 special file(s) left at the source (FIFOs, sockets, devices): `/src/fifo`, `/src/sock`, " \
               "and 1 more" in left
        assert "- `h`: 1 mount point(s) inside the source left alone (not entered, not removed): `/src/mnt`" in left
        assert "2 conflict(s) skipped (on_conflict=skip), left at the source: `/src/a.txt`, and 1 more" in left
        notes = markdown.split("## Notes")[1]
        assert "2 entr(ies) vanished from the source" in notes
        assert "2 entries lost their set-id/sticky bits" in notes
        assert "`/dest/tiny`" in notes

    def test_a_plain_ok_host_has_none_of_it(self):
        fleet = fleet_report({"h": module_result()})
        assert fleet["hosts"]["h"]["skipped_kinds"] == [] and fleet["hosts"]["h"]["notes"] == []
        markdown = summary_markdown(fleet)
        assert "## Left at the source" not in markdown and "## Notes" not in markdown
        assert "1 host(s): 1 ok, 0 failed, 0 unreachable." in markdown


# ---------------------------------------------------------------------------
# Progress lines
# ---------------------------------------------------------------------------

def info(**overrides):
    """A durable.mover.move_info result of a running job."""
    result = {
        "changed": False, "exists": True, "running": True, "pid": 4242, "complete": False,
        "scan_complete": True,
        "progress": {"files_total": 1000, "files_done": 120, "files_pending": 880, "files_failed": 0,
                     "bytes_total": 10 * 1024 ** 3, "bytes_done": int(1.2 * 1024 ** 3),
                     "bytes_per_second": 45.3 * MiB, "eta_seconds": 192.4},
    }
    progress = overrides.pop("progress", {})
    result.update(overrides)
    result["progress"] = dict(result["progress"], **progress)
    return result


class TestProgressLine:
    def test_running_job(self):
        assert report.progress_line(info(), "data") == (
            "data: files 120/1000 (12.0%), bytes 1.2 GiB/10.0 GiB (12.0%), 45.3 MiB/s, ETA 3m12s")

    def test_listing_failed_and_finished(self):
        line = report.progress_line(info(scan_complete=False, progress={"files_failed": 2, "eta_seconds": None}))
        assert line.startswith("listing the source (totals so far), files 120/1000")
        assert "2 failed" in line and line.endswith("ETA unknown")
        done = report.progress_line(info(running=False, complete=True))
        assert done.endswith("complete")

    def test_no_journal_yet_and_errors(self):
        assert report.progress_line({"exists": False, "running": False}) == "starting (no journal yet)"
        assert report.progress_line({"failed": False, "msg": "journal is corrupt"}, "j") == (
            "j: progress unavailable: journal is corrupt")
        assert report.progress_line({"unreachable": True, "msg": "ssh\ntimeout"}) == "host unreachable: ssh\\x0atimeout"
        assert report.progress_line(None) == "starting (no journal yet)"

    @pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.6, "1m00s"), (61, "1m01s"), (3600 + 5 * 60, "1h05m"),
                                               (86400 * 2 + 3 * 3600, "2d03h"), (None, "0s")])
    def test_human_duration(self, seconds, text):
        assert report.human_duration(seconds) == text


def test_unreachable_job_message_carries_its_last_progress():
    entry = report.job_entry({"src": "/a", "dest": "/b", "unreachable": True,
                              "last_progress": {"files_done": 256, "files_total": 703,
                                                "bytes_done": 1048576, "bytes_total": 4194304}})
    assert entry["unreachable"] is True
    assert "last seen: 256 of 703 files done" in entry["msg"]
    assert entry["last_progress"]["files_done"] == 256
