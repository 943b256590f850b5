# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for the functional tests: whole moves through the real core.

* ``shared_loopfs`` (session): ``shared_loopfs("xfs")`` returns the mount point of
  one loop-mounted filesystem of that type, made once per session and shared by
  every test; each test works in its own subdirectory.
* ``site`` (parametrized ``samefs``/``xfs``): where a test's ``src``, ``dest``
  and ``state_dir`` live (see ``fstree.Site``). Override with
  ``@pytest.mark.parametrize("site", [SAMEFS, XFS, EXT4], indirect=True)``.

Tree builders, snapshots and comparers live in ``fstree.py`` (this directory),
which the test modules import: importing ``conftest`` is ambiguous once several
test directories have one.
"""

from __future__ import annotations

import shutil
import subprocess
import typing as t
from pathlib import Path

import pytest

from fstree import MIB, SAMEFS, XFS, Site, make_site


# --------------------------------------------------------------------------
# Shared loop filesystems
# --------------------------------------------------------------------------

def _root_conftest(config: pytest.Config) -> t.Any:
    """The repository's root conftest module (its mount helpers)."""
    want = (Path(__file__).resolve().parent.parent / "conftest.py")
    for plugin in config.pluginmanager.get_plugins():
        filename = getattr(plugin, "__file__", None)
        if filename and Path(filename).resolve() == want:
            return plugin
    raise RuntimeError("root conftest %s is not loaded" % want)


def _kernel_knows(fstype: str) -> bool:
    with open("/proc/filesystems", encoding="utf-8") as handle:
        if any(line.split()[-1] == fstype for line in handle if line.strip()):
            return True
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", "-q", fstype], check=False, capture_output=True)
    with open("/proc/filesystems", encoding="utf-8") as handle:
        return any(line.split()[-1] == fstype for line in handle if line.strip())


# Size (MiB) and mkfs arguments of the shared filesystems: ext4 with 4 KiB
# blocks like any real one (mkfs picks 1 KiB blocks for tiny images, where a
# 2000-byte xattr no longer fits).
SHARED_GEOMETRY = {"ext4": (64, ["-b", "4096"])}


@pytest.fixture(scope="session")
def shared_loopfs(request: pytest.FixtureRequest,
                  tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[t.Callable[[str], Path]]:
    """Factory (session): one loop-mounted filesystem per type, made on first use.

    Tests must not fill it, remount it or change its mount options: use the
    function-scoped ``loopfs`` for that. Skips (with the reason) where loop
    devices, mkfs or the kernel filesystem are unavailable.
    """
    root = _root_conftest(request.config)
    made: dict[str, tuple[Path, Path]] = {}
    unavailable: dict[str, str] = {}

    def get(fstype: str) -> Path:
        if fstype in made:
            return made[fstype][0]
        if fstype not in unavailable:
            reason = root.loop_unavailable()
            mkfs, min_mb = root.MKFS[fstype]
            if reason is None and shutil.which(mkfs[0]) is None:
                reason = "%s not installed (apt-get install %s)" % (mkfs[0], root.APT_PACKAGE[fstype])
            if reason is None and not _kernel_knows(fstype):
                reason = "kernel cannot mount %s" % fstype
            if reason is not None:
                unavailable[fstype] = reason
            else:
                base = tmp_path_factory.mktemp("shared-%s" % fstype)
                image, mountpoint = base / "fs.img", base / "mnt"
                mountpoint.mkdir()
                size_mb, mkfs_args = SHARED_GEOMETRY.get(fstype, (min_mb, []))
                with open(image, "xb") as handle:
                    handle.truncate(max(size_mb, min_mb) * MIB)
                proc = subprocess.run([*mkfs, *mkfs_args, str(image)], capture_output=True, text=True,
                                      check=False)
                if proc.returncode != 0:
                    raise RuntimeError("%s failed: %s" % (mkfs[0], proc.stderr.strip()))
                getattr(root, "_LIVE_MOUNTS", {})[str(mountpoint)] = str(image)
                proc = subprocess.run(["mount", "-t", fstype, "-o", "loop", str(image), str(mountpoint)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    getattr(root, "_LIVE_MOUNTS", {}).pop(str(mountpoint), None)
                    unavailable[fstype] = "cannot loop-mount %s: %s" % (fstype, proc.stderr.strip())
                else:
                    made[fstype] = (mountpoint, image)
                    return mountpoint
        pytest.skip(unavailable[fstype])

    yield get

    for mountpoint, image in made.values():
        root.unmount(mountpoint)
        for device in root.loop_devices_for(image):
            subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)
        getattr(root, "_LIVE_MOUNTS", {}).pop(str(mountpoint), None)


@pytest.fixture(params=[SAMEFS, XFS])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[Site]:
    """src/dest/state_dir for one test, on one filesystem or across two."""
    loopfs = request.getfixturevalue("shared_loopfs") if request.param != "samefs" else None
    made, workdir = make_site(request.param, tmp_path, loopfs, request.node.name)
    try:
        yield made
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
