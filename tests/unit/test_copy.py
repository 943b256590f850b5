# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_copy.py (copying and hashing content, holes included).

Sparse files are made on real filesystems (the one under tmp_path, and a
tmpfs when root) and their holes are checked with st_blocks and
SEEK_DATA/SEEK_HOLE.
"""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _copy

KiB, MiB = 1024, 1024 * 1024
# (offset, bytes) of the data regions; everything else is a hole:
# a hole at the start, one in the middle and one at the end.
SPARSE_SIZE = 8 * MiB + 123
SPARSE_DATA = ((2 * MiB, os.urandom(100 * KiB + 3)), (5 * MiB, os.urandom(4 * KiB + 7)))


def write_sparse(path, size=SPARSE_SIZE, regions=SPARSE_DATA):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for offset, data in regions:
            os.pwrite(fd, data, offset)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def dense(size=SPARSE_SIZE, regions=SPARSE_DATA):
    buf = bytearray(size)
    for offset, data in regions:
        buf[offset:offset + len(data)] = data
    return bytes(buf)


def data_ranges(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return [(o, n) for o, n, is_data in _copy.data_segments(fd, 0, size, True) if is_data]
    finally:
        os.close(fd)


@pytest.fixture(params=["tmp_path", "tmpfs"])
def fs_dir(request, tmp_path):
    """A directory on a filesystem that keeps holes (skipped, with the reason, if it does not)."""
    if request.param == "tmpfs":
        if os.geteuid() != 0:
            pytest.skip("tmpfs needs root")
        where = request.getfixturevalue("tmpfs")("64m")
    else:
        where = tmp_path
    probe = where / "probe"
    write_sparse(probe, 4 * MiB, [(MiB, b"x")])
    if probe.stat().st_blocks * 512 >= MiB or _copy.SEEK_DATA is None:
        pytest.skip("%s (%s) does not keep holes or lacks SEEK_DATA" % (request.param, where))
    probe.unlink()
    return where


def copy_with_feed(src, dst, buf_size=64 * KiB, sparse=True, **kwargs):
    """What _transfer does: feed into the part at the same offsets, then set the size."""
    fd = os.open(src, os.O_RDONLY)
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        size = os.fstat(fd).st_size
        hasher = hashlib.sha256()
        _copy.feed(fd, 0, size, hasher, bytearray(buf_size), sink=out, sparse=sparse,
                   source_path=str(src), **kwargs)
        os.ftruncate(out, size)
        os.fsync(out)
        return hasher.hexdigest()
    finally:
        os.close(fd)
        os.close(out)


def test_feed_copies_exact_bytes_and_hashes_them(tmp_path):
    data = os.urandom(MiB + 4097)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    progress = []
    digest = copy_with_feed(src, dst, sparse=False, progress=progress.append)
    assert dst.read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
    assert progress == sorted(progress) and progress[-1] == len(data)


def test_feed_range_writes_only_that_range(tmp_path):
    data = os.urandom(300 * KiB)
    src = tmp_path / "src"
    src.write_bytes(data)
    fd = os.open(src, os.O_RDONLY)
    out = os.open(tmp_path / "part", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        hasher = hashlib.sha256()
        _copy.feed(fd, 100 * KiB, 250 * KiB, hasher, bytearray(16 * KiB), sink=out)
    finally:
        os.close(fd)
        os.close(out)
    part = (tmp_path / "part").read_bytes()
    assert len(part) == 250 * KiB
    assert part[100 * KiB:] == data[100 * KiB:250 * KiB]
    assert part[:100 * KiB] == bytes(100 * KiB)        # never written: a hole
    assert hasher.hexdigest() == hashlib.sha256(data[100 * KiB:250 * KiB]).hexdigest()


def test_sparse_copy_keeps_holes_and_hashes_logical_content(fs_dir):
    src, dst = fs_dir / "sparse", fs_dir / "copy"
    write_sparse(src)
    expected = dense()
    assert src.read_bytes() == expected
    digest = copy_with_feed(src, dst, buf_size=64 * KiB, sparse=True)

    assert digest == hashlib.sha256(expected).hexdigest()
    assert dst.stat().st_size == SPARSE_SIZE
    assert dst.read_bytes() == expected
    data_bytes = sum(len(d) for _o, d in SPARSE_DATA)
    # holes stayed holes: allocated space is about the data, far below the size
    assert dst.stat().st_blocks * 512 <= data_bytes + 256 * KiB
    assert dst.stat().st_blocks * 512 < SPARSE_SIZE // 10
    # the holes are where they were: at the start, in the middle, at the end
    ranges = data_ranges(dst)
    assert ranges == data_ranges(src)
    assert ranges[0][0] > 0 and ranges[-1][0] + ranges[-1][1] < SPARSE_SIZE and len(ranges) == 2


def test_sparse_hash_equals_dense_hash(fs_dir):
    src = fs_dir / "sparse"
    write_sparse(src)
    dense_file = fs_dir / "dense"
    dense_file.write_bytes(dense())
    digests = []
    for path, sparse in ((src, True), (src, False), (dense_file, True), (dense_file, False)):
        fd = os.open(path, os.O_RDONLY)
        try:
            hasher = hashlib.sha256()
            _copy.feed(fd, 0, SPARSE_SIZE, hasher, bytearray(1 * MiB), sparse=sparse)
            digests.append(hasher.hexdigest())
        finally:
            os.close(fd)
    assert digests == [hashlib.sha256(dense()).hexdigest()] * 4


def test_all_hole_file(fs_dir):
    src, dst = fs_dir / "holes", fs_dir / "copy"
    write_sparse(src, 3 * MiB, [])
    assert copy_with_feed(src, dst) == hashlib.sha256(bytes(3 * MiB)).hexdigest()
    assert dst.stat().st_size == 3 * MiB and dst.stat().st_blocks == 0


def test_is_sparse(fs_dir):
    write_sparse(fs_dir / "sparse")
    (fs_dir / "dense").write_bytes(b"x" * 100000)
    assert _copy.is_sparse(os.stat(fs_dir / "sparse"))
    assert not _copy.is_sparse(os.stat(fs_dir / "dense"))


def truncating_progress(path, at_pos, new_size):
    state = {"done": False}

    def progress(pos):
        if not state["done"] and pos >= at_pos:
            os.truncate(path, new_size)
            state["done"] = True
    return progress, state


def test_source_truncated_mid_copy_raises_source_changed(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(2 * MiB))
    progress, state = truncating_progress(src, 1, 100 * KiB)
    with pytest.raises(_copy.SourceChanged) as info:
        copy_with_feed(src, dst, sparse=False, progress=progress)
    assert state["done"]
    assert info.value.path == str(src)
    assert info.value.errno == errno.EIO
    assert "shrank" in str(info.value)


def test_sparse_source_truncated_mid_data_raises_source_changed(fs_dir):
    src, dst = fs_dir / "src", fs_dir / "dst"
    write_sparse(src, 4 * MiB, [(0, os.urandom(2 * MiB))])
    progress, state = truncating_progress(src, 64 * KiB, 100 * KiB)
    with pytest.raises(_copy.SourceChanged):
        copy_with_feed(src, dst, sparse=True, progress=progress)
    assert state["done"]


def test_sparse_source_truncated_inside_a_hole_raises_source_changed(fs_dir):
    """Cut while the hole is being hashed: the rest of the file is gone, not zeros."""
    src, dst = fs_dir / "src", fs_dir / "dst"
    write_sparse(src, 6 * MiB, [(0, os.urandom(64 * KiB)), (5 * MiB, os.urandom(64 * KiB))])
    progress, state = truncating_progress(src, MiB, 64 * KiB)
    with pytest.raises(_copy.SourceChanged):
        copy_with_feed(src, dst, sparse=True, progress=progress)
    assert state["done"]


def test_sparse_source_truncated_inside_trailing_hole_raises_source_changed(fs_dir):
    """Data, then a hole up to EOF; cut while the hole is hashed: not a hash of zeros."""
    src, dst = fs_dir / "src", fs_dir / "dst"
    write_sparse(src, 6 * MiB, [(0, os.urandom(64 * KiB))])
    progress, state = truncating_progress(src, MiB, 64 * KiB)
    with pytest.raises(_copy.SourceChanged):
        copy_with_feed(src, dst, sparse=True, progress=progress)
    assert state["done"]


def test_should_stop_interrupts_between_buffers(tmp_path):
    data = os.urandom(10 * 64 * KiB)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 3          # three buffers, then stop

    with pytest.raises(_copy.Interrupted):
        copy_with_feed(src, dst, sparse=False, should_stop=should_stop)
    written = dst.read_bytes()
    assert written == data[:3 * 64 * KiB]
    assert len(calls) == 4


def test_drop_cache_keeps_content(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        _copy.drop_cache(fd)
        assert os.pread(fd, 3000, 0) == b"abc" * 1000
    finally:
        os.close(fd)


def _flushed_and_dropped(path, pages):
    """A file of `pages` pages, on disk, opened, its pages dropped from the
    cache (skipped if they cannot be: a hint the kernel may not follow at once)."""
    path.write_bytes(os.urandom(pages * _copy.PAGE - 100))
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    size = pages * _copy.PAGE - 100
    for _attempt in range(5):
        _copy.drop_cache(fd)
        if _copy.dropped(fd, size):
            os.pread(fd, size, 0)       # asking started reading them: wait until they are read,
            _copy.drop_cache(fd)        # and drop them again, none of them being read now
            return fd
    os.close(fd)
    pytest.skip("the filesystem under tmp_path does not drop clean pages or refuses RWF_NOWAIT")


@pytest.mark.skipif(_copy.RWF_NOWAIT is None, reason="needs RWF_NOWAIT")
def test_dropped_asks_every_page_of_the_file(tmp_path):
    """The read-back of a batch's parts goes through the page cache only for a
    part none of whose pages stayed cached: a page in the middle that is still
    cached (mapped by someone, or read again) must be seen, not only the first."""
    size = 5 * _copy.PAGE - 100
    fd = _flushed_and_dropped(tmp_path / "f", 5)
    try:
        os.pread(fd, 10, 3 * _copy.PAGE)            # page 3 only is cached again
        assert not _copy.dropped(fd, size)
        assert os.pread(fd, size, 0) == (tmp_path / "f").read_bytes()
    finally:
        os.close(fd)


@pytest.mark.skipif(_copy.RWF_NOWAIT is None, reason="needs RWF_NOWAIT")
def test_dropped_sees_the_last_page_cached(tmp_path):
    size = 3 * _copy.PAGE - 100
    fd = _flushed_and_dropped(tmp_path / "f", 3)
    try:
        os.pread(fd, 10, 2 * _copy.PAGE)
        assert not _copy.dropped(fd, size)
    finally:
        os.close(fd)
