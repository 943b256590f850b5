# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_scan.py: streamed, resumable scans into a real journal.

The unreadable directory is scanned by a child process that runs without
CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (``setpriv --bounding-set``): for
permission checks it is an unprivileged process, so ``chmod 000`` really
stops it, while it can still run this interpreter wherever it is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat

import pytest

from core_helpers import fake_stat, open_ro, rows_by_path, run_python

from ansible_collections.durable.mover.plugins.module_utils import _durable, _mover, _scan
from ansible_collections.durable.mover.plugins.module_utils._journal import Journal

IDENTITY = {"job_id": "scan-job", "src": "/src", "dest": "/dest"}
TAG = "abcdef012345"
EXCLUDES = ("*.tmp", "cache", "sub/skip*")


def bpath(p) -> bytes:
    return os.fsencode(p)


def build_tree(root, monkeypatch):
    """The tree used by the scan tests; returns {rel bytes: expected (kind, state)}."""
    root.mkdir()
    files = {
        b"a.txt": b"hello",
        b"b c.txt": b"spaces",
        "ünï.txt".encode(): b"unicode",
        b"caf\xe9": b"latin-1 name",
        b"skipme.log": b"path pattern does not match at the root",
        b"x.tmp": b"excluded by name",
        b".a.txt.%s.part" % TAG.encode(): b"our own part file",
        b".a.txt.999999999999.part": b"another job's part file: just a file here",
        b"sub/b.txt": b"b",
        b"sub/skipme.log": b"excluded by path",
        b"sub/deep/c.txt": b"c" * 3000,
        b"sub/deep/y.tmp": b"excluded by name, deep",
        b"cache/inner.txt": b"inside an excluded dir",
        b"d\xff/inner.txt": b"in a non-UTF-8 dir",
    }
    for rel, data in files.items():
        path = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(data)
    (root / "empty").mkdir()
    (root / "link_rel").symlink_to("a.txt")
    (root / "link_abs").symlink_to("/etc/passwd")
    (root / "dangling").symlink_to("nowhere/none")
    (root / "dirlink").symlink_to("sub")
    os.mkfifo(root / "fifo")
    monkeypatch.chdir(root)                       # AF_UNIX paths are short: bind relative
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock")
    sock.close()
    os.link(root / "a.txt", root / "sub" / "hard")
    expected = {
        b"a.txt": ("file", "pending"),
        b"b c.txt": ("file", "pending"),
        "ünï.txt".encode(): ("file", "pending"),
        b"caf\xe9": ("file", "pending"),
        b"skipme.log": ("file", "pending"),
        b".a.txt.999999999999.part": ("file", "pending"),
        b"sub/b.txt": ("file", "pending"),
        b"sub/hard": ("file", "pending"),
        b"sub/deep/c.txt": ("file", "pending"),
        b"d\xff/inner.txt": ("file", "pending"),
        b"link_rel": ("symlink", "pending"),
        b"link_abs": ("symlink", "pending"),
        b"dangling": ("symlink", "pending"),
        b"dirlink": ("symlink", "pending"),
        b"fifo": ("special", "skipped"),
        b"sock": ("special", "skipped"),
    }
    expected_dirs = {b"", b"sub", b"sub/deep", b"empty", b"d\xff"}
    return expected, expected_dirs


def scan_into(jpath, src, moves=True, special_files="skip", excludes=EXCLUDES, should_stop=None):
    journal = Journal.open(str(jpath), IDENTITY)
    tree = _durable.DirTree(_durable.open_root(str(src)), str(src))
    try:
        excluded = _scan.Excluder(excludes, part_suffix=".%s.part" % TAG)
        return _scan.scan(journal, tree, excluded, special_files, moves, should_stop=should_stop)
    finally:
        tree.close()
        journal.close()


def dir_rows(jpath):
    conn = open_ro(jpath)
    try:
        return {bytes(p): (s, e) for p, s, e in conn.execute("SELECT path, scanned, error FROM dirs")}
    finally:
        conn.close()


def meta(jpath):
    conn = open_ro(jpath)
    try:
        return dict(conn.execute("SELECT key, value FROM meta"))
    finally:
        conn.close()


def test_scan_records_every_entry_once(tmp_path, monkeypatch):
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    expected, expected_dirs = build_tree(src, monkeypatch)
    assert scan_into(jpath, src) is True

    rows = rows_by_path(jpath)
    assert {p: (r["kind"], r["state"]) for p, r in rows.items()} == expected
    assert set(dir_rows(jpath)) == expected_dirs                 # cache/ never entered
    assert all(scanned == 1 for scanned, _e in dir_rows(jpath).values())
    assert meta(jpath)["scan_complete"] == "1"
    # what was recorded is the lstat of the entry, never of a link's target
    for rel, row in rows.items():
        st = os.lstat(os.path.join(os.fsencode(src), rel))
        assert (row["ino"], row["mtime_ns"], row["mode"]) == (st.st_ino, st.st_mtime_ns, st.st_mode)
        assert row["size"] == (st.st_size if row["kind"] == "file" else 0)
    assert "FIFO skipped" in rows[b"fifo"]["error"]
    assert "socket skipped" in rows[b"sock"]["error"]
    conn = open_ro(jpath)
    # a file with several names counts its bytes once (sub/hard is a.txt's second name)
    assert rows[b"sub/hard"]["leader"] == rows[b"a.txt"]["id"]
    assert dict((s, (f, b)) for s, f, b in conn.execute("SELECT state, files, bytes FROM counts"))["pending"] == \
        (len([e for e in expected.values() if e[1] == "pending"]),
         sum(r["size"] for r in rows.values() if r["state"] == "pending" and r["leader"] is None))
    conn.close()


def test_special_files_recreate_queues_fifo_but_never_socket(tmp_path, monkeypatch):
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    build_tree(src, monkeypatch)
    scan_into(jpath, src, special_files="recreate")
    rows = rows_by_path(jpath)
    assert (rows[b"fifo"]["state"], rows[b"fifo"]["error"]) == ("pending", None)
    assert rows[b"sock"]["state"] == "skipped"


def test_walk_yields_what_scan_records(tmp_path, monkeypatch):
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    expected, expected_dirs = build_tree(src, monkeypatch)
    tree = _durable.DirTree(_durable.open_root(str(src)), str(src))
    try:
        walked = {bpath(rel) for rel, _name, _st in
                  _scan.walk(tree, _scan.Excluder(EXCLUDES, part_suffix=".%s.part" % TAG))}
    finally:
        tree.close()
    assert walked == set(expected) | (expected_dirs - {b""})


def test_excluder_name_and_path_patterns():
    excluded = _scan.Excluder(["*.tmp", "cache", "/top/only*", "a/*/c"], part_suffix=".t.part")
    assert excluded("x.tmp", "x.tmp") and excluded("deep/er/x.tmp", "x.tmp")
    assert excluded("cache", "cache") and excluded("sub/cache", "cache")
    assert excluded("top/only-me", "only-me") and not excluded("sub/top/only-me", "only-me")
    assert excluded("a/b/c", "c") and not excluded("c", "c")
    assert excluded(".f.t.part", ".f.t.part") and not excluded("f.t.part", "f.t.part")
    assert not excluded("x.tmpl", "x.tmpl")


UNPRIVILEGED_SCAN = """
import json, sys
from ansible_collections.durable.mover.plugins.module_utils import _durable, _scan
from ansible_collections.durable.mover.plugins.module_utils._journal import Journal
src, jpath = sys.argv[1], sys.argv[2]
journal = Journal.open(jpath, {"job_id": "scan-job", "src": "/src", "dest": "/dest"})
tree = _durable.DirTree(_durable.open_root(src), src)
errors = []
done = _scan.scan(journal, tree, _scan.Excluder(["secret*"]), "skip", True,
                  on_error=lambda rel, exc: errors.append([rel, str(exc), exc.errno]))
tree.close()
journal.close()
print(json.dumps({"done": done, "errors": errors}))
"""


def run_unprivileged(code, *args):
    """Run ``code`` with ``args`` in a child without DAC override capabilities (still uid 0)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE in a child")
    return run_python(code, *args, prefix=["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"])


@pytest.mark.root
def test_unreadable_directory_is_a_failed_entry_and_the_rest_is_scanned(tmp_path):
    src = tmp_path / "src"
    (src / "ok" / "deeper").mkdir(parents=True)
    (src / "ok" / "deeper" / "f").write_bytes(b"f")
    (src / "top").write_bytes(b"t")
    (src / "locked").mkdir()
    (src / "locked" / "hidden").write_bytes(b"h")
    (src / "secret-dir").mkdir()                  # excluded, and unreadable: never entered
    os.chmod(src / "locked", 0)
    os.chmod(src / "secret-dir", 0)
    jpath = tmp_path / "state" / "journal.sqlite"
    jpath.parent.mkdir()
    try:
        proc = run_unprivileged(UNPRIVILEGED_SCAN, str(src), str(jpath))
    finally:
        os.chmod(src / "locked", 0o755)
        os.chmod(src / "secret-dir", 0o755)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["done"] is True
    assert [(rel, err) for rel, _msg, err in out["errors"]] == [("locked", 13)]
    rows = rows_by_path(jpath)
    assert set(rows) == {b"ok/deeper/f", b"top", b"locked"}
    locked = rows[b"locked"]
    assert (locked["kind"], locked["state"], locked["attempts"]) == ("dir", "failed", 1)
    assert "Permission denied" in locked["error"] and str(src / "locked") in locked["error"]
    dirs = dir_rows(jpath)
    assert dirs[b"locked"][0] == 2 and "Permission denied" in dirs[b"locked"][1]
    assert b"secret-dir" not in dirs
    assert meta(jpath)["scan_complete"] == "1"


def test_interrupted_scan_resumes_without_duplicates(tmp_path):
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    expected = set()
    for d in range(12):
        for sub in ("", "/inner"):
            os.makedirs(src / ("d%02d%s" % (d, sub)))
            for f in range(3):
                rel = "d%02d%s/f%d" % (d, sub, f)
                (src / rel).write_bytes(b"x" * (d + f))
                expected.add(rel.encode())
    checks = []

    def stop_after_five():
        checks.append(1)
        return len(checks) > 5

    assert scan_into(jpath, src, should_stop=stop_after_five) is False
    # what the interrupted scan found is committed, and it knows it is not finished
    partial = rows_by_path(jpath)
    dirs = dir_rows(jpath)
    assert 0 < len(partial) < len(expected)
    assert meta(jpath)["scan_complete"] == "0"
    assert sum(1 for s, _e in dirs.values() if s == 0) > 0
    assert sum(1 for s, _e in dirs.values() if s == 1) == 5

    assert scan_into(jpath, src) is True            # a new journal handle, as a new run would
    rows = rows_by_path(jpath)
    assert set(rows) == expected
    conn = open_ro(jpath)
    assert conn.execute("SELECT count(*), count(DISTINCT path) FROM files").fetchone() == (len(expected),) * 2
    pending = conn.execute("SELECT files, bytes FROM counts WHERE state = 'pending'").fetchone()
    conn.close()
    assert pending == (len(expected), sum(r["size"] for r in rows.values()))
    assert all(s == 1 for s, _e in dir_rows(jpath).values())
    assert len(dir_rows(jpath)) == 1 + 24
    # rows found before the interruption kept their ids (nothing was re-inserted)
    assert {p: r["id"] for p, r in rows.items() if p in partial} == {p: r["id"] for p, r in partial.items()}


def test_finished_scan_does_nothing_until_rescan(tmp_path):
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    assert scan_into(jpath, src) is True
    (src / "b").write_bytes(b"b")
    assert scan_into(jpath, src) is True
    assert set(rows_by_path(jpath)) == {b"a"}
    journal = Journal.open(str(jpath), IDENTITY)
    journal.rescan()
    journal.close()
    assert scan_into(jpath, src) is True
    assert set(rows_by_path(jpath)) == {b"a", b"b"}


# -- hard links --------------------------------------------------------------------------------


def make_links(src):
    (src / "sub").mkdir(parents=True)
    (src / "h1").write_bytes(b"linked content")
    os.link(src / "h1", src / "h2")
    os.link(src / "h1", src / "sub" / "h3")
    (src / "single").write_bytes(b"single")


def leaders(jpath):
    rows = rows_by_path(jpath)
    by_id = {r["id"]: p for p, r in rows.items()}
    return {p: by_id.get(r["leader"]) for p, r in rows.items()}


def test_hard_link_group_has_one_leader(tmp_path):
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    make_links(src)
    scan_into(jpath, src)
    assert leaders(jpath) == {b"h1": None, b"h2": b"h1", b"sub/h3": b"h1", b"single": None}
    journal = Journal.open(str(jpath), IDENTITY)
    assert journal.hardlink_count() == 2
    journal.close()


@pytest.mark.parametrize("moves", [False, True])
def test_rescanned_changed_hard_link_group_keeps_one_leader(tmp_path, moves):
    """A finished job, its linked file changed (copy mode) or back at the source (move mode)."""
    src, jpath = tmp_path / "src", tmp_path / "journal.sqlite"
    make_links(src)
    scan_into(jpath, src, moves=moves)
    journal = Journal.open(str(jpath), IDENTITY)
    journal._conn.execute("UPDATE files SET state = 'done'")
    journal.rescan()
    journal.close()
    with open(src / "h2", "ab") as handle:      # changes size and mtime of every name
        handle.write(b" and more")
    scan_into(jpath, src, moves=moves)
    got = leaders(jpath)
    group = {p: got[p] for p in (b"h1", b"h2", b"sub/h3")}
    heads = [p for p, leader in group.items() if leader is None]
    assert len(heads) == 1, "hard-link group without exactly one leader: %r" % group
    assert all(leader in (None, heads[0]) for leader in group.values())


def test_reused_inode_does_not_join_an_earlier_group(tmp_path):
    """Old names of inode 50 were moved away (done); new names reuse inode 50."""
    jpath = tmp_path / "journal.sqlite"
    journal = Journal.open(str(jpath), IDENTITY)
    old = fake_stat(50, size=12, mtime_ns=1000, nlink=2)
    journal.add_files([("old1", "file", old, "pending", None), ("old2", "file", old, "pending", None)], True)
    journal._conn.execute("UPDATE files SET state = 'done'")
    journal.commit()
    new = fake_stat(50, size=19, mtime_ns=999999, nlink=2)
    journal.add_files([("new1", "file", new, "pending", None), ("new2", "file", new, "pending", None)], True)
    journal.close()
    assert leaders(jpath) == {b"old1": None, b"old2": b"old1", b"new1": None, b"new2": b"new1"}


@pytest.mark.loop
def test_reused_inode_is_not_moved_as_a_link_to_old_content(loopfs, tmpfs, tmp_path):
    """End to end: a moved hard-link group frees its inode on the source filesystem;
    new linked files get that inode number; a rerun must move their own content."""
    srcfs = loopfs("ext4", 16)
    dest = tmpfs("16m") / "out"
    src = srcfs / "tree"
    src.mkdir()
    (src / "h1").write_bytes(b"old content\n")
    os.link(src / "h1", src / "h2")
    old_ino = os.stat(src / "h1").st_ino
    params = {"src": str(src), "dest": str(dest), "state_dir": str(tmp_path / "state"), "hash": "sha256"}
    first = _mover.run(params)
    assert first["complete"] and first["stats"]["files_moved"] == 2
    (src / "n1").write_bytes(b"NEW, IMPORTANT\n")
    os.link(src / "n1", src / "n2")
    if os.stat(src / "n1").st_ino != old_ino:
        pytest.skip("ext4 did not reuse the freed inode number here; the scenario needs it")
    second = _mover.run(params)
    assert (dest / "n1").read_bytes() == b"NEW, IMPORTANT\n", second
    assert (dest / "n2").read_bytes() == b"NEW, IMPORTANT\n"
    assert os.stat(dest / "n1").st_ino == os.stat(dest / "n2").st_ino
    assert (dest / "h1").read_bytes() == b"old content\n"
    assert os.stat(dest / "h1").st_ino != os.stat(dest / "n1").st_ino
    assert second["complete"] and not (src / "n1").exists()


def test_scan_of_single_file(tmp_path):
    src, jpath = tmp_path / "dir", tmp_path / "journal.sqlite"
    src.mkdir()
    (src / "only").write_bytes(b"12345")
    journal = Journal.open(str(jpath), IDENTITY)
    tree = _durable.DirTree(_durable.open_root(str(src)), str(src))
    try:
        assert _scan.scan(journal, tree, _scan.Excluder([]), "skip", True, single="only") is True
    finally:
        tree.close()
        journal.close()
    rows = rows_by_path(jpath)
    assert {p: (r["kind"], r["size"]) for p, r in rows.items()} == {b"only": ("file", 5)}
    assert stat.S_ISREG(rows[b"only"]["mode"])


# -- mount points ----------------------------------------------------------------------------


def test_mount_table_decodes_octal_escapes(tmp_path):
    """/proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo; names are bytes."""
    info = tmp_path / "mountinfo"
    info.write_bytes(
        b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        b"45 22 7:0 / /srv/src/my\\040disk rw,relatime shared:9 - xfs /dev/loop0 rw\n"
        b"46 22 0:21 /var/data /srv/src/tab\\011nl\\012back\\134slash rw - ext4 /dev/sda1 rw\n"
        b"47 22 0:50 / /srv/src/caf\xe9 rw master:3 - tmpfs none rw\n"
        b"48 22 0:51 / /srv/srcx rw - tmpfs none rw\n"
        b"not a mountinfo line\n")
    table = _scan.mount_table(str(info))
    assert [(m.dev, m.root, m.point) for m in table] == [
        ((0, 21), "/", "/"),
        ((7, 0), "/", "/srv/src/my disk"),
        ((0, 21), "/var/data", "/srv/src/tab\tnl\nback\\slash"),
        ((0, 50), "/", os.fsdecode(b"/srv/src/caf\xe9")),
        ((0, 51), "/", "/srv/srcx"),
    ]
    assert _scan.mount_points_below(table, "/srv/src") == {
        "my disk", "tab\tnl\nback\\slash", os.fsdecode(b"caf\xe9")}
    assert _scan.mount_points_below(table, "/") == {
        "srv/src/my disk", "srv/src/tab\tnl\nback\\slash", os.fsdecode(b"srv/src/caf\xe9"), "srv/srcx"}
    assert _scan.mount_table(str(tmp_path / "missing")) is None
