# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The core on the oldest Python a target may have (3.9), where one is installed.

Targets run the module with their own Python (3.9 or newer, standard library
only). sanity's compile test parses the code for 3.9; this runs it: a whole
move and its rerun, across devices (onto tmpfs: copies, each flushed on its
own, by the worker threads) and on one filesystem (renames), with the hash
chosen the way a target without blake3 chooses it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from core_helpers import MOVER_CLI, subprocess_env


def _python39():
    """A Python 3.9 interpreter that runs: one pyenv installed, or python3.9 on PATH
    (which may be a pyenv shim without a 3.9 behind it)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates.append(shutil.which("python3.9"))
    for candidate in filter(None, reversed(candidates)):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "(3, 9)":
            return candidate
    return None


PYTHON39 = _python39()
pytestmark = pytest.mark.skipif(PYTHON39 is None, reason="no Python 3.9 installed (python3.9 or pyenv 3.9.x)")


def _tree(root: Path) -> dict:
    (root / "d" / "e").mkdir(parents=True)
    contents = {"d/a": os.urandom(5000), "d/e/b": os.urandom(3 * 1024 * 1024), "c": b""}
    for rel, data in contents.items():
        (root / rel).write_bytes(data)
    (root / "d" / "link").symlink_to("a")
    return contents


@pytest.mark.parametrize("dest_kind", ["tmpfs", "same_fs"])
def test_a_move_runs_on_python_3_9(tmp_path: Path, dest_kind: str) -> None:
    src = tmp_path / "src"
    contents = _tree(src)
    dest_base = Path("/dev/shm") if dest_kind == "tmpfs" and os.path.isdir("/dev/shm") else tmp_path
    dest = dest_base / ("py39-dest-%d-%s" % (os.getpid(), dest_kind))
    try:
        # two worker processes, one file a batch: fork, the scan's feed and the journal's
        # writers lock run under 3.9 too
        params = {"src": str(src), "dest": str(dest), "state_dir": str(tmp_path / "state"),
                  "processes": 2, "batch_files": 1}
        proc = subprocess.run([PYTHON39, str(MOVER_CLI), json.dumps(params)], capture_output=True,
                              text=True, env=subprocess_env(), timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout.splitlines()[-1])
        assert result["complete"] is True, result
        assert result["stats"]["files_moved"] == 4
        for rel, data in contents.items():
            assert (dest / rel).read_bytes() == data
            assert not (src / rel).exists()
        assert os.readlink(dest / "d" / "link") == "a"
        rerun = subprocess.run([PYTHON39, str(MOVER_CLI), json.dumps(params)], capture_output=True,
                               text=True, env=subprocess_env(), timeout=120, check=False)
        assert json.loads(rerun.stdout.splitlines()[-1])["changed"] is False
    finally:
        shutil.rmtree(dest, ignore_errors=True)
