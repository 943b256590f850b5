# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Read-back verification reads what the disk holds, not the page cache.

The destination is a loop-mounted xfs of its own, so the sectors its loop
device reads during a run are the run's reads: with read-back on, at least
every byte copied is read back from the device, on each of the three copy
paths (a batch of small files flushed with one syncfs and prefetched back, a
file copied in one piece, a large file through the overlapped pipeline).
With read-back off the same run reads next to nothing: the measure can tell.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover

from fstree import MIB, assert_same_tree, snapshot
from helpers_recovery import run_cli

pytestmark = pytest.mark.loop

SMALL_FILES = 300
SMALL_SIZE = 12 * 1024
MEDIUM_SIZE = 3 * MIB        # one buffer: copied in one piece
LARGE_SIZE = 40 * MIB        # > 4 buffers of 1 MiB: the pipeline
BUFFER = 1 * MIB


def _device_of(mountpoint: Path) -> str:
    """The block device (e.g. loop3) mounted on `mountpoint`."""
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            source, target = line.split()[:2]
            if target == str(mountpoint):
                return os.path.basename(os.path.realpath(source))
    raise AssertionError("%s is not a mount point" % mountpoint)


def _sectors_read(device: str) -> int:
    with open("/sys/block/%s/stat" % device, encoding="ascii") as handle:
        return int(handle.read().split()[2])


def _build(src: Path) -> int:
    """The three shapes of copy; returns the bytes in the tree."""
    (src / "small").mkdir(parents=True)
    for index in range(SMALL_FILES):
        (src / "small" / ("f%03d" % index)).write_bytes(os.urandom(SMALL_SIZE))
    (src / "medium.bin").write_bytes(os.urandom(MEDIUM_SIZE))
    (src / "large.bin").write_bytes(os.urandom(LARGE_SIZE))
    return SMALL_FILES * SMALL_SIZE + MEDIUM_SIZE + LARGE_SIZE


def _move(tmp_path: Path, dest_fs: Path, name: str, **params: t.Any) -> tuple[int, int]:
    """(bytes moved, bytes the destination's device read during the run)."""
    src = tmp_path / ("src-" + name)
    total = _build(src)
    expected = snapshot(src)
    device = _device_of(dest_fs)
    os.sync()
    before = _sectors_read(device)
    result = _mover.run(dict(src=str(src), dest=str(dest_fs / name), state_dir=str(tmp_path / "state"),
                             buffer_size=BUFFER, **params))
    read = (_sectors_read(device) - before) * 512
    assert not result.get("failed"), result.get("msg")
    assert result["stats"]["files_moved"] == SMALL_FILES + 2
    assert_same_tree(expected, snapshot(dest_fs / name))
    return total, read


def test_read_back_comes_from_the_disk(loopfs: t.Callable[..., Path], tmp_path: Path) -> None:
    dest_fs = loopfs("xfs")
    total, read = _move(tmp_path, dest_fs, "verified")
    assert read >= total, "read back %d bytes from the device, copied %d" % (read, total)


def test_without_read_back_the_device_is_barely_read(loopfs: t.Callable[..., Path], tmp_path: Path) -> None:
    dest_fs = loopfs("xfs")
    total, read = _move(tmp_path, dest_fs, "unverified", verify_readback=False)
    assert read < total // 10, "read %d bytes from the device without read-back" % read


def test_a_batch_larger_than_the_fd_limit_allows(loopfs: t.Callable[..., Path], tmp_path: Path) -> None:
    """batch_files far above RLIMIT_NOFILE: prefetching stops short of the limit,
    so every copy still gets its fds, and every file moves."""
    dest_fs = loopfs("xfs")
    src = tmp_path / "src"
    src.mkdir()
    for index in range(600):
        (src / ("f%03d" % index)).write_bytes(os.urandom(4096))
    expected = snapshot(src)
    params = dict(src=str(src), dest=str(dest_fs / "many"), state_dir=str(tmp_path / "state"),
                  batch_files=1000)
    run = run_cli(params, prefix=["prlimit", "--nofile=200:"])
    result = run.result
    assert result["stats"]["files_moved"] == 600, result.get("failures")
    assert result["complete"] is True
    assert_same_tree(expected, snapshot(dest_fs / "many"))


def _backing_file(device: str) -> str:
    with open("/sys/block/%s/loop/backing_file" % device, encoding="utf-8") as handle:
        return handle.read().strip()


def _device_offset(path: Path) -> int:
    """Where on its device the first byte of `path` is (its first extent, from FIEMAP)."""
    out = subprocess.run(["filefrag", "-v", "-b512", str(path)], capture_output=True, text=True,
                         check=True).stdout
    found = re.search(r"^\s*0:\s*0\.\.\s*\d+:\s*(\d+)\.\.", out, re.M)
    assert found, out
    return int(found.group(1)) * 512


@pytest.mark.skipif(shutil.which("filefrag") is None, reason="needs filefrag (e2fsprogs)")
def test_verify_reads_the_destination_from_the_disk(loopfs: t.Callable[..., Path], tmp_path: Path) -> None:
    """Bytes changed on the device under a copy whose pages are cached: a read
    through the page cache still sees the old bytes, verify must see the new."""
    dest_fs = loopfs("xfs")
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(256 * 1024)
    (src / "f.bin").write_bytes(data)
    params = dict(src=str(src), dest=str(dest_fs / "d"), state_dir=str(tmp_path / "state"), mode="copy")
    assert not _mover.run(params).get("failed")
    copy = dest_fs / "d" / "f.bin"
    assert copy.read_bytes() == data                        # its pages are in the cache now
    offset = _device_offset(copy) + 4096
    fd = os.open(_backing_file(_device_of(dest_fs)), os.O_RDWR)
    try:
        assert os.pread(fd, 16, offset) == data[4096:4112]    # the extent is where FIEMAP says
        os.pwrite(fd, bytes(byte ^ 0xFF for byte in data[4096:4112]), offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert copy.read_bytes() == data                        # the cache still shows the old bytes
    result = _mover.run(dict(params, mode="verify"))
    assert result.get("failed") is True and result["complete"] is False, result["msg"]
    (failure,) = result["failures"]
    assert failure["path"].endswith("/f.bin") and "content differs" in failure["error"], failure
