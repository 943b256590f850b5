# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""End to end: playbooks/migrate.yml (roles migrate and report) and its reports.

Each test runs ansible-playbook on localhost (the repository's ansible.cfg and
inventory) over a small tree under tmp_path, then checks that the reports the
playbook wrote agree with what actually happened on disk. The roles' other
behaviours (jobs, async progress, preflight, strategies) are tested in
test_playbook_migrate.py.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from migrate_helpers import REPO_ROOT, load_reports, output, recap, regular_files, run_playbook
from migrate_helpers import make_tree as _make_tree

# name -> content of the regular files of the source tree
TREE = {
    "top.txt": b"top level\n",
    "empty": b"",
    "a/one.bin": bytes(range(256)) * 40,
    "a/b/two.txt": b"two\n" * 1000,
    "a/b/c/three": b"3",
    "name with spaces & <markup>.txt": b"odd name\n",
}


def make_tree(root: Path) -> None:
    _make_tree(root, TREE)


@pytest.fixture
def paths(tmp_path: Path) -> dict:
    paths = {name: tmp_path / name for name in ("src", "dest", "state", "reports")}
    make_tree(paths["src"])
    return paths


def migrate_args(paths: dict, **extra: str) -> list:
    args = [
        "-e", "migrate_src=%s" % paths["src"],
        "-e", "migrate_dest=%s" % paths["dest"],
        "-e", "migrate_state_dir=%s" % paths["state"],
    ]
    if "reports" in paths:
        args += ["-e", "migrate_report_dir=%s" % paths["reports"]]
    for key, value in extra.items():
        args += ["-e", "%s=%s" % (key, value)]
    return args


def test_move_then_rerun(paths: dict) -> None:
    total_bytes = sum(len(content) for content in TREE.values())

    first = run_playbook(*migrate_args(paths))
    assert first.returncode == 0, output(first)
    assert recap(first)["changed"] >= 1
    assert recap(first)["failed"] == 0

    # The data moved: every file at dest with its content, none left at src.
    assert regular_files(paths["dest"]) == TREE
    assert regular_files(paths["src"]) == {}

    # The reports say the same.
    fleet, junit, summary = load_reports(paths["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok"
    assert host["changed"] is True
    assert host["stats"]["files_moved"] == len(TREE)
    assert host["stats"]["bytes_moved"] == total_bytes
    assert host["stats"]["files_failed"] == 0
    assert fleet["totals"]["hosts"] == fleet["totals"]["hosts_ok"] == 1
    assert fleet["totals"]["files_moved"] == len(TREE)
    assert fleet["totals"]["bytes_moved"] == total_bytes

    per_host = json.loads((paths["reports"] / "hosts" / "localhost.json").read_text(encoding="utf-8"))
    assert per_host["report"]["status"] == "ok"
    assert per_host["result"]["job_id"] == host["job_id"]

    assert (junit.get("tests"), junit.get("failures"), junit.get("errors")) == ("1", "0", "0")
    assert junit.find("testsuite").get("name") == "localhost"
    assert junit.find("testsuite/testcase").get("name") == "%s -> %s" % (paths["src"], paths["dest"])

    # The preflight ran first, and its findings are in the reports.
    assert [entry["ok"] for entry in host["preflight"]] == [True]
    findings = host["preflight"][0]["findings"]
    assert findings["space"]["same_filesystem"] is True
    assert findings["plan"]["files"] == len(TREE)
    assert per_host["result"]["preflight"][0]["findings"] == findings
    assert "## Preflight" in summary

    assert "| localhost | ok | %d / %d |" % (len(TREE), len(TREE)) in summary
    # The summary is printed too, for a person reading the run.
    assert "1 host(s): 1 ok, 0 failed, 0 unreachable." in first.stdout

    # A rerun has nothing to do: no change anywhere, reports rewritten.
    second = run_playbook(*migrate_args(paths))
    assert second.returncode == 0, output(second)
    counts = recap(second)
    assert counts["changed"] == 0, output(second)
    assert counts["failed"] == 0
    assert regular_files(paths["dest"]) == TREE

    fleet, junit, summary = load_reports(paths["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok"
    assert host["changed"] is False
    assert host["stats"]["files_moved"] == 0
    assert host["stats"]["bytes_moved"] == 0
    assert host["stats"]["files_already_done"] == len(TREE)
    assert junit.get("failures") == "0"
    assert "| localhost | ok | 0 / %d | %d |" % (len(TREE), len(TREE)) in summary


def test_missing_source_fails_after_writing_reports(paths: dict) -> None:
    shutil.rmtree(paths["src"])
    proc = run_playbook(*migrate_args(paths))
    assert proc.returncode != 0, output(proc)
    # The preflight failed (ignored, so the role went on and reporting ran),
    # the move did not run, and the report role failed the host.
    assert recap(proc)["ignored"] == 1
    assert recap(proc)["failed"] == 1
    assert not paths["dest"].exists() or regular_files(paths["dest"]) == {}
    assert "preflight found 1 problem(s): src does not exist: %s" % paths["src"] in proc.stdout

    fleet, junit, summary = load_reports(paths["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "failed"
    assert host["msg"] == "preflight: src does not exist: %s" % paths["src"]
    assert host["preflight"][0]["ok"] is False
    assert fleet["totals"]["hosts_failed"] == 1
    assert (paths["reports"] / "hosts" / "localhost.json").exists()
    assert (junit.get("tests"), junit.get("failures"), junit.get("errors")) == ("1", "1", "0")
    assert "| localhost | failed |" in summary
    assert "## Failures" in summary


def test_default_report_dir_is_under_the_working_directory(paths: dict, tmp_path: Path) -> None:
    del paths["reports"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = run_playbook(*migrate_args(paths), cwd=cwd)
    assert proc.returncode == 0, output(proc)
    fleet, _junit, _summary = load_reports(cwd / "migrate-reports")
    assert fleet["hosts"]["localhost"]["stats"]["files_moved"] == len(TREE)
    assert not (REPO_ROOT / "playbooks" / "migrate-reports").exists()


def test_check_mode_moves_nothing_and_reports_the_plan(paths: dict) -> None:
    proc = run_playbook("--check", *migrate_args(paths))
    assert proc.returncode == 0, output(proc)
    assert regular_files(paths["src"]) == TREE
    assert regular_files(paths["dest"]) == {}

    # Reports are written in check mode too.
    fleet, _junit, summary = load_reports(paths["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok"
    assert host["stats"]["files_moved"] == 0
    assert host["plan"]["files"] == len(TREE)
    assert "Check mode: nothing was moved" in summary
    # The preflight ran in check mode too, and nothing was created.
    assert host["preflight"][0]["ok"] is True
    assert host["preflight"][0]["findings"]["plan"]["files"] == len(TREE)
    assert not paths["state"].exists()
    assert recap(proc)["changed"] == 1     # the plan says the move would change things


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client to make a host unreachable")
def test_unreachable_host_is_reported(paths: dict, tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yml"
    # Nothing listens on port 1 of the loopback: the connection is refused.
    inventory.write_text(
        "all:\n"
        "  hosts:\n"
        "    localhost:\n"
        "      ansible_connection: local\n"
        "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
        "    down:\n"
        "      ansible_host: 127.0.0.1\n"
        "      ansible_port: 1\n"
        "      ansible_connection: ssh\n"
        "      ansible_ssh_common_args: -o ConnectTimeout=5 -o StrictHostKeyChecking=no\n",
        encoding="utf-8",
    )
    proc = run_playbook("-i", str(inventory), *migrate_args(paths))
    assert proc.returncode != 0, output(proc)
    # localhost still moved its tree.
    assert regular_files(paths["dest"]) == TREE

    fleet, junit, summary = load_reports(paths["reports"])
    assert fleet["hosts"]["localhost"]["status"] == "ok"
    assert fleet["hosts"]["down"]["status"] == "unreachable"
    assert (fleet["totals"]["hosts_ok"], fleet["totals"]["hosts_unreachable"]) == (1, 1)
    # It ends the play unreachable; localhost is fine.
    assert recap(proc, "down")["unreachable"] == 1
    assert recap(proc, "localhost")["failed"] == 0
    assert (paths["reports"] / "hosts" / "down.json").exists()
    suites = {suite.get("name"): suite for suite in junit.findall("testsuite")}
    assert suites["down"].find("testcase/error") is not None
    assert junit.get("errors") == "1"
    assert "| down | unreachable |" in summary


def test_reports_are_written_under_a_limit_that_leaves_out_localhost(paths: dict, tmp_path: Path) -> None:
    # A separate `hosts: localhost` report play would match no host here.
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        "all:\n"
        "  vars:\n"
        "    ansible_connection: local\n"
        "    ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
        "  hosts:\n"
        "    mover1:\n"
        "    mover2:\n",
        encoding="utf-8",
    )
    proc = run_playbook("-i", str(inventory), "--limit", "mover1", *migrate_args(paths))
    assert proc.returncode == 0, output(proc)
    assert regular_files(paths["dest"]) == TREE
    fleet, junit, _summary = load_reports(paths["reports"])
    assert list(fleet["hosts"]) == ["mover1"]
    assert fleet["hosts"]["mover1"]["stats"]["files_moved"] == len(TREE)
    assert [suite.get("name") for suite in junit.findall("testsuite")] == ["mover1"]


@pytest.mark.root
@pytest.mark.loop
def test_entries_left_at_the_source_are_reported_in_every_report(tmp_path: Path, tmpfs, loopfs) -> None:
    """27 files moved, a FIFO, a socket and two device nodes skipped, a mount
    point left alone: no report may call that host a plain ok (issue 12).
    The destination is a btrfs (small files are kept inline in its metadata:
    their read-back cannot come from the device) and the owner is not kept (a
    set-uid file of nobody's loses its set-uid bit): both are said where an
    operator looks."""
    src = tmp_path / "src"
    files = {"f%02d.txt" % index: b"file %d\n" % index for index in range(26)}
    files["bin/tool"] = b"#!/bin/sh\n"
    _make_tree(src, files)
    os.chown(src / "bin" / "tool", 65534, 65534)
    os.chmod(src / "bin" / "tool", 0o4755)
    os.mkfifo(src / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "socket"))
    os.mknod(src / "dev-null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(src / "dev-loop", 0o600 | stat.S_IFBLK, os.makedev(7, 250))
    inner = tmpfs("1m", at=src / "mnt")
    (inner / "inside.txt").write_bytes(b"on another filesystem\n")
    dest = loopfs("btrfs") / "dest"
    paths = {"src": src, "dest": dest, "state": tmp_path / "state", "reports": tmp_path / "reports"}

    proc = run_playbook(*migrate_args(paths), extra_vars={"migrate_preserve": ["mode", "times", "hardlinks"]},
                        tmp_dir=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert regular_files(dest) == files
    left = sorted(name for name in os.listdir(src))
    assert left == ["dev-loop", "dev-null", "fifo", "mnt", "socket"]

    fleet, junit, summary = load_reports(paths["reports"])
    host = fleet["hosts"]["localhost"]
    assert host["status"] == "ok"           # it did what it was told to
    assert host["stats"]["files_moved"] == 27 and host["stats"]["files_total"] == 31
    assert (host["stats"]["special_skipped"], host["stats"]["mounts_skipped"]) == (4, 1)
    assert host["stats"]["setid_cleared"] == 1
    assert host["stats"]["readback_from_cache"] == 27
    # fleet.json: what was left at the source, by kind, with the paths.
    groups = {group["kind"]: group for group in host["skipped_kinds"]}
    assert set(groups) == {"special_file", "mount_point"}
    assert groups["special_file"]["count"] == 4
    assert sorted(groups["special_file"]["sample"]) == sorted(str(src / n) for n in ("dev-loop", "dev-null", "fifo", "socket"))
    assert groups["mount_point"]["sample"] == [str(src / "mnt")]
    assert host["left_at_source"] == 5
    assert fleet["totals"]["hosts_with_skipped"] == 1
    assert (fleet["totals"]["special_skipped"], fleet["totals"]["mounts_skipped"]) == (4, 1)
    assert fleet["totals"]["setid_cleared"] == 1 and fleet["totals"]["readback_from_cache"] == 27
    assert len(host["readback_from_cache"]) == 27
    assert host["mount_points"][0]["path"] == str(src / "mnt")

    # summary.md: never a plain ok, and the paths where someone looks before wiping the disk.
    assert "| localhost | ok |" not in summary, summary
    assert "| localhost | ok, 5 left at the source | 27 / 31 |" in summary, summary
    assert "1 host(s): 1 ok (1 with entries left at the source), 0 failed, 0 unreachable." in summary
    assert "## Left at the source" in summary
    assert "4 special file(s)" in summary and "`%s`" % (src / "fifo") in summary
    assert "1 mount point(s)" in summary and "`%s`" % (src / "mnt") in summary
    assert "1 entry lost its set-id/sticky bits" in summary
    assert "27 file(s) read back from the page cache" in summary

    # junit.xml: a skipped testcase per kind, with the count and the paths.
    suite = junit.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "0", "3"), ET.tostring(junit)
    assert junit.get("skipped") == "3"
    skipped = {case.get("name"): case.find("skipped") for case in suite.findall("testcase")
               if case.find("skipped") is not None}
    job = "%s -> %s" % (src, dest)
    special = skipped["%s: special files left at the source" % job]
    assert special.get("message") == "4 special file(s) left at the source (FIFOs, sockets, devices)"
    assert str(src / "dev-null") in special.text and str(src / "socket") in special.text
    assert str(src / "mnt") in skipped["%s: mount points left alone" % job].text
    assert skipped["%s: read-back from the device" % job].get("message").startswith("27 file(s) read back")
