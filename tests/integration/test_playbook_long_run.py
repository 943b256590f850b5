# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A migration as long as real ones: more than 1,000 polls in one play.

Real fleet migrations run for hours: at the default poll interval (10 s) a
7-day async timeout allows 60,000 polls. The play must follow a job for that
long without growing anything per poll (ansible-core nests an include in the
one that included it, and dies with `maximum recursion depth exceeded` after
about 246 levels: ansible/ansible#36053), print progress all along and write
its reports at the end.

The job is held running by another process holding its lock (as a run left
by an earlier play would), with migrate_poll_interval 0: the role looks again
as soon as a look ends, so 1,000 polls take minutes, not hours. The holder
lets go once the play has printed its 1,001st poll round; the play must then
move the job and write the reports.

It runs under every ansible-core of the matrix (marker `matrix`, `make
matrix`: the oldest and the newest supported, each in its own venv under
.matrix/, plus the venv's own when no version is required); `make pytest`
leaves it out. Wall time on an idle 2-core machine: about 6 min per version
(pipelining on, as the README advises for long runs).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from migrate_helpers import (
    LivePlaybook,
    LockHolder,
    core_matrix,
    interrupted_move,
    job_id,
    load_reports,
    output,
    recap,
    regular_files,
)

POLLS = 1001
FLEET_LINE = re.compile(r"^FLEET poll (?P<poll>\d+): 1 host\(s\): 0 done, 1 running, 0 failed, 0 unreachable \| "
                        r"files (?P<done>\d+)/(?P<total>\d+) ", re.MULTILINE)
HOST_LINE = re.compile(r"^localhost: (?P<name>.*): waiting for an earlier run, files (?P<done>\d+)/300 ",
                       re.MULTILINE)


def tree(count: int) -> dict:
    return {"d%02d/f%04d" % (i // 100, i): (b"%06d" % i) * 100 for i in range(count)}


def write(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


@pytest.mark.matrix
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("core", core_matrix(), ids=lambda core: "core-%s" % core[0])
def test_more_than_a_thousand_polls_keep_the_play_alive(tmp_path: Path, core) -> None:
    label, playbook, note = core
    assert label == "default" or playbook, "ansible-core %s: %s" % (label, note)
    paths = {name: tmp_path / name for name in ("src", "dest", "state", "reports")}
    files = tree(300)
    write(paths["src"], files)
    interrupted_move(paths["src"], paths["dest"], paths["state"])
    extra = {
        "migrate_src": str(paths["src"]), "migrate_dest": str(paths["dest"]),
        "migrate_state_dir": str(paths["state"]), "migrate_report_dir": str(paths["reports"]),
        "migrate_poll_interval": 0, "migrate_progress_host_interval": 30,
    }
    with LockHolder(paths["state"], job_id(paths["src"], paths["dest"])) as holder:
        live = LivePlaybook(extra_vars=extra, tmp_dir=tmp_path, playbook=playbook,
                            env={"ANSIBLE_PIPELINING": "True"})
        try:
            live.wait_for(re.compile(r"^FLEET poll %d:" % POLLS), timeout=3000)
        finally:
            holder.release()
        proc = live.finish()
    assert proc.returncode == 0, output(proc)
    assert "recursion" not in proc.stdout
    # Every round printed the fleet's line, numbered, and the numbers held.
    rounds = list(FLEET_LINE.finditer(proc.stdout))
    polls = [int(m.group("poll")) for m in rounds]
    assert polls[:POLLS - 1] == list(range(2, POLLS + 1)), polls[:20]
    done = {(m.group("done"), m.group("total")) for m in rounds[:POLLS - 1]}
    assert len(done) == 1 and 0 < int(next(iter(done))[0]) < 300 and next(iter(done))[1] == "300", done
    # The host's own line: when its status changed and then every 30 s, not every round.
    host_lines = list(HOST_LINE.finditer(proc.stdout))
    assert 1 <= len(host_lines) < POLLS // 10, len(host_lines)
    # Then the job was moved and the reports were written.
    assert regular_files(paths["dest"]) == files
    assert recap(proc)["changed"] == 1
    fleet, junit, summary = load_reports(paths["reports"])
    assert fleet["hosts"]["localhost"]["status"] == "ok"
    assert fleet["hosts"]["localhost"]["stats"]["files_total"] == 300
    assert junit.find(".//failure") is None and "| localhost | ok |" in summary
