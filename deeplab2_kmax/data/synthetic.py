"""Synthetic panoptic dataset, the embedded default.

Every image is a pure function of `(seed, split, index)`:
- background: 3 stuff classes (1 sky, 2 ground, 3 wall) as irregular regions
  (argmax of smooth random fields), textured with noise, stripes and checks;
- 1..8 things from 5 classes (4 disc, 5 square, 6 triangle, 7 star,
  8 ellipse), size 10..48 px, random position, rotation and colour (colour is
  independent of class); later instances occlude earlier ones;
- void (label 0): a 3-pixel band (2 inside the thing) along every border
  that touches a thing, about 5% of the pixels, like the unlabelled seams of real annotations.

Panoptic ids follow DeepLab2: `class * 256 + instance`, instances numbered
from 1 per class; stuff and void have instance 0.
"""

import dataclasses
from typing import List
from typing import Tuple

import numpy as np

from deeplab2_kmax.data import dataset_registry

INFO = dataset_registry.get("synthetic_panoptic")
IMAGE_SIZE = 128
MIN_THINGS, MAX_THINGS = 1, 8
MIN_THING_SIZE, MAX_THING_SIZE = 10, 48
SPLIT_STREAMS = {"train": 0, "val": 1}
_STUFF = {"sky": 1, "ground": 2, "wall": 3}
_THINGS = ("disc", "square", "triangle", "star", "ellipse")
_FIRST_THING_ID = 4


@dataclasses.dataclass
class Sample:
  """One generated image with its panoptic ground truth."""
  image: np.ndarray  # [S, S, 3] uint8.
  panoptic: np.ndarray  # [S, S] int32, class * divisor + instance.


def _smooth_field(rng: np.random.Generator, size: int, cells: int):
  """Bilinearly upsampled uniform noise: an irregular smooth field."""
  coarse = rng.random((cells + 1, cells + 1))
  t = np.linspace(0, cells, size)
  i0 = np.minimum(t.astype(int), cells - 1)
  f = t - i0
  rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
  return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _stuff_layer(rng, size):
  """Returns the stuff class map [S, S] and its textured RGB [S, S, 3]."""
  fields = np.stack([_smooth_field(rng, size, int(rng.integers(2, 5)))
                     for _ in _STUFF])
  fields += rng.normal(0, 0.02, fields.shape)
  stuff = np.argmax(fields, axis=0) + 1
  yy, xx = np.mgrid[:size, :size].astype(np.float64)
  rgb = np.zeros((size, size, 3))
  # Sky: blue-ish base with smooth and fine noise.
  sky = (np.array([90, 150, 220]) + rng.integers(-30, 31, 3) +
         60 * (_smooth_field(rng, size, 6) - 0.5)[..., None] +
         rng.normal(0, 8, (size, size, 3)))
  # Ground: stripes at a random angle and period.
  angle = rng.uniform(0, np.pi)
  period = rng.uniform(6, 14)
  phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
  stripes = (np.floor(phase) % 2)[..., None]
  base = np.array([120, 85, 45]) + rng.integers(-25, 26, 3)
  ground = base + stripes * 50 + rng.normal(0, 5, (size, size, 3))
  # Wall: checks with a random cell size.
  cell = int(rng.integers(5, 12))
  checks = ((yy // cell + xx // cell) % 2)[..., None]
  base = np.array([170, 60, 50]) + rng.integers(-25, 26, 3)
  wall = base + checks * 60 - 30 + rng.normal(0, 5, (size, size, 3))
  for layer, class_id in ((sky, 1), (ground, 2), (wall, 3)):
    rgb[stuff == class_id] = layer[stuff == class_id]
  return stuff.astype(np.int32), rgb


def _polygon_mask(vertices, yy, xx):
  """Even-odd point-in-polygon test of pixel centres; vertices [K, 2] (x, y)."""
  inside = np.zeros(xx.shape, bool)
  x0, y0 = vertices[:, 0], vertices[:, 1]
  x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
  for ax, ay, bx, by in zip(x0, y0, x1, y1):
    crosses = (ay > yy) != (by > yy)
    with np.errstate(divide="ignore", invalid="ignore"):
      x_at = ax + (yy - ay) * (bx - ax) / (by - ay)
    inside ^= crosses & (xx < x_at)
  return inside


def _shape_mask(shape, size, cx, cy, angle, aspect, yy, xx):
  """Boolean mask of one thing of diameter `size` centred at (cx, cy)."""
  r = size / 2.0
  dx, dy = xx - cx, yy - cy
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = -dx * np.sin(angle) + dy * np.cos(angle)
  if shape == "disc":
    return u**2 + v**2 <= r**2
  if shape == "ellipse":
    return (u / r)**2 + (v / (r * aspect))**2 <= 1.0
  if shape == "square":
    k, radius = 4, r * np.sqrt(2)
    radii = np.full(k, radius)
  elif shape == "triangle":
    k = 3
    radii = np.full(k, r)
  else:  # star
    k = 10
    radii = np.where(np.arange(k) % 2 == 0, r, r * 0.45)
  theta = angle + np.pi / 4 * (shape == "square") + 2 * np.pi * np.arange(k) / k
  vertices = np.stack([cx + radii * np.cos(theta),
                       cy + radii * np.sin(theta)], axis=1)
  return _polygon_mask(vertices, yy, xx)


def _border_void(ids: np.ndarray, is_thing: np.ndarray) -> np.ndarray:
  """Pixels with a 4-neighbour of another segment where either is a thing."""
  void = np.zeros(ids.shape, bool)
  for axis in (0, 1):
    a = np.take(ids, range(ids.shape[axis] - 1), axis=axis)
    b = np.take(ids, range(1, ids.shape[axis]), axis=axis)
    ta = np.take(is_thing, range(ids.shape[axis] - 1), axis=axis)
    tb = np.take(is_thing, range(1, ids.shape[axis]), axis=axis)
    edge = (a != b) & (ta | tb)
    pad_after = [(0, 0), (0, 0)]
    pad_before = [(0, 0), (0, 0)]
    pad_after[axis] = (0, 1)
    pad_before[axis] = (1, 0)
    void |= np.pad(edge, pad_after) | np.pad(edge, pad_before)
  return void


def _dilate(mask: np.ndarray) -> np.ndarray:
  """One step of 4-neighbourhood binary dilation."""
  out = mask.copy()
  out[1:] |= mask[:-1]
  out[:-1] |= mask[1:]
  out[:, 1:] |= mask[:, :-1]
  out[:, :-1] |= mask[:, 1:]
  return out


def generate(seed: int, split: str, index: int,
             image_size: int = IMAGE_SIZE) -> Sample:
  """Generates image `index` of `split`; sizes scale with `image_size`/128."""
  if split not in SPLIT_STREAMS:
    raise ValueError(f"split must be one of {sorted(SPLIT_STREAMS)}, "
                     f"got {split!r}.")
  rng = np.random.default_rng([seed, SPLIT_STREAMS[split], index])
  scale = image_size / IMAGE_SIZE
  divisor = INFO.panoptic_label_divisor
  stuff, rgb = _stuff_layer(rng, image_size)
  panoptic = stuff * divisor
  yy, xx = np.mgrid[:image_size, :image_size] + 0.5
  counts = [0] * len(_THINGS)
  for _ in range(int(rng.integers(MIN_THINGS, MAX_THINGS + 1))):
    k = int(rng.integers(len(_THINGS)))
    size = rng.uniform(MIN_THING_SIZE, MAX_THING_SIZE) * scale
    cx, cy = rng.uniform(0, image_size, 2)
    mask = _shape_mask(_THINGS[k], size, cx, cy, rng.uniform(0, 2 * np.pi),
                       rng.uniform(0.35, 0.7), yy, xx)
    colour = rng.integers(0, 256, 3)
    shade = 1.0 + 0.25 * (_smooth_field(rng, image_size, 3) - 0.5)
    rgb[mask] = (colour * shade[..., None] +
                 rng.normal(0, 4, rgb.shape))[mask]
    counts[k] += 1
    panoptic[mask] = (_FIRST_THING_ID + k) * divisor + counts[k]
  is_thing = panoptic // divisor >= _FIRST_THING_ID
  void = _border_void(panoptic, is_thing)
  void |= _dilate(void) & is_thing  # A third pixel, on the thing side.
  panoptic[void] = INFO.ignore_label * divisor
  image = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
  return Sample(image=image, panoptic=panoptic.astype(np.int32))


def segments(panoptic: np.ndarray) -> List[Tuple[int, int, int]]:
  """(panoptic id, class id, area) of every non-void segment, sorted by id."""
  ids, areas = np.unique(panoptic, return_counts=True)
  divisor = INFO.panoptic_label_divisor
  return [(int(i), int(i) // divisor, int(a)) for i, a in zip(ids, areas)
          if i // divisor != INFO.ignore_label]
