"""The assembled ``clapbench`` command line: every area registers its commands."""

import pytest
from typer.testing import CliRunner

from clap_bench.cli import app

runner = CliRunner()


def test_help_lists_every_stage_command():
    out = runner.invoke(app, ["--help"]).output
    for command in ("run", "sweep", "status", "table", "pretrain", "extract", "data", "eval", "downstream", "analyze", "list"):
        assert command in out, command


def test_list_methods_has_the_seven_methods():
    out = runner.invoke(app, ["list", "methods"]).output.split()
    for name in ("tac", "tsp", "clap-clip", "clap-mask", "clap", "clap-no-cls", "clap-dagger"):
        assert name in out, name


def test_list_methods_filters_with_wildcards():
    result = runner.invoke(app, ["list", "methods", "clap-*"])
    names = [line.split()[0] for line in result.output.splitlines()]
    assert names == ["clap-clip", "clap-dagger", "clap-mask", "clap-no-cls"]


def test_list_tasks_and_formats():
    tasks = [line.split()[0] for line in runner.invoke(app, ["list", "tasks"]).output.splitlines()]
    assert tasks == ["fstal", "tal", "vlg"]
    formats = [line.split()[0] for line in runner.invoke(app, ["list", "formats"]).output.splitlines()]
    assert formats == sorted(["activitynet-json", "tsp-csv", "anet-captions", "charades-sta", "tacos", "class-split", "kinetics-csv"])


@pytest.mark.parametrize("kind", ["methods", "tasks"])
def test_list_with_no_match_says_so_and_exits_1(kind):
    result = runner.invoke(app, ["list", kind, "zz*"])
    assert result.exit_code == 1
    assert f"no {kind[:-1]} matches 'zz*'" in result.output


def test_downstream_set_pairs_nest_dotted_keys_and_a_later_value_wins():
    from clap_bench.commands.downstream import parse_overrides

    assert parse_overrides(["a.x=1", "a.y=[2, 3]", "b=4", "b=5", "a.x=6"]) == {"a": {"x": 6, "y": [2, 3]}, "b": 5}
    assert parse_overrides(["a={x: 1}", "a.y=2"]) == {"a": {"x": 1, "y": 2}}
    # a mapping given as one value replaces the keys set under it; they can then become values again
    assert parse_overrides(["a.y.z=1", "a={y: 2}", "a.y=3"]) == {"a": {"y": 3}}
