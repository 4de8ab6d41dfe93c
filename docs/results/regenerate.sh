#!/usr/bin/env bash
# Every figure (PNG) and report.md in this folder, from the committed config.json/metrics.jsonl files.
set -euo pipefail
R="$(dirname "$0")"
# one task folder at a time: transfer/ and finetune/ hold runs of the same tasks in other settings
for T in digits-mlp digits-cnn shakespeare-gpt finetune; do
    steepest-bench plot "$R/$T" --formats png
    steepest-bench report "$R/$T"
done
steepest-bench plot "$R/digits-mlp" --optimizers muon,neon-nuclear,neon-fstar,sgd,adamw --name claim1 --formats png
steepest-bench plot "$R/digits-cnn" --optimizers muon,neon-nuclear,neon-fstar,neon-nuclear-drop,neon-fstar-drop --name claim2 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,neon-nuclear,neon-fstar,neon-nuclear-ef,neon-fstar-ef,adamw,dion --name claim3 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,newton-muon --name claim4 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers muon,adamw --name claim5 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers "muon,normuon,muon(weight_decay=0.03,cautious_weight_decay=False),muon(weight_decay=0.03,cautious_weight_decay=True),normuon(weight_decay=0.03,cautious_weight_decay=False),normuon(weight_decay=0.3,cautious_weight_decay=True)" --name claim8 --formats png
steepest-bench plot "$R/shakespeare-gpt" --optimizers "muon,adamw,scion(radius=50,embed_radius=3000,head_radius=3000),modular(radius=50,embed_radius=3000,head_radius=3000)" --name scion --formats png
python "$R/claims.py" "$R" > "$R/shakespeare-gpt/claims.md"
python "$R/defaults.py" "$R" > "$R/defaults.md"
steepest-bench plot "$R/transfer" --transfer --name claim7 --formats png
steepest-bench plot "$R/transfer-modular" --transfer --name claim7-modular --formats png
steepest-bench plot "$R/transfer-modular-pytorch-init" --transfer --name claim7-modular-pytorch-init --formats png
steepest-bench plot "$R/transfer-modular-gpt" --transfer --name claim7-modular-gpt --formats png
steepest-bench plot "$R/digits-mlp" --optimizers muon,dion,neon-nuclear,neon-nuclear-ef,neon-fstar,neon-fstar-ef --name lowrank --formats png
