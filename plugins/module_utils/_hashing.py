# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Content hashes: BLAKE3 when importable, SHA-256 always, or size only.

PRIVATE to the durable.mover collection; not a public API.
"""

from __future__ import annotations

import hashlib
import traceback

try:
    import blake3 as _blake3
except ImportError:  # optional accelerator
    _blake3 = None
    BLAKE3_IMPORT_ERROR = traceback.format_exc()
else:
    BLAKE3_IMPORT_ERROR = None

ALGORITHMS = ('auto', 'blake3', 'sha256', 'none')


class MissingLibraryError(Exception):
    """An optional library was asked for explicitly and is not installed."""

    def __init__(self, library, traceback_text):
        super().__init__(library)
        self.library = library
        self.traceback = traceback_text


def blake3_available():
    return _blake3 is not None


def resolve(name):
    """The algorithm a run uses for `name` ('auto' picks the fastest present)."""
    if name not in ALGORITHMS:
        raise ValueError('unknown hash algorithm %r (choose from %s)' % (name, ', '.join(ALGORITHMS)))
    if name == 'auto':
        return 'blake3' if _blake3 is not None else 'sha256'
    if name == 'blake3' and _blake3 is None:
        raise MissingLibraryError('blake3', BLAKE3_IMPORT_ERROR)
    return name


class SizeOnly:
    """The 'none' algorithm: counts bytes, so verification compares sizes."""

    name = 'none'

    def __init__(self):
        self.size = 0

    def update(self, data):
        self.size += len(data)

    def hexdigest(self):
        return 'size:%d' % self.size


def digest(name, hasher):
    """The recorded form of a hash: '<algorithm>:<hex>' ('size:<n>' for none)."""
    if name == 'none':
        return hasher.hexdigest()
    return '%s:%s' % (name, hasher.hexdigest())


def new(name):
    """A fresh hasher for a resolved algorithm name.

    BLAKE3 hashes in the calling thread: its thread pool (max_threads=AUTO)
    cost 7-18x the hashing time of a tree of small files on a busy 2-core
    machine (7,773 kernel source files, 340 MB hashed with processes=1:
    3.6-9.7 s in cProfile, 0.5 s in the calling thread), gained nothing
    reliable on 1 MiB updates, and a forked worker process cannot use a pool
    its parent started. A copy is bound by the disk, and a large one already
    reads, writes and reads back in threads of their own."""
    if name == 'blake3':
        return _blake3.blake3()
    if name == 'sha256':
        return hashlib.sha256()
    if name == 'none':
        return SizeOnly()
    raise ValueError('unknown hash algorithm %r' % name)
