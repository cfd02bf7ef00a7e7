"""The `paper` profile states the paper's protocol: each switch of FIDELITY.md, read from the resolved
config (not the YAML text), and the behaviour each switch selects."""

from __future__ import annotations

import pytest

from clap_bench.config import load_profile
from clap_bench.encoders import TextModelNotFoundError, resolve_text_model


@pytest.fixture(scope="module")
def paper():
    return load_profile("paper")


def test_paper_text_encoder_is_bert(paper):
    assert paper.encoder.text_model == "bert-base-uncased"


def test_unavailable_text_model_says_what_to_fetch_and_which_key_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is found offline
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextModelNotFoundError) as err:
        resolve_text_model("no-such-org/no-such-text-model")
    message = str(err.value)
    assert "encoder.text_model" in message
    assert "huggingface-cli download no-such-org/no-such-text-model" in message
    assert str(tmp_path / "hf") in message
    with pytest.raises(TextModelNotFoundError, match="no config.json"):
        resolve_text_model(tmp_path)  # a folder that is not a model


def test_text_model_given_as_a_folder_is_used_as_is():
    bundled = resolve_text_model(None)
    assert resolve_text_model(str(bundled)) == bundled


# --------------------------------------------------------------------------- contrastive form, BN re-estimation
def test_paper_contrastive_form_and_bn_switch(paper):
    c = paper.pretrain.contrastive
    assert c.normalize is False  # Eq. 4: a plain dot product over tau
    assert c.duplicate_texts == "negatives"  # Eq. 4: every other text of the batch is a negative
    assert c.learn_temperature is False and c.temperature == pytest.approx(0.07)
    assert paper.pretrain.bn_reestimate is False  # neither the paper nor TSP re-estimates BatchNorm


def test_contrastive_form_switches_change_the_loss_as_stated():
    import torch
    import torch.nn.functional as F

    from clap_bench.methods import contrastive_terms, text_ids

    g = torch.Generator().manual_seed(0)
    z_v, z_t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    texts = ["bg", "bg", "run", "jump"]  # pairs 0 and 1 share a text
    ids = text_ids(texts)
    # normalize=False, negatives: Eq. 4 written out, dot product over tau, every other text a negative.
    v2t, t2v = contrastive_terms(z_v, z_t, ids, 1 / 0.5, normalize=False, duplicate_texts="negatives")
    assert torch.allclose(v2t, F.cross_entropy(z_v @ z_t.T / 0.5, torch.arange(4), reduction="none"))
    assert torch.allclose(t2v, F.cross_entropy(z_t @ z_v.T / 0.5, torch.arange(4), reduction="none"))
    # exclude: the other "bg" pair leaves the denominators of pairs 0 and 1 only.
    ex_v2t, _ = contrastive_terms(z_v, z_t, ids, 1 / 0.5, normalize=False, duplicate_texts="exclude")
    assert torch.equal(ex_v2t[2:], v2t[2:])
    logits = z_v @ z_t.T / 0.5
    for i, other in ((0, 1), (1, 0)):
        kept = [j for j in range(4) if j != other]
        assert ex_v2t[i] == pytest.approx(float(torch.logsumexp(logits[i, kept], 0) - logits[i, i]), rel=1e-5)
        assert ex_v2t[i] < v2t[i]
    # normalize=True: the same on L2-normalised embeddings.
    n_v2t, _ = contrastive_terms(z_v, z_t, ids, 1 / 0.5, normalize=True, duplicate_texts="negatives")
    expected = F.cross_entropy(F.normalize(z_v, dim=1) @ F.normalize(z_t, dim=1).T / 0.5, torch.arange(4), reduction="none")
    assert torch.allclose(n_v2t, expected)
    with pytest.raises(ValueError, match="duplicate_texts"):
        contrastive_terms(z_v, z_t, ids, 2.0, duplicate_texts="ignore")


def test_a_bad_switch_value_names_the_key_and_the_file():
    from clap_bench.config import ConfigError

    with pytest.raises(ConfigError, match=r"smoke\.yaml\.pretrain\.contrastive: contrastive\.duplicate_texts"):
        load_profile("smoke", overrides={"pretrain": {"contrastive": {"duplicate_texts": "ignore"}}})


DEFAULT_SWITCHES = {
    "contrastive": {"normalize": True, "duplicate_texts": "exclude", "learn_temperature": False},
    "bn_reestimate": True, "head_init_std": None, "short_segments": "keep", "gvf_scaling": "mean_norm",
    "caption_choice": "largest_overlap",
}
PAPER_SWITCHES = {
    "contrastive": {"normalize": False, "duplicate_texts": "negatives", "learn_temperature": True},
    "bn_reestimate": False, "head_init_std": 0.01, "short_segments": "drop", "gvf_scaling": "none",
    "caption_choice": "nearest_centre", "keep_epoch": "best",
}


@pytest.mark.parametrize("method", ["clap", "tsp"])
@pytest.mark.parametrize("switches", [DEFAULT_SWITCHES, PAPER_SWITCHES], ids=["default-form", "paper-form"])
def test_pretraining_switches_run_on_the_smoke_profile(switches, method, tmp_path):
    import torch

    from clap_bench.training import pretrain

    torch.set_num_threads(1)
    profile = load_profile("smoke", overrides={"pretrain": {**switches, "epochs": 1}})
    final = pretrain(profile, method, seed=0, out_dir=tmp_path, progress=False)
    state = torch.load(final, map_location="cpu", weights_only=False)
    for key, value in switches.items():
        if key == "contrastive":
            assert state["train"][key] == {**state["train"][key], **value}
        else:
            assert state["train"][key] == value, key
    assert state["kept_epoch"] == 1  # one epoch: keep_epoch best and last agree (a run of several: test_pretrain_batches)
    model = state["model"]
    if method == "clap":
        assert ("log_logit_scale" in model) is True  # a buffer when fixed, a parameter when learned
    # BatchNorm statistics: untouched after the last epoch when off, re-estimated when on.
    last_epoch = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    stats = [k for k in model if k.startswith("backbone.") and k.endswith("running_mean")]
    assert stats
    same = all(torch.equal(model[k], last_epoch[k]) for k in stats)
    assert same == (not switches["bn_reestimate"])


def test_head_initialisation_switch():
    import torch

    from clap_bench.config import EncoderConfig
    from clap_bench.encoders import build_video_encoder
    from clap_bench.methods import PretrainModel, create_method

    encoder = build_video_encoder(EncoderConfig(arch="r2plus1d_tiny", width=0.125))
    torch.manual_seed(0)
    tsp_init = PretrainModel(encoder, create_method("tsp"), 200, gvf_dim=encoder.out_dim, head_init_std=0.01)
    for head in (tsp_init.class_head, tsp_init.region_head):
        assert torch.count_nonzero(head.bias) == 0
        assert abs(float(head.weight.detach().std()) - 0.01) < 0.002
    torch.manual_seed(0)
    default = PretrainModel(encoder, create_method("tsp"), 200, gvf_dim=encoder.out_dim)
    assert torch.count_nonzero(default.class_head.bias) > 0  # PyTorch's uniform default


def test_short_segments_switch_drops_segments_shorter_than_a_clip():
    from clap_bench.clips import contiguous_segments
    from clap_bench.data.schema import Segment, Video

    video = Video("v", 20.0, "training", segments=[Segment(2.0, 2.5, "jump"), Segment(5.0, 12.0, "run"), Segment(12.0, 12.8, "jump")])
    kept = contiguous_segments(video)
    assert [(s.start, s.end, s.label) for s in kept if s.label] == [(2.0, 2.5, "jump"), (5.0, 12.0, "run"), (12.0, 12.8, "jump")]
    dropped = contiguous_segments(video, min_length=1.07, min_action_length=1.07)
    assert [(s.start, s.end, s.label) for s in dropped] == [(0.0, 2.0, None), (2.5, 5.0, None), (5.0, 12.0, "run"), (12.8, 20.0, None)]


def test_duplicate_segments_switch_samples_a_repeated_csv_row_once_or_as_often_as_listed(tmp_path):
    from clap_bench.clips import SegmentClipDataset
    from clap_bench.config import ClipConfig, ConfigError, TrainConfig, identity_dict
    from clap_bench.data import read_tsp_csv
    from clap_bench.training.pretrain import segment_rules

    header = "video-name,t-start,t-end,action-label,video-duration,filename,fps,video-frames,temporal-region-label"
    path = tmp_path / "anet_train_tsp.csv"
    path.write_text("\n".join([
        header,
        "abc,2.0,6.0,Run,10.0,v_abc.mp4,30,300,Action",
        "abc,2.0,6.0,Run,10.0,v_abc.mp4,30,300,Action",  # TSP's csvs repeat some rows
        "abc,6.0,10.0,,10.0,v_abc.mp4,30,300,No action",
    ]) + "\n")
    ann = read_tsp_csv(path)
    clips = ClipConfig(frames=4, fps=4.0, resize=[32, 43], crop=28, clips_per_segment=5)

    def runs(duplicate_segments: str) -> list:
        rules = segment_rules(TrainConfig(duplicate_segments=duplicate_segments, short_segments="drop"), clips)
        dataset = SegmentClipDataset(ann, tmp_path, clips, train=True, clip_level=True, **rules)
        return [(it.start, it.end, it.label) for it in dataset.items if it.label == "Run"]

    assert runs("drop") == [(2.0, 6.0, "Run")]
    assert runs("keep") == [(2.0, 6.0, "Run")] * 2  # TSP: len(df) * clips_per_segment clips
    with pytest.raises(ConfigError, match="duplicate_segments.*drop, keep"):
        TrainConfig(duplicate_segments="once")
    for name in ("default", "smoke"):  # the default is left out of the stage hashes
        profile = load_profile(name)
        assert profile.pretrain.duplicate_segments == "drop" and "duplicate_segments" not in identity_dict(profile.pretrain)
    paper = load_profile("paper")
    assert paper.pretrain.duplicate_segments == "keep" and identity_dict(paper.pretrain)["duplicate_segments"] == "keep"


@pytest.mark.parametrize("key, value", [("short_segments", "drop"), ("duplicate_segments", "keep")])
def test_segment_switches_under_source_pretrain_are_refused_as_pretrain_only(tmp_path, key, value):
    # The source stage trains on one clip of each trimmed video: no segment list for these keys to
    # act on, so a value other than the default would do nothing but change the source model's key.
    from clap_bench.config import PROFILE_NAMES, ConfigError

    path = tmp_path / "mine.yaml"
    path.write_text(f"base: smoke\nsource_pretrain:\n  {key}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: source_pretrain.{key}: {value!r}") and "pretrain only" in message
    default = "keep" if key == "short_segments" else "drop"
    path.write_text(f"base: smoke\nsource_pretrain:\n  {key}: {default}\npretrain:\n  {key}: {value}\n")
    assert getattr(load_profile(str(path)).pretrain, key) == value  # where they apply
    for name in PROFILE_NAMES:
        load_profile(name)


def test_caption_choice_switch():
    from clap_bench.clips import assign_caption
    from clap_bench.data.schema import Sentence

    # Clip [10, 11]: caption A covers all of it but is centred far away; B overlaps half of it, centred near.
    a, b = Sentence(0.0, 30.0, "a long caption"), Sentence(10.5, 11.0, "a short caption")
    assert assign_caption(10.0, 11.0, [a, b], "largest_overlap") is a
    assert assign_caption(10.0, 11.0, [a, b], "nearest_centre") is b
    assert assign_caption(40.0, 41.0, [a, b], "nearest_centre") is None  # no overlap: the prompt stays


def test_paper_tsp_details(paper):
    assert paper.pretrain.head_init_std == 0.01  # TSP models/model.py: nn.init.normal_(fc.weight, 0, 0.01)
    assert paper.pretrain.short_segments == "drop"  # TSP: segments shorter than clip_length frames removed
    assert paper.pretrain.gvf_scaling == "none"  # TSP reads the max-pooled GVF as is
    assert paper.pretrain.caption_choice == "nearest_centre"  # §3.2: "temporally closest caption"
    assert paper.clips.resize_filter == "bilinear"  # TSP common/transforms.py: F.interpolate, align_corners=False


def test_resize_filter_switch_is_checked_and_left_out_of_default_hashes():
    from clap_bench.config import ClipConfig, ConfigError, identity_dict

    with pytest.raises(ConfigError, match="resize_filter"):
        ClipConfig(resize_filter="bicubic")
    for name in ("default", "smoke"):
        profile = load_profile(name)
        assert profile.clips.resize_filter == "swscale" and "resize_filter" not in identity_dict(profile.clips)
    assert identity_dict(ClipConfig(resize_filter="bilinear"))["resize_filter"] == "bilinear"


def test_paper_tal_labels_come_from_the_external_video_scores(paper):
    from clap_bench.config import from_dict
    from clap_bench.downstream.gtad import GTADConfig

    cfg = from_dict(GTADConfig, paper.task_config("tal"), "tasks.tal")
    assert cfg.video_scores.endswith("cuhk_val_simp_share.json")
    assert cfg.classes_per_video == 2  # G-TAD's ActivityNet post-processing: top-2 video classes
    # G-TAD's ActivityNet code (gtad_lib/dataset.py, gtad_inference.py, gtad_postprocess.py)
    assert (cfg.boundary_anchors, cfg.proposal_candidates, cfg.proposal_score) == ("bmn", "boundary_peaks", "map")


def test_paper_grounding_schedule_and_selection(paper):
    from clap_bench.config import from_dict
    from clap_bench.downstream.tan2d.task import VLGConfig

    cfg = from_dict(VLGConfig, paper.task_config("vlg"), "tasks.vlg").validate()
    assert (cfg.lr_factor, cfg.lr_patience) == (0.8, 20)  # 2D-TAN's TRAIN.FACTOR, TRAIN.PATIENCE
    assert cfg.plateau_metric == "negated_val_loss"  # scheduler.step(-val loss) in 2D-TAN's train.py
    assert cfg.tacos.val_subset == "val" and cfg.charades_sta.val_subset is None
    assert cfg.select_metric == "R@1@0.5"
    assert (cfg.epochs, cfg.batch_size, cfg.lr) == (100, 32, 1e-4)


def test_paper_qat_and_2dtan_word_vectors(paper):
    from clap_bench.config import from_dict
    from clap_bench.downstream.qat import QATConfig
    from clap_bench.downstream.tan2d.task import VLGConfig

    # fewshotQAT's ActivityNet run (test_fs.sh -> gtad_inference_fs_inductive.py -> classifier_v2.py):
    # range(1, adapt_iter) with adapt_iter = 100
    assert from_dict(QATConfig, paper.task_config("fstal"), "tasks.fstal").adapt_steps == 99
    assert from_dict(VLGConfig, paper.task_config("vlg"), "tasks.vlg").glove_path.endswith("glove.6B.300d.txt")


# --------------------------------------------------------------------------- FIDELITY.md and the table notes
def test_every_switch_has_a_row_in_fidelity_md_and_the_readme_links_it():
    from pathlib import Path

    from clap_bench.fidelity import _MISSING, CHOICES, paper_profile_dict, resolve

    root = Path(__file__).resolve().parents[1]
    text = (root / "FIDELITY.md").read_text()
    paper = paper_profile_dict()
    for choice in CHOICES:
        assert f"`{choice.key}" in text or f"`{choice.key.rsplit('.', 1)[-1]}`" in text, choice.key
        assert resolve(paper, choice.key) is not _MISSING, choice.key
    assert "(FIDELITY.md)" in (root / "README.md").read_text()
    assert "FIDELITY.md" in (root / "configs" / "profiles" / "paper.yaml").read_text().split("name:")[0]


def test_table_notes_list_the_departures_of_each_tables_stages(tmp_path):
    from clap_bench.config import to_dict
    from clap_bench.runs import RunStore, make_tables, render

    store = RunStore(tmp_path)
    smoke = to_dict(load_profile("smoke"))
    table1, table3 = make_tables(store, "smoke", ["1", "3"], profile_config=smoke)
    notes1, notes3 = "\n".join(table1.notes), "\n".join(table3.notes)
    assert "G-TAD's video labels: built-in video classifier instead of external scores" in notes1
    assert "plateau" not in notes1
    assert "(tasks.vlg.plateau_metric)" in notes3 and "video labels" not in notes3
    for notes in (notes1, notes3):  # pre-training choices affect every table
        assert "(pretrain.contrastive.duplicate_texts)" in notes and "(encoder.text_model)" in notes
    assert "differs from the paper's protocol (FIDELITY.md)" in render([table1], "markdown")

    paper = to_dict(load_profile("paper"))
    assert not any("FIDELITY" in n for t in make_tables(store, "paper", ["1", "3"], profile_config=paper) for n in t.notes)


def test_paper_trains_tsp_and_tac_heads_at_tsps_rate_and_clap_at_the_papers(paper):
    from clap_bench.config import TrainConfig
    from clap_bench.fidelity import paper_profile_dict, resolve
    from clap_bench.methods import method_from_profile
    from clap_bench.training.pretrain import method_train_config

    rates = {m: method_train_config(paper.pretrain, method_from_profile(m, paper.methods)).lr_heads
             for m in ("tsp", "tac", "clap", "clap-mask")}
    assert rates == {"tsp": 2e-3, "tac": 2e-3, "clap": 2e-2, "clap-mask": 2e-2}  # TSP --fc-lr 0.002; §4.1: 2e-2
    assert method_train_config(paper.pretrain, method_from_profile("tsp", paper.methods)).lr_backbone == 1e-4
    assert resolve(paper_profile_dict(), "methods.tsp.lr_heads") == 2e-3
    smoke = load_profile("smoke")
    assert method_train_config(smoke.pretrain, method_from_profile("tsp", smoke.methods)) is smoke.pretrain
    with pytest.raises(ValueError, match="methods.tsp.lr_heads"):
        method_from_profile("tsp", {"tsp": {"lr_heads": 0.0}})
    assert TrainConfig().lr_heads == 2e-2


def test_paper_qat_stage_1_takes_qats_labels_and_batch_size(paper):
    from clap_bench.config import from_dict
    from clap_bench.downstream.qat import QATConfig
    from clap_bench.fidelity import departures, paper_profile_dict

    cfg = from_dict(QATConfig, paper.task_config("fstal"), "tasks.fstal")
    cfg.validate()
    # fewshotQAT gtad_lib/dataset_fs.py: anchor_xmax = gap * (i + 0.5) for i in 1..T (BMN); opts.py --batch_size 5
    assert (cfg.gtad.boundary_anchors, cfg.gtad.batch_size) == ("bmn", 5)
    assert cfg.gtad.map_kernel == 1  # fewshotQAT gtad_lib/opts.py --kern_2d 1, as G-TAD's ActivityNet code
    assert (cfg.gtad.temporal_scale, cfg.gtad.lr, cfg.gtad.epochs, cfg.gtad.lr_step_epochs) == (100, 4e-3, 10, 5)
    from clap_bench.config import to_dict

    notes = departures(to_dict(load_profile("default")), paper_profile_dict(), "2a")
    assert any("(tasks.fstal.gtad.boundary_anchors)" in n for n in notes)
    assert any("(tasks.fstal.gtad.batch_size)" in n for n in notes)
    assert any("(tasks.fstal.gtad.map_kernel)" in n for n in notes)


def test_paper_gtad_map_head_is_one_by_one_as_the_activitynet_code(paper):
    # G-TAD's ActivityNet options (commit f9afd44, gtad_lib/opts.py): --kern_2d 1, --pad_2d 0
    from clap_bench.config import ConfigError, from_dict, to_dict
    from clap_bench.downstream.gtad.config import GTADConfig
    from clap_bench.fidelity import departures, paper_profile_dict

    assert from_dict(GTADConfig, paper.task_config("tal"), "tasks.tal").map_kernel == 1
    assert any("(tasks.tal.map_kernel)" in n for n in departures(to_dict(load_profile("default")), paper_profile_dict(), "1"))
    for bad in (0, 2):  # padding k // 2 keeps the map's size only for an odd kernel
        with pytest.raises(ConfigError, match=f"tasks.tal: map_kernel: expected an odd kernel size >= 1, got {bad}"):
            GTADConfig(map_kernel=bad).validate()


def test_paper_tac_trains_on_every_segment_as_tsps_tac_script(paper):
    # TSP train_tac_on_activitynet.sh reads the whole ground-truth csv; background rows get label -1
    # (untrimmed_video_dataset.py), ignored by the class loss (train.py: ignore_index=-1).
    from clap_bench.config import to_dict
    from clap_bench.fidelity import departures, paper_profile_dict, resolve
    from clap_bench.methods import method_from_profile

    assert method_from_profile("tac", paper.methods).regions == "all"
    assert resolve(paper_profile_dict(), "methods.tac.regions") == "all"
    assert method_from_profile("tac", load_profile("default").methods).regions == "foreground"
    notes = departures(to_dict(load_profile("default")), paper_profile_dict(), "1")
    assert "TAC's training clips: foreground segments only instead of every segment (background without class loss) (methods.tac.regions)" in notes



def test_tac_on_every_segment_leaves_background_clips_out_of_its_loss():
    import torch
    import torch.nn.functional as F

    from clap_bench.methods import create_method

    tac = create_method("tac", regions="all")
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    label = torch.tensor([2, -1, 0, -1, 3, -1])  # background clips: label -1, region 0
    region = (label >= 0).long()
    terms, stats = tac.head_terms({"class_logits": logits}, {"label": label, "region": region})
    fg = region == 1
    assert set(terms) == {"class_ce"}  # TAC has no region head
    assert torch.allclose(terms["class_ce"], F.cross_entropy(logits[fg], label[fg]))


def test_paper_pre_trains_in_fp32_as_tsps_train_py():
    # TSP's train/train.py has no autocast and no gradient scaler.
    assert load_profile("paper").pretrain.amp is False
    assert load_profile("default").pretrain.amp is True  # read on CUDA only


def test_paper_keeps_the_best_validated_epoch_as_tsps_reference_and_the_synthetic_profiles_the_last(paper):
    from clap_bench.config import identity_dict, to_dict
    from clap_bench.fidelity import departures, paper_profile_dict, resolve

    # TSP train/README.md: "the epoch with the highest Avg Accuracy" (train.py: the mean of the heads' accuracies)
    assert paper.pretrain.keep_epoch == "best" and paper.pretrain.validate
    assert resolve(paper_profile_dict(), "pretrain.keep_epoch") == "best"
    for name in ("default", "smoke"):
        profile = load_profile(name)
        assert profile.pretrain.keep_epoch == "last" and "keep_epoch" not in identity_dict(profile.pretrain)
        notes = departures(to_dict(profile), paper_profile_dict(), "1")
        assert "pre-trained encoder kept: the last epoch instead of the best validated epoch (pretrain.keep_epoch)" in notes
    assert identity_dict(paper.pretrain)["keep_epoch"] == "best"


def test_fidelity_names_only_charades_stas_reader_as_dropping_the_final_period():
    # 2D-TAN's lib/datasets/charades.py drops it (sent.split('.\n')[0]); tacos.py and activitynet.py keep it,
    # and so does the VLG task (drop_final_period for charades-sta only).
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "FIDELITY.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 2D-TAN sentence split |"))
    dropping = row.split("drops a sentence's final period first", 1)[1].split(";", 1)[0]
    assert "charades.py" in dropping and "tacos.py" not in dropping and "activitynet.py" not in dropping
