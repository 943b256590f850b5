# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Mount points inside src: never entered by default (like ``find -xdev``); with
``cross_filesystems: true`` what is inside moves and the mount point stays.

Real mounts (root): a tmpfs mounted inside the source tree, and bind mounts of
directories of the source's own filesystem, which keep its device number, so
only the mount table shows them. Every test runs on one filesystem and onto a
loop-mounted xfs (the rename path and the copy path).
"""

from __future__ import annotations

import json
import os
import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover, _preflight

from fstree import Site, read_journal

pytestmark = pytest.mark.root

INSIDE = {"a": b"inside the mounted filesystem\n", "deep/b": b"deeper inside\n"}
OUTSIDE = {"top": b"top\n", "data/beside": b"beside the mount point\n", "data/sub/c": b"c\n"}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def contents(root: Path) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            found[str(path.relative_to(root))] = path.read_bytes()
    return found


def ok(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert not result.get("failed"), result.get("msg")
    return result


def audit(path: Path) -> list[dict[str, t.Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def is_mount(path: Path) -> bool:
    target = os.fsencode(os.path.realpath(path))
    with open("/proc/self/mountinfo", "rb") as handle:
        for line in handle:
            field = line.split(b" ")[4]
            for code in (b"\\040", b"\\011", b"\\012", b"\\134"):
                field = field.replace(code, bytes([int(code[1:], 8)]))
            if field == target:
                return True
    return False


@pytest.fixture
def mounted(site: Site, tmpfs: t.Callable[..., Path]) -> Path:
    """A tmpfs with files mounted at src/data/mnt, files around it."""
    write_tree(site.src, OUTSIDE)
    mnt = tmpfs("8m", at=site.src / "data" / "mnt")
    write_tree(mnt, INSIDE)
    return mnt


def test_a_filesystem_mounted_inside_src_is_left_alone(site: Site, mounted: Path) -> None:
    log = site.base / "audit.jsonl"
    params = site.params(audit_log=str(log))
    first = ok(_mover.run(params))
    assert first["complete"] is True
    assert contents(mounted) == INSIDE                         # untouched
    assert is_mount(mounted)
    assert contents(site.dest) == OUTSIDE                      # the rest moved
    assert not (site.dest / "data" / "mnt").exists()
    assert first["stats"]["mounts_skipped"] == 1
    assert first["stats"]["files_total"] == len(OUTSIDE) and first["stats"]["files_skipped"] == 0
    (point,) = first["mount_points"]
    assert point["path"] == str(mounted)
    assert "another device" in point["reason"] and "cross_filesystems" in point["reason"]
    assert "1 mount point" in first["msg"]
    events = [e for e in audit(log) if e["event"] == "mount_skipped"]
    assert [e["path"] for e in events] == ["data/mnt"] and events[0]["reason"] == point["reason"]
    kind, state, _hash, _method = read_journal(site.job_dir() / "journal.sqlite").files[b"data/mnt"]
    assert (kind, state) == ("mount", "skipped")
    # its parents stay at the source, not empty; nothing else is left there
    assert sorted(os.listdir(site.src)) == ["data"] and sorted(os.listdir(site.src / "data")) == ["mnt"]

    again = ok(_mover.run(params))
    assert (again["changed"], again["complete"], again["stats"]["files_moved"]) == (False, True, 0)
    assert again["stats"]["mounts_skipped"] == 1
    assert contents(mounted) == INSIDE and is_mount(mounted)


def test_cross_filesystems_moves_what_is_inside_and_keeps_the_mount_point(site: Site, mounted: Path) -> None:
    log = site.base / "audit.jsonl"
    params = site.params(cross_filesystems=True, audit_log=str(log))
    first = ok(_mover.run(params))
    assert first["complete"] is True
    assert contents(mounted) == {}                             # everything inside moved
    assert is_mount(mounted)                                   # the mount point is kept, still mounted
    assert contents(site.dest) == {**OUTSIDE, **{"data/mnt/" + k: v for k, v in INSIDE.items()}}
    assert first["stats"]["mounts_skipped"] == 0 and first["mount_points"] == []
    assert [e["path"] for e in audit(log) if e["event"] == "mount_point_kept"] == ["data/mnt"]
    assert not any(e["event"] == "dir_removed" and e["path"] == "data/mnt" for e in audit(log))

    again = ok(_mover.run(params))
    assert (again["changed"], again["complete"], again["stats"]["files_moved"]) == (False, True, 0)
    assert is_mount(mounted)


@pytest.mark.parametrize("name", ["bound", "with space\tand tab\\back\nline"])
def test_a_bind_mount_of_the_same_filesystem_is_a_mount_point(site: Site, bind_mount: t.Callable[..., Path],
                                                              name: str) -> None:
    write_tree(site.src, OUTSIDE)
    other = site.base / "other"
    write_tree(other, INSIDE)
    point = bind_mount(other, site.src / "data" / name)
    # the same device number: st_dev alone cannot tell it is a mount point
    assert os.lstat(point).st_dev == os.lstat(site.src / "data").st_dev
    first = ok(_mover.run(site.params()))
    assert first["complete"] is True
    assert contents(other) == INSIDE and is_mount(point)
    assert contents(site.dest) == OUTSIDE
    assert first["stats"]["mounts_skipped"] == 1
    assert "mount table" in first["mount_points"][0]["reason"]
    again = ok(_mover.run(site.params()))
    assert (again["changed"], again["complete"]) == (False, True)


def test_a_bind_mounted_file_is_never_moved(site: Site, bind_mount: t.Callable[..., Path]) -> None:
    """A file mounted over a file cannot be removed or renamed while mounted: left, reported,
    with cross_filesystems too."""
    write_tree(site.src, OUTSIDE)
    (site.base / "outside-file").write_bytes(b"a file bound over another\n")
    (site.src / "data" / "over").write_bytes(b"hidden under the mount\n")
    bind_mount(site.base / "outside-file", site.src / "data" / "over")
    first = ok(_mover.run(site.params(cross_filesystems=True)))
    assert first["complete"] is True and first["stats"]["mounts_skipped"] == 1
    assert (site.src / "data" / "over").read_bytes() == b"a file bound over another\n"
    assert (site.base / "outside-file").read_bytes() == b"a file bound over another\n"
    assert contents(site.dest) == OUTSIDE


def test_check_mode_verify_and_preflight_do_not_enter_mounts(site: Site, mounted: Path) -> None:
    planned = ok(_mover.plan(site.params()))
    assert planned["plan"]["files"] == len(OUTSIDE)
    assert planned["stats"]["mounts_skipped"] == 1
    assert [p["path"] for p in planned["mount_points"]] == [str(mounted)]
    crossing = ok(_mover.plan(site.params(cross_filesystems=True)))
    assert crossing["plan"]["files"] == len(OUTSIDE) + len(INSIDE)
    assert crossing["stats"]["mounts_skipped"] == 0

    found = _preflight.preflight(site.params())
    assert found["ok"], found["problems"]
    assert found["findings"]["src"]["mount_points"] == [str(mounted)]
    assert found["findings"]["plan"]["files"] == len(OUTSIDE)
    assert _preflight.preflight(site.params(cross_filesystems=True))["findings"]["plan"]["files"] == \
        len(OUTSIDE) + len(INSIDE)

    ok(_mover.run(site.params(mode="copy")))
    verified = ok(_mover.run(site.params(mode="verify")))
    assert verified["complete"] is True
    assert verified["stats"]["files_total"] == len(OUTSIDE)
    assert verified["stats"]["mounts_skipped"] == 1
    assert contents(mounted) == INSIDE


@pytest.fixture
def overlay(site: Site, tmpfs: t.Callable[..., Path]) -> t.Iterator[Path]:
    """src is an overlayfs: its lower layer on a tmpfs, its upper layer beside src."""
    lower = tmpfs("8m")
    write_tree(lower, OUTSIDE)
    upper, work = site.base / "upper", site.base / "work"
    upper.mkdir()
    work.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=%s,upperdir=%s,workdir=%s"
                    % (lower, upper, work), str(site.src)], check=True, capture_output=True)
    try:
        yield site.src
    finally:
        subprocess.run(["umount", str(site.src)], check=False, capture_output=True)


def test_files_of_an_overlay_on_several_filesystems_are_moved(site: Site, overlay: Path) -> None:
    """A file of such an overlay reports its layer's device, not its directory's: it is no
    mount point (only directories are compared by device)."""
    st_dir, st_file = os.lstat(overlay / "data"), os.lstat(overlay / "data" / "beside")
    assert st_dir.st_dev != st_file.st_dev
    first = ok(_mover.run(site.params()))
    assert first["complete"] is True and first["stats"]["mounts_skipped"] == 0
    assert contents(site.dest) == OUTSIDE and contents(overlay) == {}
