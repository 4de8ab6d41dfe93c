#!/usr/bin/env bash
# The seed's own setting (Neon's NanoGPT claim): a pretrained GPT fine-tuned on a new corpus for
# 200 iterations, Neon vs Muon vs AdamW (and Dion). Here: the Shakespeare model of pretrain.sh
# fine-tuned on pydoc-gpt (Python's own documentation, pydoc_data.topics, byte-level), a 3- or
# 4-rate sweep per optimizer, then 3 seeds at the best rate (the seed changes the batches only;
# every run starts from the same weights). Completed runs are skipped. About 75 CPU-minutes on
# this project's 2-core VM (27 runs of ~2.7 min on one thread), ~40 minutes in two streams.
# A best rate at the edge of its sweep is not tuned: extend that sweep before reading results.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results
bash $R/pretrain.sh
INIT=$R/pretrain/shakespeare-gpt/adamw/lr=0.003/seed=0
F="--task pydoc-gpt --init-from $INIT --threads 1 --out $R/finetune --quiet --no-plots"

# Two streams of single-threaded runs share the 2 cores.
( steepest-bench sweep $F --optimizer adamw --lrs 3e-4,1e-3,3e-3,1e-2,3e-2
  steepest-bench sweep $F --optimizer neon-nuclear,neon-nuclear-ef --lrs 0.1,0.3,1,3,10 ) & A=$!
( steepest-bench sweep $F --optimizer muon,dion --lrs 0.00667,0.02,0.06
  steepest-bench sweep $F --optimizer neon-fstar --lrs 0.1,0.3,1,3,10 ) & B=$!
wait $A && wait $B
steepest-bench run $F --optimizers adamw,muon,neon-nuclear --seeds 3 --lr-from-sweep $R/finetune & A=$!
steepest-bench run $F --optimizers dion,neon-fstar,neon-nuclear-ef --seeds 3 --lr-from-sweep $R/finetune & B=$!
wait $A && wait $B

# Control, not committed: the same 200 steps from random weights (does the pretraining matter?).
# steepest-bench run --task pydoc-gpt --optimizers adamw,muon --seeds 1 --threads 1 --out runs/pydoc-scratch --quiet --no-plots
steepest-bench thin $R/finetune --every 10
steepest-bench plot $R/finetune --formats png
steepest-bench report $R/finetune
