#!/usr/bin/env bash
# Issue 23 item 7 (Scion's other claim): scion and modular against Muon+AdamW on shakespeare-gpt,
# each at its best rate, 3 seeds; the same task and protocol as claims 3-5 and 8 (500 steps,
# --threads 1, two single-threaded streams). Rates a factor 4 apart (seed 0), then 3 seeds at the best.
# The registered radii (Scion's MLP setting: hidden 1, embedding 1, head 2^10) are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=docs/results
S="--task shakespeare-gpt --threads 1 --out $R --quiet --no-plots"
( steepest-bench sweep $S --optimizer scion --lrs 0.000244,0.000977,0.0039 --init modular
  steepest-bench run $S --optimizers scion --seeds 3 --lr-from-sweep $R --init modular ) &
A=$!
( steepest-bench sweep $S --optimizer modular --lrs 0.000244,0.000977,0.0039
  steepest-bench run $S --optimizers modular --seeds 3 --lr-from-sweep $R ) &
B=$!
status=0
wait $A || status=1
wait $B || status=1
exit $status
