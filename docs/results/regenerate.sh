#!/usr/bin/env bash
# Every figure and report.md in this folder, from the committed config.json/metrics.jsonl files.
set -euo pipefail
R="$(dirname "$0")"
steepest-bench plot "$R"
steepest-bench report "$R"
steepest-bench plot "$R/digits-mlp" --optimizers muon,neon-nuclear,neon-fstar,sgd,adamw --name claim1
steepest-bench plot "$R/digits-cnn" --optimizers muon,neon-nuclear,neon-fstar,neon-nuclear-drop,neon-fstar-drop --name claim2
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,neon-nuclear,neon-fstar,adamw --name claim3
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,newton-muon --name claim4
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,adamw --name claim5
python "$R/claims.py" "$R" > "$R/shakespeare-gpt/claims.md"
