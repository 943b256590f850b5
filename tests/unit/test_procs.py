# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of _procs: forked workers, what comes back from them, how their
deaths are reported, and that none outlives its parent. Real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core_helpers import collections_root

from ansible_collections.durable.mover.plugins.module_utils import _procs


def test_each_worker_returns_its_value_from_its_own_process():
    workers = _procs.Workers(3)
    workers.start(lambda index, _feed: {'index': index, 'pid': os.getpid(), 'big': 'x' * 200000})
    results = workers.wait()
    assert [index for index, _value in results] == [0, 1, 2]
    assert [value['index'] for _index, value in results] == [0, 1, 2]
    pids = {value['pid'] for _index, value in results}
    assert len(pids) == 3 and os.getpid() not in pids
    assert all(len(value['big']) == 200000 for _index, value in results)   # more than a pipe holds


def test_an_exception_in_a_worker_is_raised_in_the_parent_after_all_are_collected():
    def work(index, _feed):
        if index == 1:
            raise ValueError('share %d failed' % index)
        return index
    workers = _procs.Workers(3)
    workers.start(work)
    pids = list(workers.pids)
    with pytest.raises(ValueError, match='share 1 failed'):
        workers.wait()
    for pid in pids:    # every worker was reaped, none left as a zombie
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_an_exception_that_cannot_be_pickled_comes_back_as_its_traceback():
    class Local(Exception):
        pass

    def work(_index, _feed):
        raise Local('not importable on the other side')
    workers = _procs.Workers(1)
    workers.start(work)
    with pytest.raises(RuntimeError, match='not importable on the other side'):
        workers.wait()


def test_a_worker_that_dies_is_reported_by_number_pid_and_cause():
    def work(index, _feed):
        if index == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if index == 1:
            os._exit(3)
        return 'fine'
    workers = _procs.Workers(3)
    workers.start(work)
    pids = list(workers.pids)
    results = dict(workers.wait())
    assert isinstance(results[0], _procs.WorkerDied)
    assert 'worker process 1 of 3 (pid %d) was killed by signal 9' % pids[0] in str(results[0])
    assert 'worker process 2 of 3 (pid %d) exited with status 3' % pids[1] in str(results[1])
    assert results[2] == 'fine'


def test_signal_is_passed_on_to_the_workers():
    go_read, go_write = os.pipe()          # EOF when the parent closes its end
    ready_read, ready_write = os.pipe()    # each worker: one byte once its handler is set

    def work(_index, _feed):
        os.close(go_write)
        caught = []
        signal.signal(signal.SIGTERM, lambda signum, _frame: caught.append(signum))
        os.write(ready_write, b'r')
        os.read(go_read, 1)
        return caught
    workers = _procs.Workers(2)
    workers.start(work)
    os.close(go_read)
    os.close(ready_write)
    assert os.read(ready_read, 1) + os.read(ready_read, 1) == b'rr'
    os.close(ready_read)
    workers.signal(signal.SIGTERM)
    os.close(go_write)
    assert [value for _index, value in workers.wait()] == [[signal.SIGTERM], [signal.SIGTERM]]


def test_workers_hear_the_last_value_told_then_the_end():
    ready_read, ready_write = os.pipe()

    def work(_index, feed):
        heard = [feed.wait()]
        os.write(ready_write, b'r')
        while not heard[-1][1]:
            heard.append(feed.wait())
        return heard
    workers = _procs.Workers(2)
    workers.start(work)
    os.close(ready_write)
    workers.tell(5)
    assert os.read(ready_read, 1) + os.read(ready_read, 1) == b'rr'   # both heard 5 first
    workers.tell(6)
    workers.tell(7)
    workers.end()
    for _index, heard in workers.wait():
        assert heard[0] == (5, False)
        assert heard[-1] == (7, True)
        assert [value for value, _ended in heard] in ([5, 7, 7], [5, 6, 7, 7])


def _state(pid):
    """'gone', or the state letter of /proc/<pid>/stat ('Z' for a zombie)."""
    try:
        with open('/proc/%d/stat' % pid) as handle:
            return handle.read().rpartition(')')[2].split()[0]
    except FileNotFoundError:
        return 'gone'


def test_a_worker_does_not_outlive_its_parent(tmp_path):
    """The parent is SIGKILLed while its worker blocks forever: the kernel kills the worker."""
    script = textwrap.dedent('''
        import os, sys
        sys.path.insert(0, %r)
        from ansible_collections.durable.mover.plugins.module_utils import _procs
        read_fd, write_fd = os.pipe()
        workers = _procs.Workers(1)
        workers.start(lambda index, feed: os.read(read_fd, 1))
        print(workers.pids[0], flush=True)
        workers.wait()
    ''' % str(collections_root()))
    parent = subprocess.Popen([sys.executable, '-c', script], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        assert _state(worker) not in ('gone', 'Z')
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 30
        while _state(worker) not in ('gone', 'Z') and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _state(worker) in ('gone', 'Z'), 'the worker outlived its parent'
    finally:
        if _state(worker) not in ('gone', 'Z'):
            os.kill(worker, signal.SIGKILL)


def test_default_count_is_the_cpus_we_may_use_at_most_four():
    assert _procs.default_count() == max(1, min(4, len(os.sched_getaffinity(0))))
