"""
The Cola DLM variant (arXiv 2605.06548): the same DiT as a block-causal prior that generates
block by block. A DiT trained with latent_block > 0 is one; this file holds everything it does
differently from TextLDM: the training sequence and mask, its loss, the key/value cache of the
clean blocks, and the block sampler. It calls the DiT's network (DiT.denoise) with its own
positions and mask; the weights and the checkpoint are a DiT's.

The target is cut into blocks of `latent_block` tokens, counted from its start (a trailing
partial block is a block). Training sees the sequence
    [context (clean) | clean copy of the target | noisy copy of the target]
in one attention call: each noisy block (its own time t) sees the context, the clean copies of
the blocks before it and itself; the clean blocks are what generation keeps in its cache.
"""
import torch

import training
from model import DiT, KVCache, build_attention_mask, flow_matching_loss, positions
from sampling import end_of_text, integrate, make_time_grid, pad_rows

# -----------------------------------------------------------------------------
# Training

def block_causal_mask(block, noisy):
    """(B, L, L) bool attention mask (True = may attend) of block diffusion.

    block: (B, L) long block index of every token: -1 for the context, 0, 1, ... for target
    blocks (both copies). noisy: (B, L) bool, True on the noisy copy.
    A clean query of block k sees the clean tokens of blocks <= k (so the context sees only the
    context); a noisy query of block k sees the clean tokens of blocks < k and the noisy tokens
    of block k. No query ever sees another block's noisy tokens.
    """
    block_q, block_k = block[:, :, None], block[:, None, :]
    noisy_q, noisy_k = noisy[:, :, None], noisy[:, None, :]
    clean_key = ~noisy_k & ((block_k < block_q) | ((block_k == block_q) & ~noisy_q))
    return clean_key | (noisy_k & noisy_q & (block_k == block_q))


def block_diffusion_sequence(x, is_target, valid, latent_block, n_noisy):
    """TextLDM's packed training row -> Cola's [context | clean target | noisy copy].

    x: (B, W, D) clean latents, the context then the target; is_target, valid: (B, W) bool (a
    dropped context is invalid). n_noisy >= the longest target: the noisy copy's length, padded.
    Returns a dict of (B, W + n_noisy) tensors: x (clean everywhere; the loss noises the copy),
    role (the DiT's is_target: both copies), noisy, valid, pos (a copy shares its clean token's
    position), block (-1 on the context).
    """
    B, W, D = x.shape
    cut = (~is_target).sum(dim=1, keepdim=True)   # context length of each row
    j = torch.arange(n_noisy, device=x.device).expand(B, n_noisy)
    copy_valid = j < (is_target & valid).sum(dim=1, keepdim=True)   # the target's valid tokens
    source = (cut + j).clamp(max=W - 1)   # the clean token each copy slot repeats
    clean_pos = positions(valid)
    clean_block = torch.where(is_target, (torch.arange(W, device=x.device) - cut).div(
        latent_block, rounding_mode='floor'), -1)
    ones = torch.ones(B, n_noisy, dtype=torch.bool, device=x.device)
    return dict(
        x=torch.cat([x, x.gather(1, source[..., None].expand(B, n_noisy, D))], dim=1),
        role=torch.cat([is_target, ones], dim=1),
        noisy=torch.cat([torch.zeros_like(is_target), ones], dim=1),
        valid=torch.cat([valid, copy_valid], dim=1),
        pos=torch.cat([clean_pos, torch.where(copy_valid, clean_pos.gather(1, source), 0)], dim=1),
        block=torch.cat([clean_block, j.div(latent_block, rounding_mode='floor')], dim=1))


def block_flow_matching_loss(dit, x, is_target, valid, times, latent_block, n_noisy, noise=None):
    """Cola's training loss: flow matching on the noisy copy of every target block, each block
    at its own time. x, is_target, valid: a packed row as for model.flow_matching_loss; times:
    (B, ceil(n_noisy / latent_block)) one time per block."""
    seq = block_diffusion_sequence(x, is_target, valid, latent_block, n_noisy)
    t = times.gather(1, seq['block'].clamp(min=0))   # (B, L); used on the noisy copy only
    mask = build_attention_mask(seq['x'].shape[1], x.device, seq['valid'],
                                block_causal_mask(seq['block'], seq['noisy']))
    # The DiT's distinct times: clean tokens (t = 1) first, then one per noisy block.
    row_times = torch.cat([torch.ones_like(times[:, :1]), times], dim=1)
    segment = torch.where(seq['noisy'], seq['block'] + 1, 0)
    # both copies of a target token are targets to the DiT; only the noisy one is noised and scored
    velocity = lambda x_t, t, is_target, valid: dit.denoise(x_t, row_times, segment, seq['role'], seq['pos'], mask)
    return flow_matching_loss(velocity, seq['x'], t, seq['noisy'] & seq['valid'], seq['valid'], noise)


def train_flops_per_token(config, n_noisy=0):
    """Forward and backward FLOPs of a DiT's training loss per window token (TextLDM's, or Cola's
    when config.latent_block, with n_noisy noisy tokens), on full windows of config.block_size
    cut in the middle. Counted on a DiT built on the 'meta' device (no weights, no RNG drawn):
    what MFU divides by, and the quick start's compute budget. Two rows, as self-conditioning's
    no-grad pass covers the first half of a batch's rows (one row would be a half of zero rows)."""
    L, D = config.block_size, config.latent_dim
    with torch.random.fork_rng(devices=[]), torch.device('meta'):
        dit = DiT(config)
        x, is_target = torch.zeros(2, L, D), (torch.arange(L) >= L // 2).expand(2, -1)
        if config.latent_block:
            times = torch.full((2, -(-n_noisy // config.latent_block)), 0.5)
            loss = lambda: block_flow_matching_loss(dit, x, is_target, torch.ones_like(is_target), times,
                                                    config.latent_block, n_noisy)
        else:
            loss = lambda: flow_matching_loss(dit, x, torch.full((2,), 0.5), is_target, self_cond=config.self_cond)
        return training.counted_flops(lambda: loss().backward()) / (2 * L)


# -----------------------------------------------------------------------------
# Generation, block by block

class BlockCache(KVCache):
    """The keys/values of the clean tokens generation has committed: the prompt, then each
    finished block. A pass with `committing` False (a denoising step) reads them without adding
    its own. Also keeps which cached tokens are real, since a batch of prompts is padded.

    valid: (B, T_past) bool, or None before the first commit.
    """

    def __init__(self, n_layer):
        super().__init__(n_layer)
        self.valid, self.committing = None, False

    def append(self, layer, k, v):
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        if self.committing:
            self.keys[layer], self.values[layer] = k, v
        return k, v

    def num_valid(self):
        """(B,) real tokens cached per row (0 when empty): where the next positions start."""
        return 0 if self.valid is None else self.valid.sum(dim=1)

    def extend_mask(self, mask, B, L):
        """A (B or 1, 1, L, L) mask of the current tokens (or None) -> (B, 1, L, T_past + L):
        every real cached token is visible to every current token."""
        past = self.valid[:, None, None, :].expand(B, 1, L, -1)
        if mask is None:
            mask = torch.ones(1, 1, L, L, dtype=torch.bool, device=past.device)
        return torch.cat([past, mask.expand(B, 1, L, L)], dim=-1)


def cached_velocity(dit, x, t, is_target, valid, cache, commit):
    """The DiT's velocity for x (B, L, D), all of its tokens at time t (B,), which attends to
    every token in `cache` too and is positioned after them; commit=True adds x's keys/values
    to the cache (a finished block)."""
    B, L, _ = x.shape
    past = cache.seq_len()
    if past + L > dit.config.block_size:
        raise ValueError(f"sequence length {past + L} exceeds block_size {dit.config.block_size}")
    mask = build_attention_mask(L, x.device, valid)   # None (all valid: the fast path) or padding
    valid = torch.ones(B, L, dtype=torch.bool, device=x.device) if valid is None else valid.bool()
    pos = positions(valid)
    if past:   # after every real cached token, and seeing all of them
        pos, mask = pos + cache.num_valid()[:, None], cache.extend_mask(mask, B, L)
    cache.committing = commit
    v = dit.denoise(x, t[:, None], torch.zeros_like(pos), is_target, pos, mask, cache=cache)
    if commit:
        cache.valid = valid if cache.valid is None else torch.cat([cache.valid, valid], dim=1)
    return v


class CachedPrefix:
    """The clean tokens one guidance pass is conditioned on, kept as the DiT's key/value cache:
    the prompt, then each finished block, committed once; denoising steps only read it."""

    def __init__(self, dit, context, context_valid, net_dtype):
        self.dit, self.net_dtype = dit, net_dtype
        self.cache = BlockCache(dit.config.n_layer)
        if context.shape[1]:
            self._run(context, 1.0, False, context_valid, commit=True)

    def _run(self, x, t, role, valid=None, commit=False):
        B, n, _ = x.shape
        times = torch.full((B,), t, dtype=self.net_dtype, device=x.device)
        is_target = torch.full((B, n), role, dtype=torch.bool, device=x.device)
        v = cached_velocity(self.dit, x.to(self.net_dtype), times, is_target, valid, self.cache, commit)
        return v.to(x.dtype)

    def velocity(self, x, t):
        """(B, n, D) noisy block at time t -> its velocity, given every committed token."""
        return self._run(x, t, True)

    def commit(self, x):
        """Add the finished block x (clean, t = 1) to the cache."""
        self._run(x, 1.0, True, commit=True)


@torch.no_grad()
def sample_blocks(dit, context, context_valid, max_new_tokens, steps=16, solver='euler', cfg_scale=7.0,
                  guidance_interval=(0.0, 1.0), grid='uniform', std=1.5, ode_dtype=torch.float64,
                  generator=None, net_dtype=torch.float32, on_block=None, renoise=0.0):
    """The target latents block by block (dit.config.latent_block tokens each; the last may be
    shorter), each integrated from noise in `steps` ODE steps given the clean blocks before it.
    With CFG the unconditional pass sees the generated blocks but not the prompt. context: (B, C, D)
    normalised clean latents (C may be 0), context_valid (B, C). on_block(latents so far) may
    return True to stop early. Returns (B, n, D) latents, n <= max_new_tokens."""
    B, _, D = context.shape
    cond = CachedPrefix(dit, context, context_valid, net_dtype)
    uncond = CachedPrefix(dit, context[:, :0], context_valid[:, :0], net_dtype) if cfg_scale != 1.0 else None
    times = make_time_grid(steps, grid, std)

    def velocity(x, t):
        v = cond.velocity(x, t)
        if uncond is None or not guidance_interval[0] <= t <= guidance_interval[1]:
            return v
        v_uncond = uncond.velocity(x, t)
        return v_uncond + cfg_scale * (v - v_uncond)

    blocks = [torch.zeros(B, 0, D, device=context.device, dtype=ode_dtype)]
    for start in range(0, max_new_tokens, dit.config.latent_block):
        n = min(dit.config.latent_block, max_new_tokens - start)
        noise = torch.randn(B, n, D, generator=generator, device=context.device, dtype=torch.float64)
        blocks.append(integrate(velocity, noise.to(ode_dtype), times, solver, renoise, generator))
        stop = on_block is not None and on_block(torch.cat(blocks, dim=1))
        if stop or start + n == max_new_tokens:
            break
        for prefix in filter(None, (cond, uncond)):   # the next block sees this one, clean
            prefix.commit(blocks[-1])
    return torch.cat(blocks, dim=1)


def cola_continue(dit, space, prompts, max_new_tokens, generator=None, on_text=None, **flow):
    """Continue each prompt (model ids, may be empty) block by block with a Cola DiT, until every
    row has an <|endoftext|> or max_new_tokens tokens (an int, or one per prompt). After each block
    the latents so far are decoded and on_text(new ids of each row) is called. flow: keywords of
    sample_blocks. Returns the model ids of each row, cut at <|endoftext|> (as textldm_continue)."""
    device, eot = space.mean.device, space.vocab.eot
    lengths = (list(max_new_tokens) if isinstance(max_new_tokens, (list, tuple))
               else [max_new_tokens] * len(prompts))
    context_ids, context_valid = pad_rows(prompts, eot, device)
    context = (space.encode(context_ids, context_valid) if context_ids.shape[1]
               else torch.zeros(len(prompts), 0, space.latent_dim, device=device))
    rows = [[] for _ in prompts]

    def after_block(latents):
        ids = space.decode(latents).cpu()   # a causal VAE keeps the earlier tokens as they were
        new_rows = [end_of_text(row[:n].tolist(), eot)[0] for row, n in zip(ids, lengths)]
        if on_text is not None:
            on_text([new[len(old):] for new, old in zip(new_rows, rows)])
        rows[:] = new_rows
        return all(eot in row[:n].tolist() or latents.shape[1] >= n for row, n in zip(ids, lengths))

    sample_blocks(dit, context, context_valid, max(lengths, default=0), generator=generator,
                  net_dtype=next(dit.parameters()).dtype, on_block=after_block, **flow)
    return rows
