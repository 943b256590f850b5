# Copyright: durable.mover maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for tests on a fleet of real SSH hosts (see harness.py beside this file).

* ``fleet`` (module scope) and ``fleet_session`` (session scope): factories.
  ``fleet(3)`` builds three hosts and returns a :class:`harness.Fleet`; every
  keyword of :meth:`harness.Fleet.create` is accepted (``src_mb``,
  ``dest_mb``, ``python``, ``names``, ...). Every fleet made through the
  factory is torn down when the scope ends; a teardown that leaves anything
  behind (process, loop device, netns, link, file) fails that teardown.
  Both skip the requesting test when the machine cannot build a fleet
  (not root, missing tools or loop devices), naming what is missing.

Typical use::

    @pytest.fixture(scope="module")
    def hosts(fleet):
        return fleet(3, python=sys.executable)   # the venv python has blake3

    def test_something(hosts):
        hosts.inventory()                        # <run dir>/inventory.yml
        proc = hosts.ansible("all", "-m", "ansible.builtin.ping")
        hosts["h1"].link_down()

Test modules reach the harness with ``import harness`` (this directory is on
``sys.path`` while they run).
"""

from __future__ import annotations

import sys
import typing as t
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import harness  # noqa: E402  pylint: disable=wrong-import-position,import-error


def _fleet_factory() -> t.Iterator[t.Callable[..., harness.Fleet]]:
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    made: list[harness.Fleet] = []

    def make(hosts: int = 3, **kwargs: t.Any) -> harness.Fleet:
        fleet = harness.Fleet.create(hosts, **kwargs)
        made.append(fleet)
        return fleet

    yield make

    problems = []
    for fleet in reversed(made):
        try:
            report = fleet.down()
        except Exception as exc:  # pylint: disable=broad-exception-caught
            problems.append(f"{fleet.run_id}: teardown failed: {exc}")
            continue
        if report["leftovers"]:
            problems.append(f"{fleet.run_id}: teardown left {report['leftovers']}")
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(scope="module")
def fleet() -> t.Iterator[t.Callable[..., harness.Fleet]]:
    """Factory of test fleets, torn down at the end of the test module."""
    yield from _fleet_factory()


@pytest.fixture(scope="session")
def fleet_session() -> t.Iterator[t.Callable[..., harness.Fleet]]:
    """Factory of test fleets, torn down at the end of the test session."""
    yield from _fleet_factory()
