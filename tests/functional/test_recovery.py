# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Crash recovery of the real core: SIGKILL at every step boundary, then rerun.

Each test runs ``tests/tools/mover_cli.py`` as a process with
``DURABLE_MOVER_FAULTS=kill=<point>@<n>``, checks what must hold at any
instant (helpers_recovery.check_invariant) on the real files and the journal,
then reruns without faults and checks that the job is complete: every entry
at the destination with its content and metadata, nothing left at the
source, no part file, every journal row done.

Also: two kills in a row, a kill during the scan, resuming a large copy from
its checkpoint (proved with strace and the journal), a damaged part file, and
SIGTERM/SIGINT in the middle of a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _faults

from helpers_recovery import (
    KIB,
    CliRun,
    Layout,
    MIB,
    FileSpec,
    TreeSpec,
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
    wait_for,
)

# Small checkpoints and buffers so that a ~200 KiB file crosses several
# checkpoints; small batches so that every batch step is reached several times.
TUNING = {"checkpoint_size": "64K", "buffer_size": "16K", "batch_files": 4, "workers": 1, "processes": 1}

# Points every run must reach at least once (so @1 must kill): a cross-device
# move copies (part, sync, checkpoint of the large file, verify, rename) and
# unlinks sources after the journal commit; a same-filesystem move renames.
BATCH_POINTS = {"after_dest_dir_sync", "after_journal_copied", "after_src_dir_sync", "after_journal_done"}
REACHED = {
    "cross": BATCH_POINTS | {"after_part_write", "after_part_sync", "after_checkpoint", "after_verify",
                             "after_rename", "after_unlink"},
    "samefs": BATCH_POINTS | {"after_rename"},
}


FS_KINDS = ("samefs", "ext4", "xfs")


def _fs_marks(kind):
    return [] if kind == "samefs" else [pytest.mark.root, pytest.mark.loop]


def _kill_then_recover(layout, spec, faults, params):
    """One faulted run; returns it after checking the invariant (if killed)."""
    run = run_cli(layout.params(**params), faults=faults)
    if run.killed:
        assert run.stdout == "", "a SIGKILLed process printed a result"
        assert_invariant(spec, layout, "after kill=%s" % faults)
    else:
        # The point was not reached that many times: the run must then have
        # finished the whole job by itself.
        check_complete(spec, layout, run)
    return run


def _matrix():
    """Every point but after_scan_batch (its own test) at @1 and @3, on each
    file system kind; on one file system the copy-only points are never
    reached, so only @1 (the run must then complete by itself)."""
    for kind in FS_KINDS:
        for point in _faults.POINTS:
            if point == "after_scan_batch":
                continue
            for occurrence in (1, 3):
                if kind == "samefs" and point not in REACHED["samefs"] and occurrence > 1:
                    continue
                yield pytest.param(kind, point, occurrence, marks=_fs_marks(kind),
                                   id="%s-%s@%d" % (kind, point, occurrence))


@pytest.mark.parametrize("kind,point,occurrence", list(_matrix()))
def test_kill_at_step_boundary_then_rerun(kind, point, occurrence, tmp_path, request):
    layout = make_layout(kind, tmp_path, request)
    spec = build_crash_tree(layout.src)
    run = _kill_then_recover(layout, spec, "kill=%s@%d" % (point, occurrence), TUNING)
    if occurrence == 1 and point in REACHED["cross" if layout.cross else "samefs"]:
        assert run.killed, "kill=%s@1 did not fire: %s" % (point, run.describe())
    if not run.killed:
        return
    rerun = run_cli(layout.params(**TUNING))
    check_complete(spec, layout, rerun)
    assert rerun.result["stats"]["resumed"] is True
    # A third run finds nothing to do.
    again = run_cli(layout.params(**TUNING))
    assert again.returncode == 0, again.describe()
    assert again.result["changed"] is False
    assert again.result["stats"]["files_moved"] == 0


DOUBLE_KILLS = [
    # (where, first kill, kill during the recovery run, workers); workers=4
    # runs with the default batch size: a hard-link pair in one batch, files
    # transferred concurrently.
    ("cross", "after_part_write@1", "after_verify@2", 1),
    ("cross", "after_checkpoint@2", "after_checkpoint@1", 4),
    ("cross", "after_rename@3", "after_unlink@1", 1),
    ("cross", "after_journal_copied@1", "after_journal_copied@1", 4),
    ("cross", "after_unlink@2", "after_src_dir_sync@1", 1),
    ("cross", "after_verify@1", "after_journal_done@1", 4),
    ("cross", "after_dest_dir_sync@1", "after_rename@1", 1),
    ("cross", "after_verify@3", "after_unlink@2", 4),
    ("samefs", "after_rename@2", "after_rename@2", 4),
    ("samefs", "after_journal_copied@1", "after_dest_dir_sync@1", 1),
    ("samefs", "after_dest_dir_sync@1", "after_journal_done@1", 4),
]


@pytest.mark.parametrize("where,first,second,workers", [
    pytest.param(w, a, b, n, marks=_fs_marks(w),
                 id="%s-%s-then-%s-w%d" % (w, a, b, n)) for w, a, b, n in DOUBLE_KILLS])
def test_killed_twice_then_recovers(where, first, second, workers, tmp_path, request):
    """A recovery run killed at another point, then a third run finishes."""
    layout = make_layout("samefs" if where == "samefs" else "ext4", tmp_path, request)
    spec = build_crash_tree(layout.src)
    params = {**TUNING, "workers": workers, "batch_files": 4 if workers == 1 else 256}
    run1 = run_cli(layout.params(**params), faults="kill=" + first)
    assert run1.killed, "kill=%s did not fire: %s" % (first, run1.describe())
    assert_invariant(spec, layout, "after kill=" + first)
    run2 = run_cli(layout.params(**params), faults="kill=" + second)
    assert run2.killed, "the recovery run was not killed at %s: %s" % (second, run2.describe())
    assert_invariant(spec, layout, "after kill=%s then kill=%s" % (first, second))
    run3 = run_cli(layout.params(**params))
    check_complete(spec, layout, run3)


def test_kill_during_scan_then_rerun_resumes_the_scan(tmp_path):
    """kill=after_scan_batch: the scan is committed in batches of entries; a
    killed scan resumes and the move completes (nothing moved before)."""
    src, dest, state = tmp_path / "src", tmp_path / "dst", tmp_path / "state"
    spec = TreeSpec()
    # More entries than one scan commit holds (several thousand) in five
    # directories, and a sixth listed after that commit: the scan is killed
    # with a directory still unlisted.
    for d in range(6):
        spec.dirs["d%d" % d] = (0o755, 1_600_000_000_000_000_000 + d)
        for f in range(1000 if d < 5 else 3):
            spec.files["d%d/f%04d" % (d, f)] = FileSpec(b"%d/%d\n" % (d, f), 0o644, 1_600_000_000_000_000_000 + f)
    src.mkdir()
    materialize(spec, src)
    layout = Layout("samefs", src, dest, state)
    # (one process: worker processes would start moving before the scan ends)
    run = run_cli(layout.params(processes=1), faults="kill=after_scan_batch@1")
    assert run.killed, run.describe()
    assert_invariant(spec, layout, "after a kill during the scan")
    rows = journal_rows(layout.journal())
    assert 0 < len(rows) < spec.entries, "the scan should have been cut short (%d rows)" % len(rows)
    assert {r["state"] for r in rows.values()} == {"pending"}
    assert not dest.exists() or not any(dest.rglob("f*")), "nothing may move before the scan is done"
    rerun = run_cli(layout.params())
    check_complete(spec, layout, rerun)


# --------------------------------------------------------------------------
# Resuming a large copy from its checkpoint
# --------------------------------------------------------------------------

CHECKPOINT = 64 * KIB
BUFFER = 16 * KIB
BIG = 1 * MIB
STRACE_WRITE = re.compile(r"pwrite64\((\d+)<(?P<path>[^>]*)>, \"\"\.\.\., (?P<len>\d+), (?P<off>\d+)\) = (?P<ret>-?\d+)")
STRACE_TRUNC = re.compile(r"ftruncate\((\d+)<(?P<path>[^>]*)>, (?P<len>\d+)\) = 0")


def _strace_or_skip():
    if shutil.which("strace") is None:
        pytest.skip("strace not installed (apt-get install strace)")


def _traced_run(params, trace):
    """Run the CLI under strace, recording pwrite64/ftruncate with fd paths."""
    argv = ["strace", "-f", "-qq", "-y", "-s", "0", "-e", "signal=none",
            "-e", "trace=pwrite64,ftruncate", "-o", str(trace), *cli_argv(params)]
    proc = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=120, check=False)
    return proc


def _part_writes(trace, name):
    """(offset, length) of every pwrite64 to a part file of `name`."""
    writes, truncs = [], []
    for line in Path(trace).read_text().splitlines():
        m = STRACE_WRITE.search(line)
        if m and os.path.basename(m.group("path")).startswith(".%s." % name) and m.group("path").endswith(".part"):
            writes.append((int(m.group("off")), int(m.group("ret"))))
        m = STRACE_TRUNC.search(line)
        if m and os.path.basename(m.group("path")).startswith(".%s." % name) and m.group("path").endswith(".part"):
            truncs.append(int(m.group("len")))
    return writes, truncs


@pytest.fixture
def big_copy_killed_at_second_checkpoint(tmp_path, request):
    """A 1 MiB copy to ext4 killed right after its 2nd checkpoint committed."""
    layout = make_layout("ext4", tmp_path, request)
    data = bytearray(pseudo_random(BIG, 7))
    # A hole well past the checkpoint: bytes the copy does not write.
    data[600 * KIB:900 * KIB] = bytes(300 * KIB)
    spec = TreeSpec(files={"big.bin": FileSpec(bytes(data), 0o640)})
    with open(layout.src / "big.bin", "wb") as handle:
        handle.write(data[:600 * KIB])
        handle.seek(900 * KIB)
        handle.write(data[900 * KIB:])
    os.chmod(layout.src / "big.bin", 0o640)
    os.utime(layout.src / "big.bin", ns=(spec.files["big.bin"].mtime_ns,) * 2)
    params = layout.params(checkpoint_size=CHECKPOINT, buffer_size=BUFFER, workers=1)
    run = run_cli(params, faults="kill=after_checkpoint@2")
    assert run.killed, run.describe()
    assert_invariant(spec, layout, "after kill=after_checkpoint@2")
    row = journal_rows(layout.journal())["big.bin"]
    assert row["state"] == "copying"
    assert row["checkpoint"] == 2 * CHECKPOINT, row
    parts = part_files(layout.dest)
    assert len(parts) == 1, parts
    part = layout.dest / parts[0]
    assert part.stat().st_size >= row["checkpoint"]
    return layout, spec, params, part, row["checkpoint"]


@pytest.mark.root
@pytest.mark.loop
def test_resume_from_checkpoint_does_not_rewrite_the_prefix(big_copy_killed_at_second_checkpoint, tmp_path):
    _strace_or_skip()
    layout, spec, params, part, checkpoint = big_copy_killed_at_second_checkpoint
    prefix = read_regular(part)[:checkpoint]
    trace = tmp_path / "trace.txt"
    proc = _traced_run(params, trace)
    assert proc.returncode == 0, proc.stderr[-3000:]
    writes, _truncs = _part_writes(trace, "big.bin")
    assert writes, "strace saw no write to the part file"
    assert min(off for off, _n in writes) == checkpoint, "the durable prefix was written again"
    assert sum(n for _off, n in writes) == BIG - checkpoint - 300 * KIB  # the hole is not written
    assert read_regular(layout.dest / "big.bin")[:checkpoint] == prefix
    check_complete(spec, layout, CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0))
    result = CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0).result
    assert result["stats"]["resumed"] is True
    assert result["stats"]["bytes_moved"] == BIG - checkpoint - 300 * KIB   # what it wrote: holes are not bytes


@pytest.mark.root
@pytest.mark.loop
def test_garbage_past_the_checkpoint_is_cut_off(big_copy_killed_at_second_checkpoint, tmp_path):
    """Bytes after the checkpoint are never trusted: garbage appended to the
    part (over the source's hole, which the copy does not write) must not
    survive into the destination."""
    _strace_or_skip()
    layout, spec, params, part, checkpoint = big_copy_killed_at_second_checkpoint
    with open(part, "r+b") as handle:
        handle.seek(0, os.SEEK_END)
        handle.write(b"\xde\xad\xbe\xef" * (BIG // 4))   # covers everything up to past the end
    assert part.stat().st_size > BIG
    trace = tmp_path / "trace.txt"
    proc = _traced_run(params, trace)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    writes, truncs = _part_writes(trace, "big.bin")
    assert truncs and truncs[0] == checkpoint, "the part was not cut back to its checkpoint: %r" % truncs
    assert min(off for off, _n in writes) == checkpoint
    check_complete(spec, layout, CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0))


@pytest.mark.root
@pytest.mark.loop
def test_part_shorter_than_checkpoint_restarts_from_zero(big_copy_killed_at_second_checkpoint, tmp_path):
    _strace_or_skip()
    layout, spec, params, part, checkpoint = big_copy_killed_at_second_checkpoint
    os.truncate(part, checkpoint - 5000)
    trace = tmp_path / "trace.txt"
    proc = _traced_run(params, trace)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    writes, _truncs = _part_writes(trace, "big.bin")
    assert min(off for off, _n in writes) == 0, "a part shorter than its checkpoint must be copied anew"
    run = CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0)
    check_complete(spec, layout, run)
    assert run.result["stats"]["bytes_moved"] == BIG - 300 * KIB      # its data: the hole is not bytes moved


@pytest.mark.root
@pytest.mark.loop
def test_source_changed_since_the_checkpoint_restarts_from_zero(big_copy_killed_at_second_checkpoint, tmp_path):
    """The checkpoint is only valid for the source it was taken of: a source
    rewritten in place (same size, other bytes in the already copied prefix)
    must be copied anew, never spliced onto the old prefix."""
    _strace_or_skip()
    layout, spec, params, _part, _checkpoint = big_copy_killed_at_second_checkpoint
    with open(layout.src / "big.bin", "r+b") as handle:
        handle.write(b"NEW PREFIX" * 1000)
    new = read_regular(layout.src / "big.bin")
    spec.files["big.bin"] = FileSpec(new, 0o640, os.lstat(layout.src / "big.bin").st_mtime_ns)
    trace = tmp_path / "trace.txt"
    proc = _traced_run(params, trace)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    writes, _truncs = _part_writes(trace, "big.bin")
    assert min(off for off, _n in writes) == 0, "the old checkpoint was trusted for a changed source"
    check_complete(spec, layout, CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0))


# --------------------------------------------------------------------------
# SIGTERM / SIGINT in the middle of a copy
# --------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.loop
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_mid_copy_rolls_back_or_keeps_checkpoint_then_rerun_completes(signum, tmp_path, request):
    layout = make_layout("ext4", tmp_path, request)
    size = 16 * MIB
    spec = TreeSpec(files={"big.bin": FileSpec(pseudo_random(size, 11), 0o600),
                           "zz-after.txt": FileSpec(b"copied after the big one\n", 0o644)})
    materialize(spec, layout.src)
    params = layout.params(checkpoint_size="256K", buffer_size="64K", workers=1)
    proc = start_cli(params)
    try:
        def growing():
            parts = [p for p in part_files(layout.dest) if p.startswith(".big.bin.")]
            try:
                return parts[0] if parts and os.stat(layout.dest / parts[0]).st_size > 0 else None
            except FileNotFoundError:
                return None
        part = wait_for(growing, "the part file to appear and grow", proc=proc)
        # Hold the process still while the signal is sent, so that it is
        # certainly in the middle of this copy when it sees it.
        os.kill(proc.pid, signal.SIGSTOP)
        size_then = os.stat(layout.dest / part).st_size
        assert 0 < size_then < size, "the copy was not in progress"
        os.kill(proc.pid, signum)
        os.kill(proc.pid, signal.SIGCONT)
        run = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.returncode == 1, run.describe()
    result = run.result
    assert result["interrupted"] is True
    assert result["failed"] is True
    assert result["complete"] is False
    assert "interrupted" in result["msg"]
    assert_invariant(spec, layout, "after %s" % signal.Signals(signum).name)
    # The file in hand was not moved; its source is whole; the journal is
    # consistent with the part left (kept only back to a durable checkpoint).
    assert read_regular(layout.src / "big.bin") == spec.files["big.bin"].data
    assert not (layout.dest / "big.bin").exists()
    row = journal_rows(layout.journal())["big.bin"]
    assert row["state"] in ("pending", "copying"), row
    parts = part_files(layout.dest)
    if row["checkpoint"]:
        assert row["state"] == "copying"
        assert len(parts) == 1 and (layout.dest / parts[0]).stat().st_size >= row["checkpoint"]
    else:
        assert parts == [], "a part without a checkpoint must be rolled back"
    assert journal_rows(layout.journal())["zz-after.txt"]["state"] == "pending"
    rerun = run_cli(params)
    check_complete(spec, layout, rerun)
    assert rerun.result["stats"]["resumed"] is True


@pytest.mark.parametrize("damage", ["emptied", "same size, other bytes", "removed"])
def test_copied_row_is_verified_again_before_its_source_is_removed(damage, tmp_path, request):
    """A run stopped after its journal said 'copied', before it unlinked the
    sources; then the destination copies were damaged (a power cut took data
    that was never flushed, a disk returned other bytes, someone removed them).
    The next run removes a source only once its destination verifies again from
    the disk; the others are copied again from the sources it kept."""
    layout = make_layout("tmpfs", tmp_path, request)
    spec = materialize(crash_tree_spec(), layout.src)
    params = layout.params(checkpoint_size="64K", buffer_size="16K", processes=1)
    first = run_cli(params, faults="kill=after_journal_copied@1")
    assert first.killed, first.describe()
    rows = journal_rows(layout.journal())
    copied = [rel for rel, row in rows.items() if row["state"] == "copied" and rel in spec.files]
    assert copied, rows
    for rel in copied:
        path = layout.dest / rel
        size = path.stat().st_size
        if damage == "emptied":
            os.truncate(path, 0)
        elif damage == "removed":
            path.unlink()
        elif size:
            path.write_bytes(bytes(size))
    rerun = run_cli(params)
    check_complete(spec, layout, rerun)
