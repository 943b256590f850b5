# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""powerfs proves its durability model before the crash suite trusts it.

Each test writes through the real kernel (open/write/fsync/rename on a FUSE
mount), cuts the power, and looks at what is left: what was not fsynced must
be gone, what was fsynced (file *and* directory) must be there. SQLite in WAL
mode runs on it unchanged. Most tests share one module-wide pair of mounts,
``reset`` between tests (which is itself under test: the crash suite resets
instead of remounting).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import crashlib
import powerfs_harness
from powerfs_harness import PowerRig, bench, powerfs_unavailable, small_workload

pytestmark = [pytest.mark.root]

LIBC = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

powerfs_rig = powerfs_harness.powerfs_rig      # the fixture, under its name


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def shared_rig(tmp_path_factory):
    """Two mounts ('a', 'b') for the whole module."""
    reason = powerfs_unavailable()
    if reason:
        pytest.skip(reason)
    rig = PowerRig(tmp_path_factory.mktemp('powerfs'), ('a', 'b'))
    yield rig
    rig.close()


@pytest.fixture
def rig(shared_rig):
    """The shared mounts, emptied (``reset``) before each test."""
    shared_rig.reset_all()
    for mount in shared_rig:
        mount.command('stats-reset')
    return shared_rig


def write(path: Path, data: bytes, sync: str | None = None) -> None:
    """Write ``data`` to ``path``; ``sync``: None, 'fsync' or 'fdatasync'."""
    with open(path, 'wb') as handle:
        handle.write(data)
        handle.flush()
        if sync == 'fsync':
            os.fsync(handle.fileno())
        elif sync == 'fdatasync':
            os.fdatasync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def listing(root: Path) -> dict:
    """rel path -> bytes (files), '->target' (symlinks), '/' (dirs), 'fifo'."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                found[rel] = '->' + os.readlink(path)
            elif stat.S_ISDIR(mode):
                found[rel] = '/'
            elif stat.S_ISREG(mode):
                found[rel] = path.read_bytes()
            else:
                found[rel] = stat.filemode(mode)[0]
    return found


def renameat2(old: Path, new: Path, flags: int) -> None:
    if LIBC.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(new))


# --------------------------------------------------------------------------
# File data
# --------------------------------------------------------------------------

def test_new_file_without_any_fsync_is_gone(rig):
    write(rig['a'] / 'f', b'data')
    assert (rig['a'] / 'f').read_bytes() == b'data'      # visible before the cut
    report = rig.mounts['a'].cut()
    assert not (rig['a'] / 'f').exists()
    assert report['dropped']['inodes_gone'] == 1


def test_new_file_with_only_its_directory_fsynced_is_empty(rig):
    write(rig['a'] / 'f', b'data')
    fsync_dir(rig['a'])
    rig.mounts['a'].cut()
    assert (rig['a'] / 'f').read_bytes() == b''


def test_overwrite_without_fsync_reverts_to_the_durable_content(rig):
    write(rig['a'] / 'f', b'old contents')
    rig.sync_all()
    write(rig['a'] / 'f', b'NEW')                      # O_TRUNC + write, no fsync
    with open(rig['a'] / 'f', 'ab') as handle:
        handle.write(b' appended')
    assert (rig['a'] / 'f').read_bytes() == b'NEW appended'
    rig.mounts['a'].cut()
    assert (rig['a'] / 'f').read_bytes() == b'old contents'


@pytest.mark.parametrize('sync', ['fsync', 'fdatasync'])
def test_fsynced_file_in_an_unsynced_directory_is_gone(rig, sync):
    write(rig['a'] / 'f', b'data', sync=sync)
    dirty = rig.mounts['a'].dirty()
    assert (dirty['data'], dirty['dir_entries']) == ([], ['/'])
    rig.mounts['a'].cut()
    assert not (rig['a'] / 'f').exists()


@pytest.mark.parametrize('sync', ['fsync', 'fdatasync'])
def test_fsynced_file_and_fsynced_directory_survive(rig, sync):
    (rig['a'] / 'd').mkdir()
    fsync_dir(rig['a'])
    write(rig['a'] / 'd' / 'f', b'x' * 100_000, sync=sync)
    fsync_dir(rig['a'] / 'd')
    assert rig.mounts['a'].dirty()['data'] == []
    rig.mounts['a'].cut()
    assert (rig['a'] / 'd' / 'f').read_bytes() == b'x' * 100_000


def test_only_the_fsynced_prefix_of_a_file_survives(rig):
    path = rig['a'] / 'f'
    with open(path, 'wb') as handle:
        handle.write(b'first ')
        handle.flush()
        os.fdatasync(handle.fileno())
        handle.write(b'second')
        handle.flush()
    fsync_dir(rig['a'])
    rig.mounts['a'].cut()
    assert path.read_bytes() == b'first '


def test_fdatasync_keeps_data_but_not_metadata_fsync_keeps_both(rig):
    for name in ('datasync', 'fullsync'):
        write(rig['a'] / name, b'v1')
    rig.sync_all()
    for name, sync in (('datasync', os.fdatasync), ('fullsync', os.fsync)):
        path = rig['a'] / name
        with open(path, 'r+b') as handle:
            handle.write(b'v2')
            handle.flush()
            os.chmod(path, 0o600)
            os.setxattr(path, 'user.k', b'v')
            os.utime(path, ns=(1_000_000_000, 2_000_000_000))
            sync(handle.fileno())
    rig.mounts['a'].cut()
    data_only = rig['a'] / 'datasync'
    assert data_only.read_bytes() == b'v2'
    assert stat.S_IMODE(data_only.stat().st_mode) == 0o644
    assert os.listxattr(data_only) == []
    full = rig['a'] / 'fullsync'
    assert full.read_bytes() == b'v2'
    assert stat.S_IMODE(full.stat().st_mode) == 0o600
    assert os.getxattr(full, 'user.k') == b'v'
    assert full.stat().st_mtime_ns == 2_000_000_000


def test_o_sync_writes_are_durable(rig):
    fsync_dir(rig['a'])
    fd = os.open(rig['a'] / 'f', os.O_WRONLY | os.O_CREAT | os.O_SYNC, 0o644)
    try:
        fsync_dir(rig['a'])
        os.write(fd, b'synchronous')
    finally:
        os.close(fd)
    rig.mounts['a'].cut()
    assert (rig['a'] / 'f').read_bytes() == b'synchronous'


def test_sync_and_syncfs_make_nothing_durable(rig):
    write(rig['a'] / 'f', b'data')
    os.sync()
    fd = os.open(rig['a'], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert LIBC.syncfs(fd) == 0
    finally:
        os.close(fd)
    stats = rig.mounts['a'].stats()
    assert 'fsync' not in stats['ops'] and 'fsyncdir' not in stats['ops']
    rig.mounts['a'].cut()
    assert not (rig['a'] / 'f').exists()


def test_mmap_writes_are_volatile_until_fsync(rig):
    path = rig['a'] / 'f'
    write(path, b'a' * 8192)
    rig.sync_all()
    with open(path, 'r+b') as handle:
        mapped = mmap.mmap(handle.fileno(), 8192)
        mapped[:4] = b'BBBB'
        mapped.close()
    assert path.read_bytes()[:4] == b'BBBB'
    rig.mounts['a'].cut()
    assert path.read_bytes() == b'a' * 8192
    with open(path, 'r+b') as handle:
        mapped = mmap.mmap(handle.fileno(), 8192)
        mapped[:4] = b'CCCC'
        mapped.flush()                  # msync(MS_SYNC) alone: not durable
        mapped.close()
        os.fsync(handle.fileno())       # this is
    rig.mounts['a'].cut()
    assert path.read_bytes()[:4] == b'CCCC'


def test_the_page_cache_does_not_hide_a_cut(rig):
    """A file opened after the cut reads the durable state, even if its pages were cached."""
    path = rig['a'] / 'f'
    write(path, b'durable!')
    rig.sync_all()
    with open(path, 'r+b', buffering=0) as before:
        before.write(b'VOLATILE')
        # no writeback cache: the write reached powerfs before write(2) returned
        assert rig.mounts['a'].dirty()['data'] == ['/f']
        before.seek(0)
        assert before.read() == b'VOLATILE'            # now in the page cache
        rig.mounts['a'].cut()
        with open(path, 'rb', buffering=0) as after:
            assert after.read() == b'durable!'
        assert os.stat(path).st_size == 8
        with pytest.raises(OSError) as raised:         # the old handle is stale
            os.fsync(before.fileno())
        assert raised.value.errno == errno.EIO


def test_direct_io_mount(powerfs_rig):
    """--direct-io: no page cache at all; the model is the same."""
    rig = powerfs_rig('d', direct_io=True)
    write(rig['d'] / 'f', b'durable', sync='fsync')
    fsync_dir(rig['d'])
    with open(rig['d'] / 'f', 'r+b', buffering=0) as handle:
        handle.write(b'VOLATILE')
    rig.mounts['d'].cut()
    assert (rig['d'] / 'f').read_bytes() == b'durable'


def test_stale_handles_fail_with_eio(rig):
    write(rig['a'] / 'f', b'data')
    rig.sync_all()
    fd = os.open(rig['a'] / 'f', os.O_RDWR)
    dir_fd = os.open(rig['a'], os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert rig.mounts['a'].cut()['stale_handles'] == 2
        for call in (lambda: os.pwrite(fd, b'x', 0), lambda: os.fsync(fd),
                     lambda: os.ftruncate(fd, 0), lambda: os.fsync(dir_fd)):
            with pytest.raises(OSError) as raised:
                call()
            assert raised.value.errno == errno.EIO
    finally:
        os.close(fd)
        os.close(dir_fd)
    assert (rig['a'] / 'f').read_bytes() == b'data'


# --------------------------------------------------------------------------
# Directory entries
# --------------------------------------------------------------------------

def test_rename_without_directory_fsync_reverts(rig):
    write(rig['a'] / 'old', b'data', sync='fsync')
    write(rig['a'] / 'victim', b'replaced', sync='fsync')
    fsync_dir(rig['a'])
    os.rename(rig['a'] / 'old', rig['a'] / 'new')
    os.rename(rig['a'] / 'new', rig['a'] / 'victim')
    rig.mounts['a'].cut()
    assert listing(rig['a']) == {'old': b'data', 'victim': b'replaced'}
    os.rename(rig['a'] / 'old', rig['a'] / 'victim')
    fsync_dir(rig['a'])
    rig.mounts['a'].cut()
    assert listing(rig['a']) == {'victim': b'data'}


@pytest.mark.parametrize('synced, expected', [
    ((), {'src/f': b'data'}),                          # neither: the old name
    (('dst',), {'src/f': b'data', 'dst/f': b'data'}),  # target only: both names
    (('src',), {}),                                    # source only: LOST
    (('dst', 'src'), {'dst/f': b'data'}),              # both: the new name
])
def test_rename_across_directories_halves_are_independent(rig, synced, expected):
    for name in ('src', 'dst'):
        (rig['a'] / name).mkdir()
    write(rig['a'] / 'src' / 'f', b'data')
    rig.sync_all()
    os.rename(rig['a'] / 'src' / 'f', rig['a'] / 'dst' / 'f')
    for name in synced:
        fsync_dir(rig['a'] / name)
    rig.mounts['a'].cut()
    files = {rel: data for rel, data in listing(rig['a']).items() if data != '/'}
    assert files == expected
    if len(expected) == 2:      # one inode under two names
        assert (rig['a'] / 'src' / 'f').stat().st_ino == (rig['a'] / 'dst' / 'f').stat().st_ino
        assert (rig['a'] / 'src' / 'f').stat().st_nlink == 2


def test_a_directory_reachable_twice_after_a_cut_is_kept_once(rig):
    for name in ('p', 'q', 'p/d'):
        (rig['a'] / name).mkdir()
    write(rig['a'] / 'p' / 'd' / 'f', b'data')
    rig.sync_all()
    os.rename(rig['a'] / 'p' / 'd', rig['a'] / 'q' / 'd')
    fsync_dir(rig['a'] / 'q')
    report = rig.mounts['a'].cut()
    assert report['fsck'] and '/q/d' in report['fsck'][0]
    assert listing(rig['a']) == {'p': '/', 'q': '/', 'p/d': '/', 'p/d/f': b'data'}


def test_unlink_without_directory_fsync_is_undone(rig):
    write(rig['a'] / 'f', b'data')
    rig.sync_all()
    os.unlink(rig['a'] / 'f')
    assert not (rig['a'] / 'f').exists()
    rig.mounts['a'].cut()
    assert (rig['a'] / 'f').read_bytes() == b'data'
    os.unlink(rig['a'] / 'f')
    fsync_dir(rig['a'])
    rig.mounts['a'].cut()
    assert not (rig['a'] / 'f').exists()


def test_mkdir_rmdir_symlink_link_mknod_need_a_directory_fsync(rig):
    root = rig['a']
    write(root / 'f', b'data')
    (root / 'gone').mkdir()
    rig.sync_all()

    def make_names():
        (root / 'd').mkdir()
        (root / 'l').symlink_to('f')
        os.link(root / 'f', root / 'h')
        os.mkfifo(root / 'fifo')
        (root / 'gone').rmdir()

    make_names()
    rig.mounts['a'].cut()
    assert listing(root) == {'f': b'data', 'gone': '/'}
    make_names()
    fsync_dir(root)
    rig.mounts['a'].cut()
    assert listing(root) == {'f': b'data', 'd': '/', 'l': '->f', 'h': b'data', 'fifo': 'p'}
    assert (root / 'f').stat().st_ino == (root / 'h').stat().st_ino
    assert (root / 'f').stat().st_nlink == 2
    assert stat.S_ISFIFO((root / 'fifo').lstat().st_mode)


def test_symlink_metadata_is_durable_with_its_directory(rig):
    """No syscall can fsync a symlink: its owner and times go with its directory."""
    root = rig['a']
    (root / 'l').symlink_to('target')
    fsync_dir(root)
    os.lchown(root / 'l', 65534, 65534)
    os.utime(root / 'l', ns=(5, 6), follow_symlinks=False)
    rig.mounts['a'].cut()
    st = (root / 'l').lstat()
    assert st.st_uid == 0 and st.st_mtime_ns != 6
    os.lchown(root / 'l', 65534, 65534)
    os.utime(root / 'l', ns=(5, 6), follow_symlinks=False)
    fsync_dir(root)
    rig.mounts['a'].cut()
    st = (root / 'l').lstat()
    assert (st.st_uid, st.st_mtime_ns) == (65534, 6)


def test_a_new_directory_needs_its_parent_fsynced_and_its_entries_its_own(rig):
    root = rig['a']
    (root / 'd').mkdir()
    write(root / 'd' / 'f', b'data', sync='fsync')
    fsync_dir(root / 'd')               # d's entries durable, but d itself is not
    rig.mounts['a'].cut()
    assert listing(root) == {}
    (root / 'd').mkdir()
    write(root / 'd' / 'f', b'data', sync='fsync')
    fsync_dir(root)                     # d durable, its entry f is not
    rig.mounts['a'].cut()
    assert listing(root) == {'d': '/'}


# --------------------------------------------------------------------------
# Every op the mover and SQLite use
# --------------------------------------------------------------------------

def test_metadata_ops(rig):
    root = rig['a']
    path = root / 'f'
    write(path, b'0123456789')
    os.chmod(path, 0o4751)
    assert stat.S_IMODE(path.stat().st_mode) == 0o4751
    os.chown(path, 65534, 65534)
    assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    os.utime(path, ns=(1_111_111_111_222_333_444, 1_222_222_222_333_444_555))
    assert path.stat().st_atime_ns == 1_111_111_111_222_333_444
    assert path.stat().st_mtime_ns == 1_222_222_222_333_444_555
    # UTIME_OMIT: change the mtime only
    LIBC.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    times = (ctypes.c_long * 4)(0, (1 << 30) - 2, 5, 6)
    assert LIBC.utimensat(AT_FDCWD, os.fsencode(path), times, 0) == 0
    assert path.stat().st_atime_ns == 1_111_111_111_222_333_444
    assert path.stat().st_mtime_ns == 5_000_000_006
    (root / 'l').symlink_to('f')
    os.utime(root / 'l', ns=(7, 8), follow_symlinks=False)
    assert (root / 'l').lstat().st_mtime_ns == 8
    os.chmod(path, 0o644)
    with open(path, 'r+b') as handle:   # fchmod, fchown, futimens on an fd
        os.fchmod(handle.fileno(), 0o640)
        os.fchown(handle.fileno(), 0, 0)
        os.utime(handle.fileno(), ns=(3, 4))
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o640, 0, 4)
    # xattrs
    os.setxattr(path, 'user.a', b'1')
    os.setxattr(path, 'user.b', b'')
    assert sorted(os.listxattr(path)) == ['user.a', 'user.b']
    assert os.getxattr(path, 'user.a') == b'1'
    with pytest.raises(OSError) as raised:
        os.setxattr(path, 'user.a', b'2', os.XATTR_CREATE)
    assert raised.value.errno == errno.EEXIST
    with pytest.raises(OSError) as raised:
        os.setxattr(path, 'user.zz', b'2', os.XATTR_REPLACE)
    assert raised.value.errno == errno.ENODATA
    os.removexattr(path, 'user.a')
    with pytest.raises(OSError) as raised:
        os.getxattr(path, 'user.a')
    assert raised.value.errno == errno.ENODATA
    # statfs, access, truncate, fallocate, O_APPEND, readlink
    vfs = os.statvfs(root)
    assert vfs.f_bavail > 0 and vfs.f_namemax == 255
    assert os.access(path, os.R_OK | os.W_OK)
    os.truncate(path, 4)
    assert path.read_bytes() == b'0123'
    with open(path, 'r+b') as handle:
        os.posix_fallocate(handle.fileno(), 0, 8)
    assert path.read_bytes() == b'0123\0\0\0\0'
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b'END')
    os.pwrite(fd, b'!', 0)               # Linux: pwrite on O_APPEND appends
    os.close(fd)
    assert path.read_bytes() == b'0123\0\0\0\0END!'
    assert os.readlink(root / 'l') == 'f'
    # O_EXCL on an existing name
    with pytest.raises(FileExistsError):
        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_setgid_directory_and_permissions_as_nobody(powerfs_rig):
    root = powerfs_rig('a', public=True)['a']
    (root / 'shared').mkdir()
    os.chown(root / 'shared', 0, 100)
    os.chmod(root / 'shared', 0o2775)
    (root / 'shared' / 'sub').mkdir()
    write(root / 'shared' / 'f', b'')
    assert (root / 'shared' / 'f').stat().st_gid == 100
    assert (root / 'shared' / 'sub').stat().st_mode & stat.S_ISGID
    (root / 'private').mkdir(mode=0o700)
    probe = subprocess.run(
        ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--',
         sys.executable, '-c', 'import os, sys; os.listdir(sys.argv[1])', str(root / 'private')],
        capture_output=True, text=True, check=False)
    assert probe.returncode != 0 and 'PermissionError' in probe.stderr
    probe = subprocess.run(
        ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--',
         sys.executable, '-c', 'import os, sys; os.listdir(sys.argv[1])', str(root)],
        capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stderr       # allow_other: nobody can use the mount
    (root / 'open').mkdir()
    os.chmod(root / 'open', 0o1777)
    probe = subprocess.run(
        ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', '--',
         sys.executable, '-c', 'import sys; open(sys.argv[1], "w").close()', str(root / 'open' / 'mine')],
        capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stderr
    assert ((root / 'open' / 'mine').stat().st_uid, (root / 'open' / 'mine').stat().st_gid) == (65534, 65534)


def test_unlinked_open_file_keeps_working_and_leaves_no_hidden_name(rig):
    path = rig['a'] / 'f'
    write(path, b'data')
    rig.sync_all()
    with open(path, 'r+b', buffering=0) as handle, open(path, 'rb') as reader:
        os.unlink(path)
        assert os.listdir(rig['a']) == []               # no .fuse_hidden* in sight
        handle.write(b'more')
        os.ftruncate(handle.fileno(), 2)
        os.fchmod(handle.fileno(), 0o600)
        os.utime(handle.fileno(), ns=(1, 2))
        os.setxattr(handle.fileno(), 'user.k', b'v')
        os.fsync(handle.fileno())
        st = os.fstat(handle.fileno())
        assert (st.st_size, st.st_nlink, stat.S_IMODE(st.st_mode)) == (2, 0, 0o600)
        assert reader.read() == b'mo'
        write(path, b'a new file under the old name')
        assert os.fstat(reader.fileno()).st_ino != path.stat().st_ino
    assert os.listdir(rig['a']) == ['f']
    assert path.read_bytes() == b'a new file under the old name'
    rig.mounts['a'].cut()       # the unlink was not durable: the old file is back, as fsynced
    assert path.read_bytes() == b'mo'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rename_over_an_open_file(rig):
    root = rig['a']
    write(root / 'target', b'old')
    write(root / 'new', b'new')
    with open(root / 'target', 'rb') as reader:
        with pytest.raises(FileExistsError):
            renameat2(root / 'new', root / 'target', RENAME_NOREPLACE)
        assert sorted(os.listdir(root)) == ['new', 'target']
        assert (root / 'target').read_bytes() == b'old'
        os.rename(root / 'new', root / 'target')
        assert os.listdir(root) == ['target']
        assert (root / 'target').read_bytes() == b'new'
        assert reader.read() == b'old'
        assert os.fstat(reader.fileno()).st_nlink == 0
    assert os.listdir(root) == ['target']


def test_rename_noreplace_and_exchange(rig):
    root = rig['a']
    write(root / 'x', b'x')
    write(root / 'y', b'y')
    with pytest.raises(FileExistsError):
        renameat2(root / 'x', root / 'y', RENAME_NOREPLACE)
    renameat2(root / 'x', root / 'z', RENAME_NOREPLACE)
    renameat2(root / 'z', root / 'y', RENAME_EXCHANGE)
    assert listing(root) == {'z': b'y', 'y': b'x'}
    with pytest.raises(OSError) as raised:
        renameat2(root / 'z', root / 'y', RENAME_NOREPLACE | RENAME_EXCHANGE)
    assert raised.value.errno == errno.EINVAL


def test_rename_errors_match_posix(rig):
    root = rig['a']
    (root / 'd').mkdir()
    (root / 'e').mkdir()
    write(root / 'e' / 'f', b'')
    write(root / 'g', b'')
    cases = [
        (root / 'd', root / 'd' / 'sub', errno.EINVAL),
        (root / 'd', root / 'e', errno.ENOTEMPTY),
        (root / 'g', root / 'd', errno.EISDIR),
        (root / 'd', root / 'g', errno.ENOTDIR),
        (root / 'nope', root / 'x', errno.ENOENT),
    ]
    for old, new, code in cases:
        with pytest.raises(OSError) as raised:
            os.rename(old, new)
        assert raised.value.errno == code, (old, new)
    os.link(root / 'g', root / 'h')
    os.rename(root / 'g', root / 'h')                    # same inode: nothing happens
    assert sorted(os.listdir(root)) == ['d', 'e', 'g', 'h']


def test_posix_and_bsd_locks_conflict_between_processes(rig):
    """No lock op: the kernel keeps the locks, with real conflicts (not "grant all")."""
    path = rig['a'] / 'lockfile'
    write(path, b'')
    child = textwrap.dedent('''
        import fcntl, sys
        with open(sys.argv[1], "r+b") as handle:
            for what, call in (("fcntl", lambda: fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                               ("flock", lambda: fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB))):
                try:
                    call()
                    print(what, "granted")
                except OSError as exc:
                    print(what, "refused", exc.errno)
    ''')
    with open(path, 'r+b') as posix_holder, open(path, 'r+b') as bsd_holder:
        fcntl.lockf(posix_holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(bsd_holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = subprocess.run([sys.executable, '-c', child, str(path)], capture_output=True,
                              text=True, check=True).stdout.split('\n')
    assert held[0].startswith('fcntl refused') and held[1].startswith('flock refused'), held
    free = subprocess.run([sys.executable, '-c', child, str(path)], capture_output=True,
                          text=True, check=True).stdout.split('\n')
    assert free[:2] == ['fcntl granted', 'flock granted'], free


def test_two_mounts_are_two_devices(rig):
    dev_a, dev_b = (os.stat(rig[name]).st_dev for name in ('a', 'b'))
    assert dev_a != dev_b
    assert dev_a == rig.mounts['a'].st_dev
    write(rig['a'] / 'f', b'data')
    with pytest.raises(OSError) as raised:
        os.rename(rig['a'] / 'f', rig['b'] / 'f')
    assert raised.value.errno == errno.EXDEV
    with pytest.raises(OSError) as raised:
        os.link(rig['a'] / 'f', rig['b'] / 'f')
    assert raised.value.errno == errno.EXDEV


def test_cut_of_one_mount_leaves_the_other_alone(rig):
    write(rig['a'] / 'f', b'a')
    write(rig['b'] / 'f', b'b')
    rig.mounts['a'].cut()
    assert not (rig['a'] / 'f').exists()
    assert (rig['b'] / 'f').read_bytes() == b'b'


# --------------------------------------------------------------------------
# SQLite, WAL mode, on the mount
# --------------------------------------------------------------------------

SQLITE_CHILD = textwrap.dedent('''
    import os, signal, sqlite3, sys
    path, synchronous = sys.argv[1], sys.argv[2]
    start, committed, checkpoint_at = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    conn.execute("PRAGMA synchronous=" + synchronous)
    conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY, payload BLOB)")
    for n in range(start, start + committed):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, os.urandom(3000)))
        conn.execute("COMMIT")
        if n == checkpoint_at:
            assert conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    conn.execute("BEGIN IMMEDIATE")
    for n in range(start + committed, start + committed + 50):
        conn.execute("INSERT INTO t VALUES (?, ?)", (n, b"uncommitted"))
    sys.stdout.write("killing\\n")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
''')


def sqlite_crash(db: Path, synchronous: str, committed: int, checkpoint_at: int = -1,
                 start: int = 0) -> None:
    """A child commits rows start.. start+committed-1, opens a transaction, and is killed."""
    proc = subprocess.run([sys.executable, '-c', SQLITE_CHILD, str(db), synchronous,
                           str(start), str(committed), str(checkpoint_at)],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == -signal.SIGKILL and proc.stdout == 'killing\n', proc.stderr


def sqlite_rows(db: Path) -> list:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        return [n for (n,) in conn.execute('SELECT n FROM t ORDER BY n')]
    finally:
        conn.close()


@pytest.mark.parametrize('checkpoint_at', [-1, 20], ids=['wal-only', 'after-checkpoint'])
def test_sqlite_wal_full_commits_survive_a_cut_uncommitted_do_not(rig, checkpoint_at):
    db = rig['a'] / 'journal.sqlite'
    sqlite_crash(db, 'FULL', committed=40, checkpoint_at=checkpoint_at)
    ops = rig.mounts['a'].stats()['ops']
    assert ops.get('fsync', 0) > 0 and ops.get('fsyncdir', 0) > 0, ops
    assert 'lock' not in ops            # the kernel kept SQLite's locks
    rig.mounts['a'].cut()
    assert sqlite_rows(db) == list(range(40))


def test_sqlite_without_fsync_loses_commits(rig):
    """The converse: synchronous=OFF commits are not durable, and the cut shows it."""
    db = rig['a'] / 'journal.sqlite'
    sqlite_crash(db, 'FULL', committed=5)
    sqlite_crash(db, 'OFF', committed=40, start=5)
    rig.mounts['a'].cut()
    assert sqlite_rows(db) == list(range(5))
    sqlite_crash(db, 'FULL', committed=3, start=5)      # and FULL again keeps them
    rig.mounts['a'].cut()
    assert sqlite_rows(db) == list(range(8))


# --------------------------------------------------------------------------
# The real mover on powerfs
# --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def mover_rig(tmp_path_factory):
    """src, dest and state mounts holding crashlib's tree, saved as 'base'."""
    reason = powerfs_unavailable()
    if reason:
        pytest.skip(reason)
    rig = PowerRig(tmp_path_factory.mktemp('powerfs-mover'), ('src', 'dest', 'state'))
    crashlib.build_tree(rig['src'])
    rig.sync_all()
    rig.save_all('base')
    yield rig, crashlib.snapshot(rig['src'])
    rig.close()


def test_the_mover_runs_on_powerfs_and_its_result_survives_a_cut(mover_rig):
    """Every op the core uses works; a finished move is durable, every byte of it."""
    rig, original = mover_rig
    rig.restore_all('base')
    values = crashlib.params(rig['src'], rig['dest'] / 'out', rig['state'])
    proc = crashlib.run_core(values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert crashlib.check_final(original, rig['src'], rig['dest'] / 'out', rig['state']) == []
    rig.cut_all()
    assert crashlib.check_final(original, rig['src'], rig['dest'] / 'out', rig['state']) == []


@pytest.mark.parametrize('variant, lost', [
    ('', False),
    ('no_dest_dir_fsync', True),
    ('no_part_fdatasync', True),
])
def test_a_cut_catches_a_broken_fsync_chain(mover_rig, variant, lost):
    """Killed after the sources are gone, then a power cut: only a broken chain loses files."""
    rig, original = mover_rig
    rig.restore_all('base')
    values = crashlib.params(rig['src'], rig['dest'] / 'out', rig['state'])
    faults = 'kill=after_journal_done' + (',broken=' + variant if variant else '')
    proc = crashlib.run_core(values, faults=faults)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    rig.cut_all()
    problems = crashlib.check_invariant(original, rig['src'], rig['dest'] / 'out', rig['state'])
    assert any('LOST' in problem for problem in problems) == lost, problems


# --------------------------------------------------------------------------
# Control interface and harness
# --------------------------------------------------------------------------

def test_save_restore_reset(rig):
    mount = rig.mounts['a']
    (rig['a'] / 'd').mkdir()
    write(rig['a'] / 'd' / 'f', b'base')
    os.link(rig['a'] / 'd' / 'f', rig['a'] / 'hard')
    rig.sync_all()
    mount.save('base')
    write(rig['a'] / 'unsynced', b'x')
    mount.save('base-again')          # the durable state only: 'unsynced' is not in it
    for _round in range(3):
        write(rig['a'] / 'd' / 'f', b'changed', sync='fsync')
        (rig['a'] / 'd' / 'new').mkdir()
        fsync_dir(rig['a'] / 'd')
        mount.restore('base')
        assert listing(rig['a']) == {'d': '/', 'd/f': b'base', 'hard': b'base'}
        assert (rig['a'] / 'hard').stat().st_nlink == 2
        # restored state is durable: a cut changes nothing
        mount.cut()
        assert listing(rig['a']) == {'d': '/', 'd/f': b'base', 'hard': b'base'}
    inodes = {rel: (rig['a'] / rel).stat().st_ino for rel in ('d', 'd/f')}
    for _round in range(2):             # the same inode numbers after every restore
        mount.restore('base')
        write(rig['a'] / 'new', b'')
        assert (rig['a'] / 'new').stat().st_ino == (rig['a'] / 'hard').stat().st_ino + 1
        assert {rel: (rig['a'] / rel).stat().st_ino for rel in ('d', 'd/f')} == inodes
    mount.restore('base-again')
    assert 'unsynced' not in listing(rig['a'])
    mount.reset()
    assert listing(rig['a']) == {}
    with pytest.raises(RuntimeError, match='no snapshot named'):
        mount.restore('nope')
    assert mount.command('drop base')['dropped'] is True


def test_oplog_records_requests_in_order(rig):
    mount = rig.mounts['a']
    mount.log_on()
    write(rig['a'] / '.f.part', b'data', sync='fdatasync')
    os.rename(rig['a'] / '.f.part', rig['a'] / 'f')
    fsync_dir(rig['a'])
    entries = [entry[:2] for entry in mount.oplog()]
    mount.log_off()
    assert entries == [['create', '/.f.part'], ['write', '/.f.part'], ['fdatasync', '/.f.part'],
                       ['rename', '/.f.part'], ['fsyncdir', '/']]


def test_run_then_cut_cuts_even_when_the_callable_fails(rig):
    def boom():
        write(rig['a'] / 'f', b'x')
        write(rig['b'] / 'f', b'x')
        raise ValueError('boom')

    with pytest.raises(ValueError):
        rig.run_then_cut(boom)
    assert not (rig['a'] / 'f').exists() and not (rig['b'] / 'f').exists()
    result, reports = rig.run_then_cut(small_workload, rig['a'])
    assert result is None and set(reports) == {'a', 'b'}
    assert sorted(os.listdir(rig['a'])) == ['f0', 'f1', 'f2', 'f3', 'f4']


def test_mounts_are_private_and_torn_down(powerfs_rig, tmp_path):
    rig = powerfs_rig('x')
    mountpoint = str(rig['x'])
    pid = rig.mounts['x'].pid
    with open('/proc/1/mountinfo', encoding='utf-8') as handle:
        assert mountpoint not in handle.read()           # invisible outside our namespace
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        assert mountpoint in handle.read()
    busy = os.open(rig['x'] / 'busy', os.O_WRONLY | os.O_CREAT)
    start = time.monotonic()
    rig.close()                                          # busy: still unmounted (lazily)
    assert time.monotonic() - start < 3
    with pytest.raises(OSError) as raised:               # the connection was aborted
        os.write(busy, b'x')
    assert raised.value.errno == errno.ENOTCONN
    with pytest.raises(OSError):                         # close's flush: ENOTCONN too
        os.close(busy)
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        assert mountpoint not in handle.read()
    assert not os.path.exists('/proc/%d' % pid) or open(  # noqa: SIM115
        '/proc/%d/stat' % pid, encoding='utf-8').read().split()[2] == 'Z'


def test_timing_of_a_crash_point(powerfs_rig, capsys):
    """Mount + small workload + cut + unmount, and the cheaper restore cycle."""
    timings = bench(rounds=5)
    with capsys.disabled():
        print('\npowerfs timings (median ms): %s' % timings)
    assert timings['restore_cycle_ms'] < 200
    assert timings['full_cycle_ms'] < 3000
