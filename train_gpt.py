"""
The autoregressive baseline: a GPT-2 style model trained on the same memmaps as TextLDM.
Its checkpoint exports as a transformers GPT-2 folder, so it can be the REPA teacher of the
VAE (config/tiny.py does this) or the judge of generative perplexity.

    python train_gpt.py config/tiny.py
    torchrun --standalone --nproc_per_node=8 train_gpt.py config/owt.py
"""
import dataclasses
import os
import shutil

import torch
import torch.nn as nn

import configurator
import export
import tokenization
import training
from model import GPT, make_config

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `gpt_key` in a config file is ours alone)
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False
seed = 1337
size = 'tiny'            # a preset of model.GPT_SIZES
block_size = 256         # context length in tokens
dropout = 0.0
activation_checkpointing = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
export_dir = '{out_dir}/gpt_hf'  # the transformers GPT-2 folder written at the end ('' = none)
compact_vocab = False    # renumber to the ids that occur in the data (small corpora, CPU)
# training: what training.train() reads
init_from = 'scratch'      # or 'resume': continue from out_dir's checkpoint as if never stopped
max_iters = 1000
eval_interval = 100        # evaluate and checkpoint every this many iterations
keep_checkpoints = False   # also keep each evaluation's weights as out_dir/STAGE_ITER.pt (quality curves: curves.py)
eval_iters = 20            # validation batches per evaluation (fixed, drawn once)
log_interval = 10
batch_size = 16            # windows per micro-step per rank
gradient_accumulation_steps = 1  # micro-steps per optimizer step, over all ranks together
learning_rate = 1e-4       # AdamW; linear warm-up, then cosine decay to min_lr at lr_decay_iters
min_lr = 1e-5
warmup_iters = 100
lr_decay_iters = 1000
weight_decay = 0.1         # on matrices only
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0            # global gradient norm; 0 = off
wandb_log = False
wandb_project = 'textldm'
wandb_run_name = 'run'
# -----------------------------------------------------------------------------
config = configurator.configure(globals(), 'gpt')
training.check_precision(device, dtype)
training.check_batch_split(config)


class NextTokenObjective(nn.Module):
    """Cross-entropy of the next token, the usual language-model loss."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, x, y):
        _, loss = self.gpt(x, y)
        return loss, {}


def batch_fn(split, rng):
    window = torch.from_numpy(data.windows(split, batch_size, block_size + 1, rng))
    return window[:, :-1], window[:, 1:]


dist_ = training.Dist(device)
training.seed_everything(seed + dist_.rank)
data = tokenization.TokenData(data_dir, compact_vocab)
gpt_config = make_config('gpt', size, vocab_size=data.vocab.size, block_size=block_size, dropout=dropout)
gpt = GPT(gpt_config)
gpt.checkpointing = activation_checkpointing
training.print0(dist_, f"GPT '{size}': {gpt.num_params() / 1e6:.2f}M parameters")
objective = training.train(config, 'gpt', NextTokenObjective(gpt), batch_fn, dist_,
                         {**dataclasses.asdict(gpt_config), **data.vocab.state()},
                         flops_per_token=gpt.flops_per_token(block_size))
if dist_.master and export_dir:
    # written beside, then swapped in: a kill never leaves a half-written teacher folder
    export.export_gpt(objective.gpt, data.vocab, export_dir + '.tmp')
    shutil.rmtree(export_dir, ignore_errors=True)
    os.replace(export_dir + '.tmp', export_dir)
    print(f"exported a transformers GPT-2 folder to {export_dir}")
dist_.close()
