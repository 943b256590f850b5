# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared test infrastructure for the durable.mover collection (root conftest).

Keep this file to infrastructure every test directory may need; fixtures for
one area belong in that area's own conftest.py.

What it provides:

* ``import ansible_collections.durable.mover...`` works: ``<repo>/.collections``
  (holding ``ansible_collections/durable/mover -> ../../..``, created here if
  missing, same as ``make collection-link``) is put on ``sys.path``, and
  ``ANSIBLE_COLLECTIONS_PATH`` points there for ansible-* subprocesses.
* Markers ``root`` and ``loop``: marked tests are skipped, with the reason,
  when not running as root or when loop devices are unavailable.
* Fixtures ``loopfs`` (factory: a freshly made ext4/xfs/btrfs filesystem on a
  loop device), ``tmpfs`` (factory, optionally mounted at a given directory),
  ``bind_mount`` (factory), ``nobody_tmp_path`` (a directory the
  ``nobody`` user owns).
* Helpers ``remount_ro``, ``remount_rw`` and ``run_as_nobody``: request the
  fixtures of the same name (``import conftest`` is ambiguous once test
  subdirectories have their own conftest.py).

Everything mounted here is unmounted at teardown (retried, lazily as a last
resort), and the loop device is detached only when ``losetup -j <image>``
names it, i.e. only ours.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COLLECTION_NAMESPACE = "durable"
COLLECTION_NAME = "mover"
NOBODY_UID = 65534
NOBODY_GID = 65534

# Minimum image sizes mkfs accepts: mkfs.xfs >= 5.19 refuses filesystems
# under 300 MB, mkfs.btrfs refuses ~109 MiB and less.
MKFS = {
    "ext2": (["mkfs.ext2", "-F", "-q"], 8),
    "ext3": (["mkfs.ext3", "-F", "-q"], 8),
    "ext4": (["mkfs.ext4", "-F", "-q"], 8),
    "xfs": (["mkfs.xfs", "-f", "-q"], 300),
    "btrfs": (["mkfs.btrfs", "-f", "-q"], 128),
}
APT_PACKAGE = {"ext2": "e2fsprogs", "ext3": "e2fsprogs", "ext4": "e2fsprogs",
               "xfs": "xfsprogs", "btrfs": "btrfs-progs"}


# --------------------------------------------------------------------------
# Collection import path
# --------------------------------------------------------------------------

def _collection_search_root() -> Path:
    """Return the directory holding ``ansible_collections/durable/mover``.

    Inside a real ``ansible_collections/<ns>/<name>`` tree (ansible-test, an
    installed collection) that is the tree itself; in a plain clone it is
    ``<repo>/.collections``, whose symlink is created here when missing.
    """
    parents = REPO_ROOT.parents
    if len(parents) >= 3 and parents[1].name == "ansible_collections":
        return parents[2]
    root = REPO_ROOT / ".collections"
    link = root / "ansible_collections" / COLLECTION_NAMESPACE / COLLECTION_NAME
    if not (link.is_symlink() and os.readlink(link) == "../../.."):
        link.parent.mkdir(parents=True, exist_ok=True)
        # Create beside and rename over: atomic, so concurrent pytest runs
        # never see a missing link.
        tmp_link = link.with_name(f".{COLLECTION_NAME}.{os.getpid()}")
        os.symlink("../../..", tmp_link)
        os.replace(tmp_link, link)
    return root


# ansible-* of the interpreter running pytest (e.g. .venv/bin) are found by
# tests that run them as subprocesses, even when PATH lacks the venv.
_INTERPRETER_BIN = os.path.dirname(sys.executable)
if os.path.exists(os.path.join(_INTERPRETER_BIN, "ansible-playbook")) and _INTERPRETER_BIN not in (
    os.environ.get("PATH", "").split(os.pathsep)
):
    os.environ["PATH"] = os.pathsep.join([_INTERPRETER_BIN, os.environ.get("PATH", os.defpath)])

COLLECTIONS_ROOT = _collection_search_root()
if str(COLLECTIONS_ROOT) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS_ROOT))
os.environ.setdefault(
    "ANSIBLE_COLLECTIONS_PATH",
    os.pathsep.join([str(COLLECTIONS_ROOT), "~/.ansible/collections", "/usr/share/ansible/collections"]),
)


# --------------------------------------------------------------------------
# Markers and environment checks
# --------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    """Register markers (also listed in pytest.ini, for --strict-markers)."""
    config.addinivalue_line("markers", "root: needs to run as root; skipped otherwise")
    config.addinivalue_line("markers", "loop: needs loop devices and mkfs tools; skipped otherwise")


def root_unavailable() -> str | None:
    """Return why root-only tests cannot run here, or None if they can."""
    if os.geteuid() != 0:
        return f"needs root (running as uid {os.geteuid()})"
    return None


def loop_unavailable() -> str | None:
    """Return why loop-device tests cannot run here, or None if they can."""
    reason = root_unavailable()
    if reason:
        return reason
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices: /dev/loop-control does not exist (container without loop support?)"
    if shutil.which("losetup") is None:
        return "needs losetup (util-linux)"
    return None


def require_root() -> None:
    """Skip the calling test unless running as root."""
    reason = root_unavailable()
    if reason:
        pytest.skip(reason)


def require_loop() -> None:
    """Skip the calling test unless loop devices can be used."""
    reason = loop_unavailable()
    if reason:
        pytest.skip(reason)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``@pytest.mark.root`` / ``@pytest.mark.loop`` tests that cannot run."""
    if item.get_closest_marker("loop") is not None:
        require_loop()
    if item.get_closest_marker("root") is not None:
        require_root()


# --------------------------------------------------------------------------
# Mount helpers
# --------------------------------------------------------------------------

def _run(cmd: t.Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` capturing text output; on failure raise with its stderr."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def _unescape_mountinfo(field: str) -> str:
    """Decode the octal escapes (``\\040`` etc.) used in /proc/self/mountinfo."""
    return field.encode().decode("unicode_escape")


def is_mountpoint(path: os.PathLike[str] | str) -> bool:
    """Return True if ``path`` is a mount point in this mount namespace."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return any(_unescape_mountinfo(line.split()[4]) == target for line in handle)


def mount_options(path: os.PathLike[str] | str) -> list[str]:
    """Return the per-mount options of the mount at ``path`` (e.g. ``['ro', 'relatime']``)."""
    target = os.path.realpath(path)
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if _unescape_mountinfo(fields[4]) == target:
                found = fields[5].split(",")  # last one wins: the top mount
    return found


def unmount(path: os.PathLike[str] | str, attempts: int = 5) -> None:
    """Unmount ``path``, retrying on EBUSY; fall back to a lazy unmount."""
    delay = 0.1
    for _attempt in range(attempts):
        if not is_mountpoint(path):
            return
        if _run(["umount", str(path)], check=False).returncode == 0:
            return
        time.sleep(delay)
        delay *= 2
    if is_mountpoint(path):
        _run(["umount", "--lazy", str(path)], check=False)


def loop_devices_for(image: os.PathLike[str] | str) -> list[str]:
    """Return the loop devices backed by ``image`` (``losetup -j``; by path only)."""
    proc = _run(["losetup", "--associated", str(image)], check=False)
    return [line.split(":", 1)[0] for line in proc.stdout.splitlines() if line.startswith("/dev/")]


def remount_ro(path: os.PathLike[str] | str, bind: bool = False) -> None:
    """Remount the filesystem mounted at ``path`` read-only (needs root).

    ``bind=True`` for a bind mount: changes that mount only, not the
    filesystem underneath.
    """
    options = "remount,bind,ro" if bind else "remount,ro"
    _run(["mount", "-o", options, str(path)])


def remount_rw(path: os.PathLike[str] | str, bind: bool = False) -> None:
    """Undo :func:`remount_ro`."""
    options = "remount,bind,rw" if bind else "remount,rw"
    _run(["mount", "-o", options, str(path)])


def run_as_nobody(cmd: t.Sequence[str], **kwargs: t.Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` as nobody:nogroup with no supplementary groups (needs root).

    Returns the CompletedProcess (text mode, output captured, not checked
    unless ``check=True`` is passed). nobody must be able to reach the paths
    it uses: pytest's ``tmp_path`` is under a 0700 root-owned directory, so
    use the ``nobody_tmp_path`` fixture for files it should write.
    """
    require_root()
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("check", False)
    argv = ["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups", "--", *cmd]
    return subprocess.run(argv, **kwargs)  # pylint: disable=subprocess-run-check


# Mount points made by this process, unmounted at session end if a
# fixture's own teardown did not get to run.
_LIVE_MOUNTS: dict[str, str | None] = {}


def _teardown_mount(mountpoint: str, image: str | None) -> None:
    """Unmount ``mountpoint`` and detach ``image``'s loop device(s), if any."""
    unmount(mountpoint)
    if image is not None:
        for device in loop_devices_for(image):
            _run(["losetup", "--detach", device], check=False)
    _LIVE_MOUNTS.pop(mountpoint, None)


def pytest_unconfigure(config: pytest.Config) -> None:  # pylint: disable=unused-argument
    """Safety net: release anything a fixture teardown left mounted."""
    for mountpoint, image in list(_LIVE_MOUNTS.items()):
        _teardown_mount(mountpoint, image)


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

@pytest.fixture
def loopfs(tmp_path: Path) -> t.Iterator[t.Callable[..., Path]]:
    """Factory: ``loopfs(fstype="ext4", size_mb=None, mkfs_args=(), options=())``.

    Makes a sparse image file under ``tmp_path``, runs mkfs on it, mounts it
    with ``mount -o loop`` on a directory under ``tmp_path`` and returns that
    mount point. ``size_mb=None`` means the smallest size mkfs accepts (xfs:
    300 MiB). ``options`` are extra mount options (e.g. ``("sync",)``).
    Skips the test when not root, when loop devices are missing, or when
    the mkfs tool / kernel filesystem is unavailable.
    """
    require_loop()
    made: list[tuple[str, str]] = []

    def make(fstype: str = "ext4", size_mb: int | None = None,
             mkfs_args: t.Sequence[str] = (), options: t.Sequence[str] = ()) -> Path:
        if fstype not in MKFS:
            raise ValueError(f"loopfs: unsupported fstype {fstype!r}; known: {sorted(MKFS)}")
        mkfs, min_mb = MKFS[fstype]
        if size_mb is None:
            size_mb = min_mb
        if size_mb < min_mb:
            raise ValueError(f"loopfs: {fstype} needs an image of at least {min_mb} MiB, not {size_mb}")
        if shutil.which(mkfs[0]) is None:
            pytest.skip(f"{mkfs[0]} not installed (apt-get install {APT_PACKAGE[fstype]})")
        _require_kernel_fs(fstype)

        index = len(made)
        image = tmp_path / f"loopfs{index}-{fstype}.img"
        mountpoint = tmp_path / f"loopfs{index}-{fstype}"
        mountpoint.mkdir()
        with open(image, "xb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        _run([*mkfs, *mkfs_args, str(image)])

        if _run(["losetup", "--find"], check=False).returncode != 0:
            pytest.skip("no free loop device (losetup --find failed)")
        made.append((str(mountpoint), str(image)))
        _LIVE_MOUNTS[str(mountpoint)] = str(image)
        opts = ",".join(["loop", *options])
        _run(["mount", "-t", fstype, "-o", opts, str(image), str(mountpoint)])
        return mountpoint

    yield make

    for mountpoint, image in reversed(made):
        _teardown_mount(mountpoint, image)


@pytest.fixture
def tmpfs(tmp_path: Path) -> t.Iterator[t.Callable[..., Path]]:
    """Factory: ``tmpfs(size="64m", options=(), at=None)`` mounts a tmpfs under ``tmp_path``.

    ``size`` is anything tmpfs's ``size=`` accepts (``"16m"``, ``"1g"``,
    ``"10%"``) or an int number of bytes. ``at``: an existing (or new)
    directory under ``tmp_path`` to mount on, e.g. inside a test's source
    tree; default a new ``tmp_path/tmpfsN``. Returns the mount point.
    """
    require_root()
    made: list[str] = []

    def make(size: str | int = "64m", options: t.Sequence[str] = (), at: Path | None = None) -> Path:
        mountpoint = tmp_path / f"tmpfs{len(made)}" if at is None else Path(at)
        _require_under(mountpoint, tmp_path)
        mountpoint.mkdir(parents=True, exist_ok=at is not None)
        made.append(str(mountpoint))
        _LIVE_MOUNTS[str(mountpoint)] = None
        opts = ",".join([f"size={size}", *options])
        _run(["mount", "-t", "tmpfs", "-o", opts, "durable-mover-test", str(mountpoint)])
        return mountpoint

    yield make

    for mountpoint in reversed(made):
        _teardown_mount(mountpoint, None)


@pytest.fixture
def bind_mount(tmp_path: Path) -> t.Iterator[t.Callable[..., Path]]:
    """Factory: ``bind_mount(source, target)``: ``mount --bind source target``.

    ``target`` (made if missing) must be under ``tmp_path``; ``source`` may be
    any directory (or file, onto an existing file). Returns ``target``;
    unmounted at teardown, the last made first.
    """
    require_root()
    made: list[str] = []

    def bind(source: os.PathLike[str] | str, target: Path) -> Path:
        _require_under(target, tmp_path)
        if os.path.isdir(source):
            target.mkdir(parents=True, exist_ok=True)
        made.append(str(target))
        _LIVE_MOUNTS[str(target)] = None
        _run(["mount", "--bind", str(source), str(target)])
        return target

    yield bind

    for target in reversed(made):
        _teardown_mount(target, None)


def _require_under(path: Path, base: Path) -> None:
    """Mount only inside the test's own directory (never over anything else)."""
    real, base = os.path.realpath(path), os.path.realpath(base)
    if not real.startswith(base + os.sep):
        raise ValueError(f"refusing to mount outside the test's tmp_path: {path}")


@pytest.fixture
def nobody_tmp_path() -> t.Iterator[Path]:
    """A fresh directory owned by nobody:nogroup, reachable by nobody.

    Made under $TMPDIR (default /tmp) rather than ``tmp_path``, whose parent
    directories are private to root. Removed at teardown.
    """
    require_root()
    path = Path(tempfile.mkdtemp(prefix="durable-mover-nobody-"))
    try:
        os.chmod(path, 0o755)
        os.chown(path, NOBODY_UID, NOBODY_GID)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(name="remount_ro")
def remount_ro_fixture() -> t.Callable[..., None]:
    """The :func:`remount_ro` helper, as a fixture."""
    require_root()
    return remount_ro


@pytest.fixture(name="remount_rw")
def remount_rw_fixture() -> t.Callable[..., None]:
    """The :func:`remount_rw` helper, as a fixture."""
    require_root()
    return remount_rw


@pytest.fixture(name="run_as_nobody")
def run_as_nobody_fixture() -> t.Callable[..., subprocess.CompletedProcess[str]]:
    """The :func:`run_as_nobody` helper, as a fixture."""
    require_root()
    return run_as_nobody


def _require_kernel_fs(fstype: str) -> None:
    """Skip unless the kernel can mount ``fstype`` (loading its module if allowed)."""

    def known() -> bool:
        with open("/proc/filesystems", encoding="utf-8") as handle:
            return any(line.split()[-1] == fstype for line in handle if line.strip())

    if known():
        return
    if shutil.which("modprobe"):
        _run(["modprobe", "-q", fstype], check=False)
    if not known():
        pytest.skip(f"kernel cannot mount {fstype} (not in /proc/filesystems, modprobe failed)")
