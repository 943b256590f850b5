# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Copying and hashing file content, holes included.

PRIVATE to the durable.mover collection; not a public API.

A file's hash always covers its logical content: a hole hashes as the zeros
it reads as. Holes are found with SEEK_DATA/SEEK_HOLE and are not written,
so sparse files stay sparse.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import queue
import struct
import threading

from ansible_collections.durable.mover.plugins.module_utils import _durable
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError

SEEK_DATA = getattr(os, 'SEEK_DATA', None)
SEEK_HOLE = getattr(os, 'SEEK_HOLE', None)
FADV_DONTNEED = getattr(os, 'POSIX_FADV_DONTNEED', None)
FADV_SEQUENTIAL = getattr(os, 'POSIX_FADV_SEQUENTIAL', None)
FADV_WILLNEED = getattr(os, 'POSIX_FADV_WILLNEED', None)
WRITEBACK_EVERY = 8 * 1024 * 1024

# Reading back from the device. O_DIRECT reads bypass the page cache; they
# must be aligned (offset, length and buffer) to the device's logical block
# size: 4096 covers 512- and 4096-byte devices.
O_DIRECT = getattr(os, 'O_DIRECT', 0)
RWF_NOWAIT = getattr(os, 'RWF_NOWAIT', None)
DIRECT_ALIGN = 4096
PAGE = mmap.PAGESIZE
# FIEMAP (linux/fiemap.h): is a file's data stored inline in the metadata?
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_DATA_INLINE = 0x200
_FIEMAP = struct.Struct('=QQIIII')           # fm_start, fm_length, fm_flags, mapped, count, reserved
_EXTENT_FLAGS = _FIEMAP.size + 40            # fe_flags of the first fiemap_extent
# Why a file's read-back could not come from the device (None: it did).
INLINE = 'its data is stored inline in the filesystem metadata, read from memory'
NO_DIRECT = 'the filesystem refuses O_DIRECT; read through the page cache after dropping it'


class SourceChanged(MoverError):
    """The source was modified while it was being copied."""


class Interrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT) while a file was in hand."""


def data_segments(fd, start, end, sparse, source_path=None):
    """Yield (offset, length, is_data) covering [start, end) in order."""
    if not sparse or SEEK_DATA is None:
        if end > start:
            yield start, end - start, True
        return
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:      # only a hole up to EOF
                data = end
            elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                yield pos, end - pos, True
                return
            else:
                raise
        data = min(data, end)
        if data > pos:
            yield pos, data - pos, False
        if data >= end:
            return
        try:
            hole = min(os.lseek(fd, data, SEEK_HOLE), end)
        except OSError as exc:
            if exc.errno == errno.ENXIO:      # `data` is past EOF now: the file shrank
                raise SourceChanged('source shrank while it was copied', source_path, errno.EIO)
            raise
        yield data, hole - data, True
        pos = hole


def write_all(fd, data, offset):
    """pwrite all of `data` at `offset` (a short write is continued, never ignored)."""
    done = 0
    while done < len(data):
        done += os.pwrite(fd, data[done:], offset + done)


def _zeros(buf):
    view = memoryview(buf)
    view[:] = bytes(len(buf))
    return view


def feed(fd, start, end, hasher, buf, sink=None, sparse=False, progress=None,
         should_stop=None, source_path=None):
    """Read the logical content [start, end) of `fd` into `hasher`.

    With `sink`, the data ranges are also written to `sink` at the same offsets
    (holes are left unwritten). `progress(pos)` is called after each buffer.
    Raises SourceChanged if `fd` ends before `end`.
    """
    view = memoryview(buf)
    size = len(buf)
    if not sparse and 0 < end - start <= size and (should_stop is None or not should_stop()):
        # the common case of a small file: one read, one write
        want = end - start
        got = os.preadv(fd, [view[:want]], start)
        if got < want:
            raise SourceChanged('source shrank while it was copied', source_path, errno.EIO)
        chunk = view[:got]
        if sink is not None:
            write_all(sink, chunk, start)
        hasher.update(chunk)
        if progress is not None:
            progress(end)
        return
    zeros = None
    for offset, length, is_data in data_segments(fd, start, end, sparse, source_path):
        pos, stop = offset, offset + length
        while pos < stop:
            if should_stop is not None and should_stop():
                raise Interrupted()
            want = min(size, stop - pos)
            if is_data:
                got = os.preadv(fd, [view[:want]], pos)
                if got <= 0:
                    raise SourceChanged('source shrank while it was copied', source_path, errno.EIO)
                chunk = view[:got]
                if sink is not None:
                    write_all(sink, chunk, pos)
                hasher.update(chunk)
            else:
                if zeros is None:
                    zeros = _zeros(bytearray(min(size, 1 << 20)))
                got = min(want, len(zeros))
                hasher.update(zeros[:got])
            pos += got
            if progress is not None:
                progress(pos)
    # A hole is hashed as zeros without reading: a file cut inside one would
    # otherwise hash as if it still had its old length.
    if sparse and end > start and os.fstat(fd).st_size < end:
        raise SourceChanged('source shrank while it was copied', source_path, errno.EIO)


def advise(fd, advice):
    if advice is not None and hasattr(os, 'posix_fadvise'):
        try:
            os.posix_fadvise(fd, 0, 0, advice)
        except OSError:
            pass


def drop_cache(fd):
    """Drop a synced file's clean pages so the next read comes from the disk."""
    advise(fd, FADV_DONTNEED)


def prefetch(fd):
    """Start reading a whole file into the page cache and return at once.

    Many small files' reads then overlap in the device queue instead of each
    waiting its turn (cold 4 KiB files: ~50 us each one by one, ~10 us
    prefetched)."""
    advise(fd, FADV_WILLNEED)


def aligned_buffer(size):
    """A page-aligned buffer for O_DIRECT reads of up to `size` bytes at any offset."""
    return mmap.mmap(-1, _round_up(size, DIRECT_ALIGN) + 2 * DIRECT_ALIGN)


def _round_up(value, unit):
    return -(-value // unit) * unit


def open_direct(dir_fd, name):
    """Open `name` to read it from the device (O_DIRECT, never following a
    link, never blocking on a FIFO); None where the filesystem refuses O_DIRECT."""
    if not O_DIRECT:
        return None
    flags = os.O_RDONLY | os.O_NONBLOCK | O_DIRECT | getattr(os, 'O_NOFOLLOW', 0) | getattr(os, 'O_CLOEXEC', 0)
    noatime = getattr(os, 'O_NOATIME', 0)     # a read must not undo the atime the copy was given
    try:
        try:
            return os.open(name, flags | noatime, dir_fd=dir_fd)
        except PermissionError:               # O_NOATIME needs ownership (or CAP_FOWNER)
            if not noatime:
                raise
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return None
        raise


def feed_direct(fd, start, end, hasher, buf, sparse=False, should_stop=None, source_path=None):
    """feed() for an O_DIRECT fd: every read aligned (offset and length) to
    DIRECT_ALIGN, into `buf` from aligned_buffer(); the bytes outside
    [start, end) are read and not hashed."""
    view = memoryview(buf)
    size = len(buf) - 2 * DIRECT_ALIGN
    zeros = None
    for offset, length, is_data in data_segments(fd, start, end, sparse, source_path):
        pos, stop = offset, offset + length
        while pos < stop:
            if should_stop is not None and should_stop():
                raise Interrupted()
            want = min(size, stop - pos)
            if is_data:
                base = pos - pos % DIRECT_ALIGN
                got = os.preadv(fd, [view[:_round_up(pos + want, DIRECT_ALIGN) - base]], base)
                got = min(got - (pos - base), want)
                if got <= 0:
                    raise SourceChanged('the copy shrank while it was read back', source_path, errno.EIO)
                hasher.update(view[pos - base:pos - base + got])
            else:
                if zeros is None:
                    zeros = _zeros(bytearray(min(size, 1 << 20)))
                got = min(want, len(zeros))
                hasher.update(zeros[:got])
            pos += got
    if sparse and end > start and os.fstat(fd).st_size < end:
        raise SourceChanged('the copy shrank while it was read back', source_path, errno.EIO)


def dropped(fd, size=1):
    """After drop_cache(): are the pages holding the file's first `size` bytes
    really gone from the page cache? (POSIX_FADV_DONTNEED is a hint: a page
    someone has mapped stays.) A read that must not wait (RWF_NOWAIT) fails
    with EAGAIN exactly when its page is not cached. Each page is asked, the
    last first: such a read starts reading its page from the device, and the
    pages after it (asked already), never one before it, so no answer is
    spoiled by an earlier question. False where that cannot be told."""
    if RWF_NOWAIT is None or not hasattr(os, 'preadv'):
        return False
    probe = [bytearray(1)]
    for offset in range((max(size, 1) - 1) // PAGE * PAGE, -1, -PAGE):
        try:
            os.preadv(fd, probe, offset, RWF_NOWAIT)
        except BlockingIOError:
            continue
        except OSError:
            return False
        return False
    return True


def data_inline(fd):
    """True if the file's data lives inline in the filesystem's metadata (ext4
    inline_data, btrfs inline extents): no read of the file, O_DIRECT or not,
    then reaches the device for it (FIEMAP says so; False where it cannot tell)."""
    buf = bytearray(_EXTENT_FLAGS + 16)
    _FIEMAP.pack_into(buf, 0, 0, 0xFFFFFFFFFFFFFFFF, 0, 0, 1, 0)
    try:
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
    except OSError:
        return False
    mapped = _FIEMAP.unpack_from(buf)[3]
    return bool(mapped) and bool(struct.unpack_from('=I', buf, _EXTENT_FLAGS)[0] & FIEMAP_EXTENT_DATA_INLINE)


def is_sparse(st):
    return st.st_blocks * 512 < st.st_size


def data_size(fd, st, start=0):
    """The bytes of the open file `fd` (stat `st`) from `start` on that hold
    data: its size less its holes, as data_segments finds them (what a copy
    writes). What a move counts as a file's bytes."""
    if not is_sparse(st):
        return max(0, st.st_size - start)
    return sum(length for _offset, length, is_data in data_segments(fd, start, st.st_size, True) if is_data)


def data_size_at(dir_fd, name, st):
    """data_size of the regular file `name` in `dir_fd` (lstat `st`), opened
    only if it has holes; None if it cannot be read (or is no longer `st`)."""
    if not is_sparse(st):
        return st.st_size
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return None
        return data_size(fd, now)
    except (OSError, MoverError):
        return None
    finally:
        os.close(fd)


class Pipeline:
    """A large copy with reading, writing and read-back verification overlapped.

    The calling thread reads the source and hashes it; a writer thread writes
    and flushes (fdatasync every `flush_every` bytes, reporting each flushed
    offset to `on_flush`); a verifier thread drops each flushed range from the
    page cache and reads it back from disk into its own hasher, while the next
    range is being written. `finish_verify()` verifies the tail once the caller
    has made the whole file durable; the read-back then covers the whole file.
    Buffers are a small pool reused throughout: memory is bounded.
    """

    def __init__(self, src_fd, part_fd, read_fd, algorithm_new, buffer_size, flush_every,
                 on_flush=None, verify=True, should_stop=None, source_path=None, pool=3, direct=False):
        self.src_fd = src_fd
        self.part_fd = part_fd
        self.read_fd = read_fd
        self.direct = direct           # read_fd is O_DIRECT: its reads come from the device
        self.new_hasher = algorithm_new
        self.buffer_size = buffer_size
        self.flush_every = max(flush_every, buffer_size)
        self.on_flush = on_flush
        self.verify = verify and read_fd is not None
        self.should_stop = should_stop
        self.source_path = source_path
        self.pool = pool
        self._error = None
        self._free = queue.Queue()
        self._to_write = queue.Queue()
        self._to_verify = queue.Queue()
        self._verified_to = 0
        self.verify_hasher = algorithm_new() if self.verify else None
        self._verifier = None

    # -- threads ---------------------------------------------------------------

    def _fail(self, exc):
        if self._error is None:
            self._error = exc

    def _writer(self, flushed_at, sync):
        last_flush = last_kick = flushed_at
        try:
            while True:
                item = self._to_write.get()
                if item is None:
                    return
                buf, offset, length = item
                if self._error is None:
                    write_all(self.part_fd, memoryview(buf)[:length], offset)
                    end = offset + length
                    if end - last_kick >= WRITEBACK_EVERY:
                        # The disk starts on what is written while the rest is read:
                        # the flush below then waits for a tail, not for the whole segment.
                        _durable.start_writeback(self.part_fd, last_kick, end - last_kick)
                        last_kick = end
                    if end - last_flush >= self.flush_every:
                        sync(self.part_fd)
                        last_flush = last_kick = end
                        if self.on_flush is not None:
                            self.on_flush(end)
                        if self.verify:
                            self._to_verify.put(end)
                self._free.put(buf)
        except BaseException as exc:  # pylint: disable=broad-except
            self._fail(exc)
            while True:               # keep draining so the reader never blocks
                item = self._to_write.get()
                if item is None:
                    return
                self._free.put(item[0])

    def _verifier_loop(self):
        buf = aligned_buffer(self.buffer_size) if self.direct else bytearray(self.buffer_size)
        try:
            while True:
                upto = self._to_verify.get()
                if upto is None:
                    return
                if self._error is not None or upto <= self._verified_to:
                    continue
                if self.direct:
                    feed_direct(self.read_fd, self._verified_to, upto, self.verify_hasher, buf,
                                should_stop=self.should_stop, source_path=self.source_path)
                else:
                    if FADV_DONTNEED is not None and hasattr(os, 'posix_fadvise'):
                        try:
                            os.posix_fadvise(self.read_fd, self._verified_to, upto - self._verified_to,
                                             FADV_DONTNEED)
                        except OSError:
                            pass
                    feed(self.read_fd, self._verified_to, upto, self.verify_hasher, buf,
                         should_stop=self.should_stop, source_path=self.source_path)
                self._verified_to = upto
        except BaseException as exc:  # pylint: disable=broad-except
            self._fail(exc)

    # -- the copy ----------------------------------------------------------------

    def copy(self, hasher, start, end, sparse, sync, verified_prefix=0):
        """Copy [start, end) of the source; `hasher` already holds [0, start).

        The part's bytes [0, start) are durable (a resumed copy): they are
        verified first. Raises Interrupted, SourceChanged or the I/O error.
        """
        for _index in range(self.pool):
            self._free.put(bytearray(self.buffer_size))
        if self.verify:
            self._verifier = threading.Thread(target=self._verifier_loop, name='verify', daemon=True)
            self._verifier.start()
            if start:
                self._to_verify.put(start)
        writer = threading.Thread(target=self._writer, args=(start, sync), name='write', daemon=True)
        writer.start()
        zeros = None
        try:
            for offset, length, is_data in data_segments(self.src_fd, start, end, sparse, self.source_path):
                pos, stop = offset, offset + length
                while pos < stop:
                    if self._error is not None:
                        raise self._error
                    if self.should_stop is not None and self.should_stop():
                        raise Interrupted()
                    want = min(self.buffer_size, stop - pos)
                    if not is_data:
                        if zeros is None:
                            zeros = memoryview(bytearray(min(self.buffer_size, 1 << 20)))
                        got = min(want, len(zeros))
                        hasher.update(zeros[:got])
                        pos += got
                        continue
                    buf = self._free.get()
                    got = os.preadv(self.src_fd, [memoryview(buf)[:want]], pos)
                    if got <= 0:
                        self._free.put(buf)
                        raise SourceChanged('source shrank while it was copied', self.source_path, errno.EIO)
                    hasher.update(memoryview(buf)[:got])
                    self._to_write.put((buf, pos, got))
                    pos += got
            if sparse and end > start and os.fstat(self.src_fd).st_size < end:
                raise SourceChanged('source shrank while it was copied', self.source_path, errno.EIO)
        except BaseException:
            self._to_write.put(None)
            writer.join()
            self._stop_verifier()
            raise
        self._to_write.put(None)
        writer.join()
        if self._error is not None:
            self._stop_verifier()
            raise self._error

    def finish_verify(self, end):
        """After the caller's final flush: verify the rest; the read-back digest."""
        if not self.verify:
            return None
        self._to_verify.put(end)
        self._to_verify.put(None)
        self._verifier.join()
        if self._error is not None:
            raise self._error
        return self.verify_hasher

    def _stop_verifier(self):
        if self._verifier is not None:
            self._to_verify.put(None)
            self._verifier.join()
