"""Datasets of clips: segments for pre-training, whole videos for feature extraction.

* :class:`SegmentClipDataset`: one item is one contiguous segment of an untrimmed video
  (foreground or background) giving ``clips_per_segment`` clips (TSP protocol, paper §4.1),
  with labels, regions and texts (prompts or captions, §3.2).
* :class:`TrimmedClipDataset`: one item is one trimmed video of a classification set (the
  role Kinetics plays before post-pre-training), same item layout.
* :class:`VideoClipDataset`: one item is one whole video, every clip at a stride, centre
  crop, decoded in one sequential pass; :meth:`VideoClipDataset.iter_clips` hands them out in
  chunks so a long video is never held whole.

Randomness. Every item draws from its own generators, seeded from ``(seed, epoch, item)``
(:func:`item_generators`), never from a global state copied into the DataLoader workers: each
worker therefore gets its own streams, the same seed gives the same samples whatever the
number of workers, and :meth:`set_epoch` gives the next epoch new samples (and lets a resumed
run draw exactly what it would have drawn). Set it before creating the epoch's DataLoader
iterator (workers receive a copy of the dataset when the iterator starts, so do not use
``persistent_workers``). :func:`seed_worker` also seeds the global numpy/``random`` states of
each worker, for any library code that reads them.

Unreadable videos. A file that cannot be decoded (missing, empty, corrupt, truncated) is
logged with its path and the reason, and the item comes back as a skip marker
``{"skipped": True, "video_id", "path", "reason"}``; :func:`collate_segments` drops the
markers and reports ``num_skipped`` and ``skipped`` per batch, so a trainer sums them over the
epoch (``dataset.skipped`` counts the skips of the process that owns the dataset copy). A file
that failed once is not decoded again by the same process: its other segments are skipped at once.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from clap_bench.clips.decode import VideoDecodeError, decode_clips, iter_video_clips
from clap_bench.clips.language import TextPolicy, assign_caption, clip_prompt
from clap_bench.clips.sampling import clip_seconds, sample_clip_starts
from clap_bench.clips.segments import contiguous_segments
from clap_bench.clips.transforms import transform_clips
from clap_bench.config import ClipConfig
from clap_bench.data.schema import AnnotationSet, Segment, Video

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
REGIONS = ("all", "foreground")
BACKGROUND_LABEL = -1


# --------------------------------------------------------------------------- helpers
def resolve_video_path(video_dir: PathLike, video: Video) -> Path:
    """The file of ``video`` in ``video_dir``: its annotated file name, else ``<id>.<ext>``.

    When none of the candidates exists the first one is returned; decoding it then raises
    :class:`VideoDecodeError` ("file not found") and the item is skipped.
    """
    folder = Path(video_dir).expanduser()
    candidates = [folder / video.filename] if video.filename else []
    candidates += [folder / f"{video.id}{ext}" for ext in VIDEO_EXTENSIONS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0]


def item_generators(seed: int, epoch: int, index: int) -> Tuple[np.random.Generator, torch.Generator]:
    """Independent numpy and torch generators for one item of one epoch."""
    sequence = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])
    np_rng = np.random.default_rng(sequence)
    torch_gen = torch.Generator()
    torch_gen.manual_seed(int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
    return np_rng, torch_gen


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy's and ``random``'s global states per worker.

    PyTorch already gives each worker its own torch seed (base seed + worker id); this passes
    it on to the other global generators so no two workers share one.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


@dataclass(frozen=True)
class _ClipItem:
    video_id: str
    start: float
    end: float
    label: Optional[str]  # None: background
    label_index: int  # BACKGROUND_LABEL for background


class _ClipItemDataset(Dataset):
    """Shared machinery of the segment and trimmed datasets: sampling, decoding, text, skips."""

    def __init__(
        self,
        annotations: AnnotationSet,
        video_dir: PathLike,
        clip_cfg: ClipConfig,
        train: bool,
        clips_per_item: int,
        text_policy: Optional[TextPolicy],
        classes: Optional[Sequence[str]],
        seed: int,
        max_items: Optional[int],
        threads: int,
        clip_level: bool = False,
        hflip: bool = True,
        frame_cache=None,
    ):
        self.annotations = annotations
        self.video_dir = Path(video_dir).expanduser()
        self.clip_cfg = clip_cfg
        self.train = bool(train)
        self.clips_per_item = int(clips_per_item)
        if self.clips_per_item < 1:
            raise ValueError(f"need at least one clip per item, got {clips_per_item}")
        self.text_policy = text_policy or TextPolicy()
        self.classes = list(classes) if classes is not None else list(annotations.classes)
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        self.seed = int(seed)
        self.max_items = max_items
        self.threads = int(threads)
        self.clip_level = bool(clip_level)
        self.hflip = bool(hflip)
        self.frame_cache = frame_cache  # a clap_bench.clips.frame_cache.FrameCache, or None: decode each time
        if frame_cache is not None and (getattr(frame_cache, "resize_filter", "swscale"), tuple(frame_cache.size)) != (
                clip_cfg.resize_filter, (int(clip_cfg.resize[0]), int(clip_cfg.resize[1]))):
            raise ValueError(f"frame cache {frame_cache.root} holds frames at {frame_cache.size} by "
                             f"{getattr(frame_cache, 'resize_filter', 'swscale')}, the clips want {clip_cfg.resize} "
                             f"by {clip_cfg.resize_filter}")
        self.clip_seconds = clip_seconds(clip_cfg.frames, clip_cfg.fps)
        self.size = (int(clip_cfg.resize[0]), int(clip_cfg.resize[1]))
        self.epoch = 0
        self.skipped = 0
        self.skip_log: List[Tuple[str, str]] = []
        self._bad_files: Dict[str, str] = {}  # path -> reason, so a bad file is tried once per process
        self._paths: Dict[str, Path] = {}
        self.items: List[_ClipItem] = []
        self._order: np.ndarray = np.arange(0)

    # -- subclasses fill self.items then call this
    def _finish_items(self) -> None:
        self._set_order()

    def _set_order(self) -> None:
        total = len(self.items)
        if self.max_items is not None and self.max_items < total:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.epoch, 0x5E6]))
            self._order = np.sort(rng.choice(total, size=int(self.max_items), replace=False))
        else:
            self._order = np.arange(total)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples (and segment subset, with ``max_segments``) are drawn."""
        self.epoch = int(epoch)
        self._set_order()

    def __len__(self) -> int:
        return len(self._order) * (self.clips_per_item if self.clip_level else 1)

    def locate(self, index: int) -> Tuple[int, Optional[int]]:
        """``(segment, clip slot)`` of item ``index``; the slot is None for segment-level items.

        Clip-level items follow TSP's layout: item ``i`` is slot ``i // n`` of the ``i % n``-th
        segment of the epoch (``n`` segments), so the ``n x clips_per_segment`` items cover every
        (segment, slot) pair exactly once.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        n = len(self._order)
        if self.clip_level:
            return int(self._order[index % n]), index // n
        return int(self._order[index]), None

    def video_path(self, video_id: str) -> Path:
        path = self._paths.get(video_id)
        if path is None:
            path = self._paths[video_id] = resolve_video_path(self.video_dir, self.annotations.videos[video_id])
        return path

    def _skip(self, item: _ClipItem, path: Path, reason: str) -> dict:
        self.skipped += 1
        self.skip_log.append((item.video_id, reason))
        log.warning("skipping %s (video %s, segment %.2f-%.2f s): %s", path, item.video_id, item.start, item.end, reason)
        return {"skipped": True, "video_id": item.video_id, "path": str(path), "reason": reason}

    def clip_times(self, index: int) -> Tuple[_ClipItem, np.ndarray, np.random.Generator, torch.Generator]:
        """``(segment item, clip starts (s), numpy and torch generators)`` of item ``index``, without decoding.

        The generators are returned as the draw of the starts left them: :meth:`__getitem__`
        goes on drawing texts and crops from them.
        """
        item_index, slot = self.locate(index)
        item = self.items[item_index]
        video = self.annotations.videos[item.video_id]
        if slot is None:
            np_rng, torch_gen = item_generators(self.seed, self.epoch, item_index)
            starts = sample_clip_starts(
                item.start, item.end, self.clip_seconds, self.clips_per_item, self.train, np_rng, video.duration
            )
        else:
            # One clip: a uniform random position in the segment (training, TSP's temporal
            # jittering) or the slot-th of the evenly spaced positions (evaluation).
            np_rng, torch_gen = item_generators(self.seed, self.epoch, item_index * self.clips_per_item + slot)
            if self.train:
                starts = sample_clip_starts(item.start, item.end, self.clip_seconds, 1, True, np_rng, video.duration)
            else:
                starts = sample_clip_starts(
                    item.start, item.end, self.clip_seconds, self.clips_per_item, False, None, video.duration
                )[slot : slot + 1]
        return item, starts, np_rng, torch_gen

    def __getitem__(self, index: int) -> dict:
        item, starts, np_rng, torch_gen = self.clip_times(index)
        video = self.annotations.videos[item.video_id]
        path = self.video_path(item.video_id)
        if str(path) in self._bad_files:
            return self._skip(item, path, self._bad_files[str(path)])
        try:
            if self.frame_cache is not None:
                frames = self.frame_cache.clips(path, starts, self.clip_cfg.frames, self.clip_cfg.fps)
            else:
                frames = decode_clips(path, starts, self.clip_cfg.frames, self.clip_cfg.fps, self.size, threads=self.threads,
                                      resize_filter=self.clip_cfg.resize_filter)
        except VideoDecodeError as e:
            self._bad_files[str(path)] = e.reason
            return self._skip(item, path, e.reason)
        clips = transform_clips(frames, self.clip_cfg.crop, self.train, torch_gen, hflip=self.hflip)
        texts = self._texts(video, item, starts, np_rng)
        k = len(starts)
        foreground = item.label is not None
        return {
            "clips": clips,
            "label": torch.full((k,), item.label_index, dtype=torch.long),
            "region": torch.full((k,), 1 if foreground else 0, dtype=torch.long),
            "texts": texts,
            "video_id": item.video_id,
            "segment": (item.start, item.end),
            "clip_starts": torch.from_numpy(starts.astype(np.float32)),
        }

    def _actions(self, video: Video) -> List[Segment]:
        return [s for s in video.actions if s.label in self.class_index]

    def _texts(self, video: Video, item: _ClipItem, starts: np.ndarray, rng: np.random.Generator) -> List[str]:
        foreground = item.label is not None
        actions = self._actions(video)
        texts = []
        for start in starts:
            end = float(start) + self.clip_seconds
            prompt = clip_prompt(item.label, actions, float(start), end)
            caption = None
            if self.text_policy.may_use_caption(foreground) and video.sentences:
                sentence = assign_caption(float(start), end, video.sentences, self.text_policy.caption_choice)
                caption = sentence.text if sentence is not None else None
            texts.append(self.text_policy.choose_text(prompt, caption, foreground, rng))
        return texts


# --------------------------------------------------------------------------- pre-training
class SegmentClipDataset(_ClipItemDataset):
    """Contiguous segments of untrimmed videos, ``clip_cfg.clips_per_segment`` clips each.

    Items are the segments of :func:`~clap_bench.clips.segments.contiguous_segments` for every
    video, in video-id then time order. ``regions="foreground"`` keeps action segments only.
    ``classes`` fixes the class index order (default ``annotations.classes``); action segments
    of other classes are left out (``excluded_segments`` counts them), and background clips are
    named after the nearest action of a kept class. ``max_segments`` draws that many segments
    per epoch (a new draw each epoch, see :meth:`set_epoch`).

    ``clip_level=True`` (TSP's ``UntrimmedVideoDataset``, the default batch composition): one
    item is ONE clip, ``len == segments x clips_per_segment``, item ``i`` being clip slot
    ``i // n`` of segment ``i % n`` (see :meth:`locate`); a shuffled sampler then mixes clips of
    every segment and video in each batch. ``hflip=False`` turns off the training flip.
    ``min_background``, ``min_action`` and ``duplicate_segments`` are ``contiguous_segments``'
    ``min_length``, ``min_action_length`` and ``duplicates`` (pre-training: ``segment_rules``).

    An item: ``clips`` float ``(K, 3, T, crop, crop)``, ``label`` long ``(K,)`` (class index,
    -1 for background), ``region`` long ``(K,)`` (1 foreground, 0 background), ``texts`` (K
    strings), ``video_id``, ``segment`` (start, end) and ``clip_starts`` ``(K,)`` in seconds.
    """

    def __init__(
        self,
        annotations: AnnotationSet,
        video_dir: PathLike,
        clip_cfg: ClipConfig,
        train: bool,
        regions: str = "all",
        text_policy: Optional[TextPolicy] = None,
        classes: Optional[List[str]] = None,
        seed: int = 0,
        max_segments: Optional[int] = None,
        min_background: float = 0.0,
        threads: int = 1,
        clip_level: bool = False,
        hflip: bool = True,
        frame_cache=None,
        min_action: float = 0.0,
        duplicate_segments: str = "drop",
    ):
        if regions not in REGIONS:
            raise ValueError(f"regions must be one of {REGIONS}, got {regions!r}")
        super().__init__(
            annotations, video_dir, clip_cfg, train, clip_cfg.clips_per_segment, text_policy, classes, seed, max_segments,
            threads, clip_level=clip_level, hflip=hflip, frame_cache=frame_cache,
        )
        self.regions = regions
        self.excluded_segments = 0
        for video_id in sorted(annotations.videos):
            video = annotations.videos[video_id]
            segments = contiguous_segments(
                video, min_length=min_background, min_action_length=min_action, lists_background=annotations.lists_background,
                duplicates=duplicate_segments,
            )
            for segment in segments:
                if segment.label is None:
                    if regions == "all":
                        self.items.append(_ClipItem(video_id, segment.start, segment.end, None, BACKGROUND_LABEL))
                elif segment.label in self.class_index:
                    self.items.append(_ClipItem(video_id, segment.start, segment.end, segment.label, self.class_index[segment.label]))
                else:
                    self.excluded_segments += 1
        if self.excluded_segments:
            log.info("%d action segments of classes outside the %d given were left out", self.excluded_segments, len(self.classes))
        self._finish_items()


class TrimmedClipDataset(_ClipItemDataset):
    """A trimmed classification set (Kinetics-style): one item per video, its action span.

    The item's segment runs from the first to the last annotated action of the video and takes
    the label of its longest action; videos without an action (or whose action is not in
    ``classes``) are left out and counted in ``excluded_videos``. Items have the layout of
    :class:`SegmentClipDataset` (all clips foreground, prompt texts) with ``clips_per_video``
    clips each.
    """

    def __init__(
        self,
        annotations: AnnotationSet,
        video_dir: PathLike,
        clip_cfg: ClipConfig,
        train: bool,
        classes: Optional[List[str]] = None,
        seed: int = 0,
        clips_per_video: int = 1,
        max_videos: Optional[int] = None,
        threads: int = 1,
    ):
        super().__init__(annotations, video_dir, clip_cfg, train, clips_per_video, None, classes, seed, max_videos, threads)
        self.excluded_videos = 0
        for video_id in sorted(annotations.videos):
            video = annotations.videos[video_id]
            actions = [s for s in video.actions if s.end > s.start] or video.actions
            if not actions:
                self.excluded_videos += 1
                continue
            main = max(actions, key=lambda s: s.length)
            if main.label not in self.class_index:
                self.excluded_videos += 1
                continue
            start = max(0.0, min(s.start for s in actions))
            end = min(float(video.duration), max(s.end for s in actions)) if video.duration > 0 else max(s.end for s in actions)
            self.items.append(_ClipItem(video_id, start, max(start, end), main.label, self.class_index[main.label]))
        self._finish_items()


def collate_segments(items: Sequence[dict]) -> Dict[str, Any]:
    """Batch segment items: K clips per item flattened into the batch dimension ``(B*K, ...)``.

    Skip markers are dropped; ``num_skipped`` and ``skipped`` ([(video_id, reason)]) report
    them. Per clip: ``clips``, ``label``, ``region``, ``clip_starts``, ``texts``, ``video_ids``
    and ``segment_index`` (which item of the batch the clip came from, so clips of one segment
    can be grouped). Per item: ``segments``. When every item of the batch was skipped,
    ``clips`` is None.
    """
    kept = [it for it in items if not it.get("skipped")]
    skipped = [(it["video_id"], it["reason"]) for it in items if it.get("skipped")]
    batch: Dict[str, Any] = {"num_skipped": len(skipped), "skipped": skipped}
    if not kept:
        batch.update(clips=None, label=None, region=None, clip_starts=None, segment_index=None, texts=[], video_ids=[], segments=[])
        return batch
    counts = [int(it["clips"].shape[0]) for it in kept]
    batch.update(
        clips=torch.cat([it["clips"] for it in kept]),
        label=torch.cat([it["label"] for it in kept]),
        region=torch.cat([it["region"] for it in kept]),
        clip_starts=torch.cat([it["clip_starts"] for it in kept]),
        segment_index=torch.repeat_interleave(torch.arange(len(kept)), torch.tensor(counts)),
        texts=[text for it in kept for text in it["texts"]],
        video_ids=[it["video_id"] for it, c in zip(kept, counts) for _ in range(c)],
        segments=[it["segment"] for it in kept],
    )
    return batch


# --------------------------------------------------------------------------- extraction
class VideoClipDataset(Dataset):
    """Whole videos for feature extraction: every clip at a stride, centre crop.

    ``stride_frames`` is in frames at ``clip_cfg.fps`` (16 at 15 fps: non-overlapping clips);
    clip starts come from :func:`~clap_bench.clips.sampling.extraction_clip_starts` over the
    annotated duration (or the source frames' with ``snap_duration_to_frames``), the last one chosen by
    ``last_clip`` (``extract.last_clip``). ``dataset[i]`` is ``(video_id, clips (N, 3, T, crop, crop))``, or
    ``(video_id, None)`` when the file cannot be decoded (logged, counted in ``skipped``);
    :meth:`iter_clips` gives the same clips in chunks and raises :class:`VideoDecodeError`.
    """

    def __init__(
        self,
        annotations: AnnotationSet,
        video_dir: PathLike,
        clip_cfg: ClipConfig,
        stride_frames: int,
        threads: int = 1,
        chunk: int = 64,
        last_clip: str = "span",
        snap_duration_to_frames: bool = False,
    ):
        from clap_bench.config import ExtractConfig

        if stride_frames < 1:
            raise ValueError(f"stride_frames must be >= 1, got {stride_frames}")
        # which clips a video gives
        self.grid = ExtractConfig(stride_frames=int(stride_frames), last_clip=last_clip, snap_duration_to_frames=snap_duration_to_frames)
        self.annotations = annotations
        self.video_dir = Path(video_dir).expanduser()
        self.clip_cfg = clip_cfg
        self.stride_frames = int(stride_frames)
        self.stride_seconds = self.stride_frames / float(clip_cfg.fps)
        self.clip_seconds = clip_seconds(clip_cfg.frames, clip_cfg.fps)
        self.size = (int(clip_cfg.resize[0]), int(clip_cfg.resize[1]))
        self.threads = int(threads)
        self.chunk = int(chunk)
        self.video_ids = sorted(annotations.videos)
        self.skipped = 0
        self.skip_log: List[Tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self.video_ids)

    def video_path(self, index: int) -> Path:
        return resolve_video_path(self.video_dir, self.annotations.videos[self.video_ids[index]])

    def clip_starts(self, index: int) -> np.ndarray:
        """Start (s) of every clip of video ``index``; one feature per clip."""
        video = self.annotations.videos[self.video_ids[index]]
        path = self.video_path(index) if self.grid.snap_duration_to_frames else None  # the file is opened only to snap
        return self.grid.video_clip_starts(float(video.duration), self.clip_cfg, path, video.fps, video.num_frames)

    def iter_clips(self, index: int, chunk: Optional[int] = None) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(index of the chunk's first clip, float (c, 3, T, crop, crop))`` in one decoding pass."""
        path = self.video_path(index)
        for first, frames in iter_video_clips(
            path, self.clip_starts(index), self.clip_cfg.frames, self.clip_cfg.fps, self.size,
            chunk=chunk or self.chunk, threads=self.threads, resize_filter=self.clip_cfg.resize_filter,
        ):
            yield first, transform_clips(frames, self.clip_cfg.crop, train=False)

    def __getitem__(self, index: int) -> Tuple[str, Optional[torch.Tensor]]:
        video_id = self.video_ids[index]
        try:
            chunks = [clips for _, clips in self.iter_clips(index)]
        except VideoDecodeError as e:
            self.skipped += 1
            self.skip_log.append((video_id, e.reason))
            log.warning("skipping %s (video %s): %s", e.path, video_id, e.reason)
            return video_id, None
        return video_id, torch.cat(chunks)
