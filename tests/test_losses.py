"""Losses against float64 NumPy references (tests/loss_reference.py), finite differences and degenerate clips."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stemseg_jax.config import base_config, embedding_dims
from stemseg_jax.losses import (
    block_fractions,
    downsample_masks,
    lovasz_hinge_flat,
    prepare_targets,
    stemseg_loss,
)
from tests.loss_reference import (
    block_fraction_reference,
    downsample_reference,
    lovasz_hinge_reference,
    stemseg_loss_reference,
)

TERMS = ("lovasz", "smoothness", "seediness", "embedding", "semseg", "foreground", "total")


def make_config(mode: str = "xyt", semseg: bool = True, foreground: bool = True, quirk: bool = False):
    c = base_config()
    c.model.embedding_mode = mode
    c.model.free_dim_stds = (0.3,) * embedding_dims(mode)[2]
    c.model.use_semseg_head = semseg
    c.model.foreground_channel = foreground
    c.model.num_classes = 4
    c.loss.semseg_ce_ignore_quirk = quirk
    return c


def make_case(seed: int, config, batch=2, instances=4, frames=2, height=5, width=6, dtype=np.float32):
    """Random outputs and targets. Clip 0: slot I−2 is padding (invalid), slot I−1 valid but empty."""
    rng = np.random.default_rng(seed)
    e_dims, v_dims, _ = embedding_dims(config.model.embedding_mode)
    bthw = (batch, frames, height, width)
    channels = config.model.num_classes + (1 if config.model.foreground_channel else 0)
    outputs = {
        "embeddings": (0.4 * rng.standard_normal(bthw + (e_dims,))).astype(dtype),
        "bandwidth_logits": (0.3 * rng.standard_normal(bthw + (v_dims,))).astype(dtype),
        "seediness": rng.uniform(0.0, 1.0, bthw).astype(dtype),
        "semseg_logits": None,
    }
    if config.model.use_semseg_head:
        outputs["semseg_logits"] = rng.standard_normal(bthw + (channels,)).astype(dtype)
    masks = rng.uniform(size=(batch, instances) + bthw[1:]) < 0.3
    valid = np.ones((batch, instances), bool)
    valid[0, -2] = False  # a padded slot with garbage in its mask: must be ignored
    masks[0, -1] = False  # a valid slot with no pixel left at output resolution: dropped
    targets = {
        "masks": masks,
        "instance_valid": valid,
        "ignore": rng.uniform(size=bthw) < 0.2,
        "category_ids": rng.integers(1, config.model.num_classes, (batch, instances)).astype(np.int32),
    }
    return outputs, targets


@functools.cache
def jitted_loss(mode: str, semseg: bool, foreground: bool, quirk: bool):
    config = make_config(mode, semseg, foreground, quirk)
    return config, jax.jit(lambda o, t: stemseg_loss(o, t, config))


# ------------------------------------------------------------------------------------------ Lovász


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_matches_set_function_definition(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    logits = rng.uniform(-1.5, 1.5, n)
    if seed == 1:
        logits = np.round(logits * 2) / 2  # many ties
    labels = rng.uniform(size=n) < [0.3, 0.5, 0.0, 1.0, 0.05, 0.7][seed]
    got = float(lovasz_hinge_flat(jnp.asarray(logits, jnp.float32), jnp.asarray(labels)))
    want = lovasz_hinge_reference(logits.astype(np.float32), labels)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_lovasz_large_volume_and_jaccard_counts():
    """N near the DAVIS clip volume: integer counts stay exact; a perfect margin gives 0."""
    n = 440_000
    labels = np.zeros(n, bool)
    labels[:1000] = True
    perfect = np.where(labels, 1.5, -1.5).astype(np.float32)
    assert float(lovasz_hinge_flat(jnp.asarray(perfect), jnp.asarray(labels))) == 0.0
    # All logits 0: every error is 1, so the loss is Δ_J(everything) = 1 − 0 = 1.
    zeros = jnp.zeros(n, jnp.float32)
    np.testing.assert_allclose(float(lovasz_hinge_flat(zeros, jnp.asarray(labels))), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------------------ full loss


@pytest.mark.parametrize(
    "mode,semseg,foreground,quirk",
    [
        ("xyt", True, True, False),
        ("xyt", True, True, True),
        ("xyff", False, False, False),
        ("xytf", True, False, False),
    ],
)
def test_stemseg_loss_matches_reference(mode, semseg, foreground, quirk):
    config, loss_fn = jitted_loss(mode, semseg, foreground, quirk)
    for seed in range(2):
        outputs, targets = make_case(seed, config)
        total, terms = loss_fn(outputs, targets)
        want = stemseg_loss_reference(outputs, targets, config)
        for name in TERMS:
            np.testing.assert_allclose(float(terms[name]), want[name], rtol=1e-4, atol=1e-6, err_msg=name)
        assert float(total) == float(terms["total"])
        assert want["lovasz"] > 0.01 and want["seediness"] > 0.01  # the case exercises every term
        if semseg:
            assert want["semseg"] > 0.1


def test_soft_semantic_targets_match_reference():
    """``class_fractions`` (``prepare_targets(rule="area")``) replace the hard semantic and foreground targets."""
    config, loss_fn = jitted_loss("xyt", True, True, False)
    outputs, targets = make_case(5, config)
    rng = np.random.default_rng(5)
    shares = rng.dirichlet(np.full(config.model.num_classes, 0.5), size=targets["ignore"].shape).astype(np.float32)
    _, hard = loss_fn(outputs, targets)
    _, soft = loss_fn(outputs, {**targets, "class_fractions": shares})
    want = stemseg_loss_reference(outputs, {**targets, "class_fractions": shares}, config)
    for name in TERMS:
        np.testing.assert_allclose(float(soft[name]), want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    for name in ("lovasz", "smoothness", "seediness"):  # the instance terms keep the binary masks
        assert float(soft[name]) == float(hard[name])
    assert abs(float(soft["semseg"]) - float(hard["semseg"])) > 1e-3
    # One-hot shares of the hard target give the hard loss.
    hard_target = np.max(
        np.where(targets["masks"] & targets["instance_valid"][:, :, None, None, None],
                 targets["category_ids"][:, :, None, None, None], 0), axis=1)
    one_hot = np.eye(config.model.num_classes, dtype=np.float32)[hard_target]
    _, same = loss_fn(outputs, {**targets, "class_fractions": one_hot})
    for name in TERMS:
        np.testing.assert_allclose(float(same[name]), float(hard[name]), rtol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="class_fractions"):
        loss_fn(outputs, {**targets, "class_fractions": shares[..., :2]})


def test_ce_ignore_quirk_changes_only_the_cross_entropy():
    config_honour, honour = jitted_loss("xyt", True, True, False)
    config_quirk, quirk = jitted_loss("xyt", True, True, True)
    outputs, targets = make_case(3, config_honour)
    _, t_honour = honour(outputs, targets)
    _, t_quirk = quirk(outputs, targets)
    logp = jax.nn.log_softmax(jnp.asarray(outputs["semseg_logits"][..., :4], jnp.float32), axis=-1)
    target = np.max(
        np.where(
            targets["masks"] & targets["instance_valid"][:, :, None, None, None],
            targets["category_ids"][:, :, None, None, None],
            0,
        ),
        axis=1,
    )
    nll = -np.take_along_axis(np.asarray(logp), target[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(float(t_quirk["semseg"]), nll.mean(), rtol=1e-5)
    keep = ~targets["ignore"]
    per_clip = [nll[b][keep[b]].mean() for b in range(2)]
    np.testing.assert_allclose(float(t_honour["semseg"]), np.mean(per_clip), rtol=1e-5)
    assert abs(float(t_quirk["semseg"]) - float(t_honour["semseg"])) > 1e-4
    for name in ("lovasz", "smoothness", "seediness", "foreground"):
        assert float(t_quirk[name]) == float(t_honour[name])


def test_gradients_match_finite_differences():
    """float64 gradients vs central differences.

    The seediness target p is detached, so for embeddings and bandwidths the gradient is that of the
    loss without the seediness term (checked to contribute exactly 0); for the seediness map it is the
    full loss's.
    """
    config = make_config("xytf", True, True, False)
    with jax.enable_x64(True):
        outputs, targets = make_case(5, config, batch=2, instances=3, frames=2, height=3, width=4, dtype=np.float64)
        outputs = {k: jnp.asarray(v) for k, v in outputs.items()}
        seed_weight = config.loss.weight * config.loss.w_seediness

        def total_and_seed(o):
            total, terms = stemseg_loss(o, targets, config)
            return total, terms["seediness"]

        grads = jax.jit(jax.grad(lambda o: total_and_seed(o)[0]))(outputs)
        seed_grads = jax.jit(jax.grad(lambda o: total_and_seed(o)[1]))(outputs)
        f = jax.jit(total_and_seed)
        assert f(outputs)[0].dtype == jnp.float64
        rng = np.random.default_rng(0)
        eps = 1e-6
        for name in ("embeddings", "bandwidth_logits", "seediness", "semseg_logits"):
            detached_path = name in ("embeddings", "bandwidth_logits")
            if detached_path:
                assert not np.any(np.asarray(seed_grads[name])), name
            flat = np.asarray(outputs[name]).reshape(-1)
            g = np.asarray(grads[name]).reshape(-1)
            assert np.abs(g).max() > 1e-4, name
            for idx in rng.choice(flat.size, 12, replace=False):
                values = []
                for step in (eps, -eps):
                    moved = flat.copy()
                    moved[idx] += step
                    total, seed = f(dict(outputs, **{name: jnp.asarray(moved.reshape(outputs[name].shape))}))
                    values.append(float(total) - (seed_weight * float(seed) if detached_path else 0.0))
                numeric = (values[0] - values[1]) / (2 * eps)
                np.testing.assert_allclose(g[idx], numeric, rtol=1e-5, atol=1e-8, err_msg=f"{name}[{idx}]")


def test_degenerate_clips_give_finite_losses_and_gradients():
    config, _ = jitted_loss("xyt", True, True, False)
    outputs, targets = make_case(7, config, batch=4, instances=3)
    masks, valid, ignore = targets["masks"].copy(), targets["instance_valid"].copy(), targets["ignore"].copy()
    valid[0] = False  # clip 0: no instances (padded slots only)
    masks[1] = False  # clip 1: one valid one-pixel instance, the others padded
    masks[1, 0, 1, 2, 3] = True
    valid[1] = [True, False, False]
    ignore[2] = True  # clip 2: everything ignored
    masks[3] = False  # clip 3: valid slots whose masks are empty
    targets = dict(targets, masks=masks, instance_valid=valid, ignore=ignore)

    grad_fn = jax.jit(jax.value_and_grad(lambda o, t: stemseg_loss(o, t, config), has_aux=True))
    (total, terms), grads = grad_fn(outputs, targets)
    assert np.isfinite(float(total))
    for name, g in grads.items():
        assert np.all(np.isfinite(np.asarray(g))), name
    want = stemseg_loss_reference(outputs, targets, config)
    for name in TERMS:
        np.testing.assert_allclose(float(terms[name]), want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    # Clips without instances get no embedding gradient.
    for b in (0, 3):
        assert not np.any(np.asarray(grads["embeddings"][b])) and not np.any(np.asarray(grads["seediness"][b]))
    # Everything ignored: no semseg / foreground gradient in that clip.
    assert not np.any(np.asarray(grads["semseg_logits"][2]))

    # A batch with no instance at all: the embedding terms are exactly 0, still differentiable.
    empty = dict(targets, instance_valid=np.zeros_like(valid))
    (_, terms), grads = grad_fn(outputs, empty)
    assert float(terms["lovasz"]) == float(terms["smoothness"]) == float(terms["seediness"]) == 0.0
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads.values())


def test_bad_shapes_name_the_field():
    config, _ = jitted_loss("xyt", True, True, False)
    outputs, targets = make_case(0, config)
    with pytest.raises(ValueError, match="bandwidth_logits"):
        stemseg_loss(dict(outputs, bandwidth_logits=outputs["bandwidth_logits"][..., :2]), targets, config)
    with pytest.raises(ValueError, match="semseg_logits"):
        stemseg_loss(dict(outputs, semseg_logits=outputs["semseg_logits"][..., :3]), targets, config)
    with pytest.raises(ValueError, match="semseg_logits"):
        stemseg_loss(dict(outputs, semseg_logits=None), targets, config)
    with pytest.raises(KeyError, match="category_ids"):
        stemseg_loss(outputs, {k: v for k, v in targets.items() if k != "category_ids"}, config)
    bad = make_config("xyff", False, False)
    bad.model.free_dim_stds = (0.3,)
    with pytest.raises(ValueError, match="free_dim_stds"):
        stemseg_loss(outputs, targets, bad)


# ------------------------------------------------------------------------------------------ targets


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_downsample_masks_matches_bilinear_then_truncate(factor):
    rng = np.random.default_rng(factor)
    # Dense masks so that all-ones 2x2 blocks occur often.
    masks = rng.uniform(size=(2, 3, 8 * factor, 12 * factor)) < 0.8
    got = np.asarray(downsample_masks(masks, factor))
    want = downsample_reference(masks, factor)
    assert got.shape == (2, 3, 8, 12)
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < want.size


@pytest.mark.parametrize("factor", [2, 4])
def test_downsample_masks_matches_torch(factor):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(10 + factor)
    masks = rng.uniform(size=(3, 2, 16 * factor, 20 * factor)) < 0.85
    t = torch.nn.functional.interpolate(
        torch.from_numpy(masks.astype(np.uint8)).float(), scale_factor=1 / factor, mode="bilinear", align_corners=False
    )
    want = t.to(torch.uint8).numpy().astype(bool)
    np.testing.assert_array_equal(np.asarray(downsample_masks(masks, factor)), want)


def test_prepare_targets():
    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(2, 3, 2, 16, 24)) < 0.9
    masks[0, 1] = False
    masks[0, 1, 0, 5, 5] = True  # a single full-res pixel: vanishes at 1/4 resolution
    valid = np.array([[True, True, False], [True, True, True]])
    batch = {
        "masks": masks,
        "instance_valid": valid,
        "category_ids": np.array([[1, 2, 0], [2, 2, 1]], np.int64),
        "ignore": rng.uniform(size=(2, 2, 16, 24)) < 0.9,
        "images": np.zeros((2, 2, 16, 24, 3), np.uint8),
    }
    out = jax.jit(lambda b: prepare_targets(b, (4, 6)))(batch)
    assert out["masks"].shape == (2, 3, 2, 4, 6) and out["ignore"].shape == (2, 2, 4, 6)
    np.testing.assert_array_equal(out["instance_valid"], [[True, False, False], [True, True, True]])
    np.testing.assert_array_equal(out["masks"][0, 2], False)
    np.testing.assert_array_equal(out["masks"][1], downsample_reference(masks[1], 4))
    np.testing.assert_array_equal(out["ignore"], downsample_reference(batch["ignore"], 4))
    assert out["category_ids"].dtype == jnp.int32
    with pytest.raises(ValueError, match="'masks'"):
        prepare_targets(batch, (5, 6))
    with pytest.raises(KeyError, match="ignore"):
        prepare_targets({k: v for k, v in batch.items() if k != "ignore"}, (4, 6))


def test_prepare_targets_area_rule():
    """rule="area": instance masks by block majority, soft class shares; the official rule shrinks objects."""
    rng = np.random.default_rng(2)
    batch = {
        "masks": rng.uniform(size=(2, 3, 2, 16, 24)) < 0.35,
        "instance_valid": np.array([[True, True, False], [True, True, True]]),
        "category_ids": np.array([[1, 2, 3], [2, 2, 1]], np.int64),
        "ignore": rng.uniform(size=(2, 2, 16, 24)) < 0.9,
    }
    out = jax.jit(lambda b: prepare_targets(b, (4, 6), "area", 4))(batch)
    valid = batch["instance_valid"][:, :, None, None, None]
    want_masks = (block_fraction_reference(batch["masks"], 4) >= 0.5) & valid
    np.testing.assert_array_equal(out["masks"], want_masks)
    np.testing.assert_array_equal(out["instance_valid"], want_masks.any(axis=(2, 3, 4)))
    np.testing.assert_array_equal(out["ignore"], downsample_reference(batch["ignore"], 4))  # official either way
    labels = np.max(np.where(batch["masks"] & valid, batch["category_ids"][:, :, None, None, None], 0), axis=1)
    want_shares = np.stack([block_fraction_reference(labels == c, 4) for c in range(4)], axis=-1)
    np.testing.assert_allclose(out["class_fractions"], want_shares, atol=1e-7)
    np.testing.assert_allclose(np.sum(out["class_fractions"], axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(block_fractions(batch["masks"], 4), block_fraction_reference(batch["masks"], 4))
    assert "class_fractions" not in prepare_targets(batch, (4, 6))

    # An 11-pixel-wide bar starting 2 pixels into a block: the majority rule keeps ~its width (3 blocks of
    # 4), the official AND of each block's central pixels loses one more block.
    bar = np.zeros((1, 1, 1, 8, 24), bool)
    bar[..., 2:13] = True
    one = {"masks": bar, "instance_valid": np.ones((1, 1), bool), "category_ids": np.ones((1, 1), np.int64),
           "ignore": np.zeros((1, 1, 8, 24), bool)}
    assert int(prepare_targets(one, (2, 6), "area", 2)["masks"].sum(axis=-1).max()) == 3
    assert int(prepare_targets(one, (2, 6))["masks"].sum(axis=-1).max()) == 2

    with pytest.raises(ValueError, match="rule"):
        prepare_targets(batch, (4, 6), "nearest", 4)
    with pytest.raises(ValueError, match="num_classes"):
        prepare_targets(batch, (4, 6), "area")


@pytest.mark.parametrize("mode,semseg,foreground", [("xyt", True, True), ("xyff", False, False)])
def test_torch_reference_loss_matches(mode, semseg, foreground):
    """``tests/torch_reference.stemseg_loss`` (the official per-instance loop, which ``tools/bench_model.py
    --against-torch`` times) computes our loss and its gradients from the full-resolution batch."""
    torch = pytest.importorskip("torch")
    from tests import torch_reference as tr

    config, loss_fn = jitted_loss(mode, semseg, foreground, False)
    outputs, _ = make_case(3, config, frames=3, height=6, width=8)
    rng = np.random.default_rng(4)
    b, i, t, h, w = 2, 4, 3, 6, 8
    blocks = rng.uniform(size=(b, i, t, h, w)) < 0.35
    masks = np.repeat(np.repeat(blocks, 4, axis=-2), 4, axis=-1)  # whole 4x4 blocks survive the target rule
    masks &= rng.uniform(size=masks.shape) < 0.99  # and some do not
    batch = {
        "masks": masks,
        "instance_valid": np.array([[True, True, False, True], [True, True, True, True]]),
        "ignore": np.repeat(np.repeat(rng.uniform(size=(b, t, h, w)) < 0.2, 4, axis=-2), 4, axis=-1),
        "category_ids": rng.integers(1, config.model.num_classes, (b, i)).astype(np.int32),
    }
    targets = prepare_targets(batch, (h, w), "official", config.model.num_classes)

    def ours(emb):
        return stemseg_loss({**outputs, "embeddings": emb}, targets, config)

    (total, terms), grad = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(outputs["embeddings"]))
    emb_t = torch.tensor(outputs["embeddings"], requires_grad=True)
    outputs_t = {k: None if v is None else torch.from_numpy(v) for k, v in outputs.items()}
    batch_t = {k: torch.from_numpy(v) for k, v in batch.items()}
    total_t, terms_t = tr.stemseg_loss({**outputs_t, "embeddings": emb_t}, batch_t, config)
    total_t.backward()
    for name in TERMS:
        np.testing.assert_allclose(float(terms[name]), float(terms_t[name].detach()), rtol=2e-5, atol=1e-7,
                                   err_msg=name)
    assert float(terms_t["lovasz"].detach()) > 0.01 and (not semseg or float(terms_t["semseg"].detach()) > 0.1)
    np.testing.assert_allclose(np.asarray(grad), emb_t.grad.numpy(), rtol=1e-4, atol=1e-6)
