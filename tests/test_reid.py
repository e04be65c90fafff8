"""The re-id network of the RI-Tracker baseline: batch-hard triplet loss, crops, triplet batches, the model,
its training, and the generic training loop (``train.loop``)."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stemseg_jax.config import base_config, dataset
from stemseg_jax.data import load_dataset, synthetic
from stemseg_jax.preprocessing import PAD_VALUE_BGR
from stemseg_jax.reid import (
    TripletSampler,
    batch_hard_triplet_loss,
    build_reid,
    crop,
    default_reid_config,
    embed,
    make_embedder,
    mask_box,
    restore_reid,
    tiny_reid_config,
    train_reid,
)
from stemseg_jax.reid.data import crop_window
from stemseg_jax.reid.train import init_reid_variables, make_reid_loss_fn, make_reid_optimizer, make_sampler
from stemseg_jax.train.loop import restore_variables, run_training

# ------------------------------------------------------------------------------------------------ loss


def _reference_loss(emb: np.ndarray, labels: np.ndarray, margin: float | None) -> float:
    """The batch-hard triplet loss by explicit loops, float64."""
    emb = np.asarray(emb, np.float64)
    total, count = 0.0, 0
    for i in range(len(emb)):
        if labels[i] < 0:
            continue
        pos, neg = [], []
        for j in range(len(emb)):
            if j == i or labels[j] < 0:
                continue
            d = math.sqrt(sum((emb[i, k] - emb[j, k]) ** 2 for k in range(emb.shape[1])))
            (pos if labels[j] == labels[i] else neg).append(d)
        if not pos or not neg:
            continue
        gap = max(pos) - min(neg)
        total += np.logaddexp(0.0, gap) if margin is None else max(0.0, gap + margin)
        count += 1
    return total / max(count, 1)


def _fd_grad(emb: np.ndarray, labels: np.ndarray, margin, h: float = 1e-6) -> np.ndarray:
    emb = np.asarray(emb, np.float64)
    g = np.zeros_like(emb)
    for idx in np.ndindex(emb.shape):
        e = emb.copy()
        e[idx] += h
        up = _reference_loss(e, labels, margin)
        e[idx] -= 2 * h
        g[idx] = (up - _reference_loss(e, labels, margin)) / (2 * h)
    return g


_loss_and_grad = jax.jit(jax.value_and_grad(lambda e, lab, m: batch_hard_triplet_loss(e, lab, m)[0]),
                         static_argnums=2)


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_loss_and_gradient_match_a_float64_reference(margin):
    rng = np.random.default_rng(0)
    # 3 identities x 3, one identity with a single sample (a negative only) and one padding sample.
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, -1], np.int32)
    emb = rng.normal(size=(len(labels), 5)).astype(np.float32)
    loss, grad = _loss_and_grad(jnp.asarray(emb), jnp.asarray(labels), margin)
    np.testing.assert_allclose(float(loss), _reference_loss(emb, labels, margin), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), _fd_grad(emb, labels, margin), rtol=1e-4, atol=2e-6)
    assert np.all(np.asarray(grad)[-1] == 0)  # the padding sample is in no triplet


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_loss_ties_share_the_gradient(margin):
    """Exact ties of hardest positives and negatives: the gradient is the mean of the tied ones' (which is
    what central differences give at a two-way tie)."""
    labels = np.array([0, 0, 0, 1, 1], np.int32)
    emb = np.array([[0, 0], [1, 0], [-1, 0], [0, 1.1], [0, -1.1]], np.float32)
    loss, grad = _loss_and_grad(jnp.asarray(emb), jnp.asarray(labels), margin)
    np.testing.assert_allclose(float(loss), _reference_loss(emb, labels, margin), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), _fd_grad(emb, labels, margin), rtol=1e-4, atol=2e-6)


def test_triplet_loss_metrics_and_edge_cases():
    labels = np.array([0, 0, 1, 1], np.int32)
    emb = np.array([[0, 0], [0, 1], [5, 0], [5, 3]], np.float32)
    loss, m = batch_hard_triplet_loss(emb, labels, 0.3)
    # hardest positive / negative per anchor: (1, 5), (1, sqrt(26)), (3, 5), (3, sqrt(29))
    np.testing.assert_allclose(float(m["d_pos"]), 2.0, rtol=1e-6)
    np.testing.assert_allclose(float(m["d_neg"]), (10 + math.sqrt(26) + math.sqrt(29)) / 4, rtol=1e-6)
    assert float(loss) == 0 and float(m["active"]) == 0 and float(m["rank1"]) == 1 and float(m["anchors"]) == 4
    # No anchor has both a positive and a negative: the loss is 0, not NaN.
    loss, m = batch_hard_triplet_loss(emb, np.array([0, 1, 2, 3]), None)
    assert float(loss) == 0 and float(m["anchors"]) == 0
    with pytest.raises(ValueError, match="labels"):
        batch_hard_triplet_loss(emb, labels[:3], None)


@pytest.mark.parametrize("margin", [0.3, None])
def test_triplet_loss_gradient_is_finite_for_duplicate_embeddings(margin):
    labels = jnp.array([0, 0, 1, 1, 2, 2], jnp.int32)
    same = jnp.ones((6, 4), jnp.float32)
    loss, grad = _loss_and_grad(same, labels, margin)
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(float(loss), math.log(2) if margin is None else margin, rtol=1e-6)
    dup = jnp.array([[0, 0], [0, 0], [0, 0], [1, 1], [1, 1], [2, 0.5]], jnp.float32)
    loss, grad = _loss_and_grad(dup, labels, margin)
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()


# ------------------------------------------------------------------------------------------------ crops


def _ramp(h: int = 200, w: int = 250) -> np.ndarray:
    """A frame whose blue channel is the column, green the row (bilinear sampling reproduces them exactly)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x, y, np.full_like(x, 7)], -1).astype(np.uint8)


@pytest.mark.parametrize("box, out_hw, context, keep_aspect", [
    ((40, 30, 136, 126), (32, 32), 1.0, True),       # integer scale 3
    ((52.3, 41.7, 83.9, 120.2), (24, 16), 1.25, True),  # fractional box, portrait output
    ((52.3, 41.7, 83.9, 120.2), (20, 30), 1.0, False),  # stretched
    ((-30, -20, 50, 40), (16, 16), 1.5, True),       # partly outside the frame
    ((200, 150, 270, 230), (16, 16), 1.0, True),     # partly outside bottom/right
])
def test_crop_samples_the_window_at_pixel_centres(box, out_hw, context, keep_aspect):
    image = _ramp()
    out = crop(image, box, out_hw, context=context, keep_aspect=keep_aspect)
    assert out.shape == (*out_hw, 3) and out.dtype == np.uint8
    wx0, wy0, wx1, wy1 = crop_window(box, out_hw, context, keep_aspect)
    if keep_aspect:
        np.testing.assert_allclose((wx1 - wx0) / (wy1 - wy0), out_hw[1] / out_hw[0], rtol=1e-9)
        bw, bh = box[2] - box[0], box[3] - box[1]
        assert wx1 - wx0 >= context * bw - 1e-9 and wy1 - wy0 >= context * bh - 1e-9
    h, w = out_hw
    # Source coordinates (pixel centres) of each output pixel.
    xs = wx0 + (np.arange(w) + 0.5) * (wx1 - wx0) / w - 0.5
    ys = wy0 + (np.arange(h) + 0.5) * (wy1 - wy0) / h - 0.5
    inside = ((ys >= 0) & (ys <= image.shape[0] - 1))[:, None] & ((xs >= 0) & (xs <= image.shape[1] - 1))[None]
    outside = ((ys < -1) | (ys > image.shape[0]))[:, None] | ((xs < -1) | (xs > image.shape[1]))[None]
    ref_x = np.broadcast_to(xs[None], (h, w))
    ref_y = np.broadcast_to(ys[:, None], (h, w))
    # uint8 output: within half a grey level plus OpenCV's 1/32-pixel fixed-point interpolation.
    assert np.abs(out[..., 0][inside] - ref_x[inside]).max() <= 0.5 + 1 / 32 + 1e-6
    assert np.abs(out[..., 1][inside] - ref_y[inside]).max() <= 0.5 + 1 / 32 + 1e-6
    assert np.all(out[..., 2][inside] == 7)
    assert np.all(out[outside] == np.asarray(PAD_VALUE_BGR, np.uint8))
    assert inside.any()


def test_crop_and_mask_box_errors_and_edges():
    mask = np.zeros((10, 12), bool)
    assert mask_box(mask) is None
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3.0, 2.0, 9.0, 5.0)
    image = np.zeros((10, 12, 3), np.uint8)
    image[2:5, 3:9] = 200
    # A 3 x 6 box into a 3 x 6 crop at context 1 is a copy of its pixels.
    np.testing.assert_array_equal(crop(image, mask_box(mask), (3, 6)), np.full((3, 6, 3), 200, np.uint8))
    with pytest.raises(ValueError, match="x1 > x0"):
        crop(image, (5, 5, 5, 8), (8, 8))
    with pytest.raises(ValueError, match="uint8"):
        crop(image.astype(np.float32), (0, 0, 4, 4), (8, 8))


# ------------------------------------------------------------------------------------------------ sampler


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory):
    # 3 videos of 2-4 objects (seed 0: 2, 4 and 4), 6 frames of 64x96.
    root = str(tmp_path_factory.mktemp("reid_davis"))
    synthetic.generate("davis", root, seed=0, num_train=3, num_val=0, num_frames=6, height=64, width=96)
    return root


@pytest.fixture(scope="module")
def davis_records(davis_root):
    return load_dataset(synthetic.dataset_config("davis", davis_root, "train"))


def _check_plan(sampler, plan, records):
    assert len(plan) == sampler.P
    keys = [(v, iid) for v, iid, _ in plan]
    assert len(set(keys)) == sampler.P, "an instance appears under two labels"
    for v, iid, frames in plan:
        record = sampler.videos[v].record
        assert len(frames) == sampler.K
        assert all(iid in record.frame_instances[t] for t in frames)
    first = sampler.videos[plan[0][0]]
    assert len(first.frames) >= 2


def test_triplet_sampler_batches(davis_records):
    sampler = TripletSampler(davis_records, P=3, K=2, out_hw=(32, 32), seed=7)
    a, b = sampler(5), TripletSampler(davis_records, P=3, K=2, out_hw=(32, 32), seed=7)(5)
    assert a["crops"].shape == (6, 32, 32, 3) and a["crops"].dtype == np.uint8
    np.testing.assert_array_equal(a["labels"], [0, 0, 1, 1, 2, 2])
    assert a["labels"].dtype == np.int32
    np.testing.assert_array_equal(a["crops"], b["crops"])  # deterministic in (seed, step)
    assert not np.array_equal(a["crops"], sampler(6)["crops"])
    for step in range(20):
        plan = sampler.plan(step)
        _check_plan(sampler, plan, davis_records)
        # P=3 fits in every video but the 2-instance one: one video per batch whenever it can.
        if len(sampler.videos[plan[0][0]].frames) >= 3:
            assert len({v for v, _, _ in plan}) == 1
    # More instances than any video has: further videos fill the batch, never an instance twice.
    wide = TripletSampler(davis_records, P=6, K=3, out_hw=(16, 16), seed=0)
    for step in range(10):
        plan = wide.plan(step)
        _check_plan(wide, plan, davis_records)
        assert len({v for v, _, _ in plan}) >= 2
    assert wide(0)["crops"].shape == (18, 16, 16, 3)
    with pytest.raises(ValueError, match="fewer than P=11"):
        TripletSampler(davis_records, P=11, K=2, out_hw=(16, 16), seed=0)


def test_triplet_sampler_crops_are_the_instances(davis_records):
    """Without augmentation the crops are ``crop`` of the instance's mask box in its frames."""
    from stemseg_jax.io import read_image

    sampler = TripletSampler(davis_records, P=2, K=2, out_hw=(24, 24), seed=1, jitter=0.0, flip=False,
                             context=1.0)
    batch = sampler(3)
    for slot, (v, iid, frames) in enumerate(sampler.plan(3)):
        record = sampler.videos[v].record
        masks, _ = record.masks.load(frames, [iid])
        for k, t in enumerate(frames):
            want = crop(read_image(record.frame_paths[t]), mask_box(masks[0, k]), (24, 24), 1.0)
            np.testing.assert_array_equal(batch["crops"][slot * 2 + k], want)


# ------------------------------------------------------------------------------------------------ model


def test_reid_net_shapes():
    full = default_reid_config()
    model = build_reid(full)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((2, 128, 128, 3)))
    out = jax.eval_shape(model.apply, shapes, jnp.zeros((5, 128, 128, 3)))
    assert out.shape == (5, 128) and out.dtype == jnp.float32
    assert shapes["params"]["body"]["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
    assert shapes["params"]["fc1"]["kernel"].shape == (2048, 1024)
    with pytest.raises(ValueError, match="crops"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((128, 128, 3)))


# ------------------------------------------------------------------------------------------------ training


def _reid_config(davis_root):
    c = base_config()
    c.data.datasets = {"davis": dataset("davis", davis_root, "train")}
    c.reid = tiny_reid_config()
    c.reid.crop_hw = (32, 32)
    c.reid.num_steps = 12
    c.reid.decay_start = 8
    c.reid.checkpoint_every = 6
    c.reid.log_every = 3
    return c


def test_reid_training_fits_a_batch(davis_root, tmp_path):
    """The tiny recipe (model, loss, optimizer, loop) drives the loss of a fixed batch down without collapsing
    the embeddings onto one point (which would give log 2)."""
    config = _reid_config(davis_root)
    cfg = config.reid
    batch = make_sampler(config)(0)
    variables = init_reid_variables(cfg, batch["crops"], jax.random.PRNGKey(0))
    loss_fn = make_reid_loss_fn(cfg)
    rest = {k: x for k, x in variables.items() if k != "params"}
    evaluate = jax.jit(lambda p: loss_fn(p, rest, batch, None))
    before, _ = evaluate(variables["params"])
    optimizer, schedule = make_reid_optimizer(cfg)
    fitted = run_training(workdir=str(tmp_path / "fit"), name="fit", init_variables=variables, loss_fn=loss_fn,
                          batches=lambda step: batch, optimizer=optimizer, num_steps=12, seed=0,
                          checkpoint_every=12, log_every=12, schedule=schedule, progress=False)
    after, metrics = evaluate(fitted["params"])
    assert float(after) < 0.2 * float(before) and float(after) < 0.2, (float(before), float(after))
    assert float(metrics["d_neg"]) > float(metrics["d_pos"]) > 0 and float(metrics["rank1"]) == 1


def test_train_reid_checkpoints_and_restores(davis_root, tmp_path):
    config = _reid_config(davis_root)
    cfg = config.reid
    workdir = str(tmp_path / "work")
    step_dir = train_reid(config, workdir, progress=False)
    assert step_dir == os.path.join(workdir, "reid", "checkpoints", "12")
    assert sorted(os.listdir(os.path.dirname(step_dir))) == ["12", "6"]
    trained = restore_reid(config, workdir)
    for path in (step_dir, os.path.join(workdir, "reid")):
        again = restore_reid(config, path)
        np.testing.assert_array_equal(again["params"]["fc2"]["kernel"], trained["params"]["fc2"]["kernel"])
    sampler = make_sampler(config)
    init = init_reid_variables(cfg, sampler(0)["crops"], jax.random.PRNGKey(int(cfg.seed)))
    assert not np.array_equal(trained["params"]["fc2"]["kernel"], init["params"]["fc2"]["kernel"])
    # The frozen statistics are the calibrated ones, untouched by training.
    np.testing.assert_array_equal(trained["frozen_bn"]["body"]["stem"]["bn1"]["running_var"],
                                  init["frozen_bn"]["body"]["stem"]["bn1"]["running_var"])
    model = build_reid(cfg)
    crops = sampler(2000)["crops"]
    direct = np.asarray(embed(trained, model, crops))
    assert direct.shape == (len(crops), cfg.embedding_dim) and np.isfinite(direct).all()
    # Other batch shapes sum in another order: float32 noise through 50 layers, no more.
    np.testing.assert_allclose(make_embedder(model, batch_size=3)(trained, crops), direct, rtol=1e-4, atol=1e-4)
    assert os.listdir(os.path.join(workdir, "reid", "tensorboard"))
    other = _reid_config(davis_root)
    other.reid.embedding_dim = 16
    with pytest.raises(ValueError, match="does not fit"):
        restore_reid(other, workdir)


# ------------------------------------------------------------------------------------------------ loop


def _mlp_setup():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    variables = {
        "params": {"dense": {"w": jax.random.normal(k1, (4, 3))}, "frozen": {"b": jnp.ones((3,))}},
        "buffers": {"scale": jnp.full((3,), 0.5)},
    }
    target = jax.random.normal(k2, (8, 3))

    def loss_fn(params, rest, batch, key):
        noise = 0.1 * jax.random.normal(key, (3,))  # uses the step's key: resumption must reproduce it
        pred = batch["x"] @ params["dense"]["w"] * rest["buffers"]["scale"] + params["frozen"]["b"] + noise
        loss = jnp.mean((pred - target) ** 2)
        return jnp.where(batch["bad"] > 0, jnp.nan, loss), {"mse": loss}

    def batches(step):
        x = np.random.default_rng(step).normal(size=(8, 4)).astype(np.float32)
        return {"x": x, "bad": np.float32(0)}

    schedule = optax.exponential_decay(0.05, 5, 0.5)
    kwargs = dict(name="mlp", init_variables=variables, loss_fn=loss_fn, batches=batches,
                  optimizer=optax.sgd(schedule, momentum=0.9), seed=11, checkpoint_every=2, log_every=1,
                  trainable=lambda path: path[0] != "frozen", schedule=schedule, progress=False)
    return variables, kwargs


def test_loop_resume_is_bit_identical(tmp_path):
    variables, kwargs = _mlp_setup()
    straight = run_training(workdir=str(tmp_path / "a"), num_steps=4, **kwargs)
    run_training(workdir=str(tmp_path / "b"), num_steps=2, **kwargs)
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["2"]
    resumed = run_training(workdir=str(tmp_path / "b"), num_steps=4, **kwargs)
    for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(straight["params"]["dense"]["w"], variables["params"]["dense"]["w"])
    np.testing.assert_array_equal(straight["params"]["frozen"]["b"], variables["params"]["frozen"]["b"])
    np.testing.assert_array_equal(straight["buffers"]["scale"], variables["buffers"]["scale"])
    for path in (tmp_path / "b", tmp_path / "b" / "checkpoints", tmp_path / "b" / "checkpoints" / "4"):
        restored = restore_variables(str(path))
        for a, b in zip(jax.tree_util.tree_leaves(straight), jax.tree_util.tree_leaves(restored)):
            np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path / "b" / "tensorboard")
    with pytest.raises(FileNotFoundError):
        restore_variables(str(tmp_path / "missing"))


def test_loop_stops_on_a_non_finite_loss_naming_the_step(tmp_path):
    _, kwargs = _mlp_setup()
    good = kwargs["batches"]
    kwargs["batches"] = lambda step: {**good(step), "bad": np.float32(step == 2)}
    kwargs["log_every"] = 10
    with pytest.raises(FloatingPointError, match="at step 3"):
        run_training(workdir=str(tmp_path / "nan"), num_steps=6, **{**kwargs, "checkpoint_every": 4})
    # The non-finite state was never saved.
    assert not os.path.isdir(tmp_path / "nan" / "checkpoints" / "4")
    with pytest.raises(ValueError, match="num_steps"):
        run_training(workdir=str(tmp_path / "x"), num_steps=0, **kwargs)
