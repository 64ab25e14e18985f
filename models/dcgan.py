"""DCGAN (Radford et al. 2016, "Unsupervised representation learning with deep convolutional
generative adversarial networks"), class-conditional (Mirza & Osindero 2014): the generator
gets a one-hot class next to its noise vector, the discriminator the class as constant input
planes next to the image.

Paper rules kept: no pooling (strided and fractionally strided 4x4 convolutions), batch norm in
the generator and in the discriminator except its input layer, ReLU in the generator with tanh
at the output, leaky ReLU (0.2) in the discriminator, N(0, 0.02) weights. Sized for small
images: two up-sampling stages from H/4 x W/4 (28x28 and 32x32 alike). Pixels are in [-1, 1].

Not a classifier, so not in the registry: `--mode=gan` (gan/) builds these.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

INIT = nn.initializers.normal(0.02)


class Generator(nn.Module):
  shape: tuple[int, ...]   # (H, W, C) of one image
  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    h, w, c = self.shape
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    x = jnp.concatenate([z, jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)
    x = nn.Dense(h // 4 * (w // 4) * 2 * self.width, kernel_init=INIT)(x)
    x = nn.relu(norm()(x)).reshape(-1, h // 4, w // 4, 2 * self.width)
    x = nn.ConvTranspose(self.width, (4, 4), strides=(2, 2), padding='SAME', kernel_init=INIT)(x)
    x = nn.relu(norm()(x))
    x = nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding='SAME', kernel_init=INIT)(x)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  num_classes: int
  width: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool = False) -> jax.Array:
    onehot = jax.nn.one_hot(labels, self.num_classes, dtype=x.dtype)
    planes = jnp.broadcast_to(onehot[:, None, None], (*x.shape[:3], self.num_classes))
    x = jnp.concatenate([x, planes], -1)
    x = nn.leaky_relu(nn.Conv(self.width, (4, 4), strides=(2, 2), kernel_init=INIT)(x), 0.2)
    x = nn.Conv(2 * self.width, (4, 4), strides=(2, 2), kernel_init=INIT)(x)
    x = nn.leaky_relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x), 0.2)
    return nn.Dense(1, kernel_init=INIT)(x.reshape(x.shape[0], -1))[:, 0]
