"""Synthetic labelled videos whose class is defined by motion only (the built-in dataset of the demo and the tests), or,
with `--task=appearance`, by appearance only.

Each video shows one randomly textured object (or `--num_objects` of them, later ones occluding earlier ones) on a
randomly textured background seen by a camera that pans at a random constant velocity, independent of the class. The
class is the objects' own motion (relative to the background), the same kind for every object of a video:
translate left/right/up/down, rotate clockwise/counter-clockwise (on screen, y down), grow or shrink. Appearance,
camera pan, speeds, sizes and start positions are random, so only the relative motion tells the classes apart.
`--object_scale` scales every object's size; with several objects each is `1/sqrt(num_objects)` as large, so together
they cover about as much of the frame as one object of that scale would.

With `--task=appearance` the class is instead the object's look, `APPEARANCE_CLASSES`: its shape (ellipse or rectangle)
times the colour family of its texture (red, green, blue, yellow, each with a random tint), and its motion is one of
the 8 motion classes drawn at random: only appearance tells these classes apart (the opposite probe of the CPU-scale
Table 1, docs/results.md). The motion task's videos are unchanged by the option.

Ground truth is exposed as pure functions of a `VideoSpec` (`object_step`, `background_step`, `object_pose`), and every
spec is written to `ground_truth.jsonl` beside the videos.

Run:
  python -m data_prep.synthetic --output_dir=/tmp/synth --num_videos=48 \
      [--size=128x128 --frames=32 --seed=0 --max_pan=1.5 --num_objects=1 --object_scale=1.0 --task=motion]
Writes `videos/*.mp4`, `all.csv`, `train.csv`, `val.csv` (`path,label`, stratified split), `label_map.json`,
`ground_truth.jsonl`. Extract with
  python -m data_prep.extract --input=/tmp/synth/train.csv --label_map=/tmp/synth/label_map.json --short_side=0 ...
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence

import cv2
import numpy as np

from m3video_jax import cli
from m3video_jax.data import prep_outputs
from m3video_jax.data import schema

CLASSES = ('translate_left', 'translate_right', 'translate_up', 'translate_down', 'rotate_cw', 'rotate_ccw', 'grow',
           'shrink')
DEFAULT_MAX_PAN = 1.5  # px/frame: camera pans as fast as the objects move, so only relative motion tells classes apart.
TASKS = ('motion', 'appearance')
SHAPES = ('ellipse', 'rectangle')
# Base colours (RGB) of the object texture's families; each video adds a tint of +-20 per channel.
COLOUR_FAMILIES = {'red': (185.0, 75.0, 65.0), 'green': (75.0, 165.0, 80.0), 'blue': (70.0, 95.0, 185.0),
                   'yellow': (190.0, 175.0, 60.0)}
APPEARANCE_CLASSES = tuple(f'{shape}_{colour}' for shape in SHAPES for colour in COLOUR_FAMILIES)
_TRANSLATE_DIRS = {'translate_left': (-1.0, 0.0), 'translate_right': (1.0, 0.0), 'translate_up': (0.0, -1.0),
                   'translate_down': (0.0, 1.0)}


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
  """One object beyond the first (the first one's fields are `VideoSpec`'s own). Units as in `VideoSpec`."""
  center0: tuple[float, float]
  radius: float
  velocity: tuple[float, float]
  spin: float
  growth: float
  shape: str
  aspect: float


@dataclasses.dataclass(frozen=True)
class VideoSpec:
  """All randomness of one synthetic video. Image coordinates: x right, y down, px; angles in degrees.

  The camera's view origin at frame t is `pan * t` in world coordinates (the background image moves by `-pan` per
  frame). The object's centre is `center0 + velocity * t` in world coordinates, its angle `spin * t`, its scale
  `growth ** t`; a world point `w` appears at `w - pan * t` in the image.
  """
  label: int
  width: int
  height: int
  num_frames: int
  seed: int
  pan: tuple[float, float]  # camera velocity, px/frame
  center0: tuple[float, float]  # object centre at t = 0, image coordinates (= world at t = 0)
  radius: float  # object half-size at scale 1, px
  velocity: tuple[float, float]  # object velocity relative to the background, px/frame
  spin: float  # degrees/frame, positive = clockwise on screen
  growth: float  # scale factor per frame
  shape: str  # 'ellipse' or 'rectangle'
  aspect: float  # height/width of the object shape
  extra_objects: tuple[ObjectSpec, ...] = ()  # Objects 1, 2, ...: drawn after (in front of) object 0.
  appearance: int = -1  # Index into APPEARANCE_CLASSES (appearance task: shape and colour family), -1 = random look.

  @property
  def class_name(self) -> str:
    """The motion class (`CLASSES`)."""
    return CLASSES[self.label]

  @property
  def task_label(self) -> int:
    """The label of the video's task: its appearance class on the appearance task, else its motion class."""
    return self.appearance if self.appearance >= 0 else self.label

  @property
  def task_class_name(self) -> str:
    return APPEARANCE_CLASSES[self.appearance] if self.appearance >= 0 else CLASSES[self.label]

  @property
  def colour(self) -> tuple[float, float, float] | None:
    """Base colour of the objects' textures (appearance task), None for a random one."""
    if self.appearance < 0:
      return None
    return COLOUR_FAMILIES[APPEARANCE_CLASSES[self.appearance].split('_')[1]]

  @property
  def objects(self) -> tuple[ObjectSpec, ...]:
    """Every object, back to front; object 0 is this spec's own fields."""
    first = ObjectSpec(center0=self.center0, radius=self.radius, velocity=self.velocity, spin=self.spin,
                       growth=self.growth, shape=self.shape, aspect=self.aspect)
    return (first,) + tuple(self.extra_objects)


def _sample_motion(rng: np.random.Generator, name: str, center: np.ndarray, radius: float, short: float,
                  duration: int) -> tuple[tuple[float, float], tuple[float, float], float, float, float]:
  """(start centre, velocity, spin, growth, radius) of one object of class `name` whose mean position is `center`."""
  velocity, spin, growth = (0.0, 0.0), 0.0, 1.0
  if name in _TRANSLATE_DIRS:
    # Travel about 40% of the frame, centred, so the object stays (mostly) in view.
    speed = min(float(rng.uniform(1.0, 2.0)), 0.4 * short / duration)
    d = np.array(_TRANSLATE_DIRS[name])
    velocity = tuple(float(v) for v in d * speed)
    center = center - d * speed * duration / 2
  elif name in ('rotate_cw', 'rotate_ccw'):
    spin = float(rng.uniform(3.0, 6.0)) * (1.0 if name == 'rotate_cw' else -1.0)
  else:
    total = float(rng.uniform(1.8, 2.4))  # overall scale change over the video
    growth = total ** (1.0 / duration)
    if name == 'shrink':
      growth = 1.0 / growth
    # Mean size as the other classes, smaller at the extremes: the object must never dominate the frame, or the camera
    # homography would lock onto it.
    radius = radius * 0.75 / math.sqrt(total)  # start small when growing ...
    if name == 'shrink':
      radius = radius * total  # ... and large when shrinking
  return (float(center[0]), float(center[1])), velocity, spin, growth, radius


def sample_spec(rng: np.random.Generator, label: int, width: int = 128, height: int = 128,
                num_frames: int = 32, max_pan: float = DEFAULT_MAX_PAN, *, num_objects: int = 1,
                object_scale: float = 1.0, task: str = 'motion') -> VideoSpec:
  """Draws a random `VideoSpec` of class `label` (index into `CLASSES`); camera pan uniform in ±`max_pan` px/frame.

  With `task='appearance'`, `label` indexes `APPEARANCE_CLASSES` instead: the objects get that shape and colour
  family, and their motion is a motion class drawn at random (the spec's `label`; `appearance` holds the class).

  One object sits near the centre; with `num_objects > 1` every object's mean position is uniform in the middle 70%
  of the frame and its size is `object_scale / sqrt(num_objects)` times the one-object size. `num_objects=1,
  object_scale=1` draws exactly what earlier versions drew for the same seed.
  """
  if task not in TASKS:
    raise ValueError(f'task={task!r} must be one of {TASKS}')
  if task == 'appearance':
    if not 0 <= label < len(APPEARANCE_CLASSES):
      raise ValueError(f'label={label} must be in [0, {len(APPEARANCE_CLASSES)}) for the appearance task')
    appearance, label = label, int(rng.integers(len(CLASSES)))
  else:
    appearance = -1
  if not 0 <= label < len(CLASSES):
    raise ValueError(f'label={label} must be in [0, {len(CLASSES)})')
  if max_pan < 0:
    raise ValueError(f'max_pan={max_pan} must be >= 0 (px/frame)')
  if num_objects < 1:
    raise ValueError(f'num_objects={num_objects} must be >= 1')
  if object_scale <= 0:
    raise ValueError(f'object_scale={object_scale} must be > 0')
  name = CLASSES[label]
  short = min(width, height)
  size = object_scale / math.sqrt(num_objects)
  frame_center = np.array([width / 2, height / 2])
  duration = max(num_frames - 1, 1)
  pan = tuple(float(v) for v in rng.uniform(-max_pan, max_pan, size=2))
  radius = float(rng.uniform(0.17, 0.22) * short) * size
  if num_objects == 1:
    mean_pos = frame_center + rng.uniform(-0.08, 0.08, size=2) * short
  else:
    mean_pos = frame_center + rng.uniform(-0.35, 0.35, size=2) * np.array([width, height])
  center, velocity, spin, growth, radius = _sample_motion(rng, name, mean_pos, radius, short, duration)
  seed = int(rng.integers(2**31))
  shape = str(rng.choice(['ellipse', 'rectangle']))
  aspect = float(rng.uniform(0.6, 1.0))
  extra = []
  for _ in range(num_objects - 1):
    r = float(rng.uniform(0.17, 0.22) * short) * size
    pos = frame_center + rng.uniform(-0.35, 0.35, size=2) * np.array([width, height])
    c, v, sp, gr, r = _sample_motion(rng, name, pos, r, short, duration)
    extra.append(ObjectSpec(center0=c, radius=r, velocity=v, spin=sp, growth=gr,
                            shape=str(rng.choice(['ellipse', 'rectangle'])), aspect=float(rng.uniform(0.6, 1.0))))
  if appearance >= 0:  # Every object has the class's shape (the draws above stay, so the rest is as random).
    shape = APPEARANCE_CLASSES[appearance].split('_')[0]
    extra = [dataclasses.replace(o, shape=shape) for o in extra]
  return VideoSpec(label=label, width=width, height=height, num_frames=num_frames, seed=seed, pan=pan,
                   center0=center, radius=radius, velocity=velocity, spin=spin, growth=growth, shape=shape,
                   aspect=aspect, extra_objects=tuple(extra), appearance=appearance)


def object_pose(spec: VideoSpec, t: float, index: int = 0) -> tuple[np.ndarray, float, float]:
  """(image position of object `index`'s centre `[2]`, its angle in degrees, its scale) at frame t."""
  obj = spec.objects[index]
  center = np.array(obj.center0) + (np.array(obj.velocity) - np.array(spec.pan)) * t
  return center, obj.spin * t, obj.growth**t


def _rotation(deg: float) -> np.ndarray:
  a = math.radians(deg)
  return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def object_step(spec: VideoSpec, t: int, x: np.ndarray, y: np.ndarray, *, with_camera: bool,
                index: int = 0) -> np.ndarray:
  """Displacement from frame t to t+1 of points of object `index` at image positions `(x, y)` (any shape `P`).

  Args:
    spec: the video.
    t: frame index.
    x, y: image positions of points on the object at frame t.
    with_camera: include the camera pan (what plain flow sees); False = relative to the background (warped flow).
    index: which object (0 = the first, backmost).

  Returns:
    float `[*P, 2]` (Δx, Δy) in px.
  """
  c0, a0, s0 = object_pose(spec, t, index)
  c1, a1, s1 = object_pose(spec, t + 1, index)
  rel = np.stack([np.asarray(x, float) - c0[0], np.asarray(y, float) - c0[1]], axis=-1)
  moved = (rel @ _rotation(a1 - a0).T) * (s1 / s0) + c1
  d = moved - np.stack([np.asarray(x, float), np.asarray(y, float)], axis=-1)
  if not with_camera:
    d = d + np.array(spec.pan)
  return d


def background_step(spec: VideoSpec, *, with_camera: bool) -> np.ndarray:
  """Displacement `[2]` of every background point per frame: `-pan` as seen by the camera, 0 relative to it."""
  return -np.array(spec.pan) if with_camera else np.zeros(2)


def object_mask(spec: VideoSpec, t: int, x: np.ndarray, y: np.ndarray, margin: float = 0.0,
                index: int | None = None) -> np.ndarray:
  """True where image position `(x, y)` is on an object at frame t, at least `margin` px inside its outline.

  `index=None` tests every object (their union, regardless of occlusion); an int tests that object alone.
  """
  if index is None:
    out = np.zeros(np.shape(x), bool)
    for i in range(len(spec.objects)):
      out |= object_mask(spec, t, x, y, margin, i)
    return out
  obj = spec.objects[index]
  c, a, s = object_pose(spec, t, index)
  rel = np.stack([np.asarray(x, float) - c[0], np.asarray(y, float) - c[1]], axis=-1) @ _rotation(-a).T
  rx, ry = obj.radius * s - margin, obj.radius * s * obj.aspect - margin
  if rx <= 0 or ry <= 0:
    return np.zeros(np.shape(x), bool)
  if obj.shape == 'ellipse':
    return (rel[..., 0] / rx)**2 + (rel[..., 1] / ry)**2 <= 1.0
  return (np.abs(rel[..., 0]) <= rx) & (np.abs(rel[..., 1]) <= ry)


def tracking_errors(spec: VideoSpec, traj_disp: np.ndarray, *, scale: float, with_camera: bool,
                    start_stride: int = 2, margin: float = 5.0,
                    background_margin: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
  """How far tracked displacements are from the video's exact motion, step by step along the tracks.

  Args:
    spec: the video.
    traj_disp: float `[S, L, Gh, Gw, 2]` (Δx, Δy) in prep px of the trajectories data prep tracked from frames
      `0, s, 2s, ...` on the 8-px grid of the video resized `scale` times (`VideoTargets.traj_disp`).
    scale: prep size / video size.
    with_camera: the truth includes the camera pan (flow without camera-motion removal).
    start_stride: `s`.
    margin: object points count when at least this many video px inside an object's outline at the step's start;
      background points when at least `background_margin` px outside every object.

  Returns:
    (object errors, background errors): |Δp − true Δp| in prep px of every such step, each at the tracked position.
  """
  x0, y0 = schema.start_positions(*traj_disp.shape[2:4])
  obj, bg = [], []
  for i in range(traj_disp.shape[0]):
    x, y = x0.copy(), y0.copy()
    for j in range(traj_disp.shape[1]):
      t = i * start_stride + j  # The frame this step starts at.
      est = traj_disp[i, j]
      xn, yn = (x + 0.5) / scale - 0.5, (y + 0.5) / scale - 0.5  # Prep -> video pixel coordinates.
      on = object_mask(spec, t, xn, yn, margin=margin)
      far = ~object_mask(spec, t, xn, yn, margin=-background_margin)
      truth = object_step(spec, t, xn, yn, with_camera=with_camera) * scale
      obj.append(np.linalg.norm(est[on] - truth[on], axis=-1))
      bg.append(np.linalg.norm(est[far] - background_step(spec, with_camera=with_camera) * scale, axis=-1))
      x, y = x + est[..., 0], y + est[..., 1]
  return np.concatenate(obj), np.concatenate(bg)


def _texture(rng: np.random.Generator, height: int, width: int, contrast: float,
             colour: tuple[float, float, float] | None = None) -> np.ndarray:
  """Random colour texture uint8 `[height, width, 3]`: multi-scale smoothed noise plus a few random stripes, around a
  random base colour or, given `colour`, that colour with a random tint of +-20 per channel."""
  img = np.zeros((height, width, 3), np.float32)
  for sigma, weight in ((1.0, 0.35), (3.0, 0.4), (9.0, 0.5)):
    noise = rng.standard_normal((height, width, 3)).astype(np.float32)
    img += weight * cv2.GaussianBlur(noise, (0, 0), sigma) * sigma
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  angle, freq = rng.uniform(0, np.pi), rng.uniform(0.08, 0.25)
  img += 0.6 * np.sin(freq * (xs * np.cos(angle) + ys * np.sin(angle)))[..., None] * rng.uniform(0.3, 1.0, 3)
  img = (img - img.mean()) / (img.std() + 1e-6)
  base = rng.uniform(70, 185, size=3)
  if colour is not None:
    base = np.asarray(colour) + rng.uniform(-20, 20, size=3)
  return np.clip(base + contrast * img, 0, 255).astype(np.uint8)


def render(spec: VideoSpec) -> np.ndarray:
  """Renders the video: uint8 RGB `[T, H, W, 3]`. Objects are drawn in order, so later ones occlude earlier ones."""
  rng = np.random.default_rng(spec.seed)
  w, h, n = spec.width, spec.height, spec.num_frames
  margin = int(math.ceil(max(abs(spec.pan[0]), abs(spec.pan[1])) * n)) + 8
  canvas = _texture(rng, h + 2 * margin, w + 2 * margin, contrast=45.0)
  textures = []
  for obj in spec.objects:
    tex_half = int(math.ceil(obj.radius * max(obj.growth**(n - 1), 1.0) * 1.05)) + 2
    textures.append((tex_half, _texture(rng, 2 * tex_half + 1, 2 * tex_half + 1, contrast=50.0, colour=spec.colour)))
  frames = np.empty((n, h, w, 3), np.uint8)
  ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
  for t in range(n):
    # Background: image pixel (x, y) shows canvas pixel (x + margin + pan_x t, y + margin + pan_y t).
    to_canvas = np.array([[1, 0, margin + spec.pan[0] * t], [0, 1, margin + spec.pan[1] * t]], np.float64)
    image = cv2.warpAffine(canvas, to_canvas, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REFLECT).astype(np.float32)
    for i, (tex_half, obj_tex) in enumerate(textures):
      # Object: image pixel p shows texture pixel R(-angle) (p - centre) / scale + tex_half.
      c, a, s = object_pose(spec, t, i)
      rot = _rotation(-a) / s
      to_tex = np.concatenate([rot, (tex_half - rot @ c)[:, None]], axis=1)
      fg = cv2.warpAffine(obj_tex, to_tex, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)
      # Anti-aliased mask: supersample the inside test 2x2.
      alpha = np.zeros((h, w), np.float32)
      for ox in (-0.25, 0.25):
        for oy in (-0.25, 0.25):
          alpha += object_mask(spec, t, xs + ox, ys + oy, index=i)
      alpha = (alpha / 4.0)[..., None]
      image = image * (1 - alpha) + fg * alpha
    frames[t] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
  return frames


def write_mp4(path: str, frames_rgb: np.ndarray, fps: float = 25.0) -> None:
  """Writes uint8 RGB `[T, H, W, 3]` frames as an MPEG-4 (mp4v) file."""
  h, w = frames_rgb.shape[1:3]
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
  if not writer.isOpened():
    raise OSError(f'OpenCV cannot write an mp4v video to {path}')
  try:
    for frame in frames_rgb:
      writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  finally:
    writer.release()


def write_y4m(path: str, frames: np.ndarray) -> None:
  """Writes an uncompressed YUV4MPEG2 video of any size (odd sizes too), for decoder edge cases.

  Args:
    path: output file (`.y4m`).
    frames: uint8 `[T, H, W]` (grayscale, `Cmono`), `[T, H, W, 3]` RGB (`C444`) or `[T, H, W, 4]` RGBA
      (`C444alpha`, a 4-channel video).
  """
  frames = np.asarray(frames, np.uint8)
  if frames.ndim == 3:
    colour, planes = 'Cmono', [frames]
  elif frames.ndim == 4 and frames.shape[3] in (3, 4):
    yuv = np.stack([cv2.cvtColor(np.ascontiguousarray(f[..., :3]), cv2.COLOR_RGB2YCrCb) for f in frames])
    planes = [yuv[..., 0], yuv[..., 2], yuv[..., 1]]  # Y, Cb, Cr
    colour = 'C444'
    if frames.shape[3] == 4:
      colour, planes = 'C444alpha', planes + [frames[..., 3]]
  else:
    raise ValueError(f'frames must be [T, H, W] or [T, H, W, 3|4], got {frames.shape}')
  t, h, w = frames.shape[:3]
  with open(path, 'wb') as f:
    f.write(f'YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 {colour} XCOLORRANGE=FULL\n'.encode())
    for i in range(t):
      f.write(b'FRAME\n')
      for plane in planes:
        f.write(np.ascontiguousarray(plane[i]).tobytes())


def split_train_val(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
  """Stratified split of indices: about `val_fraction` of every class (at least one if the class has 2+ videos)."""
  rng = np.random.default_rng(seed + 1)
  train, val = [], []
  for c in sorted(set(labels)):
    idx = [i for i, lab in enumerate(labels) if lab == c]
    rng.shuffle(idx)
    k = int(round(val_fraction * len(idx)))
    if val_fraction > 0 and k == 0 and len(idx) >= 2:
      k = 1
    val += idx[:k]
    train += idx[k:]
  return sorted(train), sorted(val)


def generate(output_dir: str, num_videos: int, *, width: int = 128, height: int = 128, num_frames: int = 32,
             seed: int = 0, val_fraction: float = 0.25, fps: float = 25.0,
             max_pan: float = DEFAULT_MAX_PAN, num_objects: int = 1, object_scale: float = 1.0,
             task: str = 'motion') -> list[VideoSpec]:
  """Writes `num_videos` videos (classes of `task` round robin) and the CSVs; returns their specs in order."""
  if num_videos < 1:
    raise ValueError(f'num_videos={num_videos} must be >= 1')
  if width < 32 or height < 32 or width % 2 or height % 2:
    raise ValueError(f'size {width}x{height} must be even and at least 32x32')
  if num_frames < 8:
    raise ValueError(f'num_frames={num_frames} must be >= 8')
  rng = np.random.default_rng(seed)
  video_dir = os.path.join(output_dir, 'videos')
  os.makedirs(video_dir, exist_ok=True)
  specs, rows = [], []
  classes = APPEARANCE_CLASSES if task == 'appearance' else CLASSES
  for i in range(num_videos):
    spec = sample_spec(rng, i % len(classes), width, height, num_frames, max_pan, num_objects=num_objects,
                       object_scale=object_scale, task=task)
    rel = os.path.join('videos', f'{i:05d}_{spec.task_class_name}.mp4')
    write_mp4(os.path.join(output_dir, rel), render(spec), fps)
    specs.append(spec)
    rows.append((rel, spec.task_label))
  train, val = split_train_val([s.task_label for s in specs], val_fraction, seed)
  for name, idx in (('all.csv', range(num_videos)), ('train.csv', train), ('val.csv', val)):
    with open(os.path.join(output_dir, name), 'w') as f:
      f.write('path,label\n')
      f.writelines(f'{rows[i][0]},{rows[i][1]}\n' for i in idx)
  with open(os.path.join(output_dir, prep_outputs.LABEL_MAP), 'w') as f:  # The format data prep's --label_map reads.
    json.dump({name: i for i, name in enumerate(classes)}, f, indent=1)
  with open(os.path.join(output_dir, 'ground_truth.jsonl'), 'w') as f:
    for (rel, _), spec in zip(rows, specs):
      f.write(json.dumps({'path': rel, **dataclasses.asdict(spec)}) + '\n')
  return specs


def define_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string('output_dir', None, 'Where to write videos/, the CSVs and label_map.json.', flag_values=fv,
                      required=True)
  flags.DEFINE_integer('num_videos', 48, 'Number of videos (classes round robin).', flag_values=fv)
  flags.DEFINE_string('size', '128x128', 'Frame size WxH (or N for square), even, >= 32.', flag_values=fv)
  flags.DEFINE_integer('frames', 32, 'Frames per video.', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Random seed (same seed -> same videos).', flag_values=fv)
  flags.DEFINE_float('val_fraction', 0.25, 'Fraction of each class in val.csv.', flag_values=fv)
  flags.DEFINE_float('max_pan', DEFAULT_MAX_PAN, 'Camera pan speed bound, px/frame (0 = static camera).',
                     flag_values=fv)
  flags.DEFINE_integer('num_objects', 1, 'Moving objects per video (all with the class motion; later ones in front).',
                       flag_values=fv)
  flags.DEFINE_float('object_scale', 1.0, 'Size of the objects relative to the default (several objects share it).',
                     flag_values=fv)
  flags.DEFINE_enum('task', 'motion', list(TASKS), 'What defines the class: the objects\' motion, or their appearance '
                    '(shape x colour family, with a random motion).', flag_values=fv)


def _main(f, rest) -> None:
  del rest
  w, h = _parse_size(f.size)
  cli.writable_dir(f.output_dir, '--output_dir')
  specs = generate(f.output_dir, f.num_videos, width=w, height=h, num_frames=f.frames, seed=f.seed,
                   val_fraction=f.val_fraction, max_pan=f.max_pan, num_objects=f.num_objects,
                   object_scale=f.object_scale, task=f.task)
  out = os.path.abspath(f.output_dir)
  cli.summary(f'wrote {len(specs)} videos ({w}x{h}, {f.frames} frames, 8 {f.task} classes) to {out}; '
              f'CSVs: all.csv, train.csv, val.csv; label map: label_map.json',
              [('videos', os.path.join(out, 'videos')),
               ('train / val lists', os.path.join(out, 'train.csv') + ', ' + os.path.join(out, 'val.csv'))],
              [f'python -m data_prep.extract --input={os.path.join(out, "train.csv")} '
               f'--label_map={os.path.join(out, prep_outputs.LABEL_MAP)} --output_dir={out}_prep/train'])


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI (`m3video_jax.cli` convention); returns the exit status."""
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m data_prep.synthetic',
                 errors=(ValueError,))


def _parse_size(text: str) -> tuple[int, int]:
  """'128' -> (128, 128); '160x120' -> (160, 120) as (width, height)."""
  parts = text.lower().split('x')
  try:
    if len(parts) == 1:
      return int(parts[0]), int(parts[0])
    if len(parts) == 2:
      return int(parts[0]), int(parts[1])
  except ValueError:
    pass
  raise ValueError(f'--size={text!r} must be N or WxH, e.g. 128 or 160x120')


if __name__ == '__main__':
  sys.exit(main())
