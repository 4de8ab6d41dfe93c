#!/usr/bin/env bash
# Every figure (PNG) and report.md in this folder, from the committed config.json/metrics.jsonl files.
set -euo pipefail
R="$(dirname "$0")"
steepest-bench plot "$R" --formats png
steepest-bench report "$R"
steepest-bench plot "$R/digits-mlp" --optimizers muon,neon-nuclear,neon-fstar,sgd,adamw --name claim1 --formats png
steepest-bench plot "$R/digits-cnn" --optimizers muon,neon-nuclear,neon-fstar,neon-nuclear-drop,neon-fstar-drop --name claim2 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,neon-nuclear,neon-fstar,adamw --name claim3 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,newton-muon --name claim4 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,adamw --name claim5 --formats png
python "$R/claims.py" "$R" > "$R/shakespeare-gpt/claims.md"
