#!/usr/bin/env bash
# Train the shipped models and run `aitimestepper evaluate` on each case the README reports:
# the learned dt beside fixed-dt leapfrog and the eta criterion at equal force evaluations.
# Writes bench/results/evaluate/<case>.{txt,json,png} and training times to train-times.txt.
# Then evaluate_unseen.py on unseen systems of each three-body model (unseen-*.json): 16 in 2-D, 8 in 3-D.
#   bash bench/evaluate_shipped.sh            (about 30 minutes on 2 CPU cores)
set -eu -o pipefail
cd "$(dirname "$0")/.."
out=bench/results/evaluate
mkdir -p "$out"
commit=$(git rev-parse --short HEAD)
echo "# commit $commit, $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p'), $(date -u +%FT%TZ)" > "$out/train-times.txt"
for config in kepler three_body_2d three_body_3d; do
  rm -rf "data/$config"
  started=$(date +%s)
  aitimestepper train --config "configs/$config.toml" > "$out/$config-train.json"
  echo "$config: $(( $(date +%s) - started )) s" >> "$out/train-times.txt"
done
evaluate() {  # case name, then the flags
  local name=$1
  shift
  aitimestepper evaluate "$@" --output-json "$out/$name.json" --plot "$out/$name.png" | tee "$out/$name.txt"
}
evaluate kepler-e0.9 --config configs/kepler.toml
evaluate kepler-e0.6 --config configs/kepler.toml --e-min 0.6 --e-max 0.6
evaluate kepler-e0.95 --config configs/kepler.toml --e-min 0.95 --e-max 0.95
evaluate figure-eight --config configs/three_body_2d.toml
evaluate three-body-2d-unseen --model-path data/three_body_2d --ic random --seed 101 --duration 20
evaluate three-body-3d-unseen --config configs/three_body_3d.toml
# 2-D: near-collisions make some systems' runs take millions of steps; cut them at 2e5 (counted as failed).
python bench/evaluate_unseen.py --model data/three_body_2d --seeds 101-116 --step-cap 200000 &
python bench/evaluate_unseen.py --model data/three_body_3d --seeds 101-108
wait
