# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the shared fixtures in tests/conftest.py, so they cannot rot."""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
from pathlib import Path

import pytest

# Small local readers of mount state: test modules do not import conftest
# (the name is ambiguous once subdirectories add their own conftest.py).


def _mountinfo(path: Path) -> list[tuple[str, list[str]]]:
    """(fstype, per-mount options) of each mount exactly at ``path``."""
    target = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if fields[4].encode().decode("unicode_escape") == target:
                fstype = line.split(" - ", 1)[1].split()[0]
                found.append((fstype, fields[5].split(",")))
    return found


def _loop_devices_for(image: Path) -> list[str]:
    proc = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True)
    return [line.split(":", 1)[0] for line in proc.stdout.splitlines()]


def test_collection_is_importable() -> None:
    """ansible_collections.durable.mover resolves to this working tree."""
    package = importlib.import_module("ansible_collections.durable.mover.plugins.module_utils")
    repo_root = Path(__file__).resolve().parent.parent
    assert Path(package.__path__[0]).resolve() == (repo_root / "plugins" / "module_utils").resolve()
    assert os.environ["ANSIBLE_COLLECTIONS_PATH"]


def _write_and_fsync(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


@pytest.mark.loop
@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_loopfs_mounts_fresh_filesystem(loopfs, tmp_path: Path, fstype: str) -> None:
    """A loop filesystem is a separate, writable filesystem of the asked type."""
    mnt = loopfs(fstype)
    assert [fs for fs, _opts in _mountinfo(mnt)] == [fstype]
    assert os.stat(mnt).st_dev != os.stat(tmp_path).st_dev

    _write_and_fsync(mnt / "hello.txt", b"hello\n")
    assert (mnt / "hello.txt").read_bytes() == b"hello\n"
    assert len(_loop_devices_for(tmp_path / f"loopfs0-{fstype}.img")) == 1


@pytest.mark.loop
def test_loopfs_teardown_releases_device(loopfs, tmp_path: Path) -> None:
    """Two mounts in one test; the images' loop devices are found by path."""
    first = loopfs("ext4", 16)
    second = loopfs("ext4", 16, options=("noexec",))
    assert os.stat(first).st_dev != os.stat(second).st_dev
    assert "noexec" in _mountinfo(second)[-1][1]
    devices = _loop_devices_for(tmp_path / "loopfs0-ext4.img") + _loop_devices_for(tmp_path / "loopfs1-ext4.img")
    assert len(set(devices)) == 2


def test_loopfs_rejects_too_small_xfs(loopfs) -> None:
    """mkfs.xfs refuses images under 300 MB; the factory says so up front."""
    with pytest.raises(ValueError, match="at least 300 MiB"):
        loopfs("xfs", 64)


@pytest.mark.root
def test_tmpfs(tmpfs, tmp_path: Path) -> None:
    """tmpfs factory mounts a size-limited tmpfs that enforces its size."""
    mnt = tmpfs("1m")
    assert [fs for fs, _opts in _mountinfo(mnt)] == ["tmpfs"]
    assert os.stat(mnt).st_dev != os.stat(tmp_path).st_dev
    st = os.statvfs(mnt)
    assert st.f_blocks * st.f_frsize == 1024 * 1024
    with pytest.raises(OSError) as excinfo:
        _write_and_fsync(mnt / "big", b"\0" * (2 * 1024 * 1024))
    assert excinfo.value.errno == errno.ENOSPC


@pytest.mark.loop
def test_remount_ro_makes_writes_fail_with_erofs(loopfs, remount_ro, remount_rw) -> None:
    """After remount_ro, creating a file fails with EROFS; remount_rw undoes it."""
    mnt = loopfs("ext4")
    _write_and_fsync(mnt / "before", b"x")
    remount_ro(mnt)
    assert "ro" in _mountinfo(mnt)[-1][1]
    with pytest.raises(OSError) as excinfo:
        _write_and_fsync(mnt / "after", b"x")
    assert excinfo.value.errno == errno.EROFS
    assert (mnt / "before").read_bytes() == b"x"
    remount_rw(mnt)
    _write_and_fsync(mnt / "after", b"x")


@pytest.mark.root
def test_remount_ro_on_tmpfs(tmpfs, remount_ro) -> None:
    """remount_ro works on tmpfs too (no loop device needed)."""
    mnt = tmpfs()
    remount_ro(mnt)
    with pytest.raises(OSError) as excinfo:
        (mnt / "x").write_bytes(b"x")
    assert excinfo.value.errno == errno.EROFS


@pytest.mark.root
def test_run_as_nobody(run_as_nobody, nobody_tmp_path: Path, tmp_path: Path) -> None:
    """run_as_nobody drops to 65534:65534 with no groups and no root powers."""
    ids = run_as_nobody(["sh", "-c", "id -u; id -g; id -G"], check=True).stdout.split()
    assert ids == ["65534", "65534", "65534"]

    ok = run_as_nobody(["sh", "-c", f"echo hi > {nobody_tmp_path}/mine"])
    assert ok.returncode == 0, ok.stderr
    assert (nobody_tmp_path / "mine").stat().st_uid == 65534

    root_owned = tmp_path / "root-owned"
    root_owned.mkdir(mode=0o755)
    denied = run_as_nobody(["touch", str(root_owned / "nope")])
    assert denied.returncode != 0
    assert not (root_owned / "nope").exists()
