# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A unit of a shard taken over by another host after the first one died.

With shards (``migrate_shard_group``) a dead host's units are planned again
and given to live hosts. The new job of a unit has the same job id (the plan
derives it from the tree and the unit, not from the host) but a journal of its
own: each host keeps its state on a local disk. It meets what the dead host
left at every step boundary of the fsync chain: part files of its own tag,
files renamed into place whose source is still there, sources already
unlinked. Here the dead host is the core killed with SIGKILL at each fault
point (``tests/tools/mover_cli.py``), the live host a second run with another
state dir; then every file is whole at the destination, the source is empty
and no part file is left. A part file of another job id (a plan that would
give a unit another id on another host) is never removed: it stays as litter,
never as a loss, which is why the plan fixes the id.
"""

from __future__ import annotations

import pytest

from ansible_collections.durable.mover.plugins.module_utils import _faults

from helpers_recovery import (
    all_names,
    assert_invariant,
    build_crash_tree,
    make_layout,
    part_files,
    read_link,
    read_regular,
    run_cli,
)

pytestmark = [pytest.mark.root, pytest.mark.loop]

TAKEN_OVER = [point for point in _faults.POINTS if point != "after_scan_batch"]


def _check_whole(spec, layout, run):
    assert run.returncode == 0, run.describe()
    assert run.result["complete"] is True and not run.result.get("failed"), run.result
    problems = [rel for rel, f in spec.files.items() if read_regular(layout.dest / rel) != f.data]
    problems += [rel for rel, target in spec.symlinks.items() if read_link(layout.dest / rel) != target]
    assert problems == [], "not whole at the destination: %r" % problems
    assert all_names(layout.src) == []
    assert part_files(layout.src, layout.dest) == []


@pytest.mark.parametrize("point", TAKEN_OVER)
def test_another_host_finishes_the_unit_of_a_dead_one(point, tmp_path, request):
    layout = make_layout("xfs", tmp_path, request)
    spec = build_crash_tree(layout.src)
    dead = run_cli(layout.params(checkpoint_size="64K", buffer_size="16K"), faults="kill=%s" % point)
    assert dead.killed, "the fault %s was never reached: %s" % (point, dead.describe())
    assert_invariant(spec, layout, "after the first host died at %s" % point)
    live_state = tmp_path / "state-of-another-host"
    live = run_cli(layout.params(state_dir=str(live_state)))
    _check_whole(spec, layout, live)
    assert (live_state / "crashjob" / "journal.sqlite").exists()


def test_a_part_file_of_another_job_id_is_left_not_lost(tmp_path, request):
    layout = make_layout("xfs", tmp_path, request)
    spec = build_crash_tree(layout.src)
    dead = run_cli(layout.params(checkpoint_size="64K", buffer_size="16K"), faults="kill=after_checkpoint")
    assert dead.killed, dead.describe()
    parts = part_files(layout.dest)
    assert parts, "the first run left no part file"
    other = run_cli(layout.params(state_dir=str(tmp_path / "other"), job_id="another-id"))
    assert other.returncode == 0 and other.result["complete"] is True, other.describe()
    assert [rel for rel, f in spec.files.items() if read_regular(layout.dest / rel) != f.data] == []
    assert all_names(layout.src) == []
    assert part_files(layout.dest) == parts
