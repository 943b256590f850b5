# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""powerfs: a FUSE filesystem that forgets, on command, everything not yet durable.

A test tool for the crash suite (issue 4, "Power cut at every point"). It
models a disk behind a volatile page cache: every syscall sees the *volatile*
state at once, but only ``fsync``/``fdatasync``/directory ``fsync`` copy it
into the *durable* state, and the control command ``cut`` throws the volatile
state away, as a power cut would. Run it with :mod:`powerfs_harness`; by hand::

    unshare --mount --propagation private sh -c '
        python tests/crash/powerfs.py /mnt/p --control /tmp/p.sock &
        ...; python tests/crash/powerfs.py --ctl /tmp/p.sock cut'

Durability model (conservative: every guarantee here is one POSIX makes and
ext4/xfs keep; where a real filesystem happens to keep more, powerfs does not)
-------------------------------------------------------------------------------

Every inode has a volatile state (what syscalls see) and a durable state
(what survives a cut).

Regular files, symlinks, FIFOs, devices:

* ``fdatasync(fd)`` (and ``fsync``): durable data := volatile data, size
  included (``fdatasync`` must persist the size needed to read the data back).
* ``fsync(fd)`` only: durable metadata := volatile metadata (mode, uid, gid,
  atime, mtime, ctime, xattrs). ``fdatasync`` does not persist these.
* Symlinks, FIFOs and device nodes, which no syscall can fsync: their
  metadata becomes durable with an fsync of a directory that names them (what
  a journaling filesystem's commit does; POSIX offers no way at all).
* A new inode starts durable with *no* data (size 0) and the metadata it was
  created with. A symlink's target and a device's number are part of the inode
  and durable with it. O_SYNC/O_DSYNC writes count: the kernel sends an fsync
  after each such write.
* Neither makes the file's *name* durable: that is the directory's business
  (ext4 often persists the name as a side effect of its journal commit; POSIX
  does not promise it, so powerfs does not).

Directories:

* ``fsync(dirfd)`` / ``fdatasync(dirfd)`` (FUSE ``fsyncdir``): durable entries
  := volatile entries, all of them, atomically; ``fsync`` (not ``fdatasync``)
  also persists the directory's own metadata. Nothing else (but for the
  symlinks, FIFOs and devices above): not the data or metadata of the files
  named, not the entries of subdirectories.
* An entry is a name -> inode. create, mknod, mkdir, symlink, link, unlink,
  rmdir and rename change the volatile entries of the directories involved, so
  each becomes durable only when *that* directory is fsynced.

The durable tree is what one reaches from the root through durable entries; a
``cut`` makes it the visible tree. An inode reachable there gets its durable
data and metadata back; an inode not reachable there is gone (a new file whose
directory was never fsynced vanishes even if its data was fsynced). Link
counts are recounted.

Renames, in detail:

* Within one directory: old name gone and new name present (and a replaced
  target gone) together, when that directory is fsynced; before that a cut
  restores the old name (and the replaced target, if that was durable).
* Across directories the two halves are durable independently: the new entry
  when the target directory is fsynced, the old entry's removal when the
  source directory is fsynced. After a cut: neither fsynced -> the old name;
  target only -> both names (one inode, two links); both -> the new name;
  source only -> NEITHER name: the file is lost (if it was durable under the
  old name, it is now nowhere). ext4 and xfs put a rename into one journal
  transaction, so there an fsync of either directory persists both halves and
  the "lost" case cannot happen; ext2, or a filesystem without a journal, can
  lose the file. So this model flags a mover that fsyncs the source directory
  before the destination directory after a same-filesystem rename, and a mover
  that skips either fsync; fsync destination, then source, is always safe.
* A directory that a cut would reach under two names (a directory renamed
  across directories, only the target side fsynced) is kept under the first
  name in sorted breadth-first order and its other entry is dropped, as fsck
  would; ``cut`` reports such repairs under ``"fsck"``.
* ``RENAME_NOREPLACE`` and ``RENAME_EXCHANGE`` work; ``RENAME_WHITEOUT`` is EINVAL.

Not durable, ever: ``sync(2)``, ``syncfs(2)`` (they never reach a FUSE daemon:
the kernel has no FUSE request for them on /dev/fuse mounts), ``close``,
``flush``, ``msync`` without fsync, time passing, unmounting.

Open files and directories at a cut (or ``restore``/``reset``): every handle
opened before it is stale; every operation on it fails with EIO except
close. Only a process that survives the cut can hold one, which real power
cuts do not allow: kill the process under test before cutting.

Kernel caches. powerfs is mounted with ``entry_timeout=0, attr_timeout=0,
negative_timeout=0`` (every lookup and stat reaches the daemon) and ``use_ino``
(st_ino is powerfs's inode number, so hard links share it). File data goes
through the kernel page cache (no ``direct_io`` by default) because SQLite's WAL
mode needs a shared ``mmap`` of ``-shm``, which direct_io files refuse (libfuse
3.14 cannot ask for FUSE_DIRECT_IO_ALLOW_MMAP). That is still exact: there is no
writeback cache, so every write(2) reaches powerfs before it returns (dirty
mmap pages at the latest when the file is closed, which FUSE's flush forces),
and each open(2) drops the file's cached pages (no ``keep_cache``), so a file
opened after a cut reads the durable state; only a stale handle kept across the
cut could see cached pages. ``--direct-io`` turns direct I/O on for everything
(then SQLite WAL fails).

Files unlinked while open. Not ``hard_remove``: with it, libfuse's high-level
API has no path left for such a file and fstat/fchmod/futimens/f*xattr on it
fail with ESTALE. Without it libfuse renames the file to ``.fuse_hidden*`` and
unlinks that name at the last close; powerfs turns that rename into what it
stands for, an unlink (the name is gone, durably so once the directory is
fsynced), and lets only libfuse's hidden path reach the open file: readdir and
the durable tree never show it. (libfuse also hides an open target before
``rename``; for ``RENAME_NOREPLACE`` powerfs puts it back and answers EEXIST.)

Locks. powerfs implements neither the FUSE ``lock`` nor the ``flock`` op, on
purpose: libfuse then tells the kernel it does not do POSIX or BSD locks, and
the kernel keeps fcntl/flock locks itself, with full conflict semantics between
processes. A ``lock`` op that merely granted every request would let two
processes hold the same lock (it is the libfuse default of *registering* an op
that answers ENOSYS, e.g. fusepy's base class, that makes SQLite fail with
"disk I/O error"/ENOLCK). The test suite proves both SQLite WAL and
cross-process fcntl/flock conflicts on a powerfs mount.

Control interface
-----------------

A unix stream socket (``--control PATH``), outside the mount so the tree
under test holds no magic file. One command per line, one JSON object per
line back (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``):

``ping``; ``cut`` (-> counts of what was dropped, fsck repairs);
``sync-all`` (make everything durable: for setup); ``save NAME`` (snapshot the
*durable* state; ``sync-all`` first to save what you see); ``restore NAME``
(durable and visible state := the snapshot, handles stale: a reboot onto a
saved disk image, far cheaper than a remount); ``reset`` (an empty
filesystem); ``drop NAME``; ``stats`` (op counters, inodes, dirty counts);
``stats-reset``; ``dirty`` (paths whose data, metadata or entries a cut would
lose right now; ctime-only differences are not listed); ``log-on``/``log-off``/``log`` (a log of the mutating and
syncing requests powerfs received, in order; ``log`` returns and clears it);
``errors`` (internal errors: must stay empty).

``python powerfs.py --ctl SOCKET COMMAND...`` sends one command from a shell.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import logging
import os
import socket
import stat
import sys
import threading
import time
import traceback
import typing as t

MOUNT_OPTIONS = ('allow_other', 'default_permissions')
LIBFUSE3 = 'libfuse3.so.3'
HIDDEN_PREFIX = '.fuse_hidden'      # libfuse: '.fuse_hidden%08x%08x'
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
BLOCK = 4096
CAPACITY_BLOCKS = 1 << 28           # 1 TiB of 4 KiB blocks, reported by statfs
MAX_NAME = 255

# The FUSE operations powerfs implements. mfusepy registers every attribute of
# the operations object whose name is a field of struct fuse_operations, so no
# other attribute may carry such a name (a mutex called ``lock`` would become
# the POSIX-lock op): checked at start-up by _check_op_names.
IMPLEMENTED_OPS = frozenset((
    'getattr', 'readlink', 'mknod', 'mkdir', 'unlink', 'rmdir', 'symlink', 'rename', 'link',
    'chmod', 'chown', 'truncate', 'open', 'read', 'write', 'statfs', 'flush', 'release',
    'fsync', 'setxattr', 'getxattr', 'listxattr', 'removexattr', 'opendir', 'readdir',
    'releasedir', 'fsyncdir', 'init', 'destroy', 'access', 'create', 'utimens', 'fallocate',
))

log = logging.getLogger('powerfs')


def _err(code: int) -> OSError:
    """The exception an operation raises to answer ``-code`` to the kernel."""
    return OSError(code, os.strerror(code))


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

class Node:
    """One inode: its volatile state and its durable state side by side.

    ``data`` is bytes until first written (restores share the snapshot's
    bytes), then a bytearray. ``meta`` holds mode (permission bits only), uid,
    gid, atime, mtime, ctime (ns) and xattrs. ``entries`` (directories only)
    maps name -> Node. The ``dur_*`` fields are the durable copies.
    """

    __slots__ = ('ino', 'kind', 'data', 'meta', 'entries', 'hidden', 'target', 'rdev', 'nlink',
                 'dur_data', 'dur_meta', 'dur_entries')

    def __init__(self, ino: int, kind: int, meta: dict, target: bytes = b'', rdev: int = 0):
        self.ino = ino
        self.kind = kind
        self.data: bytes | bytearray = b''
        self.meta = meta
        self.entries: dict[str, Node] | None = {} if kind == stat.S_IFDIR else None
        self.hidden: dict[str, Node] | None = None     # libfuse's .fuse_hidden* names
        self.target = target
        self.rdev = rdev
        self.nlink = 0                          # names; directories count on the fly
        # Born durable as an empty inode; reachable durably only through a
        # durable directory entry.
        self.dur_data: bytes = b''
        self.dur_meta = _copy_meta(meta)
        self.dur_entries: dict[str, Node] | None = {} if kind == stat.S_IFDIR else None

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    def size(self) -> int:
        if self.kind == stat.S_IFREG:
            return len(self.data)
        if self.kind == stat.S_IFLNK:
            return len(self.target)
        if self.is_dir:
            return BLOCK
        return 0


def _copy_meta(meta: dict) -> dict:
    copy = dict(meta)
    copy['xattrs'] = dict(meta['xattrs'])
    return copy


def _meta_differs(node: Node) -> bool:
    """Metadata a cut would change, ctime aside (a rename changes it, nobody checks it)."""
    return any(node.meta[key] != node.dur_meta[key] for key in node.meta if key != 'ctime')


def _is_hidden_name(name: str) -> bool:
    suffix = name[len(HIDDEN_PREFIX):]
    return (name.startswith(HIDDEN_PREFIX) and len(suffix) == 16
            and all(char in '0123456789abcdef' for char in suffix))


class Handle:
    """An open file or directory: valid only in the epoch it was opened in."""

    __slots__ = ('node', 'flags')

    def __init__(self, node: Node, flags: int):
        self.node = node
        self.flags = flags


class PowerFS:  # pylint: disable=too-many-public-methods
    """The FUSE operations (mfusepy, high-level, path based) over the model.

    Every operation runs under one mutex, shared with the control thread, so
    a ``cut`` falls between two requests, never inside one.
    """

    use_ns = True               # mfusepy: times in integer nanoseconds

    def __init__(self, direct_io: bool = False, ready_fd: int | None = None):
        self._mutex = threading.RLock()
        self._direct_io = direct_io
        self._ready_fd = ready_fd
        self._next_ino = 1
        self._next_fh = 1
        self._handles: dict[int, Handle] = {}
        self._snapshots: dict[str, tuple[Node, int]] = {}     # name -> (root, next inode)
        self._counts: dict[str, int] = {}
        self._oplog: list[list] | None = None
        self._errors: list[str] = []
        self._epoch = 0
        self._cuts = 0
        self._just_hidden: tuple | None = None      # (dir, name, hidden name) of the last op
        self._previous_hide: tuple | None = None
        self._root = self._new_node(stat.S_IFDIR, 0o755, 0, 0)
        self._root.nlink = 1
        self._make_durable(self._root, data=True, meta=True)

    # ---------------------------------------------------------------- helpers

    def _new_node(self, kind: int, perm: int, uid: int, gid: int, target: bytes = b'',
                  rdev: int = 0) -> Node:
        now = time.time_ns()
        meta = {'mode': perm & 0o7777, 'uid': uid, 'gid': gid,
                'atime': now, 'mtime': now, 'ctime': now, 'xattrs': {}}
        node = Node(self._next_ino, kind, meta, target, rdev)
        self._next_ino += 1
        return node

    def _lookup(self, path: str) -> Node:
        node = self._root
        if path == '/':
            return node
        names = path[1:].split('/')
        last = len(names) - 1
        for index, name in enumerate(names):
            if node.entries is None:
                raise _err(errno.ENOTDIR)
            child = node.entries.get(name)
            if child is None and index == last and node.hidden:
                child = node.hidden.get(name)       # an unlinked open file, by libfuse's name
            if child is None:
                raise _err(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _sep, name = path.rpartition('/')
        parent = self._lookup(head or '/')
        if parent.entries is None:
            raise _err(errno.ENOTDIR)
        if len(name.encode('utf-8', 'surrogateescape')) > MAX_NAME:
            raise _err(errno.ENAMETOOLONG)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        """The inode an operation is about: by handle if it has one, else by path."""
        if fh:
            handle = self._handles.get(fh)
            if handle is None:
                raise _err(errno.EIO)       # opened before a cut / restore
            return handle.node
        if path is None:
            raise _err(errno.ESTALE)
        return self._lookup(path)

    def _context(self) -> tuple[int, int]:
        import mfusepy  # pylint: disable=import-outside-toplevel
        uid, gid, _pid = mfusepy.fuse_get_context()
        return uid, gid

    def _add_entry(self, parent: Node, name: str, node: Node) -> None:
        assert parent.entries is not None
        parent.entries[name] = node
        node.nlink += 1
        self._touch(parent, mtime=True)

    def _touch(self, node: Node, mtime: bool = False) -> None:
        now = time.time_ns()
        node.meta['ctime'] = now
        if mtime:
            node.meta['mtime'] = now

    def _writable_data(self, node: Node) -> bytearray:
        if not isinstance(node.data, bytearray):
            node.data = bytearray(node.data)
        return node.data

    def _make_durable(self, node: Node, data: bool, meta: bool) -> None:
        if data:
            if node.entries is not None:
                node.dur_entries = dict(node.entries)
            else:
                node.dur_data = bytes(node.data)
        if meta:
            node.dur_meta = _copy_meta(node.meta)

    def _log(self, *item: t.Any) -> None:
        if self._oplog is not None:
            self._oplog.append(list(item))

    def _new_fh(self, node: Node, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = Handle(node, flags)
        return fh

    def _create_node(self, path: str, kind: int, mode: int, target: bytes = b'',
                     rdev: int = 0) -> Node:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise _err(errno.EEXIST)
        uid, gid = self._context()
        perm = mode & 0o7777
        if parent.meta['mode'] & stat.S_ISGID:     # BSD group semantics of a setgid dir
            gid = parent.meta['gid']
            if kind == stat.S_IFDIR:
                perm |= stat.S_ISGID
        node = self._new_node(kind, perm, uid, gid, target, rdev)
        self._add_entry(parent, name, node)
        return node

    # ------------------------------------------------------------- FUSE ops

    def init_with_config(self, conn_info: t.Any, config: t.Any) -> None:
        """Fix the kernel-cache settings the model depends on (see module doc)."""
        if config is not None:
            config.entry_timeout = 0.0
            config.negative_timeout = 0.0
            config.attr_timeout = 0.0
            config.ac_attr_timeout_set = 0
            config.hard_remove = 0          # see _hide
            config.use_ino = 1
            config.readdir_ino = 0
            config.direct_io = 1 if self._direct_io else 0
            config.kernel_cache = 0
            config.auto_cache = 0
            config.nullpath_ok = 0
        if self._ready_fd is not None:
            os.write(self._ready_fd, b'ready\n')
            os.close(self._ready_fd)
            self._ready_fd = None

    def destroy(self, path: str) -> None:  # pylint: disable=unused-argument
        return None

    def getattr(self, path: str | None, fh: int | None = None) -> dict:
        node = self._node(path, fh)
        meta = node.meta
        if node.is_dir:
            nlink = 2 + sum(1 for child in node.entries.values() if child.is_dir)
        else:
            nlink = node.nlink
        size = node.size()
        return {
            'st_ino': node.ino, 'st_mode': node.kind | meta['mode'], 'st_nlink': nlink,
            'st_uid': meta['uid'], 'st_gid': meta['gid'], 'st_size': size,
            'st_atime': meta['atime'], 'st_mtime': meta['mtime'], 'st_ctime': meta['ctime'],
            'st_blocks': (size + 511) // 512, 'st_blksize': BLOCK, 'st_rdev': node.rdev,
        }

    def access(self, path: str, amode: int) -> int:  # pylint: disable=unused-argument
        self._lookup(path)      # default_permissions: the kernel checks the mode bits
        return 0

    def readlink(self, path: str) -> str:
        node = self._lookup(path)
        if node.kind != stat.S_IFLNK:
            raise _err(errno.EINVAL)
        return node.target.decode('utf-8', 'surrogateescape')

    def statfs(self, path: str) -> dict:  # pylint: disable=unused-argument
        used = files = 0
        seen: set[int] = set()
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.ino in seen:
                continue
            seen.add(node.ino)
            files += 1
            used += (node.size() + BLOCK - 1) // BLOCK
            if node.entries:
                stack.extend(node.entries.values())
        return {'f_bsize': BLOCK, 'f_frsize': BLOCK, 'f_blocks': CAPACITY_BLOCKS,
                'f_bfree': CAPACITY_BLOCKS - used, 'f_bavail': CAPACITY_BLOCKS - used,
                'f_files': 1 << 24, 'f_ffree': (1 << 24) - files, 'f_favail': (1 << 24) - files,
                'f_namemax': MAX_NAME}

    # directories

    def mkdir(self, path: str, mode: int) -> int:
        self._create_node(path, stat.S_IFDIR, mode)
        self._log('mkdir', path)
        return 0

    def rmdir(self, path: str) -> int:
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if node.entries:
            raise _err(errno.ENOTEMPTY)
        del parent.entries[name]
        node.nlink -= 1
        self._touch(parent, mtime=True)
        self._log('rmdir', path)
        return 0

    def opendir(self, path: str) -> int:
        node = self._lookup(path)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        return self._new_fh(node, os.O_RDONLY)

    def readdir(self, path: str | None, fh: int) -> list:
        node = self._node(path, fh)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        items: list = [('.', {'st_mode': stat.S_IFDIR, 'st_ino': node.ino}, 0),
                       ('..', {'st_mode': stat.S_IFDIR}, 0)]
        for name, child in node.entries.items():
            items.append((name, {'st_mode': child.kind, 'st_ino': child.ino}, 0))
        return items

    def releasedir(self, path: str | None, fh: int) -> int:  # pylint: disable=unused-argument
        self._handles.pop(fh, None)
        return 0

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        self._make_durable(node, data=True, meta=not datasync)
        for child in node.entries.values():
            if child.kind not in (stat.S_IFREG, stat.S_IFDIR):
                # No syscall can fsync a symlink, FIFO or device node itself.
                self._make_durable(child, data=False, meta=True)
        self._log('fsyncdir', path, {'datasync': bool(datasync)})
        return 0

    # names

    def create(self, path: str, mode: int, flags: int) -> int:
        try:
            node = self._create_node(path, stat.S_IFREG, mode)
        except OSError as exc:
            if exc.errno != errno.EEXIST or flags & os.O_EXCL:
                raise
            return self.open(path, flags)
        self._log('create', path)
        return self._new_fh(node, flags)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            raise _err(errno.EINVAL)
        rdev = dev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        self._create_node(path, kind, mode, rdev=rdev)
        self._log('mknod', path, {'kind': stat.filemode(kind)[0]})
        return 0

    def symlink(self, target: str, source: str) -> int:
        # mfusepy's naming: ``target`` is the new link's path, ``source`` its content.
        self._create_node(target, stat.S_IFLNK, 0o777,
                          target=source.encode('utf-8', 'surrogateescape'))
        self._log('symlink', target, {'to': source})
        return 0

    def link(self, target: str, source: str) -> int:
        # mfusepy's naming: ``target`` is the new name, ``source`` the existing file.
        node = self._lookup(source)
        if node.is_dir:
            raise _err(errno.EPERM)
        parent, name = self._parent(target)
        if name in parent.entries:
            raise _err(errno.EEXIST)
        self._add_entry(parent, name, node)
        self._touch(node)
        self._log('link', target, {'from': source})
        return 0

    def unlink(self, path: str) -> int:
        parent, name = self._parent(path)
        if parent.hidden and name in parent.hidden:
            del parent.hidden[name]         # the last close of a file unlinked while open
            return 0
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT)
        if node.is_dir:
            raise _err(errno.EISDIR)
        del parent.entries[name]
        node.nlink -= 1
        self._touch(node)
        self._touch(parent, mtime=True)
        self._log('unlink', path)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:  # pylint: disable=too-many-branches
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        src_dir, src_name = self._parent(old)
        dst_dir, dst_name = self._parent(new)
        node = src_dir.entries.get(src_name)
        if node is None:
            raise _err(errno.ENOENT)
        other = dst_dir.entries.get(dst_name)
        if flags == 0 and other is None and dst_dir is src_dir and _is_hidden_name(dst_name):
            return self._hide(src_dir, src_name, dst_name, old)
        hidden = self._previous_hide
        if (flags & RENAME_NOREPLACE and other is None and hidden is not None
                and hidden[0] is dst_dir and hidden[1] == dst_name):
            # libfuse hid the open target before this rename: put it back, refuse.
            other = dst_dir.hidden.pop(hidden[2])
            dst_dir.entries[dst_name] = other
            other.nlink += 1
            raise _err(errno.EEXIST)
        if flags & RENAME_EXCHANGE:
            if other is None:
                raise _err(errno.ENOENT)
            if (node.is_dir and (new + '/').startswith(old + '/')) or (
                    other.is_dir and (old + '/').startswith(new + '/')):
                raise _err(errno.EINVAL)
            src_dir.entries[src_name] = other
            dst_dir.entries[dst_name] = node
            for touched in {id(src_dir): src_dir, id(dst_dir): dst_dir, id(node): node,
                            id(other): other}.values():
                self._touch(touched, mtime=touched is src_dir or touched is dst_dir)
            self._log('rename', old, new, {'exchange': True})
            return 0
        if other is not None and flags & RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        if other is node:
            return 0                    # two names of one inode: rename(2) does nothing
        if node.is_dir and (new + '/').startswith(old + '/'):
            raise _err(errno.EINVAL)
        if other is not None:
            if other.is_dir:
                if not node.is_dir:
                    raise _err(errno.EISDIR)
                if other.entries:
                    raise _err(errno.ENOTEMPTY)
            elif node.is_dir:
                raise _err(errno.ENOTDIR)
            other.nlink -= 1
            self._touch(other)
        del src_dir.entries[src_name]
        dst_dir.entries[dst_name] = node
        self._touch(node)
        self._touch(src_dir, mtime=True)
        self._touch(dst_dir, mtime=True)
        self._log('rename', old, new)
        return 0

    def _hide(self, parent: Node, name: str, hidden_name: str, path: str) -> int:
        """libfuse's rename of an open file to .fuse_hidden*, instead of unlinking it.

        Without hard_remove, libfuse keeps a file unlinked while open reachable
        by a hidden name until its last close. In the model that is an unlink:
        the name is gone (readdir never shows the hidden one, a cut knows
        nothing of it), but libfuse's path for the open file still resolves, so
        fstat, fchmod, futimens and f*xattr keep working on it. (hard_remove
        would make them fail with ESTALE: libfuse has no path left to pass.)
        """
        node = parent.entries.pop(name)
        node.nlink -= 1
        self._touch(node)
        self._touch(parent, mtime=True)
        if parent.hidden is None:
            parent.hidden = {}
        parent.hidden[hidden_name] = node
        self._just_hidden = (parent, name, hidden_name)
        self._log('unlink', path, {'open': True})
        return 0

    # attributes

    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        node.meta['mode'] = mode & 0o7777
        self._touch(node)
        self._log('chmod', path, {'mode': oct(mode & 0o7777)})
        return 0

    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if uid != -1:
            node.meta['uid'] = uid
        if gid != -1:
            node.meta['gid'] = gid
        if not node.is_dir and (uid != -1 or gid != -1):
            node.meta['mode'] &= ~stat.S_ISUID
            if node.meta['mode'] & stat.S_IXGRP:
                node.meta['mode'] &= ~stat.S_ISGID
        self._touch(node)
        self._log('chown', path, {'uid': uid, 'gid': gid})
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None,
                fh: int | None = None) -> int:
        """``times`` is (atime, mtime) in ns; None in either place means "now"."""
        node = self._node(path, fh)
        now = time.time_ns()
        atime, mtime = times if times is not None else (None, None)
        if atime != UTIME_OMIT:
            node.meta['atime'] = now if atime is None else atime
        if mtime != UTIME_OMIT:
            node.meta['mtime'] = now if mtime is None else mtime
        node.meta['ctime'] = now
        self._log('utimens', path)
        return 0

    def setxattr(self, path: str, name: str, value: bytes, options: int, *_position: int) -> int:
        node = self._lookup(path)
        if name.startswith('system.'):
            raise _err(errno.EOPNOTSUPP)
        xattrs = node.meta['xattrs']
        if options & XATTR_CREATE and name in xattrs:
            raise _err(errno.EEXIST)
        if options & XATTR_REPLACE and name not in xattrs:
            raise _err(errno.ENODATA)
        xattrs[name] = bytes(value)
        self._touch(node)
        self._log('setxattr', path, {'name': name})
        return 0

    def getxattr(self, path: str, name: str, *_position: int) -> bytes:
        node = self._lookup(path)
        if name.startswith('system.'):
            raise _err(errno.EOPNOTSUPP)
        try:
            return node.meta['xattrs'][name]
        except KeyError:
            raise _err(errno.ENODATA) from None

    def listxattr(self, path: str) -> list:
        return list(self._lookup(path).meta['xattrs'])

    def removexattr(self, path: str, name: str) -> int:
        node = self._lookup(path)
        try:
            del node.meta['xattrs'][name]
        except KeyError:
            raise _err(errno.ENODATA) from None
        self._touch(node)
        self._log('removexattr', path, {'name': name})
        return 0

    # file data

    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        if node.is_dir:
            raise _err(errno.EISDIR)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY and node.data:
            node.data = b''
            self._touch(node, mtime=True)
            self._log('truncate', path, {'length': 0})
        return self._new_fh(node, flags)

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path, fh)
        return bytes(node.data[offset:offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        handle = self._handles.get(fh)
        if handle is None:
            raise _err(errno.EIO)
        node = handle.node
        buf = self._writable_data(node)
        if handle.flags & os.O_APPEND:
            offset = len(buf)
        if offset > len(buf):
            buf.extend(bytes(offset - len(buf)))
        buf[offset:offset + len(data)] = data
        self._touch(node, mtime=True)
        if self._oplog is not None:
            self._log('write', path, {'offset': offset, 'size': len(data)})
        return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        if node.is_dir:
            raise _err(errno.EISDIR)
        buf = self._writable_data(node)
        if length < len(buf):
            del buf[length:]
        else:
            buf.extend(bytes(length - len(buf)))
        self._touch(node, mtime=True)
        self._log('truncate', path, {'length': length})
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        node = self._node(path, fh)
        buf = self._writable_data(node)
        if mode & FALLOC_FL_PUNCH_HOLE:
            if not mode & FALLOC_FL_KEEP_SIZE:
                raise _err(errno.EOPNOTSUPP)
            end = min(offset + size, len(buf))
            if end > offset:
                buf[offset:end] = bytes(end - offset)
        elif mode & ~FALLOC_FL_KEEP_SIZE:
            raise _err(errno.EOPNOTSUPP)
        elif not mode & FALLOC_FL_KEEP_SIZE and offset + size > len(buf):
            buf.extend(bytes(offset + size - len(buf)))
        self._touch(node, mtime=True)
        self._log('fallocate', path, {'mode': mode, 'offset': offset, 'size': size})
        return 0

    def flush(self, path: str | None, fh: int) -> int:  # pylint: disable=unused-argument
        return 0                # close(2) makes nothing durable

    def release(self, path: str | None, fh: int) -> int:  # pylint: disable=unused-argument
        self._handles.pop(fh, None)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        self._make_durable(node, data=True, meta=not datasync)
        self._log('fdatasync' if datasync else 'fsync', path)
        return 0

    # ------------------------------------------------------------ control

    def _walk(self, durable: bool) -> t.Iterator[tuple[str, Node]]:
        """(path, node) breadth first in sorted order, each inode once."""
        seen = {self._root.ino}
        queue = collections.deque([('/', self._root)])
        while queue:
            path, node = queue.popleft()
            yield path, node
            entries = node.dur_entries if durable else node.entries
            for name in sorted(entries or ()):
                child = entries[name]
                if child.ino in seen:
                    continue
                seen.add(child.ino)
                queue.append((path.rstrip('/') + '/' + name, child))

    def _recount_links(self) -> None:
        nodes: dict[int, Node] = {}
        counts: dict[int, int] = {}
        for _path, node in self._walk(durable=False):
            nodes[node.ino] = node
            for child in (node.entries or {}).values():
                counts[child.ino] = counts.get(child.ino, 0) + 1
        for ino, node in nodes.items():
            node.nlink = counts.get(ino, 1 if node is self._root else 0)

    def _invalidate_handles(self) -> int:
        """A cut, restore or reset: every open handle, and every hidden name, is gone."""
        stale = len(self._handles)
        self._handles.clear()
        self._epoch += 1
        self._just_hidden = self._previous_hide = None
        for _path, node in self._walk(durable=False):
            if node.hidden is not None:
                node.hidden = None
        return stale

    def _cmd_cut(self) -> dict:
        """Volatile := durable, inode by inode over the durable tree."""
        dropped_data = dropped_meta = dropped_dirs = 0
        volatile_inos = {node.ino for _p, node in self._walk(durable=False)}
        fsck: list[str] = []
        seen: set[int] = set()
        queue = collections.deque([('/', self._root)])
        while queue:
            path, node = queue.popleft()
            seen.add(node.ino)
            if _meta_differs(node):
                dropped_meta += 1
            node.meta = _copy_meta(node.dur_meta)
            if node.is_dir:
                if node.entries != node.dur_entries:
                    dropped_dirs += 1
                for name in sorted(node.dur_entries):
                    child = node.dur_entries[name]
                    child_path = path.rstrip('/') + '/' + name
                    if child.is_dir and child.ino in seen:
                        del node.dur_entries[name]      # a directory has one parent
                        fsck.append('removed second entry %s of directory inode %d'
                                    % (child_path, child.ino))
                    elif child.ino not in seen:
                        seen.add(child.ino)
                        queue.append((child_path, child))
                node.entries = dict(node.dur_entries)
            else:
                if node.data != node.dur_data:
                    dropped_data += 1
                node.data = node.dur_data
        self._recount_links()
        return {'dropped': {'file_data': dropped_data, 'metadata': dropped_meta,
                            'dir_entries': dropped_dirs,
                            'inodes_gone': len(volatile_inos - seen),
                            'inodes_back': len(seen - volatile_inos)},
                'stale_handles': self._invalidate_handles(), 'fsck': fsck}

    def _cmd_sync_all(self) -> dict:
        count = 0
        for _path, node in self._walk(durable=False):
            self._make_durable(node, data=True, meta=True)
            count += 1
        return {'inodes': count}

    def _clone_durable(self, root: Node) -> Node:
        """A new node graph equal to ``root``'s durable tree, volatile = durable."""
        memo: dict[int, Node] = {}

        def clone(node: Node) -> Node:
            copy = memo.get(node.ino)
            if copy is not None:
                return copy
            copy = Node(node.ino, node.kind, _copy_meta(node.dur_meta), node.target, node.rdev)
            memo[node.ino] = copy
            copy.data = copy.dur_data = node.dur_data
            if node.is_dir:
                copy.dur_entries = {name: clone(child) for name, child in node.dur_entries.items()}
                copy.entries = dict(copy.dur_entries)
            return copy

        return clone(root)

    def _cmd_save(self, name: str) -> dict:
        self._snapshots[name] = (self._clone_durable(self._root), self._next_ino)
        return {'saved': name}

    def _cmd_restore(self, name: str) -> dict:
        """Back to a snapshot; new inodes are numbered as they were after the save,
        so every run from one snapshot sees the same inode numbers."""
        try:
            snapshot, next_ino = self._snapshots[name]
        except KeyError:
            raise ValueError('no snapshot named %r (have: %s)' % (name, sorted(self._snapshots))) from None
        self._root = self._clone_durable(snapshot)
        self._next_ino = next_ino
        self._recount_links()
        return {'restored': name, 'stale_handles': self._invalidate_handles()}

    def _cmd_reset(self) -> dict:
        meta = self._root.meta
        self._next_ino = 1
        self._root = self._new_node(stat.S_IFDIR, meta['mode'], meta['uid'], meta['gid'])
        self._root.nlink = 1
        self._make_durable(self._root, data=True, meta=True)
        return {'stale_handles': self._invalidate_handles()}

    def _cmd_dirty(self) -> dict:
        data, meta, dirs = [], [], []
        for path, node in self._walk(durable=False):
            if node.is_dir:
                if node.entries != node.dur_entries:
                    dirs.append(path)
            elif node.data != node.dur_data:
                data.append(path)
            if _meta_differs(node):
                meta.append(path)
        return {'data': data, 'metadata': meta, 'dir_entries': dirs}

    def _cmd_stats(self) -> dict:
        inodes = dirty_data = dirty_dirs = 0
        for _path, node in self._walk(durable=False):
            inodes += 1
            if node.is_dir:
                dirty_dirs += node.entries != node.dur_entries
            else:
                dirty_data += node.data != node.dur_data
        return {'ops': dict(sorted(self._counts.items())), 'inodes': inodes,
                'dirty_files': dirty_data, 'dirty_dirs': dirty_dirs,
                'open_handles': len(self._handles), 'epoch': self._epoch, 'cuts': self._cuts,
                'snapshots': sorted(self._snapshots), 'errors': len(self._errors),
                'pid': os.getpid()}

    def control(self, line: str) -> dict:
        """Run one control command (see the module doc); returns the JSON reply."""
        words = line.split()
        if not words:
            raise ValueError('empty command')
        cmd, args = words[0], words[1:]
        with self._mutex:
            if cmd == 'ping':
                return {'pid': os.getpid()}
            if cmd == 'cut':
                self._cuts += 1
                return self._cmd_cut()
            if cmd == 'sync-all':
                return self._cmd_sync_all()
            if cmd == 'save' and len(args) == 1:
                return self._cmd_save(args[0])
            if cmd == 'restore' and len(args) == 1:
                return self._cmd_restore(args[0])
            if cmd == 'drop' and len(args) == 1:
                return {'dropped': self._snapshots.pop(args[0], None) is not None}
            if cmd == 'reset':
                return self._cmd_reset()
            if cmd == 'stats':
                return self._cmd_stats()
            if cmd == 'stats-reset':
                self._counts.clear()
                return {}
            if cmd == 'dirty':
                return self._cmd_dirty()
            if cmd == 'log-on':
                self._oplog = []
                return {}
            if cmd == 'log-off':
                self._oplog = None
                return {}
            if cmd == 'log':
                entries, self._oplog = self._oplog or [], ([] if self._oplog is not None else None)
                return {'log': entries}
            if cmd == 'errors':
                return {'errors': list(self._errors)}
        raise ValueError('unknown command %r' % line.strip())

    # ------------------------------------------------------- op dispatch

    def _wrap_ops(self) -> None:
        """Put every FUSE op under the mutex, count it, and record internal errors.

        An OSError is the op's answer to the kernel; anything else is a bug in
        powerfs: it is kept for the ``errors`` command and answered with EIO.
        """
        for name in IMPLEMENTED_OPS - {'init'}:
            method = getattr(self, name)

            def wrapped(*args, _method=method, _name=name):
                with self._mutex:
                    self._counts[_name] = self._counts.get(_name, 0) + 1
                    self._previous_hide, self._just_hidden = self._just_hidden, None
                    try:
                        return _method(*args)
                    except OSError:
                        raise
                    except Exception:  # pylint: disable=broad-except
                        self._errors.append('%s%r: %s' % (_name, args, traceback.format_exc()))
                        log.error('internal error in %s%r', _name, args, exc_info=True)
                        raise _err(errno.EIO) from None

            wrapped.__name__ = name
            setattr(self, name, wrapped)
        self.init_with_config = self._locked_init(self.init_with_config)

    def _locked_init(self, method: t.Callable) -> t.Callable:
        def init_with_config(conn_info, config):
            with self._mutex:
                return method(conn_info, config)
        return init_with_config


def _check_op_names(ops: PowerFS, fuse_operations: t.Any) -> None:
    """Refuse to mount if an attribute would be taken for an unintended FUSE op."""
    fields = {field[0] for field in fuse_operations._fields_}
    stray = sorted(name for name in fields if hasattr(ops, name) and name not in IMPLEMENTED_OPS)
    missing = sorted(name for name in IMPLEMENTED_OPS - {'init'} if name not in fields)
    if stray or missing:
        raise RuntimeError('powerfs: attributes named like FUSE ops %s; ops unknown to this '
                           'libfuse: %s' % (stray, missing))


# --------------------------------------------------------------------------
# mfusepy glue
# --------------------------------------------------------------------------

def _fuse_class() -> type:
    """mfusepy.FUSE with the libfuse 3 wrappers that drop arguments powerfs needs.

    mfusepy 3.1 ignores rename's flags (RENAME_NOREPLACE would silently
    replace), the file handle of chmod/chown/truncate/utimens (ftruncate of a
    file opened before a cut must fail, not act on whatever the path names
    now), and decodes UTIME_NOW/UTIME_OMIT as times.
    """
    import ctypes  # pylint: disable=import-outside-toplevel

    import mfusepy  # pylint: disable=import-outside-toplevel

    class FUSE(mfusepy.FUSE):
        def _path(self, path):
            return None if path is None else path.decode(self.encoding, self.errors)

        @staticmethod
        def _fh(fip):
            return fip.contents.fh if fip else None

        def rename_fuse_3(self, old, new, flags):
            return self.operations.rename(self._path(old), self._path(new), flags)

        def chmod_fuse_3(self, path, mode, fip):
            return self.operations.chmod(self._path(path), mode, self._fh(fip))

        def chown_fuse_3(self, path, uid, gid, fip):
            if ctypes.c_uint32(uid + 1).value == 0:
                uid = -1
            if ctypes.c_uint32(gid + 1).value == 0:
                gid = -1
            return self.operations.chown(self._path(path), uid, gid, self._fh(fip))

        def truncate_fuse_3(self, path, length, fip):
            return self.operations.truncate(self._path(path), length, self._fh(fip))

        def utimens_fuse_3(self, path, buf, fip):
            times = None
            if buf:
                pair = []
                for spec in (buf.contents.actime, buf.contents.modtime):
                    if spec.tv_nsec == UTIME_NOW:
                        pair.append(None)
                    elif spec.tv_nsec == UTIME_OMIT:
                        pair.append(UTIME_OMIT)
                    else:
                        pair.append(spec.tv_sec * 10**9 + spec.tv_nsec)
                times = tuple(pair)
            return self.operations.utimens(self._path(path), times, self._fh(fip))

    missing = [name for name in vars(FUSE) if name.endswith('_fuse_3') and not hasattr(mfusepy.FUSE, name)]
    if missing:     # an mfusepy that renamed its wrappers would silently bypass these
        raise RuntimeError('powerfs: mfusepy %s has no %s' % (getattr(mfusepy, '__version__', '?'), missing))
    return FUSE


# --------------------------------------------------------------------------
# Control socket
# --------------------------------------------------------------------------

def serve_control(fs: PowerFS, sock_path: str) -> socket.socket:
    """Listen on ``sock_path`` in a daemon thread; one JSON reply per command line."""
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(8)

    def handle(conn: socket.socket) -> None:
        with conn, conn.makefile('rwb') as stream:
            for raw in stream:
                try:
                    reply = {'ok': True}
                    reply.update(fs.control(raw.decode()))
                except Exception as exc:  # pylint: disable=broad-except
                    reply = {'ok': False, 'error': '%s: %s' % (type(exc).__name__, exc)}
                stream.write(json.dumps(reply).encode() + b'\n')
                stream.flush()

    def accept_loop() -> None:
        while True:
            try:
                conn, _addr = server.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, name='powerfs-control', daemon=True).start()
    return server


def ctl(sock_path: str, command: str, timeout: float = 30.0) -> dict:
    """Send one control command and return the reply (raises on ``ok: false``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(sock_path)
        client.sendall(command.encode() + b'\n')
        with client.makefile('rb') as stream:
            reply = json.loads(stream.readline())
    if not reply.get('ok'):
        raise RuntimeError('powerfs %s: %s' % (command, reply.get('error')))
    return reply


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('mountpoint', nargs='?')
    parser.add_argument('--control', help='unix socket for control commands')
    parser.add_argument('--fsname', default='powerfs', help='the source shown in mountinfo')
    parser.add_argument('--direct-io', action='store_true',
                        help='direct I/O for every file (no page cache; breaks SQLite WAL)')
    parser.add_argument('--ready-fd', type=int, help='write "ready" here once mounted')
    parser.add_argument('--log', help='log file (default: stderr)')
    parser.add_argument('--debug', action='store_true', help="libfuse's request trace on stderr")
    parser.add_argument('--ctl', metavar='SOCKET', help='send a control command and exit')
    parser.add_argument('command', nargs='*', help='with --ctl: the command, e.g. cut')
    args = parser.parse_args(argv)

    if args.ctl:
        words = ([args.mountpoint] if args.mountpoint else []) + args.command
        print(json.dumps(ctl(args.ctl, ' '.join(words)), indent=1))
        return 0
    if not args.mountpoint or not args.control:
        parser.error('a mountpoint and --control are required')

    logging.basicConfig(filename=args.log, level=logging.DEBUG if args.debug else logging.WARNING,
                        format='%(asctime)s powerfs[%(process)d] %(levelname)s %(message)s')
    # mfusepy loads libfuse 2 when both are installed, and its library search
    # (ctypes.util.find_library) costs ~200 ms: name libfuse 3 directly.
    os.environ.setdefault('FUSE_LIBRARY_PATH', LIBFUSE3)
    import mfusepy  # pylint: disable=import-outside-toplevel

    if mfusepy.fuse_version_major != 3:
        parser.error('powerfs needs libfuse 3; mfusepy loaded %d.%d'
                     % (mfusepy.fuse_version_major, mfusepy.fuse_version_minor))

    fs = PowerFS(direct_io=args.direct_io, ready_fd=args.ready_fd)
    _check_op_names(fs, mfusepy.fuse_operations)
    fs._wrap_ops()  # pylint: disable=protected-access
    server = serve_control(fs, args.control)
    options = {name: True for name in MOUNT_OPTIONS}
    try:
        _fuse_class()(fs, args.mountpoint, foreground=True, nothreads=True, debug=args.debug,
                      fsname=args.fsname, subtype='powerfs', **options)
    finally:
        server.close()
        try:
            os.unlink(args.control)
        except OSError:
            pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
