# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Other processes acting during a run: what they put at the destination is never destroyed.

Each test runs the real core in this process and makes a third party act at one
precise instant by wrapping a core function: the wrapper does what the other
process would do (create a file under the destination name), then calls the
real function. Nothing of the code under test is replaced.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _durable, _mover, _scan

THEIRS = b'written by another process during the move\n'


def _just_before_the_rename_to(monkeypatch, name, act):
    """Make another process act once, just before the core renames an entry
    to `name`: act(src_dir_fd, src_name, dst_dir_fd, dst_name) returns True
    when it acted (it may decline a rename that is not the one it waits for).
    Returns the list of renames it acted at."""
    real = _durable.rename_into_place
    acted = []

    def rename_into_place(src_dir_fd, src_name, dst_dir_fd, dst_name, *args, **kwargs):
        if dst_name == name and not acted and act(src_dir_fd, src_name, dst_dir_fd, dst_name):
            acted.append(src_name)
        return real(src_dir_fd, src_name, dst_dir_fd, dst_name, *args, **kwargs)

    monkeypatch.setattr(_durable, 'rename_into_place', rename_into_place)
    return acted


def _write_new(dir_fd, name, data, mode):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)


def _third_party_creates(monkeypatch, name):
    """Just before the final rename to `name`, another process creates a file there."""
    def act(_src_dir_fd, _src_name, dst_dir_fd, dst_name):
        _write_new(dst_dir_fd, dst_name, THEIRS, 0o644)
        return True

    return _just_before_the_rename_to(monkeypatch, name, act)


def _source_tree(tmp_path, what, name='target'):
    """src/first, and src/<name> of the kind `what` names; returns (src, the
    regular file's content or None)."""
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'first').write_bytes(b'first\n')
    original = None
    if what in ('file', 'big'):
        original = os.urandom(256 * 1024) if what == 'big' else b'the source\n'
        (src / name).write_bytes(original)
    elif what == 'symlink':
        os.symlink('first', src / name)
    elif what == 'hardlink':
        os.link(src / 'first', src / name)
    elif what == 'fifo':
        os.mkfifo(src / name)
    return src, original


def _dest(kind, tmp_path, request):
    if kind == 'samefs':
        return tmp_path / 'dest'
    if kind == 'tmpfs':
        return request.getfixturevalue('tmpfs')('16m') / 'dest'
    return request.getfixturevalue('loopfs')(kind, 64) / 'dest'


# (what moves, destination filesystem): every path that ends in a rename
PATHS = {
    'copy-batch': ('file', 'ext4'),        # small file: flushed with its batch (syncfs), then renamed
    'copy-alone': ('file', 'tmpfs'),       # flushed on its own, then renamed
    'copy-pipeline': ('big', 'tmpfs'),     # larger than 4 x buffer_size: the pipelined copy
    'same-filesystem': ('file', 'samefs'),  # the source itself is renamed
    'symlink': ('symlink', 'tmpfs'),
    'hardlink': ('hardlink', 'tmpfs'),     # the second name is linked to the first one's copy
    'special': ('fifo', 'tmpfs'),          # special_files=recreate
}


@pytest.mark.root
@pytest.mark.parametrize('path', sorted(PATHS))
def test_a_file_created_at_the_destination_during_the_move_is_never_replaced(path, tmp_path, request):
    what, kind = PATHS[path]
    name = 'target'
    src, original = _source_tree(tmp_path, what, name)
    dest = _dest(kind, tmp_path, request)
    acted = _third_party_creates(request.getfixturevalue('monkeypatch'), name)
    result = _mover.run({'src': str(src), 'dest': str(dest), 'state_dir': str(tmp_path / 'state'),
                         'processes': 1, 'special_files': 'recreate', 'buffer_size': '16K'})
    assert acted, 'the rename to the name was never reached'
    assert (dest / name).read_bytes() == THEIRS, 'the third party\'s file was replaced'
    assert os.path.lexists(src / name), 'the source is gone although it never reached its destination'
    if original is not None:
        assert (src / name).read_bytes() == original
    assert result['failed'] is True and result['complete'] is False, result
    assert [f['path'] for f in result['failures']] == [str(src / name)], result['failures']
    assert 'conflict' in result['failures'][0]['error'], result['failures']
    assert (dest / 'first').read_bytes() == b'first\n'
    assert not [n for n in os.listdir(dest) if n.endswith('.part')]


@pytest.mark.root
def test_overwrite_replaces_what_appeared(tmp_path, request):
    """on_conflict=overwrite: the source wins over anything at its name, even an
    entry that appeared during the move (the user asked for it)."""
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'target').write_bytes(b'the source\n')
    dest = request.getfixturevalue('tmpfs')('16m') / 'dest'
    acted = _third_party_creates(request.getfixturevalue('monkeypatch'), 'target')
    result = _mover.run({'src': str(src), 'dest': str(dest), 'state_dir': str(tmp_path / 'state'),
                         'processes': 1, 'on_conflict': 'overwrite'})
    assert acted and not result.get('failed'), result
    assert (dest / 'target').read_bytes() == b'the source\n'
    assert not (src / 'target').exists()


def _params(tmp_path, dest, **extra):
    values = {'src': str(tmp_path / 'src'), 'dest': str(dest), 'state_dir': str(tmp_path / 'state'),
              'processes': 1}
    values.update(extra)
    return values


def _rewrite_in_place_keeping_size_and_mtime(path, data):
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, 'r+b') as handle:
        handle.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.root
def test_a_source_rewritten_in_place_after_its_copy_is_kept(tmp_path, request, monkeypatch):
    """Between the copy and the unlink another program rewrites the source in
    place, keeping its size and restoring its mtime (as some tools do): only its
    ctime tells. The source must be kept, with its new content."""
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'f').write_bytes(b'before\n')
    (src / 'other').write_bytes(b'other\n')
    dest = request.getfixturevalue('tmpfs')('16m') / 'dest'
    real = _mover.Runner._unlink

    def unlink(runner, copied):
        if any(o.row.path == 'f' for o in copied):
            _rewrite_in_place_keeping_size_and_mtime(src / 'f', b'after!\n')
        return real(runner, copied)

    monkeypatch.setattr(_mover.Runner, '_unlink', unlink)
    result = _mover.run(_params(tmp_path, dest))
    assert (src / 'f').exists(), 'the rewritten source was removed (its new content is lost)'
    assert (src / 'f').read_bytes() == b'after!\n'
    assert (dest / 'f').read_bytes() == b'before\n'
    assert result['failed'] is True, result
    assert [f['path'] for f in result['failures']] == [str(src / 'f')]
    assert 'changed after it was copied' in result['failures'][0]['error']
    assert not (src / 'other').exists() and (dest / 'other').read_bytes() == b'other\n'


def _save_over(path, data):
    """An editor's save: write a new file beside, rename it over the name."""
    temp = path.with_name('.%s.swp' % path.name)
    temp.write_bytes(data)
    os.rename(temp, path)


@pytest.mark.root
@pytest.mark.parametrize('replaced', ['first name', 'second name'])
def test_a_hard_link_name_replaced_after_the_scan_keeps_its_new_content(replaced, tmp_path, request,
                                                                        monkeypatch):
    """Two names of one file; after the scan (hours before the move, on a large
    tree) one name is saved over by an editor: it is now another file. Neither
    the new content nor the old may be lost: the names move as the separate
    files they have become."""
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a').write_bytes(b'shared content\n')
    os.link(src / 'a', src / 'b')            # 'a' is the group's first name (scan order)
    dest = request.getfixturevalue('tmpfs')('16m') / 'dest'
    name = 'a' if replaced == 'first name' else 'b'
    real = _scan.scan

    def scan(*args, **kwargs):
        done = real(*args, **kwargs)
        _save_over(src / name, b'saved by an editor after the scan\n')
        return done

    monkeypatch.setattr(_scan, 'scan', scan)
    result = _mover.run(_params(tmp_path, dest))
    other = 'b' if name == 'a' else 'a'
    assert (dest / name).read_bytes() == b'saved by an editor after the scan\n'
    assert (dest / other).read_bytes() == b'shared content\n'
    assert not result.get('failed'), result
    assert not (src / 'a').exists() and not (src / 'b').exists()


HALF = b'half of what a second mover wrote'


def _part_replaced_before_rename(monkeypatch, name):
    """Just before the part is renamed to `name`, another process (a second
    mover on the same tree, with its own journal) removes the part and makes
    its own under the same name, not yet whole: create_part does exactly that."""
    def act(src_dir_fd, src_name, _dst_dir_fd, _dst_name):
        if not src_name.endswith('.part'):
            return False
        os.unlink(src_name, dir_fd=src_dir_fd)
        _write_new(src_dir_fd, src_name, HALF, 0o600)
        return True

    return _just_before_the_rename_to(monkeypatch, name, act)


@pytest.mark.root
@pytest.mark.parametrize('path', ['copy-batch', 'copy-alone', 'copy-pipeline', 'symlink', 'hardlink', 'special'])
def test_a_part_replaced_under_its_name_is_never_taken_for_the_verified_copy(path, tmp_path, request, monkeypatch):
    """The copy was written, flushed and verified through the mover's own
    descriptor (or made by it: a link, a node); the rename goes by name.
    Whatever another process put under the part's name since is not that
    copy: the entry fails, its source stays, and nothing half-written is ever
    recorded as moved."""
    what, kind = PATHS[path]
    src, original = _source_tree(tmp_path, what)
    dest = _dest(kind, tmp_path, request)
    acted = _part_replaced_before_rename(monkeypatch, 'target')
    result = _mover.run(_params(tmp_path, dest, buffer_size='16K', special_files='recreate'))
    assert acted, 'the rename of the part was never reached'
    assert os.path.lexists(src / 'target'), 'the source is gone although its copy never reached dest'
    if original is not None:
        assert (src / 'target').read_bytes() == original
    assert result['failed'] is True and result['complete'] is False, result
    assert [f['path'] for f in result['failures']] == [str(src / 'target')], result['failures']
    assert 'replaced' in result['failures'][0]['error'], result['failures']
    at_dest = dest / 'target'        # nothing, or the other process's file (renamed in the instant before)
    assert not os.path.lexists(at_dest) or (at_dest.is_file() and not at_dest.is_symlink()
                                            and at_dest.read_bytes() == HALF)
    assert (dest / 'first').read_bytes() == b'first\n'


@pytest.mark.root
@pytest.mark.loop
def test_an_xfs_that_shuts_down_before_the_directory_fsync_keeps_every_source(tmp_path, request, monkeypatch):
    """The destination's disk dies between the renames and the fsync of their
    directory: xfs shuts down (here by XFS_IOC_GOINGDOWN without flushing its
    log, what a failed log write does), aborting the renames in its log. Its
    directory fsync then answers success (xfs forces the log only for a
    pinned inode, and the abort unpinned them all), so the journal recorded
    files whose names never reached the disk and their sources were removed
    (found by test_device_faults' dying xfs with two workers, 1 run in 10).
    Every source of the batch must stay. Where the batch's directories are
    flushed by one syncfs (Linux >= 5.17), that syncfs reports the shutdown
    itself (xfs_fs_sync_fs forces the log): no file's fsync is needed."""
    src = tmp_path / 'src'
    (src / 'd').mkdir(parents=True)
    for index in range(6):
        (src / 'd' / ('f%d' % index)).write_bytes(b'file %d\n' % index)
    mnt = request.getfixturevalue('loopfs')('xfs', 300)
    dest = mnt / 'dest'
    acted = []

    def shut_down_first(real):
        def flush(fd, *args, **kwargs):
            if not acted:
                subprocess.run(['xfs_io', '-x', '-c', 'shutdown', str(mnt)], check=True, capture_output=True)
                acted.append(fd)
            return real(fd, *args, **kwargs)
        return flush

    # the directories' flush: one syncfs of the batch where syncfs_supported, else an fsync of each
    monkeypatch.setattr(_durable, 'sync_batch_dirs', shut_down_first(_durable.sync_batch_dirs))
    monkeypatch.setattr(_durable, 'sync_dest_dir', shut_down_first(_durable.sync_dest_dir))
    result = _mover.run(_params(tmp_path, dest, batch_files=16))
    assert acted, 'the directory fsync was never reached'
    kept = sorted(p.name for p in (src / 'd').iterdir())
    assert kept == ['f%d' % index for index in range(6)], (kept, result.get('msg'), result['stats'])
    assert result['failed'] is True and result['complete'] is False, result
