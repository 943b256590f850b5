# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""durable.mover.move with its option `preflight`, through the real `ansible` command on localhost:
the preflight's checks first, in the same module run, then the move when the job is small enough,
else nothing but the findings and the reason (`deferred`). The migrate role uses it for a host
with one job (tests/integration/test_playbook_onepass.py runs the role)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from migrate_helpers import REPO_ROOT, TIMEOUT, LockHolder, ansible_env, job_id, make_tree, regular_files

FILES = {"a": b"alpha\n", "d/b": b"bravo\n" * 100, "d/e/c": b"charlie\n" * 1000}
RESULT = re.compile(r"^localhost \| (?P<status>[A-Z]+)! => |^localhost \| (?P<status2>[A-Z]+) => ", re.MULTILINE)


def move(tmp_path: Path, **args) -> dict:
    """One run of durable.mover.move on the job tmp_path/src -> tmp_path/dest; its result, with the
    status the ansible command printed (SUCCESS, CHANGED, FAILED) as `_status`. `_strace`: a path
    to write an strace -f log of its directory listings to."""
    trace = args.pop("_strace", None)
    params = {"src": str(tmp_path / "src"), "dest": str(tmp_path / "dest"), "state_dir": str(tmp_path / "state"),
              **args}
    ansible = str(Path(sys.executable).parent / "ansible")
    argv = [ansible, "localhost", "-m", "durable.mover.move", "-a", json.dumps(params)]
    if trace is not None:
        argv = ["strace", "-f", "-qq", "-y", "-e", "trace=getdents64", "-o", str(trace)] + argv
    proc = subprocess.run(argv,
                          cwd=str(REPO_ROOT), env=ansible_env(REPO_ROOT), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    match = RESULT.search(proc.stdout)
    assert match, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout[match.end():]), _status=match.group("status") or match.group("status2"))


def test_a_small_job_is_checked_then_moved_in_the_same_run(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    result = move(tmp_path, preflight={"max_files": 3, "max_bytes": 1 << 20})
    assert result["_status"] == "CHANGED" and "deferred" not in result, result
    assert result["preflight"]["ok"] is True and result["preflight"]["problems"] == []
    assert result["preflight"]["findings"]["plan"]["files"] == 3
    assert result["complete"] is True and result["stats"]["files_moved"] == 3, result
    assert regular_files(tmp_path / "dest") == FILES
    assert regular_files(tmp_path / "src") == {}
    # The rerun: the job is finished, the journal answers; nothing moves.
    again = move(tmp_path, preflight={"max_files": 3, "max_bytes": 1 << 20})
    assert again["changed"] is False and "deferred" not in again, again
    assert again["complete"] is True and again["stats"]["files_moved"] == 0
    assert again["stats"]["files_already_done"] == 3
    assert isinstance(again["preflight"]["findings"]["finished"], dict)


def test_a_job_larger_than_the_bound_is_deferred_with_its_token(tmp_path: Path, loopfs) -> None:
    """The destination (a small ext4) has no room for all that the source's filesystem (the one
    holding tmp_path) holds: the preflight lists the job and counts it exactly, and hands its
    token on."""
    make_tree(tmp_path / "src", FILES)
    dest = loopfs("ext4", 40) / "dest"
    for bound in ({"max_files": 2}, {"max_bytes": 100}):
        result = move(tmp_path, dest=str(dest), preflight=bound)
        assert result["_status"] == "SUCCESS" and result["deferred"] == "large", result
        assert result["preflight"]["ok"] is True
        assert result["preflight"]["findings"]["larger"] is None
        assert regular_files(tmp_path / "src") == FILES
        assert not dest.exists()
    token = result["preflight"]["findings"]["prepared"]
    assert token
    # The move given the token moves what the preflight listed into the journal.
    moved = move(tmp_path, dest=str(dest), prepared=token)
    assert moved["changed"] is True and moved["stats"]["files_moved"] == 3, moved
    assert regular_files(dest) == FILES


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_a_larger_job_on_ext4_is_counted_only_to_the_bound(tmp_path: Path, loopfs) -> None:
    """An ext4 source whose whole filesystem fits at the destination: the preflight stops counting
    once the job is larger than the bound and lists nothing into the journal (no token); the move
    that runs next lists the source itself (issue 13: the source is walked once). strace counts
    the directories listed to their end by the preflight's run."""
    src = loopfs("ext4", 64) / "src"
    files = {"d%02d/f%02d" % (i // 10, i): b"%d\n" % i for i in range(200)}
    make_tree(src, files)
    trace = tmp_path / "strace.log"
    result = move(tmp_path, src=str(src), preflight={"max_files": 25}, _strace=trace)
    assert result["_status"] == "SUCCESS" and result["deferred"] == "large", result
    findings = result["preflight"]["findings"]
    assert findings["larger"]["files"] == 26 and findings["prepared"] is None and findings["plan"] is None
    assert findings["space"]["upper_bound"] is True, findings["space"]
    assert "at most" in result["msg"], result["msg"]
    listed = {name for name in ("d%02d" % i for i in range(20)) if _listed(trace, src.resolve() / name)}
    assert listed == {"d00", "d01", "d02"}, listed
    assert regular_files(src) == files and not (tmp_path / "dest").exists()
    moved = move(tmp_path, src=str(src))
    assert moved["changed"] is True and moved["stats"]["files_moved"] == 200, moved
    assert regular_files(tmp_path / "dest") == files


def _listed(trace: Path, directory: Path) -> bool:
    """Whether `directory` was listed to its end (getdents64 returning 0) in an strace -f -y log."""
    pattern = re.compile(r"getdents64\(\d+<%s>, .*\) = 0$" % re.escape(str(directory)))
    return any(pattern.search(line) for line in trace.read_text(errors="replace").splitlines())


def test_a_problem_fails_the_task_and_nothing_moves(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    (tmp_path / "plain").write_bytes(b"a file, not a directory")
    result = move(tmp_path, dest=str(tmp_path / "plain" / "dest"), preflight={})
    assert result["_status"] == "FAILED", result
    assert result["msg"].startswith("preflight found 1 problem(s): "), result["msg"]
    assert result["preflight"]["ok"] is False and len(result["preflight"]["problems"]) == 1
    assert "stats" not in result
    assert regular_files(tmp_path / "src") == FILES
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("journal*"))


def test_a_job_whose_lock_is_held_is_deferred_as_running(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    state = tmp_path / "state"
    job = job_id(tmp_path / "src", tmp_path / "dest")
    (state / job).mkdir(parents=True)
    with LockHolder(state, job) as holder:
        result = move(tmp_path, preflight={})
        assert result["changed"] is False and result["deferred"] == "running", result
        assert result["preflight"]["findings"]["running_pid"] == holder.pid
    assert regular_files(tmp_path / "src") == FILES
    assert not (tmp_path / "dest").exists()


def test_an_async_marker_defers_the_job_as_running(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    marker = tmp_path / "async" / "durable.mover-marker"
    marker.parent.mkdir()
    marker.write_text("123.456")
    result = move(tmp_path, preflight={"marker": str(marker)})
    assert result["deferred"] == "running", result
    assert regular_files(tmp_path / "src") == FILES
