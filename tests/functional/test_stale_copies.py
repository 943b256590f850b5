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
