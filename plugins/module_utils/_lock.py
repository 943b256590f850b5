# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The job lock: flock(2) on a file in the job's state directory.

PRIVATE to the durable.mover collection; not a public API.

flock locks belong to the open file description, so two runs (or two opens in
one process) exclude each other, and the kernel drops the lock when the holder
dies, however it dies: no stale lock survives a crash. The holder's pid is
written into the file for the error message only; the lock is the flock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from ansible_collections.durable.mover.plugins.module_utils._errors import JobLockedError, os_error

LOCK_NAME = 'lock'


def _holder(fd):
    try:
        return os.pread(fd, 64, 0).decode('ascii', 'replace').strip() or 'unknown'
    except OSError:
        return 'unknown'


class JobLock:
    """Exclusive lock of one job. Use as a context manager."""

    def __init__(self, state_dir, job_id, timeout=0.0, poll=0.05):
        self.path = os.path.join(state_dir, LOCK_NAME)
        self.job_id = job_id
        self.timeout = float(timeout or 0)
        self.poll = poll
        self.fd = None

    def acquire(self):
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise os_error(exc, 'cannot open lock file', self.path)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise os_error(exc, 'cannot lock', self.path)
                if time.monotonic() >= deadline:
                    holder = _holder(fd)
                    os.close(fd)
                    waited = ' after waiting %g s' % self.timeout if self.timeout else ''
                    raise JobLockedError('job %s is locked by pid %s (another run is working on it%s); '
                                         'lock file' % (self.job_id, holder, waited), self.path)
                time.sleep(min(self.poll, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, ('%d\n' % os.getpid()).encode('ascii'), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)  # closing the description releases the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def holder_pid(state_dir):
    """The pid holding the lock of a job, or None if nobody holds it.

    Read-only apart from a shared flock probe, which changes nothing on disk.
    """
    path = os.path.join(state_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = _holder(fd)
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
