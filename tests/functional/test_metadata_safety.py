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

from fstree import EXT4, XFS, Site, b, unique_dir, write
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
