#!/usr/bin/env bash
# Claim 7 rerun where the theory applies (issue 23), on shakespeare-gpt: learning-rate transfer
# across width with every layer normed. The task's GPT (char-level, block 128, batch 32) at depth 2
# (fixed; the task's 4 layers did not fit two cores' few hours at width 256), n_embd = W with
# W = 32 ... 256 (8x, 4 heads), 200 steps (the task's 20 warmup steps, the last 40% cooled down),
# 5 rates a factor 2 apart per arm, 2 seeds, two single-threaded streams.
# Arms: scion and modular at Scion's nanoGPT radii (hidden 50, embedding and head 3000) with the
# model's own init (the setting that trained best here, docs/results/scion-shakespeare.sh), and
# today's Muon+AdamW (AdamW at --adamw-lr 0.003 on embeddings, head and 1-D parameters, at every
# width) and AdamW.
# Runs land in docs/results/transfer-modular-gpt/width=W/shakespeare-gpt/sweep/<optimizer>/lr=<lr>/seed=<k>.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results/transfer-modular-gpt
C="--task shakespeare-gpt --n-layer 2 --steps 200 --widths 32,64,128,256 --seeds ${SEEDS:-2} --threads 1 --out $R --quiet --no-plots"
SC="scion(radius=50,embed_radius=3000,head_radius=3000)"
MO="modular(radius=50,embed_radius=3000,head_radius=3000)"
NORMED=0.00018,0.00036,0.00072,0.00144,0.00288   # around the best rate of both at width 128 (500 steps, 4 layers)
MUON=0.005,0.01,0.02,0.04,0.08
ADAMW=0.00075,0.0015,0.003,0.006,0.012
(
  steepest-bench sweep $C --optimizers "$SC" --lrs $NORMED
  steepest-bench sweep $C --optimizers muon --lrs $MUON
) &
A=$!
(
  steepest-bench sweep $C --optimizers "$MO" --lrs $NORMED
  steepest-bench sweep $C --optimizers adamw --lrs $ADAMW
) &
B=$!
status=0
wait $A || status=1
wait $B || status=1
steepest-bench thin $R --every 10
steepest-bench plot $R --transfer --name claim7-modular-gpt --formats png
exit $status
