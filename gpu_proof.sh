#!/usr/bin/env bash
# The GPU proof (README, "Paper scale"): config/owt.py through every stage on one GPU (torchrun,
# NCCL, bf16, compile, paper sizes, a few dozen iterations each), then sample.py and a short
# eval on the four sets, all offline: python rehearsal.py --gpu=True.
#   bash gpu_proof.sh fetch    # on a machine with PyPI: what the GPU machine lacks, into .whl/
#   bash gpu_proof.sh          # on the GPU machine, offline: install .whl/, run the proof
# Extra arguments go to rehearsal.py (e.g. --stages=vae,dit). The summary ends the output and
# is in out/gpu_proof/rehearsal.json.
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = fetch ]; then
    mkdir -p .whl   # prepare.py reads zstd; eval.py's ROUGE; GPT-2's BPE ranks (tiktoken's own download)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl zstandard==0.25.0 nltk==3.10.4
    python3 -m pip wheel -q --no-deps rouge-score==0.1.2 -w .whl
    cp "$(python3 -c 'import tokenization; print(tokenization._gpt2_ranks_path())')" .whl/gpt2.tiktoken
    ls -l .whl
    exit 0
fi
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/textldm_site .whl/*.whl
    export PYTHONPATH=/tmp/textldm_site${PYTHONPATH:+:$PYTHONPATH}
    export TEXTLDM_GPT2_RANKS=$PWD/.whl/gpt2.tiktoken
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
PYTHONUNBUFFERED=1 python3 rehearsal.py --gpu=True --work_dir=out/gpu_proof "$@"
