# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Integration tests: say which ansible-core versions the matrix tests run under."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from migrate_helpers import matrix_header  # noqa: E402  pylint: disable=wrong-import-position,import-error


def pytest_report_header(config):  # pylint: disable=unused-argument
    return matrix_header()
