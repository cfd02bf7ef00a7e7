"""Text for clips (paper §3.2): action prompts, caption assignment, and the choice between them.

* Prompts: "foreground of <action>" for a clip of an action, "background of <action>" for a
  background clip, where <action> is the action of that video nearest the clip in time
  (a video with several classes names the neighbour the clip is closest to).
* Captions: a clip takes the temporally closest caption with a non-zero overlap. "Closest"
  is the caption overlapping the clip the most; equal overlaps go to the caption whose centre
  is nearest the clip's centre, then to the earlier caption. A clip no caption overlaps keeps
  its prompt.
* The choice: when captions are in use, a clip that has one takes it with probability
  ``caption_prob`` (0.5 in the paper) and its prompt otherwise. CLAP† (``background_prompts_only``)
  keeps background clips on prompts and lets only action clips take captions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from clap_bench.data.schema import Segment, Sentence

# Text of a background clip in a video without any action (no neighbour to name).
UNNAMED_BACKGROUND = "background"


def foreground_prompt(action: str) -> str:
    return f"foreground of {action}"


def background_prompt(action: Optional[str]) -> str:
    return f"background of {action}" if action else UNNAMED_BACKGROUND


def _gap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    """Time between two intervals; 0 when they touch or overlap."""
    return max(0.0, max(a_start, b_start) - min(a_end, b_end))


def _overlap(a_start: float, a_end: float, b_start: float, b_end: float) -> float:
    return max(0.0, min(a_end, b_end) - max(a_start, b_start))


def nearest_action(actions: Iterable[Segment], start: float, end: float) -> Optional[str]:
    """Label of the action nearest the interval ``[start, end]``; None when there is none.

    Nearest: smallest gap between the intervals (0 when they touch or overlap), then the
    nearest centre, then the earlier action.
    """
    centre = 0.5 * (start + end)
    best_key, best_label = None, None
    for action in actions:
        if action.label is None:
            continue
        key = (_gap(start, end, action.start, action.end), abs(0.5 * (action.start + action.end) - centre), action.start)
        if best_key is None or key < best_key:
            best_key, best_label = key, action.label
    return best_label


def clip_prompt(label: Optional[str], actions: Sequence[Segment], start: float, end: float) -> str:
    """Prompt of a clip ``[start, end]``: its own action, or the background of its nearest action."""
    if label is not None:
        return foreground_prompt(label)
    return background_prompt(nearest_action(actions, start, end))


CAPTION_CHOICES = ("largest_overlap", "nearest_centre")


def assign_caption(
    start: float, end: float, sentences: Sequence[Sentence], choice: str = "largest_overlap"
) -> Optional[Sentence]:
    """The caption temporally closest to the clip ``[start, end]`` among those overlapping it.

    ``choice="largest_overlap"``: largest overlap first, ties to the nearest centre.
    ``choice="nearest_centre"`` (the paper's words, "temporally closest"): nearest centre first,
    ties to the largest overlap. Remaining ties go to the earlier caption in the list. None when
    no caption overlaps the clip (a caption that only touches it does not).
    """
    if choice not in CAPTION_CHOICES:
        raise ValueError(f"caption choice: expected one of {CAPTION_CHOICES}, got {choice!r}")
    centre = 0.5 * (start + end)
    best_key, best = None, None
    for sentence in sentences:
        overlap = _overlap(start, end, sentence.start, sentence.end)
        if overlap <= 0.0:
            continue
        distance = abs(0.5 * (sentence.start + sentence.end) - centre)
        key = (-overlap, distance) if choice == "largest_overlap" else (distance, -overlap)
        if best_key is None or key < best_key:
            best_key, best = key, sentence
    return best


@dataclass(frozen=True)
class TextPolicy:
    """Which text a clip is paired with.

    ``use_captions=False``: prompts only (CLAP^(clip), CLAP^(mask)). ``use_captions=True``:
    a clip with an overlapping caption takes it with probability ``caption_prob`` (CLAP).
    ``background_prompts_only=True`` keeps background clips on prompts (CLAP†).
    """

    use_captions: bool = False
    caption_prob: float = 0.5
    background_prompts_only: bool = False
    caption_choice: str = "largest_overlap"  # see assign_caption

    def __post_init__(self) -> None:
        if not 0.0 <= self.caption_prob <= 1.0:
            raise ValueError(f"caption_prob must be in [0, 1], got {self.caption_prob}")
        if self.caption_choice not in CAPTION_CHOICES:
            raise ValueError(f"caption_choice: expected one of {CAPTION_CHOICES}, got {self.caption_choice!r}")

    def may_use_caption(self, foreground: bool) -> bool:
        return self.use_captions and (foreground or not self.background_prompts_only)

    def choose_text(self, prompt: str, caption: Optional[str], foreground: bool, rng: np.random.Generator) -> str:
        """The prompt, or the caption with probability ``caption_prob`` when the policy allows it.

        One draw from ``rng`` is made for every clip the policy lets take a caption (even when
        it has none), so the draws of later clips do not depend on caption coverage.
        """
        if not self.may_use_caption(foreground):
            return prompt
        take = rng.random() < self.caption_prob
        if take and caption:
            return caption.strip()
        return prompt
