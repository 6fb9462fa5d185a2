"""Procedural street scenes with exact CamVid-11 labels.

Nothing can be downloaded where this project is built and tested, yet the demo, the tests and
the shipped weights all need driving images with ground truth. This module renders them from a
tiny pinhole-camera world: a flat street with a vanishing point, facades along both sides,
cars, people, cyclists, poles, signs, fences and trees, placed in metres and projected into the
image, so sizes shrink with depth and everything lines up the way a dash camera sees it.

Every pixel is drawn once per layer with one boolean mask that writes both the colour and the
label, so labels match the drawn pixels exactly. Only numpy and Pillow are used (vectorised,
no per-pixel Python loops): a 360x480 scene takes a few milliseconds.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from jetseg_core.palettes import CAMVID11

__all__ = ['SyntheticScenes', 'generate_scene', 'scene_seed']

# CamVid-11 ids (SegNet order), looked up once so that the drawing code reads by name.
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = (
    CAMVID11.index(n) for n in ('Sky', 'Building', 'Pole', 'Road', 'Pavement', 'Tree', 'SignSymbol',
                                'Fence', 'Car', 'Pedestrian', 'Bicyclist'))

_FACADE_COLOURS = np.array([
    [150, 80, 60], [170, 100, 75], [190, 170, 140], [200, 190, 170], [120, 115, 110],
    [160, 150, 135], [210, 205, 195], [110, 85, 70], [175, 130, 95], [140, 140, 150],
], dtype=np.float32)
_CAR_COLOURS = np.array([
    [170, 20, 25], [25, 45, 120], [225, 225, 225], [25, 25, 28], [150, 152, 158], [95, 98, 104],
    [210, 180, 40], [30, 90, 50], [120, 20, 40], [60, 110, 170],
], dtype=np.float32)
_CLOTHES = np.array([
    [30, 30, 35], [40, 50, 90], [150, 30, 30], [200, 200, 195], [90, 90, 95], [60, 80, 50],
    [180, 140, 60], [110, 70, 40], [20, 60, 120], [200, 110, 140],
], dtype=np.float32)
_SKIN = np.array([[230, 190, 160], [200, 150, 110], [150, 100, 70], [100, 65, 45]], dtype=np.float32)


@dataclass
class _Camera:
    """Pinhole camera over a flat road: X right, Y up, Z forward, metres."""

    width: int
    height: int
    f: float  # focal length in pixels
    cam_h: float  # camera height above the road
    xv: float  # vanishing point column
    yh: float  # horizon row

    def project(self, x: np.ndarray | float, y: np.ndarray | float, z: np.ndarray | float):
        z = np.maximum(z, 1e-3)
        return self.xv + self.f * np.asarray(x) / z, self.yh + self.f * (self.cam_h - np.asarray(y)) / z


Box = tuple[int, int, int, int]  # rows y0:y1, columns x0:x1


class _Canvas:
    """Planar float image (3, H, W) and label plane, written together through shared masks.

    Planar channels keep every numpy operation on long contiguous rows, which is what makes
    the generator fast; `rgb()` interleaves once at the end.
    """

    def __init__(self, height: int, width: int, rng: np.random.Generator):
        self.img = np.zeros((3, height, width), np.float32)
        self.lab = np.zeros((height, width), np.uint8)
        self.full: Box = (0, height, 0, width)
        fine = rng.random((height, width), dtype=np.float32)
        coarse = _upsample(rng.standard_normal((height // 12 + 2, width // 12 + 2), dtype=np.float32),
                           height, width)
        fine -= 0.5
        fine *= 1.5
        fine += coarse * 0.8
        self.texture = fine  # shared grain (about zero mean, unit spread), sliced by every layer

    def fill(self, mask: np.ndarray, colour, cls: int | None, grain: float = 0.05,
             box: Box | None = None) -> None:
        """Paint `colour` (3 scalars or 3 arrays broadcastable to the box) with grain.

        The painted pixels are labelled `cls`.
        """
        y0, y1, x0, x1 = box or self.full
        shade = self.texture[y0:y1, x0:x1] * np.float32(grain)
        shade += 1.0
        for c in range(3):
            np.copyto(self.img[c, y0:y1, x0:x1], shade * colour[c], where=mask, casting='unsafe')
        if cls is not None:
            np.copyto(self.lab[y0:y1, x0:x1], cls, where=mask, casting='unsafe')

    def scale(self, factor: np.ndarray, box: Box | None = None) -> None:
        """Multiply the image by a per-pixel factor (shadows, joints, seams); labels keep."""
        y0, y1, x0, x1 = box or self.full
        self.img[:, y0:y1, x0:x1] *= factor

    def darken(self, mask: np.ndarray, factor: float, box: Box | None = None) -> None:
        self.scale(np.where(mask, np.float32(factor), np.float32(1.0)), box)

    def rgb(self) -> np.ndarray:
        np.clip(self.img, 0, 255, out=self.img)
        return np.ascontiguousarray(self.img.transpose(1, 2, 0)).astype(np.uint8)


def _upsample(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a small noise grid (smooth, low-frequency texture)."""
    image = Image.fromarray(small.astype(np.float32), mode='F')
    return np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)


# --------------------------------------------------------------------------- scene layout


@dataclass
class _Street:
    road_left: float  # X of the road's left kerb (negative)
    road_right: float
    lanes: list[float]  # X of lane centres
    walk_left: float  # width of the pavements
    walk_right: float
    build_left: float | None  # X distance of the facades (None: open side)
    build_right: float | None
    z_end: float  # depth where the street ends in a distant skyline


def _layout(rng: np.random.Generator) -> _Street:
    n_lanes = int(rng.integers(2, 5))
    lane_w = rng.uniform(3.0, 3.7)
    ego_lane = int(rng.integers(0, n_lanes))
    road_left = -(ego_lane + rng.uniform(0.3, 0.7)) * lane_w
    road_right = road_left + n_lanes * lane_w
    lanes = [road_left + (i + 0.5) * lane_w for i in range(n_lanes)]
    walk_left, walk_right = rng.uniform(1.5, 5.0, size=2)
    build = []
    for _ in range(2):
        build.append(None if rng.random() < 0.15 else rng.uniform(0.0, 4.0))
    return _Street(road_left, road_right, lanes, walk_left, walk_right,
                   None if build[0] is None else road_left - walk_left - build[0],
                   None if build[1] is None else road_right + walk_right + build[1],
                   rng.uniform(70.0, 220.0))


def _sky(canvas: _Canvas, cam: _Camera, rng: np.random.Generator) -> None:
    h = canvas.lab.shape[0]
    overcast = rng.random() < 0.3
    top = np.array([200, 200, 205] if overcast else [rng.uniform(60, 110), rng.uniform(120, 160),
                                                      rng.uniform(190, 235)], np.float32)
    low = np.array([225, 225, 228] if overcast else [rng.uniform(185, 215), rng.uniform(205, 225),
                                                      rng.uniform(225, 245)], np.float32)
    rows = int(np.clip(np.floor(cam.yh) + 1, 0, h))  # the ground covers everything below
    t = np.clip(np.arange(rows, dtype=np.float32) / max(cam.yh, 1.0), 0, 1)[:, None]
    clouds = canvas.texture[:rows] * np.float32(0.25)
    clouds += rng.uniform(-0.2, 0.3)
    np.clip(clouds, 0, 1, out=clouds)
    clouds *= 0.6
    keep = 1.0 - clouds
    for c in range(3):
        plane = canvas.img[c, :rows]
        plane[:] = (top[c] * (1 - t) + low[c] * t) * keep
        plane += 235.0 * clouds
    canvas.lab[:rows] = SKY


def _ground(canvas: _Canvas, cam: _Camera, street: _Street, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, int]:
    """Road, lane markings, pavements and verges; returns per-pixel ground (X, Z) for shadows."""
    h, w = canvas.lab.shape
    row0 = int(np.clip(np.floor(cam.yh) + 1, 0, h))
    ys = np.arange(row0, h, dtype=np.float32) + 0.5
    xs = np.arange(w, dtype=np.float32) + 0.5
    inv = (cam.cam_h / np.maximum(ys - cam.yh, 0.5))[:, None]
    gx = (xs[None, :] - cam.xv) * inv  # lateral metres (rows, W)
    gz = cam.f * inv  # depth metres, one per row (rows, 1)
    box = (row0, h, 0, w)

    road = (gx >= street.road_left) & (gx <= street.road_right)
    walk = ((gx >= street.road_left - street.walk_left) & ~road
            & (gx <= street.road_right + street.walk_right))
    verge = ~(road | walk)
    fade = np.clip(1.0 - gz / 60.0, 0.0, 1.0)  # patterns fade out before they alias

    asphalt = np.array([rng.uniform(70, 105)] * 3, np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    canvas.fill(road, asphalt, ROAD, grain=0.05, box=box)
    # Lane markings: dashed between lanes, solid along the kerbs, sometimes a zebra crossing.
    paint = np.zeros_like(road)
    dash_len = rng.uniform(2.0, 4.0)
    for edge in street.lanes[:-1]:
        b = edge + 0.5 * (street.lanes[1] - street.lanes[0])
        paint |= (np.abs(gx - b) < 0.08) & (np.mod(gz, 3 * dash_len) < dash_len)
    for kerb, side in ((street.road_left, 1), (street.road_right, -1)):
        paint |= (np.abs(gx - (kerb + side * 0.3)) < 0.07)
    if rng.random() < 0.3:
        z0 = rng.uniform(8, 25)
        paint |= (gz > z0) & (gz < z0 + 4.0) & (np.mod(gx, 1.0) < 0.5)
    paint &= road & (gz < 90.0)
    alpha = paint * (0.5 + 0.4 * fade)  # markings are paint over asphalt: blend towards white
    region = canvas.img[:, row0:]
    region += (215.0 - region) * alpha

    tile = np.array([rng.uniform(140, 185), rng.uniform(135, 175), rng.uniform(125, 165)], np.float32)
    canvas.fill(walk, tile, PAVEMENT, grain=0.07, box=box)
    joints = walk & ((np.mod(gz, 1.2) < 0.06) | (np.mod(gx, 1.2) < 0.06)) & (gz < 35.0)
    canvas.darken(joints, 0.85, box)
    kerb = walk & ((np.abs(gx - street.road_left) < 0.18) | (np.abs(gx - street.road_right) < 0.18))
    canvas.darken(kerb, 1.2, box)

    grass = rng.random() < 0.5
    if grass:
        canvas.fill(verge, np.array([70, 110, 45], np.float32), TREE, grain=0.18, box=box)
    else:
        canvas.fill(verge, tile * 0.9, PAVEMENT, grain=0.07, box=box)
    return gx, gz, row0


def _skyline(canvas: _Canvas, cam: _Camera, street: _Street, rng: np.random.Generator) -> None:
    """Distant blocks of buildings or trees where the street meets the horizon."""
    h, w = canvas.lab.shape
    z = street.z_end
    ground_row = cam.yh + cam.f * cam.cam_h / z
    x = 0
    while x < w:
        width = int(rng.integers(max(2, w // 30), max(3, w // 8)))
        kind = rng.choice(3, p=[0.55, 0.3, 0.15])
        if kind < 2:
            height_m = rng.uniform(6, 30) if kind == 0 else rng.uniform(5, 12)
            top = cam.yh + cam.f * (cam.cam_h - height_m) / z
            r0, r1 = int(np.clip(np.floor(top), 0, h)), int(np.clip(np.ceil(ground_row), 0, h))
            if r1 > r0:
                mask = np.ones((r1 - r0, min(width, w - x)), bool)
                if kind == 1:  # rounded crowns
                    cols = np.arange(mask.shape[1], dtype=np.float32)
                    bump = (np.sin(cols / max(1.0, mask.shape[1] / rng.uniform(1.5, 4))) ** 2)
                    start = (1 - bump) * 0.4 * (r1 - r0)
                    mask &= np.arange(r1 - r0)[:, None] >= start[None, :]
                colour = (_FACADE_COLOURS[rng.integers(len(_FACADE_COLOURS))] * 0.8 + 40 if kind == 0
                          else np.array([60, 90, 55], np.float32))
                canvas.fill(mask, colour, BUILDING if kind == 0 else TREE, grain=0.05,
                            box=(r0, r1, x, x + mask.shape[1]))
        x += width


def _facades(canvas: _Canvas, cam: _Camera, street: _Street, rng: np.random.Generator,
             sun_side: int) -> None:
    """Building fronts along both kerbs: varied heights, windows, cornices, shops."""
    h, w = canvas.lab.shape
    for side, dist in ((-1, street.build_left), (1, street.build_right)):
        if dist is None:
            continue
        dist = abs(dist)
        # Buildings along the street: depth intervals with their own height, colour and windows.
        edges, z = [], rng.uniform(0.5, 4.0)
        while z < street.z_end:
            edges.append(z)
            z += rng.uniform(6.0, 30.0)
        edges.append(street.z_end)
        n = len(edges) - 1
        heights = rng.uniform(5.0, 32.0, n) * (rng.random(n) > 0.08)  # a few gaps
        colours = _FACADE_COLOURS[rng.integers(0, len(_FACADE_COLOURS), n)]
        colours = colours * rng.uniform(0.85, 1.1, (n, 1)).astype(np.float32)
        win_w, win_pitch = rng.uniform(0.8, 1.6, n), rng.uniform(2.2, 4.0, n)
        floor_h = rng.uniform(2.8, 3.6, n)
        has_win = rng.random(n) < 0.85
        shop = rng.random(n) < 0.4

        if side < 0:
            c0, c1 = 0, int(np.clip(np.floor(cam.xv), 0, w))
        else:
            c0, c1 = int(np.clip(np.ceil(cam.xv), 0, w)), w
        if c1 <= c0:
            continue
        cols = np.arange(c0, c1, dtype=np.float32) + 0.5
        zc = cam.f * dist / np.maximum(np.abs(cols - cam.xv), 1e-3)  # depth of each column
        seg = np.clip(np.searchsorted(edges, zc, side='right') - 1, 0, n - 1)
        valid = (zc >= edges[0]) & (zc < street.z_end)
        top_h = np.where(valid, heights[seg], 0.0)
        if not valid.any():
            continue
        # Rows spanned: from the highest roof down to the facade's ground line.
        tops = cam.yh + cam.f * (cam.cam_h - top_h) / zc
        bottoms = cam.yh + cam.f * cam.cam_h / zc
        r0 = int(np.clip(np.floor(tops[valid].min()), 0, h))
        r1 = int(np.clip(np.ceil(bottoms[valid].max()), 0, h))
        if r1 <= r0:
            continue
        rows = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
        yf = cam.cam_h - (rows - cam.yh) * zc[None, :] / cam.f  # height on the facade
        mask = valid[None, :] & (yf >= 0) & (yf <= top_h[None, :])
        if not mask.any():
            continue
        base = colours[seg].T[:, None, :] * (1.0 if side == sun_side else 0.72)  # (3, 1, cols)
        box = (r0, r1, c0, c1)
        canvas.fill(mask, base, BUILDING, grain=0.06, box=box)
        # Windows and cornices are texture on the same building pixels (label stays Building).
        fz = np.mod(zc, win_pitch[seg]) / win_pitch[seg]
        fy = np.mod(yf, floor_h[seg][None, :]) / floor_h[seg][None, :]
        wfrac = (win_w / win_pitch)[seg]
        ground_floor = np.where(shop[seg], 3.2, 0.9)[None, :]
        window = (mask & has_win[seg][None, :] & (fz < wfrac)[None, :] & (fy > 0.3) & (fy < 0.8)
                  & (yf > ground_floor) & (yf < top_h[None, :] - 0.8))
        cornice = mask & (yf > top_h[None, :] - 0.5)
        shopfront = mask & shop[seg][None, :] & (yf > 0.3) & (yf < 2.6) & ((fz < 0.8)[None, :])
        glass = np.array([55, 65, 80], np.float32) + 40.0 * rng.random(3).astype(np.float32)
        canvas.fill(window, glass, None, grain=0.15, box=box)
        canvas.fill(shopfront, glass * 0.8 + 20, None, grain=0.1, box=box)
        # Cornices and the seams between neighbouring buildings.
        seam = mask & (np.abs(np.diff(seg, prepend=seg[0])) > 0)[None, :]
        canvas.darken(cornice | seam, 0.7, box)


def _fence(canvas: _Canvas, cam: _Camera, street: _Street, rng: np.random.Generator) -> None:
    """A fence stretch along the outer edge of one pavement (everything else stands in front of it)."""
    h, w = canvas.lab.shape
    side = -1 if rng.random() < 0.5 else 1
    dist = abs(street.road_left - street.walk_left if side < 0 else street.road_right + street.walk_right)
    dist = max(dist - 0.1, 0.5)
    z0 = rng.uniform(2.0, 20.0)
    z1 = z0 + rng.uniform(8.0, 60.0)
    height = rng.uniform(0.9, 1.8)
    xa, _ = cam.project(side * dist, 0, z1)
    xb, _ = cam.project(side * dist, 0, z0)
    c0, c1 = sorted((int(np.floor(xa)), int(np.ceil(xb))))
    c0, c1 = max(c0, 0), min(c1, w)
    if c1 <= c0:
        return
    cols = np.arange(c0, c1, dtype=np.float32) + 0.5
    zc = cam.f * dist / np.maximum(np.abs(cols - cam.xv), 1e-3)
    valid = (zc >= z0) & (zc <= z1) & (np.sign(cols - cam.xv) == side)
    if not valid.any():
        return
    tops = cam.yh + cam.f * (cam.cam_h - height) / zc[valid]
    r0 = int(np.clip(np.floor(tops.min()), 0, h))
    r1 = int(np.clip(np.ceil(cam.yh + cam.f * cam.cam_h / zc[valid].min()), 0, h))
    if r1 <= r0:
        return
    rows = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    yf = cam.cam_h - (rows - cam.yh) * zc[None, :] / cam.f
    mask = valid[None, :] & (yf >= 0) & (yf <= height)
    wooden = rng.random() < 0.5
    colour = np.array([120, 85, 55] if wooden else [95, 105, 100], np.float32)
    canvas.fill(mask, colour, FENCE, grain=0.1, box=(r0, r1, c0, c1))
    pitch = rng.uniform(0.15, 0.4) if wooden else rng.uniform(1.5, 2.5)
    stripes = mask & (np.mod(zc, pitch) < pitch * 0.25)[None, :]
    rails = mask & ((np.abs(yf - height * 0.8) < 0.05) | (np.abs(yf - height * 0.25) < 0.05))
    canvas.darken(stripes | rails, 0.65, (r0, r1, c0, c1))


def _shadows(canvas: _Canvas, gx: np.ndarray, gz: np.ndarray, row0: int, street: _Street,
             rng: np.random.Generator, sun_side: int, casters: list[tuple[float, float, float]]) -> None:
    """Darken the ground under buildings' cast shadows and under objects (image only, labels keep)."""
    factor = np.ones(gx.shape, np.float32)
    if rng.random() < 0.6:
        edge = (street.road_left + rng.uniform(-1, 8) if sun_side > 0
                else street.road_right - rng.uniform(-1, 8))
        slope = rng.uniform(-0.08, 0.08)
        line = edge + slope * gz
        in_shadow = gx < line if sun_side > 0 else gx > line
        factor[in_shadow] = rng.uniform(0.5, 0.7)
    for x, z, r in casters:
        near = (np.abs(gz - z) < r * 1.5) & (np.abs(gx - x) < r)
        if near.any():
            factor[near] *= 0.55
    canvas.scale(factor, (row0, canvas.lab.shape[0], 0, canvas.lab.shape[1]))


# --------------------------------------------------------------------------- objects


@dataclass
class _Part:
    kind: str  # 'poly' (world points), 'ellipse' (centre + radii in metres, facing the camera), 'line'
    pts: np.ndarray  # (N, 3) world points; ellipse: [[cx, cy, cz], [rx, ry, 0]]; line: 2 points + width
    colour: np.ndarray
    cls: int
    grain: float = 0.06
    width: float = 0.0  # line width in metres


def _rect(x0: float, y0: float, x1: float, y1: float, z: float) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float32)


def _draw_object(canvas: _Canvas, cam: _Camera, parts: list[_Part]) -> None:
    """Rasterise parts (later parts on top) into a local mask, then paint colours and labels."""
    h, w = canvas.lab.shape
    shapes = []
    for part in parts:
        if part.kind == 'ellipse':
            (cx, cy, cz), (rx, ry, _) = part.pts
            u, v = cam.project(cx, cy, cz)
            s = cam.f / cz
            ru, rv = max(rx * s, 0.5), max(ry * s, 0.5)
            shapes.append(('ellipse', [u - ru, v - rv, u + ru, v + rv]))
        elif part.kind == 'line':
            u, v = cam.project(part.pts[:, 0], part.pts[:, 1], part.pts[:, 2])
            lw = max(1, round(part.width * cam.f / float(part.pts[:, 2].mean())))
            shapes.append(('line', [*zip(u.tolist(), v.tolist(), strict=True)], lw))
        else:
            u, v = cam.project(part.pts[:, 0], part.pts[:, 1], part.pts[:, 2])
            if u.max() - u.min() < 1.0:  # keep thin things (poles) at least one pixel wide
                mid = 0.5 * (u.max() + u.min())
                u = np.where(u <= mid, mid - 0.5, mid + 0.5)
            shapes.append(('poly', [*zip(u.tolist(), v.tolist(), strict=True)]))
    xs = [c for s in shapes for c in (s[1][0::2] if s[0] == 'ellipse' else [p[0] for p in s[1]])]
    ys = [c for s in shapes for c in (s[1][1::2] if s[0] == 'ellipse' else [p[1] for p in s[1]])]
    pad = 2 + max((s[2] for s in shapes if s[0] == 'line'), default=0)
    x0, x1 = int(max(np.floor(min(xs)) - pad, 0)), int(min(np.ceil(max(xs)) + pad, w))
    y0, y1 = int(max(np.floor(min(ys)) - pad, 0)), int(min(np.ceil(max(ys)) + pad, h))
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) > 4 * h * w:
        return
    local = Image.new('L', (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(local)
    for i, (shape, part) in enumerate(zip(shapes, parts, strict=True), start=1):
        value = i if part.cls >= 0 else 0  # cls -1 marks a hole cut into earlier parts
        if shape[0] == 'ellipse':
            a, b, c, d = shape[1]
            draw.ellipse([a - x0, b - y0, max(c - x0, a - x0), max(d - y0, b - y0)], fill=value)
        elif shape[0] == 'line':
            draw.line([(p - x0, q - y0) for p, q in shape[1]], fill=value, width=shape[2])
        else:
            draw.polygon([(p - x0, q - y0) for p, q in shape[1]], fill=value)
    ids = np.asarray(local)
    for i, part in enumerate(parts, start=1):
        if part.cls < 0:
            continue
        mask = ids == i
        if mask.any():
            canvas.fill(mask, part.colour, part.cls, grain=part.grain, box=(y0, y1, x0, x1))


def _car(x: float, z: float, rng: np.random.Generator, facing_away: bool) -> list[_Part]:
    kind = rng.choice(3, p=[0.65, 0.25, 0.10])
    w, hgt, length = [(1.8, 1.45, 4.3), (2.0, 1.9, 4.8), (2.5, 3.2, 10.0)][kind]
    w *= rng.uniform(0.95, 1.05)
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.85, 1.1)
    dark = np.array([25, 25, 28], np.float32)
    glass = np.array([40, 50, 60], np.float32) + rng.uniform(0, 40)
    near = z - length / 2  # face towards the camera
    parts = []
    # Visible side panel (perspective towards the vanishing point) when the car is off-centre.
    sx = x + w / 2 if x < -w / 2 else (x - w / 2 if x > w / 2 else None)
    body_top = hgt * (0.55 if kind < 2 else 0.95)
    if sx is not None:
        far = z + length / 2
        side = np.array([[sx, 0.2, near], [sx, 0.2, far], [sx, body_top, far], [sx, body_top, near]],
                        np.float32)
        parts.append(_Part('poly', side, colour * 0.75, CAR))
        if kind < 2:
            roof = np.array([[sx, body_top, near + 0.9], [sx, body_top, far - 0.6],
                             [sx - np.sign(sx) * 0.2, hgt, far - 1.2],
                             [sx - np.sign(sx) * 0.2, hgt, near + 1.5]], np.float32)
            parts.append(_Part('poly', roof, glass * 0.9, CAR))
        for wz in (near + 0.8, far - 0.8):
            parts.append(_Part('ellipse', np.array([[sx, 0.33, wz], [0.05, 0.33, 0]], np.float32), dark, CAR))
    # Face towards the camera (rear of cars going our way, front of oncoming ones).
    parts.append(_Part('poly', _rect(x - w / 2, 0.2, x + w / 2, body_top, near), colour, CAR))
    for wx in (x - w / 2 + 0.05, x + w / 2 - 0.35):
        parts.append(_Part('poly', _rect(wx, 0.0, wx + 0.3, 0.35, near), dark, CAR))
    if kind < 2:
        cab = np.array([[x - 0.47 * w, body_top, near + 0.3], [x + 0.47 * w, body_top, near + 0.3],
                        [x + 0.38 * w, hgt, near + 0.8], [x - 0.38 * w, hgt, near + 0.8]], np.float32)
        parts.append(_Part('poly', cab, colour * 0.95, CAR))
        win = np.array([[x - 0.42 * w, body_top + 0.06, near + 0.35],
                        [x + 0.42 * w, body_top + 0.06, near + 0.35],
                        [x + 0.35 * w, hgt - 0.08, near + 0.75],
                        [x - 0.35 * w, hgt - 0.08, near + 0.75]], np.float32)
        parts.append(_Part('poly', win, glass, CAR, grain=0.15))
    else:
        parts.append(_Part('poly', _rect(x - 0.45 * w, hgt * 0.6, x + 0.45 * w, hgt * 0.9, near), glass, CAR))
    lamp = np.array([200, 20, 20] if facing_away else [235, 235, 220], np.float32)
    for lx in (x - w / 2 + 0.08, x + w / 2 - 0.33):
        parts.append(_Part('poly', _rect(lx, body_top - 0.25, lx + 0.25, body_top - 0.1, near), lamp, CAR))
    parts.append(_Part('poly', _rect(x - 0.25, 0.35, x + 0.25, 0.47, near),
                       np.array([225, 225, 215], np.float32), CAR))
    parts.append(_Part('poly', _rect(x - w / 2, 0.18, x + w / 2, 0.3, near), dark * 1.5, CAR))
    return parts


def _person(x: float, z: float, rng: np.random.Generator, cls: int = PEDESTRIAN,
            height: float | None = None, base: float = 0.0, walking: bool = True) -> list[_Part]:
    hgt = height or rng.uniform(1.5, 1.9)
    if rng.random() < 0.12 and cls == PEDESTRIAN:
        hgt *= 0.65  # a child
    legs = _CLOTHES[rng.integers(len(_CLOTHES))]
    shirt = _CLOTHES[rng.integers(len(_CLOTHES))]
    skin = _SKIN[rng.integers(len(_SKIN))]
    stride = rng.uniform(-0.15, 0.15) if walking else 0.0
    hip, shoulder = base + 0.47 * hgt, base + 0.82 * hgt
    parts = [
        _Part('poly', np.array([[x - 0.16, hip, z], [x - 0.02, hip, z], [x - 0.04 - stride, base, z],
                                [x - 0.15 - stride, base, z]], np.float32), legs, cls),
        _Part('poly', np.array([[x + 0.02, hip, z], [x + 0.16, hip, z], [x + 0.15 + stride, base, z],
                                [x + 0.04 + stride, base, z]], np.float32), legs * 0.9, cls),
        _Part('poly', np.array([[x - 0.18, hip - 0.05, z], [x + 0.18, hip - 0.05, z], [x + 0.23, shoulder, z],
                                [x - 0.23, shoulder, z]], np.float32), shirt, cls),
        _Part('poly', np.array([[x - 0.3, hip, z], [x - 0.23, hip, z], [x - 0.2, shoulder, z],
                                [x - 0.27, shoulder, z]], np.float32), shirt * 0.85, cls),
        _Part('poly', np.array([[x + 0.23, hip, z], [x + 0.3, hip, z], [x + 0.27, shoulder, z],
                                [x + 0.2, shoulder, z]], np.float32), shirt * 0.85, cls),
        _Part('ellipse', np.array([[x, shoulder + 0.1 * hgt, z], [0.09 * hgt / 1.7, 0.12 * hgt / 1.7, 0]],
                                  np.float32), skin, cls),
    ]
    if rng.random() < 0.6:  # hair / hat
        parts.append(_Part('ellipse', np.array([[x, shoulder + 0.15 * hgt, z],
                                                [0.095 * hgt / 1.7, 0.07 * hgt / 1.7, 0]], np.float32),
                           _CLOTHES[rng.integers(len(_CLOTHES))] * 0.6, cls))
    return parts


def _cyclist(x: float, z: float, rng: np.random.Generator) -> list[_Part]:
    frame = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))]
    tyre = np.array([20, 20, 20], np.float32)
    r, gap = 0.34, 0.55
    d = 1 if rng.random() < 0.5 else -1
    parts = []
    for wx in (x - gap, x + gap):  # two wheels seen from the side: tyre ring with see-through middle
        parts.append(_Part('ellipse', np.array([[wx, r, z], [r, r, 0]], np.float32), tyre, BICYCLIST))
        parts.append(_Part('ellipse', np.array([[wx, r, z], [r - 0.06, r - 0.06, 0]], np.float32), None, -1))
    bars = [((x - gap, r), (x, r)), ((x, r), (x - 0.1 * d, 0.85)), ((x - gap, r), (x - 0.1 * d, 0.85)),
            ((x, r), (x + 0.4 * d, 0.85)), ((x + gap, r), (x + 0.45 * d, 0.95)),
            ((x - 0.1 * d, 0.85), (x + 0.4 * d, 0.85))]
    for (ax, ay), (bx, by) in bars:
        parts.append(_Part('line', np.array([[ax, ay, z], [bx, by, z]], np.float32), frame, BICYCLIST,
                           width=0.04))
    shirt = _CLOTHES[rng.integers(len(_CLOTHES))]
    legs = _CLOTHES[rng.integers(len(_CLOTHES))]
    skin = _SKIN[rng.integers(len(_SKIN))]
    parts.append(_Part('line', np.array([[x - 0.1 * d, 0.9, z], [x + 0.05 * d, 0.55, z], [x, r, z]],
                                        np.float32), legs, BICYCLIST, width=0.12))
    parts.append(_Part('poly', np.array([[x - 0.2 * d, 0.85, z], [x - 0.02 * d, 0.85, z],
                                         [x + 0.25 * d, 1.45, z], [x + 0.05 * d, 1.5, z]], np.float32),
                       shirt, BICYCLIST))
    parts.append(_Part('line', np.array([[x + 0.15 * d, 1.4, z], [x + 0.42 * d, 0.95, z]], np.float32),
                       shirt * 0.8, BICYCLIST, width=0.07))
    parts.append(_Part('ellipse', np.array([[x + 0.2 * d, 1.63, z], [0.1, 0.12, 0]], np.float32), skin,
                       BICYCLIST))
    parts.append(_Part('ellipse', np.array([[x + 0.18 * d, 1.7, z], [0.12, 0.07, 0]], np.float32),
                       shirt * 0.5, BICYCLIST))
    return parts


def _pole(x: float, z: float, rng: np.random.Generator, road_side: int) -> list[_Part]:
    hgt = rng.uniform(5.0, 9.0)
    grey = np.array([90, 95, 95], np.float32) * rng.uniform(0.6, 1.3)
    wdt = rng.uniform(0.08, 0.14)
    parts = [_Part('poly', _rect(x - wdt, 0, x + wdt, hgt, z), grey, POLE)]
    kind = rng.random()
    if kind < 0.5:  # street lamp with an arm over the road
        arm = rng.uniform(1.0, 2.5) * road_side
        parts.append(_Part('line', np.array([[x, hgt - 0.1, z], [x + arm, hgt + 0.3, z]], np.float32), grey,
                           POLE, width=0.08))
        parts.append(_Part('poly', _rect(x + arm - 0.35, hgt + 0.1, x + arm + 0.35, hgt + 0.35, z),
                           grey * 0.8, POLE))
    elif kind < 0.75:  # traffic light head (a sign in CamVid's grouping)
        box = _rect(x - 0.18, hgt * 0.55, x + 0.18, hgt * 0.55 + 0.9, z - 0.01)
        parts.append(_Part('poly', box, np.array([30, 30, 30], np.float32), SIGN))
        lit = rng.integers(3)
        for i, c in enumerate(([230, 40, 30], [240, 180, 30], [40, 220, 90])):
            cy = hgt * 0.55 + 0.75 - 0.3 * i
            col = np.array(c, np.float32) * (1.0 if i == lit else 0.35)
            parts.append(_Part('ellipse', np.array([[x, cy, z - 0.02], [0.1, 0.1, 0]], np.float32), col,
                               SIGN))
    return parts


def _sign(x: float, z: float, rng: np.random.Generator) -> list[_Part]:
    hgt = rng.uniform(2.0, 3.0)
    grey = np.array([120, 125, 125], np.float32)
    parts = [_Part('poly', _rect(x - 0.04, 0, x + 0.04, hgt, z), grey, POLE)]
    kind = rng.integers(4)
    red, white = np.array([200, 25, 30], np.float32), np.array([235, 235, 230], np.float32)
    blue, yellow = np.array([20, 70, 170], np.float32), np.array([235, 190, 30], np.float32)
    top = hgt + 0.35
    if kind == 0:
        parts.append(_Part('ellipse', np.array([[x, top, z - 0.01], [0.35, 0.35, 0]], np.float32), red, SIGN))
        parts.append(_Part('ellipse', np.array([[x, top, z - 0.02], [0.25, 0.25, 0]], np.float32), white,
                           SIGN))
    elif kind == 1:
        tri = np.array([[x - 0.4, top - 0.3, z - 0.01], [x + 0.4, top - 0.3, z - 0.01],
                        [x, top + 0.4, z - 0.01]], np.float32)
        inner = np.array([[x - 0.27, top - 0.22, z - 0.02], [x + 0.27, top - 0.22, z - 0.02],
                          [x, top + 0.23, z - 0.02]], np.float32)
        parts += [_Part('poly', tri, red, SIGN), _Part('poly', inner, white, SIGN)]
    elif kind == 2:
        parts.append(_Part('poly', _rect(x - 0.35, top - 0.35, x + 0.35, top + 0.35, z - 0.01), blue, SIGN))
        parts.append(_Part('poly', _rect(x - 0.06, top - 0.25, x + 0.06, top + 0.15, z - 0.02), white, SIGN))
    else:
        parts.append(_Part('poly', _rect(x - 0.6, top - 0.3, x + 0.6, top + 0.3, z - 0.01),
                           yellow if rng.random() < 0.5 else blue, SIGN))
        parts.append(_Part('poly', _rect(x - 0.5, top - 0.05, x + 0.4, top + 0.05, z - 0.02), white * 0.2,
                           SIGN))
    return parts


def _tree(x: float, z: float, rng: np.random.Generator) -> list[_Part]:
    hgt = rng.uniform(4.0, 11.0)
    trunk = np.array([85, 60, 40], np.float32) * rng.uniform(0.8, 1.2)
    green = np.array([rng.uniform(40, 90), rng.uniform(80, 130), rng.uniform(30, 60)], np.float32)
    parts = [_Part('poly', _rect(x - 0.04 * hgt, 0, x + 0.04 * hgt, 0.55 * hgt, z), trunk, TREE, grain=0.12)]
    for _ in range(int(rng.integers(3, 6))):
        cx = x + rng.uniform(-0.2, 0.2) * hgt
        cy = hgt * rng.uniform(0.55, 0.8)
        r = hgt * rng.uniform(0.15, 0.28)
        shade = rng.uniform(0.75, 1.15)
        parts.append(_Part('ellipse', np.array([[cx, cy, z], [r, r * rng.uniform(0.8, 1.1), 0]], np.float32),
                           green * shade, TREE, grain=0.3))
    return parts


def _populate(street: _Street, rng: np.random.Generator
              ) -> tuple[list[tuple[float, list[_Part]]], list[tuple[float, float, float]]]:
    """Place the objects of one scene: (depth, parts) far to near, and ground shadow casters."""
    objects: list[tuple[float, list[_Part]]] = []
    casters: list[tuple[float, float, float]] = []

    def depth(lo: float = 4.0, hi: float = 60.0) -> float:
        return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))

    kerb_l, kerb_r = street.road_left, street.road_right
    out_l, out_r = kerb_l - street.walk_left, kerb_r + street.walk_right

    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 5, 6], p=[0.05, 0.15, 0.2, 0.2, 0.15, 0.15, 0.1]))):
        lane = street.lanes[int(rng.integers(len(street.lanes)))]
        if abs(lane) < 1.0 and rng.random() < 0.5:
            z = depth(9.0, 60.0)  # our own lane: keep a safe distance
        else:
            z = depth(5.0, 60.0)
        x = lane + rng.uniform(-0.4, 0.4)
        parts = _car(x, z, rng, facing_away=lane > street.lanes[0] or len(street.lanes) < 3)
        objects.append((float(parts[-1].pts[0, 2]), parts))  # sort by the face nearest to us
        casters.append((x, z - 1.5, 1.2))
    for _ in range(int(rng.choice([0, 1, 2, 3, 4, 5], p=[0.15, 0.2, 0.25, 0.2, 0.1, 0.1]))):
        z = depth(4.0, 40.0)
        if rng.random() < 0.85:
            side = -1 if rng.random() < 0.5 else 1
            x = rng.uniform(kerb_l - street.walk_left * 0.9, kerb_l - 0.3) if side < 0 else \
                rng.uniform(kerb_r + 0.3, kerb_r + street.walk_right * 0.9)
        else:  # crossing the road
            x = rng.uniform(kerb_l, kerb_r)
        objects.append((z, _person(x, z, rng)))
    for _ in range(int(rng.choice([0, 1, 2], p=[0.3, 0.45, 0.25]))):
        z = depth(5.0, 35.0)
        x = (kerb_l + rng.uniform(0.5, 1.2)) if rng.random() < 0.5 else (kerb_r - rng.uniform(0.5, 1.2))
        if rng.random() < 0.25:
            x = rng.uniform(kerb_l - street.walk_left * 0.8, kerb_l - 0.3)
        objects.append((z, _cyclist(x, z, rng)))
    spacing = rng.uniform(12.0, 30.0)
    start = rng.uniform(3.0, spacing)
    for side, kerb in ((-1, kerb_l), (1, kerb_r)):
        if rng.random() < 0.2:
            continue
        z = start + rng.uniform(0, spacing / 2)
        while z < 80.0:
            objects.append((z, _pole(kerb + side * 0.5, z, rng, road_side=-side)))
            z += spacing
    for _ in range(int(rng.choice([0, 1, 2, 3], p=[0.2, 0.4, 0.25, 0.15]))):
        z = depth(4.0, 35.0)
        side = -1 if rng.random() < 0.5 else 1
        objects.append((z, _sign((kerb_l - 0.6) if side < 0 else (kerb_r + 0.6), z, rng)))
    if rng.random() < 0.85:
        n_trees = int(rng.integers(1, 7))
        for _ in range(n_trees):
            z = depth(4.0, 70.0)
            if rng.random() < 0.5:
                x = rng.uniform(out_l + 0.5, kerb_l - 0.8)
            else:
                x = rng.uniform(kerb_r + 0.8, out_r - 0.5)
            objects.append((z, _tree(x, z, rng)))
            casters.append((x, z, 1.5))
    return sorted(objects, key=lambda item: -item[0]), casters


# --------------------------------------------------------------------------- public API


def generate_scene(seed: int, size: tuple[int, int] = (360, 480)) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene: (rgb HxWx3 uint8, labels HxW uint8 in CamVid-11 ids), same for a seed."""
    height, width = int(size[0]), int(size[1])
    if height < 8 or width < 8:
        raise ValueError(f'scene size must be at least 8x8, got {height}x{width}')
    rng = np.random.default_rng(seed)
    cam = _Camera(width, height, f=width * rng.uniform(0.65, 1.05), cam_h=rng.uniform(1.2, 1.9),
                  xv=width * rng.uniform(0.38, 0.62), yh=height * rng.uniform(0.32, 0.52))
    street = _layout(rng)
    canvas = _Canvas(height, width, rng)
    sun_side = -1 if rng.random() < 0.5 else 1

    objects, casters = _populate(street, rng)

    # Painter's order: sky, ground (+ its shadows), distant skyline, facades, fence, objects far to near.
    _sky(canvas, cam, rng)
    gx, gz, row0 = _ground(canvas, cam, street, rng)
    _shadows(canvas, gx, gz, row0, street, rng, sun_side, casters)
    _skyline(canvas, cam, street, rng)
    _facades(canvas, cam, street, rng, sun_side)
    if rng.random() < 0.75:
        _fence(canvas, cam, street, rng)
    for _, parts in objects:
        _draw_object(canvas, cam, parts)

    # Lighting: exposure, colour cast, a touch of vignetting and sensor noise.
    gain = rng.uniform(0.65, 1.25)
    cast = rng.uniform(0.9, 1.1, 3).astype(np.float32)
    yy = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    xx = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    vignette = gain - gain * rng.uniform(0.0, 0.35) * (xx * xx + yy * yy)
    noise = canvas.texture * np.float32(rng.uniform(1.0, 4.0))
    for c in range(3):
        canvas.img[c] *= vignette * cast[c]
        canvas.img[c] += noise
    return canvas.rgb(), canvas.lab


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene `index` in a set made with `seed` (independent streams, stable across runs)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1)


class SyntheticScenes(torch.utils.data.Dataset):
    """`num_scenes` synthetic street scenes, rendered on demand (no disk, identical for a seed).

    Without a transform an item is (rgb HxWx3 uint8, labels HxW uint8) numpy arrays; with one,
    whatever transform(rgb, labels) returns (TrainTransform/EvalTransform give tensors).
    """

    palette = CAMVID11
    class_names = CAMVID11.class_names
    num_classes = CAMVID11.num_classes

    def __init__(self, num_scenes: int, size: tuple[int, int] = (360, 480), seed: int = 0,
                 transform: Callable | None = None):
        if num_scenes < 1:
            raise ValueError(f'num_scenes must be >= 1, got {num_scenes}')
        self.num_scenes, self.size = int(num_scenes), tuple(size)
        self.seed, self.transform = int(seed), transform

    def __len__(self) -> int:
        return self.num_scenes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw (rgb, labels) of one scene, before any transform."""
        if not 0 <= index < self.num_scenes:
            raise IndexError(f'scene {index} out of range 0..{self.num_scenes - 1}')
        return generate_scene(scene_seed(self.seed, index), self.size)

    def load_labels(self, index: int) -> np.ndarray:
        return self.load(index)[1]

    def __getitem__(self, index: int):
        rgb, labels = self.load(index)
        return self.transform(rgb, labels) if self.transform is not None else (rgb, labels)
