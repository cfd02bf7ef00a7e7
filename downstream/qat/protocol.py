"""The few-shot protocol: which videos each stage may see, and the episodes.

**Class split.** Base / validation / test classes come from the split files (``fewshot-split``
dataset; the 160/20/20 ActivityNet split of QAT, or the synthetic benchmark's 80/10/10).
No video with an action of a validation or test class may reach pre-training, base training
(stage 1) or meta-training (stage 2): ``assert_no_leakage`` checks that and every stage calls
it on exactly the videos it is about to use (the pre-training stage calls it too).

**Episodes.** An episode is one query video and ``shots`` support videos of one class. The
class, the query and the support are drawn with ``numpy.random.default_rng([seed, stream,
run, episode])``, so episode ``(run, episode)`` is the same whatever else was drawn before
it, and test episodes (stream 0) never share draws with meta-training episodes (stream 1).

With ``support_sampling="distinct"`` (the default) the support set is drawn **without
replacement** and **never contains the query**, and a class needs ``shots + 1`` videos. With
``"reference"`` the supports are drawn as fewshotQAT's episode loader draws them
(``load_episodic_data`` in ``gtad_lib/dataset_fs.py``): the class uniformly, the query uniformly
among the class's videos, then each of the ``shots`` supports independently and uniformly among
the same videos, so a support set can hold a video twice and can hold the query itself (which
then leaks the query's ground truth into its own prototype); a class needs one video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import numpy as np

from clap_bench.data.readers import FewShotSplit
from clap_bench.data.schema import AnnotationSet, Video

TEST_STREAM = 0
META_STREAM = 1
SELECT_STREAM = 2
SUPPORT_SAMPLINGS = ("distinct", "reference")


class LeakageError(AssertionError):
    """A video of a held-out (validation or test) class reached a stage that must not see it."""


def assert_no_leakage(
    annotations_used: Union[AnnotationSet, Mapping[str, Video], Iterable[Video]],
    split: FewShotSplit,
    stage: str = "training",
) -> None:
    """Raise ``LeakageError`` naming the first video (and its class) whose action is a val/test class.

    ``annotations_used``: the videos a stage is about to train on (an ``AnnotationSet``, a
    dict of videos, or any iterable of videos). Background-only videos carry no class and pass.
    """
    if isinstance(annotations_used, AnnotationSet):
        videos: Iterable[Video] = annotations_used.videos.values()
    elif isinstance(annotations_used, Mapping):
        videos = annotations_used.values()
    else:
        videos = annotations_used
    held_out = {c: "validation" for c in split.val}
    held_out.update({c: "test" for c in split.test})
    for video in videos:
        for seg in video.actions:
            if seg.label in held_out:
                raise LeakageError(
                    f"few-shot protocol violated: video {video.id!r} ({video.subset}) has an action of "
                    f"{held_out[seg.label]} class {seg.label!r} and must not be used for {stage}; only base classes "
                    f"({len(split.base)}, listed in {split.files.get('base', 'the base split file')}) may be"
                )


def base_class_videos(annotations: AnnotationSet, split: FewShotSplit, subsets: Sequence[str]) -> AnnotationSet:
    """Videos of ``subsets`` whose every action is of a base class (checked with ``assert_no_leakage``)."""
    chosen = annotations.subset(*subsets).restrict_classes(split.base)
    if not chosen.videos:
        raise ValueError(
            f"{annotations.source}: no video of subsets {list(subsets)} has only base-class actions "
            f"({len(split.base)} base classes, e.g. {split.base[:3]}); subsets present: {annotations.subsets}"
        )
    assert_no_leakage(chosen, split, "base training")
    return chosen


def videos_by_class(
    annotations: AnnotationSet, classes: Iterable[str], subsets: Sequence[str], single_instance: bool = False,
    min_action_fraction: float = 0.0,
) -> Dict[str, List[str]]:
    """``class -> sorted video ids`` of the videos of ``subsets`` whose every action is of ``classes``.

    A video with actions of two of the classes is listed under both (its ground truth in an
    episode is the episode class's actions only). ``single_instance``: only videos with exactly
    one action (fewshotQAT's episodes without ``--multi_instance``). ``min_action_fraction`` > 0:
    a video is listed under a class only if one of its actions of that class is longer than this
    fraction of the video (fewshotQAT's meta-training episodes: 0.15).
    """
    pool = annotations.subset(*subsets).restrict_classes(classes)
    out: Dict[str, List[str]] = {}
    for vid, video in pool.videos.items():
        if single_instance and len(video.actions) != 1:
            continue
        for label in sorted({s.label for s in video.actions}):
            if min_action_fraction > 0 and not any(
                s.label == label and s.end - s.start > min_action_fraction * video.duration for s in video.actions
            ):
                continue
            out.setdefault(label, []).append(vid)
    return {c: sorted(v) for c, v in sorted(out.items())}


@dataclass(frozen=True)
class Episode:
    run: int
    index: int
    label: str
    query: str
    support: Tuple[str, ...]

    @property
    def key(self) -> str:
        """The episode's id in the ground-truth and prediction files (a query video can recur)."""
        return f"{self.query}@run{self.run}-ep{self.index}"


def videos_needed(shots: int, support_sampling: str = "distinct") -> int:
    """Videos a class needs for a ``shots``-shot episode: ``shots + 1`` distinct ones, or 1 with
    ``support_sampling="reference"`` (the query and every support may be the same video)."""
    return shots + 1 if support_sampling == "distinct" else 1


class EpisodeSampler:
    """Deterministic episodes of ``shots`` support videos and one query from ``class -> video ids``.

    ``support_sampling``: ``"distinct"`` (supports without replacement, never the query) or
    ``"reference"`` (each support drawn independently from all of the class's videos, the query
    among them: fewshotQAT's ``load_episodic_data``); see the module docstring. Classes with
    fewer videos than an episode needs (``shots + 1`` distinct, 1 with ``"reference"``) are left
    out; if none is left the constructor raises, naming the counts.
    """

    def __init__(self, videos: Mapping[str, Sequence[str]], shots: int, seed: int, stream: int = TEST_STREAM,
                 what: str = "episodes", support_sampling: str = "distinct"):
        if shots < 1:
            raise ValueError(f"shots: expected >= 1, got {shots}")
        if support_sampling not in SUPPORT_SAMPLINGS:
            raise ValueError(f"support_sampling: expected one of {', '.join(SUPPORT_SAMPLINGS)}, got {support_sampling!r}")
        self.shots = shots
        self.seed = int(seed)
        self.stream = int(stream)
        self.support_sampling = support_sampling
        need = videos_needed(shots, support_sampling)
        self.videos = {c: sorted(set(v)) for c, v in sorted(videos.items()) if len(set(v)) >= need}
        self.skipped = {c: len(set(v)) for c, v in sorted(videos.items()) if len(set(v)) < need}
        if not self.videos:
            counts = ", ".join(f"{c!r}: {n}" for c, n in self.skipped.items()) or "no classes"
            if support_sampling == "distinct":
                raise ValueError(
                    f"{what}: no class has the {shots + 1} videos a {shots}-shot episode needs (videos per class: {counts}); "
                    "lower 'shots' or widen the subsets the episodes are drawn from"
                )
            raise ValueError(f"{what}: no class has a video (videos per class: {counts}); widen the subsets the episodes are drawn from")
        self.classes = list(self.videos)

    def episode(self, run: int, index: int) -> Episode:
        if run < 0 or index < 0:
            raise ValueError(f"run and episode index must be >= 0, got run={run} index={index}")
        rng = np.random.default_rng([self.seed, self.stream, run, index])
        label = self.classes[int(rng.integers(len(self.classes)))]
        pool = self.videos[label]
        q = int(rng.integers(len(pool)))
        if self.support_sampling == "reference":  # independent draws from every video of the class, the query's too
            picks = rng.integers(len(pool), size=self.shots)
            return Episode(run, index, label, pool[q], tuple(pool[int(i)] for i in picks))
        others = pool[:q] + pool[q + 1:]
        picks = rng.choice(len(others), size=self.shots, replace=False)
        return Episode(run, index, label, pool[q], tuple(others[int(i)] for i in picks))

    def episodes(self, run: int, count: int, start: int = 0) -> List[Episode]:
        return [self.episode(run, i) for i in range(start, start + count)]


def episode_subset_pool(annotations: AnnotationSet, split: FewShotSplit, subsets: Sequence[str]) -> Dict[str, List[str]]:
    """Test-class videos of ``subsets`` by class (the test episodes' pool)."""
    return videos_by_class(annotations, split.test, subsets)
