"""Run the durable.mover core directly, without Ansible (tests, crash suite, benchmarks).

Usage: mover_cli.py '{"src": ..., "dest": ..., ...}' [--check]
Prints the result as JSON; exit status 0 if not failed, 1 if failed, 2 on bad input.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
COLLECTIONS = os.path.join(REPO, '.collections')
if not os.path.isdir(os.path.join(COLLECTIONS, 'ansible_collections', 'durable', 'mover')):
    os.makedirs(os.path.join(COLLECTIONS, 'ansible_collections', 'durable'), exist_ok=True)
    try:
        os.symlink(REPO, os.path.join(COLLECTIONS, 'ansible_collections', 'durable', 'mover'))
    except FileExistsError:
        pass
sys.path.insert(0, COLLECTIONS)

from ansible_collections.durable.mover.plugins.module_utils import _mover  # noqa: E402
from ansible_collections.durable.mover.plugins.module_utils._errors import MoverError  # noqa: E402


def main(argv):
    params = json.loads(argv[1])
    try:
        if '--check' in argv[2:]:
            result = _mover.plan(params)
        else:
            result = _mover.run(params)
    except MoverError as exc:
        print(json.dumps({'failed': True, 'msg': str(exc), 'errno': exc.errno}))
        return 2
    print(json.dumps(result, sort_keys=True))
    return 1 if result.get('failed') else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
