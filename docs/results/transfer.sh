#!/usr/bin/env bash
# Claim 7: does the learning rate transfer across width? digits-mlp (2 hidden layers of width W,
# the task's 300 steps, batch 128), W = 32, 64, 128, 256 (8x), 7 rates a factor 2 apart per
# optimizer (centred near its width-128 optimum in the committed digits sweeps), 2 seeds (SEEDS=3 for three).
# Runs land in docs/results/transfer/width=W/digits-mlp/sweep/<optimizer>/lr=<lr>/seed=<k>; completed
# runs are skipped, so an interrupted script picks up where it stopped (add --resume to continue cut runs).
# The matrix optimizers' AdamW (head, biases) keeps the task's adamw_lr at every width; `adamw` sweeps
# every parameter. Estimated 2 CPU cores: ~35 core-minutes measured under load, two single-threaded
# streams below, ~20 min wall. An optimum at a grid edge is reported as a bound (<=, >=): extend
# that optimizer's --lrs by a factor 2 on that side and rerun (completed runs are reused).
#
# GPU version (Shakespeare GPT, 6 layers, context 256, 8 heads, widths 128 -> 2048, 2000 steps):
#   G="--task shakespeare-gpt --device cuda --model-size medium --n-head 8 --widths 128,256,512,1024,2048 --steps 2000 --seeds 3 --out runs/transfer-gpt --quiet --no-plots"
#   steepest-bench sweep $G --optimizers muon,muon-rms-to-rms,dion --lrs 0.0025,0.005,0.01,0.02,0.04,0.08,0.16
#   steepest-bench sweep $G --optimizers muon-match-adamw --lrs 0.000125,0.00025,0.0005,0.001,0.002,0.004,0.008
#   steepest-bench sweep $G --optimizers adamw --lrs 0.00025,0.0005,0.001,0.002,0.004,0.008,0.016
#   steepest-bench sweep $G --optimizers neon-nuclear,neon-fstar --lrs 0.125,0.25,0.5,1,2,4,8
#   steepest-bench plot runs/transfer-gpt --transfer --name claim7-gpt --formats png
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results/transfer
C="--task digits-mlp --widths 32,64,128,256 --seeds ${SEEDS:-2} --threads 1 --out $R --quiet --no-plots"

MUON=0.0005,0.001,0.002,0.004,0.008,0.016,0.032     # muon (scale original) and rms_to_rms: best 0.003 at width 128
MATCH=0.00025,0.0005,0.001,0.002,0.004,0.008,0.016  # match_adamw: 0.2*sqrt(max(m,n)) is 1.6-2.3x original at width 128
ADAMW=0.001,0.002,0.004,0.008,0.016,0.032,0.064     # best 0.01 at width 128
DION=0.001,0.002,0.004,0.008,0.016,0.032,0.064      # rank-1/4 orthonormal update, Muon's scale: a little above Muon's rates
NUCLEAR=0.5,1,2,4,8,16,32                           # best 9 at width 128 (sigma kept)
FSTAR=1,2,4,8,16,32,64                              # flat from 1 to 30 at width 128, diverged at 100

(
  steepest-bench sweep $C --optimizers muon,muon-rms-to-rms --lrs $MUON
  # steepest-bench sweep $C --optimizers neon-fstar --lrs $FSTAR   # not in the committed results (time)
) &
A=$!
(
  steepest-bench sweep $C --optimizers muon-match-adamw --lrs $MATCH
  steepest-bench sweep $C --optimizers adamw --lrs $ADAMW
  steepest-bench sweep $C --optimizers neon-nuclear --lrs $NUCLEAR
  steepest-bench sweep $C --optimizers dion --lrs $DION
) &
B=$!
status=0
wait $A || status=1
wait $B || status=1

# Thin the metrics (evaluations kept) before committing, then draw the figure and the table:
# claim7-digits-mlp-transfer.{png,md,json} in $R.
steepest-bench thin $R --every 10
steepest-bench plot $R --transfer --name claim7 --formats png
exit $status
