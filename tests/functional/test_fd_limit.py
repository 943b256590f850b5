# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Trees with many more directories than the process may open files.

The core runs as a process (tests/tools/mover_cli.py) under `prlimit --nofile`
(a soft limit as low as an SSH session's 1024, and lower): the scan, check mode,
the batches, the destination directories made ahead of the files, the
directories' metadata at the end and verify must each keep a bounded number of
directories open, so the run completes, and a rerun has nothing left to do.
"""

from __future__ import annotations

import subprocess
import typing as t

import pytest

from helpers_recovery import (
    BASE_NS,
    TIMEOUT,
    CliRun,
    FileSpec,
    TreeSpec,
    check_complete,
    cli_argv,
    cli_env,
    make_layout,
    materialize,
    pseudo_random,
    run_cli,
)

pytestmark = [pytest.mark.root, pytest.mark.loop]


def _spec(tops: int, per_top: int) -> TreeSpec:
    """`tops` directories of `per_top` directories each, one file in every directory."""
    spec = TreeSpec()
    for t in range(tops):
        top = "t%02d" % t
        spec.dirs[top] = (0o755, BASE_NS + t)
        spec.files[top + "/file"] = FileSpec(pseudo_random(64, t), 0o644, BASE_NS)
        for d in range(per_top):
            rel = "%s/d%03d" % (top, d)
            spec.dirs[rel] = (0o750, BASE_NS + 1000 * t + d)
            spec.files[rel + "/f"] = FileSpec(pseudo_random(64 + d, 1000 * t + d), 0o640, BASE_NS + d)
    return spec


def _limited(soft: int) -> list[str]:
    return ["prlimit", "--nofile=%d:" % soft]


def _check_mode(params: dict[str, t.Any], soft: int) -> CliRun:
    """mover_cli.py --check (check mode) under the fd limit."""
    proc = subprocess.run([*_limited(soft), *cli_argv(params), "--check"], env=cli_env(),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, 0.0)


def _assert_ran(run, what: str) -> None:
    assert run.returncode == 0, "%s under the fd limit: %s" % (what, run.describe())
    assert "Too many open files" not in run.stdout + run.stderr, run.describe()


# Batch path (ext4, xfs: one syncfs a batch) and threaded path (tmpfs: each file
# flushed on its own, four threads), each in one process and in two.
@pytest.mark.parametrize("kind,processes", [("ext4", 1), ("xfs", 2), ("tmpfs", 1), ("tmpfs", 2)])
def test_ten_times_more_directories_than_the_fd_limit(kind, processes, tmp_path, request):
    soft = 128
    layout = make_layout(kind, tmp_path, request)
    spec = materialize(_spec(13, 100), layout.src)
    assert len(spec.dirs) >= 10 * soft
    params = layout.params(processes=processes, workers=4)

    planned = _check_mode(params, soft)
    _assert_ran(planned, "check mode")
    assert planned.result["plan"]["files"] == spec.entries, planned.result

    run = run_cli(params, prefix=_limited(soft))
    _assert_ran(run, "the move")
    check_complete(spec, layout, run)
    assert run.result["stats"]["files_moved"] == spec.entries

    again = run_cli(params, prefix=_limited(soft))
    _assert_ran(again, "the rerun")
    assert again.result["changed"] is False, again.result
    assert again.result["complete"] is True, again.result

    verified = run_cli({**params, "mode": "verify"}, prefix=_limited(soft))
    _assert_ran(verified, "verify")
    assert verified.result["stats"]["files_failed"] == 0, verified.result


def test_a_batch_over_as_many_directories_as_files(tmp_path, request):
    """One batch (batch_files 256) of 256 files in 256 directories, at a soft
    limit of 512: the batch also holds its prefetched sources (a quarter of the
    limit), so it must not also hold a source and a destination fd for every
    directory it touches."""
    soft = 512
    layout = make_layout("xfs", tmp_path, request)
    spec = materialize(_spec(1, 255), layout.src)       # 256 directories, one file each
    assert spec.entries == 256
    params = layout.params(processes=1, batch_files=256)
    run = run_cli(params, prefix=_limited(soft))
    _assert_ran(run, "the move")
    check_complete(spec, layout, run)
    again = run_cli(params, prefix=_limited(soft))
    _assert_ran(again, "the rerun")
    assert again.result["changed"] is False, again.result
