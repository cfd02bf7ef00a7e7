"""Plug-in methods and tasks: discovery (--import, profile imports, entry points), errors naming
the plug-in, stage hashes, the example method end to end, and its loss under two gloo processes."""

from __future__ import annotations

import csv
import importlib
import io
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from clap_bench.cli import app
from clap_bench.config import ConfigError, ContrastiveConfig, load_profile
from clap_bench.methods import METHODS, PluginError, compute_losses, create_method, list_methods
from clap_bench.plugins import PluginImportError, import_modules, load_entry_points, method_identity

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "my_method"
runner = CliRunner()


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A folder on the import path for plug-in modules; the registries and modules are restored after."""
    from clap_bench.downstream.base import TASKS, list_tasks

    list_methods()  # discovery of both registries done before the snapshot: restoring a snapshot
    list_tasks()  # taken before it would drop the built-ins that discovery registers
    saved = [(r, dict(r._entries), dict(r._origins), r._discovered) for r in (METHODS, TASKS)]
    folder = tmp_path / "plugins"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for registry, entries, origins, discovered in saved:
        registry._entries, registry._origins, registry._discovered = entries, origins, discovered
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith((str(folder), str(EXAMPLE))):
            del sys.modules[name]


def _write(folder: Path, name: str, source: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


# ---------------------------------------------------------------- discovery
def test_imported_example_registers_my_method_and_list_names_its_module(plugin_dir):
    result = runner.invoke(app, ["list", "methods", "my*", "--import", "my_method"])
    assert result.exit_code == 0, result.output
    assert "my-method" in result.output and "module my_method (--import)" in result.output
    method = create_method("my-method", hard_negative_weight=3.0)
    assert method.hard_negative_weight == 3.0 and method.uses_text and method.uses_captions
    with pytest.raises(ConfigError, match="methods.my-method: unknown key"):
        create_method("my-method", bogus=1)
    builtin = runner.invoke(app, ["list", "methods", "tsp"])
    assert "built-in" in builtin.output


def test_profile_imports_load_the_plugin(plugin_dir, tmp_path):
    from clap_bench.plugins import load_profile_imports

    (tmp_path / "p.yaml").write_text("base: smoke\nname: p\nimports: [my_method]\nmethods:\n  my-method: {hard_negative_weight: 4.0}\n")
    profile = load_profile(str(tmp_path / "p.yaml"))
    assert profile.imports == ["my_method"]
    load_profile_imports(profile)
    assert METHODS.origin("my-method") == f"module my_method (profile {profile.name!r}: imports)"


def _dist_info(folder: Path, dist: str, entry_points: str) -> None:
    info = folder / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    importlib.invalidate_caches()


def test_entry_point_class_is_registered_under_its_name_with_the_distribution(plugin_dir):
    _write(plugin_dir, "ep_plugin", """
        from dataclasses import dataclass
        from clap_bench.methods import MethodConfig

        @dataclass
        class RegionOnly(MethodConfig):
            summary = "region head alone"
            region_head: bool = True
    """)
    _dist_info(plugin_dir, "ep-plugin", """
        [clap_bench.methods]
        region-only = ep_plugin:RegionOnly
    """)
    METHODS._discovered = False
    assert "region-only" in list_methods()
    assert METHODS.origin("region-only") == "entry point region-only = ep_plugin:RegionOnly (ep-plugin 1.2.3)"
    identity = method_identity("region-only")
    assert identity["code"]["distribution"] == "ep-plugin" and identity["code"]["version"] == "1.2.3"


# ---------------------------------------------------------------- bad plug-ins
@pytest.mark.parametrize("direct_url, editable", [
    ('{"url": "file:///src/p", "dir_info": {"editable": true}}', True),  # pip
    ('{"url":"file:///src/p","dir_info":{"editable":true}}', True),  # compact, as other installers write it
    ('{"url": "file:///src/p", "dir_info": {}}', False),
    ('{"url": "https://x/p-1.0.tar.gz", "archive_info": {}}', False),
    ("not json", False),
])
def test_an_editable_install_is_read_from_its_direct_url_record_however_it_is_spaced(direct_url, editable):
    # An editable plug-in is identified by its source (so editing it makes new stages); others by version.
    from clap_bench.plugins import _is_editable

    class Dist:
        def read_text(self, name):
            return direct_url if name == "direct_url.json" else None

    assert _is_editable(Dist()) is editable


def test_module_raising_on_import_is_an_error_naming_it(plugin_dir):
    _write(plugin_dir, "broken_plugin", "raise RuntimeError('no GPU here')\n")
    with pytest.raises(PluginImportError, match=r"plug-in module 'broken_plugin' \(--import\) failed to import: RuntimeError: no GPU here"):
        import_modules(["broken_plugin"])
    result = runner.invoke(app, ["run", "--method", "clap", "--profile", "smoke", "--import", "broken_plugin", "--dry-run"])
    assert result.exit_code == 2 and "broken_plugin" in result.output and "no GPU here" in result.output


def test_class_that_is_not_a_method_is_an_error_naming_it(plugin_dir):
    _write(plugin_dir, "not_a_method", """
        from clap_bench.methods import register_method

        @register_method("plain")
        class Plain:
            pass
    """)
    with pytest.raises(PluginImportError, match=r"'not_a_method'.*not_a_method\.Plain is not a method"):
        import_modules(["not_a_method"])
    _dist_info(plugin_dir, "bad-ep", """
        [clap_bench.methods]
        dict-method = collections:OrderedDict
    """)
    with pytest.raises(PluginImportError, match=r"entry point dict-method = collections:OrderedDict \(bad-ep 1.2.3\).*is not a method"):
        load_entry_points("clap_bench.methods")


def test_duplicate_name_is_an_error_naming_both_sources(plugin_dir):
    _write(plugin_dir, "dupe_plugin", """
        from dataclasses import dataclass
        from clap_bench.methods import MethodConfig, register_method

        @register_method("tsp")
        @dataclass
        class MyTSP(MethodConfig):
            class_head: bool = True
    """)
    with pytest.raises(PluginImportError, match=r"'tsp' is registered twice: by built-in \(clap_bench.methods.zoo.TSP\) "
                                                r"and by module dupe_plugin \(--import\) \(dupe_plugin.MyTSP\)"):
        import_modules(["dupe_plugin"])


@pytest.mark.parametrize("kind, name, message", [
    ("method", "_shared", "expected letters, digits"),  # the store's folder of the source model
    ("method", "my/method", "expected letters, digits"),
    ("method", "features:x", "expected letters, digits"),  # what --method reads as a feature file
    ("task", "pretrain", "the pretrain stage's folder"),
    ("task", "pretrain-base", "the pretrain-base stage's folder"),
    ("task", "extract-activitynet", "extract-<dataset>"),
    ("task", "source", "the source stage's folder"),
    ("task", "a,b", "expected letters, digits"),  # what --tasks splits
])
def test_a_plugin_name_that_cannot_be_its_own_run_store_folder_is_an_error_naming_it(plugin_dir, kind, name, message):
    """A method is the folder <profile>/<method>/ and a task the stage folder seed<k>/<task>/: a name
    that is another stage's folder or no folder at all would mix their records."""
    if kind == "method":
        source = f"""
            from dataclasses import dataclass
            from clap_bench.methods import MethodConfig, register_method

            @register_method({name!r})
            @dataclass
            class Odd(MethodConfig):
                class_head: bool = True
        """
    else:
        source = f"""
            from dataclasses import dataclass
            from clap_bench.downstream.base import register_task

            @dataclass
            class OddConfig:
                minimum: int = 0

            @register_task({name!r}, OddConfig, ("activitynet",))
            def odd(ctx):
                return {{}}
        """
    _write(plugin_dir, "odd_name", source)
    with pytest.raises(PluginImportError, match=rf"'odd_name'.*{re.escape(repr(name))}.*{re.escape(message)}"):
        import_modules(["odd_name"])


def test_loss_returning_a_non_scalar_is_an_error_naming_the_plugin(plugin_dir):
    _write(plugin_dir, "vector_loss", """
        from dataclasses import dataclass
        from clap_bench.methods import MethodConfig, register_method

        @register_method("vector-loss")
        @dataclass
        class VectorLoss(MethodConfig):
            class_head: bool = True

            def loss_terms(self, model, out, batch, dist):
                return {"per_clip": out["class_logits"].sum(1)}, {}
    """)
    import_modules(["vector_loss"])
    model = _tiny_model(create_method("vector-loss"))
    out = model(torch.randn(4, 3, 2, 8, 8))
    batch = {"label": torch.tensor([0, 1, 0, 1]), "region": torch.ones(4, dtype=torch.long), "texts": ["a"] * 4, "video_ids": ["v"] * 4}
    with pytest.raises(PluginError, match=r"method 'vector-loss' \(vector_loss.VectorLoss\): loss term 'per_clip' must be a scalar tensor, got \(4,\)"):
        compute_losses(model, out, batch)


def _tiny_model(method):
    from torch import nn

    from clap_bench.methods import PretrainModel

    class Backbone(nn.Module):
        out_dim = 6

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 2 * 8 * 8, 6)

        def forward(self, x):
            return self.fc(x.flatten(1))

    return PretrainModel(Backbone(), method, num_classes=2, text_dim=5, embed_dim=4)


# ---------------------------------------------------------------- run store hashes
def test_plugin_code_and_config_are_in_the_pretrain_hash_and_builtins_are_unchanged(plugin_dir):
    from clap_bench.runs.plan import build_plan

    source = (EXAMPLE / "my_method.py").read_text()
    _write(plugin_dir, "hash_plugin", source.replace('"my-method"', '"hash-method"'))
    profile = load_profile("smoke")
    profile.imports = ["hash_plugin"]

    def hashes(p):
        plan = build_plan(p, ["hash-method", "clap"], [0], ["tal"])
        return plan.hashes["hash-method/seed0/pretrain"], plan.hashes["clap/seed0/pretrain"], plan.hashes["hash-method/seed0/tal"]

    first, clap_first, tal_first = hashes(profile)
    assert "method_plugin" not in build_plan(profile, ["clap"], [0], ["tal"]).stages["clap/seed0/pretrain"].config
    _write(plugin_dir, "hash_plugin", source.replace('"my-method"', '"hash-method"') + "\n# a changed plug-in\n")
    second, clap_second, tal_second = hashes(profile)
    assert second != first and tal_second != tal_first  # the stage and everything below it
    assert clap_second == clap_first
    profile.methods = {"hash-method": {"hard_negative_weight": 5.0}}
    assert hashes(profile)[0] not in (first, second)


# ---------------------------------------------------------------- the gathered loss, 2 gloo processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HEADS_OFF = {"class_head": False, "region_head": False}  # the contrastive term alone
CASES = (("clap", HEADS_OFF), ("my-method", {**HEADS_OFF, "hard_negative_weight": 1.0}),
         ("my-method", {**HEADS_OFF, "hard_negative_weight": 2.0}))


def _contrastive(name, overrides, out, batch, **dist):
    """The contrastive term of method ``name`` and its gradient with respect to z_v, z_t."""
    from types import SimpleNamespace

    model = SimpleNamespace(method=create_method(name, **overrides), contrastive=ContrastiveConfig(),
                            logit_scale=lambda: torch.tensor(1 / 0.07))
    out = {k: v.clone().requires_grad_(True) for k, v in out.items()}
    term = model.method.loss_terms(model, out, batch, _dist(**dist))[0]["contrastive"]
    term.backward()
    return term.detach(), torch.cat([out["z_v"].grad, out["z_t"].grad], dim=1)


def _dist(**kw):
    from clap_bench.methods import DistContext

    return DistContext(**kw)


def _gloo_worker(rank, world, port, data, result_dir):
    import torch.distributed as dist

    from clap_bench.training.distributed import gather_no_grad, gather_with_grad

    importlib.import_module("my_method")  # as --import does in every process
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    out_all, batch_all, split = data
    lo, hi = split[rank], split[rank + 1]
    out = {k: v[lo:hi] for k, v in out_all.items()}
    batch = {k: v[lo:hi] for k, v in batch_all.items()}
    results = []
    for name, overrides in CASES:
        loss, grad = _contrastive(name, overrides, out, batch, gather=gather_with_grad, gather_no_grad=gather_no_grad,
                                  rank=rank, world_size=world)
        dist.all_reduce(loss)
        results.append({"loss": loss / world, "grad": grad})
    torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_gloo_processes_gather_the_plugins_negatives_like_the_builtin_clap(plugin_dir, tmp_path):
    importlib.import_module("my_method")
    g = torch.Generator().manual_seed(3)
    n = 9  # uneven split over the processes: 5 + 4
    out = {"z_v": torch.randn(n, 6, generator=g), "z_t": torch.randn(n, 6, generator=g)}
    batch = {
        "label": torch.zeros(n, dtype=torch.long),
        "region": torch.tensor([1, 1, 0, 1, 0, 1, 0, 1, 1]),
        "texts": ["a", "a", "bg", "c", "bg", "d", "bg", "e", "f"],
        # same-video pairs within and across the two processes' halves
        "video_ids": ["v1", "v1", "v2", "v3", "v1", "v2", "v3", "v2", "v1"],
    }
    split = [0, 5, 9]
    results_dir = tmp_path / "gloo"
    results_dir.mkdir()
    mp.spawn(_gloo_worker, args=(2, _free_port(), (out, batch, split), str(results_dir)), nprocs=2, join=True)
    ranks = [torch.load(results_dir / f"rank{r}.pt") for r in range(2)]

    single = [_contrastive(name, overrides, out, batch) for name, overrides in CASES]
    assert torch.equal(single[0][0], single[1][0]) and torch.equal(single[0][1], single[1][1])  # weight 1: exactly CLAP
    assert not torch.allclose(single[2][0], single[0][0])  # weight 2: a different loss
    for case, (loss, grad) in enumerate(single):
        for r, res in enumerate(ranks):
            assert res[case]["loss"].item() == pytest.approx(loss.item(), rel=1e-5), CASES[case]
            # each process's gradient, averaged over the processes as DDP does, is its rows' share
            torch.testing.assert_close(res[case]["grad"] / 2, grad[split[r] : split[r + 1]], rtol=1e-4, atol=1e-6)
        # and the plug-in under DDP gathers exactly as the built-in does (weight 1)
    for r in range(2):
        torch.testing.assert_close(ranks[r][1]["grad"], ranks[r][0]["grad"], rtol=0, atol=0)
        assert ranks[r][1]["loss"].item() == ranks[r][0]["loss"].item()


# ---------------------------------------------------------------- the example, end to end
@pytest.mark.slow
def test_example_method_runs_two_seeds_and_its_rows_are_in_the_tables(tmp_path):
    runs = tmp_path / "runs"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(EXAMPLE), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "clap_bench", "run", "--method", "my-method", "--seeds", "2", "--profile", "smoke",
           "--runs-dir", str(runs), "--import", "my_method", "-q"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for seed in (0, 1):
        assert (runs / "smoke" / "my-method" / f"seed{seed}" / "tal" / "metrics.json").exists()
    table = subprocess.run([sys.executable, "-m", "clap_bench", "table", "--format", "csv", "--profile", "smoke",
                            "--runs-dir", str(runs)], capture_output=True, text=True, env=env, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    rows = [r for r in csv.DictReader(io.StringIO(table.stdout)) if r.get("method") == "my-method"]
    assert {r["table"] for r in rows} >= {"1", "2a", "2b", "3"}
    assert all(r["n"] == "2" for r in rows)


def test_plugin_task_is_listed_and_planned_on_the_features_it_declares(plugin_dir):
    from clap_bench.runs.plan import build_plan, parse_tasks

    _write(plugin_dir, "task_plugin", """
        from dataclasses import dataclass
        import h5py
        from clap_bench.downstream.base import register_task

        @dataclass
        class CountConfig:
            minimum: int = 0

        @register_task("count-videos", CountConfig, ("activitynet",), "videos with features (example task)")
        def count_videos(ctx):
            with h5py.File(ctx.features["activitynet"], "r") as f:
                return {"videos": float(len(f))}
    """)
    result = runner.invoke(app, ["list", "tasks", "count-*", "--import", "task_plugin"])
    assert result.exit_code == 0, result.output
    assert "count-videos" in result.output and "module task_plugin (--import)" in result.output
    profile = load_profile("smoke")
    profile.imports = ["task_plugin"]
    plan = build_plan(profile, ["clap"], [0], parse_tasks("tal,count-videos"))
    stage = plan.stages["clap/seed0/count-videos"]
    assert stage.deps == ("clap/seed0/extract-activitynet",)
    assert stage.config["task_plugin"]["module"] == "task_plugin"
    assert "task_plugin" not in plan.stages["clap/seed0/tal"].config
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        parse_tasks("nope")
