# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A tiny run of the benchmark suite, so that it cannot rot (no timing is asserted)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_benchmark(tmp_path, script, *args, timeout=560):
    """benchmarks/<script> with these arguments, this Python, its work and its report in tmp_path;
    the report's text once it has succeeded."""
    out = tmp_path / (Path(script).stem + '.md')
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / script), *args, '--python', sys.executable,
                           '--output', str(out), '--workdir', str(tmp_path)],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out.read_text()


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(600)
def test_benchmark_quick_run(tmp_path):
    report = run_benchmark(tmp_path, 'bench.py', '--quick')
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
    report = run_benchmark(tmp_path, 'ansible_share.py', '--quick', '--rerun-files', '500')
    for heading in ('One file of 1 MiB', '60 files of 4 KiB in 3 dirs', 'Rerun of a finished job of 500 files',
                    '| rerun of the finished job, ansible-playbook |', 'PREFLIGHT | Check the job'):
        assert heading in report, heading


def _stand_in_kernel_deb(tmp_path):
    """A .deb shaped like Debian's linux-source-X (usr/src/linux-source-X.tar.xz): a few files,
    nested directories, a dotfile, symlinks, an executable; the benchmark unpacks it as the real one."""
    tree = tmp_path / 'standin' / 'linux-source-9.9'
    for folder in ('arch/x86/kernel', 'include/linux', 'scripts'):
        (tree / folder).mkdir(parents=True)
    for index in range(40):
        (tree / 'arch/x86/kernel' / ('f%02d.c' % index)).write_bytes(bytes(range(256)) * (index + 1))
        (tree / 'include/linux' / ('h%02d.h' % index)).write_text('#define X%d %d\n' % (index, index))
    (tree / '.gitignore').write_text('*.o\n')
    (tree / 'scripts' / 'run.sh').write_text('#!/bin/sh\n')
    (tree / 'scripts' / 'run.sh').chmod(0o755)
    (tree / 'include' / 'asm').symlink_to('linux')
    (tree / 'arch/x86/kernel' / 'link.c').symlink_to('f01.c')
    package = tmp_path / 'pkg'
    (package / 'usr' / 'src').mkdir(parents=True)
    (package / 'DEBIAN').mkdir()
    with tarfile.open(package / 'usr' / 'src' / 'linux-source-9.9.tar.xz', 'w:xz') as archive:
        archive.add(tree, arcname='linux-source-9.9')
    (package / 'DEBIAN' / 'control').write_text('Package: linux-source-9.9\nVersion: 9.9-1\nArchitecture: all\n'
                                                'Maintainer: bench <bench@example.org>\nDescription: stand-in\n')
    deb = tmp_path / 'linux-source-9.9_9.9-1_all.deb'
    subprocess.run(['dpkg-deb', '--build', str(package), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(900)
def test_real_trees_tiny_run(tmp_path):
    """The kernel workload's path (a stand-in linux-source .deb, unpacked into the cache) and the
    mixed tree, every tool, one quiet and one loaded round: each run's destination matched."""
    if not shutil.which('dpkg-deb'):
        pytest.fail('dpkg-deb is needed to build the stand-in linux-source package')
    deb = _stand_in_kernel_deb(tmp_path)
    cache = tmp_path / 'cache'
    report = run_benchmark(tmp_path, 'real_trees.py', '--tiny', '--only', 'kernel,mixed', '--kernel-deb', str(deb),
                           '--cache-dir', str(cache), timeout=860)
    assert (cache / 'linux-source-9.9_9.9-1' / 'linux-source-9.9' / 'include' / 'asm').is_symlink()
    for heading in ('## Linux kernel source (linux-source-9.9_9.9-1)', '## Mixed tree: 2 x 2 MiB and 100 files',
                    '### Medians of same-round ratios', '### Every run', '## Against the targets of issue 13',
                    '| ratio | quiet | loaded | loaded / quiet |', 'load average at the start'):
        assert heading in report, heading
    assert '82 files' in report  # the stand-in's 40 + 40 + 2 files, unpacked from the .deb
    runs = [line for line in report.splitlines() if line.startswith(('| quiet | ', '| loaded | '))]
    tools = ('ours (ansible-playbook)', 'ours (core)', 'cp -a + sync + rm -rf', 'rsync -aHAX + sync')
    assert len(runs) == 2 * 2 * len(tools), runs
    for line in runs:
        assert line.endswith('| same |'), line
    for tool in tools:
        assert sum(1 for line in runs if '| %s |' % tool in line) == 4, tool
    assert '| ours (ansible-playbook) / rsync -aHAX + sync |' in report
    assert '| Linux kernel source, loaded: ansible-playbook <= 1.0x cp -a + sync + rm -rf |' in report
    assert losetup_of(tmp_path) == [], 'loop devices left attached'


def losetup_of(tmp_path):
    """Loop devices still attached to image files under tmp_path."""
    listing = subprocess.run(['losetup', '-a'], capture_output=True, text=True, check=False).stdout
    return [line for line in listing.splitlines() if str(tmp_path) in line]


@pytest.mark.root
@pytest.mark.loop
@pytest.mark.timeout(120)
def test_mounts_that_fail_half_way_leave_nothing_mounted(tmp_path, monkeypatch):
    """The destination's mkfs fails (xfsprogs missing, as on a fresh machine): the source
    filesystem already mounted is unmounted and its loop device detached, not left behind."""
    sys.path.insert(0, str(REPO / 'benchmarks'))
    import bench  # pylint: disable=import-outside-toplevel
    real_sh = bench.sh

    def sh(cmd, **kwargs):
        if cmd[0] == 'mkfs.xfs':
            raise FileNotFoundError(2, 'No such file or directory', 'mkfs.xfs')
        return real_sh(cmd, **kwargs)

    monkeypatch.setattr(bench, 'sh', sh)
    with pytest.raises(FileNotFoundError):
        bench.Mounts(str(tmp_path), src_mb=64, dest_mb=64)
    mounts = Path('/proc/self/mountinfo').read_text()
    assert str(tmp_path) not in mounts
    loops = subprocess.run(['losetup', '-j', str(tmp_path / 'src-fs.img')], capture_output=True, text=True,
                           check=False).stdout
    assert loops.strip() == ''
