# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Tests of the test fleet itself (harness.py, the ``fleet`` fixture), on real namespaces and sshd."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import harness  # pylint: disable=import-error

pytestmark = [pytest.mark.root, pytest.mark.loop]

HARNESS = Path(harness.__file__)
# Generous bounds for a loaded 2-core CI machine; typical numbers are far lower.
MAX_UP_SECONDS = 20
MAX_DOWN_SECONDS = 10


@pytest.fixture(scope="module", name="three")
def three_fixture(fleet):
    """The module's fleet of three hosts."""
    started = time.monotonic()
    made = fleet(3)
    made.timings["measured_up"] = round(time.monotonic() - started, 3)
    return made


def _host_results(output: str) -> dict[str, str]:
    """{host: SUCCESS|CHANGED|FAILED!|UNREACHABLE!} from ansible's default ad-hoc output."""
    return dict(re.findall(r"^(\S+) \| (SUCCESS|CHANGED|FAILED!|UNREACHABLE!)", output, re.MULTILINE))


def _mountinfo_targets() -> set[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return {line.split()[4] for line in handle}


def _ours(run_id: str) -> dict[str, list[str]]:
    """What the machine shows of run ``run_id``: netns, loop devices, links."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {
        "netns": [line for line in netns.splitlines() if line.startswith(f"{run_id}-")],
        "loops": [line for line in loops.splitlines() if f"/{run_id}-" in line],
        "links": [line for line in links.splitlines() if f" {run_id}:" in line or f" {run_id}@" in line],
    }


def test_bring_up_is_quick(three, record_property):
    """Three hosts come up in a few seconds (numbers land in the junit properties)."""
    record_property("fleet_up_timings", json.dumps(three.timings))
    assert len(three) == 3
    assert three.timings["up"] < MAX_UP_SECONDS, three.timings


def test_ssh_login_hostname_and_mounts(three):
    """Each host answers ssh with its own hostname, ext4 at src and xfs at dest."""
    addrs = set()
    for host in three:
        proc = host.ssh("hostname; findmnt -n -o FSTYPE /srv/data/src; findmnt -n -o FSTYPE /srv/data/dest; "
                        "findmnt /srv/data/src >/dev/null && echo mounted", check=True)
        assert proc.stdout.split() == [host.name, three.src_fstype, three.dest_fstype, "mounted"]
        addrs.add(host.addr)
    assert len(addrs) == 3


def test_ssh_is_key_only_and_host_keys_are_checked(three):
    """Password login is refused; a host key that is not in known_hosts is refused."""
    host = three[0]
    base = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={three.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=3",
            "-o", "IdentitiesOnly=yes", "-o", "PubkeyAuthentication=no"]
    proc = subprocess.run([*base, f"root@{host.addr}", "true"], capture_output=True, text=True, check=False)
    assert proc.returncode == 255 and "Permission denied" in proc.stderr
    empty = three.run_dir / "empty_known_hosts"
    empty.write_text("", encoding="utf-8")
    try:
        proc = subprocess.run(["ssh", "-F", "/dev/null", "-i", str(three.key), "-o", f"UserKnownHostsFile={empty}",
                               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"root@{host.addr}", "true"],
                              capture_output=True, text=True, check=False)
    finally:
        empty.unlink()
    assert proc.returncode == 255 and "Host key verification failed" in proc.stderr


def test_mounts_are_private(three):
    """/srv/data/* exist only inside the hosts; a file in one host is absent from the others."""
    targets = _mountinfo_targets()
    assert not {"/srv", "/srv/data/src", "/srv/data/dest"} & targets
    h0, h1 = three[0], three[1]
    h0.write_tree("/srv/data/src", {"private/only-h0.txt": "h0\n"})
    try:
        assert h0.ssh("cat /srv/data/src/private/only-h0.txt", check=True).stdout == "h0\n"
        assert h1.ssh("test -e /srv/data/src/private/only-h0.txt", check=False).returncode == 1
        assert not os.path.exists("/srv/data/src/private/only-h0.txt")
    finally:
        h0.run("rm -rf /srv/data/src/private", check=True)


def test_src_and_dest_are_different_devices(three):
    """A move from src to dest crosses devices, as seen over ssh and through host.path()."""
    for host in three:
        devs = host.ssh("stat -c %d /srv/data/src /srv/data/dest", check=True).stdout.split()
        assert len(devs) == 2 and devs[0] != devs[1]
        assert os.stat(host.path("/srv/data/src")).st_dev != os.stat(host.path("/srv/data/dest")).st_dev
    # ... and every host has its own devices.
    assert len({os.stat(h.path("/srv/data/dest")).st_dev for h in three}) == 3


def test_pid_namespaces_are_separate(three):
    """pkill inside one host does not reach another host's processes."""
    h0, h1 = three[0], three[1]
    for host in (h0, h1):
        host.run("setsid sleep 300 </dev/null >/dev/null 2>&1 &", check=True)
    h0_before, h1_before = set(h0.pids()), set(h1.pids())
    assert not h0_before & h1_before
    assert h0.run("pkill -x sleep").returncode == 0
    deadline = time.monotonic() + 5
    while h0.run("pgrep -x sleep").returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h0.run("pgrep -x sleep").returncode == 1
    assert h1.run("pgrep -x sleep").returncode == 0
    h1.run("pkill -x sleep")


def test_ansible_ping_all(three):
    """ansible.builtin.ping succeeds on every host; each reports its own hostname."""
    three.inventory()
    proc = three.ansible("all", "-m", "ansible.builtin.ping")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _host_results(proc.stdout) == {h.name: "SUCCESS" for h in three}
    proc = three.ansible("all", "-m", "ansible.builtin.command", "-a", "hostname")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for host in three:
        assert re.search(rf"^{host.name} \| CHANGED \| rc=0 >>\n{host.name}$", proc.stdout, re.MULTILINE)


def test_ansible_python_interpreter_is_configurable(three, tmp_path):
    """An inventory with the venv's python (it has blake3) runs modules with it."""
    inventory = three.inventory(tmp_path / "venv.yml", python=sys.executable)
    proc = three.ansible("all", "-m", "ansible.builtin.command", "-a", f"{sys.executable} -c 'import blake3'",
                         inventory=inventory)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = three.ansible("h0", "-m", "ansible.builtin.setup", "-a", "gather_subset=!all filter=ansible_python",
                         inventory=inventory)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'"executable": "{sys.executable}"' in proc.stdout


def test_link_down_makes_a_host_unreachable_and_link_up_restores_it(three):
    """A cut host is UNREACHABLE within seconds while the others succeed; link_up brings it back."""
    three.inventory()
    victim = three[1]
    victim.link_down()
    try:
        assert not victim.link_is_up()
        started = time.monotonic()
        proc = three.ansible("all", "-m", "ansible.builtin.ping")
        elapsed = time.monotonic() - started
        assert proc.returncode == 4, proc.stdout + proc.stderr
        results = _host_results(proc.stdout)
        assert results.pop(victim.name) == "UNREACHABLE!"
        assert results == {h.name: "SUCCESS" for h in three if h is not victim}
        assert elapsed < 30, f"unreachable detection took {elapsed:.1f} s"
    finally:
        victim.link_up()
    assert victim.link_is_up()
    proc = three.ansible("all", "-m", "ansible.builtin.ping")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _host_results(proc.stdout) == {h.name: "SUCCESS" for h in three}


def test_fill_leaves_the_disk_full(three):
    """host.fill() leaves (about) no space at dest; removing the filler frees it."""
    host = three[2]
    filler = host.fill("/srv/data/dest", leave_bytes=0)
    try:
        proc = host.ssh("head -c 4194304 /dev/zero > /srv/data/dest/more", check=False)
        assert proc.returncode != 0 and "No space left" in proc.stderr
    finally:
        host.run(f"rm -f {filler} /srv/data/dest/more", check=True)
    assert host.ssh("head -c 4194304 /dev/zero > /srv/data/dest/more && rm /srv/data/dest/more").returncode == 0


def test_teardown_leaves_nothing_behind(record_property):
    """down() kills every process (strays included), detaches loops, deletes netns/links/files; twice is fine."""
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    fleet = harness.Fleet.create(2)
    try:
        stray = int(fleet[0].run("setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!", check=True).stdout)
        assert stray  # pid inside the host's namespace
        pids = [p for host in fleet for p in host.pids()]
        assert len(pids) >= 5  # 2 x (init, sshd) + the stray sleep
        images = [str(img) for host in fleet for img in (host.src_image, host.dest_image)]
        assert all(harness._loops_for(img) for img in images)  # pylint: disable=protected-access
        assert _ours(fleet.run_id)["netns"] and _ours(fleet.run_id)["links"]
        starts = {pid: harness.start_time(pid) for pid in pids}
    finally:
        report = fleet.down()
    record_property("fleet_down_seconds", report["seconds"])
    assert report["leftovers"] == []
    assert report["seconds"] < MAX_DOWN_SECONDS
    assert _ours(fleet.run_id) == {"netns": [], "loops": [], "links": []}
    assert not [pid for pid, started in starts.items() if harness.pid_alive(pid, started)]
    assert not fleet.run_dir.exists()
    assert not (harness.REGISTRY_DIR / f"{fleet.run_id}.json").exists()
    route = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert fleet.subnet not in route
    again = fleet.down()
    assert again["leftovers"] == [] and again["killed"] == [] and again["netns"] == []


def test_failed_bring_up_cleans_up():
    """A bring-up that fails half way (sshd refuses its config) tears down what it made."""
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    with pytest.raises(harness.HarnessError, match="sshd") as caught:
        harness.Fleet.create(2, sshd_options={"NoSuchSshdKeyword": "yes"})
    run_id = caught.value.run_id
    assert run_id and harness.RUN_ID_RE.match(run_id)
    assert caught.value.teardown["leftovers"] == []
    assert _ours(run_id) == {"netns": [], "loops": [], "links": []}
    assert not (harness.REGISTRY_DIR / f"{run_id}.json").exists()


def test_stale_cleanup_removes_dead_owners_only(three):
    """A fleet whose owner died is removed by cleanup_stale(); a live one is left alone."""
    owner = subprocess.Popen(["sleep", "300"])  # pylint: disable=consider-using-with
    try:
        orphan = harness.Fleet.create(1, owner_pid=owner.pid)
    finally:
        owner.kill()
        owner.wait()
    assert _ours(orphan.run_id)["netns"]
    cleaned = harness.cleanup_stale()
    # Another process on the machine that brings up a fleet meanwhile runs the
    # same cleanup and may have removed the orphan first: it must be gone either way.
    assert orphan.run_id in cleaned or _ours(orphan.run_id) == {"netns": [], "loops": [], "links": []}
    assert three.run_id not in cleaned
    assert _ours(orphan.run_id) == {"netns": [], "loops": [], "links": []}
    assert not orphan.run_dir.exists()
    assert orphan.leftovers() == []
    assert three[0].ssh("true").returncode == 0
    again = orphan.down()  # nothing left to do; reaps this process's children
    assert again["killed"] == [] and again["leftovers"] == []


def test_cli_up_and_down(tmp_path):
    """`harness.py up --hosts 1 --dir D` writes the state and inventory; `down --dir D` removes only its own files."""
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("not ours\n", encoding="utf-8")
    up = subprocess.run([sys.executable, str(HARNESS), "up", "--hosts", "1", "--dir", str(run_dir)],
                        capture_output=True, text=True, check=False, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert (run_dir / "state.json").exists() and Path(info["inventory"]).exists()
        fleet = harness.Fleet.load(run_dir)
        assert fleet.owner_pid is None  # detached: lives until `down`
        assert fleet["h0"].ssh("hostname", check=True).stdout.strip() == "h0"
        assert fleet.run_id not in harness.cleanup_stale()
    finally:
        down = subprocess.run([sys.executable, str(HARNESS), "down", "--dir", str(run_dir)],
                              capture_output=True, text=True, check=False, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert json.loads(down.stdout)["leftovers"] == []
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]
    assert _ours(info["run_id"]) == {"netns": [], "loops": [], "links": []}
    again = subprocess.run([sys.executable, str(HARNESS), "down", "--dir", str(run_dir)],
                           capture_output=True, text=True, check=False, timeout=60)
    assert again.returncode == 0
