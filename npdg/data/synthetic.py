"""The embedded default: synthetic multi-domain street scenes (docs/architecture.md §3).

*Content* (layout, labels) comes from :mod:`npdg.data.scene` and depends only on
``(split, index, layout)``; *domains* differ only in *appearance*: a palette per class with
per-image and per-object jitter, texture (fractal-noise tiles), lighting (gain, vertical gradient,
vignetting, cast shadows), weather (fog from the depth map, rain with wet-road reflections and
streaks, night with lit windows and glows) and camera effects (blur, sensor noise, JPEG, colour
cast, contrast/gamma, posterization). So scene ``i`` of a split has the same label map in every
appearance domain: "same content, different style".

Domains (see :data:`DOMAINS`): ``source`` (training), six held-out looks that training, DSP and the
style bank never see, and ``suburb`` — a content shift (other layout statistics, source look) that
shows the method's stated limit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from npdg.data import resolve_index
from npdg.data import scene as sc
from npdg.data.transforms import PairTransform, image_to_tensor, label_to_tensor, parse_size
from npdg.errors import ConfigError
from npdg.labels import CLASS_INDEX, NUM_CLASSES


@dataclass(frozen=True)
class DomainInfo:
    """A synthetic domain: its ``name``, its ``role`` and a one-line ``description``."""

    name: str
    role: str  # "source" | "heldout" | "content_shift"
    description: str


SOURCE_DOMAIN = "source"
ROLES: tuple[str, ...] = ("source", "heldout", "content_shift")
DOMAINS: dict[str, DomainInfo] = {
    d.name: d
    for d in (
        DomainInfo("source", "source", "clean, saturated, game-like flat colours with mild texture"),
        DomainInfo("photo", "heldout", "muted realistic palette, strong texture, sensor noise and JPEG"),
        DomainInfo("night", "heldout", "dark with a blue cast, lit windows, street-light and headlight glow"),
        DomainInfo("fog", "heldout", "contrast falls with depth towards a grey-white airlight"),
        DomainInfo("rain", "heldout", "darker, wet-road reflections and rain streaks"),
        DomainInfo("overcast", "heldout", "washed-out, low contrast, flat grey sky"),
        DomainInfo("toon", "heldout", "posterized, stylized palette with a hue shift"),
        DomainInfo("suburb", "content_shift", "suburban layout (wide road, low houses, lawns) in the source look"),
    )
}
SPLITS: tuple[str, ...] = tuple(sc.SPLIT_CODES)
DEFAULT_LENGTHS: dict[str, int] = {"train": 2000, "val": 200, "test": 200}
DEFAULT_SIZE: tuple[int, int] = (256, 512)
# stable integer codes for the appearance seeds (never Python's salted hash())
_DOMAIN_CODES = {"source": 101, "photo": 102, "night": 103, "fog": 104, "rain": 105, "overcast": 106,
                 "toon": 107, "suburb": 108}
_AUG_CODE = 0xA06


def domain_names(role: str | None = None) -> list[str]:
    """Domain names in canonical order (source, held-out, content shift), optionally of one ``role``."""
    if role is not None and role not in ROLES:
        raise ConfigError(f"unknown domain role {role!r}; valid: {', '.join(ROLES)}")
    return [name for name, d in DOMAINS.items() if role is None or d.role == role]


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ConfigError(f"unknown synthetic domain {domain!r}; valid: {', '.join(DOMAINS)}")
    return domain


def check_split(split: str) -> str:
    if split not in sc.SPLIT_CODES:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return split


def check_size(size) -> tuple[int, int]:
    """``(H, W)`` or ``"HxW"`` → ``(H, W)``; both must be positive multiples of 32."""
    h, w = parse_size(size)
    if h % 32 or w % 32:
        raise ConfigError(f"synthetic scene size must be positive multiples of 32 (e.g. 256x512), got {h}x{w}")
    return h, w


def layout_of(domain: str) -> str:
    """The content layout a domain renders: ``suburb`` for the content-shift domain, else ``urban``."""
    return "suburb" if DOMAINS[check_domain(domain)].role == "content_shift" else "urban"


# ------------------------------------------------------------------------------------------------
# palettes (RGB 0-255; several choices per class, one picked per object)
# ------------------------------------------------------------------------------------------------
def _pal(**entries: list[tuple[int, int, int]]) -> dict[int, list[tuple[int, int, int]]]:
    return {CLASS_INDEX[k.replace("_", " ")]: v for k, v in entries.items()}


_GAME = _pal(
    road=[(88, 86, 100), (96, 92, 104)],
    sidewalk=[(196, 172, 160), (206, 190, 170), (186, 168, 178)],
    building=[(190, 112, 78), (214, 196, 150), (142, 158, 190), (222, 150, 110), (170, 140, 200)],
    wall=[(170, 176, 160), (184, 180, 168)],
    fence=[(150, 112, 64), (120, 140, 110)],
    pole=[(120, 122, 134)],
    traffic_light=[(44, 48, 44), (70, 70, 30)],
    traffic_sign=[(30, 84, 210), (226, 40, 40), (246, 206, 0)],
    vegetation=[(56, 142, 46), (40, 126, 60)],
    terrain=[(156, 196, 84), (170, 190, 96)],
    sky=[(96, 168, 244), (110, 180, 240)],
    person=[(230, 60, 60), (60, 180, 220), (240, 200, 40), (150, 70, 200), (250, 130, 40)],
    rider=[(250, 100, 30), (40, 200, 120), (220, 40, 160)],
    car=[(30, 70, 220), (220, 30, 30), (240, 240, 240), (30, 30, 36), (250, 200, 0), (40, 150, 160), (160, 164, 170)],
    truck=[(206, 200, 184), (214, 90, 30), (70, 120, 80)],
    bus=[(250, 196, 20), (30, 130, 220), (220, 40, 50)],
    train=[(230, 40, 40), (40, 170, 160)],
    motorcycle=[(200, 20, 20), (30, 30, 40), (250, 140, 0)],
    bicycle=[(40, 110, 200), (230, 230, 230), (40, 190, 80)],
)
_REAL = _pal(
    road=[(66, 66, 70), (74, 72, 72), (62, 64, 68)],
    sidewalk=[(158, 150, 138), (148, 144, 138), (166, 154, 136)],
    building=[(128, 90, 72), (150, 132, 110), (98, 98, 106), (110, 84, 70), (160, 140, 112)],
    wall=[(188, 186, 178), (176, 178, 174)],
    fence=[(104, 92, 76), (110, 114, 108)],
    pole=[(96, 98, 100)],
    traffic_light=[(36, 36, 32)],
    traffic_sign=[(40, 70, 150), (170, 40, 40), (200, 176, 60)],
    vegetation=[(58, 82, 40), (46, 70, 36), (70, 88, 44)],
    terrain=[(112, 122, 70), (124, 118, 80)],
    sky=[(160, 186, 214), (176, 196, 216)],
    person=[(60, 60, 66), (120, 50, 50), (70, 90, 120), (150, 140, 120), (40, 40, 40)],
    rider=[(80, 80, 90), (140, 70, 40), (50, 70, 90)],
    car=[(50, 60, 90), (130, 30, 30), (200, 200, 200), (30, 30, 32), (150, 150, 156), (90, 96, 100)],
    truck=[(212, 204, 178), (170, 90, 40), (60, 92, 70)],
    bus=[(176, 150, 40), (60, 90, 130), (160, 50, 50)],
    train=[(170, 170, 176), (140, 40, 40)],
    motorcycle=[(40, 40, 44), (120, 30, 30)],
    bicycle=[(50, 50, 60), (90, 90, 100)],
)
_TOON = _pal(
    road=[(110, 90, 140)],
    sidewalk=[(250, 210, 150)],
    building=[(250, 120, 120), (120, 220, 250), (250, 240, 120), (170, 250, 140)],
    wall=[(240, 240, 250)],
    fence=[(250, 150, 60)],
    pole=[(40, 40, 60)],
    traffic_light=[(20, 20, 20)],
    traffic_sign=[(250, 250, 40), (250, 40, 120)],
    vegetation=[(20, 200, 120)],
    terrain=[(200, 250, 90)],
    sky=[(140, 220, 255)],
    person=[(250, 60, 160), (60, 250, 250)],
    rider=[(250, 120, 0)],
    car=[(250, 40, 40), (40, 80, 250), (250, 250, 250)],
    truck=[(120, 60, 250)],
    bus=[(250, 200, 0)],
    train=[(0, 200, 200)],
    motorcycle=[(160, 0, 250)],
    bicycle=[(0, 160, 60)],
)
_PALETTES = {"game": _GAME, "real": _REAL, "toon": _TOON}

#: brightness texture amplitude per class: (fine grain, coarse blotches, horizontal streaks)
_TEXTURE = np.zeros((NUM_CLASSES, 3), np.float32)
for _name, _amp in {
    "road": (0.10, 0.08, 0.0), "sidewalk": (0.06, 0.05, 0.10), "building": (0.05, 0.10, 0.07),
    "wall": (0.05, 0.04, 0.0), "fence": (0.14, 0.04, 0.04), "pole": (0.03, 0.02, 0.0),
    "traffic light": (0.02, 0.0, 0.0), "traffic sign": (0.02, 0.0, 0.0), "vegetation": (0.26, 0.16, 0.0),
    "terrain": (0.16, 0.12, 0.05), "sky": (0.0, 0.10, 0.0), "person": (0.05, 0.03, 0.0),
    "rider": (0.05, 0.03, 0.0), "car": (0.02, 0.03, 0.0), "truck": (0.03, 0.04, 0.03),
    "bus": (0.02, 0.03, 0.0), "train": (0.03, 0.04, 0.0), "motorcycle": (0.03, 0.0, 0.0),
    "bicycle": (0.03, 0.0, 0.0),
}.items():
    _TEXTURE[CLASS_INDEX[_name]] = _amp
#: how much of its class texture each part keeps (glass, paint, lamps are smooth)
_PART_TEXTURE = np.ones(sc.NUM_PARTS, np.float32)
for _p, _f in {sc.PART_WINDOW: 0.2, sc.PART_WINDOW_LIT: 0.2, sc.PART_PAINT: 0.5, sc.PART_GLASS: 0.2,
               sc.PART_LAMP_RED: 0.0, sc.PART_LAMP_AMBER: 0.0, sc.PART_LAMP_GREEN: 0.0,
               sc.PART_HEADLIGHT: 0.0, sc.PART_SIGN_INNER: 0.2, sc.PART_SKIN: 0.2}.items():
    _PART_TEXTURE[_p] = _f

_LIGHT_RGB = np.array([(1.0, 0.78, 0.45), (1.0, 0.15, 0.1), (1.0, 0.6, 0.1), (0.25, 1.0, 0.55),
                       (1.0, 1.0, 0.9), (1.0, 0.1, 0.08)], np.float32)


# ------------------------------------------------------------------------------------------------
# looks
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Look:
    """Appearance parameters of a domain; ranges ``(lo, hi)`` are drawn per image."""

    palette: str
    obj_jitter: float = 0.08  # per-object brightness std
    colour_jitter: float = 0.04  # per-object, per-channel std
    texture: float = 1.0  # multiplies the class texture table
    gain: tuple[float, float] = (0.95, 1.05)
    gradient: tuple[float, float] = (-0.05, 0.05)  # brightness change from top to bottom row
    vignette: float = 0.0
    shadow_prob: float = 0.0
    sky_haze: float = 0.45  # how much the sky lightens towards the horizon
    haze_rgb: tuple[float, float, float] = (0.95, 0.96, 1.0)
    flat_sky: tuple[float, float, float] | None = None
    window_rgb: tuple[float, float, float] = (0.2, 0.26, 0.34)
    lit_rgb: tuple[float, float, float] = (0.35, 0.38, 0.42)
    paint_rgb: tuple[float, float, float] = (0.92, 0.92, 0.88)
    glass_rgb: tuple[float, float, float] = (0.14, 0.18, 0.24)
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cast_jitter: float = 0.03
    saturation: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    lift: float = 0.0  # black level raised (washed-out looks)
    blur: tuple[float, float] = (0.0, 0.0)  # Gaussian sigma in px at 256 rows
    noise: float = 0.0  # sensor noise std (fraction of full scale)
    jpeg: tuple[int, int] | None = None
    fog: tuple[float, float] | None = None  # extinction coefficient per metre
    rain: bool = False
    night: bool = False
    posterize: int = 0
    hue_shift: tuple[float, float] = (0.0, 0.0)  # degrees


LOOKS: dict[str, Look] = {
    "source": Look("game", obj_jitter=0.07, colour_jitter=0.03, texture=0.45, gain=(0.95, 1.1),
                   shadow_prob=0.5, saturation=(1.1, 1.25), contrast=(1.0, 1.1)),
    "photo": Look("real", obj_jitter=0.16, colour_jitter=0.07, texture=1.7, gain=(0.8, 1.1),
                  gradient=(-0.15, 0.05), vignette=0.3, shadow_prob=0.6, saturation=(0.7, 0.95),
                  contrast=(0.9, 1.05), gamma=(0.9, 1.15), blur=(0.4, 0.9), noise=0.02, jpeg=(45, 80),
                  cast_jitter=0.05),
    "night": Look("real", obj_jitter=0.12, colour_jitter=0.05, texture=1.0, gain=(0.24, 0.34),
                  gradient=(-0.3, -0.1), vignette=0.4, sky_haze=0.25, haze_rgb=(0.35, 0.3, 0.3),
                  window_rgb=(0.08, 0.1, 0.14), lit_rgb=(1.0, 0.68, 0.3), cast=(0.8, 0.9, 1.22),
                  saturation=(0.8, 1.0), blur=(0.5, 0.9), noise=0.025, jpeg=(60, 85), night=True),
    "fog": Look("real", obj_jitter=0.12, colour_jitter=0.05, texture=1.2, gain=(0.9, 1.05),
                saturation=(0.75, 0.9), blur=(0.6, 1.1), noise=0.01, fog=(0.02, 0.055),
                cast=(0.98, 1.0, 1.03)),
    "rain": Look("real", obj_jitter=0.12, colour_jitter=0.05, texture=1.1, gain=(0.5, 0.7),
                 gradient=(-0.1, 0.0), vignette=0.2, sky_haze=0.3, haze_rgb=(0.75, 0.78, 0.82),
                 cast=(0.94, 1.0, 1.1), saturation=(0.6, 0.8), blur=(0.6, 1.0), noise=0.015, rain=True),
    "overcast": Look("real", obj_jitter=0.12, colour_jitter=0.05, texture=0.9, gain=(1.0, 1.12),
                     sky_haze=0.0, flat_sky=(0.8, 0.81, 0.83), saturation=(0.4, 0.55), contrast=(0.6, 0.72),
                     lift=0.12, blur=(0.3, 0.6), noise=0.01, cast=(1.0, 1.0, 1.02)),
    "toon": Look("toon", obj_jitter=0.04, colour_jitter=0.02, texture=0.05, shadow_prob=0.4,
                 sky_haze=0.2, paint_rgb=(1.0, 1.0, 0.4), saturation=(1.3, 1.5), contrast=(1.1, 1.25),
                 posterize=4, hue_shift=(35.0, 110.0)),
}
LOOKS["suburb"] = LOOKS["source"]


# ------------------------------------------------------------------------------------------------
# cached, deterministic noise tiles
# ------------------------------------------------------------------------------------------------
_TILE = (512, 1024)


def _fractal(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, ...], weights: tuple[float, ...],
             aniso: float = 1.0) -> np.ndarray:
    """Sum of upsampled random grids (value noise octaves), normalized to zero mean, unit std."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    for cell, wt in zip(cells, weights):
        gh, gw = max(1, h // cell), max(1, int(w // (cell * aniso)))
        g = rng.standard_normal((gh, gw)).astype(np.float32)
        out += wt * (g if (gh, gw) == shape else cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC))
    return (out - out.mean()) / (out.std() + 1e-6)


@functools.lru_cache(maxsize=1)
def noise_tiles() -> dict[str, np.ndarray]:
    """Noise bank built once per process from a fixed seed: texture stack, rain streaks, sensor noise."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([0x5EED, 2024])))
    fine = _fractal(rng, _TILE, (1, 2, 4), (1.0, 0.7, 0.5))
    coarse = _fractal(rng, _TILE, (8, 16, 32, 64), (0.4, 0.6, 0.8, 1.0))
    streak = _fractal(rng, _TILE, (2, 4), (1.0, 0.6), aniso=16.0)
    drops = (rng.random(_TILE) < 0.0025).astype(np.float32) * rng.uniform(0.3, 1.0, _TILE).astype(np.float32)
    k = np.zeros((21, 21), np.float32)
    cv2.line(k, (8, 0), (12, 20), 1.0, 1)
    rain = cv2.filter2D(drops, -1, k / k.sum() * 6.0, borderType=cv2.BORDER_REFLECT)
    sensor = rng.standard_normal((*_TILE, 3)).astype(np.float32)
    return {"texture": (fine, coarse, streak),
            "rain": np.clip(rain, 0.0, 1.0), "sensor": sensor}


def _crop(tile: np.ndarray, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random window (with random flips) of a tile; wraps around for sizes above the tile."""
    h, w = size
    th, tw = tile.shape[:2]
    y, x = int(rng.integers(0, max(1, th - h + 1))), int(rng.integers(0, max(1, tw - w + 1)))
    if h <= th and w <= tw:
        out = tile[y : y + h, x : x + w]
    else:
        out = np.take(np.take(tile, np.arange(y, y + h), axis=0, mode="wrap"), np.arange(x, x + w), axis=1, mode="wrap")
    flip = int(rng.integers(0, 4))
    if flip & 1:
        out = out[:, ::-1]
    if flip & 2:
        out = out[::-1]
    return out


@functools.lru_cache(maxsize=8)
def _radius2(size: tuple[int, int]) -> np.ndarray:
    h, w = size
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h - 0.5
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w - 0.5
    return (yy[:, None] ** 2 + xx[None, :] ** 2) * 2.0  # 1.0 at the corners


# ------------------------------------------------------------------------------------------------
# appearance stages
# ------------------------------------------------------------------------------------------------
def _palette_array(name: str) -> tuple[np.ndarray, np.ndarray]:
    pal = _PALETTES[name]
    k = max(len(v) for v in pal.values())
    arr = np.zeros((NUM_CLASSES, k, 3), np.float32)
    counts = np.ones(NUM_CLASSES, np.int64)
    for c, cols in pal.items():
        arr[c, : len(cols)] = np.asarray(cols, np.float32) / 255.0
        counts[c] = len(cols)
    return arr, counts


_PALETTE_ARRAYS = {name: _palette_array(name) for name in _PALETTES}
_SKIN = np.array([(0.92, 0.74, 0.6), (0.78, 0.56, 0.42), (0.5, 0.34, 0.24), (0.95, 0.8, 0.68)], np.float32)


def _pick(rng: np.random.Generator, look: Look, classes: np.ndarray) -> np.ndarray:
    arr, counts = _PALETTE_ARRAYS[look.palette]
    choice = (rng.random(classes.size) * counts[classes]).astype(np.int64)
    col = arr[classes, choice]
    col *= (1.0 + look.obj_jitter * rng.standard_normal(classes.size)).astype(np.float32)[:, None]
    col *= (1.0 + look.colour_jitter * rng.standard_normal((classes.size, 3))).astype(np.float32)
    return np.clip(col, 0.0, 1.0)


def _part_lut(rng: np.random.Generator, look: Look, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance and emission lookup tables ``[N * NUM_PARTS, 3]`` for object × part."""
    n = classes.size
    base, alt = _pick(rng, look, classes), _pick(rng, look, classes)
    lut = np.repeat(base[:, None, :], sc.NUM_PARTS, axis=1)
    vary = (1.0 + 0.12 * rng.standard_normal((n, 1))).astype(np.float32)
    lut[:, sc.PART_WINDOW] = np.asarray(look.window_rgb, np.float32) * vary
    lut[:, sc.PART_WINDOW_LIT] = np.asarray(look.lit_rgb, np.float32) * vary
    lut[:, sc.PART_PAINT] = look.paint_rgb
    lut[:, sc.PART_GLASS] = np.asarray(look.glass_rgb, np.float32) * vary
    lut[:, sc.PART_DARK] = 0.07
    lut[:, sc.PART_LAMP_RED] = (0.9, 0.15, 0.1)
    lut[:, sc.PART_LAMP_AMBER] = (0.95, 0.6, 0.1)
    lut[:, sc.PART_LAMP_GREEN] = (0.2, 0.9, 0.45)
    lut[:, sc.PART_HEADLIGHT] = (0.92, 0.92, 0.86)
    lut[:, sc.PART_SIGN_INNER] = (0.93, 0.93, 0.93)
    lut[:, sc.PART_SKIN] = _SKIN[rng.integers(0, len(_SKIN), n)]
    lut[:, sc.PART_ALT] = alt
    lut[:, sc.PART_TRIM] = base * 0.72
    lut[:, sc.PART_TRUNK] = np.array((0.32, 0.23, 0.15), np.float32) * vary
    if look.flat_sky is not None:
        lut[classes == sc.SKY] = look.flat_sky
    emit = None
    if look.night:
        emit = np.zeros_like(lut)
        emit[:, sc.PART_WINDOW_LIT] = np.asarray(look.lit_rgb, np.float32) * 0.9
        for part, light in ((sc.PART_LAMP_RED, 1), (sc.PART_LAMP_AMBER, 2), (sc.PART_LAMP_GREEN, 3),
                            (sc.PART_HEADLIGHT, 4)):
            emit[:, part] = _LIGHT_RGB[light]
        tail = np.isin(classes, (sc.CAR, sc.TRUCK, sc.BUS, sc.TRAIN))
        emit[tail, sc.PART_LAMP_RED] = _LIGHT_RGB[5] * 0.8
    return lut.reshape(-1, 3), (None if emit is None else emit.reshape(-1, 3))


def _shadow_mask(rng: np.random.Generator, s: sc.Scene, size: tuple[int, int]) -> np.ndarray:
    """Soft cast shadows of the buildings of one side on the ground (1 = full shadow)."""
    h, w = size
    small = np.zeros((h // 4, w // 4), np.float32)
    cam = s.camera
    side = -1.0 if rng.random() < 0.5 else 1.0
    x_edge, x_in = side * 30.0, side * rng.uniform(-2.0, 5.0)
    z0, z1 = rng.uniform(1.0, 10.0), rng.uniform(40.0, 200.0)
    xs, zs = np.array([x_edge, x_in, x_in, x_edge]), np.array([z0, z0, z1, z1])
    u, v = cam.project(xs, 0.0, zs)
    pts = np.rint(np.stack([u * (w // 4), v * (h // 4)], -1) * 8).astype(np.int32)
    cv2.fillPoly(small, [pts], 1.0, cv2.LINE_8, 3)
    small = cv2.GaussianBlur(small, (0, 0), 1.5)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _glow(s: sc.Scene, size: tuple[int, int], strength: float) -> np.ndarray | None:
    """Additive light halos around street lamps, traffic lights and vehicle lamps (night)."""
    if not len(s.lights):
        return None
    h, w = size
    hs, ws = h // 4, w // 4
    g = np.zeros((hs, ws, 3), np.float32)
    for u, v, r, kind in s.lights:
        rad = max(1, int(round(r * ws)))
        c = (int(round(u * ws)), int(round(v * hs)))
        cv2.circle(g, c, rad, tuple(float(t) for t in _LIGHT_RGB[int(kind)] * strength), -1, cv2.LINE_AA)
    g = 0.7 * cv2.GaussianBlur(g, (0, 0), 1.5) + 0.4 * cv2.GaussianBlur(g, (0, 0), 5.0)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_LINEAR)


def _wet(img: np.ndarray, s: sc.Scene, rng: np.random.Generator) -> np.ndarray:
    """Rain: the ground reflects a blurred mirror image of what stands above the horizon.

    ``img`` is planar ``[3, H, W]``; modified in place and returned.
    """
    h = img.shape[1]
    hz = int(s.camera.horizon * h)
    rows = np.clip(2 * hz - np.arange(hz, h), 0, h - 1)
    k = float(rng.uniform(0.25, 0.45))
    wet = np.isin(s.label[hz:], (sc.ROAD, sc.SIDEWALK)).astype(np.float32) * k
    for c in range(3):
        refl = cv2.GaussianBlur(img[c][rows], (0, 0), sigmaX=1.0, sigmaY=3.0)
        img[c, hz:] += (refl - img[c, hz:]) * wet
    return img


def _finish_lut(rng: np.random.Generator, look: Look) -> np.ndarray:
    """Per-channel uint8 table: colour cast, lift, contrast, gamma and posterization together."""
    x = np.arange(256, dtype=np.float32)[:, None] / 255.0
    cast = np.asarray(look.cast, np.float32) * (1.0 + look.cast_jitter * rng.standard_normal(3)).astype(np.float32)
    y = np.clip(x * cast, 0.0, 1.0)
    y = np.clip((y - 0.5) * rng.uniform(*look.contrast) + 0.5, 0.0, 1.0)
    y = look.lift + (1.0 - look.lift) * y
    y = y ** rng.uniform(*look.gamma)
    if look.posterize:
        n = look.posterize
        y = (np.floor(y * n * 0.999) + 0.5) / n
    return np.clip(y * 255.0 + 0.5, 0, 255).astype(np.uint8).reshape(1, 256, 3)


def _texture_field(look: Look, classes: np.ndarray, idx: np.ndarray, size: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray | None:
    """``1 + Σ_k amp_k(class, part) · noise_k``: the brightness texture of every pixel (or None)."""
    if look.texture <= 0.06:
        return None
    amp = (_TEXTURE[classes][:, None, :] * _PART_TEXTURE[None, :, None]).reshape(-1, 3) * np.float32(look.texture)
    tiles = noise_tiles()["texture"]
    field = np.ones(size, np.float32)
    for k in range(3):
        if amp[:, k].any():
            field += np.take(np.ascontiguousarray(amp[:, k]), idx) * _crop(tiles[k], size, rng)
    return field


def _light_field(s: sc.Scene, look: Look, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Global gain × vertical gradient × vignetting × cast shadows, ``[H, W]``."""
    h, w = size
    rowgain = rng.uniform(*look.gain) * (1.0 + rng.uniform(*look.gradient) * np.linspace(0.0, 1.0, h, dtype=np.float32))
    light = np.repeat(rowgain.astype(np.float32)[:, None], w, axis=1)
    if look.vignette:
        light *= 1.0 - np.float32(look.vignette * rng.uniform(0.6, 1.0)) * _radius2(size)
    if look.shadow_prob and rng.random() < look.shadow_prob:
        shade = _shadow_mask(rng, s, size) * np.float32(rng.uniform(0.3, 0.45))
        shade[s.label == sc.SKY] = 0.0
        light *= 1.0 - shade
    return light


def _sky_haze(img: np.ndarray, s: sc.Scene, look: Look) -> None:
    """Lighten the sky towards the horizon (in place, planar image)."""
    h = img.shape[1]
    top = min(h, int(s.camera.horizon * h) + 2)  # no sky below the horizon
    v = (np.arange(top, dtype=np.float32) + 0.5) / h
    wrow = np.clip(v / max(s.camera.horizon, 1e-3), 0.0, 1.0) ** 2 * np.float32(look.sky_haze)
    wmap = np.where(s.label[:top] == sc.SKY, wrow[:, None], np.float32(0.0)).astype(np.float32)
    for c in range(3):
        img[c, :top] += (np.float32(look.haze_rgb[c]) - img[c, :top]) * wmap


def appearance(s: sc.Scene, look: Look, rng: np.random.Generator) -> np.ndarray:
    """Render the RGB uint8 ``[H, W, 3]`` image of scene content ``s`` in ``look``.

    Works on a planar float32 ``[3, H, W]`` image (fast per-pixel broadcasting): reflectance from
    the object × part tables, sky haze, texture × lighting, emission, weather, saturation, blur,
    sensor noise; then one uint8 table for cast/contrast/gamma/posterization, hue shift and JPEG.
    """
    h, w = size = s.label.shape
    classes = s.obj_class.astype(np.int64)
    lut, emit = _part_lut(rng, look, classes)
    idx = (s.obj.astype(np.int32) << 4) | s.part
    img = np.take(np.ascontiguousarray(lut.T), idx, axis=1)
    if look.sky_haze > 0:
        _sky_haze(img, s, look)
    field = _light_field(s, look, size, rng)
    tex = _texture_field(look, classes, idx, size, rng)
    if tex is not None:
        field *= tex
    img *= field
    if emit is not None:
        img += np.take(np.ascontiguousarray(emit.T), idx, axis=1)
    if look.rain:
        _wet(img, s, rng)
    if look.fog is not None:
        t = np.exp(-np.float32(rng.uniform(*look.fog)) * s.depth)
        air = np.float32(rng.uniform(0.78, 0.92))
        for c, tint in enumerate((0.98, 0.99, 1.0)):
            img[c] = (img[c] - air * tint) * t + air * tint
    if look.night:
        g = _glow(s, size, rng.uniform(0.35, 0.55))
        if g is not None:
            img += g.transpose(2, 0, 1)
    if look.rain:
        img += _crop(noise_tiles()["rain"], size, rng) * np.float32(rng.uniform(0.25, 0.45))
    sat = np.float32(rng.uniform(*look.saturation))
    if sat != 1.0:
        grey = img.mean(0)
        img -= grey
        img *= sat
        img += grey
    out = cv2.merge(list(img))
    sigma = rng.uniform(*look.blur) * h / 256.0
    if sigma > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if look.noise:
        out += _crop(noise_tiles()["sensor"], size, rng) * np.float32(look.noise)
    out = cv2.LUT(cv2.convertScaleAbs(np.clip(out, 0.0, 1.0, out=out), alpha=255.0), _finish_lut(rng, look))
    if look.hue_shift != (0.0, 0.0):
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(rng.uniform(*look.hue_shift) / 2)) % 180
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if look.jpeg is not None:
        q = int(rng.integers(look.jpeg[0], look.jpeg[1] + 1))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out


# ------------------------------------------------------------------------------------------------
# public entry points
# ------------------------------------------------------------------------------------------------
def appearance_rng(domain: str, split: str, index: int) -> np.random.Generator:
    """The appearance generator of one image: PCG64 seeded by ``(split, index, domain)``."""
    seq = np.random.SeedSequence([sc.SPLIT_CODES[split], int(index), _DOMAIN_CODES[domain], 7])
    return np.random.Generator(np.random.PCG64(seq))


def render_scene_full(domain: str, split: str, index: int, size=DEFAULT_SIZE) -> tuple[np.ndarray, sc.Scene]:
    """Like :func:`render_scene`, but also returns the content (depth, object and part maps)."""
    check_domain(domain)
    check_split(split)
    size = check_size(size)
    if int(index) < 0:
        raise ConfigError(f"scene index must be >= 0, got {index}")
    content = sc.build_scene(layout_of(domain), split, int(index), size)
    return appearance(content, LOOKS[domain], appearance_rng(domain, split, index)), content


def render_scene(domain: str, split: str, index: int, size: tuple[int, int] = DEFAULT_SIZE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Scene ``index`` of ``split`` in ``domain``: image uint8 ``[H, W, 3]`` RGB, label uint8 ``[H, W]``.

    The label depends on ``(split, index)`` and the domain's layout only, so it is identical in all
    appearance domains. ``size`` = (H, W), positive multiples of 32.
    """
    image, content = render_scene_full(domain, split, index, size)
    return image, content.label


class SyntheticDataset:
    """Scenes ``0 .. length-1`` of one synthetic domain and split, as samples of the npdg contract.

    A map-style dataset (``__len__`` and ``__getitem__``, all that ``torch.utils.data.DataLoader``
    and ``Subset`` need) that does not subclass ``torch.utils.data.Dataset``: this module is also the
    renderer of the dashboard's Data page, which then never imports torch — about 2 s of the
    dashboard's cold start on a 2-core CPU (docs/dashboard.md §4).

    ``transform`` (a :class:`~npdg.data.transforms.PairTransform`) is applied to the uint8 arrays
    with a generator seeded by ``(split, index, domain, epoch)``; call :meth:`set_epoch` to draw new
    augmentations each epoch while staying reproducible.
    """

    def __init__(self, domain: str, split: str = "train", size=DEFAULT_SIZE, length: int | None = None,
                 transform: PairTransform | None = None):
        self.domain = check_domain(domain)
        self.split = check_split(split)
        self.size = check_size(size)
        n = DEFAULT_LENGTHS[split] if length is None else length
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"dataset length must be a positive integer, got {length!r}")
        self.length = int(n)
        self.transform = transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (no effect without a transform)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        i = resolve_index(i, self.length, f"{self.length} {self.domain}/{self.split} scenes")
        image, label = render_scene(self.domain, self.split, i, self.size)
        if self.transform is not None:
            seq = np.random.SeedSequence([sc.SPLIT_CODES[self.split], i, _DOMAIN_CODES[self.domain], _AUG_CODE,
                                          self.epoch])
            image, label = self.transform(image, label, np.random.Generator(np.random.PCG64(seq)))
        return {
            "image": image_to_tensor(image),
            "label": label_to_tensor(label),
            "domain": self.domain,
            "split": self.split,
            "index": i,
            "name": f"{self.domain}_{self.split}_{i:06d}",
        }

    def __repr__(self) -> str:
        return f"SyntheticDataset(domain={self.domain!r}, split={self.split!r}, size={self.size}, length={self.length})"


__all__ = ["DEFAULT_LENGTHS", "DOMAINS", "DomainInfo", "LOOKS", "Look", "SOURCE_DOMAIN", "SyntheticDataset",
           "domain_names", "render_scene", "render_scene_full"]
