"""Per-clip TensorFlow augmentations of the classification input: random resized crop, RandAugment, random erasing.

Video clips are `[T, H, W, 3]` float32. Every op draws its randomness once per clip from an explicit stateless seed and
applies it to every frame alike (the reference's "same op and magnitude on every frame" RandAugment and `cube=True`
erasing), so a clip is a deterministic function of (record, seed).

RandAugment follows timm's `rand-m{M}-n{N}-mstd{S}-inc1` (the reference's `rand-m7-n4-mstd0.5-inc1`, the paper's
"(9, 0.5)"): `N` ops drawn with replacement from the 15 "increasing" ops, each applied with probability 0.5 at magnitude
`clip(N(M, S), 0, 10)`, signed ops negated with probability 0.5. Differences from timm/PIL, kept on purpose:
geometric ops use bilinear interpolation (timm draws bilinear or bicubic), and the whole RandAugment runs after the
random resized crop on the `res x res` clip instead of before it on the native frames (cheaper; relative translate and
the other ops are resolution-independent).
"""
from __future__ import annotations

import math

import tensorflow as tf

# timm RandAugment "increasing" op set (`_RAND_INCREASING_TRANSFORMS`), in timm's order.
RAND_AUGMENT_OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
                    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                    'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
# Fill of the geometric ops: timm's `img_mean` (ImageNet mean x 255, rounded).
FILL = (124.0, 116.0, 104.0)
_MAX_LEVEL = 10.0
_TRANSLATE_PCT = 0.45


def _split(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _first_true(ok: tf.Tensor) -> tf.Tensor:
  return tf.argmax(tf.cast(ok, tf.int32), output_type=tf.int32)


def random_resized_crop_params(height, width, seed, *, area_range=(0.25, 1.0), aspect_range=(3 / 4, 4 / 3),
                               attempts: int = 10):
  """timm/torchvision `RandomResizedCrop` box: area uniform in `area_range` of the frame, log-uniform aspect.

  Up to `attempts` candidates; the first that fits wins, else the centre crop with the aspect clamped to the range.

  Returns:
    (offset_y, offset_x, crop_h, crop_w) int32 scalars.
  """
  h_img, w_img = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  hf, wf = tf.cast(h_img, tf.float32), tf.cast(w_img, tf.float32)
  seed_area, seed_ratio, seed_y, seed_x = _split(seed, 4)
  target = hf * wf * tf.random.stateless_uniform([attempts], seed_area, area_range[0], area_range[1])
  ratio = tf.exp(tf.random.stateless_uniform([attempts], seed_ratio, math.log(aspect_range[0]),
                                             math.log(aspect_range[1])))
  w = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  h = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  ok = (w > 0) & (h > 0) & (w <= w_img) & (h <= h_img)
  k = _first_true(ok)
  in_ratio = wf / hf
  fb_w = tf.where(in_ratio < aspect_range[0], w_img,
                  tf.where(in_ratio > aspect_range[1], tf.cast(tf.round(hf * aspect_range[1]), tf.int32), w_img))
  fb_h = tf.where(in_ratio < aspect_range[0], tf.cast(tf.round(wf / aspect_range[0]), tf.int32), h_img)
  found = tf.reduce_any(ok)
  crop_w = tf.where(found, tf.gather(w, k), fb_w)
  crop_h = tf.where(found, tf.gather(h, k), fb_h)
  oy = tf.random.stateless_uniform([], seed_y, 0, h_img - crop_h + 1, dtype=tf.int32)
  ox = tf.random.stateless_uniform([], seed_x, 0, w_img - crop_w + 1, dtype=tf.int32)
  oy = tf.where(found, oy, (h_img - crop_h) // 2)
  ox = tf.where(found, ox, (w_img - crop_w) // 2)
  return oy, ox, crop_h, crop_w


def _to_uint8_range(x: tf.Tensor) -> tf.Tensor:
  # PIL ops work on uint8 images: every op's output is rounded and clipped.
  return tf.clip_by_value(tf.round(x), 0.0, 255.0)


def _grayscale(x: tf.Tensor) -> tf.Tensor:
  """PIL `convert('L')`: `[T, H, W, 1]`."""
  return tf.round(tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True))


def _blend(degenerate: tf.Tensor, x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL `ImageEnhance`: `degenerate + factor * (x - degenerate)`."""
  return _to_uint8_range(degenerate + factor * (x - degenerate))


def _affine(x: tf.Tensor, a0, a1, a2, b0, b1, b2) -> tf.Tensor:
  """Output pixel `(x, y)` samples input `(a0 x + a1 y + a2, b0 x + b1 y + b2)`, bilinear, fill `FILL` outside."""
  t = tf.cast(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), tf.float32)
  transforms = tf.tile(t[None], [tf.shape(x)[0], 1])
  fill = tf.constant(FILL, tf.float32)
  # The op takes one scalar fill; shifting by the per-channel fill first is exact for (linear) bilinear sampling.
  out = tf.raw_ops.ImageProjectiveTransformV3(images=x - fill, transforms=transforms, output_shape=tf.shape(x)[1:3],
                                              fill_value=0.0, interpolation='BILINEAR', fill_mode='CONSTANT')
  return _to_uint8_range(out + fill)


def _auto_contrast(x: tf.Tensor) -> tf.Tensor:
  lo = tf.reduce_min(x, axis=[1, 2], keepdims=True)
  hi = tf.reduce_max(x, axis=[1, 2], keepdims=True)
  scaled = (x - lo) * 255.0 / tf.maximum(hi - lo, 1.0)
  return tf.where(hi > lo, _to_uint8_range(scaled), x)


def _equalize(x: tf.Tensor) -> tf.Tensor:
  """PIL `ImageOps.equalize`, per frame and channel."""
  shape = tf.shape(x)
  flat = tf.reshape(tf.transpose(tf.cast(x, tf.int32), [0, 3, 1, 2]), [shape[0] * 3, -1])  # [T*3, H*W]
  hist = tf.math.bincount(flat, minlength=256, maxlength=256, axis=-1)  # [T*3, 256]
  last_nonzero = 255 - tf.argmax(tf.cast(tf.reverse(hist, [1]) > 0, tf.int32), axis=1, output_type=tf.int32)
  step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, last_nonzero, batch_dims=1)) // 255  # [T*3]
  safe_step = tf.maximum(step, 1)[:, None]
  lut = tf.minimum((safe_step // 2 + tf.cumsum(hist, axis=1, exclusive=True)) // safe_step, 255)
  lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None])
  out = tf.gather(lut, flat, batch_dims=1)
  out = tf.transpose(tf.reshape(out, [shape[0], 3, shape[1], shape[2]]), [0, 2, 3, 1])
  return tf.cast(out, tf.float32)


def _smooth(x: tf.Tensor) -> tf.Tensor:
  """PIL `ImageFilter.SMOOTH` (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, / 13) with the 1-px border left unchanged."""
  k = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
  kernel = tf.tile(k[:, :, None, None], [1, 1, 3, 1])
  inner = tf.round(tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'VALID'))
  inner = tf.pad(inner, [[0, 0], [1, 1], [1, 1], [0, 0]])
  h, w = tf.shape(x)[1], tf.shape(x)[2]
  rows, cols = tf.range(h), tf.range(w)
  interior = ((rows > 0) & (rows < h - 1))[:, None] & ((cols > 0) & (cols < w - 1))[None, :]
  return tf.where(interior[None, :, :, None], inner, x)


def apply_op(x: tf.Tensor, op_index: tf.Tensor, magnitude: tf.Tensor, negate: tf.Tensor) -> tf.Tensor:
  """Applies `RAND_AUGMENT_OPS[op_index]` at `magnitude` in [0, 10] to every frame of `x` `[T, H, W, 3]` in [0, 255].

  `negate` flips the sign of the signed ops (rotate, shear, translate, enhance factors).
  """
  level = magnitude / _MAX_LEVEL
  sign = tf.where(negate, -1.0, 1.0)
  h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
  enhance = 1.0 + sign * level * 0.9

  def rotate():
    a = sign * level * 30.0 * math.pi / 180.0
    cx, cy = w / 2.0, h / 2.0
    cos, sin = tf.cos(a), tf.sin(a)
    return _affine(x, cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)

  def posterize():
    bits = 4 - tf.cast(level * 4.0, tf.int32)
    mask = tf.bitwise.left_shift(tf.constant(255, tf.int32), 8 - bits) & 255
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(x, tf.int32), mask), tf.float32)

  def solarize():
    threshold = 256.0 - tf.floor(level * 256.0)
    return tf.where(x >= threshold, 255.0 - x, x)

  def solarize_add():
    add = tf.floor(level * 110.0)
    return tf.where(x < 128.0, tf.minimum(x + add, 255.0), x)

  def contrast():
    mean = tf.round(tf.reduce_mean(_grayscale(x), axis=[1, 2, 3], keepdims=True))
    return _blend(mean, x, enhance)

  branches = [
      lambda: _auto_contrast(x),
      lambda: _equalize(x),
      lambda: 255.0 - x,
      rotate,
      posterize,
      solarize,
      solarize_add,
      lambda: _blend(_grayscale(x), x, enhance),
      contrast,
      lambda: _blend(tf.zeros_like(x), x, enhance),
      lambda: _blend(_smooth(x), x, enhance),
      lambda: _affine(x, 1.0, sign * level * 0.3, 0.0, 0.0, 1.0, 0.0),
      lambda: _affine(x, 1.0, 0.0, 0.0, sign * level * 0.3, 1.0, 0.0),
      lambda: _affine(x, 1.0, 0.0, sign * level * _TRANSLATE_PCT * w, 0.0, 1.0, 0.0),
      lambda: _affine(x, 1.0, 0.0, 0.0, 0.0, 1.0, sign * level * _TRANSLATE_PCT * h),
  ]
  assert len(branches) == len(RAND_AUGMENT_OPS)
  return tf.ensure_shape(tf.switch_case(op_index, branches), x.shape)


def rand_augment(x: tf.Tensor, seed: tf.Tensor, *, num_ops: int, magnitude: float, magnitude_std: float,
                 prob: float = 0.5) -> tf.Tensor:
  """timm RandAugment with one draw per clip: the same ops, magnitudes and signs on every frame.

  Args:
    x: float32 `[T, H, W, 3]` in [0, 255].
    seed: stateless seed `[2]`.
    num_ops: `N` ops, drawn with replacement.
    magnitude, magnitude_std: per op, magnitude ~ clip(N(magnitude, magnitude_std), 0, 10).
    prob: each drawn op is applied with this probability.

  Returns:
    float32 `[T, H, W, 3]` in [0, 255] (integer-valued, as PIL's uint8 output).
  """
  x = _to_uint8_range(x)
  for seed_op in _split(seed, num_ops) if num_ops else []:
    seed_choice, seed_apply, seed_mag, seed_sign = _split(seed_op, 4)
    op = tf.random.stateless_uniform([], seed_choice, 0, len(RAND_AUGMENT_OPS), dtype=tf.int32)
    mag = magnitude + magnitude_std * tf.random.stateless_normal([], seed_mag)
    mag = tf.clip_by_value(mag, 0.0, _MAX_LEVEL)
    negate = tf.random.stateless_uniform([], seed_sign) < 0.5
    apply = tf.random.stateless_uniform([], seed_apply) < prob
    x = tf.cond(apply, lambda: apply_op(x, op, mag, negate), lambda: x)
  return x


def random_erasing(x: tf.Tensor, seed: tf.Tensor, *, prob: float, area_range=(0.02, 1 / 3), min_aspect: float = 0.3,
                   attempts: int = 10, pixel_mean=None, pixel_std=None) -> tf.Tensor:
  """timm `RandomErasing(mode='pixel', max_count=1)` with one box for all frames (the reference's `cube=True`).

  With probability `prob`, one box (area uniform in `area_range` of the frame, log-uniform aspect in
  `[min_aspect, 1/min_aspect]`, first of `attempts` candidates that fits) is filled with N(0, 1) noise drawn per pixel,
  channel and frame. The reference applies it after normalisation; with `pixel_mean` and `pixel_std` (the
  normalisation's mean and std) it runs before it, on RGB in [0, 255], and fills the box with
  `255 * (mean + std * N(0, 1))`, which the device's `schema.normalize_video` turns into the same N(0, 1) noise.

  Args:
    x: float32 `[T, H, W, C]` (normalised, or RGB in [0, 255] with `pixel_mean` / `pixel_std`).

  Returns:
    `x` with the box erased, same shape.
  """
  shape = tf.shape(x)
  h_img, w_img = shape[1], shape[2]
  hf, wf = tf.cast(h_img, tf.float32), tf.cast(w_img, tf.float32)
  seed_apply, seed_area, seed_ratio, seed_y, seed_x, seed_noise = _split(seed, 6)
  target = hf * wf * tf.random.stateless_uniform([attempts], seed_area, area_range[0], area_range[1])
  ratio = tf.exp(tf.random.stateless_uniform([attempts], seed_ratio, math.log(min_aspect), -math.log(min_aspect)))
  h = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  ok = (h < h_img) & (w < w_img)
  k = _first_true(ok)
  box_h, box_w = tf.gather(h, k), tf.gather(w, k)
  top = tf.random.stateless_uniform([], seed_y, 0, tf.maximum(h_img - box_h + 1, 1), dtype=tf.int32)
  left = tf.random.stateless_uniform([], seed_x, 0, tf.maximum(w_img - box_w + 1, 1), dtype=tf.int32)
  rows, cols = tf.range(h_img), tf.range(w_img)
  inside = ((rows >= top) & (rows < top + box_h))[:, None] & ((cols >= left) & (cols < left + box_w))[None, :]
  erase = inside & tf.reduce_any(ok) & (tf.random.stateless_uniform([], seed_apply) < prob)
  noise = tf.random.stateless_normal(shape, seed_noise)
  if pixel_mean is not None:
    noise = 255.0 * (tf.constant(pixel_mean, tf.float32) + tf.constant(pixel_std, tf.float32) * noise)
  return tf.where(erase[None, :, :, None], noise, x)
