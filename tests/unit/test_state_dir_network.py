# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight warns when a job's state_dir is on a network filesystem.

SQLite's locking is unreliable on NFS, CIFS, Lustre, CephFS, GlusterFS...:
the journal of a job belongs on a local disk (README, "One tree, several
hosts"). The type comes from the mount table; the real case is a FUSE
filesystem mounted with the subtype ``glusterfs`` (type ``fuse.glusterfs`` in
/proc/self/mountinfo, as the GlusterFS client shows), served by a few lines of
mfusepy in a child process. A mountinfo text covers the kernel's own types.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _preflight
from ansible_collections.durable.mover.plugins.module_utils._preflight import preflight

LIBFUSE3 = "libfuse3.so.3"

# A directory that exists and is writable by everyone, and nothing in it.
FUSE_SCRIPT = textwrap.dedent("""
    import errno, stat, sys, time
    import mfusepy

    class Empty(mfusepy.Operations):
        def getattr(self, path, fh=None):
            if path != '/':
                raise mfusepy.FuseOSError(errno.ENOENT)
            now = time.time()
            return {'st_mode': stat.S_IFDIR | 0o777, 'st_nlink': 2, 'st_size': 0, 'st_uid': 0, 'st_gid': 0,
                    'st_atime': now, 'st_mtime': now, 'st_ctime': now}

        def readdir(self, path, fh):
            return ['.', '..']

        def statfs(self, path):
            return {'f_bsize': 4096, 'f_frsize': 4096, 'f_blocks': 1024, 'f_bfree': 1000, 'f_bavail': 1000,
                    'f_files': 100, 'f_ffree': 90, 'f_favail': 90, 'f_namemax': 255}

    mfusepy.FUSE(Empty(), sys.argv[1], foreground=True, nothreads=True, fsname='fake-gluster:/vol',
                 subtype='glusterfs')
""")


def _fuse_unavailable():
    if os.geteuid() != 0:
        return "needs root to mount FUSE"
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "needs /dev/fuse and fusermount3"
    probe = subprocess.run([sys.executable, "-c", "import mfusepy"], capture_output=True, check=False,
                           env=dict(os.environ, FUSE_LIBRARY_PATH=LIBFUSE3))
    return "needs mfusepy over libfuse3" if probe.returncode else None


def _mounted_type(path):
    return _preflight.filesystem_type(str(path))


@pytest.fixture
def gluster_mount(tmp_path):
    """A FUSE mount of type fuse.glusterfs under tmp_path (unmounted, its server killed by pid, at the end)."""
    reason = _fuse_unavailable()
    if reason:
        pytest.skip(reason)
    point = tmp_path / "gluster"
    point.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", FUSE_SCRIPT, str(point)],  # pylint: disable=consider-using-with
                            env=dict(os.environ, FUSE_LIBRARY_PATH=LIBFUSE3),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while _mounted_type(point) != "fuse.glusterfs":
            assert proc.poll() is None, proc.communicate()[1].decode(errors="replace")
            assert time.monotonic() < deadline, "the FUSE filesystem did not mount in 30 s"
            time.sleep(0.05)
        yield point
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(point)], check=False, capture_output=True)
        proc.kill()
        proc.wait()


@pytest.fixture
def job(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"data")
    return {"src": str(src), "dest": str(tmp_path / "dest")}


def test_state_dir_on_a_network_filesystem_is_a_warning(job, gluster_mount):
    found = preflight(dict(job, state_dir=str(gluster_mount / "state")))
    state = found["findings"]["state_dir"]
    assert state["type"] == "fuse.glusterfs" and state["network_filesystem"] is True
    assert found["warnings"] == [
        "state_dir is on a network filesystem (fuse.glusterfs): %s; SQLite's locking is unreliable there, so two "
        "runs of the job could both write its journal: keep state_dir on a local disk of each host" % gluster_mount]
    # a warning, not a problem: the move may run
    assert found["ok"] is True and found["problems"] == []


def test_local_state_dir_is_no_warning(job, tmp_path):
    found = preflight(dict(job, state_dir=str(tmp_path / "state")))
    assert found["findings"]["state_dir"]["network_filesystem"] is False
    assert found["warnings"] == [] and found["ok"] is True


MOUNTINFO = textwrap.dedent("""\
    22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
    40 22 0:40 / /mnt/home rw,relatime shared:20 - nfs4 server:/home rw,vers=4.2
    41 22 0:41 / /mnt/scratch rw,relatime shared:21 - lustre 10.0.0.1@tcp:/scratch rw
    42 22 0:42 / /mnt/ceph rw,relatime shared:22 - ceph 10.0.0.2:/ rw,name=admin
    43 22 0:43 / /mnt/smb rw,relatime shared:23 - cifs //nas/share rw
    44 22 0:44 / /mnt/gpfs rw,relatime shared:24 - gpfs gpfs0 rw
    45 22 0:45 / /mnt/bee rw,relatime shared:25 - beegfs beegfs_nodev rw
    46 22 0:46 / /mnt/gluster rw,relatime shared:26 - fuse.glusterfs srv:/vol rw
    47 40 8:2 / /mnt/home/local rw,relatime shared:27 - xfs /dev/sda2 rw
    48 22 0:48 / /mnt/with\\040space rw,relatime shared:28 - nfs srv:/x rw
    49 22 0:49 / /mnt/fuse-local rw,relatime shared:29 - fuse.mfusepy mfusepy rw
""")


@pytest.mark.parametrize("path, fstype, network", [
    ("/var/lib/durable-mover", "ext4", False),
    ("/mnt/home/user/state", "nfs4", True),
    ("/mnt/home/local/state", "xfs", False),       # a local disk mounted below an NFS mount
    ("/mnt/scratch/x", "lustre", True),
    ("/mnt/ceph", "ceph", True),
    ("/mnt/smb/a", "cifs", True),
    ("/mnt/gpfs/a", "gpfs", True),
    ("/mnt/bee/a", "beegfs", True),
    ("/mnt/gluster/a", "fuse.glusterfs", True),
    ("/mnt/with space/a", "nfs", True),
    ("/mnt/fuse-local/a", "fuse.mfusepy", False),
])
def test_network_types_from_a_mount_table(tmp_path, monkeypatch, path, fstype, network):
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO, encoding="utf-8")
    monkeypatch.setattr(_preflight.os.path, "realpath", lambda p: p)   # these paths exist only in the table
    assert _preflight.filesystem_type(path, mountinfo=str(table)) == fstype
    assert _preflight.network_filesystem(fstype) is network


@pytest.mark.parametrize("fstype", [None, "", "tmpfs", "btrfs", "fuse", "overlay"])
def test_local_and_unknown_types(fstype):
    assert _preflight.network_filesystem(fstype) is False
