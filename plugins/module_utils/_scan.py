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
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import time

from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError, os_error
from ansible_collections.durable.mover.plugins.module_utils import _faults

# Listings are sorted in chunks of this many entries: deterministic for the
# crash suite, bounded memory for directories with millions of entries.
SORT_CHUNK = 50000
COMMIT_ENTRIES = 5000
COMMIT_SECONDS = 2.0


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


def walk(tree, excluded):
    """Yield (rel, name, lstat) of every entry below the root, depth first.

    Read-only (for check mode and verify). Unlistable directories raise.
    """
    stack = ['']
    while stack:
        reldir = stack.pop()
        subdirs = []
        for rel, name, st in list_dir(tree, reldir, excluded):
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
            yield rel, name, st
        stack.extend(reversed(subdirs))
        tree.trim()
    tree.clear()


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
         single=None, on_error=None, on_commit=None, commit_entries=COMMIT_ENTRIES):
    """Scan the source into the journal. Returns False if stopped early.

    `single`: scan only this one name in the root (src is a file).
    `on_commit`: called after each commit before the last (the rows so far
    may be worked on while the scan goes on); commits come at the end of a
    directory, once `commit_entries` entries or COMMIT_SECONDS have passed.
    """
    if single is not None:
        try:
            st = os.lstat(single, dir_fd=tree.root_fd)
        except OSError as exc:
            raise os_error(exc, 'cannot stat source', tree.full(single))
        kind = kind_of(st)
        state, error = entry_state(kind, st, special_files)
        journal.add_files([(single, kind, st, state, error)], moves_source)
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
                for rel, name, st in list_dir(tree, reldir, excluded):
                    kind = kind_of(st)
                    if kind == 'dir':
                        found.dirs.append((rel, st))
                    else:
                        state, error = entry_state(kind, st, special_files)
                        found.files.append((rel, kind, st, state, error))
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
