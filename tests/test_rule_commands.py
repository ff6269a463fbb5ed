"""Every shipped config plans the same command lines as recorded (tests/rule_commands.py):
the workflow's argument building, variant merging, stage ownership and resources, checked
whole wherever that logic lives."""

import difflib

import pytest

from rule_commands import CONFIGS, GOLDEN, record_all


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return record_all(tmp_path_factory.mktemp("rule_commands"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_planned_commands_match_the_record(records, name):
    want = (GOLDEN / f"{name}.txt").read_text()
    got = records[name]
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                        f"recorded/{name}", f"now/{name}", n=1))
    assert got == want, (f"the jobs planned for {name} changed; if intended, run "
                         f"`python tests/rule_commands.py --update`:\n{diff[:6000]}")
