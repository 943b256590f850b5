# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A fleet at the scale people run it: 24 SSH hosts, forks 10, four faults at once.

Each host (harness.py: an sshd in namespaces of its own, ext4 source, xfs
destination) moves its own tree. While the play runs, four hosts are hit at
the same time, each caught mid-run (its move frozen with SIGSTOP when its
journal says some files are done and some are not, as test_fleet_faults.py
does):

* h1: its network is cut (the move stays frozen on the host: an orphaned
  async job, resumed by the kernel only when the rerun has started);
* h2: its move is killed (SIGKILL);
* h3: its destination fills up (the move goes on and meets ENOSPC);
* h4: its sshd dies for good (every sshd process of the host is killed once
  its move runs; the host stays unreachable through the rerun).

Then: the reports say exactly what is on every host; the console showed one
fleet line per poll round and a host's line only when its status changed
(migrate_progress_host_interval is longer than the run); the rerun finishes
h1 (whose orphaned move it finds and attributes: what that move did is a job
of its own in h1's report), h2 and h3, says changed=0 for the 20 others and
still reports h4 unreachable. Nothing is lost anywhere.

Marked fleet_scale: CI runs it once (in make pytest, under the venv's
ansible-core). Wall time on an idle 2-core machine: about 6 minutes (fleet
bring-up about 1, each play 2, teardown under 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sys
import time
import typing as t
from pathlib import Path

import pytest

import harness  # pylint: disable=import-error
from test_fleet_faults import (  # pylint: disable=import-error
    DEST,
    SRC,
    Play,
    _cmdline,
    async_move,
    check_nothing_lost,
    continue_all,
    freeze_mid_run,
    junit_suite,
    load_reports,
    log_file,
    output,
    recap,
    regular_files,
    released,
    stop_family,
    wait_gone,
)

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.fleet_scale, pytest.mark.timeout(1500)]

HOSTS = 24
FORKS = 10
STATE = "/srv/data/state"
ASYNC_DIR = "/srv/data/async"
PLAY_TIMEOUT = 600
SMALL_FILES = 400
VICTIM_FILES = 1500     # the four hosts hit mid-run get a longer tree: a move with a middle
BIG_MIB = 2
# How long a frozen move runs between two looks at its journal (a loaded machine
# may not schedule it at all in a few milliseconds).
STEP = 0.05
FLEET_LINE = re.compile(r"^FLEET poll (?P<poll>\d+): (?P<hosts>\d+) host\(s\): (?P<done>\d+) done, "
                        r"(?P<running>\d+) running, (?P<failed>\d+) failed, (?P<unreachable>\d+) unreachable \| "
                        r"files (?P<fdone>\d+)/(?P<ftotal>\d+) .*\| ETA (?P<eta>\S+)$", re.MULTILINE)
HOST_LINE = re.compile(r"^(?P<host>h\d+): (?P<job>\S+ -> \S+): (?P<status>[a-z ]+?)(?:, |$)", re.MULTILINE)

Tree = t.Dict[str, t.Tuple[str, int]]


@pytest.fixture(scope="module", name="hosts")
def hosts_fixture(fleet) -> harness.Fleet:
    made = fleet(HOSTS, python=sys.executable)
    made.inventory(extra_vars={"ansible_async_dir": ASYNC_DIR})
    return made


def lay_tree(host: harness.Host, seed: str, count: int = SMALL_FILES) -> Tree:
    host.run(f"rm -rf {SRC} {DEST} {STATE} {ASYNC_DIR} /srv/data/dest/.fleet-fill", check=True)
    rnd = random.Random(seed)
    files = {f"d{i % 4}/f{i:04d}.dat": rnd.randbytes(rnd.randint(1, 8 * 1024)) for i in range(count)}
    files["big/blob.bin"] = rnd.randbytes(BIG_MIB * 1024 * 1024)
    root = host.path(SRC)
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return {rel: (hashlib.sha256(data).hexdigest(), len(data)) for rel, data in files.items()}


def play_argv(hosts: harness.Fleet, tmp_path: Path, reports: Path) -> list[str]:
    extra = {"migrate_src": SRC, "migrate_dest": DEST, "migrate_state_dir": STATE, "migrate_report_dir": str(reports),
             "migrate_poll_interval": 1, "migrate_progress_host_interval": 3600}
    vars_file = tmp_path / f"extra-vars-{len(list(tmp_path.glob('extra-vars-*.json')))}.json"
    vars_file.write_text(json.dumps(extra), encoding="utf-8")
    return [harness.ansible_bin("ansible-playbook"), "-i", str(hosts.run_dir / harness.INVENTORY_FILE),
            "-f", str(FORKS), str(harness.REPO_ROOT / "playbooks" / "migrate.yml"), "-e", f"@{vars_file}"]


# The console settings the README gives for fleets: per-host ok/skipped task
# lines off (the role prints its own lines), pipelining on.
CONSOLE_ENV = {"ANSIBLE_DISPLAY_OK_HOSTS": "false", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false",
               "ANSIBLE_PIPELINING": "true"}


def start_play(hosts: harness.Fleet, tmp_path: Path, reports: Path) -> Play:
    old = {key: os.environ.get(key) for key in CONSOLE_ENV}
    os.environ.update(CONSOLE_ENV)
    try:
        return Play(play_argv(hosts, tmp_path, reports), log_file(tmp_path))
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def stop_when_it_starts(hosts: list[harness.Host], stopped: list[int], play: Play,
                        timeout: float = 240) -> dict[str, int]:
    """SIGSTOP each host's durable.mover.move process (and its workers) as soon as it appears,
    all hosts watched at once (a move of a few thousand files takes a second or two); every
    pid stopped goes into ``stopped``. Returns {host: pid of its move}."""
    found: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(hosts):
        for host in hosts:
            if host.name in found:
                continue
            pid = async_move(host)
            if pid:
                stopped.extend(stop_family(pid))
                found[host.name] = pid
        assert time.monotonic() < deadline, f"moves not started within {timeout} s: {sorted(found)}:\n{play.text}"
        assert play.running(), f"the play ended before the moves started ({sorted(found)}):\n{play.text}"
        time.sleep(0.005)
    return found


def kill_sshd_for_good(host: harness.Host) -> None:
    """Kill every sshd process of the host (listener and sessions): nothing answers any more."""
    def is_sshd(pid: int) -> bool:
        argv = _cmdline(pid)
        return bool(argv) and (os.path.basename(argv[0]) == "sshd" or argv[0].startswith("sshd:"))

    sessions = [pid for pid in host.pids() if is_sshd(pid)]
    host.stop_sshd()
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def host_lines(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for match in HOST_LINE.finditer(text):
        found.setdefault(match["host"], []).append(match["status"])
    return found


def test_24_hosts_four_faults_at_once_then_a_rerun(hosts, tmp_path):
    cut, killed, full, dead = hosts["h1"], hosts["h2"], hosts["h3"], hosts["h4"]
    victims = {cut.name, killed.name, full.name, dead.name}
    trees = {host.name: lay_tree(host, f"scale-{host.name}", VICTIM_FILES if host.name in victims else SMALL_FILES)
             for host in hosts}
    healthy = [h.name for h in hosts if h.name not in victims]
    reports = tmp_path / "reports"
    frozen: list[int] = []          # every pid the test stopped: continued whatever happens
    frozen_cut: list[int] = []      # h1's: continued only once the rerun runs
    filler = None
    with released(frozen), released(frozen_cut):
        play = start_play(hosts, tmp_path, reports)
        try:
            pids = stop_when_it_starts([cut, killed, full, dead], frozen, play)
            freeze_mid_run(cut, pids[cut.name], trees[cut.name], frozen_cut, step=STEP)
            frozen[:] = [pid for pid in frozen if pid not in frozen_cut]
            for host in (killed, full):
                family: list[int] = []
                freeze_mid_run(host, pids[host.name], trees[host.name], family, step=STEP)
                frozen.extend(pid for pid in family if pid not in frozen)
            kill_sshd_for_good(dead)
            cut.link_down()
            os.kill(pids[killed.name], signal.SIGKILL)
            wait_gone(pids[killed.name])
            filler = full.fill("/srv/data/dest", leave_bytes=0)
            continue_all(frozen)
            proc = play.finish(timeout=PLAY_TIMEOUT)
        finally:
            play.kill()
        console = proc.stdout
        (tmp_path / "console-first-run.txt").write_text(console, encoding="utf-8")
        assert proc.returncode != 0, output(proc)
        assert "Traceback" not in console and "recursion" not in console, output(proc)
        counts = recap(proc)
        assert set(counts) == {h.name for h in hosts}, output(proc)
        for name in healthy:
            assert (counts[name]["changed"], counts[name]["failed"], counts[name]["unreachable"]) == (1, 0, 0), \
                (name, output(proc))
        assert counts[cut.name]["unreachable"] >= 1 and counts[dead.name]["unreachable"] >= 1, output(proc)
        assert counts[killed.name]["failed"] == 1 and counts[full.name]["failed"] == 1, output(proc)

        # The reports are exact for every host.
        fleet, junit, summary = load_reports(reports)
        totals = fleet["totals"]
        assert (totals["hosts"], totals["hosts_ok"], totals["hosts_failed"], totals["hosts_unreachable"]) == \
            (HOSTS, HOSTS - 4, 2, 2), totals
        for name in healthy:
            entry, tree = fleet["hosts"][name], trees[name]
            assert entry["status"] == "ok" and entry["complete"] is True, (name, entry)
            assert entry["stats"]["files_moved"] == len(tree) == len(regular_files(hosts[name].path(DEST)))
            assert entry["stats"]["bytes_moved"] == sum(size for _sha, size in tree.values())
            assert junit_suite(junit, name).find(".//failure") is None
            assert f"| {name} | ok | {len(tree)} / {len(tree)} |" in summary
        assert fleet["hosts"][cut.name]["status"] == "unreachable"
        assert "run the play again" in fleet["hosts"][cut.name]["msg"]
        assert fleet["hosts"][dead.name]["status"] == "unreachable"
        assert "the move ended without a result: its process on the host died" in fleet["hosts"][killed.name]["msg"]
        entry = fleet["hosts"][full.name]
        assert entry["status"] == "failed" and entry["stats"]["files_failed"] > 0, entry
        assert any("No space left on device" in f["error"] for f in entry["failures"]), entry["failures"][:3]
        assert entry["stats"]["files_failed"] + entry["stats"]["files_moved"] <= len(trees[full.name])
        for name in victims - {dead.name}:
            assert junit_suite(junit, name).find(".//failure") is not None or \
                junit_suite(junit, name).find(".//error") is not None
        for host in hosts:
            if host is not cut:   # h1's move is frozen: it is checked after the rerun
                check_nothing_lost(host, trees[host.name], complete=host.name in healthy)

        # The console: one fleet line per poll round, numbered without a gap,
        # whose counts only move forwards; a host's own line only when its
        # status changed.
        rounds = list(FLEET_LINE.finditer(console))
        assert len(rounds) >= 3, console[-5000:]
        polls = [int(m["poll"]) for m in rounds]
        assert polls == sorted(polls) and len(set(polls)) == len(polls), polls
        done = [int(m["fdone"]) for m in rounds]
        assert done == sorted(done), done
        assert all(int(m["hosts"]) == HOSTS for m in rounds)
        assert int(rounds[-1]["running"]) == 0
        lines = host_lines(console)
        for name, statuses in lines.items():
            changes = sum(1 for a, b in zip(statuses, statuses[1:]) if a != b)
            assert len(statuses) == changes + 1, (name, statuses)
        assert "ok: [" not in console

    # The rerun: h1 back online with its orphaned move running again, the
    # filler gone from h3, h4 still dead.
    cut.link_up()
    if filler is not None:
        full.run(f"rm -f {filler}", check=True)
    continue_all(frozen_cut)
    again_play = start_play(hosts, tmp_path, reports)
    try:
        again = again_play.finish(timeout=PLAY_TIMEOUT)
    finally:
        again_play.kill()
    (tmp_path / "console-rerun.txt").write_text(again.stdout, encoding="utf-8")
    assert again.returncode != 0, output(again)          # h4 is still unreachable
    counts = recap(again)
    for name in healthy:
        assert (counts[name]["changed"], counts[name]["failed"], counts[name]["unreachable"]) == (0, 0, 0), \
            (name, output(again))
    for name in (killed.name, full.name):
        assert (counts[name]["changed"], counts[name]["failed"], counts[name]["unreachable"]) == (1, 0, 0), \
            (name, output(again))
    assert (counts[cut.name]["failed"], counts[cut.name]["unreachable"]) == (0, 0), output(again)
    assert counts[dead.name]["unreachable"] >= 1, output(again)
    wait_gone(pids[cut.name])

    fleet, junit, summary = load_reports(reports)
    totals = fleet["totals"]
    assert (totals["hosts_ok"], totals["hosts_failed"], totals["hosts_unreachable"]) == (HOSTS - 1, 0, 1), totals
    for name in healthy:
        stats = fleet["hosts"][name]["stats"]
        assert (stats["files_moved"], stats["files_already_done"]) == (0, len(trees[name])), (name, stats)
    for name in (killed.name, full.name):
        entry = fleet["hosts"][name]
        assert entry["status"] == "ok" and entry["complete"] is True, entry
        assert entry["stats"]["files_moved"] + entry["stats"]["files_already_done"] == len(trees[name])
    # h1: its orphaned move is a job of its own in the report, and every file counts once.
    entry = fleet["hosts"][cut.name]
    assert entry["status"] == "ok" and entry["complete"] is True, entry
    earlier = [job for job in entry["jobs"] if job["name"].endswith("(earlier run)")]
    assert len(earlier) == 1, entry["jobs"]
    assert "moved by the run of an earlier play that lost its connection" in earlier[0]["msg"]
    assert earlier[0]["stats"]["files_moved"] > 0
    stats = entry["stats"]
    assert stats["files_total"] == len(trees[cut.name]), stats
    assert stats["files_moved"] + stats["files_already_done"] == len(trees[cut.name]), stats
    assert fleet["hosts"][dead.name]["status"] == "unreachable"
    for host in hosts:
        check_nothing_lost(host, trees[host.name], complete=host is not dead)
