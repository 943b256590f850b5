# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Small helpers shared by the unit tests of the core (tests/unit/test_*.py).

Not a conftest: plain functions and classes, imported as ``core_helpers``
(pytest puts tests/unit on sys.path for the test modules in it).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import types
import urllib.parse
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MOVER_CLI = REPO_ROOT / "tests" / "tools" / "mover_cli.py"


def collections_root() -> str:
    """The sys.path entry that holds ansible_collections/durable/mover (set by the root conftest)."""
    for entry in sys.path:
        if entry and os.path.isdir(os.path.join(entry, "ansible_collections", "durable", "mover")):
            return entry
    raise RuntimeError("ansible_collections.durable.mover is not on sys.path (root conftest not loaded?)")


def subprocess_env(**extra: str) -> dict:
    """Environment for a child Python that imports the collection."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [collections_root(), env.get("PYTHONPATH")]))
    env.pop("DURABLE_MOVER_FAULTS", None)
    env.update(extra)
    return env


def run_python(code: str, *args: str, python: str | None = None, timeout: float = 60, prefix=(), **kwargs):
    """Run ``code`` with ``args`` in a child interpreter (default: the one running pytest)."""
    argv = [*prefix, python or sys.executable, "-c", textwrap.dedent(code), *args]
    kwargs.setdefault("env", subprocess_env())
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def fake_stat(ino: int, size: int = 10, mtime_ns: int | None = None, nlink: int = 1, dev: int = 1,
              mode: int = 0o100644) -> types.SimpleNamespace:
    """A stat-like object for Journal.add_files (what os.lstat would give)."""
    mtime_ns = ino * 1000 if mtime_ns is None else mtime_ns
    return types.SimpleNamespace(st_size=size, st_mtime_ns=mtime_ns, st_ctime_ns=mtime_ns,
                                 st_atime_ns=mtime_ns, st_mode=mode, st_uid=0, st_gid=0,
                                 st_dev=dev, st_ino=ino, st_nlink=nlink)


def open_ro(path) -> sqlite3.Connection:
    """An independent read-only connection to a journal (sees committed data only)."""
    return sqlite3.connect("file:%s?mode=ro" % urllib.parse.quote(os.fsencode(path)), uri=True)


def rows_by_path(path) -> dict:
    """{path bytes: {column: value}} of the files table, read with a fresh connection."""
    conn = open_ro(path)
    try:
        conn.row_factory = sqlite3.Row
        return {bytes(r["path"]): dict(r) for r in conn.execute("SELECT * FROM files")}
    finally:
        conn.close()


class LockHolder:
    """A separate process holding a job's JobLock until released or killed.

    Use as a context manager: on entry the child has the lock (it said so);
    closing its stdin makes it release and exit; on exit it is killed if still alive.
    """

    def __init__(self, state_dir, job_id: str = "job"):
        self.state_dir = os.fspath(state_dir)
        self.job_id = job_id
        self.proc = None

    def __enter__(self) -> "LockHolder":
        code = textwrap.dedent("""
            import sys
            from ansible_collections.durable.mover.plugins.module_utils._lock import JobLock
            lock = JobLock(sys.argv[1], sys.argv[2]).acquire()
            print("locked", flush=True)
            sys.stdin.read()          # hold until stdin is closed
            lock.release()
            print("released", flush=True)
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code, self.state_dir, self.job_id],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=subprocess_env())
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise RuntimeError("lock holder did not start: %r %s" % (line, self.proc.stderr.read()))
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = 9) -> None:
        os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def __exit__(self, *exc_info) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()
