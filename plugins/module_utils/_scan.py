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

    Raises MoverError if the directory cannot be opened or listed.
    """
    fd = tree.get(reldir)
    path = tree.full(reldir)
    try:
        scandir = os.scandir(fd)
    except OSError as exc:
        raise os_error(exc, 'cannot list directory', path)
    chunk = []
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


def scan(journal, tree, excluded, special_files, moves_source, should_stop=None,
         single=None, on_error=None):
    """Scan the source into the journal. Returns False if stopped early.

    `single`: scan only this one name in the root (src is a file).
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
    pending_entries = 0
    last_commit = time.monotonic()
    while True:
        dirs = journal.next_unscanned_dirs(64)
        if not dirs:
            break
        for dir_id, reldir in dirs:
            if should_stop is not None and should_stop():
                journal.commit()
                return False
            batch = []
            try:
                for rel, name, st in list_dir(tree, reldir, excluded):
                    kind = kind_of(st)
                    if kind == 'dir':
                        journal.add_dir(rel, st)
                    else:
                        state, error = entry_state(kind, st, special_files)
                        batch.append((rel, kind, st, state, error))
                    if len(batch) >= 1000:
                        journal.add_files(batch, moves_source)
                        pending_entries += len(batch)
                        batch = []
            except MoverError as exc:
                if exc.errno == errno.ENOENT and reldir:
                    journal.mark_dir_scanned(dir_id)   # vanished (or moved away): nothing to do
                    continue
                journal.add_files(batch, moves_source)
                journal.add_failed_entry(reldir or '.', 'dir', str(exc))
                journal.mark_dir_scanned(dir_id, error=str(exc))
                if on_error is not None:
                    on_error(reldir, exc)
                continue
            journal.add_files(batch, moves_source)
            pending_entries += len(batch)
            journal.mark_dir_scanned(dir_id)
            if pending_entries >= COMMIT_ENTRIES or time.monotonic() - last_commit > COMMIT_SECONDS:
                journal.commit()
                _faults.point('after_scan_batch')
                pending_entries = 0
                last_commit = time.monotonic()
        tree.clear()
    journal.set_meta(scan_complete=1)
    journal.commit()
    return True
