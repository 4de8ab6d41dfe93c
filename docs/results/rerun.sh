#!/usr/bin/env bash
# The commands that produced the results in this folder (2 CPU cores: ~30 min for digits,
# ~3.5 h for Shakespeare with two single-threaded runs at a time). Completed runs are skipped,
# so an interrupted rerun picks up where it stopped (add --resume to continue a cut run).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results
Q="--out $R --quiet --no-plots"
ALL=muon,neon-nuclear,neon-fstar,neon-nuclear-drop,neon-fstar-drop,newton-muon,shampoo,sign,sgd,adamw

# digits: each optimizer's default 5-rate sweep (a factor ~3 apart), extended where the best sat on the edge
steepest-bench sweep --task digits-mlp --optimizer $ALL,torch-muon $Q
steepest-bench sweep --task digits-mlp --optimizer neon-fstar --lrs 100,300 $Q
steepest-bench run   --task digits-mlp --optimizers $ALL,torch-muon --seeds 3 --lr-from-sweep $R $Q
steepest-bench sweep --task digits-cnn --optimizer $ALL $Q
steepest-bench sweep --task digits-cnn --optimizer muon,newton-muon --lrs 1,3 $Q
steepest-bench sweep --task digits-cnn --optimizer shampoo --lrs 0.3,1 $Q
steepest-bench run   --task digits-cnn --optimizers $ALL --seeds 3 --lr-from-sweep $R $Q

# shakespeare-gpt (small: 4 layers, width 128, context 128): 3-rate sweeps for the claims' optimizers,
# then 3 seeds at the best rate; Neon's -drop variants swept once; sign, SGD, Shampoo once at the task's default rate.
# Two streams of single-threaded runs share the 2 cores.
S="--task shakespeare-gpt --threads 1 $Q"
steepest-bench sweep $S --optimizer muon,newton-muon --lrs 0.00667,0.02,0.06
steepest-bench sweep $S --optimizer neon-nuclear,neon-fstar --lrs 0.3,1,3,10    # 0.3 added: 1 was the edge
steepest-bench sweep $S --optimizer adamw --lrs 1e-3,3e-3,1e-2
steepest-bench run   $S --optimizers muon,newton-muon,neon-nuclear,neon-fstar,adamw --seeds 3 --lr-from-sweep $R
steepest-bench sweep $S --optimizer neon-nuclear-drop,neon-fstar-drop --lrs 0.02,0.06,0.2
steepest-bench run   $S --optimizers sign,sgd,shampoo --seeds 1     # the task's default rates, not swept (time)

# 2026-11-30 (issue 15): F* rerun with its block following the rank (issue 13), Dion and Neon error
# feedback added; stale runs of the capped F* at other rates were deleted by hand.
for T in digits-mlp digits-cnn; do
  D="--task $T --threads 1 $Q"
  steepest-bench sweep $D --optimizer neon-fstar,neon-fstar-drop --overwrite
  steepest-bench sweep $D --optimizer dion,neon-nuclear-ef,neon-fstar-ef
  steepest-bench run   $D --optimizers neon-fstar,neon-fstar-drop,dion,neon-nuclear-ef,neon-fstar-ef --seeds 3 --lr-from-sweep $R --overwrite
done
steepest-bench sweep --task digits-mlp --threads 1 $Q --optimizer neon-fstar --lrs 100,300 --overwrite
steepest-bench sweep --task digits-mlp --threads 1 $Q --optimizer neon-nuclear-ef,neon-fstar-ef --lrs 15,50
steepest-bench run   --task digits-mlp --threads 1 $Q --optimizers neon-nuclear-ef,neon-fstar-ef --seeds 3 --lr-from-sweep $R --overwrite
steepest-bench sweep $S --optimizer dion --lrs 0.00667,0.02,0.06
steepest-bench run   $S --optimizers dion --seeds 3 --lr-from-sweep $R

# 2026-11-30, second session (issue 15): Shakespeare F* (block following the rank) and the -ef variants,
# and the Neon sweeps extended to bracket their best rates (the capped F* runs and its lr=10 and
# F*-drop lr=0.2 sweep runs were deleted first: git rm).
steepest-bench sweep $S --optimizer neon-fstar --lrs 0.1,0.3,1,3 --overwrite
steepest-bench sweep $S --optimizer neon-fstar-drop --lrs 0.00667,0.02,0.06 --overwrite
steepest-bench sweep $S --optimizer neon-nuclear --lrs 0.1
steepest-bench sweep $S --optimizer neon-nuclear-drop --lrs 0.00667
steepest-bench sweep $S --optimizer neon-nuclear-ef --lrs 0.1,0.3,1,3,10
steepest-bench sweep $S --optimizer neon-fstar-ef --lrs 0.3,1,3,10
steepest-bench run   $S --optimizers neon-fstar,neon-nuclear-ef,neon-fstar-ef --seeds 3 --lr-from-sweep $R

# Claim 3's control (not committed here, so that it stays out of the Neon rows): hidden matrices
# effectively frozen, only AdamW's embeddings, head and norms train. Final validation loss 2.48.
steepest-bench run --task shakespeare-gpt --optimizers neon-nuclear --lr neon-nuclear=1e-6 --seeds 1 --threads 1 --out runs/frozen-control --quiet --no-plots

# 2026-12-04 (issue 22 §4): NorMuon against Muon on Shakespeare (the cautious-weight-decay arms are still to run).
steepest-bench sweep $S --optimizer normuon --lrs 0.00667,0.02,0.06
steepest-bench run   $S --optimizers normuon --seeds 3 --lr-from-sweep $R

# 2026-12-04, later (issue 22 §4): weight decay with and without cautious decay, Muon and NorMuon at
# their best rate 0.02: seed 0 over wd 0.03/0.1/0.3 (wd 0 is the runs above), 1.0 added for cautious
# NorMuon (0.3 was the edge), then 3 seeds at each arm's best wd. Variants are optimizer names with options.
for O in muon normuon; do
  for WD in 0.03 0.1 0.3; do
    for C in False True; do steepest-bench run $S --optimizers "$O(weight_decay=$WD,cautious_weight_decay=$C)" --seeds 1; done
  done
done
steepest-bench run $S --optimizers "normuon(weight_decay=1.0,cautious_weight_decay=True)" --seeds 1
steepest-bench run $S --optimizers "muon(weight_decay=0.03,cautious_weight_decay=False),muon(weight_decay=0.03,cautious_weight_decay=True)" --seeds 3
steepest-bench run $S --optimizers "normuon(weight_decay=0.03,cautious_weight_decay=False),normuon(weight_decay=0.3,cautious_weight_decay=True)" --seeds 3

# Thin the metrics to every 10th step (evaluations kept) before committing: a few MB in all.
steepest-bench thin $R --every 10
bash $R/regenerate.sh
