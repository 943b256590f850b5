# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The job journal: SQLite in WAL mode with synchronous=FULL.

PRIVATE to the durable.mover collection; not a public API.

`Journal.commit` is the step of the fsync chain that makes a batch's records
durable: with journal_mode=WAL and synchronous=FULL, COMMIT returns only after
the WAL is fsynced. Sources may be unlinked only after the commit that records
their copies has returned (see _durable.unlink_source).

The database and its -wal/-shm files are only ever touched through SQLite.
Paths are stored as BLOBs of the file system's bytes, so any name works.
Per-state totals are kept by triggers, so progress is one small query.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import sqlite3
import threading
import time
import urllib.parse

from ansible_collections.durable.mover.plugins.module_utils._errors import JournalError

SCHEMA_VERSION = 1
JOURNAL_NAME = 'journal.sqlite'
STATES = ('pending', 'copying', 'copied', 'done', 'failed', 'skipped')
WORK_STATES = ('pending', 'copying', 'copied')
# Why an entry was skipped, from its kind and the reason recorded (see
# _transfer: 'conflict skipped (on_conflict=skip): ...'); mount points apart.
CONFLICT_SKIPPED = 'conflict skipped'
SKIP_KINDS = (
    ('special_file', "kind = 'special'"),
    ('conflict', "kind IN ('file', 'symlink') AND error LIKE '%s%%'" % CONFLICT_SKIPPED),
    ('vanished', "kind IN ('file', 'symlink') AND coalesce(error, '') NOT LIKE '%s%%'" % CONFLICT_SKIPPED),
)

_TABLES = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE dirs (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    scanned INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    error TEXT,
    mode INTEGER, uid INTEGER, gid INTEGER, atime_ns INTEGER, mtime_ns INTEGER
);
CREATE TABLE files (
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mtime_ns INTEGER, ctime_ns INTEGER, mode INTEGER, uid INTEGER, gid INTEGER,
    dev INTEGER, ino INTEGER, nlink INTEGER,
    leader INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    hash TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    quarantined INTEGER NOT NULL DEFAULT 0,
    checkpoint INTEGER NOT NULL DEFAULT 0,
    ident TEXT,
    run INTEGER NOT NULL DEFAULT 0,
    method TEXT,
    data INTEGER
);
CREATE INDEX files_work ON files(id) WHERE state IN ('pending', 'copying', 'copied');
CREATE INDEX files_failed ON files(id) WHERE state = 'failed';
CREATE INDEX files_inode ON files(dev, ino) WHERE nlink > 1;
CREATE INDEX dirs_unscanned ON dirs(id) WHERE scanned = 0;
CREATE INDEX files_skipped ON files(id) WHERE state = 'skipped';
CREATE INDEX files_other_kinds ON files(kind) WHERE kind != 'file';
CREATE TABLE counts (state TEXT PRIMARY KEY, files INTEGER NOT NULL, bytes INTEGER NOT NULL);
INSERT INTO counts (state, files, bytes) VALUES
    ('pending', 0, 0), ('copying', 0, 0), ('copied', 0, 0),
    ('done', 0, 0), ('failed', 0, 0), ('skipped', 0, 0);
"""
_TRIGGERS = """
CREATE TRIGGER files_ins AFTER INSERT ON files BEGIN
    UPDATE counts SET files = files + 1, bytes = bytes + {new} WHERE state = NEW.state;
END;
CREATE TRIGGER files_del AFTER DELETE ON files BEGIN
    UPDATE counts SET files = files - 1, bytes = bytes - {old} WHERE state = OLD.state;
END;
CREATE TRIGGER files_upd AFTER UPDATE OF state, size, data, leader ON files BEGIN
    UPDATE counts SET files = files - 1, bytes = bytes - {old} WHERE state = OLD.state;
    UPDATE counts SET files = files + 1, bytes = bytes + {new} WHERE state = NEW.state;
END;
"""
# The bytes a row counts (what a move carries): its data (`data`, set where the
# file has holes; else its size), and nothing for a further name of a
# hard-linked file (`leader`): a file with several names counts once.
_COUNTED = 'CASE WHEN {row}.leader IS NULL THEN coalesce({row}.data, {row}.size) ELSE 0 END'
_TRIGGERS = _TRIGGERS.format(new=_COUNTED.format(row='NEW'), old=_COUNTED.format(row='OLD'))
_SCHEMA = _TABLES + _TRIGGERS


def _connect(path):
    """A read-write connection (writers wait up to 30 s for SQLite's lock)."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)


def _connect_readonly(path):
    """A read-only connection that sees what writers commit, even writers that
    start after it (check mode, move_info, verify). It takes SQLite's shared
    locks through the -shm file, which it creates if the journal is at rest.

    Only a reader that cannot create that file (another user than the job's,
    a read-only state directory) falls back to reading the journal at rest as
    immutable: then no writer can be running (a writer creates the -wal first),
    and a writer starting later is not seen."""
    # A URI: the path is percent-encoded, or '#', '?' and '%' in it would be
    # read as URI syntax (and mode=ro lost).
    uri = 'file:%s?mode=ro' % urllib.parse.quote(os.fsencode(path))
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    try:
        conn.execute('SELECT count(*) FROM sqlite_master').fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if os.path.exists(path + '-wal') and os.path.getsize(path + '-wal'):
            raise
    return sqlite3.connect(uri + '&immutable=1', uri=True, isolation_level=None, check_same_thread=False)


ROW_FIELDS = ('id', 'path', 'kind', 'size', 'mtime_ns', 'ctime_ns', 'mode', 'uid', 'gid',
              'dev', 'ino', 'nlink', 'leader', 'state', 'hash', 'attempts', 'error',
              'quarantined', 'checkpoint', 'ident', 'run', 'method')
Row = collections.namedtuple('Row', ROW_FIELDS)
_SELECT = 'SELECT %s FROM files' % ', '.join(ROW_FIELDS)


def _meta_text(value):
    """A meta value as SQLite text: a path's bytes that are not UTF-8 (str
    surrogates) written as backslash escapes, as display_path writes them."""
    text = str(value)
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return os.fsencode(text).decode('utf-8', 'backslashreplace')
    return text


def _blob(rel):
    return sqlite3.Binary(os.fsencode(rel))


def _text(blob):
    return os.fsdecode(bytes(blob))


def _row(values):
    values = list(values)
    values[1] = _text(values[1])
    return Row(*values)


class Journal:
    """One job's journal. All methods are thread-safe."""

    def __init__(self, path, conn):
        self.path = path
        self._conn = conn
        self._lock = threading.RLock()
        self._in_tx = False
        self._writers = None        # see _tx
        self.last_commit = time.monotonic()

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, path, identity, create=True, readonly=False):
        """Open (or create) the journal at `path` and check it belongs to `identity`.

        `identity` is a dict (job_id, src, dest, ...) stored at creation. A journal
        of another src/dest pair, a newer schema or a corrupt file is refused and
        left exactly as it is.
        """
        if not os.path.exists(path) and not create:
            raise JournalError('journal does not exist', path, errno.ENOENT)
        try:
            conn = _connect_readonly(path) if readonly else _connect(path)
            journal = cls(path, conn)
            journal._setup(identity, readonly)
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                'the journal is corrupt or not a journal (%s); it was left untouched. To start '
                'the job afresh, move the journal aside (rename %s and its -wal/-shm files together, '
                'with nothing running) and run again: files already at the destination are '
                'recognised by content' % (exc, os.path.basename(path)), path)
        return journal

    def reconnect(self):
        """The same journal through a new connection of its own, for a forked
        worker process. Already checked by open()."""
        journal = type(self)(self.path, None)
        journal._conn = journal._reopen()
        return journal

    def _reopen(self):
        try:
            conn = _connect(self.path)
            conn.execute('PRAGMA synchronous=FULL')
            conn.execute('PRAGMA foreign_keys=OFF')
        except sqlite3.DatabaseError as exc:
            raise JournalError('cannot open the journal again (%s)' % exc, self.path)
        return conn

    @contextlib.contextmanager
    def closed_for_fork(self):
        """No connection is open while the process forks: SQLite forbids using
        a connection on both sides of a fork (its POSIX locks belong to the
        process, and a child's close would release the parent's). The child
        opens its own (reconnect); this process reopens its own afterwards.
        Requires: no transaction in progress."""
        with self._lock:
            if self._in_tx:
                raise JournalError('internal error: fork with a journal transaction open', self.path)
            self._conn.close()
            self._conn = None
            if self._writers is not None and self._writers >= 0:
                os.close(self._writers)
            self._writers = None
            try:
                yield
            finally:
                self._conn = self._reopen()

    def _pragmas(self):
        """WAL and synchronous=FULL, before any write. Set only once the file is
        known to be a journal (or empty): switching to WAL rewrites the header,
        and a file that is refused must be left exactly as it was."""
        conn = self._conn
        mode = conn.execute('PRAGMA journal_mode=WAL').fetchone()[0]
        if mode.lower() != 'wal':
            raise JournalError('cannot put the journal in WAL mode (got %s)' % mode, self.path)
        conn.execute('PRAGMA synchronous=FULL')
        conn.execute('PRAGMA foreign_keys=OFF')

    def _setup(self, identity, readonly):
        conn = self._conn
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            # A database with no tables holds nothing (a run killed while creating
            # it): it is created afresh.
            if readonly:
                raise JournalError('journal is empty', self.path)
            self._pragmas()
            conn.executescript('BEGIN IMMEDIATE;\n' + _SCHEMA)
            meta = dict(identity)
            meta['schema'] = str(SCHEMA_VERSION)
            meta['created'] = '%.3f' % time.time()
            meta['run'] = '0'
            meta['scan_complete'] = '0'
            conn.executemany('INSERT INTO meta (key, value) VALUES (?, ?)',
                             [(k, _meta_text(v)) for k, v in meta.items()])
            conn.execute('COMMIT')
            # The journal's own directory entries (database, -wal) must be durable
            # before anything relies on a commit in it.
            dir_fd = os.open(os.path.dirname(self.path) or '.', os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return
        if not {'meta', 'files', 'dirs', 'counts'} <= tables:
            raise sqlite3.DatabaseError('tables missing: %s' % sorted(tables))
        meta = self.meta()
        if int(meta.get('schema', '0')) != SCHEMA_VERSION:
            raise JournalError('journal schema %s is not supported (this version reads %d)'
                               % (meta.get('schema'), SCHEMA_VERSION), self.path)
        for key in ('job_id', 'src', 'dest'):
            if key in identity and meta.get(key) != _meta_text(identity[key]):
                raise JournalError(
                    'the journal belongs to another job (its %s is %r, this run\'s is %r); '
                    'use another state_dir or job_id' % (key, meta.get(key), identity[key]), self.path)
        if not readonly:
            # Damage from outside SQLite (a failing disk, a stray write) must be
            # refused before this run rewrites anything: one read of the journal.
            problems = [r[0] for r in conn.execute('PRAGMA quick_check(5)')]
            if problems != ['ok']:
                raise sqlite3.DatabaseError('quick_check: %s' % '; '.join(problems))
            self._pragmas()
            self._upgrade()

    def _upgrade(self):
        """What journals made by earlier versions lack, added in place (same schema
        version: an earlier version still reads and writes the result): the
        index of skipped rows; the `data` column and the triggers that count
        bytes as a move carries them (the totals are counted again once)."""
        conn = self._conn
        conn.execute("CREATE INDEX IF NOT EXISTS files_skipped ON files(id) WHERE state = 'skipped'")
        conn.execute("CREATE INDEX IF NOT EXISTS files_other_kinds ON files(kind) WHERE kind != 'file'")
        if 'data' in {row[1] for row in conn.execute('PRAGMA table_info(files)')}:
            return
        conn.execute('BEGIN IMMEDIATE')
        try:
            conn.execute('ALTER TABLE files ADD COLUMN data INTEGER')
            for name in ('files_ins', 'files_del', 'files_upd'):
                conn.execute('DROP TRIGGER IF EXISTS %s' % name)
            for statement in _TRIGGERS.split('END;')[:-1]:
                conn.execute(statement + 'END;')
            conn.execute('UPDATE counts SET files = (SELECT count(*) FROM files WHERE state = counts.state), '
                         'bytes = (SELECT coalesce(sum(%s), 0) FROM files WHERE state = counts.state)'
                         % _COUNTED.format(row='files'))
            conn.execute('COMMIT')
        except BaseException:
            conn.execute('ROLLBACK')
            raise

    # -- transactions --------------------------------------------------------

    def _tx(self):
        if not self._in_tx:
            # Writers (worker processes, the scan) take turns through an flock
            # before SQLite's own lock: a waiting writer wakes the moment the
            # other commits, where SQLite's busy handler would sleep 1, 2, 5,
            # 10 ms... Opened here, per connection (an fd inherited over fork
            # would share the lock), and never needed for durability.
            if self._writers is None:
                try:
                    self._writers = os.open(self.path + '-writers', os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                except OSError:
                    self._writers = -1          # SQLite's own locking still holds
            if self._writers >= 0:
                fcntl.flock(self._writers, fcntl.LOCK_EX)
            try:
                self._conn.execute('BEGIN IMMEDIATE')
            except BaseException:
                self._release_writers()
                raise
            self._in_tx = True

    def _release_writers(self):
        if self._writers is not None and self._writers >= 0:
            fcntl.flock(self._writers, fcntl.LOCK_UN)

    def commit(self):
        """Make every recorded change durable (WAL fsync, synchronous=FULL).

        Requires: for files recorded as copied, the rename and the fsync of their
        destination directory have returned. After it returns, and not before,
        their sources may be unlinked.
        """
        with self._lock:
            if self._in_tx:
                try:
                    self._conn.execute('COMMIT')
                except BaseException:
                    # Nothing of the transaction is durable: roll it back, and let
                    # the other writers (worker processes) go on to meet the error
                    # themselves. Held, the writers' lock would keep them waiting
                    # while this process waits for them to end.
                    self.rollback()
                    raise
                self._in_tx = False
                self._release_writers()
            self.last_commit = time.monotonic()

    def rollback(self):
        """Roll back a transaction left open by an error, if any, and let the
        other writers go, whatever the rollback says (a failing disk): what
        was not committed was never durable. Safe to call with none open."""
        with self._lock:
            if not self._in_tx:
                return
            try:
                self._conn.execute('ROLLBACK')
            except sqlite3.Error:
                pass
            finally:
                self._in_tx = False
                self._release_writers()

    def checkpoint_wal(self):
        """Copy the WAL into the database file (the end of a run).

        Not needed for durability (a commit is durable in the WAL), but an I/O
        error here means the state disk is failing, which a run must report.
        """
        with self._lock:
            self.commit()
            try:
                busy = self._conn.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0]
            except sqlite3.Error as exc:
                raise JournalError('checkpointing the journal failed (%s); every commit is '
                                   'still safe in its write-ahead log' % exc, self.path)
            return not busy

    def close(self):
        with self._lock:
            try:
                self.commit()
            finally:
                if self._conn is not None:      # None: it could not be opened again after a fork
                    self._conn.close()
                if self._writers is not None and self._writers >= 0:
                    os.close(self._writers)
                self._writers = None

    # -- meta ------------------------------------------------------------------

    def meta(self):
        with self._lock:
            return dict(self._conn.execute('SELECT key, value FROM meta'))

    def set_meta(self, **values):
        with self._lock:
            self._tx()
            self._conn.executemany('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)',
                                   [(k, _meta_text(v)) for k, v in values.items()])

    # -- scanning --------------------------------------------------------------

    def add_dir(self, rel, st):
        with self._lock:
            self._tx()
            self._conn.execute(
                'INSERT INTO dirs (path, mode, uid, gid, atime_ns, mtime_ns) VALUES (?, ?, ?, ?, ?, ?) '
                # A directory's metadata is captured once, before the move
                # changes its mtime: a rescan only queues it for listing.
                'ON CONFLICT(path) DO UPDATE SET scanned = 0',
                (_blob(rel), st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns))

    def next_unscanned_dirs(self, limit=64):
        with self._lock:
            return [(i, _text(p)) for i, p in self._conn.execute(
                'SELECT id, path FROM dirs WHERE scanned = 0 ORDER BY id LIMIT ?', (limit,))]

    def mark_dir_scanned(self, dir_id, error=None):
        with self._lock:
            self._tx()
            self._conn.execute('UPDATE dirs SET scanned = ?, error = ? WHERE id = ?',
                               (2 if error else 1, error, dir_id))

    def rescan(self):
        """Scan again from the root (a rerun of a finished job): only what is
        still at the source is found again."""
        with self._lock:
            self._tx()
            self._conn.execute("UPDATE dirs SET scanned = 0 WHERE path = x''")
            self._conn.execute("UPDATE meta SET value = '0' WHERE key = 'scan_complete'")

    def add_files(self, entries, moves_source):
        """Insert scanned entries; a known path is reset to pending only if it changed.

        `entries`: (rel, kind, stat, state, error[, data]); `data`: the bytes of a
        file with holes that hold data (_copy.data_size), None or absent for
        any other entry. In move mode a path recorded done that is back at the
        source is a new file and is moved again.
        """
        changed = "(files.size != excluded.size OR files.mtime_ns != excluded.mtime_ns " \
                  "OR files.ino != excluded.ino OR files.kind != excluded.kind)"
        # `hash` is kept while it names this job's own copy of an earlier content
        # of the same source (copy mode; or a move whose source changed before it
        # was removed): a destination with that content is ours to replace. A
        # moved file that reappears at the source is another file: its hash goes.
        keep_hash = "CASE WHEN files.state = 'done' THEN NULL ELSE files.hash END" if moves_source \
            else 'files.hash'
        if moves_source:
            condition = "files.state = 'done' OR (files.state IN ('skipped', 'pending') AND %s)" % changed
        else:
            condition = "files.state IN ('done', 'skipped', 'pending') AND %s" % changed
        sql = ('INSERT INTO files (path, kind, size, mtime_ns, ctime_ns, mode, uid, gid, dev, ino, '
               'nlink, leader, state, error, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) '
               'ON CONFLICT(path) DO UPDATE SET kind = excluded.kind, size = excluded.size, '
               'mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, mode = excluded.mode, '
               'uid = excluded.uid, gid = excluded.gid, dev = excluded.dev, ino = excluded.ino, '
               'nlink = excluded.nlink, leader = excluded.leader, state = excluded.state, '
               'error = excluded.error, data = excluded.data, hash = ' + keep_hash + ', checkpoint = 0, '
               'ident = NULL, method = NULL, attempts = 0, quarantined = 0 WHERE ' + condition)
        with self._lock:
            self._tx()
            conn = self._conn
            plain = []           # a run of rows without a hard-link leader to look up: one executemany
            for entry in entries:
                rel, kind, st, state, error = entry[:5]
                data = entry[5] if len(entry) > 5 and kind == 'file' else None
                leader = None
                if kind == 'file' and st.st_nlink > 1:
                    if plain:
                        conn.executemany(sql, plain)     # rows keep their scan order
                        plain = []
                    # The group's first name: one with no leader itself (else two
                    # rescanned names lead each other and neither moves), still to
                    # move or unchanged (a name moved by an earlier run may have
                    # left its inode number to a new, unrelated file).
                    found = conn.execute(
                        'SELECT id FROM files WHERE dev = ? AND ino = ? AND nlink > 1 AND path != ? '
                        "AND leader IS NULL AND (state IN ('pending', 'copying', 'copied') "
                        'OR (size = ? AND mtime_ns = ?)) ORDER BY id LIMIT 1',
                        (st.st_dev, st.st_ino, _blob(rel), st.st_size, st.st_mtime_ns)).fetchone()
                    if found:
                        leader = found[0]
                plain.append((_blob(rel), kind, st.st_size if kind == 'file' else 0,
                              st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid,
                              st.st_dev, st.st_ino, st.st_nlink, leader, state, error, data))
            if plain:
                conn.executemany(sql, plain)

    def forget_mounts(self, rels):
        """Paths found as directories to enter: no longer skipped mount points
        (unmounted since, or entered now with cross_filesystems)."""
        with self._lock:
            self._tx()
            self._conn.executemany("DELETE FROM files WHERE path = ? AND kind = 'mount'",
                                   ((_blob(rel),) for rel in rels))

    def reconsider(self):
        """Entries skipped by earlier runs become pending, to be decided again
        (the options changed). Mount points aside: the scan decides those."""
        with self._lock:
            self._tx()
            return self._conn.execute("UPDATE files SET state = 'pending', error = NULL "
                                      "WHERE state = 'skipped' AND kind != 'mount'").rowcount

    def unstarted(self, after_id, limit):
        """(id, path) of the rows not copied yet (pending, or a copy in progress) after `after_id`."""
        with self._lock:
            return [(i, _text(p)) for i, p in self._conn.execute(
                "SELECT id, path FROM files WHERE state IN ('pending', 'copying') AND id > ? "
                'ORDER BY id LIMIT ?', (after_id, limit))]

    def forget(self, file_ids, dir_ids=()):
        """Rows that are no longer part of the job (its options now leave them out):
        removed, as if never listed. A hard-link group loses a name: its first
        remaining name leads the others."""
        with self._lock:
            self._tx()
            conn = self._conn
            for file_id in file_ids:
                followers = [r[0] for r in conn.execute('SELECT id FROM files WHERE leader = ? ORDER BY id',
                                                        (file_id,))]
                conn.execute('DELETE FROM files WHERE id = ?', (file_id,))
                if followers:
                    conn.execute('UPDATE files SET leader = NULL WHERE id = ?', (followers[0],))
                    conn.executemany('UPDATE files SET leader = ? WHERE id = ?',
                                     ((followers[0], i) for i in followers[1:]))
            conn.executemany('DELETE FROM dirs WHERE id = ?', ((i,) for i in dir_ids))

    def add_failed_entry(self, rel, kind, error):
        """Record an entry that could not even be listed (e.g. an unreadable directory)."""
        with self._lock:
            self._tx()
            self._conn.execute(
                "INSERT INTO files (path, kind, state, error, attempts) VALUES (?, ?, 'failed', ?, 1) "
                "ON CONFLICT(path) DO UPDATE SET state = 'failed', error = excluded.error, "
                "attempts = files.attempts + 1", (_blob(rel), kind, error))

    # -- work ------------------------------------------------------------------

    def begin_run(self, retry_failed, max_attempts):
        """Start a run: failed files not quarantined become pending again."""
        with self._lock:
            run = int(self.meta().get('run', '0')) + 1
            self._tx()
            if retry_failed:
                self._conn.execute("UPDATE files SET quarantined = 0, attempts = MIN(attempts, ? - 1) "
                                   "WHERE state = 'failed'", (max_attempts,))
            self._conn.execute("UPDATE files SET state = 'pending' WHERE state = 'failed' "
                               "AND quarantined = 0 AND kind != 'dir'")
            self._conn.execute("DELETE FROM files WHERE state = 'failed' AND kind = 'dir' "
                               "AND quarantined = 0")
            self._conn.execute("UPDATE dirs SET scanned = 0 WHERE scanned = 2")
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'run'", (str(run),))
            return run

    def fetch_work(self, after_id, limit, share=None, upto=None):
        """The next rows to work on after `after_id`. `share` (index, count): only
        the rows of one of `count` worker processes; a hard-link group (keyed
        by its first name) always falls in one share. `upto`: only rows up to
        this id and no name of a hard-linked file (the scan is still going on:
        another name of the same file may be found later, and must then be
        found while this one is still at the source)."""
        where, args = '', [after_id]
        if share is not None:
            where += ' AND coalesce(leader, id) % ? = ?'
            args += [share[1], share[0]]
        if upto is not None:
            where += ' AND id <= ? AND coalesce(nlink, 1) <= 1'
            args.append(upto)
        with self._lock:
            return [_row(r) for r in self._conn.execute(
                _SELECT + " WHERE state IN ('pending', 'copying', 'copied') AND id > ?" + where +
                " ORDER BY id LIMIT ?", args + [limit])]

    def last_file_id(self):
        with self._lock:
            return self._conn.execute('SELECT coalesce(max(id), 0) FROM files').fetchone()[0]

    def get_by_path(self, rel):
        with self._lock:
            found = self._conn.execute(_SELECT + ' WHERE path = ?', (_blob(rel),)).fetchone()
            return _row(found) if found else None

    def get(self, file_id):
        with self._lock:
            found = self._conn.execute(_SELECT + ' WHERE id = ?', (file_id,)).fetchone()
            return _row(found) if found else None

    def update(self, file_id, **fields):
        if not fields:
            return
        columns = ', '.join('%s = ?' % name for name in fields)
        with self._lock:
            self._tx()
            self._conn.execute('UPDATE files SET %s WHERE id = ?' % columns,
                               tuple(fields.values()) + (file_id,))

    def record_in_place(self, records):
        """Files whose destination is in place: 'copied' (the source still to remove)
        or 'done'. `records`: (state, digest, method, run, ident, file_id) each."""
        with self._lock:
            self._tx()
            self._conn.executemany(
                'UPDATE files SET state = ?, hash = ?, method = ?, error = NULL, run = ?, ident = ?, '
                'checkpoint = 0 WHERE id = ?', records)

    def mark_done(self, file_ids):
        """Files whose source is removed (or was never to be removed)."""
        with self._lock:
            self._tx()
            self._conn.executemany("UPDATE files SET state = 'done' WHERE id = ?", ((i,) for i in file_ids))

    def fail(self, file_id, error, max_attempts, run, counts=True):
        """Record a failure: reason, one more attempt, quarantine at max_attempts."""
        with self._lock:
            self._tx()
            self._conn.execute(
                "UPDATE files SET state = 'failed', error = ?, run = ?, "
                "attempts = attempts + ?, checkpoint = 0, ident = NULL, "
                "quarantined = CASE WHEN attempts + ? >= ? THEN 1 ELSE 0 END WHERE id = ?",
                (error, run, 1 if counts else 0, 1 if counts else 0, max_attempts, file_id))

    def checkpoint(self, file_id, offset, ident):
        """Record a durable prefix of a large copy (the part was fdatasynced)."""
        with self._lock:
            self._tx()
            self._conn.execute("UPDATE files SET state = 'copying', checkpoint = ?, ident = ? "
                               "WHERE id = ?", (offset, ident, file_id))
            self.commit()

    # -- directories -------------------------------------------------------------

    def dirs_after(self, dir_id):
        """(id, path) of the directories after `dir_id` still to finalize, in the
        order the scan found them (a parent before its children)."""
        with self._lock:
            return [(i, _text(p)) for i, p in self._conn.execute(
                "SELECT id, path FROM dirs WHERE id > ? AND state != 'done' ORDER BY id", (dir_id,))]

    def dirs_for_finalize(self):
        """Directories whose metadata is still to apply, deepest last (caller reverses)."""
        with self._lock:
            return [(i, _text(p), mode, uid, gid, at, mt) for i, p, mode, uid, gid, at, mt in
                    self._conn.execute("SELECT id, path, mode, uid, gid, atime_ns, mtime_ns FROM dirs "
                                       "WHERE state != 'done' ORDER BY length(path), path")]

    def dir_done(self, dir_id):
        with self._lock:
            self._tx()
            self._conn.execute("UPDATE dirs SET state = 'done' WHERE id = ?", (dir_id,))

    # -- reporting ---------------------------------------------------------------

    def counts(self):
        with self._lock:
            return {state: (files, size) for state, files, size in
                    self._conn.execute('SELECT state, files, bytes FROM counts')}

    def dir_count(self):
        with self._lock:
            return self._conn.execute('SELECT count(*) FROM dirs').fetchone()[0]

    def kind_counts(self):
        """{kind: rows} of the kinds other than 'file' (index files_other_kinds:
        a lookup of those rows only, not a read of every row)."""
        with self._lock:
            return dict(self._conn.execute(
                "SELECT kind, count(*) FROM files WHERE kind != 'file' AND (state != 'failed' OR kind = 'dir') "
                "GROUP BY kind"))

    def hardlink_count(self):
        """Names that are further links of a group already counted (a leader is
        only ever set on a name of several: index files_inode)."""
        with self._lock:
            return self._conn.execute('SELECT count(*) FROM files WHERE nlink > 1 AND leader IS NOT NULL'
                                      ).fetchone()[0]

    def special_skipped(self):
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM files WHERE kind = 'special' "
                                      "AND state = 'skipped'").fetchone()[0]

    def skipped(self, limit):
        """Entries skipped by decision, mount points aside (see mount_points), by
        kind: {kind: (count, [(path, reason), ...at most `limit`])} for each kind
        of SKIP_KINDS that has any."""
        found = {}
        with self._lock:
            for kind, where in SKIP_KINDS:
                count = self._conn.execute("SELECT count(*) FROM files WHERE state = 'skipped' AND "
                                           + where).fetchone()[0]
                if count:
                    found[kind] = (count, [(_text(p), e) for p, e in self._conn.execute(
                        "SELECT path, error FROM files WHERE state = 'skipped' AND " + where +
                        ' ORDER BY id LIMIT ?', (limit,))])
        return found

    def mount_points(self, limit):
        """(path, reason) of the mount points inside the source left alone."""
        with self._lock:
            return [(_text(p), e) for p, e in self._conn.execute(
                "SELECT path, error FROM files WHERE kind = 'mount' AND state = 'skipped' "
                "ORDER BY id LIMIT ?", (limit,))]

    def failures(self, limit):
        with self._lock:
            return [(_text(p), e, a, q) for p, e, a, q in self._conn.execute(
                "SELECT path, error, attempts, quarantined FROM files WHERE state = 'failed' "
                "ORDER BY id LIMIT ?", (limit,))]

    def failure_counts(self):
        with self._lock:
            row = self._conn.execute("SELECT count(*), COALESCE(sum(quarantined), 0) FROM files "
                                     "WHERE state = 'failed'").fetchone()
            return row[0], row[1]

    def plan_rows(self, after_id, limit):
        """The entries a run would still consider, for a plan made from the
        journal (_mover.plan_prepared): rows still to move, failed, or skipped
        as a conflict, after `after_id` in scan order. Each row: (id, path,
        kind, size, mtime_ns, ctime_ns, mode, uid, gid, dev, ino, nlink,
        data, state)."""
        columns = ('SELECT id, path, kind, size, mtime_ns, ctime_ns, mode, uid, gid, dev, ino, nlink, '
                   'coalesce(data, size), state FROM files WHERE id > ? AND ')
        # One query per partial index (files_work, files_failed, files_skipped):
        # a finished job's rows are not read one by one.
        wheres = ("state IN ('pending', 'copying', 'copied')", "state = 'failed'",
                  "state = 'skipped' AND kind IN ('file', 'symlink') AND error LIKE '%s%%'" % CONFLICT_SKIPPED)
        found = []
        with self._lock:
            for where in wheres:
                found.extend(self._conn.execute(columns + where + ' ORDER BY id LIMIT ?', (after_id, limit)))
        found.sort(key=lambda row: row[0])
        return [(row[0], _text(row[1])) + tuple(row[2:]) for row in found[:limit]]

    def dir_finished(self, rel):
        """Whether the directory `rel` is recorded and finished."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM dirs WHERE path = ? AND state = 'done'",
                                      (_blob(rel),)).fetchone() is not None

    def dirs_unfinished(self):
        """Paths of the directories whose metadata is still to apply (new ones, below the root too)."""
        with self._lock:
            return [_text(p) for (p,) in self._conn.execute("SELECT path FROM dirs WHERE state != 'done' ORDER BY id")]

    def scan_errors(self):
        with self._lock:
            return self._conn.execute('SELECT count(*) FROM dirs WHERE scanned = 2').fetchone()[0]
