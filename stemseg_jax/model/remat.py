"""Rematerialisation (``model.remat=True``) that lowers peak memory on every backend, XLA:CPU included.

``remat(fn, names)`` wraps ``fn(mdl, *args) -> outputs``, a piece of a module's ``__call__`` that
creates the child modules ``names`` of ``mdl``. The forward pass runs ``fn`` unchanged and keeps only
``args`` (and the children's variables); the backward pass recomputes ``fn`` from them and
differentiates the recomputation. Parameter paths are those of the plain code (the children stay
children of ``mdl``), so checkpoints and converted weights load either way.

Why not ``jax.checkpoint`` / ``nn.remat``: JAX keeps the recomputation apart from the forward pass with
an ``optimization_barrier`` on the recomputation's inputs. XLA:CPU expands that barrier right after its
first CSE pass (``cse_barrier_expander``); a later CSE then merges parts of the recomputation back into
the forward values, and nothing orders the rest after the incoming gradient, so the scheduler may run it
early: both copies stay alive and ``model.remat=True`` *raised* the stage-2 peak (14.7 -> 15.9 GiB,
docs/BENCHMARKS.md). Here the recomputation's inputs pass, together with the incoming gradient, through a
gate: a value that exists only once that gradient does, and that no CSE can merge with the forward's.
On the CPU backend (whatever ``conv2d_impl``) the gate is a two-branch ``lax.cond`` (the fusion boundary
that survives XLA:CPU's pipeline, as in ``layers.materialize``); on other backends an
``optimization_barrier``, which GPU and TPU compilers keep up to scheduling and which costs no
device-to-host copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _gate(tree):
    """The identity on ``tree``, returned as new values that depend on every leaf (see module docstring)."""
    if jax.default_backend() != "cpu":
        return lax.optimization_barrier(tree)
    leaf = jax.tree_util.tree_leaves(tree)[-1]
    predicate = leaf.reshape(-1)[0] > 0
    # Two structurally different branches: with two plain identities XLA folds the conditional away.
    return lax.cond(predicate, lambda t: t, lambda t: lax.optimization_barrier(t), tree)


class _Call(nn.Module):
    """Runs ``fn(self, *args)`` in a compact scope of its own, so that ``fn``'s children are created at
    the root of the variables given to ``apply`` (the recomputation in the backward pass)."""

    fn: Callable

    @nn.compact
    def __call__(self, *args):
        return self.fn(self, *args)


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def _select(variables, names: Sequence[str]) -> dict:
    return {col: {n: tree[n] for n in names if n in tree} for col, tree in variables.items()}


def remat(fn: Callable, names: Sequence[str]) -> Callable:
    """``fn(mdl, *args)`` with a backward pass that recomputes it from ``args``; ``names``: the children
    of ``mdl`` that ``fn`` creates (their variables are the only ones it reads). ``args`` are arrays or
    tuples of arrays."""
    names = tuple(names)
    others = {}  # shapes of ``mdl``'s other parameters, static, set by the forward pass for the backward

    def forward(mdl, *args):
        params = mdl.variables.get("params", {})
        others.clear()
        others.update({k: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), v, is_leaf=_is_array)
                       for k, v in params.items() if k not in names})
        return fn(mdl, *args), (_select(mdl.variables, names), args)

    def backward(residuals, grad):
        variables, args = residuals
        args, grad = _gate((args, grad))

        def recompute(params, *inputs):
            return _Call(fn).apply({**variables, "params": params}, *inputs)

        _, vjp = jax.vjp(recompute, variables.get("params", {}), *args)
        params_t, *args_t = vjp(grad)
        # The lifted scope is all of ``mdl``: its other parameters get zero gradients here.
        full = {k: jax.tree_util.tree_map(lambda sd: jnp.zeros(*sd), v, is_leaf=_is_shape) for k, v in others.items()}
        full.update(params_t)
        return ({"params": full}, *args_t)

    return nn.custom_vjp(fn, forward_fn=forward, backward_fn=backward)
