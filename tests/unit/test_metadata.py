# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_metadata.py (owner, mode, ns times, xattrs, ACLs).

Runs on the filesystem under tmp_path; tests that need user xattrs or POSIX
ACLs there skip, with the reason, when the filesystem lacks them.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import types

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _metadata
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError

ATIME_NS = 1_000_000_001_123_456_789
MTIME_NS = 1_234_567_890_987_654_321
OWNER = (1234, 5678)


def supports_user_xattrs(path) -> bool:
    probe = os.path.join(path, ".xattr-probe")
    with open(probe, "wb"):
        pass
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        os.unlink(probe)


def setfacl(*args):
    if shutil.which("setfacl") is None:
        pytest.skip("setfacl not installed (apt-get install acl)")
    proc = subprocess.run(["setfacl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("setfacl failed here (no ACL support?): %s" % proc.stderr.strip())


def getfacl(path) -> list[str]:
    out = subprocess.run(["getfacl", "--omit-header", "--numeric", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return sorted(line for line in out.splitlines() if line.strip())


def open_fd(path, flags=os.O_RDONLY):
    return os.open(path, flags | os.O_NOFOLLOW)


@pytest.fixture
def xattr_dir(tmp_path):
    if not supports_user_xattrs(tmp_path):
        pytest.skip("the filesystem under %s has no user xattrs" % tmp_path)
    return tmp_path


@pytest.mark.root
def test_apply_to_file_sets_everything(xattr_dir):
    src, dst = xattr_dir / "src", xattr_dir / "dst"
    src.write_bytes(b"content")
    dst.write_bytes(b"content")
    os.chmod(dst, 0o600)
    os.chown(src, *OWNER)
    os.chmod(src, 0o2750)                              # setgid: must survive the chown
    os.setxattr(src, "user.binary", b"\x00\xff\x01 value")
    os.setxattr(src, "user.empty", b"")
    setfacl("-m", "u:4321:r-x,g:8765:rw-", str(src))
    os.utime(src, ns=(ATIME_NS, MTIME_NS))
    src_st = os.lstat(src)

    sfd, dfd = open_fd(src), open_fd(dst, os.O_RDWR)
    try:
        xattrs = _metadata.read_xattrs(fd=sfd)
        names = [name for name, _v in xattrs]
        assert "user.binary" in names and "system.posix_acl_access" in names
        _metadata.apply(src_st, _metadata.PRESERVE_ALL, fd=dfd, xattrs=xattrs, path_for_errors=str(dst))
        assert _metadata.read_xattrs(fd=dfd) == xattrs
    finally:
        os.close(sfd)
        os.close(dfd)

    got = os.lstat(dst)
    assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(src_st.st_mode)
    assert got.st_mode & stat.S_ISGID
    assert (got.st_uid, got.st_gid) == OWNER
    assert (got.st_atime_ns, got.st_mtime_ns) == (ATIME_NS, MTIME_NS)
    assert os.getxattr(dst, "user.binary") == b"\x00\xff\x01 value"
    assert os.getxattr(dst, "user.empty") == b""
    assert getfacl(dst) == getfacl(src)
    assert "user:4321:r-x" in getfacl(dst)
    assert not _metadata.differs(src_st, got, _metadata.PRESERVE_ALL)


@pytest.mark.root
def test_apply_default_acl_to_directory(xattr_dir):
    src, dst = xattr_dir / "srcdir", xattr_dir / "dstdir"
    src.mkdir()
    dst.mkdir()
    setfacl("-d", "-m", "u:4321:rwx", str(src))
    sfd, dfd = open_fd(src, os.O_DIRECTORY), open_fd(dst, os.O_DIRECTORY)
    try:
        xattrs = _metadata.read_xattrs(fd=sfd)
        assert "system.posix_acl_default" in [n for n, _v in xattrs]
        _metadata.apply(os.lstat(src), _metadata.PRESERVE_ALL, fd=dfd, xattrs=xattrs)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert getfacl(dst) == getfacl(src)


@pytest.mark.root
def test_apply_to_symlink_sets_times_and_owner_not_the_target(tmp_path):
    (tmp_path / "target").write_bytes(b"t")
    os.utime(tmp_path / "target", ns=(5, 6))
    target_before = os.stat(tmp_path / "target")
    src = tmp_path / "srclink"
    src.symlink_to("target")
    os.chown(src, *OWNER, follow_symlinks=False)
    os.utime(src, ns=(ATIME_NS, MTIME_NS), follow_symlinks=False)
    dst = tmp_path / "dstlink"
    dst.symlink_to("target")
    src_st = os.lstat(src)

    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _metadata.apply(src_st, _metadata.PRESERVE_ALL, dir_fd=dir_fd, name="dstlink", xattrs=None)
    finally:
        os.close(dir_fd)
    got = os.lstat(dst)
    assert stat.S_ISLNK(got.st_mode)
    assert (got.st_uid, got.st_gid) == OWNER
    assert (got.st_atime_ns, got.st_mtime_ns) == (ATIME_NS, MTIME_NS)
    after = os.stat(tmp_path / "target")
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_atime_ns, after.st_mtime_ns) == \
        (target_before.st_uid, target_before.st_gid, target_before.st_mode,
         target_before.st_atime_ns, target_before.st_mtime_ns)


def test_read_xattrs_of_symlink_does_not_follow_it(xattr_dir):
    (xattr_dir / "target").write_bytes(b"t")
    os.setxattr(xattr_dir / "target", "user.target-only", b"x")
    (xattr_dir / "link").symlink_to("target")
    dir_fd = os.open(xattr_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        names = [n for n, _v in _metadata.read_xattrs(dir_fd=dir_fd, name="link")]
        assert "user.target-only" not in names
        assert [n for n, _v in _metadata.read_xattrs(dir_fd=dir_fd, name="target")] == ["user.target-only"]
    finally:
        os.close(dir_fd)


def test_apply_only_what_preserve_names(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"s")
    dst.write_bytes(b"d")
    os.chmod(src, 0o751)
    os.utime(src, ns=(ATIME_NS, MTIME_NS))
    os.chmod(dst, 0o600)
    before = os.lstat(dst)
    fd = open_fd(dst, os.O_RDWR)
    try:
        _metadata.apply(os.lstat(src), ("mode",), fd=fd)
    finally:
        os.close(fd)
    got = os.lstat(dst)
    assert stat.S_IMODE(got.st_mode) == 0o751
    assert got.st_mtime_ns == before.st_mtime_ns                # times not asked for

    fd = open_fd(dst, os.O_RDWR)
    try:
        _metadata.apply(os.lstat(src), ("times",), fd=fd)
    finally:
        os.close(fd)
    assert os.lstat(dst).st_mtime_ns == MTIME_NS


def test_apply_error_names_the_path(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    os.close(fd)                                      # a closed fd: every call fails with EBADF
    with pytest.raises(MoverError) as info:
        _metadata.apply(os.lstat(tmp_path / "f"), ("mode",), fd=fd, path_for_errors="/the/path")
    assert info.value.errno == errno.EBADF
    assert "/the/path" in str(info.value)


def fake(mode=0o644, uid=0, gid=0, mtime_ns=MTIME_NS, atime_ns=ATIME_NS):
    return types.SimpleNamespace(st_mode=stat.S_IFREG | mode, st_uid=uid, st_gid=gid,
                                 st_mtime_ns=mtime_ns, st_atime_ns=atime_ns)


def test_differs():
    base = fake()
    all_ = _metadata.PRESERVE_ALL
    assert not _metadata.differs(base, fake(), all_)
    assert _metadata.differs(base, fake(mode=0o600), all_)
    assert _metadata.differs(base, fake(mtime_ns=MTIME_NS + 1), all_)
    assert not _metadata.differs(base, fake(atime_ns=1), all_)        # atime alone does not count
    assert not _metadata.differs(base, fake(mode=0o600), ("times", "owner"))
    assert not _metadata.differs(base, fake(mtime_ns=1), ("mode",))
    assert not _metadata.differs(fake(mode=0o644), fake(mode=0o644 | stat.S_IFDIR), ("mode",))


def test_differs_owner_only_counts_for_root():
    base, other = fake(uid=1, gid=2), fake(uid=3, gid=2)
    assert _metadata.differs(base, other, ("owner",)) is (os.geteuid() == 0)


# -- the order: owner, xattrs, mode, times (issue #10, items 9 and 10) --------------------


def _capability(path):
    try:
        return os.getxattr(path, "security.capability")
    except OSError as exc:
        if exc.errno == getattr(errno, "ENODATA", None):
            return None
        raise


def setcap(spec, path):
    if shutil.which("setcap") is None:
        pytest.skip("setcap not installed (apt-get install libcap2-bin)")
    proc = subprocess.run(["setcap", spec, str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("setcap failed here (no security xattrs?): %s" % proc.stderr.strip())


@pytest.mark.root
def test_apply_keeps_file_capabilities_across_the_owner_change(tmp_path):
    """chown(2) clears security.capability: the xattrs must be written after it."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"an executable")
    dst.write_bytes(b"an executable")
    os.chown(src, *OWNER)
    os.chmod(src, 0o750)
    setcap("cap_net_raw=ep", src)          # after the chown, which would clear it
    want = _capability(src)
    assert want is not None
    sfd, dfd = open_fd(src), open_fd(dst, os.O_RDWR)
    try:
        xattrs = _metadata.read_xattrs(fd=sfd)
        assert "security.capability" in [name for name, _v in xattrs]
        _metadata.apply(os.lstat(src), _metadata.PRESERVE_ALL, fd=dfd, xattrs=xattrs, path_for_errors=str(dst))
    finally:
        os.close(sfd)
        os.close(dfd)
    got = os.lstat(dst)
    assert (got.st_uid, got.st_gid, stat.S_IMODE(got.st_mode)) == (*OWNER, 0o750)
    assert _capability(dst) == want


@pytest.mark.root
@pytest.mark.parametrize("preserve, owner, mode, cleared", [
    # owner not preserved: the copy stays root's, and a setuid-1234 file must not become setuid-root
    (("mode", "times"), (0, 0), 0o755, 0o7000),
    (_metadata.PRESERVE_ALL, OWNER, 0o7755, 0),
], ids=["owner-not-kept", "owner-kept"])
def test_apply_keeps_setid_and_sticky_bits_only_with_the_owner(tmp_path, preserve, owner, mode, cleared):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"x")
    dst.write_bytes(b"x")
    os.chown(src, *OWNER)
    os.chmod(src, 0o7755)
    fd = open_fd(dst, os.O_RDWR)
    try:
        left_out = _metadata.apply(os.lstat(src), preserve, fd=fd)
    finally:
        os.close(fd)
    got = os.lstat(dst)
    assert ((got.st_uid, got.st_gid), stat.S_IMODE(got.st_mode)) == (owner, mode)
    assert left_out == cleared
    assert not _metadata.differs(os.lstat(src), got, preserve)


def test_differs_expects_no_setid_bits_on_a_copy_of_another_owner():
    """A copy whose set-id bits were cleared for want of the owner is as it should be."""
    src = fake(mode=0o4755, uid=0, gid=0)
    cleared = fake(mode=0o755, uid=65534, gid=65534)
    assert not _metadata.differs(src, cleared, ("mode", "times"))
    assert _metadata.differs(src, fake(mode=0o4755, uid=65534, gid=65534), ("mode", "times"))
    assert not _metadata.differs(src, fake(mode=0o4755, uid=0, gid=0), ("mode", "times"))
