# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The optional audit log: one JSON object per line, per event, on the host.

PRIVATE to the durable.mover collection; not a public API.
"""

from __future__ import annotations

import json
import os
import threading
import time

from ansible_collections.durable.mover.plugins.module_utils._errors import display_path, os_error


class AuditLog:
    """Appends events; a no-op when no path is configured."""

    def __init__(self, path, job_id, run):
        self.job_id = job_id
        self.run = run
        self.fd = None
        self._lock = threading.Lock()
        if path:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            except OSError as exc:
                raise os_error(exc, 'cannot open audit log', path)

    def event(self, event, path=None, **fields):
        if self.fd is None:
            return
        record = {'ts': round(time.time(), 6), 'job': self.job_id, 'run': self.run, 'event': event}
        if path is not None:
            record['path'] = display_path(path)
        record.update(fields)
        line = (json.dumps(record, sort_keys=True, default=str) + '\n').encode('utf-8')
        with self._lock:
            os.write(self.fd, line)  # O_APPEND: one write, one whole line

    def close(self):
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
