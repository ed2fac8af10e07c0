"""Transformer building blocks shared by the encoder and the decoder: sin-cos table, attention, MLP, pre-norm block.

Shapes: tokens `[B, N, D]`; `H` heads of size `Dh = D // H`.

Parameter names (they are API: the PyTorch/HF exporter and the goldens depend on them). One `EncoderBlock` of width `D`
and MLP width `M` holds, with the PyTorch (VideoMAE/MME) key it maps to:

  norm1/scale, norm1/bias            [D]       blocks.i.norm1.weight / .bias
  attn/qkv/kernel                    [D, 3D]   blocks.i.attn.qkv.weight (3D, D), transposed; no qkv bias.
                                               Columns 0..D-1 = q, D..2D-1 = k, 2D..3D-1 = v; within each,
                                               column = head * Dh + d (the `[3, H, Dh]` split of PyTorch's reshape).
  attn/q_bias, attn/v_bias           [D]       blocks.i.attn.q_bias / v_bias (the key has no bias)
  attn/proj/kernel, attn/proj/bias   [D, D],[D]  blocks.i.attn.proj.weight (transposed) / .bias
  norm2/scale, norm2/bias            [D]       blocks.i.norm2.weight / .bias
  mlp/fc1/kernel, mlp/fc1/bias       [D, M],[M]  blocks.i.mlp.fc1.weight (transposed) / .bias
  mlp/fc2/kernel, mlp/fc2/bias       [M, D],[D]  blocks.i.mlp.fc2.weight (transposed) / .bias

Numerics follow the reference: LayerNorm eps 1e-6 (two-pass variance), exact (erf) GELU, attention scale `Dh**-0.5`,
softmax in float32 whatever the compute dtype. Parameters are always float32; `dtype` is the compute dtype.

Attention implementations (`config.model.attention`, `resolve_attention`): `explicit` is the hand-written attention
below, tuned for XLA:CPU; `xla` and `cudnn` are `jax.nn.dot_product_attention` with that `implementation` (`cudnn`:
cuDNN flash attention, CUDA GPUs and bfloat16 only); `auto` picks `explicit` on the CPU backend and `xla` on GPU/TPU.
All give the same function and the same parameters. With `remat=True` (`config.model.remat`) each block is wrapped in
`nn.remat` (`encoder_block`): its activations are recomputed in the backward pass instead of stored.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

LN_EPS = 1e-6
# The reference initialises every Linear of the encoder, decoder blocks and heads with xavier_uniform, biases 0.
xavier_uniform = nn.initializers.xavier_uniform()
# PyTorch's default Linear/Conv init (kaiming_uniform with a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def sincos_table(num_positions: int, dim: int) -> np.ndarray:
  """The reference's fixed 1-D sinusoid table over flattened token indices (not a parameter).

  `angle[p, j] = p / 10000**(2 * (j // 2) / dim)`; even columns hold `sin`, odd columns `cos` (interleaved).

  Args:
    num_positions: `N`, the number of tokens (`t * h * w`).
    dim: `D`, the token width.

  Returns:
    float32 `[N, D]` (computed in float64 like the reference, then cast).
  """
  pos = np.arange(num_positions, dtype=np.float64)[:, None]
  j = np.arange(dim)
  angle = pos / np.power(10000.0, 2 * (j // 2) / dim)[None, :]
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table.astype(np.float32)


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, use_fast_variance=False, name=name)


ATTENTION_IMPLEMENTATIONS = ('auto', 'explicit', 'xla', 'cudnn')


def resolve_attention(attention: str, backend: str | None = None) -> str:
  """The attention implementation that `attention` (`config.model.attention`) runs on `backend`.

  Args:
    attention: one of `ATTENTION_IMPLEMENTATIONS`.
    backend: a JAX backend name; default `jax.default_backend()`, read when the model is traced (so a model traced
      for CPU devices on a GPU host still counts as GPU).

  Returns:
    'explicit', 'xla' or 'cudnn' ('auto': 'explicit' on the CPU backend, 'xla' on GPU and TPU).

  Raises:
    ValueError: naming the field for an unknown value, or for 'cudnn' on a backend other than a GPU.
  """
  if attention not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f'config.model.attention={attention!r} is invalid: expected one of {ATTENTION_IMPLEMENTATIONS}')
  backend = backend or jax.default_backend()
  if attention == 'auto':
    return 'explicit' if backend == 'cpu' else 'xla'
  if attention == 'cudnn' and backend != 'gpu':
    raise ValueError(f"config.model.attention='cudnn' (cuDNN flash attention) needs a CUDA GPU, but the JAX backend "
                     f"is {backend!r}; use 'auto' (or 'xla' / 'explicit') there")
  return attention


class Attention(nn.Module):
  """Multi-head self-attention with a fused bias-free `qkv` projection plus separate q and v biases (no k bias).

  Attributes:
    num_heads: `H`.
    dtype: compute dtype (params stay float32; logits and softmax run in float32 with every implementation).
    attention: implementation, one of `ATTENTION_IMPLEMENTATIONS` (`resolve_attention`).
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """`[B, N, D] -> [B, N, D]`."""
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f'attention width {d} is not divisible by num_heads={self.num_heads}')
    dh = d // self.num_heads
    qkv = nn.Dense(3 * d, use_bias=False, kernel_init=xavier_uniform, dtype=self.dtype, name='qkv')(x)
    q_bias = self.param('q_bias', nn.initializers.zeros, (d,), jnp.float32)
    v_bias = self.param('v_bias', nn.initializers.zeros, (d,), jnp.float32)
    # `[B, N, 3, H, Dh]` is the reference's qkv layout. `lax.split` (not slicing): its backward pass writes the three
    # gradients once, as a concatenation, instead of padding each to the full qkv shape and adding them.
    q, k, v = (t[:, :, 0] for t in jax.lax.split(qkv.reshape(b, n, 3, self.num_heads, dh), (1, 1, 1), axis=2))
    q = q + q_bias.reshape(self.num_heads, dh).astype(self.dtype)
    v = v + v_bias.reshape(self.num_heads, dh).astype(self.dtype)
    implementation = resolve_attention(self.attention)
    if implementation == 'explicit':
      out = _explicit_attention(q, k, v, self.dtype)
    else:
      if implementation == 'cudnn' and jnp.dtype(self.dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"config.model.attention='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention has no "
                         f"{jnp.dtype(self.dtype).name} kernel); use 'auto' or 'xla' for float32")
      # `[B, N, H, Dh]` is the function's `BTNH` layout. It scales the logits by `Dh**-0.5` itself; the logits and the
      # softmax are float32 for bfloat16 inputs too (bf16 x bf16 -> f32 products), the weights are cast back to the
      # compute dtype for the value product (as in `_explicit_attention`).
      out = jax.nn.dot_product_attention(q, k, v, implementation=implementation).astype(self.dtype)
    out = out.reshape(b, n, d)
    return nn.Dense(d, kernel_init=xavier_uniform, dtype=self.dtype, name='proj')(out)


def _explicit_attention(q: jax.Array, k: jax.Array, v: jax.Array, dtype: Dtype) -> jax.Array:
  """`softmax(q k^T * Dh**-0.5) v` written for XLA:CPU: `[B, N, H, Dh]` x 3 -> `[B, N, H, Dh]` in `dtype`."""
  dh = q.shape[-1]
  q = q * jnp.asarray(dh**-0.5, dtype)
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [B, H, N, Dh]: head-major batched matmuls.
  logits = jnp.einsum('bhqd,bhkd->bhqk', q, k, preferred_element_type=jnp.float32)
  # Softmax with its normalisation moved after the value product: `(exp(l - max) @ v) / sum(exp(l - max))` equals
  # `softmax(l) @ v` but never materialises the normalised `[B, H, N, N]` weights, which halves the attention
  # backward pass on CPU at the decoder's N = 392. The max shift is a constant for differentiation.
  e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  out = jnp.einsum('bhqk,bhkd->bhqd', e.astype(dtype), v, preferred_element_type=jnp.float32)
  out = (out / e.sum(axis=-1, keepdims=True)).astype(dtype)
  return out.transpose(0, 2, 1, 3)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, `x * Phi(x)`, written with `erf` as PyTorch's `nn.GELU()` (the reference's).

  Not `jax.nn.gelu(approximate=False)`: that uses `erfc`, whose two-branch polynomial makes the forward and backward
  passes of the MLP cost ~2% of a ViT-S training step more on CPU. (flax's `nn.gelu` defaults to the tanh form.)
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(1.0 / np.sqrt(2.0), x.dtype)))


class Mlp(nn.Module):
  """`fc1 (D -> M) -> exact GELU -> fc2 (M -> D)`."""
  mlp_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, kernel_init=xavier_uniform, dtype=self.dtype, name='fc1')(x)
    x = gelu(x)
    return nn.Dense(d, kernel_init=xavier_uniform, dtype=self.dtype, name='fc2')(x)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example (rng collection `'dropout'`). No parameters."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng('dropout')
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: `x + DropPath(Attn(LN1(x)))`, then `x + DropPath(MLP(LN2(x)))`.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden width of the MLP.
    drop_path_rate: stochastic depth rate of this block.
    dtype: compute dtype.
    attention: attention implementation (`resolve_attention`).
  """
  num_heads: int
  mlp_dim: int
  drop_path_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """`[B, N, D] -> [B, N, D]`; `train` enables drop path. `train` may be passed by position: `nn.remat` needs it
    positional to keep it static (`encoder_block`)."""
    y = layer_norm('norm1', self.dtype)(x)
    y = Attention(self.num_heads, dtype=self.dtype, attention=self.attention, name='attn')(y)
    x = x + DropPath(self.drop_path_rate, name='drop_path_attn')(y, train=train)
    y = layer_norm('norm2', self.dtype)(x)
    y = Mlp(self.mlp_dim, dtype=self.dtype, name='mlp')(y)
    x = x + DropPath(self.drop_path_rate, name='drop_path_mlp')(y, train=train)
    # Mark the block boundary for the backward pass (see `materialize_cotangent`).
    return materialize_cotangent(x)


# The block with rematerialisation: only its input is kept for the backward pass, which recomputes the rest (about a
# third more compute for a fraction of the activation memory). Argument 2 (`train`, counting the module) is static.
RematEncoderBlock = nn.remat(EncoderBlock, static_argnums=(2,))


def encoder_block(remat: bool) -> type[EncoderBlock]:
  """`EncoderBlock`, or `RematEncoderBlock` when `remat` (same parameters); call the block as `block(x, train)`."""
  return RematEncoderBlock if remat else EncoderBlock


@jax.custom_vjp
def materialize_cotangent(x: jax.Array) -> jax.Array:
  """Identity whose backward pass writes the incoming cotangent to memory once (on the CPU backend).

  Why: in a deep pre-norm transformer the residual-stream cotangent at block `i` is an elementwise sum of the
  LayerNorm gradients of all later blocks. XLA:CPU fuses elementwise producers into every consumer, duplicating them,
  so each block's backward recomputed the whole chain (work quadratic in depth; ~25% of a ViT-S training step on CPU).
  A loop with a data-dependent trip count is a fusion boundary XLA cannot remove (`optimization_barrier` is dropped
  before fusion on CPU); it runs zero times unless the cotangent is NaN, and its body is also the identity. Other
  backends fuse with a cost model and get a plain identity. Not differentiable in forward mode (`jax.jvp`).
  """
  return x


def _materialize_fwd(x):
  return x, None


def _materialize_bwd(_, g):
  if jax.default_backend() != 'cpu':
    return (g,)
  first = g.reshape(-1)[0]
  trips = (first != first).astype(jnp.int32)  # 0, or 1 for NaN: data dependent, so XLA keeps the loop.
  # The body must not look like a pass-through, or JAX/XLA forward the carry and drop the boundary.
  body = lambda c: (c[0] + 1, c[1] + jnp.asarray(0, g.dtype) * c[0].astype(g.dtype))
  _, g = jax.lax.while_loop(lambda c: c[0] < trips, body, (jnp.int32(0), g))
  return (g,)


materialize_cotangent.defvjp(_materialize_fwd, _materialize_bwd)
