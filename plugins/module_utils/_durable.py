# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Durable file operations: one function for each step of the fsync chain.

PRIVATE to the durable.mover collection; not a public API.

Every path here is a name relative to an open directory file descriptor, and
no call follows a symbolic link, so a link swapped into the tree can never
redirect a read, a write or an unlink outside the roots.

The chain for one file moved across devices, in the only safe order:

1. ``create_part``      -- the temporary ``.part`` beside the destination
2. ``sync_data``        -- the part's bytes are on disk
3. ``rename_into_place``-- requires 2; the final name now points at them
4. ``sync_dest_dir``    -- requires 3; the final name itself is on disk
5. (journal commit)     -- requires 4; see _journal.Journal.commit
6. ``unlink_source``    -- requires 5; the only step that destroys data
7. ``sync_dir``(src)    -- requires 6; the removal is on disk

Where syncfs_supported, a batch takes steps 4 and 7 for all its directories
on one filesystem at once: ``sync_batch_dirs`` (a DirsFlush), one syncfs.

A failed fsync is never retried: after a failed fsync the kernel may have
dropped the dirty pages, so a second fsync can succeed without the data
being on disk. The caller treats the file as failed and copies it again.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import sys
import threading

from ansible_collections.durable.mover.plugins.module_utils._errors import (
    MoverError,
    os_error,
)
from ansible_collections.durable.mover.plugins.module_utils import _faults

O_CLOEXEC = getattr(os, 'O_CLOEXEC', 0)
O_NOFOLLOW = getattr(os, 'O_NOFOLLOW', 0)
O_DIRECTORY = getattr(os, 'O_DIRECTORY', 0)
O_NOATIME = getattr(os, 'O_NOATIME', 0)
DIR_FLAGS = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
_fdatasync = getattr(os, 'fdatasync', os.fsync)


def open_dir_at(parent_fd, name, path_for_errors=None):
    """Open directory `name` in `parent_fd`, refusing symbolic links."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise MoverError('not a directory (a symbolic link or file is in the way)',
                             path_for_errors or name, exc.errno)
        raise os_error(exc, 'cannot open directory', path_for_errors or name)


def open_root(path, create=False, mode=0o755):
    """Open a root directory (the only place a full path is resolved).

    With `create`, missing directories are created and each creation made
    durable by an fsync of its parent: `path` itself with `mode`, those above
    it 0755 (as mkdir -p).
    """
    try:
        return os.open(path, os.O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise MoverError('directory does not exist', path, errno.ENOENT)
    except OSError as exc:
        raise os_error(exc, 'cannot open directory', path)
    parent = os.path.dirname(os.path.abspath(path)) or '/'
    parent_fd = open_root(parent, create=True)
    try:
        make_dir(parent_fd, os.path.basename(path), mode, path)
        return open_dir_at(parent_fd, os.path.basename(path), path)
    finally:
        os.close(parent_fd)


def sync_ancestors(path):
    """fsync the parent of `path`, then its parent, up to the top of the
    filesystem that holds `path`: every name on the way to it is durable.

    For a root found existing (the destination, the state directory): a run
    killed after making it, before flushing its parent, or a `mkdir -p` a
    moment ago, leaves a name that a power cut would take away with every file
    moved into it since. Called once per run; a few fsyncs of clean
    directories cost little. Names above the filesystem's top (its mount
    point) are not ours and are not touched.
    """
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error(exc, 'cannot stat directory', path)
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return
        try:
            parent_st = os.stat(parent)
        except OSError as exc:
            raise os_error(exc, 'cannot stat directory', parent)
        if parent_st.st_dev != st.st_dev:
            return
        fd = open_root(parent)
        try:
            sync_dir(fd, parent)
        finally:
            os.close(fd)
        path, st = parent, parent_st


def make_dir(parent_fd, name, mode, path_for_errors=None, sync=True):
    """mkdir `name`, then fsync its parent so the new entry survives a crash.

    Requires: the parent itself is durable (it was created the same way, or
    existed before the run). Returns False if it already existed. Without
    `sync` the parent is not fsynced: the caller makes it durable (with
    sync_batch_dirs or sync_dir) before anything relies on the new directory.
    """
    created = True
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        # another process of the run may have made it a moment ago, and
        # not yet made it durable: this caller must not rely on it before
        created = False
    except OSError as exc:
        raise os_error(exc, 'cannot create directory', path_for_errors or name)
    if sync:
        sync_dir(parent_fd, path_for_errors)
    return created


def sync_dir(dir_fd, path_for_errors=None):
    """fsync a directory: the entries created, renamed or removed in it are on disk.

    Requires: every rename/unlink/mkdir it is meant to cover has returned.
    """
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise os_error(exc, 'fsync of directory failed', path_for_errors)


def create_part(dir_fd, part_name, resume_at=0, path_for_errors=None):
    """Open the part file for writing; truncate it to `resume_at`.

    Bytes past the last durable checkpoint are never trusted: they are cut off.
    A new part is created with O_EXCL, so nothing planted under its name (a
    FIFO, a link) is ever opened: a leftover is removed and the part made anew.
    """
    base = os.O_WRONLY | O_NOFOLLOW | O_CLOEXEC
    if not resume_at:
        for _attempt in range(2):
            try:
                return os.open(part_name, base | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                remove_quietly(dir_fd, part_name)      # a part of an earlier, interrupted run
            except OSError as exc:
                raise os_error(exc, 'cannot create part file', path_for_errors or part_name)
        raise MoverError('cannot create part file (it keeps reappearing)',
                         path_for_errors or part_name, errno.EEXIST)
    # Resuming: the part must be the regular file our checkpoint describes.
    # O_NONBLOCK: a FIFO planted under its name fails (ENXIO) instead of
    # blocking the run forever; it is cleared once we know it is a file.
    try:
        fd = os.open(part_name, base | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise os_error(exc, 'cannot open part file', path_for_errors or part_name)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MoverError('part file is not a regular file', path_for_errors, errno.EINVAL)
        os.set_blocking(fd, True)
        os.ftruncate(fd, resume_at)
    except OSError as exc:
        os.close(fd)
        raise os_error(exc, 'cannot prepare part file', path_for_errors or part_name)
    except MoverError:
        os.close(fd)
        raise
    return fd


def sync_data(fd, path_for_errors=None, checkpoint=False):
    """Flush the part file: its bytes (and size) are on disk.

    Requires: the last write to it has returned (and, for the final flush, its
    metadata has been applied: the final flush is a full fsync so that mode,
    owner, times and xattrs are as durable as the data; a checkpoint inside a
    large copy is an fdatasync). Never retried on failure.
    """
    if _faults.broken('no_part_fdatasync'):
        return
    try:
        if checkpoint:
            _fdatasync(fd)
        else:
            os.fsync(fd)
    except OSError as exc:
        raise os_error(exc, 'flushing the copy to disk failed (the copy is discarded, '
                       'not retried)', path_for_errors)


class DestinationTaken(MoverError):
    """The final name was taken by someone else while the entry was being moved."""


class PartReplaced(MoverError):
    """The part's name no longer holds the file this process wrote and verified."""


def rename_into_place(src_dir_fd, src_name, dst_dir_fd, dst_name, path_for_errors=None, replace=False,
                      expect=None):
    """rename(2) the part (or, on one filesystem, the source) to its final name.

    Requires: for a copy, sync_data of the part has succeeded and the copy was
    verified. Atomic: the final name shows the old file or the new, never a mix.

    Unless `replace` (the caller found an entry there that may be replaced:
    on_conflict=overwrite, or this job's own earlier copy), the final name is
    never taken from anyone: an entry another process created there since the
    caller looked raises DestinationTaken and is left as it is.

    `expect`: the (st_dev, st_ino[, st_ctime_ns]) of the part the caller
    wrote, flushed and verified. The rename goes by name, and another process
    may have put its own file under the part's name since (a second mover on
    the same tree makes its part under the same name, after removing ours):
    the name must hold that file before the rename, and the final name must
    hold it after, else PartReplaced (the source must then be kept: what is at
    the final name is not the verified copy, and it is left there, as anything
    not ours). A freed inode's number is soon given to a new file (ext4 does
    at once): a caller that no longer holds the part open passes its ctime
    too, which a new file under a reused number does not share.
    """
    if expect is not None:
        _still_ours(src_dir_fd, src_name, expect, path_for_errors or dst_name, 'before its rename')
        expect = tuple(expect)[:2]      # the rename itself changes the ctime
    if replace:
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        except OSError as exc:
            raise os_error(exc, 'rename into place failed', path_for_errors or dst_name)
    else:
        err = _rename_noreplace(src_dir_fd, src_name, dst_dir_fd, dst_name)
        if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
            err = _link_noreplace(src_dir_fd, src_name, dst_dir_fd, dst_name, path_for_errors)
        if err == errno.EEXIST:
            raise DestinationTaken('an entry appeared under the destination name while this one was being '
                                   'moved; it was left as it is', path_for_errors or dst_name, err)
        if err:
            raise MoverError('rename into place failed', path_for_errors or dst_name, err)
    if expect is not None:
        _still_ours(dst_dir_fd, dst_name, expect, path_for_errors or dst_name, 'during its rename')


def _still_ours(dir_fd, name, expect, path_for_errors, when):
    """Raise PartReplaced unless `name` is the file `expect` (st_dev, st_ino[, st_ctime_ns])."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise os_error(exc, 'cannot check the part file', path_for_errors)
    if st is None or (st.st_dev, st.st_ino, st.st_ctime_ns)[:len(expect)] != tuple(expect):
        raise PartReplaced('what was made at the destination was replaced by another entry %s (another process: '
                           'a second mover on this tree?); it was not put in place and the source was kept' % when,
                           path_for_errors, errno.ESTALE)


def _rename_noreplace(src_dir_fd, src_name, dst_dir_fd, dst_name):
    """renameat2(RENAME_NOREPLACE): 0, or the errno (ENOSYS without the call)."""
    if _renameat2 is None:
        return errno.ENOSYS
    if _renameat2(src_dir_fd, os.fsencode(src_name), dst_dir_fd, os.fsencode(dst_name), RENAME_NOREPLACE) == 0:
        return 0
    return ctypes.get_errno()


def _link_noreplace(src_dir_fd, src_name, dst_dir_fd, dst_name, path_for_errors):
    """Where the filesystem has no RENAME_NOREPLACE (some FUSE and network
    filesystems): link(2), which never replaces, then unlink the old name.
    Between the two, both names show the same inode: a crash there leaves the
    entry under both, which the next run finds identical. When the names are
    in two directories (a same-filesystem move), the new name is made durable
    before the old one goes. 0, or the errno."""
    try:
        os.link(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            return exc.errno
        # No hard links here either (or too many): look, then rename. The only
        # place a third party's entry could still be replaced, in the instant
        # between the two calls; no local Linux filesystem takes this path.
        try:
            os.lstat(dst_name, dir_fd=dst_dir_fd)
            return errno.EEXIST
        except FileNotFoundError:
            pass
        try:
            os.rename(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        except OSError as exc2:
            return exc2.errno
        return 0
    if not _same_dir(src_dir_fd, dst_dir_fd):
        sync_dir(dst_dir_fd, path_for_errors)
    try:
        os.unlink(src_name, dir_fd=src_dir_fd)
    except OSError as exc:
        return exc.errno
    return 0


def _same_dir(fd_a, fd_b):
    if fd_a == fd_b:
        return True
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


XFS_MAGIC = 0x58465342


def sync_dest_dir(dir_fd, path_for_errors=None, probe=None):
    """fsync a destination directory after renames into it.

    Requires: the renames returned. After it, the destination names are durable,
    and only then may the journal record the files as copied.

    On xfs a directory's fsync answers success once the filesystem has shut
    down after an I/O error (xfs_dir_fsync forces the log only for a pinned
    inode, and a failed log write unpins them all): the renames it covers may
    never have reached the disk. A regular file's fsync checks for the
    shutdown first, so `probe`, a regular file just renamed into the
    directory, is fsynced after it there: an error means the renames are not
    durable.
    """
    if _faults.broken('no_dest_dir_fsync'):
        return
    sync_dir(dir_fd, path_for_errors)
    if probe is not None and fs_type(dir_fd) == XFS_MAGIC:
        _fsync_probe(dir_fd, probe, path_for_errors)


def _fsync_probe(dir_fd, name, path_for_errors):
    try:
        fd = os.open(name, os.O_RDONLY | O_NOFOLLOW | os.O_NONBLOCK | O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise os_error(exc, 'the destination filesystem failed after the renames (its directory fsync '
                            'cannot be trusted)', path_for_errors)
    try:
        os.fsync(fd)
    except OSError as exc:
        raise os_error(exc, 'the destination filesystem failed after the renames (its directory fsync '
                            'cannot be trusted)', path_for_errors)
    finally:
        os.close(fd)


def unlink_source(dir_fd, name, path_for_errors=None):
    """Remove a source name: the only step that destroys data.

    Requires: the journal commit that records the destination as copied is
    durable (so a crash here leaves a journal that knows where the data is).
    """
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_error(exc, 'cannot remove source', path_for_errors or name)
    return True


def remove_quietly(dir_fd, name):
    """Remove a part file we own; a missing one is fine."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


# syncfs(2) makes every dirty page and inode of one filesystem durable in one
# journal commit. It is used to flush a batch of small files at once, and only
# where it can stand for their fsyncs:
# - on ext4, xfs and btrfs: on FUSE and network filesystems syncfs never
#   reaches the server (every file there gets its own fsync);
# - on Linux 5.17 and later: syncfs reports the writeback errors of the
#   filesystem's files since 5.8 (735e4ae5ba28, "vfs: track per-sb writeback
#   errors and report them to syncfs"), and the filesystem's own sync errors
#   only since 5.17 ("vfs: make sync_filesystem return errors from ->sync_fs");
#   before that a failed flush could look like a success;
# - through a descriptor private to the process and opened before its writes
#   (BatchFlush): the kernel reports each error once per open file
#   description, so a descriptor shared with another process (or opened after
#   the error) could miss an error the other one was told of.
SYNCFS_FILESYSTEMS = {0xEF53: 'ext4', 0x58465342: 'xfs', 0x9123683E: 'btrfs'}
SYNCFS_MIN_KERNEL = (5, 17)
try:
    import ctypes
    import ctypes.util
    _libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
    _libc.syncfs.argtypes = [ctypes.c_int]
    _libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
except (ImportError, OSError, AttributeError):  # no ctypes, or no syncfs in this libc
    _libc = None


# renameat2(2) with RENAME_NOREPLACE (Linux 3.15; ext4, xfs, btrfs, tmpfs and
# most others): the rename fails with EEXIST instead of replacing an entry.
# glibc has a wrapper since 2.28; older ones reach it by its syscall number.
RENAME_NOREPLACE = 1
_SYS_RENAMEAT2 = {'x86_64': 316, 'aarch64': 276, 'ppc64le': 357, 'ppc64': 357, 's390x': 347,
                  'i686': 353, 'i386': 353, 'armv7l': 382, 'riscv64': 276}


def _find_renameat2():
    if _libc is None:
        return None
    args = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    try:
        func = _libc.renameat2
        func.argtypes = args
        return func
    except AttributeError:
        number = _SYS_RENAMEAT2.get(os.uname().machine)
        if number is None:
            return None
        syscall = _libc.syscall
        syscall.restype = ctypes.c_long
        return lambda *values: syscall(ctypes.c_long(number), *(t(v) for t, v in zip(args, values)))


_renameat2 = _find_renameat2()


# sync_file_range(2) with SYNC_FILE_RANGE_WRITE starts the writeback of a range
# and returns at once. Large copies use it to keep the disk writing while the
# rest of the file is read; it is a hint, never a durability step.
SYNC_FILE_RANGE_WRITE = 2
try:
    _sync_file_range = _libc.sync_file_range if _libc is not None else None
    if _sync_file_range is not None:
        _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
except AttributeError:
    _sync_file_range = None


def libc():
    """The C library through ctypes, or None where it cannot be loaded."""
    return _libc


def start_writeback(fd, offset, length):
    """Start writing [offset, offset + length) of `fd` to the disk; do not wait.

    The range is made durable only by a later sync_data(); a failure here is
    left for that flush to report."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def fs_type(fd):
    """The filesystem magic number of an open fd (statfs f_type), or None."""
    if _libc is None:
        return None
    buf = ctypes.create_string_buffer(256)     # struct statfs is 120 bytes on 64-bit Linux
    if _libc.fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def kernel_version(release=None):
    """(major, minor) of the running kernel (or of `release`), (0, 0) if unknown."""
    numbers = (release or os.uname().release).split('-')[0].split('.')
    try:
        return int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return (0, 0)


def syncfs_supported(fd):
    """True if a batch on this filesystem can be flushed with one syncfs."""
    return (_libc is not None and kernel_version() >= SYNCFS_MIN_KERNEL
            and fs_type(fd) in SYNCFS_FILESYSTEMS)


class BatchFlush:
    """The flush of a batch of small copies: one syncfs of the filesystem that
    holds the destination root, through a descriptor of this process's own,
    opened before any of its writes (see SYNCFS_MIN_KERNEL). Parts in a
    directory on another filesystem (a mount inside the destination) are not
    covered by it: `covers` tells, and those are flushed one by one."""

    def __init__(self, root_fd, root_path):
        # A new open file description of the root, not a dup() of the shared one
        self.fd = os.open('.', DIR_FLAGS, dir_fd=root_fd)
        self.dev = os.fstat(self.fd).st_dev
        self.path = root_path

    def covers(self, dir_fd):
        """Does one flush cover the files of this directory (same filesystem)?"""
        return os.fstat(dir_fd).st_dev == self.dev

    def sync(self):
        """Requires: the last writes (and metadata) of every part it covers returned."""
        sync_filesystem(self.fd, self.path, data=True)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class DirsFlush:
    """The directories a batch changed on one filesystem, made durable at once:
    one syncfs (sync_batch_dirs) of the filesystem that holds a root stands for
    the fsync of each of its directories. Only where syncfs_supported: there
    the filesystem's journal commits every rename and unlink of the batch with
    it. Directories on another filesystem (a mount inside a root) are not
    covered: `covers` tells, and those are fsynced one by one.

    `fd`: a descriptor of the root of this process's own, opened before its
    renames and unlinks (see SYNCFS_MIN_KERNEL): on the destination the batch
    flush's (BatchFlush.fd: an error its syncfs reported, and the batch copied
    again one by one, is not reported twice); `own`: closed by close()."""

    def __init__(self, fd, path, own=False):
        self.fd = fd
        self.path = path
        self.own = own
        self.dev = _dev_of(fd, path)

    @classmethod
    def open(cls, root_fd, root_path):
        """A DirsFlush with a new open file description of the root (not a dup())."""
        try:
            fd = os.open('.', DIR_FLAGS, dir_fd=root_fd)
        except OSError as exc:
            raise os_error(exc, 'cannot open directory', root_path)
        try:
            return cls(fd, root_path, own=True)
        except MoverError:
            os.close(fd)
            raise

    def covers(self, dir_fd):
        """Does one syncfs cover the entries of this directory (same filesystem)?
        (An xfs shut down after an I/O error fails even this fstat: MoverError.)"""
        return _dev_of(dir_fd, self.path) == self.dev

    def sync(self):
        """Requires: every rename and unlink it is meant to cover returned."""
        sync_batch_dirs(self.fd, self.path)

    def may_fall_back(self, error):
        """After `error` from sync(): may each directory's own fsync (sync_dir,
        sync_dest_dir) tell instead whether its entries are on disk? Yes unless
        the filesystem is read-only now (or cannot tell): the error may be
        another file's writeback error (syncfs reports every file's), which
        says nothing of these directories; but a failed journal commit (ext4,
        btrfs) turns the filesystem read-only, and an xfs shut down is caught by
        sync_dest_dir's probe."""
        if error.errno == errno.EROFS:
            return False
        try:
            return not os.fstatvfs(self.fd).f_flag & os.ST_RDONLY
        except OSError:
            return False

    def close(self):
        if self.own and self.fd is not None:
            os.close(self.fd)
        self.fd = None


def _dev_of(fd, path_for_errors):
    try:
        return os.fstat(fd).st_dev
    except OSError as exc:
        raise os_error(exc, 'cannot stat directory', path_for_errors)


def sync_batch_dirs(fd, path_for_errors=None):
    """One syncfs for the directories a batch changed on the filesystem of
    `fd` (the fsync of each of them, steps 4 and 7 of the chain, at once).

    Requires: every rename into (and out of) those directories, or every
    unlink in them, returned; the filesystem is one where syncfs_supported.
    After it, those names are durable: on the destination, only then may the
    journal record the files as copied; on the source, only then may the next
    commit record them done.

    A failed syncfs is not retried. Its error may be any file's on the
    filesystem: the caller asks each directory's own fsync instead
    (DirsFlush.may_fall_back), whose failure fails its entries. Unlike a
    directory fsync on xfs, the syncfs of an xfs that
    shut down after an I/O error reports it (xfs_fs_sync_fs forces the log,
    which fails once shut down). But syncfs answers success at once for a
    filesystem that is read-only (sync_filesystem checks sb_rdonly first), and
    ext4 and btrfs turn read-only after a failed journal commit: a filesystem
    read-only after the syncfs has lost what the batch changed.
    """
    if _faults.broken('no_batch_dir_sync'):
        return
    sync_filesystem(fd, path_for_errors)
    try:
        read_only = os.fstatvfs(fd).f_flag & os.ST_RDONLY
    except OSError as exc:
        raise os_error(exc, 'cannot tell whether the filesystem is still writable after its syncfs',
                       path_for_errors)
    if read_only:
        raise MoverError('the filesystem turned read-only during the batch (after an I/O error?): its '
                         'syncfs cannot be trusted', path_for_errors, errno.EROFS)


def sync_filesystem(fd, path_for_errors=None, data=False):
    """syncfs: everything written to the filesystem of `fd` is durable.

    Requires: every write/rename/unlink it is meant to cover has returned.
    `data`: this flush stands for the fsync of a batch's part files (so the
    test-only broken variant that skips that flush skips this too).
    """
    if data and _faults.broken('no_part_fdatasync'):
        return
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise MoverError('syncfs failed (the batch is discarded, not retried)', path_for_errors, err)


# -- directory fds ------------------------------------------------------------
#
# A DirTree hands out directory fds (get) and keeps a bounded number open. An
# fd handed out must stay open, and name the same directory, for as long as its
# caller uses it: a closed fd whose number an open() elsewhere reused would
# make a rename or unlink act in the wrong directory. So every fd handed out is
# *held* until the next trim() or clear() of its tree, and never closed before.
# The owner calls those only where nothing got from the tree is in use any
# more: between batches (the worker threads are idle then), and between the
# steps of the loops over directories and files (prepare, finalize, check mode,
# verify). A batch is cut so that it touches at most `budget` directories
# (Runner._work_share): the fds held at once stay bounded however the files are
# spread.
#
# Beyond `budget` fds, the oldest not held are closed: the cache exceeds its
# budget by at most what a batch holds. Looking up a cached fd takes no lock
# (the small-file path asks for several per file): the thread first records
# its hold, then checks that the fd is still cached; the closer first takes the
# fd out of the cache, then looks for a hold (and puts it back if it finds
# one). Under the GIL these steps are sequentially consistent, so one of the two
# sees the other; an interpreter without the GIL takes the lock for the lookup.

_GIL = getattr(sys, '_is_gil_enabled', lambda: True)()


def dir_fd_budget():
    """How many directory fds one DirTree keeps open for reuse: an eighth of
    the soft RLIMIT_NOFILE, between 16 and 256. A run has two trees, each
    with at most twice its budget open (its cache, and a batch's directories
    held beyond it), and a batch's prefetched files take up to a quarter."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(16, min(256, soft // 8))


class DirTree:
    """Directory file descriptors of one root, opened component by component.

    Each component is opened with O_NOFOLLOW|O_DIRECTORY relative to its parent,
    so no symbolic link inside the tree is ever followed. With `create`, missing
    directories are made durable as they are created. get() is thread-safe; an
    fd it returns stays open until the next trim() or clear(), which their
    callers make only where no fd of the tree is in use (see above).
    """

    def __init__(self, root_fd, root_path, create=False, mode=0o755, budget=None):
        self.root_fd = root_fd
        self.root_path = root_path
        self.create = create
        self.mode = mode
        self.budget = budget or dir_fd_budget()
        self._prefix = root_path if root_path.endswith('/') else root_path + '/'
        self._fds = {}                 # rel -> fd, oldest first
        self._held = set()             # fds handed out since the last trim
        self._lock = threading.Lock()
        self.created = 0
        # None, or a set: the directories are created without an fsync of their
        # parent, whose rel is added here for the owner to make durable
        self.unsynced = None

    def full(self, rel):
        """The full path of `rel` (for messages; called for every file, so kept cheap)."""
        return self._prefix + rel if rel else self.root_path

    def open_count(self):
        """Directory fds of this tree open now, the root's excepted."""
        with self._lock:
            return len(self._fds)

    def get(self, reldir):
        """The fd of directory `reldir` ('' is the root); open until the next trim or clear."""
        if not reldir:
            return self.root_fd
        fd = self._fds.get(reldir) if _GIL else None
        if fd is not None:
            self._held.add(fd)                  # 1. hold it,
            if self._fds.get(reldir) == fd:     # 2. then make sure it is still cached
                return fd
        with self._lock:
            fd = self._fds.get(reldir)
            if fd is None:
                fd = self._open(reldir)
            self._held.add(fd)
            if len(self._fds) - len(self._held) > self.budget:
                self._evict(self.budget)
            return fd

    def dup(self, reldir):
        """An fd of its own on directory `reldir` (not held: the caller closes it)."""
        if not reldir:
            return os.dup(self.root_fd)
        with self._lock:
            fd = self._fds.get(reldir)
            if fd is None:
                fd = self._open(reldir)
            fd = os.dup(fd)
            if len(self._fds) - len(self._held) > self.budget:
                self._evict(self.budget)
            return fd

    def _open(self, reldir):
        """Open `reldir` from its nearest cached ancestor down, caching each
        directory on the way. Requires: the lock is held."""
        parent_fd, start = self.root_fd, 0
        cut = len(reldir)
        while cut > 0:
            cut = reldir.rfind('/', 0, cut)
            ancestor = self._fds.get(reldir[:cut]) if cut > 0 else None
            if ancestor is not None:
                parent_fd, start = ancestor, cut + 1
                break
        while True:
            end = reldir.find('/', start)
            rel = reldir if end < 0 else reldir[:end]
            name = rel[start:]
            try:
                fd = open_dir_at(parent_fd, name, self._prefix + rel)
            except MoverError as exc:
                if not (self.create and exc.errno == errno.ENOENT):
                    raise
                unsynced = self.unsynced
                if make_dir(parent_fd, name, self.mode, self._prefix + rel, sync=unsynced is None):
                    self.created += 1
                if unsynced is not None:
                    unsynced.add(rel[:start - 1] if start else '')
                fd = open_dir_at(parent_fd, name, self._prefix + rel)
            self._fds[rel] = fd
            if end < 0:
                return fd
            parent_fd, start = fd, end + 1

    def _evict(self, keep):
        """Close the oldest cached fds not held, beyond `keep` (and a quarter
        more, so that this is seldom done). Requires: the lock is held."""
        fds, held = self._fds, self._held
        excess = len(fds) - len(held) - keep
        if excess <= 0:
            return
        excess += keep // 4
        victims = []
        for rel, fd in fds.items():             # oldest first
            if fd not in held:
                victims.append(rel)
                if len(victims) == excess:
                    break
        for rel in victims:
            fd = fds.pop(rel)                   # 1. out of the cache,
            if fd in held:                      # 2. then look for a hold (got meanwhile)
                fds[rel] = fd
            else:
                os.close(fd)

    def trim(self, limit=None):
        """Requires: no fd got from this tree is in use (by any thread). Every
        fd is let go; the cache is cut to `limit` (at most the budget)."""
        keep = self.budget if limit is None or limit > self.budget else limit
        with self._lock:
            if self._held:
                self._held = set()
            if len(self._fds) > keep:
                self._evict(keep)

    def clear(self):
        """Requires, as trim: no fd got from this tree is in use. Every cached fd is closed."""
        with self._lock:
            self._held = set()
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)

    def close(self):
        self.clear()
        os.close(self.root_fd)
