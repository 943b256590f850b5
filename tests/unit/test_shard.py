# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_shard.py and the shard_plan / prune_dirs modules.

Trees are real files under tmp_path. The planner only reads; pruning removes
real directories (an fsync of each parent follows each rmdir).
"""

from __future__ import annotations

import fnmatch
import os
import typing as t

import pytest
import yaml

from ansible_collections.durable.mover.plugins.module_utils import _shard
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError
from ansible_collections.durable.mover.plugins.modules import prune_dirs as prune_module
from ansible_collections.durable.mover.plugins.modules import shard_plan as plan_module

KiB = 1024


def make_tree(root, sizes: t.Mapping[str, int]) -> None:
    """rel -> size; a rel ending in '/' is an (empty) directory."""
    for rel, size in sizes.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)


def snapshot(root) -> list:
    return sorted((str(p.relative_to(root)), p.is_dir(), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def tree(tmp_path):
    src = tmp_path / "src"
    sizes = {"loose-a.txt": 10, "loose-b.txt": 20, "big/one.bin": 900 * KiB, "empty/": 0}
    for i in range(7):
        for j in range(i + 1):
            sizes[f"d{i}/sub/f{j}.dat"] = (i + 1) * KiB
    make_tree(src, sizes)
    return src


def by_path(plan):
    return {(unit["kind"], unit["path"]): unit for unit in plan["units"]}


def test_every_entry_is_in_exactly_one_unit(tree, tmp_path):
    plan = _shard.make_plan(str(tree), str(tmp_path / "dest"), ["h0", "h1", "h2"])
    units = by_path(plan)
    # the top level: 9 directories, one unit each, and the root's loose files
    assert sorted(path for kind, path in units if kind == "dir") == sorted(["big", "empty"] + [f"d{i}" for i in range(7)])
    assert units[("loose", "")]["files"] == 2 and units[("loose", "")]["bytes"] == 30
    assert sorted(units[("loose", "")]["exclude"]) == sorted(["big", "empty"] + [f"d{i}" for i in range(7)])
    assert units[("dir", "d6")]["files"] == 7 and units[("dir", "d6")]["bytes"] == 7 * 7 * KiB
    assert units[("dir", "empty")]["files"] == 0
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    assert plan["totals"]["files"] == files == sum(s["files"] for s in plan["shards"])
    assert plan["totals"]["bytes"] == sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    assert plan["parents"] == [] and plan["unreadable"] == []
    for unit in plan["units"]:
        assert unit["src"] == os.path.join(str(tree), unit["path"]) if unit["path"] else str(tree)
        assert unit["host"] == ["h0", "h1", "h2"][unit["shard"]]


def test_balance_by_bytes_and_files(tmp_path):
    src = tmp_path / "src"
    # one heavy unit by bytes, one heavy by files, and small ones
    sizes = {"bytes/huge.bin": 4096 * KiB}
    sizes.update({f"files/f{i:03d}": 1 for i in range(200)})
    sizes.update({f"small{i}/x": 10 * KiB for i in range(8)})
    make_tree(src, sizes)
    plan = _shard.make_plan(str(src), str(tmp_path / "dest"), ["a", "b", "c"])
    units = by_path(plan)
    heavy = {units[("dir", "bytes")]["shard"], units[("dir", "files")]["shard"]}
    assert len(heavy) == 2, "the two heavy units must not share a shard"
    third = ({0, 1, 2} - heavy).pop()
    small_shards = [units[("dir", f"small{i}")]["shard"] for i in range(8)]
    # greedy: the small units go to the shard that has no heavy one
    assert small_shards.count(third) == 8
    assert [s["units"] for s in plan["shards"]].count(1) == 2


def test_greedy_spreads_equal_units_evenly(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {f"u{i:02d}/f": 100 for i in range(12)})
    plan = _shard.make_plan(str(src), str(tmp_path / "dest"), ["a", "b", "c", "d"])
    counts = [s["units"] for s in plan["shards"]]
    # 12 equal directories and the (empty) loose unit of the root
    assert sorted(counts) == [3, 3, 3, 4]
    assert [s["files"] for s in plan["shards"]] == [3, 3, 3, 3]


def test_the_same_tree_gives_the_same_plan(tree, tmp_path):
    first = _shard.make_plan(str(tree), str(tmp_path / "dest"), ["h0", "h1", "h2"])
    again = _shard.make_plan(str(tree), str(tmp_path / "dest"), ["h0", "h1", "h2"])
    assert first == again
    # job ids depend on the unit, not on the host that runs it
    other = _shard.make_plan(str(tree), str(tmp_path / "dest"), ["x", "y"])
    assert {u["path"]: u["job_id"] for u in first["units"]} == {u["path"]: u["job_id"] for u in other["units"]}
    assert len({u["job_id"] for u in first["units"]}) == len(first["units"])


def test_depth_cuts_directories_that_have_subdirectories(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"a/x/1": 1, "a/y/2": 2, "a/top": 3, "b/only-files": 4, "c/p/q/r": 5, "root-file": 6})
    plan = _shard.make_plan(str(src), str(tmp_path / "dest"), ["h0", "h1"], depth=2)
    units = by_path(plan)
    assert sorted(units) == [("dir", "a/x"), ("dir", "a/y"), ("dir", "b"), ("dir", "c/p"),
                             ("loose", ""), ("loose", "a"), ("loose", "c")]
    assert units[("loose", "a")]["files"] == 1 and units[("loose", "a")]["exclude"] == ["x", "y"]
    assert units[("loose", "c")]["files"] == 0 and units[("dir", "c/p")]["files"] == 1
    assert plan["parents"] == ["a", "c"]
    assert plan["totals"]["files"] == 6


def test_glob_characters_in_names_are_excluded_literally(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"a[1]/f": 1, "a1/f": 1, "st*r/f": 1, "q?/f": 1, "file": 1})
    plan = _shard.make_plan(str(src), str(tmp_path / "dest"), ["h0"])
    exclude = by_path(plan)[("loose", "")]["exclude"]
    for name in ("a[1]", "a1", "st*r", "q?"):
        assert [p for p in exclude if fnmatch.fnmatchcase(name, p)] == [_shard.glob_escape(name)], name
    assert not any(fnmatch.fnmatchcase("file", p) for p in exclude)


def test_empty_tree(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    plan = _shard.make_plan(str(src), str(tmp_path / "dest"), ["h0", "h1"])
    assert [(u["kind"], u["path"], u["files"]) for u in plan["units"]] == [("loose", "", 0)]
    assert plan["totals"] == {"units": 1, "files": 0, "bytes": 0, "shards": 2}
    assert [s["units"] for s in plan["shards"]] == [1, 0]


def test_the_plan_changes_nothing(tree, tmp_path):
    before = snapshot(tree)
    _shard.make_plan(str(tree), str(tmp_path / "dest"), ["h0", "h1"], depth=3)
    assert snapshot(tree) == before
    assert not (tmp_path / "dest").exists()


def test_unreadable_directory_is_reported_not_fatal(tmp_path, monkeypatch):
    src = tmp_path / "src"
    make_tree(src, {"ok/f": 1, "bad/g": 1})
    real = os.scandir

    def scandir(path):
        if str(path).endswith("/bad"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(_shard.os, "scandir", scandir)
    plan = _shard.make_plan(str(src), str(tmp_path / "dest"), ["h0"])
    assert plan["unreadable"] == [{"path": "bad", "msg": "Permission denied"}]
    assert by_path(plan)[("dir", "bad")]["files"] == 0


@pytest.mark.parametrize("hosts, depth, message", [
    ([], 1, "hosts must name at least one host (the hosts sharing the tree)"),
    ("h0", 1, "hosts must name at least one host (the hosts sharing the tree)"),
    (["h0", "h1", "h0"], 1, "hosts must be distinct; listed more than once: h0"),
    (["h0"], 0, "depth must be an integer from 1 to 16, not 0"),
    (["h0"], 17, "depth must be an integer from 1 to 16, not 17"),
    (["h0"], True, "depth must be an integer from 1 to 16, not True"),
])
def test_bad_input_is_refused_naming_it(tree, tmp_path, hosts, depth, message):
    with pytest.raises(MoverError) as caught:
        _shard.make_plan(str(tree), str(tmp_path / "dest"), hosts, depth)
    assert str(caught.value) == message


def test_bad_paths_are_refused_naming_them(tree, tmp_path):
    cases = [
        ((str(tmp_path / "nope"), str(tmp_path / "dest")), "cannot read the tree to plan: %s: No such file or directory"
         % (tmp_path / "nope")),
        ((str(tree / "loose-a.txt"), str(tmp_path / "dest")), "src must be a directory (the tree to split): %s: Not a directory"
         % (tree / "loose-a.txt")),
        ((str(tree), str(tree / "d1" / "new")), "dest is inside src (or the same directory): %s" % (tree / "d1" / "new")),
        ((str(tree), str(tree)), "dest is inside src (or the same directory): %s" % tree),
        (("relative/src", str(tmp_path / "dest")), "src and dest must be absolute paths: relative/src"),
    ]
    for (src, dest), message in cases:
        with pytest.raises(MoverError) as caught:
            _shard.make_plan(src, dest, ["h0"])
        assert str(caught.value) == message


# --------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------

def test_prune_removes_only_empty_directories_deepest_first(tmp_path, monkeypatch):
    root = tmp_path / "src"
    make_tree(root, {"a/b/c/": 0, "a/d/": 0, "keep/file": 1, "x/": 0})
    synced = []
    real = _shard._durable.sync_dir

    def sync_dir(fd, path=None):
        synced.append(path)
        return real(fd, path)

    monkeypatch.setattr(_shard._durable, "sync_dir", sync_dir)
    found = _shard.prune(str(root), ["a", "a/b", "a/b/c", "a/d", "keep", "gone", "x/"])
    assert found["removed"] == ["a/b/c", "a/b", "a/d", "a", "x"]
    assert found["kept"] == [{"path": "keep", "reason": "not empty"}]
    assert found["missing"] == ["gone"]
    assert sorted(p.name for p in root.iterdir()) == ["keep"]
    assert (root / "keep" / "file").exists()
    # each removal followed by an fsync of its parent
    assert synced == [str(root / "a/b"), str(root / "a"), str(root / "a"), str(root), str(root)]


def test_prune_in_check_mode_removes_nothing(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"a/": 0, "b/f": 1})
    before = snapshot(root)
    found = _shard.prune(str(root), ["a", "b"], check_mode=True)
    assert found == {"removed": ["a"], "kept": [{"path": "b", "reason": "not empty"}], "missing": []}
    assert snapshot(root) == before


def test_prune_never_the_root_nor_outside(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"a/": 0})
    assert _shard.prune(str(root), ["", ".", "/"]) == {"removed": [], "kept": [], "missing": []}
    with pytest.raises(MoverError, match="a directory to remove must be inside the tree: ../src"):
        _shard.prune(str(root / "a"), ["../src"])
    assert root.is_dir() and (root / "a").is_dir()


def test_prune_keeps_a_file(tmp_path):
    root = tmp_path / "src"
    make_tree(root, {"f": 1})
    assert _shard.prune(str(root), ["f"])["kept"] == [{"path": "f", "reason": "not a directory"}]


# --------------------------------------------------------------------------
# The modules
# --------------------------------------------------------------------------

class ModuleExit(Exception):
    def __init__(self, result):
        super().__init__(result)
        self.result = result


def run_module(monkeypatch, module, check_mode=False, **args):
    from ansible.module_utils import basic
    from ansible.module_utils.testing import patch_module_args

    def exit_json(self, **result):
        raise ModuleExit(dict(result, failed=False))

    def fail_json(self, **result):
        raise ModuleExit(dict(result, failed=True))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    if check_mode:
        args["_ansible_check_mode"] = True
    with patch_module_args(args), pytest.raises(ModuleExit) as caught:
        module.main()
    return caught.value.result


def test_shard_plan_module(tree, tmp_path, monkeypatch):
    for check_mode in (True, False):
        result = run_module(monkeypatch, plan_module, check_mode=check_mode, src=str(tree),
                            dest=str(tmp_path / "dest"), hosts=["h0", "h1"])
        assert result["failed"] is False and result["changed"] is False
        assert result["plan"] == _shard.make_plan(str(tree), str(tmp_path / "dest"), ["h0", "h1"])
    result = run_module(monkeypatch, plan_module, src=str(tree), dest=str(tmp_path / "dest"), hosts=["h0"], depth=0)
    assert result["failed"] is True and result["msg"] == "depth must be an integer from 1 to 16, not 0"


def test_prune_dirs_module(tmp_path, monkeypatch):
    root = tmp_path / "src"
    make_tree(root, {"a/": 0, "b/f": 1})
    result = run_module(monkeypatch, prune_module, check_mode=True, root=str(root), paths=["a", "b"])
    assert result["changed"] is True and result["removed"] == ["a"] and (root / "a").is_dir()
    result = run_module(monkeypatch, prune_module, root=str(root), paths=["a", "b"])
    assert result["changed"] is True and result["removed"] == ["a"] and not (root / "a").exists()
    result = run_module(monkeypatch, prune_module, root=str(root), paths=["a", "b"])
    assert result["changed"] is False and result["missing"] == ["a"]


def _normalized(spec):
    return {"type": spec.get("type", "str"), "required": bool(spec.get("required", False)),
            "default": spec.get("default"), "elements": spec.get("elements"),
            "choices": list(spec["choices"]) if spec.get("choices") is not None else None}


@pytest.mark.parametrize("module", [plan_module, prune_module], ids=["shard_plan", "prune_dirs"])
def test_documentation_matches_argument_spec(module):
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert set(doc["options"]) == set(module.ARGUMENT_SPEC)
    for name, spec in module.ARGUMENT_SPEC.items():
        assert _normalized(doc["options"][name]) == _normalized(spec), name
        assert doc["options"][name]["description"], name
    assert yaml.safe_load(module.RETURN) and yaml.safe_load(module.EXAMPLES)


# --------------------------------------------------------------------------
# A host of a shard group with nothing to move
# --------------------------------------------------------------------------

def test_an_idle_shard_host_is_ok_not_failed():
    from ansible_collections.durable.mover.plugins.module_utils import _report

    idle = _report.host_result({"jobs": [], "preflight": [], "idle": True,
                                "host_msg": "idle: the shard plan gave this host nothing to move"})
    assert idle["failed"] is False and idle["idle"] is True
    # without the flag, a host that ran nothing has failed (a report never calls it ok)
    assert _report.host_result({"jobs": [], "preflight": []})["failed"] is True
    fleet = _report.fleet_report({"h0": idle, "h1": {"jobs": [], "preflight": []}})
    assert fleet["hosts"]["h0"]["status"] == "ok" and fleet["hosts"]["h0"]["idle"] is True
    assert fleet["hosts"]["h0"]["msg"] == "idle: the shard plan gave this host nothing to move"
    assert fleet["hosts"]["h1"]["status"] == "failed"
    assert (fleet["totals"]["hosts_ok"], fleet["totals"]["hosts_failed"]) == (1, 1)
    # an idle host that became unreachable is unreachable
    gone = _report.host_result({"jobs": [], "idle": True, "unreachable": True, "host_msg": "host unreachable"})
    assert _report.host_status(gone) == "unreachable"
    # the summary and the JUnit report take it as it is
    assert "| h0 | ok |" in _report.summary_markdown(fleet)
    _report.junit_xml(fleet)
