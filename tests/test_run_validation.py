"""``clapbench run`` checks every name it uses before the first stage: nothing is created in the run store."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.methods import list_methods

runner = CliRunner()


def test_unknown_method_exits_2_with_the_known_methods_and_leaves_the_store_empty(tmp_path):
    runs = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "clap_bench", "run", "--method", "nope", "--seeds", "1", "--profile", "smoke", "--runs-dir", str(runs)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "'nope'" in result.stderr
    for name in list_methods():  # the registry, whatever it holds today
        assert name in result.stderr, name
    assert not runs.exists()


def _profile_file(tmp_path, **changes) -> str:
    raw = {"base": "smoke", "name": "checked"}
    raw.update(changes)
    path = tmp_path / "checked.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("args, changes, expected", [
    (["--tasks", "tal,nope"], {}, "unknown task 'nope'"),
    ([], {"methods": {"clap-typo": {}}}, "methods.clap-typo: unknown method"),
    ([], {"methods": {"clap": {"no_such_key": 1}}}, "no_such_key"),
    ([], {"tasks": {"tal": {"epochs": 1, "no_such_key": 2}}}, "no_such_key"),
    ([], {"tasks": {"gtad": {}}}, "tasks.gtad: unknown task; known: fstal, tal, vlg"),
    (["--tasks", "vlg"], {"data": {"synthetic": False, "datasets": {"activitynet": {"format": "tsp-csv"}}}},
     "task vlg needs dataset 'charades-sta'; data.datasets has: activitynet"),
    (["--tasks", "tal"], {"data": {"datasets": {"activitynet": {"format": "no-such-format"}}}},
     "data.datasets.activitynet.format: unknown format 'no-such-format'"),
])
def test_unknown_task_profile_key_or_dataset_exits_2_before_anything_is_written(tmp_path, args, changes, expected):
    runs = tmp_path / "runs"
    result = runner.invoke(app, ["run", "--method", "clap", "--seeds", "1", "--config", _profile_file(tmp_path, **changes),
                                 "--runs-dir", str(runs), *args])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert expected in result.output
    assert not runs.exists()


def test_a_grounding_set_that_tasks_vlg_datasets_leaves_out_need_not_be_configured(tmp_path):
    # A real-data profile grounding Charades-STA only: TACoS is neither extracted nor read.
    from clap_bench.config import ConfigError, load_profile
    from clap_bench.runs.plan import validate_run

    data = {"synthetic": False, "datasets": {"activitynet": {"format": "tsp-csv"}, "charades-sta": {"format": "charades-sta"}}}
    kinetics = {"weights": "kinetics400"}
    only_charades = load_profile(_profile_file(tmp_path, data=data, encoder=kinetics, tasks={"vlg": {"datasets": ["charades-sta"]}}))
    validate_run(only_charades, ["clap"], ["vlg"])
    both = load_profile(_profile_file(tmp_path, data=data, encoder=kinetics))
    with pytest.raises(ConfigError, match="task vlg needs dataset 'tacos'"):
        validate_run(both, ["clap"], ["vlg"])
