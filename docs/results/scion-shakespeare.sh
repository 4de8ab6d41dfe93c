#!/usr/bin/env bash
# Issue 23 item 7 (Scion's other claim): scion and modular against Muon+AdamW on shakespeare-gpt,
# each at its best rate, 3 seeds; the same task and protocol as claims 3-5 and 8 (500 steps,
# --threads 1, two single-threaded streams).
# First try, the registered radii (Scion's MLP setting: hidden 1, embedding 1, head 2^10), PyTorch's
# init for modular and modular_init for scion, lr 2^-12 and 2^-10 (seed 0): far from Muon (2.18-2.49).
#   steepest-bench sweep $S --optimizer scion --lrs 0.000244,0.000977 --init modular
#   steepest-bench sweep $S --optimizer modular --lrs 0.000244,0.000977
# Then Scion's nanoGPT radii (hidden 50, embedding and head 3000) around its published lr 0.00036.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results
S="--task shakespeare-gpt --threads 1 --out $R --quiet --no-plots"
SC="scion(radius=50,embed_radius=3000,head_radius=3000)"
MO="modular(radius=50,embed_radius=3000,head_radius=3000)"
( steepest-bench sweep $S --optimizer "$SC" --lrs 0.00018,0.00036,0.00072
  steepest-bench run $S --optimizers "$SC" --seeds 3 --lr-from-sweep $R ) &
A=$!
( steepest-bench sweep $S --optimizer "$MO" --lrs 0.00018,0.00036,0.00072
  steepest-bench run $S --optimizers "$MO" --seeds 3 --lr-from-sweep $R ) &
B=$!
status=0
wait $A || status=1
wait $B || status=1
exit $status
