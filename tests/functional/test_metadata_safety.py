# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Metadata that must not be lost, nor give away more than the source did (issue #10).

* item 9: file capabilities (``security.capability``, which chown clears) survive
  a move across filesystems, on the batch-flush and the pipeline copy paths;
* item 10: a file or directory whose owner cannot be kept (a run as ``nobody``)
  arrives without its set-id and sticky bits, and the run says so (stats,
  audit log); files the runner owns keep theirs;
* item 11: a run killed half-way leaves no destination directory more open
  than its source (directories are made 0700, given their mode at the end);
* item 16: ``special_files: recreate`` never changes a file through a symbolic
  link swapped in for the node it made.

Runs of the core as ``nobody`` or killed at a fault point are real processes
(tests/tools/mover_cli.py); the other runs are in this process, where a third
party acting at a precise instant is simulated by wrapping a core function.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import typing as t
from pathlib import Path

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _metadata, _mover

from fstree import EXT4, XFS, Site, b, write
from helpers_recovery import (
    BASE_NS,
    CLI,
    CliRun,
    FileSpec,
    Layout,
    TreeSpec,
    check_complete,
    cli_argv,
    cli_env,
    make_layout,
    materialize,
    part_files,
    read_regular,
    run_cli,
)

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
OTHER = (1234, 5678)


def _capability(path: os.PathLike[str] | str | bytes) -> bytes | None:
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise


def _getcap(path: os.PathLike[str] | str) -> str:
    proc = subprocess.run(["getcap", str(path)], capture_output=True, text=True, check=True)
    return proc.stdout.split(None, 1)[1].strip() if proc.stdout.strip() else ""


def _setcap(spec: str, path: os.PathLike[str] | str) -> None:
    if shutil.which("setcap") is None or shutil.which("getcap") is None:
        pytest.skip("setcap/getcap not installed (apt-get install libcap2-bin)")
    proc = subprocess.run(["setcap", spec, str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip("setcap failed here: %s" % proc.stderr.strip())


def _ok(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert not result.get("failed"), result.get("msg")
    return result


def _audit(path: Path) -> list[dict[str, t.Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# -- item 9: file capabilities across filesystems ------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("site", [EXT4, XFS], indirect=True)
def test_file_capabilities_survive_a_move_across_filesystems(site: Site) -> None:
    """A small file (flushed with its batch), a large one (the pipeline), one of
    another owner with an ACL and a setgid bit: getcap is the same at the destination."""
    src = site.src
    (src / "bin").mkdir()
    write(b(src / "bin" / "small"), b"#!/bin/sh\necho small\n")
    write(b(src / "bin" / "large"), os.urandom(300 * 1024))
    write(b(src / "bin" / "owned"), b"#!/bin/sh\necho owned\n")
    os.chown(src / "bin" / "owned", *OTHER)
    os.chmod(src / "bin" / "owned", 0o2750)
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-m", "u:4321:r-x", str(src / "bin" / "owned")], check=True)
    caps = {"small": "cap_net_raw=ep", "large": "cap_net_bind_service,cap_net_raw=ep",
            "owned": "cap_net_raw+ep"}
    for name, spec in caps.items():
        _setcap(spec, src / "bin" / name)          # after the chown: chown clears capabilities
    want = {name: (_getcap(src / "bin" / name), _capability(src / "bin" / name),
                   os.lstat(src / "bin" / name)) for name in caps}
    acl = subprocess.run(["getfacl", "--omit-header", "--numeric", "bin/owned"], cwd=src,
                         capture_output=True, text=True, check=False).stdout
    assert all(cap for _text, cap, _st in want.values())

    result = _ok(_mover.run(site.params(buffer_size="16K", processes=1)))
    assert result["complete"] is True and result["stats"]["files_moved"] == 3

    for name, (text, raw, st) in want.items():
        path = site.dest / "bin" / name
        assert _capability(path) == raw, "%s: security.capability lost or changed" % name
        assert _getcap(path) == text, name
        got = os.lstat(path)
        assert (stat.S_IMODE(got.st_mode), got.st_uid, got.st_gid, got.st_mtime_ns) == \
            (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns), name
    if shutil.which("getfacl"):
        got_acl = subprocess.run(["getfacl", "--omit-header", "--numeric", "bin/owned"], cwd=site.dest,
                                 capture_output=True, text=True, check=True).stdout
        assert got_acl == acl
    assert result["stats"]["setid_cleared"] == 0


# -- item 10: set-id bits when the owner cannot be kept -------------------------------------------


@pytest.fixture
def nobody_dest(nobody_tmp_path: Path, run_as_nobody: t.Callable[..., t.Any]) -> t.Iterator[Layout]:
    """src and state on the root filesystem, dest on a tmpfs (another filesystem:
    the copy path), everything reachable and writable by nobody."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("%s needed to run the mover as nobody" % SYSTEM_PYTHON)
    probe = run_as_nobody([SYSTEM_PYTHON, "-c", "open(%r).read()" % str(CLI)])
    if probe.returncode != 0:
        pytest.skip("nobody cannot read %s: %s" % (CLI, probe.stderr.strip()[-300:]))
    src, state, mounted = nobody_tmp_path / "src", nobody_tmp_path / "state", nobody_tmp_path / "mnt"
    for path in (src, state, mounted):
        path.mkdir()
        os.chown(path, NOBODY, NOBODY)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,uid=%d,gid=%d,mode=0755" % (NOBODY, NOBODY),
                    "durable-mover-test", str(mounted)], check=True)
    try:
        yield Layout("tmpfs", src, mounted / "dst", state)
    finally:
        subprocess.run(["umount", str(mounted)], check=False)


def _run_as_nobody(run_as_nobody: t.Callable[..., t.Any], params: dict[str, t.Any]) -> CliRun:
    proc = run_as_nobody([SYSTEM_PYTHON, *cli_argv(params)[1:]], env=cli_env())
    return CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0)


@pytest.mark.root
@pytest.mark.parametrize("processes", [1, 2])
def test_setid_bits_are_cleared_when_the_owner_cannot_be_kept(
        nobody_dest: Layout, run_as_nobody: t.Callable[..., t.Any], processes: int) -> None:
    """With 2 processes (a batch a file), the counts come from the worker processes."""
    layout = nobody_dest
    spec = TreeSpec(files={
        "suid-root": FileSpec(b"#!/bin/sh\nid\n", 0o4755, BASE_NS + 1, 0, 0),
        "sgid-other": FileSpec(b"group tool\n", 0o2755, BASE_NS + 2, *OTHER),
        "sticky-other": FileSpec(b"sticky\n", 0o1644, BASE_NS + 3, *OTHER),
        "own-sgid": FileSpec(b"nobody's own setgid file\n", 0o2755, BASE_NS + 4, NOBODY, NOBODY),
        "plain-other": FileSpec(b"no special bits\n", 0o644, BASE_NS + 5, *OTHER),
        "shared/mine": FileSpec(b"in a shared directory\n", 0o644, BASE_NS + 6, NOBODY, NOBODY),
        "own/ro": FileSpec(b"read-only, with an xattr\n", 0o400, BASE_NS + 7, NOBODY, NOBODY),
    }, dirs={"shared": (0o3777, BASE_NS + 100), "own": (0o2755, BASE_NS + 101)})
    materialize(spec, layout.src)
    os.chown(layout.src / "shared", *OTHER)
    os.chown(layout.src / "own", NOBODY, NOBODY)
    os.chmod(layout.src / "own", 0o2755)                 # chown cleared the setgid bit
    os.setxattr(layout.src / "own" / "ro", "user.tag", b"kept")
    os.mkfifo(layout.src / "own" / "fifo")               # recreated through its O_PATH fd, as nobody
    os.chown(layout.src / "own" / "fifo", NOBODY, NOBODY)
    os.chmod(layout.src / "own" / "fifo", 0o620)
    audit = layout.state / "audit.jsonl"
    params = layout.params(audit_log=str(audit), processes=processes, batch_files=1 if processes > 1 else 256,
                           special_files="recreate")

    run = _run_as_nobody(run_as_nobody, params)
    assert run.returncode == 0, run.describe()
    result = run.result
    dest = layout.dest

    def mode(rel: str) -> int:
        return stat.S_IMODE(os.lstat(dest / rel).st_mode)

    # Not the source's owner: no set-id or sticky bit, the rest of the mode kept.
    assert os.lstat(dest / "suid-root").st_uid == NOBODY
    assert mode("suid-root") == 0o755, oct(mode("suid-root"))
    assert mode("sgid-other") == 0o755
    assert mode("sticky-other") == 0o644
    assert mode("shared") == 0o777
    # The runner's own: kept whole (bits, xattr on a read-only file).
    assert mode("own-sgid") == 0o2755
    assert mode("own") == 0o2755
    assert mode("own/ro") == 0o400
    assert os.getxattr(dest / "own" / "ro", "user.tag") == b"kept"
    assert stat.S_ISFIFO(os.lstat(dest / "own" / "fifo").st_mode) and mode("own/fifo") == 0o620
    assert not os.path.lexists(layout.src / "own" / "fifo")
    assert mode("plain-other") == 0o644
    for rel, f in spec.files.items():
        assert read_regular(dest / rel) == f.data, rel
        assert not os.path.lexists(layout.src / rel), rel

    assert result["stats"]["setid_cleared"] == 4, result["stats"]
    events = [e for e in _audit(audit) if e["event"] == "setid_cleared"]
    assert sorted(e["path"] for e in events) == sorted(["shared", "sgid-other", "sticky-other", "suid-root"])
    by_path = {e["path"]: e for e in events}
    assert (by_path["suid-root"]["source_mode"], by_path["suid-root"]["mode"]) == ("4755", "0755")
    assert (by_path["shared"]["source_mode"], by_path["shared"]["mode"]) == ("3777", "0777")

    again = _run_as_nobody(run_as_nobody, params)
    assert again.returncode == 0, again.describe()
    assert again.result["changed"] is False, again.result
    assert again.result["stats"]["setid_cleared"] == 0


# -- item 11: no private directory exposed by an interrupted run ------------------------------------


def _private_tree() -> TreeSpec:
    owner = OTHER if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    spec = TreeSpec()
    spec.files = {
        "private/secret.txt": FileSpec(b"only for the owner\n", 0o644, BASE_NS + 1, *owner),
        "private/deeper/more.txt": FileSpec(b"more\n" * 100, 0o644, BASE_NS + 2, *owner),
        "group/g.txt": FileSpec(b"group\n", 0o640, BASE_NS + 3),
        "public/p.txt": FileSpec(b"public\n", 0o644, BASE_NS + 4),
        "public/q.txt": FileSpec(b"public too\n", 0o644, BASE_NS + 5),
        "top.txt": FileSpec(b"top\n", 0o644, BASE_NS + 6),
    }
    spec.dirs = {"private": (0o700, BASE_NS + 100), "private/deeper": (0o750, BASE_NS + 101),
                 "group": (0o710, BASE_NS + 102), "public": (0o755, BASE_NS + 103)}
    return spec


def _dir_modes(root: Path) -> dict[str, int]:
    modes = {"": stat.S_IMODE(os.lstat(root).st_mode)}
    for dirpath, dirnames, _files in os.walk(root):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            modes[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return modes


@pytest.mark.root
@pytest.mark.parametrize("kind", ["samefs", pytest.param("ext4", marks=pytest.mark.loop)])
def test_interrupted_run_leaves_no_directory_more_open_than_its_source(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    layout = make_layout(kind, tmp_path, request)
    # The destination root's parent is made by the run too (like mkdir -p): it stays 0755.
    layout = Layout(layout.kind, layout.src, layout.dest.parent / "made-above" / "dst", layout.state)
    spec = materialize(_private_tree(), layout.src)
    os.chmod(layout.src, 0o700)
    source_modes = _dir_modes(layout.src)
    params = layout.params(batch_files=2, workers=1, processes=1)

    run = run_cli(params, faults="kill=after_journal_copied@1")
    assert run.killed, run.describe()
    got = _dir_modes(layout.dest)
    assert set(got) == set(source_modes), (sorted(got), sorted(source_modes))
    exposed = {rel: (oct(mode), oct(source_modes[rel])) for rel, mode in got.items()
               if mode & 0o077 & ~source_modes[rel]}
    assert not exposed, "directories more open than their source after a kill: %r" % exposed
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.lstat(layout.dest.parent).st_mode) == 0o755 & ~umask

    check_complete(spec, layout, run_cli(params))
    assert _dir_modes(layout.dest) == source_modes
    assert stat.S_IMODE(os.lstat(layout.dest.parent).st_mode) == 0o755 & ~umask


def test_single_file_into_a_new_directory_leaves_it_open(tmp_path: Path) -> None:
    """The directory made for a one-file job is above the destination: 0755, as mkdir -p."""
    src = tmp_path / "one.txt"
    src.write_bytes(b"one\n")
    dest = tmp_path / "new" / "dir" / "one.txt"
    _ok(_mover.run({"src": str(src), "dest": str(dest), "state_dir": str(tmp_path / "state")}))
    umask = os.umask(0)
    os.umask(umask)
    for path in (dest.parent, dest.parent.parent):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o755 & ~umask, path
    assert dest.read_bytes() == b"one\n"


def test_without_mode_in_preserve_directories_are_made_as_before(tmp_path: Path) -> None:
    """preserve without mode: no source mode is applied at the end, so directories
    are not made 0700 (they would stay so)."""
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(b"f\n")
    os.chmod(src / "d", 0o700)
    _ok(_mover.run({"src": str(src), "dest": str(tmp_path / "dest"), "state_dir": str(tmp_path / "state"),
                    "preserve": ["times", "owner"]}))
    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "dest", tmp_path / "dest" / "d"):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o755 & ~umask, path


# -- item 16: special_files=recreate and a symlink swapped in ----------------------------------------


def _make_special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.chmod(path, 0o644)


def _swap_for_link(dir_fd: int, name: str, victim: Path) -> None:
    """What another process could do: replace the part with a link to a file of its choice."""
    os.unlink(name, dir_fd=dir_fd)
    os.symlink(str(victim), name, dir_fd=dir_fd)


@pytest.mark.root
@pytest.mark.parametrize("site", [EXT4], indirect=True)
@pytest.mark.parametrize("kind", ["fifo", "chr"])
@pytest.mark.parametrize("when", ["before_metadata", "after_mknod"])
def test_recreate_never_changes_a_file_through_a_link_swapped_for_the_part(
        site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, when: str) -> None:
    (site.src / "dev").mkdir()
    _make_special(site.src / "dev" / "node", kind)
    write(b(site.src / "dev" / "plain"), b"a plain file beside it\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not to be touched\n")
    os.chmod(victim, 0o600)
    os.utime(victim, ns=(BASE_NS, BASE_NS))
    victim_before = os.lstat(victim)
    swapped: list[str] = []

    def part_of_node(dir_fd: int) -> str:
        names = [n for n in os.listdir(dir_fd) if n.startswith(".node.") and n.endswith(".part")]
        assert len(names) == 1, names
        return names[0]

    if when == "before_metadata":
        real_apply = _metadata.apply

        def apply(st: os.stat_result, *args: t.Any, **kwargs: t.Any) -> t.Any:
            if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
                dest_dir = os.open(site.dest / "dev", os.O_RDONLY | os.O_DIRECTORY)
                try:
                    name = part_of_node(dest_dir)
                    _swap_for_link(dest_dir, name, victim)
                finally:
                    os.close(dest_dir)
                swapped.append(name)
            return real_apply(st, *args, **kwargs)

        monkeypatch.setattr(_metadata, "apply", apply)
    else:
        real_mknod = os.mknod

        def mknod(path: t.Any, mode: int = 0o600, device: int = 0, *, dir_fd: int | None = None) -> None:
            real_mknod(path, mode, device, dir_fd=dir_fd)
            if dir_fd is not None and os.fsdecode(path).startswith(".node."):
                _swap_for_link(dir_fd, path, victim)
                swapped.append(os.fsdecode(path))

        monkeypatch.setattr(os, "mknod", mknod)

    result = _mover.run(site.params(special_files="recreate", processes=1, workers=1))
    monkeypatch.undo()
    assert swapped, "the part was never swapped: the test did not reach its instant"

    after = os.lstat(victim)
    assert (stat.S_IMODE(after.st_mode), after.st_uid, after.st_gid, after.st_mtime_ns) == \
        (0o600, victim_before.st_uid, victim_before.st_gid, victim_before.st_mtime_ns), \
        "the victim was changed through the link: mode %o" % stat.S_IMODE(after.st_mode)
    assert result.get("failed") is True, result
    failed = [f["path"] for f in result["failures"]]
    assert failed == [str(site.src / "dev" / "node")], result["failures"]
    assert "replaced by another entry" in result["failures"][0]["error"], result["failures"]
    assert not os.path.lexists(site.dest / "dev" / "node")
    src_st = os.lstat(site.src / "dev" / "node")
    assert stat.S_ISFIFO(src_st.st_mode) if kind == "fifo" else stat.S_ISCHR(src_st.st_mode)
    assert part_files(site.dest) == []
    assert (site.dest / "dev" / "plain").read_bytes() == b"a plain file beside it\n"

    # Nobody in the way: the rerun recreates it.
    again = _ok(_mover.run(site.params(special_files="recreate", processes=1)))
    assert again["complete"] is True
    got = os.lstat(site.dest / "dev" / "node")
    assert stat.S_IFMT(got.st_mode) == stat.S_IFMT(src_st.st_mode)
    assert stat.S_IMODE(got.st_mode) == 0o644
    assert got.st_mtime_ns == src_st.st_mtime_ns
    assert stat.S_IMODE(os.lstat(victim).st_mode) == 0o600
