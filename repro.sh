#!/usr/bin/env bash
# The CPU-scale reproduction (README, "Reproduction"): every stage in order, each timed; about
# 45 minutes on 2 CPU cores, no network. Stage times go to out/repro_times.txt, the table to
# out/repro/eval.json (and stdout). Seeds: seed=1337 for every run and the evaluation (seed=7 for
# the teacher), prepare.py's synthetic_seed=0 for the training stories, eval.py's heldout_seed
# (20260507) for the evaluation stories.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out
: > out/repro_times.txt
stage() {
    local t0=$SECONDS
    echo "== $*"
    "$@"
    echo "$(( SECONDS - t0 ))s  $*" | tee -a out/repro_times.txt
}
stage python prepare.py config/repro.py
stage python train_gpt.py config/repro_teacher.py   # teacher + judge, exported to out/repro_teacher/gpt_hf
stage python train_gpt.py config/repro.py           # the baseline
stage python train_vae.py config/repro.py           # VAE with REPA on the teacher
stage python train_dit.py config/repro.py
stage python train_vae.py config/repro_norepa.py    # VAE without REPA
stage python train_dit.py config/repro_norepa.py
stage python train_vae.py config/repro_cola.py      # Cola: causal VAE + masked tokens
stage python train_dit.py config/repro_cola.py      # Cola: block-causal DiT
stage python eval.py config/repro.py                # GPT, TextLDM, TextLDM-noREPA: one table
echo "final validation loss, teacher vs baseline (the teacher must be the stronger):"
tail -n 1 out/repro_teacher/gpt_metrics.jsonl out/repro/gpt_metrics.jsonl
cat out/repro_times.txt
