# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Syscall order check: read an ``strace -f -y`` trace of a run of the core and
check, for every moved file, the order of the fsync chain:

across devices:  last write to the part < flush of the part < rename into place
                 < fsync(dest dir) < durable journal commit (fsync of the WAL)
                 < unlink(source) < fsync(source dir)
one filesystem:  rename < fsync of both directories < durable journal commit

A ``syncfs`` covers every path on the filesystem of its fd: filesystems are
told apart by device (st_dev, read when the check runs, while the run's
mounts are still there: a mount inside the destination is another
filesystem even though its paths share the destination's prefix).

"A < B" means A returned before B was entered (threads are accounted for by
pairing strace's ``<unfinished ...>`` and ``<... resumed>`` lines). A flush
counts whoever made it (fsync and syncfs cover every earlier write to what
they flush), but a journal commit only for the process that renamed the file:
with worker processes, each commits its own files.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

CALL = re.compile(r'^(\d+)\s+(\w+)\((.*?)(?:\)\s+=\s+(-?\d+)|\s*<unfinished \.\.\.>)')
RESUMED = re.compile(r'^(\d+)\s+<\.\.\. (\w+) resumed>.*=\s+(-?\d+)')
FD = re.compile(r'^(-?\d+|AT_FDCWD)<([^>]*)>')
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


class Call:
    __slots__ = ('pid', 'name', 'args', 'start', 'end', 'ret')

    def __init__(self, pid, name, args, start):
        self.pid, self.name, self.args, self.start, self.end, self.ret = pid, name, args, start, None, None


def parse(text: str) -> list:
    calls, pending = [], {}
    for index, line in enumerate(text.splitlines()):
        match = CALL.match(line)
        if match:
            pid, name, args, ret = match.groups()
            call = Call(pid, name, args, index)
            if ret is None:
                pending[(pid, name)] = call
            else:
                call.end, call.ret = index, int(ret)
            calls.append(call)
            continue
        match = RESUMED.match(line)
        if match:
            pid, name, ret = match.groups()
            call = pending.pop((pid, name), None)
            if call is not None:
                call.end, call.ret = index, int(ret)
    calls = [c for c in calls if c.end is not None and c.ret is not None and c.ret >= 0]
    _to_processes(calls)
    return calls


def _to_processes(calls):
    """strace names threads by their own id: give each call the id of its
    process instead (the clone calls in the trace tell which is which)."""
    process = {}
    for call in calls:
        if call.name in ('clone', 'clone3', 'fork', 'vfork') and call.ret > 0:
            child = str(call.ret)
            process[child] = process.get(call.pid, call.pid) if 'CLONE_THREAD' in call.args else child
    for call in calls:
        call.pid = process.get(call.pid, call.pid)


def _fd_path(arg: str):
    match = FD.match(arg.strip())
    return match.group(2) if match else None


def _split_args(args: str) -> list:
    parts, depth, current, quoted, escape = [], 0, [], False, False
    for char in args:
        if quoted:
            current.append(char)
            if escape:
                escape = False
            elif char == '\\':
                escape = True
            elif char == '"':
                quoted = False
            continue
        if char == '"':
            quoted = True
        elif char in '[{(<':
            depth += 1
        elif char in ']})>':
            depth -= 1
        elif char == ',' and depth == 0:
            parts.append(''.join(current).strip())
            current = []
            continue
        current.append(char)
    parts.append(''.join(current).strip())
    return parts


def _unquote(arg: str) -> str:
    match = QUOTED.search(arg)
    if not match:
        return arg
    return match.group(1).encode('latin-1', 'backslashreplace').decode('unicode_escape')


def device(path: str, cache: dict) -> int:
    """st_dev of `path`, or of its nearest existing ancestor (a part renamed
    away, a source unlinked: the directory that held it)."""
    probe = path
    while probe not in cache:
        try:
            cache[probe] = os.lstat(probe).st_dev
        except OSError:
            parent = os.path.dirname(probe)
            if parent == probe:
                raise
            probe = parent
    cache[path] = cache[probe]
    return cache[path]


class Trace:
    """Events of one run, indexed for the checks."""

    def __init__(self, text: str):
        self.calls = parse(text)
        self._devices = {}
        self.writes = defaultdict(list)      # path -> calls
        self.syncs = defaultdict(list)       # path -> calls (fsync/fdatasync)
        self.renames = []                    # (call, src_path, dst_path)
        self.unlinks = []                    # (call, path)
        self.wal_syncs = []
        self.fs_syncs = []                   # (call, path of the fd): syncfs flushes a whole filesystem
        for call in self.calls:
            args = _split_args(call.args)
            if call.name == 'syncfs':
                self.fs_syncs.append((call, _fd_path(args[0]) or ''))
                continue
            if call.name in ('write', 'pwrite64', 'ftruncate', 'fchmod', 'fchown', 'fsetxattr') or \
                    (call.name == 'utimensat' and len(args) > 1 and args[1] == 'NULL'):
                path = _fd_path(args[0])
                if path:
                    self.writes[path].append(call)
            elif call.name in ('fsync', 'fdatasync'):
                path = _fd_path(args[0])
                if path:
                    self.syncs[path].append(call)
                    if path.endswith('-wal'):
                        self.wal_syncs.append(call)
            elif call.name in ('renameat', 'renameat2'):
                old = os.path.join(_fd_path(args[0]) or '', _unquote(args[1]))
                new = os.path.join(_fd_path(args[2]) or '', _unquote(args[3]))
                self.renames.append((call, old, new))
            elif call.name == 'rename':
                self.renames.append((call, _unquote(args[0]), _unquote(args[1])))
            elif call.name == 'unlinkat':
                self.unlinks.append((call, os.path.join(_fd_path(args[0]) or '', _unquote(args[1]))))
            elif call.name == 'unlink':
                self.unlinks.append((call, _unquote(args[0])))

    def _fs_syncs_of(self, path):
        """The syncfs calls made on the filesystem that holds `path`."""
        dev = device(path, self._devices)
        return [c for c, p in self.fs_syncs if device(p, self._devices) == dev]

    def first_sync_after(self, path, call):
        """The fsync of `path` (or syncfs of its filesystem) entered after
        `call` that returned first: from then on what `call` did is durable
        (with worker processes, another's syncfs may start earlier and return
        later than this process's own fsync)."""
        found = [s for s in self.syncs.get(path, ()) if s.start > call.end]
        found += [c for c in self._fs_syncs_of(path) if c.start > call.end]
        return min(found, key=lambda c: c.end) if found else None

    def flushed_between(self, path, after, before):
        """Was `path` flushed (fsync/fdatasync, or syncfs of its filesystem) in (after, before)?"""
        for sync in self.syncs.get(path, ()):
            if sync.start > after and sync.end < before:
                return True
        return any(c.start > after and c.end < before for c in self._fs_syncs_of(path))

    def first_wal_sync_after(self, call, pid):
        """The first commit of the journal by process `pid` after `call`."""
        for sync in self.wal_syncs:
            if sync.start > call.end and sync.pid == pid:
                return sync
        return None


def check(text: str, src_root: str, dest_root: str) -> tuple:
    """(files checked, list of violations) for every file that reached its final name."""
    trace = Trace(text)
    problems = []
    checked = 0
    for rename, old, new in trace.renames:
        if not new.startswith(dest_root.rstrip('/') + '/'):
            continue
        rel = os.path.relpath(new, dest_root)
        dest_dir = os.path.dirname(new)
        source = os.path.join(src_root, rel)
        chain = []
        if old.startswith(src_root.rstrip('/') + '/'):
            # one filesystem: rename < fsync(dest dir), fsync(src dir) < journal
            dsync = trace.first_sync_after(dest_dir, rename)
            ssync = trace.first_sync_after(os.path.dirname(old), rename)
            if dsync is None or ssync is None:
                problems.append('%s: renamed without fsync of %s' % (
                    rel, 'the destination dir' if dsync is None else 'the source dir'))
                continue
            last = dsync if dsync.end > ssync.end else ssync
            journal = trace.first_wal_sync_after(last, rename.pid)
            if journal is None:
                problems.append('%s: renamed but never committed to the journal afterwards' % rel)
            checked += 1
            continue
        part = old
        writes = [w for w in trace.writes.get(part, ()) if w.end < rename.start]
        if writes and not trace.flushed_between(part, writes[-1].end, rename.start):
            problems.append('%s: renamed into place before the part was flushed after its last write' % rel)
        if not writes and not part.endswith('.part'):
            problems.append('%s: renamed from an unexpected name %s' % (rel, part))
        dsync = trace.first_sync_after(dest_dir, rename)
        if dsync is None:
            problems.append('%s: no fsync of the destination directory after the rename' % rel)
            continue
        journal = trace.first_wal_sync_after(dsync, rename.pid)
        unlinks = [(c, p) for c, p in trace.unlinks if p == source and c.start > rename.start]
        early = [(c, p) for c, p in trace.unlinks if p == source and c.start < rename.start]
        if early:
            problems.append('%s: source unlinked before its copy was renamed into place' % rel)
        if unlinks:
            unlink = unlinks[0][0]
            if journal is None or journal.end > unlink.start:
                problems.append('%s: source unlinked before the journal commit that records the copy' % rel)
            if unlink.start < dsync.end:
                problems.append('%s: source unlinked before the destination directory was fsynced' % rel)
            ssync = trace.first_sync_after(os.path.dirname(source), unlink)
            if ssync is None:
                problems.append('%s: no fsync of the source directory after the unlink' % rel)
            chain.append('unlinked')
        checked += 1
    return checked, problems


def part_flushes(text: str, dest_root: str) -> dict:
    """How the last write to each part renamed into place under `dest_root`
    was flushed before the rename: {final path: (how, path of the flush's
    fd)}, `how` being 'fsync' (of the part itself), 'syncfs' or None. A
    failed call (an injected error) flushes nothing."""
    trace = Trace(text)
    found = {}
    for rename, old, new in trace.renames:
        if not new.startswith(dest_root.rstrip('/') + '/') or not old.endswith('.part'):
            continue
        writes = [w for w in trace.writes.get(old, ()) if w.end < rename.start]
        after = writes[-1].end if writes else -1
        own = [s for s in trace.syncs.get(old, ()) if after < s.start and s.end < rename.start]
        fs = [(c, p) for c, p in trace.fs_syncs if after < c.start and c.end < rename.start]
        found[new] = ('fsync', old) if own else ('syncfs', fs[0][1]) if fs else (None, None)
    return found


def check_dirs(text: str, src_root: str, dest_root: str) -> tuple:
    """(directories checked, violations) for every source directory the run
    removed (rmdir: unlinkat with AT_REMOVEDIR) once the job was done:

        metadata written to its destination directory (fchmod, fchown,
        fsetxattr, utimensat of its fd) < flush of the destination directory
        (its fsync, or syncfs of its filesystem) < rmdir(source directory)
        < flush of the source's parent < durable journal commit

    A source directory removed before its destination's metadata is durable
    takes its xattrs with it (they are read from it), and the journal must
    not call the directory finished before its removal is durable."""
    trace = Trace(text)
    problems = []
    checked = 0
    for call, path in trace.unlinks:
        if 'AT_REMOVEDIR' not in call.args or not path.startswith(src_root.rstrip('/') + '/'):
            continue
        rel = os.path.relpath(path, src_root)
        dest = os.path.join(dest_root, rel)
        writes = [w for w in trace.writes.get(dest, ()) if w.end < call.start]
        if not writes:
            problems.append('%s/: source directory removed, its destination\'s metadata never written' % rel)
            continue
        if not trace.flushed_between(dest, writes[-1].end, call.start):
            problems.append('%s/: source directory removed before its destination\'s metadata was flushed' % rel)
        sync = trace.first_sync_after(os.path.dirname(path), call)
        if sync is None:
            problems.append('%s/: no flush of the source\'s parent after its removal' % rel)
        elif trace.first_wal_sync_after(sync, call.pid) is None:
            problems.append('%s/: no journal commit after its removal was flushed' % rel)
        checked += 1
    return checked, problems


def dir_flushes(text: str, src_root: str, dest_root: str) -> dict:
    """What first made each change of a directory durable: {(side, path):
    how} for every rename into `dest_root` (side 'dest', the final path) and
    every unlink under `src_root` (side 'src'), `how` being 'fsync' (of the
    directory), 'syncfs' (of its filesystem) or None (nothing after it)."""
    trace = Trace(text)
    found = {}
    changes = [('dest', call, new) for call, _old, new in trace.renames
               if new.startswith(dest_root.rstrip('/') + '/')]
    # (rmdir of emptied source directories, once the job is done, is not a batch's)
    changes += [('src', call, path) for call, path in trace.unlinks
                if path.startswith(src_root.rstrip('/') + '/') and 'AT_REMOVEDIR' not in call.args]
    for side, call, path in changes:
        sync = trace.first_sync_after(os.path.dirname(path), call)
        found[(side, path)] = None if sync is None else 'syncfs' if sync.name == 'syncfs' else 'fsync'
    return found


def batch_flushed(text: str, dest_root: str, small: set) -> list:
    """Problems with the batch path of a run: each small file (relative path
    in `small`) reached its final name under `dest_root` after one syncfs of
    the destination's filesystem (checked by device) covered its part, not
    after an fsync of its own; at least one syncfs was of that filesystem."""
    problems = []
    dev = os.stat(dest_root).st_dev
    syncfs = [p for c, p in Trace(text).fs_syncs]
    if not any(os.path.exists(p) and os.stat(p).st_dev == dev for p in syncfs):
        problems.append('no syncfs of the destination filesystem (syncfs calls: %s)' % syncfs)
    flushes = part_flushes(text, dest_root)
    for rel in sorted(small):
        how, path = flushes.get(os.path.join(dest_root, rel), ('not renamed from a part', None))
        if how != 'syncfs':
            problems.append('%s: flushed by %s, not by the batch syncfs' % (rel, how))
        elif os.stat(path).st_dev != dev:
            problems.append('%s: the syncfs that covered it was of another filesystem (%s)' % (rel, path))
    return problems
