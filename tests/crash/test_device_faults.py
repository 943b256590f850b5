# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The real mover on a destination device that fails (blockdev.py): issue 10.

The destination is ext4 or xfs on a loop device whose blocks live in the
blockdev daemon; the source and the state directory are elsewhere. The disk
misbehaves the way real ones do, below the filesystem, so the kernel's own
error handling is in the loop (strace error injection skips the syscall: the
kernel never marks pages clean, never records a writeback error):

* item 5, ``syncfs`` errors lost between worker processes: writes of the
  blocks of some files fail with EIO (chosen by a marker in their content,
  wherever the filesystem puts them) while two worker processes move small
  files through the batch ``syncfs`` path. Every file the journal says
  copied or done must be whole on the device (the destination is unmounted
  and mounted again before it is read), every file not whole must still be
  at its source, and a rerun once the disk is healed completes. Also with
  ``verify_readback: false``: read-back can catch what the flush lost, and
  so hide the bug.
* issue 11 item 4, a destination that dies mid-run (every write, or every
  flush, fails after the first N, as a dying disk does; xfs then shuts down,
  ext4 aborts its journal): the run ends with a result that says it failed,
  the device (remounted once healed) holds every file the journal says is
  there, nothing is lost, and a rerun once healed completes.
* "a verification-mismatch test changes the computed hash instead of the
  bytes on disk": here the device returns other bytes than were written
  (rot) for a file, after its flush, on each copy path: a batch flushed by
  ``syncfs`` (ext4, xfs), a file flushed on its own (the path of destinations
  without a batch flush; here forced on ext4, see ``_per_file_flush``), and a
  file larger than 4 x buffer_size (the pipelined copy). The mover must see
  the mismatch, keep the source, record the failure, never report it done;
  a rerun once healed completes.

Each run is traced (``strace -f -e trace=syncfs,fdatasync,fsync``) only to prove it
took the path the test is named for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

import blockdev

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'functional'))
# pylint: disable-next=wrong-import-position
from helpers_recovery import (  # noqa: E402
    BASE_NS,
    CLI,
    KIB,
    CliRun,
    FileSpec,
    Layout,
    TreeSpec,
    check_complete,
    check_invariant,
    cli_env,
    journal_rows,
    materialize,
    part_files,
    pseudo_random,
    read_regular,
    run_cli,
)

pytestmark = [pytest.mark.root, pytest.mark.loop]
blockdev_rig = blockdev.blockdev_rig      # the fixture, under its name
TRACE_CALL = re.compile(r'^(\d+)\s+(syncfs|fdatasync|fsync)\((\d+)(?:<([^>]*)>)?(.*)$')
TRACE_RESUMED = re.compile(r'^(\d+)\s+<\.\.\. (syncfs|fdatasync|fsync) resumed>.*=\s+(-?\d+)')
TRACE_RETURN = re.compile(r'\)\s+=\s+(-?\d+)')


def _strace() -> str:
    path = shutil.which('strace')
    if path is None:
        pytest.skip('strace is not installed (apt-get install strace): needed to prove the path taken')
    return path


def _traced(trace: Path) -> list[tuple[int, str, str, int]]:
    """(pid, syscall, fd path, return value) of every syncfs/fdatasync traced."""
    calls, unfinished = [], {}
    for line in trace.read_text(errors='replace').splitlines():
        match = TRACE_CALL.match(line)
        if match:
            pid, name, _fd, path, rest = match.groups()
            done = TRACE_RETURN.search(rest)
            if done:
                calls.append((int(pid), name, path or '', int(done.group(1))))
            else:                       # <unfinished ...>: another process's call came in between
                unfinished[pid, name] = path or ''
            continue
        match = TRACE_RESUMED.match(line)
        if match:
            pid, name, ret = match.groups()
            calls.append((int(pid), name, unfinished.pop((pid, name), ''), int(ret)))
    return calls


def _tree(files: int, poisoned_every: int, marker: bytes, size: int = 8 * KIB,
          dirs: int = 4) -> tuple[TreeSpec, set[str]]:
    """`files` files of `size` bytes over `dirs` directories; every
    `poisoned_every`-th holds `marker` at the start of its second 4 KiB block
    (of its first, if it has only one)."""
    spec, poisoned = TreeSpec(), set()
    for index in range(dirs):
        spec.dirs['d%d' % index] = (0o755, BASE_NS + 100 + index)
    for index in range(files):
        rel = 'd%d/f%03d' % (index % dirs, index)
        data = bytearray(pseudo_random(size, index))
        if index % poisoned_every == poisoned_every - 1:
            at = 4 * KIB if size > 4 * KIB else 100
            data[at:at + len(marker)] = marker
            poisoned.add(rel)
        spec.files[rel] = FileSpec(bytes(data), 0o644, BASE_NS + index)
    return spec, poisoned


def _layout(rig: t.Any, tmp_path: Path) -> Layout:
    src, state = tmp_path / 'src', tmp_path / 'state'
    src.mkdir()
    layout = Layout(rig.fstypes['dest'], src, rig.path('dest') / 'dst', state)
    assert os.stat(src).st_dev != os.stat(rig.path('dest')).st_dev
    return layout


def _lost_or_false(spec: TreeSpec, layout: Layout) -> list[str]:
    """What the device holds now contradicts the journal or loses a file."""
    problems = check_invariant(spec, layout)
    rows = journal_rows(layout.journal())
    for rel, row in rows.items():
        if row['state'] in ('copied', 'done') and read_regular(layout.dest / rel) != spec.files[rel].data:
            problems.append('%s: journal says %s, the device holds %s' % (
                rel, row['state'], 'nothing' if read_regular(layout.dest / rel) is None else 'other bytes'))
    return sorted(set(problems))


# --------------------------------------------------------------------------
# Item 5: a write error in one worker's files, with two worker processes
# --------------------------------------------------------------------------

MARKER_EIO = b'\x00BLOCKDEV-FAIL-THIS-WRITE\x00'


@pytest.mark.timeout(240)
@pytest.mark.parametrize('fstype,verify_readback', [('ext4', False), ('xfs', False), ('ext4', True)],
                         ids=['ext4-no-readback', 'xfs-no-readback', 'ext4-readback'])
def test_write_errors_with_two_workers_fail_those_files_and_lose_nothing(
        blockdev_rig, tmp_path, fstype, verify_readback):
    # one 4 KiB block a request: a failed write fails the marked block only (a real
    # disk fails a whole request, whatever neighbours the block layer merged into it)
    rig = blockdev_rig({'dest': fstype}, max_request_kib=4)
    layout = _layout(rig, tmp_path)
    spec, poisoned = _tree(files=128, poisoned_every=5, marker=MARKER_EIO)
    materialize(spec, layout.src)
    params = layout.params(processes=2, batch_files=8, workers=1, hash='sha256',
                           verify_readback=verify_readback, max_failures_reported=1000)
    rig.dev.fail_writes('dest', matching=MARKER_EIO)
    trace = tmp_path / 'run1.trace'
    run = run_cli(params, prefix=[_strace(), '-f', '-qq', '-y', '--seccomp-bpf', '-e', 'trace=syncfs,fdatasync,fsync',
                                  '-o', str(trace)])
    failed_writes = rig.dev.stats()['counts'].get('failed_writes', 0)
    rig.dev.heal()
    rig.remount('dest')                 # from here on, what is read is what the device holds

    syncfs = [(pid, ret) for pid, name, _path, ret in _traced(trace) if name == 'syncfs']
    assert len({pid for pid, _ret in syncfs}) >= 2, \
        'not the batch path in two worker processes: syncfs calls %r; %s' % (syncfs, run.describe())
    assert failed_writes > 0, 'the device failed no write: %s' % run.describe()
    result = run.result
    assert result.get('failed') is True, 'the run hit write errors and reported success: %s' % run.describe()
    errors_seen = sum(1 for _pid, ret in syncfs if ret != 0)
    rows = journal_rows(layout.journal())
    first_failed = {rel for rel, row in rows.items() if row['state'] == 'failed'}

    problems = _lost_or_false(spec, layout)
    processes = len({pid for pid, _ret in syncfs})
    assert not problems, (
        '%d write errors on the device (%d of %d syncfs calls in %d processes returned an error); '
        'after a remount:\n  %s' % (failed_writes, errors_seen, len(syncfs), processes, '\n  '.join(problems)))
    assert part_files(layout.dest) == []
    reported = {f['path'] for f in result['failures']}
    for rel in poisoned:
        assert rows[rel]['state'] == 'failed', '%s: %r' % (rel, rows[rel])
        assert any(path == rel or path.endswith('/' + rel) for path in reported), rel

    rerun = run_cli(params)             # the disk healed
    check_complete(spec, layout, rerun)
    rig.remount('dest')
    assert not _lost_or_false(spec, layout)
    # only the files whose writes failed failed (issue 10 items 5 and 18)
    assert first_failed == poisoned, 'failed in the first run besides the files whose writes failed: %s' \
        % sorted(first_failed - poisoned)


# --------------------------------------------------------------------------
# Verification mismatch: the device returns other bytes after the flush
# --------------------------------------------------------------------------

MARKER_ROT = b'\x00BLOCKDEV-ROT-THIS-BLOCK\x00'
BUFFER = 64 * KIB

# The mover run by a child that changes what the environment does:
# - per-file-flush: the flush path of a destination without a batch flush
#   (FUSE, NFS, tmpfs; and kernels whose syncfs may lose errors): every file
#   is flushed with its own fdatasync and read back on its own. No block
#   filesystem here takes it, so the mover is told syncfs is not available;
# - drop-ignored: POSIX_FADV_DONTNEED is a hint the kernel may ignore (it
#   keeps a page someone has mapped): here it keeps every page, so a read
#   through the page cache sees what was written, not what the device holds.
_RUNNER = '''
import os, sys
sys.path.insert(0, %r)
import mover_cli
from ansible_collections.durable.mover.plugins.module_utils import _durable
if 'per-file-flush' in sys.argv[2:]:
    _durable.syncfs_supported = lambda fd: False
if 'drop-ignored' in sys.argv[2:]:
    fadvise = os.posix_fadvise
    os.posix_fadvise = lambda fd, offset, length, advice: (
        None if advice == os.POSIX_FADV_DONTNEED else fadvise(fd, offset, length, advice))
sys.exit(mover_cli.main(sys.argv[:2]))
''' % str(CLI.parent)

CASES = {
    # name: (fstype, files, file size, per-file flush, DONTNEED ignored)
    'batch-ext4': ('ext4', 24, 8 * KIB, False, False),
    'batch-xfs': ('xfs', 24, 8 * KIB, False, False),
    'batch-one-page-ext4': ('ext4', 24, 4 * KIB, False, False),
    'per-file-flush-ext4': ('ext4', 6, 8 * KIB, True, False),
    'pipelined-ext4': ('ext4', 2, 16 * BUFFER, False, False),      # > 4 x buffer_size: the pipeline
    'batch-xfs-drop-ignored': ('xfs', 24, 8 * KIB, False, True),
    'batch-one-page-ext4-drop-ignored': ('ext4', 24, 4 * KIB, False, True),
    'per-file-flush-ext4-drop-ignored': ('ext4', 6, 8 * KIB, True, True),
    'pipelined-ext4-drop-ignored': ('ext4', 2, 16 * BUFFER, False, True),
}


def _run_mover(params: dict, per_file_flush: bool, trace: Path, drop_ignored: bool = False) -> t.Any:
    prefix = [_strace(), '-f', '-qq', '-y', '--seccomp-bpf', '-e', 'trace=syncfs,fdatasync,fsync', '-o', str(trace)]
    if not per_file_flush and not drop_ignored:
        return run_cli(params, prefix=prefix)
    started = time.monotonic()
    flags = [flag for flag, on in (('per-file-flush', per_file_flush), ('drop-ignored', drop_ignored)) if on]
    proc = subprocess.run(prefix + [sys.executable, '-c', _RUNNER, json.dumps(params)] + flags, env=cli_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


@pytest.mark.timeout(240)
@pytest.mark.parametrize('case', sorted(CASES))
def test_other_bytes_read_back_from_the_device_are_caught(blockdev_rig, tmp_path, case):
    fstype, files, size, per_file_flush, drop_ignored = CASES[case]
    rig = blockdev_rig({'dest': fstype})
    layout = _layout(rig, tmp_path)
    spec, rotted = _tree(files=files, poisoned_every=3 if files > 2 else 2, marker=MARKER_ROT, size=size,
                         dirs=2)
    materialize(spec, layout.src)
    params = layout.params(buffer_size=BUFFER, checkpoint_size=4 * BUFFER, hash='sha256')
    rig.dev.rot('dest', matching=MARKER_ROT)      # what is written is stored; reads of it lie
    trace = tmp_path / 'run1.trace'
    run = _run_mover(params, per_file_flush, trace, drop_ignored)
    rotted_reads = rig.dev.stats()['counts'].get('rotted_reads', 0)
    rig.dev.heal()
    rig.remount('dest')

    calls = _traced(trace)
    part_flushes = [c for c in calls if c[1] in ('fsync', 'fdatasync') and c[2].endswith('.part')]
    if case.startswith('batch'):
        assert any(c[1] == 'syncfs' for c in calls) and not part_flushes, 'not the batch path: %r' % calls
    elif per_file_flush:
        assert not any(c[1] == 'syncfs' for c in calls) and len(part_flushes) >= files, \
            'not the per-file flush path: %r' % calls
    else:
        assert len(part_flushes) >= 2 * files, 'not the pipelined path (checkpoint flushes): %r' % calls

    result = run.result
    rows = journal_rows(layout.journal())
    caught = {rel for rel in rotted if rows[rel]['state'] == 'failed'
              and 'verification failed' in (rows[rel]['error'] or '')}
    assert caught == rotted, (
        '%s: the device returned other bytes (%d rotted reads) for %s; the mover caught %s. Journal: %s'
        % (case, rotted_reads, sorted(rotted), sorted(caught),
           json.dumps({rel: [rows[rel]['state'], rows[rel]['error']] for rel in sorted(rotted)})))
    assert result.get('failed') is True and result['complete'] is False
    reported = {f['path'] for f in result['failures']}
    for rel in rotted:
        assert read_regular(layout.src / rel) == spec.files[rel].data, '%s: source not kept' % rel
        assert read_regular(layout.dest / rel) is None, '%s: under its final name at the destination' % rel
        assert any(path == rel or path.endswith('/' + rel) for path in reported), rel
    assert part_files(layout.dest) == []
    assert not _lost_or_false(spec, layout)
    for rel in set(spec.files) - rotted:
        assert rows[rel]['state'] == 'done', '%s: %r' % (rel, rows[rel])

    rerun = run_cli(params)             # healed: the same files now read back whole
    check_complete(spec, layout, rerun)
    rig.remount('dest')
    assert not _lost_or_false(spec, layout)


# --------------------------------------------------------------------------
# A destination that dies mid-run
# --------------------------------------------------------------------------

DYING = {
    # name: (fstype, what fails, after how many device requests)
    'xfs-writes-fail': ('xfs', 'writes', 40),
    'ext4-flushes-fail': ('ext4', 'flushes', 11),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize('case', sorted(DYING))
def test_a_destination_that_dies_mid_run_with_two_workers(blockdev_rig, tmp_path, case):
    fstype, what, after = DYING[case]
    rig = blockdev_rig({'dest': fstype})
    layout = _layout(rig, tmp_path)
    spec, _none = _tree(files=64, poisoned_every=10 ** 6, marker=b'unused')
    spec.files['d1/large.bin'] = FileSpec(pseudo_random(10 * BUFFER, 99), 0o644, BASE_NS)   # the pipeline
    materialize(spec, layout.src)
    params = layout.params(processes=2, batch_files=8, workers=1, hash='sha256', verify_readback=False,
                           buffer_size=BUFFER, checkpoint_size=2 * BUFFER, max_failures_reported=1000)
    if what == 'writes':
        rig.dev.fail_writes('dest', after=after)
    else:
        rig.dev.fail_flush('dest', after=after)
    run = run_cli(params)
    counts = rig.dev.stats()['counts']
    assert counts.get('failed_writes', 0) + counts.get('failed_flushes', 0) > 0, 'the disk never failed'
    rig.dev.heal()
    rig.remount('dest')                 # a dead filesystem comes back as after a reboot

    problems = _lost_or_false(spec, layout)
    assert not problems, 'after the disk died and came back:\n  ' + '\n  '.join(problems)
    assert run.returncode == 1, run.describe()
    result = run.result                 # a result, not a traceback
    assert result.get('failed') is True and result.get('complete') is False, result

    rerun = run_cli(params)
    check_complete(spec, layout, rerun)
    rig.remount('dest')
    assert not _lost_or_false(spec, layout)


# --------------------------------------------------------------------------
# Data the filesystem keeps inline in its metadata: no read reaches the device
# --------------------------------------------------------------------------

INLINE = {
    # name: (fstype, mkfs arguments, file sizes stored inline, a size stored in blocks)
    'ext4-inline_data': ('ext4', ('-O', 'inline_data', '-I', '1024'), (1, 40, 100), 8 * KIB),
    'btrfs': ('btrfs', (), (1, 40, 1500), 8 * KIB),
}


@pytest.mark.timeout(240)
@pytest.mark.parametrize('case', sorted(INLINE))
def test_files_stored_inline_are_reported_as_not_read_from_the_device(blockdev_rig, tmp_path, case):
    """ext4 with inline_data and btrfs keep a small file's bytes inside the
    filesystem's metadata: a read-back, O_DIRECT or not, is served from the
    metadata in memory. Such files cannot be verified from the device, and
    the result says which (readback_from_cache, with the reason); the files
    stored in blocks are read from the device (the rot on them is caught)."""
    fstype, mkfs_args, inline_sizes, block_size = INLINE[case]
    rig = blockdev_rig({'dest': fstype}, mkfs_args={'dest': mkfs_args})
    layout = _layout(rig, tmp_path)
    spec = TreeSpec()
    for index, size in enumerate(inline_sizes):
        spec.files['small%d' % index] = FileSpec(pseudo_random(size, index), 0o644, BASE_NS + index)
    spec.files['large'] = FileSpec(pseudo_random(block_size, 99), 0o644, BASE_NS + 99)
    materialize(spec, layout.src)
    run = run_cli(layout.params(buffer_size=BUFFER, hash='sha256'))
    result = run.result
    assert run.returncode == 0 and result['complete'] is True, run.describe()
    named = {os.path.basename(entry['path']): entry['reason'] for entry in result['readback_from_cache']}
    assert set(named) == {'small%d' % index for index in range(len(inline_sizes))}, result['readback_from_cache']
    assert all('inline' in reason for reason in named.values()), named
    assert result['stats']['readback_from_cache'] == len(inline_sizes)
    rig.remount('dest')
    check_complete(spec, layout, run_cli(layout.params(buffer_size=BUFFER, hash='sha256')))
