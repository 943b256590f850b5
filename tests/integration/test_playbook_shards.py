# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""playbooks/migrate.yml with migrate_shard_group, on hosts of this machine.

Every host of the inventory is local (ansible_connection=local), so they all
see one tree, as hosts that mount one share do; each has a state directory of
its own. The SSH fleet version, with a host killed mid-shard, is
tests/fleet/test_fleet_shards.py. Here: check mode changes nothing, a host of
the group with nothing to move is idle (ok), a tree cut at depth 2 is moved
whole with the directories above its units removed, and configurations that
cannot be run are refused on every host before anything moves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from migrate_helpers import load_reports, output, recap, run_playbook

GROUP = "movers"


def inventory(tmp_path: Path, hosts: list, others: tuple = ()) -> Path:
    lines = ["all:", "  vars:", "    ansible_connection: local",
             "    ansible_python_interpreter: '{{ ansible_playbook_python }}'", "  children:",
             f"    {GROUP}:", "      hosts:"]
    for host in hosts:
        lines += [f"        {host}:", f"          migrate_state_dir: {json.dumps(str(tmp_path / 'state' / host))}"]
    if others:
        lines += ["    others:", "      hosts:"] + [f"        {host}:" for host in others]
    path = tmp_path / "inventory.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_tree(root: Path, files: dict) -> dict:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}


def listing(root: Path) -> list:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def shard_vars(tmp_path: Path, **extra) -> dict:
    return dict({"migrate_src": str(tmp_path / "src"), "migrate_dest": str(tmp_path / "dest"),
                 "migrate_shard_group": GROUP, "migrate_report_dir": str(tmp_path / "reports"),
                 "migrate_poll_interval": 0}, **extra)


def test_check_mode_plans_and_changes_nothing(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", {f"d{i}/f{j}": b"x" * (i + j) for i in range(4) for j in range(3)})
    before = listing(tmp_path / "src")
    proc = run_playbook("-i", str(inventory(tmp_path, ["a", "b"])), "--check", extra_vars=shard_vars(tmp_path),
                        tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert listing(tmp_path / "src") == before and not (tmp_path / "dest").exists()
    # check mode says each unit with files would move (changed), and nothing else would change
    assert recap(proc, "a")["changed"] + recap(proc, "b")["changed"] == 4
    plan = json.loads((tmp_path / "reports" / "shard-plan.json").read_text(encoding="utf-8"))
    assert [s["host"] for s in plan["shards"]] == ["a", "b"] and plan["totals"]["files"] == 12
    fleet, _junit, _summary = load_reports(tmp_path / "reports")
    # in check mode the final pass finds no emptied directory
    assert fleet["shards"]["removed_dirs"] == [] and fleet["shards"]["planned"] is True


def test_depth_two_with_an_idle_host(tmp_path: Path) -> None:
    files = {"top.txt": b"top", "a/x/1": b"one", "a/x/2": b"two", "a/y/3": b"three", "a/loose": b"loose"}
    tree = make_tree(tmp_path / "src", files)
    (tmp_path / "src" / "a" / "empty").mkdir()
    hosts = ["a1", "a2", "a3", "a4", "a5", "a6"]
    proc = run_playbook("-i", str(inventory(tmp_path, hosts)), extra_vars=shard_vars(tmp_path, migrate_shard_depth=2),
                        tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    dest = tmp_path / "dest"
    assert {rel: hashlib.sha256((dest / rel).read_bytes()).hexdigest() for rel in files} == tree
    assert (dest / "a" / "empty").is_dir()
    assert listing(tmp_path / "src") == []
    fleet, junit, summary = load_reports(tmp_path / "reports")
    plan = json.loads((tmp_path / "reports" / "shard-plan.json").read_text(encoding="utf-8"))
    # units: the root's loose entries, a's loose entries, a/empty, a/x, a/y: five, over six hosts
    assert plan["totals"]["units"] == 5 and plan["parents"] == ["a"]
    idle = [s["host"] for s in plan["shards"] if s["units"] == 0]
    assert len(idle) == 1
    assert fleet["totals"]["hosts_ok"] == 6 and fleet["totals"]["files_total"] == len(files)
    assert fleet["hosts"][idle[0]]["idle"] is True
    assert fleet["hosts"][idle[0]]["msg"] == "idle: the shard plan gave this host nothing to move"
    assert f"| {idle[0]} | 0 | 0 | 0 B | ok (idle) |" in summary
    assert sorted(fleet["shards"]["removed_dirs"]) == ["a", "a/empty", "a/x", "a/y"]
    assert junit.find(".//failure") is None
    # each host's journals are in its own state directory
    for shard in plan["shards"]:
        state = tmp_path / "state" / shard["host"]
        found = {p.name for p in state.iterdir()} if state.exists() else set()
        assert found == {u["job_id"] for u in plan["units"] if u["host"] == shard["host"]}


def test_configurations_that_cannot_run_are_refused_before_anything_moves(tmp_path: Path) -> None:
    make_tree(tmp_path / "src", {"d/f": b"data"})
    before = listing(tmp_path / "src")
    inv = inventory(tmp_path, ["a", "b"], others=("c",))
    cases = [
        ({"migrate_shard_group": "nosuchgroup"}, "migrate_shard_group nosuchgroup is not a group of the inventory",
         ["a", "b", "c"]),
        ({"migrate_jobs": [{"src": "/x", "dest": "/y"}]},
         "migrate_shard_group moves migrate_src to migrate_dest; migrate_jobs must be empty", ["a", "b"]),
        ({"migrate_strategy": "free"},
         "migrate_shard_group needs the linear strategy (the plan and the final pass run once for the group)",
         ["a", "b"]),
        ({"migrate_dest": ""}, "migrate_shard_group needs migrate_src (the shared tree) and migrate_dest (where it goes)",
         ["a", "b"]),
    ]
    for extra, message, refused in cases:
        proc = run_playbook("-i", str(inv), "--limit", "a,b" if "c" not in refused else "all",
                            extra_vars=shard_vars(tmp_path, **extra), tmp_dir=tmp_path)
        assert proc.returncode != 0, output(proc)
        fleet, _junit, _summary = load_reports(tmp_path / "reports")
        for host in refused:
            assert fleet["hosts"][host]["status"] == "failed", (extra, fleet["hosts"][host])
            assert fleet["hosts"][host]["msg"] == message, (extra, fleet["hosts"][host]["msg"])
        assert listing(tmp_path / "src") == before and not (tmp_path / "dest").exists()
