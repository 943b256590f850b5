# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""durable.mover.move and durable.mover.move_info through real ansible-playbook runs.

Each playbook under tests/integration/playbooks/ runs the modules on
localhost, asserts inside the play with ansible.builtin.assert, and writes its
registered results to a JSON file; the tests here build the trees, run the
playbook, then check the recap, that JSON, the files on disk and the job's
SQLite journal (opened read-only).

Cross-device cases move to a tmpfs mounted for this module (root only: they
are skipped with the reason otherwise). The integration target
tests/integration/targets/move runs through playbooks/target_move.yml.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import typing as t
from pathlib import Path

import pytest
import yaml

from ansible_collections.durable.mover.plugins.modules import move as move_module
from ansible_collections.durable.mover.plugins.modules import move_info as move_info_module

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"

RECAP = re.compile(
    r"^localhost\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)

# Keys Ansible itself adds to every registered module result.
ANSIBLE_RESULT_KEYS = {"changed", "failed", "invocation", "warnings", "deprecations", "exception",
                       "_ansible_no_log"}

# The tree most tests move: regular files (relative path -> content),
# symbolic links (-> target) and directories below the root.
TREE_FILES: dict[str, bytes] = {
    "a.txt": b"alpha\n",
    "empty": b"",
    "name with spaces.txt": b"spaces in the name\n",
    "sub/b.bin": random.Random(20260101).randbytes(200 * 1024),
    "sub/deeper/c.txt": b"charlie\n" * 1000,
}
TREE_LINKS = {"sub/link-to-a": "../a.txt"}
TREE_DIRS = ("sub", "sub/deeper", "empty-dir")
TREE_ENTRIES = len(TREE_FILES) + len(TREE_LINKS)          # stats.files_total
TREE_BYTES = sum(len(content) for content in TREE_FILES.values())


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def ansible_tool(name: str) -> str:
    """The venv's ansible-* tool, else the one on PATH; skip when there is none."""
    venv = REPO_ROOT / ".venv" / "bin" / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (make venv)")
    return found


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO_ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0", PWD=str(REPO_ROOT))
    env.pop("DURABLE_MOVER_FAULTS", None)   # faults are set per task, never inherited
    return env


@dataclasses.dataclass
class PlaybookRun:
    proc: subprocess.CompletedProcess
    recap: dict[str, int]
    results: dict[str, t.Any]


def run_playbook(name: str, workdir: Path, **extra_vars: t.Any) -> PlaybookRun:
    """Run playbooks/<name> on localhost; it must succeed and write results_file."""
    stem = Path(name).stem
    results_file = workdir / f"{stem}.results.json"
    extra_vars.setdefault("results_file", str(results_file))
    vars_file = workdir / f"{stem}.vars.json"
    vars_file.write_text(json.dumps(extra_vars), encoding="utf-8")
    proc = subprocess.run(
        [ansible_tool("ansible-playbook"), str(PLAYBOOKS / name), "-e", f"@{vars_file}"],
        cwd=str(REPO_ROOT), env=ansible_env(), capture_output=True, text=True, timeout=240, check=False,
    )
    match = RECAP.search(proc.stdout)
    assert proc.returncode == 0 and match, (
        f"ansible-playbook {name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    recap = {key: int(value) for key, value in match.groupdict().items()}
    results = {}
    if extra_vars["results_file"] and Path(extra_vars["results_file"]).exists():
        results = json.loads(Path(extra_vars["results_file"]).read_text(encoding="utf-8"))
    return PlaybookRun(proc, recap, results)


def make_tree(root: Path) -> dict[str, int]:
    """Write the standard tree under `root`; return each file's inode number."""
    for rel in TREE_DIRS:
        (root / rel).mkdir(parents=True, exist_ok=True)
    inodes = {}
    for rel, content in TREE_FILES.items():
        (root / rel).write_bytes(content)
        inodes[rel] = (root / rel).stat().st_ino
    for rel, target in TREE_LINKS.items():
        os.symlink(target, root / rel)
    return inodes


def listing(root: Path) -> set[bytes]:
    """Every entry below `root`, as relative byte paths."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            found.add(os.path.relpath(os.path.join(dirpath, name), os.fsencode(root)))
    return found


def assert_tree_at(root: Path) -> None:
    """`root` holds exactly the standard tree, byte for byte, and no part file."""
    for rel, content in TREE_FILES.items():
        path = root / rel
        assert not path.is_symlink() and path.read_bytes() == content, rel
    for rel, target in TREE_LINKS.items():
        assert os.readlink(root / rel) == target, rel
    for rel in TREE_DIRS:
        assert (root / rel).is_dir() and not (root / rel).is_symlink(), rel
    expected = {os.fsencode(p) for p in [*TREE_FILES, *TREE_LINKS, *TREE_DIRS]}
    assert listing(root) == expected


def journal_rows(journal: str | Path) -> dict[bytes, dict[str, t.Any]]:
    """The journal's file rows by path (bytes), read-only."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT path, kind, size, state, hash, attempts, quarantined, error "
                            "FROM files").fetchall()
    finally:
        conn.close()
    return {bytes(row["path"]): dict(row) for row in rows}


def file_rows(rows: dict[bytes, dict[str, t.Any]]) -> dict[bytes, dict[str, t.Any]]:
    return {path: row for path, row in rows.items() if row["kind"] != "dir"}


def blake3_hex(data: bytes) -> str:
    blake3 = pytest.importorskip("blake3")
    return blake3.blake3(data).hexdigest()


def printable_path(path: bytes) -> str:
    """How the modules show a path that is not UTF-8 (RETURN: backslash escapes)."""
    return path.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------
# RETURN / DOCUMENTATION as data
# --------------------------------------------------------------------------

TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "bool": bool, "int": int, "float": float,
                                             "dict": dict, "list": list}
# Documented as "if any" / "while running": null is their documented absence.
NULLABLE = {"move_info": {"pid", "progress.eta_seconds", "progress.eta_lower_bound_seconds", "progress.eta_basis"},
            "move": set()}


def return_doc(module: t.Any) -> dict[str, t.Any]:
    return yaml.safe_load(module.RETURN)


def check_value(value: t.Any, doc: dict[str, t.Any], where: str, nullable: set[str],
                returned: t.Callable[[str], bool] = lambda _r: True) -> list[str]:
    """Problems of `value` against one RETURN entry (type, contains, elements)."""
    if value is None and where in nullable:
        return []
    expected = TYPES[doc["type"]]
    if not isinstance(value, expected) or (doc["type"] in ("int", "float") and isinstance(value, bool)):
        return [f"{where}: {value!r} is not {doc['type']}"]
    problems = []
    contains = doc.get("contains")
    if contains and doc["type"] == "dict":
        problems += check_mapping(value, contains, where, nullable, exact=True, returned=returned)
    if doc["type"] == "list" and "elements" in doc:
        for index, element in enumerate(value):
            problems += check_value(element, {"type": doc["elements"], "contains": contains},
                                    f"{where}[{index}]", nullable)
    return problems


def check_mapping(result: dict[str, t.Any], spec: dict[str, t.Any], prefix: str, nullable: set[str],
                  exact: bool, returned: t.Callable[[str], bool] = lambda _r: True) -> list[str]:
    """Every documented key that must be there is there, with its type."""
    problems = []
    for key, doc in spec.items():
        where = f"{prefix}.{key}" if prefix else key
        if key not in result:
            if returned(doc.get("returned", "always")):
                problems.append(f"{where}: documented, missing")
            continue
        problems += check_value(result[key], doc, where, nullable, returned)
    if exact:
        extra = set(result) - set(spec)
        if extra:
            problems.append(f"{prefix or 'result'}: undocumented keys {sorted(extra)}")
    return problems


def move_returned(check_mode: bool, verify: bool = False) -> t.Callable[[str], bool]:
    return lambda returned: returned == "always" or (check_mode and returned == "check mode") or \
        (verify and returned == "verify mode")


def info_returned(exists: bool) -> t.Callable[[str], bool]:
    return lambda returned: returned == "always" or (exists and returned == "when RV(exists)")


# --------------------------------------------------------------------------
# Fixtures: a second filesystem, and playbook runs shared by several tests
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xdev(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[Path]:
    """A tmpfs (another filesystem than tmp_path's), for cross-device moves."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to mount a tmpfs as a second filesystem (uid {os.geteuid()})")
    mountpoint = tmp_path_factory.mktemp("xdev")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "durable-mover-test", str(mountpoint)],
                   check=True, capture_output=True)
    try:
        assert os.stat(mountpoint).st_dev != os.stat(mountpoint.parent).st_dev
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "--lazy", str(mountpoint)], capture_output=True, check=False)


@dataclasses.dataclass
class Job:
    src: Path
    dest: Path
    state_dir: Path
    inodes: dict[str, int]
    run: PlaybookRun


def four_runs(work: Path, dest: Path) -> Job:
    src = work / "src"
    src.mkdir()
    inodes = make_tree(src)
    state_dir = work / "state"
    run = run_playbook("module_move_idempotence.yml", work, move_src=str(src), move_dest=str(dest),
                       move_state_dir=str(state_dir))
    return Job(src, dest, state_dir, inodes, run)


@pytest.fixture(scope="module")
def same_fs_job(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """The idempotence playbook, source and destination on one filesystem."""
    work = tmp_path_factory.mktemp("samefs")
    return four_runs(work, work / "dest")


@pytest.fixture(scope="module")
def xdev_job(tmp_path_factory: pytest.TempPathFactory, xdev: Path) -> Job:
    """The idempotence playbook, destination on the tmpfs."""
    return four_runs(tmp_path_factory.mktemp("xdevjob"), xdev / "four-runs-dest")


# --------------------------------------------------------------------------
# Four runs: check mode, real, check mode, real
# --------------------------------------------------------------------------

def check_four_runs(job: Job, same_fs: bool) -> None:
    res = job.run.results
    # The recap: the two runs that would or did move are the only changes.
    assert job.run.recap["changed"] == 2
    assert job.run.recap["failed"] == job.run.recap["rescued"] == job.run.recap["ignored"] == 0

    # 1. CHECK MODE: changed, nothing moved.
    check_1 = res["check_1"]
    assert check_1["changed"] is True and not check_1.get("failed")
    assert check_1["plan"] == {
        "files": TREE_ENTRIES, "bytes": TREE_BYTES,
        "renames": TREE_ENTRIES if same_fs else 0, "copies": 0 if same_fs else TREE_ENTRIES,
        "conflicts": 0, "already_done": 0, "skipped": 0,
    }
    before = {os.fsencode(os.path.relpath(f["path"], job.src)) for f in res["src_before"]["files"]}
    after_check = {os.fsencode(os.path.relpath(f["path"], job.src)) for f in res["src_after_check"]["files"]}
    assert before == after_check == {os.fsencode(p) for p in [*TREE_FILES, *TREE_LINKS, *TREE_DIRS]}
    assert [r["stat"]["exists"] for r in res["paths_after_check"]["results"]] == [False, False]

    # 2. real run: changed, everything moved.
    move_1 = res["move_1"]
    assert move_1["changed"] is True and not move_1.get("failed")
    assert move_1["complete"] is True and move_1["interrupted"] is False
    assert move_1["job_id"] == check_1["job_id"] == res["info_before"]["job_id"]
    assert move_1["journal"] == str(job.state_dir / move_1["job_id"] / "journal.sqlite")
    stats = move_1["stats"]
    assert (stats["files_total"], stats["files_moved"], stats["files_already_done"]) == (TREE_ENTRIES, TREE_ENTRIES, 0)
    assert (stats["bytes_total"], stats["bytes_moved"]) == (TREE_BYTES, TREE_BYTES)
    assert (stats["dirs"], stats["symlinks"], stats["hardlinks"]) == (len(TREE_DIRS), len(TREE_LINKS), 0)
    assert (stats["files_failed"], stats["files_quarantined"], stats["files_skipped"]) == (0, 0, 0)
    assert stats["resumed"] is False and move_1["failures"] == []

    # 3. CHECK MODE again: not changed.
    check_2 = res["check_2"]
    assert check_2["changed"] is False
    assert check_2["plan"]["files"] == 0

    # 4. real run again: not changed, nothing moved.
    move_2 = res["move_2"]
    assert move_2["changed"] is False and not move_2.get("failed") and move_2["complete"] is True
    assert move_2["stats"]["files_moved"] == 0 and move_2["stats"]["bytes_moved"] == 0
    assert move_2["stats"]["files_already_done"] == TREE_ENTRIES

    # The filesystem: the tree is at dest, the source root is kept, empty.
    assert_tree_at(job.dest)
    assert job.src.is_dir() and listing(job.src) == set()
    # The journal: every entry done, from its own rows (not the module's word).
    rows = file_rows(journal_rows(move_1["journal"]))
    assert {row["state"] for row in rows.values()} == {"done"}
    assert set(rows) == {os.fsencode(p) for p in [*TREE_FILES, *TREE_LINKS]}


def test_four_runs_same_filesystem(same_fs_job: Job) -> None:
    check_four_runs(same_fs_job, same_fs=True)
    res = same_fs_job.run.results
    assert res["move_1"]["hash_algorithm"] in ("blake3", "sha256")
    # A rename keeps the inode: nothing was copied.
    for rel, inode in same_fs_job.inodes.items():
        assert (same_fs_job.dest / rel).stat().st_ino == inode, rel


def test_four_runs_across_filesystems(xdev_job: Job) -> None:
    check_four_runs(xdev_job, same_fs=False)
    move_1 = xdev_job.run.results["move_1"]
    # The venv running the playbook has blake3: hash=auto picks it, and the
    # journal holds each file's BLAKE3 hash of the source content.
    assert move_1["hash_algorithm"] == "blake3"
    rows = journal_rows(move_1["journal"])
    for rel, content in TREE_FILES.items():
        assert rows[os.fsencode(rel)]["hash"] == "blake3:" + blake3_hex(content), rel


# --------------------------------------------------------------------------
# Result keys and types, as RETURN documents them
# --------------------------------------------------------------------------

def test_move_results_match_return_doc(same_fs_job: Job, xdev_job: Job) -> None:
    spec = return_doc(move_module)
    assert set(spec["stats"]["contains"]) >= {
        "files_total", "files_moved", "files_already_done", "files_skipped", "files_failed",
        "files_quarantined", "dirs", "symlinks", "hardlinks", "special_skipped", "bytes_total",
        "bytes_moved", "resumed"}
    problems = []
    for job in (same_fs_job, xdev_job):
        for name in ("check_1", "move_1", "check_2", "move_2"):
            result = job.run.results[name]
            check_mode = name.startswith("check")
            problems += [f"{name}: {p}" for p in check_mapping(
                result, spec, "", NULLABLE["move"], exact=False, returned=move_returned(check_mode))]
            extra = set(result) - set(spec) - ANSIBLE_RESULT_KEYS
            if extra:
                problems.append(f"{name}: undocumented keys {sorted(extra)}")
            if not check_mode:
                assert "plan" not in result, name
    assert problems == []


def test_failure_results_match_return_doc(failures_run: PlaybookRun) -> None:
    """A failed run returns the whole documented result (stats, failures...)."""
    spec = return_doc(move_module)
    problems = []
    for name in ("corrupt_1", "corrupt_2", "raw_1"):
        result = failures_run.results[name]
        assert result["failed"] is True, name
        problems += [f"{name}: {p}" for p in check_mapping(
            result, spec, "", NULLABLE["move"], exact=False, returned=move_returned(False))]
        assert result["failures"], name
    assert problems == []


def _info_results(same_fs_job: Job) -> list[tuple[str, dict[str, t.Any]]]:
    res = same_fs_job.run.results
    return [(name, res[name]) for name in ("info_before", "info_after", "info_by_id", "info_check")]


def test_move_info_results_match_return_doc(same_fs_job: Job) -> None:
    spec = return_doc(move_info_module)
    problems = []
    for name, result in _info_results(same_fs_job):
        problems += [f"{name}: {p}" for p in check_mapping(
            result, spec, "", NULLABLE["move_info"], exact=False, returned=info_returned(result["exists"]))]
    assert problems == []


def test_move_info_returns_only_documented_keys(same_fs_job: Job) -> None:
    spec = return_doc(move_info_module)
    for name, result in _info_results(same_fs_job):
        extra = set(result) - set(spec) - ANSIBLE_RESULT_KEYS
        assert extra == set(), name


# --------------------------------------------------------------------------
# move_info
# --------------------------------------------------------------------------

def test_move_info_before_and_after(same_fs_job: Job) -> None:
    res = same_fs_job.run.results
    before = res["info_before"]
    assert before["exists"] is False and before["complete"] is False and before["running"] is False
    assert before["changed"] is False
    assert before["job_id"] == res["move_1"]["job_id"] and before["journal"] == res["move_1"]["journal"]

    for name in ("info_after", "info_by_id", "info_check"):
        info = res[name]
        assert info["changed"] is False, name
        assert (info["exists"], info["complete"], info["running"], info["pid"]) == (True, True, False, None), name
        assert info["job_id"] == res["move_1"]["job_id"], name
        assert info["source"] == os.path.realpath(same_fs_job.src), name
        assert info["destination"] == os.path.realpath(same_fs_job.dest), name
        assert (info["runs"], info["scan_complete"]) == (2, True), name
        progress = info["progress"]
        assert progress["files_total"] == progress["files_done"] == TREE_ENTRIES, name
        assert progress["bytes_total"] == progress["bytes_done"] == TREE_BYTES, name
        assert progress["dirs"] == len(TREE_DIRS), name
        assert (progress["files_pending"], progress["files_failed"], progress["files_quarantined"]) == (0, 0, 0)
        assert progress["percent_files"] == progress["percent_bytes"] == 100.0, name
        assert info["states"]["done"] == {"files": TREE_ENTRIES, "bytes": TREE_BYTES}, name
        assert info["failures"] == [], name


def test_move_info_in_check_mode_matches_real_mode(same_fs_job: Job) -> None:
    res = same_fs_job.run.results
    volatile = {"progress"}   # rates and elapsed time are computed at read time
    by_id, check = res["info_by_id"], res["info_check"]
    assert {k: v for k, v in check.items() if k not in volatile} == \
        {k: v for k, v in by_id.items() if k not in volatile}


# --------------------------------------------------------------------------
# Failures: injected corruption, non-UTF-8 names
# --------------------------------------------------------------------------

CORRUPT_OK = {"ok1.txt": b"one\n", "ok2.txt": b"two" * 5000}
CORRUPT_BAD = {"bad/one.bin": b"\x00\x01" * 3000, "bad/two.bin": b"second bad file\n"}
RAW_OK = {b"caf\xe9.txt": b"latin-1 name\n", b"dir\xff/inner\xfe.dat": b"\xff" * 4096,
          "ünïcødé.txt".encode(): b"utf-8 name\n", b"plain.txt": b"plain\n"}
RAW_BAD = {b"\xe9t\xe9.bad": b"corrupted on read-back\n"}


@pytest.fixture(scope="module")
def failures_run(tmp_path_factory: pytest.TempPathFactory, xdev: Path) -> PlaybookRun:
    work = tmp_path_factory.mktemp("failures")
    corrupt_src = work / "corrupt-src"
    for rel, content in {**CORRUPT_OK, **CORRUPT_BAD}.items():
        (corrupt_src / rel).parent.mkdir(parents=True, exist_ok=True)
        (corrupt_src / rel).write_bytes(content)
    raw_src = os.path.join(os.fsencode(work), b"raw-src")
    for rel, content in {**RAW_OK, **RAW_BAD}.items():
        path = os.path.join(raw_src, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(content)
    run = run_playbook(
        "module_move_failures.yml", work,
        corrupt_src=str(corrupt_src), corrupt_dest=str(xdev / "corrupt-dest"), corrupt_glob="bad/*.bin",
        raw_src=os.fsdecode(raw_src), raw_dest=str(xdev / "raw-dest"), raw_glob="*.bad",
        move_state_dir=str(work / "state"),
    )
    run.results["_paths"] = {"corrupt_src": str(corrupt_src), "corrupt_dest": str(xdev / "corrupt-dest"),
                             "raw_src": os.fsdecode(raw_src), "raw_dest": str(xdev / "raw-dest")}
    return run


def test_corruption_fails_the_task_and_keeps_the_source(failures_run: PlaybookRun) -> None:
    res = failures_run.results
    paths = res["_paths"]
    # Three tasks failed (two corruption runs, the non-UTF-8 run), each rescued.
    assert failures_run.recap["rescued"] == 3 and failures_run.recap["failed"] == 0

    first = res["corrupt_1"]
    assert first["failed"] is True and first["changed"] is True
    assert "2 file(s) failed" in first["msg"]
    assert first["complete"] is False and first["interrupted"] is False
    stats = first["stats"]
    assert (stats["files_total"], stats["files_moved"], stats["files_failed"], stats["files_quarantined"]) == \
        (4, 2, 2, 0)
    assert stats["bytes_moved"] == sum(len(c) for c in CORRUPT_OK.values())
    corrupt_src = os.path.realpath(res["_paths"]["corrupt_src"])
    assert sorted(f["path"] for f in first["failures"]) == sorted(
        os.path.join(corrupt_src, rel) for rel in CORRUPT_BAD)
    for failure in first["failures"]:
        assert set(failure) == {"path", "error", "attempts", "quarantined"}
        assert "verification failed" in failure["error"]
        assert (failure["attempts"], failure["quarantined"]) == (1, False)

    second = res["corrupt_2"]
    assert second["failed"] is True and second["stats"]["files_moved"] == 0
    assert second["stats"]["files_quarantined"] == 2
    assert [(f["attempts"], f["quarantined"]) for f in second["failures"]] == [(2, True), (2, True)]

    # On disk: good files moved, corrupted ones kept at the source, no part left.
    src, dest = Path(paths["corrupt_src"]), Path(paths["corrupt_dest"])
    for rel, content in CORRUPT_OK.items():
        assert (dest / rel).read_bytes() == content and not (src / rel).exists(), rel
    for rel, content in CORRUPT_BAD.items():
        assert (src / rel).read_bytes() == content and not (dest / rel).exists(), rel
    assert not [p for p in listing(dest) if p.endswith(b".part")]
    rows = file_rows(journal_rows(first["journal"]))
    for rel in CORRUPT_BAD:
        row = rows[rel.encode()]
        assert (row["state"], row["attempts"], row["quarantined"]) == ("failed", 2, 1), rel
        assert "verification failed" in row["error"]
    assert {rows[rel.encode()]["state"] for rel in CORRUPT_OK} == {"done"}

    info = res["corrupt_info"]
    assert info["complete"] is False and info["exists"] is True
    assert (info["progress"]["files_failed"], info["progress"]["files_quarantined"]) == (2, 2)
    assert info["progress"]["files_done"] == 2
    assert sorted(f["path"] for f in info["failures"]) == sorted(
        os.path.join(corrupt_src, rel) for rel in CORRUPT_BAD)


def test_non_utf8_names(failures_run: PlaybookRun) -> None:
    res = failures_run.results
    src = os.fsencode(res["_paths"]["raw_src"])
    dest = os.fsencode(res["_paths"]["raw_dest"])
    raw = res["raw_1"]
    # The result came back through Ansible's JSON (and ours): it is valid,
    # and the one failure names the file with backslash escapes.
    assert raw["failed"] is True and raw["stats"]["files_moved"] == len(RAW_OK)
    assert raw["stats"]["files_total"] == len(RAW_OK) + len(RAW_BAD)
    (failure,) = raw["failures"]
    (bad_rel,) = RAW_BAD
    assert failure["path"] == printable_path(os.path.join(os.path.realpath(src), bad_rel))
    assert failure["path"].endswith("/\\xe9t\\xe9.bad")
    assert failure["path"].isprintable() and failure["error"].isprintable()
    assert printable_path(os.path.join(src, bad_rel)) in failure["error"]
    # The bytes names arrived intact; the corrupted one stayed at the source.
    for rel, content in RAW_OK.items():
        with open(os.path.join(dest, rel), "rb") as handle:
            assert handle.read() == content, rel
        assert not os.path.lexists(os.path.join(src, rel)), rel
    with open(os.path.join(src, bad_rel), "rb") as handle:
        assert handle.read() == RAW_BAD[bad_rel]
    rows = file_rows(journal_rows(raw["journal"]))
    assert set(rows) == set(RAW_OK) | set(RAW_BAD)
    assert rows[bad_rel]["state"] == "failed"

    info = res["raw_info"]
    assert [f["path"] for f in info["failures"]] == [failure["path"]]
    assert info["progress"]["files_total"] == len(RAW_OK) + len(RAW_BAD)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------

def test_bad_input_is_refused_and_nothing_touched(tmp_path: Path) -> None:
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "keep.txt").write_bytes(b"keep me\n")
    run = run_playbook("module_move_bad_input.yml", tmp_path, bad_base=str(tmp_path))
    assert run.recap["rescued"] == 4 and run.recap["failed"] == 0 and run.recap["changed"] == 0
    res = run.results

    missing = res["src_missing"]
    assert missing["failed"] is True
    assert missing["msg"].startswith("src ") and str(tmp_path / "missing") in missing["msg"]
    assert "No such file or directory" in missing["msg"]

    inside = res["dest_inside"]
    assert inside["failed"] is True and "dest is inside src" in inside["msg"]

    text = res["buffer_text"]
    assert text["failed"] is True and "buffer_size" in text["msg"] and "'lots'" in text["msg"]
    small = res["buffer_small"]
    assert small["failed"] is True and "buffer_size" in small["msg"] and "1024" in small["msg"]

    for result in res.values():
        assert "stats" not in result     # refused before any run started
    # Nothing was created or moved.
    assert (tmp_path / "tree" / "keep.txt").read_bytes() == b"keep me\n"
    assert listing(tmp_path / "tree") == {b"keep.txt"}
    for name in ("state", "dest", "dest-of-missing"):
        assert not (tmp_path / name).exists(), name


def python_without_blake3() -> str:
    """A Python 3.9+ outside the venv that really cannot import blake3."""
    venv = os.path.realpath(REPO_ROOT / ".venv")
    candidates = ["/usr/bin/python3", shutil.which("python3", path=os.defpath)]
    for candidate in filter(None, candidates):
        if os.path.realpath(candidate).startswith(venv + os.sep) or not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info >= (3, 9); import blake3"],
            capture_output=True, text=True, check=False)
        if probe.returncode != 0 and "No module named 'blake3'" in probe.stderr:
            return candidate
    pytest.skip("no Python 3.9+ without blake3 outside the venv (tried %s)" % ", ".join(filter(None, candidates)))
    raise AssertionError("unreachable")


def test_hash_without_blake3(tmp_path: Path, xdev: Path) -> None:
    system_python = python_without_blake3()
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    dest = xdev / "system-python-dest"
    run = run_playbook("module_move_system_python.yml", tmp_path, system_python=system_python,
                       move_src=str(src), move_dest=str(dest), move_state_dir=str(tmp_path / "state"))
    assert run.recap["rescued"] == 1 and run.recap["failed"] == 0

    failed = run.results["blake3"]
    assert failed["failed"] is True
    # missing_required_lib's wording, naming the library and the interpreter.
    assert "Failed to import the required Python library (blake3)" in failed["msg"]
    assert system_python in failed["msg"]
    assert run.results["dest_after_refusal"]["stat"]["exists"] is False   # nothing was touched

    auto = run.results["auto"]
    assert auto["hash_algorithm"] == "sha256" and auto["complete"] is True
    assert auto["stats"]["files_moved"] == TREE_ENTRIES
    assert_tree_at(dest)
    rows = journal_rows(auto["journal"])
    for rel, content in TREE_FILES.items():
        assert rows[os.fsencode(rel)]["hash"] == "sha256:" + hashlib.sha256(content).hexdigest(), rel


# --------------------------------------------------------------------------
# mode=copy and mode=verify
# --------------------------------------------------------------------------

def test_copy_and_verify_modes(tmp_path: Path, xdev: Path) -> None:
    copy_src, copy_dest = tmp_path / "copy-src", tmp_path / "copy-dest"
    copy_src.mkdir()
    inodes = make_tree(copy_src)
    journal_src, journal_dest = tmp_path / "journal-src", xdev / "modes-journal-dest"
    journal_src.mkdir()
    make_tree(journal_src)
    tamper_text = "ALPHA\n"       # as long as TREE_FILES["a.txt"]: only the hash can tell
    assert len(tamper_text) == len(TREE_FILES["a.txt"])
    run = run_playbook(
        "module_move_modes.yml", tmp_path,
        copy_src=str(copy_src), copy_dest=str(copy_dest), tamper_file=str(copy_dest / "a.txt"),
        journal_src=str(journal_src), journal_dest=str(journal_dest),
        journal_tamper_file=str(journal_dest / "a.txt"), tamper_text=tamper_text,
        move_state_dir=str(tmp_path / "state"),
    )
    assert run.recap["rescued"] == 2 and run.recap["failed"] == 0
    res = run.results

    # mode=copy, same filesystem: check mode plans copies, not renames...
    plan = res["copy_check"]["plan"]
    assert (plan["files"], plan["copies"], plan["renames"]) == (TREE_ENTRIES, TREE_ENTRIES, 0)
    # ...and the run leaves the sources untouched (same inodes) and copies them.
    copy_1, copy_2 = res["copy_1"], res["copy_2"]
    assert copy_1["changed"] is True and copy_1["mode"] == "copy" and copy_1["complete"] is True
    assert copy_1["stats"]["files_moved"] == TREE_ENTRIES and copy_1["stats"]["bytes_moved"] == TREE_BYTES
    assert copy_2["changed"] is False and copy_2["stats"]["files_moved"] == 0
    assert_tree_at(copy_src)
    for rel, inode in inodes.items():
        assert (copy_src / rel).stat().st_ino == inode, rel
        assert (copy_dest / rel).stat().st_ino != inode, rel
    rows = file_rows(journal_rows(copy_1["journal"]))
    assert {row["state"] for row in rows.values()} == {"done"}

    # mode=verify: the copy matches, nothing changes.
    spec = return_doc(move_module)
    for name in ("verify_copy", "verify_tampered", "journal_verify", "journal_tampered"):
        problems = check_mapping(res[name], spec, "", NULLABLE["move"], exact=False,
                                 returned=move_returned(False, verify=True))
        assert problems == [], (name, problems)
        assert not set(res[name]) - set(spec) - ANSIBLE_RESULT_KEYS, name
    verify = res["verify_copy"]
    assert verify["changed"] is False and not verify.get("failed") and verify["complete"] is True
    assert verify["mode"] == "verify" and verify["stats"]["files_total"] == TREE_ENTRIES
    assert verify["failures"] == []
    # ...and after a same-size change behind its back, it fails, naming the file.
    tampered = res["verify_tampered"]
    assert tampered["failed"] is True and tampered["changed"] is False and tampered["complete"] is False
    # One changed file: counted once, although both the source and the journal disagree with it.
    assert (tampered["stats"]["files_total"], tampered["stats"]["files_failed"]) == (TREE_ENTRIES, 1)
    (failure,) = tampered["failures"]
    assert failure["path"].endswith("/a.txt") and "differs" in failure["error"]
    assert (copy_dest / "a.txt").read_bytes() == tamper_text.encode()     # verify changed nothing
    assert (copy_src / "a.txt").read_bytes() == TREE_FILES["a.txt"]

    # mode=verify after a move: the source is gone, the journal's hashes are the reference.
    assert res["journal_move"]["complete"] is True and listing(journal_src) == set()
    journal_verify = res["journal_verify"]
    assert journal_verify["changed"] is False and not journal_verify.get("failed")
    assert journal_verify["stats"]["files_total"] == TREE_ENTRIES
    assert journal_verify["stats"]["files_verified"] == TREE_ENTRIES   # files by hash, links by target
    assert journal_verify["stats"]["files_unverifiable"] == 0
    assert journal_verify["complete"] is True
    assert verify["stats"]["files_verified"] == TREE_ENTRIES and verify["unverifiable"] == []
    journal_tampered = res["journal_tampered"]
    assert journal_tampered["failed"] is True and journal_tampered["changed"] is False
    (failure,) = journal_tampered["failures"]
    assert failure["path"].endswith("/a.txt") and "hash recorded in the journal" in failure["error"]
    assert (journal_dest / "a.txt").read_bytes() == tamper_text.encode()


# --------------------------------------------------------------------------
# The ansible-test style integration target
# --------------------------------------------------------------------------

def test_integration_target_move(tmp_path: Path) -> None:
    target = Path(__file__).resolve().parent / "targets" / "move"
    assert (target / "aliases").read_text(encoding="utf-8").strip()
    run_playbook("target_move.yml", tmp_path, move_test_dir=str(tmp_path), results_file="")
    # The target's own asserts passed (the run succeeded); check the result on disk too.
    dest = tmp_path / "dest"
    assert (dest / "a.txt").read_bytes() == b"alpha\n"
    assert (dest / "empty.txt").read_bytes() == b""
    assert (dest / "sub" / "b.txt").read_bytes() == b"bravo " * 2000
    assert (dest / "sub" / "deeper" / "name with spaces.txt").read_bytes() == b"charlie\n"
    assert os.readlink(dest / "sub" / "link-to-a") == "../a.txt"
    assert (dest / "empty").is_dir()
    assert listing(tmp_path / "src") == set()


# --------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------

def test_ansible_doc_renders_both_modules() -> None:
    proc = subprocess.run(
        [ansible_tool("ansible-doc"), "durable.mover.move", "durable.mover.move_info"],
        cwd=str(REPO_ROOT), env=ansible_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    for module in (move_module, move_info_module):
        name = yaml.safe_load(module.DOCUMENTATION)["module"]
        assert f"durable.mover.{name}" in proc.stdout
        for option in module.ARGUMENT_SPEC:
            assert re.search(rf"^\s*[=-] {re.escape(option)}\b", proc.stdout, re.MULTILINE), option


def _normalized_spec(spec: dict[str, t.Any]) -> dict[str, t.Any]:
    return {
        "type": spec.get("type", "str"),
        "required": bool(spec.get("required", False)),
        "default": spec.get("default"),
        "choices": list(spec["choices"]) if spec.get("choices") is not None else None,
        "elements": spec.get("elements"),
    }


@pytest.mark.parametrize("module", [move_module, move_info_module], ids=["move", "move_info"])
def test_documentation_matches_argument_spec(module: t.Any) -> None:
    doc = yaml.safe_load(module.DOCUMENTATION)
    options = doc["options"]
    assert set(options) == set(module.ARGUMENT_SPEC)
    mismatches = {}
    for name, spec in module.ARGUMENT_SPEC.items():
        documented = _normalized_spec(options[name])
        coded = _normalized_spec(spec)
        if documented != coded or type(documented["default"]) is not type(coded["default"]) and \
                not (isinstance(documented["default"], (int, float)) and isinstance(coded["default"], (int, float))):
            mismatches[name] = {"DOCUMENTATION": documented, "ARGUMENT_SPEC": coded}
        assert options[name].get("description"), f"{name} has no description"
    assert mismatches == {}
    # Every option the module reads is one the core knows (no silently ignored option), but
    # preflight: the module's own (it runs the preflight's checks first; test_move_preflight.py).
    if module is move_module:
        from ansible_collections.durable.mover.plugins.module_utils import _mover
        assert set(module.ARGUMENT_SPEC) <= set(_mover.DEFAULTS) | {"src", "dest", "preflight"}
