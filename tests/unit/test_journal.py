# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_journal.py (the SQLite job journal).

Every check reads the database back, mostly through an independent
read-only sqlite3 connection, so what is asserted is what is on disk.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import sqlite3
import sys

import pytest

from core_helpers import fake_stat, open_ro, rows_by_path

from ansible_collections.durable.mover.plugins.module_utils._errors import JournalError
from ansible_collections.durable.mover.plugins.module_utils._journal import (
    SCHEMA_VERSION,
    STATES,
    Journal,
)

IDENTITY = {"job_id": "job-a", "src": "/data/src", "dest": "/data/dest"}


@pytest.fixture
def jpath(tmp_path):
    return tmp_path / "journal.sqlite"


@pytest.fixture
def journal(jpath):
    j = Journal.open(str(jpath), IDENTITY)
    yield j
    j.close()


def entry(rel, ino, size=10, state="pending", error=None, kind="file", **kw):
    return (rel, kind, fake_stat(ino, size=size, **kw), state, error)


def recomputed_counts(path):
    """Per-state (files, bytes) computed from the files table, not from the triggers."""
    conn = open_ro(path)
    try:
        got = {s: (0, 0) for s in STATES}
        # a row counts its data (its size unless it has holes), a further name of a hard-linked file nothing
        for state, n, size in conn.execute("SELECT state, count(*), COALESCE(sum(CASE WHEN leader IS NULL "
                                           "THEN coalesce(data, size) ELSE 0 END), 0) FROM files GROUP BY state"):
            got[state] = (n, size)
        return got
    finally:
        conn.close()


def stored_counts(path):
    conn = open_ro(path)
    try:
        return {s: (f, b) for s, f, b in conn.execute("SELECT state, files, bytes FROM counts")}
    finally:
        conn.close()


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# -- creating and reopening --------------------------------------------------------------------


def test_create_then_reopen_keeps_identity_and_rows(jpath):
    j = Journal.open(str(jpath), IDENTITY)
    j.add_files([entry("a", 1)], moves_source=True)
    j.commit()
    j.close()

    conn = open_ro(jpath)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    conn.close()
    assert {"meta", "files", "dirs", "counts"} <= tables
    assert {k: meta[k] for k in IDENTITY} == IDENTITY
    assert meta["schema"] == str(SCHEMA_VERSION)

    again = Journal.open(str(jpath), IDENTITY, create=False)
    try:
        assert again.get_by_path("a").state == "pending"
        assert again.meta()["job_id"] == "job-a"
    finally:
        again.close()


def test_open_without_create_refuses_missing(jpath):
    with pytest.raises(JournalError, match="does not exist"):
        Journal.open(str(jpath), IDENTITY, create=False)
    assert not jpath.exists()


def test_wal_and_synchronous_full_are_set(journal, jpath):
    # synchronous is per connection: read it from the journal's own connection.
    assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 == FULL
    assert journal._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # WAL mode is persistent in the file: a fresh connection sees it too.
    other = sqlite3.connect(str(jpath))
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


@pytest.mark.parametrize("key,value", [("job_id", "job-b"), ("src", "/elsewhere"), ("dest", "/other")])
def test_identity_mismatch_is_refused_naming_the_other_job(jpath, key, value):
    Journal.open(str(jpath), IDENTITY).close()
    before = sha(jpath)
    wrong = dict(IDENTITY, **{key: value})
    with pytest.raises(JournalError) as info:
        Journal.open(str(jpath), wrong)
    message = str(info.value)
    assert "belongs to another job" in message
    assert repr(IDENTITY[key]) in message          # the journal's own value is named
    assert info.value.path == str(jpath)
    del info
    gc.collect()
    assert sha(jpath) == before
    # the journal still opens for its own job, unchanged
    Journal.open(str(jpath), IDENTITY).close()


def test_garbage_file_is_refused_and_left_untouched(jpath):
    garbage = b"this is not an SQLite database\n" * 300 + bytes(range(256)) * 4
    jpath.write_bytes(garbage)
    with pytest.raises(JournalError) as info:
        Journal.open(str(jpath), IDENTITY)
    assert "corrupt" in str(info.value)
    assert "move the journal aside" in str(info.value)   # says how to recover
    del info
    gc.collect()
    assert jpath.read_bytes() == garbage
    assert sorted(os.listdir(jpath.parent)) == ["journal.sqlite"]


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.9])
def test_truncated_journal_is_refused_and_left_untouched(tmp_path, fraction):
    real = tmp_path / "real.sqlite"
    j = Journal.open(str(real), IDENTITY)
    j.add_files([entry("f%05d" % i, i + 1) for i in range(3000)], moves_source=True)
    j.commit()
    j.close()
    data = real.read_bytes()
    cut = max(100, int(len(data) * fraction))
    broken = tmp_path / "state" / "journal.sqlite"
    broken.parent.mkdir()
    broken.write_bytes(data[:cut])

    with pytest.raises(JournalError, match="corrupt"):
        Journal.open(str(broken), IDENTITY)
    gc.collect()
    assert broken.read_bytes() == data[:cut]


def test_other_sqlite_database_is_refused_untouched(jpath):
    conn = sqlite3.connect(str(jpath))
    conn.execute("CREATE TABLE unrelated (x)")
    conn.execute("INSERT INTO unrelated VALUES (1)")
    conn.commit()
    conn.close()
    before = sha(jpath)
    with pytest.raises(JournalError, match="not a journal"):
        Journal.open(str(jpath), IDENTITY)
    gc.collect()
    assert sha(jpath) == before


def test_newer_schema_is_refused_untouched(jpath):
    Journal.open(str(jpath), IDENTITY).close()
    conn = sqlite3.connect(str(jpath))
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    before = sha(jpath)
    with pytest.raises(JournalError, match="schema 99 is not supported"):
        Journal.open(str(jpath), IDENTITY)
    gc.collect()
    assert sha(jpath) == before


def test_readonly_open_of_path_with_uri_characters(tmp_path):
    odd = tmp_path / os.fsdecode(b"state ?#%25&mode=rw \xff")
    odd.mkdir()
    path = str(odd / "journal.sqlite")
    j = Journal.open(path, IDENTITY)
    j.add_files([entry("a", 1)], moves_source=True)
    j.close()
    reader = Journal.open(path, IDENTITY, create=False, readonly=True)
    try:
        assert reader.get_by_path("a").state == "pending"
        with pytest.raises(sqlite3.OperationalError):          # still read-only
            reader.set_meta(x=1)
            reader.commit()
    finally:
        reader.close()


def test_a_reader_sees_a_writer_that_started_after_it(jpath):
    """A reader (check mode, move_info) opened while no writer had the journal
    open must still see what a writer commits and checkpoints into the
    database file afterwards: opened immutable, SQLite trusted its cache of a
    file that changed under it (a stale or torn read)."""
    j = Journal.open(str(jpath), IDENTITY)
    j.add_files([entry("f%03d" % i, i + 1, size=1000) for i in range(200)], moves_source=True)
    j.close()                            # no -wal left: the journal is at rest
    assert not os.path.exists(str(jpath) + "-wal")
    reader = Journal.open(str(jpath), IDENTITY, create=False, readonly=True)
    try:
        assert reader.counts()["pending"] == (200, 200000)
        writer = Journal.open(str(jpath), IDENTITY)
        writer.mark_done([row.id for row in writer.fetch_work(0, 150)])
        writer.commit()
        writer.checkpoint_wal()          # the change is now in the database file itself
        writer.close()
        assert reader.counts()["pending"] == (50, 50000)
        assert reader.counts()["done"] == (150, 150000)
    finally:
        reader.close()


def test_a_reader_without_write_access_to_the_state_dir_still_reads(nobody_tmp_path, run_as_nobody):
    """A reader that cannot create the -shm beside the journal (another user)
    falls back to an immutable snapshot of a journal at rest."""
    state = nobody_tmp_path / "state"  # root's, 0755: nobody reaches it but cannot write in it
    state.mkdir(mode=0o755)
    jpath = state / "journal.sqlite"
    j = Journal.open(str(jpath), IDENTITY)
    j.add_files([entry("a", 1)], moves_source=True)
    j.close()
    os.chmod(jpath, 0o644)
    code = ("import sys; from ansible_collections.durable.mover.plugins.module_utils._journal import Journal; "
            "j = Journal.open(sys.argv[1], {'job_id': 'job-a'}, create=False, readonly=True); "
            "print(j.counts()['pending'][0])")
    from core_helpers import collections_root
    proc = run_as_nobody([sys.executable, "-c", code, str(jpath)],
                         env=dict(os.environ, PYTHONPATH=collections_root()))
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr
    assert not os.path.exists(str(jpath) + "-shm")


def test_empty_database_file_is_accepted_as_new(jpath):
    jpath.write_bytes(b"")
    j = Journal.open(str(jpath), IDENTITY)
    try:
        assert j.meta()["job_id"] == "job-a"
        assert j.counts() == {s: (0, 0) for s in STATES}
    finally:
        j.close()
    assert jpath.stat().st_size > 0


def test_readonly_open_of_empty_file_refused(jpath):
    jpath.write_bytes(b"")
    with pytest.raises(JournalError, match="empty"):
        Journal.open(str(jpath), IDENTITY, create=False, readonly=True)
    assert jpath.read_bytes() == b""


# -- counts triggers ---------------------------------------------------------------------------


def test_counts_triggers_match_group_by_after_random_operations(journal, jpath):
    rng = random.Random(20240601)
    paths = ["d%d/f%03d" % (i % 7, i) for i in range(300)]
    journal.add_files([entry(p, i + 1, size=rng.randrange(0, 10000)) for i, p in enumerate(paths)],
                      moves_source=True)
    journal.commit()
    assert stored_counts(jpath) == recomputed_counts(jpath)
    ids = [r.id for r in journal.fetch_work(0, 1000)]
    for step in range(600):
        file_id = rng.choice(ids)
        op = rng.randrange(9)
        if op == 0:
            journal.update(file_id, state=rng.choice(STATES))
        elif op == 1:
            journal.update(file_id, size=rng.randrange(0, 10000))
        elif op == 2:
            journal.update(file_id, state=rng.choice(STATES), size=rng.randrange(0, 10000))
        elif op == 3:
            journal.fail(file_id, "boom", 3, 1)
        elif op == 4:
            i = rng.randrange(len(paths))
            # upsert: sometimes changed (new size/mtime), sometimes not
            journal.add_files([entry(paths[i], i + 1, size=rng.randrange(0, 10000),
                                     mtime_ns=rng.choice([(i + 1) * 1000, step]))],
                              moves_source=rng.random() < 0.5)
        elif op == 5:
            journal.checkpoint(file_id, rng.randrange(0, 10000), "ident")
        elif op == 6:
            journal.update(file_id, data=rng.choice([None, rng.randrange(0, 10000)]))
        elif op == 7:
            journal.update(file_id, leader=rng.choice([None, rng.choice(ids)]))
        elif rng.random() < 0.1:
            journal.forget([file_id])         # (an upsert of its path may bring it back)
        if step % 50 == 0:
            journal.commit()
            assert stored_counts(jpath) == recomputed_counts(jpath)
    journal.add_failed_entry("unreadable", "dir", "Permission denied")
    journal.add_failed_entry("unreadable", "dir", "Permission denied")
    journal.begin_run(retry_failed=True, max_attempts=3)
    journal.commit()
    assert stored_counts(jpath) == recomputed_counts(jpath)
    assert b"unreadable" not in rows_by_path(jpath)   # the failed dir entry was dropped


def test_a_journal_of_an_earlier_version_is_upgraded_in_place(jpath):
    """Journals made before the `data` column: opened for writing, they get it,
    with the triggers that count a file with several names once, and their
    totals counted again; a read-only open changes nothing."""
    journal = Journal.open(str(jpath), IDENTITY)
    journal.add_files([entry("a", 1, size=100, nlink=2), entry("b", 1, size=100, nlink=2),
                       entry("c", 2, size=7)], moves_source=True)
    journal.commit()
    journal.close()
    conn = sqlite3.connect(str(jpath), isolation_level=None)
    conn.executescript("""
        BEGIN;
        DROP TRIGGER files_ins; DROP TRIGGER files_del; DROP TRIGGER files_upd;
        DROP INDEX files_skipped;
        ALTER TABLE files DROP COLUMN data;
        CREATE TRIGGER files_ins AFTER INSERT ON files BEGIN
            UPDATE counts SET files = files + 1, bytes = bytes + NEW.size WHERE state = NEW.state; END;
        CREATE TRIGGER files_del AFTER DELETE ON files BEGIN
            UPDATE counts SET files = files - 1, bytes = bytes - OLD.size WHERE state = OLD.state; END;
        CREATE TRIGGER files_upd AFTER UPDATE OF state, size ON files BEGIN
            UPDATE counts SET files = files - 1, bytes = bytes - OLD.size WHERE state = OLD.state;
            UPDATE counts SET files = files + 1, bytes = bytes + NEW.size WHERE state = NEW.state; END;
        UPDATE counts SET bytes = (SELECT coalesce(sum(size), 0) FROM files WHERE state = counts.state);
        COMMIT;
    """)
    conn.close()
    assert stored_counts(jpath)["pending"] == (3, 207)          # as an earlier version counted

    reader = Journal.open(str(jpath), IDENTITY, create=False, readonly=True)
    assert reader.counts()["pending"] == (3, 207)
    reader.close()
    assert stored_counts(jpath)["pending"] == (3, 207)

    journal = Journal.open(str(jpath), IDENTITY)
    assert journal.counts()["pending"] == (3, 107)
    journal.update(journal.get_by_path("c").id, data=3)
    journal.commit()
    journal.close()
    assert stored_counts(jpath) == recomputed_counts(jpath)
    assert stored_counts(jpath)["pending"] == (3, 103)


# -- paths -------------------------------------------------------------------------------------


def test_non_utf8_path_round_trips_as_blob(journal, jpath):
    raw = b"caf\xe9/\xff\xfename \x01"
    rel = os.fsdecode(raw)
    journal.add_files([entry(rel, 7)], moves_source=True)
    journal.commit()
    assert set(rows_by_path(jpath)) == {raw}               # stored as the bytes themselves
    conn = open_ro(jpath)
    assert conn.execute("SELECT typeof(path) FROM files").fetchone()[0] == "blob"
    conn.close()
    row = journal.get_by_path(rel)
    assert row is not None and row.path == rel
    assert os.fsencode(journal.fetch_work(0, 10)[0].path) == raw
    journal.fail(row.id, "x", 3, 1)
    assert os.fsencode(journal.failures(10)[0][0]) == raw


# -- failures, runs, quarantine ----------------------------------------------------------------


def test_fail_counts_attempts_and_quarantines_at_max(journal, jpath):
    journal.add_files([entry("a", 1)], moves_source=True)
    file_id = journal.get_by_path("a").id
    for attempt in (1, 2):
        journal.fail(file_id, "error %d" % attempt, max_attempts=3, run=attempt)
        journal.commit()
        row = rows_by_path(jpath)[b"a"]
        assert (row["state"], row["attempts"], row["quarantined"], row["error"]) == \
            ("failed", attempt, 0, "error %d" % attempt)
    journal.fail(file_id, "error 3", max_attempts=3, run=3)
    journal.commit()
    row = rows_by_path(jpath)[b"a"]
    assert (row["attempts"], row["quarantined"]) == (3, 1)
    assert journal.failure_counts() == (1, 1)
    assert journal.failures(10) == [("a", "error 3", 3, 1)]


def test_fail_without_counting_does_not_add_an_attempt(journal, jpath):
    journal.add_files([entry("a", 1)], moves_source=True)
    file_id = journal.get_by_path("a").id
    journal.checkpoint(file_id, 4096, "ident")
    journal.fail(file_id, "interrupted", max_attempts=1, run=1, counts=False)
    journal.commit()
    row = rows_by_path(jpath)[b"a"]
    assert (row["state"], row["attempts"], row["quarantined"]) == ("failed", 0, 0)
    assert (row["checkpoint"], row["ident"]) == (0, None)   # a failure drops the resume point


def test_begin_run_requeues_failed_and_retry_failed_lifts_quarantine(journal, jpath):
    journal.add_files([entry("soft", 1), entry("hard", 2), entry("ok", 3)], moves_source=True)
    soft, hard = journal.get_by_path("soft").id, journal.get_by_path("hard").id
    journal.fail(soft, "once", 3, 1)
    for _attempt in range(3):
        journal.fail(hard, "always", 3, 1)
    journal.add_failed_entry("locked", "dir", "Permission denied")
    journal.commit()
    assert journal.begin_run(retry_failed=False, max_attempts=3) == 1
    journal.commit()
    rows = rows_by_path(jpath)
    assert rows[b"soft"]["state"] == "pending" and rows[b"soft"]["attempts"] == 1
    assert rows[b"hard"]["state"] == "failed" and rows[b"hard"]["quarantined"] == 1
    assert b"locked" not in rows      # listing failures are retried by scanning again

    assert journal.begin_run(retry_failed=True, max_attempts=3) == 2
    journal.commit()
    rows = rows_by_path(jpath)
    assert rows[b"hard"]["state"] == "pending" and rows[b"hard"]["quarantined"] == 0
    # one more failure quarantines it again: a retry is one attempt, not max_attempts more
    journal.fail(hard, "still", 3, 2)
    journal.commit()
    assert rows_by_path(jpath)[b"hard"]["quarantined"] == 1
    assert journal.meta()["run"] == "2"


def test_fetch_work_pages_by_id(journal):
    journal.add_files([entry("f%02d" % i, i + 1) for i in range(20)], moves_source=True)
    for i in (3, 4, 10, 19):
        journal.update(journal.get_by_path("f%02d" % i).id, state="done")
    journal.update(journal.get_by_path("f05").id, state="copying")
    journal.update(journal.get_by_path("f06").id, state="copied")
    journal.fail(journal.get_by_path("f07").id, "x", 3, 1)
    seen, after, pages = [], 0, 0
    while True:
        page = journal.fetch_work(after, 4)
        if not page:
            break
        assert len(page) <= 4
        assert [r.id for r in page] == sorted(r.id for r in page)
        assert page[0].id > after
        seen.extend(page)
        after = page[-1].id
        pages += 1
    expected = {"f%02d" % i for i in range(20)} - {"f03", "f04", "f10", "f19", "f07"}
    assert [r.path for r in seen] == sorted(expected)
    assert {r.state for r in seen} == {"pending", "copying", "copied"}
    assert pages == 4


def test_fetch_work_shares_keep_hard_link_groups_together(journal):
    names = [entry("f%02d" % i, i + 1) for i in range(12)]
    names += [entry("link%d" % i, 100, nlink=3) for i in range(3)]      # one inode, three names
    journal.add_files(names, moves_source=True)
    shares = [journal.fetch_work(0, 100, share=(k, 3)) for k in range(3)]
    paths = [{r.path for r in share} for share in shares]
    assert set().union(*paths) == {r[0] for r in names}
    assert sum(len(p) for p in paths) == len(names)                     # each row in one share
    assert sum({"link0", "link1", "link2"} <= p for p in paths) == 1     # the group in one


def test_fetch_work_while_scanning_stops_at_upto_and_defers_hard_linked_names(journal):
    journal.add_files([entry("a", 1), entry("b", 2, nlink=2), entry("c", 3)], moves_source=True)
    journal.commit()
    upto = journal.last_file_id()
    journal.add_files([entry("d", 4), entry("sub/b2", 2, nlink=2)], moves_source=True)
    assert [r.path for r in journal.fetch_work(0, 10, upto=upto)] == ["a", "c"]
    assert [r.path for r in journal.fetch_work(0, 10)] == ["a", "b", "c", "d", "sub/b2"]
    assert journal.get_by_path("sub/b2").leader == journal.get_by_path("b").id


def test_dirs_after_in_scan_order(journal):
    for rel in ("", "a", "a/b", "c"):
        journal.add_dir(rel, fake_stat(1, mode=0o40755))
    ids = {rel: i for i, rel in journal.dirs_after(0)}
    assert list(ids) == ["", "a", "a/b", "c"]
    journal.dir_done(ids["a/b"])
    assert [rel for _i, rel in journal.dirs_after(ids["a"])] == ["c"]


def test_checkpoint_is_committed(journal, jpath):
    journal.add_files([entry("big", 1, size=1 << 30)], moves_source=True)
    journal.commit()
    file_id = journal.get_by_path("big").id
    journal.update(file_id, hash="not yet committed")
    # the uncommitted change is invisible to another connection...
    assert rows_by_path(jpath)[b"big"]["hash"] is None
    journal.checkpoint(file_id, 256 << 20, "12:34:56:78")
    # ...and checkpoint() commits, so the resume point is durable at once
    row = rows_by_path(jpath)[b"big"]
    assert (row["state"], row["checkpoint"], row["ident"]) == ("copying", 256 << 20, "12:34:56:78")


# -- upserts of rescanned entries --------------------------------------------------------------


def test_add_files_move_mode_done_path_back_at_source_is_pending(journal, jpath):
    journal.add_files([entry("a", 1), entry("b", 2)], moves_source=True)
    for rel in ("a", "b"):
        journal.update(journal.get_by_path(rel).id, state="done", hash="sha256:aa", method="copy")
    journal.commit()
    # the same names appear at the source again: new files, moved again
    journal.add_files([entry("a", 1), entry("b", 99, size=5)], moves_source=True)
    journal.commit()
    rows = rows_by_path(jpath)
    for rel in (b"a", b"b"):
        assert rows[rel]["state"] == "pending"
        assert rows[rel]["hash"] is None and rows[rel]["method"] is None
    assert rows[b"b"]["size"] == 5 and rows[b"b"]["ino"] == 99
    assert stored_counts(jpath) == recomputed_counts(jpath)


def test_add_files_copy_mode_unchanged_stays_done_changed_is_pending(journal, jpath):
    journal.add_files([entry("same", 1), entry("grown", 2), entry("touched", 3)], moves_source=False)
    for rel in ("same", "grown", "touched"):
        journal.update(journal.get_by_path(rel).id, state="done", hash="sha256:h-" + rel)
    journal.commit()
    journal.add_files([entry("same", 1), entry("grown", 2, size=11),
                       entry("touched", 3, mtime_ns=123)], moves_source=False)
    journal.commit()
    rows = rows_by_path(jpath)
    assert (rows[b"same"]["state"], rows[b"same"]["hash"]) == ("done", "sha256:h-same")
    assert rows[b"grown"]["state"] == "pending" and rows[b"grown"]["size"] == 11
    assert rows[b"touched"]["state"] == "pending" and rows[b"touched"]["mtime_ns"] == 123


@pytest.mark.parametrize("moves_source", [True, False])
def test_add_files_keeps_in_progress_and_quarantined_rows(journal, jpath, moves_source):
    journal.add_files([entry("copying", 1), entry("bad", 2)], moves_source=moves_source)
    journal.checkpoint(journal.get_by_path("copying").id, 4096, "ident-1")
    bad = journal.get_by_path("bad").id
    for _attempt in range(3):
        journal.fail(bad, "broken disk", 3, 1)
    journal.commit()
    journal.add_files([entry("copying", 1), entry("bad", 2)], moves_source=moves_source)
    journal.commit()
    rows = rows_by_path(jpath)
    # a resumable copy keeps its checkpoint; a quarantined file stays quarantined
    assert (rows[b"copying"]["state"], rows[b"copying"]["checkpoint"]) == ("copying", 4096)
    assert (rows[b"bad"]["state"], rows[b"bad"]["quarantined"], rows[b"bad"]["attempts"]) == ("failed", 1, 3)


def test_add_failed_entry_counts_attempts(journal, jpath):
    journal.add_failed_entry("locked", "dir", "cannot list directory: Permission denied")
    journal.add_failed_entry("locked", "dir", "again")
    journal.commit()
    row = rows_by_path(jpath)[b"locked"]
    assert (row["kind"], row["state"], row["attempts"], row["error"]) == ("dir", "failed", 2, "again")


def test_readonly_journal_sees_committed_state(journal, jpath):
    journal.add_files([entry("a", 1, size=100)], moves_source=True)
    journal.commit()
    reader = Journal.open(str(jpath), IDENTITY, create=False, readonly=True)
    try:
        assert reader.counts()["pending"] == (1, 100)
        with pytest.raises(sqlite3.OperationalError):
            reader.update(reader.get_by_path("a").id, state="done")
    finally:
        reader._conn.close()
