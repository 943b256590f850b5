# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Worker processes: one job's work split over forked children.

PRIVATE to the durable.mover collection; not a public API.

Small files cost CPU in Python for every file, and one process uses one core.
A run can fork workers after its scan; each works on its own share of the
journal's rows with its own journal connection and returns what it counted
(any picklable value) over a pipe. The parent may keep scanning meanwhile:
it tells its workers, through another pipe each, up to which row of the
journal they may go (`Workers.tell`; a worker reads it with `Feed.wait`) and
closes those pipes when there will be no more (`Workers.end`).

A worker never outlives its parent: it asks the kernel for SIGKILL when the
parent dies (PR_SET_PDEATHSIG), so a killed run stops as a whole, as it does
with one process, and the job's lock (held by the parent's open file
description, shared by the children) is released only when every process of
the run is gone.
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import traceback

from ansible_collections.durable.mover.plugins.module_utils import _durable
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError

PR_SET_PDEATHSIG = 1
PASSED_ON = {signal.SIGTERM, signal.SIGINT}


class WorkerDied(MoverError):
    """A worker process ended without returning its result."""


def default_count():
    """Processes for a job when the user does not say: one per CPU this
    process may run on, at most 4 (the journal's writes serialise beyond)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _hold(signals, how=signal.SIG_BLOCK):
    """Block `signals` (or set the mask to them); the mask before."""
    if not hasattr(signal, 'pthread_sigmask'):
        return set()
    return signal.pthread_sigmask(how, signals)


def _die_with(parent):
    """Ask for SIGKILL when the parent exits; exit now if it already has."""
    libc = _durable.libc()
    if libc is not None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


class Feed:
    """A worker's end of the parent's messages: the last value told, and
    whether the parent has ended them."""

    def __init__(self, fd):
        self.fd = fd
        self.value = None
        self.ended = False

    def wait(self):
        """Block until the parent tells more (or ends); (last value, ended)."""
        if not self.ended:
            data = os.read(self.fd, 8192)       # whole messages: each is one write of 8 bytes
            if data:
                self.value = struct.unpack('<%dq' % (len(data) // 8), data)[-1]
            else:
                self.ended = True
        return self.value, self.ended


def _child(work, index, feed, write_fd, parent):
    """Runs in the child: never returns, never runs the parent's cleanup code."""
    code = 1
    try:
        _die_with(parent)
        try:
            payload = (True, work(index, feed))
            code = 0
        except BaseException as exc:  # pylint: disable=broad-except
            payload = (False, exc)
        try:
            data = pickle.dumps(payload)
        except Exception:  # pylint: disable=broad-except
            data = pickle.dumps((False, RuntimeError(''.join(traceback.format_exception(
                type(payload[1]), payload[1], payload[1].__traceback__)))))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    finally:
        os._exit(code)


class Workers:
    """`count` forked workers each running `work(index, feed)`; `wait` collects them.

    Call `start` with no thread running but the caller's (fork copies only
    the calling thread; a lock another thread held would stay locked)."""

    def __init__(self, count):
        self.count = count
        self.pids = []
        self._pipes = []        # results, from each worker
        self._feeds = []        # messages, to each worker

    def start(self, work):
        parent = os.getpid()
        for index in range(self.count):
            read_fd, write_fd = os.pipe()
            feed_read, feed_write = os.pipe()
            # The signals passed on wait while a worker is forked and noted: a
            # handler run in between would pass one on to the workers noted so
            # far only, and the new worker, forked before the stop was set,
            # would never hear of it. Held, it is handled once the pid is noted.
            held = _hold(PASSED_ON)
            try:
                pid = os.fork()
                if pid == 0:
                    _hold(held, signal.SIG_SETMASK)
                    for fd in [read_fd, feed_write] + self._pipes + self._feeds:
                        os.close(fd)
                    _child(work, index, Feed(feed_read), write_fd, parent)
                os.close(write_fd)
                os.close(feed_read)
                self.pids.append(pid)
                self._pipes.append(read_fd)
                self._feeds.append(feed_write)
            finally:
                _hold(held, signal.SIG_SETMASK)

    def tell(self, value):
        """Tell every worker `value` (an integer); the last one told counts."""
        message = struct.pack('<q', value)
        for fd in self._feeds:
            try:
                os.write(fd, message)
            except BrokenPipeError:
                pass            # that worker is gone; wait() reports it

    def end(self):
        """No more messages: a worker's next Feed.wait returns ended."""
        for fd in self._feeds:
            os.close(fd)
        self._feeds = []

    def signal(self, signum):
        """Pass a signal on to the workers still running."""
        for pid in self.pids:
            try:
                os.kill(pid, signum)
            except OSError:
                pass

    def wait(self):
        """[(index, value)] of the workers that returned; raises the first
        exception a worker raised; a worker that died is a WorkerDied value."""
        self.end()
        results, raised = [], None
        for index, (pid, read_fd) in enumerate(zip(self.pids, self._pipes)):
            chunks = []
            with os.fdopen(read_fd, 'rb') as pipe:
                for chunk in iter(lambda: pipe.read(65536), b''):
                    chunks.append(chunk)
            _pid, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status) and chunks:
                ok, value = pickle.loads(b''.join(chunks))
                if not ok:
                    raised = raised or value
                    continue
                results.append((index, value))
                continue
            how = ('was killed by signal %d' % os.WTERMSIG(status) if os.WIFSIGNALED(status)
                   else 'exited with status %d' % os.WEXITSTATUS(status))
            results.append((index, WorkerDied(
                'worker process %d of %d (pid %d) %s; the files it was moving stay in the journal '
                'and the next run completes them' % (index + 1, self.count, pid, how))))
        self.pids, self._pipes = [], []
        if raised is not None:
            raise raised
        return results
