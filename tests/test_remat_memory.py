"""``model.remat=True`` lowers the train step's peak memory (XLA's memory analysis of the compiled step:
arguments + temporaries + outputs, deterministic; nothing runs).

Tiny config, one 8-frame 128x224 clip, float32, on the test machine's backend (XLA:CPU here, where
``jax.checkpoint``'s barrier is expanded early and the old ``nn.remat`` blocks *raised* the peak: see
``stemseg_jax/model/remat.py``). Both training set-ups of the README: stage 2 (backbone + FPN frozen,
only the decoders rematerialised) and everything trained (the backbone blocks of trained stages too).
Measured on XLA:CPU: stage 2 0.95 of the plain peak, all trained 0.66 (with ``nn.remat``: 1.05, 1.02).
Stage 2 saves little: with the backbone frozen only the decoders' activations can be dropped, and since
the shifted-sum, fusion and untiled-convolution rewrites of ``layers`` the plain peak is the first
decoder block's backward (its input, the 3x wide shifted-sum gradient), which remat needs as well; the
stage-2 bound checks that remat lowers the peak at all (the gated ``remat.py`` against ``nn.remat``).
"""

import jax
import jax.numpy as jnp
import pytest

from stemseg_jax.losses.objective import make_loss_fn
from stemseg_jax.model import build_model
from tests.helpers import load_config

# Issue 23 asks 60 % at full size (docs/BENCHMARKS.md has the full-size rows); the bounds are the tiny
# measurements above plus a margin. The old ``nn.remat`` blocks fail both.
MAX_RATIO = {"stage2,tiny": 0.97, "tiny": 0.72}


def _peak_bytes(config, height: int = 128, width: int = 224) -> int:
    t, n = config.data.num_frames, config.data.max_instances
    model = build_model(config)
    images = jax.ShapeDtypeStruct((1, t, height, width, 3), jnp.uint8)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    shape = jax.ShapeDtypeStruct
    batch = {
        "images": images,
        "masks": shape((1, n, t, height, width), jnp.bool_),
        "instance_valid": shape((1, n), jnp.bool_),
        "category_ids": shape((1, n), jnp.int32),
        "ignore": shape((1, t, height, width), jnp.bool_),
    }
    constants = {k: v for k, v in variables.items() if k != "params"}
    grad = jax.grad(make_loss_fn(config, model), has_aux=True)
    mem = jax.jit(grad).lower(variables["params"], constants, batch).compile().memory_analysis()
    return mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes


@pytest.mark.parametrize("variant", ["stage2,tiny", "tiny"])
def test_remat_lowers_the_train_step_peak(variant):
    config = load_config("davis", variant)
    config.data.num_frames, config.data.max_instances = 8, 4
    plain = _peak_bytes(config)
    config.model.remat = True
    rematerialised = _peak_bytes(config)
    print(f"davis:{variant}: plain {plain / 2**20:.1f} MiB, remat {rematerialised / 2**20:.1f} MiB")
    assert rematerialised <= MAX_RATIO[variant] * plain, (variant, plain, rematerialised)
