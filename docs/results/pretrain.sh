#!/usr/bin/env bash
# The pretrained model of the fine-tuning claim: shakespeare-gpt (small: 4 layers, width 128,
# context 128), byte-level so that its vocabulary fits any corpus, 2000 AdamW steps (one thread) at the task's
# swept rate (GPT-2, the seed's pretrained model, was trained with Adam too). Its checkpoint
# (ckpt.pt, not committed) is regenerated here; config.json, metrics.jsonl and result.json are
# the committed record. About 25 CPU-minutes on this project's 2-core x86-64 VM.
#
#   bash docs/results/pretrain.sh            # (re)makes $OUT/shakespeare-gpt/adamw/lr=0.003/seed=0/ckpt.pt
#
# STEPS, OUT and THREADS override the defaults (a smoke test: STEPS=30 OUT=/tmp/pre bash ...).
# It prints the sha256 of the weights: fine-tuned runs record it in config.json under
# "init" (weights_sha256), so a regenerated checkpoint can be checked against them (the file's
# own sha256 differs from run to run: a checkpoint also stores wall-clock times).
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-2000}
OUT=${OUT:-docs/results/pretrain}
THREADS=${THREADS:-1}
RUN="$OUT/shakespeare-gpt/adamw/lr=0.003/seed=0"
REDO=()
if [ -f "$RUN/result.json" ] && [ ! -f "$RUN/ckpt.pt" ]; then
    REDO=(--overwrite)  # a committed record without its checkpoint (a fresh clone): train it again
elif [ -f "$RUN/config.json" ] && [ ! -f "$RUN/result.json" ]; then
    REDO=(--resume)     # an interrupted pretraining: continue it from its last checkpoint
fi
steepest-bench run --task shakespeare-gpt --tokenizer byte --model-size small --optimizers adamw --lr adamw=0.003 \
    --seeds 1 --steps "$STEPS" --threads "$THREADS" --out "$OUT" --quiet --no-plots ${REDO[@]+"${REDO[@]}"}
python - "$RUN" <<'PY'
import sys
from steepest.bench.finetune import read_checkpoint, weights_sha256
state, _, extra = read_checkpoint(sys.argv[1])
print(f"{sys.argv[1]}/ckpt.pt: step {extra.get('step')}, weights sha256 {weights_sha256(state)}")
PY
