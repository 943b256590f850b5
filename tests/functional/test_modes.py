# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Whole runs of the real core in each mode and with each behaviour option.

Every test runs on one filesystem (``samefs``: the rename path) and onto a
loop-mounted xfs (the copy path) unless it only makes sense for one of them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
import typing as t

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _mover

from fstree import (
    COMPARED, SAMEFS, XFS, Site, all_names, assert_clean_move, assert_same_tree, b, build_many,
    build_small, file_hash, part_files, read_journal, set_times, snapshot, state_snapshot, write,
)

only_cross = pytest.mark.parametrize("site", [XFS], indirect=True)

# Fields that a copy or move keeps; the source's own snapshot is compared on
# all of them (COMPARED) when it must not change.
DIR_FIELDS = ("kind", "mode", "uid", "gid", "mtime_ns", "xattrs")


def run(site: Site, **params: t.Any) -> dict[str, t.Any]:
    return _mover.run(site.params(**params))


def plan(site: Site, **params: t.Any) -> dict[str, t.Any]:
    return _mover.plan(site.params(**params))


def read(path: bytes | str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def ok(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert not result.get("failed"), result.get("msg")
    return result


# -- check mode, run, check mode, run ----------------------------------------------------


def test_check_run_check_run(site: Site) -> None:
    info = build_small(site.src)
    src_before = snapshot(site.src)
    first_plan = ok(plan(site))
    assert first_plan["changed"] is True
    assert first_plan["plan"]["files"] == info.entries
    assert first_plan["plan"]["bytes"] == info.bytes
    key = "copies" if site.cross else "renames"
    assert first_plan["plan"][key] == info.entries
    assert first_plan["plan"]["copies" if key == "renames" else "renames"] == 0
    assert_same_tree(src_before, snapshot(site.src), skip_root=False)
    assert not os.path.lexists(site.dest)
    assert not os.path.lexists(site.state), "check mode created the state dir"

    moved = ok(run(site))
    assert moved["changed"] is True
    assert_clean_move(site, moved, info)
    assert_same_tree(src_before, snapshot(site.dest))

    second_plan = ok(plan(site))
    assert second_plan["changed"] is False
    assert second_plan["plan"]["files"] == 0

    again = ok(run(site))
    assert again["changed"] is False
    assert again["stats"]["files_moved"] == 0
    assert again["complete"] is True
    assert_same_tree(src_before, snapshot(site.dest))


def test_check_mode_after_run_leaves_journal_untouched(site: Site) -> None:
    build_small(site.src)
    result = ok(run(site))
    job_dir = os.path.dirname(result["journal"])
    before = state_snapshot(job_dir)
    dest_before = snapshot(site.dest)
    ok(plan(site))
    after = state_snapshot(job_dir)
    for name in (b"journal.sqlite", b"lock"):
        assert after[name] == before[name], name
    assert_same_tree(dest_before, snapshot(site.dest), skip_root=False)


def test_check_mode_and_verify_after_run_change_no_journal_content(site: Site) -> None:
    """They read the journal through SQLite's read-only connection, which sees
    a writer that starts meanwhile; to take its shared lock SQLite may create
    its -shm and an empty -wal beside a journal at rest. Nothing else changes."""
    build_small(site.src)
    result = ok(run(site))
    job_dir = os.path.dirname(result["journal"])
    before = state_snapshot(job_dir)
    ok(plan(site))
    ok(run(site, mode="verify"))
    after = state_snapshot(job_dir)
    side = {b"", b"journal.sqlite-shm", b"journal.sqlite-wal"}     # b"": the directory's mtime
    assert {k: v for k, v in after.items() if k not in side} == \
        {k: v for k, v in before.items() if k not in side}
    assert after.get(b"journal.sqlite-wal", (None, None, 0))[2] == 0


@pytest.mark.parametrize("odd", ["st#ate", "st?ate", "st%41te", "st ate"])
def test_state_dir_with_uri_characters(site: Site, odd: str) -> None:
    """The journal is opened read-only by URI: its path must be quoted, not parsed."""
    site.state = site.base / odd
    build_small(site.src)
    ok(run(site, mode="copy"))
    siblings_before = sorted(os.listdir(site.base))
    checked = ok(plan(site, mode="copy"))
    assert checked["plan"]["files"] == 0 and checked["changed"] is False
    ok(run(site, mode="verify"))
    assert sorted(os.listdir(site.base)) == siblings_before, "a stray file was created"


# -- mode=copy ---------------------------------------------------------------------------


def test_copy_keeps_source_and_sets_dest(site: Site) -> None:
    info = build_small(site.src)
    src_before = snapshot(site.src)
    checked = ok(plan(site, mode="copy"))
    assert checked["plan"]["files"] == info.entries
    assert (checked["plan"]["copies"], checked["plan"]["renames"]) == (info.entries, 0), \
        "mode=copy never renames, even on one filesystem"
    result = ok(run(site, mode="copy"))
    assert result["changed"] is True and result["complete"] is True
    assert result["stats"]["files_total"] == info.entries
    assert result["stats"]["files_moved"] == info.entries
    assert result["stats"]["bytes_total"] == info.bytes
    # the source is exactly as it was (atimes of files included), the copy equals it
    assert_same_tree(src_before, snapshot(site.src), skip_root=False)
    assert_same_tree(src_before, snapshot(site.dest))
    assert part_files(site.src, site.dest) == []
    view = read_journal(result["journal"])
    assert {row[1] for row in view.files.values()} == {"done"}
    assert all(row[3] != "rename" for row in view.files.values())

    again = ok(run(site, mode="copy"))
    assert again["changed"] is False and again["stats"]["files_moved"] == 0
    assert_same_tree(src_before, snapshot(site.src), skip_root=False)


def test_copy_picks_up_a_new_source_file(site: Site) -> None:
    info = build_small(site.src)
    ok(run(site, mode="copy"))
    write(os.path.join(b(site.src), b"d/e/new file"), b"added after the first run\n")
    set_times(os.path.join(b(site.src), b"d/e/new file"), 99)
    src_before = snapshot(site.src)
    result = ok(run(site, mode="copy"))
    assert result["changed"] is True
    assert result["stats"]["files_moved"] == 1
    assert result["stats"]["files_total"] == info.entries + 1
    assert_same_tree(src_before, snapshot(site.src), skip_root=False)
    files = {rel: e for rel, e in src_before.items() if e.kind != "dir"}
    dest = {rel: e for rel, e in snapshot(site.dest).items() if e.kind != "dir"}
    assert_same_tree(files, dest)
    assert read(os.path.join(b(site.dest), b"d/e/new file")) == b"added after the first run\n"
    again = ok(run(site, mode="copy"))
    assert again["changed"] is False and again["stats"]["files_moved"] == 0


# -- mode=verify -------------------------------------------------------------------------


def _verify_changes_nothing(site: Site, **params: t.Any) -> dict[str, t.Any]:
    src = snapshot(site.src)
    dest = snapshot(site.dest)
    journal = os.path.join(site.job_dir(), "journal.sqlite")
    journal_hash = file_hash(os.fsencode(journal)) if os.path.exists(journal) else None
    result = run(site, mode="verify", **params)
    assert_same_tree(src, snapshot(site.src), skip_root=False)
    assert_same_tree(dest, snapshot(site.dest), skip_root=False)
    if journal_hash is not None:
        assert file_hash(os.fsencode(journal)) == journal_hash
    assert result["changed"] is False
    return result


def test_verify_after_copy(site: Site) -> None:
    info = build_small(site.src)
    ok(run(site, mode="copy"))
    result = ok(_verify_changes_nothing(site))
    assert result["complete"] is True
    assert result["stats"]["files_failed"] == 0
    assert result["stats"]["files_total"] == info.entries
    # every file compared with its source, the destination read from the disk
    assert result["stats"]["files_verified"] == info.entries, result["msg"]
    assert result["stats"]["files_unverifiable"] == 0 and result["unverifiable"] == []
    assert result["msg"] == "verified %d of %d files" % (info.entries, info.entries)

    # one byte flipped at the destination, same size
    victim = os.path.join(b(site.dest), b"d/e/two")
    st = os.lstat(victim)
    with open(victim, "r+b") as handle:
        handle.seek(1234)
        byte = handle.read(1)
        handle.seek(1234)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.lstat(victim).st_size == st.st_size
    result = _verify_changes_nothing(site)
    assert result["failed"] is True
    assert result["complete"] is False
    assert result["stats"]["files_failed"] == 1
    assert result["stats"]["files_total"] == info.entries
    assert [f["path"] for f in result["failures"] if f["path"].endswith("d/e/two")], result["failures"]
    assert all(f["path"].endswith("d/e/two") for f in result["failures"]), result["failures"]

    # a destination file missing
    os.unlink(os.path.join(b(site.dest), b"top"))
    result = _verify_changes_nothing(site)
    assert result["failed"] is True
    paths = sorted(f["path"].rsplit("/", 1)[-1] for f in result["failures"])
    assert "top" in paths and "two" in paths, result["failures"]
    assert os.path.exists(os.path.join(b(site.src), b"top"))


@only_cross
def test_verify_after_move_uses_recorded_hashes(site: Site) -> None:
    """The source is gone after a move: verify checks the destination against the journal."""
    build_small(site.src)
    ok(run(site))
    result = ok(_verify_changes_nothing(site))
    assert result["stats"]["files_total"] > 0
    victim = os.path.join(b(site.dest), b"d/e/two")
    with open(victim, "r+b") as handle:
        handle.seek(10)
        byte = handle.read(1)
        handle.seek(10)
        handle.write(bytes([byte[0] ^ 0xFF]))
    result = _verify_changes_nothing(site)
    assert result["failed"] is True
    assert [f for f in result["failures"] if f["path"].endswith("d/e/two")], result["failures"]
    os.unlink(os.path.join(b(site.dest), b"d/one"))
    result = _verify_changes_nothing(site)
    assert [f for f in result["failures"] if f["path"].endswith("d/one")], result["failures"]


def _flip_a_byte(path: bytes, offset: int) -> None:
    """Other bytes, same size and times: only a hash can tell."""
    st = os.lstat(path)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.lstat(path).st_size == st.st_size


def _assert_accounted(result: dict[str, t.Any], entries: int) -> None:
    """Every file is counted once: verified, failed or unverifiable, and msg says how many were checked."""
    stats = result["stats"]
    assert stats["files_total"] == entries, stats
    assert stats["files_verified"] + stats["files_failed"] + stats["files_unverifiable"] == entries, stats
    assert len(result["unverifiable"]) == stats["files_unverifiable"]
    assert "verified %d of %d files" % (stats["files_verified"], entries) in result["msg"], result["msg"]


def _named(entries: list[dict[str, t.Any]], rel: str) -> list[dict[str, t.Any]]:
    return [e for e in entries if e["path"].endswith("/" + rel)]


def _meanwhile(monkeypatch: pytest.MonkeyPatch, at: str, act: t.Callable[[], None]) -> None:
    """Another process acts on the source just before verify looks at `at`."""
    real = _mover._verify_one

    def acted(transfer: t.Any, src_tree: t.Any, dst_tree: t.Any, dest_rel: str, rel: str,
              st: os.stat_result, kind: str) -> t.Any:
        if rel == at:
            act()
        return real(transfer, src_tree, dst_tree, dest_rel, rel, st, kind)

    monkeypatch.setattr(_mover, "_verify_one", acted)


def test_verify_goes_on_after_a_file_it_cannot_read(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source replaced by a symbolic link while verify runs fails that file;
    the files after it are still verified (one error used to end the walk)."""
    info = build_small(site.src)
    ok(run(site, mode="copy"))
    two = os.path.join(b(site.src), b"d/e/two")
    _meanwhile(monkeypatch, "d/e/two", lambda: (os.unlink(two), os.symlink(b"zero", two)))
    result = run(site, mode="verify")
    assert result["failed"] is True and result["complete"] is False
    _assert_accounted(result, info.entries)
    assert (result["stats"]["files_failed"], result["stats"]["files_verified"]) == (1, info.entries - 1)
    (failure,) = _named(result["failures"], "d/e/two")
    assert "symbolic link" in failure["error"], failure


def test_verify_counts_a_source_removed_meanwhile_once(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A source removed while verify runs is compared with its recorded hash, and counted once."""
    info = build_small(site.src)
    ok(run(site, mode="copy"))
    _meanwhile(monkeypatch, "d/e/two", lambda: os.unlink(os.path.join(b(site.src), b"d/e/two")))
    result = ok(run(site, mode="verify"))
    _assert_accounted(result, info.entries)
    assert result["stats"]["files_verified"] == info.entries and result["complete"] is True


@pytest.mark.parametrize("site", [SAMEFS], indirect=True)
def test_verify_after_a_move_by_rename_does_not_claim_it_verified(site: Site) -> None:
    """On one filesystem a move renames: no hash is recorded and the source is
    gone. Verify counts every file, checks what it can (type, size) and says
    that it could not verify the content; a corrupted file is never called verified."""
    info = build_small(site.src)
    ok(run(site))
    _flip_a_byte(os.path.join(b(site.dest), b"d/e/two"), 1234)
    result = _verify_changes_nothing(site)
    assert result["complete"] is False, result["msg"]
    assert not result.get("failed"), result["msg"]       # unverifiable is not a failure
    _assert_accounted(result, info.entries)
    assert result["stats"]["files_verified"] == 1     # the symbolic link, by its target's digest
    (two,) = _named(result["unverifiable"], "d/e/two")
    assert "rename" in two["reason"], two
    assert "could not be verified because" in result["msg"] and "rename" in result["msg"], result["msg"]

    # what can be checked is: a file cut short fails
    with open(os.path.join(b(site.dest), b"d/one"), "r+b") as handle:
        handle.truncate(10)
    result = _verify_changes_nothing(site)
    assert result["failed"] is True and result["complete"] is False
    _assert_accounted(result, info.entries)
    (one,) = _named(result["failures"], "d/one")
    assert "size" in one["error"], one


@only_cross
def test_verify_after_a_move_with_hash_none_does_not_claim_it_verified(site: Site) -> None:
    """hash: none records only sizes: verify cannot tell other bytes of the same
    size, so it says so for each file instead of reporting them verified."""
    info = build_small(site.src)
    ok(run(site, hash="none"))
    _flip_a_byte(os.path.join(b(site.dest), b"d/e/two"), 1234)
    result = _verify_changes_nothing(site, hash="none")
    assert result["complete"] is False, result["msg"]
    assert not result.get("failed"), result["msg"]
    _assert_accounted(result, info.entries)
    assert result["stats"]["files_verified"] == 1     # the symbolic link, by its target's digest
    (two,) = _named(result["unverifiable"], "d/e/two")
    assert "hash: none" in two["reason"], two
    assert "could not be verified because" in result["msg"], result["msg"]


def test_verify_after_a_move_checks_files_and_links(site: Site) -> None:
    """After a move (across filesystems or by rename) every file and link is
    checked against the journal: files by their recorded hash, symbolic links
    by the digest of their target; a link pointed elsewhere fails."""
    info = build_small(site.src)
    ok(run(site))
    result = ok(_verify_changes_nothing(site))
    _assert_accounted(result, info.entries)
    if site.kind != "samefs":            # (a rename records no hash of a file's content)
        assert result["stats"]["files_verified"] == info.entries, result["unverifiable"]
        assert result["complete"] is True
    link = os.path.join(b(site.dest), b"d/to-top")
    os.unlink(link)
    os.symlink(b"elsewhere", link)
    result = run(site, mode="verify")
    assert result["failed"] is True, result["msg"]
    assert [f["path"] for f in result["failures"]] == [os.fsdecode(link)], result["failures"]
    assert "symbolic link target differs" in result["failures"][0]["error"]


@only_cross
def test_verify_a_one_file_job_after_its_file_was_moved(site: Site) -> None:
    """src is one file, moved away: the journal's hash is the reference (verify
    used to refuse: 'src does not exist')."""
    os.makedirs(site.src, exist_ok=True)
    write(os.path.join(b(site.src), b"only"), os.urandom(5000))
    params = dict(src=os.path.join(str(site.src), "only"), dest=os.path.join(str(site.dest), "renamed"))
    ok(run(site, **params))
    result = ok(run(site, mode="verify", **params))
    assert result["complete"] is True and result["stats"]["files_verified"] == 1, result["msg"]
    _flip_a_byte(os.path.join(b(site.dest), b"renamed"), 100)
    result = run(site, mode="verify", **params)
    assert result["failed"] is True and result["stats"]["files_failed"] == 1, result["msg"]


# -- on_conflict -------------------------------------------------------------------------


def _entries(snap: dict[bytes, t.Any]) -> int:
    return sum(1 for e in snap.values() if e.kind != "dir")


def _conflict_setup(site: Site, same: bool = False) -> tuple[bytes, bytes, bytes]:
    """A tree whose d/one exists at the destination (different content unless `same`)."""
    build_small(site.src)
    src_one = os.path.join(b(site.src), b"d/one")
    os.unlink(os.path.join(b(site.src), b"d/one-link"))     # keep d/one a single name
    content = read(src_one)
    os.makedirs(os.path.join(b(site.dest), b"d"))
    dest_one = os.path.join(b(site.dest), b"d/one")
    write(dest_one, content if same else b"X" * len(content))   # same size either way
    os.utime(dest_one, ns=(1, 2))
    return src_one, dest_one, content


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_conflict_keeps_source(site: Site, policy: str) -> None:
    src_one, dest_one, content = _conflict_setup(site)
    dest_before = read(dest_one)
    src_snap, dest_snap = snapshot(site.src), snapshot(site.dest)
    checked = ok(plan(site, on_conflict=policy))
    assert checked["plan"]["conflicts"] == 1
    assert checked["plan"]["files"] == _entries(src_snap) - 1
    assert_same_tree(src_snap, snapshot(site.src), skip_root=False)
    assert_same_tree(dest_snap, snapshot(site.dest), skip_root=False)
    assert not os.path.lexists(site.state)
    result = run(site, on_conflict=policy)
    assert read(src_one) == content, "the source of a conflict must be kept"
    assert read(dest_one) == dest_before, "the destination of a conflict must be kept"
    assert part_files(site.src, site.dest) == []
    # everything else moved
    assert read(os.path.join(b(site.dest), b"top")) == b"top level\n"
    assert not os.path.lexists(os.path.join(b(site.src), b"top"))
    view = read_journal(result["journal"])
    if policy == "fail":
        assert result["failed"] is True
        assert result["stats"]["files_failed"] == 1
        assert len(result["failures"]) == 1
        assert result["failures"][0]["path"].endswith("d/one")
        assert "conflict" in result["failures"][0]["error"]
        assert view.files[b"d/one"][1] == "failed"
    else:
        ok(result)
        assert result["stats"]["files_skipped"] == 1
        assert result["stats"]["files_failed"] == 0
        assert view.files[b"d/one"][1] == "skipped"
    assert os.path.isdir(os.path.join(b(site.src), b"d")), "a directory still holding a file was removed"


def test_conflict_overwrite_replaces_dest(site: Site) -> None:
    src_one, dest_one, content = _conflict_setup(site)
    src_st = os.lstat(src_one)
    checked = ok(plan(site, on_conflict="overwrite"))
    assert checked["plan"]["conflicts"] == 0
    assert checked["plan"]["files"] == _entries(snapshot(site.src))
    result = ok(run(site, on_conflict="overwrite"))
    assert read(dest_one) == content
    assert os.lstat(dest_one).st_mtime_ns == src_st.st_mtime_ns
    assert not os.path.lexists(src_one)
    assert result["complete"] is True
    assert os.listdir(site.src) == []
    assert part_files(site.src, site.dest) == []


@pytest.mark.parametrize("policy", ["fail", "skip", "overwrite"])
def test_identical_dest_counts_as_moved(site: Site, policy: str) -> None:
    src_one, dest_one, content = _conflict_setup(site, same=True)
    src_st = os.lstat(src_one)
    checked = ok(plan(site, on_conflict=policy))
    assert checked["plan"]["already_done"] == 1 and checked["plan"]["conflicts"] == 0
    assert checked["plan"]["files"] == _entries(snapshot(site.src)) - 1
    result = ok(run(site, on_conflict=policy))
    assert result["stats"]["files_failed"] == 0 and result["stats"]["files_skipped"] == 0
    assert result["complete"] is True
    assert not os.path.lexists(src_one), "an identical destination counts as moved"
    assert read(dest_one) == content
    assert os.lstat(dest_one).st_mtime_ns == src_st.st_mtime_ns, "metadata of the source applied"
    assert os.listdir(site.src) == []
    view = read_journal(result["journal"])
    assert view.files[b"d/one"][1] == "done"


# -- exclude -----------------------------------------------------------------------------


def test_exclude_by_name_and_path(site: Site) -> None:
    src = b(site.src)
    for rel in (b"keep/sub/deeper", b"keep/other", b"cache/inner", b"go"):
        os.makedirs(os.path.join(src, rel), exist_ok=True)
    for rel in (b"a.tmp", b"go/b.tmp", b"go/moved.txt", b"keep/sub/x.txt", b"keep/sub/deeper/y.txt",
                b"keep/other/moved.txt", b"keep/moved.txt", b"cache/inner/c.txt", b"top.txt"):
        write(os.path.join(src, rel), rel + b"\n")
    excluded = [b"a.tmp", b"go/b.tmp", b"keep/sub/x.txt", b"keep/sub/deeper/y.txt", b"cache/inner/c.txt"]
    moved = [b"go/moved.txt", b"keep/other/moved.txt", b"keep/moved.txt", b"top.txt"]
    result = ok(run(site, exclude=["*.tmp", "keep/sub/*", "cache"]))
    assert result["stats"]["files_total"] == len(moved)
    for rel in excluded:
        assert read(os.path.join(src, rel)) == rel + b"\n", rel
        assert not os.path.lexists(os.path.join(b(site.dest), rel)), rel
    for rel in moved:
        assert read(os.path.join(b(site.dest), rel)) == rel + b"\n", rel
        assert not os.path.lexists(os.path.join(src, rel)), rel
    # directories still holding excluded files stay; emptied ones go
    remaining = all_names(src)
    assert sorted(remaining) == sorted([b"a.tmp", b"cache", b"cache/inner", b"cache/inner/c.txt", b"go",
                                        b"go/b.tmp", b"keep", b"keep/sub", b"keep/sub/deeper",
                                        b"keep/sub/deeper/y.txt", b"keep/sub/x.txt"])
    assert not os.path.lexists(os.path.join(b(site.dest), b"cache"))
    view = read_journal(result["journal"])
    assert set(view.files) == set(moved)
    again = ok(run(site, exclude=["*.tmp", "keep/sub/*", "cache"]))
    assert again["changed"] is False
    assert sorted(all_names(src)) == sorted(remaining)


# -- special files -----------------------------------------------------------------------


def test_special_files_skip(site: Site) -> None:
    src = b(site.src)
    os.mkdir(os.path.join(src, b"pipes"))
    os.mkfifo(os.path.join(src, b"pipes/fifo"), 0o640)
    write(os.path.join(src, b"pipes/file"), b"regular\n")
    result = ok(run(site))
    assert result["stats"]["special_skipped"] == 1
    assert result["stats"]["files_skipped"] == 1
    assert stat.S_ISFIFO(os.lstat(os.path.join(src, b"pipes/fifo")).st_mode), "the FIFO must stay"
    assert not os.path.lexists(os.path.join(b(site.dest), b"pipes/fifo"))
    assert read(os.path.join(b(site.dest), b"pipes/file")) == b"regular\n"
    assert not os.path.lexists(os.path.join(src, b"pipes/file"))
    assert os.path.isdir(os.path.join(src, b"pipes"))
    assert read_journal(result["journal"]).files[b"pipes/fifo"][1] == "skipped"
    checked = ok(plan(site))
    assert checked["plan"]["files"] == 0


@pytest.mark.root
def test_special_files_recreate(site: Site) -> None:
    src = b(site.src)
    os.mkdir(os.path.join(src, b"dev"))
    fifo, null = os.path.join(src, b"dev/fifo"), os.path.join(src, b"dev/null-like")
    os.mkfifo(fifo)
    os.chmod(fifo, 0o1620)
    os.mknod(null, stat.S_IFCHR | 0o640, os.makedev(1, 3))
    os.chown(null, 1234, 5678)
    os.chmod(null, 0o640)
    set_times(fifo, 1)
    set_times(null, 2)
    before = snapshot(site.src)
    expected = ok(plan(site, special_files="recreate"))
    assert expected["plan"]["files"] == 2 and expected["plan"]["skipped"] == 0
    result = ok(run(site, special_files="recreate"))
    assert result["stats"]["special_skipped"] == 0
    assert result["complete"] is True
    dest = snapshot(site.dest)
    assert dest[b"dev/fifo"].kind == "fifo"
    assert dest[b"dev/null-like"].kind == "chr"
    assert dest[b"dev/null-like"].rdev == os.makedev(1, 3)
    assert_same_tree({k: v for k, v in before.items() if k}, {k: v for k, v in dest.items() if k})
    assert os.listdir(site.src) == []


# -- single-file src ---------------------------------------------------------------------


@pytest.mark.parametrize("into_dir", [True, False], ids=["into-dir", "new-name"])
def test_single_file(site: Site, into_dir: bool) -> None:
    src_file = os.path.join(b(site.src), b"only file.bin")
    write(src_file, os.urandom(100_000), 0o640)
    set_times(src_file, 7)
    before = snapshot(site.src)[b"only file.bin"]
    os.makedirs(site.dest)
    target = os.path.join(b(site.dest), b"only file.bin" if into_dir else b"renamed.bin")
    dest_arg = site.dest if into_dir else os.fsdecode(target)
    params = {"src": os.fsdecode(src_file), "dest": os.fsdecode(dest_arg)}
    checked = ok(_mover.plan(site.params(**params)))
    assert checked["plan"]["files"] == 1 and checked["plan"]["bytes"] == 100_000
    assert not os.path.lexists(site.state)
    result = ok(_mover.run(site.params(**params)))
    assert result["changed"] is True and result["complete"] is True
    assert result["stats"]["files_moved"] == 1
    assert not os.path.lexists(src_file)
    assert os.path.isdir(site.src), "a single-file move leaves its directory"
    got = snapshot(site.dest)
    name = os.path.basename(target)
    assert set(got) == {b"", name}
    assert_same_tree({b"x": before}, {b"x": got[name]})
    assert part_files(site.dest) == []
    assert read_journal(result["journal"]).files[b"only file.bin"][1] == "done"
    again = ok(_mover.run(site.params(**params)))
    assert again["changed"] is False and again["stats"]["files_moved"] == 0
    checked = ok(_mover.plan(site.params(**params)))
    assert checked["changed"] is False and checked["plan"]["files"] == 0
    assert_same_tree({b"x": before}, {b"x": snapshot(site.dest)[name]})


# -- workers -----------------------------------------------------------------------------


def test_workers_1_and_4_give_identical_results(site: Site) -> None:
    site_b = Site(site.kind, site.base, site.base / "src-b", site.dest.parent / "dest-b", site.state)
    site_b.src.mkdir()
    info = build_many(site.src)
    assert build_many(site_b.src) == info
    assert info.files == 2000 and info.dirs == 20
    expected = snapshot(site.src)
    one = ok(run(site, workers=1))
    four = ok(_mover.run(site_b.params(workers=4)))
    assert_clean_move(site, one, info)
    assert_clean_move(site_b, four, info)
    dest_one, dest_four = snapshot(site.dest), snapshot(site_b.dest)
    assert_same_tree(expected, dest_one)
    assert_same_tree(dest_one, dest_four, skip_root=False)
    ignore = {"elapsed_seconds", "bytes_per_second", "job_id", "journal"}
    assert {k: v for k, v in one.items() if k not in ignore} == \
        {k: v for k, v in four.items() if k not in ignore}


# -- hash algorithms ---------------------------------------------------------------------


def _hash_tree(root: bytes) -> dict[bytes, bytes]:
    content = {b"plain": os.urandom(200_000), b"empty": b"", b"d/small": b"small\n"}
    os.mkdir(os.path.join(root, b"d"))
    for rel, data in content.items():
        write(os.path.join(root, rel), data)
    sparse = os.path.join(root, b"d/sparse")
    with open(sparse, "wb") as handle:
        handle.truncate(8 << 20)
        handle.seek(4 << 20)
        handle.write(b"island")
    content[b"d/sparse"] = read(sparse)
    return content


@only_cross
@pytest.mark.parametrize("algorithm,readback", [
    ("sha256", True), ("none", True), ("blake3", True), ("auto", False), ("sha256", False)])
def test_hash_algorithms(site: Site, algorithm: str, readback: bool) -> None:
    content = _hash_tree(b(site.src))
    expected = snapshot(site.src)
    result = ok(run(site, hash=algorithm, verify_readback=readback))
    resolved = {"auto": result["hash_algorithm"]}.get(algorithm, algorithm)
    assert result["hash_algorithm"] == resolved
    assert_same_tree(expected, snapshot(site.dest))
    assert os.listdir(site.src) == []
    view = read_journal(result["journal"])
    for rel, data in content.items():
        digest = view.files[rel][2]
        if resolved == "none":
            assert digest == "size:%d" % len(data), (rel, digest)
        elif resolved == "sha256":
            assert digest == "sha256:" + hashlib.sha256(data).hexdigest(), rel
        else:
            import blake3  # pylint: disable=import-outside-toplevel
            assert digest == "blake3:" + blake3.blake3(data).hexdigest(), rel


# -- preserve subsets --------------------------------------------------------------------


@only_cross
def test_preserve_without_hardlinks_gives_separate_inodes(site: Site) -> None:
    info = build_small(site.src)
    expected = snapshot(site.src)
    result = ok(run(site, preserve=["owner", "mode", "times", "xattrs"]))
    assert result["complete"] is True
    one, link = (os.lstat(os.path.join(b(site.dest), rel)) for rel in (b"d/one", b"d/one-link"))
    assert one.st_ino != link.st_ino
    assert one.st_nlink == 1 and link.st_nlink == 1
    fields = [f for f in COMPARED if f not in ("link_group", "nlink")]
    assert_same_tree(expected, snapshot(site.dest), fields=fields)
    assert read(os.path.join(b(site.dest), b"d/one-link")) == read(os.path.join(b(site.dest), b"d/one"))
    assert os.listdir(site.src) == [] and info.hardlinks == 1


@only_cross
def test_preserve_without_times(site: Site) -> None:
    build_small(site.src)
    expected = snapshot(site.src)
    started = time.time_ns() - 2_000_000_000         # coarse fs timestamps
    ok(run(site, preserve=["owner", "mode", "xattrs", "hardlinks"]))
    got = snapshot(site.dest)
    for rel, entry in got.items():
        if rel and entry.kind in ("file", "dir"):
            assert entry.mtime_ns >= started, (rel, entry.mtime_ns)
    fields = [f for f in COMPARED if f not in ("mtime_ns", "atime_ns")]
    assert_same_tree(expected, got, fields=fields)


@only_cross
@pytest.mark.root
def test_preserve_without_owner_and_xattrs(site: Site) -> None:
    build_small(site.src)
    src = b(site.src)
    os.chown(os.path.join(src, b"top"), 1234, 5678)
    os.setxattr(os.path.join(src, b"top"), b"user.tag", b"kept only with xattrs")
    set_times(os.path.join(src, b"top"), 5)
    expected = snapshot(site.src)
    ok(run(site, preserve=["mode", "times", "hardlinks"]))
    got = snapshot(site.dest)
    st = os.lstat(os.path.join(b(site.dest), b"top"))
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    assert got[b"top"].xattrs == ()
    assert_same_tree(expected, got, fields=[f for f in COMPARED if f not in ("uid", "gid", "xattrs")])
