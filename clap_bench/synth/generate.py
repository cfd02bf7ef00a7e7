"""Generating the synthetic benchmark into the cache, in the real datasets' file formats.

``ensure_synthetic(profile, seed)`` writes (once per (profile, seed)) into
``<cache_dir>/synth/<profile>-seed<seed>/``::

    activitynet/           activity_net.v1-3.min.json, TSP csvs (train/valid, with background rows),
                           TSP label mappings, videos/v_<id>.mp4
    activitynet-captions/  train.json, val.json (same videos)
    charades-sta/          charades_sta_{train,test}.txt, Charades_v1_{train,test}.csv, videos/<id>.mp4
    tacos/                 {train,val,test}.json (frames, fps, num_frames), videos/<name>.mp4
    fewshot-split/         base.txt, fs_val.txt, fs_test.txt
    trimmed/               train.csv, validate.csv (Kinetics layout), videos/<id>_<start>_<end>.mp4
    scenes.json            how each video was drawn (for tests and inspection; no stage reads it)
    manifest.json          written last: generator version, files and sizes

A folder without a matching manifest (an interrupted run, an older generator or dataset revision,
other sizes) is regenerated.
Generation happens in a sibling temporary folder that is renamed into place at the end, under
a file lock, so concurrent jobs never see half a dataset.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from fractions import Fraction
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from clap_bench.config import DatasetConfig, default_cache_dir
from clap_bench.io import atomic_write_json, atomic_write_text, file_lock
from clap_bench.synth import language
from clap_bench.synth.scenes import (
    Instance,
    anet_scene,
    charades_id,
    grounding_scene,
    trimmed_scene,
    youtube_id,
)
from clap_bench.synth.world import (
    ACTION_COLOURS,
    ACTION_MOTIONS,
    ACTION_SHAPES,
    CLASS_TABLES,
    EXTRA_TRIMMED_CLASSES,
    FPS,
    HEIGHT,
    WIDTH,
    ActionClass,
    Scene,
    iter_video,
)

# Bump when the output for a given (profile, seed) changes; older caches are then regenerated.
GENERATOR_VERSION = "4"

# Bump a dataset's revision when only that dataset's files change (its sizes or its scenes): the
# cache is regenerated, but since each dataset draws from its own random stream the other
# datasets' files are the same bytes, and only the changed dataset's run-store stages get new
# keys (``clap_bench.config.data_identity``). A dataset not listed is at revision 1. A revision
# holds for every profile (the smoke profile's TACoS-like set is regenerated and re-keyed too).
DATASET_REVISIONS: Dict[str, int] = {
    # 2: the default profile's TACoS-like set grew from 18 / 6 / 6 to 240 / 30 / 30 videos.
    "tacos": 2,
    # 2: the default profile's Charades-like test split grew from 60 to 240 videos (337 to 1,356
    # queries); the training videos and the first 60 test videos are those of revision 1.
    "charades-sta": 2,
}


def dataset_revision(key: str) -> int:
    """The generation revision of synthetic dataset ``key`` (1 unless ``DATASET_REVISIONS`` says more)."""
    return DATASET_REVISIONS.get(key, 1)


def dataset_revisions() -> Dict[str, int]:
    """Every synthetic dataset's revision, as a manifest records them."""
    return {key: dataset_revision(key) for key in sorted(_dataset_layout())}


PathLike = Union[str, Path]


@dataclass(frozen=True)
class SynthProfile:
    """Sizes of one synthetic benchmark profile. Seconds are (min, max) ranges."""

    name: str
    class_table: str  # key of world.CLASS_TABLES
    extra_trimmed_classes: int  # source-only classes of the trimmed set
    anet_train: int
    anet_val: int
    anet_seconds: Tuple[float, float]
    anet_max_instances: int
    distractors: Tuple[int, int]  # per untrimmed video
    charades_train: int
    charades_test: int
    charades_seconds: Tuple[float, float]
    charades_events: Tuple[int, int]
    charades_event_seconds: Tuple[float, float]
    tacos_train: int
    tacos_val: int
    tacos_test: int
    tacos_seconds: Tuple[float, float]
    tacos_events: Tuple[int, int]
    tacos_event_seconds: Tuple[float, float]
    trimmed_train_per_class: int
    trimmed_val_per_class: int
    trimmed_seconds: int = 2

    @property
    def classes(self) -> List[ActionClass]:
        return CLASS_TABLES[self.class_table]


PROFILES: Dict[str, SynthProfile] = {
    # Seconds to generate: for tests and a first look.
    "smoke": SynthProfile(
        name="smoke", class_table="k6", extra_trimmed_classes=2,
        anet_train=8, anet_val=4, anet_seconds=(8.0, 12.0), anet_max_instances=2, distractors=(1, 2),
        charades_train=4, charades_test=2, charades_seconds=(8.0, 12.0), charades_events=(2, 3), charades_event_seconds=(1.5, 3.5),
        tacos_train=1, tacos_val=1, tacos_test=1, tacos_seconds=(14.0, 18.0), tacos_events=(4, 6), tacos_event_seconds=(1.0, 3.0),
        trimmed_train_per_class=3, trimmed_val_per_class=1,
    ),
    # The embedded default benchmark. K=20 classes so that the 80/10/10 few-shot split leaves
    # 2 unseen classes each for validation and test (16/2/2, like ActivityNet's 160/20/20);
    # 6 videos per class (4 training, 2 validation). The grounding sets are large enough for a
    # 2D-TAN head to learn which words name which motion: with 30 Charades-like training videos
    # (164 queries) it fitted them in a few epochs and ranked test moments no better on trained
    # features than on random ones; with 240 (about 1,900 queries) it does. The same held on the
    # TACoS-like set: 18 training videos (531 queries) were level with random features at any
    # budget tried, 240 (7,191 queries) are not (README, "the TACoS-like set"). The Charades-like
    # test split has as many videos as its training split: on 60 test videos (337 queries) the
    # 2D-TAN head's seed alone moved R@1 IoU 0.5 by about 2 points (README, "The Charades-like
    # test split, revision 2").
    "default": SynthProfile(
        name="default", class_table="k20", extra_trimmed_classes=4,
        anet_train=80, anet_val=40, anet_seconds=(15.0, 45.0), anet_max_instances=4, distractors=(1, 3),
        charades_train=240, charades_test=240, charades_seconds=(15.0, 30.0), charades_events=(3, 5), charades_event_seconds=(2.0, 8.0),
        tacos_train=240, tacos_val=30, tacos_test=30, tacos_seconds=(40.0, 60.0), tacos_events=(8, 12), tacos_event_seconds=(1.5, 6.0),
        trimmed_train_per_class=30, trimmed_val_per_class=6,
    ),
}

# Stream codes that keep the random draws of each dataset independent of the others.
_STREAMS = {"activitynet": 1, "charades-sta": 2, "tacos": 3, "trimmed": 4, "fewshot-split": 5}

# Charades-style action codes (c000, c001, ...) for every appearance x motion.
_CHARADES_CODES = {
    (s, c, m): f"c{i:03d}"
    for i, (s, c, m) in enumerate((s, c, m) for s in ACTION_SHAPES for c in ACTION_COLOURS for m in ACTION_MOTIONS)
}


class SynthError(RuntimeError):
    pass


def get_profile(name: str) -> SynthProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise SynthError(f"unknown synthetic profile {name!r}; expected one of {', '.join(PROFILES)}") from None


def synth_root(profile: str, seed: int, cache_dir: PathLike) -> Path:
    return Path(cache_dir).expanduser().resolve() / "synth" / f"{profile}-seed{seed}"


# --------------------------------------------------------------------------- video files
def _yuv_frame(av, yuv: np.ndarray):
    """A yuv420p VideoFrame whose row padding is zero.

    x264 reads a little past the picture width; left uninitialised, the padding made the
    encoded bytes differ from run to run.
    """
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    frame = av.VideoFrame(w, h, "yuv420p")
    planes = (yuv[:h], yuv[h:h + h // 4].reshape(h // 2, w // 2), yuv[h + h // 4:].reshape(h // 2, w // 2))
    for plane, data in zip(frame.planes, planes):
        padded = np.zeros((plane.height, plane.line_size), np.uint8)
        padded[:, : data.shape[1]] = data
        plane.update(padded)
    return frame


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 -> planar yuv420p (H * 3 / 2, W) uint8, BT.601 limited range.

    Done here rather than by swscale: its SIMD paths round differently depending on buffer
    alignment, which made the encoded bytes differ from run to run.
    """
    h, w, _ = rgb.shape
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + (65.738 * r + 129.057 * g + 25.064 * b) / 256.0
    cb = 128.0 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256.0
    cr = 128.0 + (112.439 * r - 94.154 * g - 18.285 * b) / 256.0
    cb = cb.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    cr = cr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = np.clip(np.floor(y + 0.5), 0, 255)
    out[h:h + h // 4] = np.clip(np.floor(cb + 0.5), 0, 255).reshape(h // 4, w)
    out[h + h // 4:] = np.clip(np.floor(cr + 0.5), 0, 255).reshape(h // 4, w)
    return out


# cpu-independent: x264's switch for bit-exact output regardless of CPU and memory state
# (benchmarks/cpu_fingerprints.py encodes with x264's assembly turned off and compares).
X264_OPTIONS = {"preset": "veryfast", "crf": "23", "x264-params": "cpu-independent=1"}


def write_video(scene: Scene, path: Path) -> None:
    """Encode ``scene`` as H.264 (libx264, yuv420p) mp4 at FPS; deterministic (one thread)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width = WIDTH
        stream.height = HEIGHT
        stream.pix_fmt = "yuv420p"
        stream.codec_context.options = dict(X264_OPTIONS)
        stream.codec_context.thread_count = 1
        time_base = Fraction(1, FPS)
        stream.codec_context.time_base = time_base
        index = 0
        for chunk in iter_video(scene):
            for frame in chunk:
                video_frame = _yuv_frame(av, rgb_to_yuv420p(frame))
                # Explicit timestamps: x264's rate control reads them, and unset ones make
                # the bitstream differ from run to run.
                video_frame.pts = index
                video_frame.time_base = time_base
                index += 1
                for packet in stream.encode(video_frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- writers
def _csv_text(header: List[str], rows: List[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _captions(scene: Scene, instances: List[Instance], rng: np.random.Generator) -> Tuple[List[List[float]], List[str]]:
    """ActivityNet-Captions-style sentences: one per instance (sometimes starting at the idle
    actor or spilling into background, sometimes covering only part of the action), some about
    distractors and the scene."""
    duration = scene.duration
    items: List[Tuple[float, float, str]] = []
    if rng.random() < 0.5:
        items.append((0.0, min(duration, rng.uniform(2.0, 6.0)), language.caption_scene(scene.background, rng)))
    for n, inst in enumerate(instances):
        track = inst.track
        s, e = inst.start, inst.end
        idle_first = track.visible_start < s - 0.3 and rng.random() < 0.5
        text = language.caption_action(track, rng, repeat=n > 0, idle_first=idle_first)
        if idle_first:
            s = track.visible_start
        else:
            roll = rng.random()
            length = e - s
            if roll < 0.25 and length > 3.0:  # only part of the action
                a = rng.uniform(0.0, 0.3) * length
                b = rng.uniform(0.0, 0.3) * length
                s, e = s + a, e - b
            elif roll < 0.5:  # spills into the background around it
                s = max(0.0, s - rng.uniform(0.3, 2.0))
                e = min(duration, e + rng.uniform(0.3, 2.0))
            else:  # annotators' imprecision
                s = max(0.0, s + rng.normal(0.0, 0.3))
                e = min(duration, e + rng.normal(0.0, 0.3))
        if e - s < 0.3:
            s, e = inst.start, inst.end
        items.append((s, e, text))
    for track in scene.tracks:
        if track.kind == "distractor" and rng.random() < 0.3 and track.visible_end - track.visible_start > 2.0:
            items.append((max(track.visible_start, 0.0), min(track.visible_end, duration), language.caption_distractor(track, rng)))
    if scene.background.cut is not None and rng.random() < 0.5:
        c = scene.background.cut
        items.append((c, min(duration, c + rng.uniform(1.0, 4.0)), language.caption_cut(scene.background, rng)))
    items.sort(key=lambda x: (x[0], x[1]))
    stamps = [[round(s, 2), round(e, 2)] for s, e, _ in items]
    # The published file starts every sentence but the first of a video with a space.
    texts = [t if i == 0 else " " + t for i, (_, _, t) in enumerate(items)]
    return stamps, texts


def _repeats(events: List[Instance], event: Instance) -> bool:
    """Whether another event of the video shows the same object doing the same motion."""
    key = (event.track.shape, event.track.colour, event.track.motion)
    return sum((e.track.shape, e.track.colour, e.track.motion) == key for e in events) > 1


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _write_scene(item: Tuple[Scene, Path]) -> None:
    write_video(*item)


def default_workers() -> int:
    """Processes that render videos: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover (not Linux)
        return max(1, os.cpu_count() or 1)


class _Writer:
    """Collects the files of one generation and renders the videos.

    Videos are rendered by ``workers`` processes: each video is a pure function of its scene (drawn
    beforehand in this process from the generation's seeded streams) and x264 runs single-threaded
    and CPU-independent, so the bytes do not depend on the number of workers."""

    def __init__(self, root: Path, profile: SynthProfile, seed: int, progress: bool, workers: int = 1):
        self.root = root
        self.profile = profile
        self.seed = seed
        self.progress = progress
        self.workers = max(1, int(workers))
        self._pool = None
        self.scenes: Dict[str, dict] = {}
        self.taken_ids: set = set()
        self.counts: Dict[str, dict] = {}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _rendered(self, scenes: List[Tuple[Scene, Path]]):
        """Renders ``scenes`` (in parallel when there are workers), yielding each in order when written."""
        if self.workers == 1 or len(scenes) < 2:
            for item in scenes:
                _write_scene(item)
                yield item
            return
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: the parent may hold torch's thread pools, which do not survive a fork
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        from concurrent.futures.process import BrokenProcessPool

        try:
            for item, _ in zip(scenes, self._pool.map(_write_scene, scenes)):
                yield item
        except BrokenProcessPool as e:
            raise SynthError(
                f"a process rendering the synthetic videos died ({e}); its own error, printed above, says why"
            ) from e

    def rng(self, stream: str, *more: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, _STREAMS[stream], *more])

    def videos(self, scenes: List[Tuple[Scene, Path]], what: str) -> None:
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(scenes), desc=f"synth {what}", unit="video", file=sys.stderr)
        for scene, path in self._rendered(scenes):
            self.scenes[f"{scene.dataset}/{scene.video_id}"] = scene.to_dict()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

    # ------------------------------------------------------------------ ActivityNet + captions
    def activitynet(self) -> None:
        p = self.profile
        classes = p.classes
        rng = self.rng("activitynet")
        out = self.root / "activitynet"
        scenes: List[Tuple[Scene, Path]] = []
        database: Dict[str, dict] = {}
        rows_action: Dict[str, list] = {"training": [], "validation": []}
        rows_background: Dict[str, list] = {"training": [], "validation": []}
        captions: Dict[str, Dict[str, dict]] = {"training": {}, "validation": {}}
        index = 0
        for subset, count in (("training", p.anet_train), ("validation", p.anet_val)):
            order = [classes[i % len(classes)] for i in range(count)]
            rng.shuffle(order)
            for cls in order:
                vrng = self.rng("activitynet", 1000 + index)
                index += 1
                bare = youtube_id(vrng, self.taken_ids)
                vid = "v_" + bare
                scene, instances = anet_scene(vrng, vid, cls, p.anet_seconds, p.anet_max_instances, p.distractors)
                duration = scene.duration
                scenes.append((scene, out / "videos" / f"{vid}.mp4"))
                database[bare] = {
                    "duration": round(duration, 3),
                    "subset": subset,
                    "resolution": f"{WIDTH}x{HEIGHT}",
                    "url": f"https://www.youtube.com/watch?v={bare}",
                    "annotations": [{"segment": [i.start, i.end], "label": cls.name} for i in instances],
                }
                meta = [duration, f"{vid}.mp4", float(FPS), scene.num_frames]
                for i in instances:
                    # TSP's csv starts an action at the first frame with t-start 0.01.
                    start = i.start if i.start > 0 else 0.01
                    rows_action[subset].append([bare, start, i.end, cls.name, meta[0], meta[1], meta[2], meta[3], "Action"])
                t = 0.0
                for i in instances:
                    if i.start - t > 1e-6:
                        rows_background[subset].append([bare, t, i.start, "", *meta, "No action"])
                    t = i.end
                if duration - t > 1e-6:
                    rows_background[subset].append([bare, t, duration, "", *meta, "No action"])
                stamps, texts = _captions(scene, instances, vrng)
                captions[subset][vid] = {"duration": round(duration, 2), "timestamps": stamps, "sentences": texts}
        self.videos(scenes, "activitynet")
        taxonomy = [{"parentName": None, "nodeName": "Root", "nodeId": 0, "parentId": None}]
        for n, cls in enumerate(sorted(classes, key=lambda c: c.name)):
            taxonomy.append({"parentName": "Root", "nodeName": cls.name, "nodeId": n + 1, "parentId": 0})
        # ".min.json": the official file is minified.
        atomic_write_text(
            out / "activity_net.v1-3.min.json",
            json.dumps({"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database}, separators=(",", ":")),
        )
        header = ["video-name", "t-start", "t-end", "action-label", "video-duration", "filename", "fps", "video-frames", "temporal-region-label"]
        for subset, name in (("training", "train"), ("validation", "valid")):
            background = sorted(rows_background[subset], key=lambda r: (r[0], r[1]))
            atomic_write_text(out / f"activitynet_v1-3_{name}_tsp_groundtruth.csv", _csv_text(header, rows_action[subset] + background))
        atomic_write_text(out / "activitynet_v1-3_action_label_mapping.json", json.dumps(sorted(c.name for c in classes), indent=0) + "\n")
        atomic_write_text(out / "activitynet_v1-3_temporal_region_label_mapping.json", json.dumps(["Action", "No action"], indent=0) + "\n")
        cap = self.root / "activitynet-captions"
        atomic_write_json(cap / "train.json", captions["training"])
        atomic_write_json(cap / "val.json", captions["validation"])
        self.counts["activitynet"] = {
            "videos": len(database), "actions": sum(len(v) for v in rows_action.values()),
            "background": sum(len(v) for v in rows_background.values()), "classes": len(classes),
            "seconds": round(sum(s.duration for s, _ in scenes), 1),
        }
        self.counts["activitynet-captions"] = {
            "videos": len(database), "sentences": sum(len(v["sentences"]) for c in captions.values() for v in c.values()),
        }

    # ------------------------------------------------------------------ Charades-STA
    def charades(self) -> None:
        p = self.profile
        out = self.root / "charades-sta"
        scenes: List[Tuple[Scene, Path]] = []
        index = 0
        total_queries = 0
        length_header = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions", "actions", "length"]
        for subset, count in (("train", p.charades_train), ("test", p.charades_test)):
            lines: List[str] = []
            rows: List[list] = []
            for _ in range(count):
                vrng = self.rng("charades-sta", index)
                index += 1
                vid = charades_id(vrng, self.taken_ids)
                scene, events = grounding_scene(
                    vrng, "charades-sta", vid, p.charades_seconds, p.charades_events, p.charades_event_seconds, p.distractors
                )
                scenes.append((scene, out / "videos" / f"{vid}.mp4"))
                length = round(scene.duration, 2)
                sentences = []
                for ev in events:
                    start = round(ev.start, 1)
                    end = round(ev.end, 1)
                    # Like the published file, an event at the very end is sometimes annotated
                    # past the video's length (readers clip it).
                    if scene.duration - ev.end < 1.0 and vrng.random() < 0.5:
                        end = round(length + vrng.uniform(0.1, 1.5), 1)
                    repeated = _repeats(events, ev)
                    for _ in range(1 if vrng.random() < 0.6 else 2):
                        text = language.charades_sentence(ev.track, vrng, need_position=repeated)
                        lines.append(f"{vid} {start} {end}##{text}")
                        sentences.append(text)
                codes = ";".join(f"{_CHARADES_CODES[(e.track.shape, e.track.colour, e.track.motion)]} {e.start:.2f} {e.end:.2f}" for e in events)
                objects = ";".join(sorted({e.track.shape for e in events}))
                rows.append([
                    vid, "".join(vrng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"), 4)),
                    language.background_tone(scene.background).capitalize() + " pattern",
                    int(vrng.integers(5, 8)), int(vrng.integers(5, 8)), "Yes",
                    " ".join(sentences[:2]), objects, " ".join(sentences), codes, f"{length:.2f}",
                ])
            total_queries += len(lines)
            atomic_write_text(out / f"charades_sta_{subset}.txt", "\n".join(lines) + "\n")
            atomic_write_text(out / f"Charades_v1_{subset}.csv", _csv_text(length_header, rows))
        self.videos(scenes, "charades-sta")
        self.counts["charades-sta"] = {"videos": len(scenes), "queries": total_queries, "seconds": round(sum(s.duration for s, _ in scenes), 1)}

    # ------------------------------------------------------------------ TACoS
    def tacos(self) -> None:
        p = self.profile
        out = self.root / "tacos"
        scenes: List[Tuple[Scene, Path]] = []
        index = 0
        total_queries = 0
        names: set = set()
        for subset, count in (("train", p.tacos_train), ("val", p.tacos_val), ("test", p.tacos_test)):
            data: Dict[str, dict] = {}
            for _ in range(count):
                vrng = self.rng("tacos", index)
                index += 1
                while True:
                    stem = f"s{int(vrng.integers(10, 40))}-d{int(vrng.integers(10, 75))}"
                    if stem not in names:
                        names.add(stem)
                        break
                scene, events = grounding_scene(
                    vrng, "tacos", stem, p.tacos_seconds, p.tacos_events, p.tacos_event_seconds, p.distractors
                )
                scenes.append((scene, out / "videos" / f"{stem}.mp4"))
                stamps: List[List[int]] = []
                texts: List[str] = []

                def frames(t: float) -> int:
                    return min(int(round(t * FPS)), scene.num_frames)

                for ev in events:
                    for _ in range(int(vrng.integers(2, 4))):
                        stamps.append([frames(ev.start), frames(ev.end)])
                        texts.append(language.tacos_sentence(ev.track, vrng, need_position=_repeats(events, ev)))
                for a, b in zip(events, events[1:]):
                    if vrng.random() < 0.5:
                        stamps.append([frames(a.start), frames(b.end)])
                        texts.append(language.tacos_composite(a.track, b.track, vrng))
                order = sorted(range(len(stamps)), key=lambda i: (stamps[i][0], stamps[i][1]))
                data[f"{stem}.mp4"] = {
                    "timestamps": [stamps[i] for i in order], "sentences": [texts[i] for i in order],
                    "fps": float(FPS), "num_frames": scene.num_frames,
                }
                total_queries += len(texts)
            atomic_write_json(out / f"{subset}.json", data)
        self.videos(scenes, "tacos")
        self.counts["tacos"] = {"videos": len(scenes), "queries": total_queries, "seconds": round(sum(s.duration for s, _ in scenes), 1)}

    # ------------------------------------------------------------------ few-shot split
    def fewshot(self) -> None:
        names = sorted(c.name for c in self.profile.classes)
        rng = self.rng("fewshot-split")
        order = [names[i] for i in rng.permutation(len(names))]
        k = len(names)
        n_val = max(1, int(round(0.1 * k)))
        n_test = max(1, int(round(0.1 * k)))
        n_base = k - n_val - n_test
        split = {"base": order[:n_base], "fs_val": order[n_base:n_base + n_val], "fs_test": order[n_base + n_val:]}
        for name, classes in split.items():
            # The published lists: ", "-separated, no trailing newline.
            atomic_write_text(self.root / "fewshot-split" / f"{name}.txt", ", ".join(classes))
        self.counts["fewshot-split"] = {k: len(v) for k, v in split.items()}

    # ------------------------------------------------------------------ trimmed (Kinetics' role)
    def trimmed(self) -> None:
        p = self.profile
        out = self.root / "trimmed"
        classes = list(p.classes) + EXTRA_TRIMMED_CLASSES[: p.extra_trimmed_classes]
        scenes: List[Tuple[Scene, Path]] = []
        header = ["label", "youtube_id", "time_start", "time_end", "split"]
        index = 0
        for split, per_class, filename in (("train", p.trimmed_train_per_class, "train.csv"), ("val", p.trimmed_val_per_class, "validate.csv")):
            rows = []
            for cls in classes:
                for _ in range(per_class):
                    vrng = self.rng("trimmed", index)
                    index += 1
                    yid = youtube_id(vrng, self.taken_ids)
                    start = int(vrng.integers(0, 600))
                    end = start + p.trimmed_seconds
                    clip = f"{yid}_{start:06d}_{end:06d}"
                    label = cls.name.lower()  # Kinetics labels are lower case
                    scene = trimmed_scene(vrng, clip, cls, p.trimmed_seconds)
                    for track in scene.tracks:
                        if track.kind == "action":
                            track.label = label
                    scenes.append((scene, out / "videos" / f"{clip}.mp4"))
                    rows.append([label, yid, start, end, split])
            rows.sort(key=lambda r: (r[0], r[1]))
            atomic_write_text(out / filename, _csv_text(header, rows))
        self.videos(scenes, "trimmed")
        self.counts["trimmed"] = {"videos": len(scenes), "classes": len(classes), "seconds": float(len(scenes) * p.trimmed_seconds)}


# --------------------------------------------------------------------------- datasets
def dataset_keys() -> list:
    """The dataset keys the synthetic benchmark provides (known without generating it)."""
    return sorted(_dataset_layout())


def _dataset_layout() -> Dict[str, dict]:
    """Dataset configs relative to the generation folder (made absolute on return)."""
    return {
        "activitynet": {
            "format": "tsp-csv",
            "annotations": ["activitynet/activitynet_v1-3_train_tsp_groundtruth.csv", "activitynet/activitynet_v1-3_valid_tsp_groundtruth.csv"],
            "videos": "activitynet/videos",
            "extra": {"activitynet_json": "activitynet/activity_net.v1-3.min.json", "known": "activitynet/activitynet_v1-3_action_label_mapping.json"},
        },
        "activitynet-captions": {
            "format": "anet-captions",
            "annotations": ["activitynet-captions/train.json", "activitynet-captions/val.json"],
            "videos": "activitynet/videos",
            "extra": {},
        },
        "charades-sta": {
            "format": "charades-sta",
            "annotations": ["charades-sta/charades_sta_train.txt", "charades-sta/charades_sta_test.txt"],
            "videos": "charades-sta/videos",
            "extra": {"lengths_train": "charades-sta/Charades_v1_train.csv", "lengths_test": "charades-sta/Charades_v1_test.csv"},
        },
        "tacos": {
            "format": "tacos",
            "annotations": ["tacos/train.json", "tacos/val.json", "tacos/test.json"],
            "videos": "tacos/videos",
            "extra": {},
        },
        "fewshot-split": {
            "format": "class-split",
            "annotations": [],
            "videos": None,
            "extra": {
                "base": "fewshot-split/base.txt", "val": "fewshot-split/fs_val.txt", "test": "fewshot-split/fs_test.txt",
                "known": "activitynet/activitynet_v1-3_action_label_mapping.json",
            },
        },
        "trimmed": {
            "format": "kinetics-csv",
            "annotations": ["trimmed/train.csv", "trimmed/validate.csv"],
            "videos": "trimmed/videos",
            "extra": {},
        },
    }


def _absolute(root: Path, layout: Dict[str, dict]) -> Dict[str, DatasetConfig]:
    out = {}
    for key, d in layout.items():
        out[key] = DatasetConfig(
            format=d["format"],
            annotations=[str(root / a) for a in d["annotations"]],
            videos=str(root / d["videos"]) if d["videos"] else None,
            extra={k: str(root / v) for k, v in d["extra"].items()},
        )
    return out


def read_manifest(root: Path) -> Optional[dict]:
    """The manifest of a complete generation in ``root``, or None (missing, stale, or files missing)."""
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator_version") != GENERATOR_VERSION:
        return None
    # A manifest from before revisions were recorded is of revision 1 throughout.
    if manifest.get("dataset_revisions", {k: 1 for k in dataset_revisions()}) != dataset_revisions():
        return None
    for entry in manifest.get("files", []):
        f = root / entry["path"]
        if not f.is_file() or f.stat().st_size != entry["bytes"]:
            return None
    return manifest


def current_manifest(root: Path, profile: SynthProfile) -> Optional[dict]:
    """``read_manifest(root)`` if it was generated with ``profile``'s sizes, else None: a folder of a
    profile's name made before the profile was edited is stale too."""
    manifest = read_manifest(root)
    if manifest is None or manifest.get("sizes") != json.loads(json.dumps(asdict(profile))):
        return None
    return manifest


def generate(profile: SynthProfile, seed: int, root: Path, progress: bool = False, workers: Optional[int] = None) -> dict:
    """Write a whole generation into ``root`` (which should be empty); returns the manifest.
    ``workers``: processes rendering videos (default: the usable CPUs); the files do not depend on it."""
    t0, cpu0, children0 = time.perf_counter(), time.process_time(), _children_cpu()
    writer = _Writer(root, profile, seed, progress, workers=default_workers() if workers is None else workers)
    try:
        writer.activitynet()
        writer.charades()
        writer.tacos()
        writer.fewshot()
        writer.trimmed()
    finally:
        writer.close()
    atomic_write_json(root / "scenes.json", writer.scenes, indent=0)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "dataset_revisions": dataset_revisions(),
        "profile": profile.name,
        "seed": seed,
        "sizes": asdict(profile),
        "video": {"fps": FPS, "height": HEIGHT, "width": WIDTH, "codec": "h264", "pix_fmt": "yuv420p"},
        "counts": writer.counts,
        "datasets": _dataset_layout(),
        "generation_seconds": round(time.perf_counter() - t0, 2),
        # this process's and its (finished) rendering workers' CPU time
        "generation_cpu_seconds": round(time.process_time() - cpu0 + _children_cpu() - children0, 2),
        "generation_workers": writer.workers,
        "files": [{"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size} for p in files],
    }
    atomic_write_json(root / "manifest.json", manifest)  # last: marks the folder complete
    return manifest


def _refuse_in_spawn_bootstrap(root: Path) -> None:
    """A script calling for the benchmark at module level runs again in each rendering worker
    (the 'spawn' start method imports the main module); there it would wait for the lock its
    parent holds, forever. Say so instead."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # set while spawn imports __main__
        raise SynthError(
            f"{root}: the synthetic benchmark was requested while a worker process was starting, so the script "
            "that requested it is running again inside the worker (multiprocessing's 'spawn' start method "
            "imports the main module). Put the script's code under `if __name__ == \"__main__\":`."
        )


def ensure_synthetic(
    profile: str = "default",
    seed: int = 0,
    cache_dir: Optional[PathLike] = None,
    progress: bool = False,
    workers: Optional[int] = None,
) -> Dict[str, DatasetConfig]:
    """The synthetic benchmark's dataset configs (absolute paths), generating it on first use.

    Cached by (profile, seed) under ``<cache_dir>/synth/<profile>-seed<seed>/``; a folder without
    a complete manifest of this generator version is regenerated. ``cache_dir`` defaults to
    ``$CLAPBENCH_CACHE`` or ``~/.cache/clap_bench`` (``clap_bench.config.default_cache_dir``).
    ``workers``: processes rendering the videos (default: the usable CPUs; the files are the same).
    """
    if cache_dir is None:
        cache_dir = default_cache_dir()
    spec = get_profile(profile)
    root = synth_root(profile, seed, cache_dir)
    manifest = current_manifest(root, spec)
    if manifest is None:
        _refuse_in_spawn_bootstrap(root)
        with file_lock(root.parent / f".{root.name}.lock"):
            manifest = current_manifest(root, spec)  # another process may have finished meanwhile
            if manifest is None:
                # Holding the lock, no other process is generating this folder: any partial one
                # is left by a generation that was killed (SIGTERM, SIGKILL) before it could clean up.
                for stale in root.parent.glob(f".{root.name}.partial-*"):
                    shutil.rmtree(stale, ignore_errors=True)
                tmp = root.parent / f".{root.name}.partial-{os.getpid()}"
                tmp.mkdir(parents=True)
                try:
                    generate(spec, seed, tmp, progress=progress, workers=workers)
                    shutil.rmtree(root, ignore_errors=True)
                    os.replace(tmp, root)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                manifest = current_manifest(root, spec)
                if manifest is None:
                    raise SynthError(f"{root}: generation finished but its manifest does not check out")
    return _absolute(root, manifest["datasets"])
