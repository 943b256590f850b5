# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A rerun with changed options applies them to what earlier runs decided (issue 12).

What a run skipped or failed is decided again under the options of the
rerun (special_files, on_conflict), and the source is listed again under its
exclude and cross_filesystems: entries the earlier listing queued that the new
options leave out stay at the source, and entries they bring in are found. A
rerun with the same options changes nothing. Real runs of the core, on one
filesystem and onto a loop-mounted xfs.
"""

from __future__ import annotations

import os
import stat
import typing as t

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover

from fstree import Site, b, read_journal
from helpers_recovery import run_cli


def run(site: Site, **params: t.Any) -> dict[str, t.Any]:
    return _mover.run(site.params(**params))


def ok(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert not result.get("failed"), result.get("msg")
    return result


def write(path: bytes, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_special_files_recreate_after_a_run_that_skipped_them(site: Site) -> None:
    src, dest = b(site.src), b(site.dest)
    write(os.path.join(src, b"data/a.txt"), b"a")
    os.mkfifo(os.path.join(src, b"data/fifo"), 0o640)
    first = ok(run(site))
    assert first["stats"]["special_skipped"] == 1
    assert stat.S_ISFIFO(os.lstat(os.path.join(src, b"data/fifo")).st_mode)

    second = ok(run(site, special_files="recreate"))

    assert not second["msg"].startswith("nothing to do"), second["msg"]
    assert second["changed"] is True and second["stats"]["files_moved"] == 1
    assert second["stats"]["special_skipped"] == 0 and second["stats"]["files_skipped"] == 0
    assert stat.S_ISFIFO(os.lstat(os.path.join(dest, b"data/fifo")).st_mode)
    assert not os.path.lexists(os.path.join(src, b"data/fifo"))
    assert second["complete"] is True
    # Decided once: the same options again change nothing.
    third = ok(run(site, special_files="recreate"))
    assert third["changed"] is False and third["msg"].startswith("nothing to do"), third["msg"]


def test_on_conflict_overwrite_after_a_run_that_skipped_the_conflict(site: Site) -> None:
    src, dest = b(site.src), b(site.dest)
    write(os.path.join(src, b"c.txt"), b"the source's")
    write(os.path.join(src, b"other.txt"), b"other")
    write(os.path.join(dest, b"c.txt"), b"someone else's")
    first = ok(run(site, on_conflict="skip"))
    assert first["stats"]["files_skipped"] == 1
    assert open(os.path.join(dest, b"c.txt"), "rb").read() == b"someone else's"

    second = ok(run(site, on_conflict="overwrite"))

    assert second["changed"] is True and second["stats"]["files_moved"] == 1, second["msg"]
    assert open(os.path.join(dest, b"c.txt"), "rb").read() == b"the source's"
    assert not os.path.lexists(os.path.join(src, b"c.txt"))
    assert second["complete"] is True


def test_on_conflict_fail_after_skip_reports_the_conflict(site: Site) -> None:
    src, dest = b(site.src), b(site.dest)
    write(os.path.join(src, b"c.txt"), b"the source's")
    write(os.path.join(dest, b"c.txt"), b"someone else's")
    ok(run(site, on_conflict="skip"))

    second = run(site, on_conflict="fail")

    assert second.get("failed") is True and second["stats"]["files_failed"] == 1, second["msg"]
    assert second["failures"][0]["error"].startswith("conflict:"), second["failures"]
    assert second["complete"] is False


def test_an_exclude_added_while_entries_are_still_queued_is_honoured(site: Site) -> None:
    """The first run is stopped after its listing and its first batch: the
    rest is queued in the journal. The rerun excludes a directory of it."""
    src, dest = b(site.src), b(site.dest)
    for index in range(40):
        write(os.path.join(src, b"keep/k%02d" % index), b"k")
        write(os.path.join(src, b"cache/c%02d" % index), b"c")
    killed = run_cli(site.params(batch_files=8, processes=1), faults="kill=after_journal_done@1")
    assert killed.returncode == -9, killed.describe()
    queued = sorted(rel for rel, row in read_journal(site.job_dir() / "journal.sqlite").files.items()
                    if row[1] == "pending" and rel.startswith(b"cache/"))
    assert queued, "the test needs queued entries under cache/"

    second = ok(run(site, exclude=["cache"]))

    # What the first run moved stays moved; what it had only queued stays at the source.
    assert sorted(b"cache/" + name for name in os.listdir(os.path.join(src, b"cache"))) == queued
    assert not set(os.listdir(os.path.join(dest, b"cache"))) & {rel[6:] for rel in queued}
    assert sorted(os.listdir(os.path.join(dest, b"keep"))) == [b"k%02d" % i for i in range(40)]
    assert second["complete"] is True
    assert second["stats"]["files_total"] == 80 - len(queued)
    # And without the exclude, the next run moves them.
    third = ok(run(site))
    assert sorted(os.listdir(os.path.join(dest, b"cache"))) == [b"c%02d" % i for i in range(40)]
    assert third["stats"]["files_moved"] == len(queued)


def test_an_exclude_removed_on_a_finished_job_brings_the_entries_in(site: Site) -> None:
    src, dest = b(site.src), b(site.dest)
    write(os.path.join(src, b"a.txt"), b"a")
    write(os.path.join(src, b"skip.me"), b"s")
    ok(run(site, exclude=["*.me"]))
    assert os.path.lexists(os.path.join(src, b"skip.me"))
    second = ok(run(site))
    assert second["stats"]["files_moved"] == 1
    assert open(os.path.join(dest, b"skip.me"), "rb").read() == b"s"


@pytest.mark.parametrize("site", ["samefs"], indirect=True)
def test_the_options_are_recorded_in_the_journal(site: Site) -> None:
    write(os.path.join(b(site.src), b"a.txt"), b"a")
    ok(run(site, special_files="recreate", exclude=["x", "*.tmp"]))
    meta = read_journal(site.job_dir() / "journal.sqlite").meta
    assert "recreate" in meta["options"] and "*.tmp" in meta["options"]


@pytest.mark.root
@pytest.mark.parametrize("site", ["samefs"], indirect=True)
def test_cross_filesystems_turned_off_leaves_the_queued_mount_alone(site: Site, tmpfs) -> None:
    src, dest = b(site.src), b(site.dest)
    for index in range(20):
        write(os.path.join(src, b"a%02d" % index), b"a")
    inner = tmpfs("1m", at=site.src / "zz-mnt")
    for index in range(20):
        (inner / ("m%02d" % index)).write_bytes(b"m")
    killed = run_cli(site.params(batch_files=8, processes=1, cross_filesystems=True),
                     faults="kill=after_journal_done@1")
    assert killed.returncode == -9, killed.describe()
    rows = read_journal(site.job_dir() / "journal.sqlite").files
    assert all(rows[b"zz-mnt/m%02d" % i][1] == "pending" for i in range(20)), "the test needs the mount queued"

    second = ok(run(site))

    assert sorted(os.listdir(inner)) == ["m%02d" % i for i in range(20)]
    assert second["stats"]["mounts_skipped"] == 1
    assert [entry["path"] for entry in second["mount_points"]] == [str(site.src / "zz-mnt")]
    # (the first run made the mount point's directory at the destination: it stays empty)
    assert sorted(name for name in os.listdir(dest) if name != b"zz-mnt") == [b"a%02d" % i for i in range(20)]
    assert not os.path.exists(os.path.join(dest, b"zz-mnt")) or os.listdir(os.path.join(dest, b"zz-mnt")) == []
