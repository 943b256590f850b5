# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""`molecule test -s default` (extensions/molecule/default) on a fleet built by harness.py.

The scenario creates two SSH hosts with the harness CLI, lays a demo tree on
each, converges playbooks/migrate.yml, converges it again (idempotence:
changed=0 on every host), verifies every file's sha256 at the destination and
the fleet report, and destroys the fleet. Skipped when molecule is not
installed (it is in requirements-dev.txt, so `make venv` and CI have it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import harness  # pylint: disable=import-error

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.timeout(300)]

SCENARIO = harness.REPO_ROOT / "extensions" / "molecule" / "default"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def molecule_bin() -> str | None:
    venv = harness.REPO_ROOT / ".venv" / "bin" / "molecule"
    return str(venv) if venv.exists() else shutil.which("molecule")


def test_molecule_default_scenario(tmp_path: Path) -> None:
    molecule = molecule_bin()
    if molecule is None:
        pytest.skip("molecule is not installed (pip install -r requirements-dev.txt, or make venv)")
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    ephemeral = tmp_path / "molecule"
    env = {
        **os.environ,
        # Molecule runs ansible-config, ansible-playbook... from PATH: the venv's first.
        "PATH": os.pathsep.join([str(Path(molecule).parent), os.environ.get("PATH", "")]),
        # This test's own working directory (fleet, reports), not the shared cache.
        "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral),
        "NO_COLOR": "1", "PY_COLORS": "0", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
    }
    try:
        # Run from the collection root: molecule finds extensions/molecule/ there (galaxy.yml).
        proc = subprocess.run([molecule, "test", "-s", "default"], cwd=str(harness.REPO_ROOT), env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=280, check=False)
    finally:
        # destroy.yml tears the fleet down; this is only for a run that died before it.
        leftover = harness.down(ephemeral / "fleet")
    text = ANSI.sub("", proc.stdout + proc.stderr)
    (tmp_path / "molecule.log").write_text(text, encoding="utf-8")
    assert proc.returncode == 0, text[-20000:]
    for action in ("create", "prepare", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"default (?:➜|>) {action}: Executed: Successful", text), (action, text[-20000:])
    # The converge moved data on both hosts; the idempotence run changed nothing.
    recaps = re.findall(r"^\W*(h[01])\s+: ok=\d+\s+changed=(\d+)", text, re.MULTILINE)
    assert ("h0", "1") in recaps and ("h1", "1") in recaps, recaps
    assert ("h0", "0") in recaps and ("h1", "0") in recaps, recaps
    assert leftover.get("run_id") is None, f"molecule destroy left the fleet up: {leftover}"
