"""Video-level class scores from an external classifier, in the layout G-TAD and BMN read.

G-TAD (and BMN before it) label the class-agnostic proposals of an ActivityNet-1.3 video with the
video-level classification results of the CUHK ActivityNet-2017 entry, released as
``cuhk_val_simp_share.json``::

    {"class":   ["Applying sunscreen", ..., "Zumba"],            # 200 names
     "results": {"-0hVzXhzjME": [0.0001, ..., 0.93], ...}}       # one score per entry of "class"

Video keys are YouTube ids *without* the ``v_`` prefix our ids carry (the reference code strips
it with ``video_name[2:]``); a key with the prefix is accepted too. Other top-level keys
(``version``, ``external_data``) are ignored, as the reference code does.

Each proposal then takes the video's top classes with score ``proposal score x class score``
(``tasks.tal.classes_per_video``, 2 as in G-TAD's ActivityNet post-processing).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

VIDEO_ID_PREFIX = "v_"


class VideoScoresError(ValueError):
    """A malformed or incomplete video-scores file: the message names the file and the key or video."""


@dataclass
class VideoScores:
    path: str
    classes: List[str]
    scores: Dict[str, np.ndarray]  # key as in the file -> (len(classes),) float64

    def of(self, video_id: str) -> np.ndarray:
        """Scores of ``video_id`` (with or without the ``v_`` prefix); a missing video is an error naming it."""
        for key in (video_id, video_id[len(VIDEO_ID_PREFIX):] if video_id.startswith(VIDEO_ID_PREFIX) else None,
                    VIDEO_ID_PREFIX + video_id):
            if key is not None and key in self.scores:
                return self.scores[key]
        raise VideoScoresError(
            f"{self.path}: results: no scores for video {video_id!r} (looked up as {video_id!r} and without/with "
            f"the {VIDEO_ID_PREFIX!r} prefix); the file has {len(self.scores)} videos"
        )

    def top_classes(self, video_ids: Iterable[str], k: int) -> List[List[Tuple[str, float]]]:
        """Per video, its ``k`` best ``(class name, score)`` pairs, best first."""
        out = []
        for video_id in video_ids:
            scores = self.of(video_id)
            order = np.argsort(-scores, kind="stable")[: min(k, len(scores))]
            out.append([(self.classes[i], float(scores[i])) for i in order])
        return out


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def read_video_scores(path: str | Path) -> VideoScores:
    """Read and check a video-scores file in the CUHK layout (module docstring)."""
    path = Path(path).expanduser()
    name = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise VideoScoresError(f"{name}: cannot read the video-scores file ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise VideoScoresError(f"{name}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise VideoScoresError(f"{name}: expected a JSON object with 'class' and 'results', got {type(data).__name__}")
    classes = data.get("class")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise VideoScoresError(f"{name}: class: expected a non-empty list of class names (strings), got {classes!r:.80}")
    if len(set(classes)) != len(classes):
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        raise VideoScoresError(f"{name}: class: class names repeat: {repeated[:5]}")
    results = data.get("results")
    if not isinstance(results, dict) or not results:
        raise VideoScoresError(
            f"{name}: results: expected an object mapping video ids to lists of {len(classes)} scores, got {results!r:.80}"
        )
    scores = {}
    for video_id, row in results.items():
        if not isinstance(row, list) or len(row) != len(classes) or not all(map(_is_number, row)):
            shown = f"a list of {len(row)} entries" if isinstance(row, list) else type(row).__name__
            raise VideoScoresError(
                f"{name}: results.{video_id}: expected a list of {len(classes)} finite numbers "
                f"(one per entry of 'class'), got {shown}"
            )
        scores[video_id] = np.asarray(row, dtype=np.float64)
    return VideoScores(name, list(classes), scores)


def check_classes(scores: VideoScores, annotated: Sequence[str]) -> None:
    """The file must name the classes of the annotations (else every detection would be unscorable)."""
    missing = sorted(set(annotated) - set(scores.classes))
    if len(missing) == len(set(annotated)):
        raise VideoScoresError(
            f"{scores.path}: class: none of the {len(set(annotated))} annotated classes is named "
            f"(e.g. {missing[:3]}); the file names e.g. {scores.classes[:3]}"
        )
    if missing:  # those classes are never predicted (AP 0), as with the reference code
        log.warning("%s: class: %d annotated classes are not named and will never be predicted: %s",
                    scores.path, len(missing), missing[:5])
