"""The pretraining input: prepared records -> host-local batches of clips and the inputs of the motion targets.

Per record (`make_clip_fn`, seeded by (config.seed, process, epoch, stream position)): parse -> clip sampling ->
JPEG decode of the needed frames only -> the same multi-scale crop and flip for the frames and the trajectories ->
the trajectory-aligned HOG lookup; with `data.clips_per_record = R` the record gives R clips, consecutive in the batch.
Records may be whole videos or segments of them (data prep `--segment_frames`): a clip is drawn inside its record. The
record order, resume and damaged-record handling are the shared stream's (`stream.train_stream`,
`stream.TrainIterator`).

Where the arithmetic runs is `data.clip_ops` ('auto', the default: 'device' on a GPU or TPU, 'host' on CPU):
  'device': the host parses, samples, decodes the crop and cuts fixed windows of the stored trajectories and
    HOG maps; the batch holds those raw parts (`clip_device.RAW_KEYS`: frames uint8 [b, T, res, res, 3] with the crop
    in its top-left `frame_size`, the crop box, flip, int8 trajectory and uint8 HOG windows), and
    `clip_device.assemble` turns them into the batch below inside the jitted step (`tasks.PretrainTask.forward`).
  'host': tf.data computes the batch below itself (the same values up to float rounding: tests/clip_device_test.py).

Finished batch (leading dim = local batch `b`):
  video       uint8   [b, T, res, res, 3]   RGB (normalised on the device: `schema.normalize_video`)
  traj_disp   float32 [b, T/pt, G, G, L, 2] (Δx, Δy) in model-input pixels, G = res // 8 (L = the steps the target
                                           reads: target.traj_len, x frame_stride with target.interpolate=False)
  traj_valid  bool    [b, T/pt, G, G]
  traj_hog    float32 [b, T/pt, G, G, L, 9]   only when the target uses it (`ClipSpec.with_hog`)
  traj_quantum float32 [b]                 the storage quantum of traj_disp in model-input pixels (1/4 prep px x the
                                           crop's resize factor; `targets.moving_tokens`)
  map_<name>  float32 [b, T/pt, G, G, F, C] the stored maps a target reads at the output cells (flow, HOF, MBH, dense
                                           HOG: `clip_device.STORED_MAPS`), sent as windows by both paths
                                           (`stored_maps`) and resampled by `clip_device.assemble` in the jitted step
  label       int32   [b]
  _id         int64   [b]  position in the stream (gaps = skipped corrupt records)
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

from m3video_jax.data import clip_device
from m3video_jax.data import clip_ops
from m3video_jax.data import schema
from m3video_jax.data import stream


# What one training clip looks like (static for the jitted step), and whether the host or the device finishes it.
ClipSpec = clip_device.ClipLayout


def clip_span(spec: ClipSpec) -> int:
  """Frames from a clip's first frame to its last frame or the last frame its last tubelet's trajectories (or stored
  maps: a frame pair's second frame) reach."""
  last_tubelet = (spec.num_frames - spec.tubelet) * spec.frame_stride
  maps = last_tubelet + max(spec.map_offsets) + 1 if spec.map_offsets else 0
  return max((spec.num_frames - 1) * spec.frame_stride, last_tubelet + spec.traj_len, maps) + 1


def check_stored_records(shards: list[str], spec: ClipSpec) -> dict[str, int]:
  """Checks that the records of every shard can serve `spec`, from each shard's own data_prep settings
  (`stream.prep_settings`: the manifest beside it, else its first record), and reads the first record of the first
  non-empty shard.

  A glob may hold shards of several prep runs (e.g. `--traj_len=4` and `6`): a shard that cannot serve the config is
  named here, before training, with the setting; it is not damaged, so it must not surface later as a corrupt record
  (which `data.skip_corrupt` would silently drop).

  Returns:
    The first record's trajectory length, start stride and grid step.

  Raises:
    stream.DataError: naming the shards and the setting, when a shard has another schema version, its stored
      trajectories are shorter than `target.traj_len`, its segment records are shorter than a clip (`clip_span`), or
      its start stride does not divide the tubelet spacing; also when no shard holds a record.
  """
  first = next(((s, raw) for s in shards if (raw := stream.first_record(s)) is not None), None)
  if first is None:
    raise stream.DataError(f'none of the {len(shards)} shards holds a record: {shards[:5]}')
  shard, raw = first
  try:
    rec = schema.parse_example(raw)
  except schema.SchemaError as e:
    raise stream.CorruptRecordError(f'{shard}: first record is unreadable: {e}') from e
  span = clip_span(spec)
  spacing = spec.tubelet * spec.frame_stride
  rules = (
      ('schema_version', lambda v: v not in schema.READABLE_VERSIONS,
       lambda v: f'have schema_version={v}, this code reads {schema.READABLE_VERSIONS}; re-run data_prep'),
      ('traj_len', lambda v: v < spec.traj_len,
       lambda v: f'store trajectories of L={v} steps, but the target reads {spec.traj_len} (config.target.traj_len, '
                 f'times data.frame_stride with target.interpolate=False); re-run data_prep with '
                 f'--traj_len={spec.traj_len} or lower target.traj_len'),
      ('segment_frames', lambda v: 0 < v < span,
       lambda v: f'hold segments of {v} frames, but a clip of {spec.num_frames} frames at stride {spec.frame_stride} '
                 f'with L={spec.traj_len} spans {span} frames; re-run data_prep with --segment_frames >= {span} (or 0 '
                 'for whole videos)'),
      ('traj_start_stride', lambda v: v <= 0 or spacing % v,
       lambda v: f'store trajectory starts every {v} frames, which does not divide the tubelet spacing tubelet x '
                 f'frame_stride = {spacing}; use an even frame_stride or re-run data_prep with --traj_start_stride=1'),
  )
  needed = schema.motion_maps_mask([m for m in spec.maps if m in schema.MOTION_MAPS])
  if needed:
    rules += (('motion_maps', lambda v: needed & ~v,
               lambda v: f'hold the motion maps {list(schema.motion_maps_from_mask(v)) or "(none)"}, but the target '
                         f'needs {list(schema.motion_maps_from_mask(needed))}; re-run data_prep with '
                         f'--motion_maps={",".join(schema.motion_maps_from_mask(needed | v))}'),)
  problem = stream.mismatched_shards(stream.prep_settings(shards), rules, 'config.data.train_files')
  if problem:
    raise stream.DataError(problem)
  short = min(int(rec[schema.HEIGHT]), int(rec[schema.WIDTH]))
  if (spec.on_device or spec.maps) and short > spec.prep_short_side:
    raise stream.DataError(
        f'{shard}: frames of {rec[schema.WIDTH]}x{rec[schema.HEIGHT]} px have a short side of {short} px, longer than '
        f'config.data.prep_short_side={spec.prep_short_side}, which sizes the windows data.clip_ops=\'device\' (and a '
        f'target that reads stored maps) sends; '
        f'set --config.data.prep_short_side={short} (data prep\'s --short_side)')
  return {k: rec[k] for k in (schema.TRAJ_LEN, schema.TRAJ_START_STRIDE, schema.GRID)}


def record_seeds(seed: tf.Tensor, clips_per_record: int) -> list[tf.Tensor]:
  """The seeds of a record's clips from its element seed (`stream.element_seed`): the seed itself for one clip (so a
  clip's draws are exactly those of earlier versions), else `clips_per_record` seeds split from it."""
  if clips_per_record == 1:
    return [seed]
  return tf.unstack(tf.random.experimental.stateless_split(seed, clips_per_record))


def draw_clip(config, spec: ClipSpec, rec: dict[str, Any], seed: tf.Tensor, *, train: bool = True):
  """The random draws of one clip of a parsed record: its frames and trajectory starts (`clip_ops.sample_clip`), its
  crop (`clip_ops.multiscale_crop_params`) and its flip.

  Returns:
    frame_idx `[T]`, tubelet_first `[Tt]`, start_idx `[Tt]`, has_traj `[Tt]`, crop (offset_y, offset_x, crop_h,
    crop_w) and flip (a bool scalar).
  """
  d = config.data
  seed_clip, seed_crop, seed_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  frame_idx, tubelet_first, start_idx, has_traj = clip_ops.sample_clip(
      rec[schema.NUM_FRAMES], rec[schema.NUM_STARTS], seed_clip, clip_frames=spec.num_frames,
      frame_stride=spec.frame_stride, tubelet=spec.tubelet, traj_len=spec.traj_len,
      start_stride=tf.cast(rec[schema.TRAJ_START_STRIDE], tf.int32), random_start=train)
  crop = clip_ops.multiscale_crop_params(rec[schema.HEIGHT], rec[schema.WIDTH], seed_crop,
                                         scales=tuple(d.crop_scales), max_distort=d.crop_max_distort, res=spec.res,
                                         random=train)
  flip = (tf.random.stateless_uniform([], seed_flip) < 0.5) if (d.flip and train) else tf.constant(False)
  return frame_idx, tubelet_first, start_idx, has_traj, crop, flip


def stored_maps(rec, spec: ClipSpec, tubelet_first, crop, flip, gh, gw, num_frames, origin) -> dict[str, tf.Tensor]:
  """The windows of the stored per-frame maps a target reads at the output cells (`spec.maps`,
  `clip_device.STORED_MAPS`) and the geometry `clip_device.assemble` resamples them with: the `spec.map_offsets` frames
  of every tubelet (a frame pair's map for the flow-derived ones; past the record's end the last one repeats),
  `spec.traj_window` cells from `origin` (the trajectory window's first cell, `clip_ops.window_origin`)."""
  oy, ox, ch, cw = crop
  ty, tx = origin
  frames = tf.reshape(tubelet_first[:, None] + tf.constant(spec.map_offsets, tf.int32)[None, :], [-1])
  out = {'crop': tf.stack([oy, ox, ch, cw]), 'flip': flip, 'grid_size': tf.stack([gh, gw]),
         'map_origin': tf.stack([ty, tx])}
  for name in spec.maps:
    if name == 'hog':
      strings, scales, last = rec[schema.HOG_MAP].values, rec[schema.HOG_SCALE].values, num_frames - 1
    else:
      map_key, scale_key = schema.MAP_KEYS[name]
      strings, last = rec[map_key].values, num_frames - 2
      scales = rec[scale_key].values if scale_key else None
    at = tf.minimum(frames, last)
    out[f'{name}_map_raw'] = clip_ops.map_window(tf.gather(strings, at), gh, gw, ty, tx, spec.traj_window,
                                                 clip_device.MAP_CHANNELS[name],
                                                 tf.int8 if name == 'flow' else tf.uint8, zlib=name != 'hog')
    if scales is not None:
      out[f'{name}_map_scale'] = tf.gather(scales, at)
  return out


def make_clip_fn(config, spec: ClipSpec, *, train: bool = True, process_index: int = 0, clips_per_record: int = 1):
  """Returns `fn(epoch, index, serialized) -> features` producing the clips of one record and their target inputs.

  With `clips_per_record = R > 1` every feature has a leading `[R]` dim: R clips, each with its own start, crop and
  flip (`record_seeds`), decoded from the one parse of the record (`stream.train_stream` with `stacked=True` puts them
  into the same batch). With R = 1 a clip's draws are exactly those of earlier versions.
  """
  feature_spec = schema.tf_feature_spec()
  base_seed = stream.process_seed(config.seed, process_index)

  def one_clip(rec, seed, index):
    # A VarLen list's `values` is the whole list (every entry is present): no dense copy of the record's strings.
    frames, hog_maps = rec[schema.FRAMES].values, rec[schema.HOG_MAP].values
    disp_strings, inside_strings = rec[schema.TRAJ_DISP].values, rec[schema.TRAJ_INSIDE].values
    grid = tf.cast(rec[schema.GRID], tf.int32)
    gh, gw = tf.cast(rec[schema.HEIGHT], tf.int32) // grid, tf.cast(rec[schema.WIDTH], tf.int32) // grid
    num_frames = tf.cast(rec[schema.NUM_FRAMES], tf.int32)
    stored_len = tf.cast(rec[schema.TRAJ_LEN], tf.int32)
    frame_idx, tubelet_first, start_idx, has_traj, (oy, ox, ch, cw), flip = draw_clip(config, spec, rec, seed,
                                                                                       train=train)
    ids = {'label': tf.cast(rec[schema.LABEL], tf.int32), '_id': index}
    if spec.on_device or spec.maps:  # Fixed windows of cells around the crop go to the device.
      tf.debugging.assert_less_equal(
          tf.maximum(ch, cw), spec.prep_short_side,
          message=f'a crop side exceeds config.data.prep_short_side={spec.prep_short_side} (the records were prepared '
                  'with a longer short side: set data.prep_short_side to data prep\'s --short_side)')
      ty = clip_ops.window_origin(oy, ch, gh, spec.res, spec.grid_step)
      tx = clip_ops.window_origin(ox, cw, gw, spec.res, spec.grid_step, flip)
    if spec.maps:
      ids.update(stored_maps(rec, spec, tubelet_first, (oy, ox, ch, cw), flip, gh, gw, num_frames, (ty, tx)))
    if spec.on_device:
      # The host half of the clip (`clip_device.RAW_KEYS`): the decoded crop and windows of the stored trajectories
      # and HOG maps; `clip_device.assemble` finishes it in the jitted step.
      video, frame_size = clip_ops.decode_crop_frames_raw(tf.gather(frames, frame_idx), offset_y=oy, offset_x=ox,
                                                          crop_h=ch, crop_w=cw, res=spec.res)
      traj_raw, traj_ok = clip_ops.trajectory_window(tf.gather(disp_strings, start_idx),
                                                     tf.gather(inside_strings, start_idx), gh, gw, stored_len,
                                                     spec.traj_len, ty, tx, spec.traj_window)
      out = {'frames': video, 'frame_size': frame_size, 'crop': tf.stack([oy, ox, ch, cw]), 'flip': flip,
             'grid_size': tf.stack([gh, gw]), 'traj_raw': traj_raw,
             'traj_ok': tf.logical_and(traj_ok, has_traj[:, None, None]), 'traj_origin': tf.stack([ty, tx])}
      if spec.with_hog:
        if spec.hog_contiguous:
          hog_frames = tubelet_first[0] + tf.range(spec.hog_frames)
        else:
          hog_frames = tf.reshape(tubelet_first[:, None] + tf.range(spec.traj_len)[None, :], [-1])
        hog_frames = tf.minimum(hog_frames, num_frames - 1)
        hy, hx = ty - spec.hog_margin, tx - spec.hog_margin
        out['hog_raw'] = clip_ops.hog_window(tf.gather(hog_maps, hog_frames), gh, gw, hy, hx, spec.hog_window)
        out['hog_scale'] = tf.gather(rec[schema.HOG_SCALE].values, hog_frames)
        out['hog_origin'] = tf.stack([hy, hx])
      return {**out, **ids}
    video = clip_ops.decode_crop_frames(tf.gather(frames, frame_idx), offset_y=oy, offset_x=ox, crop_h=ch, crop_w=cw,
                                        res=spec.res, flip=flip)
    disp, valid = clip_ops.decode_trajectories(tf.gather(disp_strings, start_idx), tf.gather(inside_strings, start_idx),
                                               gh, gw, stored_len, spec.traj_len)
    valid = tf.logical_and(valid, has_traj[:, None, None])
    hog_frames = tf.minimum(tubelet_first[:, None] + tf.range(spec.traj_len)[None, :], num_frames - 1)
    hog_strings = hog_scales = None
    if spec.with_hog:
      hog_strings = tf.gather(hog_maps, hog_frames)
      hog_scales = tf.gather(rec[schema.HOG_SCALE].values, hog_frames)
    disp, valid, hog = clip_ops.crop_flip_trajectories(
        disp, valid, hog_strings, hog_scales, offset_y=oy, offset_x=ox, crop_h=ch, crop_w=cw, res=spec.res, flip=flip,
        grid_step=spec.grid_step)
    hog_feature = {'traj_hog': hog} if spec.with_hog else {}
    return {
        'video': video,
        'traj_disp': disp,
        'traj_valid': valid,
        **hog_feature,
        'traj_quantum': tf.cast(spec.res, tf.float32) / tf.cast(tf.minimum(ch, cw), tf.float32)
                        / schema.DISP_UNITS_PER_PX,
        **ids,
    }

  def fn(epoch, index, serialized):
    rec = tf.io.parse_single_example(serialized, feature_spec)
    clips = [one_clip(rec, s, index)
             for s in record_seeds(stream.element_seed(base_seed, epoch, index), clips_per_record)]
    if clips_per_record == 1:
      return clips[0]
    return {k: tf.stack([c[k] for c in clips]) for k in clips[0]}

  return fn


def make_train_dataset(config, *, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                       shards: list[str] | None = None) -> tuple[tf.data.Dataset, dict[str, Any]]:
  """This process's stream of pretraining clips (`stream.train_stream`), after checking that the stored records can
  serve `ClipSpec.from_config(config)` (`check_stored_records`)."""
  spec = ClipSpec.from_config(config)
  r = config.data.get('clips_per_record', 1)
  return stream.train_stream(config, make_clip_fn(config, spec, train=True, process_index=process_index,
                                                  clips_per_record=r),
                             clips_per_record=r, stacked=r > 1, process_index=process_index,
                             process_count=process_count, start_step=start_step, shards=shards,
                             check=lambda s: check_stored_records(s, spec))


def train_iterator(config, *, process_index: int = 0, process_count: int = 1, start_step: int = 0,
                   **kwargs) -> stream.TrainIterator:
  return stream.TrainIterator(config, make_train_dataset, process_index=process_index, process_count=process_count,
                              start_step=start_step, **kwargs)
