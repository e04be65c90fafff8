"""Model tests: official schema correspondence, primitives against float64 references, output contract."""

import collections
import csv
import os
import re

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from stemseg_jax.config import EMBEDDING_MODES, embedding_dims
from stemseg_jax.model import build_model, layers, trainable_mask
from stemseg_jax.model.backbone import ResNet
from stemseg_jax.model.decoder import SqueezeExpandDecoder
from stemseg_jax.model.heads import coordinate_grid
from stemseg_jax.model.layers import (
    Conv3x3x3,
    FrozenBatchNorm,
    avg_pool_t2,
    cpu_conv_general_dilated,
    materialize,
    upsample,
)
from tests.helpers import load_config

# copies of the official checkpoints' key/shape/dtype listings (no weights), kept in the repository
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "official_checkpoint_schema")


def _torch_layout(shape):
    """Our channels-last kernel shape in PyTorch's OIHW / OIDHW layout (other tensors unchanged)."""
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 5:
        return (shape[4], shape[3], shape[0], shape[1], shape[2])
    return tuple(shape)


@pytest.mark.parametrize(
    "config_name,variant,schema",
    [("davis", None, "davis_1"), ("davis", "stage2", "davis_1"), ("youtube_vis", None, "youtube_vis"),
     ("kitti", None, "kitti_mots_2")],
)
def test_full_config_variables_match_official_schema(config_name, variant, schema):
    path = os.path.join(SCHEMA_DIR, f"{schema}.tsv")
    config = load_config(config_name, variant)
    model = build_model(config)
    frames = config.data.num_frames
    images = jax.ShapeDtypeStruct((1, frames, 64, 96, 3), jnp.uint8)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    ours = collections.Counter(_torch_layout(v.shape) for v in traverse_util.flatten_dict(variables).values())
    with open(path) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    theirs = collections.Counter(tuple(int(d) for d in r["shape"].strip("[]").split(",") if d.strip()) for r in rows)
    assert sum(ours.values()) == len(rows)
    assert ours == theirs, f"only ours: {ours - theirs}; only official: {theirs - ours}"


def test_conv3d_shifted2d_equals_direct():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 5, 8))
    direct = Conv3x3x3(12, impl="direct")
    params = direct.init(jax.random.PRNGKey(1), x)
    y_direct = direct.apply(params, x)
    y_shift = Conv3x3x3(12, impl="shifted2d").apply(params, x)
    np.testing.assert_allclose(np.asarray(y_shift), np.asarray(y_direct), rtol=1e-5, atol=1e-5)
    # Also against an explicit float64 loop over the 27 taps.
    k = np.asarray(params["params"]["kernel"], np.float64)
    xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
    ref = sum(
        np.einsum("nthwc,co->nthwo", xp[:, a : a + 4, b : b + 6, c : c + 5], k[a, b, c])
        for a in range(3) for b in range(3) for c in range(3)
    ) + np.asarray(params["params"]["bias"])
    np.testing.assert_allclose(np.asarray(y_shift), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, kernel, stride, pad, c_out",
    [
        ((2, 9, 7, 5), 1, 1, 0, 4),  # 1x1 -> matrix product
        ((2, 9, 7, 5), 1, 2, 0, 4),  # strided 1x1 (stride in the 1x1 conv) on odd sizes
        ((2, 10, 9, 72), 3, 1, 1, 64),  # >= 64 channels: kernel gradient as per-tap products
        ((2, 6, 11, 65), 3, 1, (0, 2), 64),  # asymmetric padding
        ((1, 37, 3, 12000), 3, 1, 1, 4),  # > 4 MiB per image -> row strips; 37 rows leave a short last strip
        ((1, 45, 4, 8192), 7, 1, 3, 64),  # larger kernel in strips, per-tap kernel gradient
        ((2, 12, 10, 6), 3, 2, 1, 4),  # strided 3x3: falls through to lax
    ],
)
@pytest.mark.parametrize("eigen", [True, False], ids=["eigen-convs", "ynn-convs"])
def test_cpu_conv_matches_lax_values_and_gradients(shape, kernel, stride, pad, c_out, eigen, monkeypatch):
    """Both kernel-gradient forms: XLA's own (what importing stemseg_jax selects) and the per-tap products
    used while XLA:CPU's YNNPACK convolutions are on."""
    monkeypatch.setattr(layers, "eigen_convolutions", lambda: eigen)
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(3), 3)
    x = jax.random.normal(kx, shape)
    w = jax.random.normal(kw, (kernel, kernel, shape[-1], c_out)) / np.sqrt(kernel * kernel * shape[-1])
    pad = pad if isinstance(pad, tuple) else (pad, pad)
    dims = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    args = ((stride, stride), (pad, pad))

    def run(fn):
        y, vjp = jax.vjp(lambda x, w: fn(x, w, *args, dimension_numbers=dims), x, w)
        return (y, *vjp(jax.random.normal(kg, y.shape)))

    for ours, ref in zip(run(cpu_conv_general_dilated), run(jax.lax.conv_general_dilated)):
        assert ours.shape == ref.shape
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=2e-4, atol=2e-4)


def test_model_conv2d_impls_agree(tiny_kitti):
    config, _, variables, images = tiny_kitti
    outs = {}
    for impl in ("cpu", "xla"):
        c = config.copy_and_resolve_references()
        c.model.conv2d_impl = impl
        outs[impl] = jax.jit(build_model(c).apply)(variables, images)
    for key in ("embeddings", "bandwidth_logits", "seediness", "semseg_logits"):
        np.testing.assert_allclose(np.asarray(outs["cpu"][key]), np.asarray(outs["xla"][key]), rtol=1e-4, atol=1e-4)
    bad = config.copy_and_resolve_references()
    bad.model.conv2d_impl = "winograd"
    with pytest.raises(ValueError, match="conv2d_impl"):
        build_model(bad)


def test_materialize_is_the_identity_with_its_gradient():
    for x in (jnp.arange(-3.0, 3.0).reshape(2, 3), -jnp.arange(6.0).reshape(2, 3)):  # both branches
        value, grad = jax.jit(jax.value_and_grad(lambda v: jnp.sum(materialize(v) * v)))(x)
        np.testing.assert_array_equal(np.asarray(jax.jit(materialize)(x)), np.asarray(x))
        np.testing.assert_allclose(np.asarray(grad), 2 * np.asarray(x))


def _largest_fusion_arity(impl: str) -> int:
    """Operands of the widest fusion in the compiled ResNet-101 forward (narrow, one small frame)."""
    model = ResNet(101, 4, conv2d_impl=impl)
    images = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
    hlo = jax.jit(model.apply).lower(variables, images).compile().as_text()
    return max(len(re.findall(r"%[\w.-]+", line.split(" fusion(", 1)[1].split("),")[0]))
               for line in hlo.splitlines() if " fusion(" in line)


def test_residual_stream_is_not_recomputed_on_cpu():
    # Without ``materialize`` XLA:CPU fuses all 23 layer3 epilogues into each later one (~5 operands per
    # block); with it every fusion reads a bounded number of buffers whatever the depth.
    if jax.default_backend() != "cpu":
        pytest.skip("XLA:CPU fusion behaviour")
    assert _largest_fusion_arity("cpu") <= 16
    assert _largest_fusion_arity("xla") > 40  # the quadratic pattern this guards against is still XLA's


def test_unknown_conv_impl_is_an_error():
    with pytest.raises(ValueError, match="conv3d_impl"):
        Conv3x3x3(4, impl="winograd").init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 4, 4, 3)))


def _np_avg_pool_t2(x):
    n, t, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0)))
    t_out = (t - 1) // 2 + 1
    out = np.zeros((n, t_out, h, w, c))
    for i in range(t_out):
        out[:, i] = sum(xp[:, 2 * i + a, b : b + h, d : d + w] for a in range(3) for b in range(3) for d in range(3))
    return out / 27.0


@pytest.mark.parametrize("t", [1, 2, 3, 8])
def test_avg_pool_matches_count_include_pad_reference(t):
    x = np.random.default_rng(t).normal(size=(2, t, 5, 4, 3))
    np.testing.assert_allclose(np.asarray(avg_pool_t2(jnp.asarray(x, jnp.float32))), _np_avg_pool_t2(x), atol=1e-5)


def _np_upsample2x(x, axis):
    """F.interpolate(scale_factor=2, linear, align_corners=False) along one axis, from its definition."""
    n = x.shape[axis]
    src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, None)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    a, b = np.take(x, i0, axis), np.take(x, i1, axis)
    shape = [1] * x.ndim
    shape[axis] = 2 * n
    lam = lam.reshape(shape)
    return a * (1 - lam) + b * lam


def test_upsample_matches_pytorch_definition():
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 5, 2))
    ref = _np_upsample2x(_np_upsample2x(_np_upsample2x(x, 1), 2), 3)
    np.testing.assert_allclose(np.asarray(upsample(jnp.asarray(x, jnp.float32), (2, 2, 2))), ref, atol=1e-5)
    ref_s = _np_upsample2x(_np_upsample2x(x, 2), 3)
    np.testing.assert_allclose(np.asarray(upsample(jnp.asarray(x, jnp.float32), (1, 2, 2))), ref_s, atol=1e-5)


def _np_upsample2x_matrix(n: int) -> np.ndarray:
    """``[2n, n]``: the half-pixel linear 2x interpolation as a matrix (float64), rows = outputs."""
    return np.stack([_np_upsample2x(col, 0) for col in np.eye(n)], axis=1)


@pytest.mark.parametrize("n, axis", [(1, 1), (2, 2), (5, 1), (5, 3), (4, 0)])
def test_upsample_gradient_is_the_interpolation_transpose(n, axis):
    rng = np.random.default_rng(n + axis)
    shape = [2, 3, 4, 3]
    shape[axis] = n
    x = rng.normal(size=shape)
    out_shape = list(shape)
    out_shape[axis] = 2 * n
    g = rng.normal(size=out_shape)
    ref = np.moveaxis(np.tensordot(_np_upsample2x_matrix(n).T, np.moveaxis(g, axis, 0), axes=1), 0, axis)
    _, vjp = jax.vjp(lambda v: layers.upsample2x_linear(v, axis), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(g, jnp.float32))[0]), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factors", [(2, 2, 2), (1, 2, 2)])
def test_upsample_concat_conv_is_the_conv_of_the_concatenation(factors):
    rng = np.random.default_rng(sum(factors))
    coarse = rng.normal(size=(2, 4 // factors[0], 3, 5, 6))
    fine = rng.normal(size=(2, 4, 6, 10, 3))
    module = layers.UpsampleConcatConv(4, factors)
    variables = module.init(jax.random.PRNGKey(0), jnp.asarray(coarse, jnp.float32), jnp.asarray(fine, jnp.float32))
    kernel = np.asarray(variables["params"]["kernel"], np.float64)
    assert kernel.shape == (1, 1, 1, 9, 4)  # conv1x1x1's layout: checkpoints and the converter are unchanged
    up = coarse
    for axis, f in zip((1, 2, 3), factors):
        up = _np_upsample2x(up, axis) if f == 2 else up
    ref = np.concatenate([up, fine], axis=-1) @ kernel[0, 0, 0]
    out = module.apply(variables, jnp.asarray(coarse, jnp.float32), jnp.asarray(fine, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_upsample_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5, 6)).astype(np.float32)  # [N, T, H, W, C]
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x).permute(0, 4, 1, 2, 3), scale_factor=(2, 2, 2), mode="trilinear", align_corners=False
    ).permute(0, 2, 3, 4, 1)
    np.testing.assert_allclose(np.asarray(upsample(jnp.asarray(x), (2, 2, 2))), ref.numpy(), atol=1e-5)


def test_frozen_bn_is_scale_and_shift_without_epsilon():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 3, 4))
    bn = FrozenBatchNorm()
    rng = np.random.default_rng(0)
    names = ("weight", "bias", "running_mean", "running_var")
    stats = {k: jnp.asarray(rng.uniform(0.5, 2.0, 4), jnp.float32) for k in names}
    y = bn.apply({"frozen_bn": stats}, x)
    s = {k: np.asarray(a, np.float64) for k, a in stats.items()}
    ref = (np.asarray(x) - s["running_mean"]) / np.sqrt(s["running_var"]) * s["weight"] + s["bias"]
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_frozen_bn_calibration_normalises_its_input():
    x = 50.0 + 7.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 6, 6, 3))
    bn = FrozenBatchNorm(calibrate=True)
    v = bn.init(jax.random.PRNGKey(0), x)
    y, _ = bn.apply(v, x, mutable=["frozen_bn"])
    np.testing.assert_allclose(np.asarray(y.mean((0, 1, 2))), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.asarray(y.std((0, 1, 2))), 1.0, atol=1e-3)


@pytest.mark.parametrize("mode", sorted(EMBEDDING_MODES))
def test_coordinate_grid_order_and_normalisation(mode):
    coords, _ = EMBEDDING_MODES[mode]
    grid = np.asarray(coordinate_grid(4, 6, 10, jnp.float32(1.0), coords))
    assert grid.shape == (4, 6, 10, len(coords))
    ranges = {"t": (-1, 1), "y": (-1, 1), "x": (-10 / 6, 10 / 6)}
    varying_axis = {"t": 0, "y": 1, "x": 2}
    for ch, name in enumerate(coords):
        lo, hi = ranges[name]
        assert grid[..., ch].min() == pytest.approx(lo) and grid[..., ch].max() == pytest.approx(hi)
        # each channel varies only along its own axis
        other_axes = tuple(a for a in range(3) if a != varying_axis[name])
        assert np.allclose(np.ptp(grid[..., ch], axis=varying_axis[name]).min(), hi - lo)
        assert np.allclose(np.ptp(grid[..., ch], axis=other_axes), 0)


def test_unsupported_clip_length_is_a_clear_error():
    feats = tuple(jnp.zeros((1, 5, s, s, 8)) for s in (8, 4, 2, 1))
    dec = SqueezeExpandDecoder((8, 8, 8, 8), gn_groups=4)
    with pytest.raises(ValueError, match="T=5"):
        dec.init(jax.random.PRNGKey(0), feats)


@pytest.mark.parametrize("t", [2, 4, 16])
def test_decoder_keeps_full_temporal_resolution(t):
    feats = tuple(jnp.ones((1, t, 2 * s, 3 * s, 8)) for s in (8, 4, 2, 1))
    dec = SqueezeExpandDecoder((8, 8, 8, 8), gn_groups=4)
    out = jax.eval_shape(lambda: dec.init_with_output(jax.random.PRNGKey(0), feats)[0])
    assert out.shape == (1, t, 16, 24, 8)


@pytest.fixture(scope="module")
def tiny_kitti():
    config = load_config("kitti", "tiny")
    model = build_model(config)
    images = jax.random.randint(jax.random.PRNGKey(0), (1, 8, 64, 96, 3), 0, 256).astype(jnp.uint8)
    variables = jax.jit(model.init)(jax.random.PRNGKey(1), images)
    return config, model, variables, images


def test_output_contract(tiny_kitti):
    config, model, variables, images = tiny_kitti
    out = jax.jit(model.apply)(variables, images)
    e, v, n_free = embedding_dims(config.model.embedding_mode)
    assert out["embeddings"].shape == (1, 8, 16, 24, e)
    assert out["bandwidth_logits"].shape == (1, 8, 16, 24, v)
    assert out["seediness"].shape == (1, 8, 16, 24)
    assert out["semseg_logits"].shape == (1, 8, 16, 24, config.model.num_classes + 1)
    s = np.asarray(out["seediness"])
    assert (s > 0).all() and (s < 1).all()
    # embedding = tanh(0.25 x) + grid: the offset from the grid is bounded by 1
    grid = coordinate_grid(8, 16, 24, jnp.float32(1.0), ("t", "y", "x"))
    assert np.abs(np.asarray(out["embeddings"][0]) - np.asarray(grid)).max() < 1.0


def test_backbone_features_and_heads_compose_to_call(tiny_kitti):
    _, model, variables, images = tiny_kitti
    feats = model.apply(variables, images[0], method="backbone_features")
    assert [f.shape[1:3] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    stacked = tuple(f[None] for f in feats)
    split = model.apply(variables, stacked, method="heads")
    whole = model.apply(variables, images)
    for k in ("embeddings", "bandwidth_logits", "seediness", "semseg_logits"):
        np.testing.assert_allclose(np.asarray(split[k]), np.asarray(whole[k]), rtol=1e-5, atol=1e-5)


def test_frozen_stages_get_no_gradient_and_are_masked(tiny_kitti):
    config, model, variables, images = tiny_kitti

    def loss(params):
        out = model.apply({**variables, "params": params}, images)
        return sum(jnp.mean(o**2) for o in out.values() if o is not None)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    mask = traverse_util.flatten_dict(trainable_mask(variables["params"], config))
    flat = traverse_util.flatten_dict(grads)
    assert not mask[("backbone", "body", "stem", "conv1", "kernel")]
    assert not mask[("backbone", "body", "layer1_0", "conv1", "kernel")]
    assert mask[("backbone", "body", "layer2_0", "conv1", "kernel")]
    for path, g in flat.items():
        if not mask[path]:
            assert not np.any(np.asarray(g)), path
    assert np.any(np.asarray(flat[("backbone", "body", "layer2_0", "conv1", "kernel")]))
    assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())


def test_unpadded_input_is_rejected(tiny_kitti):
    _, model, variables, _ = tiny_kitti
    with pytest.raises(ValueError, match="multiples of 32"):
        model.apply(variables, jnp.zeros((1, 8, 60, 96, 3), jnp.uint8))


@pytest.mark.parametrize("shape, groups", [((2, 3, 5, 4, 16), 4), ((1, 2, 6, 7, 64), 32), ((3, 9, 8), 8)])
def test_group_norm_matches_flax_values_and_gradients(shape, groups):
    """layers.GroupNorm (closed-form backward) against flax.linen.GroupNorm differentiated by JAX, float32."""
    kx, ks, kb, kg = jax.random.split(jax.random.PRNGKey(7), 4)
    x = 2.0 + 1.5 * jax.random.normal(kx, shape)  # an offset mean, as after a convolution with bias
    c = shape[-1]
    variables = {"params": {"scale": jax.random.uniform(ks, (c,), minval=0.5, maxval=1.5),
                            "bias": 0.2 * jax.random.normal(kb, (c,))}}
    cot = jax.random.normal(kg, shape)

    def run(module):
        f = lambda v, x: jnp.vdot(module.apply(v, x), cot)  # noqa: E731
        return module.apply(variables, x), jax.grad(f, argnums=(0, 1))(variables, x)

    ours, ref = run(layers.GroupNorm(groups, 1e-5)), run(flax.linen.GroupNorm(groups, epsilon=1e-5))
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5 * float(jnp.max(jnp.abs(b))))
    y16 = layers.GroupNorm(groups, 1e-5, dtype=jnp.bfloat16).apply(variables, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(ours[0]), rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="groups do not divide"):
        layers.GroupNorm(5).init(jax.random.PRNGKey(0), x)
