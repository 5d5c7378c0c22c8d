"""Tests for the Cola variant: the block-causal training mask and sequence, cached block-by-block
generation, the masked-token VAE objective, latent_block=0 leaving TextLDM as it was, and a tiny
VAE -> DiT -> sample pipeline with latent_block > 0.

Run: python -m pytest tests/test_cola.py -q   (CPU, well under a minute)
"""
import json

import pytest
import torch
import torch.nn.functional as F

import cola
import helpers
import sampling
from cola import (BlockCache, block_causal_mask, block_diffusion_sequence, block_flow_matching_loss,
                  cached_velocity)
from model import (DiT, DiTConfig, TextVAE, VAEConfig, build_attention_mask, flow_matching_loss,
                   apply_rotary, positions, rotary_angles)

D = 8   # latent channels


def tiny_dit(latent_block=3, dtype=torch.float64):
    """A small DiT with its zero-initialised parameters randomised, so every block and the
    output depend on their inputs."""
    torch.manual_seed(0)
    dit = DiT(DiTConfig(latent_dim=D, block_size=64, latent_block=latent_block, n_layer=2, n_head=4,
                        n_embd=32)).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return dit.to(dtype)


# -----------------------------------------------------------------------------
# The training construction: mask and sequence

def test_block_causal_mask_hand_checked():
    # [context c c | clean target blocks 0 0 1 | noisy copy 0 0 1], latent_block = 2
    block = torch.tensor([[-1, -1, 0, 0, 1, 0, 0, 1]])
    noisy = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0, 0, 0],   # context: the context only
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],   # clean block 0: context + clean block 0
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],   # clean block 1: context + clean blocks 0, 1
        [1, 1, 0, 0, 0, 1, 1, 0],   # noisy block 0: context + itself
        [1, 1, 0, 0, 0, 1, 1, 0],
        [1, 1, 1, 1, 0, 0, 0, 1],   # noisy block 1: context + clean block 0 + itself
    ], dtype=torch.bool)
    assert torch.equal(block_causal_mask(block, noisy)[0], expected)


def test_block_diffusion_sequence_hand_checked():
    # W = 5 tokens, cut at 2 (context 2, target 3), blocks of 2, noisy copy padded to 4
    x = torch.arange(5.0).view(1, 5, 1).repeat(2, 1, 1)
    is_target = torch.tensor([[0, 0, 1, 1, 1]] * 2, dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=torch.bool)   # row 1: context dropped
    seq = block_diffusion_sequence(x, is_target, valid, latent_block=2, n_noisy=4)
    assert seq['x'][0, :, 0].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 4]   # the copy repeats the target
    assert seq['block'][0].tolist() == [-1, -1, 0, 0, 1, 0, 0, 1, 1]
    assert seq['noisy'][0].tolist() == [False] * 5 + [True] * 4
    assert seq['role'][0].tolist() == [False] * 2 + [True] * 7
    assert seq['valid'][0].tolist() == [True] * 8 + [False]
    assert seq['valid'][1].tolist() == [False] * 2 + [True] * 6 + [False]
    assert seq['pos'][0].tolist() == [0, 1, 2, 3, 4, 2, 3, 4, 0]   # a copy shares its token's position
    assert seq['pos'][1].tolist() == [0, 0, 0, 1, 2, 0, 1, 2, 0]   # no context: the target starts at 0


def test_block_diffusion_sequence_of_a_window_cut_short():
    """A window cut short (train_dit.py's truncate_prob) is padded after its target: the noisy
    copy covers the target's valid tokens only."""
    x = torch.arange(5.0).view(1, 5, 1)
    is_target = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)   # 2 context + 2 target tokens, then padding
    seq = block_diffusion_sequence(x, is_target, valid, latent_block=2, n_noisy=3)
    assert seq['valid'][0].tolist() == [True] * 4 + [False] + [True, True, False]
    assert seq['x'][0, 5:7, 0].tolist() == [2, 3]


def training_inputs(seed=0, B=2, W=10, cuts=(3, 4), latent_block=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, W, D, generator=g, dtype=torch.float64)
    is_target = torch.arange(W)[None, :] >= torch.tensor(cuts)[:, None]
    seq = block_diffusion_sequence(x, is_target, torch.ones(B, W, dtype=torch.bool), latent_block, W)
    L = seq['x'].shape[1]
    t = torch.where(seq['noisy'], torch.rand(B, L, generator=g, dtype=torch.float64), 1.0)
    seq['x'] = torch.where(seq['noisy'][..., None], torch.randn(B, L, D, generator=g, dtype=torch.float64),
                           seq['x'])   # the noisy copy: anything will do here
    return seq, t


def per_token_denoise(dit, x, t, role, pos, mask):
    """DiT.denoise with a time per token (B, L): each token its own entry of the time table."""
    B, L = t.shape
    return dit.denoise(x, t, torch.arange(L, device=x.device).expand(B, L), role, pos, mask)


def run_training_sequence(dit, seq, t):
    mask = build_attention_mask(seq['x'].shape[1], seq['x'].device, seq['valid'],
                                block_causal_mask(seq['block'], seq['noisy']))
    return per_token_denoise(dit, seq['x'], t, seq['role'], seq['pos'], mask)


@pytest.mark.parametrize('k', [0, 1, 2])
def test_later_blocks_never_change_earlier_outputs(k):
    """Perturb both copies of every block after k (latents and times): the outputs of the context
    and of both copies of blocks <= k stay exactly as they were; later ones do change."""
    dit = tiny_dit()
    seq, t = training_inputs()
    out = run_training_sequence(dit, seq, t)
    later = (seq['block'] > k)
    g = torch.Generator().manual_seed(1)
    seq2 = dict(seq, x=torch.where(later[..., None], torch.randn(seq['x'].shape, generator=g, dtype=torch.float64),
                                   seq['x']))
    t2 = torch.where(later & seq['noisy'], torch.rand(t.shape, generator=g, dtype=torch.float64), t)
    out2 = run_training_sequence(dit, seq2, t2)
    keep = ~later & seq['valid']
    assert torch.allclose(out[keep], out2[keep], rtol=0, atol=1e-12)
    assert not torch.allclose(out[later & seq['valid']], out2[later & seq['valid']])


def test_noisy_block_is_seen_by_nothing_else():
    """The noisy copy of block 1 changes its own outputs and nothing else's; it does see its clean
    predecessor (clean block 0) but not its own clean copy."""
    dit = tiny_dit()
    seq, t = training_inputs()
    out = run_training_sequence(dit, seq, t)
    noisy1 = seq['noisy'] & (seq['block'] == 1)
    seq2 = dict(seq, x=torch.where(noisy1[..., None], seq['x'] + 1.0, seq['x']))
    out2 = run_training_sequence(dit, seq2, t)
    others = ~noisy1 & seq['valid']
    assert torch.allclose(out[others], out2[others], rtol=0, atol=1e-12)
    assert not torch.allclose(out[noisy1], out2[noisy1])
    for block, seen in ((0, True), (1, False)):   # clean blocks 0 and 1
        clean = ~seq['noisy'] & (seq['block'] == block)
        seq3 = dict(seq, x=torch.where(clean[..., None], seq['x'] + 1.0, seq['x']))
        changed = not torch.allclose(out[noisy1], run_training_sequence(dit, seq3, t)[noisy1])
        assert changed == seen


def test_block_loss_is_finite_and_trains_every_part():
    dit = tiny_dit(dtype=torch.float32).train()
    g = torch.Generator().manual_seed(0)
    B, W = 3, 12
    x = torch.randn(B, W, D, generator=g)
    is_target = torch.arange(W)[None, :] >= torch.tensor([0, 5, 11])[:, None]
    valid = is_target | torch.tensor([True, False, True])[:, None]   # row 1: context dropped (CFG)
    times = torch.rand(B, 3, generator=g)   # ceil(12 / 4) blocks
    loss = block_flow_matching_loss(dit, x, is_target, valid, times, latent_block=4, n_noisy=W)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dit.parameters())


# -----------------------------------------------------------------------------
# latent_block = 0: TextLDM exactly as before Cola was added

def pre_cola_forward(dit, x, t, is_target, valid=None, attn_mask=None):
    """DiT.forward as it was before Cola (positions from valid, no cache), line for line."""
    B, L, _ = x.shape
    pos = positions(valid) if valid is not None else torch.arange(L).expand(B, L)
    h = dit.drop(dit.x_embedder(x) + dit.role_embed(is_target.long()))
    rope = rotary_angles(pos, dit.config.n_embd // dit.config.n_head)
    c = dit.t_embedder(t)
    mask = build_attention_mask(L, x.device, valid, attn_mask)
    for block in dit.blocks:
        mod = block.adaLN_modulation(c).chunk(6, dim=-1)   # per token
        a = block.attn
        y = modulate(block.norm1(h), mod[0], mod[1])
        q, k, v = a.c_attn(y).split(y.shape[-1], dim=2)
        q, k, v = (z.view(B, L, a.n_head, -1).transpose(1, 2) for z in (q, k, v))
        q, k = apply_rotary(q, rope), apply_rotary(k, rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).contiguous().view(B, L, -1)
        h = h + mod[2] * a.c_proj(y)
        h = h + mod[5] * block.mlp(modulate(block.norm2(h), mod[3], mod[4]))
    shift, scale = dit.final_layer.adaLN_modulation(c).chunk(2, dim=-1)
    return dit.final_layer.linear(modulate(dit.final_layer.norm(h), shift, scale))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def pre_cola_loss(dit, x_data, t, is_target, valid, noise):
    times = torch.where(is_target, t[:, None].to(x_data.dtype), 1.0)
    x_t = times[..., None] * x_data + (1 - times[..., None]) * noise
    velocity = pre_cola_forward(dit, x_t, times, is_target, valid)
    error = (velocity.float() - (x_data - noise).float()).pow(2).mean(-1)
    return (error * is_target).sum() / is_target.sum().clamp(min=1)


def test_latent_block_zero_is_the_textldm_path():
    """The TextLDM path as it was before Cola, to fp32 rounding (the modulation is now computed
    per distinct time, in a matmul of other shape: the last bits may differ)."""
    dit = tiny_dit(latent_block=0, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    B, L = 3, 12
    x, noise = torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g)
    is_target = torch.arange(L)[None, :] >= torch.tensor([4, 0, 7])[:, None]
    valid = is_target | torch.tensor([True, True, False])[:, None]
    t = torch.rand(B, generator=g)
    times = torch.where(is_target, t[:, None], 1.0)
    assert torch.allclose(dit(x, t, is_target, valid), pre_cola_forward(dit, x, times, is_target, valid),
                          rtol=0, atol=1e-6)
    assert torch.allclose(flow_matching_loss(dit, x, t, is_target, valid, noise),
                          pre_cola_loss(dit, x, t, is_target, valid, noise), rtol=1e-6)
    with pytest.raises(ValueError, match="block_size"):
        dit(torch.randn(1, 65, D), torch.ones(1), torch.ones(1, 65, dtype=torch.bool))


# -----------------------------------------------------------------------------
# Generation: the cache, block by block

class FullPrefix:
    """cola.CachedPrefix without a cache: the whole clean prefix is recomputed at every step,
    under the training mask (block_causal_mask). Slow; the reference the cached path is tested
    against."""

    def __init__(self, dit, context, context_valid, net_dtype):
        B, C, _ = context.shape
        self.dit, self.net_dtype, self.n_blocks = dit, net_dtype, 0
        self.x, self.valid = context.double(), context_valid   # fp64 holds fp32 and fp64 exactly
        self.role = torch.zeros(B, C, dtype=torch.bool, device=context.device)
        self.block = torch.full((B, C), -1, dtype=torch.long, device=context.device)

    def _extend(self, x):
        """The prefix followed by block x (B, n, D), as block number self.n_blocks."""
        B, n, _ = x.shape
        ones = torch.ones(B, n, dtype=torch.bool, device=x.device)
        return (torch.cat([self.x, x.double()], dim=1), torch.cat([self.valid, ones], dim=1),
                torch.cat([self.role, ones], dim=1),
                torch.cat([self.block, self.n_blocks * ones.long()], dim=1))

    def velocity(self, x, t):
        seq, valid, role, block = self._extend(x)
        noisy = torch.arange(seq.shape[1], device=x.device).expand_as(valid) >= seq.shape[1] - x.shape[1]
        times = torch.full(noisy.shape, t, dtype=torch.float64, device=x.device).masked_fill(~noisy, 1.0)
        mask = build_attention_mask(seq.shape[1], x.device, valid, block_causal_mask(block, noisy))
        v = per_token_denoise(self.dit, seq.to(self.net_dtype), times.to(self.net_dtype), role, positions(valid), mask)
        return v[:, -x.shape[1]:].to(x.dtype)

    def commit(self, x):
        self.x, self.valid, self.role, self.block = self._extend(x)
        self.n_blocks += 1


def generation_inputs(C=5, B=2):
    g = torch.Generator().manual_seed(3)
    context = torch.randn(B, C, D, generator=g, dtype=torch.float64)
    context_valid = torch.arange(C)[None, :] < torch.tensor([C, max(C - 2, 0)])[:B, None]   # row 1 padded
    return context, context_valid


@pytest.mark.parametrize('C, cfg_scale, solver, renoise', [(5, 7.0, 'euler', 0.0), (0, 1.0, 'heun', 0.0),
                                                        (5, 3.0, 'heun', 0.0), (5, 3.0, 'euler', 1.0)])
def test_cached_generation_equals_uncached(C, cfg_scale, solver, renoise, monkeypatch):
    dit = tiny_dit(latent_block=3)
    context, context_valid = generation_inputs(C)
    run = lambda **kw: cola.sample_blocks(dit, context, context_valid, 8, steps=3, solver=solver, cfg_scale=cfg_scale,
                                          generator=torch.Generator().manual_seed(0), net_dtype=torch.float64, **kw)
    cached = run(renoise=renoise)
    with monkeypatch.context() as m:
        m.setattr(cola, 'CachedPrefix', FullPrefix)
        uncached = run(renoise=renoise)
    assert cached.shape == (2, 8, D)   # blocks of 3, 3 and a last one of 2
    assert (cached - uncached).abs().max() < 1e-10
    if renoise:   # stochastic steps do reach the blocks' integration
        assert (cached - run()).abs().max() > 1e-3


def test_cache_grows_only_on_commit():
    dit = tiny_dit()
    context, context_valid = generation_inputs()
    cache = BlockCache(dit.config.n_layer)
    ones = torch.ones(2, dtype=torch.float64)
    cached_velocity(dit, context, ones, torch.zeros(2, 5, dtype=torch.bool), context_valid, cache, commit=True)
    assert cache.seq_len() == 5 and cache.num_valid().tolist() == [5, 3]
    block = torch.randn(2, 3, D, dtype=torch.float64)
    step = lambda t, commit: cached_velocity(dit, block, torch.full((2,), t, dtype=torch.float64),
                                             torch.ones(2, 3, dtype=torch.bool), None, cache, commit)
    draft = step(0.5, False)
    assert cache.seq_len() == 5
    assert torch.equal(draft, step(0.5, False))
    step(1.0, True)
    assert cache.seq_len() == 8 and cache.num_valid().tolist() == [8, 6]


def test_generating_more_blocks_leaves_earlier_blocks_unchanged():
    dit = tiny_dit(latent_block=3)
    context, context_valid = generation_inputs()
    gen = lambda n, **kw: cola.sample_blocks(dit, context, context_valid, n, steps=3, net_dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(0), **kw)
    short, long = gen(6), gen(11)
    assert torch.equal(long[:, :6], short)
    seen = []
    stopped = gen(11, on_block=lambda latents: seen.append(latents.shape[1]) or latents.shape[1] >= 6)
    assert seen == [3, 6] and torch.equal(stopped, short)


# -----------------------------------------------------------------------------
# The VAE's masked-token objective

def test_mask_embedding_changes_the_encoder_input_only_where_masked():
    config = dict(vocab_size=50, block_size=16, n_enc_layer=2, n_dec_layer=2, n_head=4, n_embd=32,
                  latent_dim=D, causal=True)
    torch.manual_seed(0)
    plain = TextVAE(VAEConfig(**config)).eval()
    torch.manual_seed(0)
    vae = TextVAE(VAEConfig(**config, masked_tokens=True)).eval()
    # the mask embedding is created after the other weights: they are initialised as before
    assert set(vae.state_dict()) - set(plain.state_dict()) == {'mask_embedding'}
    assert all(torch.equal(p, vae.state_dict()[k]) for k, p in plain.state_dict().items())
    idx = torch.randint(0, 50, (2, 10))
    masked = torch.zeros(2, 10, dtype=torch.bool)
    masked[0, 4], masked[1, [2, 7]] = True, True
    emb = vae.embed_tokens(idx, masked)
    assert torch.equal(emb[~masked], vae.token_embedding(idx)[~masked])
    assert torch.equal(emb[masked], vae.mask_embedding.expand(3, -1))
    mean, _, _ = vae.encode(idx, masked=masked)
    reference, _, _ = vae.encode(idx)
    assert torch.equal(vae.encode(idx, masked=torch.zeros_like(masked))[0], reference)
    assert torch.allclose(mean[0, :4], reference[0, :4], atol=1e-6)   # causal: before the mask
    assert not torch.allclose(mean[0, 4:], reference[0, 4:])
    with pytest.raises(ValueError, match="mask embedding"):
        plain.encode(idx, masked=masked)


# -----------------------------------------------------------------------------
# The pipeline: causal masked VAE -> Cola DiT -> block-by-block sampling

TINY = ['--device=cpu', '--dtype=float32', '--compile=False', '--size=tiny', '--block_size=32',
        '--batch_size=4', '--eval_iters=2', '--log_interval=3', '--learning_rate=3e-3', '--min_lr=3e-4',
        '--warmup_iters=2', '--lr_decay_iters=6', '--max_iters=6', '--eval_interval=3']


@pytest.fixture(scope='module')
def cola_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('cola')
    data = helpers.write_data_dir(root / 'data', n_stories=60)
    common = [*TINY, f'--data_dir={data}', f'--out_dir={root / "out"}']
    helpers.run_script('train_vae.py', *common, '--compact_vocab=True', '--repa_teacher=None', '--latent_dim=8',
                       '--stats_batches=2', '--causal=True', '--mask_prob=0.25')
    dit_result = helpers.run_script('train_dit.py', *common, '--latent_block=4')
    return root / 'out', dit_result


def prompt_text(n_tokens=6):
    """The start of a story of the corpus: its tokens are in the compact vocabulary."""
    from tokenization import decode, encode
    return decode(encode(helpers.corpus_text(60)[0])[:n_tokens])


def test_vae_logs_masked_ce(cola_run):
    out, _ = cola_run
    records = helpers.read_metrics(out / 'vae_metrics.jsonl')
    assert all(r['val_masked_ce'] > 0 for r in records)
    assert helpers.load_ckpt(out / 'vae.pt')['model_args']['masked_tokens'] is True


def test_cola_dit_trains_and_samples_block_by_block(cola_run):
    out, dit_result = cola_run
    assert 'note: Cola with a non-causal VAE' not in dit_result.stdout
    ckpt = helpers.load_ckpt(out / 'dit.pt')
    assert ckpt['model_args']['latent_block'] == 4
    losses = [r['val_loss'] for r in helpers.read_metrics(out / 'dit_metrics.jsonl')]
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    # sample.py sees latent_block in the checkpoint and generates block by block
    result = helpers.run_script('sample.py', '--device=cpu', '--dtype=float32', f'--out_dir={out}',
                                f'--prompt={prompt_text()}', '--num_samples=2', '--max_new_tokens=10',
                                '--steps_per_block=2', f'--out={out / "samples.jsonl"}')
    assert 'Cola, blocks of 4 latents' in result.stdout
    with open(out / 'samples.jsonl') as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 2
    # the VAE is causal, so the text streamed block by block is sample 0's final text
    streamed = result.stdout.split('sample 0 as decoded:\n', 1)[1].split('\n2 samples of', 1)[0]
    assert streamed == records[0]['prompt'] + records[0]['continuation']


def test_cola_continue_lengths_and_eot(cola_run):
    out, _ = cola_run
    dit, space, _ = sampling.load_textldm(str(out / 'dit.pt'), 'cpu')
    prompts = [space.vocab.encode(prompt_text(4)).tolist(), []]
    pieces = []
    rows = cola.cola_continue(dit, space, prompts, [6, 9], generator=torch.Generator().manual_seed(0),
                                on_text=pieces.append, steps=2, cfg_scale=2.0)
    assert len(rows) == 2 and len(rows[0]) <= 6 and len(rows[1]) <= 9
    assert all(space.vocab.eot not in row for row in rows)
    assert [sum(p, []) for p in zip(*pieces)] == rows   # the pieces add up to the rows
