# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_preflight.py and the durable.mover.preflight module.

Trees are real files under tmp_path; a full or read-only destination is a
small tmpfs (root only: skipped with the reason otherwise). What the kernel
cannot be made to do on demand (a filesystem without xattrs, an old Python,
a missing blake3) is simulated by patching the one call that reports it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import types

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _hashing, _mover
from ansible_collections.durable.mover.plugins.module_utils import _preflight
from ansible_collections.durable.mover.plugins.module_utils._preflight import preflight, summary
from ansible_collections.durable.mover.plugins.modules import preflight as preflight_module

KiB = 1024
MiB = 1024 * KiB


def make_tree(root, sizes):
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


@pytest.fixture
def job(tmp_path):
    """A small tree and the params of a move of it to another directory of the same filesystem."""
    src = tmp_path / "src"
    make_tree(src, {"a": 1000, "b": 3000, "sub/c": 20000, "sub/d": 0})
    return {"src": str(src), "dest": str(tmp_path / "dest"), "state_dir": str(tmp_path / "state"),
            "hash": "sha256"}


def test_a_move_that_can_run(job):
    found = preflight(job)
    assert found["ok"] is True and found["problems"] == []
    findings = found["findings"]
    assert findings["src"]["exists"] and findings["src"]["readable"] and findings["src"]["type"] == "directory"
    # dest does not exist yet: its nearest existing ancestor is what was checked.
    assert findings["dest"]["exists"] is False
    assert findings["dest"]["nearest_existing"] == os.path.dirname(job["dest"])
    assert findings["dest"]["writable"] is True and findings["dest"]["read_only"] is False
    assert findings["plan"]["files"] == 4 and findings["plan"]["bytes"] == 24000
    space = findings["space"]
    assert space["same_filesystem"] is True
    assert (space["files_to_move"], space["bytes_to_move"]) == (4, 24000)
    # Renames take no data and no inode; the two directories made (sub, and
    # dest itself) and the journal (on the same filesystem here) take room.
    estimate = space["estimate"]
    assert (estimate["renames"], estimate["files"], estimate["file_blocks_bytes"]) == (4, 0, 0)
    assert estimate["dirs"] == 1 and estimate["inodes"] == 2
    assert estimate["directory_bytes"] == 2 * estimate["block_size"]
    assert space["bytes_needed"] == estimate["bytes"] + 4 * _preflight.JOURNAL_BYTES_PER_ENTRY
    assert space["inodes_needed"] == 2
    assert findings["python"]["supported"] is True
    assert findings["hash"]["algorithm"] == "sha256"
    assert findings["state_dir"]["writable"] is True
    assert findings["journal_exists"] is False
    assert findings["job_id"] == _mover.Job(_mover.Options.from_params(job)).job_id
    assert summary(found).startswith("preflight ok: 4 file(s), 23.4 KiB (24000 bytes) still to move; same filesystem "
                                     "(renames); about ")
    json.dumps(found)      # the module returns it as is


def test_preflight_changes_nothing(job, tmp_path):
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    preflight(job)
    preflight(dict(job, mode="copy"))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not os.path.exists(job["state_dir"]) and not os.path.exists(job["dest"])


def test_missing_source(job):
    found = preflight(dict(job, src=job["src"] + "-nope"))
    assert found["ok"] is False
    assert found["problems"] == ["src does not exist: %s-nope" % job["src"]]
    assert found["findings"]["plan"] is None and "space" not in found["findings"]


def test_bad_options_are_a_problem_not_an_exception(job):
    found = preflight(dict(job, mode="teleport"))
    assert found["ok"] is False
    assert "mode must be one of" in found["problems"][0]


def test_dest_inside_src_is_refused_by_the_plan(job):
    found = preflight(dict(job, dest=os.path.join(job["src"], "sub", "inner")))
    assert found["ok"] is False
    assert any("dest is inside src" in problem for problem in found["problems"])


def test_dest_that_is_a_file(job, tmp_path):
    (tmp_path / "afile").write_text("x")
    found = preflight(dict(job, dest=str(tmp_path / "afile" / "deeper")))
    assert found["ok"] is False
    assert any("not a directory" in problem for problem in found["problems"])


def test_a_resumed_job_counts_only_what_is_left(job):
    result = _mover.run(dict(job))
    assert result["complete"], result
    make_tree(_path(job["src"]), {"late": 777})
    found = preflight(job)
    assert found["ok"], found["problems"]
    assert found["findings"]["journal_exists"] is True
    assert found["findings"]["plan"]["files"] == 1
    assert found["findings"]["plan"]["already_done"] == 4
    assert found["findings"]["space"]["bytes_to_move"] == 777


def test_a_finished_single_file_job_is_no_problem(tmp_path):
    (tmp_path / "one.bin").write_bytes(b"x" * 100)
    params = {"src": str(tmp_path / "one.bin"), "dest": str(tmp_path / "moved.bin"),
              "state_dir": str(tmp_path / "state")}
    assert _mover.run(dict(params))["complete"]
    found = preflight(params)
    assert found["ok"], found["problems"]
    assert found["findings"]["src"].get("already_moved") is True
    assert "missing_problem" not in found["findings"]["src"]
    # A single file never moved and missing is a problem.
    found = preflight(dict(params, src=str(tmp_path / "other.bin")))
    assert found["problems"] == ["src does not exist: %s" % (tmp_path / "other.bin")]


def test_copy_on_one_filesystem_needs_room_but_verify_does_not(job):
    copy = preflight(dict(job, mode="copy"))["findings"]["space"]
    block = copy["estimate"]["block_size"]
    assert copy["estimate"]["data_bytes"] == 24000
    assert copy["estimate"]["file_blocks_bytes"] == sum(-(-size // block) * block for size in (1000, 3000, 20000, 0))
    assert copy["estimate"]["margin_bytes"] == _preflight.MARGIN_MIN
    assert copy["bytes_needed"] == copy["estimate"]["bytes"] + 4 * _preflight.JOURNAL_BYTES_PER_ENTRY
    verify = preflight(dict(job, mode="verify"))
    assert verify["findings"]["space"]["bytes_needed"] == 0
    assert "removable" not in verify["findings"]["src"]


def test_blake3_asked_for_but_missing(job, monkeypatch):
    monkeypatch.setattr(_hashing, "_blake3", None)
    found = preflight(dict(job, hash="blake3"))
    assert found["ok"] is False
    assert any("blake3 Python package is not installed" in problem for problem in found["problems"])
    auto = preflight(dict(job, hash="auto"))
    assert auto["ok"] is True
    assert auto["findings"]["hash"] == {"requested": "auto", "blake3_available": False,
                                        "algorithm": "sha256", "fallback": True}


def test_old_python_is_a_problem(job, monkeypatch):
    old = types.SimpleNamespace(version_info=(3, 8, 10, "final", 0), executable="/usr/bin/python3.8")
    monkeypatch.setattr(_preflight, "sys", old)
    found = preflight(job)
    assert found["findings"]["python"] == {"version": "3.8.10", "executable": "/usr/bin/python3.8",
                                           "supported": False}
    assert found["problems"] == ["Python 3.8.10 on the host is too old: durable.mover needs 3.9 or newer"]


# --------------------------------------------------------------------------
# Extended attributes
# --------------------------------------------------------------------------

@pytest.fixture
def xattr_job(job):
    try:
        os.setxattr(os.path.join(job["src"], "a"), "user.origin", b"old disk")
    except OSError as exc:
        pytest.skip("tmp_path's filesystem has no user xattrs (%s)" % os.strerror(exc.errno))
    return job


@contextlib.contextmanager
def no_xattrs_at(monkeypatch, path, call="listxattr"):
    """Make os.<call> on `path` fail with ENOTSUP, as on a filesystem without xattrs."""
    real = getattr(os, call)

    def fake(target, *args, **kwargs):
        if os.fspath(target) == os.fspath(path):
            raise OSError(errno.ENOTSUP, os.strerror(errno.ENOTSUP), target)
        return real(target, *args, **kwargs)

    monkeypatch.setattr(os, call, fake)
    yield


def test_xattrs_at_the_source_and_a_destination_that_has_them(xattr_job):
    found = preflight(xattr_job)
    assert found["ok"], found["problems"]
    assert "user.origin" in found["findings"]["xattrs"]["source_names"]
    assert found["findings"]["xattrs"]["supported"] is True


def test_destination_without_xattrs(xattr_job, monkeypatch):
    nearest = os.path.dirname(xattr_job["dest"])
    with no_xattrs_at(monkeypatch, nearest):
        found = preflight(xattr_job)
    assert found["ok"] is False
    assert found["findings"]["xattrs"]["supported"] is False
    assert "user.origin" in found["findings"]["xattrs"]["unsupported_names"]
    assert any("does not support the extended attributes" in p and "user.origin" in p
               for p in found["problems"])
    # Without xattrs in preserve the same destination is fine.
    with no_xattrs_at(monkeypatch, nearest):
        found = preflight(dict(xattr_job, preserve=["mode", "times"]))
    assert found["ok"], found["problems"]
    assert found["findings"]["xattrs"]["wanted"] is False


def test_destination_without_the_namespace_the_source_uses(xattr_job, monkeypatch):
    # listxattr works (e.g. security labels) but the user.* namespace is refused.
    with no_xattrs_at(monkeypatch, os.path.dirname(xattr_job["dest"]), call="getxattr"):
        found = preflight(xattr_job)
    assert found["findings"]["xattrs"]["supported"] is True
    assert "user.origin" in found["findings"]["xattrs"]["unsupported_names"]
    assert found["ok"] is False


def test_source_without_xattrs_needs_no_support(job, monkeypatch):
    with no_xattrs_at(monkeypatch, os.path.dirname(job["dest"])):
        found = preflight(job)
    if found["findings"]["xattrs"]["source_names"]:
        pytest.skip("this filesystem labels every file (SELinux?)")
    assert found["ok"], found["problems"]


# --------------------------------------------------------------------------
# Real filesystems (root): full, read-only
# --------------------------------------------------------------------------

@pytest.mark.root
def test_not_enough_space_names_both_numbers(job, tmpfs):
    make_tree(_path(job["src"]), {"big": 100 * KiB})
    small = tmpfs("64k")
    found = preflight(dict(job, dest=str(small / "dest")))
    assert found["ok"] is False
    space = found["findings"]["space"]
    assert space["same_filesystem"] is False
    assert space["bytes_to_move"] == 24000 + 100 * KiB
    estimate = space["estimate"]
    assert estimate["filesystem"] == "tmpfs" and estimate["data_bytes"] == space["bytes_to_move"]
    assert space["bytes_needed"] == estimate["bytes"]
    assert space["free_bytes"] == 64 * KiB
    assert found["problems"] == [
        "not enough free space at dest: about %s needed, %s has 64.0 KiB (65536 bytes) free (5 file(s) holding "
        "123.4 KiB of data take 128.0 KiB in 4.0 KiB blocks, inodes and directories %s, a 5%% margin 1.0 MiB)"
        % (_preflight.human_bytes(estimate["bytes"]), small,
           _preflight.short_bytes(estimate["inode_bytes"] + estimate["directory_bytes"]))]
    assert summary(found).startswith("preflight found 1 problem(s): not enough free space")


@pytest.mark.root
def test_enough_space_on_another_filesystem(job, tmpfs):
    roomy = tmpfs("8m")
    found = preflight(dict(job, dest=str(roomy / "dest")))
    assert found["ok"], found["problems"]
    assert found["findings"]["space"]["same_filesystem"] is False
    assert found["findings"]["space"]["estimate"]["data_bytes"] == 24000
    assert found["findings"]["space"]["bytes_needed"] == found["findings"]["space"]["estimate"]["bytes"]


@pytest.mark.root
def test_read_only_destination(job, tmpfs, remount_ro):
    mount = tmpfs("8m")
    remount_ro(mount)
    found = preflight(dict(job, dest=str(mount / "dest")))
    assert found["ok"] is False
    assert found["findings"]["dest"]["read_only"] is True
    assert "dest is on a read-only filesystem: %s" % mount in found["problems"]
    # Verifying needs no write access.
    assert preflight(dict(job, dest=str(mount / "dest"), mode="verify"))["problems"] == []


@pytest.mark.root
def test_read_only_source_can_be_copied_not_moved(tmp_path, tmpfs, remount_ro):
    mount = tmpfs("8m")
    make_tree(mount, {"x": 10})
    remount_ro(mount)
    params = {"src": str(mount), "dest": str(tmp_path / "dest"), "state_dir": str(tmp_path / "state")}
    found = preflight(params)
    assert any("src is not writable" in problem for problem in found["problems"])
    assert preflight(dict(params, mode="copy"))["ok"] is True


@pytest.mark.root
def test_read_only_state_dir(job, tmpfs, remount_ro):
    mount = tmpfs("8m")
    remount_ro(mount)
    found = preflight(dict(job, state_dir=str(mount / "state")))
    assert "state_dir is on a read-only filesystem: %s" % mount in found["problems"]


# --------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------

class ModuleExit(Exception):
    def __init__(self, result):
        super().__init__(result)
        self.result = result


def run_module(monkeypatch, **args):
    """Run the module's main() in-process; return (failed, result)."""
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args

    def exit_json(self, **result):
        raise ModuleExit(dict(result, failed=False))

    def fail_json(self, **result):
        raise ModuleExit(dict(result, failed=True))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    with patch_module_args(args), pytest.raises(ModuleExit) as caught:
        preflight_module.main()
    return caught.value.result


def test_module_succeeds_with_findings(job, monkeypatch):
    result = run_module(monkeypatch, **job)
    assert result["failed"] is False and result["changed"] is False
    assert result["ok"] is True and result["problems"] == []
    assert result["findings"]["plan"]["files"] == 4
    assert result["msg"].startswith("preflight ok")


def test_module_fails_on_problems_unless_told_not_to(job, monkeypatch):
    bad = dict(job, src=job["src"] + "-nope")
    result = run_module(monkeypatch, **bad)
    assert result["failed"] is True and result["ok"] is False
    assert result["msg"] == "preflight found 1 problem(s): src does not exist: %s-nope" % job["src"]
    assert "findings" in result
    result = run_module(monkeypatch, fail_on_problems=False, **bad)
    assert result["failed"] is False and result["ok"] is False
    assert result["problems"] == ["src does not exist: %s-nope" % job["src"]]


def test_module_options_match_the_move_module():
    from ansible_collections.durable.mover.plugins.modules import move as move_module
    for name in _preflight.PLAN_OPTIONS:
        assert preflight_module.ARGUMENT_SPEC[name] == move_module.ARGUMENT_SPEC[name], name


def _path(text):
    from pathlib import Path
    return Path(text)


# ---------------------------------------------------------------------------
# prepare: the preflight's listing is the move's scan
# ---------------------------------------------------------------------------

def _scans_of(monkeypatch):
    """Count the listings of the source root (each _scan.list_dir of '')."""
    from ansible_collections.durable.mover.plugins.module_utils import _scan
    listed = []
    real = _scan.list_dir

    def counted(tree, reldir, excluded):
        if reldir == '':
            listed.append(tree.root_path)
        return real(tree, reldir, excluded)
    monkeypatch.setattr(_scan, "list_dir", counted)
    return listed


@pytest.mark.root
def test_prepare_plans_from_the_journal_as_the_walk_plans(job, tmpfs):
    """The findings of a prepared preflight (from the journal's rows) are those of the read-only walk."""
    make_tree(_path(job["src"]), {"holes": 0})
    with open(os.path.join(job["src"], "holes"), "r+b") as handle:
        handle.seek(3 * MiB)
        handle.write(b"end")
    os.link(os.path.join(job["src"], "a"), os.path.join(job["src"], "sub", "a2"))
    os.mkfifo(os.path.join(job["src"], "fifo"))
    dest = str(tmpfs("32m") / "dest")
    walked = preflight(dict(job, dest=dest))
    prepared = preflight(dict(job, dest=dest, prepare="t1"))
    assert prepared["findings"]["prepared"] == "t1" and walked["findings"]["prepared"] is None
    assert prepared["findings"]["plan"] == walked["findings"]["plan"]
    assert prepared["findings"]["space"] == walked["findings"]["space"]
    assert prepared["findings"]["finished"] is None
    assert prepared["ok"] is True


def test_the_prepared_move_lists_nothing_and_leaves_what_came_later(job, monkeypatch):
    """The move given the token lists the source no more; a file created between the preflight and
    the move stays at the source, and the next preflight and move take it: nothing is lost."""
    listed = _scans_of(monkeypatch)
    found = preflight(dict(job, prepare="t1"))
    assert found["findings"]["plan"]["files"] == 4 and len(listed) == 1
    (_path(job["src"]) / "sub" / "late").write_bytes(b"late")
    result = _mover.run(dict(job, prepared="t1"))
    assert len(listed) == 1, "the move listed the source again"
    assert result["stats"]["files_moved"] == 4 and result["stats"]["resumed"] is False
    assert (_path(job["src"]) / "sub" / "late").read_bytes() == b"late"
    again = preflight(dict(job, prepare="t2"))
    assert again["findings"]["plan"]["files"] == 1 and again["findings"]["finished"] is None
    result = _mover.run(dict(job, prepared="t2"))
    assert result["stats"]["files_moved"] == 1 and result["complete"] is True
    assert (_path(job["dest"]) / "sub" / "late").read_bytes() == b"late"
    assert not (_path(job["src"]) / "sub" / "late").exists()


def test_a_token_the_journal_no_longer_holds_makes_the_move_list_the_source(job, monkeypatch):
    """Another preflight (or run) came between: the first token is stale, the move lists the source
    itself and finds what came after the first preflight."""
    preflight(dict(job, prepare="t1"))
    (_path(job["src"]) / "late1").write_bytes(b"1")
    preflight(dict(job, prepare="t2"))
    (_path(job["src"]) / "late2").write_bytes(b"2")
    listed = _scans_of(monkeypatch)
    result = _mover.run(dict(job, prepared="t1"))
    assert len(listed) == 1
    assert result["stats"]["files_moved"] == 6 and result["complete"] is True
    assert (_path(job["dest"]) / "late2").read_bytes() == b"2"
    assert [name for _dir, _dirs, names in os.walk(job["src"]) for name in names] == []


def test_other_scope_options_make_the_token_stale(job, monkeypatch):
    preflight(dict(job, prepare="t1"))
    (_path(job["src"]) / "late").write_bytes(b"1")
    listed = _scans_of(monkeypatch)
    result = _mover.run(dict(job, prepared="t1", exclude=["nothing-matches"]))
    assert len(listed) == 1 and result["stats"]["files_moved"] == 5


def test_a_finished_job_is_answered_with_the_moves_own_result(job):
    first = _mover.run(dict(job))
    assert first["complete"] is True
    found = preflight(dict(job, prepare="t1"))
    finished = found["findings"]["finished"]
    rerun = _mover.run(dict(job))                 # what the move itself answers
    assert finished is not None
    assert sorted(finished) == sorted(rerun)
    for key in ("changed", "complete", "stats", "failures", "job_id", "journal", "mode"):
        assert finished[key] == rerun[key], key
    assert finished["changed"] is False and finished["stats"]["files_already_done"] == 4
    (_path(job["src"]) / "late").write_bytes(b"1")
    assert preflight(dict(job, prepare="t2"))["findings"]["finished"] is None


def test_prepare_with_the_lock_held_lists_nothing_and_says_so(job, monkeypatch):
    from ansible_collections.durable.mover.plugins.module_utils._lock import JobLock
    job_dir = _mover.Job(_mover.Options.from_params(job)).state_dir
    os.makedirs(job_dir)
    listed = _scans_of(monkeypatch)
    with JobLock(job_dir, "held"):
        found = preflight(dict(job, prepare="t1"))
    assert found["ok"] is True and listed == []
    assert found["findings"]["running"] is True and found["findings"]["running_pid"] == os.getpid()
    assert found["findings"]["prepared"] is None and found["findings"]["plan"] is None


def test_check_mode_never_prepares(job, monkeypatch):
    result = run_module(monkeypatch, _ansible_check_mode=True, prepare=True, **job)
    assert result["failed"] is False and result["findings"]["prepared"] is None
    assert not os.path.exists(job["state_dir"])
    result = run_module(monkeypatch, prepare=True, **job)
    assert len(result["findings"]["prepared"]) == 32
    assert os.path.exists(job["state_dir"])


def test_the_async_marker_is_looked_for(job, monkeypatch, tmp_path):
    marker = tmp_path / "marker"
    assert preflight(dict(job, marker=str(marker)))["findings"]["async_marker"] is False
    marker.write_text("123.456")
    assert preflight(dict(job, marker=str(marker)))["findings"]["async_marker"] is True


def test_a_finished_job_is_answered_without_writing_its_journal(job):
    """Nothing new at the source: the journal is read (not written, not checked row by row); a new
    directory at the source is something new (the move makes it at the destination)."""
    assert _mover.run(dict(job))["complete"] is True
    journal = _mover.Job(_mover.Options.from_params(job)).journal_path
    before = [(os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in (journal,) if os.path.exists(p)]
    found = preflight(dict(job, prepare="t1"))
    assert found["findings"]["finished"]["complete"] is True
    assert found["findings"]["plan"]["already_done"] == 4 and found["findings"]["plan"]["files"] == 0
    assert [(os.stat(journal).st_mtime_ns, os.stat(journal).st_size)] == before
    os.makedirs(os.path.join(job["src"], "new", "empty"))
    found = preflight(dict(job, prepare="t2"))
    assert found["findings"]["finished"] is None and found["findings"]["prepared"] == "t2"
    result = _mover.run(dict(job, prepared="t2"))
    assert result["complete"] is True and os.path.isdir(os.path.join(job["dest"], "new", "empty"))
    assert preflight(dict(job, prepare="t3"))["findings"]["finished"] is not None


@pytest.mark.root
@pytest.mark.parametrize("where,point", [("samefs", "after_rename"), ("tmpfs", "after_unlink")])
def test_prepare_after_a_killed_move_plans_what_is_left(job, tmpfs, where, point):
    """A move killed after it renamed a file into place (same filesystem: the
    source name is gone, the journal not told) or after it removed a copied
    file's source (the journal says copied): the prepared plan reads those
    rows from the journal, finds no source to open, and must not call that a
    problem (the move settles them); the prepared move then completes the job.

    Found by tests/fleet/test_fleet_scale.py: a host whose move was killed
    mid-run failed its rerun's preflight with "cannot open source: No such
    file or directory" and the role moved nothing."""
    import subprocess
    import sys
    if where == "tmpfs":
        job = dict(job, dest=str(tmpfs("32m") / "dest"))
    cli = os.path.join(os.path.dirname(__file__), "..", "tools", "mover_cli.py")
    env = dict(os.environ, DURABLE_MOVER_FAULTS="kill=%s" % point)
    killed = subprocess.run([sys.executable, cli, json.dumps(dict(job, processes=1))], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -9, (killed.returncode, killed.stdout, killed.stderr)
    found = preflight(dict(job, prepare="t1"))
    assert found["problems"] == [] and found["ok"] is True, found["problems"]
    result = _mover.run(dict(job, prepared="t1"))
    assert result["complete"] is True, result
    for rel in ("a", "b", "sub/c", "sub/d"):
        assert (_path(job["dest"]) / rel).is_file() and not (_path(job["src"]) / rel).exists()
