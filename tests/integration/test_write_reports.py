# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""durable.mover.write_reports: files written on the controller, never outside dest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Write
      durable.mover.write_reports:
        dest: "{{ out }}"
        files: "{{ files }}"
      register: written
    - name: Keep the result
      ansible.builtin.copy:
        content: "{{ written | to_json }}"
        dest: "{{ out }}-result.json"
        mode: "0644"
"""


def _run(tmp_path, files):
    playbook = tmp_path / 'play.yml'
    playbook.write_text(PLAYBOOK)
    binary = shutil.which('ansible-playbook')
    if binary is None:
        pytest.skip('ansible-playbook is not installed')
    extra = json.dumps({'out': str(tmp_path / 'out'), 'files': files})
    return subprocess.run([binary, str(playbook), '-e', extra], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg')), check=False)


def test_writes_every_file_and_is_not_a_change(tmp_path):
    proc = _run(tmp_path, {'a.md': 'alpha\n', 'hosts/h1.json': '{"x": 1}', 'hosts/h2.json': 'é'})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / 'out'
    assert (out / 'a.md').read_text() == 'alpha\n'
    assert (out / 'hosts' / 'h1.json').read_text() == '{"x": 1}'
    assert (out / 'hosts' / 'h2.json').read_text(encoding='utf-8') == 'é'
    assert sorted(p.name for p in (out / 'hosts').iterdir()) == ['h1.json', 'h2.json']   # no temporaries left
    result = json.loads((tmp_path / 'out-result.json').read_text())
    assert result['changed'] is False and len(result['written']) == 3


@pytest.mark.parametrize('bad', ['../escape.txt', '/etc/evil', 'a/../../b', ''])
def test_refuses_paths_outside_dest(tmp_path, bad):
    proc = _run(tmp_path, {bad: 'x'})
    assert proc.returncode != 0
    assert 'not a relative path inside dest' in proc.stdout + proc.stderr
    assert not (tmp_path / 'escape.txt').exists()
