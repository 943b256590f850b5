"""Run the durable.mover core like mover_cli.py, with test-side changes to one step.

Usage: mover_variant.py VARIANT[,VARIANT...] '{"src": ..., "dest": ..., ...}' [--check]

The crash suite (tests/crash/blocksweep.py) uses it to prove that its sweeps
can fail (deliberately broken durability chains) and to stop a run at a
precise step. Nothing in plugins/ knows about it: each variant replaces one
function of the imported core in this process (and so in the worker
processes it forks), then mover_cli's main runs as usual. Variants:

* ``none``: the real core, unchanged.
* ``per_file_flush``: syncfs is never used (``_durable.syncfs_supported``
  says no), so every part is flushed with its own fdatasync, as on kernels
  before 5.17 and on filesystems without a batch flush; ``workers`` > 1 then
  copies in parallel threads.
* ``no_batch_flush`` (broken): the batch's syncfs does nothing, so its parts
  are verified and renamed into place without having been flushed (with
  ``per_dir_fsync``: the batch's one syncfs for its directories, right after
  the renames, would flush the parts too and hide the missing flush in
  nearly every state; an fsync of each directory commits the renames only).
* ``per_dir_fsync``: the directories a batch changed are fsynced one by one
  (``_durable.DirsFlush.covers`` says no), as where syncfs is not supported,
  instead of one syncfs of each filesystem.
* ``no_dest_dir_fsync`` (broken): the fsync of a destination directory after
  renames into it does nothing (with ``per_dir_fsync``: where one syncfs
  flushes the batch's directories, that fsync is not made).
* ``no_batch_dir_sync`` (broken): the batch's syncfs for its directories
  (``_durable.DirsFlush.sync``) does nothing, so the journal records files
  whose names may not be on disk, and their sources are removed.
* ``unlink_before_journal`` (broken): a batch's sources are unlinked (and
  their directories fsynced) right after the renames, before the fsync of the
  destination directories and the journal commit.
* ``syncfs_wrong_fs`` (broken): ``BatchFlush.covers`` says yes for every
  directory, so parts on a filesystem mounted inside dest are staged for a
  syncfs of dest's own filesystem, which does not flush them.
* ``disk_dies_at_parent_commit=DISK@CONTROL``: in the process that scans
  (the parent), at its first journal commit after it started worker
  processes, once a worker waits for the journal's writer lock (the kernel
  lists it in /proc/locks; at most 10 s), the blockdev disk DISK starts
  failing every write (a line written to the blockdev daemon's CONTROL
  file), then the commit runs: a real I/O error at a precise instant.
* ``journal_write_fails_in_parent``: in the process that scans (the parent),
  its first journal write after it started worker processes begins its
  transaction (taking the writers' lock), waits until a worker waits for that
  lock (at most 10 s), then fails as SQLite fails on a dying disk
  (sqlite3.OperationalError "disk I/O error"), its transaction left open.
* ``kill_before=NAME[~SUFFIX]@N`` / ``kill_after=...``: SIGKILL this process
  just before the N-th call of ``_durable.NAME`` starts, or just after it
  returns (counted per process: a worker process counts its own calls); with
  ``~SUFFIX``, only calls with a string argument (a path) ending in SUFFIX
  count, e.g. ``kill_before=sync_dir~/dst@1``: the first fsync of the
  directory that holds a new ``dst`` (made, not yet durable).
"""

import json
import os
import signal
import sqlite3
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import mover_cli  # noqa: E402  (sets up the collection's import path)
from ansible_collections.durable.mover.plugins.module_utils import _durable, _journal, _mover  # noqa: E402
from ansible_collections.durable.mover.plugins.module_utils._transfer import (  # noqa: E402
    IDENTICAL,
    MOVED,
)

BROKEN = ('no_batch_flush', 'no_dest_dir_fsync', 'unlink_before_journal', 'syncfs_wrong_fs', 'no_batch_dir_sync')


def _no_batch_flush():
    _per_dir_fsync()
    _durable.BatchFlush.sync = lambda self: None


def _per_dir_fsync():
    _durable.DirsFlush.covers = lambda self, dir_fd: False


def _no_dest_dir_fsync():
    _per_dir_fsync()
    _durable.sync_dest_dir = lambda dir_fd, path_for_errors=None, probe=None: None


def _no_batch_dir_sync():
    _durable.DirsFlush.sync = lambda self: None


def _unlink_before_journal():
    real = _mover.Runner._commit_batch

    def commit_batch(self, outcomes):
        early = [o for o in outcomes if o.status in (MOVED, IDENTICAL) and self.moves and o.method != 'rename']
        self._sync_src_dirs(self._unlink(early))
        return real(self, outcomes)

    _mover.Runner._commit_batch = commit_batch


def _syncfs_wrong_fs():
    _durable.BatchFlush.covers = lambda self, dir_fd: True


def _per_file_flush():
    _durable.syncfs_supported = lambda fd: False


def _wait_for_lock_waiter(path, timeout):
    """Until some process waits for an flock of `path` (or `timeout` s)."""
    inode = ':%d ' % os.stat(path).st_ino
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open('/proc/locks', encoding='ascii', errors='replace') as handle:
            if any('->' in line and 'FLOCK' in line and inode in line + ' ' for line in handle):
                return True
        time.sleep(0.001)
    return False


def _once_the_parent_forked():
    """A predicate, true once in the process that scans (the parent) after it
    started its worker processes: the first call that asks then is told yes."""
    parent = os.getpid()
    started = [False]
    real_start = _mover.Runner._start_workers

    def start_workers(self, count):
        real_start(self, count)
        started[0] = os.getpid() == parent

    def now():
        if started[0] and os.getpid() == parent:
            started[0] = False
            return True
        return False

    _mover.Runner._start_workers = start_workers
    return now


def _disk_dies_at_parent_commit(spec):
    disk, _sep, control = spec.partition('@')
    real_commit = _journal.Journal.commit
    forked = _once_the_parent_forked()

    def commit(self):
        if self._in_tx and forked():
            _wait_for_lock_waiter(self.path + '-writers', 10.0)
            fd = os.open(control, os.O_RDWR)
            try:
                os.write(fd, b'fail-writes-after %s 0\n' % disk.encode())
                reply = os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
            if b'"ok": true' not in reply:
                raise SystemExit('mover_variant: blockdev refused: %r' % reply)
        return real_commit(self)

    _journal.Journal.commit = commit


def _journal_write_fails_in_parent():
    real_add_files = _journal.Journal.add_files
    forked = _once_the_parent_forked()

    def add_files(self, entries, moves_source):
        if forked():
            with self._lock:
                self._tx()
            _wait_for_lock_waiter(self.path + '-writers', 10.0)
            raise sqlite3.OperationalError('disk I/O error')
        return real_add_files(self, entries, moves_source)

    _journal.Journal.add_files = add_files


def _kill(when, spec):
    name, _sep, nth = spec.partition('@')
    name, _sep, suffix = name.partition('~')
    real = getattr(_durable, name, None)
    if not callable(real):
        raise SystemExit('mover_variant: _durable has no function %r' % name)
    nth = int(nth or 1)
    calls = [0]

    def wrapper(*args, **kwargs):
        if suffix and not any(isinstance(a, str) and a.endswith(suffix) for a in args + tuple(kwargs.values())):
            return real(*args, **kwargs)
        calls[0] += 1
        if when == 'before' and calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        value = real(*args, **kwargs)
        if when == 'after' and calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    setattr(_durable, name, wrapper)


VARIANTS = {
    'none': lambda: None,
    'per_file_flush': _per_file_flush,
    'no_batch_flush': _no_batch_flush,
    'no_dest_dir_fsync': _no_dest_dir_fsync,
    'per_dir_fsync': _per_dir_fsync,
    'no_batch_dir_sync': _no_batch_dir_sync,
    'unlink_before_journal': _unlink_before_journal,
    'syncfs_wrong_fs': _syncfs_wrong_fs,
}


def apply(variants):
    for variant in filter(None, variants.split(',')):
        key, _sep, value = variant.partition('=')
        if key in ('kill_before', 'kill_after'):
            _kill(key[5:], value)
        elif key == 'disk_dies_at_parent_commit':
            _disk_dies_at_parent_commit(value)
        elif key == 'journal_write_fails_in_parent' and not value:
            _journal_write_fails_in_parent()
        elif key in VARIANTS and not value:
            VARIANTS[key]()
        else:
            raise SystemExit('mover_variant: unknown variant %r (known: %s, kill_before=NAME[~SUFFIX]@N, '
                             'kill_after=NAME[~SUFFIX]@N)' % (variant, ', '.join(VARIANTS)))


if __name__ == '__main__':
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    json.loads(sys.argv[2])      # bad input fails here, before anything is patched
    apply(sys.argv[1])
    sys.exit(mover_cli.main([sys.argv[0]] + sys.argv[2:]))
