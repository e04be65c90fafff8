"""stemseg-jax: STEm-Seg video instance segmentation in JAX/Flax."""

from stemseg_jax.xla_cpu import prefer_eigen_convolutions

__version__ = "0.1.0"

# Before anything imports JAX's backends: XLA:CPU's default convolution path is 2-3x slower here.
prefer_eigen_convolutions()
