# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""_follow: a host's follow state across looks, its moving average and ETA, the fleet's line."""

from __future__ import annotations

from ansible_collections.durable.mover.plugins.module_utils import _follow


def info(done, total=100, bytes_done=None, bytes_total=None, running=True, scan_complete=True, failed=0):
    return {"exists": True, "running": running, "scan_complete": scan_complete,
            "progress": {"files_total": total, "files_done": done, "files_failed": failed,
                         "bytes_total": bytes_total if bytes_total is not None else total * 1000,
                         "bytes_done": bytes_done if bytes_done is not None else done * 1000}}


def test_a_resumed_job_goes_on_from_where_earlier_runs_left_it():
    # 60 of 100 files were done by an earlier run: the first look says 60, not 0.
    state = _follow.look({}, info(60), None, "async", "job", 0, 1, now=1000.0, run="r")
    current = state["current"]
    assert current["status"] == "moving" and current["progress"]["files_done"] == 60
    assert current["eta_seconds"] is None                    # one look: no rate yet
    state = _follow.look(state, info(70), None, "async", "job", 0, 1, now=1010.0, run="r")
    current = state["current"]
    assert current["files_per_second"] == 1.0 and current["bytes_per_second"] == 1000.0
    assert current["eta_seconds"] == 30.0                    # 30 files left at 1 file/s
    # A look that raced a commit never takes a number back.
    state = _follow.look(state, info(65), None, "async", "job", 0, 1, now=1020.0, run="r")
    assert state["current"]["progress"]["files_done"] == 70


def test_the_moving_average_forgets_looks_older_than_the_window():
    state = {}
    for second, done in ((0, 0), (10, 50), (70, 56), (80, 57)):
        state = _follow.look(state, info(done, total=1000), None, "async", "job", 0, 1, now=float(second), run="r")
    # From the last look at least 60 s old on: 7 files in 70 s, not 57 in 80 s.
    assert state["current"]["files_per_second"] == 0.1


def test_eta_is_the_longer_of_files_and_bytes_and_unknown_without_a_rate():
    progress = {"files_total": 100, "files_done": 50, "files_failed": 0, "bytes_total": 10_000, "bytes_done": 1000}
    assert _follow.eta_seconds(progress, 10.0, 100.0) == 90.0     # bytes: 9000 B at 100 B/s
    assert _follow.eta_seconds(progress, 10.0, 0.0) is None
    done_bytes = dict(progress, bytes_done=10_000)
    assert _follow.eta_seconds(done_bytes, 10.0, 0.0) == 5.0


def test_no_eta_while_the_source_is_listed():
    state = _follow.look({}, info(10, scan_complete=False), None, "async", "job", 0, 1, now=0.0, run="r")
    state = _follow.look(state, info(20, scan_complete=False), None, "async", "job", 0, 1, now=10.0, run="r")
    assert state["current"]["status"] == "listing" and state["current"]["eta_seconds"] is None
    line = _follow.host_line("h1", state["current"])
    assert "files 20/100 (20.0%) so far" in line and "ETA after the listing" in line


def test_over_when_async_status_says_finished_and_state_of_another_play_is_dropped():
    state = _follow.look({}, info(100, running=False), {"finished": True, "changed": True}, "async", "job", 0, 1,
                         now=0.0, run="r")
    assert state["current"]["over"] and state["current"]["status"] == "finished"
    fresh = _follow.look(state, info(100, running=True), None, "async", "job", 0, 1, now=5.0, run="other")
    assert fresh["polls"] == 1 and not fresh["current"]["over"]


def test_unreachable_keeps_the_last_progress():
    state = _follow.look({}, info(40), None, "async", "job", 0, 1, now=0.0, run="r")
    state = _follow.look(state, {"unreachable": True, "msg": "ssh: connect timed out"}, None, "async", "job", 0, 1,
                         now=10.0, run="r")
    current = state["current"]
    assert current["over"] and current["unreachable"] and current["progress"]["files_done"] == 40
    assert "host unreachable: ssh: connect timed out" in current["msg"]


def test_a_host_line_is_due_on_a_change_of_status_and_on_the_slow_interval():
    current = {"status": "moving", "last_status": "moving", "last_line": 100.0}
    assert not _follow.host_line_due(current, 130.0, 60)
    assert _follow.host_line_due(current, 160.0, 60)
    assert _follow.host_line_due(dict(current, status="finished"), 101.0, 60)


def test_fleet_line_counts_hosts_sums_jobs_and_takes_the_slowest_eta():
    def host(done, over=False, status="moving", eta=10.0, jobs_done=None, unreachable=""):
        state = {"run": "r", "polls": 3,
                 "current": {"over": over, "status": status, "kind": "async", "job_index": 0,
                             "files_per_second": 1.0, "bytes_per_second": 1000.0, "eta_seconds": eta},
                 "jobs": {"0": {"files_total": 100, "files_done": done, "files_failed": 0,
                                "bytes_total": 100_000, "bytes_done": done * 1000}}}
        return {"migrate_follow": state, "migrate_follow_run": "r", "migrate_plan": {"jobs": [{}]},
                "migrate_job_results": jobs_done or [], "migrate_unreachable_msg": unreachable}
    hosts = {"a": host(50, eta=50.0), "b": host(90, eta=10.0), "c": host(100, over=True, status="finished"),
             "d": host(30, over=True, status="failed", jobs_done=[{"failed": True}]),
             "e": host(20, unreachable="host unreachable")}
    line = _follow.fleet_line(hosts, 7)
    assert line.startswith("FLEET poll 7: 5 host(s): 1 done, 2 running, 1 failed, 1 unreachable | files 290/500 (58.0%)")
    assert line.endswith("| 2.0 KiB/s, 2.0 files/s | ETA 50s")


def test_the_counters_of_a_move_that_ended_come_from_its_result():
    # A complete job: every file but the failed ones is done, every byte.
    result = {"complete": True, "stats": {"files_total": 300, "files_failed": 0, "bytes_total": 9000,
                                          "files_moved": 120, "files_already_done": 180}}
    assert _follow.progress_of_result(result) == {"files_total": 300, "files_done": 300, "files_failed": 0,
                                                  "bytes_total": 9000, "bytes_done": 9000}
    # An incomplete one (failed files, interrupted): what the last look saw, never less.
    failed = {"complete": False, "stats": {"files_total": 300, "files_failed": 2, "bytes_total": 9000}}
    before = {"files_total": 300, "files_done": 250, "files_failed": 0, "bytes_total": 9000, "bytes_done": 7000}
    assert _follow.progress_of_result(failed, before) == {"files_total": 300, "files_done": 250, "files_failed": 2,
                                                          "bytes_total": 9000, "bytes_done": 7000}
    # The look made from it: over, finished, with those counters.
    state = _follow.look({}, {"exists": True, "running": False, "scan_complete": True,
                              "progress": _follow.progress_of_result(result)},
                         dict(result, finished=True), "async", "job", 0, 1, now=1000.0, run="r")
    assert state["current"]["over"] is True and state["current"]["status"] == "finished"
    assert state["current"]["progress"]["files_done"] == 300
