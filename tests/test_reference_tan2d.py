"""The 2D-TAN reference comparison's own parts, without the reference code: the files its Charades
reader reads (parsed here the way that reader parses them), the shared word table, the YAML, the
scoring adapters and the comparison table."""

import csv
import math

import h5py
import numpy as np
import pytest
import torch

from clap_bench.data.schema import AnnotationSet, Sentence, Video
from clap_bench.downstream.tan2d.model import map_conv_output_size
from clap_bench.downstream.tan2d.task import VLGConfig, grounding_queries
from clap_bench.eval.grounding import evaluate_grounding, flatten_metrics
from clap_bench.io import FeatureFileError
from clap_bench.reference import ReferenceMissing
from clap_bench.reference.tan2d import (
    METRIC_KEYS,
    WordTable,
    compare_runs,
    config_differences,
    format_comparison,
    format_cross_scores,
    metrics_from_reference,
    our_state_from_reference,
    predictions_from_reference,
    reference_config,
    reference_eval_inputs,
    reference_words,
    require_tan2d,
    write_charades_sta,
    write_reference_features,
)


def _annotations():
    videos = {
        "VIDB": Video("VIDB", 20.5, "train", sentences=[
            Sentence(0.3, 4.4, "A red wedge zigzags near the bottom."),
            Sentence(5.0, 25.0, "the red triangle spins"),  # end past the video: clipped to 20.5
            Sentence(21.0, 22.0, "after the end."),  # nothing left after clipping: dropped
        ]),
        "VIDA": Video("VIDA", 12.25, "train", sentences=[Sentence(1.1, 2.2, "a blue disc hops.")]),
        "VIDT": Video("VIDT", 30.0, "test", sentences=[Sentence(0.1, 0.7, "the green box pulses."),
                                                       Sentence(10.0, 29.9, "a green box. slides sideways.")]),
    }
    return AnnotationSet("charades-sta", "<test>", videos, [], 0, [])


def _parse_like_the_reference(txt, lengths_csv):
    """What the reference's Charades reader does with the two files (lib/datasets/charades.py)."""
    durations = {}
    with open(lengths_csv) as f:
        for row in csv.DictReader(f):
            durations[row["id"]] = float(row["length"])
    out = []
    with open(txt) as f:
        for line in f:
            anno, sent = line.split("##")
            sent = sent.split(".\n")[0]
            vid, s, e = anno.split(" ")
            s, e = float(s), min(float(e), durations[vid])
            if s < e:
                out.append((vid, s, e, sent, durations[vid], [w.lower() for w in sent.split()]))
    return out


def test_written_charades_files_read_back_as_our_queries(tmp_path):
    ann = _annotations()
    train, test = grounding_queries(ann, "train"), grounding_queries(ann, "test")
    written = write_charades_sta({"train": train, "test": test}, tmp_path)
    assert set(written) == {"train", "test"}
    for queries, (txt, lengths_csv) in ((train, written["train"]), (test, written["test"])):
        parsed = _parse_like_the_reference(txt, lengths_csv)
        assert [(p[0], p[1], p[2], p[4]) for p in parsed] == [(q.video, q.start, q.end, q.duration) for q in queries]
        assert [p[5] for p in parsed] == [reference_words(q.sentence) for q in queries]
    # our order (video id, then sentence), the clipped end, the dropped query
    assert [q.id for q in train] == ["VIDA#0", "VIDB#0", "VIDB#1"]
    assert train[2].end == 20.5
    assert _parse_like_the_reference(*written["train"])[1][3] == "A red wedge zigzags near the bottom"


def test_reference_words_drop_only_the_final_period():
    assert reference_words("A red wedge zigzags.") == ["a", "red", "wedge", "zigzags"]
    assert reference_words("no period here") == ["no", "period", "here"]
    assert reference_words("a green box. slides sideways.") == ["a", "green", "box.", "slides", "sideways"]
    assert reference_words("") == []


@pytest.mark.parametrize("sentence", ["A red wedge zigzags.", "a box. it slides .", "no period", "Two  spaces.", ""])
def test_our_glove_split_of_charades_sentences_is_the_references(sentence):
    from clap_bench.downstream.tan2d.text import glove_tokens

    assert glove_tokens(sentence, "whitespace", drop_final_period=True) == reference_words(sentence)


@pytest.mark.parametrize("video, sentence, message", [
    ("VID X", "ok.", "splits on spaces"),
    ("VIDX", "one##two", "'##'"),
    ("VIDX", "two\nlines", "line break"),
])
def test_unwritable_queries_are_named(tmp_path, video, sentence, message):
    ann = AnnotationSet("charades-sta", "<t>", {video: Video(video, 10.0, "train", sentences=[Sentence(1.0, 2.0, sentence)])}, [], 0, [])
    with pytest.raises(ValueError, match=message) as err:
        write_charades_sta({"train": grounding_queries(ann, "train")}, tmp_path)
    assert f"{video}#0" in str(err.value)


def test_feature_copy_keeps_the_listed_videos(tmp_path):
    src = tmp_path / "ours.h5"
    rng = np.random.default_rng(0)
    with h5py.File(src, "w") as f:
        for vid, t in (("a", 5), ("b", 3), ("c", 4)):
            f.create_dataset(vid, data=rng.normal(size=(t, 6)).astype(np.float64))
    out = write_reference_features(src, ["b", "a", "a"], tmp_path / "x_features.hdf5")
    with h5py.File(src, "r") as s, h5py.File(out, "r") as d:
        assert sorted(d.keys()) == ["a", "b"]
        assert d["a"].dtype == np.float32 and d["a"].shape == (5, 6)
        np.testing.assert_allclose(d["b"][()], s["b"][()].astype(np.float32))


def test_feature_copy_without_an_annotated_video_names_the_file_and_the_videos(tmp_path):
    src = tmp_path / "ours.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("a", data=np.ones((3, 4), np.float32))
    with pytest.raises(FeatureFileError) as err:
        write_reference_features(src, ["a", "zz", "yy"], tmp_path / "y.hdf5")
    assert str(err.value).startswith(f"{src}: no features for 2 of the 3 videos of the annotations: yy, zz")
    assert not (tmp_path / "y.hdf5").exists() and not (tmp_path / "y.hdf5.tmp").exists()


def test_word_table_rows_follow_the_reference_split(tmp_path):
    def pieces(word):  # two "word pieces" per word: its length and its first letter's code
        return torch.tensor([[len(word), 0.0], [ord(word[0]), 2.0]])

    table = WordTable.from_sentences(["A cat.", "the cat sat"], pieces)
    assert table.words == ["a", "cat", "sat", "the"] and table.dim == 2
    rows = table("The CAT.")  # final period dropped, lower-cased
    np.testing.assert_allclose(rows.numpy(), [[(3 + ord("t")) / 2, 1.0], [(3 + ord("c")) / 2, 1.0]])
    assert table("").shape == (1, 2) and not table("").any()
    with pytest.raises(KeyError, match="dog"):
        table("a dog")
    again = WordTable.load(table.save(tmp_path / "words.npz"))
    assert again.words == table.words and np.array_equal(again.vectors, table.vectors)


def test_reference_yaml_matches_our_profile_shapes():
    cfg = VLGConfig(hidden_size=32, text_hidden_size=32, batch_size=16, lr=1e-3)
    d = cfg.for_dataset("charades-sta")
    d.num_sample_clips, d.map_kernel_sizes, d.map_paddings, d.map_dilations = 64, [5] * 4, [8, 0, 0, 0], [1] * 4
    y = reference_config(cfg, d, feature_dim=128, word_dim=384, num_train_queries=1357, data_dir="D", work_dir="W", epochs=20)
    frame = y["TAN"]["FRAME_MODULE"]["PARAMS"]
    assert (frame["INPUT_SIZE"], frame["HIDDEN_SIZE"], frame["KERNEL_SIZE"], frame["STRIDE"]) == (128, 32, 4, 4)
    assert y["DATASET"]["NUM_SAMPLE_CLIPS"] // y["DATASET"]["TARGET_STRIDE"] == 16
    conv = y["TAN"]["MAP_MODULE"]["PARAMS"]
    assert map_conv_output_size(16, conv["KERNEL_SIZES"], conv["PADDINGS"], conv["DILATIONS"]) == 16
    assert conv["HIDDEN_SIZES"] == [32] * 4 and y["TAN"]["PRED_INPUT_SIZE"] == 32
    assert y["TAN"]["FUSION_MODULE"]["PARAMS"]["TXT_INPUT_SIZE"] == 384
    assert y["LOSS"]["PARAMS"] == {"MIN_IOU": 0.5, "MAX_IOU": 1.0, "BIAS": 0.0}
    assert y["DATASET"]["NO_VAL"] is True and y["TRAIN"]["MAX_EPOCH"] == 20 and y["TEST"]["NMS_THRESH"] == 0.45
    assert y["TRAIN"]["LR"] == 1e-3
    d.lr = 2e-3  # a dataset's own rate (the default profile's Charades-STA has one): both train at it
    assert reference_config(cfg, d, feature_dim=128, word_dim=384, num_train_queries=1357, data_dir="D", work_dir="W",
                            epochs=20)["TRAIN"]["LR"] == 2e-3


@pytest.mark.parametrize("n, batch", [(1357, 16), (1360, 16), (17, 32), (1, 1), (999, 7), (100, 3)])
def test_reference_tests_after_every_epoch(n, batch):
    # train.py: test_interval = int(len(train_dataset) / BATCH_SIZE * INTERVAL); it tests after
    # update t when t % test_interval == 0. An epoch is ceil(n / batch) updates.
    cfg = VLGConfig(batch_size=batch)
    y = reference_config(cfg, cfg.for_dataset("charades-sta"), feature_dim=8, word_dim=8, num_train_queries=n,
                         data_dir="D", work_dir="W", epochs=3)
    assert int(n / batch * y["TEST"]["INTERVAL"]) == math.ceil(n / batch)


def test_config_differences_skip_bookkeeping():
    ours = {"DATA_DIR": "x", "TRAIN": {"LR": 1e-3, "BATCH_SIZE": 32}, "TAN": {"K": [5, 5]}, "TEST": {"INTERVAL": 1.01}}
    published = {"DATA_DIR": "y", "TRAIN": {"LR": 1e-4, "BATCH_SIZE": 32}, "TAN": {"K": [5] * 8, "EXTRA": 1}}
    assert config_differences(ours, published) == [("TAN.EXTRA", None, 1), ("TAN.K", [5, 5], [5] * 8), ("TRAIN.LR", 1e-3, 1e-4)]


def _queries():
    ann = AnnotationSet("charades-sta", "<t>", {
        "V": Video("V", 10.0, "test", sentences=[Sentence(0.0, 4.0, "one."), Sentence(5.0, 10.0, "two.")]),
    }, [], 0, [])
    return grounding_queries(ann, "test")


def test_reference_scorer_inputs_follow_the_query_order():
    queries = _queries()
    preds = [{"id": "V#1", "segments": [[5.0, 9.0]], "scores": [0.9]}, {"id": "V#0", "segments": [[0, 4], [1, 2]]}]
    segments, data = reference_eval_inputs(preds, queries)
    assert segments == [[[0.0, 4.0], [1.0, 2.0]], [[5.0, 9.0]]]
    assert [d["times"] for d in data] == [[0.0, 4.0], [5.0, 10.0]] and data[0]["duration"] == 10.0
    with pytest.raises(KeyError, match="V#1"):
        reference_eval_inputs(preds[1:], queries)


def test_reference_ranking_is_suppressed_and_cut_like_ours():
    queries = _queries()
    ranked = [
        [[0.0, 4.0], [0.0, 3.75], [5.0, 10.0], [0.0, 10.0], [6.0, 7.0], [1.0, 2.0], [8.0, 9.0], [2.0, 3.0]],
        [[5.0, 10.0], [5.0, 9.0], [0.0, 1.0]],
    ]
    preds = predictions_from_reference(ranked, queries, nms_threshold=0.45, top_k=5)
    # [0, 3.75] has IoU 0.9375 with [0, 4]: suppressed; [0, 10] has IoU 0.4 with [0, 4] and 0.5 with [5, 10]: suppressed.
    assert preds[0]["segments"] == [[0.0, 4.0], [5.0, 10.0], [6.0, 7.0], [1.0, 2.0], [8.0, 9.0]]
    assert preds[1]["segments"] == [[5.0, 10.0], [0.0, 1.0]]
    m = flatten_metrics(evaluate_grounding([{"id": q.id, "segment": [q.start, q.end]} for q in queries], preds))
    assert m["R@1@0.7"] == 1.0 and m["mIoU"] == 1.0
    with pytest.raises(ValueError, match="2 ranked lists for 1 queries"):
        predictions_from_reference(ranked, queries[:1], 0.45, 5)


def test_reference_result_array_is_read_as_iou_by_rank():
    arr = [[0.9, 0.95], [0.5, 0.8], [0.2, 0.4]]  # rows IoU 0.3, 0.5, 0.7; columns rank 1, 5
    m = metrics_from_reference(arr, 0.45)
    assert m == {"R@1@0.3": 0.9, "R@5@0.3": 0.95, "R@1@0.5": 0.5, "R@5@0.5": 0.8, "R@1@0.7": 0.2, "R@5@0.7": 0.4, "mIoU": 0.45}
    assert set(m) == set(METRIC_KEYS)
    with pytest.raises(ValueError, match="3 x 2"):
        metrics_from_reference(np.zeros((2, 3)), 0.1)


def test_comparison_flags_only_a_real_difference():
    same = [{k: 0.40 + 0.01 * s for k in METRIC_KEYS} for s in range(3)]
    apart = [{k: 0.10 + 0.01 * s for k in METRIC_KEYS} for s in range(3)]
    rows = compare_runs(same, [dict(m) for m in same])
    assert all(r.p == pytest.approx(1.0) and not r.significant for r in rows)
    rows = compare_runs(same, apart)
    assert all(r.p < 1e-4 and r.significant for r in rows)
    text = format_comparison(rows)
    assert "R@1@0.5" in text and "41.00 ±  1.00" in text and "11.00 ±  1.00" in text and "30.00" in text
    with pytest.raises(ValueError, match="at least 2 seeds"):
        compare_runs(same[:1], apart)
    cross = format_cross_scores([("ours seed 0", same[0], {**same[0], "mIoU": 0.41})])
    assert "1.00e+00" in cross  # 1 point apart on mIoU


def test_missing_reference_says_how_to_fetch(tmp_path):
    with pytest.raises(ReferenceMissing, match="git clone https://github.com/microsoft/VideoX"):
        require_tan2d(tmp_path)
    (tmp_path / "lib" / "datasets").mkdir(parents=True)
    (tmp_path / "lib" / "datasets" / "charades.py").write_text("")
    assert require_tan2d(tmp_path) == tmp_path


def test_reference_parameter_names_cover_our_model():
    from clap_bench.downstream.tan2d.model import TAN2D

    ours = TAN2D(feature_dim=6, word_dim=5, num_sample_clips=16, num_clips=8, num_scale_layers=[8], hidden_size=4,
                 text_hidden_size=3, lstm_layers=1, map_kernel_sizes=[3], map_paddings=[1], map_dilations=[1])
    # The reference TAN's parameters (lib/models: FrameAvgPool.vis_conv, BaseFusion.textual_encoder /
    # tex_linear / vis_conv, MapConv.convs, TAN.pred_layer), written out by hand.
    lstm = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    names = (["frame_layer.vis_conv.weight", "frame_layer.vis_conv.bias"]
             + [f"fusion_layer.textual_encoder.{n}" for n in lstm]
             + ["fusion_layer.tex_linear.weight", "fusion_layer.tex_linear.bias",
                "fusion_layer.vis_conv.weight", "fusion_layer.vis_conv.bias",
                "map_layer.convs.0.weight", "map_layer.convs.0.bias", "pred_layer.weight", "pred_layer.bias"])
    shapes = [p.shape for p in ours.parameters()]  # the same order of definition in both models
    state = {n: torch.full(s, float(i)) for i, (n, s) in enumerate(zip(names, shapes))}
    missing, unexpected = ours.load_state_dict(our_state_from_reference(state), strict=False)
    assert missing == ["map_mask"] and unexpected == []
    assert torch.equal(ours.fusion.text_proj.weight, state["fusion_layer.tex_linear.weight"])
    with pytest.raises(KeyError, match="attention"):
        our_state_from_reference({"attention.weight": torch.zeros(1)})


def test_the_comparison_script_names_a_features_file_that_is_missing_or_not_hdf5(tmp_path):
    import importlib.util
    from pathlib import Path

    from clap_bench.io import FeatureFileError

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "reference" / "tan2d_vs_reference.py"
    spec = importlib.util.spec_from_file_location("tan2d_vs_reference", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = tmp_path / "features.h5"
    text.write_text("not hdf5\n")
    with pytest.raises(FeatureFileError, match=r"features\.h5: not an HDF5 feature file"):
        module._features(None, text, tmp_path)
    with pytest.raises(FeatureFileError, match=r"nosuch\.h5: file not found"):
        module._features(None, tmp_path / "nosuch.h5", tmp_path)
