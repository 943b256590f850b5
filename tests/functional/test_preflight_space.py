# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight's space check against what real filesystems allocate (issue 12).

Each destination is a real ext4, xfs or btrfs on a loop device; the shapes
are those a new user met: many small files (each takes at least a block),
and a sparse file (its holes take nothing). Where the estimate says a tree
does not fit, the real move is run too, to show that it indeed does not;
where it says it fits, the real move completes.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover
from ansible_collections.durable.mover.plugins.module_utils._preflight import preflight, summary

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def small_files(root: Path, count: int, size: int, per_dir: int) -> None:
    """`count` files of `size` bytes, `per_dir` to a directory."""
    data = b"x" * size
    for index in range(count):
        folder = root / ("d%04d" % (index // per_dir))
        if index % per_dir == 0:
            folder.mkdir(parents=True)
        with open(folder / ("f%06d" % index), "wb") as handle:
            handle.write(data)


def listing(root: Path) -> list:
    return sorted(str(path) for path in root.rglob("*"))


def params_for(src: Path, dest: Path, state: Path, **extra) -> dict:
    return dict({"src": str(src), "dest": str(dest), "state_dir": str(state), "mode": "copy",
                 "hash": "sha256", "processes": 1}, **extra)


def space_problems(found: dict) -> list:
    return [p for p in found["problems"] if p.startswith("not enough free")]


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_small_files_that_do_not_fit_on_ext4_are_refused(tmp_path, loopfs):
    """12,000 x 100 B files are 1.1 MiB of data but 46.9 MiB of 4 KiB blocks."""
    mount = loopfs("ext4", 40, mkfs_args=["-b", "4096", "-N", "16384"])
    src = tmp_path / "src"
    small_files(src, 12000, 100, 1000)
    params = params_for(src, mount / "dest", tmp_path / "state")
    before = listing(mount)

    found = preflight(params)

    assert found["ok"] is False, summary(found)
    problems = space_problems(found)
    assert len(problems) == 1 and problems[0].startswith("not enough free space at dest"), found["problems"]
    space = found["findings"]["space"]
    estimate = space["estimate"]
    assert estimate["filesystem"] == "ext4" and estimate["block_size"] == 4096
    assert estimate["files"] == 12000 and estimate["data_bytes"] == 12000 * 100
    assert estimate["file_blocks_bytes"] == 12000 * 4 * KiB
    assert space["bytes_needed"] > space["free_bytes"]
    # The message says how the estimate was made.
    assert "4.0 KiB blocks" in problems[0] and "margin" in problems[0], problems[0]
    assert "method" in estimate and "margin" in estimate["method"]
    # Refused before anything was touched.
    assert listing(mount) == before
    assert not (tmp_path / "state").exists()

    # And it really does not fit: the move stops on a full disk.
    result = _mover.run(params)
    assert result.get("failed") and "No space left on device" in result["msg"], result["msg"]
    assert 0 < result["stats"]["files_moved"] < 12000


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_inodes_for_directories_count_too(tmp_path, loopfs):
    """A tiny ext4 (1 KiB blocks, 10,240 inodes): 10,000 files fit its inodes,
    but not with the 400 directories that hold them."""
    mount = loopfs("ext4", 40)
    src = tmp_path / "src"
    small_files(src, 10000, 100, 25)
    params = params_for(src, mount / "dest", tmp_path / "state")
    free_inodes = os.statvfs(mount).f_favail
    assert 10000 < free_inodes < 10400, free_inodes      # the shape this test is about

    found = preflight(params)

    assert found["ok"] is False, summary(found)
    problems = space_problems(found)
    assert len(problems) == 1 and problems[0].startswith("not enough free inodes at dest"), found["problems"]
    assert "10401 entries" in problems[0] and "401 directories" in problems[0], problems[0]   # and dest itself
    assert found["findings"]["space"]["inodes_needed"] == 10401
    result = _mover.run(params)
    assert result.get("failed") and "No space left on device" in result["msg"], result["msg"]


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_small_files_that_do_not_fit_on_xfs_are_refused_and_fewer_are_accepted(tmp_path, loopfs):
    """60,000 x 2,000 B (114 MiB of data, 219 MiB free) take 234 MiB of
    blocks and 29 MiB of inodes on xfs; 30,000 of them fit."""
    mount = loopfs("xfs", 300)
    src = tmp_path / "src"
    small_files(src, 60000, 2000, 2000)
    params = params_for(src, mount / "dest", tmp_path / "state")
    assert os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize > 60000 * 2000

    found = preflight(params)

    assert found["ok"] is False, summary(found)
    problems = space_problems(found)
    assert len(problems) == 1 and problems[0].startswith("not enough free space at dest"), found["problems"]
    estimate = found["findings"]["space"]["estimate"]
    assert estimate["filesystem"] == "xfs"
    assert estimate["file_blocks_bytes"] == 60000 * 4 * KiB
    assert estimate["inode_bytes"] >= 60000 * 512

    for folder in sorted(src.iterdir())[15:]:      # keep 15 directories: 30,000 files
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    found = preflight(params)
    assert found["ok"] is True, found["problems"]
    assert found["findings"]["space"]["estimate"]["files"] == 30000


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_a_sparse_file_that_fits_on_btrfs_is_accepted_and_moves(tmp_path, loopfs):
    """A 1 GiB file holding 4 KiB (its holes take nothing), and 150 MB of data,
    on a 256 MiB btrfs."""
    mount = loopfs("btrfs", 256)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse.img", "wb") as handle:
        handle.write(os.urandom(4 * KiB))
        handle.truncate(GiB)
    with open(src / "data.bin", "wb") as handle:
        for _megabyte in range(150):
            handle.write(os.urandom(1000 * 1000))
    assert os.stat(src / "sparse.img").st_blocks * 512 <= 8 * KiB
    params = params_for(src, mount / "dest", tmp_path / "state")

    found = preflight(params)

    assert found["ok"] is True, found["problems"]
    estimate = found["findings"]["space"]["estimate"]
    assert estimate["filesystem"] == "btrfs"
    assert estimate["data_bytes"] == 4 * KiB + 150 * 1000 * 1000
    assert found["findings"]["space"]["bytes_needed"] < found["findings"]["space"]["free_bytes"]
    assert found["findings"]["space"]["bytes_to_move"] == 4 * KiB + 150 * 1000 * 1000   # its data: holes are not bytes

    result = _mover.run(params)
    assert result["complete"] is True and not result.get("failed"), result["msg"]
    assert os.stat(mount / "dest" / "sparse.img").st_size == GiB


def varied_tree(root: Path) -> None:
    """What a tree on a source filesystem may hold, for the bound below: small and empty files, a
    sparse file, hard links, short and long symbolic links, many directories."""
    small_files(root / "small", 3000, 100, 30)
    (root / "empty").mkdir()
    for index in range(200):
        (root / "empty" / ("e%03d" % index)).touch()
    with open(root / "sparse.img", "wb") as handle:
        handle.write(os.urandom(64 * KiB))
        handle.seek(32 * MiB)
        handle.write(os.urandom(64 * KiB))
    (root / "data.bin").write_bytes(os.urandom(3 * MiB))
    for index in range(20):
        os.link(root / "data.bin", root / ("link%02d" % index))
    (root / "links").mkdir()
    for index in range(100):
        os.symlink("t" if index % 2 else "t" * 200, root / "links" / ("l%03d" % index))


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
@pytest.mark.parametrize("src_block", [1024, 4096])
def test_a_larger_job_is_not_listed_when_its_filesystems_bound_fits(tmp_path, loopfs, src_block):
    """The move's preflight of a job larger than the run's bound (issue 13): on an ext4 source,
    what the source's whole filesystem holds (statvfs) bounds what the tree takes at the
    destination, so the source is not listed. The bound is at least the exact count the listing
    makes, with 1 KiB source blocks (each becomes a 4 KiB block at the destination) and with
    4 KiB ones; nothing is listed into the journal for it."""
    source = loopfs("ext4", 64, mkfs_args=["-b", str(src_block)])
    dest = loopfs("xfs", 300)
    src = source / "tree"
    varied_tree(src)
    params = params_for(src, dest / "dest", tmp_path / "state", mode="move")

    exact = preflight(dict(params, prepare="exact"))
    assert exact["ok"] is True, exact["problems"]
    assert exact["findings"]["prepared"] == "exact" and exact["findings"]["larger"] is None
    exact_space = exact["findings"]["space"]
    assert exact_space["estimate"]["files"] == 3000 + 200 + 2 + 100

    counted = preflight(dict(params, prepare="bounded", bound=(100, -1)))

    assert counted["ok"] is True, counted["problems"]
    findings = counted["findings"]
    assert findings["larger"] == {"files": 101, "bytes": findings["larger"]["bytes"]}, findings["larger"]
    assert findings["prepared"] is None and findings["plan"] is None
    space = findings["space"]
    assert space["upper_bound"] is True and space["estimate"]["upper_bound"] is True
    assert space["bytes_needed"] >= exact_space["bytes_needed"], (space, exact_space)
    assert space["inodes_needed"] >= exact_space["inodes_needed"], (space, exact_space)
    assert space["files_to_move"] is None and "at most" in summary(counted)
    # Nothing was listed for it: the journal still holds the exact preflight's listing, for its token.
    with closing(sqlite3.connect("file:%s?mode=ro" % exact["findings"]["journal"], uri=True)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'prepared'").fetchone() == ("exact",)

    # The move lists the source itself, and everything arrives.
    result = _mover.run(params)
    assert result["complete"] is True and result["stats"]["files_moved"] == 3000 + 200 + 2 + 100 + 20, result["msg"]


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
@pytest.mark.parametrize("source", ["root filesystem", "tmpfs"])
def test_a_larger_job_is_listed_when_the_bound_proves_nothing(tmp_path, loopfs, tmpfs, source):
    """Where the source's filesystem bounds nothing useful, the preflight lists and counts the job
    exactly, as before, and hands its token on: the filesystem holding tmp_path holds far more than
    the small destination has free, and a tmpfs is no filesystem whose use bounds a tree."""
    src = (tmp_path if source == "root filesystem" else tmpfs("64m")) / "tree"
    small_files(src, 300, 100, 30)
    dest = loopfs("ext4", 40)
    params = params_for(src, dest / "dest", tmp_path / "state", mode="move")
    if source == "root filesystem":
        vfs = os.statvfs(tmp_path)
        assert (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize > 40 * MiB     # the shape this test is about

    found = preflight(dict(params, prepare="token", bound=(10, -1)))

    assert found["ok"] is True, found["problems"]
    findings = found["findings"]
    assert findings["larger"] is None and findings["prepared"] == "token"
    assert findings["plan"]["files"] == 300
    assert not findings["space"].get("upper_bound") and findings["space"]["estimate"]["files"] == 300
