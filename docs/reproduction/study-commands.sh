#!/usr/bin/env bash
# The runs of docs/reproduction.md ("The study as its authors ran it" and "The
# ablation"), in the order they were made: one dataset (configs/reduced-study.yaml), the
# ablation's 16 jobs on fold 0 (configs/ablation.yaml; its first two entries are the same
# jobs as reduced-study's model1/fold-0 and model3/fold-0, linked rather than trained
# twice), then the other 10 jobs of reduced-study, then both reports.
# Usage: docs/reproduction/study-commands.sh WORK   (about 2 hours on 2 cores)
set -euo pipefail
W=${1:?usage: $0 WORK}
mkdir -p "$W"
lenshpc simulate --config configs/reduced-study.yaml --out "$W/dataset"
train() { lenshpc train --config "$1" --data "$W/dataset" --out "$2" "${@:3}"; }
train configs/reduced-study.yaml "$W/runs" --model model1 --fold 0
train configs/reduced-study.yaml "$W/runs" --model model3 --fold 0
mkdir -p "$W/ablation-runs/model1" "$W/ablation-runs/model3"
for m in model1 model3; do
    [ -e "$W/ablation-runs/$m/fold-0" ] || ln -s "../../runs/$m/fold-0" "$W/ablation-runs/$m/fold-0"
done
for J in $(seq 2 15); do train configs/ablation.yaml "$W/ablation-runs" --job "$J"; done
for J in $(seq 0 11); do train configs/reduced-study.yaml "$W/runs" --job "$J"; done
lenshpc evaluate --config configs/ablation.yaml --data "$W/dataset" --runs "$W/ablation-runs" \
    --out "$W/ablation-report"
lenshpc evaluate --config configs/reduced-study.yaml --data "$W/dataset" --runs "$W/runs" \
    --out "$W/report"
