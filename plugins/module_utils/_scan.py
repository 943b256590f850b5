# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Scanning the source: streamed listings, resumable, into the journal.

PRIVATE to the durable.mover collection; not a public API.

Directories are listed through their file descriptors (never by path), one
directory at a time, and each listing is written to the journal in batches,
so memory stays flat however large the tree is. The queue of directories still
to list lives in the journal itself: a scan killed half way resumes where it
stopped.

The scan stays on the source's own filesystem (like `find -xdev`): an entry
is a mount point when it is a directory on another device than its
directory, or when the mount table lists its path (a bind mount of the same
filesystem keeps the device number). A mount point is recorded (kind 'mount', skipped, with why)
and not entered; with `cross_filesystems` a directory mount point is entered,
and the mover never removes it (see `Boundary`).
"""

from __future__ import annotations

import collections
import errno
import fnmatch
import os
import re
import stat
import time

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, os_error
from ansible_collections.durable.mover.plugins.module_utils import _copy, _faults

# Listings are sorted in chunks of this many entries: deterministic for the
# crash suite, bounded memory for directories with millions of entries.
SORT_CHUNK = 50000
COMMIT_ENTRIES = 5000
COMMIT_SECONDS = 2.0
MOUNTINFO = '/proc/self/mountinfo'
_OCTAL = re.compile(rb'\\([0-7]{3})')

# One line of the mount table: (major, minor) of the filesystem, the directory of
# that filesystem mounted (its `root`, '/' unless a bind mount of a subdirectory),
# and where it is mounted.
Mount = collections.namedtuple('Mount', 'dev root point')


def kind_of(st):
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return 'file'
    if stat.S_ISDIR(mode):
        return 'dir'
    if stat.S_ISLNK(mode):
        return 'symlink'
    return 'special'


def special_name(mode):
    for test, name in ((stat.S_ISFIFO, 'FIFO'), (stat.S_ISCHR, 'character device'),
                       (stat.S_ISBLK, 'block device'), (stat.S_ISSOCK, 'socket')):
        if test(mode):
            return name
    return 'special file'


class Excluder:
    """Glob excludes: a pattern with a '/' matches the relative path, else the name."""

    def __init__(self, patterns, part_suffix=None):
        self.path_patterns = [p.strip('/') for p in patterns or () if '/' in p.strip('/')]
        self.name_patterns = [p for p in patterns or () if '/' not in p.strip('/')]
        self.part_suffix = part_suffix

    def __call__(self, rel, name):
        if self.part_suffix and name.startswith('.') and name.endswith(self.part_suffix):
            return True
        return (any(fnmatch.fnmatchcase(name, p) for p in self.name_patterns)
                or any(fnmatch.fnmatchcase(rel, p) for p in self.path_patterns))


def join(reldir, name):
    return '%s/%s' % (reldir, name) if reldir else name


# -- mount points ------------------------------------------------------------------


def _unescape(field):
    """A path field of mountinfo: the kernel writes space, tab, newline and
    backslash as \\ooo; the rest are the name's own bytes."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes((int(m.group(1), 8),)), field))


def mount_table(path=MOUNTINFO):
    """The mounts of this process's mount namespace, in mount order (a later one
    at the same point covers an earlier), or None where there is no mountinfo."""
    try:
        with open(path, 'rb') as handle:
            data = handle.read()
    except OSError:
        return None
    table = []
    for line in data.splitlines():
        fields = line.split(b' ')
        if len(fields) < 5 or b':' not in fields[2]:
            continue
        major, _sep, minor = fields[2].partition(b':')
        try:
            dev = (int(major), int(minor))
        except ValueError:
            continue
        table.append(Mount(dev, _unescape(fields[3]), _unescape(fields[4])))
    return table


def inside(path, root):
    """Whether `path` is `root` or below it (both absolute, normalized)."""
    return path == root or path.startswith(root.rstrip('/') + '/')


def mount_points_below(table, root):
    """The paths, relative to `root`, of the mount points strictly below it."""
    prefix = root.rstrip('/') + '/'
    return {m.point[len(prefix):] for m in table or () if m.point.startswith(prefix) and m.point != prefix}


def where_mounted(table, path):
    """(dev, path inside its filesystem) of the existing real path `path`: the
    mount holding it is the last one whose mount point is its longest prefix."""
    best = None
    for mount in table:
        if inside(path, mount.point) and (best is None or len(mount.point) >= len(best.point)):
            best = mount
    if best is None:
        return None
    rest = path[len(best.point.rstrip('/')):].lstrip('/')
    return best.dev, (best.root.rstrip('/') + '/' + rest) if rest else best.root


def reached_below(table, path, root):
    """A mount point strictly below `root` through which the existing real path
    `path` can be reached (a mount of its filesystem whose root directory holds
    it: a bind mount of it or of an ancestor, the filesystem mounted again), or None."""
    found = where_mounted(table or (), path)
    if found is None:
        return None
    dev, in_fs = found
    for mount in table:
        if mount.point != root and inside(mount.point, root) and mount.dev == dev \
                and inside(in_fs, mount.root):
            return mount.point
    return None


class Boundary:
    """Where the walk of one source tree stops: its mount points.

    An entry is a mount point when it is a directory whose device differs from
    its directory's (a mount of another filesystem, or a btrfs subvolume), or
    when the mount table lists its path (a bind mount of the same filesystem
    keeps the device number, so st_dev alone misses it). The device of other
    entries is not compared: on an overlayfs whose layers are on several
    filesystems, a file reports its layer's device, not the overlay's (a file
    mounted over a file is in the mount table). By default one is never entered nor moved; with
    `cross`, a directory mount point is entered (its directory is kept by the
    mover). A mount point that is not a directory (a file mounted over a file)
    is never moved: it can be neither removed nor renamed while mounted.
    """

    def __init__(self, root_path, cross=False, table=None):
        self.cross = cross
        self.points = mount_points_below(mount_table() if table is None else table, root_path)
        self.skipped = []           # (rel, reason) of the mount points not entered

    def why(self, rel, st, dir_dev):
        """Why `rel` is a mount point (a sentence), or None."""
        if st.st_dev != dir_dev and stat.S_ISDIR(st.st_mode):
            return ('on another device than its directory (%d:%d, not %d:%d): a mount point or a '
                    'btrfs subvolume' % (os.major(st.st_dev), os.minor(st.st_dev),
                                         os.major(dir_dev), os.minor(dir_dev)))
        if rel in self.points:
            return 'a mount point in the mount table (a bind mount, or a filesystem mounted again)'
        return None

    def skip(self, rel, st, dir_dev):
        """The reason to leave the entry `rel` alone, or None to take it (and
        enter it, if a directory)."""
        why = self.why(rel, st, dir_dev)
        if why is None or (self.cross and stat.S_ISDIR(st.st_mode)):
            return None
        if self.cross:
            reason = 'mount point left at the source (%s): not a directory, it cannot be removed ' \
                     'or renamed while mounted' % why
        else:
            reason = 'mount point left at the source, not entered (%s); set cross_filesystems: true ' \
                     'to move what is inside' % why
        self.skipped.append((rel, reason))
        return reason

    def mounted(self, dir_fd, name, rel):
        """Whether `name` in the directory `dir_fd` is a mount point now (why, or None)."""
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except OSError:
            return None
        return self.why(rel, st, os.fstat(dir_fd).st_dev)


def list_dir(tree, reldir, excluded):
    """Yield (rel, name, lstat) of one directory, sorted in chunks.

    Raises MoverError if the directory cannot be opened or listed. The listing
    has an fd of its own: the consumer may trim the tree meanwhile.
    """
    path = tree.full(reldir)
    try:
        fd = tree.dup(reldir)
    except OSError as exc:
        raise os_error(exc, 'cannot list directory', path)
    try:
        scandir = os.scandir(fd)
    except OSError as exc:
        os.close(fd)
        raise os_error(exc, 'cannot list directory', path)
    chunk = []
    try:
        with scandir:
            while True:
                try:
                    entry = next(scandir, None)
                except OSError as exc:
                    raise os_error(exc, 'cannot list directory', path)
                if entry is not None:
                    rel = join(reldir, entry.name)
                    if excluded(rel, entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        raise os_error(exc, 'cannot stat', tree.full(rel))
                    chunk.append((entry.name, rel, st))
                if entry is None or len(chunk) >= SORT_CHUNK:
                    chunk.sort(key=lambda item: item[0])
                    for name, rel, st in chunk:
                        yield rel, name, st
                    chunk = []
                if entry is None:
                    return
    finally:
        os.close(fd)


def walk(tree, excluded, boundary=None):
    """Yield (rel, name, lstat) of every entry below the root, depth first.

    Read-only (for check mode and verify). Unlistable directories raise.
    Mount points `boundary` leaves alone are not yielded (it lists them).
    """
    if boundary is None:
        boundary = Boundary(tree.root_path)
    stack = ['']
    while stack:
        reldir = stack.pop()
        subdirs = []
        dir_dev = os.fstat(tree.get(reldir)).st_dev
        for rel, name, st in list_dir(tree, reldir, excluded):
            if boundary.skip(rel, st, dir_dev) is not None:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
            yield rel, name, st
        stack.extend(reversed(subdirs))
        tree.trim()
    tree.clear()


def data_of(kind, dir_fd, name, st):
    """What a file with holes counts (_copy.data_size), for the journal; None
    for any other entry (it counts its size)."""
    if kind != 'file' or not _copy.is_sparse(st):
        return None
    return _copy.data_size_at(dir_fd, name, st)


def entry_state(kind, st, special_files):
    """The initial journal state of a scanned entry and, if skipped, why."""
    if kind == 'special':
        what = special_name(st.st_mode)
        if stat.S_ISSOCK(st.st_mode):
            return 'skipped', 'socket skipped: a socket cannot be moved, its server recreates it'
        if special_files == 'skip':
            return 'skipped', '%s skipped (special_files=skip)' % what
    return 'pending', None


class _Found:
    """What the scan found and has not written to the journal yet.

    It is written in one go, so that a transaction is open only while it is
    written (worker processes commit to the same journal meanwhile). With
    `on_commit` (workers are fed by the scan), every write is committed and
    reported at once, even in the middle of a large directory (a directory is
    marked scanned only with its last entries, so a killed scan lists it
    again, and finds what is still there)."""

    def __init__(self, journal, moves_source, on_commit):
        self.journal = journal
        self.moves_source = moves_source
        self.on_commit = on_commit
        self.dirs, self.files, self.failed, self.scanned = [], [], [], []
        self.dir_start = 0          # files[dir_start:] are of the directory being listed
        self.uncommitted = 0

    def drop_current_dir(self):
        del self.files[self.dir_start:]

    def write(self, commit=False):
        if not (commit or self.dirs or self.files or self.failed or self.scanned):
            return
        journal = self.journal
        for rel, st in self.dirs:
            journal.add_dir(rel, st)
        if self.dirs:
            journal.forget_mounts(rel for rel, _st in self.dirs)   # unmounted since, or now entered
        if self.files:
            journal.add_files(self.files, self.moves_source)
        for rel, error in self.failed:
            journal.add_failed_entry(rel, 'dir', error)
        for dir_id, error in self.scanned:
            journal.mark_dir_scanned(dir_id, error=error)
        self.uncommitted += len(self.files)
        self.dirs, self.files, self.failed, self.scanned = [], [], [], []
        self.dir_start = 0
        if commit or self.on_commit is not None:
            journal.commit()
            _faults.point('after_scan_batch')
            self.uncommitted = 0
            if self.on_commit is not None:
                self.on_commit()


def scan(journal, tree, excluded, special_files, moves_source, should_stop=None,
         single=None, on_error=None, on_commit=None, commit_entries=COMMIT_ENTRIES,
         boundary=None, on_mount=None):
    """Scan the source into the journal. Returns False if stopped early.

    `single`: scan only this one name in the root (src is a file).
    `on_commit`: called after each commit before the last (the rows so far
    may be worked on while the scan goes on); commits come at the end of a
    directory, once `commit_entries` entries or COMMIT_SECONDS have passed.
    `boundary`: the mount points to leave alone (default: every one, as
    `Boundary` finds them); each is recorded as a skipped 'mount' row, and
    `on_mount(rel, reason)` is called.
    """
    if boundary is None:
        boundary = Boundary(tree.root_path)
    if single is not None:
        try:
            st = os.lstat(single, dir_fd=tree.root_fd)
        except OSError as exc:
            raise os_error(exc, 'cannot stat source', tree.full(single))
        kind = kind_of(st)
        state, error = entry_state(kind, st, special_files)
        journal.add_files([(single, kind, st, state, error, data_of(kind, tree.root_fd, single, st))],
                          moves_source)
        journal.set_meta(scan_complete=1)
        journal.commit()
        return True
    if not journal.next_unscanned_dirs(1) and journal.meta().get('scan_complete') != '1':
        journal.add_dir('', os.fstat(tree.root_fd))
    found = _Found(journal, moves_source, on_commit)
    last_commit = time.monotonic()
    while True:
        found.write()                   # the directories listed so far are not listed again
        dirs = journal.next_unscanned_dirs(64)
        if not dirs:
            break
        for dir_id, reldir in dirs:
            if should_stop is not None and should_stop():
                found.write(commit=True)
                return False
            found.dir_start = len(found.files)
            try:
                dir_dev = os.fstat(tree.get(reldir)).st_dev
                for rel, name, st in list_dir(tree, reldir, excluded):
                    kind = kind_of(st)
                    reason = boundary.skip(rel, st, dir_dev)
                    if reason is not None:
                        found.files.append((rel, 'mount', st, 'skipped', reason))
                        if on_mount is not None:
                            on_mount(rel, reason)
                    elif kind == 'dir':
                        found.dirs.append((rel, st))
                    else:
                        state, error = entry_state(kind, st, special_files)
                        found.files.append((rel, kind, st, state, error,
                                            data_of(kind, tree.get(reldir), name, st)))
                    if len(found.files) + len(found.dirs) >= 1000:
                        found.write()
            except MoverError as exc:
                if exc.errno == errno.ENOENT and reldir:
                    found.drop_current_dir()               # vanished (or moved away): nothing to do
                    found.scanned.append((dir_id, None))
                    continue
                found.failed.append((reldir or '.', str(exc)))
                found.scanned.append((dir_id, str(exc)))
                if on_error is not None:
                    on_error(reldir, exc)
                continue
            found.scanned.append((dir_id, None))
            if found.uncommitted + len(found.files) >= commit_entries or \
                    time.monotonic() - last_commit > COMMIT_SECONDS:
                found.write(commit=True)
                last_commit = time.monotonic()
        tree.clear()
    found.write()
    journal.set_meta(scan_complete=1)
    journal.commit()
    return True
