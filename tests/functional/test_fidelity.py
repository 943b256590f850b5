# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fidelity of a whole move through the real core.

One tree holding everything a move must keep (modes with set-id/sticky bits
and 0000, other owners, ns times, user xattrs, POSIX ACLs, symbolic links of
every kind, hard links, sparse files, empty files and dirs, odd names) is
moved once per place: on one filesystem (the rename path) and onto a
loop-mounted xfs and ext4 (the copy path). The move is done once per module
(``moved`` fixture: check mode, run, check mode again, run again), and each
test looks at one property of what it left.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import time
import typing as t
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover

from fstree import (
    EXT4, SAMEFS, XFS, Entry, Site, TreeInfo, unique_dir, all_names, assert_clean_move,
    assert_same_tree, b, build_fidelity_tree, make_site, part_files, read_journal,
    setfacl_available, snapshot, state_snapshot, write,
)

# The tree has files of other owners and mode 0000: building and reading it needs root.
pytestmark = pytest.mark.root


@dataclasses.dataclass
class Moved:
    """Everything observed around one move of the fidelity tree."""

    site: Site
    info: TreeInfo
    expected: dict[bytes, Entry]          # source before anything ran
    acl_text: dict[bytes, str]            # getfacl output of the source, per ACL'd path
    plan_before: dict[str, t.Any]
    src_after_plan: dict[bytes, Entry]
    state_after_plan: dict[bytes, t.Any]
    dest_existed_after_plan: bool
    result: dict[str, t.Any]
    dest: dict[bytes, Entry]              # destination right after the move
    plan_after: dict[str, t.Any]
    rerun: dict[str, t.Any]
    dest_after_rerun: dict[bytes, Entry]
    started_ns: int


def getfacl(path: bytes) -> str:
    proc = subprocess.run(["getfacl", "--absolute-names", "--omit-header", "--numeric", path],
                          capture_output=True, check=True)
    return proc.stdout.decode("utf-8", "surrogateescape")


@pytest.fixture(scope="module", params=[SAMEFS, XFS, EXT4])
def moved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Moved]:
    kind = request.param
    loopfs = request.getfixturevalue("shared_loopfs") if kind != "samefs" else None
    site, workdir = make_site(kind, tmp_path_factory.mktemp("fidelity-%s" % kind), loopfs,
                              "fidelity-%s" % kind)
    try:
        started_ns = time.time_ns()
        info = build_fidelity_tree(site.src)
        expected = snapshot(site.src)
        acl_text = {}
        if info.acls:
            for rel in (b"acl", b"acl/file", b"acl/inherited"):
                acl_text[rel] = getfacl(os.path.join(b(site.src), rel))
        params = site.params()
        plan_before = _mover.plan(params)
        src_after_plan = snapshot(site.src)
        state_after_plan = state_snapshot(site.state)
        dest_existed = os.path.lexists(site.dest)
        result = _mover.run(params)
        dest = snapshot(site.dest)
        plan_after = _mover.plan(params)
        rerun = _mover.run(params)
        dest_after_rerun = snapshot(site.dest)
        yield Moved(site, info, expected, acl_text, plan_before, src_after_plan, state_after_plan,
                    dest_existed, result, dest, plan_after, rerun, dest_after_rerun, started_ns)
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


# -- the whole tree ------------------------------------------------------------------


def test_destination_equals_source(moved: Moved) -> None:
    """Every entry: type, mode, owner, ns times, size, content, target, xattrs, links, holes."""
    assert not moved.result.get("failed"), moved.result
    assert_same_tree(moved.expected, moved.dest)


def test_destination_root_takes_source_root_metadata(moved: Moved) -> None:
    want, got = moved.expected[b""], moved.dest[b""]
    assert (got.mode, got.uid, got.gid, got.mtime_ns, got.xattrs) == \
        (want.mode, want.uid, want.gid, want.mtime_ns, want.xattrs)


def test_source_emptied_no_parts_journal_done_stats_right(moved: Moved) -> None:
    assert_clean_move(moved.site, moved.result, moved.info)
    assert moved.result["changed"] is True
    assert moved.result["stats"]["special_skipped"] == 0


def test_hash_and_method_recorded_per_path(moved: Moved) -> None:
    """Copies carry a content hash in the journal; renames need none."""
    view = read_journal(moved.result["journal"])
    files = [p for p, e in moved.expected.items() if e.kind == "file"]
    assert set(files) <= set(view.files)
    algorithm = moved.result["hash_algorithm"]
    for rel in files:
        kind, state, digest, method = view.files[rel]
        assert (kind, state) == ("file", "done")
        if not moved.site.cross:
            assert method == "rename", (rel, method)
        elif method == "link":              # a further name of a hard-link group
            assert moved.expected[rel].link_group is not None, rel
        else:
            assert method == "copy", (rel, method)
            assert digest and digest.startswith(algorithm + ":"), (rel, digest)
    methods = [row[3] for row in view.files.values()]
    if moved.site.cross:
        assert methods.count("link") == moved.info.hardlinks
        assert methods.count("symlink") == moved.info.symlinks


# -- one property at a time ------------------------------------------------------------


def test_modes_with_setid_sticky_and_0000(moved: Moved) -> None:
    for rel, mode in ((b"modes/m0000", 0o000), (b"modes/suid", 0o4755), (b"modes/sgid", 0o2750),
                      (b"modes/sticky", 0o1777), (b"modes/all", 0o7777), (b"modes/m0400", 0o400),
                      (b"modes/dir0700", 0o700), (b"modes/dir2775", 0o2775),
                      (b"modes/dir1777", 0o1777), (b"a/b", 0o750), (b"a/b/c", 0o711)):
        st = os.lstat(os.path.join(b(moved.site.dest), rel))
        assert stat.S_IMODE(st.st_mode) == mode, (rel, oct(st.st_mode))


@pytest.mark.root
def test_owners_kept(moved: Moved) -> None:
    dest = b(moved.site.dest)
    st = os.lstat(os.path.join(dest, b"modes/owned"))
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    st = os.lstat(os.path.join(dest, b"modes/suid_owned"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (2000, 3000, 0o6755)
    st = os.lstat(os.path.join(dest, b"modes/dir2775"))
    assert (st.st_uid, st.st_gid) == (4321, 8765)
    st = os.lstat(os.path.join(dest, b"links/rel"))
    assert stat.S_ISLNK(st.st_mode) and (st.st_uid, st.st_gid) == (1234, 5678)


def test_nanosecond_times(moved: Moved) -> None:
    for rel in (b"a/top.txt", b"a/b/c/deep.bin", b"empty-file", b"sparse/islands", b"modes/m0000"):
        want = moved.expected[rel]
        st = os.lstat(os.path.join(b(moved.site.dest), rel))
        assert want.mtime_ns % 1000 != 0          # the fixture's times really use nanoseconds
        assert (st.st_atime_ns, st.st_mtime_ns) == (want.atime_ns, want.mtime_ns), rel
    for rel in (b"a", b"a/b", b"a/b/c", b"empty", b"x" * 255):
        st = os.lstat(os.path.join(b(moved.site.dest), rel))
        assert st.st_mtime_ns == moved.expected[rel].mtime_ns, rel
    st = os.lstat(os.path.join(b(moved.site.dest), b"links/dangling-rel"))
    assert st.st_mtime_ns == moved.expected[b"links/dangling-rel"].mtime_ns


def test_user_xattrs(moved: Moved) -> None:
    if "xattr" not in moved.info.paths:
        pytest.skip("the source filesystem has no user xattrs")
    dest = b(moved.site.dest)
    top = os.path.join(dest, b"a/top.txt")
    assert os.getxattr(top, b"user.comment") == b"a comment"
    assert os.getxattr(top, b"user.binary") == b"\x00\x01\xff"
    assert os.getxattr(top, b"user.empty") == b""
    assert os.getxattr(os.path.join(dest, b"a/b"), b"user.dir") == b"on a directory"
    assert os.getxattr(os.path.join(dest, b"hard/two"), b"user.linked") == b"shared by three names"
    assert os.getxattr(os.path.join(dest, b"sparse/islands"), b"user.big") == b"v" * 2000


def test_posix_acls(moved: Moved) -> None:
    reason = setfacl_available()
    if reason:
        pytest.skip(reason)
    assert moved.info.acls
    for rel, text in moved.acl_text.items():
        assert "user:1234:" in text, (rel, text)
        assert getfacl(os.path.join(b(moved.site.dest), rel)) == text, rel
    assert "default:" in moved.acl_text[b"acl"]


def test_symlinks_moved_as_links_never_followed(moved: Moved) -> None:
    dest = b(moved.site.dest)
    for rel, target in ((b"links/rel", b"target.txt"), (b"links/reldir", b"../a/b"),
                        (b"links/abs", b"/etc/hostname"),
                        (b"links/dangling-abs", b"/nonexistent/durable-mover/dangling"),
                        (b"links/dangling-rel", b"missing-target"), (b"links/loop", b"loop"),
                        (b"links/odd-target", b"\xff non-utf8 target")):
        path = os.path.join(dest, rel)
        assert stat.S_ISLNK(os.lstat(path).st_mode), rel
        assert os.readlink(path) == target, rel
    # the link to a directory was not descended into
    assert not [n for n in all_names(dest) if n.startswith(b"links/reldir/")]
    assert os.path.exists(os.path.join(dest, b"links/reldir/mid.txt"))   # resolves inside dest
    assert os.path.exists("/etc/hostname")


def test_hard_links_one_inode(moved: Moved) -> None:
    dest = b(moved.site.dest)
    group = [os.lstat(os.path.join(dest, rel)) for rel in (b"hard/one", b"hard/two", b"a/b/three")]
    assert len({(s.st_dev, s.st_ino) for s in group}) == 1
    assert all(s.st_nlink == 3 for s in group)
    pair = [os.lstat(os.path.join(dest, rel)) for rel in (b"hard/pair-a", b"hard/pair-b")]
    assert pair[0].st_ino == pair[1].st_ino and pair[0].st_nlink == 2
    assert pair[0].st_ino != group[0].st_ino
    assert moved.result["stats"]["hardlinks"] == 3


def _data_map(path: bytes) -> list[tuple[int, int]]:
    """(offset, end) of every data segment (SEEK_DATA/SEEK_HOLE)."""
    segments = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, data, os.SEEK_HOLE)
            segments.append((data, hole))
            pos = hole
    finally:
        os.close(fd)
    return segments


def test_sparse_files_keep_holes(moved: Moved) -> None:
    dest = b(moved.site.dest)
    for rel, size in ((b"sparse/islands", 64 << 20), (b"sparse/trailing-hole", 16 << 20),
                      (b"sparse/all-hole", 8 << 20)):
        want = moved.expected[rel]
        st = os.lstat(os.path.join(dest, rel))
        assert st.st_size == size
        assert moved.dest[rel].content == want.content       # logical content, zeros included
        # the holes are still holes: a few KiB of data, not megabytes of zeros
        assert st.st_blocks * 512 <= max(want.blocks * 512 * 2, 64 * 1024), (rel, st.st_blocks, want.blocks)
    assert os.lstat(os.path.join(dest, b"sparse/all-hole")).st_blocks == 0
    islands = _data_map(os.path.join(dest, b"sparse/islands"))
    assert islands == [(0, 4096), (32 << 20, (32 << 20) + 12288), ((64 << 20) - 4096, 64 << 20)]


def test_odd_names(moved: Moved) -> None:
    dest = os.path.join(b(moved.site.dest), b"names")
    names = set(os.listdir(dest))
    for name in (b"with space", b"  leading and trailing  ", b"new\nline", b"latin1-\xe9\xff\xfe",
                 "unicod\u00e9 \u2603 \U0001f600".encode(), b"n" * 255, b"dir \xff\n\xe9"):
        assert name in names, name
    with open(os.path.join(dest, b"dir \xff\n\xe9", b"f\xfe"), "rb") as handle:
        assert handle.read() == b"in a non-UTF-8 directory\n"
    with open(os.path.join(b(moved.site.dest), b"x" * 255, b"y" * 255), "rb") as handle:
        assert handle.read() == b"long dir and long name\n"


def test_empty_files_and_dirs(moved: Moved) -> None:
    dest = b(moved.site.dest)
    assert os.listdir(os.path.join(dest, b"empty")) == []
    assert os.lstat(os.path.join(dest, b"empty-file")).st_size == 0
    assert os.lstat(os.path.join(dest, b"a/b/c/empty-file")).st_size == 0


# -- check mode before, rerun, check mode after ---------------------------------------


def test_check_mode_before_reports_and_changes_nothing(moved: Moved) -> None:
    plan = moved.plan_before
    assert not plan.get("failed"), plan
    assert plan["changed"] is True
    counts = plan["plan"]
    assert counts["files"] == moved.info.entries
    assert counts["bytes"] == moved.info.bytes
    if moved.site.cross:
        assert (counts["copies"], counts["renames"]) == (moved.info.entries, 0)
    else:
        assert (counts["renames"], counts["copies"]) == (moved.info.entries, 0)
    assert counts["conflicts"] == 0 and counts["already_done"] == 0
    assert plan["stats"]["bytes_total"] == moved.info.bytes
    assert plan["stats"]["symlinks"] == moved.info.symlinks
    assert plan["stats"]["dirs"] == moved.info.dirs
    # nothing changed: the source, the destination, the state dir
    assert_same_tree(moved.expected, moved.src_after_plan, skip_root=False)
    assert moved.dest_existed_after_plan is False
    assert moved.state_after_plan == {}, "check mode wrote to the state dir"


def test_rerun_after_success_changes_nothing(moved: Moved) -> None:
    rerun = moved.rerun
    assert not rerun.get("failed"), rerun
    assert rerun["changed"] is False
    assert rerun["complete"] is True
    assert rerun["stats"]["files_moved"] == 0
    assert rerun["stats"]["files_total"] == moved.info.entries
    assert_same_tree(moved.dest, moved.dest_after_rerun, skip_root=False)
    assert os.listdir(moved.site.src) == []
    assert part_files(moved.site.src, moved.site.dest) == []


def test_check_mode_after_run_has_nothing_to_do(moved: Moved) -> None:
    plan = moved.plan_after
    assert not plan.get("failed"), plan
    assert plan["changed"] is False
    assert plan["plan"]["files"] == 0 and plan["plan"]["bytes"] == 0
    assert plan["plan"]["conflicts"] == 0


# -- xattrs between filesystems ------------------------------------------------------------


@pytest.mark.root
@pytest.mark.loop
def test_acl_from_xfs_to_ext4_carries_only_the_portable_form(
        shared_loopfs: t.Callable[[str], Path], tmp_path: Path) -> None:
    """xfs shows root an ACL also as trusted.SGI_ACL_*: that internal form must not travel."""
    reason = setfacl_available()
    if reason:
        pytest.skip(reason)
    src_dir = Path(os.fsdecode(unique_dir(shared_loopfs("xfs"), "acl-src")))
    dest_dir = Path(os.fsdecode(unique_dir(shared_loopfs("ext4"), "acl-dest")))
    try:
        src = src_dir / "src"
        (src / "d").mkdir(parents=True)
        write(b(src / "d" / "f"), b"with an ACL\n")
        subprocess.run(["setfacl", "-m", "u:1234:rw-", src / "d" / "f"], check=True)
        subprocess.run(["setfacl", "-d", "-m", "g:5678:r-x", src / "d"], check=True)
        want = {rel: getfacl(os.path.join(b(src), rel)) for rel in (b"d", b"d/f")}
        assert any(n.startswith("trusted.SGI_ACL_") for n in os.listxattr(src / "d" / "f")), \
            "xfs no longer lists trusted.SGI_ACL_*: this test has nothing to check"
        result = _mover.run({"src": str(src), "dest": str(dest_dir / "dest"),
                             "state_dir": str(tmp_path / "state")})
        assert not result.get("failed"), result.get("msg")
        dest = dest_dir / "dest"
        assert sorted(os.listxattr(dest / "d" / "f")) == ["system.posix_acl_access"]
        assert "system.posix_acl_default" in os.listxattr(dest / "d")
        assert not [n for n in os.listxattr(dest / "d") if n.startswith("trusted.")]
        for rel, text in want.items():
            assert getfacl(os.path.join(b(dest), rel)) == text, rel
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)
        shutil.rmtree(dest_dir, ignore_errors=True)


def _xattr_too_big(loopfs: t.Callable[..., Path], tmp_path: Path) -> tuple[Path, Path, dict[str, t.Any]]:
    """A 2000-byte xattr onto an ext4 with 1 KiB blocks, where it cannot fit."""
    mountpoint = loopfs("ext4", mkfs_args=("-b", "1024"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write(b(src / "sub" / "big"), b"content kept at the source\n")
    os.setxattr(src / "sub" / "big", "user.big", b"v" * 2000)
    write(b(src / "sub" / "plain"), b"plain\n")
    write(b(src / "top"), b"top\n")
    dest = mountpoint / "dest"
    result = _mover.run({"src": str(src), "dest": str(dest), "state_dir": str(tmp_path / "state")})
    return src, dest, result


@pytest.mark.root
@pytest.mark.loop
def test_xattr_the_destination_cannot_hold_fails_that_file_and_keeps_it(
        loopfs: t.Callable[..., Path], tmp_path: Path) -> None:
    src, dest, result = _xattr_too_big(loopfs, tmp_path)
    assert result["failed"] is True
    assert "user.big" in result["msg"]
    with open(src / "sub" / "big", "rb") as handle:
        assert handle.read() == b"content kept at the source\n"
    assert os.getxattr(src / "sub" / "big", "user.big") == b"v" * 2000
    assert not os.path.lexists(dest / "sub" / "big")
    assert part_files(src, dest) == []
    # nothing lost: every other file is at exactly one of the two places
    for rel in ("sub/plain", "top"):
        assert os.path.lexists(src / rel) != os.path.lexists(dest / rel), rel


@pytest.mark.root
@pytest.mark.loop
def test_xattr_failure_names_the_destination_path(loopfs: t.Callable[..., Path], tmp_path: Path) -> None:
    _src, dest, result = _xattr_too_big(loopfs, tmp_path)
    assert str(dest / "sub" / "big") in result["msg"], result["msg"]
