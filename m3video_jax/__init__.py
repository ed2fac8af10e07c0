"""m3video_jax: M3Video masked motion modeling in JAX/Flax.

`import m3video_jax` stays light: `load_encoder` imports JAX and the model only when called.
"""


def load_encoder(path, step=None, **kwargs):
  """A frozen encoder from a checkpoint: `enc(uint8 [B, T, H, W, 3]) -> [B, N, D]`, `enc.pooled(video) -> [B, D]`.

  See `m3video_jax.interop.features.load_encoder` for the arguments.
  """
  from m3video_jax.interop import features  # pylint: disable=import-outside-toplevel

  return features.load_encoder(path, step, **kwargs)


__all__ = ['load_encoder']
