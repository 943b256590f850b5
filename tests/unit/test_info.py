# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_info.py (job_info: progress read from the journal).

Jobs are real runs of the core on tmp_path trees; a "running" job is one
whose lock a separate process holds (core_helpers.LockHolder).
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from core_helpers import LockHolder, fake_stat, rows_by_path

from ansible_collections.durable.mover.plugins.module_utils import _mover
from ansible_collections.durable.mover.plugins.module_utils._errors import JournalError
from ansible_collections.durable.mover.plugins.module_utils._info import job_info
from ansible_collections.durable.mover.plugins.module_utils._journal import STATES, Journal
from ansible_collections.durable.mover.plugins.module_utils._report import progress_line

SIZES = {"a": 10, "b": 2000, "sub/c": 30000, "sub/deep/d": 0, "e": 123}


def make_tree(root):
    for rel, size in SIZES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


@pytest.fixture
def job(tmp_path):
    src, dest, state = tmp_path / "src", tmp_path / "dest", tmp_path / "state"
    make_tree(src)
    params = {"src": str(src), "dest": str(dest), "state_dir": str(state), "hash": "sha256"}
    return params


def job_dir(params):
    return os.path.join(params["state_dir"], _mover.Job(_mover.Options.from_params(params)).job_id)


def digest_dir(path):
    """Name -> sha256 of every file in a directory: 'untouched' is equality."""
    return {name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, name))}


def test_missing_job_by_id(tmp_path):
    info = job_info({"job_id": "nope", "state_dir": str(tmp_path / "state")})
    assert info["exists"] is False
    assert (info["running"], info["pid"], info["complete"], info["changed"]) == (False, None, False, False)
    assert info["journal"] == str(tmp_path / "state" / "nope" / "journal.sqlite")
    assert not (tmp_path / "state").exists()               # read-only: nothing created


def test_missing_job_by_src_and_dest(job):
    info = job_info({"src": job["src"], "dest": job["dest"], "state_dir": job["state_dir"]})
    assert info["exists"] is False
    assert info["job_id"] == _mover.Job(_mover.Options.from_params(job)).job_id
    assert not os.path.exists(job["state_dir"])


def test_finished_job(job):
    result = _mover.run(job)
    assert result["complete"] and not result.get("failed")
    before = digest_dir(job_dir(job))

    info = job_info({"src": job["src"], "dest": job["dest"], "state_dir": job["state_dir"]})
    assert info["exists"] is True and info["job_id"] == result["job_id"]
    assert (info["running"], info["pid"], info["complete"], info["scan_complete"]) == (False, None, True, True)
    assert info["runs"] == 1
    assert (info["source"], info["destination"]) == (job["src"], job["dest"])
    progress = info["progress"]
    assert progress["files_total"] == len(SIZES) == progress["files_done"]
    assert progress["bytes_total"] == sum(SIZES.values()) == progress["bytes_done"]
    assert (progress["files_pending"], progress["files_failed"], progress["dirs"]) == (0, 0, 2)
    assert (progress["percent_files"], progress["percent_bytes"]) == (100.0, 100.0)
    assert progress["eta_seconds"] is None
    assert info["states"]["done"] == {"files": len(SIZES), "bytes": sum(SIZES.values())}
    assert set(info["states"]) == set(STATES)
    assert info["failures"] == []
    # the journal itself was only read
    after = digest_dir(job_dir(job))
    assert after["journal.sqlite"] == before["journal.sqlite"]

    # by job_id gives the same answer
    by_id = job_info({"job_id": result["job_id"], "state_dir": job["state_dir"]})
    assert by_id["progress"] == progress and by_id["complete"] is True


def test_running_job_reports_the_holder_pid(job):
    stopped = {"n": 0}

    def stop_after_scan():
        stopped["n"] += 1
        return stopped["n"] > 3          # stops during the work, after the scan

    partial = _mover.run(dict(job, batch_files=1, workers=1, processes=1), should_stop=stop_after_scan)
    assert partial["interrupted"] and not partial["complete"]
    done_rows = [r for r in rows_by_path(os.path.join(job_dir(job), "journal.sqlite")).values()
                 if r["state"] == "done"]

    with LockHolder(job_dir(job), partial["job_id"]) as holder:
        info = job_info({"src": job["src"], "dest": job["dest"], "state_dir": job["state_dir"]})
        assert info["running"] is True
        assert info["pid"] == holder.pid
        assert info["complete"] is False
        progress = info["progress"]
        assert progress["files_done"] == len(done_rows)
        assert progress["files_pending"] == len(SIZES) - len(done_rows) > 0
        assert progress["files_total"] == len(SIZES)
        assert 0 <= progress["percent_files"] < 100
        holder.kill()
    info = job_info({"job_id": partial["job_id"], "state_dir": job["state_dir"]})
    assert (info["running"], info["pid"]) == (False, None)


def test_job_with_failures(job):
    # a destination conflict with different content is a recorded failure
    os.makedirs(job["dest"])
    with open(os.path.join(job["dest"], "a"), "wb") as handle:
        handle.write(b"something else")
    result = _mover.run(dict(job, max_attempts=1))
    assert result["failed"] and result["stats"]["files_failed"] == 1
    info = job_info({"job_id": result["job_id"], "state_dir": job["state_dir"]})
    assert info["complete"] is False
    assert info["progress"]["files_failed"] == 1 and info["progress"]["files_quarantined"] == 1
    assert [f["path"] for f in info["failures"]] == [os.path.join(os.path.realpath(job["src"]), "a")]
    assert [f["path"] for f in info["failures"]] == [f["path"] for f in result["failures"]]
    assert info["failures"][0]["quarantined"] is True
    assert "conflict" in info["failures"][0]["error"]
    assert job_info({"job_id": result["job_id"], "state_dir": job["state_dir"],
                     "max_failures_reported": 0})["failures"] == []


def test_journal_of_another_pair_is_refused(job, tmp_path):
    """A journal copied into another job's state dir is not reported as that job's."""
    result = _mover.run(job)
    other = dict(job, src=str(tmp_path / "other-src"), dest=str(tmp_path / "other-dest"))
    os.makedirs(other["src"])
    other_dir = job_dir(other)
    os.makedirs(other_dir)
    journal = os.path.join(job_dir(job), "journal.sqlite")
    with open(journal, "rb") as handle:
        data = handle.read()
    with open(os.path.join(other_dir, "journal.sqlite"), "wb") as handle:
        handle.write(data)
    with pytest.raises(JournalError) as info:
        job_info({"src": other["src"], "dest": other["dest"], "state_dir": job["state_dir"]})
    assert "belongs to another job" in str(info.value) and result["job_id"] in str(info.value)
    with open(os.path.join(other_dir, "journal.sqlite"), "rb") as handle:
        assert handle.read() == data


def test_corrupt_journal_is_refused_untouched(tmp_path):
    state = tmp_path / "state" / "broken"
    state.mkdir(parents=True)
    garbage = b"garbage, not SQLite\n" * 100
    (state / "journal.sqlite").write_bytes(garbage)
    with pytest.raises(JournalError, match="corrupt"):
        job_info({"job_id": "broken", "state_dir": str(tmp_path / "state")})
    assert (state / "journal.sqlite").read_bytes() == garbage


# -- rate and time left (issue 12) -----------------------------------------------------------

def running_job(tmp_path, done_sizes, pending_sizes, started_ago, scan_complete=True):
    """The journal of a job whose current run started `started_ago` seconds ago
    and has moved `done_sizes`, with `pending_sizes` still to move; real rows
    written through the journal's own API. Returns move_info's params."""
    state_root = tmp_path / "state"
    job_path = state_root / "job"
    job_path.mkdir(parents=True)
    journal = Journal.open(str(job_path / "journal.sqlite"), {"job_id": "job", "src": "/s", "dest": "/d"})
    sizes = list(done_sizes) + list(pending_sizes)
    journal.add_files([("f%06d" % i, "file", fake_stat(i + 1, size=size), "pending", None)
                       for i, size in enumerate(sizes)], moves_source=True)
    ids = [row.id for row in journal.fetch_work(0, len(sizes))]
    journal.mark_done(ids[:len(done_sizes)])
    journal.set_meta(run=1, run_started="%.3f" % (time.time() - started_ago), run_start_files=0,
                     run_start_bytes=0, scan_complete=1 if scan_complete else 0)
    journal.commit()
    journal.close()
    return {"job_id": "job", "state_dir": str(state_root)}, job_path


def test_no_time_left_is_promised_while_the_source_is_still_listed(tmp_path):
    params, job_path = running_job(tmp_path, [1000] * 50, [1000] * 50, started_ago=10, scan_complete=False)
    with LockHolder(job_path, "job"):
        info = job_info(params)
    progress = info["progress"]
    assert info["running"] is True and info["scan_complete"] is False
    assert progress["eta_seconds"] is None
    # what is listed so far would take about 10 s more: the least it will take
    assert 8 < progress["eta_lower_bound_seconds"] < 11
    line = progress_line(info)
    assert line.startswith("listing the source (totals so far)")
    assert "ETA at least" in line and "lower bound until listed" in line, line


def test_time_left_counts_files_as_well_as_bytes(tmp_path):
    """10 files of 10 MiB moved in 10 s; 5,000 files of 100 bytes left: at one
    file a second, not 0.05 s."""
    params, job_path = running_job(tmp_path, [10 * 1024 * 1024] * 10, [100] * 5000, started_ago=10)
    with LockHolder(job_path, "job"):
        info = job_info(params)
    progress = info["progress"]
    assert 0.9 < progress["files_per_second"] <= 1.0
    assert 4500 < progress["eta_seconds"] < 5600, progress
    assert progress["eta_basis"] == "files"
    line = progress_line(info)
    assert "files/s" in line and "MiB/s" in line, line


def test_time_left_counts_bytes_where_they_weigh_more(tmp_path):
    params, job_path = running_job(tmp_path, [100] * 1000, [1024 ** 3] * 2, started_ago=10)
    with LockHolder(job_path, "job"):
        info = job_info(params)
    progress = info["progress"]
    assert progress["eta_basis"] == "bytes"
    assert progress["eta_seconds"] > 1e5
