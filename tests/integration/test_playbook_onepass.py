# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The source is listed once per play (issue 13): the migrate role's preflight
lists each job's source into its journal (durable.mover.preflight prepare),
the move given its token moves what the journal holds, and the rerun of a
finished job is answered by the preflight alone: no move, no look. A job
larger than a foreground move takes, whose source's filesystem bounds the
space it needs, is counted only up to that size and listed by its move.

Real ansible-playbook on localhost; the listings of the source are counted
with strace (each directory listed to its end: a getdents64 that returns 0).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_playbook_migrate import tasks_run
from migrate_helpers import (
    ansible_env,
    load_reports,
    make_tree as write,
    output,
    playbook_argv,
    recap,
    regular_files,
    run_playbook,
    REPO_ROOT,
    TIMEOUT,
)


def tree(count: int, size: int = 100) -> dict:
    return {"d%02d/f%04d" % (i // 50, i): (b"%06d" % i) * (size // 6) for i in range(count)}


def module_tasks(text: str) -> dict:
    """The tasks of the role that run a module on the host, and how often each ran."""
    names = ("MIGRATE | Move the job in the foreground", "MIGRATE | Start the move in the background",
             "FOLLOW | Look for a run of the job from an earlier play", "FOLLOW | Look at the move",
             "PREFLIGHT | Check every job before anything moves", "PREFLIGHT | Check the job, and move it when it is small")
    return {name: tasks_run(text, name) for name in names}


def job_vars(tmp_path: Path, **extra) -> dict:
    return {"migrate_src": str(tmp_path / "src"), "migrate_dest": str(tmp_path / "dest"),
            "migrate_state_dir": str(tmp_path / "state"), "migrate_report_dir": str(tmp_path / "reports"),
            "migrate_poll_interval": 1, **extra}


def test_the_rerun_of_a_finished_job_runs_no_move_and_no_look(tmp_path: Path) -> None:
    """The preflight finds the job finished with nothing new: its answer (the move's own result,
    from the journal) is the job's outcome; no move module runs, no look for an earlier run."""
    files = tree(300)
    write(tmp_path / "src", files)
    extra = job_vars(tmp_path)
    first = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert first.returncode == 0, output(first)
    assert regular_files(tmp_path / "dest") == files
    proc = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    ran = module_tasks(proc.stdout)
    # (one job: the move module's own preflight, which answers from the journal)
    assert ran == {"MIGRATE | Move the job in the foreground": 0, "MIGRATE | Start the move in the background": 0,
                   "FOLLOW | Look for a run of the job from an earlier play": 0, "FOLLOW | Look at the move": 0,
                   "PREFLIGHT | Check every job before anything moves": 0,
                   "PREFLIGHT | Check the job, and move it when it is small": 1}, output(proc)
    assert recap(proc)["changed"] == 0, output(proc)
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok" and host["complete"] is True, host
    assert host["stats"]["files_moved"] == 0
    assert host["stats"]["files_already_done"] == 300
    assert host["stats"]["files_total"] == 300
    # A file that appears at the source afterwards is found by the next play, and moved.
    write(tmp_path / "src", {"d00/late": b"late"})
    again = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert again.returncode == 0, output(again)
    # one file to move: checked and moved by the one module run
    assert module_tasks(again.stdout) == {
        "MIGRATE | Move the job in the foreground": 0, "MIGRATE | Start the move in the background": 0,
        "FOLLOW | Look for a run of the job from an earlier play": 0, "FOLLOW | Look at the move": 0,
        "PREFLIGHT | Check every job before anything moves": 0,
        "PREFLIGHT | Check the job, and move it when it is small": 1}, output(again)
    assert recap(again)["changed"] == 1, output(again)
    assert regular_files(tmp_path / "dest") == {**files, "d00/late": b"late"}
    assert regular_files(tmp_path / "src") == {}


def _listings(trace: Path, directory: Path) -> int:
    """How many times `directory` was listed to its end (getdents64 returning 0) in an strace -f -y log."""
    pattern = re.compile(r"getdents64\(\d+<%s>, .*\) = 0$" % re.escape(str(directory)))
    return sum(1 for line in trace.read_text(errors="replace").splitlines() if pattern.search(line))


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
@pytest.mark.parametrize("async_move, small_dest", [(True, True), (False, False), (True, False)],
                         ids=["async-listed-by-preflight", "foreground", "async-counted-to-the-bound"])
def test_a_play_lists_the_source_once(tmp_path: Path, loopfs, async_move: bool, small_dest: bool) -> None:
    """A fresh job of 200 files in 4 directories, on an ext4 of its own.

    In the foreground, and in the background when the destination (a smaller ext4) has no room
    for all the source's filesystem holds (48 MiB beside the job), the preflight lists the source into the journal and
    the move (given the preflight's token) does not list it again: every directory is listed
    once. Otherwise (the destination beside tmp_path has room for all of the source's ext4) the
    job (more than migrate_foreground_max_files) goes to the background unlisted: the preflight
    counted it only until it had more than 100 files (the first three directories), and the move
    lists it, once."""
    files = tree(200)
    src = loopfs("ext4", 128) / "src"
    write(src, files)
    extra = job_vars(tmp_path, migrate_async=async_move, migrate_src=str(src))
    if small_dest:
        (src.parent / "other-data").write_bytes(os.urandom(48 << 20))
        extra["migrate_dest"] = str(loopfs("ext4", 40) / "dest")
    trace = tmp_path / "strace.log"
    argv = ["strace", "-f", "-qq", "-y", "-e", "trace=getdents64", "-o", str(trace)] \
        + playbook_argv([], extra, tmp_path)
    proc = subprocess.run(argv, cwd=str(REPO_ROOT), env=ansible_env(REPO_ROOT), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, output(proc)
    assert regular_files(Path(extra["migrate_dest"])) == files
    counts = {name: _listings(trace, src.resolve() / name) for name in ("d00", "d01", "d02", "d03")}
    if async_move and not small_dest:
        assert counts == {"d00": 2, "d01": 2, "d02": 2, "d03": 1}, counts
    else:
        assert counts == {"d00": 1, "d01": 1, "d02": 1, "d03": 1}, counts


def test_check_mode_writes_no_journal(tmp_path: Path) -> None:
    files = tree(30)
    write(tmp_path / "src", files)
    proc = run_playbook("--check", extra_vars=job_vars(tmp_path), tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert not (tmp_path / "state").exists()
    assert regular_files(tmp_path / "src") == files


NO_MODULE_TASK = {"MIGRATE | Move the job in the foreground": 0, "MIGRATE | Start the move in the background": 0,
                  "FOLLOW | Look for a run of the job from an earlier play": 0, "FOLLOW | Look at the move": 0,
                  "PREFLIGHT | Check every job before anything moves": 0,
                  "PREFLIGHT | Check the job, and move it when it is small": 0}


def test_a_small_job_is_checked_and_moved_by_one_module_run(tmp_path: Path) -> None:
    """A host with one job of at most migrate_foreground_max_files files (100) and
    migrate_foreground_max_bytes: the move module checks it (its option preflight) and moves it in
    the same run: one module task for the whole job, and the preflight's findings in the report."""
    files = tree(100)
    write(tmp_path / "src", files)
    proc = run_playbook(extra_vars=job_vars(tmp_path), tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert module_tasks(proc.stdout) == {**NO_MODULE_TASK,
                                         "PREFLIGHT | Check the job, and move it when it is small": 1}, output(proc)
    assert recap(proc)["changed"] == 1, output(proc)
    assert regular_files(tmp_path / "dest") == files
    assert regular_files(tmp_path / "src") == {}
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok" and host["complete"] is True, host
    assert host["stats"]["files_moved"] == 100
    assert "preflight" not in host["jobs"][0]
    result = json.loads((tmp_path / "reports" / "hosts" / "localhost.json").read_text())["result"]
    assert [(p["ok"], p["findings"]["plan"]["files"]) for p in result["preflight"]] == [(True, 100)], result


def test_a_larger_job_is_handed_to_the_async_move_with_the_preflights_token(tmp_path: Path, loopfs) -> None:
    """One file more than migrate_foreground_max_files: the move module's preflight defers it
    (nothing moved), and the async move moves it (test_a_play_lists_the_source_once counts the
    listings of this path). The source's filesystem (a small ext4) fits at the destination
    (beside tmp_path): the space the report shows is that bound ("at most")."""
    files = tree(101)
    src = loopfs("ext4", 64) / "src"
    write(src, files)
    proc = run_playbook(extra_vars=job_vars(tmp_path, migrate_src=str(src)), tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    ran = module_tasks(proc.stdout)
    assert ran["PREFLIGHT | Check the job, and move it when it is small"] == 1, output(proc)
    assert ran["MIGRATE | Start the move in the background"] == 1, output(proc)
    assert ran["MIGRATE | Move the job in the foreground"] == 0, output(proc)
    assert ran["PREFLIGHT | Check every job before anything moves"] == 0, output(proc)
    assert regular_files(tmp_path / "dest") == files
    fleet, _junit, summary = load_reports(tmp_path / "reports")
    assert fleet["hosts"]["localhost"]["stats"]["files_moved"] == 101
    assert "| ok | other | at most " in summary, summary


def test_a_host_with_two_jobs_checks_both_before_either_moves(tmp_path: Path) -> None:
    """Two jobs: the preflight module checks both first (every job before anything moves), then
    each small job moves in the foreground."""
    files = tree(20)
    for name in ("one", "two"):
        write(tmp_path / name, files)
    jobs = [{"src": str(tmp_path / name), "dest": str(tmp_path / ("%s-dest" % name))} for name in ("one", "two")]
    extra = {"migrate_jobs": jobs, "migrate_state_dir": str(tmp_path / "state"),
             "migrate_report_dir": str(tmp_path / "reports"), "migrate_poll_interval": 1}
    proc = run_playbook(extra_vars=extra, tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert module_tasks(proc.stdout) == {**NO_MODULE_TASK, "PREFLIGHT | Check every job before anything moves": 1,
                                         "MIGRATE | Move the job in the foreground": 2}, output(proc)
    text = proc.stdout
    assert text.index("PREFLIGHT | Check every job") < text.index("MIGRATE | Move the job in the foreground")
    for name in ("one", "two"):
        assert regular_files(tmp_path / ("%s-dest" % name)) == files
