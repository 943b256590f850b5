# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers of the playbooks/migrate.yml tests: run it, read its recap and reports.

Every run uses the repository's ansible.cfg (localhost inventory unless -i is
given), no colours, and a JSON file for extra vars so that lists and dicts
(migrate_jobs) pass as such.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO_ROOT / "playbooks" / "migrate.yml"
TIMEOUT = 280
# A host's progress line as the migrate role prints it (durable.mover.follow).
PROGRESS = re.compile(r'^(?P<host>[^:\s]+): (?P<name>.*?): (?:starting|listing|moving|waiting for an earlier run|'
                      r'finished|failed), files (?P<done>\d+)/(?P<total>\d+) \([0-9.]+%\)(?: so far)?, bytes ')


def ansible_playbook() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "ansible-playbook"
    if venv.exists():
        return str(venv)
    found = shutil.which("ansible-playbook") or shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("ansible-playbook is not installed (make venv)")
    return found


# ansible-core versions beside the venv's: `make matrix-venvs` makes
# .matrix/ansible-core-<X.Y>/ (one venv per version, with a controller Python
# that version supports). DURABLE_MOVER_CORE_MATRIX="2.16,2.20" says which are
# expected: a test run under the matrix then fails, never skips, when one of
# them is missing.
MATRIX_DIR = REPO_ROOT / ".matrix"
MATRIX_ENV = "DURABLE_MOVER_CORE_MATRIX"


def _core_version(playbook: str) -> str:
    proc = subprocess.run([playbook, "--version"], capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"core ([0-9]+\.[0-9]+\.[0-9]+)", proc.stdout)
    return match.group(1) if match else "unknown (%s)" % (proc.stderr or proc.stdout).strip()[:200]


def core_matrix() -> list:
    """[(label, ansible-playbook path or None, note)]: the expected versions
    (DURABLE_MOVER_CORE_MATRIX) or, without it, the default one and every
    .matrix venv found. A missing expected version has path None."""
    found = {}
    for venv in sorted(MATRIX_DIR.glob("ansible-core-*")):
        playbook = venv / "bin" / "ansible-playbook"
        if playbook.exists():
            found[venv.name[len("ansible-core-"):]] = str(playbook)
    expected = [v.strip() for v in os.environ.get(MATRIX_ENV, "").split(",") if v.strip()]
    if expected:
        return [(v, found.get(v), "found" if v in found else "MISSING: run make matrix-venvs") for v in expected]
    return [("default", None, "the venv's")] + [(v, path, "found") for v, path in found.items()]


def matrix_header() -> str:
    parts = []
    for label, path, note in core_matrix():
        if label == "default":
            parts.append("default %s (%s)" % (_core_version(ansible_playbook()), ansible_playbook()))
        elif path:
            parts.append("%s -> %s (%s)" % (label, _core_version(path), path))
        else:
            parts.append("%s %s" % (label, note))
    expected = os.environ.get(MATRIX_ENV)
    return "ansible-core matrix%s: %s" % (" (expected: %s)" % expected if expected else "", "; ".join(parts))


def ansible_env(cwd: Path) -> dict:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(REPO_ROOT / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    # The report role puts its default directory under $PWD, which a shell
    # would set to the working directory.
    env["PWD"] = str(cwd)
    env.pop("DURABLE_MOVER_FAULTS", None)
    return env


def playbook_argv(args, extra_vars, tmp_dir: Path, playbook: str | None = None) -> list:
    argv = [playbook or ansible_playbook(), str(PLAYBOOK), *args]
    if extra_vars:
        vars_file = tmp_dir / ("extra-vars-%d.json" % len(list(tmp_dir.glob("extra-vars-*.json"))))
        vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
        argv += ["-e", "@%s" % vars_file]
    return argv


def run_playbook(*args: str, extra_vars: dict | None = None, cwd: Path = REPO_ROOT,
                 tmp_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run playbooks/migrate.yml to the end; extra_vars go through a JSON file in tmp_dir."""
    tmp_dir = tmp_dir or cwd
    return subprocess.run(
        playbook_argv(args, extra_vars, tmp_dir),
        cwd=str(cwd), env=ansible_env(cwd), capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )


class LivePlaybook:
    """ansible-playbook running in the background, its output read line by line as it comes."""

    def __init__(self, *args: str, extra_vars: dict | None = None, cwd: Path = REPO_ROOT,
                 tmp_dir: Path | None = None, playbook: str | None = None, env: dict | None = None):
        self.proc = subprocess.Popen(
            playbook_argv(args, extra_vars, tmp_dir or cwd, playbook), cwd=str(cwd), env={**ansible_env(cwd), **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self.lines: list = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern, count: int = 1, timeout: float = TIMEOUT) -> list:
        """Read output until `pattern` matched `count` lines; return the matches."""
        found = [m for m in map(pattern.search, self.lines) if m]
        while len(found) < count:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                raise AssertionError("no %d line(s) matching %r within %ds:\n%s"
                                     % (count, pattern.pattern, timeout, "".join(self.lines)))
            if line is None:
                raise AssertionError("ansible-playbook ended (exit %s) before %d line(s) matched %r:\n%s"
                                     % (self.proc.wait(), count, pattern.pattern, "".join(self.lines)))
            self.lines.append(line)
            match = pattern.search(line)
            if match:
                found.append(match)
        return found

    def finish(self, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        returncode = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return subprocess.CompletedProcess(self.proc.args, returncode, "".join(self.lines), "")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def recap(proc: subprocess.CompletedProcess, host: str = "localhost") -> dict:
    """The PLAY RECAP counters of one host."""
    match = re.search(r"^%s\s*:\s*(ok=.*)$" % re.escape(host), proc.stdout, re.MULTILINE)
    assert match, "no recap line for %s in:\n%s" % (host, output(proc))
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def output(proc: subprocess.CompletedProcess) -> str:
    return "exit %d\n--- stdout\n%s\n--- stderr\n%s" % (proc.returncode, proc.stdout, proc.stderr)


def make_tree(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def regular_files(root: Path) -> dict:
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def load_reports(report_dir: Path) -> tuple:
    fleet = json.loads((report_dir / "fleet.json").read_text(encoding="utf-8"))
    junit = ET.fromstring((report_dir / "junit.xml").read_bytes())
    summary = (report_dir / "summary.md").read_text(encoding="utf-8")
    return fleet, junit, summary


def local_inventory(path: Path, hosts: list, host_vars: dict | None = None) -> Path:
    """An inventory of `hosts`, all on this machine (ansible_connection=local)."""
    lines = ["all:", "  vars:", "    ansible_connection: local",
             "    ansible_python_interpreter: '{{ ansible_playbook_python }}'", "  hosts:"]
    for host in hosts:
        values = (host_vars or {}).get(host) or {}
        lines.append("    %s:%s" % (host, "" if values else ""))
        for key, value in values.items():
            lines.append("      %s: %s" % (key, json.dumps(value)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def job_id(src: Path, dest: Path) -> str:
    """The job id durable.mover derives for src/dest."""
    from ansible_collections.durable.mover.plugins.module_utils import _mover
    return _mover.Job(_mover.Options.from_params({"src": str(src), "dest": str(dest)})).job_id


def interrupted_move(src: Path, dest: Path, state_dir: Path, point: str = "after_journal_done") -> None:
    """Run the core on src/dest and SIGKILL it at `point` (its first time): a journal with work left."""
    env = dict(os.environ, DURABLE_MOVER_FAULTS="kill=%s@1" % point)
    params = {"src": str(src), "dest": str(dest), "state_dir": str(state_dir), "batch_files": 64, "processes": 1}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "tools" / "mover_cli.py"), json.dumps(params)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, "the move was not killed at %s: %s %s" % (point, proc.stdout, proc.stderr)


class LockHolder:
    """Another process holding a job's lock (as a running move would) until released."""

    def __init__(self, state_dir: Path, job: str):
        code = textwrap.dedent("""
            import sys
            from ansible_collections.durable.mover.plugins.module_utils._lock import JobLock
            lock = JobLock(sys.argv[1], sys.argv[2]).acquire()
            print("locked", flush=True)
            sys.stdin.read()
            lock.release()
        """)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / ".collections"), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(state_dir / job), job],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise RuntimeError("lock holder did not start: %r" % line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)

    def __enter__(self) -> "LockHolder":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
