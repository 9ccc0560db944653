"""The synthetic detection world's renderer: a demo and test fixture the product never imports.

Procedural shapes (one per class name, :data:`SHAPES`) on textured backgrounds (:data:`BACKGROUNDS`), with clutter,
occlusion, blur, noise and colour casts from :class:`~tasks.config.RenderSettings`. :func:`render_scene` draws one
image and its visible ground truth; :mod:`tasks.sim.sets` writes YOLO sets of them (one PNG + one label file each).
Drift between the source settings and a scenario lives in :mod:`tasks.sim.drift`; the ``world`` stage
(:mod:`tasks.world`) lays the sets out on disk.

Determinism: all randomness of an image comes from the generator it is given (:func:`tasks.sim.sets.image_seed`).
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from tasks.config import RenderSettings, VisionloopError

MIN_VISIBLE_FRACTION = 0.4  # an object less visible than this is unlabeled: a human could not box it either
MIN_OBJECT_PIXELS = 6  # objects rasterising to fewer pixels are dropped from the labels
ASPECT_JITTER = 0.2  # log-uniform aspect ratio in [e^-0.2, e^0.2] ~ [0.82, 1.22]
MIN_COLOR_DISTANCE = 70.0  # RGB distance an object colour tries to keep from most background pixels under it
_SUBPIXEL_BITS = 4  # cv2 fixed-point shift: vertices at 1/16 px

UInt8Image = npt.NDArray[np.uint8]
FloatImage = npt.NDArray[np.float32]
Outline = tuple[tuple[npt.NDArray[np.float64], bool], ...]
"""A shape in unit coordinates: polygons ``(K, 2)`` inside the unit circle, each filled (True) or cut out."""


class WorldError(VisionloopError, ValueError):
    """The world cannot be rendered as configured; the message names the setting and the fix."""


# --------------------------------------------------------------------------------------------------------------
# Shape registry: class name -> unit outline. Every outline fits the unit circle, so ``radius`` is half the size.


def _regular_polygon(sides: int, *, radius: float = 1.0, phase: float = -math.pi / 2) -> npt.NDArray[np.float64]:
    angles = phase + 2 * math.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _circle() -> Outline:
    return ((_regular_polygon(64), True),)


def _ring() -> Outline:
    return ((_regular_polygon(64), True), (_regular_polygon(64, radius=0.58), False))


def _triangle() -> Outline:
    return ((_regular_polygon(3), True),)


def _square() -> Outline:
    return ((_regular_polygon(4, phase=math.pi / 4), True),)


def _hexagon() -> Outline:
    return ((_regular_polygon(6), True),)


def _diamond() -> Outline:
    return ((np.array([[0.0, -1.0], [0.58, 0.0], [0.0, 1.0], [-0.58, 0.0]]), True),)


def _star() -> Outline:
    outer = _regular_polygon(5)
    inner = _regular_polygon(5, radius=0.42, phase=-math.pi / 2 + math.pi / 5)
    return ((np.stack([outer, inner], axis=1).reshape(-1, 2), True),)


def _cross() -> Outline:
    a, b = 0.3, 0.95  # half arm width, arm length (corner (b, a) stays inside the unit circle)
    pts = [(a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a), (-a, -b)]
    return ((np.array(pts, dtype=np.float64), True),)


SHAPES: dict[str, Callable[[], Outline]] = {
    "circle": _circle,
    "disc": _circle,
    "ring": _ring,
    "triangle": _triangle,
    "square": _square,
    "hexagon": _hexagon,
    "diamond": _diamond,
    "star": _star,
    "cross": _cross,
}
"""Procedural shape drawers by class name; ``base.classes`` picks from these."""


@functools.cache
def _outline(name: str) -> Outline:
    return SHAPES[name]()


def check_classes(classes: Sequence[str]) -> None:
    """Raise :class:`WorldError` unless every class name has a shape drawer in :data:`SHAPES`."""
    unknown = [name for name in classes if name not in SHAPES]
    if unknown:
        raise WorldError(
            f"base.classes: no shape drawer for {unknown}; the synthetic world draws {sorted(SHAPES)} "
            "(rename the class, or set world.enabled: false and bring your own data)"
        )


# --------------------------------------------------------------------------------------------------------------
# Backgrounds: name -> (rng, height, width) -> (H, W, 3) float32 in [0, 255].


def _random_color(rng: np.random.Generator, low: float = 0.0, high: float = 255.0) -> npt.NDArray[np.float32]:
    return rng.uniform(low, high, size=3).astype(np.float32)


def _second_color(rng: np.random.Generator, first: npt.NDArray[np.float32], spread: float) -> npt.NDArray[np.float32]:
    return np.clip(first + rng.normal(0.0, spread, size=3), 0, 255).astype(np.float32)


def _low_frequency(rng: np.random.Generator, h: int, w: int, *, grid: int, channels: int) -> FloatImage:
    """Smooth noise: a ``grid x grid`` normal field upsampled bicubically to ``(H, W, channels)``."""
    coarse = rng.standard_normal((grid, grid, channels)).astype(np.float32)
    up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.asarray(up, dtype=np.float32).reshape(h, w, channels)


def _rotated_coords(rng: np.random.Generator, h: int, w: int, angle: float) -> FloatImage:
    yy, xx = np.indices((h, w), dtype=np.float32)
    offset = rng.uniform(0, 100)
    return (xx * math.cos(angle) + yy * math.sin(angle) + offset).astype(np.float32)


def _bg_smooth(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    base = _random_color(rng, 30, 225)
    field_ = _low_frequency(rng, h, w, grid=int(rng.integers(2, 5)), channels=3)
    return base + field_ * rng.uniform(15, 40)


def _bg_stripes(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    c1 = _random_color(rng, 30, 225)
    c2 = _second_color(rng, c1, 45)
    u = _rotated_coords(rng, h, w, rng.uniform(0, math.pi)) / rng.uniform(8, 24)
    t = np.clip(np.sin(2 * math.pi * u) * 3, -1, 1)[..., None] * 0.5 + 0.5
    return c1 * t + c2 * (1 - t)


def _bg_checker(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    c1 = _random_color(rng, 30, 225)
    c2 = _second_color(rng, c1, 40)
    angle, cell = rng.uniform(-0.6, 0.6), rng.uniform(8, 22)
    u = _rotated_coords(rng, h, w, angle) / cell
    v = _rotated_coords(rng, h, w, angle + math.pi / 2) / cell
    parity = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)[..., None]
    return c1 * parity + c2 * (1 - parity)


def _bg_noise(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    base = _random_color(rng, 50, 205)
    grain = int(rng.integers(1, 3))
    small = rng.normal(0.0, rng.uniform(25, 45), size=(-(-h // grain), -(-w // grain), 3)).astype(np.float32)
    fine = np.repeat(np.repeat(small, grain, axis=0), grain, axis=1)[:h, :w]
    return base + fine + _low_frequency(rng, h, w, grid=3, channels=3) * 15


def _bg_blotches(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    levels = int(rng.integers(3, 5))
    palette = np.stack([_random_color(rng, 20, 235) for _ in range(levels)])
    field_ = _low_frequency(rng, h, w, grid=int(rng.integers(5, 10)), channels=1)[..., 0]
    edges = np.quantile(field_, np.linspace(0, 1, levels + 1)[1:-1])
    return palette[np.digitize(field_, edges)].astype(np.float32)


def _bg_plain(rng: np.random.Generator, h: int, w: int) -> FloatImage:
    return np.broadcast_to(_random_color(rng, 30, 225), (h, w, 3)).astype(np.float32)


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int, int], FloatImage]] = {
    "smooth": _bg_smooth,
    "stripes": _bg_stripes,
    "checker": _bg_checker,
    "noise": _bg_noise,
    "blotches": _bg_blotches,
    "plain": _bg_plain,
}
"""Background texture generators by name; ``backgrounds`` in render settings picks from these."""


def check_backgrounds(names: Sequence[str], *, where: str) -> None:
    """Raise :class:`WorldError` unless every background kind is in :data:`BACKGROUNDS`."""
    unknown = [name for name in names if name not in BACKGROUNDS]
    if unknown:
        raise WorldError(f"{where}: unknown background kinds {unknown}; known: {sorted(BACKGROUNDS)}")


# --------------------------------------------------------------------------------------------------------------
# Rasterising and compositing.


def _composite(img: FloatImage, alpha: FloatImage, color: npt.ArrayLike, *, y0: int = 0, x0: int = 0) -> None:
    """Alpha-blend ``color`` into ``img`` in place over the window of ``alpha`` at ``(y0, x0)``."""
    h, w = alpha.shape
    roi = img[y0 : y0 + h, x0 : x0 + w]
    a = alpha[..., None]
    roi *= 1 - a
    roi += a * np.asarray(color, dtype=np.float32)


@dataclass(frozen=True)
class _Placed:
    """One rasterised object: hard mask ``(h, w)`` bool at image offset ``(y0, x0)``."""

    class_id: int
    y0: int
    x0: int
    mask: npt.NDArray[np.bool_]


def _rasterize(
    outline: Outline,
    *,
    center: tuple[float, float],
    radius: float,
    angle: float,
    aspect: float,
    width: int,
    height: int,
) -> tuple[int, int, FloatImage] | None:
    """Anti-aliased coverage of a transformed outline, cropped to its box inside the image.

    Returns:
        ``(y0, x0, alpha)`` with ``alpha (h, w)`` float32 in [0, 1], or ``None`` when it misses the image.
    """
    c, s = math.cos(angle), math.sin(angle)
    transform = np.array([[c, -s], [s, c]]) @ np.diag([math.sqrt(aspect), 1 / math.sqrt(aspect)]) * radius
    parts = [(verts @ transform.T + np.asarray(center), fill) for verts, fill in outline]
    pts = np.concatenate([p for p, _ in parts])
    x0, y0 = (max(0, math.floor(v) - 1) for v in pts.min(axis=0))
    x1, y1 = min(width, math.ceil(pts[:, 0].max()) + 2), min(height, math.ceil(pts[:, 1].max()) + 2)
    if x1 <= x0 or y1 <= y0:
        return None
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=np.uint8)
    scale = 1 << _SUBPIXEL_BITS
    for poly, fill in parts:
        fixed = np.round((poly - (x0, y0)) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 255 if fill else 0, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    return y0, x0, canvas.astype(np.float32) / 255.0


def _draw_clutter(img: FloatImage, rng: np.random.Generator) -> None:
    """Draw one distractor that is no class: a line, an open arc, a scribble or a partial lumpy blob."""
    h, w = img.shape[:2]
    side = min(h, w)
    canvas = np.zeros((h, w), dtype=np.uint8)
    kind = int(rng.integers(4))
    thickness = int(rng.integers(1, max(2, side // 40) + 1))
    start = rng.uniform((0, 0), (w, h))
    if kind == 0:
        angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.6) * side
        end = start + length * np.array([math.cos(angle), math.sin(angle)])
        cv2.line(canvas, _pt(start), _pt(end), 255, thickness, cv2.LINE_AA)
    elif kind == 1:
        axes = (int(rng.uniform(0.05, 0.2) * side) + 1, int(rng.uniform(0.05, 0.2) * side) + 1)
        tilt, first = rng.uniform(0, 180), rng.uniform(0, 360)
        last = first + rng.uniform(60, 180)  # at most half an ellipse, so an arc never reads as a ring
        cv2.ellipse(canvas, _pt(start), axes, tilt, first, last, 255, thickness, cv2.LINE_AA)
    elif kind == 2:
        steps = rng.normal(0, 0.08 * side, size=(int(rng.integers(4, 9)), 2))
        walk = start + np.cumsum(steps, axis=0)
        cv2.polylines(canvas, [np.round(walk).astype(np.int32)], False, 255, thickness, cv2.LINE_AA)
    else:
        count = int(rng.integers(6, 11))
        angles = np.sort(rng.uniform(0, rng.uniform(0.9, 1.4) * math.pi, count)) + rng.uniform(0, 2 * math.pi)
        radii = rng.uniform(0.35, 1.0, count) * rng.uniform(0.06, 0.18) * side
        blob = start + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        cv2.fillPoly(canvas, [np.round(np.vstack([start, blob])).astype(np.int32)], 255, cv2.LINE_AA)
    _composite(img, canvas.astype(np.float32) / 255.0, _random_color(rng))


def _pt(xy: npt.ArrayLike) -> tuple[int, int]:
    x, y = np.asarray(xy, dtype=np.float64)
    return round(x), round(y)


def _class_color(rng: np.random.Generator, class_id: int, n_classes: int) -> npt.NDArray[np.float32]:
    """A colour near the class's typical hue (classes spread evenly around the colour wheel)."""
    hue = ((class_id + rng.uniform(-0.2, 0.2)) / n_classes) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.5, 1.0))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _pick_color(
    rng: np.random.Generator,
    underneath: npt.NDArray[np.float32],
    make: Callable[[], npt.NDArray[np.float32]] | None = None,
) -> npt.NDArray[np.float32]:
    """A colour from ``make`` (default: uniformly random) that stands out from the background pixels it covers.

    Args:
        underneath: ``(K, 3)`` background colours under the object; on two-colour textures the object
            must differ from *both* colours, so the test uses the 10th percentile of the distances.
        make: draws one candidate colour.
    """
    make = make or (lambda: _random_color(rng))
    best, best_distance = make(), -1.0
    for _ in range(8):
        color = make()
        distance = float(np.percentile(np.linalg.norm(underneath - color, axis=1), 10)) if len(underneath) else 255.0
        if distance >= MIN_COLOR_DISTANCE:
            return color
        if distance > best_distance:
            best, best_distance = color, distance
    return best


def _place_center(
    rng: np.random.Generator,
    *,
    radius: float,
    width: int,
    height: int,
    earlier: list[tuple[float, float, float]],
    occlude: bool,
) -> tuple[float, float]:
    """Centre for a new object: overlapping an earlier one when ``occlude``, else preferably apart."""

    def clamp(x: float, y: float) -> tuple[float, float]:
        margin = 0.7 * radius  # objects may touch the border a little, as in real frames
        return (
            min(max(x, margin), width - margin) if width > 2 * margin else width / 2,
            min(max(y, margin), height - margin) if height > 2 * margin else height / 2,
        )

    if occlude and earlier:
        ex, ey, er = earlier[int(rng.integers(len(earlier)))]
        angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(0.35, 0.9) * (radius + er)
        return clamp(ex + distance * math.cos(angle), ey + distance * math.sin(angle))
    center = clamp(rng.uniform(0, width), rng.uniform(0, height))
    for _ in range(12):
        if all(math.hypot(center[0] - ex, center[1] - ey) > radius + er for ex, ey, er in earlier):
            break
        center = clamp(rng.uniform(0, width), rng.uniform(0, height))
    return center


def _post_process(img: FloatImage, settings: RenderSettings, rng: np.random.Generator) -> UInt8Image:
    """Optics (motion, defocus), then lighting (contrast, brightness, colour cast), then sensor noise."""
    if settings.motion_blur > 1:
        length = settings.motion_blur
        kernel = np.zeros((length, length), dtype=np.float32)
        angle, half = rng.uniform(0, math.pi), (length - 1) / 2
        dx, dy = half * math.cos(angle), half * math.sin(angle)
        cv2.line(kernel, _pt((half - dx, half - dy)), _pt((half + dx, half + dy)), 1.0, 1)
        img = np.asarray(cv2.filter2D(img, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT), np.float32)
    if settings.blur_sigma > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), settings.blur_sigma, borderType=cv2.BORDER_REFLECT), np.float32)
    if settings.contrast != 1.0:
        mean = img.mean()
        img = (img - mean) * settings.contrast + mean
    gain = settings.brightness * np.asarray(settings.color_cast, dtype=np.float32)
    if np.any(gain != 1.0):
        img = img * gain
    if settings.noise_std > 0:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * settings.noise_std
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Scenes.


@dataclass(frozen=True)
class Scene:
    """One rendered image and its visible ground truth.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        class_id: ``(N,)`` int64 class ids (index into ``classes``).
        boxes_xyxy: ``(N, 4)`` float64 tight boxes of the visible pixels, pixel corners ``x1, y1, x2, y2``
            (``x2``/``y2`` exclusive, so ``x2 - x1`` is the width in pixels).
        dropped: objects drawn but unlabeled (under :data:`MIN_VISIBLE_FRACTION` visible, or too small).
    """

    image: UInt8Image
    class_id: npt.NDArray[np.int64]
    boxes_xyxy: npt.NDArray[np.float64]
    dropped: int


def probabilities(weights: Sequence[float] | None, n: int) -> npt.NDArray[np.float64]:
    """``(n,)`` probabilities from relative ``weights`` (``None``: uniform)."""
    p = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    return p / p.sum()


def render_scene(
    settings: RenderSettings, *, classes: Sequence[str], image_size: tuple[int, int], rng: np.random.Generator
) -> Scene:
    """Render one scene: textured background, clutter, class objects (later ones occlude earlier), post-processing.

    Args:
        settings: what to draw and how (ranges are sampled per image).
        classes: class names; each must be a :data:`SHAPES` key; ``class_id`` indexes this list.
        image_size: ``(width, height)`` in pixels.
        rng: the image's own generator (all randomness comes from it).

    Returns:
        The :class:`Scene`; boxes are the tight bounds of each object's visible pixels.

    Raises:
        WorldError: unknown class shape or background kind, or ``class_weights`` of the wrong length.
    """
    check_classes(classes)
    check_backgrounds(settings.backgrounds, where="render settings backgrounds")
    if settings.class_weights is not None and len(settings.class_weights) != len(classes):
        raise WorldError(f"class_weights has {len(settings.class_weights)} entries for {len(classes)} classes")
    width, height = image_size
    side = min(width, height)

    bg_p = probabilities(settings.background_weights, len(settings.backgrounds))
    kind = settings.backgrounds[int(rng.choice(len(bg_p), p=bg_p))]
    img = np.ascontiguousarray(BACKGROUNDS[kind](rng, height, width), dtype=np.float32)
    for _ in range(int(rng.integers(settings.clutter[0], settings.clutter[1] + 1))):
        _draw_clutter(img, rng)

    class_p = probabilities(settings.class_weights, len(classes))
    count = int(rng.integers(settings.objects_per_image[0], settings.objects_per_image[1] + 1))
    placed: list[_Placed] = []
    circles: list[tuple[float, float, float]] = []
    for _ in range(count):
        class_id = int(rng.choice(len(classes), p=class_p))
        radius = rng.uniform(*settings.object_scale) * side / 2
        aspect = math.exp(rng.uniform(-ASPECT_JITTER, ASPECT_JITTER))
        angle = rng.uniform(0, 2 * math.pi)
        occlude = bool(rng.random() < settings.occlusion)
        center = _place_center(rng, radius=radius, width=width, height=height, earlier=circles, occlude=occlude)
        raster = _rasterize(
            _outline(classes[class_id]),
            center=center,
            radius=radius,
            angle=angle,
            aspect=aspect,
            width=width,
            height=height,
        )
        circles.append((center[0], center[1], radius))
        if raster is None:
            continue
        y0, x0, alpha = raster
        mask = alpha >= 0.5
        window = img[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]]
        typical = bool(rng.random() < settings.class_color)
        make = (lambda cid=class_id: _class_color(rng, cid, len(classes))) if typical else None
        color = _pick_color(rng, window[mask][:: max(1, int(mask.sum()) // 128)], make)
        # A gentle linear shading so objects are not perfectly flat stickers.
        yy, xx = np.indices(alpha.shape, dtype=np.float32)
        direction = rng.uniform(0, 2 * math.pi)
        ramp = (xx + x0 - center[0]) * math.cos(direction) + (yy + y0 - center[1]) * math.sin(direction)
        shade = 1 + rng.uniform(-0.2, 0.2) * ramp / max(radius, 1.0)
        _composite(img, alpha, 0, y0=y0, x0=x0)
        img[y0 : y0 + alpha.shape[0], x0 : x0 + alpha.shape[1]] += alpha[..., None] * shade[..., None] * color
        placed.append(_Placed(class_id, y0, x0, mask))

    class_ids, boxes, hidden = _visible_boxes(placed, width=width, height=height)
    return Scene(
        image=_post_process(img, settings, rng),
        class_id=np.asarray(class_ids, dtype=np.int64),
        boxes_xyxy=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        dropped=count - len(placed) + hidden,
    )


def _visible_boxes(
    placed: Sequence[_Placed], *, width: int, height: int
) -> tuple[list[int], list[tuple[float, float, float, float]], int]:
    """Class ids and tight ``xyxy`` boxes of the visible pixels of each object, in drawing order; and how many were
    too hidden (under :data:`MIN_VISIBLE_FRACTION` visible) or too small to label."""
    class_ids: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    dropped = 0
    covered = np.zeros((height, width), dtype=bool)  # union of the masks drawn after the current object
    for obj in reversed(placed):
        h, w = obj.mask.shape
        hidden = covered[obj.y0 : obj.y0 + h, obj.x0 : obj.x0 + w]
        visible = obj.mask & ~hidden
        area = int(obj.mask.sum())
        if area < MIN_OBJECT_PIXELS or visible.sum() < MIN_VISIBLE_FRACTION * area:
            dropped += 1
        else:
            rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
            boxes.append((obj.x0 + cols[0], obj.y0 + rows[0], obj.x0 + cols[-1] + 1, obj.y0 + rows[-1] + 1))
            class_ids.append(obj.class_id)
        hidden |= obj.mask
    return class_ids[::-1], boxes[::-1], dropped  # back to drawing order
