"""Content of the synthetic street scenes: layout, labels, depth and object/part maps.

A scene is built in a small 3-D world seen by a pinhole camera over a flat ground plane (x lateral,
y up, z forward, metres) and drawn in *normalized* image coordinates (u, v in [0, 1]), so the same
scene at 128×256 is the downscaled 512×1024 one. Everything comes from ``(split, index, layout)``
through a ``numpy.random.SeedSequence`` — never from an appearance domain, never from a global RNG
or Python's ``hash()`` — so the label map of a scene is identical in every appearance domain and on
every machine.

The renderer fills polygons with ``cv2.fillPoly`` (painter's algorithm, back to front) into two maps:

* ``obj``: an object id per pixel; the object tables give its train class and a representative depth
  (depth ``-1`` = ground, whose depth follows the image row);
* ``part``: a material code per pixel inside an object (a window of a building, lane paint on the
  road, the glass of a car), so the appearance stage can colour parts without changing labels.

No outline is ever drawn: class boundaries come only from the appearance of the regions.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from npdg.errors import ConfigError
from npdg.labels import class_id

# --- train ids used here ------------------------------------------------------------------------
ROAD, SIDEWALK, BUILDING, WALL, FENCE = (class_id(n) for n in ("road", "sidewalk", "building", "wall", "fence"))
POLE, LIGHT, SIGN = class_id("pole"), class_id("traffic light"), class_id("traffic sign")
VEGETATION, TERRAIN, SKY = class_id("vegetation"), class_id("terrain"), class_id("sky")
PERSON, RIDER, CAR, TRUCK, BUS = (class_id(n) for n in ("person", "rider", "car", "truck", "bus"))
TRAIN, MOTORCYCLE, BICYCLE = class_id("train"), class_id("motorcycle"), class_id("bicycle")

# --- part (material) codes inside an object -----------------------------------------------------
PART_BASE = 0  # the object's own colour
PART_WINDOW = 1  # building window (unlit)
PART_WINDOW_LIT = 2  # building window that is lit at night
PART_PAINT = 3  # lane markings, zebra stripes (road class)
PART_GLASS = 4  # vehicle windows
PART_DARK = 5  # tyres, grilles, fence posts, unlit lamps
PART_LAMP_RED = 6
PART_LAMP_AMBER = 7
PART_LAMP_GREEN = 8
PART_HEADLIGHT = 9  # headlights and street-lamp heads
PART_SIGN_INNER = 10  # the white inner field of a traffic sign
PART_SKIN = 11  # heads of people
PART_ALT = 12  # a second object colour (trousers, bus stripe, door)
PART_TRIM = 13  # darker accent of the object colour (wall coping, rails, bumpers)
PART_TRUNK = 14  # tree trunk (vegetation class)
NUM_PARTS = 16

_VEHICLE_CLASSES = (CAR, TRUCK, BUS, TRAIN)
#: which classes may carry each part; anything else is reset to PART_BASE when a scene is finished,
#: so rasterization slivers of a tiny part polygon never colour a neighbouring region
PART_CLASSES: dict[int, tuple[int, ...]] = {
    PART_WINDOW: (BUILDING,), PART_WINDOW_LIT: (BUILDING,), PART_PAINT: (ROAD,),
    PART_GLASS: _VEHICLE_CLASSES, PART_DARK: (*_VEHICLE_CLASSES, MOTORCYCLE, BICYCLE, FENCE, LIGHT),
    PART_LAMP_RED: (LIGHT, *_VEHICLE_CLASSES), PART_LAMP_AMBER: (LIGHT,), PART_LAMP_GREEN: (LIGHT,),
    PART_HEADLIGHT: (*_VEHICLE_CLASSES, POLE), PART_SIGN_INNER: (SIGN,), PART_SKIN: (PERSON, RIDER),
    PART_ALT: (BUILDING, PERSON, RIDER, TRUCK, BUS, TRAIN), PART_TRIM: (WALL, FENCE, BUILDING, CAR, TRUCK),
    PART_TRUNK: (VEGETATION,),
}
_ALLOWED = np.zeros((256, NUM_PARTS), bool)
_ALLOWED[:, PART_BASE] = True
for _part, _classes in PART_CLASSES.items():
    _ALLOWED[list(_classes), _part] = True

# --- light sources (for night glows): kinds ------------------------------------------------------
LIGHT_STREET, LIGHT_RED, LIGHT_AMBER, LIGHT_GREEN, LIGHT_HEAD, LIGHT_TAIL = range(6)

SKY_DEPTH = 1000.0  # metres assigned to the sky (fog saturates there)
GROUND_DEPTH = -1.0  # marker in the object depth table: depth follows the image row
SPLIT_CODES: dict[str, int] = {"train": 1, "val": 2, "test": 3}
_Z_MIN = 0.5  # projection clamp (metres): nothing is drawn closer than this
_SHIFT = 3  # cv2 fractional bits: vertices at 1/8 px, so small scenes are exact downscales


@dataclass(frozen=True)
class LayoutParams:
    """Statistics of one layout family (ranges are ``(low, high)``, uniform)."""

    name: str
    code: int
    horizon: tuple[float, float]
    cam_height: tuple[float, float]
    focal: tuple[float, float]  # horizontal focal length in image widths
    road_half: tuple[float, float]
    sidewalk: tuple[float, float]
    setback: tuple[float, float]  # gap between sidewalk and the facade line
    building_prob: float
    building_height: tuple[float, float]
    building_len: tuple[float, float]
    terrain_strip_prob: float
    barrier_prob: float  # a wall / fence / hedge run along the outer sidewalk edge
    street_end: tuple[float, float]
    end_buildings_prob: float
    trees: tuple[int, int]
    hedge_prob: float
    poles: tuple[int, int]
    cars: tuple[int, int]
    trucks: tuple[int, int]
    bus_prob: float
    train_prob: float
    persons: tuple[int, int]
    riders: tuple[int, int]


LAYOUTS: dict[str, LayoutParams] = {
    "urban": LayoutParams(
        name="urban", code=11, horizon=(0.36, 0.48), cam_height=(1.2, 1.6), focal=(0.8, 1.0),
        road_half=(3.5, 6.0), sidewalk=(2.0, 4.0), setback=(0.0, 0.5), building_prob=0.85,
        building_height=(8.0, 32.0), building_len=(7.0, 25.0), terrain_strip_prob=0.3, barrier_prob=0.5,
        street_end=(70.0, 160.0), end_buildings_prob=0.85, trees=(0, 6), hedge_prob=0.3, poles=(2, 6),
        cars=(2, 9), trucks=(0, 2), bus_prob=0.35, train_prob=0.15, persons=(1, 8), riders=(0, 3),
    ),
    "suburb": LayoutParams(
        name="suburb", code=23, horizon=(0.46, 0.58), cam_height=(2.0, 2.6), focal=(0.7, 0.85),
        road_half=(5.5, 8.5), sidewalk=(1.2, 2.2), setback=(6.0, 14.0), building_prob=0.35,
        building_height=(3.0, 8.0), building_len=(8.0, 16.0), terrain_strip_prob=1.0, barrier_prob=0.6,
        street_end=(120.0, 300.0), end_buildings_prob=0.1, trees=(5, 14), hedge_prob=0.8, poles=(1, 3),
        cars=(0, 3), trucks=(0, 1), bus_prob=0.08, train_prob=0.0, persons=(0, 2), riders=(0, 1),
    ),
}


@dataclass(frozen=True)
class Camera:
    """Pinhole camera over the ground plane; ``project`` maps world metres to normalized (u, v)."""

    cx: float  # u of the vanishing point
    horizon: float  # v of the horizon
    fx: float  # focal length in image widths
    fy: float  # focal length in image heights (fx × the 2:1 design aspect)
    height: float  # metres above the ground

    def project(self, x, y, z) -> tuple[np.ndarray, np.ndarray]:
        """World ``(x, y, z)`` (broadcastable arrays) → normalized image ``(u, v)``."""
        z = np.maximum(np.asarray(z, dtype=np.float64), _Z_MIN)
        return self.cx + self.fx * np.asarray(x) / z, self.horizon + self.fy * (self.height - np.asarray(y)) / z

    def ground_depth(self, rows: int) -> np.ndarray:
        """Depth (metres) of the ground plane at the centre of each of ``rows`` image rows."""
        v = (np.arange(rows, dtype=np.float64) + 0.5) / rows
        with np.errstate(divide="ignore"):
            z = np.where(v > self.horizon, self.fy * self.height / np.maximum(v - self.horizon, 1e-9), SKY_DEPTH)
        return np.minimum(z, SKY_DEPTH).astype(np.float32)


@dataclass(frozen=True)
class Scene:
    """One rendered scene content. Arrays are ``[H, W]``; tables are indexed by object id."""

    label: np.ndarray  # uint8 train ids
    obj: np.ndarray  # uint16 object ids (0 = sky)
    part: np.ndarray  # uint8 part codes
    depth: np.ndarray  # float32 metres
    obj_class: np.ndarray  # uint8 [N] train id of each object
    lights: np.ndarray  # float32 [K, 4]: u, v, radius (image widths), kind
    camera: Camera
    layout: str


def _scalars(*args) -> bool:
    return all(isinstance(a, (float, int)) for a in args)


# ------------------------------------------------------------------------------------------------
# drawing surface
# ------------------------------------------------------------------------------------------------
class _Canvas:
    """Object/part maps plus the object tables; every fill writes both maps (painter's order)."""

    def __init__(self, size: tuple[int, int], camera: Camera):
        self.h, self.w = size
        self.cam = camera
        self.obj = np.zeros(size, np.uint16)
        self.part = np.zeros(size, np.uint8)
        self.classes: list[int] = [SKY]
        self.depths: list[float] = [SKY_DEPTH]
        self.lights: list[tuple[float, float, float, int]] = []
        self._scale = np.array([self.w, self.h], np.float64) * (1 << _SHIFT)

    def add(self, cls: int, depth: float) -> int:
        """Register a new object of train class ``cls``; returns its id."""
        self.classes.append(cls)
        self.depths.append(float(depth))
        if len(self.classes) >= 65535:  # pragma: no cover - layouts stay far below this
            raise RuntimeError("too many objects in one scene")
        return len(self.classes) - 1

    def _px(self, uv: np.ndarray) -> np.ndarray:
        # |u|, |v| stay below ~500 image sizes (z >= _Z_MIN, |x| <= 150 m): no int32 overflow
        return np.rint(uv * self._scale).astype(np.int32)

    def _quad(self, pts: tuple[tuple[float, float, float], ...]) -> np.ndarray:
        """Scalar fast path of the projection for one polygon: ``[1, K, 2]``."""
        c = self.cam
        out = []
        for x, y, z in pts:
            z = z if z > _Z_MIN else _Z_MIN
            out.append((c.cx + c.fx * x / z, c.horizon + c.fy * (c.height - y) / z))
        return np.array([out], np.float64)

    def fill(self, polys: np.ndarray, oid: int, part: int = PART_BASE) -> None:
        """Fill polygons ``[N, K, 2]`` (normalized u, v) with object ``oid`` and ``part``."""
        pts = self._px(polys)
        cv2.fillPoly(self.obj, pts, int(oid), cv2.LINE_8, _SHIFT)
        cv2.fillPoly(self.part, pts, int(part), cv2.LINE_8, _SHIFT)

    def fill_part(self, polys: np.ndarray, part: int) -> None:
        """Paint a part inside already drawn objects (windows, lane markings)."""
        if len(polys):
            cv2.fillPoly(self.part, self._px(polys), int(part), cv2.LINE_8, _SHIFT)

    def ellipse(self, uv, axes_uv, oid: int, part: int = PART_BASE, obj: bool = True) -> None:
        """Filled axis-aligned ellipse at ``uv`` with semi-axes ``axes_uv`` (normalized)."""
        c = tuple(int(v) for v in self._px(np.asarray(uv, np.float64)))
        ax = tuple(max(1 << _SHIFT, int(v)) for v in self._px(np.abs(np.asarray(axes_uv, np.float64))))
        if obj:
            cv2.ellipse(self.obj, c, ax, 0, 0, 360, int(oid), -1, cv2.LINE_8, _SHIFT)
        cv2.ellipse(self.part, c, ax, 0, 0, 360, int(part), -1, cv2.LINE_8, _SHIFT)

    def ring(self, uv, radius_v: float, thick_v: float, oid: int, part: int = PART_BASE) -> None:
        """A circle outline (bicycle wheel) of radius/thickness given in image heights."""
        c = tuple(int(v) for v in self._px(np.asarray(uv, np.float64)))
        r = max(1 << _SHIFT, int(radius_v * self.h * (1 << _SHIFT)))
        t = max(1, int(round(thick_v * self.h)))
        cv2.circle(self.obj, c, r, int(oid), t, cv2.LINE_8, _SHIFT)
        cv2.circle(self.part, c, r, int(part), t, cv2.LINE_8, _SHIFT)

    def segment(self, a_uv, b_uv, thick_v: float, oid: int, part: int = PART_BASE) -> None:
        """A thick line between two points (bicycle frames, lamp arms, limbs)."""
        a = tuple(int(v) for v in self._px(np.asarray(a_uv, np.float64)))
        b = tuple(int(v) for v in self._px(np.asarray(b_uv, np.float64)))
        t = max(1, int(round(thick_v * self.h)))
        cv2.line(self.obj, a, b, int(oid), t, cv2.LINE_8, _SHIFT)
        cv2.line(self.part, a, b, int(part), t, cv2.LINE_8, _SHIFT)

    def light(self, uv, radius_u: float, kind: int) -> None:
        u, v = (float(t) for t in uv)
        if -0.1 < u < 1.1 and -0.1 < v < 1.1:
            self.lights.append((u, v, float(radius_u), kind))

    # --- world-space quads (vectorized over N) ---
    def side_quads(self, x, z0, z1, y0, y1) -> np.ndarray:
        """Rectangles in planes of constant ``x`` (facades, vehicle sides): ``[N, 4, 2]``."""
        if _scalars(x, z0, z1, y0, y1):
            return self._quad(((x, y0, z0), (x, y0, z1), (x, y1, z1), (x, y1, z0)))
        x, z0, z1, y0, y1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, np.float64)) for a in (x, z0, z1, y0, y1)))
        xs = np.stack([x, x, x, x], 1)
        ys = np.stack([y0, y0, y1, y1], 1)
        zs = np.stack([z0, z1, z1, z0], 1)
        return np.stack(self.cam.project(xs, ys, zs), -1)

    def front_quads(self, z, x0, x1, y0, y1) -> np.ndarray:
        """Rectangles in planes of constant ``z`` (facing the camera): ``[N, 4, 2]``."""
        if _scalars(z, x0, x1, y0, y1):
            return self._quad(((x0, y0, z), (x1, y0, z), (x1, y1, z), (x0, y1, z)))
        z, x0, x1, y0, y1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, np.float64)) for a in (z, x0, x1, y0, y1)))
        xs = np.stack([x0, x1, x1, x0], 1)
        ys = np.stack([y0, y0, y1, y1], 1)
        return np.stack(self.cam.project(xs, ys, np.stack([z] * 4, 1)), -1)

    def ground_quads(self, x0, x1, z0, z1) -> np.ndarray:
        """Rectangles on the ground plane: ``[N, 4, 2]``."""
        if _scalars(x0, x1, z0, z1):
            return self._quad(((x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1)))
        x0, x1, z0, z1 = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, np.float64)) for a in (x0, x1, z0, z1)))
        xs = np.stack([x0, x1, x1, x0], 1)
        zs = np.stack([z0, z0, z1, z1], 1)
        return np.stack(self.cam.project(xs, np.zeros_like(xs), zs), -1)

    def pt(self, x: float, y: float, z: float) -> np.ndarray:
        """One world point → normalized ``(u, v)``."""
        c = self.cam
        z = z if z > _Z_MIN else _Z_MIN
        return np.array((c.cx + c.fx * x / z, c.horizon + c.fy * (c.height - y) / z))

    def finish(self, layout: str) -> Scene:
        classes = np.asarray(self.classes, np.uint8)
        depths = np.asarray(self.depths, np.float32)
        depth = depths[self.obj]
        ground = depth < 0
        if ground.any():
            rows = np.broadcast_to(self.cam.ground_depth(self.h)[:, None], depth.shape)
            depth = np.where(ground, rows, depth)
        lights = np.asarray(self.lights, np.float32).reshape(-1, 4)
        label = classes[self.obj]
        part = np.where(_ALLOWED[label, self.part], self.part, np.uint8(PART_BASE))
        return Scene(label, self.obj, part, depth.astype(np.float32), classes, lights, self.cam, layout)


# ------------------------------------------------------------------------------------------------
# street geometry
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Street:
    """Lateral layout of the street relative to the camera (x of each boundary, per side)."""

    road: tuple[float, float]  # x of the left and right road edges
    walk: tuple[float, float]  # x of the outer sidewalk edges
    facade: tuple[float, float]  # x of the facade lines
    terrain: tuple[bool, bool]  # grass strip between sidewalk and facade
    end: float  # z where the street ends (far buildings / horizon)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _n(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _make_street(rng: np.random.Generator, p: LayoutParams) -> _Street:
    half = _u(rng, p.road_half)
    offset = rng.uniform(-0.35, 0.35) * half  # camera's lateral position in the road
    road = (-half - offset, half - offset)
    walk = (road[0] - _u(rng, p.sidewalk), road[1] + _u(rng, p.sidewalk))
    terrain = (bool(rng.random() < p.terrain_strip_prob), bool(rng.random() < p.terrain_strip_prob))
    facade = tuple(
        w + s * (_u(rng, p.setback) + (rng.uniform(1.0, 3.5) if t else 0.0))
        for w, s, t in zip(walk, (-1.0, 1.0), terrain)
    )
    return _Street(road, walk, facade, terrain, _u(rng, p.street_end))  # type: ignore[arg-type]


def _draw_ground(cv: _Canvas, rng: np.random.Generator, st: _Street) -> None:
    far = 4000.0
    g = cv.add(TERRAIN, GROUND_DEPTH)
    h0 = cv.cam.horizon - 0.002
    cv.fill(np.array([[[-1.0, h0], [2.0, h0], [2.0, 2.0], [-1.0, 2.0]]]), g)
    for side in (0, 1):
        inner, outer = st.road[side], st.walk[side]
        beyond = st.facade[side] + (-2.0 if side == 0 else 2.0)
        if not st.terrain[side]:  # paved right up to (and past) the facade line
            outer = beyond
        w = cv.add(SIDEWALK, GROUND_DEPTH)
        cv.fill(cv.ground_quads(min(inner, outer), max(inner, outer), _Z_MIN, far), w)
        # grass pits / patches on the sidewalk
        for _ in range(int(rng.integers(0, 3))):
            z0 = rng.uniform(4.0, 50.0)
            x0 = st.road[side] + (-1 if side == 0 else 1) * rng.uniform(0.3, 1.0)
            x1 = x0 + (-1 if side == 0 else 1) * rng.uniform(0.8, 1.6)
            t = cv.add(TERRAIN, GROUND_DEPTH)
            cv.fill(cv.ground_quads(min(x0, x1), max(x0, x1), z0, z0 + rng.uniform(1.5, 5.0)), t)
    r = cv.add(ROAD, GROUND_DEPTH)
    cv.fill(cv.ground_quads(st.road[0], st.road[1], _Z_MIN, far), r)
    _draw_markings(cv, rng, st, r)


def _dashes(z_from: float, z_to: float, dash: float, gap: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
    z0 = np.arange(z_from + phase, z_to, dash + gap)
    return z0, z0 + dash


def _draw_markings(cv: _Canvas, rng: np.random.Generator, st: _Street, road_id: int) -> None:
    """Lane paint (road class, PART_PAINT): centre dashes, lane dividers, edge lines, a zebra."""
    width = st.road[1] - st.road[0]
    lanes = max(2, int(round(width / 3.4)))
    far = min(st.end, 120.0)
    quads = []
    for k in range(1, lanes):
        x = st.road[0] + width * k / lanes
        lw = 0.15
        if k == lanes // 2 and rng.random() < 0.5:  # solid centre line
            quads.append(cv.ground_quads(x - lw / 2, x + lw / 2, 1.0, far))
        else:
            z0, z1 = _dashes(1.0, far, 3.0, 6.0, rng.uniform(0, 9.0))
            quads.append(cv.ground_quads(x - lw / 2, x + lw / 2, z0, z1))
    if rng.random() < 0.6:
        for x in (st.road[0] + 0.3, st.road[1] - 0.3):
            quads.append(cv.ground_quads(x - 0.08, x + 0.08, 1.0, far))
    if rng.random() < 0.3:  # zebra crossing
        z = rng.uniform(7.0, 25.0)
        x0 = np.arange(st.road[0] + 0.4, st.road[1] - 0.5, 1.0)
        quads.append(cv.ground_quads(x0, x0 + 0.5, z, z + rng.uniform(2.5, 4.0)))
    cv.fill_part(np.concatenate(quads), PART_PAINT)


# ------------------------------------------------------------------------------------------------
# background: far end and facades
# ------------------------------------------------------------------------------------------------
def _draw_street_end(cv: _Canvas, rng: np.random.Generator, p: LayoutParams, st: _Street) -> None:
    z = st.end
    if rng.random() < p.end_buildings_prob:
        x = -80.0
        while x < 80.0:
            w = rng.uniform(8.0, 25.0)
            b = cv.add(BUILDING, z)
            h = _u(rng, p.building_height) * 1.2
            cv.fill(cv.front_quads(z, x, x + w, 0.0, h), b)
            _windows_front(cv, z, x, x + w, h)
            x += w
    else:  # a tree line / hill on the horizon
        xs = np.linspace(-120.0, 120.0, 24)
        hs = rng.uniform(3.0, 12.0, xs.size)
        kind = VEGETATION if rng.random() < 0.7 else TERRAIN
        o = cv.add(kind, z)
        poly = np.stack(cv.cam.project(np.r_[xs, xs[::-1]], np.r_[hs, np.zeros_like(xs)], np.full(2 * xs.size, z)), -1)
        cv.fill(poly[None], o)


def _windows_front(cv: _Canvas, z: float, x0: float, x1: float, h: float) -> None:
    """A window grid on a building facing the camera (below its roof line ``h``)."""
    if cv.cam.fx * 1.2 / z * cv.w < 1.0:  # windows below one pixel: skip rather than paint noise
        return
    xs = np.arange(x0 + 1.0, x1 - 1.5, 2.8)
    ys = np.arange(1.5, h - 2.0, 3.2)
    if not (xs.size and ys.size):
        return
    gx, gy = np.meshgrid(xs, ys)
    q = cv.front_quads(z, gx.ravel(), gx.ravel() + 1.2, gy.ravel(), gy.ravel() + 1.6)
    cv.fill_part(q, PART_WINDOW)


def _draw_facades(cv: _Canvas, rng: np.random.Generator, p: LayoutParams, st: _Street) -> None:
    """Buildings, walls, fences and hedges along both facade lines, far to near."""
    items: list[tuple[float, int, float, float, str]] = []
    for side in (0, 1):
        z = rng.uniform(-5.0, 2.0)
        while z < st.end:
            r = rng.random()
            if r < p.building_prob:
                length, kind = _u(rng, p.building_len), "building"
            else:
                length = rng.uniform(4.0, 14.0)
                kind = ("wall", "fence", "hedge", "gap")[int(rng.integers(0, 4))]
            items.append((z + length, side, z, z + length, kind))
            z += length + (rng.uniform(1.0, 4.0) if p.building_prob < 0.5 else 0.0)
    items.sort(key=lambda t: -t[0])  # painter's order: far end first
    barriers: list[tuple[float, int, float, float, str]] = []
    for side in (0, 1):  # runs along the outer sidewalk edge stand in front of every facade
        if rng.random() < p.barrier_prob:
            z0 = rng.uniform(1.0, 25.0)
            kind = "hedge" if rng.random() < p.hedge_prob else ("wall", "fence")[int(rng.integers(0, 2))]
            barriers.append((z0 + rng.uniform(8.0, 40.0), side, z0, 0.0, kind))
    items += [(z1, side, z0, z1, kind) for z1, side, z0, _, kind in sorted(barriers, key=lambda t: -t[0])]
    for k, (_, side, z0, z1, kind) in enumerate(items):
        x = st.facade[side] if k < len(items) - len(barriers) else st.walk[side]
        if kind == "building":
            _building(cv, rng, p, x, z0, z1)
        elif kind == "wall":
            w = cv.add(WALL, _mid(z0, z1))
            h = rng.uniform(1.5, 3.5)
            cv.fill(cv.side_quads(x, z0, z1, 0.0, h), w)
            cv.fill(cv.side_quads(x, z0, z1, h - 0.2, h), w, PART_TRIM)
        elif kind == "fence":
            _fence(cv, rng, x, z0, z1)
        elif kind == "hedge":
            _hedge(cv, rng, x, z0, z1, side)


def _mid(z0: float, z1: float) -> float:
    """Representative depth of a span (what fog sees): its visible middle."""
    return 0.5 * (max(z0, 3.0) + max(z1, 3.0))


def _building(cv: _Canvas, rng: np.random.Generator, p: LayoutParams, x: float, z0: float, z1: float) -> None:
    h = _u(rng, p.building_height)
    b = cv.add(BUILDING, _mid(z0, z1))
    cv.fill(cv.side_quads(x, z0, z1, 0.0, h), b)
    floor = rng.uniform(2.8, 3.6)
    bay = rng.uniform(1.8, 3.2)
    frac_w, frac_h = rng.uniform(0.35, 0.7), rng.uniform(0.4, 0.65)
    zs = np.arange(z0 + 0.6, z1 - bay * frac_w, bay)
    ys = np.arange(floor * 0.35 + (1.0 if rng.random() < 0.5 else 0.0), h - floor * 0.7 - 0.4, floor)
    if zs.size and ys.size:
        gz, gy = (a.ravel() for a in np.meshgrid(zs, ys))
        lit = rng.random(gz.size) < 0.35
        q = cv.side_quads(x, gz, gz + bay * frac_w, gy, gy + floor * frac_h)
        cv.fill_part(q[~lit], PART_WINDOW)
        cv.fill_part(q[lit], PART_WINDOW_LIT)
    if rng.random() < 0.5:  # ground-floor shop band
        cv.fill(cv.side_quads(x, z0 + 0.3, z1 - 0.3, 0.3, min(2.6, h * 0.3)), b, PART_ALT)
    cv.fill(cv.side_quads(x, z0, z1, h - 0.4, h), b, PART_TRIM)  # cornice


def _fence(cv: _Canvas, rng: np.random.Generator, x: float, z0: float, z1: float) -> None:
    f = cv.add(FENCE, _mid(z0, z1))
    h = rng.uniform(1.1, 2.0)
    cv.fill(cv.side_quads(x, z0, z1, 0.0, h), f)
    posts = np.arange(z0, z1, rng.uniform(1.5, 3.0))
    cv.fill(cv.side_quads(x, posts, posts + 0.12, 0.0, h + 0.1), f, PART_DARK)
    cv.fill(cv.side_quads(x, z0, z1, h - 0.12, h), f, PART_TRIM)


def _hedge(cv: _Canvas, rng: np.random.Generator, x: float, z0: float, z1: float, side: int) -> None:
    v = cv.add(VEGETATION, _mid(z0, z1))
    h = rng.uniform(0.8, 1.8)
    depth = 0.9 if side == 0 else -0.9
    cv.fill(cv.side_quads(x + depth, z0, z1, 0.0, h), v)
    top = np.stack(cv.cam.project(np.array([x, x + depth, x + depth, x]), h, np.array([z0, z0, z1, z1])), -1)
    cv.fill(top[None], v)


# ------------------------------------------------------------------------------------------------
# street furniture and agents
# ------------------------------------------------------------------------------------------------
def _tree(cv: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    v = cv.add(VEGETATION, z)
    trunk_h, r = rng.uniform(1.8, 3.5), rng.uniform(1.3, 3.0)
    tw = rng.uniform(0.2, 0.4)
    cv.fill(cv.front_quads(z, x - tw / 2, x + tw / 2, 0.0, trunk_h + r * 0.5), v, PART_TRUNK)
    n = int(rng.integers(4, 8))
    cxs = x + rng.uniform(-0.7, 0.7, n) * r
    cys = trunk_h + r * (0.8 + rng.uniform(-0.5, 0.6, n))
    rs = r * rng.uniform(0.45, 0.8, n)
    for cx, cy, rr in zip(cxs, cys, rs):
        c = cv.pt(cx, cy, z)
        cv.ellipse(c, (cv.cam.fx * rr / z, cv.cam.fy * rr / z), v)


def _pole(cv: _Canvas, rng: np.random.Generator, x: float, z: float, toward_road: float) -> None:
    """A pole carrying a street lamp, a traffic light and/or a sign."""
    kind = rng.random()
    p = cv.add(POLE, z)
    h = rng.uniform(3.0, 4.5) if kind < 0.65 else rng.uniform(6.0, 9.0)
    pw = 0.16
    cv.fill(cv.front_quads(z, x - pw / 2, x + pw / 2, 0.0, h), p)
    if kind >= 0.65:  # street lamp with an arm over the road
        end = x + toward_road * rng.uniform(1.2, 2.5)
        cv.segment(cv.pt(x, h, z), cv.pt(end, h + 0.3, z), 0.1 * cv.cam.fy / z, p)
        head = cv.pt(end, h + 0.15, z)
        cv.ellipse(head, (cv.cam.fx * 0.35 / z, cv.cam.fy * 0.12 / z), p, PART_HEADLIGHT)
        cv.light(head, cv.cam.fx * 1.2 / z, LIGHT_STREET)
        return
    if kind < 0.4:  # traffic light, on top or hanging from an arm
        t = cv.add(LIGHT, z)
        lx = x
        if rng.random() < 0.4:
            lx = x + toward_road * rng.uniform(2.0, 4.0)
            cv.segment(cv.pt(x, h - 0.1, z), cv.pt(lx, h - 0.1, z), 0.08 * cv.cam.fy / z, p)
        by = h - 0.1 if lx != x else h
        cv.fill(cv.front_quads(z, lx - 0.2, lx + 0.2, by - 1.0, by), t)
        on = int(rng.integers(0, 3))
        for k, part in enumerate((PART_LAMP_RED, PART_LAMP_AMBER, PART_LAMP_GREEN)):
            c = cv.pt(lx, by - 0.2 - 0.3 * k, z)
            cv.ellipse(c, (cv.cam.fx * 0.12 / z, cv.cam.fy * 0.12 / z), t, part if k == on else PART_DARK, obj=False)
            if k == on:
                cv.light(c, cv.cam.fx * 0.35 / z, (LIGHT_RED, LIGHT_AMBER, LIGHT_GREEN)[k])
    if kind >= 0.25:  # traffic sign
        s = cv.add(SIGN, z)
        sy = rng.uniform(2.1, h - 0.4) if kind < 0.4 else h - 0.4
        r = rng.uniform(0.3, 0.45)
        shape = int(rng.integers(0, 3))
        c = cv.pt(x, sy, z)
        rad = np.array([cv.cam.fx * r / z, cv.cam.fy * r / z])
        if shape == 0:
            cv.ellipse(c, rad, s)
            cv.ellipse(c, rad * 0.7, s, PART_SIGN_INNER, obj=False)
        elif shape == 1:
            tri = np.array([[0.0, -1.0], [0.9, 0.6], [-0.9, 0.6]])
            cv.fill((c + tri * rad)[None], s)
            cv.fill_part((c + tri * rad * 0.6 + [0.0, rad[1] * 0.1])[None], PART_SIGN_INNER)
        else:
            cv.fill(cv.front_quads(z, x - r * 1.2, x + r * 1.2, sy - r, sy + r * 0.6), s)
            cv.fill_part(cv.front_quads(z, x - r, x + r, sy - r * 0.8, sy + r * 0.4), PART_SIGN_INNER)


def _person(cv: _Canvas, rng: np.random.Generator, x: float, z: float, cls: int = PERSON,
            y0: float = 0.0, seated: bool = False) -> int:
    """A standing (or, for riders, seated) person facing the camera; returns the object id."""
    o = cv.add(cls, z)
    h = rng.uniform(1.55, 1.9)
    hip = y0 + (0.0 if seated else 0.47 * h)
    sh = hip + 0.33 * h
    if not seated:
        spread = rng.uniform(0.0, 0.08)
        for s in (-1, 1):
            cv.fill(cv.front_quads(z, x + s * 0.015, x + s * (0.13 + spread), 0.0, hip + 0.05), o, PART_ALT)
    cv.fill(cv.front_quads(z, x - 0.18, x + 0.18, hip, sh), o)
    arm = rng.uniform(0.0, 0.06)
    for s in (-1, 1):
        cv.fill(cv.front_quads(z, x + s * 0.18, x + s * (0.25 + arm), hip + 0.05, sh - 0.02), o)
    head = cv.pt(x, sh + 0.075 * h, z)
    cv.ellipse(head, (cv.cam.fx * 0.09 / z, cv.cam.fy * 0.115 / z), o, PART_SKIN)
    return o


def _rider(cv: _Canvas, rng: np.random.Generator, x: float, z: float) -> None:
    """A bicycle or motorcycle seen from the side, with its rider."""
    motor = rng.random() < 0.45
    b = cv.add(MOTORCYCLE if motor else BICYCLE, z)
    d = 1 if rng.random() < 0.5 else -1
    wr = 0.33 if motor else 0.34
    base = 1.4 if motor else 1.05
    rear, front = cv.pt(x - d * base / 2, wr, z), cv.pt(x + d * base / 2, wr, z)
    fy = cv.cam.fy / z
    if motor:
        for c in (rear, front):
            cv.ellipse(c, (cv.cam.fx * wr / z, fy * wr), b, PART_DARK)
        body = cv.pt(x, 0.65, z)
        cv.ellipse(body, (cv.cam.fx * 0.6 / z, fy * 0.25), b)
        cv.segment(front, cv.pt(x + d * 0.55, 1.05, z), 0.06 * fy, b)
        seat_y = 0.85
    else:
        for c in (rear, front):
            cv.ring(c, wr * fy, 0.05 * fy, b, PART_DARK)
        seat, crank = cv.pt(x - d * 0.15, 0.95, z), cv.pt(x, wr, z)
        bar = cv.pt(x + d * 0.42, 1.0, z)
        for a, c in ((rear, seat), (seat, crank), (crank, rear), (seat, bar), (bar, front), (crank, bar)):
            cv.segment(a, c, 0.045 * fy, b)
        seat_y = 0.95
    r = cv.add(RIDER, z)
    hip = cv.pt(x - d * 0.15, seat_y, z)
    sh = cv.pt(x + d * 0.1, seat_y + 0.6, z)
    cv.segment(hip, cv.pt(x + d * 0.05, wr * 0.8, z), 0.12 * fy, r, PART_ALT)  # leg
    cv.segment(hip, sh, 0.3 * fy, r)  # torso
    cv.segment(sh, cv.pt(x + d * 0.45, seat_y + 0.1, z), 0.09 * fy, r)  # arm
    head = sh + np.array([d * 0.05 * cv.cam.fx / z, -0.2 * fy])
    cv.ellipse(head, (cv.cam.fx * 0.12 / z, fy * 0.13), r, PART_SKIN)


@dataclass(frozen=True)
class _VehicleSpec:
    cls: int
    width: tuple[float, float]
    height: tuple[float, float]
    length: tuple[float, float]


_VEHICLES = {
    "car": _VehicleSpec(CAR, (1.7, 1.95), (1.35, 1.65), (3.9, 4.8)),
    "truck": _VehicleSpec(TRUCK, (2.3, 2.55), (2.9, 3.6), (6.5, 9.0)),
    "bus": _VehicleSpec(BUS, (2.5, 2.6), (2.9, 3.2), (11.0, 13.0)),
    "train": _VehicleSpec(TRAIN, (2.5, 2.65), (3.3, 3.6), (24.0, 32.0)),
}


def _wheels(cv: _Canvas, o: int, x_side: float, zs, r: float) -> None:
    for zc in zs:
        u0, u1 = cv.pt(x_side, r, zc - r)[0], cv.pt(x_side, r, zc + r)[0]
        cv.ellipse(cv.pt(x_side, r, zc), (abs(u1 - u0) / 2, cv.cam.fy * r / zc), o, PART_DARK)


def _vehicle(cv: _Canvas, rng: np.random.Generator, kind: str, x: float, z: float, front: bool) -> None:
    """A box-shaped vehicle whose near face is at depth ``z`` (front or rear towards the camera)."""
    spec = _VEHICLES[kind]
    w, h, length = _u(rng, spec.width), _u(rng, spec.height), _u(rng, spec.length)
    o = cv.add(spec.cls, z + min(length, 8.0) / 2)
    x0, x1 = x - w / 2, x + w / 2
    side = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    zf = z + length
    clearance = 0.3 if kind == "car" else 0.45
    if side is not None:
        _vehicle_side(cv, o, kind, side, z, zf, h, clearance, front)
    # near face
    if kind == "car":
        for s0 in (x0 + 0.1, x1 - 0.35):
            cv.fill(cv.front_quads(z + 0.3, s0, s0 + 0.25, 0.0, clearance + 0.1), o, PART_DARK)
        belt = 0.55 * h
        cv.fill(cv.front_quads(z, x0, x1, clearance, belt), o)
        cabin = np.stack(cv.cam.project(np.array([x0 + 0.05, x1 - 0.05, x1 - 0.25, x0 + 0.25]),
                                        np.array([belt, belt, h, h]), z + 0.6), -1)
        cv.fill(cabin[None], o)
        glass = np.stack(cv.cam.project(np.array([x0 + 0.15, x1 - 0.15, x1 - 0.3, x0 + 0.3]),
                                        np.array([belt + 0.05, belt + 0.05, h - 0.07, h - 0.07]), z + 0.6), -1)
        cv.fill_part(glass[None], PART_GLASS)
        cv.fill(cv.front_quads(z, x0, x1, clearance, clearance + 0.12), o, PART_TRIM)
        ly = (0.58 * belt, 0.85 * belt)
    else:
        cv.fill(cv.front_quads(z + 0.5, x0 + 0.1, x1 - 0.1, 0.0, clearance), o, PART_DARK)
        cv.fill(cv.front_quads(z, x0, x1, clearance, h), o)
        if kind == "truck" and not front:
            cv.fill(cv.front_quads(z, x - 0.03, x + 0.03, clearance + 0.1, h - 0.1), o, PART_TRIM)
        else:
            gy0 = 1.1 if front else h * 0.6
            cv.fill(cv.front_quads(z, x0 + 0.15, x1 - 0.15, gy0, h - 0.2), o, PART_GLASS)
        ly = (clearance + 0.15, clearance + 0.35)
    lamp = PART_HEADLIGHT if front else PART_LAMP_RED
    for lx0 in (x0 + 0.1, x1 - 0.4):
        cv.fill(cv.front_quads(z, lx0, lx0 + 0.3, ly[0], ly[1]), o, lamp)
        cv.light(cv.pt(lx0 + 0.15, np.mean(ly), z), cv.cam.fx * (0.4 if front else 0.25) / z,
                 LIGHT_HEAD if front else LIGHT_TAIL)


def _vehicle_side(cv: _Canvas, o: int, kind: str, xs: float, z: float, zf: float, h: float,
                  clearance: float, front: bool) -> None:
    length = zf - z
    if kind == "car":
        belt = 0.55 * h
        cv.fill(cv.side_quads(xs, z, zf, clearance, belt), o)
        c0, c1 = z + 0.2 * length, z + 0.8 * length
        cab = np.stack(cv.cam.project(xs, np.array([belt, belt, h, h]),
                                      np.array([c0, c1, c1 - 0.1 * length, c0 + 0.12 * length])), -1)
        cv.fill(cab[None], o)
        gl = np.stack(cv.cam.project(xs, np.array([belt + 0.05, belt + 0.05, h - 0.07, h - 0.07]),
                                     np.array([c0 + 0.1, c1 - 0.1, c1 - 0.1 * length - 0.05, c0 + 0.12 * length + 0.05])), -1)
        cv.fill_part(gl[None], PART_GLASS)
        _wheels(cv, o, xs, (z + 0.18 * length, z + 0.82 * length), 0.32)
        return
    cv.fill(cv.side_quads(xs, z, zf, clearance, h), o)
    if kind == "truck":
        cab0, cab1 = (z, z + 2.2) if front else (zf - 2.2, zf)
        cv.fill(cv.side_quads(xs, cab0, cab1, clearance, h - 0.5), o, PART_ALT)
        cv.fill_part(cv.side_quads(xs, cab0 + 0.3, cab1 - 0.5, h - 1.6, h - 0.8), PART_GLASS)
        _wheels(cv, o, xs, (z + 1.2, zf - 1.2, zf - 2.4), 0.5)
        return
    # bus / train: a band of window panes and a coloured stripe
    pane = 1.6 if kind == "bus" else 2.0
    zs = np.arange(z + 0.5, zf - pane, pane)
    cv.fill_part(cv.side_quads(xs, zs, zs + pane - 0.2, 1.2, h - 0.45), PART_GLASS)
    cv.fill(cv.side_quads(xs, z, zf, clearance + 0.1, clearance + 0.4), o, PART_ALT)
    if kind == "bus":
        _wheels(cv, o, xs, (z + 2.2, zf - 2.6), 0.5)


# ------------------------------------------------------------------------------------------------
# placement
# ------------------------------------------------------------------------------------------------
def _place_agents(rng: np.random.Generator, p: LayoutParams, st: _Street) -> list[tuple[float, str, tuple]]:
    """Positions of every street object as ``(z, kind, args)``; drawn later far to near."""
    out: list[tuple[float, str, tuple]] = []
    far = min(st.end - 5.0, 90.0)
    sgn = (-1.0, 1.0)
    for _ in range(_n(rng, p.trees)):
        s = int(rng.integers(0, 2))
        x = st.walk[s] + sgn[s] * (rng.uniform(-0.8, 0.3) if not st.terrain[s] else rng.uniform(0.5, 2.0))
        out.append((rng.uniform(3.0, far), "tree", (x,)))
    for _ in range(_n(rng, p.poles)):
        s = int(rng.integers(0, 2))
        out.append((rng.uniform(4.0, far * 0.7), "pole", (st.road[s] + sgn[s] * 0.45, -sgn[s])))
    for _ in range(_n(rng, p.persons)):
        s = int(rng.integers(0, 2))
        lo, hi = sorted((st.road[s] + sgn[s] * 0.5, st.walk[s] - sgn[s] * 0.3))
        out.append((rng.uniform(3.0, 45.0), "person", (rng.uniform(lo, hi),)))
    for _ in range(_n(rng, p.riders)):
        s = int(rng.integers(0, 2))
        out.append((rng.uniform(4.0, 40.0), "rider", (st.road[s] - sgn[s] * rng.uniform(0.6, 1.6),)))
    width = st.road[1] - st.road[0]
    lanes = max(2, int(round(width / 3.4)))
    centres = [st.road[0] + width * (k + 0.5) / lanes for k in range(lanes)]
    occupied: list[tuple[float, float, float]] = []  # (x, z0, z1)

    def park(kind: str, lane_x: float, z: float, length: float) -> None:
        for ox, oz0, oz1 in occupied:
            if abs(ox - lane_x) < 2.4 and z < oz1 + 1.5 and z + length > oz0 - 1.5:
                return
        occupied.append((lane_x, z, z + length))
        out.append((z, kind, (lane_x, lane_x < st.road[0] + width / 2)))

    if rng.random() < p.train_prob:
        park("train", st.road[0] + width / 2, rng.uniform(12.0, 45.0), 32.0)
    if rng.random() < p.bus_prob:
        park("bus", centres[int(rng.integers(0, lanes))], rng.uniform(8.0, 50.0), 13.0)
    for _ in range(_n(rng, p.trucks)):
        park("truck", centres[int(rng.integers(0, lanes))], rng.uniform(8.0, 60.0), 9.0)
    for _ in range(_n(rng, p.cars)):
        k = int(rng.integers(0, lanes + 2))
        x = centres[k] if k < lanes else (st.road[0] + 1.1 if k == lanes else st.road[1] - 1.1)
        park("car", x + rng.uniform(-0.3, 0.3), rng.uniform(3.5, 70.0), 4.8)
    return out


def _draw_agents(cv: _Canvas, rng: np.random.Generator, items: list[tuple[float, str, tuple]]) -> None:
    for z, kind, args in sorted(items, key=lambda t: -t[0]):
        if kind == "tree":
            _tree(cv, rng, args[0], z)
        elif kind == "pole":
            _pole(cv, rng, args[0], z, args[1])
        elif kind == "person":
            _person(cv, rng, args[0], z)
        elif kind == "rider":
            _rider(cv, rng, args[0], z)
        else:
            _vehicle(cv, rng, kind, args[0], z, front=bool(args[1]))


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------
def scene_rng(split: str, index: int, layout: str) -> np.random.Generator:
    """The content generator of one scene: PCG64 seeded by ``(split, index, layout)``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([SPLIT_CODES[split], int(index), LAYOUTS[layout].code])))


def build_scene(layout: str, split: str, index: int, size: tuple[int, int]) -> Scene:
    """Lay out and rasterize scene ``index`` of ``split`` with ``layout`` statistics at ``size`` (H, W).

    ``size`` is assumed valid here (the public entry points validate it).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if split not in SPLIT_CODES:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLIT_CODES)}")
    if int(index) < 0:
        raise ConfigError(f"scene index must be >= 0, got {index}")
    p = LAYOUTS[layout]
    rng = scene_rng(split, index, layout)
    fx = _u(rng, p.focal)
    cam = Camera(cx=rng.uniform(0.45, 0.55), horizon=_u(rng, p.horizon), fx=fx, fy=2.0 * fx, height=_u(rng, p.cam_height))
    st = _make_street(rng, p)
    agents = _place_agents(rng, p, st)
    cv = _Canvas(size, cam)
    _draw_ground(cv, rng, st)
    _draw_street_end(cv, rng, p, st)
    _draw_facades(cv, rng, p, st)
    _draw_agents(cv, rng, agents)
    return cv.finish(layout)
