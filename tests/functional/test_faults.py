# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Failures of the real core, each run as a process on real file systems.

Verification mismatch (failure marking and quarantine), a source changed
while it is copied, the job lock, a full destination, a read-only
destination, permission denied, corrupt and foreign journals, a source
directory swapped for a symbolic link, and a source deleted between the scan
and its move. Every check reads the files and the journal themselves.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_recovery import (
    CLI,
    COLLECTIONS,
    JOB_ID,
    KIB,
    MIB,
    CliRun,
    FileSpec,
    Layout,
    TreeSpec,
    all_names,
    assert_invariant,
    build_crash_tree,
    check_complete,
    crash_tree_spec,
    cli_argv,
    cli_env,
    finish,
    journal_rows,
    make_layout,
    materialize,
    part_files,
    pseudo_random,
    read_regular,
    run_cli,
    start_cli,
    tree_state,
    wait_for,
)

ROOT_LOOP = [pytest.mark.root, pytest.mark.loop]


def _failure_for(result, rel):
    found = [f for f in result["failures"] if f["path"] == rel or f["path"].endswith("/" + rel)]
    assert len(found) == 1, "no single failure for %s in %r" % (rel, result["failures"])
    return found[0]


def _moved(spec, layout, rels):
    """These entries are whole at the destination and gone from the source."""
    for rel in rels:
        if rel in spec.files:
            assert read_regular(layout.dest / rel) == spec.files[rel].data, rel
            assert not os.path.lexists(layout.src / rel), rel
        else:
            assert os.readlink(layout.dest / rel) == spec.symlinks[rel], rel
            assert not os.path.lexists(layout.src / rel), rel


# --------------------------------------------------------------------------
# Failure marking: a verification mismatch, attempts, quarantine
# --------------------------------------------------------------------------

@pytest.mark.root
def test_verification_mismatch_is_marked_then_quarantined_then_retried(tmp_path, request):
    layout = make_layout("tmpfs", tmp_path, request)
    spec = build_crash_tree(layout.src)
    bad = "d1/a.txt"
    params = layout.params(max_attempts=2)
    fault = "corrupt=" + bad

    # 1st run: the mismatch is caught, the part deleted, the source kept.
    run = run_cli(params, faults=fault)
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["failed"] is True and result["complete"] is False
    failure = _failure_for(result, bad)
    assert "verification failed" in failure["error"]
    assert failure["attempts"] == 1 and failure["quarantined"] is False
    assert read_regular(layout.src / bad) == spec.files[bad].data
    assert not os.path.lexists(layout.dest / bad)
    assert part_files(layout.dest) == []
    _moved(spec, layout, [r for r in list(spec.files) + list(spec.symlinks) if r != bad])
    row = journal_rows(layout.journal())[bad]
    assert (row["state"], row["attempts"], row["quarantined"]) == ("failed", 1, 0)
    assert "verification failed" in row["error"]
    assert result["stats"]["files_failed"] == 1

    # 2nd run (max_attempts=2): tried again, fails again, now quarantined.
    run = run_cli(params, faults=fault)
    assert run.returncode == 1, run.describe()
    failure = _failure_for(run.result, bad)
    assert failure["attempts"] == 2 and failure["quarantined"] is True
    assert run.result["stats"]["files_quarantined"] == 1
    assert read_regular(layout.src / bad) == spec.files[bad].data
    assert part_files(layout.dest) == []

    # 3rd and 4th runs: a quarantined file is reported, not tried again,
    # even once it would succeed (no fault).
    for faults in (fault, None):
        run = run_cli(params, faults=faults)
        assert run.returncode == 1, run.describe()
        failure = _failure_for(run.result, bad)
        assert failure["attempts"] == 2 and failure["quarantined"] is True
        assert not os.path.lexists(layout.dest / bad)
        assert read_regular(layout.src / bad) == spec.files[bad].data
        row = journal_rows(layout.journal())[bad]
        assert (row["state"], row["attempts"], row["quarantined"]) == ("failed", 2, 1)

    # retry_failed: moved, the job complete.
    run = run_cli(dict(params, retry_failed=True))
    check_complete(spec, layout, run)
    assert run.result["stats"]["files_moved"] == 1


# --------------------------------------------------------------------------
# A source changed while it is copied
# --------------------------------------------------------------------------

def _hold_mid_copy(proc, layout, size):
    """Wait until the big file's part grows, then SIGSTOP the mover there."""
    def growing():
        parts = [p for p in part_files(layout.dest) if p.startswith(".big.bin.")]
        try:
            return parts[0] if parts and os.stat(layout.dest / parts[0]).st_size > 0 else None
        except FileNotFoundError:
            return None
    name = wait_for(growing, "the part file to appear and grow", proc=proc)
    os.kill(proc.pid, signal.SIGSTOP)
    part = layout.dest / name
    assert 0 < part.stat().st_size < size, "the copy was not in progress when the mover was stopped"


@pytest.mark.parametrize("change", ["append", "overwrite"])
@pytest.mark.parametrize("kind", [pytest.param("ext4", marks=ROOT_LOOP)])
def test_source_changed_during_copy_is_kept_and_retried(kind, change, tmp_path, request):
    layout = make_layout(kind, tmp_path, request)
    size = 8 * MIB
    spec = TreeSpec(files={"big.bin": FileSpec(pseudo_random(size, 3), 0o640),
                           "small.txt": FileSpec(b"unrelated\n")})
    materialize(spec, layout.src)
    params = layout.params(checkpoint_size="128K", buffer_size="32K", workers=1)
    proc = start_cli(params)
    try:
        _hold_mid_copy(proc, layout, size)
        with open(layout.src / "big.bin", "r+b") as handle:
            if change == "append":
                handle.seek(0, os.SEEK_END)
                handle.write(b"appended while it was copied\n")
            else:   # same size, other bytes at the start (already copied)
                handle.write(b"X" * 4096)
        os.kill(proc.pid, signal.SIGCONT)
        run = finish(proc)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    new = read_regular(layout.src / "big.bin")
    assert new != spec.files["big.bin"].data
    assert run.returncode == 1, run.describe()
    failure = _failure_for(run.result, "big.bin")
    assert "changed" in failure["error"], failure
    assert not os.path.lexists(layout.dest / "big.bin"), "a changed source must not be moved"
    assert part_files(layout.dest) == [], "the part of a changed source must be discarded"
    row = journal_rows(layout.journal())["big.bin"]
    assert row["state"] == "failed" and "changed" in row["error"]
    _moved(spec, layout, ["small.txt"])
    # The rerun moves the new content.
    st = os.lstat(layout.src / "big.bin")
    spec.files["big.bin"] = FileSpec(new, 0o640, st.st_mtime_ns)
    rerun = run_cli(params)
    check_complete(spec, layout, rerun)


@pytest.mark.root
def test_source_changed_after_it_was_copied_is_kept_and_moved_next_run(tmp_path, request):
    layout = make_layout("tmpfs", tmp_path, request)
    spec = TreeSpec(files={"f.txt": FileSpec(b"first version\n"), "g.txt": FileSpec(b"other\n")})
    materialize(spec, layout.src)
    run = run_cli(layout.params(workers=1), faults="kill=after_journal_copied@1")
    assert run.killed, run.describe()
    assert journal_rows(layout.journal())["f.txt"]["state"] == "copied"
    with open(layout.src / "f.txt", "ab") as handle:
        handle.write(b"second version\n")
    new = read_regular(layout.src / "f.txt")
    run = run_cli(layout.params(workers=1))
    assert read_regular(layout.src / "f.txt") == new, "a changed source must never be removed"
    spec.files["f.txt"] = FileSpec(new, 0o644, os.lstat(layout.src / "f.txt").st_mtime_ns)
    if run.returncode != 0:
        run = run_cli(layout.params(workers=1))
    check_complete(spec, layout, run)


# --------------------------------------------------------------------------
# The job lock
# --------------------------------------------------------------------------

HOLDER = """
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.durable.mover.plugins.module_utils._lock import JobLock
lock = JobLock(sys.argv[2], sys.argv[3]).acquire()
print('locked', flush=True)
sys.stdin.read()
lock.release()
"""


@pytest.fixture
def lock_holder(tmp_path):
    """Factory: a separate process holding the job's lock until released."""
    procs = []

    def hold(layout):
        job_dir = layout.state / JOB_ID
        job_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(COLLECTIONS), str(job_dir), JOB_ID],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield hold
    for proc in procs:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(timeout=30)


def _release(holder):
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def test_second_run_fails_at_once_naming_the_lock_holder(tmp_path, lock_holder):
    layout = make_layout("samefs", tmp_path, None)
    spec = build_crash_tree(layout.src)
    before = tree_state(layout.src)
    holder = lock_holder(layout)
    run = run_cli(layout.params())
    assert run.returncode == 2, run.describe()
    assert "locked by pid %d" % holder.pid in run.result["msg"]
    assert run.elapsed < 10, "lock_timeout=0 must not wait (took %.1f s)" % run.elapsed
    assert tree_state(layout.src) == before
    assert not layout.dest.exists()
    assert not layout.journal().exists()
    _release(holder)
    check_complete(spec, layout, run_cli(layout.params()))


def test_lock_timeout_waits_then_fails(tmp_path, lock_holder):
    layout = make_layout("samefs", tmp_path, None)
    build_crash_tree(layout.src)
    before = tree_state(layout.src)
    holder = lock_holder(layout)
    run = run_cli(layout.params(lock_timeout=1.5))
    assert run.returncode == 2, run.describe()
    assert "locked by pid %d" % holder.pid in run.result["msg"]
    assert run.elapsed >= 1.5, "gave up after %.2f s, before lock_timeout" % run.elapsed
    assert tree_state(layout.src) == before
    assert not layout.journal().exists()


def test_lock_timeout_waits_for_the_holder_then_runs(tmp_path, lock_holder):
    layout = make_layout("samefs", tmp_path, None)
    spec = build_crash_tree(layout.src)
    holder = lock_holder(layout)
    lock_path = os.path.realpath(layout.state / JOB_ID / "lock")
    proc = start_cli(layout.params(lock_timeout=120))

    def waiting_on_lock():
        try:
            fds = os.listdir("/proc/%d/fd" % proc.pid)
        except FileNotFoundError:
            return False
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (proc.pid, fd)) == lock_path:
                    return True
            except FileNotFoundError:
                continue
        return False
    try:
        wait_for(waiting_on_lock, "the second run to open the lock file", proc=proc)
        assert proc.poll() is None
        assert not layout.journal().exists(), "the journal was opened without the lock"
        _release(holder)
        run = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    check_complete(spec, layout, run)


# --------------------------------------------------------------------------
# No space left on the destination
# --------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("batch_files", [1, 256])
def test_enospc_rolls_back_the_file_in_hand_and_stops(batch_files, tmp_path, tmpfs):
    src, state = tmp_path / "src", tmp_path / "state"
    src.mkdir()
    mnt = tmpfs("1m")
    layout = Layout("tmpfs", src, mnt / "dst", state)
    spec = TreeSpec(files={
        "a.bin": FileSpec(pseudo_random(300 * KIB, 1)),
        "b.bin": FileSpec(pseudo_random(300 * KIB, 2)),
        "c.bin": FileSpec(pseudo_random(700 * KIB, 3)),    # does not fit any more
        "d.bin": FileSpec(pseudo_random(100 * KIB, 4)),
        "e.txt": FileSpec(b"last\n"),
    })
    materialize(spec, src)
    params = layout.params(workers=1, batch_files=batch_files, processes=1)
    run = run_cli(params)
    assert run.returncode == 1, run.describe()
    result = run.result
    assert "No space left on device" in result["msg"], result["msg"]
    assert result["complete"] is False
    assert_invariant(spec, layout, "after ENOSPC")
    assert part_files(layout.dest) == [], "the file in hand must be rolled back"
    _moved(spec, layout, ["a.bin", "b.bin"])
    assert read_regular(src / "c.bin") == spec.files["c.bin"].data
    assert not os.path.lexists(layout.dest / "c.bin")
    rows = journal_rows(layout.journal())
    assert rows["c.bin"]["state"] == "failed" and "No space left on device" in rows["c.bin"]["error"]
    # The run stops: the files after the one that hit the full disk are not
    # attempted (still pending, their sources whole, nothing at the destination).
    for rel in ("d.bin", "e.txt"):
        assert rows[rel]["state"] == "pending", (rel, rows[rel])
        assert read_regular(src / rel) == spec.files[rel].data
        assert not os.path.lexists(layout.dest / rel)
    # More room: a rerun completes.
    subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
    check_complete(spec, layout, run_cli(params))


# --------------------------------------------------------------------------
# A read-only destination
# --------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.loop
def test_readonly_destination_is_refused_before_anything_is_touched(tmp_path, request, remount_ro, remount_rw):
    layout = make_layout("ext4", tmp_path, request)
    spec = build_crash_tree(layout.src)
    mnt = layout.dest.parent
    remount_ro(mnt)
    before = tree_state(layout.src)
    run = run_cli(layout.params())
    assert run.returncode == 2, run.describe()
    assert "read-only" in run.result["msg"], run.result
    assert tree_state(layout.src) == before
    assert not layout.dest.exists()
    assert not any(r["state"] == "done" for r in journal_rows(layout.journal()).values())
    remount_rw(mnt)
    check_complete(spec, layout, run_cli(layout.params()))


@pytest.mark.root
@pytest.mark.loop
def test_destination_turned_readonly_after_a_partial_run(tmp_path, request, remount_ro, remount_rw):
    layout = make_layout("ext4", tmp_path, request)
    spec = build_crash_tree(layout.src)
    params = layout.params(batch_files=4, workers=1, processes=1)
    run = run_cli(params, faults="kill=after_journal_done@1")
    assert run.killed, run.describe()
    mnt = layout.dest.parent
    remount_ro(mnt)
    src_before, dest_before = tree_state(layout.src), tree_state(layout.dest)
    rows_before = journal_rows(layout.journal())
    run = run_cli(params)
    assert run.returncode == 2, run.describe()
    assert "read-only" in run.result["msg"], run.result
    assert tree_state(layout.src) == src_before
    assert tree_state(layout.dest) == dest_before
    assert journal_rows(layout.journal()) == rows_before
    remount_rw(mnt)
    check_complete(spec, layout, run_cli(params))


# --------------------------------------------------------------------------
# Permission denied on one subtree (as nobody)
# --------------------------------------------------------------------------

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def nobody_layout(request, nobody_tmp_path, run_as_nobody):
    """src/state under a nobody-owned dir; dest there too (samefs) or on a
    tmpfs owned by nobody mounted inside it (cross)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("%s needed to run the mover as nobody" % SYSTEM_PYTHON)
    probe = run_as_nobody([SYSTEM_PYTHON, "-c", "open(%r).read()" % str(CLI)])
    if probe.returncode != 0:
        pytest.skip("nobody cannot read %s (the checkout is not world-readable): %s"
                    % (CLI, probe.stderr.strip()[-300:]))
    src, state = nobody_tmp_path / "src", nobody_tmp_path / "state"
    mounted = None
    if request.param == "samefs":
        dest = nobody_tmp_path / "dst"
    else:
        mounted = nobody_tmp_path / "mnt"
        mounted.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,uid=%d,gid=%d,mode=0755" % (NOBODY, NOBODY),
                        "durable-mover-test", str(mounted)], check=True)
        dest = mounted / "dst"
    for path in (src, state):
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
    try:
        yield Layout(request.param, src, dest, state)
    finally:
        if mounted is not None:
            subprocess.run(["umount", str(mounted)], check=False)


@pytest.mark.root
@pytest.mark.parametrize("nobody_layout", ["samefs", "tmpfs"], indirect=True)
def test_permission_denied_subtree_fails_the_rest_moves(nobody_layout, run_as_nobody):
    layout = nobody_layout
    spec = TreeSpec(files={
        "ok1.txt": FileSpec(b"one\n", 0o644, uid=NOBODY, gid=NOBODY),
        "sub/ok2.txt": FileSpec(b"two\n" * 100, 0o600, uid=NOBODY, gid=NOBODY),
        "locked/secret.txt": FileSpec(b"in a directory nobody cannot list\n", 0o644, uid=NOBODY, gid=NOBODY),
        "noread.txt": FileSpec(b"mode 000\n", 0o000, uid=NOBODY, gid=NOBODY),
        "z/ok3.txt": FileSpec(b"three\n", 0o644, uid=NOBODY, gid=NOBODY),
    }, symlinks={"ln": "ok1.txt"},
        dirs={"sub": (0o755, 1_600_000_000_000_000_001), "locked": (0o000, 1_600_000_000_000_000_002),
              "z": (0o755, 1_600_000_000_000_000_003)})
    materialize(spec, layout.src)
    for rel in ["sub", "locked", "locked/secret.txt", "z", "ln"]:
        os.chown(layout.src / rel, NOBODY, NOBODY, follow_symlinks=False)
    proc = run_as_nobody([SYSTEM_PYTHON, *cli_argv(layout.params())[1:]], env=cli_env())
    run = CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0)
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["failed"] is True
    denied = ["locked"] + (["noread.txt"] if layout.cross else [])
    for rel in denied:
        assert "Permission denied" in _failure_for(result, rel)["error"]
    assert len(result["failures"]) == len(denied), result["failures"]
    # The denied entries stay, whole, at the source.
    os.chmod(layout.src / "locked", 0o755)
    assert read_regular(layout.src / "locked/secret.txt") == spec.files["locked/secret.txt"].data
    moved = ["ok1.txt", "sub/ok2.txt", "z/ok3.txt", "ln"]
    if not layout.cross:
        moved.append("noread.txt")     # a rename needs no read permission (as mv)
    else:
        assert read_regular(layout.src / "noread.txt") == spec.files["noread.txt"].data
    _moved(spec, layout, moved)
    assert part_files(layout.dest) == []


# --------------------------------------------------------------------------
# Corrupt and foreign journals
# --------------------------------------------------------------------------

def _journal_files(layout):
    job_dir = layout.state / JOB_ID
    return {name: (job_dir / name).read_bytes() for name in sorted(os.listdir(job_dir))
            if name.startswith("journal.sqlite")}


def test_garbage_journal_is_refused_and_kept(tmp_path):
    layout = make_layout("samefs", tmp_path, None)
    build_crash_tree(layout.src)
    journal = layout.journal()
    journal.parent.mkdir(parents=True)
    journal.write_bytes(random.Random(5).randbytes(16 * KIB))
    before_files, before_src = _journal_files(layout), tree_state(layout.src)
    run = run_cli(layout.params())
    assert run.returncode == 2, run.describe()
    msg = run.result["msg"]
    assert "corrupt" in msg and "move the journal aside" in msg, msg
    assert str(journal) in msg
    assert _journal_files(layout) == before_files, "the corrupt journal must be left byte-identical"
    assert tree_state(layout.src) == before_src
    assert not layout.dest.exists()


@pytest.mark.parametrize("where", ["header", "pages", "files_table"])
def test_damaged_journal_of_a_killed_run_is_refused_and_kept(where, tmp_path):
    """A real journal (killed mid-job, then checkpointed by a clean open and
    close), damaged on disk: refused, kept byte-identical, no data touched."""
    layout = make_layout("samefs", tmp_path, None)
    build_crash_tree(layout.src)
    run = run_cli(layout.params(batch_files=4, workers=1, processes=1), faults="kill=after_journal_done@1")
    assert run.killed, run.describe()
    journal = layout.journal()
    conn = sqlite3.connect(str(journal))        # fold the WAL into the database file
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    files_root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()[0]
    conn.close()
    data = bytearray(journal.read_bytes())
    assert len(data) >= 4 * page_size
    if where == "header":
        data[0:100] = random.Random(6).randbytes(100)
    elif where == "pages":                         # every page after the first
        data[page_size:] = random.Random(7).randbytes(len(data) - page_size)
    else:                                          # only the files table's (root) page
        start = (files_root - 1) * page_size
        data[start:start + page_size] = random.Random(8).randbytes(page_size)
    journal.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        Path(str(journal) + side).unlink(missing_ok=True)
    before_files, before_src = _journal_files(layout), tree_state(layout.src)
    before_dest = tree_state(layout.dest)
    run = run_cli(layout.params())
    assert run.returncode == 2, "a damaged journal must be refused with a clear error: " + run.describe()
    msg = run.result["msg"]
    assert "corrupt" in msg and "move the journal aside" in msg, msg
    assert _journal_files(layout) == before_files, "the damaged journal must be left byte-identical"
    assert tree_state(layout.src) == before_src
    assert tree_state(layout.dest) == before_dest


def test_journal_of_another_src_is_refused(tmp_path):
    layout = make_layout("samefs", tmp_path, None)
    spec = build_crash_tree(layout.src)
    check_complete(spec, layout, run_cli(layout.params()))
    other = tmp_path / "other-src"
    other.mkdir()
    (other / "x.txt").write_bytes(b"another tree\n")
    before_files, before_other = _journal_files(layout), tree_state(other)
    before_dest = tree_state(layout.dest)
    run = run_cli(dict(layout.params(), src=str(other)))    # same job_id, other src
    assert run.returncode == 2, run.describe()
    assert "belongs to another job" in run.result["msg"], run.result
    assert str(other) in run.result["msg"]
    after_files = _journal_files(layout)
    assert after_files["journal.sqlite"] == before_files["journal.sqlite"], "the journal was modified"
    assert after_files.get("journal.sqlite-wal", b"") == b"", "something was written to the journal"
    assert tree_state(other) == before_other
    assert tree_state(layout.dest) == before_dest


# --------------------------------------------------------------------------
# The source changes between the scan and the move
# --------------------------------------------------------------------------

SWAP_SPEC = {
    "a.txt": b"first, moved before the swap\n",
    "sub/f1": b"inside sub: one\n",
    "sub/f2": b"inside sub: two\n",
    "zz/last.txt": b"last\n",
}


def _fs(kind):
    return pytest.param(kind, marks=[] if kind == "samefs" else [pytest.mark.root], id=kind)


@pytest.mark.parametrize("kind", [_fs("samefs"), _fs("tmpfs")])
def test_directory_swapped_for_symlink_after_scan_is_not_followed(kind, tmp_path, request):
    layout = make_layout(kind, tmp_path, request)
    spec = TreeSpec(files={rel: FileSpec(data) for rel, data in SWAP_SPEC.items()},
                    dirs={"sub": (0o755, 1_600_000_000_000_000_000), "zz": (0o755, 1_600_000_000_000_000_000)})
    materialize(spec, layout.src)
    # A directory outside both roots, with the same names as the swapped one.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f1").write_bytes(b"OUTSIDE one: must never be read, moved or deleted\n")
    (outside / "f2").write_bytes(b"OUTSIDE two\n")
    (outside / "keep").mkdir()
    (outside / "keep" / "deep").write_bytes(b"OUTSIDE deep\n")
    params = layout.params(workers=1)
    run = run_cli(params, faults="kill=after_rename@1")    # scanned, a.txt moved
    assert run.killed, run.describe()
    rows = journal_rows(layout.journal())
    assert rows["sub/f1"]["state"] == "pending", rows
    held = tmp_path / "held-sub"
    os.rename(layout.src / "sub", held)
    os.symlink(outside, layout.src / "sub")
    outside_before, held_before = tree_state(outside), tree_state(held)
    run = run_cli(params)
    assert not run.killed and run.stdout, run.describe()
    result = run.result
    assert tree_state(outside) == outside_before, "the directory outside the roots was touched"
    assert tree_state(held) == held_before
    for rel in ("f1", "f2"):
        dst = read_regular(layout.dest / "sub" / rel) if os.path.isdir(layout.dest / "sub") else None
        assert dst is None, "sub/%s at the destination holds %r" % (rel, dst)
    rows = journal_rows(layout.journal())
    for rel in ("sub/f1", "sub/f2"):
        assert rows[rel]["state"] in ("failed", "skipped"), rows[rel]
        if rows[rel]["state"] == "failed":
            failure = _failure_for(result, rel)
            assert "symbolic link" in failure["error"], failure
        assert rows[rel]["state"] != "done"
    # the link itself was not replaced by what it points to
    assert os.path.islink(layout.src / "sub") or os.path.islink(layout.dest / "sub")
    _moved(spec, layout, ["a.txt", "zz/last.txt"])


@pytest.mark.parametrize("kind", [_fs("samefs"), _fs("tmpfs")])
def test_source_deleted_between_scan_and_move_is_skipped(kind, tmp_path, request):
    layout = make_layout(kind, tmp_path, request)
    spec = TreeSpec(files={rel: FileSpec(data) for rel, data in SWAP_SPEC.items()})
    materialize(spec, layout.src)
    params = layout.params(workers=1)
    run = run_cli(params, faults="kill=after_rename@1")
    assert run.killed, run.describe()
    assert journal_rows(layout.journal())["zz/last.txt"]["state"] == "pending"
    os.unlink(layout.src / "zz" / "last.txt")
    del spec.files["zz/last.txt"]
    run = run_cli(params)
    assert run.returncode == 0, run.describe()
    result = run.result
    assert not result.get("failed"), result
    assert result["stats"]["files_skipped"] == 1
    assert result["stats"]["files_failed"] == 0
    row = journal_rows(layout.journal())["zz/last.txt"]
    assert row["state"] == "skipped" and "vanished" in row["error"], row
    _moved(spec, layout, list(spec.files))
    assert all_names(layout.src) == []
    assert not os.path.lexists(layout.dest / "zz" / "last.txt")


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failed_batch_flush_copies_its_files_again_one_by_one(processes, tmp_path, request):
    """syncfs of the destination fails once (strace skips the call and returns
    EIO: nothing of the batch was flushed). The error may belong to any file of
    the filesystem, so the batch's parts are discarded, never trusted, and each
    file is copied again with its own flush: on a healthy disk all of them move
    in the same run, and no file is charged an attempt it did not fail."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    layout = make_layout("ext4", tmp_path, request)
    spec = materialize(crash_tree_spec(), layout.src)
    # The destination's directories exist (durably): the run makes none, so the
    # first syncfs of each process is a batch's flush of its parts (strace counts
    # each process's calls), not the one that makes new directories durable
    for rel in spec.dirs:
        (layout.dest / rel).mkdir(parents=True, exist_ok=True)
    os.sync()
    params = layout.params(checkpoint_size="64K", buffer_size="16K", batch_files=4, processes=processes)
    run = run_cli(params, prefix=[strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=syncfs",
                                  "--inject=syncfs:error=EIO:when=1"])
    check_complete(spec, layout, run)
    rows = journal_rows(layout.journal())
    assert all(row["attempts"] == 0 for row in rows.values()), rows
