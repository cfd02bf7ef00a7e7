"""Sampling synthetic videos: where actions happen, what they look like, what distracts.

* ActivityNet-like videos hold one action class (as ActivityNet's videos do) in several
  non-overlapping instances from about one second to half the video, separated by background;
  the actor may sit still before and after an instance (same appearance, no motion).
* Grounding videos (Charades-STA-like, TACoS-like) hold several different events: one or two
  actors, each doing different motions at different times, so a query is only answerable by
  reading it (a model that ignores the sentence cannot tell the events apart).
* Every video has textured, moving, colour-drifting background footage, sometimes a shot
  change, and distractor objects that drift or wander (never an action motion), sometimes in an
  action colour or shape, during background and during actions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from clap_bench.synth.language import MOTION_PERIODS, SIZE_RANGE
from clap_bench.synth.world import (
    ACTION_COLOURS,
    ACTION_MOTIONS,
    ACTION_SHAPES,
    COLOURS,
    FPS,
    HEIGHT,
    SHAPES,
    WIDTH,
    ActionClass,
    Background,
    Scene,
    Track,
    motion_allowed,
)

ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
CHARADES_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def r3(x: float) -> float:
    return round(float(x), 3)


def youtube_id(rng: np.random.Generator, taken: set) -> str:
    while True:
        vid = "".join(ID_ALPHABET[i] for i in rng.integers(len(ID_ALPHABET), size=11))
        if vid not in taken:
            taken.add(vid)
            return vid


def charades_id(rng: np.random.Generator, taken: set) -> str:
    while True:
        vid = "".join(CHARADES_ALPHABET[i] for i in rng.integers(len(CHARADES_ALPHABET), size=5))
        if vid not in taken:
            taken.add(vid)
            return vid


def num_frames_for(rng: np.random.Generator, seconds: Tuple[float, float]) -> int:
    return int(round(rng.uniform(*seconds) * FPS))


# --------------------------------------------------------------------------- background
def _muted_colour(rng: np.random.Generator, value: float) -> List[float]:
    """A desaturated colour (saturation 0.1-0.35) of brightness ``value`` (0..255)."""
    hue = rng.uniform(0, 1)
    sat = rng.uniform(0.1, 0.35)
    k = (np.array([0.0, 2.0 / 3.0, 1.0 / 3.0]) + hue) % 1.0
    wave = np.abs(k * 6.0 - 3.0) - 1.0
    rgb = value * (1.0 - sat + sat * np.clip(wave, 0.0, 1.0))
    return [round(float(c), 2) for c in rgb]


def sample_background(rng: np.random.Generator, duration: float, cut_prob: float = 0.3) -> Background:
    palette = []
    for _ in range(2):  # two shots
        dark = rng.uniform(40, 110)
        palette.append(_muted_colour(rng, dark))
        palette.append(_muted_colour(rng, min(dark + rng.uniform(50, 110), 210)))
    cut = None
    if duration > 8 and rng.random() < cut_prob:
        cut = r3(rng.uniform(0.2, 0.8) * duration)
    angle = rng.uniform(0, 2 * math.pi)
    freq = rng.uniform(0.08, 0.3)
    return Background(
        texture_seed=int(rng.integers(2**31)),
        palette=palette,
        pan_amp=[r3(rng.uniform(3, 20)), r3(rng.uniform(2, 12))],
        pan_period=[r3(rng.uniform(12, 40)), r3(rng.uniform(15, 50))],
        pan_phase=[r3(rng.uniform(0, 1)), r3(rng.uniform(0, 1))],
        grating=[r3(freq * math.cos(angle)), r3(freq * math.sin(angle)), r3(rng.uniform(-1.5, 1.5)), r3(rng.uniform(0.03, 0.12))],
        drift_period=[r3(rng.uniform(10, 40)) for _ in range(3)],
        drift_phase=[r3(rng.uniform(0, 1)) for _ in range(3)],
        drift_amount=r3(rng.uniform(0.05, 0.2)),
        cut=cut,
        noise=r3(rng.uniform(1.0, 3.0)),
    )


# --------------------------------------------------------------------------- tracks
def _margin(size: float, motion: str) -> float:
    grow = 1.45 if motion == "pulse" else 1.2
    return size * grow + 1.0


def action_track(
    rng: np.random.Generator, shape: str, colour: str, motion: str, start: float, end: float,
    size: float, idle_before: float = 0.0, idle_after: float = 0.0, label: Optional[str] = None,
    duration: Optional[float] = None,
) -> Track:
    """An object doing ``motion`` from ``start`` to ``end``, sitting still ``idle_*`` s around it."""
    m = _margin(size, motion)
    amp = 0.0
    lo, hi = MOTION_PERIODS[motion]
    period = rng.uniform(lo, hi)
    if motion == "slide":
        amp = rng.uniform(10.0, min(28.0, (WIDTH - 2 * m) / 2))
        cx, cy = rng.uniform(m + amp, WIDTH - m - amp), rng.uniform(m, HEIGHT - m)
    elif motion == "bounce":
        amp = rng.uniform(10.0, min(24.0, HEIGHT - 2 * m))
        cx, cy = rng.uniform(m, WIDTH - m), rng.uniform(m + amp, HEIGHT - m)
    elif motion == "orbit":
        amp = rng.uniform(6.0, 14.0)
        cx = rng.uniform(m + amp, WIDTH - m - amp)
        cy = rng.uniform(m + 0.75 * amp, HEIGHT - m - 0.75 * amp)
    elif motion == "zigzag":
        amp = rng.uniform(10.0, min(26.0, (WIDTH - 2 * m) / 2))
        cx = rng.uniform(m + amp, WIDTH - m - amp)
        cy = rng.uniform(m + 0.45 * amp, HEIGHT - m - 0.45 * amp)
    else:  # pulse, spin: in place
        cx, cy = rng.uniform(m, WIDTH - m), rng.uniform(m, HEIGHT - m)
    visible_start = max(start - idle_before, 0.0)
    visible_end = end + idle_after if duration is None else min(end + idle_after, duration)
    return Track(
        kind="action", shape=shape, colour=colour, motion=motion,
        start=r3(start), end=r3(end), visible_start=r3(visible_start), visible_end=r3(visible_end),
        size=r3(size), cx=r3(cx), cy=r3(cy), amp=r3(amp), period=r3(period),
        phase=r3(rng.uniform(0, 1)) if motion not in ("bounce", "pulse") else 0.0,
        direction=int(rng.choice([-1, 1])), angle=r3(rng.uniform(0, 2 * math.pi)), label=label,
    )


def distractor_tracks(rng: np.random.Generator, duration: float, count: int) -> List[Track]:
    """Objects that drift or wander over spans of the video, never doing an action motion.

    Half of them wear an action colour and most an action shape: they share attributes with
    actions without sharing a motion.
    """
    tracks = []
    for _ in range(count):
        shape = str(rng.choice(SHAPES))
        if rng.random() < 0.5:
            colour = str(rng.choice(list(ACTION_COLOURS)))
        else:
            colour = str(rng.choice([c for c in COLOURS if c not in ACTION_COLOURS]))
        motion = str(rng.choice(["drift", "wander"]))
        size = rng.uniform(3.5, 7.0)
        for _ in range(int(rng.integers(1, 3))):
            span = min(rng.uniform(3.0, 12.0), duration)
            vs = rng.uniform(0.0, duration - span) if duration > span else 0.0
            ve = vs + span
            if motion == "drift":
                speed = rng.uniform(3.0, 8.0)
                # Headings away from the axes, so a drift never looks like a horizontal slide.
                heading = rng.uniform(math.radians(25), math.radians(65)) + rng.integers(4) * math.pi / 2
                mx, my = rng.uniform(10, WIDTH - 10), rng.uniform(8, HEIGHT - 8)
                cx = mx - speed * math.cos(heading) * span / 2
                cy = my - speed * math.sin(heading) * span / 2
                wander: List[float] = []
            else:
                speed, heading = 0.0, rng.uniform(0, 2 * math.pi)
                cx, cy = rng.uniform(14, WIDTH - 14), rng.uniform(12, HEIGHT - 12)
                wander = [r3(rng.uniform(4, 15)), r3(rng.uniform(4, 12)), r3(rng.uniform(0, 1)),
                          r3(rng.uniform(3, 10)), r3(rng.uniform(4, 12)), r3(rng.uniform(0, 1))]
            tracks.append(Track(
                kind="distractor", shape=shape, colour=colour, motion=motion,
                start=r3(vs), end=r3(ve), visible_start=r3(vs), visible_end=r3(ve), size=r3(size),
                cx=r3(cx), cy=r3(cy), speed=r3(speed), angle=r3(heading), wander=wander,
            ))
    return tracks


def layout(rng: np.random.Generator, duration: float, lengths: Sequence[float], min_gap: float) -> List[Tuple[float, float]]:
    """Place segments of ``lengths`` in order, non-overlapping, at least ``min_gap`` apart."""
    m = len(lengths)
    free = duration - sum(lengths) - (m - 1) * min_gap
    if free < 0:
        raise ValueError("segments do not fit")
    gaps = rng.dirichlet(np.ones(m + 1)) * free
    out, t = [], gaps[0]
    for i, length in enumerate(lengths):
        out.append((r3(t), r3(min(t + length, duration))))
        t += length + min_gap + gaps[i + 1]
    return out


def _fit_lengths(rng: np.random.Generator, duration: float, m: int, lo: float, hi: float, min_gap: float, log: bool) -> List[float]:
    for _ in range(50):
        if log:
            lengths = np.exp(rng.uniform(math.log(lo), math.log(hi), size=m))
        else:
            lengths = rng.uniform(lo, hi, size=m)
        if lengths.sum() + (m - 1) * min_gap <= 0.95 * duration:
            return [float(x) for x in lengths]
    return [lo] * m


def _idles(rng: np.random.Generator, spans: List[Tuple[float, float]], duration: float, prob: float) -> List[Tuple[float, float]]:
    """Idle time before/after each span: at most 45% of the neighbouring gaps, so idles never meet."""
    out = []
    for i, (s, e) in enumerate(spans):
        gap_before = s - (spans[i - 1][1] if i > 0 else 0.0)
        gap_after = (spans[i + 1][0] if i + 1 < len(spans) else duration) - e
        limit_b = gap_before * (0.45 if i > 0 else 0.9)
        limit_a = gap_after * (0.45 if i + 1 < len(spans) else 0.9)
        before = min(rng.uniform(0.4, 2.5), limit_b) if rng.random() < prob else 0.0
        after = min(rng.uniform(0.4, 2.5), limit_a) if rng.random() < prob else 0.0
        out.append((max(before, 0.0), max(after, 0.0)))
    return out


# --------------------------------------------------------------------------- whole videos
@dataclass
class Instance:
    """One action instance (or grounding event) and the track that draws it."""

    start: float
    end: float
    track: Track


def anet_scene(
    rng: np.random.Generator, video_id: str, cls: ActionClass, seconds: Tuple[float, float],
    max_instances: int, distractors: Tuple[int, int],
) -> Tuple[Scene, List[Instance]]:
    num_frames = num_frames_for(rng, seconds)
    duration = num_frames / FPS
    m_max = max(1, min(max_instances, int(duration // 7) + 1))
    m = int(rng.integers(1, m_max + 1))
    lengths = _fit_lengths(rng, duration, m, 1.0, duration / 2, 1.0, log=True)
    spans = layout(rng, duration, lengths, 1.0)
    size = rng.uniform(*SIZE_RANGE)
    instances = []
    for (s, e), (before, after) in zip(spans, _idles(rng, spans, duration, 0.5)):
        track = action_track(rng, cls.shape, cls.colour, cls.motion, s, e, size, before, after, cls.name, duration)
        instances.append(Instance(track.start, track.end, track))
    tracks = [i.track for i in instances] + distractor_tracks(rng, duration, int(rng.integers(distractors[0], distractors[1] + 1)))
    scene = Scene("activitynet", video_id, num_frames, sample_background(rng, duration), tracks, int(rng.integers(2**31)))
    return scene, instances


def grounding_scene(
    rng: np.random.Generator, dataset: str, video_id: str, seconds: Tuple[float, float],
    events: Tuple[int, int], event_seconds: Tuple[float, float], distractors: Tuple[int, int],
) -> Tuple[Scene, List[Instance]]:
    num_frames = num_frames_for(rng, seconds)
    duration = num_frames / FPS
    n_actors = 1 if rng.random() < 0.4 else 2
    actors = []
    while len(actors) < n_actors:
        a = (str(rng.choice(ACTION_SHAPES)), str(rng.choice(list(ACTION_COLOURS))))
        if a not in actors:
            actors.append(a)
    n = int(rng.integers(events[0], events[1] + 1))
    lengths = _fit_lengths(rng, duration, n, event_seconds[0], event_seconds[1], 0.5, log=False)
    spans = layout(rng, duration, lengths, 0.5)
    used = set()
    sizes = {a: rng.uniform(*SIZE_RANGE) for a in actors}
    instances = []
    for (s, e), (before, after) in zip(spans, _idles(rng, spans, duration, 0.4)):
        shape, colour = actors[int(rng.integers(len(actors)))]
        motions = [mo for mo in ACTION_MOTIONS if motion_allowed(shape, mo)]
        fresh = [mo for mo in motions if (shape, colour, mo) not in used]
        # Mostly a new motion for this actor; sometimes the same one again elsewhere on screen.
        motion = str(rng.choice(fresh if fresh and rng.random() < 0.85 else motions))
        used.add((shape, colour, motion))
        track = action_track(rng, shape, colour, motion, s, e, sizes[(shape, colour)], before, after, None, duration)
        instances.append(Instance(track.start, track.end, track))
    tracks = [i.track for i in instances] + distractor_tracks(rng, duration, int(rng.integers(distractors[0], distractors[1] + 1)))
    scene = Scene(dataset, video_id, num_frames, sample_background(rng, duration), tracks, int(rng.integers(2**31)))
    return scene, instances


def trimmed_scene(rng: np.random.Generator, clip_id: str, cls: ActionClass, seconds: int) -> Scene:
    num_frames = seconds * FPS
    size = rng.uniform(*SIZE_RANGE)
    # The action fills the clip; the object is already there at the first frame (no fade).
    track = action_track(rng, cls.shape, cls.colour, cls.motion, 0.0, float(seconds), size, 0.0, 0.0, cls.name)
    track.visible_start, track.visible_end = -1.0, float(seconds) + 1.0
    tracks = [track] + distractor_tracks(rng, float(seconds), int(rng.integers(0, 2)))
    return Scene("trimmed", clip_id, num_frames, sample_background(rng, float(seconds), cut_prob=0.0), tracks, int(rng.integers(2**31)))
