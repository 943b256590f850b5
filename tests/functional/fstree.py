# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the functional tests: where a move happens, trees, snapshots, the journal.

* ``Site`` / ``make_site``: a test's ``src``, ``dest`` and ``state_dir``.
  ``samefs``: all in ``tmp_path`` (the same-filesystem rename path);
  ``xfs`` / ``ext4``: ``src`` in ``tmp_path``, ``dest`` in a fresh directory of
  the session's shared loop filesystem (the cross-device copy path).
* Tree builders (``build_fidelity_tree``, ``build_many``, ``build_small``) that
  set every timestamp explicitly, so two builds compare equal, and count what
  they made independently of the mover (``TreeInfo``).
* ``snapshot`` / ``assert_same_tree``: walk a tree with ``lstat`` (bytes
  paths, never following links) and compare type, mode, owner, ns times,
  size, content hash, link target, rdev, xattrs (ACLs included), hard-link
  groups and sparseness.
* ``read_journal``: the journal's rows, opened read-only with sqlite3.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import typing as t
import urllib.parse
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover

MIB = 1024 * 1024
O_NOATIME = getattr(os, "O_NOATIME", 0)
# Fixed, distinct nanosecond timestamps (2021-01-01 and on), so that a dropped
# or rounded time is visible.
BASE_NS = 1_609_459_200_123_456_789


@dataclasses.dataclass
class Site:
    """Where one test's move reads, writes and keeps its journal."""

    kind: str            # 'samefs', 'xfs', 'ext4'
    base: Path           # tmp_path
    src: Path            # source tree root (in tmp_path)
    dest: Path           # destination root (not created)
    state: Path          # state_dir base (in tmp_path)

    @property
    def cross(self) -> bool:
        return self.kind != "samefs"

    def params(self, **overrides: t.Any) -> dict[str, t.Any]:
        params: dict[str, t.Any] = {"src": str(self.src), "dest": str(self.dest),
                                    "state_dir": str(self.state)}
        params.update(overrides)
        return params

    def job_dir(self, **overrides: t.Any) -> Path:
        job = _mover.Job(_mover.Options.from_params(self.params(**overrides)))
        return Path(job.state_dir)


def _cross_param(fstype: str) -> t.Any:
    return pytest.param(fstype, marks=[pytest.mark.root, pytest.mark.loop], id=fstype)


SAMEFS = pytest.param("samefs", id="samefs")
XFS = _cross_param("xfs")
EXT4 = _cross_param("ext4")


def make_site(kind: str, base: Path, shared_loopfs: t.Callable[[str], Path] | None,
              name: str) -> tuple[Site, Path | None]:
    """A Site under ``base``; for a cross-device kind, also the fresh work
    directory made on the shared filesystem (the caller removes it)."""
    src = base / "src"
    src.mkdir()
    state = base / "state"
    if kind == "samefs":
        return Site(kind, base, src, base / "dest", state), None
    assert shared_loopfs is not None
    workdir = Path(os.fsdecode(unique_dir(shared_loopfs(kind), name)))
    return Site(kind, base, src, workdir / "dest", state), workdir


def unique_dir(parent: Path, name: str) -> bytes:
    """Make and return a new directory under ``parent`` named after ``name``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]
    for index in range(1000):
        candidate = os.path.join(os.fsencode(parent), os.fsencode("%s-%d" % (safe, index)))
        try:
            os.mkdir(candidate, 0o755)
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError("no free directory name under %s" % parent)


# --------------------------------------------------------------------------
# Tree builders
# --------------------------------------------------------------------------

def b(path: os.PathLike[str] | str | bytes) -> bytes:
    return os.fsencode(path)


def write(path: bytes, data: bytes, mode: int | None = None) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
    if mode is not None:
        os.chmod(path, mode)


def set_times(path: bytes, index: int) -> None:
    """Distinct ns atime/mtime, atime older than mtime, never following links."""
    mtime = BASE_NS + index * 1_000_003_007
    atime = mtime - 86_400_000_000_001 - index
    os.utime(path, ns=(atime, mtime), follow_symlinks=False)


def setfacl_available() -> str | None:
    """Why ACL tests cannot run here, or None."""
    if shutil.which("setfacl") is None or shutil.which("getfacl") is None:
        return "setfacl/getfacl not installed (apt-get install acl)"
    return None


def xattrs_supported(path: bytes) -> bool:
    probe = os.path.join(path, b".xattr-probe")
    write(probe, b"")
    try:
        os.setxattr(probe, b"user.probe", b"1")
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        os.unlink(probe)


@dataclasses.dataclass
class TreeInfo:
    """What a builder made, counted independently of the mover."""

    files: int = 0          # regular file names (each hard-link name counts)
    symlinks: int = 0
    specials: int = 0
    dirs: int = 0           # below the root
    hardlinks: int = 0      # further names of a hard-link group
    bytes: int = 0          # the regular files' data (holes excluded), each file once whatever its names
    acls: bool = False
    paths: dict[str, bytes] = dataclasses.field(default_factory=dict)

    @property
    def entries(self) -> int:
        return self.files + self.symlinks + self.specials


def data_bytes(path: bytes) -> int:
    """The bytes of a regular file that hold data, holes excluded (SEEK_DATA/SEEK_HOLE)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size, pos, total = os.fstat(fd).st_size, 0, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:          # ENXIO: only a hole is left
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            total += end - start
            pos = end
        return total
    finally:
        os.close(fd)


def _count(root: bytes) -> TreeInfo:
    info = TreeInfo()
    inodes: dict[tuple[int, int], int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        info.dirs += len(dirnames)
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                info.files += 1
                key = (st.st_dev, st.st_ino)
                if key not in inodes:
                    info.bytes += data_bytes(os.path.join(dirpath, name))
                inodes[key] = inodes.get(key, 0) + 1
            elif stat.S_ISLNK(st.st_mode):
                info.symlinks += 1
            else:
                info.specials += 1
        info.dirs -= sum(1 for d in dirnames if os.path.islink(os.path.join(dirpath, d)))
    info.hardlinks = sum(n - 1 for n in inodes.values())
    return info


def build_fidelity_tree(root: os.PathLike[str] | str, acls: bool = True, owners: bool = True) -> TreeInfo:
    """Everything a move must keep: modes, owners, ns times, xattrs, ACLs,
    links of every kind, holes, odd names, empty files and dirs.

    Returns the counts (computed from the tree, not from the mover) and the
    relative bytes paths of the interesting entries in ``paths``.
    """
    root_b = b(root)
    is_root = os.geteuid() == 0
    paths: dict[str, bytes] = {}

    def p(rel: bytes) -> bytes:
        return os.path.join(root_b, rel)

    dirs = [b"a", b"a/b", b"a/b/c", b"empty", b"modes", b"names", b"links", b"sparse",
            b"hard", b"x" * 255, b"acl"]
    for rel in dirs:
        os.mkdir(p(rel))
    # modes, including set-id bits, the sticky bit and 0000
    modes = {b"modes/m0000": 0o000, b"modes/m0644": 0o644, b"modes/m0755": 0o755,
             b"modes/suid": 0o4755, b"modes/sgid": 0o2750, b"modes/sticky": 0o1777,
             b"modes/all": 0o7777, b"modes/m0400": 0o400}
    for index, (rel, mode) in enumerate(sorted(modes.items())):
        write(p(rel), b"mode %o\n" % mode * (index + 1))
    os.mkdir(p(b"modes/dir0700"), 0o700)
    os.mkdir(p(b"modes/dir2775"))
    os.mkdir(p(b"modes/dir1777"))
    write(p(b"modes/dir0700/inside"), b"inside a 0700 directory\n")
    # owners (as root: other uids and gids)
    if owners and is_root:
        write(p(b"modes/owned"), b"owned by 1234:5678\n")
        os.chown(p(b"modes/owned"), 1234, 5678)
        os.chown(p(b"modes/dir2775"), 4321, 8765)
        write(p(b"modes/suid_owned"), b"setuid and owned\n")
        os.chown(p(b"modes/suid_owned"), 2000, 3000)
        os.chmod(p(b"modes/suid_owned"), 0o6755)   # after chown, which clears set-id bits
        paths["owned"] = b"modes/owned"
    for rel, mode in modes.items():
        os.chmod(p(rel), mode)
    os.chmod(p(b"modes/dir2775"), 0o2775)
    os.chmod(p(b"modes/dir1777"), 0o1777)
    # plain content: nested, empty, larger than one buffer
    write(p(b"a/top.txt"), b"top\n")
    write(p(b"a/b/mid.txt"), b"mid\n" * 1000)
    write(p(b"a/b/c/deep.bin"), os.urandom(300_000))
    write(p(b"a/b/c/empty-file"), b"")
    write(p(b"empty-file"), b"")
    os.chmod(p(b"a/b"), 0o750)
    os.chmod(p(b"a/b/c"), 0o711)
    # names: spaces, newline, unicode, non-UTF-8 bytes, 255 bytes
    names = [b"with space", b"  leading and trailing  ", b"new\nline",
             "unicod\u00e9 \u2603 \U0001f600".encode(), b"latin1-\xe9\xff\xfe", b"-dash", b"*star?",
             b"n" * 255,
             ("\u00e9" * 127).encode() + b"z"]          # 255 bytes of 2-byte chars + 1
    for index, name in enumerate(names):
        assert len(name) <= 255
        write(os.path.join(p(b"names"), name), b"name %d\n" % index)
    os.mkdir(os.path.join(p(b"names"), b"dir \xff\n\xe9"))
    write(os.path.join(p(b"names"), b"dir \xff\n\xe9", b"f\xfe"), b"in a non-UTF-8 directory\n")
    write(os.path.join(p(b"x" * 255), b"y" * 255), b"long dir and long name\n")
    paths["non_utf8"] = b"names/latin1-\xe9\xff\xfe"
    paths["long"] = b"names/" + b"n" * 255
    # symbolic links: relative, absolute, dangling, to a directory, loop
    write(p(b"links/target.txt"), b"link target\n")
    os.symlink(b"target.txt", p(b"links/rel"))
    os.symlink(b"../a/b", p(b"links/reldir"))
    os.symlink(b"/etc/hostname", p(b"links/abs"))
    os.symlink(b"/nonexistent/durable-mover/dangling", p(b"links/dangling-abs"))
    os.symlink(b"missing-target", p(b"links/dangling-rel"))
    os.symlink(b"loop", p(b"links/loop"))
    os.symlink(b"\xff non-utf8 target", p(b"links/odd-target"))
    if is_root and owners:
        os.chown(p(b"links/rel"), 1234, 5678, follow_symlinks=False)
    paths["symlink_dir"] = b"links/reldir"
    # hard links inside the tree (across directories too)
    write(p(b"hard/one"), b"one inode, three names\n", 0o640)
    os.link(p(b"hard/one"), p(b"hard/two"))
    os.link(p(b"hard/one"), p(b"a/b/three"))
    write(p(b"hard/pair-a"), b"a second group\n")
    os.link(p(b"hard/pair-a"), p(b"hard/pair-b"))
    # sparse files: data islands, trailing hole, all hole
    with open(p(b"sparse/islands"), "wb") as handle:
        handle.truncate(64 * MIB)
        handle.seek(0)
        handle.write(b"head" * 1024)
        handle.seek(32 * MIB)
        handle.write(b"middle" * 2048)
        handle.seek(64 * MIB - 4096)
        handle.write(b"T" * 4096)
    with open(p(b"sparse/trailing-hole"), "wb") as handle:
        handle.write(b"data" * 4096)
        handle.truncate(16 * MIB)
    with open(p(b"sparse/all-hole"), "wb") as handle:
        handle.truncate(8 * MIB)
    paths["sparse"] = b"sparse/islands"
    # user xattrs (files and directories)
    if xattrs_supported(root_b):
        os.setxattr(p(b"a/top.txt"), b"user.comment", b"a comment")
        os.setxattr(p(b"a/top.txt"), b"user.binary", b"\x00\x01\xff")
        os.setxattr(p(b"a/top.txt"), b"user.empty", b"")
        os.setxattr(p(b"a/b"), b"user.dir", b"on a directory")
        os.setxattr(p(b"hard/one"), b"user.linked", b"shared by three names")
        os.setxattr(p(b"sparse/islands"), b"user.big", b"v" * 2000)
        paths["xattr"] = b"a/top.txt"
    # POSIX ACLs (access ACL on a file, access and default ACL on a directory)
    info_acls = False
    if acls and setfacl_available() is None:
        write(p(b"acl/file"), b"file with an ACL\n")
        subprocess.run(["setfacl", "-m", "u:1234:rw-,g:5678:r--", p(b"acl/file")], check=True)
        subprocess.run(["setfacl", "-m", "u:1234:rwx", "-d", "-m", "u:1234:r-x,g:5678:rwx",
                        p(b"acl")], check=True)
        write(p(b"acl/inherited"), b"created under a default ACL\n")
        paths["acl"] = b"acl/file"
        info_acls = True
    # every timestamp explicit, deepest first so a directory's mtime is final
    entries: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            entries.append(os.path.join(dirpath, name))
    entries.sort(key=lambda e: (-e.count(b"/"), e))
    for index, entry in enumerate(entries):
        set_times(entry, index + 1)
    set_times(root_b, 0)
    info = _count(root_b)
    info.acls = info_acls
    info.paths = paths
    return info


def build_many(root: os.PathLike[str] | str, dirs: int = 20, per_dir: int = 100) -> TreeInfo:
    """``dirs`` directories of ``per_dir`` small files each, times explicit."""
    root_b = b(root)
    index = 0
    for d in range(dirs):
        dpath = os.path.join(root_b, b"d%02d" % d)
        os.mkdir(dpath)
        for f in range(per_dir):
            fpath = os.path.join(dpath, b"f%04d.dat" % f)
            write(fpath, (b"%d/%d:" % (d, f)) * (1 + (d * per_dir + f) % 37))
            index += 1
            set_times(fpath, index)
        index += 1
        set_times(dpath, index)
    set_times(root_b, 0)
    return _count(root_b)


def build_small(root: os.PathLike[str] | str) -> TreeInfo:
    """A small mixed tree: nested files, an empty file and dir, a symlink, a hard link."""
    root_b = b(root)
    os.makedirs(os.path.join(root_b, b"d/e"))
    os.mkdir(os.path.join(root_b, b"empty"))
    write(os.path.join(root_b, b"top"), b"top level\n")
    write(os.path.join(root_b, b"d/one"), b"one\n" * 100)
    write(os.path.join(root_b, b"d/e/two"), os.urandom(70_000))
    write(os.path.join(root_b, b"d/e/zero"), b"")
    os.link(os.path.join(root_b, b"d/one"), os.path.join(root_b, b"d/one-link"))
    os.symlink(b"../top", os.path.join(root_b, b"d/to-top"))
    for index, rel in enumerate([b"d/e/two", b"d/e/zero", b"d/one", b"d/to-top", b"top",
                                 b"d/e", b"empty", b"d"]):
        set_times(os.path.join(root_b, rel), index + 1)
    set_times(root_b, 0)
    return _count(root_b)


# --------------------------------------------------------------------------
# Snapshots and comparison
# --------------------------------------------------------------------------

def file_hash(path: bytes) -> str:
    """sha256 of a file's content, read without updating its atime."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | O_NOATIME)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        digest = hashlib.sha256()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        os.close(fd)


# xfs shows a POSIX ACL twice to root: as system.posix_acl_* and as its own
# on-disk form trusted.SGI_ACL_*; only the former is the portable one.
XATTR_IGNORED_PREFIXES = ("trusted.SGI_ACL_",)


def xattrs_of(path: bytes) -> dict[str, bytes]:
    """Extended attributes (ACLs included) of a name, never following a link."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)
            if not n.startswith(XATTR_IGNORED_PREFIXES)}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of a tree, as compared between source and destination."""

    kind: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    atime_ns: int | None     # regular files only (listing a dir, reading a link may touch it)
    size: int | None         # files and links
    content: str | None      # sha256 (files), target (links)
    rdev: int | None
    xattrs: tuple[tuple[str, bytes], ...]
    link_group: bytes | None  # first relative name of a hard-link group
    nlink: int | None        # files only
    sparse: bool | None      # files only: fewer blocks than bytes
    blocks: int | None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                       (stat.S_ISSOCK, "sock")):
        if test(mode):
            return name
    return "other"


def snapshot(root: os.PathLike[str] | str | bytes, content: bool = True) -> dict[bytes, Entry]:
    """Every entry below ``root`` (relative bytes path -> Entry), root itself as b''.

    Each entry is lstat'ed before its directory is listed and files are read
    with O_NOATIME, so taking a snapshot changes no recorded time.
    """
    root_b = b(root)
    raw: dict[bytes, os.stat_result] = {}
    stack = [b""]
    raw[b""] = os.lstat(root_b)
    while stack:
        rel = stack.pop()
        full = os.path.join(root_b, rel) if rel else root_b
        names = sorted(os.listdir(full))
        for name in names:
            child = os.path.join(rel, name) if rel else name
            raw[child] = os.lstat(os.path.join(root_b, child))
        for name in names:
            child = os.path.join(rel, name) if rel else name
            if stat.S_ISDIR(raw[child].st_mode):
                stack.append(child)
    groups: dict[tuple[int, int], bytes] = {}
    for rel in sorted(raw):
        st = raw[rel]
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            groups.setdefault((st.st_dev, st.st_ino), rel)
    result = {}
    for rel, st in raw.items():
        full = os.path.join(root_b, rel) if rel else root_b
        kind = _kind(st.st_mode)
        data: str | None = None
        if kind == "file" and content:
            data = file_hash(full)
        elif kind == "symlink":
            data = os.readlink(full).decode("utf-8", "surrogateescape")
        attrs = tuple(xattrs_of(full).items()) if kind != "symlink" else ()
        result[rel] = Entry(
            kind=kind, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime_ns=st.st_mtime_ns,
            atime_ns=st.st_atime_ns if kind == "file" else None,
            size=st.st_size if kind in ("file", "symlink") else None,
            content=data,
            rdev=st.st_rdev if kind in ("chr", "blk") else None,
            xattrs=attrs,
            link_group=groups.get((st.st_dev, st.st_ino)) if kind == "file" else None,
            nlink=st.st_nlink if kind == "file" else None,
            sparse=(st.st_blocks * 512 < st.st_size) if kind == "file" else None,
            blocks=st.st_blocks if kind == "file" else None,
        )
    return result


# Entry fields compared by default between a source snapshot and a
# destination snapshot (blocks: allocation differs between filesystems).
COMPARED = ("kind", "mode", "uid", "gid", "mtime_ns", "atime_ns", "size", "content", "rdev",
            "xattrs", "link_group", "nlink", "sparse")


def diff_trees(expected: dict[bytes, Entry], actual: dict[bytes, Entry],
               fields: t.Sequence[str] = COMPARED, skip_root: bool = True) -> list[str]:
    """Human-readable differences between two snapshots (empty if equal)."""
    problems = []
    for rel in sorted(set(expected) - set(actual)):
        problems.append("missing: %r" % rel)
    for rel in sorted(set(actual) - set(expected)):
        problems.append("unexpected: %r" % rel)
    for rel in sorted(set(expected) & set(actual)):
        if skip_root and rel == b"":
            continue
        want, got = expected[rel], actual[rel]
        for field in fields:
            if getattr(want, field) != getattr(got, field):
                problems.append("%r: %s %r != %r" % (rel, field, getattr(want, field), getattr(got, field)))
    return problems


def assert_same_tree(expected: dict[bytes, Entry], actual: dict[bytes, Entry],
                     fields: t.Sequence[str] = COMPARED, skip_root: bool = True) -> None:
    problems = diff_trees(expected, actual, fields, skip_root)
    assert not problems, "trees differ:\n  " + "\n  ".join(problems[:40])


def state_snapshot(path: Path) -> dict[bytes, tuple[t.Any, ...]]:
    """Everything under a state dir (names, types, sizes, mtimes, content), or {} if absent."""
    if not os.path.lexists(path):
        return {}
    snap = snapshot(path)
    return {rel: (e.kind, e.mode, e.size, e.mtime_ns, e.content) for rel, e in snap.items()}


def all_names(root: os.PathLike[str] | str | bytes) -> list[bytes]:
    """Every relative name below root (bytes)."""
    root_b = b(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root_b))
    return sorted(out)


def part_files(*roots: os.PathLike[str] | str | bytes) -> list[bytes]:
    """Every ``*.part`` name under the given roots."""
    found = []
    for root in roots:
        if os.path.lexists(b(root)):
            found.extend(n for n in all_names(root) if os.path.basename(n).endswith(b".part"))
    return found


# --------------------------------------------------------------------------
# The journal, read-only
# --------------------------------------------------------------------------

@dataclasses.dataclass
class JournalView:
    files: dict[bytes, tuple[str, str, str | None, str | None]]  # path -> (kind, state, hash, method)
    dirs: dict[bytes, str]                             # path -> state
    meta: dict[str, str]


def read_journal(journal_path: str | os.PathLike[str]) -> JournalView:
    """The journal's rows, through a read-only SQLite connection.

    Note: SQLite creates the -wal/-shm side files even for a read-only
    reader; take state-dir snapshots before calling this.
    """
    uri = "file:%s?mode=ro" % urllib.parse.quote(os.fsencode(journal_path))
    conn = sqlite3.connect(uri, uri=True)
    try:
        files = {bytes(p): (k, s, h, m) for p, k, s, h, m in
                 conn.execute("SELECT path, kind, state, hash, method FROM files")}
        dirs = {bytes(p): s for p, s in conn.execute("SELECT path, state FROM dirs")}
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()
    return JournalView(files, dirs, meta)


def assert_clean_move(site: Site, result: dict[str, t.Any], info: TreeInfo) -> None:
    """After a complete move: source root empty, no parts, journal all done, stats right."""
    assert not result.get("failed"), result.get("msg")
    assert result["complete"] is True
    assert result["interrupted"] is False
    assert os.path.isdir(site.src), "the source root itself must stay"
    assert os.listdir(site.src) == [], "source root not empty: %r" % all_names(site.src)[:20]
    assert part_files(site.src, site.dest) == []
    view = read_journal(result["journal"])
    assert view.files, "journal has no file rows"
    states = {row[1] for row in view.files.values()}
    assert states == {"done"}, {p: row for p, row in view.files.items() if row[1] != "done"}
    assert set(view.dirs.values()) == {"done"}
    assert len(view.files) == info.entries
    stats = result["stats"]
    assert stats["files_total"] == info.entries
    assert stats["files_moved"] == info.entries
    assert stats["bytes_total"] == info.bytes
    assert stats["symlinks"] == info.symlinks
    assert stats["hardlinks"] == info.hardlinks
    assert stats["dirs"] == info.dirs
    assert stats["files_failed"] == 0
    assert stats["files_skipped"] == 0
