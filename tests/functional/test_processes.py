# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Worker processes: one job's files moved by several forked processes.

Each test runs the real core as a process (tests/tools/mover_cli.py) on a
loop-mounted destination and checks the files and the journal, as the
recovery tests do: everything moved once, hard-link groups kept whole, a
killed worker reported and its files completed by the next run, a signal
passed on to every worker.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _faults
from helpers_recovery import (
    BASE_NS,
    KIB,
    MIB,
    TIMEOUT,
    CliRun,
    FileSpec,
    assert_invariant,
    check_complete,
    cli_argv,
    cli_env,
    crash_tree_spec,
    finish,
    journal_rows,
    make_layout,
    materialize,
    part_files,
    pseudo_random,
    run_cli,
    start_cli,
    wait_for,
)

pytestmark = [pytest.mark.root, pytest.mark.loop]
VARIANT = Path(__file__).resolve().parents[1] / "tools" / "mover_variant.py"
TUNING = {"checkpoint_size": "64K", "buffer_size": "16K", "batch_files": 4, "processes": 2}


def _spec():
    """The crash tree and 40 more files in 4 directories, with hard-link
    groups whose names fall in different batches and directories."""
    spec = crash_tree_spec()
    for d in range(4):
        spec.dirs["many%d" % d] = (0o755, BASE_NS + 1000 + d)
        for f in range(10):
            data = pseudo_random(KIB * (f + 1), 100 * d + f)
            spec.files["many%d/f%02d" % (d, f)] = FileSpec(data, 0o644, BASE_NS + 10 * d + f)
    for group in (("many0/f00", "many2/g00", "many3/g00"), ("many1/f05", "many1/g05")):
        for name in group[1:]:
            spec.files[name] = spec.files[group[0]]
        spec.hardlinks.append(group)
    return spec


@pytest.mark.parametrize("kind,processes", [("ext4", 2), ("xfs", 3)])
def test_every_file_moved_once_by_worker_processes(kind, processes, tmp_path, request):
    layout = make_layout(kind, tmp_path, request)
    spec = materialize(_spec(), layout.src)
    params = layout.params(**{**TUNING, "processes": processes})
    run = run_cli(params)
    check_complete(spec, layout, run)
    stats = run.result["stats"]
    assert stats["files_moved"] == spec.entries
    assert stats["hardlinks"] == sum(len(group) - 1 for group in spec.hardlinks)
    again = run_cli(params)
    assert again.returncode == 0, again.describe()
    assert again.result["changed"] is False
    assert again.result["stats"]["files_moved"] == 0


@pytest.mark.parametrize("point", [p for p in _faults.POINTS if p not in ("after_scan_batch", "after_checkpoint")])
@pytest.mark.parametrize("occurrence", [1, 2])
def test_killed_worker_is_reported_and_its_files_completed_next_run(point, occurrence, tmp_path, request):
    """kill=<point>@<n> fires in every worker that reaches its n-th <point>: the
    parent lives on, reports each dead worker by number and pid, finishes
    nothing it must not, and the next run completes the job."""
    layout = make_layout("ext4", tmp_path, request)
    spec = materialize(_spec(), layout.src)
    run = run_cli(layout.params(**TUNING), faults="kill=%s@%d" % (point, occurrence))
    assert not run.killed, run.describe()
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["failed"] is True and result["complete"] is False
    assert "was killed by signal 9" in result["msg"], result["msg"]
    assert_invariant(spec, layout, "after kill=%s@%d in the workers" % (point, occurrence))
    rows = journal_rows(layout.journal())
    assert any(row["state"] != "done" for row in rows.values())
    rerun = run_cli(layout.params(**TUNING))
    check_complete(spec, layout, rerun)
    assert rerun.result["stats"]["resumed"] is True


def _task_states(pid):
    """The state letter of every thread of process `pid` (R, S, D, T, ...)."""
    states = []
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid), encoding="utf-8") as handle:
            states.extend(line.split()[1] for line in handle if line.startswith("State:"))
    return states


def _pending(pid, signum):
    """Is `signum` pending for process `pid` (sent to it, not yet delivered)?"""
    with open("/proc/%d/status" % pid, encoding="utf-8") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    return bool(int(fields["ShdPnd"].strip(), 16) & (1 << (signum - 1)))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_parent_stops_every_worker(signum, tmp_path, request):
    """Only the parent gets the signal (as from `kill`, not a terminal's Ctrl-C,
    which reaches the whole group): it passes it on, each worker stops after
    the file in hand, and the run reports itself interrupted.

    The workers are held still while the parent gets the signal, so that
    neither copy can finish in between, however loaded the machine is: both
    are stopped, every thread of them in state T (kill() returns before a
    SIGSTOP takes effect: each thread stops only on its way back from the
    kernel, after a write or fdatasync in progress), then the parent is
    signalled, and they are continued once its signal waits, pending, in
    each. Without the wait for T, the parent's signal could reach a worker
    not stopped yet; the kernel delivers the lowest-numbered pending signal
    first (SIGINT 2, SIGTERM 15, SIGSTOP 19), so it was handled before the
    stop and never seen pending: CI's timeouts, for SIGINT and SIGTERM alike.
    The parent forwards within a millisecond in every environment tried
    (SIGINT ignored and stdin /dev/null as in a background job of a
    non-interactive shell, CI=true)."""
    layout = make_layout("xfs", tmp_path, request)
    spec = crash_tree_spec()
    for name in ("big1.bin", "big2.bin"):     # consecutive ids: one in each worker's share
        spec.files[name] = FileSpec(pseudo_random(24 * MIB, len(name) + ord(name[3])), 0o644)
    materialize(spec, layout.src)
    params = layout.params(checkpoint_size="256K", buffer_size="64K", batch_files=1, processes=2)
    proc = start_cli(params)
    try:
        def both_growing():
            parts = [p for p in part_files(layout.dest) if p.startswith((".big1.bin.", ".big2.bin."))]
            try:
                return len(parts) == 2 and all(os.stat(layout.dest / p).st_size > 0 for p in parts)
            except FileNotFoundError:
                return False
        wait_for(both_growing, "both large copies to be under way", proc=proc)
        with open("/proc/%d/task/%d/children" % (proc.pid, proc.pid), encoding="utf-8") as handle:
            workers = [int(pid) for pid in handle.read().split()]
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all(set(_task_states(pid)) == {"T"} for pid in workers),
                 "every thread of both workers to be stopped", proc=proc)
        os.kill(proc.pid, signum)
        wait_for(lambda: all(_pending(pid, signum) for pid in workers),
                 "the parent to pass the signal on to its workers", proc=proc)
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
        run = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["interrupted"] is True and result["complete"] is False, result
    assert_invariant(spec, layout, "after %s" % signal.Signals(signum).name)
    rows = journal_rows(layout.journal())
    assert {rows["big1.bin"]["state"], rows["big2.bin"]["state"]} <= {"pending", "copying"}, rows
    rerun = run_cli(params)
    check_complete(spec, layout, rerun)


# The core run by the CLI, with os.fork wrapped: right after the first worker
# is forked, before the parent returns from the fork, a SIGTERM for the parent
# arrives (a third party's `kill`, at that instant).
_TERM_AT_FIRST_FORK = """
import os, runpy, signal, sys
real_fork = os.fork
def fork():
    pid = real_fork()
    if pid:
        os.fork = real_fork
        os.kill(os.getpid(), signal.SIGTERM)
    return pid
os.fork = fork
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_signal_while_a_worker_is_forked_reaches_it(tmp_path, request):
    """A SIGTERM that reaches the parent while it forks a worker stops that
    worker too. The parent's handler runs between two bytecodes: if it runs
    after the fork but before the parent has noted the new pid, it passes the
    signal on to the workers noted so far only, and the new worker (forked
    before the stop flag was set, its copy of the signal state cleared by
    Python after the fork) never hears of it: it moves its whole share
    while the run reports itself interrupted. Each worker waits for the
    parent's first word before it starts, so with the signal passed on it
    moves nothing."""
    layout = make_layout("ext4", tmp_path, request)
    spec = _spec()
    materialize(spec, layout.src)
    params = layout.params(**TUNING)
    proc = subprocess.run([sys.executable, "-c", _TERM_AT_FIRST_FORK, *cli_argv(params)[1:]], env=cli_env(),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    run = CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0)
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["interrupted"] is True and result["complete"] is False, result
    assert result["stats"]["files_moved"] == 0, \
        "a worker forked as the parent got SIGTERM went on moving: %s" % result["stats"]
    assert_invariant(spec, layout, "after SIGTERM at the first fork")
    rerun = run_cli(params)
    check_complete(spec, layout, rerun)


def test_hard_link_found_after_its_first_name_was_queued_stays_one_inode(tmp_path, request):
    """Workers start while the scan goes on. The first name of a hard-linked
    file is scanned early and a second name late (after a large directory):
    the first must wait at the source until the scan is over, or the second
    would be found with a link count of 1 and copied as a file of its own.
    (Workers start after the first 1,000 names of zz, long before zz/last.)"""
    layout = make_layout("xfs", tmp_path, request)
    spec = crash_tree_spec()
    spec.dirs["a"] = (0o755, BASE_NS)
    for f in range(16):
        spec.files["a/f%02d" % f] = FileSpec(b"%d\n" % f, 0o644)
    spec.files["a/h"] = FileSpec(b"linked\n" * 100, 0o644)
    spec.dirs["zz"] = (0o755, BASE_NS)
    for f in range(20000):
        spec.files["zz/e%05d" % f] = FileSpec(b"", 0o644)
    spec.dirs["zz/last"] = (0o755, BASE_NS)       # listed after all of zz
    spec.files["zz/last/h"] = spec.files["a/h"]
    spec.hardlinks.append(("a/h", "zz/last/h"))
    materialize(spec, layout.src)
    run = run_cli(layout.params(batch_files=64, processes=2))
    check_complete(spec, layout, run)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_file_in_the_way_of_a_directory_fails_its_files_the_rest_moves(processes, tmp_path, request):
    """The destination directories are made before the files move; one that
    cannot be (a file has its name) fails each of its files with the reason,
    and the run goes on with the others."""
    layout = make_layout("ext4", tmp_path, request)
    spec = crash_tree_spec()
    materialize(spec, layout.src)
    layout.dest.mkdir()
    (layout.dest / "d1").write_bytes(b"not a directory\n")
    run = run_cli(layout.params(batch_files=1, processes=processes))
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["complete"] is False
    failed = {f["path"]: f["error"] for f in result["failures"]}
    assert failed and all(path.startswith(str(layout.src / "d1") + "/") for path in failed), failed
    assert all("not a directory" in error for error in failed.values()), failed
    for rel in spec.files:
        where = layout.src if rel.startswith("d1/") else layout.dest
        assert (where / rel).exists(), rel


def test_no_journal_connection_is_open_across_the_fork(tmp_path, request, monkeypatch):
    """SQLite forbids using a connection on both sides of a fork: the parent's
    journal connection is closed while it forks its workers (each opens its
    own), so a worker inherits no descriptor of the journal, its -wal or -shm."""
    from ansible_collections.durable.mover.plugins.module_utils import _mover
    layout = make_layout("tmpfs", tmp_path, request)
    spec = materialize(_spec(), layout.src)
    real = _mover.Runner._worker

    def worker(runner, share, feed):
        inherited = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink("/proc/self/fd/" + fd)
            except FileNotFoundError:        # the listing's own fd, closed since
                continue
            if target.startswith(str(layout.journal())):      # this test's journal and its side files
                inherited.append(target)
        with open(tmp_path / ("inherited-%d" % os.getpid()), "w", encoding="utf-8") as handle:
            handle.write("\n".join(inherited))
        return real(runner, share, feed)

    monkeypatch.setattr(_mover.Runner, "_worker", worker)
    result = _mover.run(layout.params(**TUNING))
    assert result["complete"] is True, result
    reports = list(tmp_path.glob("inherited-*"))
    assert len(reports) == TUNING["processes"], reports
    for report in reports:
        assert report.read_text() == "", "a worker inherited the parent's journal: %s" % report.read_text()
    rerun = run_cli(layout.params(**TUNING))
    check_complete(spec, layout, rerun)


def test_a_journal_write_failing_in_the_scanning_parent_ends_the_run_with_a_result(tmp_path, request):
    """The parent's journal write fails (SQLite's "disk I/O error", as on a
    dying state disk) inside its transaction while worker processes run and
    one waits for the journal's writer lock (tests/tools/mover_variant.py
    journal_write_fails_in_parent): the run must end, with a result that
    says it failed, lose nothing, and the next run completes the job.

    Found by test_block_sweeps.py::test_destination_fails_at_a_sampled_point[xfs]
    with one syncfs per batch for directories: the parent went to wait for its
    workers with its transaction open, holding the writers' lock a worker
    waited for, and the run never ended; then, the lock let go, a worker's
    own error replaced the parent's and the run ended in a traceback."""
    layout = make_layout("ext4", tmp_path, request)
    spec = materialize(_spec(), layout.src)
    params = layout.params(**TUNING)
    argv = [sys.executable, str(VARIANT), "journal_write_fails_in_parent", json.dumps(params)]
    try:
        proc = subprocess.run(argv, env=cli_env(None), capture_output=True, text=True, timeout=60, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the run did not end within 60 s after its journal write failed")
    run = CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0)
    assert proc.stdout.strip(), run.describe()
    assert run.result["failed"] is True, run.describe()
    assert "disk I/O error" in run.result["msg"], run.result["msg"]
    assert_invariant(spec, layout, "after the parent's journal write failed")
    check_complete(spec, layout, run_cli(params))
