"""Procedural multi-domain synthetic person re-ID benchmark, written to disk in the Market-1501 layout.

Why: no real re-ID images can be had on the machines autoprune runs on, yet pruning decisions only
matter on a task that is hard (identities are not separable by colour alone) and that has a real
domain shift (each domain has its own cameras, clothing palette and scenes). Everything is numpy,
vectorised per image; PIL is used only for blur/resampling and to save JPEGs.

Layout written by :func:`generate` (``pid`` is 4 digits, ``-1`` for junk, cam is 1-based)::

    out_dir/bounding_box_train/{pid:04d}_c{cam}s1_{frame:06d}_00.jpg
    out_dir/query/...
    out_dir/bounding_box_test/...      (also distractors with pid 0000 and junk with pid -1)
    out_dir/DONE                       (JSON with the parameters, written last)
    out_dir/GENERATING                 (only while writing; a folder with it and no DONE is regenerated)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from autoprune.errors import UserError, writable_folder

GENERATOR_VERSION = 2  # bump when the output changes, so DONE markers of old folders go stale
SPLITS = ("bounding_box_train", "query", "bounding_box_test")
MARKER = "DONE"
PARTIAL = "GENERATING"  # present while a generation runs; marks the folder as the generator's own
VIEWS = ("front", "back", "side")
PATTERNS = ("plain", "stripes", "checks", "print")
LOWER_KINDS = ("trousers", "shorts", "skirt")

RGB = tuple[int, int, int]

# Label ids of the per-image part map (0 is background); colours come from a per-person lookup table.
# Upper and lower garments take three labels each: their main colour and two pattern colours.
_SKIN, _HAIR, _UP, _LOW, _SHOE, _BACKPACK, _SBAG, _HBAG, _HAT, _LOGO = 1, 2, 3, 6, 9, 10, 11, 12, 13, 14
_NLAB = 15

_SKIN_TONES: tuple[RGB, ...] = (
    (241, 200, 172),
    (226, 178, 146),
    (204, 146, 108),
    (170, 114, 80),
    (128, 84, 56),
    (92, 60, 42),
)
_HAIR_COLOURS: tuple[RGB, ...] = (
    (22, 18, 16),
    (48, 32, 24),
    (86, 56, 34),
    (140, 98, 56),
    (196, 164, 108),
    (130, 128, 124),
    (120, 40, 24),
)


@dataclass(frozen=True)
class CameraStyle:
    """How one camera renders a scene: exposure, white balance, optics, sensor and viewing angle."""

    gain: float  # overall illumination multiplier
    cast: tuple[float, float, float]  # per-channel white-balance multipliers (colour cast)
    contrast: float  # >1 stretches around mid-grey, <1 flattens
    saturation: float  # 1 keeps colours, <1 washes them out
    blur: float  # blur radius in pixels at height 128 (box filter, applied at the reduced resolution)
    noise: float  # sensor noise std, in 0..255 units
    resolution: float  # downscale factor before upscaling back (1 = full resolution)
    views: tuple[float, float, float]  # probabilities of the VIEWS: front / back / side


@dataclass(frozen=True)
class SceneStyle:
    """Background scenes of a domain: walls with clutter above a horizon, textured ground below."""

    walls: tuple[RGB, ...]
    grounds: tuple[RGB, ...]
    clutter: tuple[RGB, ...]  # windows, signs, shop fronts, foliage
    horizon: tuple[float, float]  # horizon height range as a fraction of the scene height
    texture: float  # amplitude of low-frequency texture
    stripes: float  # strength of ground tiles / pavement lines


@dataclass(frozen=True)
class DomainStyle:
    """One domain: its cameras, the clothing palette its people wear, accessory rates and scenes."""

    name: str
    description: str
    cameras: tuple[CameraStyle, ...]
    palette: tuple[RGB, ...]
    palette_weights: tuple[float, ...]
    upper_patterns: tuple[float, float, float, float]  # weights of plain / stripes / checks / print
    lower_patterns: tuple[float, float, float, float]
    lower_kinds: tuple[float, float, float]  # weights of trousers / shorts / skirt
    long_sleeves: float
    backpack: float
    shoulder_bag: float
    handbag: float
    hat: float
    logo: float
    occlusion: float  # probability that an image has an occluder
    scene: SceneStyle


DOMAINS: dict[str, DomainStyle] = {
    "A": DomainStyle(
        name="A",
        description="summer campus in daylight: bright varied clothing, pavement and trees, 6 cameras",
        cameras=(
            CameraStyle(1.00, (1.00, 1.00, 1.00), 1.00, 1.00, 0.3, 2.0, 1.00, (0.5, 0.3, 0.2)),
            CameraStyle(1.15, (1.15, 1.02, 0.80), 0.85, 0.90, 0.6, 3.0, 0.70, (0.2, 0.5, 0.3)),
            CameraStyle(0.80, (0.85, 0.98, 1.20), 1.20, 1.10, 0.4, 5.0, 0.85, (0.3, 0.3, 0.4)),
            CameraStyle(0.95, (0.92, 1.12, 0.90), 1.05, 0.80, 0.8, 3.0, 0.60, (0.4, 0.4, 0.2)),
            CameraStyle(1.10, (1.15, 0.90, 1.05), 0.80, 1.00, 0.5, 4.0, 0.80, (0.2, 0.3, 0.5)),
            CameraStyle(0.75, (0.95, 0.95, 1.12), 1.20, 0.75, 1.0, 6.0, 0.50, (0.35, 0.35, 0.3)),
        ),
        palette=(
            (236, 236, 232),
            (28, 28, 30),
            (128, 128, 130),
            (196, 40, 44),
            (36, 52, 120),
            (110, 170, 220),
            (232, 200, 60),
            (60, 140, 70),
            (230, 130, 170),
            (190, 170, 120),
            (236, 120, 40),
            (120, 60, 150),
        ),
        palette_weights=(3, 3, 2, 2, 2, 2, 1.5, 1.5, 1, 1.5, 1, 1),
        upper_patterns=(0.45, 0.2, 0.15, 0.2),
        lower_patterns=(0.75, 0.05, 0.1, 0.1),
        lower_kinds=(0.55, 0.3, 0.15),
        long_sleeves=0.35,
        backpack=0.4,
        shoulder_bag=0.2,
        handbag=0.15,
        hat=0.2,
        logo=0.35,
        occlusion=0.2,
        scene=SceneStyle(
            walls=((150, 150, 146), (178, 150, 120), (74, 120, 64), (200, 196, 186)),
            grounds=((168, 166, 160), (96, 146, 70), (140, 132, 120)),
            clutter=((60, 96, 50), (90, 130, 160), (210, 210, 200), (70, 70, 76), (150, 60, 50)),
            horizon=(0.45, 0.7),
            texture=0.25,
            stripes=0.08,
        ),
    ),
    "B": DomainStyle(
        name="B",
        description="winter street at dusk: dark coats, brick and asphalt, bluish low-res noisy cameras, 5 cameras",
        cameras=(
            CameraStyle(0.90, (0.85, 0.96, 1.20), 1.05, 0.85, 0.5, 5.0, 0.70, (0.4, 0.4, 0.2)),
            CameraStyle(1.15, (1.12, 1.04, 0.82), 0.80, 0.75, 0.8, 4.0, 0.60, (0.3, 0.3, 0.4)),
            CameraStyle(0.85, (1.00, 1.12, 1.00), 1.15, 1.10, 0.4, 6.0, 0.80, (0.2, 0.6, 0.2)),
            CameraStyle(1.05, (1.20, 0.92, 0.86), 0.95, 0.90, 0.9, 5.0, 0.60, (0.5, 0.2, 0.3)),
            CameraStyle(0.95, (0.92, 0.92, 1.10), 1.00, 0.75, 0.7, 6.0, 0.65, (0.3, 0.3, 0.4)),
        ),
        palette=(
            (24, 24, 28),
            (76, 76, 82),
            (34, 46, 96),
            (110, 72, 44),
            (86, 100, 56),
            (128, 34, 48),
            (196, 180, 150),
            (150, 150, 154),
            (230, 230, 236),
            (200, 160, 50),
            (40, 90, 110),
            (170, 60, 30),
        ),
        palette_weights=(2, 1.5, 1.5, 1.5, 1.5, 1.5, 2, 2, 1.5, 1.5, 1.5, 1.5),
        upper_patterns=(0.4, 0.15, 0.25, 0.2),
        lower_patterns=(0.85, 0.0, 0.1, 0.05),
        lower_kinds=(0.85, 0.0, 0.15),
        long_sleeves=0.95,
        backpack=0.35,
        shoulder_bag=0.3,
        handbag=0.2,
        hat=0.45,
        logo=0.25,
        occlusion=0.25,
        scene=SceneStyle(
            walls=((120, 56, 44), (84, 80, 84), (150, 110, 90), (60, 64, 76)),
            grounds=((64, 64, 68), (220, 224, 232), (96, 92, 90)),
            clutter=((240, 200, 110), (40, 40, 44), (180, 40, 40), (200, 210, 220), (30, 60, 90)),
            horizon=(0.5, 0.75),
            texture=0.3,
            stripes=0.12,
        ),
    ),
    "C": DomainStyle(
        name="C",
        description="indoor mall under tungsten light: pastel clothing, tiled floors and shop fronts, 4 cameras",
        cameras=(
            CameraStyle(1.10, (1.20, 1.02, 0.75), 1.15, 1.10, 0.6, 3.0, 0.90, (0.4, 0.3, 0.3)),
            CameraStyle(0.85, (1.25, 0.96, 0.70), 1.00, 0.90, 1.1, 4.0, 0.60, (0.3, 0.4, 0.3)),
            CameraStyle(1.20, (1.05, 1.05, 0.95), 0.75, 1.20, 0.8, 2.0, 0.75, (0.3, 0.3, 0.4)),
            CameraStyle(0.75, (1.10, 0.92, 1.05), 1.25, 0.80, 0.5, 5.0, 0.50, (0.45, 0.35, 0.2)),
        ),
        palette=(
            (240, 236, 226),
            (40, 36, 40),
            (170, 200, 230),
            (240, 190, 200),
            (200, 230, 190),
            (250, 230, 160),
            (120, 110, 170),
            (60, 110, 170),
            (200, 120, 90),
            (150, 150, 150),
            (90, 160, 150),
            (180, 40, 90),
        ),
        palette_weights=(3, 2, 2, 2, 1.5, 1.5, 1, 1.5, 1, 1.5, 1, 1),
        upper_patterns=(0.4, 0.25, 0.1, 0.25),
        lower_patterns=(0.7, 0.1, 0.1, 0.1),
        lower_kinds=(0.5, 0.2, 0.3),
        long_sleeves=0.55,
        backpack=0.2,
        shoulder_bag=0.35,
        handbag=0.35,
        hat=0.1,
        logo=0.3,
        occlusion=0.15,
        scene=SceneStyle(
            walls=((214, 200, 176), (236, 232, 220), (160, 150, 140), (190, 170, 150)),
            grounds=((200, 190, 170), (150, 140, 130), (230, 224, 214)),
            clutter=((220, 60, 60), (60, 120, 200), (250, 220, 90), (40, 40, 40), (120, 180, 120)),
            horizon=(0.35, 0.55),
            texture=0.15,
            stripes=0.2,
        ),
    ),
}


@dataclass
class _Garment:
    colours: np.ndarray  # (3, 3) float32: main colour and up to two pattern colours
    pattern: int  # index into PATTERNS
    freq: float  # pattern cells per body height
    phase: float
    tile: np.ndarray  # (4, 4) int: colour index per cell of the print texture


@dataclass
class _Identity:
    height: float  # fraction of the frame the person fills when framed normally
    waist: float  # height of the waist, 0 at the top of the head and 1 at the soles (leg length)
    build: float  # width multiplier
    head: float  # head size multiplier
    gait: float  # stride amplitude
    hair_long: bool
    long_sleeves: bool
    lower_kind: int  # index into LOWER_KINDS
    upper: _Garment
    lower: _Garment
    backpack: bool
    shoulder_bag: int  # 0 none, +1 / -1 the side the bag hangs on
    handbag: int  # 0 none, +1 / -1 the hand that holds it
    hat: bool
    logo: int  # 0 none, 1 square, 2 disc, 3 bar
    lut: np.ndarray  # (_NLAB, 3) float32 colours of every label


def _colour(rgb: RGB, rng: np.random.Generator, jitter: float) -> np.ndarray:
    """An RGB triple in 0..1 with a small per-identity jitter so shared palette colours stay close."""
    c = np.asarray(rgb, np.float32) / 255.0
    return np.clip(c + rng.uniform(-jitter, jitter, 3).astype(np.float32), 0.0, 1.0)


def _garment(style: DomainStyle, pattern_weights: tuple[float, ...], rng: np.random.Generator) -> _Garment:
    """Clothing colours from the shared domain palette plus a pattern; the pattern is what differs."""
    w = np.asarray(style.palette_weights, np.float64)
    idx = rng.choice(len(style.palette), size=3, replace=False, p=w / w.sum())
    colours = np.stack([_colour(style.palette[i], rng, 0.03) for i in idx])
    pw = np.asarray(pattern_weights, np.float64)
    pattern = int(rng.choice(len(PATTERNS), p=pw / pw.sum()))
    tile = rng.integers(0, 3, size=(4, 4))
    tile[0, 0], tile[1, 1] = 0, 1  # a print always shows at least two colours
    return _Garment(colours, pattern, float(rng.uniform(8.0, 18.0)), float(rng.uniform(0, 1)), tile)


def _identity(style: DomainStyle, rng: np.random.Generator) -> _Identity:
    """Draw one person: body, colours, clothing patterns and accessories from the domain's distribution."""
    upper = _garment(style, style.upper_patterns, rng)
    lower = _garment(style, style.lower_patterns, rng)
    kw = np.asarray(style.lower_kinds, np.float64)
    lut = np.zeros((_NLAB, 3), np.float32)
    lut[_SKIN] = _colour(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], rng, 0.03)
    lut[_HAIR] = _colour(_HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], rng, 0.03)
    lut[_UP : _UP + 3] = upper.colours
    lut[_LOW : _LOW + 3] = lower.colours
    lut[_SHOE] = _colour(((30, 30, 30), (240, 240, 240), (110, 70, 40), (180, 40, 40))[rng.integers(4)], rng, 0.04)
    pal = style.palette
    for lab in (_BACKPACK, _SBAG, _HBAG, _HAT, _LOGO):
        lut[lab] = _colour(pal[rng.integers(len(pal))], rng, 0.05)
    return _Identity(
        height=float(rng.uniform(0.86, 0.96)),
        waist=float(rng.uniform(0.47, 0.53)),
        build=float(rng.uniform(0.8, 1.25)),
        head=float(rng.uniform(0.9, 1.1)),
        gait=float(rng.uniform(0.03, 0.09)),
        hair_long=bool(rng.random() < 0.35),
        long_sleeves=bool(rng.random() < style.long_sleeves),
        lower_kind=int(rng.choice(3, p=kw / kw.sum())),
        upper=upper,
        lower=lower,
        backpack=bool(rng.random() < style.backpack),
        shoulder_bag=int(rng.choice((-1, 1))) if rng.random() < style.shoulder_bag else 0,
        handbag=int(rng.choice((-1, 1))) if rng.random() < style.handbag else 0,
        hat=bool(rng.random() < style.hat),
        logo=int(rng.integers(1, 4)) if rng.random() < style.logo else 0,
        lut=lut,
    )


def _pattern(g: _Garment, u: np.ndarray, v: np.ndarray) -> np.ndarray | int:
    """Colour index (0..2) of a garment at body coordinates; patterns move with the body."""
    if g.pattern == 0:
        return 0
    if g.pattern == 1:  # horizontal stripes
        return ((u * g.freq + g.phase) % 1.0 < 0.5).astype(np.uint8)
    cu = np.floor(u * g.freq + g.phase).astype(np.int64)
    cv = np.floor(v * g.freq + 64.0).astype(np.int64)
    if g.pattern == 2:  # checks
        return ((cu + cv) % 2).astype(np.uint8)
    # print: a 4x4 tile of three colours at twice the frequency
    cu = np.floor(u * g.freq * 2.0).astype(np.int64) % 4
    cv = np.floor(v * g.freq * 2.0 + 64.0).astype(np.int64) % 4
    return g.tile[cu, cv].astype(np.uint8)


class _Canvas:
    """A part-label map in body coordinates; each shape touches only its bounding block (speed)."""

    def __init__(self, h: int, w: int, top: float, cx: float, hb: float, facing: int) -> None:
        self.u1 = (np.arange(h, dtype=np.float32) + 0.5 - top) / hb  # 0 at the top of the head, 1 at the soles
        self.u = self.u1[:, None]
        self.v = ((np.arange(w, dtype=np.float32) + 0.5 - cx) / hb * facing)[None, :]  # + is the facing side
        self.lab = np.zeros((h, w), np.uint8)
        self.h, self.w, self.top, self.cx, self.hb, self.facing = h, w, top, cx, hb, facing

    def block(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice]:
        """Rows with u0 <= u < u1 and columns with v0 <= v < v1 (up to rounding at the edges)."""
        hb, h, w = self.hb, self.h, self.w
        r0 = min(max(math.ceil(u0 * hb + self.top - 0.5), 0), h)
        r1 = min(max(math.ceil(u1 * hb + self.top - 0.5), r0), h)
        if self.facing > 0:
            c0, c1 = math.ceil(v0 * hb + self.cx - 0.5), math.ceil(v1 * hb + self.cx - 0.5)
        else:
            c0, c1 = math.floor(self.cx - 0.5 - v1 * hb) + 1, math.floor(self.cx - 0.5 - v0 * hb) + 1
        c0 = min(max(c0, 0), w)
        return slice(r0, r1), slice(c0, min(max(c1, c0), w))

    def paint(self, rs: slice, cs: slice, mask: np.ndarray | None, value: np.ndarray | int) -> None:
        """Set the labels of a block (where mask, if given); value is a label or a per-pixel label map."""
        if isinstance(value, np.ndarray):
            value = value[rs] if value.shape[1] == 1 else value[rs, cs]
        target = self.lab[rs, cs]
        if mask is None:
            target[...] = value
        elif isinstance(value, np.ndarray):
            target[mask] = np.broadcast_to(value, mask.shape)[mask]
        else:
            target[mask] = value

    def box(self, u0: float, u1: float, v0: float, v1: float, value: np.ndarray | int) -> None:
        rs, cs = self.block(u0, u1, v0, v1)
        self.paint(rs, cs, None, value)

    def ellipse(
        self,
        cu: float,
        cv: float,
        ru: float,
        rv: float,
        value: np.ndarray | int,
        below: float = 9.0,
        left_of: float = 9.0,
    ) -> None:
        """Ellipse centred at (cu, cv), optionally only the part with u < below and v < left_of."""
        rs, cs = self.block(cu - ru, min(cu + ru, below), cv - rv, min(cv + rv, left_of))
        if rs.start < rs.stop and cs.start < cs.stop:
            u, v = self.u[rs], self.v[:, cs]
            self.paint(rs, cs, ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 < 1.0, value)

    def trapezoid(self, u0: float, u1: float, hw0: float, hw1: float, value: np.ndarray | int) -> None:
        """Symmetric about v=0, half-width going linearly from hw0 at u0 to hw1 at u1."""
        m = max(hw0, hw1)
        rs, cs = self.block(u0, u1, -m, m)
        hw = hw0 + (hw1 - hw0) * (self.u[rs] - u0) / (u1 - u0)
        self.paint(rs, cs, np.abs(self.v[:, cs]) < hw, value)

    def capsule(
        self,
        a: tuple[float, float],
        b: tuple[float, float],
        r: float,
        inner: np.ndarray | int,
        outer: np.ndarray | int,
        cut: float = 2.0,
    ) -> None:
        """A limb from a to b of radius r: inner value up to fraction cut of its length, outer beyond."""
        rs, cs = self.block(min(a[0], b[0]) - r, max(a[0], b[0]) + r, min(a[1], b[1]) - r, max(a[1], b[1]) + r)
        if rs.start == rs.stop or cs.start == cs.stop:
            return
        du, dv = b[0] - a[0], b[1] - a[1]
        pu, pv = self.u[rs] - a[0], self.v[:, cs] - a[1]
        t = np.clip((pu * du + pv * dv) / (du * du + dv * dv + 1e-9), 0.0, 1.0)
        m = (pu - t * du) ** 2 + (pv - t * dv) ** 2 < r * r
        if cut >= 1.0:
            self.paint(rs, cs, m, inner)
        else:
            self.paint(rs, cs, m & (t < cut), inner)
            self.paint(rs, cs, m & (t >= cut), outer)


# long: one painter's-order list of body parts, read top to bottom like the figure it draws.
def _render_person(
    ident: _Identity, h: int, w: int, top: float, cx: float, hb: float, view: int, facing: int, stride: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint one person into a part-label map (painter's order); returns (labels, row shade, column shade)."""
    c = _Canvas(h, w, top, cx, hb, facing)
    u, v = c.u, c.v
    side = view == 2
    b = ident.build
    rh, rw = 0.062 * ident.head, 0.046 * ident.head  # head radii
    uh = rh  # head centre
    us = 2 * rh + 0.018  # shoulders
    uw = ident.waist
    sw = 0.112 * b * (0.6 if side else 1.0)  # shoulder half-width
    ww = 0.088 * b * (0.65 if side else 1.0)  # waist half-width
    ua, rl = 0.024 * b, 0.036 * b  # arm and leg radii
    up = _UP + _pattern(ident.upper, u, v)
    low = _LOW + _pattern(ident.lower, u, v)

    if ident.hair_long and view != 1:  # long hair behind the shoulders, seen from front / side
        c.box(uh, us + 0.07, -rw * 1.15, rw * (0.3 if side else 1.15), _HAIR)

    # legs: side view strides forward/back, front/back views lift one foot a little
    hip = 0.045 * b * (0.4 if side else 1.0)
    if side:
        feet = ((0.96, stride * 1.6), (0.96, -stride * 1.6))
    else:
        feet = ((0.96 - max(stride, 0) * 0.4, -0.05 * b), (0.96 + min(stride, 0) * 0.4, 0.05 * b))
    cut = (1.5, 0.42, 0.0)[ident.lower_kind]  # trousers, shorts, bare legs under a skirt
    for k, (fu, fv) in enumerate(feet):
        c.capsule((uw + 0.04, -hip if k == 0 else hip), (fu - 0.02, fv), rl, low, _SKIN, cut)
        c.ellipse(fu - 0.005, fv + (0.02 if side else 0.0), 0.022, 0.04 if side else 0.03, _SHOE)
    if ident.lower_kind != 2:  # pelvis
        c.box(uw - 0.01, uw + 0.08, -ww - 0.005, ww + 0.005, low)
    else:  # skirt: a trapezoid flaring out to the knees
        c.trapezoid(uw - 0.01, uw + 0.22, ww - 0.006, ww + 0.132, low)

    arm_swing = -stride * 1.2
    hand_u = uw + 0.03 - abs(arm_swing) * 0.5
    sleeve = 1.5 if ident.long_sleeves else 0.4
    if side:  # the far arm, behind the body
        c.capsule((us + 0.02, 0.0), (hand_u, -arm_swing), ua, up, _SKIN, sleeve)
    if ident.backpack and side:
        c.box(us + 0.02, us + 0.24, -sw - 0.07, -sw + 0.01, _BACKPACK)
    # torso: trapezoid from shoulders to waist, rounded shoulders
    c.trapezoid(us, uw + 0.01, sw, ww + (ww - sw) * 0.01 / (uw - us), up)
    c.ellipse(us + 0.03, 0.0, 0.035, sw, up)
    # arms
    if side:
        arms: tuple = (((us + 0.02, 0.0), (hand_u, arm_swing)),)
    else:
        dv = 0.01 + abs(arm_swing) * 0.15
        arms = (((us + 0.025, -sw + 0.01), (hand_u, -sw - dv)), ((us + 0.025, sw - 0.01), (hand_u, sw + dv)))
    for a, e in arms:
        c.capsule(a, e, ua, up, _SKIN, sleeve)
        c.ellipse(e[0] + 0.01, e[1], 0.018, 0.016, _SKIN)
    # backpack: the bag from behind, straps from the front
    if ident.backpack and view == 1:
        c.box(us + 0.015, us + 0.25, -sw * 0.72, sw * 0.72, _BACKPACK)
    elif ident.backpack and view == 0:
        for sv in (-sw * 0.55, sw * 0.55):
            c.box(us - 0.005, us + 0.17, sv - 0.012, sv + 0.012, _BACKPACK)
    # front logo, only visible from the front
    if ident.logo and view == 0:
        lc = us + 0.1
        if ident.logo == 1:
            c.box(lc - 0.04, lc + 0.04, -0.04, 0.04, _LOGO)
        elif ident.logo == 2:
            c.ellipse(lc, 0.0, 0.045, 0.045, _LOGO)
        else:
            c.box(lc - 0.015, lc + 0.015, -sw * 0.9, sw * 0.9, _LOGO)
    # shoulder bag: strap across the chest or back, bag at the hip
    if ident.shoulder_bag:
        s = ident.shoulder_bag * (-1 if view == 1 else 1)
        if not side:
            c.capsule((us, -s * sw * 0.7), (uw - 0.04, s * sw * 0.9), 0.01, _SBAG, _SBAG)
            c.box(uw - 0.07, uw + 0.05, s * sw * 0.75 - 0.04, s * sw * 0.75 + 0.05, _SBAG)
        else:
            c.box(uw - 0.07, uw + 0.05, -0.05, 0.05, _SBAG)
    # neck and head: face from the front, hair from behind, half and half from the side
    c.box(2 * rh - 0.01, us + 0.01, -rw * 0.45, rw * 0.45, _SKIN)
    hv = 0.02 if side else 0.0
    c.ellipse(uh, hv, rh, rw, _HAIR if view == 1 else _SKIN)
    if view == 0:
        c.ellipse(uh, hv, rh, rw, _HAIR, below=uh - rh * 0.45)
    elif side:
        c.ellipse(uh, hv, rh, rw, _HAIR, below=uh - rh * 0.45)
        c.ellipse(uh, hv, rh, rw, _HAIR, left_of=-rw * 0.2)
    if ident.hair_long and view == 1:
        c.box(uh, us + 0.09, -rw * 1.1, rw * 1.1, _HAIR)
    if ident.hat:
        c.ellipse(uh, hv, rh, rw, _HAT, below=uh - rh * 0.25)
        c.box(uh - rh * 0.4, uh - rh * 0.2, -rw * 1.25, rw * (1.6 if side else 1.25), _HAT)
    # handbag hanging from one hand
    if ident.handbag:
        e = arms[0][1] if side or ident.handbag < 0 else arms[-1][1]
        c.box(e[0] + 0.01, e[0] + 0.1, e[1] - 0.035, e[1] + 0.035, _HBAG)
    # soft cylinder shading across the body and a little darker towards the feet (separable)
    shade_v = 1.08 - 0.5 * np.minimum((v[0] / (sw * 1.6)) ** 2, 0.6)
    shade_u = 1.0 - 0.12 * np.clip(c.u1, 0.0, 1.0)
    return c.lab, shade_u, shade_v


def _noise_field(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Smooth random field in -0.5..0.5 (bilinear upsampling of a coarse grid)."""
    small = (rng.random(cells) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(big, np.float32) / 255.0 - 0.5


def _scene(style: SceneStyle, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A camera's background panorama (walls, clutter, ground); images crop windows from it."""
    sh, sw = int(h * 1.3), w * 5
    img = np.empty((sh, sw, 3), np.float32)
    hz = int(sh * rng.uniform(*style.horizon))
    wall = _colour(style.walls[rng.integers(len(style.walls))], rng, 0.04)
    ground = _colour(style.grounds[rng.integers(len(style.grounds))], rng, 0.04)
    img[:hz] = wall
    img[hz:] = ground
    # building blocks, windows, signs and foliage above the horizon
    for _ in range(int(rng.integers(8, 16))):
        bw, bh = int(rng.uniform(0.1, 0.6) * w), int(rng.uniform(0.05, 0.5) * hz)
        x0, y0 = int(rng.integers(0, sw - bw)), int(rng.integers(0, max(1, hz - bh)))
        c = _colour(style.clutter[rng.integers(len(style.clutter))], rng, 0.05)
        img[y0 : y0 + bh, x0 : x0 + bw] = c
    # ground tiles / pavement lines get denser towards the horizon
    yy = np.arange(sh - hz, dtype=np.float32)
    lines = (np.sin(np.sqrt(yy + 4.0) * 6.0) > 0.6).astype(np.float32) * style.stripes
    img[hz:] *= (1.0 - lines)[:, None, None]
    xs = (np.sin(np.arange(sw, dtype=np.float32) * rng.uniform(0.15, 0.35)) > 0.85).astype(np.float32)
    img[hz:] *= (1.0 - xs * style.stripes * 0.7)[None, :, None]
    tex = _noise_field(rng, sh, sw, (max(2, sh // 10), max(2, sw // 10)))
    img *= (1.0 + style.texture * tex)[:, :, None]
    img *= (1.0 + 0.08 * _noise_field(rng, sh, sw, (sh // 3, sw // 3)))[:, :, None]
    return np.clip(img, 0.0, 1.0)


def _composite(img: np.ndarray, ident: _Identity, rendered: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Write a rendered person's shaded colours over img where its label map is not background."""
    lab, shade_u, shade_v = rendered
    ys, xs = np.nonzero(lab)
    img[ys, xs] = ident.lut[lab[ys, xs]] * (shade_u[ys] * shade_v[xs])[:, None]


@dataclass
class _Job:
    split: int  # index into SPLITS
    pid: int  # -1 junk, 0 distractor, else identity
    cam: int  # 0-based
    frame: int
    ident: _Identity | None
    kind: str  # "person", "distractor" or "junk"


class _Renderer:
    """Renders and saves images of one domain; holds the per-camera scenes and the passer-by pool."""

    def __init__(self, style: DomainStyle, h: int, w: int, rng: np.random.Generator) -> None:
        self.style, self.h, self.w = style, h, w
        # scenes depend on the domain only, so a camera looks the same whatever the seed
        srng = np.random.default_rng([zlib.crc32(style.name.encode()), 7919])
        self.scenes = [_scene(style.scene, srng, h, w) for _ in style.cameras]
        self.passers = [_identity(style, rng) for _ in range(16)]
        # a bank of sensor noise; each image takes a random window of it (cheaper than fresh noise)
        self.noise = srng.standard_normal((2 * h, 2 * w, 3), dtype=np.float32)

    def background(self, cam: int, rng: np.random.Generator) -> np.ndarray:
        sc = self.scenes[cam]
        y0 = int(rng.integers(0, sc.shape[0] - self.h + 1))
        x0 = int(rng.integers(0, sc.shape[1] - self.w + 1))
        return sc[y0 : y0 + self.h, x0 : x0 + self.w] * np.float32(rng.uniform(0.9, 1.1))

    def person(self, img: np.ndarray, ident: _Identity, cam: int, rng: np.random.Generator, framing: float) -> None:
        """Composite one person over img with a camera-dependent view, random pose and detection jitter."""
        h, w = self.h, self.w
        views = np.asarray(self.style.cameras[cam].views, np.float64)
        view = int(rng.choice(3, p=views / views.sum()))
        facing = int(rng.choice((-1, 1)))
        scale = rng.uniform(0.92, 1.08) * framing
        if rng.random() < 0.1:  # a tight or truncated detection
            scale *= rng.uniform(1.1, 1.3)
        hb = h * ident.height * scale
        top = (h - hb) / 2 + rng.uniform(-0.05, 0.05) * h
        cx = w / 2 + rng.uniform(-0.08, 0.08) * w * framing
        stride = float(rng.uniform(-1, 1) * ident.gait)
        _composite(img, ident, _render_person(ident, h, w, top, cx, hb, view, facing, stride))

    def occlude(self, img: np.ndarray, cam: int, rng: np.random.Generator) -> None:
        """A passer-by fragment, a pole/wall edge or a low obstacle in front of the person."""
        h, w = self.h, self.w
        kind = int(rng.integers(3))
        if kind == 0:
            other = self.passers[int(rng.integers(len(self.passers)))]
            view = int(rng.integers(3))
            hb = h * other.height * rng.uniform(0.95, 1.1)
            cx = w / 2 + rng.choice((-1, 1)) * rng.uniform(0.45, 0.75) * w
            facing = int(rng.choice((-1, 1)))
            _composite(img, other, _render_person(other, h, w, (h - hb) / 2, cx, hb, view, facing, 0.0))
            return
        c = _colour(self.style.scene.clutter[rng.integers(len(self.style.scene.clutter))], rng, 0.08)
        tex = 1.0 + 0.3 * _noise_field(rng, h, w, (4, 2))[:, :, None]
        if kind == 1:  # pole or wall edge from one side
            ow = int(rng.uniform(0.12, 0.3) * w)
            sl = slice(0, ow) if rng.random() < 0.5 else slice(w - ow, w)
            img[:, sl] = c * tex[:, sl]
        else:  # bench, car or railing from the bottom
            oh = int(rng.uniform(0.15, 0.35) * h)
            img[h - oh :] = c * tex[h - oh :]

    def render(self, job: _Job, rng: np.random.Generator) -> Image.Image:
        img = self.background(job.cam, rng)
        if job.kind == "junk":  # a bad detection: background only or a tiny/huge fragment of someone
            if rng.random() < 0.5:
                ident = self.passers[int(rng.integers(len(self.passers)))]
                self.person(img, ident, job.cam, rng, framing=float(rng.choice((0.45, 2.4))))
        else:
            assert job.ident is not None
            framing = 1.0 if job.kind == "person" else float(rng.uniform(0.85, 1.25))
            self.person(img, job.ident, job.cam, rng, framing)
            if rng.random() < self.style.occlusion:
                self.occlude(img, job.cam, rng)
        return self.camera(img, job.cam, rng)

    def camera(self, img: np.ndarray, cam: int, rng: np.random.Generator) -> Image.Image:
        """Camera pipeline: exposure, colour cast, saturation, contrast, noise, then blur at low resolution."""
        cs = self.style.cameras[cam]
        # gain, cast, saturation and contrast are linear in RGB: fold them into one 3x3 matrix and offset
        sat = np.float32(cs.saturation)
        mix = np.full((3, 3), (1.0 - sat) / 3.0, np.float32) + np.eye(3, dtype=np.float32) * sat
        gain = np.float32(cs.gain * rng.uniform(0.88, 1.12) * cs.contrast * 255.0)
        mat = mix * (np.asarray(cs.cast, np.float32) * gain)[None, :]
        off = np.float32((0.5 - 0.5 * cs.contrast) * 255.0)
        ny, nx = int(rng.integers(0, self.h)), int(rng.integers(0, self.w))
        noise = self.noise[ny : ny + self.h, nx : nx + self.w] * np.float32(cs.noise)
        out = img @ mat
        out += noise
        out += off
        pil = Image.fromarray(np.clip(out, 0, 255, out=out).astype(np.uint8))
        r = cs.resolution
        if r < 1.0:
            pil = pil.resize(
                (max(4, round(self.w * r)), max(8, round(self.h * r))), Image.Resampling.BOX
            )  # sensor area
        if cs.blur > 0:
            pil = pil.filter(ImageFilter.BoxBlur(cs.blur * r * self.h / 128))
        if r < 1.0:
            pil = pil.resize((self.w, self.h), Image.Resampling.BILINEAR)
        return pil


def _params(**kw: object) -> dict:
    return {"generator_version": GENERATOR_VERSION, **kw}


def _check(
    domain: str, num_train_ids: int, num_test_ids: int, ipc: int, nd: int, h: int, w: int, q: int, qpi: int = 1
) -> None:
    if domain not in DOMAINS:
        raise UserError(f"unknown synthetic domain {domain!r}; known domains: {', '.join(sorted(DOMAINS))}")
    if num_train_ids < 1 or num_test_ids < 1 or num_train_ids + num_test_ids > 9999:
        raise UserError("synthetic data needs num_train_ids >= 1, num_test_ids >= 1 and at most 9999 in total")
    if ipc < 1 or nd < 0:
        raise UserError("synthetic data needs images_per_id_per_cam >= 1 and num_distractors >= 0")
    if h < 32 or w < 16:
        raise UserError(f"synthetic image size {h}x{w} is too small; use height >= 32 and width >= 16")
    if qpi < 1:
        raise UserError("synthetic data needs queries_per_id >= 1")
    if not 1 <= q <= 100:
        raise UserError(f"jpeg_quality {q} is out of range; use 1..100")


def _plan(
    style: DomainStyle, rng: np.random.Generator, n_train: int, n_test: int, ipc: int, nd: int, qpi: int = 1
) -> list[_Job]:
    """Decide every image (split, pid, camera, frame) before rendering any of them."""
    ncam = len(style.cameras)
    pids = rng.permutation(np.arange(1, n_train + n_test + 1))
    frames = rng.integers(1, 400, size=ncam)
    total = (n_train + n_test) * ncam * ipc + n_test * min(qpi, ncam) + nd + max(2, n_test // 10)
    step = max(2, min(120, 999_000 // total))  # frame numbers must stay within 6 digits
    jobs: list[_Job] = []

    def add(split: int, pid: int, cam: int, ident: _Identity | None, kind: str) -> None:
        frames[cam] += rng.integers(1, step)
        jobs.append(_Job(split, pid, cam, int(frames[cam]), ident, kind))

    for i, pid in enumerate(pids):
        ident = _identity(style, rng)
        cams = rng.permutation(ncam)[: int(rng.integers(2, ncam + 1))]  # seen by at least two cameras
        if i < n_train:
            for cam in cams:
                for _ in range(ipc):
                    add(0, int(pid), int(cam), ident, "person")
        elif qpi == 1:
            add(1, int(pid), int(cams[0]), ident, "person")  # one query in one camera
            for cam in cams[1:]:
                for _ in range(ipc):
                    add(2, int(pid), int(cam), ident, "person")
            if rng.random() < 0.3:  # same-camera gallery image, ignored by the protocol
                add(2, int(pid), int(cams[0]), ident, "person")
        else:  # Market-1501's way: a query in each of (up to qpi of) its cameras, gallery images in all of them
            for cam in cams[:qpi]:
                add(1, int(pid), int(cam), ident, "person")
            for cam in cams:
                for _ in range(ipc):
                    add(2, int(pid), int(cam), ident, "person")
    for _ in range(nd):  # distractors: other people, often badly framed
        add(2, 0, int(rng.integers(ncam)), _identity(style, rng), "distractor")
    for _ in range(max(2, n_test // 10)):  # junk: background or fragments, pid -1
        add(2, -1, int(rng.integers(ncam)), None, "junk")
    return jobs


def _name(job: _Job) -> str:
    pid = "-1" if job.pid < 0 else f"{job.pid:04d}"
    return f"{pid}_c{job.cam + 1}s1_{job.frame:06d}_00.jpg"


# long: the dataset's layout (splits, cameras, queries, distractors, junk) in one place, in the order it is written.
def generate(
    out_dir: str | Path,
    domain: str = "A",
    seed: int = 0,
    num_train_ids: int = 100,
    num_test_ids: int = 100,
    images_per_id_per_cam: int = 2,
    num_distractors: int = 50,
    height: int = 128,
    width: int = 64,
    jpeg_quality: int = 90,
    queries_per_id: int = 1,
) -> Path:
    """Write a synthetic re-ID dataset of one domain in the Market-1501 layout under out_dir.

    Each test identity gives one query, in one of its cameras; ``queries_per_id`` > 1 gives one in each of up
    to that many of its cameras, as Market-1501 does (more queries for the same gallery: a benchmark can
    resolve small differences without a gallery so large that every model is at the floor).
    Deterministic by its arguments (byte-identical files). Returns at once if the DONE marker holds the
    same parameters; otherwise the split folders are cleared and regenerated, and DONE is written last.
    Refuses (UserError) to clear split folders it did not write, e.g. a real Market-1501 copy.
    """
    domain = domain.upper() if isinstance(domain, str) and domain.upper() in DOMAINS else domain
    _check(
        domain,
        num_train_ids,
        num_test_ids,
        images_per_id_per_cam,
        num_distractors,
        height,
        width,
        jpeg_quality,
        queries_per_id,
    )
    out = Path(out_dir)
    params = _params(
        domain=domain,
        seed=int(seed),
        num_train_ids=num_train_ids,
        num_test_ids=num_test_ids,
        images_per_id_per_cam=images_per_id_per_cam,
        num_distractors=num_distractors,
        height=height,
        width=width,
        jpeg_quality=jpeg_quality,
        # only when not the default: folders generated before the option existed stay valid
        **({"queries_per_id": queries_per_id} if queries_per_id != 1 else {}),
    )
    marker, partial = out / MARKER, out / PARTIAL
    writable_folder(out, "synthetic data path", "choose another data root (data.root, or data synth --out)")
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("params") == params:
                return out
        except (ValueError, AttributeError):
            pass  # a damaged marker means a damaged folder: regenerate
    elif not partial.is_file() and any(any((out / split).glob("*")) for split in SPLITS if (out / split).is_dir()):
        raise UserError(
            f"{out} holds re-ID images the synthetic generator did not write (no {MARKER} marker); "
            "choose an empty folder for synthetic data"
        )
    # claim the folder first, so an interrupted run is recognised as ours and regenerated next time
    out.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"params": params}, sort_keys=True))
    marker.unlink(missing_ok=True)
    for split in SPLITS:
        if (out / split).exists():
            shutil.rmtree(out / split)
        (out / split).mkdir()

    style = DOMAINS[domain]
    rng = np.random.default_rng([int(seed) % (1 << 64), zlib.crc32(domain.encode())])
    jobs = _plan(style, rng, num_train_ids, num_test_ids, images_per_id_per_cam, num_distractors, queries_per_id)
    renderer = _Renderer(style, height, width, rng)
    counts = dict.fromkeys(SPLITS, 0)
    for job in jobs:
        pil = renderer.render(job, rng)
        pil.save(out / SPLITS[job.split] / _name(job), "JPEG", quality=jpeg_quality)
        counts[SPLITS[job.split]] += 1

    tmp = out / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"params": params, "counts": counts}, indent=1, sort_keys=True))
    os.replace(tmp, marker)
    partial.unlink()
    return out
