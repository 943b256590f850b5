# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the crash-recovery and failure tests (test_recovery.py, test_faults.py).

Everything that kills or signals the mover runs it as a real process
(``tests/tools/mover_cli.py``) with ``DURABLE_MOVER_FAULTS`` and
``PYTHONHASHSEED=0`` in its environment. What a test then checks is read from
the file systems and from the journal (SQLite, opened read-only), never from
the mover's own view of things.

* ``run_cli`` / ``start_cli`` / ``finish``: the CLI as a subprocess.
* ``Layout``: where one test's src, dest and state dir are (same fs or a
  loop-mounted/tmpfs destination).
* ``TreeSpec`` / ``build_crash_tree``: a small tree whose every file, link and
  directory (content and metadata) is recorded independently of the mover.
* ``check_invariant``: what must hold at ANY instant, e.g. right after a
  SIGKILL; ``check_complete``: what must hold once a run finished the job.
* ``journal_rows`` / ``journal_dirs``: the journal, read-only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import typing as t
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "tests" / "tools" / "mover_cli.py"
COLLECTIONS = REPO / ".collections"
JOB_ID = "crashjob"
KIB = 1024
MIB = 1024 * 1024
# A fixed, odd nanosecond timestamp (2020-09-13 ...), so dropped ns are visible.
BASE_NS = 1_600_000_000_123_456_789
TIMEOUT = 120


# --------------------------------------------------------------------------
# The CLI as a process
# --------------------------------------------------------------------------

@dataclasses.dataclass
class CliRun:
    """One finished CLI process."""

    returncode: int
    stdout: str
    stderr: str
    elapsed: float

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    @property
    def result(self) -> dict[str, t.Any]:
        """The printed JSON (a result, or {"failed", "msg", "errno"} on bad input)."""
        text = self.stdout.strip()
        assert text, "the CLI printed nothing (rc %s); stderr:\n%s" % (self.returncode, self.stderr[-3000:])
        try:
            return json.loads(text.splitlines()[-1])
        except ValueError as exc:
            raise AssertionError("the CLI printed no JSON (rc %s): %r\nstderr:\n%s"
                                 % (self.returncode, text[-2000:], self.stderr[-3000:])) from exc

    def describe(self) -> str:
        return "rc=%s stdout=%s stderr=%s" % (self.returncode, self.stdout[-1500:], self.stderr[-3000:])


def cli_env(faults: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DURABLE_MOVER_FAULTS"}
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if faults:
        env["DURABLE_MOVER_FAULTS"] = faults
    env.update(extra or {})
    return env


def cli_argv(params: dict[str, t.Any], python: str | None = None) -> list[str]:
    return [python or sys.executable, str(CLI), json.dumps(params)]


def run_cli(params: dict[str, t.Any], faults: str | None = None, python: str | None = None,
            prefix: t.Sequence[str] = (), timeout: float = TIMEOUT) -> CliRun:
    """Run the core once in a subprocess and wait for it."""
    started = time.monotonic()
    proc = subprocess.run([*prefix, *cli_argv(params, python)], env=cli_env(faults),
                          capture_output=True, text=True, timeout=timeout, check=False)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)


def start_cli(params: dict[str, t.Any], faults: str | None = None,
              python: str | None = None) -> subprocess.Popen[str]:
    """Start the core in a subprocess; ``finish`` collects it."""
    proc = subprocess.Popen(cli_argv(params, python), env=cli_env(faults), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.started = time.monotonic()  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> CliRun:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("the CLI did not finish within %s s: %s" % (timeout, err[-2000:]))
    return CliRun(proc.returncode, out, err, time.monotonic() - proc.started)  # type: ignore[attr-defined]


def wait_for(predicate: t.Callable[[], t.Any], what: str, timeout: float = 60.0,
             proc: subprocess.Popen[str] | None = None) -> t.Any:
    """Poll ``predicate`` (file system state, not time) until it is true.

    Fails at once if ``proc`` ended first, and after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError("the process ended (rc %s) before %s\nstdout: %s\nstderr: %s"
                                 % (proc.returncode, what, out[-1500:], err[-2000:]))
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.0005)


# --------------------------------------------------------------------------
# Where a test works
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Layout:
    kind: str        # 'samefs', 'ext4', 'xfs', 'tmpfs'
    src: Path
    dest: Path
    state: Path

    @property
    def cross(self) -> bool:
        return self.kind != "samefs"

    def params(self, **extra: t.Any) -> dict[str, t.Any]:
        params: dict[str, t.Any] = {"src": str(self.src), "dest": str(self.dest),
                                    "state_dir": str(self.state), "job_id": JOB_ID}
        params.update(extra)
        return params

    def journal(self, job_id: str = JOB_ID) -> Path:
        return self.state / job_id / "journal.sqlite"


def make_layout(kind: str, tmp_path: Path, request: t.Any) -> Layout:
    """src and state in tmp_path; dest there too (samefs) or on a fresh loop fs."""
    src = tmp_path / "src"
    src.mkdir()
    state = tmp_path / "state"
    if kind == "samefs":
        return Layout(kind, src, tmp_path / "dst", state)
    if kind == "tmpfs":
        mnt = request.getfixturevalue("tmpfs")("32m")
    else:
        mnt = request.getfixturevalue("loopfs")(kind, 300 if kind == "xfs" else 64)
    assert os.stat(mnt).st_dev != os.stat(src).st_dev
    return Layout(kind, src, mnt / "dst", state)


# --------------------------------------------------------------------------
# Trees recorded independently of the mover
# --------------------------------------------------------------------------

@dataclasses.dataclass
class FileSpec:
    data: bytes
    mode: int = 0o644
    mtime_ns: int = BASE_NS
    uid: int = 0
    gid: int = 0


@dataclasses.dataclass
class TreeSpec:
    files: dict[str, FileSpec] = dataclasses.field(default_factory=dict)
    symlinks: dict[str, str] = dataclasses.field(default_factory=dict)
    hardlinks: list[tuple[str, ...]] = dataclasses.field(default_factory=list)
    dirs: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)   # rel -> (mode, mtime_ns)

    @property
    def entries(self) -> int:
        return len(self.files) + len(self.symlinks)


def pseudo_random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def materialize(spec: TreeSpec, root: Path) -> TreeSpec:
    """Write ``spec`` under ``root`` (which exists), every time and mode explicit."""
    for rel in sorted(spec.dirs, key=lambda r: r.count("/")):
        (root / rel).mkdir(parents=True, exist_ok=True)
    linked = {name: group[0] for group in spec.hardlinks for name in group[1:]}
    for rel, f in spec.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel in linked:
            continue
        path.write_bytes(f.data)
        if os.geteuid() == 0:
            os.chown(path, f.uid, f.gid)
        os.chmod(path, f.mode)
        os.utime(path, ns=(f.mtime_ns, f.mtime_ns))
    for rel, first in linked.items():
        os.link(root / first, root / rel)
    for rel, target in spec.symlinks.items():
        os.symlink(target, root / rel)
    for rel in sorted(spec.dirs, key=lambda r: -r.count("/")):
        mode, mtime_ns = spec.dirs[rel]
        os.chmod(root / rel, mode)
        os.utime(root / rel, ns=(mtime_ns, mtime_ns))
    return spec


def crash_tree_spec(big_size: int = 200 * KIB) -> TreeSpec:
    """~10 entries: a file larger than a 64K checkpoint, a symlink (and a
    dangling one), a hard-link pair across directories, nested directories
    with their own modes and times, an empty file, a file of another owner."""
    owner = (1234, 2345) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    spec = TreeSpec()
    spec.files = {
        "big.bin": FileSpec(pseudo_random(big_size, 1), 0o640, BASE_NS + 1),
        "empty.txt": FileSpec(b"", 0o600, BASE_NS + 2),
        "hard1": FileSpec(b"one inode, two names\n" * 50, 0o644, BASE_NS + 3),
        "top.txt": FileSpec(b"top level\n", 0o644, BASE_NS + 4),
        "d1/a.txt": FileSpec(b"a" * 5000, 0o664, BASE_NS + 5),
        "d1/owned.txt": FileSpec(b"owned by someone else\n", 0o600, BASE_NS + 6, *owner),
        "d1/d2/b.txt": FileSpec(pseudo_random(20 * KIB, 2), 0o755, BASE_NS + 7),
        "d1/d2/d3/c.txt": FileSpec(b"deep\n", 0o444, BASE_NS + 8),
    }
    spec.files["d1/hard2"] = spec.files["hard1"]
    spec.hardlinks = [("hard1", "d1/hard2")]
    spec.symlinks = {"link_rel": "top.txt", "d1/dangling": "../nowhere/at/all"}
    spec.dirs = {"d1": (0o755, BASE_NS + 100), "d1/d2": (0o750, BASE_NS + 200),
                 "d1/d2/d3": (0o711, BASE_NS + 300)}
    return spec


def build_crash_tree(root: Path, big_size: int = 200 * KIB) -> TreeSpec:
    return materialize(crash_tree_spec(big_size), root)


# --------------------------------------------------------------------------
# Reading what is on disk
# --------------------------------------------------------------------------

def read_regular(path: Path) -> bytes | None:
    """Content of a regular file at ``path`` (never following a link), None if absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    assert stat.S_ISREG(st.st_mode), "%s is not a regular file (mode %o)" % (path, st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, MIB)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_link(path: Path) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    assert stat.S_ISLNK(st.st_mode), "%s is not a symbolic link" % path
    return os.readlink(path)


def all_names(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def part_files(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        if root.exists():
            found.extend(n for n in all_names(root) if n.endswith(".part"))
    return found


def tree_state(root: Path) -> dict[str, tuple[t.Any, ...]]:
    """Every name under root with type, mode, owner, size, ns mtime, inode and
    content (or link target): to prove that nothing was touched."""
    out: dict[str, tuple[t.Any, ...]] = {}
    if not os.path.lexists(root):
        return out
    for rel in [""] + all_names(root):
        path = root / rel if rel else root
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            body: t.Any = read_regular(path)
        elif stat.S_ISLNK(st.st_mode):
            body = os.readlink(path)
        else:
            body = None
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    st.st_size if not stat.S_ISDIR(st.st_mode) else None, st.st_mtime_ns,
                    st.st_ino, body)
    return out


# --------------------------------------------------------------------------
# The journal, read-only
# --------------------------------------------------------------------------

def _connect_ro(journal: Path) -> sqlite3.Connection:
    uri = "file:%s?mode=ro" % urllib.parse.quote(str(journal))
    return sqlite3.connect(uri, uri=True)


def journal_rows(journal: Path) -> dict[str, dict[str, t.Any]]:
    """path -> {kind, state, attempts, quarantined, error, checkpoint, hash}; {} if no journal."""
    if not journal.exists():
        return {}
    conn = _connect_ro(journal)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "files" not in tables:
            return {}
        return {os.fsdecode(bytes(p)): {"kind": k, "state": s, "attempts": a, "quarantined": q,
                                        "error": e, "checkpoint": c, "hash": h}
                for p, k, s, a, q, e, c, h in conn.execute(
                    "SELECT path, kind, state, attempts, quarantined, error, checkpoint, hash FROM files")}
    finally:
        conn.close()


def journal_dirs(journal: Path) -> dict[str, str]:
    if not journal.exists():
        return {}
    conn = _connect_ro(journal)
    try:
        return {os.fsdecode(bytes(p)): s for p, s in conn.execute("SELECT path, state FROM dirs")}
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------

def check_invariant(spec: TreeSpec, layout: Layout, moves: bool = True) -> list[str]:
    """What must hold at any instant, e.g. right after a SIGKILL.

    * every file's exact content is at its source name or at its final
      destination name (or both), never neither;
    * a final destination name never holds partial or other content (parts
      only ever live under ``.part`` names);
    * a source is never altered;
    * the journal says ``copied``/``done`` only for entries whose destination
      is whole, and ``done`` (in move mode) only once the source name is gone.

    Returns the list of violations (empty if none).
    """
    problems = []
    for rel, f in spec.files.items():
        src = read_regular(layout.src / rel)
        dst = read_regular(layout.dest / rel)
        if src is not None and src != f.data:
            problems.append("%s: source content altered (%d bytes, expected %d)" % (rel, len(src), len(f.data)))
        if dst is not None and dst != f.data:
            problems.append("%s: destination final name holds other content (%d bytes, expected %d)%s"
                            % (rel, len(dst), len(f.data), " AND the source is gone" if src is None else ""))
        if src is None and dst is None:
            problems.append("%s: LOST (neither at the source nor at the destination)" % rel)
    for rel, target in spec.symlinks.items():
        src_t, dst_t = read_link(layout.src / rel), read_link(layout.dest / rel)
        if src_t is not None and src_t != target:
            problems.append("%s: source link altered" % rel)
        if dst_t is not None and dst_t != target:
            problems.append("%s: destination link points to %r, not %r" % (rel, dst_t, target))
        if src_t is None and dst_t is None:
            problems.append("%s: symlink LOST" % rel)
    for rel, row in journal_rows(layout.journal()).items():
        state = row["state"]
        if state not in ("pending", "copying", "copied", "done", "failed", "skipped"):
            problems.append("%s: unknown journal state %r" % (rel, state))
        if state not in ("copied", "done"):
            continue
        if rel in spec.files:
            whole = read_regular(layout.dest / rel) == spec.files[rel].data
            at_src = read_regular(layout.src / rel) is not None
        elif rel in spec.symlinks:
            whole = read_link(layout.dest / rel) == spec.symlinks[rel]
            at_src = read_link(layout.src / rel) is not None
        else:
            problems.append("%s: journal row %s for an entry the test never made" % (rel, state))
            continue
        if not whole:
            problems.append("%s: journal says %s but the destination is not whole" % (rel, state))
        if state == "done" and moves and at_src:
            problems.append("%s: journal says done but the source name still exists" % rel)
    return problems


def assert_invariant(spec: TreeSpec, layout: Layout, context: str = "", moves: bool = True) -> None:
    problems = check_invariant(spec, layout, moves)
    assert not problems, "invariant violated %s:\n  %s" % (context, "\n  ".join(problems))


def check_complete(spec: TreeSpec, layout: Layout, run: CliRun) -> None:
    """The job is finished: everything at dest with content and metadata,
    nothing left at the source, no part files, every journal row done."""
    assert run.returncode == 0, "rerun did not succeed: " + run.describe()
    result = run.result
    assert result["complete"] is True, result
    assert not result.get("failed"), result
    assert result["interrupted"] is False
    problems = []
    for rel, f in spec.files.items():
        path = layout.dest / rel
        data = read_regular(path)
        if data != f.data:
            problems.append("%s: destination content wrong (%s)" % (rel, None if data is None else len(data)))
            continue
        st = os.lstat(path)
        got = (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid)
        want = (f.mode, f.mtime_ns, f.uid, f.gid)
        if got != want:
            problems.append("%s: metadata (mode, mtime_ns, uid, gid) %r != %r" % (rel, got, want))
    for rel, target in spec.symlinks.items():
        if read_link(layout.dest / rel) != target:
            problems.append("%s: destination link wrong" % rel)
    for group in spec.hardlinks:
        inodes = {os.lstat(layout.dest / rel).st_ino for rel in group if os.path.lexists(layout.dest / rel)}
        if len(inodes) != 1:
            problems.append("hard-link group %r has %d inodes at the destination" % (group, len(inodes)))
    for rel, (mode, mtime_ns) in spec.dirs.items():
        st = os.lstat(layout.dest / rel)
        if (stat.S_IMODE(st.st_mode), st.st_mtime_ns) != (mode, mtime_ns):
            problems.append("dir %s: (mode, mtime_ns) %r != %r"
                            % (rel, (oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns), (oct(mode), mtime_ns)))
    expected_names = set(spec.files) | set(spec.symlinks) | set(spec.dirs)
    extra = set(all_names(layout.dest)) - expected_names
    if extra:
        problems.append("unexpected names at the destination: %r" % sorted(extra))
    left = all_names(layout.src)
    if left:
        problems.append("left at the source: %r" % left)
    rows = journal_rows(layout.journal())
    not_done = {rel: row["state"] for rel, row in rows.items() if row["state"] != "done"}
    if not_done:
        problems.append("journal rows not done: %r" % not_done)
    if set(rows) != set(spec.files) | set(spec.symlinks):
        problems.append("journal rows %r != entries %r" % (sorted(rows), sorted(set(spec.files) | set(spec.symlinks))))
    dirs_not_done = {rel: s for rel, s in journal_dirs(layout.journal()).items() if s != "done"}
    if dirs_not_done:
        problems.append("journal dirs not done: %r" % dirs_not_done)
    assert not problems, "job not complete:\n  " + "\n  ".join(problems)
    assert part_files(layout.src, layout.dest) == []
