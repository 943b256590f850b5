# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_durable.py (dir-fd traversal, part files, the fsync chain)
and of _transfer.part_name."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import stat
import subprocess
import threading

import pytest

from core_helpers import run_python

from ansible_collections.durable.mover.plugins.module_utils import _durable, _mover
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError
from ansible_collections.durable.mover.plugins.module_utils._transfer import NAME_MAX, part_name

TAG = "0123456789ab"


def snapshot(root):
    """Every path below root with its type, size and mtime: 'nothing touched' is equality."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture
def swapped(tmp_path):
    """root/a/b exists; then root/a is replaced by a symlink to outside/ (which has b/ too)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "keep").write_bytes(b"outside data")
    os.rename(root / "a", tmp_path / "a-moved-away")
    (root / "a").symlink_to(outside)
    return root, outside


@pytest.mark.parametrize("create", [False, True])
def test_dirtree_refuses_a_symlink_component(swapped, create):
    root, outside = swapped
    before = snapshot(outside)
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root), create=create)
    try:
        for rel in ("a", "a/b", "a/b/new", "a/new/deeper"):
            with pytest.raises(MoverError) as info:
                tree.get(rel)
            assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
            assert "symbolic link" in str(info.value)
            assert info.value.path == os.path.join(str(root), "a")
    finally:
        tree.close()
    assert snapshot(outside) == before
    assert tree.created == 0


def test_dirtree_symlink_as_last_component(tmp_path):
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to("real")
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root), create=True)
    try:
        with pytest.raises(MoverError):
            tree.get("link")
    finally:
        tree.close()


def test_dirtree_creates_missing_dirs(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "x").mkdir()
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root), create=True, mode=0o750)
    try:
        fd = tree.get("x/y/z")
        assert os.path.samestat(os.fstat(fd), os.stat(root / "x" / "y" / "z"))
        assert tree.get("x/y/z") == fd                    # cached
        assert tree.created == 2
        assert stat.S_IMODE(os.stat(root / "x" / "y").st_mode) == 0o750 & ~current_umask()
    finally:
        tree.close()


def test_dirtree_without_create_does_not_create(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root))
    try:
        with pytest.raises(MoverError) as info:
            tree.get("missing/deeper")
        assert info.value.errno == errno.ENOENT
    finally:
        tree.close()
    assert os.listdir(root) == []


def test_dirtree_clear_closes_fds(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root))
    fd = tree.get("a/b")
    tree.clear()
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    assert os.path.samestat(os.fstat(tree.get("a/b")), os.stat(root / "a" / "b"))
    tree.close()


WALK_UNDER_A_LIMIT = """
import json, os, sys
from ansible_collections.durable.mover.plugins.module_utils import _durable, _scan
root = sys.argv[1]
def open_fds():
    return len(os.listdir("/proc/self/fd"))
tree = _durable.DirTree(_durable.open_root(root), root)
base = open_fds()
most = entries = 0
for _rel, _name, _st in _scan.walk(tree, _scan.Excluder([])):
    entries += 1
    most = max(most, open_fds() - base)
tree.close()
print(json.dumps({"entries": entries, "most": most, "after": open_fds() - base}))
"""


def many_dirs(root, flat=700, chain=300, tops=10, per_top=30):
    """`flat` directories side by side, one chain `chain` deep, and `tops` x `per_top` nested."""
    for index in range(flat):
        os.makedirs(os.path.join(root, "flat", "d%04d" % index))
    os.makedirs(os.path.join(root, *(["c"] * chain)))
    for top in range(tops):
        for sub in range(per_top):
            os.makedirs(os.path.join(root, "t%02d" % top, "s%02d" % sub))
    return 1 + flat + chain + tops * (1 + per_top)


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_walk_keeps_a_bounded_number_of_directories_open(tmp_path):
    """1,311 directories (side by side, 300 deep, nested) under a soft limit of
    128: the walk (check mode's and verify's) never holds more than a quarter
    of the limit, counted in /proc/self/fd at every entry."""
    root = str(tmp_path / "root")
    count = many_dirs(root)
    proc = run_python(WALK_UNDER_A_LIMIT, root, prefix=["prlimit", "--nofile=128:"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout)
    assert seen["entries"] == count
    assert seen["most"] <= 128 // 4, seen
    assert seen["after"] <= 0, seen


def open_fd_count():
    return len(os.listdir("/proc/self/fd"))


def test_dirtree_keeps_at_most_its_budget_open(tmp_path):
    """Trimmed between steps (as the loops over directories do), a tree keeps
    its budget; within a step (a batch: nothing let go), it holds what the step
    asked for on top of its budget, and no more."""
    root = tmp_path / "root"
    rels = ["d%03d/e" % index for index in range(150)]
    for rel in rels:
        (root / rel).mkdir(parents=True)
    base = open_fd_count()
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root), budget=8)
    most = 0
    try:
        for rel in rels:
            fd = tree.get(rel)
            assert os.path.samestat(os.fstat(fd), os.stat(root / rel))
            tree.trim()
            most = max(most, open_fd_count() - base - 1)     # the root's fd
        assert most <= 8 + 2, most
        for step in range(0, 150, 8):
            for rel in rels[step:step + 8]:                   # a batch over 8 directories
                tree.get(rel)
            most = max(most, open_fd_count() - base - 1)
            tree.trim()
        assert most <= 2 * 8 + 2, most
    finally:
        tree.close()
    assert open_fd_count() == base


def test_a_held_fd_is_closed_only_once_let_go(tmp_path):
    """An fd handed out is never closed before the next trim (its number could
    be reused by another open): the cache goes over its budget rather."""
    root = tmp_path / "root"
    for index in range(40):
        (root / ("d%02d" % index)).mkdir(parents=True)
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root), budget=4)
    try:
        first, second = tree.get("d00"), tree.get("d01")       # two at once, as a link does
        for index in range(2, 40):                              # the oldest cached, and not held
            os.close(tree.dup("d%02d" % index))                # are closed: never these two
            assert os.path.samestat(os.fstat(first), os.stat(root / "d00"))
            assert os.path.samestat(os.fstat(second), os.stat(root / "d01"))
        assert tree.open_count() <= 2 + 4
        for index in range(2, 40):                              # held too: the cache grows
            tree.get("d%02d" % index)
        assert tree.open_count() == 40
        tree.trim()
        assert tree.open_count() <= 4
        for fd in (first, second):
            with pytest.raises(OSError) as info:
                os.fstat(fd)
            assert info.value.errno == errno.EBADF
        own = tree.dup("d05")                                   # an fd of its own: not held
        tree.clear()
        assert tree.open_count() == 0
        assert os.path.samestat(os.fstat(own), os.stat(root / "d05"))
        os.close(own)
    finally:
        tree.close()


def test_threads_never_use_a_closed_or_reused_dir_fd(tmp_path):
    """Batches of four threads, each asking for many directories of a tree
    whose cache keeps 4 fds, while opening files (which would take a closed
    fd's number): every fd handed out names its directory until the trim
    between batches."""
    root = tmp_path / "root"
    names = ["d%02d/e%d" % (index // 3, index % 3) for index in range(60)]
    idents = {}
    for rel in names:
        (root / rel).mkdir(parents=True)
        (root / rel / "marker").write_bytes(rel.encode())
        st = os.stat(root / rel)
        idents[rel] = (st.st_dev, st.st_ino)
    base = open_fd_count()
    tree = _durable.DirTree(_durable.open_root(str(root)), str(root), budget=4)
    wrong = []

    def check(rel, fd):
        try:
            st = os.fstat(fd)
            marker = os.open("marker", os.O_RDONLY, dir_fd=fd)
        except OSError as exc:
            wrong.append((rel, str(exc)))
            return
        try:
            if (st.st_dev, st.st_ino) != idents[rel] or os.read(marker, 100) != rel.encode():
                wrong.append((rel, "another directory"))
        finally:
            os.close(marker)

    def work(seed):
        rng = random.Random(seed)
        got = []
        for rel in rng.sample(names, 12):
            got.append((rel, tree.get(rel)))
            churn = os.open(root / rel / "marker", os.O_RDONLY)
            for earlier in got:
                check(*earlier)
            os.close(churn)

    for batch in range(60):
        threads = [threading.Thread(target=work, args=(batch * 4 + seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tree.trim()
        assert tree.open_count() <= 4
    tree.close()
    assert not wrong, wrong[:10]
    assert open_fd_count() == base


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_open_root_create_makes_parents(tmp_path):
    target = tmp_path / "p" / "q" / "r"
    fd = _durable.open_root(str(target), create=True)
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(target))
    finally:
        os.close(fd)
    fd = _durable.open_root(str(target), create=True)       # existing: just opened
    os.close(fd)


def test_open_root_missing_without_create(tmp_path):
    with pytest.raises(MoverError) as info:
        _durable.open_root(str(tmp_path / "nope"))
    assert info.value.errno == errno.ENOENT
    assert not (tmp_path / "nope").exists()


def test_open_root_file_in_the_way(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(MoverError) as info:
        _durable.open_root(str(tmp_path / "file" / "sub"), create=True)
    assert info.value.errno == errno.ENOTDIR
    assert (tmp_path / "file").read_bytes() == b"x"


def test_make_dir_reports_existing(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _durable.make_dir(fd, "d", 0o755) is True
        assert _durable.make_dir(fd, "d", 0o755) is False
        assert (tmp_path / "d").is_dir()
    finally:
        os.close(fd)


# -- part files --------------------------------------------------------------------------------


@pytest.fixture
def dir_fd(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_create_part_truncates_to_resume_at(tmp_path, dir_fd):
    data = bytes(range(256)) * 4
    (tmp_path / "p").write_bytes(data)
    fd = _durable.create_part(dir_fd, "p", resume_at=300)
    try:
        assert os.fstat(fd).st_size == 300
        os.pwrite(fd, b"NEW", 300)
    finally:
        os.close(fd)
    assert (tmp_path / "p").read_bytes() == data[:300] + b"NEW"


def test_create_part_from_zero_truncates_all(tmp_path, dir_fd):
    (tmp_path / "p").write_bytes(b"stale bytes")
    fd = _durable.create_part(dir_fd, "p", resume_at=0)
    os.close(fd)
    assert (tmp_path / "p").read_bytes() == b""
    fd = _durable.create_part(dir_fd, "fresh")
    os.close(fd)
    assert stat.S_IMODE(os.stat(tmp_path / "fresh").st_mode) == 0o600


def test_create_part_resume_extends_short_part_with_zeros(tmp_path, dir_fd):
    (tmp_path / "p").write_bytes(b"abc")
    fd = _durable.create_part(dir_fd, "p", resume_at=10)
    os.close(fd)
    assert (tmp_path / "p").read_bytes() == b"abc" + bytes(7)


def test_create_part_does_not_follow_a_symlink(tmp_path, dir_fd):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "p").symlink_to(victim)
    # resuming: the part must be our regular file; a link is refused
    with pytest.raises(MoverError) as info:
        _durable.create_part(dir_fd, "p", resume_at=4)
    assert info.value.errno == errno.ELOOP
    # a new part: the link is removed (never followed) and a fresh file made
    fd = _durable.create_part(dir_fd, "p", resume_at=0)
    os.write(fd, b"part")
    os.close(fd)
    assert victim.read_bytes() == b"precious"
    assert stat.S_ISREG(os.lstat(tmp_path / "p").st_mode)
    assert (tmp_path / "p").read_bytes() == b"part"


def test_create_part_on_a_fifo_fails_instead_of_hanging(tmp_path):
    """A FIFO planted under the (predictable) part name must not block the run forever."""
    os.mkfifo(tmp_path / "p")
    code = """
        import os, sys
        from ansible_collections.durable.mover.plugins.module_utils import _durable
        from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError
        fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
        try:
            _durable.create_part(fd, "p")
            print("opened")
        except MoverError as exc:
            print("refused", exc.errno)
    """
    try:
        proc = run_python(code, str(tmp_path), timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("create_part blocked opening a FIFO at the part name")
    # never opened (so never blocked on): replaced by a fresh regular part file
    assert proc.stdout.split()[0] == "opened", proc.stderr
    assert stat.S_ISREG(os.lstat(tmp_path / "p").st_mode)
    os.unlink(tmp_path / "p")
    os.mkfifo(tmp_path / "p")
    code_resume = code.replace('_durable.create_part(fd, "p")', '_durable.create_part(fd, "p", resume_at=4)')
    try:
        proc = run_python(code_resume, str(tmp_path), timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("create_part blocked opening a FIFO at the part name to resume")
    assert proc.stdout.split()[0] == "refused", proc.stderr
    assert stat.S_ISFIFO(os.lstat(tmp_path / "p").st_mode)


def test_part_name_short_names():
    assert part_name("file.txt", TAG) == ".file.txt.%s.part" % TAG
    assert _mover._PART.match(part_name("file.txt", TAG)).group(1) == TAG


@pytest.mark.parametrize("name", [
    "x" * 255,
    "x" * 236,                                     # just over the limit once decorated
    "é" * 127,                                     # 254 bytes of UTF-8
    os.fsdecode(b"\xff" * 250),                    # not UTF-8
])
def test_part_name_of_long_names_fits(tmp_path, name):
    part = part_name(name, TAG)
    assert len(os.fsencode(part)) <= NAME_MAX
    assert part.startswith(".") and part.endswith(".%s.part" % TAG)
    assert _mover._PART.match(part).group(1) == TAG             # recognised by the part cleaner
    assert part_name(name, TAG) == part                          # deterministic: a rerun finds it
    # the filesystem accepts both names
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / part).write_bytes(b"x")


def test_part_names_of_different_long_names_differ():
    assert part_name("a" * 250, TAG) != part_name("a" * 249 + "b", TAG)
    assert part_name("a" * 250, TAG) != part_name("a" * 250, "ba9876543210")


def test_part_name_at_the_boundary():
    limit = NAME_MAX - len(".%s.part" % TAG) - 1
    assert part_name("n" * limit, TAG) == ".%s.%s.part" % ("n" * limit, TAG)
    assert len(part_name("n" * limit, TAG)) == NAME_MAX
    assert "n" * (limit + 1) not in part_name("n" * (limit + 1), TAG)


# -- single steps --------------------------------------------------------------------------------


def test_unlink_source_and_remove_quietly(tmp_path, dir_fd):
    (tmp_path / "f").write_bytes(b"x")
    assert _durable.unlink_source(dir_fd, "f") is True
    assert _durable.unlink_source(dir_fd, "f") is False
    _durable.remove_quietly(dir_fd, "never-existed")
    (tmp_path / "d").mkdir()
    with pytest.raises(MoverError) as info:
        _durable.unlink_source(dir_fd, "d", "/shown/path")
    assert "/shown/path" in str(info.value)
    assert (tmp_path / "d").is_dir()


def test_rename_into_place_replaces_only_when_asked(tmp_path, dir_fd):
    (tmp_path / ".f.part").write_bytes(b"new")
    (tmp_path / "f").write_bytes(b"old")
    _durable.rename_into_place(dir_fd, ".f.part", dir_fd, "f", replace=True)
    assert (tmp_path / "f").read_bytes() == b"new"
    assert not (tmp_path / ".f.part").exists()
    with pytest.raises(MoverError) as info:
        _durable.rename_into_place(dir_fd, "missing", dir_fd, "f", "/dest/f")
    assert info.value.errno == errno.ENOENT and "/dest/f" in str(info.value)


def _no_replace_cases(tmp_path, dir_fd):
    """Into a free name: renamed. Onto a taken one: DestinationTaken, both left as they were."""
    (tmp_path / ".a.part").write_bytes(b"ours")
    _durable.rename_into_place(dir_fd, ".a.part", dir_fd, "a")
    assert (tmp_path / "a").read_bytes() == b"ours" and not (tmp_path / ".a.part").exists()
    (tmp_path / ".b.part").write_bytes(b"ours")
    (tmp_path / "b").write_bytes(b"theirs")
    with pytest.raises(_durable.DestinationTaken) as info:
        _durable.rename_into_place(dir_fd, ".b.part", dir_fd, "b", "/dest/b")
    assert info.value.errno == errno.EEXIST and "/dest/b" in str(info.value)
    assert (tmp_path / "b").read_bytes() == b"theirs"
    assert (tmp_path / ".b.part").read_bytes() == b"ours"
    os.symlink("nowhere", tmp_path / "c")          # a dangling link is an entry too
    (tmp_path / ".c.part").write_bytes(b"ours")
    with pytest.raises(_durable.DestinationTaken):
        _durable.rename_into_place(dir_fd, ".c.part", dir_fd, "c")
    assert os.readlink(tmp_path / "c") == "nowhere"


def test_rename_into_place_never_replaces_with_renameat2(tmp_path, dir_fd):
    assert _durable._renameat2 is not None, "renameat2 unavailable on this machine"
    _no_replace_cases(tmp_path, dir_fd)


def test_rename_into_place_never_replaces_without_renameat2(tmp_path, dir_fd, monkeypatch):
    """A kernel or filesystem without RENAME_NOREPLACE: link(2) then unlink."""
    monkeypatch.setattr(_durable, "_renameat2", None)
    _no_replace_cases(tmp_path, dir_fd)


def test_rename_into_place_without_renameat2_or_hard_links(tmp_path, dir_fd, monkeypatch):
    """Neither RENAME_NOREPLACE nor hard links (as on some FUSE filesystems): look, then rename."""
    def no_links(*_args, **_kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(_durable, "_renameat2", None)
    monkeypatch.setattr(os, "link", no_links)
    _no_replace_cases(tmp_path, dir_fd)


def test_rename_into_place_across_directories_without_renameat2(tmp_path, monkeypatch):
    """A same-filesystem move through link + unlink: the entry ends under the new name only."""
    monkeypatch.setattr(_durable, "_renameat2", None)
    (tmp_path / "s").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "s" / "f").write_bytes(b"data")
    src_fd = os.open(tmp_path / "s", os.O_RDONLY | os.O_DIRECTORY)
    dst_fd = os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        _durable.rename_into_place(src_fd, "f", dst_fd, "f")
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert (tmp_path / "d" / "f").read_bytes() == b"data"
    assert not (tmp_path / "s" / "f").exists()


def test_sync_functions_accept_real_fds_and_report_bad_ones(tmp_path, dir_fd):
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDWR)
    try:
        _durable.sync_data(fd)
        _durable.sync_data(fd, checkpoint=True)
        _durable.sync_dir(dir_fd)
        _durable.sync_dest_dir(dir_fd)
    finally:
        os.close(fd)
    with pytest.raises(MoverError) as info:
        _durable.sync_data(fd, "/closed")
    assert info.value.errno == errno.EBADF and "not retried" in str(info.value)


def test_faults_are_off_without_the_variable():
    proc = run_python("""
        from ansible_collections.durable.mover.plugins.module_utils import _faults
        assert not any(_faults.broken(v) for v in _faults.BROKEN)
        for p in _faults.POINTS:
            _faults.point(p)
        print("alive")
    """)
    assert proc.stdout.strip() == "alive", proc.stderr


@pytest.mark.parametrize("release,expected", [
    ("6.18.44-fc-v1147", (6, 18)), ("5.17.0", (5, 17)), ("5.16.20-arch1-1", (5, 16)),
    ("4.18.0-553.el8_10.x86_64", (4, 18)), ("garbage", (0, 0)),
])
def test_kernel_version(release, expected):
    assert _durable.kernel_version(release) == expected


def test_no_batch_flush_on_kernels_whose_syncfs_can_hide_errors(tmp_path, monkeypatch):
    """Before 5.17, syncfs could return 0 after a failed writeback: each file is flushed on its own."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.setattr(_durable, "fs_type", lambda _fd: 0xEF53)      # as if on ext4
        monkeypatch.setattr(_durable, "kernel_version", lambda: (5, 17))
        assert _durable.syncfs_supported(fd)
        monkeypatch.setattr(_durable, "kernel_version", lambda: (5, 16))
        assert not _durable.syncfs_supported(fd)
    finally:
        os.close(fd)


def test_batch_flush_has_a_description_of_its_own(tmp_path):
    """Its syncfs error cursor is its own: a new open file description, not a
    dup of the root fd (which forked workers share). File status flags belong
    to the description: set on the root's, they must not show on the flush's."""
    import fcntl
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    flush = _durable.BatchFlush(root, str(tmp_path))
    try:
        assert os.path.samestat(os.fstat(root), os.fstat(flush.fd))
        fcntl.fcntl(root, fcntl.F_SETFL, fcntl.fcntl(root, fcntl.F_GETFL) | os.O_NONBLOCK)
        assert not fcntl.fcntl(flush.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        (tmp_path / "sub").mkdir()
        sub = os.open(tmp_path / "sub", os.O_RDONLY | os.O_DIRECTORY)
        assert flush.covers(sub)
        os.close(sub)
        flush.sync()
    finally:
        flush.close()
        os.close(root)


def test_dirs_flush_covers_its_filesystem_and_reports_bad_fds(tmp_path):
    """One syncfs for a batch's directories: through a new open file description
    of the root (open) or a shared one (the batch flush's, not closed by it)."""
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    (tmp_path / "sub").mkdir()
    sub = os.open(tmp_path / "sub", os.O_RDONLY | os.O_DIRECTORY)
    own = _durable.DirsFlush.open(root, str(tmp_path))
    shared = _durable.DirsFlush(root, str(tmp_path))
    try:
        assert own.fd != root and os.path.samestat(os.fstat(root), os.fstat(own.fd))
        assert own.covers(sub) and shared.covers(sub)
        own.sync()
        shared.sync()
    finally:
        own.close()
        shared.close()
        os.close(sub)
    os.fstat(root)                    # the shared descriptor stays open
    os.close(root)
    with pytest.raises(MoverError) as info:
        _durable.sync_batch_dirs(root, "/closed")
    assert info.value.errno == errno.EBADF and "not retried" in str(info.value)


@pytest.mark.root
@pytest.mark.loop
def test_sync_batch_dirs_does_not_trust_a_read_only_filesystem(loopfs):
    """syncfs answers success at once for a read-only filesystem (Linux's
    sync_filesystem checks that first), and ext4 and btrfs turn read-only
    after a failed journal commit: the renames of the batch may then never
    reach the disk, so the batch's directory flush must fail."""
    mnt = loopfs("ext4")
    (mnt / "d").mkdir()
    fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _durable.sync_batch_dirs(fd, str(mnt))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        assert _durable.libc().syncfs(fd) == 0          # what syncfs alone says
        with pytest.raises(MoverError) as info:
            _durable.sync_batch_dirs(fd, str(mnt))
        assert info.value.errno == errno.EROFS and "read-only" in str(info.value), info.value
    finally:
        os.close(fd)
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=False, capture_output=True)
