"""
The three networks of TextLDM, in one file:

1. TextVAE: a Transformer VAE that maps N tokens to N continuous latents (one per token) and
   decodes all N tokens back in parallel (non-autoregressive). An intermediate encoder layer is
   exposed so REPA can align it with a frozen language model (Projector + repa_loss).
2. DiT: a Diffusion Transformer with adaLN-Zero blocks that predicts the flow-matching velocity
   of the target latents, conditioned in-context on clean prompt (context) latents. (cola.py
   runs the same network as a block-causal prior.)
3. GPT: a plain GPT-2, the autoregressive baseline (and a REPA teacher), weight-compatible with
   Hugging Face transformers' GPT2LMHeadModel.

Flow-matching time convention (the only one used in this project):
    x_t = t * x_data + (1 - t) * noise        t = 0: pure noise, t = 1: clean data
    velocity v = dx_t/dt = x_data - noise
    Context (prompt) latents are clean, so they carry t = 1.

Shapes: B = batch, T / L = sequence length, C = n_embd, H = heads, D = latent_dim, V = vocab.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

# -----------------------------------------------------------------------------
# Configs and size presets

@dataclass
class VAEConfig:
    vocab_size: int = 50257
    block_size: int = 1024      # max sequence length (learned positional embedding)
    n_enc_layer: int = 10
    n_dec_layer: int = 10
    n_head: int = 16
    n_embd: int = 1024
    latent_dim: int = 64        # channels per token latent (64 in the paper; 32/128/192 ablated)
    repa_layer: int | None = None  # 1-based encoder block exposed for REPA; None = the middle one
    dropout: float = 0.0
    causal: bool = False        # causal encoder/decoder: latent i never depends on tokens > i
    masked_tokens: bool = False  # a learned mask embedding, for Cola's masked-token objective

    def __post_init__(self):
        assert self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"
        if self.repa_layer is None:
            self.repa_layer = max(1, self.n_enc_layer // 2)
        if not 1 <= self.repa_layer <= self.n_enc_layer:
            raise ValueError(f"repa_layer={self.repa_layer} must be in [1, {self.n_enc_layer}]")

@dataclass
class DiTConfig:
    latent_dim: int = 64
    block_size: int = 2048      # max total length of context + target (checked; RoPE has no table)
    latent_block: int = 0       # Cola: trained block-causal on target blocks of this length (0 = TextLDM)
    n_layer: int = 10
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    prediction: str = 'v'       # what the network outputs: 'v' velocity, or 'x' the clean latents,
                                # turned into the velocity (x - x_t) / (1 - t); the loss is on the velocity either way
    self_cond: bool = False     # self-conditioning: the network also reads its own previous estimate
                                # of the clean latents (Chen et al., Analog Bits); TextLDM only

    def __post_init__(self):
        assert self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"
        if self.self_cond and self.latent_block:
            raise ValueError("self_cond is for TextLDM (latent_block=0), not the block-causal Cola prior")
        if self.prediction not in ('v', 'x'):
            raise ValueError(f"prediction={self.prediction!r}: 'v' (velocity) or 'x' (clean latents)")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError("the DiT's head size n_embd / n_head must be even (rotary positions)")

@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # GPT-2 has biases in every Linear and LayerNorm

    def __post_init__(self):
        assert self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"

# 'tiny' trains in minutes on a 2-core CPU, 'small' is a few M (non-embedding) params for
# CPU-scale reproductions. The paper's VAE is ~350M: 10+10 layers at width 1024 give 357M,
# about 103M of which are the token embedding and the (untied) output head.
VAE_SIZES = {
    'tiny':  dict(n_enc_layer=2, n_dec_layer=2, n_head=4, n_embd=128),
    'small': dict(n_enc_layer=4, n_dec_layer=4, n_head=4, n_embd=256),
    'paper': dict(n_enc_layer=10, n_dec_layer=10, n_head=16, n_embd=1024),
}
# The paper gives DiT sizes only as parameter counts (114M / 328M / 768M). A DiT block has
# ~18 C^2 params (attention 4, MLP 8, adaLN 6), so the paper sizes keep DiT's head size of 64 and
# pick depths that land near those counts: DiT-B width with 10 layers, DiT-L width with 17, 1280
# wide with 26. The CPU sizes keep 4 heads (head size 24 to 64).
DIT_SIZES = {
    'nano':  dict(n_layer=4, n_head=4, n_embd=96),     # 0.59x tiny's FLOPs: more iterations at equal compute
    'tiny':  dict(n_layer=4, n_head=4, n_embd=128),
    'small': dict(n_layer=6, n_head=4, n_embd=256),
    'dit-b': dict(n_layer=10, n_head=12, n_embd=768),    # ~110M
    'dit-m': dict(n_layer=17, n_head=16, n_embd=1024),   # ~327M
    'dit-l': dict(n_layer=26, n_head=20, n_embd=1280),   # ~775M
}
GPT_SIZES = {
    'tiny':        dict(n_layer=2, n_head=4, n_embd=128),
    'mini':        dict(n_layer=6, n_head=4, n_embd=128),      # 1.24M non-embedding: the tiny DiT's size
    'small':       dict(n_layer=6, n_head=4, n_embd=256),
    'gpt2':        dict(n_layer=12, n_head=12, n_embd=768),    # 124M
    'gpt2-medium': dict(n_layer=24, n_head=16, n_embd=1024),   # 350M
    'gpt2-large':  dict(n_layer=36, n_head=20, n_embd=1280),   # 774M
}

def make_config(kind, size, **overrides):
    """Config of `kind` ('vae' | 'dit' | 'gpt') from the `size` preset, with overrides applied."""
    registry = {'vae': (VAE_SIZES, VAEConfig), 'dit': (DIT_SIZES, DiTConfig),
                'gpt': (GPT_SIZES, GPTConfig)}
    if kind not in registry:
        raise ValueError(f"unknown model kind {kind!r}; available: {', '.join(registry)}")
    presets, config_class = registry[kind]
    if size not in presets:
        raise ValueError(f"unknown {kind} size {size!r}; available: {', '.join(presets)}")
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} key(s): {', '.join(unknown)}")
    return config_class(**{**presets[size], **overrides})

# -----------------------------------------------------------------------------
# Shared building blocks: attention masks, self-attention, MLP, pre-LN Transformer block

def build_attention_mask(length, device, valid=None, attn_mask=None, causal=False):
    """One boolean SDPA mask (True = may attend) from padding, an extra mask and causality.

    valid: (B, L) bool, True = real token. attn_mask: (L, L) or (B, L, L) bool.
    Returns None when nothing is masked (so SDPA may pick its fastest kernel), else a mask of
    shape (B or 1, 1, L, L). SDPA returns NaN for a query row with no allowed key (e.g. a
    sequence that is all padding); such rows attend to themselves instead. Their outputs are
    finite and meaningless, and callers ignore them.
    """
    if valid is None and attn_mask is None and not causal:
        return None
    mask = torch.ones(1, 1, length, length, dtype=torch.bool, device=device)
    if valid is not None:
        mask = mask & valid[:, None, None, :].bool()   # padding keys are never attended to
    if attn_mask is not None:
        mask = mask & (attn_mask[:, None] if attn_mask.dim() == 3 else attn_mask).bool()
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=device).tril()
    nothing_to_attend = ~mask.any(dim=-1, keepdim=True)
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return mask | (nothing_to_attend & eye)

class KVCache:
    """Keys and values of every layer for the tokens seen so far (GPT generation).

    keys[i], values[i]: (B, H, T_past, C // H) for layer i, or None before the first step.
    valid: (B, T_past) bool, False where a cached token is padding (a batch of prompts of
    different lengths, left-padded), or None while every cached token is real.
    """

    def __init__(self, n_layer):
        self.keys = [None] * n_layer
        self.values = [None] * n_layer
        self.valid = None

    def seq_len(self):
        return 0 if self.keys[0] is None else self.keys[0].size(2)

    def append(self, layer, k, v):
        """Add this step's (B, H, T, C // H) keys/values for `layer`; return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

class SelfAttention(nn.Module):
    """Multi-head self-attention with SDPA. Names (c_attn, c_proj) follow GPT-2."""

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, mask=None, is_causal=False, cache=None, layer=0, rope=None):
        """x: (B, T, C); mask: bool broadcastable to (B, H, T, T_keys) -> (B, T, C).
        With a cache (a KVCache), x also attends to the cached tokens, and cache.append decides
        what it keeps. rope: rotary_angles() of x's positions, applied to queries and keys (the DiT's)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (a.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for a in (q, k, v))
        if rope is not None:   # before the cache: cached keys keep the rotation of their positions
            q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        if cache is not None:   # keys/values of all tokens so far
            k, v = cache.append(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

def rotary_angles(pos, head_dim, base=10000.0):
    """Rotary position embedding (RoPE) for positions pos (B, T): (cos, sin), each
    (B, 1, T, head_dim // 2) in fp32, the angle of channel pair i being pos * base^(-2i/head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[..., None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]

def positions(valid):
    """(B, L) long position of each token: its index among the valid tokens of its row (leading
    padding -> 0), so padding inside a row does not shift the tokens after it."""
    return (valid.long().cumsum(dim=1) - 1).clamp(min=0)

def apply_rotary(x, rope):
    """Rotate queries or keys x (B, H, T, head_dim) by rotary_angles(); channel i pairs with
    channel i + head_dim/2. Attention scores then depend on positions only through their difference."""
    cos, sin = rope
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

class MLP(nn.Module):
    """Linear -> GELU (tanh approximation, GPT-2's "gelu_new") -> Linear."""

    def __init__(self, n_embd, hidden_dim, dropout=0.0, bias=True):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, hidden_dim, bias=bias)
        self.c_proj = nn.Linear(hidden_dim, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate='tanh')))

class Block(nn.Module):
    """Pre-LN Transformer block: x + attn(ln(x)), then x + mlp(ln(x)). Used by the VAE and GPT."""

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.attn = SelfAttention(n_embd, n_head, dropout, bias)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5, bias=bias)
        self.mlp = MLP(n_embd, 4 * n_embd, dropout, bias)

    def forward(self, x, mask=None, is_causal=False, cache=None, layer=0):
        """x: (B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache, layer)
        return x + self.mlp(self.ln_2(x))

def init_gpt_style(module, n_layer):
    """GPT-2 init: N(0, 0.02) weights, zero biases, and residual output projections scaled by
    1/sqrt(2 * n_layer) so the residual stream's variance does not grow with depth."""
    for name, p in module.named_parameters():
        if name.endswith('c_proj.weight'):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))
        elif name.endswith('bias'):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            nn.init.normal_(p, mean=0.0, std=0.02)
        # LayerNorm weights keep their default of 1

def autocast_dtype(x):
    """The dtype autocast computes in on x's device (bf16), or x's own when it is off. Residual
    streams are kept in it: an fp32 embedding added to bf16 outputs would make them fp32, and
    every LayerNorm would save twice the bytes for its backward."""
    kind = x.device.type
    if kind == 'meta':  # shapes only (FLOPs counted, bench.py): autocast has no meta device to ask about
        return x.dtype
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype

def checkpointed(block, on, *args):
    """block(*args); with `on`, in training, its activations are not kept for the backward pass
    but recomputed there (activation checkpointing: far less memory, about 1/3 more compute)."""
    if on and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)

def masked_mean(x, valid=None):
    """Mean of x (B, T) over the positions where valid (B, T) is True (all when None)."""
    if valid is None:
        return x.mean()
    valid = valid.to(x.dtype)
    return (x * valid).sum() / valid.sum().clamp(min=1.0)

# -----------------------------------------------------------------------------
# Stage 1: the text VAE, its KL term, and REPA (projector + alignment loss)

class TextVAE(nn.Module):
    """Tokens (B, T) -> per-token Gaussian latents (B, T, D) -> token logits (B, T, V).

    Sequences are right-padded; `valid` marks the real tokens. Padding keys are masked out of
    attention, so a sequence encodes and decodes the same alone as in a padded batch.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        C, drop = config.n_embd, config.dropout
        # encoder
        self.token_embedding = nn.Embedding(config.vocab_size, C)
        self.enc_pos_embedding = nn.Embedding(config.block_size, C)
        self.encoder_blocks = nn.ModuleList(
            [Block(C, config.n_head, drop) for _ in range(config.n_enc_layer)])
        self.encoder_ln = nn.LayerNorm(C)
        self.to_moments = nn.Linear(C, 2 * config.latent_dim)  # mean and log-variance
        # decoder
        self.from_latent = nn.Linear(config.latent_dim, C)
        self.dec_pos_embedding = nn.Embedding(config.block_size, C)
        self.decoder_blocks = nn.ModuleList(
            [Block(C, config.n_head, drop) for _ in range(config.n_dec_layer)])
        self.decoder_ln = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.drop = nn.Dropout(drop)
        init_gpt_style(self, config.n_enc_layer + config.n_dec_layer)
        self.checkpointing = False   # activation checkpointing in training (set by train_vae.py)
        if config.masked_tokens:   # BERT's [MASK]: replaces the embedding of a masked input token
            self.mask_embedding = nn.Parameter(0.02 * torch.randn(C))

    def _positions(self, T, device):
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        return torch.arange(T, device=device)

    def _attention(self, T, device, valid):
        """(mask, is_causal) for SDPA: no mask without padding (its fastest kernels), causal or not."""
        if valid is None:
            return None, self.config.causal
        return build_attention_mask(T, device, valid, causal=self.config.causal), False

    def embed_tokens(self, idx, masked=None):
        """(B, T) ids -> (B, T, C) encoder input embeddings; where masked (B, T) bool is True
        the token is hidden behind the learned mask embedding (Cola's masked-token objective)."""
        x = self.token_embedding(idx)
        if masked is None:
            return x
        if not self.config.masked_tokens:
            raise ValueError("this VAE has no mask embedding (VAEConfig.masked_tokens=False)")
        return torch.where(masked[..., None], self.mask_embedding.to(x.dtype), x)

    def encode(self, idx, valid=None, masked=None):
        """idx: (B, T) long -> mean, logvar (B, T, D), hidden (B, T, C) from block repa_layer.
        masked: (B, T) bool input tokens replaced by the mask embedding, or None."""
        T = idx.size(1)
        mask, is_causal = self._attention(T, idx.device, valid)
        x = self.embed_tokens(idx, masked) + self.enc_pos_embedding(self._positions(T, idx.device))
        x = self.drop(x.to(autocast_dtype(x)))
        hidden = None
        for i, block in enumerate(self.encoder_blocks, start=1):
            x = checkpointed(block, self.checkpointing, x, mask, is_causal)
            if i == self.config.repa_layer:
                hidden = x
        mean, logvar = self.to_moments(self.encoder_ln(x)).chunk(2, dim=-1)
        # exp(logvar) overflows or underflows outside this range, giving inf/NaN KL
        return mean, logvar.clamp(-30.0, 20.0), hidden

    @staticmethod
    def reparameterize(mean, logvar, generator=None):
        """z = mean + std * eps, eps ~ N(0, I). All tensors (B, T, D)."""
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, z, valid=None):
        """z: (B, T, D) latents -> logits (B, T, V) for every token in parallel."""
        T = z.size(1)
        mask, is_causal = self._attention(T, z.device, valid)
        x = self.from_latent(z) + self.dec_pos_embedding(self._positions(T, z.device))
        x = self.drop(x.to(autocast_dtype(x)))
        for block in self.decoder_blocks:
            x = checkpointed(block, self.checkpointing, x, mask, is_causal)
        return self.lm_head(self.decoder_ln(x))

    def forward(self, idx, valid=None, sample=True, masked=None):
        """idx: (B, T) -> logits (B, T, V), mean, logvar (B, T, D), hidden (B, T, C).
        masked: (B, T) bool tokens the encoder does not see; the decoder still predicts idx."""
        mean, logvar, hidden = self.encode(idx, valid, masked)
        z = self.reparameterize(mean, logvar) if sample else mean
        return self.decode(z, valid), mean, logvar, hidden

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding drops the lookup tables (token and positions), which
        cost no matmul FLOPs. The output head is not tied, so it is always counted."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            for emb in (self.token_embedding, self.enc_pos_embedding, self.dec_pos_embedding):
                n -= emb.weight.numel()
        return n

    def flops_per_token(self, seq_len):
        """Training FLOPs per token for encoder + decoder: 6 N (forward + backward matmuls) plus
        12 L C T for attention scores, as in nanoGPT's estimate (L = all encoder and decoder layers)."""
        cfg = self.config
        n_layer = cfg.n_enc_layer + cfg.n_dec_layer
        return 6 * self.num_params() + 12 * n_layer * cfg.n_embd * seq_len

def kl_divergence(mean, logvar, valid=None):
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over channels, averaged over valid tokens.

    mean, logvar: (B, T, D); valid: (B, T) bool. Computed in fp32. Returns a scalar.
    """
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)   # (B, T)
    return masked_mean(kl, valid)

class Projector(nn.Module):
    """REPA's MLP from the VAE encoder's hidden size to the teacher's: two SiLU hidden layers."""

    def __init__(self, in_dim, hidden_dim, out_dim):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.SiLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x):
        """x: (B, T, in_dim) -> (B, T, out_dim)."""
        return self.net(x)

def repa_loss(student, teacher, valid=None):
    """Negative cosine similarity per token, averaged over valid tokens. In [-1, 1], -1 = aligned.

    student, teacher: (B, T, E); valid: (B, T) bool. The teacher is under stop-gradient.
    Normalising in fp32 because fp16 norms of large hidden states overflow (a known REPA NaN).
    """
    student = F.normalize(student.float(), dim=-1, eps=1e-6)
    teacher = F.normalize(teacher.detach().float(), dim=-1, eps=1e-6)
    cosine = (student * teacher).sum(dim=-1)   # (B, T)
    return -masked_mean(cosine, valid)

# -----------------------------------------------------------------------------
# Stage 2: the Diffusion Transformer (adaLN-Zero, in-context conditioning)

def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal features of the flow time. t: (...) float in [0, 1] -> (..., dim).

    t is scaled by 1000 first (as DiT does for its integer timesteps), so that the
    frequencies, designed for positions up to ~max_period, resolve small changes in t.
    """
    half = dim // 2
    exponents = torch.arange(half, device=t.device, dtype=torch.float32) / half
    freqs = torch.exp(-math.log(max_period) * exponents)   # 1 down to ~1/max_period
    args = (1000.0 * t.float())[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

class TimestepEmbedder(nn.Module):
    """Flow times t (B, K) -> conditioning vectors c (B, K, C)."""

    def __init__(self, n_embd, frequency_dim=256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, t):
        features = timestep_embedding(t, self.frequency_dim)   # fp32, for precision in t
        return self.mlp(features.to(self.mlp[0].weight.dtype))

def per_token(table, segment):
    """Each token's row of a per-row table: table (B, K, E), segment (B, L) long -> (B, L, E)."""
    return table.gather(1, segment[..., None].expand(-1, -1, table.shape[-1]))

def modulate(x, shift, scale):
    """adaLN: LayerNorm output x (B, L, C) shifted and scaled per token by (B, L, C) vectors, in
    their dtype (bf16 under autocast, where a CUDA LayerNorm returns fp32)."""
    return x.to(shift.dtype) * (1 + scale) + shift

class DiTBlock(nn.Module):
    """Transformer block whose LayerNorms are modulated by c (shift, scale) and whose residual
    branches are gated by c. With the modulation zero-initialised every gate is 0, so the
    block starts as the identity (adaLN-Zero)."""

    def __init__(self, n_embd, n_head, mlp_ratio=4.0, dropout=0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(n_embd, n_head, dropout)
        self.norm2 = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(n_embd, int(n_embd * mlp_ratio), dropout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 6 * n_embd))

    def forward(self, x, c, segment, mask=None, rope=None, cache=None, layer=0):
        """x: (B, L, C) tokens; c: (B, K, C) conditioning of each distinct time, segment: (B, L)
        which one each token has. The modulation is computed per (row, time), not per token."""
        modulation = per_token(self.adaLN_modulation(c), segment).chunk(6, dim=-1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        attn_in = modulate(self.norm1(x), shift_msa, scale_msa)
        x = x + gate_msa * self.attn(attn_in, mask, cache=cache, layer=layer, rope=rope)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))

class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear map back to latent channels: (B, L, C) -> (B, L, D)."""

    def __init__(self, n_embd, latent_dim):
        super().__init__()
        self.norm = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 2 * n_embd))
        self.linear = nn.Linear(n_embd, latent_dim)

    def forward(self, x, c, segment):
        shift, scale = per_token(self.adaLN_modulation(c), segment).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

class DiT(nn.Module):
    """Velocity network over one sequence of [context latents (clean, t=1) | target latents (noisy)].

    Every token gets a learned "context or target" embedding, and its time t through adaLN;
    positions enter attention as rotary embeddings (RoPE), counting valid tokens only, so
    padding inside the context does not shift the target's positions.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.x_embedder = nn.Linear(config.latent_dim, C)
        if config.self_cond:   # no bias: an absent estimate (zeros) adds exactly nothing
            self.self_cond_embedder = nn.Linear(config.latent_dim, C, bias=False)
        self.role_embed = nn.Embedding(2, C)   # 0 = context, 1 = target
        self.t_embedder = TimestepEmbedder(C)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([DiTBlock(C, config.n_head, config.mlp_ratio, config.dropout)
                                     for _ in range(config.n_layer)])
        self.final_layer = FinalLayer(C, config.latent_dim)
        self.checkpointing = False   # activation checkpointing in training (set by train_dit.py)
        self.initialize_weights()

    def initialize_weights(self):
        # Plain init first: xavier for every Linear, zero biases, N(0, 0.02) for the tables.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.role_embed.weight, std=0.02)
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # adaLN-Zero: all shifts, scales and gates start at 0, so every block is the identity...
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        # ...and the output layer starts at exactly 0 (predicted velocity 0 everywhere).
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def forward(self, x, t, is_target, valid=None, x_self=None):
        """Predict the velocity at every position.

        x: (B, L, D) context latents followed by target latents. t: (B,) flow time of each row's
        target; the context is clean (t = 1). is_target: (B, L) bool. valid: (B, L) bool or None
        (all valid: attention then needs no mask): padding is neither attended to nor counted
        in the positions.
        x_self: (B, L, D) the previous estimate of the clean latents (clean_estimate), or None
            (= zeros, no estimate yet); only for a DiT with config.self_cond.
        Returns (B, L, D); callers keep the target positions.
        """
        B, L, _ = x.shape
        if L > self.config.block_size:
            raise ValueError(f"sequence length {L} exceeds block_size {self.config.block_size}")
        pos = positions(valid) if valid is not None else torch.arange(L, device=x.device).expand(B, L)
        times = torch.stack([torch.ones_like(t), t], dim=1)   # (B, 2): the context's, the target's
        mask = build_attention_mask(L, x.device, valid)
        return self.denoise(x, times, is_target.long(), is_target, pos, mask, x_self)

    def denoise(self, x, times, segment, is_target, pos, mask, x_self=None, cache=None):
        """The network, given the distinct times of each row, times (B, K), and which one each
        token has, segment (B, L) long; each token's position (B, L) and the attention mask (see
        build_attention_mask). forward() derives them for TextLDM; the block-causal prior (cola.py)
        passes its own, and a KVCache of the clean tokens before x. A row has few distinct times,
        so its adaLN modulation is computed per time, not per token: per token, adaLN's
        Linear(C, 6C) of every block would cost more than attention and MLP together."""
        h = self.x_embedder(x) + self.role_embed(is_target.long())
        h = h.to(autocast_dtype(h))
        if x_self is not None:
            if not self.config.self_cond:
                raise ValueError("x_self given to a DiT trained without self_cond")
            h = h + self.self_cond_embedder(x_self.to(h.dtype))
        h = self.drop(h)
        rope = rotary_angles(pos, self.config.n_embd // self.config.n_head)
        c = self.t_embedder(times)   # (B, K, C)
        for i, block in enumerate(self.blocks):
            h = checkpointed(block, self.checkpointing, h, c, segment, mask, rope, cache, i)
        out = self.final_layer(h, c, segment)
        if self.config.prediction == 'v':
            return out
        # x-prediction: the velocity that reaches the predicted clean latents at t = 1, in fp32;
        # 1 - t is floored at 0.05 (as JiT does) and clean tokens (t = 1) get velocity 0
        t32 = times.float().gather(1, segment)[..., None]
        v = (out.float() - x.float()) / (1 - t32).clamp(min=0.05)
        return torch.where(t32 < 1, v, 0.0).to(out.dtype)

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding drops the role lookup table."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.role_embed.weight.numel()
        return n

def clean_estimate(x_t, t, velocity):
    """The clean latents the velocity points at: x_t + (1 - t) v (exact on the straight path).
    x_t, velocity: (B, L, D); t: (B, L). In x_t's precision (fp32 or fp64, not the network's bf16).
    Self-conditioning feeds this back to the DiT."""
    return x_t + (1 - t)[..., None].to(x_t.dtype) * velocity.to(x_t.dtype)


def flow_matching_loss(dit, x_data, t, is_target, valid=None, noise=None, self_cond=False):
    """Flow matching on the straight path from noise (t=0) to data (t=1).

    dit: the DiT, or any function with its forward's arguments (cola.py passes the block-causal
    one). x_data: (B, L, D) clean latents (context and target); t: (B,) time of each row's target,
    passed on to dit, or (B, L) one per token (cola.py); is_target: (B, L) bool, the noised
    positions. Other positions stay clean (t = 1); the loss is the mean squared error of the
    velocity x_data - noise over the valid noised positions only, in fp32.
    self_cond: the first half of the rows (random windows, so a random half) first get the DiT's
    own clean estimate from a no-grad pass and are scored given it; the rest are scored without
    one, as the first sampling step is. Half a batch of extra forward, no data-dependent branch."""
    noise = torch.randn_like(x_data) if noise is None else noise
    times = torch.where(is_target, (t[:, None] if t.dim() == 1 else t).to(x_data.dtype), 1.0)
    x_t = times[..., None] * x_data + (1 - times[..., None]) * noise  # = x_data where t = 1
    extra = {}
    if self_cond:
        h = x_data.shape[0] // 2
        with torch.no_grad():
            v_half = dit(x_t[:h], t[:h], is_target[:h], None if valid is None else valid[:h])
        estimate = torch.where(is_target[:h, :, None], clean_estimate(x_t[:h], times[:h], v_half), 0.0)
        extra['x_self'] = torch.cat([estimate, torch.zeros_like(x_t[h:])]).detach()
    velocity = dit(x_t, t, is_target, valid, **extra)
    error = (velocity.float() - (x_data - noise).float()).pow(2).mean(-1)
    scored = is_target if valid is None else is_target & valid   # not the padding of a short window
    return (error * scored).sum() / scored.sum().clamp(min=1)

# -----------------------------------------------------------------------------
# Baseline: GPT-2 (same weights and logits as transformers' GPT2LMHeadModel)

class GPT(nn.Module):
    """Decoder-only Transformer LM. idx (B, T) -> logits (B, T, V)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, C),
            wpe=nn.Embedding(config.block_size, C),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(C, config.n_head, config.dropout, config.bias)
                             for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(C, eps=1e-5, bias=config.bias),
        ))
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight   # tied input/output embedding
        self.checkpointing = False   # activation checkpointing in training (set by train_gpt.py)
        init_gpt_style(self, config.n_layer)

    def forward(self, idx, targets=None, kv_cache=None, valid=None):
        """idx: (B, T) long; targets: (B, T) long, -1 = ignore. kv_cache and valid: generation
        only (see _positions_and_mask). Returns logits (B, T, V) and the fp32 mean cross-entropy
        (None without targets)."""
        pos, mask = self._positions_and_mask(idx, kv_cache, valid)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        x = self.transformer.drop(x.to(autocast_dtype(x)))
        for i, block in enumerate(self.transformer.h):
            x = checkpointed(block, self.checkpointing, x, mask, mask is None, kv_cache, i)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def _positions_and_mask(self, idx, kv_cache, valid):
        """Positions (T,) or (B, T) of idx's tokens, and the attention mask (None: SDPA's is_causal).
        kv_cache: a KVCache holding the earlier tokens (it is extended in place): idx continues them.
        valid: (B, T) bool, False = padding (generate() left-pads prompts of different lengths):
        padding is never attended to and a token's position counts only the real tokens of its
        row, so a padded row gets the logits it gets alone. The cache remembers the padding."""
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.seq_len()
        past_valid = None if kv_cache is None else kv_cache.valid
        if valid is None and past_valid is None:   # no padding (training): is_causal when fresh
            if start + T > self.config.block_size:
                raise ValueError(f"positions up to {start + T} exceed block_size {self.config.block_size}")
            mask = None if start == 0 else torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(start)
            return torch.arange(start, start + T, device=idx.device), mask
        real = lambda n: torch.ones(B, n, dtype=torch.bool, device=idx.device)
        seen = torch.cat([real(start) if past_valid is None else past_valid,       # which of all tokens
                          real(T) if valid is None else valid.bool()], dim=1)      # so far are real
        if start + T > self.config.block_size and int(seen.sum(dim=1).max()) > self.config.block_size:
            # padding takes no position: count (a device sync) only when it matters
            raise ValueError(f"positions up to {int(seen.sum(dim=1).max())} exceed block_size {self.config.block_size}")
        if kv_cache is not None:
            kv_cache.valid = seen
        # each sees the real tokens up to itself. A padding token sees itself alone: SDPA may give
        # NaN for a query with no key, and a NaN value would reach real tokens even at weight 0.
        key = torch.arange(start + T, device=idx.device)
        query = key[start:, None]
        return positions(seen)[:, start:], ((key <= query) & (seen[:, None, :] | (key == query)))[:, None]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, valid=None):
        """Append new sampled tokens to idx (B, T) -> (B, T + max(max_new_tokens)), with a key/value
        cache: each step feeds only the new token. temperature 0 = greedy. valid: (B, T) bool,
        False = padding: prompts of different lengths share a batch left-padded (see
        sampling.pad_rows), so that every row's last real token is in the last column.
        max_new_tokens: an int, or one per row: the batch runs to the largest, and a row's tokens
        past its own count are fed as padding (they take no position), so each row needs only its
        own prompt + new tokens within block_size. They are returned all the same: cut them."""
        B, T = idx.shape
        counts = [max_new_tokens] * B if isinstance(max_new_tokens, int) else list(max_new_tokens)
        prompt_lengths = [T] * B if valid is None else valid.sum(dim=1).tolist()
        longest = max((p + n for p, n in zip(prompt_lengths, counts)), default=0)
        if longest > self.config.block_size:   # cached positions cannot slide
            raise ValueError(f"a prompt + its new tokens ({longest}) exceed block_size {self.config.block_size}")
        if valid is not None and not valid[:, -1].all():
            raise ValueError("generate() continues the last column: pad prompts on the left, none empty")
        wanted = torch.tensor(counts, device=idx.device)
        cache, next_input = KVCache(self.config.n_layer), idx
        for step in range(max(counts, default=0)):
            logits, _ = self(next_input, kv_cache=cache, valid=valid)
            next_input = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat([idx, next_input], dim=1)
            # the cache keeps the prompts' padding; the new token is real if its row asked for it
            valid = (wanted > step)[:, None] if step >= min(counts) else None
        return idx

    def num_params(self, non_embedding=True):
        """Parameter count; non_embedding drops the position table (wte is also the output
        head, so it is counted), as nanoGPT does."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 N + 12 L C T (nanoGPT's estimate)."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * seq_len

def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits: (B, V) -> (B, 1) token ids. temperature 0 = argmax; top_k / top_p (nucleus)
    restrict sampling to the k most likely tokens / the smallest set with probability >= p."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first is always kept)
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float('-inf'))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
