# -*- coding: utf-8 -*-
# Copyright: durable.mover contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Unit tests of plugins/module_utils/_jobs.py (the migrate role's job list), and
checks that the roles pass and document every module option."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ansible_collections.durable.mover.plugins.module_utils._jobs import (
    MODULE_OPTIONS,
    NO_JOB,
    PREFLIGHT_OPTIONS,
    RUN_OPTIONS,
    job_list,
)
from ansible_collections.durable.mover.plugins.modules import move as move_module
from ansible_collections.durable.mover.plugins.modules import preflight as preflight_module

REPO_ROOT = Path(__file__).resolve().parents[2]
ROLE = REPO_ROOT / "roles" / "migrate"


def test_single_pair_with_role_options():
    role_vars = {"migrate_hash": "sha256", "migrate_workers": 2, "migrate_retry_failed": False,
                 "migrate_mode": None, "migrate_job_id": "data", "migrate_async": True}
    result = job_list([], src="/srv/a", dest="/srv/b", role_vars=role_vars)
    assert result["errors"] == []
    assert result["jobs"] == [{
        "index": 0, "name": "/srv/a -> /srv/b", "src": "/srv/a", "dest": "/srv/b",
        # A false boolean is passed on; null means unset; non-module variables are ignored.
        "params": {"src": "/srv/a", "dest": "/srv/b", "hash": "sha256", "workers": 2,
                   "retry_failed": False, "job_id": "data"},
    }]


def test_an_unset_variable_as_ansible_core_before_2_19_renders_it_is_unset():
    """The role hands its variables over as "{{ migrate_x | default(none) }}",
    which ansible-core 2.16 to 2.18 render as '' (the >1,000-poll play failed
    under 2.16: preflight got cross_filesystems '' and refused it)."""
    role_vars = {"migrate_" + option: "" for option in MODULE_OPTIONS}
    role_vars["migrate_workers"] = 2
    result = job_list([], src="/srv/a", dest="/srv/b", role_vars=role_vars)
    assert result["errors"] == []
    assert result["jobs"][0]["params"] == {"src": "/srv/a", "dest": "/srv/b", "workers": 2}


def test_jobs_override_role_options_and_the_pair_comes_last():
    jobs = [
        {"src": "/a", "dest": "/b", "options": {"hash": "none", "job_id": "first"}, "name": "first disk"},
        {"src": "/c", "dest": "/d"},
    ]
    result = job_list(jobs, src="/e", dest="/f", role_vars={"migrate_hash": "sha256"})
    assert result["errors"] == []
    assert [j["name"] for j in result["jobs"]] == ["first disk", "/c -> /d", "/e -> /f"]
    assert [j["index"] for j in result["jobs"]] == [0, 1, 2]
    assert result["jobs"][0]["params"] == {"src": "/a", "dest": "/b", "hash": "none", "job_id": "first"}
    assert result["jobs"][1]["params"] == {"src": "/c", "dest": "/d", "hash": "sha256"}


@pytest.mark.parametrize("jobs, src, dest, role_vars, error", [
    ([], None, None, {}, NO_JOB),
    (None, None, None, None, NO_JOB),
    ("not a list", None, None, {}, "migrate_jobs must be a list"),
    (["/a"], None, None, {}, "migrate_jobs item 1 must be a dict"),
    ([{"src": "/a"}], None, None, {}, "migrate_jobs item 1: dest is required"),
    ([{"src": "/a", "dest": "/b", "hash": "sha256"}], None, None, {}, "unknown key(s) hash"),
    ([{"src": "/a", "dest": "/b", "options": {"hashh": "x"}}], None, None, {}, "unknown option(s) hashh"),
    ([{"src": "/a", "dest": "/b", "options": "x"}], None, None, {}, "options must be a dict"),
    ([], "/a", None, {}, "migrate_src and migrate_dest go together"),
    ([{"src": "/a", "dest": "/b"}], "/a", "/b", {}, "the job /a -> /b is listed twice"),
    ([{"src": "/a", "dest": "/b"}], None, None, {"migrate_job_id": "x"}, "migrate_job_id names the one job"),
])
def test_configuration_errors_are_returned(jobs, src, dest, role_vars, error):
    result = job_list(jobs, src=src, dest=dest, role_vars=role_vars)
    assert any(error in message for message in result["errors"]), result["errors"]


def test_module_options_are_the_move_modules():
    assert set(MODULE_OPTIONS) == set(move_module.ARGUMENT_SPEC) - {"src", "dest"} - set(RUN_OPTIONS)
    assert set(PREFLIGHT_OPTIONS) <= set(preflight_module.ARGUMENT_SPEC)
    assert set(PREFLIGHT_OPTIONS) <= set(MODULE_OPTIONS)


def test_the_role_reads_and_passes_every_option():
    main = (ROLE / "tasks" / "main.yml").read_text(encoding="utf-8")
    job = (ROLE / "tasks" / "job.yml").read_text(encoding="utf-8")
    for option in MODULE_OPTIONS:
        assert '      migrate_%s: "{{ migrate_%s | default(none) }}"' % (option, option) in main, option
        assert '%s: "{{ migrate_job.params.%s | default(omit) }}"' % (option, option) in job, option
    for option in PREFLIGHT_OPTIONS:
        assert '%s: "{{ migrate_job.params.%s | default(omit) }}"' % (option, option) in main, option


def test_argument_specs_document_every_variable():
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options = specs["argument_specs"]["main"]["options"]
    for option in ("src", "dest") + MODULE_OPTIONS:
        spec = options["migrate_" + option]
        # No defaults: an unset variable is omitted, so the module's default applies.
        assert "default" not in spec, option
        module_spec = move_module.ARGUMENT_SPEC[option]
        assert spec["type"] == module_spec["type"], option
        assert spec.get("choices") == module_spec.get("choices"), option
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text(encoding="utf-8"))
    for name, value in defaults.items():
        if isinstance(value, str) and "{{" in value:
            # a templated default: the spec cannot hold it, its description says it
            assert "default" not in options[name] and "Defaults to" in " ".join(options[name]["description"]), name
        else:
            assert options[name]["default"] == value, name
    assert set(options) == {"migrate_" + o for o in ("src", "dest") + MODULE_OPTIONS} | set(defaults)


def test_report_role_documents_its_defaults():
    role = REPO_ROOT / "roles" / "report"
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text(encoding="utf-8"))
    options = options["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text(encoding="utf-8"))
    assert set(options) == set(defaults)
    for name, value in defaults.items():
        if name != "report_dir":    # templated from migrate_report_dir
            assert options[name]["default"] == value, name


def test_filter_plugin_wiring():
    from ansible.errors import AnsibleFilterError

    from ansible_collections.durable.mover.plugins.filter import report as report_filters

    filters = report_filters.FilterModule().filters()
    assert set(filters) == {"fleet_report", "host_result", "junit_xml", "migrate_jobs", "progress_line",
                            "summary_markdown"}
    for name in filters:
        assert (REPO_ROOT / "plugins" / "filter" / ("%s.yml" % name)).exists(), name
    jobs = filters["migrate_jobs"]([], "/a", "/b", {"migrate_hash": "sha256"})
    assert jobs["jobs"][0]["params"] == {"src": "/a", "dest": "/b", "hash": "sha256"}
    with pytest.raises(AnsibleFilterError, match="migrate_jobs"):
        filters["migrate_jobs"]([], role_vars="migrate_hash=sha256")
    with pytest.raises(AnsibleFilterError, match="pending must be a list"):
        filters["fleet_report"]({}, [], "web1")
    with pytest.raises(AnsibleFilterError, match="host_result"):
        filters["host_result"](["not", "a", "dict"])
    assert filters["fleet_report"]({"a": None}, None, ["b"])["pending"] == ["b"]
    assert filters["progress_line"]({"exists": False}, "j") == "j: starting (no journal yet)"
