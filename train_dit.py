"""
Stage 2: the DiT, a flow-matching prior over the frozen VAE's latents.

Each training window of tokens is cut at a random point into a context (the prompt) and a
target (the continuation). The VAE encodes the two *separately*; the latents are normalised
per channel; the clean context latents and the noisy target latents are packed into one
sequence, and the DiT predicts the velocity of the target positions only.

Time convention (model.py): x_t = t * x_data + (1 - t) * noise, so t = 0 is pure noise and
t = 1 is data; the velocity is x_data - noise; context latents carry t = 1.

    python train_dit.py config/tiny.py
    torchrun --standalone --nproc_per_node=8 train_dit.py config/owt.py
"""
import copy
import dataclasses
import os

import numpy as np
import torch
import torch.nn as nn

import configurator
import latent_space
import tokenization
import training
from cola import block_flow_matching_loss, train_flops_per_token
from model import DiT, flow_matching_loss, make_config

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `dit_key` in a config file is ours alone)
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False
seed = 1337
size = 'tiny'              # a preset of model.DIT_SIZES
block_size = 256           # window length: context + target tokens
dropout = 0.0
vae_path = '{out_dir}/vae.pt'
context_min = 0.0          # the cut point, as a fraction of the window, is uniform in
context_max = 0.75         # [context_min, context_max]; at least one target token remains
truncate_prob = 0.5        # share of micro-batches whose windows are cut to one random length in
                           # [2, block_size], so the DiT sees every prompt + continuation length evaluation asks for
timestep_sampling = 'logit_normal'  # or 'uniform'
logit_normal_std = 1.5     # the paper's choice (1.2 and uniform were worse)
logit_normal_mean = 0.0    # time shift: below 0 trains nearer the noise (t = 0), above 0 nearer the data
cfg_dropout = 0.1          # share of micro-batches trained without context, for classifier-free guidance
latent_block = 0           # Cola: denoise the target in blocks of this many tokens, block-causally
                           # (4 or 16; 0 = TextLDM, the whole target at one noise level)
ema_decay = 0.9999
prediction = 'v'           # the DiT outputs the velocity ('v') or the clean latents ('x'); the loss is on the velocity
activation_checkpointing = False  # recompute each block's activations in backward: less memory, ~1/3 more compute
self_cond = False          # self-conditioning: the DiT also reads its previous clean estimate (TextLDM only;
                           # +1/6 compute per iteration); sample.py uses it whenever the DiT has it
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
config = configurator.configure(globals(), 'dit')
training.check_precision(device, dtype)
training.check_batch_split(config)
if timestep_sampling not in ('logit_normal', 'uniform'):
    raise configurator.ConfigError(f"timestep_sampling={timestep_sampling!r}: 'logit_normal' or 'uniform'")
if timestep_sampling == 'logit_normal' and not logit_normal_std > 0:
    raise configurator.ConfigError(f"logit_normal_std={logit_normal_std} must be > 0")
if latent_block < 0:
    raise configurator.ConfigError(f"latent_block={latent_block} must be >= 0 (0 = TextLDM)")
if self_cond and latent_block:
    raise configurator.ConfigError("self_cond=True is for TextLDM (latent_block=0), not the block-causal Cola prior")


def sample_timesteps(n, device):
    """Training times in (0, 1): sigmoid of a normal (logit_normal_mean, logit_normal_std), or uniform."""
    if timestep_sampling == 'uniform':
        return torch.rand(n, device=device)
    return torch.sigmoid(logit_normal_mean + torch.randn(n, device=device) * logit_normal_std)


def pack(context, target, cut):
    """Context latents (valid up to `cut`) and target latents (valid from 0) of (B, W, D) ->
    one (B, W, D) sequence: context[:cut] followed by target[:W - cut], and its is_target mask."""
    B, W, D = target.shape
    pos = torch.arange(W, device=target.device).expand(B, W)
    is_target = pos >= cut[:, None]
    source = torch.where(is_target, pos - cut[:, None], pos)[..., None].expand(B, W, D)
    packed = torch.where(is_target[..., None], target.gather(1, source), context.gather(1, source))
    return packed, is_target


class FlowMatchingObjective(nn.Module):
    """Encode, pack, and score the DiT's velocity on the target positions (model.flow_matching_loss).
    With latent_block > 0 (Cola), every target block gets its own time and is denoised given the
    clean blocks before it (cola.block_flow_matching_loss). No packed row has padding (batch_fn),
    so the DiT's attention runs unmasked: SDPA's fastest kernel."""

    def __init__(self, dit, space, latent_block=0, n_noisy=0):
        super().__init__()
        self.dit, self.space = dit, space  # space is a plain object: the VAE stays frozen, unsaved
        self.latent_block, self.n_noisy = latent_block, n_noisy  # n_noisy: the longest target
        self.self_cond = dit.config.self_cond

    def forward(self, context_idx, context_valid, target_idx, target_valid, cut):
        x_data, is_target = pack(self.space.encode(context_idx, context_valid),
                                 self.space.encode(target_idx, target_valid), cut)
        if self.latent_block:
            n_blocks = -(-self.n_noisy // self.latent_block)
            times = sample_timesteps(len(cut) * n_blocks, cut.device).view(len(cut), n_blocks)
            return block_flow_matching_loss(self.dit, x_data, is_target, torch.ones_like(is_target), times,
                                            self.latent_block, self.n_noisy), {}
        t = sample_timesteps(len(cut), cut.device)
        return flow_matching_loss(self.dit, x_data, t, is_target, self_cond=self.self_cond), {}


def batch_fn(split, rng):
    """Windows, each cut at a random point into a context (at the start of one row) and a target
    (at the start of another: each is encoded on its own), and the cut. Two draws are made per
    micro-batch rather than per window, so that no packed row is padding: with probability
    truncate_prob every window is cut to one random length (the batch is that long), and with
    probability cfg_dropout the contexts are dropped: the rows are then targets alone (cut 0),
    as long as the continuation of one cut drawn as usual, so unconditional targets have the
    lengths conditional ones have."""
    length = block_size
    if truncate_prob and rng.random() < truncate_prob:   # drawn only when asked for
        length = int(rng.integers(2, block_size + 1))
    cut_range = lambda n: (int(context_min * n), min(int(context_max * n), n - 1) + 1)
    drop = rng.random() < cfg_dropout
    if drop:
        length -= int(rng.integers(*cut_range(length)))
    window = data.windows(split, batch_size, length, rng)
    cut = np.zeros(batch_size, dtype=np.int64) if drop else rng.integers(*cut_range(length), size=batch_size)
    pos = np.arange(length)[None, :]
    context_valid = pos < cut[:, None]
    target_valid = pos < (length - cut)[:, None]
    shifted = np.take_along_axis(window, np.minimum(pos + cut[:, None], length - 1), axis=1)
    eot = data.vocab.eot
    return (torch.from_numpy(np.where(context_valid, window, eot)), torch.from_numpy(context_valid),
            torch.from_numpy(np.where(target_valid, shifted, eot)), torch.from_numpy(target_valid),
            torch.from_numpy(cut))


# -----------------------------------------------------------------------------
# Everything is checked on the CPU before any GPU work: the VAE against the data and the DiT.
# Seeded first: building the VAE draws from torch's RNG before the DiT's own initialisation does.
training.seed_everything(seed + int(os.environ.get('RANK', 0)))
space = latent_space.LatentSpace.load(vae_path)
data = tokenization.TokenData(data_dir, vocab=space.vocab, vocab_of=f'the VAE vae_path={vae_path!r}')
if block_size > space.block_size:
    raise configurator.ConfigError(f"block_size={block_size} exceeds the VAE's {space.block_size} (vae_path={vae_path!r})")
dit_config = make_config('dit', size, latent_dim=space.latent_dim, block_size=block_size, dropout=dropout,
                         latent_block=latent_block, prediction=prediction, self_cond=self_cond)
if init_from == 'resume':
    saved = training.load_checkpoint(f'{out_dir}/dit.pt', 'dit checkpoint to resume')['model_args']
    if saved['latent_dim'] != space.latent_dim:
        raise SystemExit(f"{out_dir}/dit.pt was trained on the {saved['latent_dim']}-channel latents of "
                         f"vae_path={saved.get('vae_path')!r}; vae_path={vae_path!r} makes {space.latent_dim} "
                         f"channels: resume with the same VAE")
dist_ = training.Dist(device)
space.to(dist_.device)
dit = DiT(dit_config)
ema = copy.deepcopy(dit).to(dist_.device).requires_grad_(False)
model_args = {**dataclasses.asdict(dit_config), 'vae_path': vae_path, **space.vocab.state()}
training.print0(dist_, f"DiT '{size}': {dit.num_params() / 1e6:.2f}M parameters on "
                     f"{space.latent_dim}-channel latents of {vae_path}")
# Cola trains on [context | clean target | noisy copy]: n_noisy more tokens per window than TextLDM.
n_noisy = block_size - int(context_min * block_size) if latent_block else 0
if latent_block and not space.vae.config.causal:
    training.print0(dist_, "note: Cola with a non-causal VAE: a decoded block can still change once later "
                         "blocks are generated (train the VAE with causal=True)")

dit.checkpointing = activation_checkpointing
objective = FlowMatchingObjective(dit, space, latent_block, n_noisy)
training.train(config, 'dit', objective, batch_fn, dist_, model_args,
               flops_per_token=train_flops_per_token(dit_config, n_noisy), ema=(ema, dit, ema_decay))
dist_.close()
