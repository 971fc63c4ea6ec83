"""Structural anomalies: foreign shapes, cuts, scratches and local warps of the part itself."""

from __future__ import annotations

import cv2
import numpy as np

from .compose import paste, tones, visible

SHAPES = ("shape", "cut", "scratch", "warp")


def structural(image: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One of ``SHAPES`` (random unless ``kind`` names one), with its exact mask."""
    if kind is not None and kind not in SHAPES:
        raise ValueError(f"unknown structural kind {kind!r}: choose one of {', '.join(SHAPES)}")
    draw = {"shape": _shape, "cut": _cut, "scratch": _scratch, "warp": _warp}[kind or SHAPES[rng.integers(4)]]
    return visible(lambda: draw(image, rng), image)


def _colour(image: np.ndarray, rng: np.random.Generator) -> tuple[float, ...]:
    """A tone far from the image's mean, so the defect is a contrast the detector can learn."""
    mean = image.reshape(image.shape[0], -1).mean(1)
    values = np.array([(m + rng.choice([-1, 1]) * rng.uniform(60, 140)) % 256 for m in mean])
    return tuple(float(v) for v in tones(image, values))


def _draw(image: np.ndarray, paint) -> tuple[np.ndarray, np.ndarray]:
    """Run ``paint(canvas, region)`` on an H×W×C copy; the drawn region is where the edit may land."""
    canvas = np.ascontiguousarray(image.transpose(1, 2, 0)).copy()
    region = np.zeros(image.shape[1:], np.uint8)
    paint(canvas, region)
    return paste(image, canvas.transpose(2, 0, 1), region > 0)


def _point(rng, h, w, margin=0.1):
    return int(rng.uniform(margin, 1 - margin) * w), int(rng.uniform(margin, 1 - margin) * h)


def _shape(image, rng):
    h, w = image.shape[1:]
    colour = _colour(image, rng)
    centre, size = _point(rng, h, w), (int(rng.uniform(0.03, 0.12) * w) + 1, int(rng.uniform(0.03, 0.12) * h) + 1)

    def paint(canvas, region):
        if rng.random() < 0.5:
            angle = float(rng.uniform(0, 180))
            for target, value in ((canvas, colour), (region, 1)):
                cv2.ellipse(target, centre, size, angle, 0, 360, value, -1)
        else:
            n = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = rng.uniform(0.4, 1.0, n)
            pts = np.stack([centre[0] + radii * size[0] * np.cos(angles),
                            centre[1] + radii * size[1] * np.sin(angles)], 1).astype(np.int32)
            for target, value in ((canvas, colour), (region, 1)):
                cv2.fillPoly(target, [pts], value)

    return _draw(image, paint)


def _cut(image, rng):
    """A straight dark (or bright) gash a few pixels wide."""
    h, w = image.shape[1:]
    a, b = _point(rng, h, w), _point(rng, h, w)
    thickness = max(2, int(rng.uniform(0.015, 0.04) * min(h, w)))
    dark = tuple(float(v) for v in tones(image, rng.uniform(0, 40, image.shape[0])))
    colour = dark if rng.random() < 0.7 else _colour(image, rng)

    def paint(canvas, region):
        cv2.line(canvas, a, b, colour, thickness)
        cv2.line(region, a, b, 1, thickness)

    return _draw(image, paint)


def _scratch(image, rng):
    """A thin wandering polyline, like a scratch or a crack."""
    h, w = image.shape[1:]
    start = np.array(_point(rng, h, w), float)
    steps = int(rng.integers(4, 10))
    heading = rng.uniform(0, 2 * np.pi)
    pts = [start]
    for _ in range(steps):
        heading += rng.normal(0, 0.5)
        pts.append(pts[-1] + rng.uniform(0.03, 0.08) * min(h, w) * np.array([np.cos(heading), np.sin(heading)]))
    pts = np.clip(np.array(pts), 0, [w - 1, h - 1]).astype(np.int32)
    colour = _colour(image, rng)
    thickness = max(1, int(rng.integers(1, 3)))

    def paint(canvas, region):
        cv2.polylines(canvas, [pts], False, colour, thickness)
        cv2.polylines(region, [pts], False, 1, thickness)

    return _draw(image, paint)


def _warp(image, rng):
    """A local swirl/bulge: pixels inside a disk are displaced, the rest stay where they are."""
    c, h, w = image.shape
    cx, cy = _point(rng, h, w, margin=0.2)
    radius = rng.uniform(0.08, 0.2) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    r = np.sqrt(dx**2 + dy**2)
    inside = r < radius
    falloff = np.where(inside, (1 - r / radius) ** 2, 0).astype(np.float32)
    angle = rng.choice([-1, 1]) * rng.uniform(1.0, 2.5) * falloff  # swirl
    scale = 1 + rng.uniform(-0.4, 0.4) * falloff  # bulge / pinch
    cos, sin = np.cos(angle), np.sin(angle)
    map_x = (cx + scale * (cos * dx - sin * dy)).astype(np.float32)
    map_y = (cy + scale * (sin * dx + cos * dy)).astype(np.float32)
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    warped = cv2.remap(hwc, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    warped = warped.reshape(h, w, c).transpose(2, 0, 1)
    return paste(image, warped, inside)
