"""Shared test helpers: small prepared data dirs, tiny REPA teachers, running a stage script.

Everything here is offline and small enough for a 2-core CPU.
"""
import ast
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import corpus  # noqa: E402
import export  # noqa: E402
import rehearsal  # noqa: E402  (its torchrun command line, restarts included)
import tokenization  # noqa: E402
# local stand-ins in real formats: a tokenizer that is not GPT-2's, the hub's eval sets, MiniLM
from standins import HUB_LAYOUTS, minilm_folder, train_tokenizer, write_hub_sets  # noqa: E402,F401

# Text with multi-byte characters: GPT-2 splits 'é' and '日本' into byte tokens, so random windows
# start and end inside UTF-8 characters (the case the character alignment must survive).
UNICODE_DOCS = ["Le café était fermé, naïve Zoë a dit « déjà vu » à 日本 et 東京.",
                "日本語のテキスト: 東京で café を飲んだ。 Ünïcödé ñ ü ø å 🙂 done."]


def write_data_dir(path, n_stories=200, seed=0, extra_docs=(), val_every=10, tokenizer='gpt2'):
    """A prepared data dir as prepare.py writes it: train.bin/val.bin (uint16 GPT-2 ids, EOT
    after every document) and meta.json. Every `val_every`-th document goes to val; the
    `extra_docs` are repeated into both splits."""
    os.makedirs(path, exist_ok=True)
    docs = list(corpus.generate_stories(n_stories, seed))
    splits = {'train': [], 'val': []}
    for i, doc in enumerate(docs):
        splits['val' if i % val_every == 0 else 'train'].append(doc)
    for doc in extra_docs:
        splits['train'] += [doc] * 3
        splits['val'] += [doc]
    counts = {}
    for split, texts in splits.items():
        ids = [t for text in texts for t in tokenization.encode(text) + [tokenization.EOT]]
        np.array(ids, dtype=np.uint16).tofile(os.path.join(path, f'{split}.bin'))
        counts[f'{split}_tokens'], counts[f'{split}_docs'] = len(ids), len(texts)
    meta = dict(tokenizer=tokenizer, vocab_size=tokenization.VOCAB_SIZE, dtype='uint16', eot=tokenization.EOT,
                source='synthetic', **counts)
    with open(os.path.join(path, 'meta.json'), 'w') as f:
        json.dump(meta, f, indent=2)
    return str(path)


def corpus_text(n_stories=200, seed=0, extra_docs=()):
    return list(corpus.generate_stories(n_stories, seed)) + list(extra_docs)


# -----------------------------------------------------------------------------
# Tiny teachers, saved as transformers folders

def gpt2_tokenizer_teacher(folder, n_embd=48, n_layer=3):
    """A random GPT2LMHeadModel of GPT-2's vocabulary, with GPT-2's tokenizer files beside it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenization.VOCAB_SIZE, n_positions=128, n_embd=n_embd, n_layer=n_layer,
                        n_head=4)
    GPT2LMHeadModel(config).save_pretrained(folder)
    export.save_gpt2_tokenizer(folder)
    return str(folder)


def other_tokenizer_teacher(folder, texts, n_embd=40, n_layer=3, arch='llama'):
    """A random causal LM ('llama', 'qwen3' or 'gpt2') whose tokenizer is a small BPE trained on `texts`."""
    import torch
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    if arch == 'qwen3':  # Qwen3-1.7B's layout: tied embeddings, grouped KV heads, q/k norms
        from transformers import Qwen3Config, Qwen3ForCausalLM
        config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=n_embd, intermediate_size=3 * n_embd,
                             num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                             max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id)
        model = Qwen3ForCausalLM(config)
    elif arch == 'llama':
        from transformers import LlamaConfig, LlamaForCausalLM
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=n_embd, intermediate_size=2 * n_embd,
                             num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=4,
                             max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
        model = LlamaForCausalLM(config)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=n_embd,
                                           n_layer=n_layer, n_head=4))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


# -----------------------------------------------------------------------------
# Running the stage scripts

def run_script(script, *args, check=True, env=None, timeout=300):
    """Run `python SCRIPT ARGS` from the repository root; returns the CompletedProcess."""
    return _run([sys.executable, script, *args], check, env, timeout)


def run_torchrun(script, *args, nproc=2, check=True, timeout=300):
    return _run(torchrun_command(script, *args, nproc=nproc), check, None, timeout)


def torchrun_command(script, *args, nproc=2):
    return rehearsal.torchrun(nproc) + [script, *args]


def run_many(commands, check=True, env=None, timeout=300, workers=2):
    """Run independent commands two at a time (the CPU has 2 cores and each run is mostly
    start-up). A command is a list: [script, *args], or a full argv starting with sys.executable.
    Returns their CompletedProcess objects in order."""
    from concurrent.futures import ThreadPoolExecutor
    argvs = [cmd if cmd[0] == sys.executable else [sys.executable, *cmd] for cmd in commands]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda argv: _run(argv, check, env, timeout), argvs))


def _run(cmd, check, env, timeout):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', **(env or {})}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_ckpt(path):
    import torch
    return torch.load(path, map_location='cpu', weights_only=False)


# -----------------------------------------------------------------------------
# eval.py: a tiny trained pipeline

def tiny_pipeline(root, iters=2, block_size=32):
    """prepare-like data + train_gpt.py (exported to out/gpt_hf, the REPA teacher) + train_vae.py
    + train_dit.py, each for `iters` iterations of tiny models: (data_dir, out_dir). Untrained,
    but every file eval.py and sample.py read is there, in the format the scripts write it."""
    data_dir = write_data_dir(os.path.join(root, 'data'), n_stories=1000)
    out_dir = os.path.join(root, 'out')
    # one config file for all three stages, as a user would write it
    config = os.path.join(root, 'tiny_pipeline.py')
    with open(config, 'w') as f:
        f.write(f"device = 'cpu'\ndtype = 'float32'\nsize = 'tiny'\nblock_size = {block_size}\n"
                f"batch_size = 4\neval_iters = 1\nmax_iters = {iters}\neval_interval = {iters}\n"
                f"warmup_iters = 1\ndata_dir = {data_dir!r}\nout_dir = {out_dir!r}\ncompact_vocab = True\n"
                f"vae_projector_dim = 32\nvae_stats_batches = 1\n")
    for script in ('train_gpt.py', 'train_vae.py', 'train_dit.py'):
        run_script(script, config)
    return data_dir, out_dir


def script_function(script, name, namespace):
    """A top-level function or class of a stage script, without running the script's top-level code."""
    path = os.path.join(ROOT, script)
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    node = next(n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    exec(compile(ast.Module(body=[node], type_ignores=[]), path, 'exec'), namespace)
    return namespace[name]
