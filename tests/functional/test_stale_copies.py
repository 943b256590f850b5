# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A destination holding this job's own earlier copy is replaced; anything else is a conflict."""

from __future__ import annotations

import os

from ansible_collections.durable.mover.plugins.module_utils import _mover


def _params(tmp_path, **extra):
    values = {'src': str(tmp_path / 'src'), 'dest': str(tmp_path / 'dest'),
              'state_dir': str(tmp_path / 'state'), 'hash': 'sha256'}
    values.update(extra)
    return values


def test_copy_mode_updates_its_own_earlier_copy(tmp_path):
    (tmp_path / 'src').mkdir()
    (tmp_path / 'src' / 'f').write_bytes(b'one\n')
    assert not _mover.run(_params(tmp_path, mode='copy')).get('failed')
    (tmp_path / 'src' / 'f').write_bytes(b'two, longer\n')
    result = _mover.run(_params(tmp_path, mode='copy'))
    assert not result.get('failed'), result
    assert result['stats']['files_moved'] == 1
    assert (tmp_path / 'dest' / 'f').read_bytes() == b'two, longer\n'


def test_copy_mode_never_replaces_a_file_it_did_not_write(tmp_path):
    (tmp_path / 'src').mkdir()
    (tmp_path / 'src' / 'f').write_bytes(b'one\n')
    assert not _mover.run(_params(tmp_path, mode='copy')).get('failed')
    (tmp_path / 'dest' / 'f').write_bytes(b'edited at the destination\n')
    (tmp_path / 'src' / 'f').write_bytes(b'two\n')
    result = _mover.run(_params(tmp_path, mode='copy'))
    assert result['failed'] and 'conflict' in result['failures'][0]['error']
    assert (tmp_path / 'dest' / 'f').read_bytes() == b'edited at the destination\n'


def test_move_mode_keeps_a_moved_file_when_a_new_one_takes_its_name(tmp_path):
    """A file moved earlier is never overwritten by a new source file of the same name."""
    (tmp_path / 'src').mkdir()
    (tmp_path / 'src' / 'f').write_bytes(b'moved first\n')
    assert not _mover.run(_params(tmp_path)).get('failed')
    assert not (tmp_path / 'src' / 'f').exists()
    (tmp_path / 'src' / 'f').write_bytes(b'a new file\n')
    result = _mover.run(_params(tmp_path))
    assert result['failed'] and 'conflict' in result['failures'][0]['error']
    assert (tmp_path / 'dest' / 'f').read_bytes() == b'moved first\n'
    assert (tmp_path / 'src' / 'f').read_bytes() == b'a new file\n'
    assert os.listdir(tmp_path / 'dest') == ['f']


def test_a_fifo_swapped_in_for_a_file_is_refused_not_waited_on(tmp_path):
    """The scan saw a regular file; a FIFO took its name before its move: the run
    neither blocks on it nor moves it as a file; it is reported and kept."""
    import json
    import subprocess
    import sys
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a').write_bytes(b'a\n')
    (src / 'b').write_bytes(b'b\n')
    values = dict(_params(tmp_path), workers=1)
    cli = os.path.join(os.path.dirname(__file__), '..', 'tools', 'mover_cli.py')
    env = dict(os.environ, DURABLE_MOVER_FAULTS='kill=after_rename@1')
    first = subprocess.run([sys.executable, cli, json.dumps(values)], env=env, capture_output=True, timeout=60,
                           check=False)
    assert first.returncode == -9
    os.unlink(src / 'b')
    os.mkfifo(src / 'b')
    proc = subprocess.run([sys.executable, cli, json.dumps(values)], capture_output=True, text=True, timeout=60,
                          check=False)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert (tmp_path / 'dest' / 'a').read_bytes() == b'a\n'
    assert not os.path.lexists(tmp_path / 'dest' / 'b')
    assert os.path.exists(src / 'b')
    assert result['failed'] and 'changed type' in result['failures'][0]['error']
