"""Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person
Re-Identification").

Every sample of a batch of P identities x K samples is an anchor; its hardest positive is the farthest
sample of its label (itself excluded), its hardest negative the nearest sample of another label. The loss
per anchor is ``[margin + d(a, p) - d(a, n)]_+`` or, with ``margin=None``, the soft margin
``log(1 + exp(d(a, p) - d(a, n)))`` that the paper found best.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pairwise_distances(embeddings: jax.Array) -> jax.Array:
    """Euclidean distances ``[B, B]`` between the rows of ``embeddings [B, D]``.

    Computed from differences rather than ``|a|^2 + |b|^2 - 2ab``: the expansion cancels badly for close
    points (the hardest positives are close by construction) and can go negative. The square root is
    "double-where" guarded: at a zero distance (the diagonal, duplicate embeddings) its derivative is
    infinite, and ``0 * inf`` would turn every gradient it touches into NaN; there it is taken as 0.
    """
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    d2 = jnp.sum(diff * diff, axis=-1)
    positive = d2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, d2, 1.0)), 0.0)


def batch_hard_triplet_loss(embeddings: jax.Array, labels: jax.Array, margin: float | None = None):
    """The batch-hard triplet loss of ``embeddings [B, D]`` with identities ``labels [B]`` (int).

    Labels < 0 mark samples that take part in no triplet (padding). ``margin``: the hinge's margin, or None
    for the soft margin. The loss is the mean over anchors that have at least one positive and one
    negative (0 when none has). Tied hardest samples share the gradient equally (``jnp.max``'s rule).

    Returns ``(loss, metrics)``; metrics (scalars): ``d_pos`` / ``d_neg`` the mean hardest positive /
    negative distance, ``active`` the fraction of anchors whose triplet violates the margin (soft margin:
    whose hardest positive is not nearer than the hardest negative), ``rank1`` the fraction of anchors whose
    nearest other valid sample shares their label, ``anchors`` the number of anchors used.
    """
    embeddings = jnp.asarray(embeddings, jnp.float32)
    labels = jnp.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"expected embeddings [B, D] and labels [B], got {embeddings.shape} and {labels.shape}")
    dist = pairwise_distances(embeddings)
    b = embeddings.shape[0]
    valid = labels >= 0
    pair_valid = valid[:, None] & valid[None, :]
    same = (labels[:, None] == labels[None, :]) & pair_valid
    pos_mask = same & ~jnp.eye(b, dtype=bool)
    neg_mask = ~same & pair_valid
    # Masked entries are pushed to where max/min never pick them; a finite value keeps gradients finite.
    big = jnp.max(dist) + 1.0
    hardest_pos = jnp.max(jnp.where(pos_mask, dist, -1.0), axis=1)
    hardest_neg = jnp.min(jnp.where(neg_mask, dist, jax.lax.stop_gradient(big)), axis=1)
    anchor = jnp.any(pos_mask, axis=1) & jnp.any(neg_mask, axis=1)
    gap = hardest_pos - hardest_neg
    per_anchor = jax.nn.softplus(gap) if margin is None else jax.nn.relu(gap + float(margin))
    count = jnp.sum(anchor)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    mean = lambda x: jnp.sum(jnp.where(anchor, x, 0.0)) / denom  # noqa: E731
    loss = mean(per_anchor)
    violating = gap > (0.0 if margin is None else -float(margin))
    nearest = jnp.argmin(jnp.where(pair_valid & ~jnp.eye(b, dtype=bool), dist, jnp.inf), axis=1)
    metrics = {
        "d_pos": mean(hardest_pos),
        "d_neg": mean(hardest_neg),
        "active": mean(violating.astype(jnp.float32)),
        "rank1": mean((labels[nearest] == labels).astype(jnp.float32)),
        "anchors": count.astype(jnp.float32),
    }
    return loss, jax.tree_util.tree_map(jax.lax.stop_gradient, metrics)
