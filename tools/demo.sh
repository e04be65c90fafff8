#!/usr/bin/env bash
# The demo, from a fresh clone: install, generate a synthetic KITTI-MOTS-format dataset, train the :tiny
# model on it for a few minutes on the CPU, evaluate sMOTSA / MOTSA / HOTA on the held-out synthetic
# sequences, and write overlay GIFs. Everything goes to demo_output/ (override with DEMO_DIR).
#   DEMO_STEPS=N   optimizer steps (default: the config's demo schedule)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${DEMO_DIR:-demo_output}"
python -m pip install -q --disable-pip-version-check -e .
export STEMSEG_DEMO_DATA="$OUT/data/kitti_mots"
CONFIG="configs/kitti.py:tiny,demo"
EXTRA=()
if [[ -n "${DEMO_STEPS:-}" ]]; then EXTRA+=("--config.train.num_steps=$DEMO_STEPS"); fi

echo "== 1/4 synthetic KITTI-MOTS data -> $STEMSEG_DEMO_DATA"
if [[ ! -d "$STEMSEG_DEMO_DATA/instances_txt" ]]; then
  python tools/make_synthetic_dataset.py --format kitti_mots --out "$STEMSEG_DEMO_DATA" --seed 0 > /dev/null
fi
echo "== 2/4 training the :tiny model (resumes if $OUT/run has checkpoints)"
python -m stemseg_jax.main --config "$CONFIG" --workdir "$OUT/run" --mode train "${EXTRA[@]}"
echo "== 3/4 evaluating on the synthetic val sequences"
python -m stemseg_jax.main --config "$CONFIG" --workdir "$OUT/run" --mode evaluate "${EXTRA[@]}"
echo "== 4/4 overlay GIFs of the val sequences"
for seq in "$STEMSEG_DEMO_DATA"/training/image_02/*; do
  name=$(basename "$seq")
  if [[ -f "$STEMSEG_DEMO_DATA/instances_txt/$name.txt" ]] && grep -qx "$name" <(printf '%s\n' 0002 0006 0007); then
    python -m stemseg_jax.main --config "$CONFIG" --workdir "$OUT/run" --mode infer \
      --config.inference.input="$seq" "${EXTRA[@]}" 2>/dev/null | tail -1
  fi
done
echo "done: metrics in $OUT/run/eval/kitti_mots/metrics.json, GIFs in $OUT/run/infer/*/overlay.gif"
