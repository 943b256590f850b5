# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A tiny run of the benchmark suite, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_benchmark_quick_run(tmp_path):
    out = tmp_path / 'bench.md'
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'bench.py'), '--quick',
                           '--python', sys.executable, '--output', str(out), '--workdir', str(tmp_path)],
                          capture_output=True, text=True, timeout=560, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for heading in ('Physical limits', 'One 8 MiB file', 'files of 4 KiB in 3 dirs', 'rename path',
                    'Ansible overhead', 'Scale: 3000 small files'):
        assert heading in report, heading
    for peer in ('cp+sync+rm', 'rsync --fsync', '| mv |'):
        assert peer in report, peer
    assert '| complete after resume | True' in report


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_ansible_share_quick_run(tmp_path):
    out = tmp_path / 'share.md'
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'ansible_share.py'), '--quick',
                           '--rerun-files', '500', '--python', sys.executable, '--output', str(out),
                           '--workdir', str(tmp_path)],
                          capture_output=True, text=True, timeout=560, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for heading in ('One file of 1 MiB', '60 files of 4 KiB in 3 dirs', 'Rerun of a finished job of 500 files',
                    '| rerun of the finished job, ansible-playbook |', 'PREFLIGHT | Check every job'):
        assert heading in report, heading
