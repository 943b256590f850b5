# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_lock.py (the flock job lock).

The other holder is a real separate process (core_helpers.LockHolder), so
the pid in the error and the kernel's release on SIGKILL are real.
"""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from core_helpers import LockHolder

from ansible_collections.durable.mover.plugins.module_utils._errors import JobLockedError, MoverError
from ansible_collections.durable.mover.plugins.module_utils._lock import JobLock, holder_pid


def test_lock_writes_own_pid_and_release_clears_it(tmp_path):
    lock = JobLock(str(tmp_path), "job").acquire()
    try:
        assert (tmp_path / "lock").read_text() == "%d\n" % os.getpid()
        assert holder_pid(str(tmp_path)) == os.getpid()
    finally:
        lock.release()
    assert (tmp_path / "lock").read_text() == ""
    assert holder_pid(str(tmp_path)) is None


def test_second_lock_in_other_process_names_the_pid(tmp_path):
    with LockHolder(tmp_path, "job-x") as holder:
        started = time.monotonic()
        with pytest.raises(JobLockedError) as info:
            JobLock(str(tmp_path), "job-x").acquire()
        assert time.monotonic() - started < 5          # lock_timeout 0: fails at once
        message = str(info.value)
        assert "pid %d" % holder.pid in message
        assert "job-x" in message and "locked" in message
        assert info.value.path == os.path.join(str(tmp_path), "lock")
        assert holder_pid(str(tmp_path)) == holder.pid


def test_second_lock_in_same_process_is_refused(tmp_path):
    with JobLock(str(tmp_path), "job"):
        with pytest.raises(JobLockedError, match="pid %d" % os.getpid()):
            JobLock(str(tmp_path), "job").acquire()
    # released: it can be taken again
    with JobLock(str(tmp_path), "job"):
        pass


def test_lock_timeout_waits_then_fails(tmp_path):
    with LockHolder(tmp_path) as holder:
        started = time.monotonic()
        with pytest.raises(JobLockedError) as info:
            JobLock(str(tmp_path), "job", timeout=0.3).acquire()
        waited = time.monotonic() - started
        assert 0.3 <= waited < 5
        assert "after waiting 0.3 s" in str(info.value)
        assert "pid %d" % holder.pid in str(info.value)


def test_lock_timeout_succeeds_once_the_holder_releases(tmp_path):
    with LockHolder(tmp_path) as holder:
        holder.proc.stdin.close()           # ask the holder to release; do not wait for it
        lock = JobLock(str(tmp_path), "job", timeout=30).acquire()
        try:
            assert holder_pid(str(tmp_path)) == os.getpid()
        finally:
            lock.release()


def test_lock_released_when_holder_is_sigkilled(tmp_path):
    with LockHolder(tmp_path) as holder:
        assert holder_pid(str(tmp_path)) == holder.pid
        holder.kill(signal.SIGKILL)
        # the dead holder's pid is still written in the file, but nobody holds the flock
        assert (tmp_path / "lock").read_text().strip() == str(holder.pid)
        assert holder_pid(str(tmp_path)) is None
        with JobLock(str(tmp_path), "job"):
            assert holder_pid(str(tmp_path)) == os.getpid()


def test_holder_pid_without_lock_file_is_none(tmp_path):
    assert holder_pid(str(tmp_path)) is None
    assert holder_pid(str(tmp_path / "missing")) is None
    assert not (tmp_path / "lock").exists()           # probing creates nothing


def test_lock_file_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "lock").symlink_to(victim)
    with pytest.raises(MoverError) as info:
        JobLock(str(state), "job").acquire()
    assert info.value.errno == errno.ELOOP
    assert victim.read_bytes() == b"precious\n"
    assert holder_pid(str(state)) is None
