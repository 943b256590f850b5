# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Syscall order check on traced runs of the real core, including the
deliberately broken variants, which the check must catch."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crashlib import build_tree, check_final, params, run_core, snapshot
from ordercheck import check, check_dirs, dir_flushes, parse

pytestmark = [pytest.mark.root]
TRACE = ('trace=write,pwrite64,ftruncate,fchmod,fchown,fsetxattr,utimensat,fsync,fdatasync,syncfs,'
         'rename,renameat,renameat2,unlink,unlinkat,clone,clone3,fork,vfork')


def _many(root: Path, dirs=4, files=5):
    build_tree(root)
    for d in range(dirs):
        sub = root / ('many%d' % d)
        sub.mkdir()
        for f in range(files):
            (sub / ('f%02d' % f)).write_bytes(b'%d/%d\n' % (d, f) * (f + 1))


def _processes(text):
    """How many processes of the run renamed files into place (the parent scans and
    finalizes; with worker processes it moves nothing itself)."""
    return len({c.pid for c in parse(text) if c.name in ('rename', 'renameat', 'renameat2')})


def _traced_run(tmp_path, dest_parent, faults='', **extra):
    strace = shutil.which('strace')
    if strace is None:
        pytest.skip('strace is not installed (apt-get install strace)')
    src, dest, state = tmp_path / 'src', dest_parent / 'dest', tmp_path / 'state'
    _many(src)
    original = snapshot(src)
    out = tmp_path / 'run.trace'
    proc = run_core(params(src, dest, state, **extra), faults=faults,
                    prefix=[strace, '-f', '-y', '-qq', '-o', str(out), '-e', TRACE])
    return original, src, dest, state, out.read_text(errors='replace'), proc


@pytest.mark.parametrize('workers,batch_files,processes', [(1, 256, 1), (4, 3, 1), (1, 3, 2), (4, 3, 3)])
def test_order_across_devices(tmp_path, tmpfs, workers, batch_files, processes):
    original, src, dest, state, text, proc = _traced_run(tmp_path, tmpfs('64m'), workers=workers,
                                                         batch_files=batch_files, processes=processes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not check_final(original, src, dest, state)
    checked, problems = check(text, str(src), str(dest))
    files = sum(1 for kind, _digest in original.values() if kind != 'dir')
    assert checked == files
    assert not problems, problems


@pytest.mark.loop
@pytest.mark.parametrize('fstype,processes', [('ext4', 1), ('xfs', 1), ('ext4', 2), ('xfs', 3)])
def test_order_across_devices_with_batch_flush(tmp_path, loopfs, fstype, processes):
    """ext4/xfs destinations flush a batch of small copies with one syncfs."""
    original, src, dest, state, text, proc = _traced_run(tmp_path, loopfs(fstype), workers=4, batch_files=7,
                                                         processes=processes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _processes(text) == processes
    assert not check_final(original, src, dest, state)
    assert 'syncfs(' in text
    checked, problems = check(text, str(src), str(dest))
    assert checked == sum(1 for kind, _digest in original.values() if kind != 'dir')
    assert not problems, problems


@pytest.mark.loop
@pytest.mark.parametrize('processes', [1, 2])
def test_batch_directories_made_durable_by_one_syncfs(tmp_path, loopfs, processes):
    """Where syncfs commits the filesystem's journal (here an ext4 source, an
    xfs destination), the directories a batch changed are made durable by one
    syncfs of each filesystem after all its renames (or unlinks), not by an
    fsync of each directory: the number of flushes of a batch does not grow
    with the number of directories it touches (issue 13)."""
    original, src, dest, state, text, proc = _traced_run(tmp_path, loopfs('xfs'), batch_files=7,
                                                         processes=processes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not check_final(original, src, dest, state)
    checked, problems = check(text, str(src), str(dest))
    assert checked == sum(1 for kind, _digest in original.values() if kind != 'dir') and not problems, problems
    flushes = dir_flushes(text, str(src), str(dest))
    assert {side for side, _path in flushes} == {'src', 'dest'}, flushes
    not_batched = sorted('%s %s: %s' % (side, path, how) for (side, path), how in flushes.items() if how != 'syncfs')
    assert not not_batched, not_batched


@pytest.mark.loop
@pytest.mark.parametrize('processes', [1, 2])
def test_order_with_a_filesystem_mounted_inside_the_destination(tmp_path, loopfs, processes):
    """A directory of the destination is the mount point of another filesystem:
    one syncfs of the destination's filesystem does not flush the parts staged
    there, so they must be flushed some other way before their rename."""
    outer, inner = loopfs('ext4'), loopfs('ext4')
    (outer / 'dest' / 'many0').mkdir(parents=True)
    mount = ['mount', '--bind', str(inner), str(outer / 'dest' / 'many0')]
    assert subprocess.run(mount, check=False).returncode == 0
    try:
        original, src, dest, state, text, proc = _traced_run(tmp_path, outer, workers=4, batch_files=7,
                                                             processes=processes)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not check_final(original, src, dest, state)
        assert 'syncfs(' in text
        checked, problems = check(text, str(src), str(dest))
        assert checked == sum(1 for kind, _digest in original.values() if kind != 'dir')
        assert not problems, problems
    finally:
        subprocess.run(['umount', str(outer / 'dest' / 'many0')], check=False)


@pytest.mark.loop
@pytest.mark.parametrize('variant,expected', [
    ('no_part_fdatasync', 'before the part was flushed'),
    ('unlink_before_journal', 'before the journal commit'),
    ('no_batch_dir_sync', 'before the destination directory was fsynced'),
])
@pytest.mark.parametrize('processes', [1, 2])
def test_order_check_catches_broken_batch_flush(tmp_path, loopfs, variant, expected, processes):
    _original, src, dest, _state, text, proc = _traced_run(tmp_path, loopfs('ext4'), faults='broken=' + variant,
                                                           batch_files=7, processes=processes)
    assert _processes(text) == processes
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _checked, problems = check(text, str(src), str(dest))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize('workers,batch_files,processes', [(1, 256, 1), (4, 3, 1), (1, 3, 2)])
def test_order_same_filesystem(tmp_path, workers, batch_files, processes):
    (tmp_path / 'same').mkdir()
    original, src, dest, state, text, proc = _traced_run(tmp_path, tmp_path / 'same', workers=workers,
                                                         batch_files=batch_files, processes=processes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not check_final(original, src, dest, state)
    checked, problems = check(text, str(src), str(dest))
    assert checked == sum(1 for kind, _digest in original.values() if kind != 'dir')
    assert not problems, problems


@pytest.mark.parametrize('variant,expected', [
    ('no_part_fdatasync', 'before the part was flushed'),
    # (the directories' own metadata is fsynced at the very end: that late fsync
    # must not hide that the sources went before the destination was durable)
    ('no_dest_dir_fsync', 'before the destination directory was fsynced'),
    ('unlink_before_journal', 'before the journal commit'),
])
def test_order_check_catches_broken_chains(tmp_path, tmpfs, variant, expected):
    """The check must be able to fail: each broken variant of the chain is reported."""
    _original, src, dest, _state, text, proc = _traced_run(tmp_path, tmpfs('64m'), faults='broken=' + variant)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _checked, problems = check(text, str(src), str(dest))
    assert any(expected in p for p in problems), problems


def _source_dirs(original) -> int:
    return sum(1 for kind, _digest in original.values() if kind == 'dir')


@pytest.mark.loop
@pytest.mark.parametrize('fstype', ['ext4', 'xfs', 'tmpfs'])
def test_directories_finalized_in_order(tmp_path, loopfs, tmpfs, fstype):
    """Once every file is moved: each destination directory's metadata is durable before its
    source directory is removed, and each removal is durable before the journal calls the
    directory finished. On ext4 and xfs (syncfs) the destination's directories are made durable
    by one syncfs, not an fsync each (issue 13: the kernel tree's 5,000 directories cost 10,000
    fsyncs); on tmpfs each directory is fsynced."""
    parent = tmpfs('64m') if fstype == 'tmpfs' else loopfs(fstype)
    original, src, dest, state, text, proc = _traced_run(tmp_path, parent, batch_files=7)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not check_final(original, src, dest, state)
    checked, problems = check_dirs(text, str(src), str(dest))
    assert checked == _source_dirs(original) and not problems, problems
    dir_fsyncs = [c for c in parse(text) if c.name == 'fsync' and any(
        '<%s>' % os.path.join(str(dest), rel) in c.args for rel, (kind, _d) in original.items() if kind == 'dir')]
    if fstype == 'tmpfs':
        assert len(dir_fsyncs) >= _source_dirs(original), dir_fsyncs
    else:
        assert not dir_fsyncs, [c.args for c in dir_fsyncs]


@pytest.mark.loop
@pytest.mark.parametrize('fstype', ['ext4', 'tmpfs'])
def test_order_check_catches_an_unflushed_directory_finalize(tmp_path, loopfs, tmpfs, fstype):
    """The check must be able to fail: without the flush of the destination's directories (by
    syncfs or each its own fsync), every removed source directory is reported."""
    parent = tmpfs('64m') if fstype == 'tmpfs' else loopfs(fstype)
    original, src, dest, _state, text, proc = _traced_run(tmp_path, parent, faults='broken=no_finalize_dir_sync',
                                                          batch_files=7)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checked, problems = check_dirs(text, str(src), str(dest))
    flagged = [p for p in problems if "removed before its destination's metadata was flushed" in p]
    assert checked == _source_dirs(original) and len(flagged) == checked, problems
