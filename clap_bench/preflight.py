"""``clapbench preflight``: every stage of the main job at the profile's real shapes, timed, then projected.

On ``videos`` videos per dataset it runs, with the profile's own settings:

* ``steps`` optimizer steps of pre-training for each requested method (:func:`clap_bench.training.pretrain`,
  the full backbone, the batch per process, AMP on CUDA), on the videos' real segments;
* extraction of the whole videos of ActivityNet and of the grounding sets ``tasks.vlg.datasets`` names
  (Charades-STA and TACoS by default; ``encode_videos`` into an HDF5 file as the extraction stage writes it);
* ``steps`` training iterations of G-TAD at the ``tal`` task's temporal scale, and its inference;
* QAT: ``steps`` meta-training steps of the ``fstal`` task's episode batch, and test episodes
  (support adaptation, localisation, scoring);
* ``steps`` training iterations of 2D-TAN on each of those grounding sets at its map size, and its inference.

Each stage reports its rate (clips/s, iterations/s, episodes/s, videos/s, queries/s), the peak
resident memory of this process while it ran, and on CUDA the peak device memory. The rates then
project the full run from the sizes of the annotation files (:func:`project`): the hours of each
stage on the GPUs the cluster profile gives it, for one seed and for a sweep of methods x seeds,
and the disk taken by feature files and checkpoints. With ``encoder.weights: source`` it adds the source
model's own pre-training (:func:`source_models`): each source model the sweep starts from that is
not cached on this machine, at a measured pre-training rate (nothing is trained for it); a cached
one is listed as such.

Videos that are not on disk are, with ``stand_in=True``, replaced by generated H.264 files of the
annotated duration (``preflight.stand_in_fps`` / ``stand_in_size``). ``preflight.*`` keys shrink
what a CPU or CI run cannot afford (the batch per step, the video length) without touching the
profile's shapes; the report lists the ones in force. The projection is at the rates measured on
this machine: measured on a CPU, it says what the run would cost on this CPU, not on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from clap_bench.config import Profile, from_dict, resolve_datasets, to_dict
from clap_bench.data.schema import AnnotationSet, Segment, Sentence, Video
from clap_bench.io import atomic_write_json

PRETRAIN_DATASET = "activitynet"
CAPTIONS_DATASET = "activitynet-captions"
SOURCE_DATASET = "trimmed"  # clap_bench.training.pretrain.SOURCE_DATASET: what the source model trains on
GROUNDING_DATASETS = ("charades-sta", "tacos")  # those the vlg task knows; a profile's tasks.vlg.datasets picks some
DEFAULT_CLUSTER = Path(__file__).resolve().parent.parent / "slurm" / "example-gpu.yaml"


# --------------------------------------------------------------------------- measuring
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Measure:
    """One timed stage: ``units`` of ``unit`` in ``seconds``; peak memory while it ran."""

    stage: str
    unit: str
    units: float = 0.0
    seconds: float = 0.0
    peak_host_bytes: int = 0
    peak_device_bytes: Optional[int] = None
    shape: str = ""  # the shapes it ran at, in words
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rate"] = self.rate
        return d


@contextmanager
def measuring(measure: Measure, device: torch.device, interval: float = 0.01) -> Iterator[Measure]:
    """Time the block and sample this process's resident memory every ``interval`` s (peak kept)."""
    peak = [_rss_bytes()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            peak[0] = max(peak[0], _rss_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        yield measure
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            measure.peak_device_bytes = int(torch.cuda.max_memory_allocated(device))
        if measure.seconds == 0.0:
            measure.seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        measure.peak_host_bytes = max(peak[0], _rss_bytes())


# --------------------------------------------------------------------------- videos
def write_stand_in(path: Path, seconds: float, fps: float, size: Sequence[int], seed: int = 0) -> None:
    """An H.264 mp4 of ``seconds`` at ``fps`` and ``size`` (height, width): a drifting textured image.

    x264 with ffmpeg's defaults (preset medium, GOP 250), as TSP's ``ffmpeg -filter:v fps=fps=30``
    re-encoding leaves them, so decoding costs what it costs on the re-encoded dataset.
    """
    import av

    height, width = int(size[0]) // 2 * 2, int(size[1]) // 2 * 2
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    rate = Fraction(fps).limit_denominator(1001)
    frames = max(1, int(round(seconds * float(rate))))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for i in range(frames):
            dy, dx = (i // 3) % 8, i % 8
            image = np.ascontiguousarray(texture[dy:dy + height, dx:dx + width])
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def capped(video: Video, max_seconds: Optional[float]) -> Video:
    """``video`` cut to its first ``max_seconds`` (segments and sentences clipped, empty ones dropped)."""
    if max_seconds is None or video.duration <= max_seconds:
        return video
    end = float(max_seconds)
    segments = [Segment(s.start, min(s.end, end), s.label) for s in video.segments if s.start < end]
    sentences = [Sentence(s.start, min(s.end, end), s.text) for s in video.sentences if s.start < end]
    return dataclasses.replace(video, duration=end, num_frames=None, segments=segments, sentences=sentences)


def pick_videos(ann: AnnotationSet, subset: str, n: int, need: str, max_seconds: Optional[float],
                prefer: Optional[set] = None) -> List[Video]:
    """``n`` videos of ``subset`` (sorted ids) that keep an action or sentence within ``max_seconds``.

    ``prefer``: ids to take first (e.g. ActivityNet videos that also have captions).
    """
    pool = [ann.videos[v] for v in sorted(ann.videos) if ann.videos[v].subset == subset]
    if not pool:
        raise ValueError(f"{ann.source}: no video in subset {subset!r}; subsets: {ann.subsets}")
    ok = [v for v in pool if (capped(v, max_seconds).actions if need == "actions" else capped(v, max_seconds).sentences)]
    if prefer:
        ok = [v for v in ok if v.id in prefer] + [v for v in ok if v.id not in prefer]
    if len(ok) < n:
        raise ValueError(f"{ann.source}: only {len(ok)} {subset} videos keep {need} within the preflight's video length; need {n}")
    return [capped(v, max_seconds) for v in ok[:n]]


def place_videos(videos: Sequence[Video], video_dir: Optional[str], folder: Path, stand_in: bool, pcfg, key: str) -> Dict[str, str]:
    """Put a file for each video into ``folder`` as ``<id>.<ext>``: a link to the real file or a stand-in.

    Returns ``{id: "real" | "stand-in"}``. Without ``stand_in`` a missing video is an error naming it.
    """
    from clap_bench.clips import resolve_video_path

    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for v in videos:
        real = resolve_video_path(video_dir, v) if video_dir else None
        if real is not None and real.is_file():
            target = folder / f"{v.id}{real.suffix}"
            if not target.exists():
                target.symlink_to(real.resolve())
            kinds[v.id] = "real"
        elif stand_in:
            write_stand_in(folder / f"{v.id}.mp4", v.duration, pcfg.stand_in_fps, pcfg.stand_in_size,
                           seed=zlib.crc32(v.id.encode()))
            kinds[v.id] = "stand-in"
        else:
            where = real if real is not None else f"(no video folder: data.datasets.{key}.videos)"
            raise FileNotFoundError(f"dataset {key!r}: video {v.id} not found at {where}; pass --stand-in to generate stand-ins")
    return kinds


def subset_set(ann: AnnotationSet, videos: Sequence[Video]) -> AnnotationSet:
    return AnnotationSet(ann.format, f"{ann.source} (preflight: {len(videos)} videos)", {v.id: v for v in videos},
                         list(ann.classes), 0, [], ann.lists_background)


def _write_captions(path: Path, videos: Sequence[Video]) -> None:
    data = {v.id: {"duration": v.duration, "timestamps": [[s.start, s.end] for s in v.sentences],
                   "sentences": [s.text for s in v.sentences]} for v in videos if v.sentences}
    atomic_write_json(path, data)


# --------------------------------------------------------------------------- the run
@dataclass
class PreflightData:
    """The full annotation sets and the preflight's picks."""

    full: Dict[str, AnnotationSet]
    picks: Dict[str, List[Video]]
    kinds: Dict[str, Dict[str, str]]
    folders: Dict[str, Path]
    fewshot_base: Optional[List[str]] = None


def load_data(profile: Profile, work: Path, videos: int, stand_in: bool) -> PreflightData:
    from clap_bench.data import load_dataset
    from clap_bench.data.loading import load_fewshot_split

    pcfg = profile.preflight
    datasets = resolve_datasets(profile)
    extracted = extract_datasets(profile)
    missing = [k for k in extracted if k not in datasets]
    if missing:
        raise KeyError(f"profile {profile.name!r}: no dataset {missing[0]!r}; the preflight runs every stage of the main job")
    full = {k: load_dataset(datasets[k], k) for k in extracted}
    if CAPTIONS_DATASET in datasets:
        full[CAPTIONS_DATASET] = load_dataset(datasets[CAPTIONS_DATASET], CAPTIONS_DATASET)
    if profile.encoder.weights == "source":  # the source model's training set, counted for its projection
        if SOURCE_DATASET not in datasets:
            raise KeyError(f"profile {profile.name!r}: encoder.weights 'source' needs a {SOURCE_DATASET!r} dataset "
                           "(the synthetic benchmark provides it)")
        full[SOURCE_DATASET] = load_dataset(datasets[SOURCE_DATASET], SOURCE_DATASET)
    base = None
    if "fewshot-split" in datasets:
        base = sorted(load_fewshot_split(datasets["fewshot-split"]).base)
    anet_train = next((s for s in ("training", "train") if s in full[PRETRAIN_DATASET].subsets), None)
    if anet_train is None:
        raise ValueError(f"dataset {PRETRAIN_DATASET!r}: no training subset (subsets: {full[PRETRAIN_DATASET].subsets})")
    captions = full.get(CAPTIONS_DATASET)
    picks = {PRETRAIN_DATASET: pick_videos(full[PRETRAIN_DATASET], anet_train, videos, "actions", pcfg.max_video_seconds,
                                           prefer=set(captions.videos) if captions else None)}
    vlg = from_dict(_vlg_config_cls(), profile.task_config("vlg"), "tasks.vlg")
    for key in grounding_datasets(profile):
        picks[key] = pick_videos(full[key], vlg.for_dataset(key).train_subset, videos, "sentences", pcfg.max_video_seconds)
    kinds, folders = {}, {}
    for key, vids in picks.items():
        folders[key] = work / "videos" / key
        kinds[key] = place_videos(vids, datasets[key].videos, folders[key], stand_in, pcfg, key)
    return PreflightData(full, picks, kinds, folders, base)


def _vlg_config_cls():
    from clap_bench.downstream.tan2d.task import VLGConfig

    return VLGConfig


def grounding_datasets(profile: Profile) -> Tuple[str, ...]:
    """The grounding sets the ``vlg`` task trains on: ``tasks.vlg.datasets`` (all by default), checked as
    the task checks them; the plan extracts those only (``clap_bench.runs.plan.task_features``)."""
    vlg = from_dict(_vlg_config_cls(), profile.task_config("vlg"), "tasks.vlg").validate()
    return tuple(key for key in GROUNDING_DATASETS if key in vlg.datasets)


def extract_datasets(profile: Profile) -> Tuple[str, ...]:
    """The datasets the run extracts with the encoder pre-trained on all classes: ActivityNet and the grounding sets."""
    return (PRETRAIN_DATASET,) + grounding_datasets(profile)


def _kinetics_available(profile: Profile) -> bool:
    from clap_bench.encoders.video import hub_checkpoint_path

    return profile.encoder.weights != "kinetics400" or hub_checkpoint_path(profile.encoder.arch).is_file()


def _text_model_available(name: Optional[str]) -> bool:
    """Whether a text model (``encoder.text_model``, ``tasks.vlg.text_model``) is on this machine."""
    from clap_bench.encoders.text import TextModelNotFoundError, resolve_text_model

    try:
        resolve_text_model(name)
    except TextModelNotFoundError:
        return False
    return True


def _glove_available(path: Optional[str]) -> bool:
    return not path or Path(path).expanduser().is_file()


def _device() -> torch.device:
    return torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")


def measure_pretrain(profile: Profile, data: PreflightData, method: str, steps: int, work: Path) -> Measure:
    """``steps`` optimizer steps of ``method`` through the real pre-training entry point."""
    from clap_bench.data.loading import write_activitynet_json
    from clap_bench.training.pretrain import pretrain

    pcfg = profile.preflight
    ann_path = work / "annotations" / "activitynet.json"
    chosen = subset_set(data.full[PRETRAIN_DATASET], data.picks[PRETRAIN_DATASET])
    write_activitynet_json(chosen, ann_path)
    datasets = {PRETRAIN_DATASET: {"format": "activitynet-json", "annotations": [str(ann_path)],
                                   "videos": str(data.folders[PRETRAIN_DATASET])}}
    if CAPTIONS_DATASET in data.full:
        cap = data.full[CAPTIONS_DATASET]
        cap_videos = [capped(cap.videos[v.id], v.duration) for v in data.picks[PRETRAIN_DATASET] if v.id in cap.videos]
        _write_captions(work / "annotations" / "captions" / "train.json", cap_videos)
        datasets[CAPTIONS_DATASET] = {"format": "anet-captions", "annotations": [str(work / "annotations" / "captions" / "train.json")]}
    batch = pcfg.batch_size or profile.pretrain.batch_size
    segments_per_step = max(1, batch // profile.clips.clips_per_segment)
    over = {
        "data": {"synthetic": False, "datasets": datasets},
        # validation is left out: the preflight times optimizer steps (its videos may be training ones only);
        # the projection counts its passes at the extraction rate. Without validation no epoch can be
        # selected, so the timed run keeps its last (keep_epoch: best costs a copy of the weights per epoch).
        "pretrain": {"epochs": 1, "batch_size": batch, "max_segments_per_epoch": steps * segments_per_step, "validate": False,
                     "keep_epoch": "last",
                     "num_workers": pcfg.num_workers if pcfg.num_workers is not None else profile.pretrain.num_workers},
        "check": {"problems_file": str(work / "no-problems.csv")},
    }
    if not _kinetics_available(profile) or profile.encoder.weights == "source":
        # A step costs the same from any weights; the source model would need its own training set here.
        over["encoder"] = {"weights": None}
    if not _text_model_available(profile.encoder.text_model):
        over.setdefault("encoder", {})["text_model"] = None  # the bundled MiniLM stands in (noted in the report)
    raw = to_dict(profile)
    raw["data"]["datasets"] = {}
    from clap_bench.config import deep_merge

    run_profile = from_dict(Profile, deep_merge(raw, over), "preflight profile")
    out_dir = work / "pretrain" / method
    device = _device()
    m = Measure(f"pretrain {method}", "clips",
                shape=f"{profile.encoder.arch}, {batch} clips/step of {profile.clips.frames}x{profile.clips.crop}x{profile.clips.crop}"
                      f"{', AMP' if device.type == 'cuda' and profile.pretrain.amp else ''}")
    with measuring(m, device):
        final = pretrain(run_profile, method, seed=0, out_dir=out_dir, progress=False)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rec = records[-1]
    if not rec.get("clips_per_s"):
        raise RuntimeError(f"pre-training {method}: no clip was trained on (metrics: {rec})")
    m.extra["wall_seconds"] = m.seconds  # includes model building, the text encoder, GVFs, BN recalibration, checkpoints
    m.units, m.seconds = float(rec["clips"]), float(rec["clips"]) / float(rec["clips_per_s"])
    m.extra["steps"] = math.ceil(m.units / batch)
    m.extra["checkpoint_bytes"] = sum(p.stat().st_size for p in (final, out_dir / "checkpoint.pt") if p.exists())
    return m


def measure_extraction(profile: Profile, data: PreflightData, key: str, work: Path) -> Measure:
    from clap_bench.encoders import build_video_encoder
    from clap_bench.features.extract import VideoSource, encode_videos, write_features

    pcfg, clips, ex = profile.preflight, profile.clips, profile.extract
    encoder = build_video_encoder(dataclasses.replace(profile.encoder, weights=None), weights=None)
    sources = [VideoSource(v.id, next(data.folders[key].glob(f"{v.id}.*")), float(v.duration), v.fps, v.num_frames)
               for v in data.picks[key]]
    n_clips = sum(len(ex.video_clip_starts(s.duration, clips, s.path, s.fps, s.num_frames)) for s in sources)
    batch = pcfg.extract_batch_size or ex.batch_size
    workers = pcfg.num_workers if pcfg.num_workers is not None else ex.num_workers
    out = work / "features" / f"{key}.h5"
    device = _device()
    m = Measure(f"extract {key}", "clips", shape=f"{len(sources)} whole videos, {n_clips} clips, stride {ex.stride_frames}, {batch} clips/batch")
    with measuring(m, device):
        _, errors = write_features(out, {"dataset": key, "checkpoint_hash": "preflight"}, sources,
                                   lambda todo: encode_videos(encoder, todo, clips, ex.stride_frames, batch, workers, device=str(device),
                                                               last_clip=ex.last_clip,
                                                               snap_duration_to_frames=ex.snap_duration_to_frames))
    if errors:
        raise RuntimeError(f"extraction of {key}: {errors[0]}")
    m.units = float(n_clips)
    m.extra["videos"] = len(sources)
    m.extra["file_bytes"] = out.stat().st_size
    m.extra["feature_dim"] = int(encoder.out_dim)
    return m


def _repeat(items: list, n: int) -> list:
    return [items[i % len(items)] for i in range(n)]


def measure_gtad(profile: Profile, data: PreflightData, steps: int, work: Path) -> List[Measure]:
    from torch.utils.data import DataLoader

    from clap_bench.downstream.gtad.config import GTADConfig
    from clap_bench.downstream.gtad.data import GTADTrainSet, collect_videos
    from clap_bench.downstream.gtad.model import build_gtad
    from clap_bench.downstream.gtad.train import predict_proposals, train_gtad

    cfg = from_dict(GTADConfig, profile.task_config("tal"), "tasks.tal")
    cfg.validate()
    batch = profile.preflight.task_batch_size or cfg.batch_size
    ann = subset_set(data.full[PRETRAIN_DATASET], data.picks[PRETRAIN_DATASET])
    subset = data.picks[PRETRAIN_DATASET][0].subset
    items = collect_videos(ann, work / "features" / f"{PRETRAIN_DATASET}.h5", subset, cfg.temporal_scale, require_actions=True)
    device = _device()
    train_cfg = dataclasses.replace(cfg, epochs=1)
    loader = DataLoader(GTADTrainSet(_repeat(items, steps * batch), cfg.temporal_scale, cfg.boundary_width), batch_size=batch)
    model = build_gtad(cfg, items[0].features.shape[0])
    shape = f"temporal scale {cfg.temporal_scale}, {batch} videos/iteration, hidden {cfg.hidden_dim_1d}/{cfg.hidden_dim_2d}/{cfg.hidden_dim_3d}"
    train = Measure("G-TAD training (tal)", "videos", shape=shape)
    with measuring(train, device):
        train_gtad(model, loader, train_cfg, device=str(device), generator=torch.Generator().manual_seed(0))
    train.units = float(steps * batch)  # per video, so that a shrunk batch still projects the real one
    train.extra["iterations"] = steps
    infer = Measure("G-TAD inference (tal)", "videos", shape=f"temporal scale {cfg.temporal_scale}, soft-NMS to {cfg.proposals_per_video}")
    feats = [it.features for it in _repeat(items, batch)]
    with measuring(infer, device):
        predict_proposals(model, feats, cfg, device=str(device), batch_size=batch)
    infer.units = float(len(feats))
    return [train, infer]


class _FixedEpisodes:
    """An episode source for the preflight: every episode is ``episode`` (timing needs shapes, not variety)."""

    def __init__(self, episode):
        self.episode = episode

    def episodes(self, run: int, count: int, start: int = 0):
        return [dataclasses.replace(self.episode, run=run, index=start + i) for i in range(count)]


def measure_qat(profile: Profile, data: PreflightData, steps: int, work: Path) -> List[Measure]:
    from clap_bench.downstream.gtad.data import read_video_features
    from clap_bench.downstream.gtad.model import build_gtad
    from clap_bench.downstream.qat.config import QATConfig
    from clap_bench.downstream.qat.model import QueryAdaptiveTransformer
    from clap_bench.downstream.qat.protocol import Episode
    from clap_bench.downstream.qat.task import evaluate_episodes, meta_train, snippet_features

    cfg = from_dict(QATConfig, profile.task_config("fstal"), "tasks.fstal")
    if profile.preflight.qat_adapt_steps is not None:
        cfg.adapt_steps = profile.preflight.qat_adapt_steps
    cfg.validate()
    meta_batch = profile.preflight.task_batch_size or cfg.meta_batch
    videos = {v.id: v for v in data.picks[PRETRAIN_DATASET]}
    raw, _ = read_video_features(work / "features" / f"{PRETRAIN_DATASET}.h5", sorted(videos), cfg.gtad.temporal_scale)
    model = build_gtad(cfg.gtad, next(iter(raw.values())).shape[0])
    device = _device()
    feats = snippet_features(model, raw, device=str(device), snippet_norm=cfg.snippet_norm)
    query = sorted(videos)[0]
    label = videos[query].actions[0].label
    support = tuple(_repeat([v for v in sorted(videos) if any(s.label == label for s in videos[v].actions)], cfg.shots))
    source = _FixedEpisodes(Episode(0, 0, label, query, support))
    transformer = QueryAdaptiveTransformer(feats[query].shape[0], cfg.heads, cfg.dropout, cfg.attention_dropout)
    shape = (f"{cfg.shots}-shot, temporal scale {cfg.gtad.temporal_scale}, {feats[query].shape[0]} channels, "
             f"{cfg.adapt_steps} adaptation steps")
    meta_cfg = dataclasses.replace(cfg, meta_episodes=steps * meta_batch, meta_batch=meta_batch)
    meta = Measure("QAT meta-training (fstal)", "episodes", shape=f"{shape}, {meta_batch} episodes/step")
    with measuring(meta, device):
        meta_train(transformer, source, feats, videos, meta_cfg, device=str(device))
    meta.units = float(steps * meta_batch)
    test_cfg = dataclasses.replace(cfg, runs=1, episodes_per_run=steps * meta_batch)
    test = Measure("QAT test episodes (fstal)", "episodes", shape=f"{shape}, localisation at {len(cfg.thresholds)} thresholds, scoring")
    with measuring(test, device):
        evaluate_episodes(transformer, source, feats, videos, test_cfg, device=str(device))
    test.units = float(test_cfg.episodes_per_run)
    return [meta, test]


def measure_tan(profile: Profile, data: PreflightData, key: str, steps: int, work: Path) -> List[Measure]:
    from clap_bench.downstream.tan2d.features import load_video_features
    from clap_bench.downstream.tan2d.proposals import iou_map, masked_bce_loss, scaled_iou_targets
    from clap_bench.downstream.tan2d.task import build_model, grounding_queries, predict
    from clap_bench.downstream.tan2d.text import build_word_vectors, embed_sentences, pad_words

    cfg = from_dict(_vlg_config_cls(), profile.task_config("vlg"), "tasks.vlg").validate()
    d = cfg.for_dataset(key)
    batch = profile.preflight.task_batch_size or cfg.batch_size
    ann = subset_set(data.full[key], data.picks[key])
    queries = _repeat(grounding_queries(ann, d.train_subset), steps * batch)
    video_feats = load_video_features(work / "features" / f"{key}.h5", {q.video for q in queries}, d.num_sample_clips, cfg.normalize_features)
    # GloVe or a text model missing on this machine: the bundled MiniLM's word pieces stand in (noted)
    glove = cfg.glove_path if _glove_available(cfg.glove_path) else None
    text_model = cfg.text_model if _text_model_available(cfg.text_model) else None
    vectors = build_word_vectors(glove, text_model, [q.sentence for q in queries])
    words = embed_sentences(vectors, [q.sentence for q in queries])
    device = _device()
    torch.manual_seed(0)
    model = build_model(cfg, d, next(iter(video_feats.values())).shape[1], int(words[0].shape[1])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    shape = f"{d.num_clips}x{d.num_clips} map, hidden {cfg.hidden_size}, {batch} queries/iteration"
    train = Measure(f"2D-TAN training ({key})", "queries", shape=shape)
    with measuring(train, device):
        model.train()
        for step in range(steps):
            idx = list(range(step * batch, (step + 1) * batch))
            video = torch.stack([video_feats[queries[i].video] for i in idx]).to(device)
            padded, lengths = pad_words([words[i] for i in idx])
            targets = torch.stack([scaled_iou_targets(iou_map(d.num_clips, queries[i].duration, (queries[i].start, queries[i].end)),
                                                      d.min_iou, d.max_iou) for i in idx]).to(device)
            loss = masked_bce_loss(model(video, padded.to(device), lengths), targets, model.map_mask[0])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"2D-TAN on {key}: loss {loss.item()} in the preflight")
    train.units = float(steps * batch)  # per query, so that a shrunk batch still projects the real one
    train.extra["iterations"] = steps
    infer = Measure(f"2D-TAN inference ({key})", "queries", shape=f"{d.num_clips}x{d.num_clips} map, NMS {d.nms_threshold}, top {cfg.top_k}")
    test_q = queries[:batch]
    with measuring(infer, device):
        predict(model, test_q, video_feats, words[:batch], d.nms_threshold, cfg.top_k, batch, str(device))
    infer.units = float(len(test_q))
    return [train, infer]


# --------------------------------------------------------------------------- dataset sizes and projection
def dataset_sizes(profile: Profile, data: PreflightData) -> Dict[str, dict]:
    """What the full run iterates over, counted from the annotation files (pre-training's segments as
    ``pretrain.short_segments`` leaves them)."""
    from clap_bench.clips.segments import contiguous_segments
    from clap_bench.downstream.gtad.config import GTADConfig
    from clap_bench.training.pretrain import VALIDATION_SUBSETS, segment_rules, validation_annotations

    clips, ex = profile.clips, profile.extract
    vlg = from_dict(_vlg_config_cls(), profile.task_config("vlg"), "tasks.vlg")
    gtad = from_dict(GTADConfig, profile.task_config("tal"), "tasks.tal")
    out: Dict[str, dict] = {}
    for key in extract_datasets(profile):
        ann = data.full[key]
        c = ann.counts()
        out[key] = {
            "videos": c["videos"],
            "subsets": {s: v["videos"] for s, v in c["subsets"].items()},
            "queries": c["queries"],
            # the annotation's fps where it has one (the files are not opened here)
            "extraction_clips": int(sum(len(ex.clip_starts(float(v.duration), clips, v.fps, v.num_frames)) for v in ann.videos.values())),
            "hours_of_video": sum(float(v.duration) for v in ann.videos.values()) / 3600.0,
        }
    anet = data.full[PRETRAIN_DATASET]
    train = anet.subset(*[s for s in ("training", "train") if s in anet.subsets])

    # the segments pre-training samples: with pretrain.short_segments: drop, none shorter than one clip;
    # with pretrain.duplicate_segments: keep, a repeated csv row as often as it is listed
    limits = segment_rules(profile.pretrain, clips)

    def segment_counts(a: AnnotationSet) -> Dict[str, int]:
        fg = bg = 0
        for v in a.videos.values():
            for s in contiguous_segments(v, min_length=limits.get("min_background", 0.0),
                                         min_action_length=limits.get("min_action", 0.0), lists_background=a.lists_background,
                                         duplicates=limits["duplicate_segments"]):
                fg += s.label is not None
                bg += s.label is None
        return {"foreground": fg, "all": fg + bg, "videos": len(a.videos),
                "videos_with_actions": sum(1 for v in a.videos.values() if v.actions)}

    out[PRETRAIN_DATASET]["train_segments"] = segment_counts(train)
    out[PRETRAIN_DATASET]["validation_videos"] = len([v for v in anet.videos.values() if v.subset == gtad.eval_subset])
    if data.fewshot_base is not None:
        out[PRETRAIN_DATASET]["base_train_segments"] = segment_counts(train.restrict_classes(data.fewshot_base))
    if profile.pretrain.validate and any(s in anet.subsets for s in VALIDATION_SUBSETS):
        # the held-out segments pre-training validates on (pretrain.validate), as it picks them
        out[PRETRAIN_DATASET]["val_segments"] = segment_counts(validation_annotations(anet, train.classes))
        if data.fewshot_base is not None:
            try:
                out[PRETRAIN_DATASET]["base_val_segments"] = segment_counts(validation_annotations(anet, data.fewshot_base))
            except ValueError:  # no validation video of the base classes only: that pre-training fails, not projected here
                pass
    for key in grounding_datasets(profile):
        d = vlg.for_dataset(key)
        counts = data.full[key].counts()["subsets"]
        out[key]["train_queries"] = counts.get(d.train_subset, {}).get("sentences", 0)
        out[key]["test_queries"] = counts.get(d.test_subset, {}).get("sentences", 0)
        # 2D-TAN scores the validation subset after every epoch (val_subset: TACoS val)
        out[key]["val_queries"] = counts.get(d.val_subset, {}).get("sentences", 0) if d.val_subset else 0
    if CAPTIONS_DATASET in data.full:
        out[CAPTIONS_DATASET] = {"videos": data.full[CAPTIONS_DATASET].counts()["videos"],
                                 "queries": data.full[CAPTIONS_DATASET].counts()["queries"]}
    if SOURCE_DATASET in data.full:
        # the source model's training videos as source_pretrain reads them: its train subset (all, without
        # one), a video with an action each (one clip per video and epoch)
        trimmed = data.full[SOURCE_DATASET]
        own = [s for s in ("train", "training") if s in trimmed.subsets]
        train_set = trimmed.subset(*own) if own else trimmed
        out[SOURCE_DATASET] = {"videos": len(trimmed.videos),
                               "train_videos": sum(1 for v in train_set.videos.values() if v.actions)}
    return out


def source_models(profile: Profile, seeds: int) -> List[dict]:
    """The source models a sweep of ``seeds`` seeds starts from with ``encoder.weights: source`` (none
    otherwise): the shared one, or one per seed with ``source_pretrain.per_seed``; each with its cache
    folder and whether its final checkpoint is already there (``cached``: the sweep does not train it).
    Looks at the file system only: nothing is trained."""
    if profile.encoder.weights != "source":
        return []
    from clap_bench.config import source_seed
    from clap_bench.training.pretrain import default_source_dir
    from clap_bench.training.trainer import FINAL_NAME

    out = []
    for k in sorted({source_seed(profile, s) for s in range(seeds)}):
        folder = default_source_dir(profile, k)
        out.append({"seed": k, "dir": str(folder), "cached": (folder / FINAL_NAME).is_file()})
    return out


def _processes(cluster, kind: str) -> int:
    if cluster is None:
        return 1
    c = cluster.for_stage(kind)
    return max(1, int(c.nodes) * int(c.tasks_per_node))


def project(profile: Profile, sizes: Dict[str, dict], measures: Dict[str, Measure], methods: Sequence[str],
            seeds: int, cluster, sources: Sequence[dict] = ()) -> dict:
    """Hours per stage of one (method, seed), the totals, the sweep, and the disk taken.

    Each row counts its runs in the sweep as the plan runs the stage (``sweep_runs``); the disk of
    one (method, seed) is a training method's when any of ``methods`` trains. ``sources``
    (:func:`source_models`): the source models the sweep starts from; those not cached are projected
    at TAC's measured pre-training rate (another timed method's where TAC was not timed), their
    checkpoints counted in the sweep's disk."""
    from clap_bench.downstream.gtad.config import GTADConfig
    from clap_bench.downstream.qat.config import QATConfig
    from clap_bench.methods import method_from_profile
    from clap_bench.runs.plan import head_plan, method_trains

    rows: List[dict] = []

    def add(stage: str, method: Optional[str], work: float, unit: str, measure: Optional[str], kind: str, note: str = "",
            methods_of: Optional[List[str]] = None, sweep_runs: Optional[int] = None, heads: Optional[tuple] = None,
            held: Optional[int] = None) -> None:
        """``methods_of``: the methods whose one seed runs it (default: ``method``'s, or every method's);
        ``sweep_runs``: how many times the sweep runs it (default: once per seed of each of them);
        ``heads``: ``(task, dataset or None)`` of a task's head, whose work is done once per head;
        ``held``: the processes the stage holds while the work runs on one of them (process-hours)."""
        if heads is not None:
            n = heads_of(*heads)
            work *= n
            if n != 1:
                note = (f"{note}; " if note else "") + f"x {n} heads (tasks.{heads[0]}.head_seeds)"
        rate = measures[measure].rate if measure is not None else 0.0
        procs = _processes(cluster, kind) if kind in ("pretrain", "source") else 1
        seconds = 0.0 if work == 0 else (work / rate / procs if rate > 0 else float("inf"))
        of = list(methods_of) if methods_of is not None else ([method] if method is not None else list(methods))
        rows.append({"stage": stage, "method": method, "work": work, "unit": unit, "rate_per_process": rate,
                     "processes": procs, "hours": seconds / 3600.0, "process_hours": seconds * (held or procs) / 3600.0, "note": note,
                     "methods": of, "sweep_runs": sweep_runs if sweep_runs is not None else seeds * len(of)})

    p = profile
    anet = sizes[PRETRAIN_DATASET]
    extracted = extract_datasets(p)
    plans = {task: head_plan(p.tasks.get(task), task, f"tasks.{task}") for task in ("tal", "fstal", "vlg")}

    def heads_of(task: str, dataset: Optional[str] = None) -> int:
        """The heads a task stage trains (``tasks.<task>.head_seeds``), on ``dataset`` where given."""
        return sum(1 for datasets in plans[task] if datasets is None or dataset is None or dataset in datasets)

    # Global video features are cached per initial weights (and video list): every method with
    # region GVFs reads the same ones, once for the sweep, or once per seed where each seed has its
    # own source model.
    per_seed_weights = p.encoder.weights == "source" and p.source_pretrain.per_seed
    # A method that does not train (none) has one encoder whatever the seed: the plan keys its
    # pre-training and extraction stages at seed 0 (build_plan), so they run once for the sweep, or
    # once per seed where each seed has its own source model; that encoder's ActivityNet features
    # serve fstal too (no base-class extraction).
    trained = [m for m in methods if method_trains(m)]
    untrained = [m for m in methods if not method_trains(m)]
    untrained_runs = seeds if per_seed_weights else 1
    # The source model(s) every method starts from (encoder.weights: source), trained once per machine
    # (per seed with source_pretrain.per_seed) where not cached: TAC on the trimmed set, one clip per
    # video and epoch. The rate is a measured pre-training's (the same backbone), not the source's own.
    sources = list(sources)
    missing_sources = [s for s in sources if not s["cached"]]
    source_measure = None
    if sources:
        if SOURCE_DATASET not in sizes:
            raise ValueError(f"the source models' projection needs the sizes of the {SOURCE_DATASET!r} dataset")
        tcfg = p.source_pretrain
        per_epoch = sizes[SOURCE_DATASET]["train_videos"]
        if tcfg.max_segments_per_epoch is not None:
            per_epoch = min(per_epoch, tcfg.max_segments_per_epoch)
        cached = [s for s in sources if s["cached"]]
        if missing_sources:
            timed = [k for k in measures if k.startswith("pretrain ")]
            source_measure = "pretrain tac" if "pretrain tac" in measures else (timed[0] if timed else None)
            if source_measure is None:
                raise ValueError("the source models' projection needs a timed pre-training (measure 'pretrain tac')")
            how = ("at TAC's measured rate" if source_measure == "pretrain tac" else
                   f"at {source_measure[len('pretrain '):]}'s measured rate (the same backbone; the source trains TAC)")
            note = (f"{tcfg.epochs} epochs x {per_epoch} {SOURCE_DATASET} videos x 1 clip, {how}; "
                    f"{len(missing_sources)} of {len(sources)} source model(s) not cached on this machine")
            if cached:
                note += f" ({len(cached)} cached)"
            add("source", None, tcfg.epochs * per_epoch, "clips", source_measure, "source", note,
                methods_of=list(methods), sweep_runs=len(missing_sources))
        else:
            add("source", None, 0, "clips", None, "source",
                f"cached on this machine: {', '.join(s['dir'] for s in cached)}", methods_of=list(methods), sweep_runs=0)
    gvf_methods: Dict[str, List[str]] = {}
    for method in methods:
        if not method_trains(method):
            continue  # its pre-training stage writes the initial weights as they are: nothing to project
        mcfg = method_from_profile(method, p.methods)
        for variant, seg_key in (("pretrain", "train_segments"), ("pretrain-base", "base_train_segments")):
            if seg_key not in anet:
                continue
            segments = anet[seg_key]["foreground" if mcfg.regions == "foreground" else "all"]
            if p.pretrain.max_segments_per_epoch is not None:
                segments = min(segments, p.pretrain.max_segments_per_epoch)
            add(variant, method, p.pretrain.epochs * segments * p.clips.clips_per_segment, "clips",
                f"pretrain {method}", "pretrain", f"{p.pretrain.epochs} epochs x {segments} segments x {p.clips.clips_per_segment} clips")
            val_key = seg_key.replace("train_segments", "val_segments")
            if p.pretrain.validate and val_key in anet:
                # before the first epoch and after each, on the main process (the others wait); the
                # preflight does not time it: the extraction rate is the backbone's forward on clips
                val = anet[val_key]["foreground" if mcfg.regions == "foreground" else "all"]
                if p.pretrain.val_max_segments is not None:
                    val = min(val, p.pretrain.val_max_segments)
                per = p.pretrain.val_clips_per_segment or p.clips.clips_per_segment
                passes = p.pretrain.epochs + 1
                held = _processes(cluster, "pretrain")
                add(f"{variant} validation", method, passes * val * per, "clips", f"extract {PRETRAIN_DATASET}", "extract",
                    f"{passes} passes x {val} held-out segments x {per} clips, at the extraction rate (the backbone's forward; "
                    f"the heads and per-segment decoding untimed)" + (f"; the other {held - 1} processes wait" if held > 1 else ""),
                    held=held)
            if mcfg.region_gvf:
                gvf_methods.setdefault(variant, []).append(method)
    for variant, seg_key in (("pretrain", "train_segments"), ("pretrain-base", "base_train_segments")):
        if variant in gvf_methods:
            of = gvf_methods[variant]
            once = ("once per seed (each seed its own source model)" if per_seed_weights else
                    f"once for the sweep (every method starts from {p.encoder.weights or 'random'} weights)")
            val_key = seg_key.replace("train_segments", "val_segments")
            videos = anet[seg_key]["videos"] + (anet[val_key]["videos"] if p.pretrain.validate and val_key in anet else 0)
            add(f"{variant} GVF", ", ".join(of), anet["extraction_clips"] * videos / max(1, anet["videos"]),
                "clips", f"extract {PRETRAIN_DATASET}", "extract",
                f"global video features of the training{' and validation' if videos > anet[seg_key]['videos'] else ''} videos, "
                f"cached per initial weights: {once}",
                methods_of=of, sweep_runs=seeds if per_seed_weights else 1)
    shared_note = (f"{', '.join(untrained)}: once for the sweep (no training: one encoder for every seed)"
                   if untrained and not per_seed_weights else "")
    for key in extracted:
        add(f"extract-{key}", None, sizes[key]["extraction_clips"], "clips", f"extract {key}", "extract", shared_note,
            sweep_runs=seeds * len(trained) + untrained_runs * len(untrained))
    if "base_train_segments" in anet and trained:
        add(f"extract-base-{PRETRAIN_DATASET}", None, anet["extraction_clips"], "clips", f"extract {PRETRAIN_DATASET}", "extract",
            methods_of=trained)
    gtad = from_dict(GTADConfig, p.task_config("tal"), "tasks.tal")
    n_train = anet["train_segments"]["videos_with_actions"]
    add("tal: G-TAD training", None, gtad.epochs * n_train, "videos", "G-TAD training (tal)", "task",
        f"{gtad.epochs} epochs x {n_train} videos ({math.ceil(n_train / gtad.batch_size)} iterations of {gtad.batch_size})",
        heads=("tal", None))
    add("tal: G-TAD inference", None, anet["validation_videos"], "videos", "G-TAD inference (tal)", "task", heads=("tal", None))
    if "base_train_segments" in anet:
        qat = from_dict(QATConfig, p.task_config("fstal"), "tasks.fstal")
        n_base = anet["base_train_segments"]["videos_with_actions"]
        add("fstal: G-TAD on base classes", None, qat.gtad.epochs * n_base, "videos",
            "G-TAD training (tal)", "task", f"{qat.gtad.epochs} epochs x {n_base} videos, at the tal task's G-TAD rate",
            heads=("fstal", None))
        measured_steps = p.preflight.qat_adapt_steps if p.preflight.qat_adapt_steps is not None else qat.adapt_steps
        shrunk = (f"measured at {measured_steps} adaptation steps per episode, the run takes {qat.adapt_steps}: "
                  "hours too low" if measured_steps != qat.adapt_steps else "")
        add("fstal: meta-training", None, qat.meta_episodes, "episodes", "QAT meta-training (fstal)", "task", shrunk,
            heads=("fstal", None))
        from clap_bench.downstream.qat.task import selection_steps

        meta_steps = math.ceil(qat.meta_episodes / qat.meta_batch)
        selections = len(selection_steps(meta_steps, qat.select_every)) if qat.select_episodes else 0
        add("fstal: selection + test episodes", None, selections * qat.select_episodes + qat.runs * qat.episodes_per_run, "episodes",
            "QAT test episodes (fstal)", "task",
            f"{selections} selections x {qat.select_episodes} + {qat.runs} runs x {qat.episodes_per_run}" + (f"; {shrunk}" if shrunk else ""),
            heads=("fstal", None))
    vlg = from_dict(_vlg_config_cls(), p.task_config("vlg"), "tasks.vlg")
    for key in grounding_datasets(p):
        d = vlg.for_dataset(key)
        epochs = d.epochs if d.epochs is not None else vlg.epochs
        n_q = sizes[key]["train_queries"]
        if vlg.max_train_queries is not None:
            n_q = min(n_q, vlg.max_train_queries)
        add(f"vlg: 2D-TAN training {key}", None, epochs * n_q, "queries", f"2D-TAN training ({key})", "task",
            f"{epochs} epochs x {n_q} queries ({math.ceil(n_q / vlg.batch_size)} iterations of {vlg.batch_size})",
            heads=("vlg", key))
        n_val = sizes[key].get("val_queries", 0)
        if n_val:
            add(f"vlg: 2D-TAN validation {key}", None, epochs * n_val, "queries", f"2D-TAN inference ({key})", "task",
                f"{epochs} epochs x {n_val} {d.val_subset} queries, at the inference rate (the same forward)", heads=("vlg", key))
        add(f"vlg: 2D-TAN inference {key}", None, sizes[key]["test_queries"], "queries", f"2D-TAN inference ({key})", "task",
            heads=("vlg", key))

    per_method = {}
    for method in methods:
        mine = [r for r in rows if method in r["methods"]]
        per_method[method] = {"hours": sum(r["hours"] for r in mine), "process_hours": sum(r["process_hours"] for r in mine)}
    feature_bytes_per_value = np.mean([measures[f"extract {k}"].extra["file_bytes"] /
                                       (measures[f"extract {k}"].units * measures[f"extract {k}"].extra["feature_dim"])
                                       for k in extracted])
    dim = measures[f"extract {PRETRAIN_DATASET}"].extra["feature_dim"]
    files = {k: sizes[k]["extraction_clips"] * dim for k in extracted}
    if "base_train_segments" in anet:
        files[f"base-{PRETRAIN_DATASET}"] = files[PRETRAIN_DATASET]
    feature_bytes = {k: int(v * feature_bytes_per_value) for k, v in files.items()}
    # a method that does not train was not timed: the timed methods' mean checkpoint stands for its (0 if none was timed)
    ckpt = int(np.mean([measures[f"pretrain {m}"].extra.get("checkpoint_bytes", 0) for m in methods if f"pretrain {m}" in measures] or [0]))
    # per (method, seed) of a method that trains: every feature file and a checkpoint per pre-training
    # (all classes, base classes); of one that does not: its one encoder's files, without base-class features
    trained_disk = (feature_bytes, (2 if "base_train_segments" in anet else 1) * ckpt)
    untrained_disk = ({k: v for k, v in feature_bytes.items() if k != f"base-{PRETRAIN_DATASET}"}, ckpt)
    shown_features, shown_ckpts = trained_disk if trained else untrained_disk
    # a source model's checkpoints: TAC's measured pre-training's where it was timed, else the stand-in above
    source_ckpt = measures["pretrain tac"].extra.get("checkpoint_bytes", ckpt) if "pretrain tac" in measures else ckpt
    source_bytes = len(missing_sources) * source_ckpt
    sweep_bytes = (seeds * len(trained) * (sum(trained_disk[0].values()) + trained_disk[1])
                   + untrained_runs * len(untrained) * (sum(untrained_disk[0].values()) + untrained_disk[1]) + source_bytes)
    return {
        "stages": rows,
        "one_seed": per_method,
        "sweep": {"methods": list(methods), "seeds": seeds,
                  "hours_if_serial": sum(r["hours"] * r["sweep_runs"] for r in rows),
                  "process_hours": sum(r["process_hours"] * r["sweep_runs"] for r in rows)},
        "disk": {"feature_files_one_seed": shown_features, "checkpoints_one_seed": shown_ckpts,
                 "one_seed_bytes": sum(shown_features.values()) + shown_ckpts, "sweep_bytes": sweep_bytes},
        "source": {"models": sources, "to_train": len(missing_sources), "bytes": source_bytes},
        "cluster": getattr(cluster, "source", None),
        "pretrain_processes": _processes(cluster, "pretrain"),
    }


# --------------------------------------------------------------------------- entry point
def preflight_shrinks(profile: Profile) -> Dict[str, Any]:
    """The ``preflight.*`` keys that shrink the run (not the profile's shapes), with their values."""
    pcfg = profile.preflight
    keys = ("batch_size", "extract_batch_size", "task_batch_size", "qat_adapt_steps", "max_video_seconds", "num_workers")
    return {f"preflight.{k}": getattr(pcfg, k) for k in keys if getattr(pcfg, k) is not None}


def run_preflight(profile: Profile, methods: Sequence[str], videos: int = 2, steps: int = 2, stand_in: bool = False,
                  seeds: int = 5, cluster_path: Optional[str] = None, work_dir: Optional[Path] = None,
                  progress=None) -> dict:
    """Run every stage at the profile's shapes and project the full run; returns the report (JSON-ready)."""
    from clap_bench.runs.slurm import load_cluster

    if videos < 1 or steps < 1:
        raise ValueError(f"--videos and --steps must be >= 1, got {videos} and {steps}")
    say = progress or (lambda msg: None)
    cluster_file = cluster_path or profile.preflight.cluster or (str(DEFAULT_CLUSTER) if DEFAULT_CLUSTER.is_file() else None)
    cluster = load_cluster(cluster_file) if cluster_file else None
    own = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="clapbench-preflight-")) if own else Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    notes: List[str] = []
    t0 = time.perf_counter()
    try:
        say("reading annotations and placing videos")
        data = load_data(profile, work, videos, stand_in)
        if not _kinetics_available(profile):
            notes.append("Kinetics-400 weights not in the torch hub cache: the preflight starts from random weights (same cost)")
        sources = source_models(profile, seeds)
        missing_sources = [s for s in sources if not s["cached"]]
        if sources:
            status = (f"{len(missing_sources)} of {len(sources)} not cached on this machine: projected at a measured "
                      "pre-training rate (not timed on the trimmed set)" if missing_sources else "cached on this machine")
            notes.append("encoder.weights: source: the preflight pre-trains from random weights (same cost); the source "
                         "model's own training (once per machine, or per seed with source_pretrain.per_seed): " + status)
        if not _text_model_available(profile.encoder.text_model):
            notes.append(f"text model {profile.encoder.text_model!r} not on this machine: the bundled all-MiniLM-L6-v2 "
                         "stands in (384-d instead of BERT's 768-d; the video encoder's cost is the same)")
        vlg_glove = (profile.task_config("vlg")).get("glove_path")
        if not _glove_available(vlg_glove):
            notes.append(f"GloVe file {vlg_glove} not found: 2D-TAN reads the text encoder's word pieces instead")
        made = sum(k == "stand-in" for kinds in data.kinds.values() for k in kinds.values())
        if made:
            notes.append(f"{made} stand-in videos ({profile.preflight.stand_in_fps:g} fps, "
                         f"{profile.preflight.stand_in_size[1]}x{profile.preflight.stand_in_size[0]})")
        measures: Dict[str, Measure] = {}
        from clap_bench.runs.plan import method_trains

        for method in methods:
            if not method_trains(method):
                notes.append(f"method {method!r} does not train (its pre-training writes the initial weights): "
                             "no pre-training to time or project for it")
                continue
            say(f"pre-training {method}: {steps} steps")
            m = measure_pretrain(profile, data, method, steps, work)
            measures[m.stage] = m
        if missing_sources and not any(k.startswith("pretrain ") for k in measures):
            # no method was timed (none only): time the source model's method, as any method's steps
            say(f"pre-training tac (the source model's method): {steps} steps")
            m = measure_pretrain(profile, data, "tac", steps, work)
            measures[m.stage] = m
        for key in extract_datasets(profile):
            say(f"extracting {key}: {videos} videos")
            m = measure_extraction(profile, data, key, work)
            measures[m.stage] = m
        say(f"G-TAD: {steps} iterations")
        for m in measure_gtad(profile, data, steps, work):
            measures[m.stage] = m
        say(f"QAT: {steps} meta-training steps and test episodes")
        for m in measure_qat(profile, data, steps, work):
            measures[m.stage] = m
        for key in grounding_datasets(profile):
            say(f"2D-TAN on {key}: {steps} iterations")
            for m in measure_tan(profile, data, key, steps, work):
                measures[m.stage] = m
        sizes = dataset_sizes(profile, data)
        projection = project(profile, sizes, measures, methods, seeds, cluster, sources=sources)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    device = _device()
    return {
        "profile": profile.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "videos_per_dataset": videos,
        "steps": steps,
        "methods": list(methods),
        "shrinks": preflight_shrinks(profile),
        "videos": {k: v for k, v in data.kinds.items()},
        "measures": [m.to_dict() for m in measures.values()],
        "datasets": sizes,
        "projection": projection,
        "notes": notes,
        "seconds": time.perf_counter() - t0,
    }
