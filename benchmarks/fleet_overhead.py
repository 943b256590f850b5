# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller's cost per host: playbooks/migrate.yml on 4 to 24 SSH test hosts.

Builds one fleet of network-namespace hosts (tests/fleet/harness.py; root),
then for each fleet size N runs the real playbook on the first N hosts, each
moving its own tree (ext4 -> xfs), and measures on the controller:

* wall time of ansible-playbook;
* CPU seconds (user + system) of ansible-playbook and everything it started
  on the controller (its worker processes and ssh clients), from
  getrusage(RUSAGE_CHILDREN); the modules run in the hosts' namespaces under
  their sshd, so their CPU is not counted;
* the poll rounds the play made (its last "FLEET poll N" line).

Each run is timed once per size (the machine is shared: say so when quoting).

    sudo .venv/bin/python benchmarks/fleet_overhead.py --sizes 4,8,16,24 --forks 10
    sudo .venv/bin/python benchmarks/fleet_overhead.py --sizes 2 --files 50    # a smoke run

Prints a Markdown table (and writes it to --output when given).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fleet"))

import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error

SRC, DEST, STATE, ASYNC_DIR = "/srv/data/src/tree", "/srv/data/dest/tree", "/srv/data/state", "/srv/data/async"
FLEET_POLL = re.compile(r"^FLEET poll (\d+):", re.MULTILINE)
RECAP = re.compile(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def lay_tree(host: harness.Host, files: int, seed: str) -> None:
    host.run(f"rm -rf {SRC} {DEST} {STATE} {ASYNC_DIR}", check=True)
    rnd = random.Random(seed)
    root = host.path(SRC)
    for i in range(files):
        target = root / f"d{i % 8}" / f"f{i:05d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rnd.randbytes(4096))


def run_play(fleet: harness.Fleet, hosts: list[str], forks: int, interval: int, workdir: Path) -> dict:
    extra = {"migrate_src": SRC, "migrate_dest": DEST, "migrate_state_dir": STATE,
             "migrate_report_dir": str(workdir / "reports"), "migrate_poll_interval": interval,
             "migrate_progress_host_interval": 3600}
    vars_file = workdir / "extra-vars.json"
    vars_file.write_text(json.dumps(extra), encoding="utf-8")
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_DISPLAY_OK_HOSTS": "false", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "false",
           "ANSIBLE_PIPELINING": "true"}
    argv = [harness.ansible_bin("ansible-playbook"), "-i", str(fleet.run_dir / harness.INVENTORY_FILE),
            "-f", str(forks), "--limit", ",".join(hosts), str(REPO / "playbooks" / "migrate.yml"),
            "-e", f"@{vars_file}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=3600, check=False)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    (workdir / "console.txt").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    recap = {m.group(1): (int(m.group(2)), int(m.group(3)), int(m.group(4))) for m in RECAP.finditer(proc.stdout)}
    polls = [int(n) for n in FLEET_POLL.findall(proc.stdout)]
    ok = proc.returncode == 0 and all(v == (1, 0, 0) for v in recap.values()) and len(recap) == len(hosts)
    return {"hosts": len(hosts), "wall": wall, "cpu": cpu, "rounds": len(polls), "ok": ok,
            "rc": proc.returncode, "console": str(workdir / "console.txt")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--sizes", default="4,8,16,24", help="fleet sizes to run, comma separated")
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--files", type=int, default=300, help="4 KiB files per host")
    parser.add_argument("--interval", type=int, default=1, help="migrate_poll_interval")
    parser.add_argument("--output", help="write the Markdown table here too")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    reason = harness.unavailable()
    if reason:
        print(f"cannot build a fleet: {reason}", file=sys.stderr)
        return 2
    workroot = Path(tempfile.mkdtemp(prefix="dm-fleet-bench-"))
    rows = []
    with harness.Fleet.create(max(sizes), python=sys.executable) as fleet:
        fleet.inventory(extra_vars={"ansible_async_dir": ASYNC_DIR})
        print(f"fleet of {len(fleet)} hosts up in {fleet.timings.get('up')} s", flush=True)
        for size in sizes:
            names = [host.name for host in fleet][:size]
            for host in list(fleet)[:size]:
                lay_tree(host, args.files, f"bench-{host.name}")
            workdir = workroot / f"n{size}"
            workdir.mkdir()
            row = run_play(fleet, names, args.forks, args.interval, workdir)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = rows[0]
    lines = [
        "| hosts | forks | wall s | controller CPU s | CPU s per host | poll rounds | CPU ms per host and round | all ok |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        per_round = 1000 * row["cpu"] / row["hosts"] / row["rounds"] if row["rounds"] else float("nan")
        lines.append("| %d | %d | %.1f | %.1f | %.2f | %d | %.0f | %s |" % (
            row["hosts"], args.forks, row["wall"], row["cpu"], row["cpu"] / row["hosts"], row["rounds"],
            per_round, "yes" if row["ok"] else "NO (rc %d, see %s)" % (row["rc"], row["console"])))
    if len(rows) > 1:
        last = rows[-1]
        slope = (last["cpu"] - base["cpu"]) / (last["hosts"] - base["hosts"])
        lines.append("")
        lines.append("Marginal controller CPU per added host (%d -> %d hosts): %.2f s; wall grew %.1fx for %.1fx hosts." % (
            base["hosts"], last["hosts"], slope, last["wall"] / base["wall"], last["hosts"] / base["hosts"]))
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        Path(args.output).write_text(table, encoding="utf-8")
    print(f"consoles under {workroot}")
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
