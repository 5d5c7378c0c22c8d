#!/usr/bin/env bash
# The quick start: the whole pipeline on the embedded corpus, on a 2-core CPU with no network,
# in about 41 minutes (README). Each stage prints its progress; the times go to out/tiny/times.txt.
# Any argument (e.g. --out_dir=out/mine) is passed to every stage.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p out/tiny
: > out/tiny/times.txt
for stage in prepare train_gpt train_vae train_dit sample eval; do
    t0=$SECONDS
    echo "== python $stage.py config/tiny.py $*"
    python "$stage.py" config/tiny.py "$@"
    echo "$(( SECONDS - t0 ))s  $stage" | tee -a out/tiny/times.txt
done
cat out/tiny/times.txt
