# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Faults on a real fleet: ``ansible-playbook playbooks/migrate.yml`` over SSH to three hosts.

The hosts come from the fleet harness (harness.py beside this file): each an
sshd in its own namespaces, with /srv/data/src on ext4 and /srv/data/dest on
xfs, so every move crosses devices. Each test lays a fresh tree of a few
hundred files (three of them MiB-sized) on every host, runs the real playbook
with the fleet's inventory, injects one fault, and then checks on every host
that each generated file is at its source or whole at its destination
(sha256 against what was generated), never neither, and after a completed
run: everything at the destination, no part files.

Placing a fault mid-run: a move of this tree takes a fraction of a second,
far less than one progress poll, so the test does not race it. It finds the
host's ``durable.mover.move`` process (the async job, in the host's pid
namespace), and steps it with SIGSTOP/SIGCONT, a few milliseconds at a time,
until its journal says some files are done and some are not (read as
move_info reads it); the fault (link down, SIGKILL) is then injected while it
is frozen there. A frozen move is exactly what the play sees of a slow one:
it keeps polling and printing the host's progress from the journal.

Runtime: about 70 s for the four tests on an idle 2-core machine (each
playbook run takes 5 to 10 s); several times that when the machine is shared,
hence the 480 s ceiling per test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
import typing as t
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import harness  # pylint: disable=import-error
from ansible_collections.durable.mover.plugins.module_utils import _info

pytestmark = [pytest.mark.root, pytest.mark.loop, pytest.mark.timeout(480)]

PLAYBOOK = harness.REPO_ROOT / "playbooks" / "migrate.yml"
SRC = "/srv/data/src/tree"
DEST = "/srv/data/dest/tree"
STATE = "/srv/data/state"
# Async job results stay on the host (/root is shared by every host and the controller).
ASYNC_DIR = "/srv/data/async"
PLAY_TIMEOUT = 150
SMALL_FILES = 700  # more than one batch of the mover (256 files), so a run has a middle
BIG_FILES = (1, 2, 3)  # MiB
# The module process of an async durable.mover.move: "<python> .../AnsiballZ_move.py".
MODULE_SCRIPT = "AnsiballZ_move.py"
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>ok=\d+.*)$", re.MULTILINE)
# A host's progress line of the migrate role (durable.mover.follow).
PROGRESS = re.compile(r'^(?P<host>[^:\s]+): [^:]*: [a-z ]+, files (?P<done>\d+)/(?P<total>\d+) \(')

Tree = t.Dict[str, t.Tuple[str, int]]  # relative path -> (sha256, size)


# --------------------------------------------------------------------------
# The fleet, the trees and the playbook
# --------------------------------------------------------------------------

@pytest.fixture(scope="module", name="hosts")
def hosts_fixture(fleet) -> harness.Fleet:
    """Three hosts whose modules run with this python (it has blake3)."""
    made = fleet(3, python=sys.executable)
    made.inventory(extra_vars={"ansible_async_dir": ASYNC_DIR})
    return made


def lay_tree(host: harness.Host, seed: str) -> Tree:
    """Clear the host's data and state; write a fresh tree at SRC; return what was written.

    A module still running on the host (left by a test that failed half way) is killed first.
    """
    leftovers = [pid for pid in host.pids() if any("AnsiballZ_" in arg for arg in _cmdline(pid))]
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in leftovers:
        wait_gone(pid)
    host.run(f"rm -rf {SRC} {DEST} {STATE} {ASYNC_DIR} /srv/data/dest/.fleet-fill", check=True)
    rnd = random.Random(seed)
    files: dict[str, bytes] = {}
    for i in range(SMALL_FILES):
        size = 0 if i % 50 == 7 else rnd.randint(1, 12 * 1024)
        files[f"d{i % 5}/sub{i % 3}/f{i:04d}.dat"] = rnd.randbytes(size)
    for mib in BIG_FILES:
        files[f"big/blob-{mib}m.bin"] = rnd.randbytes(mib * 1024 * 1024)
    root = host.path(SRC)
    for rel, data in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return {rel: (hashlib.sha256(data).hexdigest(), len(data)) for rel, data in files.items()}


def lay_trees(hosts: harness.Fleet, name: str) -> dict[str, Tree]:
    return {host.name: lay_tree(host, f"{name}-{host.name}") for host in hosts}


def tree_bytes(tree: Tree) -> int:
    return sum(size for _sha, size in tree.values())


def play_vars(report_dir: Path) -> dict[str, t.Any]:
    return {"migrate_src": SRC, "migrate_dest": DEST, "migrate_state_dir": STATE,
            "migrate_poll_interval": 1, "migrate_progress_host_interval": 0, "migrate_report_dir": str(report_dir)}


def play_argv(hosts: harness.Fleet, tmp_path: Path, extra_vars: dict[str, t.Any]) -> list[str]:
    vars_file = tmp_path / f"extra-vars-{len(list(tmp_path.glob('extra-vars-*.json')))}.json"
    vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
    return [harness.ansible_bin("ansible-playbook"), "-i", str(hosts.run_dir / harness.INVENTORY_FILE),
            str(PLAYBOOK), "-e", f"@{vars_file}"]


def play_env() -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(harness.REPO_ROOT / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0", "PYTHONUNBUFFERED": "1"}


class Play:
    """ansible-playbook running in the background; its output read line by line as it comes."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            argv, cwd=str(harness.REPO_ROOT), env=play_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _pump(self, timeout: float) -> bool:
        """Take the lines read so far (waiting up to ``timeout`` for one); False at the end of output."""
        try:
            line = self._queue.get(timeout=timeout)
            while True:
                if line is None:
                    self._eof = True
                    return False
                self.lines.append(line)
                line = self._queue.get_nowait()
        except queue.Empty:
            return not self._eof

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def running(self) -> bool:
        return self._pump(0) and self.proc.poll() is None

    def wait_for(self, what: str, found: t.Callable[[], t.Any], timeout: float = 90) -> t.Any:
        """Read output until ``found()`` returns something true; fail at the deadline or the end."""
        deadline = time.monotonic() + timeout
        while True:
            result = found()
            if result:
                return result
            if not self._pump(min(0.5, max(0.0, deadline - time.monotonic()))) and not found():
                raise AssertionError(f"ansible-playbook ended (exit {self.proc.wait()}) before {what}:\n{self.text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.text}")

    def finish(self, timeout: float = PLAY_TIMEOUT) -> subprocess.CompletedProcess[str]:
        returncode = self.proc.wait(timeout=timeout)
        while self._pump(5):
            pass
        self.log.write_text(self.text, encoding="utf-8")
        return subprocess.CompletedProcess(self.proc.args, returncode, self.text, "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_play(hosts: harness.Fleet, tmp_path: Path, report_dir: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(play_argv(hosts, tmp_path, play_vars(report_dir)), cwd=str(harness.REPO_ROOT),
                          env=play_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=PLAY_TIMEOUT, check=False)
    log_file(tmp_path).write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return proc


def log_file(tmp_path: Path) -> Path:
    """Where the next play's output is kept (play-N.log in the test's tmp_path), for a look after a failure."""
    return tmp_path / f"play-{len(list(tmp_path.glob('play-*.log')))}.log"


def output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def recap(proc: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    """{host: {ok, changed, unreachable, failed, ...}} from the PLAY RECAP."""
    tail = proc.stdout[proc.stdout.rfind("PLAY RECAP"):]
    return {m["host"]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m["counts"])}
            for m in RECAP.finditer(tail)}


def progress_of(lines: list[str], host: str) -> list[tuple[int, int]]:
    """(done, total) of every progress line the play printed for ``host``."""
    found = []
    for line in lines:
        match = PROGRESS.search(line)
        if match and match["host"] == host:
            found.append((int(match["done"]), int(match["total"])))
    return found


def load_reports(report_dir: Path) -> tuple[dict[str, t.Any], ET.Element, str]:
    fleet = json.loads((report_dir / "fleet.json").read_text(encoding="utf-8"))
    junit = ET.fromstring((report_dir / "junit.xml").read_bytes())
    summary = (report_dir / "summary.md").read_text(encoding="utf-8")
    return fleet, junit, summary


def junit_suite(junit: ET.Element, host: str) -> ET.Element:
    suites = [s for s in junit.iter("testsuite") if s.get("name") == host]
    assert len(suites) == 1, ET.tostring(junit, encoding="unicode")
    return suites[0]


# --------------------------------------------------------------------------
# What is on a host
# --------------------------------------------------------------------------

def sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def regular_files(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def part_files(host: harness.Host) -> list[str]:
    return [rel for base in (SRC, DEST) for rel in regular_files(host.path(base)) if rel.endswith(".part")]


def where_files_are(src: Path, dest: Path, tree: Tree, files_at_dest: t.Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Where each file of ``tree`` is (at its source, its destination or both),
    and the problems: a file corrupt, changed, LOST (at neither), or a file at
    the destination that is not of the tree (part files aside)."""
    where = {"src": 0, "dest": 0, "both": 0}
    problems = []
    for rel, (sha, _size) in sorted(tree.items()):
        at_src, at_dest = sha256_of(src / rel), sha256_of(dest / rel)
        if at_dest is not None and at_dest != sha:
            problems.append(f"{rel}: corrupt at the destination")
        if at_src is not None and at_src != sha:
            problems.append(f"{rel}: changed at the source")
        if at_src is None and at_dest is None:
            problems.append(f"{rel}: LOST (neither at the source nor at the destination)")
        where["both" if at_src and at_dest else "src" if at_src else "dest"] += 1
    strangers = [rel for rel in files_at_dest if rel not in tree and not rel.endswith(".part")]
    if strangers:
        problems.append(f"unexpected files at the destination: {strangers[:5]}")
    return where, problems


def check_nothing_lost(host: harness.Host, tree: Tree, *, complete: bool) -> dict[str, int]:
    """Every file of ``tree`` is whole at its source or at its destination (never neither, never corrupt).

    ``complete``: the run finished, so every file is at its destination
    only and no part file is left. Returns how many are where.
    """
    src, dest = host.path(SRC), host.path(DEST)
    where, problems = where_files_are(src, dest, tree, regular_files(dest))
    if complete:
        if where["dest"] != len(tree):
            problems.append(f"not complete: {where}")
        if part_files(host):
            problems.append(f"part files left: {part_files(host)[:5]}")
    assert not problems, f"{host.name}: " + "; ".join(problems[:10])
    return where


def check_fleet(hosts: harness.Fleet, trees: dict[str, Tree], complete: t.Iterable[str]) -> dict[str, dict[str, int]]:
    done = set(complete)
    return {host.name: check_nothing_lost(host, trees[host.name], complete=host.name in done) for host in hosts}


# --------------------------------------------------------------------------
# Catching the move mid-run
# --------------------------------------------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]
    except OSError:
        return []


def _ns_pid(pid: int) -> int:
    """``pid`` as the host's own pid namespace numbers it (last NSpid field)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {pid}")


def _stopped(pid: int) -> bool:
    """True once every thread of ``pid`` is stopped (or the process is gone)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="utf-8", errors="replace") as handle:
                state = handle.read().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def async_move(host: harness.Host) -> int | None:
    """Root-namespace pid of the host's async durable.mover.move module process (the one
    async_wrapper started), if one runs: not a worker process of it (forked: the same command
    line), nor a move module run in the foreground (the role's preflight of a host with one job)."""
    moves = []
    for pid in host.pids():
        argv = _cmdline(pid)     # read once: the process may end at any time
        if len(argv) >= 2 and os.path.basename(argv[1]) == MODULE_SCRIPT:
            moves.append(pid)
    for pid in moves:
        parent = _parent(pid)
        if parent not in moves and any("async_wrapper" in arg for arg in _cmdline(parent or 0)):
            return pid
    return None


def find_move(host: harness.Host, play: Play, timeout: float = 90) -> int:
    """Root-namespace pid of the host's async durable.mover.move module process, once it runs."""
    def look() -> int | None:
        return async_move(host)

    deadline = time.monotonic() + timeout
    while True:
        pid = look()
        if pid:
            return pid
        assert play.running(), f"the play ended before {host.name}'s move started:\n{play.text}"
        assert time.monotonic() < deadline, f"{host.name}'s move did not start within {timeout} s:\n{play.text}"
        time.sleep(0.01)


# move_info's reading of the job's journal, run inside the host: SQLite resolves
# symbolic links in a database's path, so the controller cannot open it
# through /proc/<pid>/root.
PROGRESS_SCRIPT = """
import json, os, sys
from ansible_collections.durable.mover.plugins.module_utils._info import job_info
jobs = os.listdir(sys.argv[1]) if os.path.isdir(sys.argv[1]) else []
info = job_info({"state_dir": sys.argv[1], "job_id": jobs[0], "max_failures_reported": 0}) if len(jobs) == 1 else {}
print(json.dumps(info.get("progress") or {}))
"""


def journal_progress(host: harness.Host) -> dict[str, t.Any]:
    """The job's progress as move_info reads it from the journal, or {} before there is one."""
    collections = Path(_info.__file__).parents[5]  # .../ansible_collections/durable/mover/plugins/module_utils
    proc = host.run([sys.executable, "-c", PROGRESS_SCRIPT, STATE], env={"PYTHONPATH": str(collections)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return int(handle.read().rpartition(")")[2].split()[1])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    """The module's worker processes (forked by its main thread)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="utf-8") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    while not _stopped(pid):
        time.sleep(0.001)


def stop_family(pid: int) -> list[int]:
    """SIGSTOP the move, then its worker processes (listed once it is stopped:
    it cannot start more); returns every pid stopped, the move first."""
    _stop(pid)
    children = _children(pid)
    for child in children:
        _stop(child)
    return [pid] + children


def continue_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def freeze_mid_run(host: harness.Host, pid: int, tree: Tree, frozen: list[int],
                   step: float = 0.003) -> dict[str, t.Any]:
    """Step the move (and its worker processes) with SIGSTOP/SIGCONT until its
    journal says some files are done and some are not.

    Returns that progress (as move_info reports it); the processes are left
    stopped, and listed in `frozen`.
    """
    deadline = time.monotonic() + 60
    src = host.path(SRC)
    while True:
        family = stop_family(pid)
        frozen[:] = family
        # Cheap first: a source is unlinked only after the journal recorded its copy.
        unlinked = len(tree) - sum(1 for rel in regular_files(src) if rel in tree)
        assert unlinked < len(tree), f"{host.name}: the move finished before it could be caught mid-run"
        if unlinked > 0:
            progress = journal_progress(host)
            if progress.get("files_total") == len(tree) and 0 < progress.get("files_done", 0) < len(tree):
                return progress
        assert harness.pid_alive(pid), f"{host.name}: the move ended before it could be caught mid-run"
        assert time.monotonic() < deadline, f"{host.name}: the move made no progress in 60 s"
        continue_all(family)
        time.sleep(step)


@contextlib.contextmanager
def released(pid_box: list[int]) -> t.Iterator[None]:
    """Whatever happens, continue the processes the test stopped (their pids go into pid_box)."""
    try:
        yield
    finally:
        continue_all(pid_box)


def wait_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while harness.pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs after {timeout} s"
        time.sleep(0.02)


# --------------------------------------------------------------------------
# The scenarios
# --------------------------------------------------------------------------

def test_baseline_migrates_every_host_and_a_rerun_changes_nothing(hosts, tmp_path):
    trees = lay_trees(hosts, "baseline")
    reports = tmp_path / "reports"
    proc = run_play(hosts, tmp_path, reports)
    assert proc.returncode == 0, output(proc)
    counts = recap(proc)
    assert set(counts) == {h.name for h in hosts}, output(proc)
    for name, count in counts.items():
        assert (count["changed"], count["failed"], count["unreachable"]) == (1, 0, 0), (name, output(proc))
    check_fleet(hosts, trees, complete=trees)

    # The reports say what is on the hosts.
    fleet, junit, summary = load_reports(reports)
    assert fleet["totals"]["hosts_ok"] == 3 and fleet["totals"]["hosts_failed"] == 0
    assert fleet["totals"]["files_moved"] == sum(len(tree) for tree in trees.values())
    for host in hosts:
        entry, tree = fleet["hosts"][host.name], trees[host.name]
        assert entry["status"] == "ok" and entry["changed"] is True and entry["complete"] is True
        assert entry["stats"]["files_moved"] == len(tree) == len(regular_files(host.path(DEST)))
        assert entry["stats"]["bytes_moved"] == tree_bytes(tree)
        assert entry["failures"] == []
        assert entry["preflight"][0]["ok"] is True
        found = entry["preflight"][0]["findings"]
        if found["larger"] is not None:
            # More than a foreground move takes, and the source's filesystem bounds the space the job
            # needs: counted only that far (issue 13), the move listed it.
            assert found["plan"] is None and found["space"]["upper_bound"] is True, found
        else:
            assert found["plan"]["bytes"] == tree_bytes(tree), found
        per_host = json.loads((reports / "hosts" / f"{host.name}.json").read_text(encoding="utf-8"))
        assert per_host["report"]["stats"] == entry["stats"]
        suite = junit_suite(junit, host.name)
        assert suite.find(".//failure") is None and suite.find(".//error") is None
        assert f"| {host.name} | ok | {len(tree)} / {len(tree)} |" in summary

    # Rerun on the finished fleet: nothing to do, and the recap says so.
    again = run_play(hosts, tmp_path, reports)
    assert again.returncode == 0, output(again)
    for name, count in recap(again).items():
        assert (count["changed"], count["failed"], count["unreachable"]) == (0, 0, 0), (name, output(again))
    fleet, _junit, _summary = load_reports(reports)
    for host in hosts:
        stats = fleet["hosts"][host.name]["stats"]
        assert (stats["files_moved"], stats["files_already_done"]) == (0, len(trees[host.name]))
    check_fleet(hosts, trees, complete=trees)


def test_network_cut_mid_run_then_rerun_resumes(hosts, tmp_path):
    trees = lay_trees(hosts, "netcut")
    victim = hosts["h1"]
    others = [h.name for h in hosts if h is not victim]
    reports = tmp_path / "reports"
    frozen: list[int] = []
    with released(frozen):
        play = Play(play_argv(hosts, tmp_path, play_vars(reports)), log_file(tmp_path))
        try:
            pid = find_move(victim, play)
            frozen_at = freeze_mid_run(victim, pid, trees[victim.name], frozen)
            # The play sees the move running and prints its progress from the journal.
            play.wait_for(f"a progress line of {victim.name} at {frozen_at['files_done']} files",
                          lambda: (frozen_at["files_done"], len(trees[victim.name]))
                          in progress_of(play.lines, victim.name))
            victim.link_down()
            proc = play.finish()
        finally:
            play.kill()
            victim.link_up()
        assert proc.returncode != 0, output(proc)
        counts = recap(proc)
        assert counts[victim.name]["unreachable"] >= 1, output(proc)
        for name in others:
            assert (counts[name]["changed"], counts[name]["failed"], counts[name]["unreachable"]) == (1, 0, 0), output(proc)

        fleet, junit, summary = load_reports(reports)
        entry = fleet["hosts"][victim.name]
        assert entry["status"] == "unreachable", entry
        assert "unreachable" in entry["msg"] and "run the play again" in entry["msg"], entry["msg"]
        assert fleet["totals"]["hosts_unreachable"] == 1 and fleet["totals"]["hosts_ok"] == 2
        assert junit_suite(junit, victim.name).find(".//error") is not None
        assert f"| {victim.name} | unreachable |" in summary
        for name in others:
            assert fleet["hosts"][name]["status"] == "ok"
            assert junit_suite(junit, name).find(".//error") is None
        where = check_fleet(hosts, trees, complete=others)
        assert where[victim.name]["src"] > 0, where  # the cut came mid-run

        # Back online, and its move is still there (frozen): the rerun waits for it,
        # showing its progress, then finishes the job.
        again = Play(play_argv(hosts, tmp_path, play_vars(reports)), log_file(tmp_path))
        try:
            waiting = f"a run of this job is still going (pid {_ns_pid(pid)})"
            again.wait_for("the wait for the earlier run", lambda: waiting in again.text)
            again.wait_for(f"a progress line of {victim.name} in the rerun",
                           lambda: progress_of(again.lines, victim.name))
            continue_all(frozen)
            proc = again.finish()
        finally:
            again.kill()
    assert proc.returncode == 0, output(proc)
    wait_gone(pid)
    counts = recap(proc)
    assert (counts[victim.name]["failed"], counts[victim.name]["unreachable"]) == (0, 0), output(proc)
    for name in others:
        assert counts[name]["changed"] == 0, output(proc)
    fleet, junit, _summary = load_reports(reports)
    assert all(fleet["hosts"][h.name]["status"] == "ok" for h in hosts), fleet["hosts"]
    assert fleet["hosts"][victim.name]["complete"] is True
    # What the orphaned move did is attributed to it, as a job of its own, and
    # every file counts once (not as "already done" by the rerun's own move).
    entry = fleet["hosts"][victim.name]
    earlier = [job for job in entry["jobs"] if job["name"].endswith("(earlier run)")]
    assert len(earlier) == 1, [(job["name"], job["stats"]) for job in entry["jobs"]]
    assert "moved by the run of an earlier play that lost its connection" in earlier[0]["msg"]
    assert earlier[0]["stats"]["files_moved"] > 0
    stats = entry["stats"]
    assert stats["files_total"] == len(trees[victim.name]), stats
    assert stats["files_moved"] + stats["files_already_done"] == len(trees[victim.name]), stats
    assert junit.find(".//error") is None and junit.find(".//failure") is None
    check_fleet(hosts, trees, complete=trees)


def test_module_killed_mid_run_then_rerun_completes(hosts, tmp_path):
    trees = lay_trees(hosts, "sigkill")
    victim = hosts["h2"]
    others = [h.name for h in hosts if h is not victim]
    reports = tmp_path / "reports"
    frozen: list[int] = []
    with released(frozen):
        play = Play(play_argv(hosts, tmp_path, play_vars(reports)), log_file(tmp_path))
        try:
            pid = find_move(victim, play)
            frozen_at = freeze_mid_run(victim, pid, trees[victim.name], frozen)
            os.kill(pid, signal.SIGKILL)       # its workers die with it
            wait_gone(pid)
            proc = play.finish()
        finally:
            play.kill()
    assert proc.returncode != 0, output(proc)
    counts = recap(proc)
    assert counts[victim.name]["failed"] == 1 and counts[victim.name]["unreachable"] == 0, output(proc)
    for name in others:
        assert (counts[name]["changed"], counts[name]["failed"]) == (1, 0), output(proc)
    fleet, junit, summary = load_reports(reports)
    entry = fleet["hosts"][victim.name]
    assert entry["status"] == "failed", entry
    # Said plainly, not as async_wrapper's traceback.
    assert "the move ended without a result: its process on the host died" in entry["msg"], entry["msg"]
    assert "run the play again to resume the job" in entry["msg"] and "Traceback" not in summary
    assert junit_suite(junit, victim.name).find(".//failure") is not None
    where = check_fleet(hosts, trees, complete=others)
    assert where[victim.name]["src"] > 0 and where[victim.name]["dest"] + where[victim.name]["both"] > 0, where

    again = run_play(hosts, tmp_path, reports)
    assert again.returncode == 0, output(again)
    counts = recap(again)
    assert counts[victim.name]["changed"] == 1, output(again)
    for name in others:
        assert counts[name]["changed"] == 0, output(again)
    fleet, _junit, _summary = load_reports(reports)
    entry = fleet["hosts"][victim.name]
    assert entry["status"] == "ok" and entry["complete"] is True
    # Resumed from the journal: what the killed run had finished is not moved again.
    assert entry["stats"]["resumed"] is True
    assert frozen_at["files_done"] <= entry["stats"]["files_already_done"] < len(trees[victim.name]), entry["stats"]
    assert entry["stats"]["files_moved"] + entry["stats"]["files_already_done"] == len(trees[victim.name])
    check_fleet(hosts, trees, complete=trees)


def test_missing_source_and_full_disk_fail_with_clear_messages(hosts, tmp_path):
    trees = lay_trees(hosts, "preflight")
    missing, full, good = hosts["h0"], hosts["h1"], hosts["h2"]
    missing.run(f"rm -rf {SRC}", check=True)
    trees[missing.name] = {}
    needed = tree_bytes(trees[full.name])
    full.path(DEST).mkdir(parents=True)
    filler = full.fill("/srv/data/dest", leave_bytes=needed // 2)
    try:
        free = os.statvfs(full.path(DEST)).f_bavail * os.statvfs(full.path(DEST)).f_frsize
        assert free < needed
        reports = tmp_path / "reports"
        proc = run_play(hosts, tmp_path, reports)
    finally:
        full.run(f"rm -f {filler}", check=True)
    assert proc.returncode != 0, output(proc)
    counts = recap(proc)
    assert counts[missing.name]["failed"] == 1 and counts[full.name]["failed"] == 1, output(proc)
    assert (counts[good.name]["changed"], counts[good.name]["failed"]) == (1, 0), output(proc)

    fleet, junit, summary = load_reports(reports)
    entry = fleet["hosts"][missing.name]
    assert entry["status"] == "failed" and "src does not exist" in entry["msg"], entry
    entry = fleet["hosts"][full.name]
    assert entry["status"] == "failed", entry
    space = entry["preflight"][0]["findings"]["space"]
    # what the destination would allocate: at least the data, in whole blocks, with a margin
    assert space["bytes_to_move"] == needed and space["free_bytes"] < needed <= space["bytes_needed"], space
    problem = f"not enough free space at dest: about ... ({space['bytes_needed']} bytes) needed"
    assert re.search(rf"not enough free space at dest: about [0-9.]+ [KM]iB \({space['bytes_needed']} bytes\) "
                     rf"needed, \S+ has [0-9.]+ [KM]iB \({space['free_bytes']} bytes\) free \(", entry["msg"]), \
        (problem, entry["msg"])
    assert f"({space['bytes_needed']} bytes)" in summary and f"({space['free_bytes']} bytes)" in summary
    assert fleet["hosts"][good.name]["status"] == "ok"
    assert junit_suite(junit, missing.name).find(".//failure") is not None
    assert junit_suite(junit, full.name).find(".//failure") is not None
    assert junit_suite(junit, good.name).find(".//failure") is None
    where = check_fleet(hosts, trees, complete=[good.name])
    assert where[full.name]["src"] == len(trees[full.name])  # nothing moved on the full host
