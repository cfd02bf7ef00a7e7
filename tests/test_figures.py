"""The figures: Fig. 2a histograms of several methods on one PNG, Fig. 2b timelines, curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from clap_bench.data.schema import AnnotationSet, Segment, Video

matplotlib.use("Agg")


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved during the test: its legend texts and y tick labels, read before it is closed."""
    from matplotlib.figure import Figure

    seen = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        legends = [t.get_text() for leg in ([self.legends[0]] if self.legends else []) + [a.get_legend() for a in self.axes if a.get_legend()] for t in leg.get_texts()]
        ticks = [[t.get_text() for t in a.get_yticklabels()] for a in self.axes]
        seen.append({"legend": legends, "yticks": ticks, "titles": [a.get_title(loc="left") or a.get_title() for a in self.axes]})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_feature_quality_histograms_of_two_methods_share_one_png(tmp_path, saved_figures):
    from clap_bench.runs.feature_quality import plot_histogram

    rng = np.random.default_rng(0)
    out = plot_histogram({"tsp": rng.normal(0.1, 0.1, 30), "clap": rng.normal(0.3, 0.1, 30)}, tmp_path / "fig2a.png")
    assert _is_png(out)
    legend = saved_figures[-1]["legend"]
    assert any(t.startswith("tsp (n=30") for t in legend) and any(t.startswith("clap (n=30") for t in legend)


def _annotations() -> AnnotationSet:
    videos = {
        "v_a": Video("v_a", 20.0, "validation", segments=[Segment(2.0, 6.0, "jump"), Segment(10.0, 15.0, "run")]),
        "v_b": Video("v_b", 12.0, "validation", segments=[Segment(1.0, 4.0, "swim")]),
        "v_c": Video("v_c", 9.0, "validation", segments=[]),
    }
    return AnnotationSet("test", "memory", videos, ["jump", "run", "swim"])


def _predictions(shift: float) -> dict:
    return {"results": {
        "v_a": [{"label": "jump", "score": 0.9, "segment": [2.0 + shift, 6.0]}, {"label": "run", "score": 0.5, "segment": [9.0, 15.0 + shift]},
                {"label": "swim", "score": 0.1, "segment": [0.0, 1.0]}],
        "v_b": [{"label": "swim", "score": 0.7, "segment": [1.0, 4.0 - shift]}],
        "v_c": [{"label": "run", "score": 0.2, "segment": [0.0, 2.0]}],
    }}


def test_timelines_draw_ground_truth_and_every_methods_top_predictions(tmp_path, saved_figures):
    from clap_bench.runs.timelines import pick_videos, plot_timelines

    ann = _annotations()
    preds = {"tsp": _predictions(0.5), "clap": _predictions(0.0)}
    videos = pick_videos(ann, preds, 5)
    assert videos == ["v_a", "v_b"]  # v_c has no ground-truth action
    labels = plot_timelines(ann, preds, videos, tmp_path / "fig2b.png", top_k=2)
    assert _is_png(tmp_path / "fig2b.png")
    assert labels == {"v_a": ["ground truth", "tsp", "clap"], "v_b": ["ground truth", "tsp", "clap"]}
    fig = saved_figures[-1]
    assert fig["yticks"] == [["ground truth", "tsp", "clap"]] * 2
    assert fig["legend"] == ["ground truth", "tsp (top 2)", "clap (top 2)"]
    assert fig["titles"][0].startswith("v_a (20.0 s)")
    with pytest.raises(ValueError, match="no video to draw"):
        plot_timelines(ann, preds, [], tmp_path / "none.png")


def test_timelines_command_reads_the_run_store(tmp_path, saved_figures):
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.config import load_profile, resolve_datasets
    from clap_bench.data import load_dataset

    ann = load_dataset(resolve_datasets(load_profile("smoke"))["activitynet"], "activitynet").subset("validation")
    vid = sorted(v for v in ann.videos if ann.videos[v].actions)[0]
    label = ann.videos[vid].actions[0].label
    for method in ("tsp", "clap"):
        stage = tmp_path / "smoke" / method / "seed0" / "tal"
        stage.mkdir(parents=True)
        (stage / "predictions.json").write_text(json.dumps({"results": {vid: [{"label": label, "score": 0.5, "segment": [0.0, 2.0]}]}}))
    out = tmp_path / "t.png"
    result = CliRunner().invoke(app, ["analyze", "timelines", "-m", "tsp", "-m", "clap", "--profile", "smoke",
                                      "--video", vid, "-o", str(out), "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert _is_png(out) and saved_figures[-1]["yticks"] == [["ground truth", "tsp", "clap"]]
    missing = CliRunner().invoke(app, ["analyze", "timelines", "-m", "tsp", "-m", "tac", "--profile", "smoke",
                                       "--runs-dir", str(tmp_path)])
    assert missing.exit_code == 2 and "no tal predictions for tac seed 0" in missing.output


def test_curves_print_and_draw_each_methods_validation_figures(tmp_path, saved_figures):
    from typer.testing import CliRunner

    from clap_bench.cli import app

    for method, gain in (("tsp", 0.1), ("clap", 0.2)):
        stage = tmp_path / "default" / method / "seed0" / "pretrain"
        stage.mkdir(parents=True)
        records = [{"epoch": 0, "val_loss": 4.0, "val_class_acc": 0.05, "val_class_acc_chance": 0.05}]
        records += [{"epoch": e, "loss": 3.0, "val_loss": 4.0 - e * gain, "val_class_acc": 0.05 + e * gain} for e in (1, 2)]
        (stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "curves.png"
    result = CliRunner().invoke(app, ["curves", "-m", "tsp", "-m", "clap", "--profile", "default", "-o", str(out),
                                      "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "clap, seed 0" in result.output and "3.6000" in result.output and "val class acc 0.050" in result.output
    assert _is_png(out)
    assert saved_figures[-1]["legend"] == ["tsp s0", "clap s0"]
    none = CliRunner().invoke(app, ["curves", "-m", "tac", "--runs-dir", str(tmp_path)])
    assert none.exit_code == 2 and "no pretrain stage" in none.output


def test_table_plot_draws_every_seed_and_the_mean_of_each_method(tmp_path, saved_figures):
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.io import atomic_write_json
    from clap_bench.runs import RunStore

    store = RunStore(tmp_path / "runs")
    for method, values in {"none": [0.10, 0.11, 0.12], "tsp": [0.11, 0.12], "clap": [0.13, 0.12, 0.14]}.items():
        for seed, v in enumerate(values):
            d = store.stage_dir("p", method, seed, "tal")
            d.mkdir(parents=True)
            atomic_write_json(d / "stage.json", {"status": "done", "method": method, "hash": "x"})
            atomic_write_json(d / "metrics.json", {"mAP@0.5": v, "mAP@0.75": v, "mAP@0.95": v, "average_mAP": v})
    out = tmp_path / "table1.png"
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--profile", "p", "--baseline", "none", "--no-paper",
                                      "--runs-dir", str(tmp_path / "runs"), "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert _is_png(out)
    fig = saved_figures[-1]
    # first table row on top: the paper's method order, none, TSP, CLAP
    assert fig["yticks"] == [["CLAP (n=3)", "TSP (n=2)", "none (initial weights) (n=3)"]]
    assert sorted(fig["legend"]) == ["mean, 95% CI", "none (initial weights) mean", "one seed"]
    assert fig["titles"][0].startswith("Table 1: ")
    # a profile with no finished seed: a clear error, no file
    running = store.stage_dir("empty", "clap", 0, "tal")
    running.mkdir(parents=True)
    atomic_write_json(running / "stage.json", {"status": "running", "method": "clap", "hash": "x"})
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--profile", "empty", "--runs-dir", str(tmp_path / "runs"),
                                      "--plot", str(tmp_path / "none.png")])
    assert result.exit_code == 2 and "no finished seed" in result.output and not (tmp_path / "none.png").exists()


def test_table_plot_paired_draws_the_seed_by_seed_differences_from_the_baseline(tmp_path, saved_figures, monkeypatch):
    import clap_bench.runs.tables as tables_module
    from clap_bench.io import atomic_write_json
    from clap_bench.runs import RunStore, make_tables
    from clap_bench.runs.tables import plot_tables

    store = RunStore(tmp_path / "runs")
    for method, values in {"tsp": [0.09, 0.10, 0.10, 0.11], "clap": [0.10, 0.12, 0.11, 0.13], "tac": [0.08, 0.11]}.items():
        for seed, v in enumerate(values):
            d = store.stage_dir("p", method, seed, "tal")
            d.mkdir(parents=True)
            atomic_write_json(d / "metrics.json", {"mAP@0.5": v, "mAP@0.75": v, "mAP@0.95": v, "average_mAP": v})
    drawn = []
    save = tables_module.save_figure
    monkeypatch.setattr(tables_module, "save_figure", lambda fig, out, **kw: (drawn.append(fig), save(fig, out, **kw)))
    out = tmp_path / "paired.png"
    [labels] = plot_tables(make_tables(store, "p", ["1"], baseline="tsp", include_paper=False, test="paired"), out)
    assert _is_png(out)
    # the compared rows only, the first table row on top; the baseline has no row of its own
    assert labels == ["CLAP (n=4)", "TAC (n=2)"] and saved_figures[-1]["yticks"] == [labels]  # bottom to top
    assert sorted(saved_figures[-1]["legend"]) == ["mean difference, paired 95% CI", "no difference from TSP",
                                                   "one seed: minus the baseline's same seed"]
    # the dots are the seed-by-seed differences in points: clap 1, 2, 1, 2 (y 0), tac -1, +1 (y 1, on top)
    [ax] = drawn[-1].axes
    dots = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets()) in (2, 4)])
    assert sorted(map(tuple, np.round(dots, 6))) == [(-1.0, 1.0), (1.0, 0.0), (1.0, 0.0), (1.0, 1.0), (2.0, 0.0), (2.0, 0.0)]
    # Welch's table keeps the drawing of every seed's figure, the baseline's row included
    [welch_labels] = plot_tables(make_tables(store, "p", ["1"], baseline="tsp", include_paper=False), tmp_path / "w.png")
    assert welch_labels == ["CLAP (n=4)", "TSP (n=4)", "TAC (n=2)"]


def _tiny_profile(tmp_path: Path) -> Path:
    """A profile YAML named 'tiny' (not built in) on a hand-written ActivityNet file with two validation videos."""
    annotations = tmp_path / "anet.json"
    annotations.write_text(json.dumps({"version": "1.3", "taxonomy": [], "database": {
        "v_a": {"subset": "validation", "duration": 20.0, "annotations": [{"segment": [2.0, 8.0], "label": "jump"}]},
        "v_b": {"subset": "validation", "duration": 20.0, "annotations": [{"segment": [5.0, 9.0], "label": "run"}]}}}))
    profile = tmp_path / "tiny.yaml"
    profile.write_text("base: smoke\nname: tiny\ndata:\n  synthetic: false\n  datasets:\n"
                       f"    activitynet: {{format: activitynet-json, annotations: [{annotations}]}}\n")
    return profile


def _tiny_predictions(runs: Path, methods=("tsp", "clap")) -> None:
    for method in methods:
        stage = runs / "tiny" / method / "seed0" / "tal"
        stage.mkdir(parents=True)
        (stage / "predictions.json").write_text(json.dumps({"results": {"v_a": [{"label": "jump", "score": 0.5, "segment": [1.0, 7.0]}]}}))


def test_timelines_find_a_yaml_profiles_runs_under_its_name(tmp_path, saved_figures):
    """--profile FILE.yaml reads the store folder of the profile's name; --profile NAME of a profile
    that is not built in reads the config the store recorded for it."""
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.config import load_profile, to_dict
    from clap_bench.io import atomic_write_json

    profile, runs = _tiny_profile(tmp_path), tmp_path / "runs"
    _tiny_predictions(runs)
    for arg in (str(profile), "tiny"):
        if arg == "tiny":
            atomic_write_json(runs / "tiny" / "profile.json", to_dict(load_profile(str(profile))))
        out = tmp_path / f"t-{arg[-4:]}.png"
        result = CliRunner().invoke(app, ["analyze", "timelines", "-m", "tsp", "-m", "clap", "--profile", arg,
                                          "-o", str(out), "--runs-dir", str(runs)])
        assert result.exit_code == 0, result.output
        assert _is_png(out) and "1 videos: v_a" in result.output


def test_feature_quality_finds_a_yaml_profiles_runs_under_its_name(tmp_path):
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.config import load_profile, to_dict
    from clap_bench.io import atomic_write_json

    profile, runs = _tiny_profile(tmp_path), tmp_path / "runs"
    atomic_write_json(runs / "tiny" / "profile.json", to_dict(load_profile(str(profile))))
    expected = runs / "tiny" / "clap" / "seed0" / "extract-activitynet"
    for arg in (str(profile), "tiny"):
        result = CliRunner().invoke(app, ["analyze", "feature-quality", "-m", "clap", "--profile", arg, "--runs-dir", str(runs),
                                          "-o", str(tmp_path / "fq.png")])
        assert result.exit_code == 2 and f"{expected}: no finished feature extraction" in result.output, result.output


def test_table_of_a_yaml_profile_reads_the_runs_of_its_name(tmp_path):
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.io import atomic_write_json
    from clap_bench.runs import RunStore

    store = RunStore(tmp_path / "runs")
    d = store.stage_dir("tiny", "clap", 0, "tal")
    d.mkdir(parents=True)
    atomic_write_json(d / "stage.json", {"status": "done", "method": "clap", "hash": "x"})
    atomic_write_json(d / "metrics.json", {"mAP@0.5": 0.3, "mAP@0.75": 0.2, "mAP@0.95": 0.05, "average_mAP": 0.2})
    result = CliRunner().invoke(app, ["table", "--tables", "1", "--no-paper", "--profile", str(_tiny_profile(tmp_path)),
                                      "--runs-dir", str(store.root)])
    assert result.exit_code == 0, result.output
    assert "20.00" in result.output


def test_curves_name_the_methods_and_seeds_without_records(tmp_path):
    from typer.testing import CliRunner

    from clap_bench.cli import app

    stage = tmp_path / "default" / "clap" / "seed0" / "pretrain"
    stage.mkdir(parents=True)
    (stage / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "val_loss": 4.0}) + "\n")
    (tmp_path / "default" / "clap" / "seed1" / "pretrain").mkdir(parents=True)
    result = CliRunner().invoke(app, ["curves", "-m", "clap", "-m", "tspp", "--profile", "default", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "clap, seed 0" in result.output
    assert "no pretrain stage with per-epoch records for clap seed 1; tspp in" in result.output
    result = CliRunner().invoke(app, ["curves", "-m", "clap", "-m", "tspp", "--seeds", "0,2", "--profile", "default",
                                      "--runs-dir", str(tmp_path)])
    assert "records for clap seed 2; tspp (seeds 0, 2) in" in result.output


def test_curves_skip_a_record_being_written_and_name_a_damaged_line(tmp_path):
    from typer.testing import CliRunner

    from clap_bench.cli import app
    from clap_bench.training.trainer import read_epoch_records

    stage = tmp_path / "default" / "clap" / "seed0" / "pretrain"
    stage.mkdir(parents=True)
    log = stage / "metrics.jsonl"
    log.write_text(json.dumps({"epoch": 0, "val_loss": 4.0}) + "\n" + '{"epoch": 1, "val_lo')  # epoch 1 being appended
    assert read_epoch_records(stage) == [{"epoch": 0, "val_loss": 4.0}]
    result = CliRunner().invoke(app, ["curves", "-m", "clap", "--profile", "default", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0 and "clap, seed 0" in result.output, result.output
    log.write_text(json.dumps({"epoch": 0, "val_loss": 4.0}) + "\n" + '{"epoch": 1, "val_lo\n' + json.dumps({"epoch": 2}) + "\n")
    result = CliRunner().invoke(app, ["curves", "-m", "clap", "--profile", "default", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert f"{log}: line 2 is not a JSON record" in result.output
