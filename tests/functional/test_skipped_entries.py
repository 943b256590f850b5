# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The result names every entry a run skipped, by kind (issue 12).

Special files and conflicts stay at the source; a source deleted by someone
else between the listing and its move is gone. Each is counted in ``stats``
and listed in ``skipped_entries`` with its kind and why, so that the reports
can say what an operator must not wipe. Real runs of the core.
"""

from __future__ import annotations

import os
import socket
import typing as t

from ansible_collections.durable.mover.plugins.module_utils import _mover, _scan

from fstree import Site, b


def write(path: bytes, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def by_kind(result: dict[str, t.Any]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for entry in result["skipped_entries"]:
        found.setdefault(entry["kind"], {})[os.path.basename(entry["path"])] = entry["reason"]
    return found


def test_every_skipped_entry_is_listed_with_its_kind(site: Site, monkeypatch) -> None:
    src, dest = b(site.src), b(site.dest)
    write(os.path.join(src, b"a.txt"), b"a")
    write(os.path.join(src, b"clash.txt"), b"the source's")
    write(os.path.join(dest, b"clash.txt"), b"someone else's")
    write(os.path.join(src, b"doomed.txt"), b"deleted by someone else before it is moved")
    os.mkfifo(os.path.join(src, b"fifo"))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.join(src, b"sock"))

    # The check mode sees the special files and the conflict.
    planned = _mover.plan(site.params(on_conflict="skip"))
    assert (planned["stats"]["special_skipped"], planned["stats"]["conflicts_skipped"]) == (2, 1)
    assert set(by_kind(planned)) == {"special_file", "conflict"}

    real_scan = _scan.scan

    def scan_then_someone_deletes(*args, **kwargs):
        done = real_scan(*args, **kwargs)
        os.unlink(os.path.join(src, b"doomed.txt"))
        return done

    monkeypatch.setattr(_scan, "scan", scan_then_someone_deletes)
    result = _mover.run(site.params(on_conflict="skip", special_files="recreate"))

    assert not result.get("failed"), result["msg"]
    stats = result["stats"]
    assert (stats["special_skipped"], stats["conflicts_skipped"], stats["files_skipped"]) == (1, 1, 3)
    kinds = by_kind(result)
    assert set(kinds) == {"special_file", "conflict", "vanished"}
    assert list(kinds["special_file"]) == ["sock"]
    assert "socket" in kinds["special_file"]["sock"] and "special_files=skip" not in kinds["special_file"]["sock"]
    assert kinds["conflict"]["clash.txt"].startswith("conflict skipped (on_conflict=skip)")
    assert list(kinds["vanished"]) == ["doomed.txt"]
    assert all(entry["path"].startswith(str(site.src)) for entry in result["skipped_entries"])
    assert "1 special file(s) left at the source" in result["msg"]
    assert "1 conflict(s) skipped" in result["msg"]


def test_the_list_is_capped_per_kind_and_the_counts_are_not(site: Site) -> None:
    src = b(site.src)
    for index in range(5):
        os.makedirs(os.path.join(src, b"d"), exist_ok=True)
        os.mkfifo(os.path.join(src, b"d", b"fifo%d" % index))
    result = _mover.run(site.params(max_failures_reported=2))
    assert result["stats"]["special_skipped"] == 5
    assert [os.path.basename(e["path"]) for e in result["skipped_entries"]] == ["fifo0", "fifo1"]
