"""Bad input gets a message that names the key, file or value at fault, and no traceback.

Config loading (unknown profile, invalid YAML, unknown key, a ``base:`` loop) and the CLI's answers
to bad arguments (unknown method, missing feature file, unparsable ``--seeds``).
"""

from __future__ import annotations

import traceback

import pytest
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import ConfigError, load_profile

runner = CliRunner()


# --------------------------------------------------------------------------- config loading
def test_unknown_profile_names_it_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown profile 'smok'; known: smoke, default, paper"):
        load_profile("smok")


def test_missing_profile_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'nope.yaml'}: profile file not found"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_invalid_yaml_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\npretrain:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid YAML") as info:
        load_profile(str(bad))
    assert "line 4" in str(info.value)


def test_unknown_key_names_its_path_the_file_and_the_expected_keys(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("base: smoke\npretrain:\n  epochz: 2\n")
    with pytest.raises(ConfigError) as info:
        load_profile(str(bad))
    message = str(info.value)
    assert str(bad) in message and ".pretrain" in message and "'epochz'" in message and "'epochs'" in message


def test_wrong_type_names_the_key_and_the_value(tmp_path):
    bad = tmp_path / "type.yaml"
    bad.write_text("base: smoke\nruntime:\n  threads: many\n")
    with pytest.raises(ConfigError, match=r"runtime\.threads: expected int, got 'many'"):
        load_profile(str(bad))
    bad.write_text("base: smoke\npretrain:\n  lr_backbone: fast\n")
    with pytest.raises(ConfigError, match=r"pretrain\.lr_backbone: expected a number, got 'fast'"):
        load_profile(str(bad))
    bad.write_text("base: smoke\npretrain:\n  lr_backbone: 1e-3\n")  # YAML 1.1 reads it as a string
    assert load_profile(str(bad)).pretrain.lr_backbone == 1e-3


def test_base_loop_names_the_files_in_the_loop(tmp_path):
    (tmp_path / "a.yaml").write_text(f"base: {tmp_path / 'b.yaml'}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match=r"'base' chain loops") as info:
        load_profile(str(tmp_path / "a.yaml"))
    assert str(tmp_path / "a.yaml") in str(info.value) and str(tmp_path / "b.yaml") in str(info.value)



def test_a_relative_base_is_read_from_the_folder_of_the_file_that_names_it(tmp_path, monkeypatch, caplog):
    import logging

    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "parent.yaml").write_text("base: smoke\nname: parent\npretrain:\n  epochs: 3\n")
    child = cfg / "child.yaml"
    child.write_text("base: parent.yaml\nname: child\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the file's folder
    assert load_profile(str(child)).pretrain.epochs == 3
    # a file of the same name in the current directory does not take its place
    (elsewhere / "parent.yaml").write_text("base: smoke\nname: other\npretrain:\n  epochs: 5\n")
    assert load_profile(str(child)).pretrain.epochs == 3
    # a base written relative to the current directory (as before) is still found, with a warning saying how to write it
    monkeypatch.chdir(tmp_path)
    child.write_text("base: cfg/parent.yaml\nname: child\n")
    with caplog.at_level(logging.WARNING, logger="clap_bench.config"):
        assert load_profile(str(child)).pretrain.epochs == 3
    assert f"{child}: base: cfg/parent.yaml: not found beside {child}, taken from the current directory" in caplog.text
    assert "write it as parent.yaml" in caplog.text
    # found in neither: the error names the file, its base key and where it looked
    child.write_text("base: nosuch.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{child}: base: nosuch.yaml: profile file not found .*{cfg / 'nosuch.yaml'}"):
        load_profile(str(child))
    # a loop through relative bases is still a loop
    (cfg / "a.yaml").write_text("base: b.yaml\n")
    (cfg / "b.yaml").write_text("base: ./a.yaml\n")
    with pytest.raises(ConfigError, match=r"'base' chain loops"):
        load_profile(str(cfg / "a.yaml"))


def test_unknown_base_names_the_file_and_its_base_key(tmp_path):
    bad = tmp_path / "badbase.yaml"
    bad.write_text("name: bad\nbase: nosuch\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: base: unknown profile 'nosuch'; known: smoke, default, paper"):
        load_profile(str(bad))
    bad.write_text(f"base: {tmp_path / 'gone.yaml'}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: base: {tmp_path / 'gone.yaml'}: profile file not found"):
        load_profile(str(bad))
    # one level down: the file whose base key is wrong is named, not the one loaded
    top = tmp_path / "top.yaml"
    top.write_text(f"base: {bad}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: base: {tmp_path / 'gone.yaml'}"):
        load_profile(str(top))
    bad.write_text("base: [smoke]\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: base: expected a profile name"):
        load_profile(str(bad))



@pytest.mark.parametrize("name", ["ablation/lr0.1", "../../evil", "..", "_shared", ".hidden", "a b", ""])
def test_a_profile_name_that_is_not_one_plain_folder_name_is_refused_naming_the_file_and_key(tmp_path, name):
    bad = tmp_path / "named.yaml"
    bad.write_text(f"base: smoke\nname: {name!r}\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: name: expected letters, digits") as info:
        load_profile(str(bad))
    assert repr(name) in str(info.value)


def test_a_profile_named_after_its_file_is_checked_too_and_plain_names_pass(tmp_path):
    for name in ("abl-lr0.1", "v2+aug", "Run_3", "smoke"):
        assert load_profile("smoke", overrides={"name": name}).name == name
    plain = tmp_path / "_scratch2.yaml"
    plain.write_text("encoder: {}\n")
    with pytest.raises(ConfigError, match=rf"^{plain}: name \(the file's name, as it has no name key\): .*'_scratch2'"):
        load_profile(str(plain))


# --------------------------------------------------------------------------- CLI messages
def _fails_cleanly(args: list, code: int = None) -> str:
    """Run the CLI; it must exit non-zero (``code`` where given) through its own error path (no
    exception escapes, no traceback)."""
    result = runner.invoke(app, args)
    escaped = result.exception if not isinstance(result.exception, SystemExit) else None
    assert escaped is None, "".join(traceback.format_exception(escaped))
    assert result.exit_code != 0 if code is None else result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    return result.output


def test_cli_bad_profile_file_names_the_file_and_the_key(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("base: smoke\ntasks_typo: {}\n")
    out = _fails_cleanly(["run", "--method", "clap", "--config", str(bad), "--dry-run", "--runs-dir", str(tmp_path / "runs")])
    assert str(bad) in out and "tasks_typo" in out
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_a_profile_name_outside_the_store_before_writing(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("base: smoke\nname: ../../evil\n")
    out = _fails_cleanly(["run", "--method", "clap", "--seeds", "1", "--tasks", "tal", "--config", str(bad),
                          "--runs-dir", str(tmp_path / "a" / "b" / "runs"), "--dry-run"], 2)
    assert str(bad) in out and "name" in out and "../../evil" in out
    assert not (tmp_path / "a").exists() and not (tmp_path / "evil").exists()


@pytest.mark.parametrize("seeds", ["abc", "0"])
def test_cli_bad_seeds_names_the_option_and_the_value(tmp_path, seeds):
    out = _fails_cleanly(["run", "--method", "clap", "--seeds", seeds, "--profile", "smoke", "--dry-run",
                          "--runs-dir", str(tmp_path / "runs")])
    assert "--seeds" in out and seeds in out


def test_cli_missing_feature_file_names_the_file(tmp_path):
    missing = tmp_path / "missing.h5"
    out = _fails_cleanly(["downstream", "tal", "--features", str(missing), "--profile", "smoke", "--out", str(tmp_path / "out")])
    assert str(missing) in "".join(out.split()).replace("│", "")  # the error box may wrap the path
    assert not (tmp_path / "out").exists()
    out = _fails_cleanly(["run", "--method", f"features:{missing}", "--profile", "smoke", "--dry-run",
                          "--runs-dir", str(tmp_path / "runs")])
    assert str(missing) in out


def test_cli_unknown_method_lists_the_known_methods(tmp_path):
    """Whether the unknown method is refused before anything runs or when its stage starts, the
    message lists the known methods and no traceback is printed."""
    out = _fails_cleanly(["run", "--method", "nope", "--seeds", "1", "--tasks", "tal", "--profile", "smoke",
                          "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert "'nope'" in out
    for known in ("clap", "clap-clip", "tac", "tsp"):
        assert known in out, known



@pytest.mark.parametrize("methods", [",", " , ", ""])
def test_cli_sweep_of_no_method_is_refused_and_writes_nothing(tmp_path, methods):
    runs = tmp_path / "runs"
    out = _fails_cleanly(["sweep", "--methods", methods, "--seeds", "1", "--tasks", "tal", "--profile", "smoke",
                          "--executor", "local", "--runs-dir", str(runs)], 2)
    assert "--methods" in out and repr(methods) in out
    assert not runs.exists()  # no profile.json overwritten by a run of nothing


@pytest.mark.parametrize("command", [["run", "--method", "clap", "-q"], ["sweep", "--methods", "clap,tsp", "--executor", "local"]])
@pytest.mark.parametrize("dry_run", [True, False])
def test_cli_run_of_no_task_is_refused_and_writes_nothing(tmp_path, monkeypatch, command, dry_run):
    import clap_bench.config

    def no_datasets(*a, **k):
        raise AssertionError("datasets prepared for a run of no task")

    monkeypatch.setattr(clap_bench.config, "resolve_datasets", no_datasets)
    runs = tmp_path / "runs"
    out = _fails_cleanly(command + ["--tasks", ",", "--seeds", "1", "--profile", "smoke", "--runs-dir", str(runs)]
                         + (["--dry-run"] if dry_run else []), 2)
    assert "--tasks" in out and "','" in out
    assert not runs.exists()


@pytest.mark.parametrize("option", ["--methods", "--tasks"])
def test_cli_status_of_no_method_or_task_is_refused_once(tmp_path, option):
    out = _fails_cleanly(["status", option, ",", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs")], 2)
    assert f"{option}: expected comma-separated" in out and out.count("error:") == 1

@pytest.mark.parametrize("option", ["--methods", "--tables"])
@pytest.mark.parametrize("value", [",", " , ", ""])
def test_cli_table_of_no_method_or_table_is_refused(tmp_path, option, value):
    # not read as every method (--methods ",") or as no table at all (--tables ","), whether or not the store has runs
    from clap_bench.io import atomic_write_json
    from clap_bench.runs import RunStore

    runs = tmp_path / "runs"
    out = _fails_cleanly(["table", option, value, "--runs-dir", str(runs)], 2)
    assert f"{option}: expected comma-separated" in out and repr(value) in out and out.count("error:") == 1
    stage = RunStore(runs).stage_dir("smoke", "clap", 0, "tal")
    stage.mkdir(parents=True)
    atomic_write_json(stage / "stage.json", {"status": "done", "method": "clap", "hash": "x"})
    atomic_write_json(stage / "metrics.json", {"mAP@0.5": 0.4, "mAP@0.75": 0.3, "mAP@0.95": 0.1, "average_mAP": 0.3})
    out = _fails_cleanly(["table", option, value, "--runs-dir", str(runs)], 2)
    assert f"{option}: expected comma-separated" in out and "Table 1" not in out


def test_cli_preflight_of_no_method_says_so(tmp_path):
    out = _fails_cleanly(["preflight", "--methods", ",", "--profile", "smoke"], 2)
    assert "expected comma-separated method names, got ','" in out


# --------------------------------------------------------------------------- run / sweep: executor and submission
@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("dry_run", [True, False])
def test_cli_unknown_executor_is_refused_before_planning(tmp_path, monkeypatch, command, dry_run):
    import clap_bench.config

    def no_datasets(*a, **k):
        raise AssertionError("datasets prepared for a run that cannot start")

    monkeypatch.setattr(clap_bench.config, "resolve_datasets", no_datasets)
    args = [command, "--methods" if command == "sweep" else "--method", "clap", "--executor", "foo", "--seeds", "1",
            "--tasks", "tal", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs")] + (["--dry-run"] if dry_run else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--executor" in result.output and "'foo'" in result.output and "local, debug, slurm" in result.output
    assert not (tmp_path / "runs").exists()


def test_cli_rejected_slurm_submission_is_a_clear_failure(tmp_path, monkeypatch):
    import clap_bench.config
    import clap_bench.runs
    from submitit.core.utils import FailedJobError

    def rejected(*a, **k):
        raise FailedJobError("sbatch: error: invalid partition specified: nosuch")

    monkeypatch.setattr(clap_bench.config, "resolve_datasets", lambda *a, **k: {})
    monkeypatch.setattr(clap_bench.runs, "run_plan", rejected)
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text("partition: nosuch\n")
    out = _fails_cleanly(["sweep", "--methods", "clap", "--seeds", "1", "--tasks", "tal", "--profile", "smoke",
                          "--cluster", str(cluster), "--runs-dir", str(tmp_path / "runs")], 1)
    assert "invalid partition specified: nosuch" in out and "SLURM" in out


def test_cli_config_error_raised_while_running_exits_2(tmp_path, monkeypatch):
    import clap_bench.config
    import clap_bench.runs

    def no_sbatch(*a, **k):
        raise ConfigError("--executor slurm: sbatch/squeue not found")

    monkeypatch.setattr(clap_bench.config, "resolve_datasets", lambda *a, **k: {})
    monkeypatch.setattr(clap_bench.runs, "run_plan", no_sbatch)
    out = _fails_cleanly(["run", "--method", "clap", "--seeds", "1", "--tasks", "tal", "--profile", "smoke",
                          "--runs-dir", str(tmp_path / "runs"), "-q"], 2)
    assert "sbatch/squeue not found" in out


# --------------------------------------------------------------------------- status
def test_cli_status_bad_seeds_names_the_option_and_the_value(tmp_path):
    out = _fails_cleanly(["status", "--methods", "clap", "--seeds", "abc", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs")], 2)
    assert "--seeds" in out and "'abc'" in out


def test_cli_status_damaged_stage_record_is_shown_damaged_and_names_the_file(tmp_path):
    stage = tmp_path / "runs" / "smoke" / "clap" / "seed0" / "pretrain"
    stage.mkdir(parents=True)
    (stage / "stage.json").write_text('{"status": "do')  # cut short
    result = runner.invoke(app, ["status", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0 and result.exception is None, result.output
    assert ["clap", "0", "pretrain", "damaged"] in [line.split()[:4] for line in result.output.splitlines()]
    assert f"clap/seed0/pretrain damaged: {stage / 'stage.json'}: not valid JSON" in result.output


def test_cli_status_damaged_profile_record_names_the_file(tmp_path):
    (tmp_path / "runs" / "smoke").mkdir(parents=True)
    (tmp_path / "runs" / "smoke" / "profile.json").write_text("{")
    out = _fails_cleanly(["status", "--runs-dir", str(tmp_path / "runs")], 2)
    assert str(tmp_path / "runs" / "smoke" / "profile.json") in out and "not valid JSON" in out


# --------------------------------------------------------------------------- downstream
def _flat(out: str) -> str:
    """The output with the error box's borders and line breaks taken out (it may wrap a path)."""
    return "".join(out.split()).replace("│", "")


@pytest.mark.parametrize("sets, expected", [
    (["epochs=["], "'epochs=[':thevalueisnotvalidYAML"),
    (["epochs=3", "epochs.x=1"], "'epochs.x=1'conflictswith'epochs=3':epochsisalreadysetto3,notamapping"),
    # the other order used to drop epochs.x=1 without a word
    (["epochs.x=1", "epochs=3"], "'epochs=3'conflictswith'epochs.x=1':epochsisalreadyamapping{'x':1},notasinglevalue"),
    (["a.b.c=1", "a.b.d=2", "a=3"], "'a=3'conflictswith'a.b.c=1':aisalreadyamapping"),
    (["a={b: 1}", "a.b.c=2"], "'a.b.c=2'conflictswith'a={b:1}':a.bisalreadysetto1,notamapping"),
])
def test_cli_downstream_bad_set_names_the_item(tmp_path, sets, expected):
    features = tmp_path / "f.h5"
    import h5py

    with h5py.File(features, "w") as f:
        f.create_dataset("v_a", data=[[0.0, 1.0]])
    args = ["downstream", "tal", "--features", str(features), "--profile", "smoke", "--out", str(tmp_path / "out")]
    out = _fails_cleanly(args + [a for s in sets for a in ("--set", s)], 2)
    assert "--set" in out and expected in _flat(out)
    assert not (tmp_path / "out").exists()


def test_cli_downstream_non_hdf5_features_names_the_file(tmp_path):
    fake = tmp_path / "features.h5"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n not features")
    out = _fails_cleanly(["downstream", "tal", "--features", str(fake), "--profile", "smoke", "--out", str(tmp_path / "out")], 2)
    assert f"{fake}:notanHDF5featurefile" in _flat(out)
    assert not (tmp_path / "out").exists()


def test_cli_downstream_features_of_other_videos_names_the_file(tmp_path):
    import h5py

    annotations = tmp_path / "anet.json"
    annotations.write_text('{"version": "1.3", "taxonomy": [], "database": {'
                           '"v_a": {"subset": "validation", "duration": 20.0, "annotations": [{"segment": [2.0, 8.0], "label": "jump"}]},'
                           '"v_c": {"subset": "training", "duration": 20.0, "annotations": [{"segment": [5.0, 9.0], "label": "run"}]}}}')
    dataset_config = tmp_path / "anet.yaml"
    dataset_config.write_text(f"format: activitynet-json\nannotations: [{annotations}]\n")
    features = tmp_path / "other.h5"
    with h5py.File(features, "w") as f:
        f.create_dataset("v_zz", data=[[0.0, 1.0]] * 4)
    out = _fails_cleanly(["downstream", "tal", "--features", str(features), "--profile", "smoke", "--dataset-config",
                          str(dataset_config), "--out", str(tmp_path / "out")], 2)
    assert f"{features}: none of the 1 training videos" in out and "has features" in out


# --------------------------------------------------------------------------- pretrain / extract
def _real_data_profile(tmp_path):
    """A profile on a tiny hand-written ActivityNet file: nothing is generated."""
    annotations = tmp_path / "anet.json"
    annotations.write_text('{"version": "1.3", "taxonomy": [], "database": {'
                           '"v_a": {"subset": "training", "duration": 20.0, "annotations": [{"segment": [2.0, 8.0], "label": "jump"}]}}}')
    profile = tmp_path / "prof.yaml"
    profile.write_text("base: smoke\nname: tiny\nencoder: {weights: null}\ndata:\n  synthetic: false\n  datasets:\n"
                       f"    activitynet: {{format: activitynet-json, annotations: [{annotations}], videos: {tmp_path / 'videos'}}}\n")
    return profile


def test_cli_extract_unknown_dataset_lists_the_known_ones(tmp_path):
    import torch

    from clap_bench.config import to_dict
    from clap_bench.encoders.video import build_video_encoder
    from clap_bench.training.trainer import CHECKPOINT_FORMAT

    profile = _real_data_profile(tmp_path)
    encoder_cfg = load_profile(str(profile)).encoder
    checkpoint = tmp_path / "final.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "meta": {"encoder": to_dict(encoder_cfg)},
                "model": build_video_encoder(encoder_cfg, weights=None).state_dict()}, checkpoint)
    out = _fails_cleanly(["extract", "-c", str(checkpoint), "-d", "nosuch", "-o", str(tmp_path / "f.h5"), "-p", str(profile),
                          "--no-progress"], 2)
    assert "'nosuch'" in out and "known: activitynet" in out
    assert not (tmp_path / "f.h5").exists()


def test_cli_extract_foreign_checkpoint_names_the_file(tmp_path):
    import torch

    checkpoint = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint)
    out = _fails_cleanly(["extract", "-c", str(checkpoint), "-d", "activitynet", "-o", str(tmp_path / "f.h5"),
                          "-p", str(_real_data_profile(tmp_path)), "--no-progress"], 2)
    assert f"{checkpoint}: not a pre-training checkpoint" in out


def test_cli_pretrain_classes_file_not_found_names_it(tmp_path):
    missing = tmp_path / "nosuch.txt"
    args = ["pretrain", "-m", "clap", "-p", str(_real_data_profile(tmp_path)), "-o", str(tmp_path / "pt"), "--no-progress"]
    out = _fails_cleanly(args + ["--classes", str(missing)], 2)
    assert f"--classes {missing}: no such file" in out and "base, val, test" in out
    empty = tmp_path / "empty.txt"
    empty.write_text("# no classes\n")
    out = _fails_cleanly(args + ["--classes", str(empty)], 2)
    assert f"--classes {empty}: no class names" in out
    assert not (tmp_path / "pt").exists()


# --------------------------------------------------------------------------- table / analyze
def _tiny_store(tmp_path):
    """A profile YAML named 'tiny' (two validation videos, v_a and v_b) and a store where tsp and clap
    predicted v_a only."""
    import json

    from test_figures import _tiny_profile

    profile = _tiny_profile(tmp_path)
    for method in ("tsp", "clap"):
        stage = tmp_path / "runs" / "tiny" / method / "seed0" / "tal"
        stage.mkdir(parents=True)
        (stage / "predictions.json").write_text(json.dumps({"results": {"v_a": [{"label": "jump", "score": 0.5, "segment": [1.0, 7.0]}]}}))
    return profile, tmp_path / "runs"


def test_cli_timelines_video_without_predictions_names_it_and_the_methods(tmp_path):
    profile, runs = _tiny_store(tmp_path)
    out = _fails_cleanly(["analyze", "timelines", "-m", "tsp", "-m", "clap", "--profile", str(profile), "--video", "v_b",
                          "-o", str(tmp_path / "t.png"), "--runs-dir", str(runs)], 2)
    assert "--video v_b" in out and "tsp, clap" in out
    assert not (tmp_path / "t.png").exists()


@pytest.mark.parametrize("count", ["0", "-1"])
def test_cli_timelines_refuses_fewer_than_one_video(tmp_path, count):
    profile, runs = _tiny_store(tmp_path)
    out = _fails_cleanly(["analyze", "timelines", "-m", "tsp", "-m", "clap", "--profile", str(profile), "--videos", count,
                          "-o", str(tmp_path / "t.png"), "--runs-dir", str(runs)], 2)
    assert "--videos" in out
    assert not (tmp_path / "t.png").exists()


def test_cli_feature_quality_non_hdf5_file_names_it(tmp_path):
    profile, _ = _tiny_store(tmp_path)
    fake = tmp_path / "features.h5"
    fake.write_text("not features\n")
    out = _fails_cleanly(["analyze", "feature-quality", "-m", f"features:{fake}", "--profile", str(profile),
                          "-o", str(tmp_path / "fq.png")], 2)
    assert f"{fake}: not an HDF5 feature file" in out
    assert not (tmp_path / "fq.png").exists()


def test_cli_table_of_a_profile_without_runs_lists_the_stores_profiles(tmp_path):
    _, runs = _tiny_store(tmp_path)
    (runs / "smoke").mkdir()
    out = _fails_cleanly(["table", "--profile", "nosuch", "--runs-dir", str(runs)], 2)
    assert "no runs of profile 'nosuch'" in out and "it has runs of: smoke, tiny" in out
