"""Converter from the official PyTorch checkpoints and ``forward_clip``: parity against PyTorch references.

The references in ``tests/torch_reference.py`` are written from the spec with the official tensor names,
given random weights, converted like a released checkpoint and compared on random inputs
(max |ours - torch| / max |torch| <= 1e-5 in float32).
"""

import csv
import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the parity tests need PyTorch (pip install torch==2.13.0)")

from stemseg_jax.convert import (  # noqa: E402
    CheckpointMismatchError,
    convert_official_checkpoint,
    convert_state_dict,
    expected_variables,
    load_variables,
    official_name,
    plan_conversion,
    read_state_dict,
)
from stemseg_jax.inference.forward import forward_clip  # noqa: E402
from stemseg_jax.model import build_model  # noqa: E402
from stemseg_jax.model.backbone import FPN, Bottleneck  # noqa: E402
from stemseg_jax.model.decoder import SqueezeExpandDecoder  # noqa: E402
from tests import torch_reference as tr  # noqa: E402
from tests.helpers import REPO, load_config  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tools"))
import convert_official_checkpoint as convert_tool  # noqa: E402

# copies of the official checkpoints' key/shape/dtype listings (no weights), kept in the repository
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "official_checkpoint_schema")
TOL = 1e-5


def rel_err(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def to_torch(x: np.ndarray, perm: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.transpose(x, perm)))


def init_shapes(module, *inputs):
    return jax.eval_shape(module.init, jax.random.key(0), *inputs)


# ------------------------------------------------------------------------------------------ names


def test_official_names_follow_the_state_dict_layout():
    assert official_name("frozen_bn", ("backbone", "body", "layer1_0", "bn1", "weight")) == (
        "backbone.body.layer1.0.bn1.weight"
    )
    assert official_name("params", ("backbone", "body", "layer3_22", "downsample_0", "kernel")) == (
        "backbone.body.layer3.22.downsample.0.weight"
    )
    assert official_name("params", ("embedding_head", "decoder", "block_32x_9", "scale")) == (
        "embedding_head.block_32x.9.weight"
    )
    assert official_name("params", ("semseg_head", "decoder", "conv_16", "kernel")) == "semseg_head.conv_16.weight"
    assert official_name("params", ("backbone", "fpn", "fpn_inner4", "bias")) == "backbone.fpn.fpn_inner4.bias"
    assert official_name("buffers", ("embedding_head", "time_scale")) == "embedding_head.time_scale"
    assert official_name("buffers", ("free_dim_bandwidths",)) == "embedding_loss_criterion.free_dim_bandwidths"


# ------------------------------------------------------------------------------------------ pieces, real widths


@pytest.mark.parametrize("in_ch,width,out_ch,stride", [(64, 64, 256, 1), (256, 128, 512, 2), (512, 128, 512, 1)])
def test_bottleneck_parity_real_channels(in_ch, width, out_ch, stride):
    ref = tr.randomize_(tr.Bottleneck(in_ch, width, out_ch, stride), seed=1)
    x = np.random.default_rng(0).normal(size=(2, 12, 10, in_ch)).astype(np.float32)
    flax_block = Bottleneck(width, out_ch, stride)
    variables = convert_state_dict(tr.state_dict_numpy(ref), init_shapes(flax_block, x))
    ours = jax.jit(flax_block.apply)(variables, x)
    with torch.no_grad():
        theirs = ref(to_torch(x, (0, 3, 1, 2))).permute(0, 2, 3, 1).numpy()
    assert rel_err(ours, theirs) <= TOL


def test_fpn_parity_real_channels():
    ref = tr.randomize_(tr.FPN((256, 512, 1024, 2048), 256), seed=2)
    rng = np.random.default_rng(1)
    feats = tuple(rng.normal(size=(1, 16 // 2**k, 24 // 2**k, 256 * 2**k)).astype(np.float32) for k in range(4))
    flax_fpn = FPN(256)
    variables = convert_state_dict(tr.state_dict_numpy(ref), init_shapes(flax_fpn, feats))
    ours = jax.jit(flax_fpn.apply)(variables, feats)
    with torch.no_grad():
        theirs = ref([to_torch(f, (0, 3, 1, 2)) for f in feats])
    for o, t in zip(ours, theirs, strict=True):
        assert rel_err(o, t.permute(0, 2, 3, 1).numpy()) <= TOL


def _random_features(rng, t: int, p5_hw: tuple[int, int], channels: int, batch: int = 1):
    """FPN-like maps (P2..P5) ``[B, T, H/s, W/s, C]`` with P5 of size ``p5_hw``."""
    return tuple(
        rng.normal(size=(batch, t, p5_hw[0] * 2 ** (3 - k), p5_hw[1] * 2 ** (3 - k), channels)).astype(np.float32)
        for k in range(4)
    )


def _to_torch_feats(feats):
    """P2..P5 channels-last -> the heads' NCTHW order (1/32 .. 1/4)."""
    return [to_torch(f, (0, 4, 1, 2, 3)) for f in feats][::-1]


@pytest.mark.parametrize("num_frames", [2, 4, 16])
def test_decoder_pool_schedules(num_frames):
    """Every temporal schedule of spec §2.2 (T = 8 is covered by the whole-model tests)."""
    channels = (32, 32, 16, 16)
    ref = tr.randomize_(tr.SqueezeExpandDecoder(24, channels, num_frames, groups=8), seed=3)
    feats = _random_features(np.random.default_rng(2), num_frames, (3, 3), 24)
    flax_dec = SqueezeExpandDecoder(channels, gn_groups=8)
    variables = convert_state_dict(tr.state_dict_numpy(ref), init_shapes(flax_dec, feats))
    ours = jax.jit(flax_dec.apply)(variables, feats)
    with torch.no_grad():
        theirs = ref(_to_torch_feats(feats)).permute(0, 2, 3, 4, 1).numpy()
    assert ours.shape == (1, num_frames, 24, 24, 16)
    assert rel_err(ours, theirs) <= TOL


def test_heads_parity_real_channels():
    """KITTI's embedding (xyt, seediness channel) and semantic heads at their real widths, T = 4."""
    config = load_config("kitti")
    m = config.model
    t = 4
    emb = tr.EmbeddingHead(256, tuple(m.embedding_channels), t, m.embedding_mode, True)
    sem = tr.OutputHead(256, tuple(m.semseg_channels), t, m.num_classes + 1)
    tr.randomize_(emb, seed=4)
    tr.randomize_(sem, seed=5)
    state = tr.state_dict_numpy(emb, "embedding_head.") | tr.state_dict_numpy(sem, "semseg_head.")
    expected = expected_variables(config)
    expected = {c: {k: v for k, v in tree.items() if k != "backbone"} for c, tree in expected.items()}
    variables = convert_state_dict(state, expected)
    feats = _random_features(np.random.default_rng(3), t, (3, 4), 256)
    ours = jax.jit(lambda v, f: build_model(config).apply(v, f, method="heads"))(variables, feats)
    with torch.no_grad():
        tfeats = _to_torch_feats(feats)
        e, v, s = emb(tfeats)
        semseg = sem(tfeats)
    last = lambda x: x.permute(0, 2, 3, 4, 1).numpy()  # noqa: E731
    assert rel_err(ours["embeddings"], last(e)) <= TOL
    assert rel_err(ours["bandwidth_logits"], last(v)) <= TOL
    assert rel_err(ours["seediness"], last(s)[..., 0]) <= TOL
    assert rel_err(ours["semseg_logits"], last(semseg)) <= TOL


# ------------------------------------------------------------------------------------------ whole model via the tool


def _save_official(tmp_path, name: str, state: dict, wrap: bool) -> str:
    """Writes a .pth like the released files.

    ``wrap``: the official trainer's session dict (legacy, non-zip serialisation, with optimizer,
    scheduler and logger state beside ``"model"``); otherwise a bare state dict (the backbone file).
    """
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    path = str(tmp_path / name)
    if not wrap:
        torch.save(tensors, path)
        return path
    session = {
        "model": tensors,
        "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "lr_scheduler": {"base_lrs": [1e-3], "last_epoch": 3},
        "logger": {"total_iterations": 10, "_TrainingLogger__train_start_time": 1.5, "_TrainingLogger__x": None},
        "iterations": 3,
    }
    torch.save(session, path, _use_new_zipfile_serialization=False)
    return path


@pytest.fixture(scope="module")
def clip():
    # non-square frames so the coordinate grid's aspect handling is exercised
    return np.random.default_rng(4).integers(0, 256, size=(8, 128, 96, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["davis", "youtube_vis", "kitti"])
def test_whole_model_parity_through_the_tool(name, clip, tmp_path):
    config = load_config(name, "tiny")
    ref = tr.randomize_(tr.STEmSegReference(config.model, config.data.num_frames), seed=6).eval()
    src = _save_official(tmp_path, f"{name}.pth", tr.state_dict_numpy(ref), wrap=True)
    out_dir = str(tmp_path / "converted")
    spec = os.path.join(REPO, "configs", f"{name}.py") + ":tiny"
    if ref.embedding_loss_criterion is not None:  # random bandwidths differ from the config's 1/0.3^2
        with pytest.warns(UserWarning, match="free_dim_bandwidths"):
            assert convert_tool.main(["--config", spec, "--input", src, "--output", out_dir]) == 0
    else:
        assert convert_tool.main(["--config", spec, "--input", src, "--output", out_dir]) == 0

    variables = load_variables(out_dir)
    # time_scale and free_dim_bandwidths come from the file (randomised there), not from the config
    time_scale = float(variables["buffers"]["embedding_head"]["time_scale"])
    assert time_scale == pytest.approx(float(ref.embedding_head.time_scale))
    if ref.embedding_loss_criterion is not None:
        np.testing.assert_array_equal(
            variables["buffers"]["free_dim_bandwidths"], ref.embedding_loss_criterion.free_dim_bandwidths.numpy()
        )
    ours = forward_clip(config, variables, clip)
    with torch.no_grad():
        theirs = {k: None if v is None else v[0].numpy() for k, v in ref(torch.from_numpy(clip[None])).items()}
    assert ours["embeddings"].shape == (8, 32, 24, 4 if name != "kitti" else 3)
    assert rel_err(ours["embeddings"], theirs["embeddings"]) <= TOL
    assert rel_err(ours["bandwidths"], np.exp(theirs["bandwidth_logits"].astype(np.float64)) * 10) <= TOL
    assert rel_err(ours["seediness"], theirs["seediness"]) <= TOL
    if name == "davis":
        assert ours["semseg_logits"] is None
    else:
        assert rel_err(ours["semseg_logits"], theirs["semseg_logits"]) <= TOL
    # an existing output is never overwritten silently
    assert convert_tool.main(["--config", spec, "--input", src, "--output", out_dir]) == 1


def test_backbone_only_conversion(tmp_path):
    config = load_config("kitti", "tiny")
    m = config.model
    ref = tr.randomize_(tr.make_backbone(m.backbone_depth, m.backbone_width, m.fpn_channels), seed=7).eval()
    # the backbone file is the bare state dict of Sequential(body, fpn): no "backbone." prefix
    src = _save_official(tmp_path, "mask_rcnn_backbone.pth", tr.state_dict_numpy(ref), wrap=False)
    out_dir = str(tmp_path / "backbone")
    spec = os.path.join(REPO, "configs", "kitti.py") + ":tiny"
    assert convert_tool.main(["--config", spec, "--backbone-only", "--input", src, "--output", out_dir]) == 0
    variables = load_variables(out_dir)
    assert sorted(variables) == ["buffers", "frozen_bn", "params"]
    assert list(variables["params"]) == ["backbone"] and list(variables["frozen_bn"]) == ["backbone"]
    assert variables["buffers"] == {}

    images = np.random.default_rng(5).integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)
    ours = jax.jit(lambda v, x: build_model(config).apply(v, x, method="backbone_features"))(variables, images)
    with torch.no_grad():
        x = to_torch(images.astype(np.float32), (0, 3, 1, 2)) - torch.tensor(tr.PIXEL_MEAN_BGR)[:, None, None]
        theirs = ref.fpn(ref.body(x))
    for o, t in zip(ours, theirs, strict=True):
        assert rel_err(o, t.permute(0, 2, 3, 1).numpy()) <= TOL


# ------------------------------------------------------------------------------------------ full official schema


def _read_schema(name: str) -> dict[str, tuple[int, ...]]:
    with open(os.path.join(SCHEMA_DIR, f"{name}.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["key"]: tuple(int(d) for d in r["shape"].strip("[]").split(",") if d.strip()) for r in rows}


@pytest.mark.parametrize(
    "config_name,variant,schema",
    [("davis", None, "davis_1"), ("davis", "stage2", "davis_1"), ("youtube_vis", None, "youtube_vis"),
     ("kitti", None, "kitti_mots_2")],
)  # fmt: skip
def test_full_official_schema_converts_with_nothing_left_over(config_name, variant, schema):
    shapes = _read_schema(schema)
    expected = expected_variables(load_config(config_name, variant))
    plan = plan_conversion(shapes, expected)
    assert sorted(m.official_name for m in plan) == sorted(shapes)
    # zero-strided arrays: the real shapes go through the whole conversion without allocating 60M values twice
    state = {k: np.broadcast_to(np.float32(0.5), s) for k, s in shapes.items()}
    variables = convert_state_dict(state, expected, source=f"{schema}.tsv")
    got = jax.tree.map(lambda x: x.shape, variables)
    assert got == jax.tree.map(lambda x: x.shape, expected)
    assert int(sum(x.size for x in jax.tree.leaves(variables))) == int(sum(np.prod(s) for s in shapes.values()))


def test_backbone_schema_converts_backbone_only():
    schema = _read_schema("kitti_mots_2")
    shapes = {k.removeprefix("backbone."): s for k, s in schema.items() if k.startswith("backbone.")}
    expected = expected_variables(load_config("kitti"), backbone_only=True)
    plan = plan_conversion({f"backbone.{k}": s for k, s in shapes.items()}, expected)
    assert len(plan) == len(shapes)
    assert expected["buffers"] == {}


# ------------------------------------------------------------------------------------------ strictness and errors


@pytest.fixture(scope="module")
def tiny_kitti():
    config = load_config("kitti", "tiny")
    ref = tr.randomize_(tr.STEmSegReference(config.model, 8), seed=8)
    return config, tr.state_dict_numpy(ref)


def test_mismatches_are_reported_together(tiny_kitti):
    config, state = tiny_kitti
    state = dict(state)
    del state["backbone.body.layer2.0.bn3.running_var"]
    state["embedding_head.extra.weight"] = np.zeros(3, np.float32)
    state["semseg_head.conv_out.weight"] = np.zeros((5, 16, 1, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(state, expected_variables(config), source="kitti_mots.pth")
    msg = str(e.value)
    assert "kitti_mots.pth" in msg
    assert "1 missing" in msg and "backbone.body.layer2.0.bn3.running_var" in msg
    assert "1 unexpected" in msg and "embedding_head.extra.weight" in msg
    assert "1 shape mismatch" in msg and "semseg_head.conv_out.weight: file has [5, 16, 1, 1, 1]" in msg


def test_wrong_config_for_the_checkpoint_is_an_error(tiny_kitti):
    _, state = tiny_kitti
    with pytest.raises(CheckpointMismatchError, match="seediness_head"):
        convert_state_dict(state, expected_variables(load_config("davis", "tiny")))


def test_backbone_only_refuses_a_full_model_file(tiny_kitti, tmp_path):
    config, state = tiny_kitti
    src = _save_official(tmp_path, "kitti_mots.pth", state, wrap=True)
    with pytest.raises(CheckpointMismatchError, match=r"--backbone-only expects the backbone file.*embedding_head"):
        convert_official_checkpoint(config, src, backbone_only=True)


def test_tool_reports_a_mismatch_and_writes_nothing(tiny_kitti, tmp_path, capsys):
    _, state = tiny_kitti
    src = _save_official(tmp_path, "kitti_mots.pth", state, wrap=True)
    out_dir = tmp_path / "out"
    spec = os.path.join(REPO, "configs", "youtube_vis.py") + ":tiny"
    assert convert_tool.main(["--config", spec, "--input", src, "--output", str(out_dir)]) == 1
    err = capsys.readouterr().err
    assert "kitti_mots.pth does not match" in err and "shape mismatch" in err
    assert not out_dir.exists()


def test_missing_torch_names_the_install_command(tmp_path, monkeypatch):
    path = tmp_path / "x.pth"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
        read_state_dict(str(path))


def test_non_tensor_pickles_need_trust(tmp_path):
    path = str(tmp_path / "odd.pth")
    torch.save({"model": {"w": torch.zeros(2)}, "logger": _Opaque()}, path)
    with pytest.raises(ValueError, match="--trust-pickle"):
        read_state_dict(path)
    assert list(read_state_dict(path, trust_pickle=True)) == ["w"]


class _Opaque:
    pass


def test_forward_clip_rejects_bad_frames(tiny_kitti):
    config, _ = tiny_kitti
    with pytest.raises(ValueError, match="multiples of 32"):
        forward_clip(config, {}, np.zeros((8, 100, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        forward_clip(config, {}, np.zeros((8, 128, 96, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        forward_clip(config, {}, np.zeros((128, 96, 3), np.uint8))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("STEMSEG_FULL_PARITY"), reason="opt-in (~40 s each): STEMSEG_FULL_PARITY=1")
@pytest.mark.parametrize("name,variant", [("davis", "stage2"), ("youtube_vis", None), ("kitti", None)])
def test_full_size_parity(name, variant):
    """The real configs (R-101, 256-channel decoders, DAVIS at T = 16) end to end on a small clip."""
    config = load_config(name, variant)
    t = config.data.num_frames
    ref = tr.randomize_(tr.STEmSegReference(config.model, t), seed=11).eval()
    variables = convert_state_dict(tr.state_dict_numpy(ref), expected_variables(config))
    clip = np.random.default_rng(9).integers(0, 256, size=(t, 128, 96, 3), dtype=np.uint8)
    ours = forward_clip(config, variables, clip)
    with torch.no_grad():
        theirs = {k: None if v is None else v[0].numpy() for k, v in ref(torch.from_numpy(clip[None])).items()}
    theirs["bandwidths"] = np.exp(theirs.pop("bandwidth_logits").astype(np.float64)) * 10
    for key, value in theirs.items():
        if value is None:
            assert ours[key] is None
        else:
            assert rel_err(ours[key], value) <= TOL, key
