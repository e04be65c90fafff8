"""The README's precision and memory options train the same model: ``model.remat=True`` and
``model.dtype="bfloat16"`` against the float32 train step's loss and gradients.

One tiny clip (2 frames, 64x64, 3 instances) through ``losses.objective.make_loss_fn`` — the function the
trainer differentiates — with the same parameters for every variant (the parameter tree and its float32
dtype do not depend on either option; ``model.dtype`` is the activations' dtype).

The variables are the freshly initialised ones, without ``trainer.init_state``'s calibration of the frozen
BatchNorm statistics on the clip: calibrated on one tiny clip, this random narrow backbone's gradients are
chaotic (float32 against itself with the parameters scaled by 1 + 1e-4 noise: backbone gradient cosine 0.71;
uncalibrated: 0.9999), so no precision could be compared there. A trained or ImageNet-initialised backbone
is not in that regime.

Tolerances:
  * remat: the forward pass is the same program, so the loss and its terms are bitwise equal. The backward
    pass recomputes the rematerialised blocks' activations inside other XLA fusions, which reorders float32
    sums: each gradient tensor agrees to ``1e-5`` of its largest entry (measured worst on XLA:CPU: 9e-7,
    a few float32 ulps accumulated over the backward pass; exact equality does not hold), and the global
    gradient norm to ``rtol=1e-6`` (measured 1e-9).
  * bfloat16: an 8-bit mantissa rounds every activation by up to 2**-9 ~ 0.2 % relative, over ~60 layers
    (ResNet-50 + FPN + three decoders). The loss is a mean over many pixels, so its rounding errors largely
    average out: relative error < 1 % (measured 0.09 %). Gradients round at every backward op too: the global
    gradient norm within 5 % (measured 2.6 %) and the cosine similarity of all gradients > 0.99 (measured
    0.993); per part, the backbone's (the deepest chain) > 0.97 (measured 0.982, about what float32 shows
    against itself with its parameters scaled by 1 + 2e-3 noise: 0.991), each head's > 0.99 (0.998, 0.9995).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stemseg_jax.losses.objective import make_loss_fn
from stemseg_jax.model import build_model
from stemseg_jax.smoke import generated_batch
from tests.helpers import load_config

REMAT_GRAD_RTOL = 1e-5
LOSS_RTOL_BF16 = 0.01
NORM_RTOL_BF16 = 0.05
MIN_COSINE_BF16 = 0.99
MIN_COSINE_BF16_BACKBONE = 0.97


def _config(**model):
    config = load_config("kitti", "tiny")
    config.data.num_frames, config.data.max_instances = 2, 4
    for k, v in model.items():
        config.model[k] = v
    return config


def _loss_and_grads(config, state, batch):
    loss_fn = make_loss_fn(config, build_model(config))
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (total, terms), grads = grad_fn(state["params"], state["constants"], batch)
    return jax.device_get((total, terms, grads))


@pytest.fixture(scope="module")
def setup():
    config = _config()
    batch = generated_batch(config, height=64, width=64, num_instances=3, seed=4)
    batch["category_ids"][0, :3] = [1, 2, 1]  # both classes, so the semantic head's gradient is not trivial
    # The freshly initialised variables, without trainer.init_state's calibration of the frozen BatchNorm
    # statistics on this one clip (module docstring: it makes this random backbone's gradients chaotic).
    variables = jax.device_get(jax.jit(build_model(config).init)(jax.random.PRNGKey(0), batch["images"]))
    state = {"params": variables["params"], "constants": {k: v for k, v in variables.items() if k != "params"}}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    return state, batch, _loss_and_grads(config, state, batch)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree_util.tree_leaves(tree)])


def _cosine(a, b) -> float:
    a, b = _flat(a), _flat(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _global_norm(tree) -> float:
    return float(np.linalg.norm(_flat(tree)))


def test_remat_gives_the_float32_loss_and_gradients(setup):
    state, batch, (total, terms, grads) = setup
    total_r, terms_r, grads_r = _loss_and_grads(_config(remat=True), state, batch)
    assert np.isfinite(total) and float(total) > 0
    assert float(total_r) == float(total)
    for k in terms:
        assert float(terms_r[k]) == float(terms[k]), k
    assert jax.tree_util.tree_structure(grads_r) == jax.tree_util.tree_structure(grads)
    assert np.abs(_flat(grads)).max() > 1e-3  # the comparison is not between zeros
    for (path, g), g_r in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree_util.tree_leaves(grads_r)):
        g, g_r = np.asarray(g, np.float64), np.asarray(g_r, np.float64)
        scale = np.abs(g).max()
        assert np.abs(g_r - g).max() <= REMAT_GRAD_RTOL * scale, (jax.tree_util.keystr(path), scale)
    assert _global_norm(grads_r) == pytest.approx(_global_norm(grads), rel=1e-6)


def test_bfloat16_activations_agree_with_float32_within_tolerance(setup):
    state, batch, (total, _, grads) = setup
    total_b, terms_b, grads_b = _loss_and_grads(_config(dtype="bfloat16"), state, batch)
    # parameters and gradients stay float32 (model.dtype is the activations' dtype)
    assert {np.asarray(g).dtype for g in jax.tree_util.tree_leaves(grads_b)} == {np.dtype(np.float32)}
    assert all(np.isfinite(float(v)) for v in terms_b.values())
    loss_rel = abs(float(total_b) - float(total)) / abs(float(total))
    norm, norm_b = _global_norm(grads), _global_norm(grads_b)
    cosine = _cosine(grads, grads_b)
    print(f"bf16 vs f32: loss rel {loss_rel:.2e}, grad norm rel {abs(norm_b - norm) / norm:.2e}, cosine {cosine:.5f}")
    assert loss_rel < LOSS_RTOL_BF16
    assert norm_b == pytest.approx(norm, rel=NORM_RTOL_BF16)
    assert cosine > MIN_COSINE_BF16
    for part in grads:
        cos_part = _cosine(grads[part], grads_b[part])
        assert cos_part > (MIN_COSINE_BF16_BACKBONE if part == "backbone" else MIN_COSINE_BF16), (part, cos_part)
    # bf16 really ran: the results are not bitwise float32's
    assert float(total_b) != float(total)
