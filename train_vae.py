"""
Stage 1: the text VAE. Tokens -> one latent per token -> tokens again, with
    loss = CE(reconstruction) + beta * KL + lambda * REPA,
where REPA aligns an intermediate encoder block (through a small projector) with the hidden
states of a frozen pretrained language model, the teacher. At the end, the per-channel mean
and std of the latents are measured on data and stored in vae.pt for the DiT to normalise with.

Cola's masked-token objective (mask_prob > 0): that share of the valid input tokens is replaced
by a learned mask embedding before the encoder; the decoder still reconstructs the original
tokens, and the CE of the loss covers every valid token. Logged apart: recon_ce / recon_acc on
the tokens the encoder saw, masked_ce on the masked ones (validation batches are masked too).

    python train_vae.py config/tiny.py
    torchrun --standalone --nproc_per_node=8 train_vae.py config/owt.py
"""
import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import configurator
import tokenization
import training
from model import Projector, TextVAE, kl_divergence, make_config, masked_mean, repa_loss
from teacher import Teacher, TeacherCache

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `vae_key` in a config file is ours alone)
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False
seed = 1337
size = 'tiny'              # a preset of model.VAE_SIZES
block_size = 256           # window length in tokens
latent_dim = 64            # channels per token latent
causal = False             # causal encoder/decoder (for the block-causal prior)
mask_prob = 0.0            # Cola's masked-token objective: share of input tokens masked (0 = off)
dropout = 0.0
kl_weight = 1e-3           # beta, reached by a linear warm-up over kl_warmup_iters
kl_warmup_iters = 1000
truncate_prob = 0.5        # share of micro-batches cut to one random length, so any input length works
min_length = 4
repa_teacher = '{out_dir}/gpt_hf'  # transformers causal LM, hub name or folder; None = no REPA
repa_teacher_layer = -3    # index into the teacher's hidden_states: third from the last
repa_layer = 0             # encoder block whose output is aligned (1-based; 0 = the preset's)
repa_weight = 1.0          # lambda
repa_cache_windows = 0     # > 0: run the teacher once on this many training windows (and eval_iters x batch_size
                           # validation ones), keep its states in repa_cache_dir, and train on those windows only
repa_cache_dir = '{out_dir}/repa_cache'  # shared by runs of any seed with the same teacher, data and window
projector_dim = 2048       # hidden width of the REPA projector MLP
stats_batches = 20         # batches of training windows for the latent mean/std
activation_checkpointing = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
compact_vocab = False      # renumber to the ids that occur in the data (small corpora, CPU)
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
config = configurator.configure(globals(), 'vae')
training.check_precision(device, dtype)
training.check_batch_split(config)
if not 0.0 <= mask_prob < 1.0:
    raise configurator.ConfigError(f"mask_prob={mask_prob} must be in [0, 1)")
if repa_cache_windows < 0 or (repa_cache_windows and not repa_teacher):
    raise configurator.ConfigError(f"repa_cache_windows={repa_cache_windows}: a number of windows to run the "
                                   f"REPA teacher on once (0 = on every batch), with a repa_teacher")


# -----------------------------------------------------------------------------
# The objective

class VAEObjective(nn.Module):
    """CE + beta * KL + lambda * REPA; each term is also returned on its own, for logging. The
    teacher's features arrive with the batch (teacher_features): the teacher is not part of what
    torch.compile and DDP wrap."""

    def __init__(self, vae, projector, repa_weight):
        super().__init__()
        self.vae, self.projector, self.repa_weight = vae, projector, repa_weight
        # beta as a tensor: changing it during the warm-up must not trigger a recompile
        self.register_buffer('kl_weight', torch.zeros(()), persistent=False)

    def forward(self, idx, *rest):
        # batch_fn puts the (B, T) bool mask of the masked-token objective after idx, if it is on;
        # then come the teacher's features (B, T, hidden) and where they exist (B, T)
        masked, teacher = (rest[0], rest[1:]) if self.vae.config.masked_tokens else (None, rest)
        logits, mean, logvar, hidden = self.vae(idx, sample=self.training, masked=masked)
        ce = F.cross_entropy(logits.float().flatten(0, 1), idx.flatten(), reduction='none')
        correct = (logits.argmax(-1) == idx).flatten().float()
        seen = None if masked is None else ~masked.flatten()   # the tokens the encoder saw
        recon_ce, recon_acc = masked_mean(ce, seen), masked_mean(correct, seen)
        kl = kl_divergence(mean, logvar)
        loss = ce.mean() + self.kl_weight * kl
        metrics = {'recon_ce': recon_ce.detach(), 'recon_acc': recon_acc, 'kl': kl.detach()}
        if masked is not None:
            metrics['masked_ce'] = masked_mean(ce, masked.flatten()).detach()
        if self.projector is not None:
            repa = repa_loss(self.projector(hidden), *teacher)
            loss = loss + self.repa_weight * repa
            metrics['repa'] = repa.detach()
        return loss, metrics


def batch_fn(split, rng):
    """Random windows, with probability truncate_prob all cut to one random length (the batch is
    that long: no padding, so attention needs no mask), then with mask_prob > 0 the tokens to
    mask; with a teacher, its inputs (tokenized and aligned here, on the CPU), or with a cache,
    windows of its pool and the teacher's states on them."""
    length = block_size
    if rng.random() < truncate_prob:
        length = int(rng.integers(min_length, block_size + 1))
    if cache:
        idx, *states = cache.draw(split, batch_size, length, rng)
    else:
        idx = torch.from_numpy(data.windows(split, batch_size, length, rng))
        states = teacher.inputs(idx, torch.ones_like(idx, dtype=torch.bool), data.vocab) if teacher else ()
    masked = (torch.from_numpy(rng.random(idx.shape) < mask_prob),) if mask_prob else ()
    return (idx, *masked, *states)


def teacher_features(batch):
    """On the device: the teacher's inputs at the end of a batch -> its features on our tokens."""
    *ours, ids, mask, pairs = batch
    return (*ours, *teacher.features(ids, mask, pairs, ours[0].shape[1]))


@torch.no_grad()
def latent_statistics(vae, rng):
    """Per-channel mean and std of the posterior means over full training windows."""
    vae.eval()
    latents = []
    for _ in range(stats_batches):
        idx = torch.from_numpy(data.windows('train', batch_size, block_size, rng)).to(dist_.device)
        with training.autocast(dist_.device_type, dtype):
            mean, _, _ = vae.encode(idx)
        latents.append(mean.float().flatten(0, 1))
    latents = torch.cat(latents)
    return latents.mean(0).cpu(), latents.std(0).cpu()


# -----------------------------------------------------------------------------
dist_ = training.Dist(device)
training.seed_everything(seed + dist_.rank)
data = tokenization.TokenData(data_dir, compact_vocab)
overrides = dict(vocab_size=data.vocab.size, block_size=block_size, latent_dim=latent_dim, causal=causal,
                 dropout=dropout, masked_tokens=mask_prob > 0)
if repa_layer:
    overrides['repa_layer'] = repa_layer
vae_config = make_config('vae', size, **overrides)
vae = TextVAE(vae_config)
vae.checkpointing = activation_checkpointing
teacher = Teacher(repa_teacher, repa_teacher_layer, dist_.device, block_size, data.tokenizer) if repa_teacher else None
cache = TeacherCache(teacher, data, repa_cache_dir, {'train': repa_cache_windows, 'val': eval_iters * batch_size},
                     block_size, batch_size, dist_) if teacher and repa_cache_windows else None
projector = Projector(vae_config.n_embd, projector_dim, teacher.hidden_size) if teacher else None
model_args = {**dataclasses.asdict(vae_config), **data.vocab.state(), 'projector_dim': projector_dim,
              'teacher_hidden': teacher.hidden_size if teacher else None}
if init_from == 'resume':
    saved = training.load_checkpoint(f'{out_dir}/vae.pt', 'vae checkpoint to resume')['model_args']
    if saved.get('teacher_hidden') != model_args['teacher_hidden']:
        raise SystemExit(f"REPA teacher width {model_args['teacher_hidden']} differs from the "
                         f"checkpoint's projector output {saved.get('teacher_hidden')}: same teacher to resume")
training.print0(dist_, f"VAE '{size}': {vae.num_params() / 1e6:.2f}M parameters, latent {latent_dim}/token")


def warm_up_kl(it):
    objective.kl_weight.fill_(kl_weight * min(1.0, it / max(1, kl_warmup_iters)))


objective = VAEObjective(vae, projector, repa_weight)
training.train(config, 'vae', objective, batch_fn, dist_, model_args, flops_per_token=vae.flops_per_token(block_size),
               before_step=warm_up_kl, on_device=teacher_features if teacher and not cache else None)
if dist_.master:
    latent_mean, latent_std = latent_statistics(vae, np.random.default_rng([seed, 2]))
    ckpt = training.load_checkpoint(f'{out_dir}/vae.pt')   # the DiT reads them with the VAE
    training.save_atomic({**ckpt, 'latent_mean': latent_mean, 'latent_std': latent_std}, f'{out_dir}/vae.pt')
    print(f"latent stats stored in {out_dir}/vae.pt: |mean| {latent_mean.abs().mean():.3f}, "
          f"std {latent_std.mean():.3f} (averaged over channels)")
dist_.close()
