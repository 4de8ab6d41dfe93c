#!/usr/bin/env bash
# Claim 7 rerun where the theory applies (issue 23): learning-rate transfer across width with every
# layer normed. digits-mlp (2 hidden layers of width W, the task's 300 steps, batch 128),
# W = 32 ... 512 (16x), 7 rates a factor 2 apart per arm, 2 seeds, two single-threaded streams.
# Arms: modular and scion with modular_init (the init that matches each norm), modular with
# PyTorch's init, and today's Muon+AdamW and AdamW as in claim 7 (rerun here at every width).
# Runs land in docs/results/transfer-modular/width=W/digits-mlp/sweep/<optimizer>[/init=modular]/lr=<lr>/seed=<k>.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results/transfer-modular
C="--task digits-mlp --widths 32,64,128,256,512 --seeds ${SEEDS:-2} --threads 1 --out $R --quiet --no-plots"
MODULAR=0.000122,0.000244,0.000488,0.000977,0.00195,0.0039,0.0078   # 2^-13..2^-7 (best 1e-3 at width 128, 1 seed)
SCION=0.00195,0.0039,0.0078,0.0156,0.0312,0.0625,0.125             # 2^-9..2^-3 (Scion's MLP rate 2^-6 in the middle)
MUON=0.0005,0.001,0.002,0.004,0.008,0.016,0.032
ADAMW=0.001,0.002,0.004,0.008,0.016,0.032,0.064
(
  steepest-bench sweep $C --optimizers scion --init modular --lrs $SCION
  steepest-bench sweep $C --optimizers muon --lrs $MUON
) &
A=$!
(
  steepest-bench sweep $C --optimizers modular --init modular --lrs $MODULAR
  steepest-bench sweep $C --optimizers modular --lrs $MODULAR
  steepest-bench sweep $C --optimizers adamw --lrs $ADAMW
) &
B=$!
status=0
wait $A || status=1
wait $B || status=1
steepest-bench thin $R --every 10
steepest-bench plot $R --transfer --name claim7-modular --formats png
exit $status
