"""stemseg_jax.xla_cpu: the XLA:CPU convolution setting chosen at import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stemseg_jax import xla_cpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, xla_flags: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.split("\n")[:2] + [out.stderr]


IMPORT_AND_COMPILE = (
    "import os, stemseg_jax, jax.numpy as jnp\n"
    "from stemseg_jax.xla_cpu import eigen_convolutions\n"
    "x = jnp.ones((1, 16, 16, 64)); w = jnp.ones((3, 3, 64, 64))\n"
    "import jax\n"
    "hlo = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', "
    "'HWIO', 'NHWC'))).lower(x, w).compile().as_text()\n"
    "print(os.environ.get('XLA_FLAGS'), eigen_convolutions()); print('ynn_fusion' in hlo)\n"
)


def test_import_turns_ynn_convolutions_off_and_xla_obeys():
    flags, uses_ynn, _ = _run(IMPORT_AND_COMPILE, None)
    assert flags == f"{xla_cpu.YNN_FUSION_FLAG}= True"
    assert uses_ynn == "False"


def test_users_setting_wins():
    flags, uses_ynn, _ = _run(IMPORT_AND_COMPILE, f"{xla_cpu.YNN_FUSION_FLAG}=individual_convolution")
    assert flags == f"{xla_cpu.YNN_FUSION_FLAG}=individual_convolution False"
    assert uses_ynn == "True"  # the default path of this jaxlib, i.e. the setting does take effect


def test_import_after_jax_started_warns_and_changes_nothing():
    code = "import jax.numpy as jnp; jnp.ones(1).block_until_ready()\n" + IMPORT_AND_COMPILE
    flags, uses_ynn, err = _run(code, None)
    assert flags == "None False" and uses_ynn == "True"
    assert "imported after JAX started" in err


@pytest.mark.parametrize("flags, expected", [
    ("", None), (f"{xla_cpu.YNN_FUSION_FLAG}=", ""), (f"--a=1 {xla_cpu.YNN_FUSION_FLAG}=dot --b", "dot"),
    (f"{xla_cpu.YNN_FUSION_FLAG}=dot {xla_cpu.YNN_FUSION_FLAG}=", ""),
])
def test_flag_parsing(flags, expected):
    assert xla_cpu._flag_value(flags) == expected
