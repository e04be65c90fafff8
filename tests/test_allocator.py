"""``stemseg_jax.allocator``: which TCMalloc library the entry point preloads, and the re-execution."""

import os
import subprocess
import sys
import textwrap

import pytest

from stemseg_jax import allocator


def test_opt_out_and_explicit_library(tmp_path):
    assert allocator.find_tcmalloc({allocator.ENV: "0"}) is None
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    assert allocator.find_tcmalloc({allocator.ENV: str(library)}) == str(library)
    with pytest.raises(FileNotFoundError, match=f"{allocator.ENV}=.*missing.so"):
        allocator.find_tcmalloc({allocator.ENV: str(tmp_path / "missing.so")})


def test_preload_command_prepends_the_library_once(tmp_path):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    argv, env = allocator.preload_command({allocator.ENV: str(library), "LD_PRELOAD": "/x/libother.so"}, ["prog"])
    assert argv == ["prog"]
    assert env["LD_PRELOAD"] == f"{library}:/x/libother.so"
    # The re-executed process sees it preloaded and goes on.
    assert allocator.preload_command(env, ["prog"]) is None
    assert allocator.preload_command({allocator.ENV: "off"}, ["prog"]) is None


@pytest.mark.skipif(allocator.find_tcmalloc({}) is None, reason="no TCMalloc library on this machine")
def test_reexec_runs_the_same_command_under_tcmalloc(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent("""
        import sys
        from stemseg_jax.allocator import reexec_with_tcmalloc
        reexec_with_tcmalloc()
        maps = open("/proc/self/maps").read()
        print("tcmalloc" in maps, sys.argv[1:])
    """))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.ENV)}
    env["PYTHONPATH"] = root
    out = subprocess.run([sys.executable, str(script), "a", "--b=1"], env=env, capture_output=True, text=True,
                         check=True, cwd=root)
    assert out.stdout.strip() == "True ['a', '--b=1']", out.stderr
