# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Action plugin for durable.mover.write_reports: writes report files on the controller.

One task writes every report file, in the controller's own process: no module
run, no round trip per file. Each file is written to a temporary name and
renamed, so a reader never sees half a report.
"""

from __future__ import annotations

import os
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.action import ActionBase


def _safe_relpath(rel):
    rel = to_text(rel)
    parts = rel.split('/')
    if not rel or rel.startswith('/') or any(p in ('', '.', '..') for p in parts):
        raise AnsibleActionFail('write_reports: %r is not a relative path inside dest' % rel)
    return rel


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(('dest', 'files', 'mode'))

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        dest = args.get('dest')
        files = args.get('files')
        mode = args.get('mode', '0644')
        if not dest or not isinstance(dest, str):
            raise AnsibleActionFail('write_reports: dest (a directory on the controller) is required')
        if not isinstance(files, dict):
            raise AnsibleActionFail('write_reports: files must be a dict of relative path -> content')
        try:
            mode = int(str(mode), 8)
        except ValueError:
            raise AnsibleActionFail('write_reports: mode must be octal, like "0644", got %r' % mode)
        dest = os.path.abspath(os.path.expanduser(dest))
        written = []
        for rel in sorted(files):
            path = os.path.join(dest, _safe_relpath(rel))
            content = files[rel]
            if not isinstance(content, (str, bytes)):
                raise AnsibleActionFail('write_reports: the content of %s must be text' % rel)
            directory = os.path.dirname(path)
            try:
                os.makedirs(directory, exist_ok=True)
                handle, temp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), dir=directory)
                try:
                    with os.fdopen(handle, 'wb') as out:
                        out.write(to_bytes(content, errors='surrogate_or_strict'))
                    os.chmod(temp, mode)
                    os.replace(temp, path)
                except BaseException:
                    os.unlink(temp)
                    raise
            except OSError as exc:
                raise AnsibleActionFail('write_reports: cannot write %s: %s' % (path, exc))
            written.append(path)
        result.update(changed=False, written=written)
        return result
