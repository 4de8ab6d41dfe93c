#!/usr/bin/env bash
# Issue 23 item 5: the sweeps that docs/results/defaults.py scores the modular optimizers' rates
# and radii on. One seed per rate (as the other defaults), each task's own steps and PyTorch's init
# (what build_optimizer(model, "modular") gets), Scion's two published radii settings: the MLP one
# (hidden and embedding 1, head 2^10) and the nanoGPT one (hidden 50, embedding and head 3000).
# Runs land in docs/results/<task>/sweep/<optimizer>/lr=<lr>/seed=0.
#
# These ran (2026-12-04) before the nanoGPT radii became the registered defaults, when the plain
# names `modular` and `scion` had the MLP radii: their runs are in the plain folders. Rerun today,
# the MLP setting is the variant $MLP below (its own folder, which defaults.py reads first).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results
MLP="radius=1,embed_radius=1,head_radius=1024"
GPT="radius=50,embed_radius=3000,head_radius=3000"
for task in digits-mlp digits-cnn; do
  C="--task $task --seeds 1 --threads 1 --out $R --quiet --no-plots"
  steepest-bench sweep $C --optimizers "modular($MLP)" --lrs 0.000122,0.000244,0.000488,0.000977,0.00195,0.0039,0.0078
  steepest-bench sweep $C --optimizers "scion($MLP)" --lrs 0.00195,0.0039,0.0078,0.0156,0.0312,0.0625,0.125
  steepest-bench sweep $C --optimizers "modular($GPT)" --lrs 0.0000038,0.0000076,0.0000153,0.0000305,0.000061,0.000122,0.000244
  steepest-bench sweep $C --optimizers "scion($GPT)" --lrs 0.000061,0.000122,0.000244,0.000488,0.000977,0.00195,0.0039
done
# the nanoGPT radii's bests at a grid's edge, one rate further each
steepest-bench sweep --task digits-cnn --seeds 1 --threads 1 --out $R --quiet --no-plots --optimizers "modular($GPT)" --lrs 0.000488,0.000977
steepest-bench sweep --task digits-mlp --seeds 1 --threads 1 --out $R --quiet --no-plots --optimizers "scion($GPT)" --lrs 0.0000153,0.0000305
# shakespeare-gpt (500 steps, 1 seed): the MLP radii (the first tries at 0.000244 and 0.000977 for
# modular are from docs/results/scion-shakespeare.sh); the nanoGPT radii were swept there already
C="--task shakespeare-gpt --seeds 1 --threads 1 --out $R --quiet --no-plots"
steepest-bench sweep $C --optimizers "modular($MLP)" --lrs 0.0039
steepest-bench sweep $C --optimizers "scion($MLP)" --lrs 0.000977,0.0039,0.0156
# finetune/pydoc-gpt (the seed's fine-tuning setting, docs/results/finetune.sh): the nanoGPT radii
# only (the registered setting; the radii were chosen on the three tasks above), 5 rates around 2^-12.
# The checkpoint was regenerated with THREADS=2 (2026-12-04): its weights differ from the committed
# record's (sha256 bf4059… against 4fa4c…), so these runs start from another pretrained model than
# the other optimizers' fine-tuning runs (each run's config.json records which).
bash $R/pretrain.sh
INIT=$R/pretrain/shakespeare-gpt/adamw/lr=0.003/seed=0
F="--task pydoc-gpt --init-from $INIT --threads 1 --out $R/finetune --quiet --no-plots"
RATES=0.000061,0.000122,0.000244,0.000488,0.000977
steepest-bench sweep $F --optimizers "modular($GPT)" --lrs $RATES &
steepest-bench sweep $F --optimizers "scion($GPT)" --lrs $RATES &
wait
# both best at the grid's bottom: two rates further
steepest-bench sweep $F --optimizers "modular($GPT)" --lrs 0.0000153,0.0000305 &
steepest-bench sweep $F --optimizers "scion($GPT)" --lrs 0.0000153,0.0000305 &
wait
