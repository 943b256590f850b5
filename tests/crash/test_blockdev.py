# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The block-level disk (blockdev.py) tested on its own: the log, replay, faults.

* a log of writes, flushes and marks on two raw disks is exactly what was
  done, in order, and every crash state replays byte-exactly (and the
  CrashMonkey subsets are seeded: the same seed, the same state);
* a whole filesystem's log replays to the device's exact bytes;
* a failed write reaches the filesystem as EIO, which fsync and syncfs
  report; a failed flush fails fsync;
* rot reaches a reader using O_DIRECT and one using POSIX_FADV_DONTNEED then
  a buffered read (so no cache between the loop device and the daemon hides
  it), with the loop device in both its modes;
* crash states of a correct create/fdatasync/rename/fsync-dir chain are all
  whole, and the same chain without its fdatasync has states that are not:
  the harness can fail, on the real filesystems.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import time
from pathlib import Path

import pytest

import blockdev
from blockdev import FLUSH, FLUSH_FAILED, MARK, WRITE, WRITE_FAILED, Replayer

pytestmark = [pytest.mark.root, pytest.mark.loop]
blockdev_rig = blockdev.blockdev_rig      # the fixture, under its name
KIB = 1024
_libc = ctypes.CDLL(None, use_errno=True)


def _aligned(data: bytes) -> mmap.mmap:
    """A page-aligned buffer holding `data` (for O_DIRECT)."""
    buf = mmap.mmap(-1, len(data))
    buf.write(data)
    return buf


def _direct_write(fd: int, offset: int, data: bytes) -> None:
    assert os.pwritev(fd, [_aligned(data)], offset) == len(data)


def _direct_read(fd: int, offset: int, size: int) -> bytes:
    buf = mmap.mmap(-1, size)
    got = os.preadv(fd, [buf], offset)
    return bytes(buf[:got])


def _fsync(path: Path) -> int:
    """fsync of the file at `path` through a fresh fd: 0 or the errno."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return 0
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)


def _image_bytes(blocks: dict, size: int) -> bytes:
    out = bytearray(size)
    for number, block in blocks.items():
        out[number * 4096:(number + 1) * 4096] = block
    return bytes(out)


def _shape(log, start):
    """(kind, disk, offset) of every record from `start` on; marks as ('M', text)."""
    out = []
    for record in log.records[start:]:
        if record.kind == MARK:
            out.append(('M', record.text))
        else:
            out.append((chr(record.kind), record.disk, record.offset))
    return out


# --------------------------------------------------------------------------
# The log and replay
# --------------------------------------------------------------------------

@pytest.mark.parametrize('loop_direct_io', [True, False], ids=['loop-dio', 'loop-buffered'])
def test_marks_and_two_disks_in_one_log_replay_exactly(blockdev_rig, tmp_path, loop_direct_io):
    rig = blockdev_rig({'a': ('raw', 1), 'b': ('raw', 1)}, loop_direct_io=loop_direct_io)
    blocks = {name: os.urandom(4 * KIB) for name in ('a1', 'a2', 'b1', 'b2')}
    fa = os.open(rig.devices['a'], os.O_RDWR | os.O_DIRECT)
    fb = os.open(rig.devices['b'], os.O_RDWR | os.O_DIRECT)
    try:
        first = rig.mark('one')
        _direct_write(fa, 0, blocks['a1'])
        _direct_write(fb, 8 * KIB, blocks['b1'])
        rig.mark('two')
        os.fsync(fa)
        _direct_write(fa, 4 * KIB, blocks['a2'])
        os.fsync(fb)
        rig.mark('three')
        _direct_write(fb, 8 * KIB, blocks['b2'])
        os.fsync(fb)
        os.fsync(fa)
        rig.mark('four')
        final = {'a': _direct_read(fa, 0, rig.sizes['a']), 'b': _direct_read(fb, 0, rig.sizes['b'])}
    finally:
        os.close(fa)
        os.close(fb)
    log = rig.log()
    assert _shape(log, first) == [
        ('M', 'one'), ('W', 'a', 0), ('W', 'b', 8 * KIB), ('M', 'two'), ('F', 'a', 0), ('W', 'a', 4 * KIB),
        ('F', 'b', 0), ('M', 'three'), ('W', 'b', 8 * KIB), ('F', 'b', 0), ('F', 'a', 0), ('M', 'four')]
    assert [bytes(r.data) for r in log.records[first:] if r.kind == WRITE] == \
        [blocks['a1'], blocks['b1'], blocks['a2'], blocks['b2']]
    assert [m.text for m in log.marks()] == ['one', 'two', 'three', 'four']

    size = rig.sizes['a']
    zero = bytes(size)

    def disk(*parts):
        out = bytearray(size)
        for offset, name in parts:
            out[offset:offset + 4 * KIB] = blocks[name]
        return bytes(out)

    expected = [  # per flush: (a, b) with every write logged before it
        (disk((0, 'a1')), disk((8 * KIB, 'b1'))),
        (disk((0, 'a1'), (4 * KIB, 'a2')), disk((8 * KIB, 'b1'))),
        (disk((0, 'a1'), (4 * KIB, 'a2')), disk((8 * KIB, 'b2'))),
        (disk((0, 'a1'), (4 * KIB, 'a2')), disk((8 * KIB, 'b2'))),
    ]
    flushes = log.flushes(after='one', before='four')
    assert len(flushes) == 4
    replayer = Replayer(log)
    for k, (want_a, want_b) in zip(flushes, expected):
        images = replayer.write_state(k, tmp_path)
        assert images['a'].read_bytes() == want_a, 'disk a at record %d' % k
        assert images['b'].read_bytes() == want_b, 'disk b at record %d' % k
    # the whole log is what the devices hold now
    state = Replayer(log).final_state()
    assert _image_bytes(state['a'], size) == final['a'] == expected[-1][0]
    assert _image_bytes(state['b'], size) == final['b'] == expected[-1][1]
    # before the first write: nothing
    assert Replayer(log).write_state(first, tmp_path)['a'].read_bytes() == zero

    # CrashMonkey subsets: after the first flush (a), the write of a2 is unflushed
    # until b's flush; a seeded subset keeps it or not, the same for the same seed.
    k = flushes[0]
    assert [log.records[i].offset for i in log.unflushed_writes(k)] == [4 * KIB]
    outcomes = {}
    for seed in range(16):
        a_image = Replayer(log).write_state(k, tmp_path, subset_seed=seed)['a'].read_bytes()
        assert a_image in (expected[0][0], expected[1][0])
        outcomes[seed] = a_image == expected[1][0]
        assert (Replayer(log).write_state(k, tmp_path, subset_seed=seed)['a'].read_bytes()
                == expected[1][0]) == outcomes[seed]
    assert set(outcomes.values()) == {True, False}, 'a subset sometimes keeps the write, sometimes not'


@pytest.mark.parametrize('fstype', ['ext4', 'xfs'])
def test_a_filesystem_log_replays_to_the_device_bytes(blockdev_rig, fstype):
    rig = blockdev_rig({'d': fstype})
    root = rig.path('d')
    for index in range(10):
        (root / ('f%d' % index)).write_bytes(os.urandom(5000 + 3000 * index))
        if index % 3 == 0:
            fd = os.open(root / ('f%d' % index), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    os.unlink(root / 'f4')
    rig.unmount('d')                     # everything written back and flushed
    log = rig.log()
    replayed = Replayer(log).final_state()['d']
    chunk = 4 * 1024 * KIB
    fd = os.open(rig.devices['d'], os.O_RDONLY | os.O_DIRECT)
    try:
        for offset in range(0, rig.sizes['d'], chunk):
            want = bytearray(chunk)
            for number in range(offset // 4096, (offset + chunk) // 4096):
                if number in replayed:
                    at = number * 4096 - offset
                    want[at:at + 4096] = replayed[number]
            assert _direct_read(fd, offset, chunk) == want, 'the device differs in [%d, %d)' % (offset, offset + chunk)
    finally:
        os.close(fd)
    assert log.count(FLUSH) > 0 and log.count(WRITE) > 0


# --------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------

@pytest.mark.parametrize('fstype', ['ext4', 'xfs'])
def test_a_failed_write_is_eio_to_fsync_and_syncfs(blockdev_rig, fstype):
    rig = blockdev_rig({'d': fstype})
    root = rig.path('d')
    marker = b'FAIL-THIS-WRITE:' + os.urandom(8)
    rig.dev.fail_writes('d', matching=marker)
    early = os.open(root, os.O_RDONLY | os.O_DIRECTORY)    # its syncfs error cursor predates the error
    try:
        (root / 'bad').write_bytes((marker + bytes(4 * KIB - len(marker))) * 4)
        (root / 'good').write_bytes(b'fine\n' * 2000)
        assert _fsync(root / 'bad') == errno.EIO
        assert _fsync(root / 'good') == 0       # another file's data is not in doubt
        assert _libc.syncfs(early) != 0 and ctypes.get_errno() == errno.EIO
        assert _libc.syncfs(early) == 0, 'the error is reported once per fd'
    finally:
        os.close(early)
    stats = rig.dev.stats()['counts']
    assert stats.get('failed_writes', 0) >= 1
    log = rig.log()
    assert log.count(WRITE_FAILED) == stats['failed_writes']
    failed = [r for r in log.records if r.kind == WRITE_FAILED]
    assert all(bytes(r.data) == b'' for r in failed), 'a failed write stores nothing'


def test_a_failed_flush_is_eio_to_fsync(blockdev_rig):
    rig = blockdev_rig({'d': 'ext4'})
    root = rig.path('d')
    (root / 'f').write_bytes(b'x' * 10000)
    rig.dev.fail_flush('d')
    assert _fsync(root / 'f') == errno.EIO
    assert rig.log().count(FLUSH_FAILED) >= 1
    rig.dev.heal()


def test_faults_after_n_count_the_devices_requests(blockdev_rig):
    rig = blockdev_rig({'r': ('raw', 1)})
    start = rig.mark('start')
    rig.dev.fail_writes('r', after=2)
    rig.dev.fail_flush('r', after=1)
    fd = os.open(rig.devices['r'], os.O_RDWR | os.O_DIRECT)
    try:
        _direct_write(fd, 0, b'1' * 4096)
        _direct_write(fd, 4096, b'2' * 4096)
        with pytest.raises(OSError) as failed:
            _direct_write(fd, 8192, b'3' * 4096)
        assert failed.value.errno == errno.EIO
        os.fsync(fd)
        with pytest.raises(OSError) as failed:
            os.fsync(fd)
        assert failed.value.errno == errno.EIO
        rig.dev.heal()
        _direct_write(fd, 8192, b'3' * 4096)
        os.fsync(fd)
        assert _direct_read(fd, 0, 3 * 4096) == b'1' * 4096 + b'2' * 4096 + b'3' * 4096
    finally:
        os.close(fd)
    log = rig.log()
    assert [chr(r.kind) for r in log.records[start + 1:]] == ['W', 'W', 'w', 'F', 'f', 'W', 'F']


def test_write_and_rot_ranges_on_a_raw_disk(blockdev_rig):
    rig = blockdev_rig({'r': ('raw', 1)})
    data = os.urandom(16 * KIB)
    fd = os.open(rig.devices['r'], os.O_RDWR | os.O_DIRECT)
    try:
        _direct_write(fd, 0, data)
        os.fsync(fd)
        rig.dev.fail_writes('r', start=20 * KIB, end=24 * KIB)
        _direct_write(fd, 16 * KIB, b'a' * 4 * KIB)         # outside the range
        with pytest.raises(OSError) as failed:
            _direct_write(fd, 20 * KIB, b'b' * 4 * KIB)     # inside it
        assert failed.value.errno == errno.EIO
        rig.dev.rot('r', start=4 * KIB + 100, end=4 * KIB + 200)
        got = _direct_read(fd, 0, 24 * KIB)
        want = bytearray(data + b'a' * 4 * KIB + bytes(4 * KIB))
        for pos in range(4 * KIB + 100, 4 * KIB + 200):
            want[pos] ^= 0x01
        assert got == bytes(want)
        rig.dev.heal()
        assert _direct_read(fd, 0, 24 * KIB) == data + b'a' * 4 * KIB + bytes(4 * KIB)
    finally:
        os.close(fd)


@pytest.mark.parametrize('fstype,loop_direct_io', [('ext4', True), ('ext4', False), ('xfs', True)],
                         ids=['ext4-loop-dio', 'ext4-loop-buffered', 'xfs-loop-dio'])
def test_rot_reaches_direct_and_uncached_readers(blockdev_rig, fstype, loop_direct_io):
    rig = blockdev_rig({'d': fstype}, loop_direct_io=loop_direct_io)
    path = rig.path('d') / 'data'
    marker = b'ROT-HERE:' + os.urandom(8)
    data = b''.join(marker + os.urandom(4 * KIB - len(marker)) for _block in range(16))
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    rig.dev.rot('d', matching=marker)

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        direct = _direct_read(fd, 0, len(data))
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        uncached = os.pread(fd, len(data), 0)
    finally:
        os.close(fd)
    for got in (direct, uncached):
        assert len(got) == len(data)
        assert sum(a != b for a, b in zip(got, data)) == 16, 'one byte of each block altered'
    assert rig.dev.stats()['counts'].get('rotted_reads', 0) >= 2

    rig.dev.heal()                  # the medium held the right bytes all along
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        assert _direct_read(fd, 0, len(data)) == data
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Crash states: the harness tells a correct chain from a broken one
# --------------------------------------------------------------------------

def _chain(root: Path, files: int, fdatasync: bool) -> dict:
    """create a part, write, [fdatasync], rename into place, fsync the directory."""
    expected = {}
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for index in range(files):
            data = bytes([65 + index]) * (6000 + 1000 * index)
            part = root / ('.f%d.part' % index)
            with open(part, 'wb') as handle:
                handle.write(data)
                handle.flush()
                if fdatasync:
                    os.fdatasync(handle.fileno())
            os.rename(part, root / ('f%d' % index))
            os.fsync(dir_fd)
            expected['f%d' % index] = data
    finally:
        os.close(dir_fd)
    return expected


def _violations(root: Path, expected: dict) -> list:
    """Final names whose content is not whole (a part may hold anything)."""
    found = []
    for name, data in expected.items():
        path = root / name
        if path.exists() and path.read_bytes() != data:
            found.append(name)
    return found


@pytest.mark.parametrize('fstype', ['ext4', 'xfs'])
def test_crash_states_of_a_correct_chain_and_of_one_without_fdatasync(blockdev_rig, fstype):
    rig = blockdev_rig({'d': fstype})
    for name in ('good', 'broken'):
        (rig.path('d') / name).mkdir()
    rig.sync()
    results = {}
    for name, fdatasync in (('good', True), ('broken', False)):
        rig.mark(name)
        expected = _chain(rig.path('d') / name, 5, fdatasync)
        rig.mark(name + '-end')
        results[name] = expected
    log = rig.log()
    replayer = Replayer(log)
    started, states = time.monotonic(), 0
    summary = {}
    for name, expected in results.items():
        points = log.flushes(after=name, before=name + '-end')
        bad_states, seen_files = [], set()
        for index, k in enumerate(points):
            for seed in ([None, index] if index % 2 == 0 else [None]):
                with rig.crash_state(log, replayer, k, subset_seed=seed) as mounts:
                    root = mounts['d'] / name
                    bad = _violations(root, expected)
                    seen_files.update(p.name for p in root.iterdir() if p.name in expected)
                states += 1
                if bad:
                    bad_states.append((k, seed, bad))
        summary[name] = (len(points), bad_states, seen_files)
    elapsed = time.monotonic() - started
    print('%s: %d crash states in %.2f s (%.1f ms each); violating: good %d, without fdatasync %d'
          % (fstype, states, elapsed, 1000 * elapsed / states, len(summary['good'][1]), len(summary['broken'][1])))
    assert summary['good'][0] >= 10, 'too few flush points: %r' % summary['good'][0]
    assert summary['good'][1] == [], 'violating states of the correct chain: %r' % summary['good'][1]
    assert summary['good'][2] == set(results['good']), 'every file reached some crash state'
    assert summary['broken'][1], 'no crash state of the chain without fdatasync lost data'
