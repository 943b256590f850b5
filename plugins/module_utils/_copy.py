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
import os

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError

SEEK_DATA = getattr(os, 'SEEK_DATA', None)
SEEK_HOLE = getattr(os, 'SEEK_HOLE', None)
FADV_DONTNEED = getattr(os, 'POSIX_FADV_DONTNEED', None)
FADV_SEQUENTIAL = getattr(os, 'POSIX_FADV_SEQUENTIAL', None)


class SourceChanged(MoverError):
    """The source was modified while it was being copied."""


class Interrupted(Exception):
    """A stop was requested (SIGTERM/SIGINT) while a file was in hand."""


def data_segments(fd, start, end, sparse):
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
        hole = min(os.lseek(fd, data, SEEK_HOLE), end)
        yield data, hole - data, True
        pos = hole


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
    zeros = None
    for offset, length, is_data in data_segments(fd, start, end, sparse):
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
                    written = 0
                    while written < got:
                        written += os.pwrite(sink, chunk[written:], pos + written)
                hasher.update(chunk)
            else:
                if zeros is None:
                    zeros = _zeros(bytearray(min(size, 1 << 20)))
                got = min(want, len(zeros))
                hasher.update(zeros[:got])
            pos += got
            if progress is not None:
                progress(pos)


def advise(fd, advice):
    if advice is not None and hasattr(os, 'posix_fadvise'):
        try:
            os.posix_fadvise(fd, 0, 0, advice)
        except OSError:
            pass


def drop_cache(fd):
    """Drop a synced file's clean pages so the next read comes from the disk."""
    advise(fd, FADV_DONTNEED)


def is_sparse(st):
    return st.st_blocks * 512 < st.st_size
