"""Sentences about synthetic scenes: varied templates and synonyms that name true attributes.

Every sentence is built from what the object really does: its colour, its shape, its motion,
where it is (from its anchor position), how fast it goes (from its period, relative to the
motion's range) and how big it is. Three styles follow the real sources: ActivityNet Captions
(long, capitalised, with a full stop), Charades-STA (short, lower case, with a full stop) and
TACoS (capitalised, no full stop).
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np

from clap_bench.synth.world import HEIGHT, WIDTH, Background, Track

SHAPE_WORDS = {
    "disc": ["disc", "circle", "ball", "dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge"],
    "cross": ["cross", "plus sign"],
    "ring": ["ring", "hoop"],
    "bar": ["bar", "stick"],
}
MOTION_PHRASES = {
    "slide": ["slides back and forth", "moves from side to side", "glides left and right", "slides sideways"],
    "bounce": ["bounces up and down", "keeps bouncing", "hops up and down", "bounces"],
    "orbit": ["moves in a circle", "circles around", "goes round in circles", "orbits around a point"],
    "pulse": ["grows and shrinks", "pulses", "swells and shrinks again", "throbs in place"],
    "spin": ["spins in place", "rotates", "turns around and around", "spins"],
    "zigzag": ["zigzags across the screen", "moves in a zigzag", "zigzags", "wiggles up and down while moving sideways"],
    "drift": ["drifts across the screen", "floats by", "slowly passes through", "glides past"],
    "wander": ["wanders around", "meanders about", "floats around aimlessly"],
}
MOTION_SHORT = {
    "slide": ["slides", "slides sideways", "moves side to side"],
    "bounce": ["bounces", "hops"],
    "orbit": ["circles", "goes round"],
    "pulse": ["pulses", "grows and shrinks"],
    "spin": ["spins", "rotates"],
    "zigzag": ["zigzags"],
    "drift": ["drifts by"],
    "wander": ["wanders"],
}
FAST_WORDS = ["quickly", "rapidly", "fast"]
SLOW_WORDS = ["slowly", "gently", "lazily"]

# Period ranges (seconds per cycle) of the action motions; also used to sample them.
MOTION_PERIODS = {
    "slide": (1.2, 3.0),
    "bounce": (0.5, 1.2),
    "orbit": (0.8, 2.0),
    "pulse": (0.5, 1.3),
    "spin": (0.6, 1.6),
    "zigzag": (0.4, 0.9),
}
SIZE_RANGE = (4.5, 8.5)  # object radius in pixels


def _pick(rng: np.random.Generator, options: List[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str, definite: bool) -> str:
    if definite:
        return "the"
    return "an" if word[:1].lower() in "aeiou" else "a"


def position_phrase(track: Track, rng: np.random.Generator) -> str:
    """Where the object is, in words, from where it really moves."""
    cy = track.cy - (track.amp / 2 if track.motion == "bounce" else 0.0)
    vertical = "top" if cy < HEIGHT / 3 else "bottom" if cy > 2 * HEIGHT / 3 else None
    horizontal_moves = track.motion in ("slide", "zigzag")
    horizontal = None if horizontal_moves else ("left" if track.cx < WIDTH / 3 else "right" if track.cx > 2 * WIDTH / 3 else None)
    if vertical and horizontal:
        return _pick(rng, [f"in the {vertical} {horizontal} corner", f"at the {vertical} {horizontal}"])
    if vertical:
        return _pick(rng, [f"near the {vertical}", f"at the {vertical} of the screen", f"along the {vertical}"])
    if horizontal:
        return _pick(rng, [f"on the {horizontal}", f"on the {horizontal} side", f"to the {horizontal}"])
    return _pick(rng, ["in the middle", "in the centre", "in the middle of the screen"])


def speed_word(track: Track, rng: np.random.Generator) -> Optional[str]:
    if track.motion not in MOTION_PERIODS:
        return None
    lo, hi = MOTION_PERIODS[track.motion]
    rel = (track.period - lo) / (hi - lo)
    if rel < 0.3:
        return _pick(rng, FAST_WORDS)
    if rel > 0.7:
        return _pick(rng, SLOW_WORDS)
    return None


def size_word(track: Track) -> Optional[str]:
    lo, hi = SIZE_RANGE
    if track.size < lo + 0.25 * (hi - lo):
        return "small"
    if track.size > lo + 0.75 * (hi - lo):
        return "big"
    return None


def _noun_phrase(track: Track, rng: np.random.Generator, definite: bool, with_size: bool = True) -> str:
    words = []
    size = size_word(track) if with_size and rng.random() < 0.5 else None
    if size:
        words.append(size)
    colour = track.colour
    if rng.random() < 0.15:
        colour = "bright " + colour
    words.append(colour)
    words.append(_pick(rng, SHAPE_WORDS[track.shape]))
    body = " ".join(words)
    return f"{_article(body, definite)} {body}"


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _with_adverb(phrase: str, adverb: Optional[str]) -> str:
    return f"{phrase} {adverb}" if adverb else phrase


def caption_action(track: Track, rng: np.random.Generator, repeat: bool = False, idle_first: bool = False) -> str:
    """An ActivityNet-Captions-style sentence about an action track (capitalised, full stop)."""
    motion = _pick(rng, MOTION_PHRASES[track.motion])
    adverb = speed_word(track, rng)
    where = position_phrase(track, rng)
    if idle_first:
        np_ = _noun_phrase(track, rng, definite=False)
        return _cap(f"{np_} sits still {where} and then {_with_adverb(motion, adverb)}.")
    if repeat:
        np_ = _noun_phrase(track, rng, definite=True, with_size=False)
        template = int(rng.integers(4))
        if template == 0:
            return _cap(f"{np_} {_with_adverb(motion, adverb)} again, this time {where}.")
        if template == 1:
            return _cap(f"after a pause, {np_} {_with_adverb(motion, adverb)} {where}.")
        if template == 2:
            return _cap(f"then {np_} {motion} {where}{(' ' + adverb) if adverb else ''}.")
        return _cap(f"once more {np_} {_with_adverb(motion, adverb)} {where}.")
    np_ = _noun_phrase(track, rng, definite=False)
    template = int(rng.integers(5))
    if template == 0:
        return _cap(f"{np_} {_with_adverb(motion, adverb)} {where}.")
    if template == 1:
        return _cap(f"we see {np_} that {_with_adverb(motion, adverb)} {where}.")
    if template == 2:
        return _cap(f"{np_} appears {where} and {_with_adverb(motion, adverb)}.")
    if template == 3:
        return _cap(f"{where}, {np_} {_with_adverb(motion, adverb)}.")
    shape = _pick(rng, SHAPE_WORDS[track.shape])
    return _cap(f"the {shape}, which is {track.colour}, {_with_adverb(motion, adverb)} {where}.")


def caption_distractor(track: Track, rng: np.random.Generator) -> str:
    np_ = _noun_phrase(track, rng, definite=False, with_size=False)
    motion = _pick(rng, MOTION_PHRASES[track.motion])
    template = int(rng.integers(3))
    if template == 0:
        return _cap(f"{np_} {motion} in the background.")
    if template == 1:
        return _cap(f"meanwhile {np_} {motion}.")
    return _cap(f"in the background, {np_} {motion}.")


def background_tone(background: Background, shot: int = 0) -> str:
    """A rough colour word for a shot's background palette."""
    lo = np.asarray(background.palette[2 * shot], float)
    hi = np.asarray(background.palette[2 * shot + 1], float)
    mean = (lo + hi) / 2
    r, g, b = mean
    spread = mean.max() - mean.min()
    if spread < 18:
        return "dark grey" if mean.mean() < 90 else "grey"
    channel = int(np.argmax(mean))
    word = ("reddish", "greenish", "bluish")[channel]
    if channel == 0 and g > 0.85 * r:
        word = "brownish" if mean.mean() < 120 else "beige"
    if channel == 2 and r > 0.85 * b:
        word = "purplish"
    return word


def caption_scene(background: Background, rng: np.random.Generator) -> str:
    tone = background_tone(background, 0)
    template = int(rng.integers(3))
    if template == 0:
        return f"The video shows a {tone} textured background that slowly changes colour."
    if template == 1:
        return f"The camera moves slowly over a {tone} pattern."
    return f"A {tone} mottled background fills the screen."


def caption_cut(background: Background, rng: np.random.Generator) -> str:
    tone = background_tone(background, 1)
    return _pick(rng, [f"The scene changes to a {tone} background.", f"The view cuts to a {tone} pattern."])


def charades_sentence(track: Track, rng: np.random.Generator, need_position: bool = False) -> str:
    """A short Charades-STA-style query: lower case, about six words, full stop.

    ``need_position``: the same object does the same motion elsewhere in the video, so the
    query must say where (and usually how fast) to single this event out.
    """
    np_ = _noun_phrase(track, rng, definite=rng.random() < 0.4, with_size=False)
    motion = _pick(rng, MOTION_SHORT[track.motion])
    adverb = speed_word(track, rng) if need_position or rng.random() < 0.5 else None
    where = position_phrase(track, rng) if need_position or rng.random() < 0.35 else None
    parts = [np_, motion]
    if adverb:
        parts.append(adverb)
    if where:
        parts.append(where)
    return " ".join(parts) + "."


def tacos_sentence(track: Track, rng: np.random.Generator, need_position: bool = False) -> str:
    """A TACoS-style query: capitalised, no full stop (``need_position`` as for Charades)."""
    np_ = _noun_phrase(track, rng, definite=rng.random() < 0.6)
    motion = _pick(rng, MOTION_PHRASES[track.motion])
    adverb = speed_word(track, rng)
    parts = [np_, _with_adverb(motion, adverb)]
    if need_position or rng.random() < 0.6:
        parts.append(position_phrase(track, rng))
    return _cap(" ".join(parts))


def tacos_composite(first: Track, second: Track, rng: np.random.Generator) -> str:
    """A TACoS-style query spanning two consecutive events."""
    a = _noun_phrase(first, rng, definite=True, with_size=False)
    b = _noun_phrase(second, rng, definite=second.colour == first.colour and second.shape == first.shape, with_size=False)
    ma = _pick(rng, MOTION_SHORT[first.motion])
    mb = _pick(rng, MOTION_SHORT[second.motion])
    if first.colour == second.colour and first.shape == second.shape:
        b = "it"
    return _cap(f"{a} {ma}, then {b} {mb}")
