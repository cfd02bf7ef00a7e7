"""The visual world of the synthetic benchmark: shapes, colours, motions, backgrounds, rendering.

A video is a ``Scene``: background parameters plus a list of ``Track``s. A track is one object
(a shape of a colour) that is visible over a time span and moves with one motion. Action
tracks perform a class's motion inside their annotated span and may sit still ("idle") for a
moment before and after it, so the appearance alone never marks the action boundaries.
Distractor tracks drift or wander, sometimes with the colour or shape of an action class.

Everything is a pure function of the scene description, so the renderer, the ground-truth
mask (``object_layers``) and a re-render for tests always agree. Frames are rendered in
chunks with numpy (no per-pixel Python loops).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

FPS = 15
HEIGHT = 64
WIDTH = 86

# Saturated colours of actions (and of some distractors); distractor-only colours beside them.
ACTION_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "blue": (40, 84, 236),
    "yellow": (240, 214, 36),
    "green": (36, 190, 64),
}
DISTRACTOR_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "white": (238, 238, 238),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "cyan": (40, 210, 220),
}
COLOURS: Dict[str, Tuple[int, int, int]] = {**ACTION_COLOURS, **DISTRACTOR_COLOURS}

ACTION_SHAPES = ("disc", "square", "triangle", "cross")
SHAPES = ACTION_SHAPES + ("ring", "bar")
# Shapes whose rotation is invisible cannot spin.
ROTATION_INVARIANT = {"disc", "ring"}

ACTION_MOTIONS = ("slide", "bounce", "orbit", "pulse", "spin", "zigzag")
DISTRACTOR_MOTIONS = ("drift", "wander")
MOTION_GERUND = {
    "slide": "sliding", "bounce": "bouncing", "orbit": "orbiting",
    "pulse": "pulsing", "spin": "spinning", "zigzag": "zigzagging",
}

OUTLINE_PX = 1.2  # width of the dark rim drawn around every object
OUTLINE_DARKEN = 0.75
FADE_SECONDS = 0.2  # objects fade in/out over this time at the ends of their visible span


def motion_allowed(shape: str, motion: str) -> bool:
    return not (motion == "spin" and shape in ROTATION_INVARIANT)


@dataclass(frozen=True)
class ActionClass:
    """An action class: an object of one shape and colour performing one motion."""

    shape: str
    colour: str
    motion: str

    @property
    def name(self) -> str:
        # ActivityNet spells classes with a capital first letter ("Playing harmonica").
        return f"{self.colour.capitalize()} {self.shape} {MOTION_GERUND[self.motion]}"


def _classes(table: Sequence[Tuple[str, str, Sequence[str]]]) -> List[ActionClass]:
    out = [ActionClass(s, c, m) for c, s, motions in table for m in motions]
    for k in out:
        if not motion_allowed(k.shape, k.motion):
            raise ValueError(f"class {k.name}: a {k.shape} cannot visibly {k.motion}")
    return out


# Class tables. Shapes and colours are shared by several classes, so the class lives in the
# motion (and every motion is shared by several appearances, so it needs the appearance too).
CLASS_TABLES: Dict[str, List[ActionClass]] = {
    "k6": _classes([
        ("red", "disc", ("slide", "bounce")),
        ("red", "square", ("slide", "spin")),
        ("blue", "square", ("bounce", "spin")),
    ]),
    "k20": _classes([
        ("red", "disc", ("slide", "bounce", "orbit", "pulse")),
        ("red", "square", ("slide", "spin", "zigzag", "pulse")),
        ("blue", "square", ("bounce", "orbit", "spin", "zigzag")),
        ("blue", "triangle", ("slide", "spin", "pulse")),
        ("yellow", "triangle", ("bounce", "orbit", "zigzag")),
        ("yellow", "disc", ("slide", "pulse")),
    ]),
}
# Classes of the trimmed source set that are not target classes (Kinetics has many classes
# ActivityNet lacks); the first ``n`` are used.
EXTRA_TRIMMED_CLASSES: List[ActionClass] = _classes([
    ("green", "cross", ("spin", "bounce")),
    ("green", "disc", ("orbit",)),
    ("green", "triangle", ("slide",)),
    ("red", "cross", ("pulse",)),
    ("blue", "disc", ("zigzag",)),
])


# --------------------------------------------------------------------------- tracks
@dataclass
class Track:
    """One object over one visible span. Times in seconds of the video.

    ``start``/``end`` bound the motion (the annotated action for action tracks); the object is
    visible, static, from ``visible_start`` to ``start`` and from ``end`` to ``visible_end``.
    """

    kind: str  # "action" | "distractor"
    shape: str
    colour: str
    motion: str
    start: float
    end: float
    visible_start: float
    visible_end: float
    size: float  # radius in pixels
    cx: float  # anchor position in pixels
    cy: float
    amp: float = 0.0  # pixels (slide, bounce, orbit, zigzag)
    period: float = 1.0  # seconds per cycle
    phase: float = 0.0  # fraction of a cycle
    direction: int = 1
    angle: float = 0.0  # initial rotation (rad); heading for drift
    speed: float = 0.0  # px/s for drift
    wander: List[float] = field(default_factory=list)  # amplitudes/periods/phases of a wander path
    label: Optional[str] = None

    @property
    def rgb(self) -> Tuple[int, int, int]:
        return COLOURS[self.colour]

    def state(self, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, scale, rotation, opacity) at times ``t`` (seconds), vectorised."""
        t = np.asarray(t, dtype=np.float64)
        # Idle before/after: hold the pose of the motion's first/last instant.
        tm = np.clip(t, self.start, self.end) - self.start
        x = np.full_like(tm, self.cx)
        y = np.full_like(tm, self.cy)
        scale = np.ones_like(tm)
        rot = np.full_like(tm, self.angle)
        u = tm / self.period + self.phase
        m = self.motion
        if m == "slide":
            x = self.cx + self.amp * _triangle(u)
        elif m == "bounce":
            y = self.cy - self.amp * np.abs(np.sin(np.pi * u))
        elif m == "orbit":
            a = 2 * np.pi * u * self.direction
            x = self.cx + self.amp * np.cos(a)
            y = self.cy + 0.75 * self.amp * np.sin(a)
        elif m == "pulse":
            scale = 1.0 + 0.42 * np.sin(2 * np.pi * u)
        elif m == "spin":
            rot = self.angle + 2 * np.pi * (tm / self.period) * self.direction
        elif m == "zigzag":
            x = self.cx + self.amp * _triangle(tm / (4.0 * self.period) + self.phase)
            y = self.cy + 0.45 * self.amp * _triangle(2.0 * u)
        elif m == "drift":
            travel = t - self.visible_start
            x = self.cx + self.speed * math.cos(self.angle) * travel
            y = self.cy + self.speed * math.sin(self.angle) * travel
        elif m == "wander":
            ax, px, fx, ay, py, fy = self.wander
            travel = t - self.visible_start
            x = self.cx + ax * np.sin(2 * np.pi * (travel / px + fx))
            y = self.cy + ay * np.sin(2 * np.pi * (travel / py + fy))
            rot = self.angle + 0.25 * np.sin(2 * np.pi * travel / (1.7 * px))
        else:
            raise ValueError(f"unknown motion {m!r}")
        fade_in = np.clip((t - self.visible_start) / FADE_SECONDS, 0.0, 1.0)
        fade_out = np.clip((self.visible_end - t) / FADE_SECONDS, 0.0, 1.0)
        opacity = np.minimum(fade_in, fade_out)
        return x, y, scale, rot, opacity

    def to_dict(self) -> dict:
        return asdict(self)


def _triangle(u: np.ndarray) -> np.ndarray:
    """A triangle wave in [-1, 1] with period 1 (constant speed, instant turn)."""
    return 4.0 * np.abs(u - np.floor(u + 0.5)) - 1.0


# --------------------------------------------------------------------------- shapes
def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels, negative inside) of a shape of radius ``r`` in its own frame."""
    if shape == "disc":
        return np.sqrt(u * u + v * v) - r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82 * r
    if shape == "triangle":
        # Intersection of three half-planes (equilateral, one vertex up); inradius 0.5 r.
        d1 = v
        d2 = -0.8660254 * u - 0.5 * v
        d3 = 0.8660254 * u - 0.5 * v
        return np.maximum(np.maximum(d1, d2), d3) - 0.5 * r
    if shape == "cross":
        a = np.abs(u)
        b = np.abs(v)
        arm = 0.32 * r
        return np.minimum(np.maximum(a - r, b - arm), np.maximum(a - arm, b - r))
    if shape == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.72 * r) - 0.28 * r
    if shape == "bar":
        return np.maximum(np.abs(u) - 1.15 * r, np.abs(v) - 0.3 * r)
    raise ValueError(f"unknown shape {shape!r}")


def track_alpha(track: Track, times: np.ndarray, box: Optional[Tuple[int, int, int, int]] = None, outline: bool = False):
    """Coverage (0..1) of ``track`` on the pixel grid at ``times``: array (T, h, w) and its box.

    ``box`` is (y0, y1, x0, x1); by default the smallest box holding the object at all ``times``.
    With ``outline``, returns (coverage, rim coverage, box).
    """
    x, y, scale, rot, opacity = track.state(times)
    reach = track.size * float(np.max(scale)) * 1.5 + 2.0
    if box is None:
        y0 = max(int(math.floor(float(np.min(y)) - reach)), 0)
        y1 = min(int(math.ceil(float(np.max(y)) + reach)) + 1, HEIGHT)
        x0 = max(int(math.floor(float(np.min(x)) - reach)), 0)
        x1 = min(int(math.ceil(float(np.max(x)) + reach)) + 1, WIDTH)
        box = (y0, y1, x0, x1)
    y0, y1, x0, x1 = box
    if y1 <= y0 or x1 <= x0:
        empty = np.zeros((len(times), 0, 0), np.float32)
        return (empty, empty, box) if outline else (empty, box)
    ys = np.arange(y0, y1, dtype=np.float32)[None, :, None]
    xs = np.arange(x0, x1, dtype=np.float32)[None, None, :]
    dx = xs - x.astype(np.float32)[:, None, None]
    dy = ys - y.astype(np.float32)[:, None, None]
    c = np.cos(rot).astype(np.float32)[:, None, None]
    s = np.sin(rot).astype(np.float32)[:, None, None]
    u = c * dx + s * dy
    v = -s * dx + c * dy
    r = (track.size * scale).astype(np.float32)[:, None, None]
    d = _shape_distance(track.shape, u, v, r)
    alpha = np.clip(0.5 - d, 0.0, 1.0) * opacity.astype(np.float32)[:, None, None]
    if outline:
        # Coverage of the shape grown by OUTLINE_PX: the dark rim around it.
        rim = np.clip(0.5 + OUTLINE_PX - d, 0.0, 1.0) * opacity.astype(np.float32)[:, None, None]
        return alpha, rim, box
    return alpha, box


# --------------------------------------------------------------------------- background
@dataclass
class Background:
    """Moving, textured, slowly changing background footage (never blank)."""

    texture_seed: int
    palette: List[List[float]]  # two muted colours per shot: [[r, g, b] x 4], 0..255
    pan_amp: List[float]  # camera pan amplitude (x, y) in px
    pan_period: List[float]  # seconds
    pan_phase: List[float]
    grating: List[float]  # kx, ky (rad/px), omega (rad/s), contrast
    drift_period: List[float]  # per-channel colour drift periods (s)
    drift_phase: List[float]
    drift_amount: float
    cut: Optional[float]  # time of a shot change (new texture and palette), or None
    noise: float  # sensor noise std (0..255 scale)

    def to_dict(self) -> dict:
        return asdict(self)


PAD = 24  # texture margin for camera pan


def _smooth_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random texture in [0, 1]: low-pass filtered noise (1/f-like spectrum)."""
    noise = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    spectrum = np.fft.rfft2(noise) / np.maximum(f, 1.0 / max(h, w)) ** 1.6
    spectrum[0, 0] = 0.0
    tex = np.fft.irfft2(spectrum, s=(h, w))
    tex = (tex - tex.mean()) / (tex.std() + 1e-8)
    return np.clip(0.5 + 0.22 * tex, 0.0, 1.0).astype(np.float32)


def _textures(bg: Background) -> List[np.ndarray]:
    rng = np.random.default_rng(bg.texture_seed)
    return [_smooth_texture(rng, HEIGHT + 2 * PAD, WIDTH + 2 * PAD) for _ in range(2)]


def render_background(bg: Background, times: np.ndarray, textures: Optional[List[np.ndarray]] = None) -> np.ndarray:
    """Background frames (T, H, W, 3) float32 in 0..255 at ``times``."""
    textures = textures if textures is not None else _textures(bg)
    T = len(times)
    out = np.empty((T, HEIGHT, WIDTH, 3), np.float32)
    yy = np.arange(HEIGHT, dtype=np.float32)[None, :, None]
    xx = np.arange(WIDTH, dtype=np.float32)[None, None, :]
    kx, ky, omega, contrast = bg.grating
    wave = np.sin(kx * xx + ky * yy + omega * times.astype(np.float32)[:, None, None])  # (T, H, W)
    for i, t in enumerate(times):
        shot = 1 if (bg.cut is not None and t >= bg.cut) else 0
        ox = PAD + int(round(bg.pan_amp[0] * math.sin(2 * math.pi * (t / bg.pan_period[0] + bg.pan_phase[0]))))
        oy = PAD + int(round(bg.pan_amp[1] * math.sin(2 * math.pi * (t / bg.pan_period[1] + bg.pan_phase[1]))))
        tex = textures[shot][oy:oy + HEIGHT, ox:ox + WIDTH]
        lo = np.asarray(bg.palette[2 * shot], np.float32)
        hi = np.asarray(bg.palette[2 * shot + 1], np.float32)
        mix = np.clip(tex + contrast * wave[i], 0.0, 1.0)[..., None]
        gain = 1.0 + bg.drift_amount * np.sin(
            2 * np.pi * (t / np.asarray(bg.drift_period) + np.asarray(bg.drift_phase))
        ).astype(np.float32)
        out[i] = (lo + (hi - lo) * mix) * gain
    return out


# --------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """Everything needed to render one video."""

    dataset: str
    video_id: str
    num_frames: int
    background: Background
    tracks: List[Track]
    noise_seed: int

    @property
    def duration(self) -> float:
        return self.num_frames / FPS

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "video_id": self.video_id,
            "num_frames": self.num_frames,
            "background": self.background.to_dict(),
            "tracks": [t.to_dict() for t in self.tracks],
            "noise_seed": self.noise_seed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls(
            d["dataset"], d["video_id"], int(d["num_frames"]), Background(**d["background"]),
            [Track(**t) for t in d["tracks"]], int(d["noise_seed"]),
        )


def _draw_order(tracks: Sequence[Track]) -> List[Track]:
    # Distractors are drawn first, so an action object is never hidden by one.
    return [t for t in tracks if t.kind != "action"] + [t for t in tracks if t.kind == "action"]


def frame_times(frame_indices: np.ndarray) -> np.ndarray:
    """Presentation time (s) of frames: frame ``i`` is shown at ``i / FPS``."""
    return np.asarray(frame_indices, dtype=np.float64) / FPS


def render_frames(scene: Scene, start: int, stop: int, textures: Optional[List[np.ndarray]] = None, noise: bool = True) -> np.ndarray:
    """Frames ``start..stop-1`` of ``scene`` as uint8 (T, H, W, 3) RGB."""
    times = frame_times(np.arange(start, stop))
    img = render_background(scene.background, times, textures)
    for track in _draw_order(scene.tracks):
        live = (times >= track.visible_start) & (times <= track.visible_end)
        if not live.any():
            continue
        idx = np.nonzero(live)[0]
        alpha, rim, (y0, y1, x0, x1) = track_alpha(track, times[idx], outline=True)
        if alpha.size == 0:
            continue
        colour = np.asarray(track.rgb, np.float32)
        # A dark rim puts the shape into luma: 4:2:0 chroma alone would round off its corners.
        region = img[idx, y0:y1, x0:x1] * (1.0 - OUTLINE_DARKEN * rim[..., None])
        a = alpha[..., None]
        img[idx, y0:y1, x0:x1] = region * (1.0 - a) + colour * a
    if noise and scene.background.noise > 0:
        rng = np.random.default_rng([scene.noise_seed, start])
        noise_field = rng.standard_normal(img.shape, dtype=np.float32)
        noise_field *= scene.background.noise
        img += noise_field
    img += 0.5
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def iter_video(scene: Scene, chunk: int = 16) -> Iterator[np.ndarray]:
    """All frames of ``scene`` in chunks of ``chunk`` frames (uint8 (T, H, W, 3))."""
    textures = _textures(scene.background)
    for start in range(0, scene.num_frames, chunk):
        yield render_frames(scene, start, min(start + chunk, scene.num_frames), textures)


@dataclass
class VisibleObject:
    """An object visible at one instant, with its pixel coverage (H, W) in 0..1."""

    kind: str  # "action" (performing its motion), "idle" (an action object sitting still), "distractor"
    label: Optional[str]
    shape: str
    colour: str
    rgb: Tuple[int, int, int]
    motion: str
    alpha: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.alpha >= 0.5


def object_layers(scene: Scene, t: float) -> List[VisibleObject]:
    """The objects visible at time ``t`` (s), in drawing order, each with its full-frame coverage."""
    out: List[VisibleObject] = []
    times = np.asarray([t], dtype=np.float64)
    for track in _draw_order(scene.tracks):
        if not (track.visible_start <= t <= track.visible_end):
            continue
        alpha, box = track_alpha(track, times, box=(0, HEIGHT, 0, WIDTH))
        if float(alpha.max()) <= 0.0:
            continue
        if track.kind == "action":
            kind = "action" if track.start <= t <= track.end else "idle"
        else:
            kind = "distractor"
        out.append(VisibleObject(kind, track.label if kind == "action" else None, track.shape, track.colour, track.rgb, track.motion, alpha[0]))
    return out


def action_at(scene: Scene, t: float) -> Optional[str]:
    """The label of the action performed at time ``t`` (None during background)."""
    for track in scene.tracks:
        if track.kind == "action" and track.start <= t <= track.end:
            return track.label
    return None


def ground_truth_mask(scene: Scene, t: float) -> np.ndarray:
    """Boolean (H, W) mask of the pixels showing a performed action at time ``t`` (all False in background)."""
    mask = np.zeros((HEIGHT, WIDTH), bool)
    for obj in object_layers(scene, t):
        if obj.kind == "action":
            mask |= obj.mask
    return mask
