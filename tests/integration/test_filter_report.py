# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The report filters through a real ansible-playbook run on localhost.

Feeds crafted host results to durable.mover.fleet_report / junit_xml /
summary_markdown from tests/integration/playbooks/filter_report.yml and checks what
they wrote. The aggregation itself is tested in tests/unit/test_report.py;
this checks the plugin wiring, the data types Ansible hands the filters, and
that a host's file names are never evaluated as templates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(__file__).resolve().parent / "playbooks" / "filter_report.yml"


def ansible_playbook() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "ansible-playbook"
    if venv.exists():
        return str(venv)
    found = shutil.which("ansible-playbook")
    if found is None:
        pytest.skip("ansible-playbook is not installed (make venv)")
    return found


def run_playbook(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO_ROOT / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PWD"] = str(cwd)
    return subprocess.run(
        [ansible_playbook(), *args],
        cwd=str(cwd), env=env, capture_output=True, text=True, timeout=240, check=False,
    )


def test_filters_in_a_playbook(tmp_path: Path) -> None:
    marker = tmp_path / "EVALUATED"
    # A file name is any string: this one is also a Jinja expression that
    # would create `marker` if anything templated it.
    template_path = "/srv/{{ lookup('ansible.builtin.pipe', 'touch %s') }}" % marker
    # Ansible refuses lone surrogates in JSON (the module reports undecodable
    # bytes as backslash escapes), so the hostile characters here are markup
    # and control characters.
    hostile_path = "/srv/a<b>&\"c\x01\x1b[0m end"
    results = {
        "good": {
            "changed": True, "failed": False, "job_id": "job-g", "complete": True,
            "stats": {"files_total": 10, "files_moved": 10, "bytes_total": 4096, "bytes_moved": 4096},
            "failures": [], "elapsed_seconds": 1.0, "bytes_per_second": 4096.0,
        },
        "bad": {
            "changed": True, "failed": True, "msg": "2 file(s) failed", "job_id": "job-b",
            "stats": {"files_total": 4, "files_moved": 2, "files_failed": 2, "files_quarantined": 1},
            "failures": [
                {"path": template_path, "error": "EIO", "attempts": 3, "quarantined": False},
                {"path": hostile_path, "error": "checksum mismatch", "attempts": 2, "quarantined": True},
            ],
        },
        "early": None,
    }
    input_file = tmp_path / "results.json"
    input_file.write_text(json.dumps(results), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()

    proc = run_playbook(str(PLAYBOOK), "-e", "report_input=%s" % input_file, "-e", "report_out=%s" % out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not marker.exists(), "a file name from a host result was evaluated as a template"

    fleet = json.loads((out / "fleet.json").read_text(encoding="utf-8"))
    assert fleet["hosts"]["bad"]["failures"][0]["path"] == template_path
    assert fleet["hosts"]["early"]["msg"] == "no result (host failed before the move ran)"
    assert fleet["totals"]["files_total"] == 14
    assert fleet["totals"]["files_failed"] == 2

    root = ET.fromstring((out / "junit.xml").read_bytes())
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert set(suites) == {"good", "bad", "early", "down"}
    # bad: its job + two files; early: its job; down: an error, not a failure.
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "4", "1")
    names = [case.get("name") for case in suites["bad"].findall("testcase")]
    assert names[0] == "move job-b"
    assert names[1] == template_path
    assert names[2] == "/srv/a<b>&\"c\\x01\\x1b[0m end"

    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "| good | ok | 10 / 10 |" in summary
    assert "4.0 KiB / 4.0 KiB" in summary
    # max_failures=3 was passed; the problems are one line per host that is
    # not ok (bad, early, down) and one per failed file of bad (2).
    assert "first 3 of 5" in summary
