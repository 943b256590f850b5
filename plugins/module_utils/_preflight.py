# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Preflight of one move: can it run here, and does the destination have room?

PRIVATE to the durable.mover collection; not a public API. The module
``durable.mover.preflight`` and the unit tests call it; it imports nothing from
Ansible and never changes anything: it stats, lists, reads extended attribute
names and plans the job read-only (``_mover.plan``, the check mode of a move,
which also reads the job's journal when there is one).

:func:`preflight` returns ``{'ok', 'problems', 'findings'}``: ``problems`` are
plain sentences, each one a reason the move would fail or must not start;
``findings`` is what was measured, problem or not, for the report.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys

from ansible_collections.durable.mover.plugins.module_utils import _copy, _hashing, _lock, _mover, _scan
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, display_path

MIN_PYTHON = (3, 9)
# A generous estimate of what the journal takes per entry (row, index, WAL).
JOURNAL_BYTES_PER_ENTRY = 1024
# How many entries of the source are sampled for extended attributes.
XATTR_SAMPLE = 64
_NOT_SUPPORTED = frozenset((errno.ENOTSUP, getattr(errno, 'EOPNOTSUPP', errno.ENOTSUP)))
_NO_ATTR = frozenset(e for e in (getattr(errno, 'ENODATA', None), getattr(errno, 'ENOATTR', None)) if e)
# Names the mover does not copy (see _metadata.py): they cannot be a problem.
_IGNORED_XATTR_PREFIXES = ('trusted.SGI_ACL_',)
# Options of a move that change what it would do; the rest do not matter here.
PLAN_OPTIONS = ('src', 'dest', 'mode', 'hash', 'preserve', 'state_dir', 'job_id', 'exclude',
                'on_conflict', 'special_files', 'cross_filesystems')

# What a move allocates at its destination (see SpaceEstimate). Free space
# each new inode takes, by filesystem type: ext2/3/4 have a fixed inode table
# (free inodes are checked instead); xfs allocates inodes from free space (512
# bytes each, its default since v5); btrfs keeps an inode's items (about 512
# bytes with its directory entries) in metadata, written twice (DUP) on one
# device. Other filesystems: 256 bytes.
INODE_BYTES = {'ext2': 0, 'ext3': 0, 'ext4': 0, 'xfs': 512, 'btrfs': 1024}
INODE_BYTES_OTHER = 256
# Bytes a name takes in its directory, beyond the name itself (ext4: 8,
# rounded up to 4; xfs and btrfs: more).
DIRENT_BYTES = 16
# Symbolic links shorter than this are kept in the inode (ext4: 60 bytes).
INLINE_SYMLINK = 60
# The margin added to the estimate: 5 %, at least 1 MiB.
MARGIN_FRACTION = 0.05
MARGIN_MIN = 1024 * 1024
_MOUNTINFO_OCTAL = re.compile(rb'\\([0-7]{3})')
# Filesystems shared over a network or a cluster, by their mountinfo type
# (FUSE ones as fuse.<subtype>): SQLite's locking is unreliable on them
# (https://www.sqlite.org/faq.html#q5), so a job's journal must not live there.
NETWORK_FSTYPES = frozenset((
    'nfs', 'nfs4', 'cifs', 'smb3', 'smbfs', 'ncpfs', '9p', 'afs', 'lustre', 'ceph', 'glusterfs', 'gpfs',
    'beegfs', 'orangefs', 'pvfs2', 'fuse.glusterfs', 'fuse.ceph-fuse', 'fuse.sshfs', 'fuse.s3fs', 'fuse.gcsfuse',
    'fuse.rclone', 'fuse.juicefs', 'fuse.lizardfs', 'fuse.mfs', 'fuse.moosefs', 'fuse.davfs2', 'fuse.beegfs',
))


def nearest_existing(path):
    """``path`` itself or its nearest ancestor that exists."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def filesystem(path):
    """Free space, free inodes and flags of the filesystem holding ``path``."""
    info = {'free_bytes': None, 'free_inodes': None, 'read_only': False, 'device': None}
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        info['error'] = _oserror_text(exc, path)
        return info
    info['free_bytes'] = vfs.f_bavail * vfs.f_frsize
    info['block_size'] = vfs.f_frsize or vfs.f_bsize
    info['type'] = filesystem_type(path)
    # Some filesystems (btrfs) have no inode limit and report 0 of 0.
    info['free_inodes'] = vfs.f_favail if vfs.f_files else None
    info['read_only'] = bool(vfs.f_flag & getattr(os, 'ST_RDONLY', 1))
    try:
        info['device'] = os.stat(path).st_dev
    except OSError as exc:
        info['error'] = _oserror_text(exc, path)
    return info


def filesystem_type(path, mountinfo=_scan.MOUNTINFO):
    """The type (ext4, xfs, ...) of the filesystem holding the existing `path`,
    from the mount table: the last mount at the longest prefix. None if unknown."""
    try:
        with open(mountinfo, 'rb') as handle:
            data = handle.read()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, found = None, None
    for line in data.splitlines():
        left, sep, right = line.partition(b' - ')
        fields = left.split(b' ')
        if not sep or len(fields) < 5:
            continue
        point = os.fsdecode(_MOUNTINFO_OCTAL.sub(lambda m: bytes((int(m.group(1), 8),)), fields[4]))
        if _scan.inside(real, point) and (best is None or len(point) >= len(best)):
            best, found = point, right.split(b' ')[0].decode('ascii', 'replace')
    return found


def _round_up(count, unit):
    return -(-count // unit) * unit


class SpaceEstimate:
    """What a move will allocate at its destination, summed entry by entry
    as the plan finds them (the plan's `on_entry`).

    A copied file takes the blocks of its data (its size less its holes,
    found with SEEK_DATA/SEEK_HOLE like the copy does), rounded up to the
    destination's block size; a further name of a hard-linked file (with
    `hardlinks` kept) takes nothing; a symbolic link takes a block unless
    short; a special file, nothing. Every new inode takes INODE_BYTES of
    the destination's type; every new directory a block, and more as its
    names (DIRENT_BYTES each beyond the name) fill it. A rename (a move on
    one filesystem) takes no data and no inode. A margin of MARGIN_FRACTION
    (at least MARGIN_MIN) covers what is not counted (extent maps, xattrs
    beyond the inode, btrfs metadata chunks)."""

    def __init__(self, src_root, fs_type, block_size, hardlinks, missing_dirs=0):
        self.src_root = src_root
        self.fs_type = fs_type
        self.block = max(int(block_size or 4096), 512)
        self.hardlinks = hardlinks
        self.files = self.links = self.renames = self.dirs = 0
        self.data = self.file_blocks = self.dir_bytes = 0
        self.inodes = missing_dirs             # dest and its missing ancestors are made too
        self.dir_bytes = missing_dirs * self.block
        self._groups = set()
        self._parent, self._names = None, 0

    def __call__(self, rel, st, action):
        parent, _sep, name = rel.rpartition('/')
        if parent != self._parent:
            self._flush()
            self._parent = parent
        self._names += len(os.fsencode(name)) + DIRENT_BYTES
        if action == 'dir':
            self.dirs += 1
            self.inodes += 1
            self.dir_bytes += self.block
            return
        if action == 'rename':
            self.renames += 1
            return
        if self.hardlinks and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in self._groups:
                self.links += 1
                return
            self._groups.add((st.st_dev, st.st_ino))
        self.files += 1
        self.inodes += 1
        if stat.S_ISREG(st.st_mode):
            data = self._data_size(rel, st)
            self.data += data
            self.file_blocks += _round_up(data, self.block)
        elif stat.S_ISLNK(st.st_mode) and st.st_size >= INLINE_SYMLINK:
            self.file_blocks += _round_up(st.st_size, self.block)

    def _flush(self):
        """A directory's names beyond its first block."""
        if self._names:
            self.dir_bytes += max(0, _round_up(self._names, self.block) - self.block)
        self._names = 0

    def _data_size(self, rel, st):
        if getattr(st, 'data', None) is not None:
            return st.data             # a journal row (prepare): as scanned
        path = os.path.join(self.src_root, rel) if rel else self.src_root
        found = _copy.data_size_at(None, path, st)
        return min(st.st_size, st.st_blocks * 512) if found is None else found

    def result(self):
        self._flush()
        inode_bytes = self.inodes * INODE_BYTES.get(self.fs_type, INODE_BYTES_OTHER)
        subtotal = self.file_blocks + inode_bytes + self.dir_bytes
        margin = int(subtotal * MARGIN_FRACTION)
        if self.files:
            margin = max(MARGIN_MIN, margin)
        return {
            'filesystem': self.fs_type, 'block_size': self.block, 'files': self.files,
            'hardlinks': self.links, 'renames': self.renames, 'dirs': self.dirs,
            'data_bytes': self.data, 'file_blocks_bytes': self.file_blocks, 'inodes': self.inodes,
            'inode_bytes': inode_bytes, 'directory_bytes': self.dir_bytes, 'margin_bytes': margin,
            'bytes': subtotal + margin,
            'method': ("what the destination (%s, %s blocks) will allocate: each copied file's data "
                       "(its size less its holes) rounded up to a whole block, %d bytes per new inode, a "
                       "block per new directory and more for large ones, nothing for renames and further "
                       "hard links; plus a margin of %d%% (at least %s when files are copied)"
                       % (self.fs_type or 'unknown type', short_bytes(self.block),
                          INODE_BYTES.get(self.fs_type, INODE_BYTES_OTHER), int(MARGIN_FRACTION * 100),
                          short_bytes(MARGIN_MIN))),
        }


def _missing_dirs(path):
    """How many directories of `path` (itself and its ancestors) do not exist yet."""
    count = 0
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        count += 1
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return count


def _oserror_text(exc, path):
    return '%s: %s' % (display_path(path), os.strerror(exc.errno) if exc.errno else exc)


def human_bytes(count):
    """A byte count in binary units, exact bytes in brackets: ``1.5 GiB (1610612736 bytes)``."""
    value = float(count)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
        if value < 1024 or unit == 'PiB':
            break
        value /= 1024.0
    if unit == 'B':
        return '%d bytes' % count
    return '%.1f %s (%d bytes)' % (value, unit, count)


def short_bytes(count):
    """A byte count in binary units only: ``4.0 KiB``, ``512 bytes``."""
    return human_bytes(count).split(' (')[0]


def _writable(path):
    """Whether this process may create entries in the existing directory ``path``."""
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


# ---------------------------------------------------------------------------
# The checks, one function each; each appends to `problems` and returns findings
# ---------------------------------------------------------------------------

def check_python(problems):
    version = sys.version_info[:3]
    found = {
        'version': '%d.%d.%d' % version,
        'executable': sys.executable,
        'supported': version[:2] >= MIN_PYTHON,
    }
    if not found['supported']:
        problems.append('Python %s on the host is too old: durable.mover needs %d.%d or newer'
                        % (found['version'], MIN_PYTHON[0], MIN_PYTHON[1]))
    return found


def check_hash(requested, problems):
    available = _hashing.blake3_available()
    found = {'requested': requested, 'blake3_available': available, 'algorithm': None,
             'fallback': False}
    try:
        found['algorithm'] = _hashing.resolve(requested)
    except _hashing.MissingLibraryError:
        problems.append('hash=blake3 was asked for but the blake3 Python package is not installed on '
                        'the host (pip install blake3, or use hash=auto to fall back to sha256)')
    except ValueError as exc:
        problems.append(str(exc))
    else:
        found['fallback'] = requested == 'auto' and not available
    return found


def check_src(src, mode, problems):
    """The source, seen as the mover sees it: a link to a directory is that tree, any other
    link is moved as a link."""
    path = os.path.abspath(os.path.expanduser(src))
    found = {'path': path, 'exists': False, 'type': None, 'readable': False, 'device': None}
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) and os.path.isdir(path):
            st = os.stat(path)
    except FileNotFoundError:
        found['missing_problem'] = 'src does not exist: %s' % display_path(path)
        problems.append(found['missing_problem'])
        return found
    except OSError as exc:
        problems.append('src is not accessible: %s' % _oserror_text(exc, path))
        return found
    if stat.S_ISDIR(st.st_mode):
        kind = 'directory'
    elif stat.S_ISLNK(st.st_mode):
        kind = 'symlink'
    else:
        kind = 'file'
    found.update(exists=True, device=st.st_dev, type=kind)
    if kind == 'directory':
        found['readable'] = os.access(path, os.R_OK | os.X_OK)
    elif kind == 'file':
        found['readable'] = os.access(path, os.R_OK)
    else:
        found['readable'] = True   # a link is read with readlink, never followed
    if not found['readable']:
        problems.append('src is not readable: %s' % display_path(path))
    if mode == 'move':
        # Moved files are unlinked from their directory.
        parent = path if kind == 'directory' else os.path.dirname(path)
        found['removable'] = _writable(parent) and not filesystem(parent)['read_only']
        if not found['removable']:
            problems.append('src is not writable, so moved files cannot be removed from it: %s '
                            '(use mode=copy to keep the sources)' % display_path(parent))
    return found


def check_dest(dest_root, writing, problems):
    """The destination's nearest existing directory: writable, read-only, free space."""
    nearest = nearest_existing(dest_root)
    found = {'path': dest_root, 'exists': os.path.isdir(dest_root), 'nearest_existing': nearest}
    found.update(filesystem(nearest))
    found['writable'] = _writable(nearest) and not found['read_only']
    if not writing:
        return found
    if found['read_only']:
        problems.append('dest is on a read-only filesystem: %s' % display_path(nearest))
    elif not found['writable']:
        if os.path.isdir(nearest):
            problems.append('dest is not writable: %s' % display_path(nearest))
        else:
            problems.append('dest cannot be created: %s is not a directory' % display_path(nearest))
    return found


def network_filesystem(fstype):
    """Whether a mountinfo filesystem type is one shared over a network or a cluster."""
    return bool(fstype) and (fstype in NETWORK_FSTYPES or fstype.split('.', 1)[-1] in NETWORK_FSTYPES)


def check_state_dir(state_dir, job_id, problems, warnings=None):
    """The job's state directory: writable, and not on a network filesystem
    (a warning, not a problem: the move may still work, its lock may not)."""
    path = os.path.join(os.path.abspath(state_dir or _mover.DEFAULT_STATE_DIR), job_id or '')
    nearest = nearest_existing(path)
    found = {'path': path, 'nearest_existing': nearest}
    found.update(filesystem(nearest))
    found['writable'] = _writable(nearest) and not found['read_only']
    found['network_filesystem'] = network_filesystem(found.get('type'))
    if found['network_filesystem'] and warnings is not None:
        warnings.append('state_dir is on a network filesystem (%s): %s; SQLite\'s locking is unreliable there, '
                        'so two runs of the job could both write its journal: keep state_dir on a local disk of '
                        'each host' % (found['type'], display_path(nearest)))
    if found['read_only']:
        problems.append('state_dir is on a read-only filesystem: %s' % display_path(nearest))
    elif not found['writable']:
        problems.append('state_dir is not writable: %s' % display_path(nearest))
    return found


def source_xattr_names(src, limit=XATTR_SAMPLE):
    """Extended attribute names found on the source root and its first entries."""
    names = set()
    paths = [src]
    if os.path.isdir(src):
        try:
            with os.scandir(src) as entries:
                for count, entry in enumerate(entries):
                    if count >= limit:
                        break
                    paths.append(entry.path)
        except OSError:
            pass
    for path in paths:
        try:
            names.update(os.listxattr(path, follow_symlinks=False))
        except OSError:
            continue
    if hasattr(os, 'geteuid') and os.geteuid() != 0:
        # Only root may set SELinux labels; the mover keeps the default label otherwise.
        names = {name for name in names if not name.startswith('security.selinux')}
    return sorted(name for name in names if not name.startswith(_IGNORED_XATTR_PREFIXES))


def check_xattrs(src, dest_nearest, preserve, problems):
    """xattr support at the destination, when the source has xattrs to keep.

    ``listxattr`` on the destination tells whether the filesystem has xattrs
    at all; ``getxattr`` of each name the source uses (absent at the
    destination: ENODATA) tells whether its namespace is supported. Neither
    writes anything.
    """
    found = {'wanted': 'xattrs' in (preserve or ()), 'supported': None, 'source_names': [],
             'unsupported_names': []}
    if not found['wanted'] or not hasattr(os, 'listxattr'):
        return found
    found['source_names'] = source_xattr_names(src)
    try:
        os.listxattr(dest_nearest)
    except OSError as exc:
        if exc.errno not in _NOT_SUPPORTED:
            found['error'] = _oserror_text(exc, dest_nearest)
            return found
        found['supported'] = False
        found['unsupported_names'] = list(found['source_names'])
    else:
        found['supported'] = True
        for name in found['source_names']:
            try:
                os.getxattr(dest_nearest, name)
            except OSError as exc:
                if exc.errno in _NOT_SUPPORTED:
                    found['unsupported_names'].append(name)
    if found['unsupported_names']:
        problems.append('dest does not support the extended attributes the source has (%s): %s '
                        '(set preserve without xattrs to move anyway)'
                        % (', '.join(found['unsupported_names']), display_path(dest_nearest)))
    return found


def check_space(plan, estimate, src_found, dest_found, state_found, mode, problems):
    """Free space and inodes at the destination against what the move will
    allocate there (`estimate`: SpaceEstimate.result(), None in verify mode)."""
    files = int(plan.get('files') or 0)
    to_move = int(plan.get('bytes') or 0)
    same_fs = src_found.get('device') is not None and src_found['device'] == dest_found.get('device')
    writes = mode != 'verify' and estimate is not None
    needed = estimate['bytes'] if writes else 0
    inodes_needed = estimate['inodes'] if writes else 0
    journal = JOURNAL_BYTES_PER_ENTRY * files if mode != 'verify' else 0
    journal_here = state_found.get('device') is not None and state_found['device'] == dest_found.get('device')
    if journal_here:
        needed += journal
    found = {'same_filesystem': same_fs, 'files_to_move': files, 'bytes_to_move': to_move,
             'bytes_needed': needed, 'free_bytes': dest_found.get('free_bytes'),
             'inodes_needed': inodes_needed, 'free_inodes': dest_found.get('free_inodes'),
             'journal_bytes_estimate': journal, 'estimate': estimate}
    free = dest_found.get('free_bytes')
    where = display_path(dest_found['nearest_existing'])
    if needed and free is not None and free < needed:
        problems.append('not enough free space at dest: about %s needed, %s has %s free (%s)'
                        % (human_bytes(needed), where, human_bytes(free),
                           _needed_parts(estimate, journal if journal_here else 0)))
    inodes = dest_found.get('free_inodes')
    if writes and inodes is not None and inodes_needed > inodes:
        problems.append('not enough free inodes at dest: %d entries still to make (%d file(s), %d directories), '
                        '%s has %d free' % (inodes_needed, estimate['files'], inodes_needed - estimate['files'],
                                            where, inodes))
    state_free = state_found.get('free_bytes')
    if journal and state_free is not None and state_free < journal and not journal_here:
        problems.append('not enough free space for the journal: about %s needed, %s has %s free'
                        % (human_bytes(journal), display_path(state_found['nearest_existing']),
                           human_bytes(state_free)))
    return found


# Source filesystems whose used blocks bound what any tree on them takes
# once copied: no shared extents (reflinks, snapshots) and no compression.
BOUNDED_SOURCE_TYPES = frozenset(('ext2', 'ext3', 'ext4'))


def space_bound(job, src_found, dest_found, state_found):
    """What the move of anything on the source's filesystem can allocate at
    the destination at most, from statvfs alone (no walk of the source), and
    whether that fits: findings.space as check_space makes it, with
    ``upper_bound`` true, or None when it is no bound here (another source
    filesystem type, mount points entered, hard links not kept) or does not
    fit (then the source is listed and counted exactly).

    Every file of the tree is on the source filesystem (its mount points are
    left alone), so its blocks are among the filesystem's used blocks; an
    ext2/3/4 shares no block between files, compresses none and keeps every
    name of a hard-linked file on one inode. A block there takes at most
    ``ceil(dest block / source block)`` blocks at the destination; each used
    inode is counted again as an inode of the destination's type and a whole
    block (an inline file or a short link, a directory's first block), and
    again in the journal."""
    opts = job.opts
    if (filesystem_type(job.src_root) not in BOUNDED_SOURCE_TYPES or opts.cross_filesystems
            or 'hardlinks' not in (opts.preserve or ()) or opts.mode == 'verify'):
        return None
    try:
        vfs = os.statvfs(job.src_root)
    except OSError:
        return None
    src_block = vfs.f_frsize or vfs.f_bsize
    dest_block = int(dest_found.get('block_size') or 4096)
    used_bytes = (vfs.f_blocks - vfs.f_bfree) * src_block
    used_inodes = max(0, vfs.f_files - vfs.f_ffree)
    if not src_block or not vfs.f_files:
        return None
    missing = _missing_dirs(job.dest_root)
    inode_bytes = (used_inodes + missing) * INODE_BYTES.get(dest_found.get('type'), INODE_BYTES_OTHER)
    file_blocks = used_bytes * max(1, -(-dest_block // src_block))
    dir_bytes = (used_inodes + missing) * dest_block
    subtotal = file_blocks + inode_bytes + dir_bytes
    margin = max(MARGIN_MIN, int(subtotal * MARGIN_FRACTION))
    estimate = {
        'filesystem': dest_found.get('type'), 'block_size': dest_block, 'files': used_inodes, 'hardlinks': None,
        'renames': None, 'dirs': None, 'data_bytes': used_bytes, 'file_blocks_bytes': file_blocks,
        'inodes': used_inodes + missing, 'inode_bytes': inode_bytes, 'directory_bytes': dir_bytes,
        'margin_bytes': margin, 'bytes': subtotal + margin, 'upper_bound': True,
        'method': ("at most what the source's whole filesystem holds (%s used in %s blocks, %d inodes, from "
                   "statvfs: the source was not listed), in the destination's %s blocks, with %d bytes and a "
                   "block per inode, plus a margin of %d%%"
                   % (short_bytes(used_bytes), short_bytes(src_block), used_inodes, short_bytes(dest_block),
                      INODE_BYTES.get(dest_found.get('type'), INODE_BYTES_OTHER), int(MARGIN_FRACTION * 100))),
    }
    plan = {'files': used_inodes, 'bytes': used_bytes}
    problems = []
    found = check_space(plan, estimate, src_found, dest_found, state_found, opts.mode, problems)
    if problems:
        return None
    found.update(files_to_move=None, bytes_to_move=None, upper_bound=True)
    return found


def _needed_parts(estimate, journal):
    """How the space needed was counted, in a few words."""
    parts = []
    if estimate['files']:
        parts.append('%d file(s) holding %s of data take %s in %s blocks'
                     % (estimate['files'], short_bytes(estimate['data_bytes']),
                        short_bytes(estimate['file_blocks_bytes']), short_bytes(estimate['block_size'])))
    if estimate['renames']:
        parts.append('%d rename(s) take none' % estimate['renames'])
    parts.append('inodes and directories %s' % short_bytes(estimate['inode_bytes'] + estimate['directory_bytes']))
    if journal:
        parts.append('the journal %s' % short_bytes(journal))
    parts.append('a %d%% margin %s' % (int(MARGIN_FRACTION * 100), short_bytes(estimate['margin_bytes'])))
    return ', '.join(parts)


def plan_job(params, problems, on_entry=None):
    """Check mode of the move itself: what is still to move, read-only."""
    try:
        result = _mover.plan(params, on_entry=on_entry)
    except _hashing.MissingLibraryError:
        return None   # reported by check_hash
    except MoverError as exc:
        problems.append(str(exc))
        return None
    except OSError as exc:
        problems.append('cannot plan the move: %s' % _oserror_text(exc, exc.filename or params['src']))
        return None
    return _planned(result, problems)


def prepare_job(params, token, problems, on_entry=None, bound=None):
    """The move's scan made here (_mover.prepare): the source listed into the
    job's journal once, for the move given `token`, and the plan made from
    the journal. None when the job could not be prepared (the caller plans
    read-only); ``{'running': True, 'pid'}`` when a run holds the job's lock;
    with `bound`, ``{'larger': True, ...}`` when the job is larger (nothing
    listed)."""
    try:
        result = _mover.prepare(params, token, on_entry=on_entry, bound=bound)
    except _hashing.MissingLibraryError:
        return None
    except MoverError as exc:
        problems.append(str(exc))
        return None
    except OSError as exc:
        problems.append('cannot list the source into the journal: %s'
                        % _oserror_text(exc, exc.filename or params['src']))
        return None
    if result is None or result.get('running') or result.get('larger'):
        return result
    planned = _planned(result, problems)
    planned['prepared'] = result['prepared']
    planned['finished'] = result['finished']
    return planned


def _planned(result, problems):
    plan = dict(result.get('plan') or {})
    for failure in result.get('failures') or ():
        problems.append('%s: %s' % (failure.get('path'), failure.get('error')))
    return {'job_id': result.get('job_id'), 'journal': result.get('journal'), 'plan': plan,
            'journal_exists': os.path.exists(result.get('journal') or ''),
            'stats': result.get('stats') or {},
            'mount_points': [p['path'] for p in result.get('mount_points') or ()]}


def mount_points(src_root, planned):
    """The mount points inside the source tree: those in the mount table below it,
    and those the plan left alone (another device: a mount or a btrfs subvolume)."""
    found = {display_path(os.path.join(src_root, rel))
             for rel in _scan.mount_points_below(_scan.mount_table(), src_root)}
    found.update(planned['mount_points'] if planned else ())
    return sorted(found)


# ---------------------------------------------------------------------------
# The whole preflight
# ---------------------------------------------------------------------------

def preflight(params):
    """Every check for one src/dest pair; returns ``{'ok', 'problems', 'findings'}``.

    With ``prepare`` (a token, never in check mode), the source is listed
    into the job's journal for the move given that token (prepare_job)
    instead of walked read-only; ``marker`` (a path, ~ expanded) is looked
    for: the file where the role keeps a running async move's job id.

    With ``bound`` too ((max_files, max_bytes), for a move made here only
    when the job is that small), a job found larger is not listed when the
    destination has room for all the source's filesystem holds (space_bound):
    ``findings.larger`` says what the walk counted before it stopped, the
    plan is null, and the move lists the source itself."""
    token = params.get('prepare') or None
    marker = params.get('marker') or None
    bound = params.get('bound') if token else None
    params = {key: params.get(key) for key in PLAN_OPTIONS if params.get(key) is not None}
    problems = []
    warnings = []
    findings = {'python': check_python(problems)}
    try:
        opts = _mover.Options.from_params(params)
        job = _mover.Job(opts)
    except MoverError as exc:
        problems.append(str(exc))
        findings['hash'] = check_hash(params.get('hash', 'auto'), problems)
        return _done(problems, findings, warnings)
    mode = opts.mode
    findings['mode'] = mode
    findings['job_id'] = job.job_id
    findings['hash'] = check_hash(opts.hash, problems)
    findings['src'] = check_src(opts.src, mode, problems)
    findings['dest'] = check_dest(job.dest_root, mode != 'verify', problems)
    findings['state_dir'] = check_state_dir(opts.state_dir, job.job_id, problems, warnings)
    findings['xattrs'] = check_xattrs(findings['src']['path'], findings['dest']['nearest_existing'],
                                      opts.preserve, problems)
    planned = None
    estimate = None
    if mode != 'verify':
        estimate = SpaceEstimate(job.src_root, findings['dest'].get('type'), findings['dest'].get('block_size'),
                                 'hardlinks' in (opts.preserve or ()), _missing_dirs(job.dest_root))
    findings['prepared'] = None
    findings['finished'] = None
    findings['running'] = None
    findings['larger'] = None
    space = None
    if token and not problems and findings['src']['exists'] and findings['src']['readable']:
        if bound is not None:
            # Without a proof of room, a larger job is listed and counted exactly.
            space = space_bound(job, findings['src'], findings['dest'], findings['state_dir'])
        planned = prepare_job(params, token, problems, estimate, bound if space is not None else None)
        if planned is not None and planned.get('larger'):
            findings['larger'] = {'files': planned['files'], 'bytes': planned['bytes']}
            planned = None          # the move lists the source itself
        else:
            space = None
        if planned is not None and planned.get('running'):
            findings['running'], findings['running_pid'] = True, planned['pid']
            planned = None      # its run is going: the role waits for it, the move plans itself
        elif planned is not None:
            findings['prepared'] = planned['prepared']
            findings['finished'] = planned['finished']
        elif not problems and findings['larger'] is None:
            planned = plan_job(params, problems, estimate)
    elif findings['src']['exists'] and findings['src']['readable']:
        planned = plan_job(params, problems, estimate)
    elif job.single is not None and not job.src_exists and os.path.exists(job.journal_path):
        # A one-file job whose file was moved by an earlier run: nothing to do, no problem.
        own = []
        planned = plan_job(params, own)
        if planned is not None and not own:
            problems.remove(findings['src']['missing_problem'])
            findings['src']['already_moved'] = True
        else:
            problems.extend(own)
    findings['src'].pop('missing_problem', None)
    if job.single is None and findings['src']['exists']:
        # not entered by the move unless cross_filesystems (nor removed, either way)
        findings['src']['mount_points'] = mount_points(job.src_root, planned)
        findings['src']['cross_filesystems'] = opts.cross_filesystems
    if findings['running'] is None:
        findings['running_pid'] = _lock_holder(job.state_dir)
        findings['running'] = findings['running_pid'] is not None
    if marker:
        findings['async_marker'] = os.path.exists(os.path.expanduser(marker))
    findings['journal'] = planned['journal'] if planned else job.journal_path
    findings['journal_exists'] = os.path.exists(findings['journal'])
    findings['plan'] = planned['plan'] if planned else None
    if planned is not None:
        findings['space'] = check_space(planned['plan'], estimate.result() if estimate else None,
                                        findings['src'], findings['dest'], findings['state_dir'], mode, problems)
    elif space is not None:
        findings['space'] = space
    return _done(problems, findings, warnings)


def _lock_holder(state_dir):
    """The pid of a run holding the job's lock (-1 if unknown), or None."""
    try:
        return _lock.holder_pid(state_dir)
    except OSError:
        return None


def _done(problems, findings, warnings=()):
    # One sentence once, in the order found.
    unique = list(dict.fromkeys(problems))
    return {'ok': not unique, 'problems': unique, 'findings': findings, 'warnings': list(warnings)}


def summary(result):
    """One line: the problems, or what the preflight measured."""
    if result['problems']:
        return 'preflight found %d problem(s): %s' % (len(result['problems']), '; '.join(result['problems']))
    space = result['findings'].get('space') or {}
    larger = result['findings'].get('larger') or {}
    text = 'preflight ok'
    if space and space.get('upper_bound'):
        text = ('preflight ok: at least %d file(s), %s to move (counted until more than a move here takes; the '
                'move lists the source itself); %s; at most %s needed (all the source\'s filesystem holds), %s '
                'free at dest'
                % (larger.get('files', 0), human_bytes(larger.get('bytes', 0)),
                   'same filesystem (renames)' if space['same_filesystem'] else 'another filesystem (copies)',
                   short_bytes(space['bytes_needed']),
                   human_bytes(space['free_bytes']) if space['free_bytes'] is not None else 'unknown'))
    elif space:
        text = ('preflight ok: %d file(s), %s still to move; %s; about %s needed, %s free at dest'
                % (space['files_to_move'], human_bytes(space['bytes_to_move']),
                   'same filesystem (renames)' if space['same_filesystem'] else 'another filesystem (copies)',
                   short_bytes(space['bytes_needed']),
                   human_bytes(space['free_bytes']) if space['free_bytes'] is not None else 'unknown'))
    src = result['findings'].get('src') or {}
    if src.get('mount_points'):
        text += '; %d mount point(s) inside src %s' % (
            len(src['mount_points']), 'entered, kept' if src.get('cross_filesystems') else 'left alone')
    return text
