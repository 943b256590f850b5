# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""blockdev: disks that log every block write and flush, and fail or lie on command.

The block-level half of the crash suite (issue 11): what dm-log-writes and
CrashMonkey do in the kernel's own test suites, built from what this machine
has (loop devices and FUSE). This module is both the FUSE daemon (run as
``python blockdev.py serve ...``, normally by :class:`BlockDev`) and the
library the tests use.

How it works
------------

A single-threaded FUSE filesystem (mfusepy over libfuse 3, ``-s``) exposes
one flat directory: an image file per disk (``<name>.img``, memory-backed,
fixed size, blocks of 4 KiB kept only where non-zero) and a ``control`` file.
A loop device is attached to each image (``losetup -f --show``, with or
without ``--direct-io=on``), a real filesystem made on it and mounted. The
block layer's requests then reach the daemon as file operations on the image:

* a bio write -> a FUSE WRITE (offset, data), logged as ``W``;
* a FLUSH (REQ_PREFLUSH; FUA too, since the loop device has a volatile write
  cache and no FUA, so the block layer turns a FUA write into write + flush)
  -> ``vfs_fsync`` of the backing file -> FUSE FSYNC, logged as ``F``;
* a discard / write-zeroes -> ``fallocate`` punch/zero, logged as ``D``;
* a line ``mark TEXT`` written to the control file -> ``M``.

All disks of one daemon share ONE log, in the order the daemon served the
requests (one thread: that order is total). Every file is opened with
``direct_io`` (FOPEN_DIRECT_IO): no FUSE page cache, so every read and every
write of the loop device reaches the daemon (``test_blockdev`` checks that a
read after a rot switch sees the rot). Log order vs. the block layer: a
filesystem waits for the writes a flush must cover to complete before it
issues the flush, so every such write is in the log before its ``F``. A write
still in flight when a flush arrives may be logged before it too: replay then
treats it as flushed, which only makes crash states fewer, never wrong.

Faults, switched at run time through the control file (and cleared by
``heal``); ``DISK`` is a disk name or ``*`` for every disk:

* ``fail-writes DISK START END``: writes overlapping [START, END) fail (EIO);
* ``fail-writes-after DISK N``: the next N writes succeed, all later ones fail;
* ``fail-writes-matching DISK HEX``: writes of any 4 KiB block that would
  contain these bytes fail (to hit a chosen file's data wherever the
  filesystem put it);
* ``fail-flush DISK``: every fsync fails with EIO (a dying disk);
* ``fail-flush-after DISK N``: the next N fsyncs succeed, all later ones fail;
* ``rot DISK START END``: reads of [START, END) return every byte XOR 0x01;
* ``rot-matching DISK HEX``: reads of any 4 KiB block that holds these bytes
  return them with the first byte of each occurrence XOR 0x01.

A failed write changes nothing on the medium and is logged as ``w`` (failed
flush: ``f``), so a replay skips it. A fault applies to one FUSE write: the
kernel usually sends a block request as one, but may split it (seen for an
8 KiB O_DIRECT write to a raw loop device), and then only the pieces that
hit the fault fail; ``Rig(max_request_kib=4)`` makes every request one block. Rot never changes what is stored: only
reads lie. A pattern counts only where it lies wholly inside one 4 KiB block
of the image (blocks are 4 KiB aligned in the image).

Replay (:class:`Log`, :class:`Replayer`): the crash state "prefix up to
flush record K" is every write logged before record K applied to the disks
as they were when the daemon started (all zero); "K plus a seeded random
subset of the writes after it, up to the next flush" is CrashMonkey's
stronger state (unflushed writes may be lost or reordered). States are
written to plain sparse image files (only non-zero blocks are written).
:func:`mount_images` mounts such images (writable: ext4's journal replay and
xfs's log recovery run as after a real power loss) and tears them down.

Everything runs as root in a private mount namespace
(:func:`powerfs_harness.enter_private_mount_namespace`): mounts never leak
to the machine and vanish with the test process. Loop devices are global:
each is held open by the test process and marked autoclear right after it
is attached (:class:`LoopDevice`), so it detaches at its last close; a test
process killed outright leaves none behind once its namespace (and so its
mounts) is gone. Teardown unmounts, closes, and checks by name that each
device is detached (``losetup -d`` if it is not), then unmounts the FUSE
filesystem and ends the daemon by PID.

Typical use (in pytest, the ``blockdev_rig`` fixture makes and closes the
rig, and skips where it cannot run)::

    with Rig(tmp_path, {'src': 'ext4', 'dest': ('xfs', 300)}) as rig:
        build_tree(rig.path('src'))     # rig.path(disk): its mount point
        rig.sync()                      # setup durable (syncfs of every disk)
        rig.mark('start')
        run_the_mover(rig.path('src'), rig.path('dest'))
        rig.mark('end')
        log = rig.log()                 # every disk's writes/flushes, marks, in order
        replayer = Replayer(log)        # forwards is cheap: keep k increasing
        for k in log.flushes(after='start', before='end'):
            for seed in (None, k):      # the flush prefix, then a CrashMonkey subset
                with rig.crash_state(log, replayer, k, subset_seed=seed) as mounts:
                    check(mounts['src'], mounts['dest'])     # writable copies

    rig.dev.fail_writes('dest', matching=b'marker')  # or start=, end=; or after=N
    rig.dev.fail_flush('dest')                       # or after=N
    rig.dev.rot('dest', matching=b'marker')          # or start=, end=
    rig.dev.heal(); rig.remount('dest')              # what is read now is the medium
    rig.dev.stats()['counts']                        # writes, flushes, failed_*, rotted_reads

Measured (``python blockdev.py bench``, the 2-core VM shared with other
work; a chain of 20 create/write/fdatasync/rename/fsync-dir steps, 80 flush
points), median ms per crash state, replay + mount with recovery + read
every file + unmount: ext4 12 (1 + 7 + 1 + 3) at load ~2 and 30-45 at load
~6; xfs 21 (2 + 15 + 1 + 4) and 41-77; btrfs 52 and 31-58. Mounting is
nearly all of it; the replay is 1-2 ms. A rig with one ext4 and one xfs
disk is made in ~0.5 s and torn down in ~0.1 s.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import random
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import typing as t
from contextlib import contextmanager
from pathlib import Path

BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)
CONTROL = 'control'
IMAGE_SUFFIX = '.img'
LIBFUSE3 = 'libfuse3.so.3'
MIB = 1024 * 1024

# Log records: a header, then `length` bytes of payload.
LOG_MAGIC = b'durable.mover blockdev log 1\n'
HEADER = struct.Struct('<BBHIQQ')       # kind, disk, mode, length, offset, size
DISK, WRITE, FLUSH, DISCARD, MARK, WRITE_FAILED, FLUSH_FAILED = b'dWFDMwf'  # ints
KIND_NAMES = {DISK: 'disk', WRITE: 'write', FLUSH: 'flush', DISCARD: 'discard', MARK: 'mark',
              WRITE_FAILED: 'write-failed', FLUSH_FAILED: 'flush-failed'}
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


# ==========================================================================
# The daemon
# ==========================================================================

class Disk:
    """A memory-backed image: {block number: 4 KiB of bytes}, zero blocks absent."""

    def __init__(self, index: int, name: str, size: int):
        self.index = index
        self.name = name
        self.size = size
        self.blocks: dict[int, bytes] = {}

    def read(self, offset: int, size: int) -> bytearray:
        size = max(0, min(size, self.size - offset))
        out = bytearray(size)
        pos, end = offset, offset + size
        while pos < end:
            number, within = divmod(pos, BLOCK)
            take = min(BLOCK - within, end - pos)
            block = self.blocks.get(number)
            if block is not None:
                out[pos - offset:pos - offset + take] = block[within:within + take]
            pos += take
        return out

    def blocks_of(self, offset: int, size: int) -> t.Iterator[tuple[int, bytes]]:
        """(number, content) of every block overlapping [offset, offset + size)."""
        for number in range(offset // BLOCK, (offset + size + BLOCK - 1) // BLOCK):
            yield number, self.blocks.get(number, ZERO_BLOCK)

    def write(self, offset: int, data: bytes) -> None:
        apply_write(self.blocks, offset, data)

    def zero(self, offset: int, size: int) -> None:
        apply_zero(self.blocks, offset, min(size, self.size - offset))


def apply_write(blocks: dict, offset: int, data: t.Union[bytes, memoryview]) -> None:
    """Write `data` at `offset` into a block dict (zero blocks are dropped)."""
    view = memoryview(data)
    pos, end = offset, offset + len(view)
    while pos < end:
        number, within = divmod(pos, BLOCK)
        take = min(BLOCK - within, end - pos)
        chunk = view[pos - offset:pos - offset + take]
        if take == BLOCK:
            block = bytes(chunk)
        else:
            merged = bytearray(blocks.get(number, ZERO_BLOCK))
            merged[within:within + take] = chunk
            block = bytes(merged)
        if block == ZERO_BLOCK:
            blocks.pop(number, None)
        else:
            blocks[number] = block
        pos += take


def apply_zero(blocks: dict, offset: int, size: int) -> None:
    pos, end = offset, offset + max(0, size)
    while pos < end:
        number, within = divmod(pos, BLOCK)
        take = min(BLOCK - within, end - pos)
        if take == BLOCK:
            blocks.pop(number, None)
        elif number in blocks:
            merged = bytearray(blocks[number])
            merged[within:within + take] = bytes(take)
            apply_write(blocks, number * BLOCK, merged)
        pos += take


class Faults:
    """The faults switched on now (see the module doc)."""

    def __init__(self) -> None:
        self.heal()

    def heal(self) -> None:
        self.write_ranges: list[tuple[str, int, int]] = []
        self.write_after: dict[str, int] = {}
        self.write_patterns: list[tuple[str, bytes]] = []
        self.flush_fails: set[str] = set()
        self.flush_after: dict[str, int] = {}
        self.rot_ranges: list[tuple[str, int, int]] = []
        self.rot_patterns: list[tuple[str, bytes]] = []

    def describe(self) -> dict:
        return {'fail_writes': [list(r) for r in self.write_ranges],
                'fail_writes_after': dict(self.write_after),
                'fail_writes_matching': [[d, p.hex()] for d, p in self.write_patterns],
                'fail_flush': sorted(self.flush_fails),
                'fail_flush_after': dict(self.flush_after),
                'rot': [list(r) for r in self.rot_ranges],
                'rot_matching': [[d, p.hex()] for d, p in self.rot_patterns]}

    @staticmethod
    def _for(disk: Disk, rules: t.Iterable) -> list:
        return [rule[1:] for rule in rules if rule[0] in ('*', disk.name)]

    def write_fails(self, disk: Disk, offset: int, data: bytes) -> bool:
        """Does this write fail? (Counts it against fail-writes-after.)"""
        end = offset + len(data)
        failed = any(start < end and offset < stop for start, stop in self._for(disk, self.write_ranges))
        for key in ('*', disk.name):
            if key in self.write_after:
                if self.write_after[key] > 0:
                    self.write_after[key] -= 1
                else:
                    failed = True
        patterns = [p for (p,) in self._for(disk, self.write_patterns)]
        if not failed and patterns:
            new = dict(disk.blocks_of(offset, len(data)))
            apply_write(new, offset, data)
            failed = any(p in block for block in new.values() for p in patterns)
        return failed

    def flush_fails_on(self, disk: Disk) -> bool:
        """Does this flush fail? (Counts it against fail-flush-after.)"""
        failed = '*' in self.flush_fails or disk.name in self.flush_fails
        for key in ('*', disk.name):
            if key in self.flush_after:
                if self.flush_after[key] > 0:
                    self.flush_after[key] -= 1
                else:
                    failed = True
        return failed

    def rot(self, disk: Disk, offset: int, out: bytearray) -> int:
        """Alter what a read of [offset, offset + len(out)) returns; count the blocks."""
        ranges = self._for(disk, self.rot_ranges)
        patterns = [p for (p,) in self._for(disk, self.rot_patterns)]
        if not ranges and not patterns:
            return 0
        rotted = 0
        end = offset + len(out)
        for start, stop in ranges:
            lo, hi = max(start, offset), min(stop, end)
            for pos in range(lo, hi):
                out[pos - offset] ^= 0x01
            rotted += hi > lo
        if patterns:
            for number, block in disk.blocks_of(offset, len(out)):
                base = number * BLOCK
                for pattern in patterns:
                    at = block.find(pattern)
                    while at >= 0:
                        if offset <= base + at < end:
                            out[base + at - offset] ^= 0x01
                            rotted += 1
                        at = block.find(pattern, at + 1)
        return rotted


class LogWriter:
    """The one log of every disk: appended in the order requests are served."""

    def __init__(self, path: str):
        self.handle = open(path, 'wb', buffering=1 << 20)  # pylint: disable=consider-using-with
        self.handle.write(LOG_MAGIC)
        self.records = 0

    def append(self, kind: int, disk: int = 0, offset: int = 0, size: int = 0, mode: int = 0,
               payload: bytes = b'') -> int:
        self.handle.write(HEADER.pack(kind, disk, mode, len(payload), offset, size))
        if payload:
            self.handle.write(payload)
        if kind == DISK:
            return -1           # declarations are not records of the parsed log
        self.records += 1
        return self.records - 1

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class BlockDevFS:
    """The FUSE operations (mfusepy, path based): image files and a control file."""

    use_ns = True

    def __init__(self, disks: list[tuple[str, int]], log_path: str, ready_fd: int | None = None):
        self.disks = {name: Disk(index, name, size) for index, (name, size) in enumerate(disks)}
        self.by_path = {'/' + name + IMAGE_SUFFIX: disk for name, disk in self.disks.items()}
        self.faults = Faults()
        self.log = LogWriter(log_path)
        for disk in self.disks.values():
            self.log.append(DISK, disk.index, size=disk.size, payload=disk.name.encode())
        self.log.flush()
        self.ready_fd = ready_fd
        self.counts: dict[str, int] = {}
        self.replies: dict[int, bytes] = {}
        self.next_fh = 1
        self.started = time.time()

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _disk(self, path: str) -> Disk:
        disk = self.by_path.get(path)
        if disk is None:
            raise _err(errno.ENOENT)
        return disk

    # -- FUSE ops ----------------------------------------------------------

    def init_with_config(self, conn_info: t.Any, config: t.Any) -> None:
        if config is not None:
            config.direct_io = 1        # no FUSE page cache: every read and write reaches us
            config.kernel_cache = 0
            config.auto_cache = 0
            config.entry_timeout = 0.0
            config.attr_timeout = 0.0
            config.negative_timeout = 0.0
        if self.ready_fd is not None:
            os.write(self.ready_fd, b'ready\n')
            os.close(self.ready_fd)
            self.ready_fd = None

    def destroy(self, path: str) -> None:  # pylint: disable=unused-argument
        self.log.close()

    def getattr(self, path: str, fh: int | None = None) -> dict:  # pylint: disable=unused-argument
        now = int(self.started * 1e9)
        base = {'st_uid': 0, 'st_gid': 0, 'st_atime': now, 'st_mtime': now, 'st_ctime': now}
        if path == '/':
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_size=0)
        if path == '/' + CONTROL:
            return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=0)
        disk = self._disk(path)
        return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1, st_size=disk.size,
                    st_blocks=len(disk.blocks) * (BLOCK // 512))

    def readdir(self, path: str, fh: int) -> list:  # pylint: disable=unused-argument
        return ['.', '..', CONTROL] + [name + IMAGE_SUFFIX for name in self.disks]

    def statfs(self, path: str) -> dict:  # pylint: disable=unused-argument
        total = sum(d.size for d in self.disks.values()) // BLOCK
        used = sum(len(d.blocks) for d in self.disks.values())
        return {'f_bsize': BLOCK, 'f_frsize': BLOCK, 'f_blocks': total, 'f_bfree': total - used,
                'f_bavail': total - used, 'f_files': 8, 'f_ffree': 0, 'f_namemax': 255}

    def open(self, path: str, flags: int) -> int:  # pylint: disable=unused-argument
        if path != '/' + CONTROL:
            self._disk(path)
        fh, self.next_fh = self.next_fh, self.next_fh + 1
        return fh

    def release(self, path: str, fh: int) -> int:  # pylint: disable=unused-argument
        self.replies.pop(fh, None)
        return 0

    def flush(self, path: str, fh: int) -> int:  # pylint: disable=unused-argument
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:  # pylint: disable=unused-argument
        if path == '/' + CONTROL:
            return 0
        if length != self._disk(path).size:
            raise _err(errno.EPERM)     # a disk does not change size
        return 0

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        if path == '/' + CONTROL:
            reply = self.replies.get(fh, b'')
            return reply[offset:offset + size]
        disk = self._disk(path)
        out = disk.read(offset, size)
        self._count('reads')
        rotted = self.faults.rot(disk, offset, out)
        if rotted:
            self._count('rotted_reads')
        return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        if path == '/' + CONTROL:
            self.replies[fh] = self.control(data.decode('utf-8', 'replace'))
            return len(data)
        disk = self._disk(path)
        if offset + len(data) > disk.size:
            raise _err(errno.ENOSPC)
        if self.faults.write_fails(disk, offset, data):
            self.log.append(WRITE_FAILED, disk.index, offset, len(data))
            self._count('failed_writes')
            raise _err(errno.EIO)
        disk.write(offset, data)
        self.log.append(WRITE, disk.index, offset, len(data), payload=data)
        self._count('writes')
        self._count('bytes_written', len(data))
        return len(data)

    def fsync(self, path: str, datasync: int, fh: int) -> int:  # pylint: disable=unused-argument
        if path == '/' + CONTROL:
            return 0
        disk = self._disk(path)
        if self.faults.flush_fails_on(disk):
            self.log.append(FLUSH_FAILED, disk.index, mode=datasync)
            self._count('failed_flushes')
            raise _err(errno.EIO)
        self.log.append(FLUSH, disk.index, mode=datasync)
        self._count('flushes')
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:  # pylint: disable=unused-argument
        disk = self._disk(path)
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            disk.zero(offset, size)
            self.log.append(DISCARD, disk.index, offset, size, mode=mode)
            self._count('discards')
            return 0
        if mode & ~FALLOC_FL_KEEP_SIZE or offset + size > disk.size:
            raise _err(errno.EOPNOTSUPP)
        return 0                # allocating: every block of a disk exists already

    # -- control -------------------------------------------------------------

    def control(self, text: str) -> bytes:
        """Run the control command(s) written; the reply is read from the same fd."""
        try:
            reply: dict = {'ok': True}
            for line in filter(None, (raw.strip() for raw in text.splitlines())):
                reply.update(self._command(line))
        except Exception as exc:  # pylint: disable=broad-except
            reply = {'ok': False, 'error': '%s: %s' % (type(exc).__name__, exc)}
        return json.dumps(reply).encode() + b'\n'

    def _disk_arg(self, name: str) -> str:
        if name != '*' and name not in self.disks:
            raise ValueError('no disk %r (disks: %s)' % (name, ', '.join(self.disks)))
        return name

    def _command(self, line: str) -> dict:  # pylint: disable=too-many-return-statements
        cmd, _sep, rest = line.partition(' ')
        args = rest.split()
        if cmd == 'mark':
            self._count('marks')
            return {'record': self.log.append(MARK, payload=rest.encode())}
        if cmd == 'ping':
            return {'pid': os.getpid()}
        if cmd == 'sync-log':
            self.log.flush()
            return {'records': self.log.records}
        if cmd == 'stats':
            return {'counts': dict(self.counts), 'records': self.log.records, 'faults': self.faults.describe(),
                    'blocks': {d.name: len(d.blocks) for d in self.disks.values()}}
        if cmd == 'heal' and not args:
            self.faults.heal()
            return {}
        if cmd in ('fail-writes', 'rot') and len(args) == 3:
            start, end = int(args[1]), int(args[2])
            if not 0 <= start < end:
                raise ValueError('bad range [%d, %d)' % (start, end))
            rules = self.faults.write_ranges if cmd == 'fail-writes' else self.faults.rot_ranges
            rules.append((self._disk_arg(args[0]), start, end))
            return {}
        if cmd in ('fail-writes-matching', 'rot-matching') and len(args) == 2:
            pattern = bytes.fromhex(args[1])
            if not 0 < len(pattern) <= BLOCK:
                raise ValueError('a pattern is 1 to %d bytes' % BLOCK)
            rules = self.faults.write_patterns if cmd == 'fail-writes-matching' else self.faults.rot_patterns
            rules.append((self._disk_arg(args[0]), pattern))
            return {}
        if cmd == 'fail-writes-after' and len(args) == 2:
            self.faults.write_after[self._disk_arg(args[0])] = int(args[1])
            return {}
        if cmd == 'fail-flush' and len(args) == 1:
            self.faults.flush_fails.add(self._disk_arg(args[0]))
            return {}
        if cmd == 'fail-flush-after' and len(args) == 2:
            self.faults.flush_after[self._disk_arg(args[0])] = int(args[1])
            return {}
        raise ValueError('unknown or malformed command %r' % line)


IMPLEMENTED_OPS = ('init', 'destroy', 'getattr', 'readdir', 'statfs', 'open', 'release', 'flush',
                   'truncate', 'read', 'write', 'fsync', 'fallocate')


def serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog='blockdev.py serve', description='run the FUSE daemon')
    parser.add_argument('mountpoint')
    parser.add_argument('--disk', action='append', required=True, metavar='NAME=BYTES',
                        help='a disk image (repeat for several)')
    parser.add_argument('--log', required=True, help='the log file (binary records)')
    parser.add_argument('--ready-fd', type=int, help='write "ready" here once mounted')
    parser.add_argument('--debug', action='store_true', help="libfuse's request trace on stderr")
    args = parser.parse_args(argv)
    disks = []
    for spec in args.disk:
        name, _sep, size = spec.partition('=')
        if not name or '/' in name or not size.isdigit() or int(size) % BLOCK:
            parser.error('--disk wants NAME=BYTES (a multiple of %d), got %r' % (BLOCK, spec))
        disks.append((name, int(size)))
    if len({name for name, _size in disks}) != len(disks) or len(disks) > 255:
        parser.error('disk names must be distinct (at most 255 disks)')
    os.environ.setdefault('FUSE_LIBRARY_PATH', LIBFUSE3)
    import mfusepy  # pylint: disable=import-outside-toplevel
    if mfusepy.fuse_version_major != 3:
        parser.error('blockdev needs libfuse 3; mfusepy loaded %d' % mfusepy.fuse_version_major)
    ops = BlockDevFS(disks, args.log, args.ready_fd)
    fields = {field[0] for field in mfusepy.fuse_operations._fields_}
    stray = sorted(name for name in fields if hasattr(ops, name) and name not in IMPLEMENTED_OPS)
    if stray:
        raise RuntimeError('attributes named like FUSE ops: %s' % stray)
    mfusepy.FUSE(ops, args.mountpoint, foreground=True, nothreads=True, debug=args.debug,
                 fsname='blockdev', subtype='blockdev', allow_other=True)
    return 0


# ==========================================================================
# The log and replay
# ==========================================================================

class Record(t.NamedTuple):
    index: int
    kind: int
    disk: str            # '' for marks
    offset: int
    size: int
    mode: int
    data: t.Union[bytes, memoryview]      # WRITE: the bytes written; MARK: the text, encoded

    @property
    def text(self) -> str:
        return bytes(self.data).decode('utf-8', 'replace') if self.kind == MARK else ''

    def __repr__(self) -> str:
        if self.kind == MARK:
            return '<%d mark %r>' % (self.index, self.text)
        return '<%d %s %s %d+%d>' % (self.index, KIND_NAMES[self.kind], self.disk, self.offset, self.size)


class Log:
    """A parsed log: records in order, the disks (name -> size) in declaration order."""

    def __init__(self, records: list[Record], disks: dict[str, int]):
        self.records = records
        self.disks = disks

    @classmethod
    def read(cls, path: os.PathLike | str) -> Log:
        with open(path, 'rb') as handle:
            raw = handle.read()
        if not raw.startswith(LOG_MAGIC):
            raise ValueError('%s is not a blockdev log' % path)
        view = memoryview(raw)
        pos = len(LOG_MAGIC)
        names: dict[int, str] = {}
        disks: dict[str, int] = {}
        records: list[Record] = []
        while pos + HEADER.size <= len(raw):
            kind, disk, mode, length, offset, size = HEADER.unpack_from(raw, pos)
            pos += HEADER.size
            payload = view[pos:pos + length]
            if len(payload) < length:
                break           # a record cut short (the daemon died mid-append)
            pos += length
            if kind == DISK:
                names[disk] = bytes(payload).decode()
                disks[names[disk]] = size
                continue
            records.append(Record(len(records), kind, names.get(disk, '') if kind != MARK else '',
                                  offset, size, mode, payload))
        return cls(records, disks)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Record:
        return self.records[index]

    def marks(self) -> list[Record]:
        return [r for r in self.records if r.kind == MARK]

    def mark(self, text: str) -> int:
        """The index of the (last) mark with this text."""
        found = [r.index for r in self.records if r.kind == MARK and r.text == text]
        if not found:
            raise KeyError('no mark %r in the log (marks: %s)' % (text, [m.text for m in self.marks()]))
        return found[-1]

    def _bounds(self, after: t.Union[str, int, None], before: t.Union[str, int, None]) -> tuple[int, int]:
        start = self.mark(after) if isinstance(after, str) else (after if after is not None else -1)
        end = self.mark(before) if isinstance(before, str) else (before if before is not None else len(self))
        return start, end

    def flushes(self, after: t.Union[str, int, None] = None, before: t.Union[str, int, None] = None,
                disk: str | None = None) -> list[int]:
        """Indices of the flush records strictly between `after` and `before`
        (a mark's text or a record index)."""
        start, end = self._bounds(after, before)
        return [r.index for r in self.records[start + 1:end]
                if r.kind == FLUSH and (disk is None or r.disk == disk)]

    def unflushed_writes(self, k: int) -> list[int]:
        """The writes after record `k` up to the next flush (of any disk): the ones a
        crash just after `k` may have lost, or kept in any subset (CrashMonkey)."""
        found = []
        for record in self.records[k + 1:]:
            if record.kind == FLUSH:
                break
            if record.kind == WRITE:
                found.append(record.index)
        return found

    def count(self, kind: int, after: t.Union[str, int, None] = None,
              before: t.Union[str, int, None] = None) -> int:
        start, end = self._bounds(after, before)
        return sum(1 for r in self.records[start + 1:end] if r.kind == kind)


class Replayer:
    """Builds crash states of a log, forwards: asking for an earlier state restarts."""

    def __init__(self, log: Log):
        self.log = log
        self._reset()

    def _reset(self) -> None:
        self.blocks: dict[str, dict[int, bytes]] = {name: {} for name in self.log.disks}
        self.applied = 0            # records [0, applied) are in self.blocks

    def _apply(self, blocks: dict[str, dict[int, bytes]], record: Record) -> None:
        if record.kind == WRITE:
            apply_write(blocks[record.disk], record.offset, record.data)
        elif record.kind == DISCARD:
            apply_zero(blocks[record.disk], record.offset, record.size)

    def advance(self, upto: int) -> None:
        """Apply records [0, upto) (every write before record `upto`)."""
        if upto < self.applied:
            self._reset()
        for record in self.log.records[self.applied:upto]:
            self._apply(self.blocks, record)
        self.applied = max(self.applied, upto)

    def state(self, k: int, subset_seed: int | None = None) -> dict[str, dict[int, bytes]]:
        """The disks' blocks in crash state `k`: every write before record `k` (a
        flush), plus, with `subset_seed`, a seeded random subset of the writes
        after it up to the next flush (each kept with probability 1/2, in order)."""
        self.advance(k + 1)
        if subset_seed is None:
            return self.blocks
        rng = random.Random(subset_seed)
        kept = [i for i in self.log.unflushed_writes(k) if rng.random() < 0.5]
        if not kept:
            return self.blocks
        state = {name: dict(blocks) for name, blocks in self.blocks.items()}
        for index in kept:
            self._apply(state, self.log.records[index])
        return state

    def write_state(self, k: int, out_dir: os.PathLike | str, subset_seed: int | None = None,
                    suffix: str = '') -> dict[str, Path]:
        """Write crash state `k` as plain sparse image files ``<disk><suffix>.img``."""
        return write_images(self.state(k, subset_seed), self.log.disks, out_dir, suffix)

    def final_state(self) -> dict[str, dict[int, bytes]]:
        """The disks after every record (what the daemon holds, if nothing else ran)."""
        self.advance(len(self.log))
        return self.blocks


def write_images(state: dict[str, dict[int, bytes]], sizes: dict[str, int], out_dir: os.PathLike | str,
                 suffix: str = '') -> dict[str, Path]:
    """Write each disk's blocks to ``out_dir/<disk><suffix>.img``: a sparse file of
    the disk's size, only its non-zero blocks written (runs merged into one pwrite)."""
    paths = {}
    for name, blocks in state.items():
        path = Path(out_dir) / (name + suffix + IMAGE_SUFFIX)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, sizes[name])
            run_start, run = None, []
            for number in sorted(blocks):
                if run and number != run_start + len(run):
                    os.pwrite(fd, b''.join(run), run_start * BLOCK)
                    run = []
                if not run:
                    run_start = number
                run.append(blocks[number])
            if run:
                os.pwrite(fd, b''.join(run), run_start * BLOCK)
        finally:
            os.close(fd)
        paths[name] = path
    return paths


# ==========================================================================
# Loop devices and mounts
# ==========================================================================

MKFS = {
    'raw': (None, 1),           # no filesystem: the test reads and writes the loop device
    'ext4': (['mkfs.ext4', '-F', '-q', '-b', '4096'], 16),
    'xfs': (['mkfs.xfs', '-f', '-q'], 300),
    'btrfs': (['mkfs.btrfs', '-f', '-q'], 128),
}
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LO_FLAGS_AUTOCLEAR = 4
LOOP_INFO64_SIZE = 232
LO_FLAGS_OFFSET = 52        # struct loop_info64: 5 x u64, lo_number, encrypt type, key size, lo_flags
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)


def _run(cmd: t.Sequence[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError('%s exited %d: %s' % (' '.join(cmd), proc.returncode,
                                                 (proc.stderr or proc.stdout).strip()))
    return proc


def blockdev_unavailable() -> str | None:
    """Why the rig cannot run here (None if it can): root, FUSE, mfusepy, loop devices."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from powerfs_harness import powerfs_unavailable  # pylint: disable=import-outside-toplevel
    reason = powerfs_unavailable()
    if reason:
        return reason.replace('powerfs', 'blockdev')
    if not os.path.exists('/dev/loop-control') or shutil.which('losetup') is None:
        return 'blockdev needs loop devices (/dev/loop-control, losetup)'
    return None


def enter_private_mount_namespace() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import powerfs_harness  # pylint: disable=import-outside-toplevel
    powerfs_harness.enter_private_mount_namespace()


def is_mountpoint(path: os.PathLike | str) -> bool:
    target = os.path.realpath(path)
    with open('/proc/self/mountinfo', encoding='utf-8') as handle:
        return any(line.split()[4].encode().decode('unicode_escape') == target for line in handle)


def attach_loop(image: os.PathLike | str, direct_io: bool = True) -> str:
    """``losetup -f --show`` (``--direct-io=on`` if asked): the new device's path."""
    cmd = ['losetup', '--find', '--show']
    if direct_io:
        cmd.append('--direct-io=on')
    return _run(cmd + [str(image)]).stdout.strip()


def loop_backing(device: str) -> str | None:
    """The backing file a loop device is attached to now (None: detached)."""
    try:
        with open('/sys/block/%s/loop/backing_file' % os.path.basename(device), encoding='utf-8') as handle:
            return handle.read().strip()
    except OSError:
        return None


def set_autoclear(fd: int) -> None:
    """LO_FLAGS_AUTOCLEAR on the loop device open as `fd`: it detaches itself at
    its last close."""
    info = bytearray(LOOP_INFO64_SIZE)
    fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
    flags = struct.unpack_from('<I', info, LO_FLAGS_OFFSET)[0]
    struct.pack_into('<I', info, LO_FLAGS_OFFSET, flags | LO_FLAGS_AUTOCLEAR)
    fcntl.ioctl(fd, LOOP_SET_STATUS64, bytes(info))


class LoopDevice:
    """A loop device attached to `image` (``losetup -f --show``), held open here
    and autoclear: it detaches at the last close, so once :meth:`detach` (or the
    death of this process, and with it of its mount namespace's mounts) closes
    the last user, it is gone. :meth:`detach` checks that it is."""

    def __init__(self, image: os.PathLike | str, direct_io: bool = True):
        self.image = str(image)
        self.path = attach_loop(image, direct_io)
        self.fd: int | None = None
        try:
            self.fd = os.open(self.path, os.O_RDONLY)
            set_autoclear(self.fd)
        except BaseException:
            self.detach()
            raise

    def __str__(self) -> str:
        return self.path

    def detach(self) -> None:
        """Close our fd (the device then detaches unless something else holds it,
        e.g. a mount: unmount first) and check that it is no longer attached to
        our image; ``losetup -d`` it if it still is."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        detach_loop(self.path, self.image)


def set_max_request(device: str, kib: int) -> None:
    """The largest request the block layer sends the device (max_sectors_kb)."""
    path = '/sys/block/%s/queue/max_sectors_kb' % os.path.basename(device)
    with open(path, 'w', encoding='ascii') as handle:
        handle.write(str(kib))
    with open(path, encoding='ascii') as handle:
        if int(handle.read()) != kib:
            raise RuntimeError('%s: max_sectors_kb stays above %d' % (device, kib))


def detach_loop(device: str, backing: str, timeout: float = 10.0) -> None:
    """``losetup -d`` the device if it is still ours (attached to `backing`), then
    check that it really is detached; raise if it is not."""
    deadline = time.monotonic() + timeout
    while True:
        now = loop_backing(device)
        if now is None or os.path.realpath(now) != os.path.realpath(backing):
            return          # detached (autoclear), or someone else's by now: not ours to touch
        proc = _run(['losetup', '--detach', device], check=False)
        if proc.returncode != 0 and time.monotonic() > deadline:
            raise RuntimeError('cannot detach %s from %s: %s' % (device, backing, proc.stderr.strip()))
        if loop_backing(device) is None:
            return
        if time.monotonic() > deadline:
            raise RuntimeError('%s is still attached to %s after losetup -d' % (device, backing))
        time.sleep(0.02)    # the kernel detaches asynchronously after the last close


def umount(path: os.PathLike | str, attempts: int = 6) -> None:
    """Unmount `path` (retrying on EBUSY), lazily as a last resort."""
    target = os.fsencode(str(path))
    delay = 0.02
    for _attempt in range(attempts):
        if not is_mountpoint(path):
            return
        if _libc.umount2(target, 0) == 0:
            return
        time.sleep(delay)
        delay *= 2
    if is_mountpoint(path):
        _libc.umount2(target, MNT_DETACH)


def mkfs(fstype: str, device: str, extra: t.Sequence[str] = ()) -> None:
    if fstype not in MKFS:
        raise ValueError('blockdev: no mkfs for %r (known: %s)' % (fstype, sorted(MKFS)))
    if shutil.which(MKFS[fstype][0][0]) is None:
        raise RuntimeError('blockdev: %s is not installed' % MKFS[fstype][0][0])
    _run(MKFS[fstype][0] + list(extra) + [device])


def mount(device: str, mountpoint: os.PathLike | str, fstype: str, options: t.Sequence[str] = ()) -> None:
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    cmd = ['mount', '-t', fstype]
    if options:
        cmd += ['-o', ','.join(options)]
    _run(cmd + [device, str(mountpoint)])


@contextmanager
def mount_images(images: dict[str, Path], fstypes: dict[str, str], base: os.PathLike | str,
                 options: dict[str, t.Sequence[str]] | None = None,
                 direct_io: bool = True) -> t.Iterator[dict[str, Path]]:
    """Attach each image to a loop device and mount it (read-write: the journal
    or log is recovered as after a power loss) at ``base/<name>``; yield
    {name: mount point}; unmount and detach (checked) on the way out."""
    attached: list[tuple[LoopDevice, Path]] = []
    try:
        for name, image in images.items():
            device = LoopDevice(image, direct_io)
            mountpoint = Path(base) / name
            attached.append((device, mountpoint))
            opts = list((options or {}).get(name, ()))
            if fstypes[name] == 'xfs':
                opts.append('nouuid')       # the same filesystem's UUID may be mounted live
            mount(device.path, mountpoint, fstypes[name], opts)
        yield {name: Path(base) / name for name in images}
    finally:
        errors = []
        for device, mountpoint in reversed(attached):
            try:
                umount(mountpoint)
                device.detach()
            except (OSError, RuntimeError) as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError('teardown: %s' % '; '.join(errors))


# ==========================================================================
# The daemon's handle and the rig
# ==========================================================================

def _set_pdeathsig() -> None:
    _libc.prctl(1, signal.SIGTERM, 0, 0, 0)     # PR_SET_PDEATHSIG


class BlockDev:
    """One daemon: its disks (image files in its mount), its log, its faults."""

    def __init__(self, workdir: os.PathLike | str, disks: dict[str, int], debug: bool = False,
                 timeout: float = 15.0):
        enter_private_mount_namespace()
        self.workdir = Path(workdir)
        self.mountpoint = self.workdir / 'fuse'
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / 'blockdev.log'
        self.daemon_log = self.workdir / 'daemon.log'
        self.disks = dict(disks)
        ready_r, ready_w = os.pipe()
        cmd = [sys.executable, str(Path(__file__).resolve()), 'serve', str(self.mountpoint),
               '--log', str(self.log_path), '--ready-fd', str(ready_w)]
        for name, size in self.disks.items():
            cmd += ['--disk', '%s=%d' % (name, size)]
        if debug:
            cmd.append('--debug')
        try:
            with open(self.daemon_log, 'ab') as out:
                # pylint: disable-next=consider-using-with,subprocess-popen-preexec-fn
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                             pass_fds=(ready_w,), preexec_fn=_set_pdeathsig,
                                             env=dict(os.environ, PYTHONDONTWRITEBYTECODE='1',
                                                      FUSE_LIBRARY_PATH=LIBFUSE3))
        finally:
            os.close(ready_w)
        try:
            self._wait_ready(ready_r, timeout)
        except BaseException:
            self.close()
            raise
        finally:
            os.close(ready_r)

    def _wait_ready(self, ready_r: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            readable, _w, _x = select.select([ready_r], [], [], max(0.0, left))
            if readable and os.read(ready_r, 64).startswith(b'ready'):
                return
            if self.proc.poll() is not None or left <= 0:
                raise RuntimeError('blockdev did not mount on %s (%s); its log:\n%s' % (
                    self.mountpoint, 'exit %s' % self.proc.returncode if self.proc.returncode is not None
                    else 'timed out', self.daemon_log.read_text(errors='replace')[-3000:]))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def image(self, name: str) -> Path:
        if name not in self.disks:
            raise KeyError('no disk %r (disks: %s)' % (name, ', '.join(self.disks)))
        return self.mountpoint / (name + IMAGE_SUFFIX)

    # -- control -------------------------------------------------------------

    def command(self, line: str) -> dict:
        """Run one control command in the daemon; its reply (raises if it failed)."""
        fd = os.open(self.mountpoint / CONTROL, os.O_RDWR)
        try:
            os.write(fd, line.encode() + b'\n')
            reply = json.loads(os.pread(fd, 1 << 20, 0))
        finally:
            os.close(fd)
        if not reply.pop('ok', False):
            raise RuntimeError('blockdev %r: %s' % (line, reply.get('error')))
        return reply

    def mark(self, text: str) -> int:
        """A MARK record, after every request served so far; returns its record index."""
        if '\n' in text:
            raise ValueError('a mark is one line')
        return self.command('mark ' + text)['record']

    def fail_writes(self, disk: str = '*', start: int | None = None, end: int | None = None,
                    after: int | None = None, matching: bytes | None = None) -> None:
        """Writes fail with EIO: in [start, end), or after `after` more writes, or
        writes of blocks that would hold `matching`."""
        if start is not None or end is not None:
            self.command('fail-writes %s %d %d' % (disk, start or 0, end if end is not None else self.disks[disk]))
        if after is not None:
            self.command('fail-writes-after %s %d' % (disk, after))
        if matching is not None:
            self.command('fail-writes-matching %s %s' % (disk, matching.hex()))

    def fail_flush(self, disk: str = '*', after: int | None = None) -> None:
        """Every fsync of the disk's image (a flush) fails with EIO; with `after`,
        only once `after` more flushes have succeeded."""
        if after is None:
            self.command('fail-flush ' + disk)
        else:
            self.command('fail-flush-after %s %d' % (disk, after))

    def rot(self, disk: str = '*', start: int | None = None, end: int | None = None,
            matching: bytes | None = None) -> None:
        """Reads lie: of [start, end), or of any block holding `matching`."""
        if start is not None or end is not None:
            self.command('rot %s %d %d' % (disk, start or 0, end if end is not None else self.disks[disk]))
        if matching is not None:
            self.command('rot-matching %s %s' % (disk, matching.hex()))

    def heal(self) -> None:
        """No more faults (what failed stays failed: nothing is rewritten)."""
        self.command('heal')

    def stats(self) -> dict:
        return self.command('stats')

    def log(self) -> Log:
        """The log so far, parsed."""
        self.command('sync-log')
        return Log.read(self.log_path)

    # -- teardown ------------------------------------------------------------

    def close(self) -> None:
        """Unmount the FUSE filesystem (nothing may hold an image: detach loops
        first) and reap the daemon by PID: SIGTERM, then SIGKILL if it lingers."""
        if is_mountpoint(self.mountpoint):
            proc = _run(['fusermount3', '-u', '-q', str(self.mountpoint)], check=False)
            if proc.returncode != 0:
                umount(self.mountpoint)
        for sig, wait in ((None, 5.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            if sig is not None:
                try:
                    os.kill(self.proc.pid, sig)
                except ProcessLookupError:
                    break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue


class Rig:
    """Disks on one logging daemon, each with a loop device, a filesystem, a mount.

    ``disks``: {name: fstype} or {name: (fstype, size_mib)} (default size: the
    smallest mkfs accepts, ext4 16 MiB); fstype ``raw``: no filesystem, not
    mounted (read and write ``rig.devices[name]``). ``loop_direct_io``: attach with
    ``--direct-io=on``. ``max_request_kib``: the loop devices' ``max_sectors_kb``
    (4: every request is one 4 KiB block, so a failing write fails that block
    only, not the neighbours the block layer merged into its request). Mounts at ``base/mnt/<name>``; crash-state images go to
    ``rig.state_dir`` (a tmpfs) and are mounted under ``rig.state_mounts``.
    """

    def __init__(self, base: os.PathLike | str, disks: dict[str, t.Any], loop_direct_io: bool = True,
                 mkfs_args: dict[str, t.Sequence[str]] | None = None,
                 mount_options: dict[str, t.Sequence[str]] | None = None, state_tmpfs: str = '1g',
                 max_request_kib: int | None = None):
        self.base = Path(base)
        self.fstypes: dict[str, str] = {}
        sizes: dict[str, int] = {}
        for name, spec in disks.items():
            fstype, size_mib = (spec, None) if isinstance(spec, str) else spec
            if fstype not in MKFS:
                raise ValueError('blockdev: no mkfs for %r (known: %s)' % (fstype, sorted(MKFS)))
            self.fstypes[name] = fstype
            sizes[name] = (size_mib or MKFS[fstype][1]) * MIB
        self.sizes = sizes
        self.loop_direct_io = loop_direct_io
        self.mkfs_args = mkfs_args or {}
        self.mount_options = mount_options or {}
        self.state_tmpfs = state_tmpfs
        self.max_request_kib = max_request_kib
        self.loops: dict[str, LoopDevice] = {}
        self.devices: dict[str, str] = {}       # name -> /dev/loopN
        self.dev: BlockDev | None = None
        self.state_dir = self.base / 'states'
        self.state_mounts = self.base / 'state-mnt'

    def __enter__(self) -> Rig:
        try:
            self.dev = BlockDev(self.base / 'blockdev', self.sizes)
            for name in self.sizes:
                loop = LoopDevice(self.dev.image(name), self.loop_direct_io)
                self.loops[name] = loop
                device = self.devices[name] = loop.path
                if self.max_request_kib is not None:
                    set_max_request(device, self.max_request_kib)
                if self.fstypes[name] != 'raw':
                    mkfs(self.fstypes[name], device, self.mkfs_args.get(name, ()))
                    self.mount(name)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            _run(['mount', '-t', 'tmpfs', '-o', 'size=%s,mode=0700' % self.state_tmpfs, 'blockdev-states',
                  str(self.state_dir)])
            self.state_mounts.mkdir(parents=True, exist_ok=True)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    def path(self, name: str) -> Path:
        """The mount point of disk `name`."""
        if self.fstypes[name] == 'raw':
            raise ValueError('disk %r is raw: it has no filesystem to mount' % name)
        return self.base / 'mnt' / name

    @property
    def filesystems(self) -> list[str]:
        """The disks that have a filesystem (not raw)."""
        return [name for name, fstype in self.fstypes.items() if fstype != 'raw']

    def mount(self, name: str) -> None:
        mount(self.devices[name], self.path(name), self.fstypes[name], self.mount_options.get(name, ()))

    def unmount(self, name: str) -> None:
        """Unmount disk `name` (its loop device stays: the rig holds it open)."""
        umount(self.path(name))

    def remount(self, *names: str) -> None:
        """Unmount and mount again: what is read next comes from the device."""
        for name in names or self.filesystems:
            self.unmount(name)
            self.mount(name)

    def sync(self) -> None:
        """syncfs of every mounted disk (setup made durable; not a durability step
        of the code under test)."""
        for name in self.filesystems:
            fd = os.open(self.path(name), os.O_RDONLY | os.O_DIRECTORY)
            try:
                if _libc.syncfs(fd) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, 'syncfs %s: %s' % (self.path(name), os.strerror(code)))
            finally:
                os.close(fd)

    # the daemon's controls, for convenience
    def mark(self, text: str) -> int:
        return self.dev.mark(text)

    def log(self) -> Log:
        return self.dev.log()

    def crash_state(self, log: Log, replayer: Replayer, k: int, subset_seed: int | None = None):
        """Context manager: crash state `k` of `log` written and mounted; yields
        {disk: mount point} (see :func:`mount_images`)."""
        images = replayer.write_state(k, self.state_dir, subset_seed)
        images = {name: path for name, path in images.items() if self.fstypes[name] != 'raw'}
        return mount_images(images, self.fstypes, self.state_mounts, self.mount_options, self.loop_direct_io)

    def close(self) -> None:
        """Unmount every disk, detach (and check) every loop device, end the daemon."""
        errors = []
        for name, loop in reversed(list(self.loops.items())):
            try:
                if self.fstypes[name] != 'raw':
                    umount(self.path(name))
                loop.detach()
            except (OSError, RuntimeError) as exc:
                errors.append(str(exc))
        self.loops.clear()
        self.devices.clear()
        if is_mountpoint(self.state_dir):
            umount(self.state_dir)
        if self.dev is not None:
            self.dev.close()
            self.dev = None
        if errors:
            raise RuntimeError('blockdev rig teardown: %s' % '; '.join(errors))


# ==========================================================================
# pytest, and a benchmark
# ==========================================================================

try:
    import pytest
except ImportError:        # the daemon runs without pytest
    pytest = None           # type: ignore[assignment]

if pytest is not None:
    @pytest.fixture
    def blockdev_rig(tmp_path: Path) -> t.Iterator[t.Callable[..., Rig]]:
        """Factory: ``blockdev_rig({'src': 'ext4', 'dest': 'xfs'}, **Rig options)``
        -> an entered :class:`Rig` under ``tmp_path``, closed at teardown. Skips
        (with the reason) where it cannot run: not root, no FUSE, no loop devices,
        no mkfs for a requested filesystem."""
        reason = blockdev_unavailable()
        if reason:
            pytest.skip(reason)
        rigs: list[Rig] = []

        def make(disks: dict[str, t.Any], **options: t.Any) -> Rig:
            for spec in disks.values():
                fstype = spec if isinstance(spec, str) else spec[0]
                tool = (MKFS.get(fstype) or (None,))[0]
                if tool is not None and shutil.which(tool[0]) is None:
                    pytest.skip('%s is not installed' % tool[0])
            rig = Rig(tmp_path / ('blockdev%d' % len(rigs)), disks, **options)
            rig.__enter__()         # pylint: disable=unnecessary-dunder-call
            rigs.append(rig)
            return rig

        try:
            yield make
        finally:
            for rig in reversed(rigs):
                rig.close()


def bench_small_chain(root: Path, files: int) -> None:
    """create, write, fdatasync, rename into place, fsync the directory: `files` times."""
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(files):
            part = root / ('.f%d.part' % index)
            with open(part, 'wb') as handle:
                handle.write(bytes([index % 256]) * 20000)
                handle.flush()
                os.fdatasync(handle.fileno())
            os.rename(part, root / ('f%d' % index))
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def bench(fstype: str, files: int = 20, base: str | None = None) -> dict:
    """Milliseconds per crash state of a small create/fsync/rename chain: replay
    (write the images), mount (with recovery), check (read every file), unmount."""
    import tempfile  # pylint: disable=import-outside-toplevel
    work = Path(base or tempfile.mkdtemp(prefix='blockdev-bench-'))
    phases: dict[str, list[float]] = {'replay': [], 'mount': [], 'check': [], 'unmount': []}
    with Rig(work, {'d': fstype}) as rig:
        rig.sync()
        rig.mark('start')
        bench_small_chain(rig.path('d'), files)
        rig.mark('end')
        log = rig.log()
        replayer = Replayer(log)
        points = log.flushes(after='start', before='end')
        for k in points:
            start = time.perf_counter()
            images = replayer.write_state(k, rig.state_dir)
            written = time.perf_counter()
            with mount_images(images, rig.fstypes, rig.state_mounts) as mounts:
                mounted = time.perf_counter()
                for path in mounts['d'].iterdir():
                    if path.is_file():
                        path.read_bytes()
                checked = time.perf_counter()
            done = time.perf_counter()
            for key, took in zip(phases, (written - start, mounted - written, checked - mounted, done - checked)):
                phases[key].append(took * 1000)
    shutil.rmtree(work, ignore_errors=True)

    def median(values: list[float]) -> float:
        return round(sorted(values)[len(values) // 2], 1)

    result = {key: median(values) for key, values in phases.items()}
    result.update(fstype=fstype, states=len(points), total_ms=round(sum(result.values()), 1))
    return result


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == 'serve':
        sys.exit(serve(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == 'bench':
        enter_private_mount_namespace()
        for name in sys.argv[2:] or ['ext4', 'xfs']:
            print(json.dumps(bench(name)))
        sys.exit(0)
    sys.exit('usage: blockdev.py serve MOUNTPOINT --disk NAME=BYTES ... --log PATH | bench [FSTYPE...]')
