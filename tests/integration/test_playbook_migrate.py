# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/migrate.yml end to end: the migrate role's jobs, async progress and
preflight, and the play with strategy free, serial, forks and max_fail_percentage.

Each test runs the real ansible-playbook, on localhost or on an inventory of
several "hosts" that are all this machine (ansible_connection=local, each with
its own directories), and checks the data on disk, the recap and the reports.

Nothing here waits for time to pass: a move that must still be running while
the test watches its progress lines is held on its job's lock by another
process (as a run from an earlier play would), and released once the lines
were seen.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from migrate_helpers import (
    PROGRESS,
    LivePlaybook,
    LockHolder,
    interrupted_move,
    job_id,
    load_reports,
    local_inventory,
    output,
    recap,
    regular_files,
    run_playbook,
)


def tree(count: int, size: int = 1000, prefix: str = "f") -> dict:
    """`count` files of `size` bytes, in subdirectories of 100."""
    return {"d%02d/%s%04d" % (i // 100, prefix, i): (b"%06d" % i) * (size // 6) for i in range(count)}


def write(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def progress_lines(text: str) -> list:
    return [m for m in map(PROGRESS.search, text.splitlines()) if m]


def kill_with_workers(live: LivePlaybook) -> None:
    """Kill ansible-playbook and its worker processes (a worker waiting for a look outlives its parent)."""
    pid = live.proc.pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except OSError:
                pass
    live.kill()


def tasks_run(text: str, name: str) -> int:
    """How many tasks of the migrate role called `name` ran (were not skipped) on localhost."""
    made = 0
    for task in text.split("\nTASK [")[1:]:
        if task.startswith("durable.mover.migrate : %s]" % name) \
                and re.search(r"^(ok|changed): \[localhost\]", task, re.MULTILINE):
            made += 1
    return made


def looks_made(text: str) -> int:
    """How many "FOLLOW | Look at the move" tasks ran on localhost."""
    return tasks_run(text, "FOLLOW | Look at the move")


# --------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------

def test_two_jobs_in_the_foreground(tmp_path: Path) -> None:
    one, two = tree(5, prefix="one"), tree(7, prefix="two")
    write(tmp_path / "src1", one)
    write(tmp_path / "src2", two)
    extra = {
        "migrate_jobs": [
            {"src": str(tmp_path / "src1"), "dest": str(tmp_path / "dest1"), "name": "first"},
            # A job's own options override the role's: this one keeps its sources.
            {"src": str(tmp_path / "src2"), "dest": str(tmp_path / "dest2"),
             "options": {"mode": "copy", "job_id": "second-job"}},
        ],
        "migrate_state_dir": str(tmp_path / "state"),
        "migrate_hash": "sha256",
        "migrate_async": False,
        # A false boolean reaches the module (it is not taken for "unset").
        "migrate_remove_empty_dirs": False,
        "migrate_report_dir": str(tmp_path / "reports"),
    }
    proc = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert regular_files(tmp_path / "dest1") == one and regular_files(tmp_path / "src1") == {}
    assert (tmp_path / "src1" / "d00").is_dir()                # remove_empty_dirs: false
    assert regular_files(tmp_path / "dest2") == two and regular_files(tmp_path / "src2") == two
    assert (tmp_path / "state" / "second-job" / "journal.sqlite").exists()
    # In the foreground there is nothing to follow.
    assert progress_lines(proc.stdout) == []
    assert "Start the move in the background" in proc.stdout        # skipped
    assert recap(proc)["changed"] == 2

    fleet, junit, summary = load_reports(tmp_path / "reports")
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok"
    assert [job["name"] for job in host["jobs"]] == ["first", "%s -> %s" % (tmp_path / "src2", tmp_path / "dest2")]
    assert [job["hash_algorithm"] for job in host["jobs"]] == ["sha256", "sha256"]
    assert host["jobs"][1]["job_id"] == "second-job"
    assert host["stats"]["files_moved"] == 12
    assert len(host["preflight"]) == 2 and all(entry["ok"] for entry in host["preflight"])
    assert [case.get("name") for case in junit.findall("testsuite/testcase")] == [job["name"] for job in host["jobs"]]
    assert "## Jobs" in summary

    # Rerun: nothing to do, nothing changed.
    again = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert again.returncode == 0, output(again)
    assert recap(again)["changed"] == 0, output(again)
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    assert fleet["hosts"]["localhost"]["stats"]["files_moved"] == 0
    assert fleet["hosts"]["localhost"]["stats"]["files_already_done"] == 12


def test_no_job_is_reported_not_run(tmp_path: Path) -> None:
    proc = run_playbook(extra_vars={"migrate_report_dir": str(tmp_path / "reports")}, tmp_dir=tmp_path)
    assert proc.returncode != 0, output(proc)
    assert "no job to run: set migrate_src and migrate_dest, or give migrate_jobs" in proc.stdout
    fleet, junit, _summary = load_reports(tmp_path / "reports")
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "failed" and host["jobs"] == []
    assert host["msg"].startswith("no job to run")
    assert junit.find("testsuite/testcase").get("name") == "migrate"
    assert recap(proc)["failed"] == 1


def test_a_host_with_refused_variables_fails_and_is_reported(tmp_path: Path) -> None:
    inventory = fleet_of(tmp_path, {"good": tree(2), "bad": tree(1)})
    # The role's argument spec refuses a job without dest, on that host only.
    text = inventory.read_text(encoding="utf-8").replace(
        "    bad:\n", "    bad:\n      migrate_jobs: [{src: /nowhere}]\n")
    inventory.write_text(text, encoding="utf-8")
    proc = run_playbook("-i", str(inventory), extra_vars={"migrate_report_dir": str(tmp_path / "reports")},
                        tmp_dir=tmp_path)
    assert proc.returncode != 0, output(proc)
    assert recap(proc, "bad")["failed"] == 1
    assert regular_files(tmp_path / "good" / "dest") == tree(2)
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    assert fleet["hosts"]["good"]["status"] == "ok"
    assert fleet["hosts"]["bad"]["status"] == "failed"
    assert fleet["hosts"]["bad"]["msg"] == "no result (host failed before the move ran)"
    assert fleet["pending"] == []


# --------------------------------------------------------------------------
# Async moves and their progress
# --------------------------------------------------------------------------

@pytest.fixture
def held_job(tmp_path: Path) -> dict:
    """A job half done by a killed run, whose lock another process holds."""
    paths = {name: tmp_path / name for name in ("src", "dest", "state", "reports")}
    paths["files"] = tree(300)
    write(paths["src"], paths["files"])
    interrupted_move(paths["src"], paths["dest"], paths["state"])
    paths["job_id"] = job_id(paths["src"], paths["dest"])
    return paths


def held_args(paths: dict, **extra) -> dict:
    values = {
        "migrate_src": str(paths["src"]), "migrate_dest": str(paths["dest"]),
        "migrate_state_dir": str(paths["state"]), "migrate_report_dir": str(paths["reports"]),
        "migrate_poll_interval": 1, "migrate_progress_host_interval": 0,
    }
    values.update(extra)
    return values


def test_async_move_prints_progress_until_it_ends(held_job: dict) -> None:
    with LockHolder(held_job["state"], held_job["job_id"]) as holder:
        # The move starts in the background and waits for the lock: the role
        # polls it and prints the job's progress from its journal meanwhile.
        live = LivePlaybook(extra_vars=held_args(held_job, migrate_wait_for_running=False,
                                                 migrate_lock_timeout=240),
                            tmp_dir=held_job["state"].parent)
        try:
            seen = live.wait_for(PROGRESS, count=2)
        finally:
            holder.release()
        proc = live.finish()
    assert proc.returncode == 0, output(proc)
    for match in seen:
        assert match.group("name") == "%s -> %s" % (held_job["src"], held_job["dest"])
        assert int(match.group("total")) == 300
        assert 0 < int(match.group("done")) < 300          # the killed run's share
    assert re.search(r'files \d+/300 \([0-9.]+%\), bytes [0-9.]+ KiB/[0-9.]+ KiB \([0-9.]+%\), '
                     r'[0-9.]+ (B|KiB|MiB)/s, [0-9.]+ files/s, ETA', proc.stdout), output(proc)
    assert "FOLLOW | Look at the move" in proc.stdout
    assert regular_files(held_job["dest"]) == held_job["files"]
    assert regular_files(held_job["src"]) == {}
    fleet, _junit, _summary = load_reports(held_job["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok" and host["complete"] is True
    assert host["stats"]["resumed"] is True
    assert host["stats"]["files_moved"] + host["stats"]["files_already_done"] == 300
    # No trace of the async job is left in the report or on the host.
    assert "ansible_job_id" not in host["jobs"][0]
    assert not list(Path(os.path.expanduser("~/.ansible_async")).glob("*%s*" % host["job_id"]))


def _held_play_an_hour_between_looks(held_job: dict, *args: str) -> subprocess.CompletedProcess:
    """The play of the held job with an hour between looks: its move waits for the lock until
    the first look printed a progress line, then the lock is released; the finished play. It
    must end well before the next look is due (150 s), not an hour later."""
    with LockHolder(held_job["state"], held_job["job_id"]) as holder:
        live = LivePlaybook(*args, extra_vars=held_args(held_job, migrate_wait_for_running=False,
                                                        migrate_lock_timeout=240, migrate_poll_interval=3600),
                            tmp_dir=held_job["state"].parent)
        try:
            live.wait_for(PROGRESS, count=1)
        finally:
            holder.release()
        try:
            return live.finish(timeout=150)
        except subprocess.TimeoutExpired:
            kill_with_workers(live)
            raise AssertionError("150 s after the move could take its lock, the play still waits for its next "
                                 "look (migrate_poll_interval 3600):\n%s" % "".join(live.lines))


def test_the_end_of_a_move_is_noticed_before_the_next_look_is_due(held_job: dict) -> None:
    """An hour between looks: the move, held on its lock until the first look saw it running, ends
    soon after the release, and the poll round then waiting for its next look notices the end at
    once (it waits on the host in small steps, watching the async job's result file), not an hour
    later: the play ends, one poll round after the first look."""
    proc = _held_play_an_hour_between_looks(held_job)
    assert proc.returncode == 0, output(proc)
    assert regular_files(held_job["dest"]) == held_job["files"]
    # The first look (its own task), then one poll round: its look saw the end. A move that ends in
    # its first eight rounds never enters the tree of includes of the later rounds.
    assert looks_made(proc.stdout) == 2, output(proc)
    assert "FOLLOW | Poll rounds, level 2" not in proc.stdout, output(proc)
    fleet, _junit, _summary = load_reports(held_job["reports"])
    assert fleet["hosts"]["localhost"]["status"] == "ok"
    assert fleet["hosts"]["localhost"]["complete"] is True


def test_the_result_of_a_move_that_ended_is_read_from_its_file_without_a_module_run(held_job: dict) -> None:
    """The look that sees the move's end reads the async job's result file on the host (one shell
    command): neither move_info nor async_status runs for it. The first look ran move_info (the move
    waited for its lock: a progress line); then the poll round waited on the host until the end."""
    proc = _held_play_an_hour_between_looks(held_job, "-vvv")
    assert proc.returncode == 0, output(proc)
    assert looks_made(proc.stdout) == 2, output(proc)
    modules = {name: len(re.findall(r"PUT .* TO \S*/AnsiballZ_%s\.py" % name, proc.stdout))
               for name in ("move_info", "async_status")}
    assert modules == {"move_info": 1, "async_status": 0}, modules
    assert regular_files(held_job["dest"]) == held_job["files"]
    fleet, _junit, _summary = load_reports(held_job["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok" and host["complete"] is True, host
    assert host["stats"]["files_moved"] + host["stats"]["files_already_done"] == 300
    assert not list(Path(os.path.expanduser("~/.ansible_async")).glob("*%s*" % host["job_id"]))
    # the last line of the host: the move's end, with its counts from the result
    finished = [m for m in map(PROGRESS.match, proc.stdout.splitlines()) if m and "finished, files" in m.group(0)]
    assert finished and finished[-1].group("done") == finished[-1].group("total") == "300", output(proc)


def test_a_run_left_by_an_earlier_play_is_waited_for_then_finished(held_job: dict) -> None:
    with LockHolder(held_job["state"], held_job["job_id"]) as holder:
        live = LivePlaybook(extra_vars=held_args(held_job), tmp_dir=held_job["state"].parent)
        try:
            live.wait_for(re.compile(r"a run of this job is still going \(pid %d\)" % holder.pid))
            live.wait_for(PROGRESS, count=2)
        finally:
            holder.release()
        proc = live.finish()
    assert proc.returncode == 0, output(proc)
    # The preflight (the move module's own: one job) saw its lock held and moved nothing, the role
    # waited (move_info saw it running), then moved what was left.
    text = proc.stdout
    assert tasks_run(text, "PREFLIGHT | Check the job, and move it when it is small") == 1, output(proc)
    assert text.index("PREFLIGHT | Check the job") < text.index("a run of this job is still going")
    assert text.index("a run of this job is still going") < text.index("Start the move in the background")
    # the look for an earlier run ran once: for this job, whose preflight found its lock held
    assert tasks_run(text, "FOLLOW | Look for a run of the job from an earlier play") == 1, output(proc)
    assert regular_files(held_job["dest"]) == held_job["files"]
    fleet, _junit, _summary = load_reports(held_job["reports"])
    assert fleet["hosts"]["localhost"]["status"] == "ok"
    assert fleet["hosts"]["localhost"]["complete"] is True


def test_async_move_of_many_files(tmp_path: Path) -> None:
    files = tree(2000, size=2000)
    write(tmp_path / "src", files)
    extra = {"migrate_src": str(tmp_path / "src"), "migrate_dest": str(tmp_path / "dest"),
             "migrate_state_dir": str(tmp_path / "state"), "migrate_report_dir": str(tmp_path / "reports"),
             "migrate_poll_interval": 1, "migrate_mode": "copy", "migrate_workers": 1}
    proc = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert regular_files(tmp_path / "dest") == files
    # Each progress line that was printed (how many depends on the machine's
    # speed) counts up to the whole tree once listed.
    for match in progress_lines(proc.stdout):
        assert int(match.group("done")) <= int(match.group("total")) <= 2000
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    assert fleet["hosts"]["localhost"]["stats"]["files_moved"] == 2000


def test_the_rerun_of_a_finished_job_runs_in_the_foreground(tmp_path: Path) -> None:
    """The preflight of a finished job finds nothing to move: the rerun runs no move at all
    (no async job, no look, no poll round; the preflight's answer is the move's result) and
    reports the job from its journal."""
    files = tree(300)
    write(tmp_path / "src", files)
    extra = {"migrate_src": str(tmp_path / "src"), "migrate_dest": str(tmp_path / "dest"),
             "migrate_state_dir": str(tmp_path / "state"), "migrate_report_dir": str(tmp_path / "reports"),
             "migrate_poll_interval": 1}
    first = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert first.returncode == 0, output(first)
    assert tasks_run(first.stdout, "MIGRATE | Start the move in the background") == 1, output(first)
    assert regular_files(tmp_path / "dest") == files
    proc = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert recap(proc)["changed"] == 0, output(proc)
    assert tasks_run(proc.stdout, "MIGRATE | Start the move in the background") == 0, output(proc)
    assert tasks_run(proc.stdout, "MIGRATE | Move the job in the foreground") == 0, output(proc)
    assert looks_made(proc.stdout) == 0, output(proc)
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok" and host["complete"] is True
    assert host["stats"]["files_moved"] == 0
    assert host["stats"]["files_already_done"] == 300


# --------------------------------------------------------------------------
# Preflight
# --------------------------------------------------------------------------

@pytest.mark.root
def test_preflight_stops_the_jobs_that_cannot_run(tmp_path: Path, tmpfs, remount_ro) -> None:
    small = tmpfs("64k")
    read_only = tmpfs("8m")
    remount_ro(read_only)
    big = {"big.bin": os.urandom(200 * 1024), "small": b"x"}
    good = tree(3)
    write(tmp_path / "big", big)
    write(tmp_path / "ro", good)
    write(tmp_path / "good", good)
    extra = {
        "migrate_jobs": [
            {"src": str(tmp_path / "big"), "dest": str(small / "dest"), "name": "too big"},
            {"src": str(tmp_path / "ro"), "dest": str(read_only / "dest"), "name": "read-only"},
            {"src": str(tmp_path / "good"), "dest": str(tmp_path / "good-dest"), "name": "good"},
        ],
        "migrate_state_dir": str(tmp_path / "state"),
        "migrate_report_dir": str(tmp_path / "reports"),
    }
    proc = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode != 0, output(proc)
    # Failed early, with both numbers (what the destination would allocate: 200 KiB of data in
    # 4 KiB blocks, and a margin) and how the first was counted, before anything moved.
    found = re.search(r"not enough free space at dest: about [0-9.]+ MiB \(\d+ bytes\) needed, %s has 64\.0 KiB "
                      r"\(65536 bytes\) free \(2 file\(s\) holding 200\.0 KiB of data take 204\.0 KiB in 4\.0 KiB "
                      r"blocks, [^)]*\)" % re.escape(str(small)), proc.stdout)
    assert found, output(proc)
    problem = found.group(0)
    assert "dest is on a read-only filesystem: %s" % read_only in proc.stdout
    assert regular_files(tmp_path / "big") == big and regular_files(small) == {}
    assert regular_files(tmp_path / "ro") == good
    # The job that could run did.
    assert regular_files(tmp_path / "good-dest") == good
    assert recap(proc)["failed"] == 1

    fleet, junit, summary = load_reports(tmp_path / "reports")
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "failed"
    assert [job["status"] for job in host["jobs"]] == ["failed", "failed", "ok"]
    assert host["jobs"][0]["msg"] == "preflight: " + problem
    assert [entry["ok"] for entry in host["preflight"]] == [False, False, True]
    assert host["preflight"][0]["findings"]["space"]["free_bytes"] == 65536
    failures = [case.find("failure") for case in junit.findall("testsuite/testcase")]
    assert [f is not None for f in failures] == [True, True, False]
    assert "needed, %s has 64.0 KiB (65536 bytes) free" % small in summary


# --------------------------------------------------------------------------
# Several hosts: strategy free, serial, forks, max_fail_percentage
# --------------------------------------------------------------------------

def fleet_of(tmp_path: Path, hosts: dict) -> Path:
    """An inventory of local hosts; `hosts` maps each to its tree (None: no source)."""
    host_vars = {}
    for host, files in hosts.items():
        base = tmp_path / host
        if files is not None:
            write(base / "src", files)
        host_vars[host] = {"migrate_src": str(base / "src"), "migrate_dest": str(base / "dest"),
                           "migrate_state_dir": str(base / "state"), "migrate_poll_interval": 1}
    return local_inventory(tmp_path / "inventory.yml", list(hosts), host_vars)


def test_strategy_free_reports_once_after_every_host(tmp_path: Path) -> None:
    hosts = {"h1": tree(3), "h2": tree(600, size=3000), "h3": tree(4)}
    inventory = fleet_of(tmp_path, hosts)
    extra = {"migrate_strategy": "free", "migrate_report_dir": str(tmp_path / "reports")}
    proc = run_playbook("-i", str(inventory), "-f", "3", extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert "run_once" not in proc.stdout + proc.stderr
    for host, files in hosts.items():
        assert regular_files(tmp_path / host / "dest") == files, host
        assert recap(proc, host)["changed"] == 1
    # Exactly one host wrote the reports, after all had finished.
    assert proc.stdout.count("TASK [durable.mover.report : REPORT | Aggregate the results of every host so far]") == 1
    assert proc.stdout.count("# durable.mover migration report") == 1
    fleet, junit, _summary = load_reports(tmp_path / "reports")
    assert sorted(fleet["hosts"]) == ["h1", "h2", "h3"]
    assert fleet["totals"]["hosts_ok"] == 3
    assert fleet["totals"]["files_moved"] == 607
    assert len(junit.findall("testsuite")) == 3

    again = run_playbook("-i", str(inventory), extra_vars=extra, tmp_dir=tmp_path)
    assert again.returncode == 0, output(again)
    for host in hosts:
        assert recap(again, host)["changed"] == 0, output(again)


def test_serial_batches_with_one_fork(tmp_path: Path) -> None:
    hosts = {"h1": tree(2), "h2": tree(3), "h3": tree(4)}
    inventory = fleet_of(tmp_path, hosts)
    extra = {"migrate_serial": 2, "migrate_report_dir": str(tmp_path / "reports")}
    proc = run_playbook("-i", str(inventory), "-f", "1", extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    for host, files in hosts.items():
        assert regular_files(tmp_path / host / "dest") == files, host
    # One report per batch; the last one covers every host.
    assert proc.stdout.count("# durable.mover migration report") == 2
    assert "1 host(s) of the play not run" in proc.stdout        # h3, in the first batch's report
    fleet, _junit, summary = load_reports(tmp_path / "reports")
    assert sorted(fleet["hosts"]) == ["h1", "h2", "h3"]
    assert fleet["pending"] == [] and "not run" not in summary


def test_serial_with_max_fail_percentage_stops_after_a_bad_batch(tmp_path: Path) -> None:
    hosts = {"bad": None, "h1": tree(2), "h2": tree(3)}
    inventory = fleet_of(tmp_path, hosts)
    extra = {"migrate_serial": 2, "migrate_max_fail_percentage": 0, "migrate_report_dir": str(tmp_path / "reports")}
    proc = run_playbook("-i", str(inventory), extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode != 0, output(proc)
    assert recap(proc, "bad")["failed"] == 1
    assert regular_files(tmp_path / "h1" / "dest") == hosts["h1"]     # same batch: moved
    assert not (tmp_path / "h2" / "dest").exists()                   # next batch: never ran
    fleet, _junit, summary = load_reports(tmp_path / "reports")
    assert fleet["hosts"]["bad"]["status"] == "failed"
    assert "src does not exist" in fleet["hosts"]["bad"]["msg"]
    assert fleet["hosts"]["h1"]["status"] == "ok"
    assert fleet["pending"] == ["h2"] and "`h2`" in summary

    # Without the percentage, the bad host fails alone and the next batch runs.
    extra.pop("migrate_max_fail_percentage")
    proc = run_playbook("-i", str(inventory), extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode != 0, output(proc)
    assert regular_files(tmp_path / "h2" / "dest") == hosts["h2"]
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    assert (fleet["totals"]["hosts_ok"], fleet["totals"]["hosts_failed"]) == (2, 1)
    assert fleet["hosts"]["h1"]["changed"] is False                 # already moved by the first run
