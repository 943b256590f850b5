# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of _mover.parse_size, Options.from_params and Job (the checks made before
anything is touched). Bind mounts and read-only remounts are real (root only)."""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest

from core_helpers import collections_root

from ansible_collections.durable.mover.plugins.module_utils import _mover, _preflight
from ansible_collections.durable.mover.plugins.module_utils._errors import InputError
from ansible_collections.durable.mover.plugins.module_utils._mover import Job, Options, parse_size

KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3


# -- parse_size --------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [
    (4096, 4096),
    ("4096", 4096),
    ("16M", 16 * MiB),
    ("16m", 16 * MiB),
    ("16MiB", 16 * MiB),
    ("16MB", 16 * MiB),
    ("16 M", 16 * MiB),
    (" 1k ", KiB),
    ("1.5G", int(1.5 * GiB)),
    ("2T", 2 * 1024 * GiB),
    ("0", 0),
])
def test_parse_size(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "abc", "16X", "-1M", "1.2.3M", "M", "16 MiBs", True, None, [16], -5])
def test_parse_size_rejects_bad_values(value):
    with pytest.raises(InputError) as info:
        parse_size(value, "buffer_size")
    assert "buffer_size" in str(info.value)


# -- Options -----------------------------------------------------------------------------------


BASE = {"src": "/nonexistent/src", "dest": "/nonexistent/dest"}


def test_defaults():
    opts = Options.from_params(dict(BASE))
    assert (opts.mode, opts.hash, opts.on_conflict, opts.special_files) == ("move", "auto", "fail", "skip")
    assert opts.buffer_size == 16 * MiB and opts.max_attempts == 3 and opts.workers == 4
    assert opts.remove_empty_dirs is True
    assert opts.cross_filesystems is False    # never enter another mount inside src (find -xdev)
    assert opts.processes is None       # one per CPU, at most 4 (_procs.default_count)
    assert Options.from_params(dict(BASE, processes="3")).processes == 3
    assert set(opts.preserve) == {"owner", "mode", "times", "xattrs", "hardlinks"}
    assert Options.from_params(dict(BASE, mode="copy")).remove_empty_dirs is False


def test_none_means_default():
    """The module passes every option, unset ones as None."""
    opts = Options.from_params(dict(BASE, mode=None, buffer_size=None, job_id=None, exclude=None))
    assert (opts.mode, opts.buffer_size, opts.job_id, opts.exclude) == ("move", 16 * MiB, None, [])


def test_human_sizes_in_options():
    opts = Options.from_params(dict(BASE, buffer_size="1MiB", checkpoint_size="64M", batch_bytes="1G"))
    assert (opts.buffer_size, opts.checkpoint_size, opts.batch_bytes) == (MiB, 64 * MiB, GiB)


@pytest.mark.parametrize("key,value", [
    ("src", ""),
    ("dest", ""),
    ("mode", "teleport"),
    ("hash", "md5"),
    ("on_conflict", "merge"),
    ("special_files", "copy"),
    ("buffer_size", "1k"),
    ("buffer_size", "2G"),
    ("buffer_size", "lots"),
    ("buffer_size", -1),
    ("checkpoint_size", "big"),
    ("checkpoint_size", -1),
    ("batch_bytes", "x"),
    ("batch_bytes", -1),
    ("workers", 0),
    ("workers", "many"),
    ("processes", 0),
    ("processes", "all"),
    ("max_attempts", 0),
    ("max_attempts", "three"),
    ("batch_files", 0),
    ("max_failures_reported", -1),
    ("lock_timeout", -1),
    ("lock_timeout", "soon"),
    ("cross_filesystems", "no"),
    ("preserve", ["owner", "colour"]),
    ("preserve", "owner"),
    ("exclude", "*.tmp"),
    ("verify_readback", "no"),
    ("retry_failed", "yes"),
    ("remove_empty_dirs", "no"),
    ("cross_filesystems", 1),
    ("job_id", "../escape"),
    ("job_id", "a/b"),
    ("job_id", ""),
    ("job_id", ".hidden"),
    ("job_id", "x" * 129),
    ("job_id", "new\nline"),
    ("job_id", "trailing\n"),
])
def test_invalid_option_is_rejected_naming_it(key, value):
    with pytest.raises(InputError) as info:
        Options.from_params(dict(BASE, **{key: value}))
    assert key in str(info.value)


@pytest.mark.parametrize("job_id", ["a", "job-1", "J.2_x", "x" * 128, "0abc"])
def test_valid_job_ids(job_id):
    assert Options.from_params(dict(BASE, job_id=job_id)).job_id == job_id


# -- Job ---------------------------------------------------------------------------------------


def make_job(tmp_path, src, dest, **params):
    params.setdefault("state_dir", str(tmp_path / "state"))
    return Job(Options.from_params(dict(params, src=str(src), dest=str(dest))))


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "f").write_bytes(b"data")
    return src


def check_refused(job, match, err=None, writing=True):
    with pytest.raises(InputError, match=match) as info:
        job.check(writing=writing)
    if err is not None:
        assert info.value.errno == err
    return info.value


def test_job_ok(tmp_path, tree):
    job = make_job(tmp_path, tree, tmp_path / "dest")
    job.check()
    assert job.src_real == str(tree) and job.dest_real == str(tmp_path / "dest")
    assert job.state_dir == os.path.join(str(tmp_path / "state"), job.job_id)
    assert len(job.job_id) == 16
    # the id depends on the real paths only: another spelling gives the same job
    again = make_job(tmp_path, str(tree) + "/./", tmp_path / "x" / ".." / "dest")
    assert again.job_id == job.job_id
    assert make_job(tmp_path, tree, tmp_path / "other").job_id != job.job_id


def test_src_missing(tmp_path):
    err = check_refused(make_job(tmp_path, tmp_path / "nope", tmp_path / "dest"), "src does not exist",
                        errno.ENOENT)
    assert err.path == str(tmp_path / "nope")


def test_dest_inside_src(tmp_path, tree):
    check_refused(make_job(tmp_path, tree, tree / "sub" / "new"), "dest is inside src")


def test_dest_equal_to_src(tmp_path, tree):
    check_refused(make_job(tmp_path, tree, tree), "dest is inside src")


def test_src_inside_dest(tmp_path, tree):
    check_refused(make_job(tmp_path, tree, tmp_path), "src is inside dest")


def test_dest_inside_src_via_symlink(tmp_path, tree):
    (tmp_path / "alias").symlink_to(tree)
    check_refused(make_job(tmp_path, tree, tmp_path / "alias" / "sub" / "out"), "dest is inside src")


def test_src_via_symlink_to_dest_child(tmp_path):
    dest = tmp_path / "dest"
    (dest / "inner").mkdir(parents=True)
    (tmp_path / "srclink").symlink_to(dest / "inner")
    check_refused(make_job(tmp_path, tmp_path / "srclink", dest), "src is inside dest")


@pytest.mark.root
def test_dest_inside_src_via_bind_mount(tmp_path, tree, bind_mount):
    alias = bind_mount(tree, tmp_path / "alias")
    assert (alias / "f").read_bytes() == b"data"
    job = make_job(tmp_path, tree, alias / "sub" / "out")
    assert not job.dest_root.startswith(job.src_root)        # the path alone does not show it
    check_refused(job, "bind mount")
    assert not (tree / "sub" / "out").exists()


@pytest.mark.root
def test_dest_is_src_via_bind_mount(tmp_path, tree, bind_mount):
    alias = bind_mount(tree, tmp_path / "alias")
    check_refused(make_job(tmp_path, tree, alias), "bind mount")


@pytest.mark.root
def test_src_inside_dest_via_bind_mount(tmp_path, bind_mount):
    dest = tmp_path / "dest"
    (dest / "inner").mkdir(parents=True)
    alias = bind_mount(dest, tmp_path / "alias")
    check_refused(make_job(tmp_path, alias / "inner", dest), "src is inside dest")


# -- dest or state_dir reachable inside src through a mount --------------------------------------


def mount_layouts():
    """How dest (or state_dir) can be reached inside src through a mount made below src.

    Each builds (src, dest, state_dir) under tmp_path with the fixtures and returns them
    with the mount point below src; src itself never contains dest by path."""

    def dest_itself(tmp_path, tmpfs, bind_mount):
        (tmp_path / "out" / "dest").mkdir(parents=True)
        mount = bind_mount(tmp_path / "out" / "dest", tmp_path / "src" / "sub" / "m")
        return tmp_path / "out" / "dest", tmp_path / "state", mount

    def ancestor_of_dest(tmp_path, tmpfs, bind_mount):
        (tmp_path / "out" / "dest").mkdir(parents=True)
        mount = bind_mount(tmp_path / "out", tmp_path / "src" / "sub" / "m")
        return tmp_path / "out" / "dest", tmp_path / "state", mount

    def dest_not_made_yet(tmp_path, tmpfs, bind_mount):
        (tmp_path / "out").mkdir()
        mount = bind_mount(tmp_path / "out", tmp_path / "src" / "m")
        return tmp_path / "out" / "new" / "dest", tmp_path / "state", mount

    def root_of_dests_filesystem(tmp_path, tmpfs, bind_mount):
        disk = tmpfs("4m")
        (disk / "data" / "dest").mkdir(parents=True)
        mount = bind_mount(disk, tmp_path / "src" / "sub" / "m")
        return disk / "data" / "dest", tmp_path / "state", mount

    def directory_off_dests_path(tmp_path, tmpfs, bind_mount):
        # dest's path goes through a bind mount of disk/deep/x, so disk/deep (which holds
        # dest inside the filesystem) is none of the directories on dest's path
        disk = tmpfs("4m")
        (disk / "deep" / "x" / "dest").mkdir(parents=True)
        alias = bind_mount(disk / "deep" / "x", tmp_path / "alias")
        mount = bind_mount(disk / "deep", tmp_path / "src" / "m")
        return alias / "dest", tmp_path / "state", mount

    def state_dir_ancestor(tmp_path, tmpfs, bind_mount):
        (tmp_path / "var" / "state").mkdir(parents=True)
        mount = bind_mount(tmp_path / "var", tmp_path / "src" / "sub" / "m")
        return tmp_path / "dest", tmp_path / "var" / "state", mount

    def state_dir_not_made_yet(tmp_path, tmpfs, bind_mount):
        (tmp_path / "var").mkdir()
        mount = bind_mount(tmp_path / "var", tmp_path / "src" / "m")
        return tmp_path / "dest", tmp_path / "var" / "lib" / "state", mount

    return [pytest.param(f, id=f.__name__) for f in (
        dest_itself, ancestor_of_dest, dest_not_made_yet, root_of_dests_filesystem,
        directory_off_dests_path, state_dir_ancestor, state_dir_not_made_yet)]


@pytest.mark.root
@pytest.mark.parametrize("layout", mount_layouts())
def test_dest_or_state_dir_reachable_through_a_mount_inside_src(tmp_path, tree, tmpfs, bind_mount, layout):
    dest, state, mount = layout(tmp_path, tmpfs, bind_mount)
    which = "state_dir" if state != tmp_path / "state" else "dest"
    params = {"src": str(tree), "dest": str(dest), "state_dir": str(state)}
    job = make_job(tmp_path, tree, dest, state_dir=str(state))
    assert not job.dest_root.startswith(job.src_root + "/") and not job.state_dir.startswith(job.src_root + "/")
    before = sorted(str(p) for p in tmp_path.rglob("*") if not str(p).startswith(str(mount)))
    for writing in (True, False):           # a run, and check mode / verify
        err = check_refused(job, "reachable inside src", writing=writing)
        message = str(err)
        assert which + " " in message, message
        assert (job.dest_root if which == "dest" else job.state_dir) in message, message
        assert job.src_root in message and str(mount) in message, message
    for call in (_mover.run, _mover.plan, lambda p: _mover.run(dict(p, mode="verify"))):
        with pytest.raises(InputError, match="reachable inside src"):
            call(params)
    found = _preflight.preflight(params)
    assert not found["ok"] and any("reachable inside src" in p for p in found["problems"]), found["problems"]
    assert sorted(str(p) for p in tmp_path.rglob("*") if not str(p).startswith(str(mount))) == before


@pytest.mark.root
def test_unrelated_mounts_inside_src_are_no_reason_to_refuse(tmp_path, tree, tmpfs, bind_mount):
    tmpfs("4m", at=tree / "sub" / "disk")                      # another filesystem inside src
    disk = tmpfs("4m")
    (disk / "other").mkdir()
    (disk / "dest").mkdir()
    bind_mount(disk / "other", tree / "bound")                  # dest's filesystem, not dest's part of it
    make_job(tmp_path, tree, disk / "dest").check()
    make_job(tmp_path, tree, disk / "destx").check()            # a sibling whose name starts alike


@pytest.mark.root
def test_src_reachable_inside_itself_or_dest_through_a_mount(tmp_path, tree, bind_mount):
    bind_mount(tree, tree / "sub" / "again")            # src itself, mounted inside src
    make_job(tmp_path, tree, tmp_path / "dest").check()  # never entered: no harm
    check_refused(make_job(tmp_path, tree, tmp_path / "dest", cross_filesystems=True),
                  "src .* is reachable inside itself through a mount")
    dest = tmp_path / "elsewhere" / "dest"
    dest.mkdir(parents=True)
    other = bind_mount(tree, dest / "m")                  # src mounted inside dest
    err = check_refused(make_job(tmp_path, tree, dest), "src .* is reachable inside dest")
    assert str(other) in str(err) and str(dest) in str(err)


def test_state_dir_inside_src(tmp_path, tree):
    check_refused(make_job(tmp_path, tree, tmp_path / "dest", state_dir=str(tree / ".state")),
                  "state_dir is inside src")


def test_dest_exists_as_file(tmp_path, tree):
    (tmp_path / "destfile").write_bytes(b"i am a file")
    with pytest.raises(InputError, match="not a directory") as info:
        make_job(tmp_path, tree, tmp_path / "destfile")
    assert info.value.errno == errno.ENOTDIR
    assert (tmp_path / "destfile").read_bytes() == b"i am a file"


def test_single_file_same_as_dest(tmp_path, tree):
    check_refused(make_job(tmp_path, tree / "f", tree / "f"), "same file")
    (tmp_path / "hard").unlink(missing_ok=True)
    os.link(tree / "f", tmp_path / "hard")
    check_refused(make_job(tmp_path, tree / "f", tmp_path / "hard"), "same file")


def test_single_file_into_existing_dir(tmp_path, tree):
    (tmp_path / "dest").mkdir()
    job = make_job(tmp_path, tree / "f", tmp_path / "dest")
    job.check()
    assert job.dest_real == str(tmp_path / "dest" / "f")
    renamed = make_job(tmp_path, tree / "f", tmp_path / "dest" / "g")
    assert renamed.dest_real == str(tmp_path / "dest" / "g")


@pytest.mark.root
def test_read_only_dest(tmp_path, tree, tmpfs, remount_ro):
    mnt = tmpfs("4m")
    (mnt / "existing").mkdir()
    remount_ro(mnt)
    for dest in (mnt / "existing", mnt / "not" / "yet"):
        job = make_job(tmp_path, tree, dest)
        err = check_refused(job, "read-only", errno.EROFS)
        assert err.path == str(mnt / "existing") if dest.name == "existing" else str(mnt)
        job.check(writing=False)                 # check mode and verify only read


@pytest.mark.root
def test_read_only_src_in_move_mode(tmp_path, tmpfs, remount_ro):
    mnt = tmpfs("4m")
    (mnt / "tree").mkdir()
    remount_ro(mnt)
    check_refused(make_job(tmp_path, mnt / "tree", tmp_path / "dest"), "src is on a read-only", errno.EROFS)
    make_job(tmp_path, mnt / "tree", tmp_path / "dest", mode="copy").check()


@pytest.mark.root
def test_unreadable_src_and_unwritable_dest_as_nobody(tmp_path, run_as_nobody, nobody_tmp_path):
    locked = nobody_tmp_path / "locked"
    locked.mkdir(mode=0o700)
    os.chown(nobody_tmp_path / "locked", 0, 0)
    readable = nobody_tmp_path / "readable"
    readable.mkdir()
    os.chown(readable, 65534, 65534)
    rootdir = nobody_tmp_path / "rootonly"
    rootdir.mkdir(mode=0o755)
    os.chown(rootdir, 0, 0)
    code = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.durable.mover.plugins.module_utils._mover import Job, Options
from ansible_collections.durable.mover.plugins.module_utils._errors import InputError
out = []
for src, dest in ((sys.argv[2], sys.argv[3]), (sys.argv[4], sys.argv[5])):
    try:
        Job(Options.from_params({"src": src, "dest": dest, "state_dir": sys.argv[6]})).check()
        out.append(None)
    except InputError as exc:
        out.append([str(exc), exc.errno])
print(json.dumps(out))
"""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    proc = run_as_nobody([python, "-c", code, collections_root(),
                          str(locked), str(nobody_tmp_path / "d1"),
                          str(readable), str(rootdir / "dest"), str(nobody_tmp_path / "state")])
    if proc.returncode != 0 and ("Permission denied" in proc.stderr or "No such file" in proc.stderr):
        pytest.skip("nobody cannot run a Python that imports the collection here: %s" % proc.stderr[-300:])
    assert proc.returncode == 0, proc.stderr
    (src_err, src_errno), (dest_err, dest_errno) = json.loads(proc.stdout)
    assert "src is not readable" in src_err and src_errno == errno.EACCES
    assert "dest is not writable" in dest_err and dest_errno == errno.EACCES


def test_bad_input_touches_nothing(tmp_path, tree):
    """A run refused for bad input creates neither dest nor the state dir."""
    params = {"src": str(tree), "dest": str(tree / "sub" / "out"), "state_dir": str(tmp_path / "state")}
    before = sorted(os.listdir(tree)), sorted(os.listdir(tmp_path))
    with pytest.raises(InputError):
        _mover.run(params)
    with pytest.raises(InputError):
        _mover.run(dict(params, dest=str(tmp_path / "d"), workers="lots"))
    assert (sorted(os.listdir(tree)), sorted(os.listdir(tmp_path))) == before
