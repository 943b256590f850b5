# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The mover: a job's options, its checks, and the batch loop of a run.

PRIVATE to the durable.mover collection; not a public API.

A run takes the job lock, opens the journal, scans what is new at the source
into the journal, then works through the journal's pending rows in batches:
in this process, or in forked worker processes (_procs.py) that start once
the scan has found a batch for each and share the rows (the scan goes on
meanwhile, and tells them how far it got). For each batch, in this order
(the fsync chain, see _durable.py):

1. every entry is brought to its final destination name (_transfer.py:
   copy, flush, verify, metadata, rename; or one rename on one filesystem);
2. each touched destination directory is fsynced (and, for renames, each
   touched source directory);
3. the journal records the batch as copied and commits (WAL fsync);
4. the sources are unlinked and each touched source directory is fsynced;
5. the journal records the batch as done (with the next batch's commit: one
   commit a batch; a crash before it leaves 'copied' rows whose sources are
   gone, which the next run completes).

A crash anywhere leaves every file at its source, or whole and durable at its
destination with a journal that says so (or a journal that says nothing, in
which case the next run finds the destination identical to the source).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import sqlite3
import stat
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.durable.mover.plugins.module_utils import _copy, _durable, _faults, _hashing
from ansible_collections.durable.mover.plugins.module_utils import _metadata, _procs, _result, _scan
from ansible_collections.durable.mover.plugins.module_utils._audit import AuditLog
from ansible_collections.durable.mover.plugins.module_utils._errors import (
    InputError,
    JobLockedError,
    JournalError,
    MoverError,
    display_path,
    os_error,
)
from ansible_collections.durable.mover.plugins.module_utils._journal import (
    JOURNAL_NAME,
    WORK_STATES,
    Journal,
)
from ansible_collections.durable.mover.plugins.module_utils._lock import JobLock, holder_pid
from ansible_collections.durable.mover.plugins.module_utils._transfer import (
    FAILED,
    IDENTICAL,
    INTERRUPTED,
    MOVED,
    RETRY,
    SKIPPED,
    STAGED,
    Outcome,
    Transfer,
    link_digest,
    open_read,
    recorded_algorithm,
    split,
)

DEFAULT_STATE_DIR = '/var/lib/durable-mover'
MIB = 1024 * 1024
DEFAULTS = {
    'mode': 'move',
    'hash': 'auto',
    'verify_readback': True,
    'buffer_size': 16 * MIB,
    'checkpoint_size': 256 * MIB,
    'workers': 4,
    'processes': None,
    'state_dir': None,
    'job_id': None,
    'max_attempts': 3,
    'retry_failed': False,
    'lock_timeout': 0,
    'on_conflict': 'fail',
    'preserve': list(_metadata.PRESERVE_ALL),
    'special_files': 'skip',
    'remove_empty_dirs': None,
    'exclude': [],
    'cross_filesystems': False,
    'audit_log': None,
    'max_failures_reported': 100,
    'prepared': None,
    'batch_files': 256,
    'batch_bytes': 1024 * MIB,
}
CHOICES = {
    'mode': ('move', 'copy', 'verify'),
    'hash': _hashing.ALGORITHMS,
    'on_conflict': ('fail', 'skip', 'overwrite'),
    'special_files': ('skip', 'recreate'),
}
_SIZE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$', re.IGNORECASE)
_PART = re.compile(r'^\..+\.([0-9a-f]{12})\.part$')
# Why a destination directory cannot be made or opened, that concerns only its files
_NOT_A_DIRECTORY_HERE = frozenset((errno.ENOTDIR, errno.ELOOP, errno.EEXIST, errno.EACCES, errno.EPERM))


def parse_size(value, name='size'):
    """Bytes from an int or a human size ('16M', '16MiB', '1.5G'; binary units)."""
    if isinstance(value, bool):
        raise InputError('%s must be a size, not %r' % (name, value))
    if isinstance(value, int):
        if value < 0:
            raise InputError('%s must not be negative, got %d' % (name, value))
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise InputError('%s: cannot read %r as a size (examples: 16777216, 16M, 16MiB, 1G)'
                         % (name, value))
    number, unit = float(match.group(1)), match.group(2).lower()
    return int(number * (1024 ** ' kmgt'.index(unit or ' ')))


def _number(kind, key, value):
    """int/float of an option value, or an InputError naming the option."""
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise InputError('%s must be a number, got %r' % (key, value))


class Options(types.SimpleNamespace):
    """Validated options of one job (module parameters, defaults filled)."""

    @classmethod
    def from_params(cls, params):
        values = dict(DEFAULTS)
        values.update({k: v for k, v in params.items() if v is not None})
        for key in ('src', 'dest'):
            if not values.get(key):
                raise InputError('%s is required' % key)
        for key, choices in CHOICES.items():
            if values[key] not in choices:
                raise InputError('%s must be one of %s, got %r' % (key, ', '.join(choices), values[key]))
        values['buffer_size'] = parse_size(values['buffer_size'], 'buffer_size')
        values['checkpoint_size'] = parse_size(values['checkpoint_size'], 'checkpoint_size')
        values['batch_bytes'] = parse_size(values['batch_bytes'], 'batch_bytes')
        if values['buffer_size'] < 4096 or values['buffer_size'] > 1024 * MIB:
            raise InputError('buffer_size must be between 4 KiB and 1 GiB, got %d' % values['buffer_size'])
        if values['processes'] is not None:
            values['processes'] = _number(int, 'processes', values['processes'])
            if values['processes'] < 1:
                raise InputError('processes must be at least 1, got %d' % values['processes'])
        for key, low in (('workers', 1), ('max_attempts', 1), ('batch_files', 1),
                         ('max_failures_reported', 0)):
            values[key] = _number(int, key, values[key])
            if values[key] < low:
                raise InputError('%s must be at least %d, got %d' % (key, low, values[key]))
        values['lock_timeout'] = _number(float, 'lock_timeout', values['lock_timeout'])
        if values['lock_timeout'] < 0:
            raise InputError('lock_timeout must not be negative')
        for key in ('verify_readback', 'retry_failed', 'remove_empty_dirs', 'cross_filesystems'):
            if values[key] is not None and not isinstance(values[key], bool):
                raise InputError('%s must be true or false, got %r' % (key, values[key]))
        for key in ('preserve', 'exclude'):
            if not isinstance(values[key], (list, tuple)):
                raise InputError('%s must be a list, got %r' % (key, values[key]))
        unknown = set(values['preserve']) - set(_metadata.PRESERVE_ALL)
        if unknown:
            raise InputError('preserve: unknown item(s) %s (choose from %s)'
                             % (', '.join(sorted(unknown)), ', '.join(_metadata.PRESERVE_ALL)))
        if values['remove_empty_dirs'] is None:
            values['remove_empty_dirs'] = values['mode'] == 'move'
        job_id_ok = re.match(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z', str(values['job_id']))
        if values['job_id'] is not None and not job_id_ok:
            raise InputError('job_id may contain only letters, digits, ".", "_" and "-" '
                             '(got %r)' % values['job_id'])
        return cls(**values)


def _ancestors(path):
    """(dev, ino) of `path` or its nearest existing ancestor, and of every parent above."""
    path = os.path.abspath(path)
    while True:
        try:
            st = os.stat(path)
            yield (st.st_dev, st.st_ino)
        except OSError:
            pass
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _inside(inner, outer):
    return inner == outer or inner.startswith(outer.rstrip('/') + '/')


def _nearest_existing(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


class Job:
    """Where a job reads, writes and keeps its state; refuses impossible moves."""

    def __init__(self, opts):
        self.opts = opts
        src = os.path.abspath(os.path.expanduser(opts.src))
        dest = os.path.abspath(os.path.expanduser(opts.dest))
        self.src_arg = src
        try:
            src_st = os.lstat(src)
            self.src_exists = True
        except FileNotFoundError:
            self.src_exists = False
            src_st = None
        except OSError as exc:
            raise InputError('src is not accessible', src, exc.errno)
        self.tree = self.src_exists and os.path.isdir(src)
        if self.tree:
            self.src_root = os.path.realpath(src)
            self.single = None
            self.dest_root = os.path.realpath(dest)
            self.dest_name = None
            if os.path.lexists(self.dest_root) and not os.path.isdir(self.dest_root):
                raise InputError('dest exists and is not a directory', dest, errno.ENOTDIR)
        else:
            self.src_root = os.path.realpath(os.path.dirname(src))
            self.single = os.path.basename(src)
            if os.path.isdir(dest):
                self.dest_root, self.dest_name = os.path.realpath(dest), self.single
            else:
                self.dest_root = os.path.realpath(os.path.dirname(dest))
                self.dest_name = os.path.basename(dest)
        self.src_real = os.path.join(self.src_root, self.single) if self.single else self.src_root
        self.dest_real = os.path.join(self.dest_root, self.dest_name) if self.single else self.dest_root
        self.job_id = str(opts.job_id or hashlib.sha256(
            os.fsencode(self.src_real) + b'\0' + os.fsencode(self.dest_real)).hexdigest()[:16])
        self.job_tag = hashlib.sha256(self.job_id.encode('utf-8')).hexdigest()[:12]
        self.state_dir = os.path.join(os.path.abspath(opts.state_dir or DEFAULT_STATE_DIR), self.job_id)
        self.journal_path = os.path.join(self.state_dir, JOURNAL_NAME)
        self.identity = {'job_id': self.job_id, 'src': self.src_real, 'dest': self.dest_real}
        self.src_st = src_st

    def check(self, writing=True):
        """Refuse bad input before anything is touched."""
        if not self.src_exists:
            raise InputError('src does not exist', self.src_arg, errno.ENOENT)
        if self.single is None:
            if not os.access(self.src_root, os.R_OK | os.X_OK):
                raise InputError('src is not readable', self.src_root, errno.EACCES)
            if _inside(self.dest_root, self.src_root):
                raise InputError('dest is inside src (or the same directory); a move into itself '
                                 'would never end', self.dest_root)
            if _inside(self.src_root, self.dest_root):
                raise InputError('src is inside dest; choose a destination outside the source', self.src_root)
            src_id = (self.src_st.st_dev, self.src_st.st_ino) if not stat.S_ISLNK(self.src_st.st_mode) \
                else tuple(getattr(os.stat(self.src_root), a) for a in ('st_dev', 'st_ino'))
            if src_id in set(_ancestors(self.dest_root)):
                raise InputError('dest is inside src through a bind mount or link (same directory '
                                 'reached by another path)', self.dest_root)
            if os.path.isdir(self.dest_root):
                dst = os.stat(self.dest_root)
                if (dst.st_dev, dst.st_ino) in set(_ancestors(self.src_root)):
                    raise InputError('src is inside dest through a bind mount or link', self.src_root)
            if _inside(os.path.realpath(self.state_dir), self.src_root):
                raise InputError('state_dir is inside src: the journal would move with the data',
                                 self.state_dir)
            self._refuse_reached_through_mounts()
        else:
            if os.path.lexists(self.dest_real) and os.path.samefile(self.dest_real, self.src_arg) \
                    and not os.path.islink(self.src_arg):
                raise InputError('src and dest are the same file', self.dest_real)
        if not writing:
            return
        existing = _nearest_existing(self.dest_root)
        if _readonly(existing):
            raise InputError('dest is on a read-only filesystem', existing, errno.EROFS)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError('dest is not writable', existing, errno.EACCES)
        if self.opts.mode == 'move' and _readonly(self.src_root):
            raise InputError('src is on a read-only filesystem: its files cannot be removed '
                             '(use mode=copy)', self.src_root, errno.EROFS)

    def _refuse_reached_through_mounts(self):
        """dest or state_dir reachable inside src through a mount below src (a bind
        mount of it or of a directory above it, its filesystem mounted again), even
        one the scan would not enter; and src reachable inside dest that way."""
        table = _scan.mount_table()
        if not table:
            return          # no mount table here: the scan still stops at other devices
        for what, path in (('dest', self.dest_root), ('state_dir', self.state_dir)):
            mount = _scan.reached_below(table, os.path.realpath(_nearest_existing(path)), self.src_root)
            if mount is not None:
                raise InputError('%s %s is reachable inside src %s through a mount (a bind mount of it '
                                 'or of a directory above it, or its filesystem mounted again): the move '
                                 'would reach its own %s; unmount it, or choose another %s'
                                 % (what, display_path(path), display_path(self.src_root), what, what), mount)
        mount = _scan.reached_below(table, self.src_root, self.src_root)
        if mount is not None and self.opts.cross_filesystems:
            raise InputError('src %s is reachable inside itself through a mount: with cross_filesystems its '
                             'files would be moved twice; unmount it, or leave cross_filesystems false'
                             % display_path(self.src_root), mount)
        if os.path.isdir(self.dest_root):
            mount = _scan.reached_below(table, self.src_root, self.dest_root)
            if mount is not None:
                raise InputError('src %s is reachable inside dest %s through a mount: the move would '
                                 'write into its own source; unmount it, or choose another dest'
                                 % (display_path(self.src_root), display_path(self.dest_root)), mount)

    def dest_rel(self, rel):
        if self.single is not None:
            return self.dest_name
        return rel

    def excluder(self):
        """What a listing of the source leaves out: `exclude`, and this job's own parts."""
        return _scan.Excluder(self.opts.exclude, part_suffix='.%s.part' % self.job_tag)

    def boundary(self):
        """Where a listing of the source stops: its mount points (unless cross_filesystems)."""
        return _scan.Boundary(self.src_root, cross=self.opts.cross_filesystems)


def _readonly(path):
    try:
        return bool(os.statvfs(path).f_flag & getattr(os, 'ST_RDONLY', 1))
    except OSError:
        return False


class StopFlag:
    """Set by SIGTERM/SIGINT (or a caller's predicate); checked between buffers."""

    def __init__(self, predicate=None):
        self.predicate = predicate
        self.set = False
        self.forward = None     # passes the signal on (to worker processes)
        self._saved = {}

    def __call__(self):
        if not self.set and self.predicate is not None and self.predicate():
            self.set = True
        return self.set

    def _handle(self, signum, frame):
        self.set = True
        if self.forward is not None:
            self.forward(signum)

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._saved[sig] = signal.signal(sig, self._handle)

    def restore(self):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}


def run(params, should_stop=None):
    """Move (or copy) according to `params`; returns the module's result dict."""
    started = time.monotonic()
    opts = Options.from_params(params)
    job = Job(opts)
    if opts.mode == 'verify':
        return verify(job, started)
    algorithm = _hashing.resolve(opts.hash)
    if not job.src_exists:
        finished = _finished_single(job, algorithm, started)
        if finished is not None:
            return finished
    job.check()
    os.close(_durable.open_root(job.state_dir, create=True))
    _durable.sync_ancestors(job.state_dir)
    stop = StopFlag(should_stop)
    stop.install()
    try:
        with JobLock(job.state_dir, job.job_id, opts.lock_timeout):
            journal = Journal.open(job.journal_path, job.identity)
            try:
                return Runner(job, journal, algorithm, stop).run(started)
            except sqlite3.Error as exc:
                # e.g. the state dir's disk is full: nothing after the last commit is trusted
                raise JournalError('writing the journal failed (%s); the last commit is intact, '
                                   'run again once the cause is fixed' % exc, job.journal_path)
            finally:
                try:
                    journal.close()
                except sqlite3.Error:
                    pass
    finally:
        stop.restore()


def _journal_readonly(job):
    """The job's journal opened read-only, or None (none yet, or unusable)."""
    if not os.path.exists(job.journal_path):
        return None
    try:
        return Journal.open(job.journal_path, job.identity, create=False, readonly=True)
    except JournalError:
        return None


def _finished_single(job, algorithm, started):
    """A one-file job rerun after its source was moved away: report, change nothing."""
    journal = _journal_readonly(job)
    if journal is None:
        return None
    try:
        counts = journal.counts()
        if any(counts[s][0] for s in WORK_STATES + ('failed',)) or not counts['done'][0]:
            return None
        stats = _stats_from_counts(journal, counts)
        stats['files_already_done'] = counts['done'][0]
        return _result.build(job.job_id, job.journal_path, algorithm, stats, [],
                             time.monotonic() - started, False, True, False, mode=job.opts.mode)
    finally:
        journal.close()


def _stats_from_counts(journal, counts):
    stats = _result.empty_stats()
    kinds = journal.kind_counts()
    failed, quarantined = journal.failure_counts()
    stats['mounts_skipped'] = kinds.get('mount', 0)      # recorded as skipped entries
    stats['files_total'] = sum(c[0] for c in counts.values()) - kinds.get('dir', 0) - stats['mounts_skipped']
    stats['bytes_total'] = sum(c[1] for c in counts.values())
    stats['files_skipped'] = counts['skipped'][0] - stats['mounts_skipped']
    stats['files_failed'] = failed
    stats['files_quarantined'] = quarantined
    stats['dirs'] = max(0, journal.dir_count() - 1)
    stats['symlinks'] = kinds.get('symlink', 0)
    return stats


def _scope_options(opts):
    """The options that decide what a job takes from its source, as one text
    (recorded in the journal: a rerun that changes them reconsiders)."""
    return json.dumps({'special_files': opts.special_files, 'on_conflict': opts.on_conflict,
                       'exclude': sorted(opts.exclude), 'cross_filesystems': bool(opts.cross_filesystems)},
                      sort_keys=True)


class _Scope:
    """Whether a path below the source root is left out of the job by its
    options: below an excluded name, or inside a mount point the scan does
    not enter (each directory looked at once)."""

    def __init__(self, root, excluded, cross):
        self.root = root
        self.excluded = excluded
        self.boundary = None if cross else _scan.Boundary(root)
        self._mounts = {'': False}

    def leaves_out(self, rel):
        parts = rel.split('/')
        for index, name in enumerate(parts):
            prefix = '/'.join(parts[:index + 1])
            if self.excluded(prefix, name):
                return True
            if self.boundary is not None and index < len(parts) - 1 and self._mount(prefix):
                return True
        return False

    def _mount(self, rel):
        if rel not in self._mounts:
            try:
                st = os.lstat(os.path.join(self.root, rel))
                parent = os.lstat(os.path.join(self.root, os.path.dirname(rel)))
            except OSError:
                self._mounts[rel] = False
            else:
                self._mounts[rel] = self.boundary.why(rel, st, parent.st_dev) is not None
        return self._mounts[rel]


def _same_source(recorded, st, kind):
    """Is the name still the entry that was copied? Inode, size, mtime and
    ctime: a rewrite in place that keeps the size and restores the mtime still
    moves the ctime. The one change allowed is a ctime moved along with a name
    of the inode gone (nlink lower than when copied): removing one name of a
    hard link moves the ctime of the others (a run stopped between two such
    unlinks; _unlink checks every name of a batch before it removes any)."""
    if not recorded:
        return True
    values = [int(v) for v in recorded.split(':')]
    ino, size, mtime, ctime = values[:4]
    if st.st_ino != ino or st.st_mtime_ns != mtime or (kind == 'file' and st.st_size != size):
        return False
    nlink = values[4] if len(values) > 4 else None
    return st.st_ctime_ns == ctime or (nlink is not None and st.st_nlink < nlink)


class Runner:
    """One run of one job, holding its lock and journal."""

    def __init__(self, job, journal, algorithm, stop):
        self.job = job
        self.opts = job.opts
        self.journal = journal
        self.algorithm = algorithm
        self.stop = stop
        self.moves = self.opts.mode == 'move'
        self.moved = 0
        self.bytes_moved = 0
        self.changes = 0
        self.setid_cleared = 0         # entries that lost set-id/sticky bits with their owner
        self.readback_from_cache = []  # (rel, why) of files whose read-back could not reach the device
        self.errors = []
        self.fatal = False
        self.halted = False   # a transfer hit a fatal error: start no further file
        self.run_no = 0
        self.audit = None
        self.processes = 1 if job.single is not None else (self.opts.processes or _procs.default_count())
        self.fan = None                # worker processes, while they run
        self.prepared_dir = 0          # destination directories are made up to this dir id
        self.parents_synced = set()
        self.already_done = None       # files done before this run moved any
        self.done_ids = []             # sources removed, 'done' not yet recorded
        # one syncfs for a batch's directories on each root's filesystem
        # (_durable.DirsFlush), where syncfs_supported; else None
        self.dest_dirs = self.src_dirs = None

    # -- the run -----------------------------------------------------------------

    def run(self, started):
        opts, journal = self.opts, self.journal
        meta = journal.meta()
        counts = journal.counts()
        pending_before = sum(counts[s][0] for s in WORK_STATES)
        scanned_before = meta.get('scan_complete') == '1'
        # The last run died before its end (e.g. killed after its last file, before the directories).
        unfinished = float(meta.get('run_finished') or 0) < float(meta.get('run_started') or 0)
        resumed = pending_before > 0 or (meta.get('run', '0') != '0' and (not scanned_before or unfinished))
        # The options that decide what the job takes, as its last run had them
        # (none recorded: a journal of an earlier version, decided again once).
        options = _scope_options(opts)
        reconsider = meta.get('run', '0') != '0' and meta.get('options') != options
        before = _prepared_before(meta, opts.prepared, options)
        if before is not None:
            # The preflight listed the source into the journal for this run
            # (prepare_job): the state it found is the state this run resumes.
            pending_before, scanned_before, resumed = before
        self.run_no = journal.begin_run(opts.retry_failed or reconsider, opts.max_attempts)
        journal.set_meta(run_started='%.3f' % time.time(), run_pid=os.getpid(),
                         run_start_files=counts['done'][0], run_start_bytes=counts['done'][1],
                         options=options, prepared='')
        # A journal listed by a preflight for another run (its token not
        # given, or stale) is listed again, as a finished job's is.
        listed_for_another = bool(meta.get('prepared') or opts.prepared)
        if ((scanned_before and not pending_before) or reconsider or listed_for_another) and before is None:
            journal.rescan()          # a finished job: look for what is new at the source
        journal.commit()
        self.audit = AuditLog(opts.audit_log, self.job.job_id, self.run_no)
        self.audit.event('run_start', mode=opts.mode, src=display_path(self.job.src_real),
                         dest=display_path(self.job.dest_real),
                         resumed=resumed)
        src_root_fd = _durable.open_root(self.job.src_root)
        src_tree = _durable.DirTree(src_root_fd, self.job.src_root)
        # The tree's directories are made private (0700) and get their source's
        # mode in _finalize: a run that stops before never leaves one more open
        # than its source. Above the tree, or for one file, 0755 (as mkdir -p).
        dir_mode = 0o700 if 'mode' in opts.preserve and self.job.single is None else 0o755
        dst_root_fd = _durable.open_root(self.job.dest_root, create=True, mode=dir_mode)
        _durable.sync_ancestors(self.job.dest_root)     # found existing: its name may not be durable
        self.dst_tree = _durable.DirTree(dst_root_fd, self.job.dest_root, create=True, mode=dir_mode)
        self.src_tree = src_tree
        try:
            excluded = self.job.excluder()
            if reconsider:
                self._reconsider(excluded, meta.get('options'), options)
            scanned = _scan.scan(journal, src_tree, excluded, opts.special_files, self.moves,
                                 should_stop=self.stop, single=self.job.single,
                                 on_error=lambda rel, exc: self.audit.event('scan_error', rel, error=str(exc)),
                                 on_commit=self._scanned_some if self.processes > 1 else None,
                                 commit_entries=self._scan_commit_entries(),
                                 boundary=self.job.boundary(),
                                 on_mount=lambda rel, why: self.audit.event('mount_skipped', rel, reason=why))
            self._note_already_done()
            if scanned or self.fan is not None:
                self._work()
            if scanned and not self.stop() and not self.fatal and self.job.single is None:
                self._finalize()
            journal.set_meta(run_finished='%.3f' % time.time())
            journal.commit()
            journal.checkpoint_wal()
        except JournalError:
            raise       # (after the workers, below) the journal cannot tell a result: the run fails with it
        except MoverError as exc:
            journal.commit()
            self.errors.append(exc)
        except OSError as exc:
            # an I/O error where none was expected (a disk that died mid-run):
            # reported in the result like any other, never as a traceback
            journal.commit()
            self.errors.append(os_error(exc, 'the run stopped on an error', exc.filename))
        finally:
            if self.fan is not None:
                # the scan failed with workers running: they stop after the file
                # in hand (past the rows told, directories may not be made).
                # A journal error (sqlite3.Error, not caught above) may have
                # left this process's transaction open, holding the writers'
                # lock that the workers wait for: let it go first.
                journal.rollback()
                self.fan.signal(signal.SIGTERM)
                try:
                    self._collect_workers()
                except (MoverError, OSError) as exc:
                    # a worker's own error, met after the one that stopped the
                    # run: reported beside it, never in its place
                    self.errors.append(os_error(exc, 'a worker process stopped on an error'))
            src_tree.close()
            self.dst_tree.close()
        result = self._result(started, self.already_done or 0, resumed)
        self.audit.event('run_end', changed=result['changed'], complete=result['complete'],
                         files_moved=self.moved, msg=result.get('msg'))
        self.audit.close()
        return result

    def _reconsider(self, excluded, before, now):
        """The options that decide what the job takes changed since its last
        run. What earlier runs skipped (and failed, quarantined or not) is
        decided again under them (journal.reconsider, begin_run); what the
        earlier listing queued that they now leave out (below an exclude
        added, or inside a mount point now left alone) is forgotten, as if
        never listed, and stays at the source. The rescan that follows lists
        the source again from its root, so what they bring in is found."""
        journal = self.journal
        reopened = journal.reconsider()
        scope = _Scope(self.job.src_root, excluded, self.opts.cross_filesystems)
        files, after = [], 0
        while self.job.single is None:      # (one file: exclude and mounts do not apply)
            rows = journal.unstarted(after, 1000)
            if not rows:
                break
            after = rows[-1][0]
            files.extend(i for i, rel in rows if scope.leaves_out(rel))
        dirs = [i for i, rel in journal.dirs_after(0) if rel and self.job.single is None and scope.leaves_out(rel)]
        journal.forget(files, dirs)
        journal.commit()
        self.audit.event('options_changed', before=before, now=now, reconsidered=reopened,
                         left_out=len(files), dirs_left_out=len(dirs))

    def _work(self):
        """After the scan: move what it found (worker processes already
        started during the scan are told that it is over, then collected)."""
        if self.fan is None:
            pending = self._pending_files()
            if not pending:
                return
            count = min(self.processes, pending // self.opts.batch_files)
            if count < 2:
                if self.job.single is None:
                    self._prepare_dest_dirs()
                self._work_share(None, None)
                return
            self._start_workers(count)
        self._tell_workers()
        self._collect_workers()

    def _pending_files(self):
        counts = self.journal.counts()
        return sum(counts[s][0] for s in WORK_STATES)

    def _scan_commit_entries(self):
        """With worker processes, the scan's commits feed them: a batch for each is enough."""
        if self.processes < 2:
            return _scan.COMMIT_ENTRIES
        return min(_scan.COMMIT_ENTRIES, self.processes * self.opts.batch_files)

    def _scanned_some(self):
        """The scan committed a part: workers may start on it (once there is
        work for all of them), or go on to what it added."""
        if self.fan is None:
            if self.processes < 2 or self.stop():
                return
            if self._pending_files() < self.processes * self.opts.batch_files:
                return
            self._start_workers(self.processes)
        self._tell_workers()

    def _start_workers(self, count):
        """Fork `count` worker processes, each moving its share of the rows
        (_procs.py). Requires: no open transaction, no thread but this one."""
        self.journal.commit()
        self._note_already_done()
        self._prepare_dest_dirs()
        self.fan = _procs.Workers(count)
        self.stop.forward = self.fan.signal
        with self.journal.closed_for_fork():
            self.fan.start(lambda index, feed: self._worker((index, count), feed))

    def _note_already_done(self):
        """Files done before this run moved any (once: workers may start mid-scan)."""
        if self.already_done is None:
            self.already_done = self.journal.counts()['done'][0]

    def _tell_workers(self):
        """Workers may go up to the last row scanned: its directories are made."""
        self._prepare_dest_dirs()
        self.fan.tell(self.journal.last_file_id())

    def _collect_workers(self):
        """Wait for the workers and add up what they did."""
        fan, self.fan = self.fan, None
        try:
            results = fan.wait()
        finally:
            self.stop.forward = None
        for _index, value in results:
            if isinstance(value, MoverError):
                self.errors.append(value)
                continue
            self.moved += value['moved']
            self.bytes_moved += value['bytes']
            self.changes += value['changes']
            self.setid_cleared += value['setid_cleared']
            self.readback_from_cache.extend(value['readback_from_cache'])
            self.errors.extend(value['errors'])
            self.fatal = self.fatal or value['fatal']

    def _prepare_dest_dirs(self):
        """Before a file moves into it, a destination directory exists and its
        name is durable. Made here, parents first, by the process that scans,
        they never race between worker processes; one found existing gets its
        parent fsynced (once per parent and run), as a killed run may have made
        it and died before that fsync. One that cannot be made (a file or link
        in the way, no permission) is left to its files, each of which then
        fails saying why; any other error (a failed fsync) stops the run.
        Where syncfs_supported, the parents of the directories it creates are
        made durable at the end, all with one syncfs (_sync_dirs)."""
        tree, flush = self.dst_tree, None
        if _durable.syncfs_supported(tree.root_fd):
            flush = _durable.DirsFlush.open(tree.root_fd, tree.root_path)    # before the mkdirs
            tree.unsynced = set()
        try:
            for dir_id, rel in self.journal.dirs_after(self.prepared_dir):
                self.prepared_dir = dir_id
                if not rel:
                    continue
                created = tree.created
                try:
                    tree.get(rel)
                except MoverError as exc:
                    if exc.errno not in _NOT_A_DIRECTORY_HERE:
                        raise
                    continue
                parent = split(rel)[0]
                if tree.created == created and parent not in self.parents_synced:
                    _durable.sync_dir(tree.get(parent), tree.full(parent))
                    self.parents_synced.add(parent)
                tree.trim(256)
            if flush is not None:
                self._sync_dirs(tree, tree.unsynced, flush)
        finally:
            tree.unsynced = None
            if flush is not None:
                flush.close()

    def _sync_dirs(self, tree, rels, flush):
        """The directories `rels` of `tree` are durable (their entries, and
        their own metadata): those on the tree root's filesystem with one
        syncfs (`flush`, a DirsFlush opened before their changes), the others
        (on a filesystem mounted inside the tree) each with an fsync.
        Requires: every change to cover (mkdir, rmdir, chmod, utimes, xattrs)
        returned. A failure stops the run. Used for the directories
        _prepare_dest_dirs made (their parents) and for _finalize's."""
        batched = []
        for rel in sorted(rels):
            fd = tree.get(rel)
            if flush.covers(fd):
                batched.append(rel)
            else:
                _durable.sync_dir(fd, tree.full(rel))
            tree.trim(256)
        if batched:
            try:
                flush.sync()
            except MoverError as exc:
                if not flush.may_fall_back(exc):
                    raise
                # maybe another file's error: each directory's own fsync tells
                self.audit.event('batch_dir_flush_failed', error=str(exc), dirs=len(batched))
                for rel in batched:
                    _durable.sync_dir(tree.get(rel), tree.full(rel))
                    tree.trim(256)

    def _worker(self, share, feed):
        """In a worker process: move one share of the rows; return what was done."""
        self.stop.forward = None
        self.journal = self.journal.reconnect()    # the parent's was closed before the fork
        self.moved = self.bytes_moved = self.changes = self.setid_cleared = 0
        self.readback_from_cache = []
        self.errors = []
        created = self.dst_tree.created
        try:
            self._work_share(share, feed)
        except MoverError as exc:
            self.errors.append(exc)
        finally:
            self.journal.close()
        return {'moved': self.moved, 'bytes': self.bytes_moved,
                'changes': self.changes + self.dst_tree.created - created,
                'setid_cleared': self.setid_cleared, 'readback_from_cache': self.readback_from_cache,
                'errors': self.errors, 'fatal': self.fatal}

    def _work_share(self, share, feed):
        """The batch loop over the rows of `share` (all rows if None). `feed`:
        in a worker process, the parent's word on how far the scan is."""
        opts = self.opts
        transfer = Transfer(self.src_tree, self.dst_tree, self.job.dest_rel, self.journal, self.algorithm,
                            opts.verify_readback, opts.buffer_size, opts.checkpoint_size,
                            opts.preserve, opts.on_conflict, opts.special_files, self.job.job_tag,
                            # mode=copy never takes the rename path: it would remove the source
                            os.fstat(self.dst_tree.root_fd).st_dev if self.moves else None, self.stop)
        if _durable.syncfs_supported(self.dst_tree.root_fd):
            # opened here, in the process that writes, before it writes
            transfer.batch_flush = _durable.BatchFlush(self.dst_tree.root_fd, self.dst_tree.root_path)
            self.dest_dirs = _durable.DirsFlush(transfer.batch_flush.fd, self.dst_tree.root_path)
        if self.moves and _durable.syncfs_supported(self.src_tree.root_fd):
            self.src_dirs = _durable.DirsFlush.open(self.src_tree.root_fd, self.src_tree.root_path)
        self.transfer = transfer
        # Workers overlap the per-file flushes of filesystems without a batch
        # flush (FUSE, NFS, tmpfs). Where the batch is flushed at once, one
        # thread copies faster (benchmarks/: 20,000 x 4 KiB ext4 -> xfs, 2.8 s
        # in one thread, 4.4 s in four, which mostly wait for each other's GIL).
        parallel = opts.workers > 1 and transfer.batch_flush is None
        pool = ThreadPoolExecutor(max_workers=opts.workers) if parallel else None
        upto, scanning = None, False
        # The directory fds a batch asks for stay open until its end (DirTree.trim):
        # a batch touches at most as many directories as a tree keeps open.
        max_dirs = min(self.src_tree.budget, self.dst_tree.budget)
        if feed is not None:
            upto, ended = feed.wait()
            scanning = not ended
        try:
            after = 0
            while not self.stop() and not self.fatal:
                rows = self.journal.fetch_work(after, opts.batch_files, share, upto if scanning else None)
                size = 0
                dirs = set()
                for index, row in enumerate(rows):
                    size += row.size
                    dirs.add(row.path.rpartition('/')[0])
                    if row.leader is not None:
                        dirs.add(('leader', row.leader))      # a link asks for its first name's too
                    if size >= opts.batch_bytes or len(dirs) >= max_dirs:
                        rows = rows[:index + 1]
                        break
                if scanning and len(rows) < opts.batch_files and size < opts.batch_bytes and len(dirs) < max_dirs:
                    # less than a batch while the scan goes on: wait for more
                    upto, ended = feed.wait()
                    if ended:
                        # again from the start: the names of hard-linked files waited
                        # (and what this run did is no longer work: 'done' recorded)
                        scanning = False
                        after = 0
                        if self._record_done():
                            self.journal.commit()
                    continue
                if not rows:
                    break
                after = rows[-1].id
                self._batch(rows, pool)
                self.src_tree.trim(256)
                self.dst_tree.trim(256)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            if self.src_dirs is not None:
                self.src_dirs.close()
            self.dest_dirs = self.src_dirs = None
            if transfer.batch_flush is not None:
                transfer.batch_flush.close()
            self.src_tree.clear()
            self.dst_tree.clear()
            if self._record_done():
                self.journal.commit()
                _faults.point('after_journal_done')

    # -- one batch ---------------------------------------------------------------

    def _batch(self, rows, pool):
        hardlinks = 'hardlinks' in self.opts.preserve
        todo, outcomes = [], []
        for row in rows:
            outcome = self._recover_copied(row) if row.state == 'copied' else None
            if outcome is None:
                todo.append(row)
            else:
                outcomes.append(outcome)
        followers = [r for r in todo if hardlinks and r.leader is not None and r.kind == 'file']
        first = [r for r in todo if not (hardlinks and r.leader is not None and r.kind == 'file')]
        # Entries on the destination's filesystem are renamed: a metadata
        # operation each, cheaper here than handing it to a worker thread.
        renames = [r for r in first if self.moves and r.dev == self.transfer.same_device]
        copies = [r for r in first if not (self.moves and r.dev == self.transfer.same_device)]
        outcomes.extend(self._transfer_one(r) for r in renames)
        self.transfer.prefetch(copies)
        if pool is not None and len(copies) > 1:
            outcomes.extend(pool.map(self._transfer_one, copies))
        else:
            outcomes.extend(self._transfer_one(r) for r in copies)
        staged = [o for o in outcomes if o.status == STAGED]
        try:
            if staged:
                outcomes = [o for o in outcomes if o.status != STAGED]
                outcomes.extend(self._finish_staged(staged))
        finally:
            self.transfer.release()
        in_place = {o.row.id: o for o in outcomes if o.status in (MOVED, IDENTICAL)}
        for row in followers:
            outcomes.append(self._follow(row, in_place) if not self.halted else Outcome(row, INTERRUPTED))
        self._commit_batch(outcomes)

    def _finish_staged(self, staged):
        """One flush of the destination filesystem for the batch's small copies
        (requires: their last writes returned), then verify and rename each."""
        try:
            self.transfer.batch_flush.sync()
        except MoverError as exc:
            return self._copy_one_by_one(staged, exc)
        _faults.point('after_part_sync')
        self.transfer.prefetch_read_back(staged)
        return [self.transfer.finish(o) for o in staged]

    def _copy_one_by_one(self, staged, error):
        """The batch's flush failed. The error may come from any file of the
        filesystem written since this process's last flush (another program's,
        too), and a failed flush is never retried as if the data were safe: every
        part of the batch is discarded, and each file copied again and flushed
        on its own, so that only a file whose own flush fails is charged."""
        self.audit.event('batch_flush_failed', error=str(error), files=len(staged))
        flush, self.transfer.batch_flush = self.transfer.batch_flush, None
        try:
            outcomes = []
            for outcome in staged:
                self.transfer.discard(outcome)
                outcomes.append(self._transfer_one(outcome.row))
            return outcomes
        finally:
            self.transfer.batch_flush = flush

    def _transfer_one(self, row):
        """Transfer one row, unless a fatal error (destination full or read-only) stopped the
        run: the rest of the batch then stays pending instead of failing the same way."""
        if self.halted:
            return Outcome(row, INTERRUPTED)
        outcome = self.transfer.run(row)
        if outcome.fatal:
            self.halted = True
        return outcome

    def _recover_copied(self, row):
        """A row the journal says is copied (a run stopped between its journal
        commit and recording its source removed). If the source is gone, the
        destination is all there is: it is recorded done. If the source is still
        there, it is removed only once the destination is verified again from
        the disk (made durable, size and recorded hash); otherwise the file is
        copied again (None), over the destination the journal says is ours."""
        reldir, name = split(row.path)
        path = self.src_tree.full(row.path)
        try:
            src_dir = self.src_tree.get(reldir)
            os.lstat(name, dir_fd=src_dir)
        except (OSError, MoverError):
            src_dir = None
        if src_dir is None:
            dreldir, dname = split(self.job.dest_rel(row.path))
            try:
                os.lstat(dname, dir_fd=self.dst_tree.get(dreldir))
            except (OSError, MoverError):
                return Outcome(row, FAILED, error=MoverError(
                    'neither the source nor the destination exists although the journal recorded a '
                    'durable copy: the destination was removed by someone else', self.dst_tree.full(dname)))
            return Outcome(row, MOVED, method=row.method or 'copy', digest=row.hash, src_ident=row.ident)
        try:
            verified = self.transfer.in_place(row, src_dir, name, path)
        except (OSError, MoverError) as exc:
            return Outcome(row, FAILED, error=os_error(exc, 'cannot verify the copy recorded in the journal',
                                                       path))
        if verified:
            return Outcome(row, MOVED, method=row.method or 'copy', digest=row.hash, src_ident=row.ident)
        self.audit.event('recopy', row.path, reason='the destination no longer matches the copy the '
                         'journal recorded; copied again from the source, which was kept')
        return None

    def _follow(self, row, in_place):
        """A further name of a hard-link group: link to the first name at the
        destination (`in_place`: this batch's outcomes in place, by row id)."""
        leader = self.journal.get(row.leader)
        copied_ident = None
        if leader is not None and row.leader in in_place:
            copied_ident = in_place[row.leader].src_ident
        elif leader is not None and leader.state in ('copied', 'done'):
            copied_ident = leader.ident
        else:
            leader = None
        if leader is None:
            reldir, name = split(row.path)
            try:
                st = os.lstat(name, dir_fd=self.src_tree.get(reldir))
            except (OSError, MoverError):
                st = None
            if st is not None and st.st_dev == self.transfer.same_device:
                return self.transfer.run(row)
            return Outcome(row, FAILED, error=MoverError(
                'the first name of its hard-link group was not moved, so this one waits',
                self.src_tree.full(row.path)))
        # The inode the first name's copy was made from (None: not known, e.g.
        # a journal of an older run; the link is then checked by the scan's inode only)
        copied_ino = int(copied_ident.split(':')[0]) if copied_ident else row.ino
        return self.transfer.run(row, leader=(self.job.dest_rel(leader.path), copied_ino))

    def _commit_batch(self, outcomes):
        """Steps 2-5: directories durable, journal, unlink, source dirs, done."""
        journal = self.journal
        ok = [o for o in outcomes if o.status in (MOVED, IDENTICAL)]
        early = []
        if _faults.broken('unlink_before_journal'):
            # test-only: the sources go (durably) right after the renames, before
            # the destination is durable and before the journal knows
            early = self._unlink([o for o in ok if self.moves and o.method != 'rename'])
            self._sync_src_dirs(early)
        # 2. destination directories durable (and source dirs of renames)
        synced = self._sync_dest_dirs(ok)
        self._sync_src_dirs([o for o in ok if o.status == MOVED and o.method == 'rename'], synced)
        _faults.point('after_dest_dir_sync')
        copied = [o for o in ok if o.status in (MOVED, IDENTICAL) and self.moves and o.method != 'rename']
        # 3. the journal records where every file is, durably
        in_place = []
        for o in outcomes:
            if o.status in (MOVED, IDENTICAL):
                done = o.method == 'rename' or not self.moves
                in_place.append(('done' if done else 'copied', o.digest, o.method, self.run_no,
                                 o.src_ident, o.row.id))
                if o.setid_cleared:
                    self._note_setid_cleared(o.row.path, o.setid_cleared)
                if o.readback:
                    self.readback_from_cache.append((o.row.path, o.readback))
                    self.audit.event('readback_from_cache', o.row.path, reason=o.readback)
                if done and o.status == MOVED:
                    self._count_moved(o)
            else:
                self._record_other(o)
        done = self._record_done() + sum(1 for record in in_place if record[0] == 'done')
        journal.record_in_place(in_place)
        journal.commit()
        if done:
            _faults.point('after_journal_done')
        _faults.point('after_journal_copied')
        # 4. only now may sources be removed
        removed = self._unlink(copied) if not early else copied
        self._sync_src_dirs(removed)
        journal.commit()        # failures _unlink recorded, if any
        _faults.point('after_src_dir_sync')
        # 5. 'done' is recorded with the next batch's commit (one commit a batch,
        # not two): until then the journal says 'copied', which a run after a
        # crash completes (the destination is there, the source already gone)
        self.done_ids.extend(o.row.id for o in removed)
        for o in removed:
            self._count_moved(o)

    def _sync_dest_dirs(self, ok):
        """Step 2: the directories the batch's entries in `ok` were renamed into
        are durable (requires: every rename of the batch returned). Those on the
        destination root's filesystem with one syncfs where it is supported
        (self.dest_dirs), the others each with an fsync. The entries of a
        directory whose flush failed fail (their sources are kept). Returns
        the DirsFlush that ran and succeeded, or None."""
        dest_dirs = {}
        for o in ok:
            dest_dirs.setdefault(split(self.job.dest_rel(o.row.path))[0], []).append(o)
        batched = []
        for reldir in sorted(dest_dirs):
            try:
                if self.dest_dirs is not None and self.dest_dirs.covers(self.dst_tree.get(reldir)):
                    batched.append(reldir)
                    continue
            except MoverError as exc:
                for o in dest_dirs[reldir]:
                    o.status, o.error = FAILED, exc
                continue
            self._sync_dest_dir(reldir, dest_dirs[reldir])
        if not batched:
            return None
        try:
            self.dest_dirs.sync()
        except MoverError as exc:
            if not self.dest_dirs.may_fall_back(exc):
                for reldir in batched:
                    for o in dest_dirs[reldir]:
                        o.status, o.error = FAILED, exc
                return None
            # The error may be any file's on the filesystem (another worker's
            # part whose write failed): each directory's own fsync tells
            # whether its renames are on disk, as where syncfs is not used.
            self.audit.event('batch_dir_flush_failed', error=str(exc), dirs=len(batched))
            for reldir in batched:
                self._sync_dest_dir(reldir, dest_dirs[reldir])
            return None
        return self.dest_dirs

    def _sync_dest_dir(self, reldir, outcomes):
        """fsync one destination directory after the renames of `outcomes`
        into it (on xfs, with a file just renamed there as its probe); if it
        fails, they fail (their sources are kept)."""
        files = [o for o in outcomes if o.row.kind == 'file']
        probe = split(self.job.dest_rel(files[0].row.path))[1] if files else None
        try:
            _durable.sync_dest_dir(self.dst_tree.get(reldir), self.dst_tree.full(reldir), probe=probe)
        except MoverError as exc:
            for o in outcomes:
                o.status, o.error = FAILED, exc

    def _record_done(self):
        """Record the last batch's removed sources as done (in the transaction
        of the next commit). Returns how many."""
        ids, self.done_ids = self.done_ids, []
        if ids:
            self.journal.mark_done(ids)
        return len(ids)

    def _record_other(self, o):
        """Record an outcome that did not bring its entry into place."""
        journal, row = self.journal, o.row
        if o.status in (FAILED, RETRY):
            error = o.error if o.error is not None else 'failed'
            journal.fail(row.id, str(error), self.opts.max_attempts, self.run_no)
            self.audit.event('file_failed', row.path, error=str(error))
            if o.fatal and not self.fatal:
                self.fatal = True
                self.errors.append(error)
        elif o.status == SKIPPED:
            journal.update(row.id, state='skipped', error=str(o.error), run=self.run_no)
            self.audit.event('file_skipped', row.path, reason=str(o.error))

    def _note_setid_cleared(self, rel, source_mode):
        """An entry whose copy could not have its source's owner, so it got the
        source's mode without set-id and sticky bits (_metadata.apply)."""
        self.setid_cleared += 1
        self.audit.event('setid_cleared', rel, source_mode='%04o' % source_mode,
                         mode='%04o' % (source_mode & ~_metadata.SETID_BITS))

    def _count_moved(self, o):
        self.moved += 1
        self.changes += 1
        # a further name of a hard-linked file counts no bytes, as in the journal's totals
        self.bytes_moved += o.bytes if o.row.leader is None else 0
        self.audit.event('file_moved', o.row.path, method=o.method, bytes=o.bytes)

    def _unlink(self, copied):
        """Step 4: remove each source whose copy the journal holds durably, and
        that is still the entry that was copied. Every name is checked before
        any is removed (removing a name of a hard link changes the others' ctime)."""
        removed, unchanged = [], []
        for o in copied:
            reldir, name = split(o.row.path)
            path = self.src_tree.full(o.row.path)
            try:
                fd = self.src_tree.get(reldir)
                try:
                    st = os.lstat(name, dir_fd=fd)
                except FileNotFoundError:
                    removed.append(o)          # already gone (an earlier run removed it)
                    continue
                if not _same_source(o.src_ident, st, o.row.kind):
                    raise MoverError('source changed after it was copied; it was kept and the '
                                     'destination holds the earlier content', path)
                unchanged.append(o)
            except MoverError as exc:
                self._unlink_failed(o, exc)
        for o in unchanged:
            reldir, name = split(o.row.path)
            path = self.src_tree.full(o.row.path)
            try:
                _durable.unlink_source(self.src_tree.get(reldir), name, path)
                _faults.point('after_unlink')
                removed.append(o)
            except MoverError as exc:
                self._unlink_failed(o, exc)
        return removed

    def _unlink_failed(self, o, exc):
        self.journal.fail(o.row.id, str(exc), self.opts.max_attempts, self.run_no)
        self.audit.event('file_failed', o.row.path, error=str(exc))

    def _sync_src_dirs(self, outcomes, synced=None):
        """Each source directory that lost names is durable (requires: the
        unlinks/renames returned): those on the source root's filesystem with
        one syncfs where it is supported (self.src_dirs), the others each with
        an fsync; none on the filesystem of `synced`, a DirsFlush that ran
        after these renames. A failure stops the run."""
        batched = []
        for reldir in sorted({split(o.row.path)[0] for o in outcomes}):
            try:
                fd = self.src_tree.get(reldir)
                if synced is not None and synced.covers(fd):
                    continue
                if self.src_dirs is not None and self.src_dirs.covers(fd):
                    batched.append(reldir)
                    continue
                _durable.sync_dir(fd, self.src_tree.full(reldir))
            except MoverError as exc:
                self._src_dir_failed(exc)
        if batched:
            try:
                self.src_dirs.sync()
            except MoverError as exc:
                if not self.src_dirs.may_fall_back(exc):
                    self._src_dir_failed(exc)
                    return
                # maybe another file's error: each directory's own fsync tells
                self.audit.event('batch_dir_flush_failed', error=str(exc), dirs=len(batched))
                for reldir in batched:
                    try:
                        _durable.sync_dir(self.src_tree.get(reldir), self.src_tree.full(reldir))
                    except MoverError as exc2:
                        self._src_dir_failed(exc2)

    def _src_dir_failed(self, exc):
        if exc.errno != errno.ENOENT:
            self.fatal = True
            self.errors.append(exc)

    # -- directories -------------------------------------------------------------

    def _finalize(self):
        """Once no file is left to move: directories' metadata, empty source dirs, stale parts.

        In two steps, each made durable at once where syncfs_supported (one
        syncfs of the root's filesystem, _sync_dirs; elsewhere each directory
        is fsynced as it changes): first the metadata of every destination
        directory (read from the source directory for its xattrs, so before
        any is removed), then the removal of the emptied source directories.
        A source directory is removed only once its destination's metadata
        is durable; the journal records the directories finished after both.
        A run killed in between finds them unfinished and does them again."""
        counts = self.journal.counts()
        if any(counts[s][0] for s in WORK_STATES):
            return
        dirs = self.journal.dirs_for_finalize()
        mounts = _scan.Boundary(self.job.src_root)     # mounted now (cross_filesystems, or since the scan)
        for _id, rel, *_rest in dirs:
            self.dst_tree.get(rel)
            self.dst_tree.trim(1024)
        self.changes += self.dst_tree.created
        flush = self._finalize_flush(self.dst_tree)        # opened before the changes it covers
        try:
            changed = [rel for _id, rel, *meta in reversed(dirs) if self._dest_dir_metadata(rel, *meta, flush)]
            if flush is not None and not _faults.broken('no_finalize_dir_sync'):
                self._sync_dirs(self.dst_tree, changed, flush)
        finally:
            if flush is not None:
                flush.close()
        removing = self.moves and self.opts.remove_empty_dirs
        flush = self._finalize_flush(self.src_tree) if removing else None
        try:
            done, removed = [], []
            for dir_id, rel, *_meta in reversed(dirs):
                kept = False
                if removing and rel:
                    kept, gone = self._remove_source_dir(rel, mounts, sync=flush is None)
                    if gone:
                        removed.append(rel)
                if not kept:
                    done.append(dir_id)
                self.src_tree.trim(1024)
            if flush is not None:
                # (a parent removed too: its own parent's flush covers both)
                self._sync_dirs(self.src_tree, {split(rel)[0] for rel in removed} - set(removed), flush)
        finally:
            if flush is not None:
                flush.close()
        for dir_id in done:
            self.journal.dir_done(dir_id)
        self.journal.commit()

    @staticmethod
    def _finalize_flush(tree):
        """A DirsFlush for _finalize's changes in `tree`, where syncfs_supported; else None."""
        if _durable.syncfs_supported(tree.root_fd):
            return _durable.DirsFlush.open(tree.root_fd, tree.root_path)
        return None

    def _dest_dir_metadata(self, rel, mode, uid, gid, atime_ns, mtime_ns, flush):
        """The source directory's metadata on its destination (and this job's
        stale parts removed from it). Made durable here without `flush`;
        with it, by the caller. Returns whether anything changed."""
        self._clean_parts(rel)
        src_fd = None
        try:
            src_fd = self.src_tree.get(rel)
        except MoverError:
            pass
        dst_fd = self.dst_tree.get(rel)
        st = types.SimpleNamespace(st_mode=mode, st_uid=uid, st_gid=gid, st_atime_ns=atime_ns,
                                   st_mtime_ns=mtime_ns)
        try:
            xattrs = _metadata.read_xattrs(fd=src_fd) if src_fd is not None and \
                'xattrs' in self.opts.preserve else None
            current = os.fstat(dst_fd)
            have = _metadata.read_xattrs(fd=dst_fd) if xattrs else None
        except OSError as exc:        # e.g. EIO: the destination's filesystem shut down
            raise os_error(exc, 'cannot read the metadata of directory', self.dst_tree.full(rel))
        changed = False
        if _metadata.differs(st, current, self.opts.preserve) or (xattrs and xattrs != have):
            if _metadata.apply(st, self.opts.preserve, fd=dst_fd, xattrs=xattrs,
                               path_for_errors=self.dst_tree.full(rel)):
                self._note_setid_cleared(rel, stat.S_IMODE(mode))
            if flush is None and not _faults.broken('no_finalize_dir_sync'):
                _durable.sync_dir(dst_fd, self.dst_tree.full(rel))   # the directory's own metadata
            self.changes += 1
            changed = True
        self.src_tree.trim(1024)
        self.dst_tree.trim(1024)
        return changed

    def _remove_source_dir(self, rel, mounts, sync=True):
        """Remove the emptied source directory `rel` (its parent fsynced after,
        with `sync`). Returns (kept, removed): kept, when it is still there
        to look at again next run (a mount point, or it still holds files);
        removed, when this call removed it."""
        reldir, name = split(rel)
        try:
            parent = self.src_tree.get(reldir)
        except MoverError:
            return False, False
        self.src_tree.clear()        # no fd of ours may keep the directory open
        parent = self.src_tree.get(reldir)
        why = mounts.mounted(parent, name, rel)
        if why is not None:
            # never removed (it would fail with EBUSY): kept, looked at again next run
            self.audit.event('mount_point_kept', rel, reason=why)
            return True, False
        try:
            os.rmdir(name, dir_fd=parent)
        except FileNotFoundError:
            return False, False
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return True, False         # it still holds excluded, failed or new files
            if exc.errno == errno.EBUSY:
                self.audit.event('mount_point_kept', rel, reason='mounted on since this run began')
                return True, False
            self.errors.append(os_error(exc, 'cannot remove empty source directory', self.src_tree.full(rel)))
            return True, False
        if sync:
            _durable.sync_dir(parent, self.src_tree.full(reldir))
        self.changes += 1
        self.audit.event('dir_removed', rel)
        return False, True

    def _clean_parts(self, rel):
        """Remove this job's orphan part files: its own tag, and never a name the
        journal records as an entry of the job. Another tag's part is left for its
        own job to remove; a name of that shape may be a user's file, just moved
        here with its old mtime."""
        try:
            fd = self.dst_tree.get(rel)
            names = os.listdir(fd)
        except (OSError, MoverError):
            return
        removed = False
        for name in names:
            match = _PART.match(name)
            if not match or match.group(1) != self.job.job_tag:
                continue
            if self.journal.get_by_path(_scan.join(rel, name)) is not None:
                continue
            try:
                st = os.lstat(name, dir_fd=fd)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                _durable.remove_quietly(fd, name)
                self.audit.event('part_removed', (rel + '/' if rel else '') + name)
                removed = True
        if removed:
            _durable.sync_dir(fd, self.dst_tree.full(rel))

    # -- result ------------------------------------------------------------------

    def _result(self, started, already_done, resumed):
        journal = self.journal
        counts = journal.counts()
        stats = _stats_from_counts(journal, counts)
        stats['files_moved'] = self.moved
        stats['files_already_done'] = max(0, already_done)
        stats['bytes_moved'] = self.bytes_moved
        stats['resumed'] = bool(resumed)
        stats['hardlinks'] = journal.hardlink_count()
        limit = self.opts.max_failures_reported
        skipped = journal.skipped(limit)
        stats['special_skipped'] = skipped.get('special_file', (0,))[0]
        stats['conflicts_skipped'] = skipped.get('conflict', (0,))[0]
        stats['setid_cleared'] = self.setid_cleared
        stats['readback_from_cache'] = len(self.readback_from_cache)
        cached = [_result.not_from_device(self.dst_tree.full(self.job.dest_rel(p)), why) for p, why in
                  self.readback_from_cache[:self.opts.max_failures_reported]]
        failures = [_result.failure(self.src_tree.full(p), e, a, q) for p, e, a, q in
                    journal.failures(self.opts.max_failures_reported)]
        meta = journal.meta()
        complete = (meta.get('scan_complete') == '1' and not any(counts[s][0] for s in WORK_STATES)
                    and not stats['files_failed'] and not self.errors)
        mounts = [_result.mount_point(self.src_tree.full(p), why) for p, why in
                  journal.mount_points(self.opts.max_failures_reported)]
        skipped = [_result.skipped_entry(self.src_tree.full(p), kind, why)
                   for kind, (_count, sample) in skipped.items() for p, why in sample]
        return _result.build(self.job.job_id, self.job.journal_path, self.algorithm, stats, failures,
                             time.monotonic() - started, self.changes > 0, complete, self.stop(),
                             errors=self.errors, mode=self.opts.mode, mount_points=mounts,
                             readback_from_cache=cached, skipped=skipped)


# -- check mode and verify ---------------------------------------------------------


def plan(params, on_entry=None):
    """Check mode: what a run would do, changing nothing (not even the journal).
    `on_entry(rel, st, action)`: called for each directory below the root
    ('dir') and each entry the run would bring to the destination ('rename'
    or 'copy'), e.g. to estimate the space it takes (_preflight)."""
    started = time.monotonic()
    opts = Options.from_params(params)
    job = Job(opts)
    algorithm = _hashing.resolve(opts.hash)
    if not job.src_exists:
        finished = _finished_single(job, algorithm, started)
        if finished is not None:
            finished['plan'] = dict.fromkeys(_result.PLAN_KEYS, 0)
            finished['msg'] = _result.summary(finished)
            return finished
    job.check(writing=False)
    journal = None
    if os.path.exists(job.journal_path):
        try:
            journal = Journal.open(job.journal_path, job.identity, create=False, readonly=True)
        except JournalError as exc:
            if 'journal is empty' not in exc.message:
                raise
            journal = None       # created by a run killed at once: it holds nothing
    try:
        return _Planner(job, algorithm, journal, on_entry).run(started)
    finally:
        if journal is not None:
            journal.close()


def _prepared_before(meta, token, options):
    """(pending_before, scanned_before, resumed) that the preflight recorded
    when it listed the source for the run holding `token`, or None: no token,
    another one (a run or another preflight came in between), or other scope
    options. None means the run lists the source itself, as without a token."""
    if not token or meta.get('prepared') != token or meta.get('prepared_options') != options:
        return None
    try:
        found = json.loads(meta.get('prepared_before') or '')
        return int(found['pending']), bool(found['scanned']), bool(found['resumed'])
    except (ValueError, KeyError, TypeError):
        return None


def prepare(params, token, on_entry=None, bound=None):
    """The preflight's listing of the source, made the move's scan: holding the
    job's lock (never waiting for it), the source is scanned into the job's
    journal as a run would scan it (a finished job's journal rescanned first),
    and `token` is recorded with the scope options; a move given the token
    (option `prepared`) then moves what the journal holds without listing the
    source again. The plan is made from the journal's rows (plan_prepared).

    Returns None when the job cannot be prepared here (verify mode, a missing
    source, a run holding the lock: ``{'running': True, 'pid': ...}``
    instead, options changed since the last run: the move reconsiders them
    itself); the caller then plans read-only (plan). Otherwise the plan
    result, with ``prepared`` (the token) and ``finished`` (the move's result
    when the job was finished and nothing is left to do, else None).

    `bound` (max_files, max_bytes; -1: no bound), for a run that moves the
    job only when it is that small: when the source holds more (counted
    read-only, the walk stopping as soon as it knows), nothing is listed
    and ``{'larger': True, 'files', 'bytes'}`` (what the walk counted up to
    there) is returned: the move then lists the source itself, its workers
    copying while it lists."""
    started = time.monotonic()
    opts = Options.from_params(params)
    job = Job(opts)
    if opts.mode == 'verify' or not job.src_exists:
        return None
    algorithm = _hashing.resolve(opts.hash)
    job.check()
    os.close(_durable.open_root(job.state_dir, create=True))
    _durable.sync_ancestors(job.state_dir)
    try:
        lock = JobLock(job.state_dir, job.job_id, 0).acquire()
    except JobLockedError:
        return {'running': True, 'pid': holder_pid(job.state_dir)}
    try:
        answered = _answer_finished(job, algorithm, started, on_entry)
        if answered is not None:
            return answered
        if bound is not None:
            larger = larger_than(job, *bound)
            if larger is not None:
                return larger
        journal = Journal.open(job.journal_path, job.identity)
        try:
            if not _scan_for_run(job, journal, token):
                return None
            result = _Planner(job, algorithm, journal, on_entry, prepared=True).run(started)
            result['prepared'] = token
            result['finished'] = _finished_result(job, journal, algorithm, started)
            return result
        finally:
            journal.close()
    finally:
        lock.release()


def _answer_finished(job, algorithm, started, on_entry):
    """prepare's answer for a finished job whose source holds nothing new,
    from the journal opened read-only (no write, no quick_check of every
    row: its cost does not grow with the job): its plan and the move's own
    result. None when the job is not that (then prepare lists the source
    into the journal). The source is listed, read-only, until its first
    entry that is not a directory the journal has finished."""
    journal = _journal_readonly(job) if job.single is None else None
    if journal is None:
        return None
    try:
        meta = journal.meta()
        if meta.get('scan_complete') != '1' or meta.get('options') != _scope_options(job.opts):
            return None
        finished = _finished_result(job, journal, algorithm, started)
        if finished is None or not _nothing_new_at(job, journal, finished['stats']['mounts_skipped']):
            return None
        result = _Planner(job, algorithm, journal, on_entry, prepared=True).run(started)
        result['prepared'] = None
        result['finished'] = finished
        return result
    finally:
        journal.close()


def larger_than(job, max_files, max_bytes):
    """Whether the source holds more than `max_files` entries to bring over
    (anything but a directory) or more than `max_bytes` bytes (file sizes),
    walked read-only as a run lists it and only until that is known:
    ``{'larger': True, 'files', 'bytes'}`` as counted up to there, else None.
    A bound below 0 is no bound."""
    if max_files < 0 and max_bytes < 0:
        return None
    files = size = 0
    if job.single is not None:
        entries = iter([(job.single, job.single, os.lstat(job.src_real))])
        src_tree = None
    else:
        src_tree = _durable.DirTree(_durable.open_root(job.src_root), job.src_root)
        entries = _scan.walk(src_tree, job.excluder(), job.boundary())
    try:
        for _rel, _name, st in entries:
            if stat.S_ISDIR(st.st_mode):
                continue
            files += 1
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
            if 0 <= max_files < files or 0 <= max_bytes < size:
                return {'larger': True, 'files': files, 'bytes': size}
    finally:
        if src_tree is not None:
            entries.close()
            src_tree.close()
    return None


def _nothing_new_at(job, journal, mounts):
    """Whether the source holds only directories the journal has finished (and
    the mount points it recorded): what a run would list and find nothing in."""
    excluded = job.excluder()
    boundary = job.boundary()
    src_tree = _durable.DirTree(_durable.open_root(job.src_root), job.src_root)
    try:
        for rel, _name, st in _scan.walk(src_tree, excluded, boundary):
            if not stat.S_ISDIR(st.st_mode) or not journal.dir_finished(rel):
                return False
    except MoverError:
        return False
    finally:
        src_tree.close()
    return len(boundary.skipped) == mounts


def _scan_for_run(job, journal, token):
    """prepare's scan (the job's lock held): what Runner.run does before its
    scan, then the same scan; the state found before it is recorded with the
    token for the run (_prepared_before). False: not prepared."""
    opts = job.opts
    meta = journal.meta()
    counts = journal.counts()
    options = _scope_options(opts)
    if meta.get('run', '0') != '0' and meta.get('options') != options:
        return False          # the run reconsiders what the changed options leave out
    pending = sum(counts[s][0] for s in WORK_STATES)
    scanned = meta.get('scan_complete') == '1'
    unfinished = float(meta.get('run_finished') or 0) < float(meta.get('run_started') or 0)
    resumed = pending > 0 or (meta.get('run', '0') != '0' and (not scanned or unfinished))
    if (scanned and not pending) or meta.get('prepared'):
        journal.rescan()      # a finished job, or a listing made for a run that did not come
    journal.set_meta(prepared='')
    journal.commit()
    src_tree = _durable.DirTree(_durable.open_root(job.src_root), job.src_root)
    try:
        complete = _scan.scan(journal, src_tree, job.excluder(),
                              opts.special_files, opts.mode == 'move', single=job.single,
                              boundary=job.boundary())
    finally:
        src_tree.close()
    if not complete:
        return False
    journal.set_meta(prepared=token, prepared_options=options,
                     prepared_before=json.dumps({'pending': pending, 'scanned': scanned, 'resumed': resumed}))
    journal.commit()
    return True


def _finished_result(job, journal, algorithm, started):
    """The result a run of a finished job with nothing new at its source
    returns (Runner._result: changed false, the journal's totals), or None
    when a run has something to do: entries to move, failed or new
    directories, or a last run that did not finish."""
    meta = journal.meta()
    counts = journal.counts()
    if meta.get('run', '0') == '0' or any(counts[s][0] for s in WORK_STATES + ('failed',)):
        return None
    if float(meta.get('run_finished') or 0) < float(meta.get('run_started') or 0) or journal.dirs_unfinished():
        return None
    if not os.path.isdir(job.dest_root):
        return None
    runner = Runner(job, journal, algorithm, StopFlag())
    runner.src_tree = _durable.DirTree(_durable.open_root(job.src_root), job.src_root)
    runner.dst_tree = _durable.DirTree(_durable.open_root(job.dest_root), job.dest_root)
    try:
        return runner._result(started, counts['done'][0], False)
    finally:
        runner.src_tree.close()
        runner.dst_tree.close()


class _Row(types.SimpleNamespace):
    """A journal row seen as the stat of its entry when scanned (plan_prepared)."""

    @classmethod
    def of(cls, row):
        (_id, _path, _kind, size, mtime_ns, ctime_ns, mode, uid, gid, dev, ino, nlink, data, state) = row
        return cls(st_size=size, st_mtime_ns=mtime_ns, st_ctime_ns=ctime_ns, st_mode=mode, st_uid=uid,
                   st_gid=gid, st_dev=dev, st_ino=ino, st_nlink=nlink, st_blocks=-(-(data or 0) // 512),
                   data=data, state=state)


class _Planner:
    def __init__(self, job, algorithm, journal, on_entry=None, prepared=False):
        self.job = job
        self.prepared = prepared       # entries from the journal's rows, not from a walk
        self.on_entry = on_entry
        self.algorithm = algorithm
        self.journal = journal
        self.plan = dict.fromkeys(_result.PLAN_KEYS, 0)
        self.stats = _result.empty_stats()
        self.failures = []
        self.skipped = []
        self.linked = set()            # (dev, ino) of the files with several names counted
        self.boundary = job.boundary()

    def entries(self, src_tree):
        if self.prepared:
            yield from self._journal_entries()
            return
        if self.job.single is not None:
            st = os.lstat(self.job.single, dir_fd=src_tree.root_fd)
            yield self.job.single, self.job.single, st
            return
        excluded = self.job.excluder()
        yield from _scan.walk(src_tree, excluded, self.boundary)

    def _journal_entries(self):
        """What a prepared run would consider (prepare): the directories still
        to make or finish below the root, then the rows still to move, failed
        or skipped as conflicts, as (rel, name, stat-like row)."""
        for rel in self.journal.dirs_unfinished():
            if rel:
                yield rel, rel.rpartition('/')[2], _Row(st_mode=stat.S_IFDIR | 0o755)
        after = 0
        while True:
            rows = self.journal.plan_rows(after, 1000)
            if not rows:
                return
            after = rows[-1][0]
            for row in rows:
                yield row[1], row[1].rpartition('/')[2], _Row.of(row)

    def _counted(self, src_tree, rel, st):
        """The bytes a file counts, as the journal counts them: its data (holes
        excluded), once for all its names."""
        if st.st_nlink > 1:
            if (st.st_dev, st.st_ino) in self.linked:
                return 0
            self.linked.add((st.st_dev, st.st_ino))
        if getattr(st, 'data', None) is not None:
            return st.data             # a journal row (prepare): as scanned
        reldir, name = split(rel)
        counted = _copy.data_size_at(src_tree.get(reldir), name, st)
        return st.st_size if counted is None else counted

    def _skip(self, src_tree, rel, kind, count, reason):
        """An entry a run would skip: listed while its kind has fewer than max_failures_reported."""
        if count <= self.job.opts.max_failures_reported:
            self.skipped.append(_result.skipped_entry(src_tree.full(rel), kind, reason))

    def mount_points(self, src_tree):
        """The mount points the walk left alone: their count in `stats`, and the list."""
        self.stats['mounts_skipped'] = len(self.boundary.skipped)
        return [_result.mount_point(src_tree.full(rel), why)
                for rel, why in self.boundary.skipped[:self.job.opts.max_failures_reported]]

    def run(self, started):
        job = self.job
        src_tree = _durable.DirTree(_durable.open_root(job.src_root), job.src_root)
        dest_exists = os.path.isdir(job.dest_root)
        dest_dev = os.stat(_nearest_existing(job.dest_root)).st_dev
        dst_tree = _durable.DirTree(_durable.open_root(job.dest_root), job.dest_root) if dest_exists else None
        transfer = Transfer(src_tree, dst_tree, job.dest_rel, None, self.algorithm, False,
                            job.opts.buffer_size, 0, (), 'fail', job.opts.special_files, job.job_tag,
                            dest_dev, None)
        try:
            for rel, _name, st in self.entries(src_tree):
                self._one(rel, st, transfer, src_tree, dst_tree, dest_dev)
                if dst_tree is not None:
                    dst_tree.trim()          # (the walk trims src_tree after each directory)
        except MoverError as exc:
            self.failures.append(_result.failure(exc.path or job.src_root, exc))
        finally:
            mounts = self.mount_points(src_tree)
            src_tree.close()
            if dst_tree is not None:
                dst_tree.close()
        if self.prepared:
            # the scan recorded the mount points it left alone, and what is done
            self.stats['mounts_skipped'] = len(self.journal.mount_points(1 << 62))
            mounts = [_result.mount_point(os.path.join(job.src_root, rel), why)
                      for rel, why in self.journal.mount_points(job.opts.max_failures_reported)]
            special = self.journal.skipped(job.opts.max_failures_reported).get('special_file', (0, []))
            self.plan['skipped'] += special[0]
            self.stats['special_skipped'] += special[0]
            self.skipped.extend(_result.skipped_entry(os.path.join(job.src_root, rel), 'special_file', why)
                                for rel, why in special[1])
        if self.journal is not None and (self.job.opts.mode == 'move' or self.prepared):
            # moved files are gone from the source: the journal remembers them
            done = self.journal.counts()['done']
            self.plan['already_done'] += done[0]
            self.stats['files_already_done'] += done[0]
            self.stats['bytes_total'] += done[1]
        self.stats['files_failed'] = len(self.failures)
        self.stats['files_total'] = self.plan['files'] + self.plan['already_done'] + \
            self.plan['conflicts'] + self.plan['skipped']
        result = _result.build(job.job_id, job.journal_path, self.algorithm, self.stats,
                               self.failures[:job.opts.max_failures_reported],
                               time.monotonic() - started, self.plan['files'] > 0, False, False,
                               plan=self.plan, mode=job.opts.mode, mount_points=mounts, skipped=self.skipped)
        if not self.failures:
            result['msg'] = _result.summary(result)
        return result

    @staticmethod
    def _settled_by_the_move(src_tree, rel, st):
        """A journal row (prepare) whose destination the move settles itself,
        not a conflict: the journal says it holds our copy ('copied'), or its
        source name is gone since the scan (a killed run renamed it into
        place, or removed it after its copy: the move finds out which)."""
        if getattr(st, 'state', None) == 'copied':
            return True
        reldir, name = split(rel)
        try:
            os.lstat(name, dir_fd=src_tree.get(reldir))
        except FileNotFoundError:
            return True
        except (OSError, MoverError):
            return False
        return False

    def _one(self, rel, st, transfer, src_tree, dst_tree, dest_dev):
        kind = _scan.kind_of(st)
        if kind == 'dir':
            self.stats['dirs'] += 1
            if self.on_entry is not None:
                self.on_entry(rel, st, 'dir')
            return
        if kind == 'symlink':
            self.stats['symlinks'] += 1
        if kind == 'special' and (self.job.opts.special_files == 'skip' or stat.S_ISSOCK(st.st_mode)):
            self.plan['skipped'] += 1
            self.stats['special_skipped'] += 1
            self._skip(src_tree, rel, 'special_file', self.stats['special_skipped'],
                       _scan.entry_state(kind, st, self.job.opts.special_files)[1])
            return
        size = self._counted(src_tree, rel, st) if kind == 'file' else 0
        self.stats['bytes_total'] += size
        dreldir, dname = split(self.job.dest_rel(rel))
        dst_st = None
        if dst_tree is not None:
            try:
                dst_st = os.lstat(dname, dir_fd=dst_tree.get(dreldir))
            except (OSError, MoverError):
                dst_st = None
        if dst_st is not None and self.journal is not None:
            row = self.journal.get_by_path(rel)
            if row is not None and row.state == 'done' and row.ino == st.st_ino and \
                    row.size == (st.st_size if kind == 'file' else 0) and row.mtime_ns == st.st_mtime_ns:
                self.plan['already_done'] += 1
                self.stats['files_already_done'] += 1
                return
        if dst_st is not None and self.prepared and self._settled_by_the_move(src_tree, rel, st):
            dst_st = None
        if dst_st is not None:
            same = False
            if kind == 'file':
                reldir, name = split(rel)
                fd = transfer._open_src(src_tree.get(reldir), name, src_tree.full(rel))
                try:
                    same = transfer.same_content(fd, st, dst_tree.get(dreldir), dname, dst_st)[0] \
                        if dst_st.st_size == st.st_size else False
                finally:
                    os.close(fd)
            elif kind == 'symlink' and stat.S_ISLNK(dst_st.st_mode):
                reldir, name = split(rel)
                same = os.readlink(name, dir_fd=src_tree.get(reldir)) == \
                    os.readlink(dname, dir_fd=dst_tree.get(dreldir))
            if same:
                self.plan['already_done'] += 1
                self.stats['files_already_done'] += 1
                return
            if self.job.opts.on_conflict != 'overwrite':
                self.plan['conflicts'] += 1
                if self.job.opts.on_conflict == 'skip':
                    self.stats['conflicts_skipped'] += 1
                    self._skip(src_tree, rel, 'conflict', self.stats['conflicts_skipped'],
                               'conflict skipped (on_conflict=skip): the destination exists with different '
                               'content')
                return
        self.plan['files'] += 1
        self.plan['bytes'] += size
        action = 'rename' if st.st_dev == dest_dev and self.job.opts.mode == 'move' else 'copy'
        self.plan['renames' if action == 'rename' else 'copies'] += 1
        if self.on_entry is not None:
            self.on_entry(rel, st, action)


def verify(job, started):
    """mode=verify: compare the destination with the source and the journal; change nothing.

    Every file (and symbolic link) is counted, once: a source still there is
    compared with its destination (both hashed, the destination read from the
    disk); a file whose source is gone is compared with the hash the journal
    recorded. What has nothing to be compared with (moved by a rename, or with
    hash: none, or a link whose target was not recorded) is checked for type
    and size and reported as unverifiable; `complete` only when all were verified.
    """
    moved_away = job.single is not None and not job.src_exists and os.path.exists(job.journal_path)
    if not moved_away:                   # (a one-file job whose file was moved: the journal has it)
        job.check(writing=False)
    algorithm = _hashing.resolve(job.opts.hash if job.opts.hash != 'none' else 'auto')
    if not os.path.isdir(job.dest_root):
        raise InputError('dest does not exist', job.dest_root, errno.ENOENT)
    src_tree = _durable.DirTree(_durable.open_root(job.src_root), job.src_root)
    dst_tree = _durable.DirTree(_durable.open_root(job.dest_root), job.dest_root)
    transfer = Transfer(src_tree, dst_tree, job.dest_rel, None, algorithm, True, job.opts.buffer_size,
                        0, (), 'fail', job.opts.special_files, job.job_tag, None, None)
    found = _Verified(job.opts.max_failures_reported)
    planner = _Planner(job, algorithm, None)
    try:
        for rel, _name, st in planner.entries(src_tree) if not moved_away else ():
            kind = _scan.kind_of(st)
            if kind in ('dir', 'special'):
                continue
            outcome = _checked(_verify_one, transfer, src_tree, dst_tree, job.dest_rel(rel), rel, st, kind)
            if outcome is not _GONE:     # (one removed meanwhile is for the journal, below)
                found.file(src_tree.full(rel), outcome)
            dst_tree.trim()              # (the walk trims src_tree after each directory)
        if os.path.exists(job.journal_path):
            journal = Journal.open(job.journal_path, job.identity, create=False, readonly=True)
            try:
                for row in _done_rows(journal):
                    if row.kind not in ('file', 'symlink') or _source_exists(src_tree, row.path):
                        continue         # a source still there was compared by the walk above
                    dest_rel = job.dest_rel(row.path)
                    found.file(dst_tree.full(dest_rel),
                               _checked(_verify_recorded, transfer, dst_tree, dest_rel, row, journal))
                    src_tree.trim()
                    dst_tree.trim()
            finally:
                journal.close()
    except MoverError as exc:            # the walk or the journal could not go on
        found.error(exc.path or job.src_root, exc)
    finally:
        mounts = planner.mount_points(src_tree)
        src_tree.close()
        dst_tree.close()
    stats = _result.empty_stats()
    stats.update(files_total=found.total, files_failed=found.failed, files_verified=found.verified,
                 files_unverifiable=found.unverifiable, mounts_skipped=planner.stats['mounts_skipped'])
    complete = not found.failed and not found.unverifiable
    return _result.build(job.job_id, job.journal_path, algorithm, stats, found.failures,
                         time.monotonic() - started, False, complete, False, mode='verify',
                         mount_points=mounts, unverifiable=found.unverifiable_files, reasons=found.reasons)


# Why a file could not be verified (`unverifiable`; the msg counts each).
_RENAMED = 'a move by rename (on one filesystem) records no hash'
_SIZE_ONLY = 'hash: none records only the size'
_NO_HASH = 'no hash was recorded'
_LINK_TARGET = "a symbolic link's target is not recorded (moved by an older version)"


_GONE = object()                        # the source was removed while verify ran


class _Unverifiable:
    """A file that was checked as far as it could be, and why not further."""

    def __init__(self, reason):
        self.reason = reason


class _Verified:
    """What verify found: counts of all, the failures and unverifiable files up to `limit`."""

    def __init__(self, limit):
        self.limit = limit
        self.total = self.verified = self.failed = self.unverifiable = 0
        self.failures, self.unverifiable_files, self.reasons = [], [], {}

    def file(self, path, outcome):
        """One file: `outcome` None (verified), an _Unverifiable or an error."""
        self.total += 1
        if outcome is None:
            self.verified += 1
        elif isinstance(outcome, _Unverifiable):
            self.unverifiable += 1
            self.reasons[outcome.reason] = self.reasons.get(outcome.reason, 0) + 1
            if len(self.unverifiable_files) < self.limit:
                self.unverifiable_files.append(_result.unverifiable(path, outcome.reason))
        else:
            self.error(path, outcome)

    def error(self, path, error):
        self.failed += 1
        if len(self.failures) < self.limit:
            self.failures.append(_result.failure(path, error))


def _checked(check, *args):
    """check(*args), an error it raises as its outcome (the others are checked still)."""
    try:
        return check(*args)
    except MoverError as exc:
        return exc
    except OSError as exc:
        return os_error(exc, 'cannot verify', exc.filename)


def _source_exists(src_tree, rel):
    reldir, name = split(rel)
    try:
        os.lstat(name, dir_fd=src_tree.get(reldir))
        return True
    except (OSError, MoverError):
        return False


def _done_rows(journal):
    after = 0
    while True:
        with journal._lock:
            rows = journal._conn.execute(
                "SELECT id FROM files WHERE state = 'done' AND id > ? ORDER BY id LIMIT 1000",
                (after,)).fetchall()
        if not rows:
            return
        for (file_id,) in rows:
            yield journal.get(file_id)
        after = rows[-1][0]


def hash_from_disk(transfer, dir_fd, name, algorithm):
    """(digest, lstat) of a destination file as the device holds it
    (Transfer.hash_from_device: O_DIRECT, past the page cache). The one place
    verify reads a destination's content."""
    fd = open_read(dir_fd, name)
    try:
        st = os.fstat(fd)
        digest = transfer.hash_from_device(dir_fd, name, st.st_size, _copy.is_sparse(st), algorithm,
                                           same_as=fd)
        if digest is None:
            raise MoverError('the destination was replaced while it was verified', name, errno.EAGAIN)
        return digest, st
    finally:
        os.close(fd)


def _dest_entry(dst_tree, dest_rel):
    """(dir fd, name, lstat) of a destination entry; lstat None if it is missing."""
    dreldir, dname = split(dest_rel)
    try:
        dst_dir = dst_tree.get(dreldir)
        return dst_dir, dname, os.lstat(dname, dir_fd=dst_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None, dname, None
    except MoverError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None, dname, None
        raise


def _verify_one(transfer, src_tree, dst_tree, dest_rel, rel, st, kind):
    """A source still there against its destination: None if they match, else why not."""
    dst_dir, dname, dst_st = _dest_entry(dst_tree, dest_rel)
    if dst_st is None:
        return 'missing at the destination'
    reldir, name = split(rel)
    if kind == 'symlink':
        if not stat.S_ISLNK(dst_st.st_mode) or \
                os.readlink(name, dir_fd=src_tree.get(reldir)) != os.readlink(dname, dir_fd=dst_dir):
            return 'symbolic link differs at the destination'
        return None
    if not stat.S_ISREG(dst_st.st_mode):
        return 'not a regular file at the destination'
    if dst_st.st_size != st.st_size:
        return 'size differs at the destination (%d bytes, the source %d)' % (dst_st.st_size, st.st_size)
    if (dst_st.st_dev, dst_st.st_ino) == (st.st_dev, st.st_ino):
        return None                     # one file under both names
    try:
        fd = transfer._open_src(src_tree.get(reldir), name, src_tree.full(rel))
    except MoverError as exc:
        if exc.errno == errno.ENOENT:
            return _GONE
        raise
    try:
        source = transfer.hash_fd(fd, st.st_size, _copy.is_sparse(st))
    finally:
        os.close(fd)
    dest, _st = hash_from_disk(transfer, dst_dir, dname, transfer.algorithm)
    return None if dest == source else 'content differs at the destination'


def _verify_recorded(transfer, dst_tree, dest_rel, row, journal):
    """A file whose source is gone against what the journal recorded: None if
    it matches the recorded hash, an _Unverifiable if there is no hash to compare
    with (type and size checked), else why not."""
    dst_dir, dname, st = _dest_entry(dst_tree, dest_rel)
    if st is None:
        return 'recorded as moved but missing at the destination'
    if row.kind == 'symlink':
        if not stat.S_ISLNK(st.st_mode):
            return 'recorded as a symbolic link, but the destination is not one'
        if not (row.hash or '').startswith('link:'):
            return _Unverifiable(_LINK_TARGET)
        if link_digest(os.readlink(dname, dir_fd=dst_dir)) != row.hash:
            return 'symbolic link target differs from the one recorded in the journal'
        return None
    if not stat.S_ISREG(st.st_mode):
        return 'recorded as a regular file, but the destination is not one'
    if st.st_size != row.size:
        return 'size differs from the journal (%d bytes, recorded %d)' % (st.st_size, row.size)
    recorded = row.hash
    if not recorded and row.leader is not None:           # a further name of a hard link
        leader = journal.get(row.leader)
        recorded = leader.hash if leader is not None else None
    algorithm = recorded_algorithm(recorded)
    if algorithm is None:
        return _Unverifiable(_why_no_hash(row, recorded))
    digest, _st = hash_from_disk(transfer, dst_dir, dname, algorithm)
    if digest != recorded:
        return 'content differs from the hash recorded in the journal (%s)' % display_path(row.path)
    return None


def _why_no_hash(row, recorded):
    if recorded and recorded.startswith('size:'):
        return _SIZE_ONLY
    if recorded and ':' in recorded:
        return '%s (the recorded hash) is not installed here' % recorded.partition(':')[0]
    if row.method == 'rename':
        return _RENAMED
    return _NO_HASH
