# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bytes are counted as the move carries them, the same way everywhere (issue 12).

A sparse file counts its data, not its holes (a 64 MiB file holding 8 KiB is
8 KiB moved, not 64 MiB in no time); a file with two names counts once, in
``bytes_total`` as in ``bytes_moved``, in the result as in move_info's
progress and in check mode. Real runs of the core, on one filesystem (renames)
and onto a loop-mounted xfs (copies).
"""

from __future__ import annotations

import os
import typing as t

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover
from ansible_collections.durable.mover.plugins.module_utils._info import job_info

from fstree import Site, b

KIB = 1024
MIB = 1024 * KIB


def ok(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert not result.get("failed"), result.get("msg")
    return result


def sparse_file(path: bytes, size: int, data_at: t.Sequence[int]) -> None:
    """`size` bytes, 4 KiB of data at each offset of `data_at`, holes elsewhere."""
    with open(path, "wb") as handle:
        for offset in data_at:
            handle.seek(offset)
            handle.write(os.urandom(4 * KIB))
        handle.truncate(size)


def progress(site: Site) -> dict[str, t.Any]:
    return job_info({"src": str(site.src), "dest": str(site.dest), "state_dir": str(site.state)})["progress"]


def test_holes_of_sparse_files_are_not_bytes_moved(site: Site) -> None:
    src = b(site.src)
    sparse_file(os.path.join(src, b"disk.img"), 64 * MIB, (0, 32 * MIB))
    with open(os.path.join(src, b"plain.bin"), "wb") as handle:
        handle.write(os.urandom(10000))
    if os.stat(os.path.join(src, b"disk.img")).st_blocks * 512 >= 64 * MIB:
        raise AssertionError("the source filesystem made no holes")
    data = 8 * KIB + 10000

    planned = ok(_mover.plan(site.params()))
    assert planned["plan"]["bytes"] == planned["stats"]["bytes_total"] == data

    result = ok(_mover.run(site.params()))

    assert result["stats"]["bytes_total"] == data
    assert result["stats"]["bytes_moved"] == data
    # the rate is of the data too (elapsed_seconds is rounded to the millisecond)
    assert result["bytes_per_second"] == pytest.approx(data / result["elapsed_seconds"], rel=0.02)
    shown = progress(site)
    assert shown["bytes_total"] == shown["bytes_done"] == data
    assert os.stat(os.path.join(b(site.dest), b"disk.img")).st_size == 64 * MIB


def test_a_file_with_two_names_counts_once(site: Site) -> None:
    src = b(site.src)
    os.makedirs(os.path.join(src, b"a"))
    os.makedirs(os.path.join(src, b"b"))
    with open(os.path.join(src, b"a/first"), "wb") as handle:
        handle.write(os.urandom(30000))
    os.link(os.path.join(src, b"a/first"), os.path.join(src, b"b/second"))
    with open(os.path.join(src, b"other"), "wb") as handle:
        handle.write(os.urandom(5000))

    planned = ok(_mover.plan(site.params()))
    assert planned["stats"]["bytes_total"] == 35000

    result = ok(_mover.run(site.params()))

    assert result["stats"]["hardlinks"] == 1
    assert (result["stats"]["bytes_total"], result["stats"]["bytes_moved"]) == (35000, 35000)
    shown = progress(site)
    assert shown["bytes_total"] == shown["bytes_done"] == 35000
    dest = b(site.dest)
    assert os.stat(os.path.join(dest, b"a/first")).st_ino == os.stat(os.path.join(dest, b"b/second")).st_ino
