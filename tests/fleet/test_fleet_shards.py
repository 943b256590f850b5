# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One tree, several hosts: three SSH hosts that mount one tree move it together.

Two loop-mounted filesystems (the tree's on ext4, its destination on xfs, so
every unit is copied across devices) are mounted under this module's temp
directory before the fleet is built: each host's mount namespace is a copy
of the controller's, so all three see both at the same paths, with the same
superblock, as NFS clients see one export. Each host's journal stays on its
private /srv tmpfs (a local disk). The real playbook runs with
``migrate_shard_group`` over SSH.

* The three hosts move the tree: every file is at the destination with its
  content (sha256 against what was generated), the source's directories are
  removed, each host's journals are on its own disk, and the one report's
  totals are the tree's.
* One host is killed mid-shard (its move caught while one of its units is
  half moved, with SIGSTOP/SIGCONT steps as in test_fleet_faults.py; then
  every process of the host is killed but its init, sshd included: it never
  answers again). The others finish their shards; nothing is lost. Run again
  with the dead host in the play, the role refuses to plan (a host that does
  not answer may be cut off and still moving) and nothing moves. Run again
  without it (``--limit '!h1'``, the operator's fencing), the plan is made
  again over what is left at the source, the two live hosts finish the tree,
  and the report's totals are exactly what was left.

Runtime: about 1 to 3 minutes for the two tests on a 2-core machine (fleet
bring-up, three plays of 20 to 60 s); more when the machine is shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

import harness  # pylint: disable=import-error
from test_fleet_faults import (  # pylint: disable=import-error
    MODULE_SCRIPT,
    Play,
    _cmdline,
    _parent,
    continue_all,
    log_file,
    output,
    recap,
    released,
    stop_family,
    wait_gone,
    where_files_are,
)
from test_fleet_scale import kill_sshd_for_good  # pylint: disable=import-error

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.timeout(900)]

PLAYBOOK = harness.REPO_ROOT / "playbooks" / "migrate.yml"
GROUP = "movers"
STATE = "/srv/data/state"          # each host's own (private tmpfs): a local disk
ASYNC_DIR = "/srv/data/async"
PLAY_TIMEOUT = 400

Tree = t.Dict[str, t.Tuple[str, int]]  # relative path -> (sha256, size)


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture(scope="module", name="shared")
def shared_fixture(tmp_path_factory) -> t.Iterator[dict[str, Path]]:
    """Two loop filesystems mounted under the module's temp dir, before the fleet exists."""
    if os.geteuid() != 0 or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root and loop devices")
    base = tmp_path_factory.mktemp("shared")
    mounted = []
    try:
        points = {}
        for name, fstype, size_mb, mkfs in (("src", "ext4", 128, ["mkfs.ext4", "-F", "-q", "-m", "0"]),
                                            ("dest", "xfs", 300, ["mkfs.xfs", "-f", "-q"])):
            image, point = base / f"{name}.img", base / name
            with open(image, "xb") as handle:
                handle.truncate(size_mb * 1024 * 1024)
            _run([*mkfs, str(image)])
            point.mkdir()
            _run(["mount", "-t", fstype, "-o", "loop", str(image), str(point)])
            mounted.append(point)
            points[name] = point
        yield points
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", str(point)], check=False, capture_output=True)


@pytest.fixture(scope="module", name="hosts")
def hosts_fixture(fleet, shared) -> harness.Fleet:
    """Three hosts, built after the shared mounts: each sees them."""
    made = fleet(3, python=sys.executable)
    made.inventory(group=GROUP, extra_vars={"ansible_async_dir": ASYNC_DIR})
    for host in made:
        assert host.path(shared["src"]).is_dir() and os.path.ismount(host.path(shared["dest"])), host.name
    return made


def src_of(shared) -> Path:
    return shared["src"] / "tree"


def dest_of(shared) -> Path:
    return shared["dest"] / "tree"


def kill_modules(host: harness.Host) -> None:
    leftovers = [pid for pid in host.pids() if any("AnsiballZ_" in arg for arg in _cmdline(pid))]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in leftovers:
        wait_gone(pid)


def lay_tree(hosts: harness.Fleet, shared, seed: str, more: int = 1) -> Tree:
    """A fresh tree in the shared source (8 top-level directories, one empty, and loose files); clean state.
    `more` multiplies the files of d0 and d1 (a unit that takes long enough to be caught half moved)."""
    for host in hosts:
        if harness.pid_alive(host.init_pid, host.init_start):
            kill_modules(host)
            host.run(f"rm -rf {STATE} {ASYNC_DIR}", check=True)
    src, dest = src_of(shared), dest_of(shared)
    subprocess.run(["rm", "-rf", str(src), str(dest)], check=True)
    rnd = random.Random(seed)
    files: dict[str, bytes] = {}
    counts = {"d0": 120 * more, "d1": 90 * more, "d2": 60, "d3": 40, "d4": 30, "d5": 5, "d6": 20}
    for top, count in counts.items():
        for i in range(count):
            files[f"{top}/sub{i % 3}/f{i:04d}.dat"] = rnd.randbytes(0 if i % 37 == 5 else rnd.randint(1, 8 * 1024))
    files["d5/big-3m.bin"] = rnd.randbytes(3 * 1024 * 1024)
    files["d6/big-2m.bin"] = rnd.randbytes(2 * 1024 * 1024)
    files["d2/big-1m.bin"] = rnd.randbytes(1024 * 1024)
    for i in range(12):
        files[f"loose-{i:02d}.txt"] = rnd.randbytes(rnd.randint(0, 4096))
    for rel, data in files.items():
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (src / "empty").mkdir()
    return {rel: (hashlib.sha256(data).hexdigest(), len(data)) for rel, data in files.items()}


def play_argv(hosts: harness.Fleet, tmp_path: Path, shared, reports: Path, *args: str) -> list[str]:
    extra = {"migrate_src": str(src_of(shared)), "migrate_dest": str(dest_of(shared)), "migrate_state_dir": STATE,
             "migrate_shard_group": GROUP, "migrate_poll_interval": 1, "migrate_progress_host_interval": 0,
             "migrate_report_dir": str(reports)}
    vars_file = tmp_path / f"extra-vars-{len(list(tmp_path.glob('extra-vars-*.json')))}.json"
    vars_file.write_text(json.dumps(extra), encoding="utf-8")
    return [harness.ansible_bin("ansible-playbook"), "-i", str(hosts.run_dir / harness.INVENTORY_FILE),
            str(PLAYBOOK), "-e", f"@{vars_file}", *args]


def names_below(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.is_dir() else []


def check_nothing_lost(shared, tree: Tree, *, complete: bool) -> dict[str, int]:
    """Every file whole at its source or its destination (never neither); complete: all at dest, none left."""
    src, dest = src_of(shared), dest_of(shared)
    files_at_dest = [p for p in names_below(dest) if (dest / p).is_file()]
    where, problems = where_files_are(src, dest, tree, files_at_dest)
    if complete:
        if where["dest"] != len(tree):
            problems.append(f"not complete: {where}")
        parts = [rel for rel in files_at_dest + names_below(src) if rel.endswith(".part")]
        if parts:
            problems.append(f"part files left: {parts[:5]}")
        if names_below(src):
            problems.append(f"left at the source: {names_below(src)[:10]}")
        if not (dest / "empty").is_dir():
            problems.append("the empty directory was not moved")
    assert not problems, "; ".join(problems[:10])
    return where


def load_fleet(reports: Path) -> tuple[dict[str, t.Any], str]:
    return (json.loads((reports / "fleet.json").read_text(encoding="utf-8")),
            (reports / "summary.md").read_text(encoding="utf-8"))


def journals_of(host: harness.Host) -> set[str]:
    """The job ids whose journals are on the host's own disk."""
    state = host.path(STATE)
    return {p.name for p in state.iterdir() if (p / "journal.sqlite").exists()} if state.is_dir() else set()


def test_three_hosts_move_one_tree(hosts, shared, tmp_path):
    tree = lay_tree(hosts, shared, "three")
    reports = tmp_path / "reports"
    started = time.monotonic()
    proc = subprocess.run(play_argv(hosts, tmp_path, shared, reports), cwd=str(harness.REPO_ROOT),
                          env=play_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=PLAY_TIMEOUT, check=False)
    log_file(tmp_path).write_text(proc.stdout + proc.stderr, encoding="utf-8")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, output(proc)
    for name, count in recap(proc).items():
        assert (count["failed"], count["unreachable"]) == (0, 0), (name, output(proc))

    check_nothing_lost(shared, tree, complete=True)
    assert src_of(shared).is_dir(), "the tree's root is kept (as a move of a directory keeps it)"

    plan = json.loads((reports / "shard-plan.json").read_text(encoding="utf-8"))
    assert [s["host"] for s in plan["shards"]] == ["h0", "h1", "h2"]
    assert plan["totals"]["files"] == len(tree) and plan["totals"]["units"] == 9
    assert all(s["units"] >= 2 for s in plan["shards"]), plan["shards"]
    # each host ran its units, with their journals on its own disk
    for host in hosts:
        mine = {u["job_id"] for u in plan["units"] if u["host"] == host.name}
        assert journals_of(host) == mine, host.name

    fleet, summary = load_fleet(reports)
    totals = fleet["totals"]
    assert (totals["hosts_ok"], totals["hosts_failed"], totals["hosts_unreachable"]) == (3, 0, 0)
    assert totals["files_total"] == totals["files_moved"] == len(tree)
    assert totals["bytes_total"] == totals["bytes_moved"] == sum(size for _sha, size in tree.values())
    assert totals["files_failed"] == 0 and totals["jobs"] == 9
    for shard in plan["shards"]:
        entry = fleet["hosts"][shard["host"]]
        assert entry["stats"]["files_moved"] == shard["files"] and len(entry["jobs"]) == shard["units"]
    shards = fleet["shards"]
    assert shards["planned"] is True and shards["shards"] == plan["shards"] and shards["left_out"] == []
    assert sorted(shards["removed_dirs"]) == sorted(["empty"] + [f"d{i}" for i in range(7)])
    assert shards["kept_dirs"] == []
    assert f"## Shards of {src_of(shared)}" in summary
    for shard in plan["shards"]:
        assert f"| {shard['index']} | {shard['host']} | {shard['units']} | {shard['files']} |" in summary
    print(f"three hosts, one tree of {len(tree)} files: play {elapsed:.1f} s")


def play_env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(harness.REPO_ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"}


def run(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=str(harness.REPO_ROOT), env=play_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=PLAY_TIMEOUT, check=False)
    log_file(tmp_path).write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return proc


def start_play(argv: list[str], tmp_path: Path) -> Play:
    # Play() runs with test_fleet_faults' environment, the same as play_env()
    return Play(argv, log_file(tmp_path))


def unit_of(rel: str) -> str:
    """The unit (depth 1) of a file of the tree: its top-level directory, or '' for the root's loose files."""
    return rel.split("/")[0] if "/" in rel else ""


def current_move(host: harness.Host) -> int | None:
    moves = []
    for pid in host.pids():
        argv = _cmdline(pid)     # read once: the process may end at any time
        if len(argv) >= 2 and os.path.basename(argv[1]) == MODULE_SCRIPT:
            moves.append(pid)
    firsts = [pid for pid in moves if _parent(pid) not in moves]
    return firsts[0] if firsts else None


def half_moved_unit(shared, tree: Tree, units: list[str]) -> str | None:
    """A unit some of whose files are at the destination (or gone from the source) and some not."""
    src, dest = src_of(shared), dest_of(shared)
    for unit in units:
        rels = [rel for rel in tree if rel.startswith(unit + "/")]
        moved = sum(1 for rel in rels if (dest / rel).exists() or not (src / rel).exists())
        if 0 < moved < len(rels):
            return unit
    return None


def catch_mid_unit(host: harness.Host, play: Play, shared, tree: Tree, units: list[str],
                   frozen: list[int], step: float = 0.003) -> str:
    """Step the host's moves (SIGSTOP/SIGCONT) until one of its units is half moved; leave them stopped."""
    deadline = time.monotonic() + 240
    while True:
        pid = current_move(host)
        if pid is not None:
            frozen[:] = stop_family(pid)
            unit = half_moved_unit(shared, tree, units)
            if unit is not None:
                return unit
            continue_all(frozen)
        assert play.running(), f"the play ended before {host.name} was caught mid-unit:\n{play.text}"
        assert time.monotonic() < deadline, f"{host.name} was never caught mid-unit:\n{play.text}"
        time.sleep(step)


def kill_host_for_good(host: harness.Host) -> None:
    """Fencing: every process of the host but its init is killed (mover, async wrapper, sshd): it is dead."""
    kill_sshd_for_good(host)
    for pid in host.pids():
        if pid != host.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in host.pids():
        if pid != host.init_pid:
            wait_gone(pid)


def test_a_host_killed_mid_shard_then_the_tree_is_planned_again(hosts, shared, tmp_path):
    # Units of several hundred files: caught half moved by stepping the host's move even on a loaded
    # machine (with 120 files, a unit was once moved whole between two steps in CI).
    tree = lay_tree(hosts, shared, "killed", more=5)
    victim = hosts["h1"]
    reports = tmp_path / "reports"
    frozen: list[int] = []
    started = time.monotonic()
    with released(frozen):
        play = start_play(play_argv(hosts, tmp_path, shared, reports), tmp_path)
        try:
            plan = json.loads(play.wait_for("the shard plan", lambda: (reports / "shard-plan.json").exists()
                                            and (reports / "shard-plan.json").read_text(encoding="utf-8")))
            units = [u["path"] for u in plan["units"] if u["host"] == victim.name and u["kind"] == "dir" and u["files"]]
            assert units, plan["shards"]
            caught = catch_mid_unit(victim, play, shared, tree, units, frozen)
            kill_host_for_good(victim)
            frozen.clear()
            first = play.finish(PLAY_TIMEOUT)
        finally:
            play.kill()
    first_elapsed = time.monotonic() - started
    assert first.returncode != 0, output(first)
    counts = recap(first)
    assert counts[victim.name]["unreachable"] >= 1, output(first)
    where = check_nothing_lost(shared, tree, complete=False)
    fleet, _summary = load_fleet(reports)
    assert fleet["hosts"][victim.name]["status"] == "unreachable"
    for name in ("h0", "h2"):
        assert fleet["hosts"][name]["status"] == "ok", fleet["hosts"][name]["msg"]
    # the live hosts' units are done and their directories removed; the victim's are not
    left_units = sorted({unit_of(rel) for rel in tree if (src_of(shared) / rel).exists()})
    assert caught in left_units and set(left_units) <= {u["path"] for u in plan["units"] if u["host"] == victim.name}
    remaining = [rel for rel in tree if (src_of(shared) / rel).exists()]
    remaining_bytes = sum(tree[rel][1] for rel in remaining)

    # A rerun with the dead host in the play: it does not answer, and the role
    # does not give its units away (it could be cut off and still moving).
    refused = run(play_argv(hosts, tmp_path, shared, reports), tmp_path)
    assert refused.returncode != 0, output(refused)
    assert sorted(rel for rel in tree if (src_of(shared) / rel).exists()) == sorted(remaining)
    assert json.loads((reports / "shard-plan.json").read_text(encoding="utf-8")) == plan
    fleet, _summary = load_fleet(reports)
    assert fleet["hosts"][victim.name]["status"] == "unreachable"
    for name in ("h0", "h2"):
        assert fleet["hosts"][name]["status"] == "failed"
        assert fleet["hosts"][name]["msg"].startswith(f"not planned: {victim.name} of {GROUP} did not answer"), \
            fleet["hosts"][name]["msg"]
        assert f"run the play again without it (--limit '!{victim.name}')" in fleet["hosts"][name]["msg"]

    # The operator fenced it (it is dead) and runs the play without it: the tree is planned again.
    started = time.monotonic()
    second = run(play_argv(hosts, tmp_path, shared, reports, "--limit", f"!{victim.name}"), tmp_path)
    second_elapsed = time.monotonic() - started
    assert second.returncode == 0, output(second)
    check_nothing_lost(shared, tree, complete=True)
    replan = json.loads((reports / "shard-plan.json").read_text(encoding="utf-8"))
    assert [s["host"] for s in replan["shards"]] == ["h0", "h2"]
    assert replan["totals"]["files"] == len(remaining)
    assert {u["path"] for u in replan["units"] if u["kind"] == "dir" and u["files"]} == set(left_units) - {""}
    # a unit keeps its job id from one plan to the next (its part files are recognised)
    ids = {(u["kind"], u["path"]): u["job_id"] for u in plan["units"]}
    assert all(ids[(u["kind"], u["path"])] == u["job_id"] for u in replan["units"] if (u["kind"], u["path"]) in ids)

    fleet, summary = load_fleet(reports)
    totals = fleet["totals"]
    assert (totals["hosts"], totals["hosts_ok"]) == (2, 2) and sorted(fleet["hosts"]) == ["h0", "h2"]
    assert totals["files_total"] == len(remaining) and totals["bytes_total"] == remaining_bytes
    assert totals["files_failed"] == 0
    assert fleet["shards"]["left_out"] == [victim.name]
    assert "Left out of the plan (not in this play, or not answering): h1." in summary
    print(f"killed {victim.name} mid-unit {caught} ({where}); first play {first_elapsed:.1f} s, "
          f"rerun over {len(remaining)} files {second_elapsed:.1f} s")
