"""Generated spinning-lidar scans: a 64-beam sensor ray-cast through a street scene.

No installable package ships a real lidar scan, and voxelizers behave very differently on
uniform noise and on real scans (which are dense near the sensor, on the ground and on
walls, and arrive beam by beam, so consecutive points share voxels). So scans are made
the way a sensor makes them: an HDL-64-like sensor (64 beams from +2° to -24.8°, 0.2°
azimuth steps, 1.73 m above the ground, 120 m range) ray-cast against a ground plane,
building blocks along both sides of a street, cars and poles. Points come beam by beam,
each beam in azimuth order (KITTI's ``.bin`` layout): ``(x, y, z, intensity)`` float32,
KITTI's velodyne frame (x forward, y left, z up).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

SENSOR_HEIGHT = 1.73
MAX_RANGE = 120.0


@dataclass
class Scene:
    boxes: np.ndarray  # (B, 6) x0 y0 z0 x1 y1 z1
    box_reflectivity: np.ndarray  # (B,)
    box_is_car: np.ndarray  # (B,) bool
    poles: np.ndarray  # (P, 3) x y radius


def make_scene(rng: np.random.Generator) -> Scene:
    ground = -SENSOR_HEIGHT
    boxes, reflect, car = [], [], []
    for side in (-1, 1):  # building blocks with gaps, on both sides of the street
        x = -70.0
        while x < 90.0:
            length, near, depth = rng.uniform(8, 30), rng.uniform(9, 14), rng.uniform(8, 15)
            y0, y1 = (near, near + depth) if side > 0 else (-near - depth, -near)
            boxes.append([x, y0, ground, x + length, y1, ground + rng.uniform(6, 20)])
            reflect.append(rng.uniform(0.1, 0.6))
            car.append(False)
            x += length + rng.uniform(1, 8)
    for _ in range(rng.integers(8, 16)):  # cars, in lanes and parked at the curb
        y = rng.choice([-6.0, -3.5, -1.8, 1.8, 3.5, 6.0]) + rng.normal(0, 0.2)
        x = rng.uniform(-50, 70)
        if abs(x) < 3 and abs(y) < 2.5:
            continue  # not on top of the sensor's own car
        length, width, height = rng.uniform(3.8, 4.8), rng.uniform(1.6, 1.9), rng.uniform(1.4, 1.7)
        boxes.append([x, y - width / 2, ground, x + length, y + width / 2, ground + height])
        reflect.append(rng.uniform(0.5, 0.9))
        car.append(True)
    poles = [[x, side * rng.uniform(7, 8.5), rng.uniform(0.1, 0.2)]
             for side in (-1, 1) for x in np.arange(-60, 80, rng.uniform(14, 22))]
    return Scene(np.asarray(boxes, np.float64), np.asarray(reflect), np.asarray(car), np.asarray(poles, np.float64))


def _ray_directions(beams: int, azimuth_steps: int) -> np.ndarray:
    elevation = np.deg2rad(np.linspace(2.0, -24.8, beams))
    azimuth = np.deg2rad(np.arange(azimuth_steps) * (360.0 / azimuth_steps) - 180.0)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")  # beam-major: KITTI order
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)


def make_scan(seed: int = 0, beams: int = 64, azimuth_steps: int = 1800) -> np.ndarray:
    """One scan, ``(N, 4)`` float32 ``x, y, z, intensity``; about 100–120k points."""
    return make_labeled_scan(seed, beams, azimuth_steps)[0]


def make_labeled_scan(seed: int = 0, beams: int = 64, azimuth_steps: int = 1800) -> tuple[np.ndarray, np.ndarray]:
    """:func:`make_scan`'s scan and its cars as boxes ``(K, 7)`` float32, OpenPCDet's
    ``(x, y, z, dx, dy, dz, heading)`` with the centre in the middle of the box."""
    rng = np.random.default_rng(seed)
    scene = make_scene(rng)
    cars = scene.boxes[scene.box_is_car]
    centre, size = (cars[:, :3] + cars[:, 3:]) / 2, cars[:, 3:] - cars[:, :3]
    boxes = np.concatenate([centre, size, np.zeros((len(cars), 1))], axis=1).astype(np.float32)
    return _ray_cast(scene, rng, beams, azimuth_steps), boxes


def write_scan_folder(root: str, count: int, *, beams: int = 64, azimuth_steps: int = 1800,
                      labels_root: str | None = None) -> str:
    """Writes ``count`` scans as KITTI ``.bin`` files ``000000.bin``... under ``root`` (and
    their boxes as ``.npy`` under ``labels_root`` if given); returns ``root``."""
    os.makedirs(root, exist_ok=True)
    if labels_root is not None:
        os.makedirs(labels_root, exist_ok=True)
    for i in range(count):
        points, boxes = make_labeled_scan(i, beams, azimuth_steps)
        points.tofile(os.path.join(root, f"{i:06d}.bin"))
        if labels_root is not None:
            np.save(os.path.join(labels_root, f"{i:06d}.npy"), boxes)
    return root


def _ray_cast(scene: Scene, rng: np.random.Generator, beams: int, azimuth_steps: int) -> np.ndarray:
    d = _ray_directions(beams, azimuth_steps)
    t = np.full(len(d), np.inf)
    reflectivity = np.zeros(len(d))
    normal_dot = np.ones(len(d))
    with np.errstate(divide="ignore", invalid="ignore"):
        down = d[:, 2] < 0
        t_ground = np.where(down, -SENSOR_HEIGHT / d[:, 2], np.inf)
        hit = t_ground < t
        t[hit], reflectivity[hit], normal_dot[hit] = t_ground[hit], rng.uniform(0.15, 0.35), -d[hit, 2]
        for box, refl in zip(scene.boxes, scene.box_reflectivity):
            lo, hi = box[:3], box[3:]
            t1, t2 = lo / d, hi / d
            near = np.nanmax(np.minimum(t1, t2), axis=1)
            far = np.nanmin(np.maximum(t1, t2), axis=1)
            hit = (far >= np.maximum(near, 0)) & (near > 0) & (near < t)
            t[hit] = near[hit]
            reflectivity[hit] = refl
            normal_dot[hit] = 0.7
        for x, y, r in scene.poles:
            a = d[:, 0] ** 2 + d[:, 1] ** 2
            b = -2 * (d[:, 0] * x + d[:, 1] * y)
            c = x * x + y * y - r * r
            disc = b * b - 4 * a * c
            tp = (-b - np.sqrt(disc)) / (2 * a)
            z = tp * d[:, 2]
            hit = (disc >= 0) & (tp > 0) & (tp < t) & (z > -SENSOR_HEIGHT) & (z < 5.0 - SENSOR_HEIGHT)
            t[hit], reflectivity[hit], normal_dot[hit] = tp[hit], 0.35, 0.9
    keep = t < MAX_RANGE
    t = t[keep] + rng.normal(0, 0.02, keep.sum())  # range noise
    xyz = d[keep] * t[:, None]
    intensity = np.clip(reflectivity[keep] * (0.5 + 0.5 * np.abs(normal_dot[keep])) + rng.normal(0, 0.03, keep.sum()),
                        0, 1)
    return np.concatenate([xyz, intensity[:, None]], axis=1).astype(np.float32)
