"""Tests for model.py: shapes, masking, adaLN-Zero init, losses, GPT-2 compatibility, presets.

Run: python -m pytest tests/test_model.py -q   (CPU, a few seconds)
"""

import os
import sys

from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import export  # noqa: E402
from model import (KVCache, VAEConfig, TextVAE, Projector, repa_loss, kl_divergence,  # noqa: E402
                   DiTConfig, DiT, GPTConfig, GPT, VAE_SIZES, DIT_SIZES, GPT_SIZES, make_config,
                   apply_rotary, build_attention_mask, rotary_angles, sample_next_token)
from sampling import gpt_continue, pad_rows  # noqa: E402

V, D = 97, 8   # small vocab and latent size keep every test fast

def tiny_vae(**kw):
    torch.manual_seed(0)
    return TextVAE(VAEConfig(vocab_size=V, block_size=32, n_enc_layer=2, n_dec_layer=2,
                             n_head=4, n_embd=32, latent_dim=D, **kw)).eval()

def tiny_dit(perturb=True):
    """A small DiT; perturb=True randomises the zero-initialised parameters so that every
    block and the output actually depend on their inputs."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(latent_dim=D, block_size=64, n_layer=2, n_head=4, n_embd=32)).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return model

def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32)).eval()

# -----------------------------------------------------------------------------
# VAE

def test_vae_shapes_and_kl():
    vae = tiny_vae()
    idx = torch.randint(0, V, (3, 10))
    logits, mean, logvar, hidden = vae(idx)
    assert logits.shape == (3, 10, V)
    assert mean.shape == logvar.shape == (3, 10, D)
    assert hidden.shape == (3, 10, 32)
    assert vae.config.repa_layer == 1
    assert torch.isfinite(kl_divergence(mean, logvar))
    z = vae.reparameterize(mean, logvar, generator=torch.Generator().manual_seed(0))
    assert z.shape == mean.shape
    logits_mean, *_ = vae(idx, sample=False)
    assert torch.allclose(logits_mean, vae.decode(mean))

def test_kl_zero_for_standard_normal():
    zeros = torch.zeros(2, 5, D)
    assert kl_divergence(zeros, zeros).item() == 0.0
    # invalid tokens are ignored even if their KL is huge
    mean = zeros.clone()
    mean[:, 3:] = 100.0
    valid = torch.arange(5)[None].expand(2, 5) < 3
    assert kl_divergence(mean, zeros, valid).item() == 0.0

def test_vae_padding_invariance():
    vae = tiny_vae()
    short = torch.randint(0, V, (1, 6))
    batch = torch.randint(0, V, (2, 11))
    batch[0, :6] = short[0]
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[0, 6:] = False
    mean_alone, logvar_alone, hidden_alone = vae.encode(short)
    mean, logvar, hidden = vae.encode(batch, valid)
    assert torch.allclose(mean[0, :6], mean_alone[0], atol=1e-5)
    assert torch.allclose(logvar[0, :6], logvar_alone[0], atol=1e-5)
    assert torch.allclose(hidden[0, :6], hidden_alone[0], atol=1e-5)
    logits_alone = vae.decode(mean_alone)
    logits = vae.decode(mean, valid)
    assert torch.allclose(logits[0, :6], logits_alone[0], atol=1e-5)

def test_vae_all_padding_row_is_finite():
    vae = tiny_vae()
    valid = torch.zeros(2, 7, dtype=torch.bool)
    valid[1, :4] = True
    logits, mean, logvar, hidden = vae(torch.randint(0, V, (2, 7)), valid)
    for x in (logits, mean, logvar, hidden):
        assert torch.isfinite(x).all()

def test_vae_causal_latents_ignore_future_tokens():
    vae = tiny_vae(causal=True)
    idx = torch.randint(0, V, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % V
    mean, _, _ = vae.encode(idx)
    mean_changed, _, _ = vae.encode(changed)
    assert torch.allclose(mean[:, :7], mean_changed[:, :7], atol=1e-6)
    assert not torch.allclose(mean[:, 7:], mean_changed[:, 7:])
    z_changed = mean.clone()
    z_changed[:, 7:] += 1.0
    assert torch.allclose(vae.decode(mean)[:, :7], vae.decode(z_changed)[:, :7], atol=1e-6)

def test_vae_rejects_too_long_input():
    with pytest.raises(ValueError, match="block_size"):
        tiny_vae().encode(torch.zeros(1, 33, dtype=torch.long))

# -----------------------------------------------------------------------------
# REPA

def test_projector_shape():
    assert Projector(32, 64, 48)(torch.randn(2, 5, 32)).shape == (2, 5, 48)

def test_repa_loss_values():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    assert repa_loss(x, x).item() == pytest.approx(-1.0, abs=1e-6)
    assert repa_loss(3.0 * x, x).item() == pytest.approx(-1.0, abs=1e-6)
    assert repa_loss(-x, x).item() == pytest.approx(1.0, abs=1e-6)
    loss = repa_loss(torch.randn(2, 6, 16), x).item()
    assert -1.0 <= loss <= 1.0

def test_repa_loss_ignores_invalid_tokens_and_detaches_teacher():
    x = torch.randn(2, 6, 16)
    student = x.clone()
    student[:, 4:] = -x[:, 4:]   # anti-aligned, but padding
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[:, 4:] = False
    assert repa_loss(student, x, valid).item() == pytest.approx(-1.0, abs=1e-6)
    teacher = x.clone().requires_grad_()
    student = torch.randn(2, 6, 16, requires_grad=True)
    repa_loss(student, teacher).backward()
    assert teacher.grad is None and student.grad is not None

def test_repa_loss_fp16_inputs_are_finite():
    big = torch.full((1, 3, 64), 300.0, dtype=torch.float16)   # squared norm overflows fp16
    assert repa_loss(big, big).item() == pytest.approx(-1.0, abs=1e-4)

# -----------------------------------------------------------------------------
# DiT

def dit_inputs(B=2, n_context=4, n_target=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = n_context + n_target
    x = torch.randn(B, L, D, generator=g)
    is_target = torch.arange(L)[None].expand(B, L) >= n_context
    return x, torch.rand(B, generator=g), is_target   # t: the time of each row's target

def test_dit_shapes():
    x, t, is_target = dit_inputs()
    out = tiny_dit()(x, t, is_target)
    assert out.shape == x.shape and torch.isfinite(out).all()

def test_dit_adaln_zero_init_is_identity_and_output_zero():
    model = tiny_dit(perturb=False)
    x, t, is_target = dit_inputs()
    h = torch.randn(2, 9, 32)
    c = torch.randn(2, 2, 32)
    for block in model.blocks:
        assert torch.equal(block(h, c, is_target.long()), h)
    assert torch.equal(model(x, t, is_target), torch.zeros_like(x))

def test_dit_target_depends_on_context():
    model = tiny_dit()
    x, t, is_target = dit_inputs()
    other = x.clone()
    other[:, :4] = torch.randn(2, 4, D)
    assert not torch.allclose(model(x, t, is_target)[:, 4:], model(other, t, is_target)[:, 4:])

def test_dit_context_padding_does_not_change_target():
    model = tiny_dit()
    x, t, is_target = dit_inputs(n_context=4, n_target=5)
    out = model(x, t, is_target)[:, 4:]
    # the same context right-padded with 3 invalid slots inside its segment
    pad = lambda a, fill: torch.cat([a[:, :4], fill, a[:, 4:]], dim=1)
    x_pad = pad(x, torch.randn(2, 3, D))
    is_target_pad = pad(is_target, torch.zeros(2, 3, dtype=torch.bool))
    valid = pad(torch.ones(2, 9, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool))
    out_pad = model(x_pad, t, is_target_pad, valid)
    assert torch.allclose(out_pad[:, 7:], out, atol=1e-5)
    assert torch.isfinite(out_pad).all()

def test_rotary_scores_depend_on_position_differences_only():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 2, 5, 16, generator=g)   # (B=1, H=2, T=5, head_dim=16) each
    pos = torch.tensor([[0, 1, 2, 7, 30]])

    def scores(offset):
        rope = rotary_angles(pos + offset, 16)
        return apply_rotary(q, rope) @ apply_rotary(k, rope).transpose(-1, -2)
    assert torch.allclose(scores(0), scores(100), atol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-2)  # positions do count
    rope0 = rotary_angles(torch.zeros(1, 5, dtype=torch.long), 16)
    assert torch.equal(apply_rotary(q, rope0), q)                              # position 0: unrotated
    assert torch.allclose(apply_rotary(q, rotary_angles(pos, 16)).norm(dim=-1), q.norm(dim=-1))

def test_dit_sees_the_order_of_its_inputs():
    model = tiny_dit()
    x, t, is_target = dit_inputs(n_context=4, n_target=5)
    swapped = x.clone()
    swapped[:, [5, 6]] = x[:, [6, 5]]
    out, out_swapped = model(x, t, is_target), model(swapped, t, is_target)
    # permutation-equivariant attention would give the same outputs, swapped back
    assert not torch.allclose(out_swapped[:, [6, 5]], out[:, [5, 6]], atol=1e-4)

def test_dit_x_prediction_gives_the_velocity_to_its_clean_estimate():
    model = tiny_dit()
    x, t, is_target = dit_inputs()
    t[0] = 0.99   # past the 0.05 floor of 1 - t
    model.config.prediction = 'x'
    v = model(x, t, is_target)
    model.config.prediction = 'v'
    x_clean = model(x, t, is_target)   # the same weights: the raw output is the clean estimate
    one_minus_t = (1 - torch.where(is_target, t[:, None], 1.0)).clamp(min=0.05)[..., None]
    assert torch.allclose((x + one_minus_t * v)[is_target], x_clean[is_target], atol=1e-5)
    assert torch.equal(v[~is_target], torch.zeros_like(v[~is_target]))   # clean tokens (t = 1) stay put
    with pytest.raises(ValueError, match='prediction'):
        DiTConfig(latent_dim=D, n_layer=1, n_head=4, n_embd=32, prediction='eps')

def test_dit_empty_context():
    model = tiny_dit()
    x, t, is_target = dit_inputs(n_context=0, n_target=5)
    out = model(x, t, is_target)
    assert out.shape == (2, 5, D)
    # three context slots that are all padding behave like no context at all
    x3, t3, is_target3 = dit_inputs(n_context=3, n_target=5)
    x3[:, 3:] = x
    valid = is_target3.clone()
    out3 = model(x3, t, is_target3, valid)
    assert torch.allclose(out3[:, 3:], out, atol=1e-5)
    assert torch.isfinite(out3).all()

def test_dit_denoise_honours_its_attention_mask():
    """DiT.denoise takes positions and a mask from its caller (cola.py's block-causal prior)."""
    model = tiny_dit()
    x, t, is_target = dit_inputs()
    B, L = x.shape[:2]
    pos = torch.arange(L).expand(B, L)
    # block-causal with blocks [0..3] and [4..8]: the first block cannot see the second
    block_id = (torch.arange(L) >= 4).long()
    attn_mask = block_id[:, None] >= block_id[None, :]
    times, segment = torch.stack([torch.ones_like(t), t], dim=1), is_target.long()
    run = lambda x, mask: model.denoise(x, times, segment, is_target, pos, build_attention_mask(L, x.device, None, mask))
    other = x.clone()
    other[:, 4:] = torch.randn(2, 5, D)
    out, out_other = run(x, attn_mask), run(other, attn_mask)
    assert torch.allclose(out[:, :4], out_other[:, :4], atol=1e-6)
    assert not torch.allclose(out[:, 4:], out_other[:, 4:])
    # a per-example (B, L, L) mask gives the same result; no mask is forward() without padding
    assert torch.allclose(out, run(x, attn_mask.expand(2, L, L)), atol=1e-6)
    assert torch.equal(model.denoise(x, times, segment, is_target, pos, None), model(x, t, is_target))

# -----------------------------------------------------------------------------
# GPT

def test_gpt_shapes_and_loss():
    model = tiny_gpt()
    idx = torch.randint(0, V, (2, 10))
    logits, loss = model(idx)
    assert logits.shape == (2, 10, V) and loss is None
    targets = idx.clone()
    targets[:, 5:] = -1
    _, loss = model(idx, targets)
    _, loss_first = model(idx[:, :5], idx[:, :5])
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, loss_first, atol=1e-6)   # causal + ignored targets

def test_gpt_exported_weights_round_trip(tmp_path):
    from transformers import GPT2LMHeadModel
    model = tiny_gpt()
    export.save_weights(model, str(tmp_path))
    hf = GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = torch.randint(0, V, (2, 16))
    with torch.no_grad():
        expected = hf(idx).logits
    assert torch.allclose(model(idx)[0], expected, atol=1e-5)

@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, top_k=20),
                                      dict(temperature=0.8, top_p=0.9)])
def test_gpt_generate_with_its_cache_matches_full_forward_passes(sampling):
    model = tiny_gpt()
    idx = torch.randint(0, V, (2, 5))
    with_cache = model.generate(idx, 12, generator=torch.Generator().manual_seed(1), **sampling)
    generator, without = torch.Generator().manual_seed(1), idx   # the whole sequence, every step
    for _ in range(12):
        logits, _ = model(without)
        without = torch.cat([without, sample_next_token(logits[:, -1], generator=generator, **sampling)], dim=1)
    assert with_cache.shape == (2, 17)
    assert torch.equal(with_cache[:, :5], idx)
    assert torch.equal(with_cache, without)

def test_gpt_block_size_limits():
    model = tiny_gpt()
    idx = torch.randint(0, V, (1, 30))
    with pytest.raises(ValueError, match="block_size"):
        model.generate(idx, 5)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))

def test_gpt_padded_rows_get_their_unpadded_logits_at_every_step():
    """Left-padded prompts of different lengths, then steps fed through the cache: each row's
    logits are those it gets alone (padding ids are random: which ids pad must not matter)."""
    model = tiny_gpt()
    rows = [torch.randint(0, V, (n,)).tolist() for n in (9, 3, 6, 1)]
    idx, valid = pad_rows(rows, 0, 'cpu', left=True)
    idx[~valid] = torch.randint(0, V, (int((~valid).sum()),))
    steps = torch.randint(0, V, (len(rows), 6))   # the tokens each row is fed after its prompt
    cache = KVCache(model.config.n_layer)
    batched = [model(idx, kv_cache=cache, valid=valid)[0][:, -1]]
    batched += [model(steps[:, [s]], kv_cache=cache)[0][:, -1] for s in range(steps.size(1))]
    assert torch.equal(cache.valid, torch.cat([valid, torch.ones_like(steps, dtype=torch.bool)], dim=1))
    # every query, padding too, has a key: some SDPA kernels give NaN for one without (torch 2.13's give 0)
    assert model._positions_and_mask(idx, None, valid)[1].any(dim=-1).all()
    for b, row in enumerate(rows):
        alone_cache = KVCache(model.config.n_layer)
        alone = [model(torch.tensor([row]), kv_cache=alone_cache)[0][0, -1]]
        alone += [model(steps[b:b + 1, [s]], kv_cache=alone_cache)[0][0, -1] for s in range(steps.size(1))]
        for step, (together, single) in enumerate(zip(batched, alone)):
            assert torch.allclose(together[b], single, atol=1e-5), (b, step)

PROMPTS = [[(7 * i) % V for i in range(20)], [23], [], [70, 2, 2, 54]]   # [] starts after <|endoftext|>

def test_gpt_continue_batched_greedy_equals_one_prompt_at_a_time():
    model, vocab = tiny_gpt(), SimpleNamespace(eot=0)
    with torch.no_grad():   # at init a GPT greedily repeats its last token; perturbed, it does not
        for name, p in model.named_parameters():
            if 'wte' not in name:
                p.add_(0.1 * torch.randn_like(p))
    # each row its own number of new tokens: 20 + 28 columns exceed block_size 32, no row does
    lengths = [12, 28, 4, 8]
    batched = gpt_continue(model, vocab, PROMPTS, lengths, temperature=0)
    alone = [gpt_continue(model, vocab, [p], [n], temperature=0)[0] for p, n in zip(PROMPTS, lengths)]
    assert batched == alone
    assert [len(r) for r in batched] == lengths   # no <|endoftext|> cut: every token compared
    assert len({t for r in batched for t in r}) > 5   # not one token repeated: a test that can fail

def test_gpt_generate_needs_left_padding_and_rows_within_block_size():
    model = tiny_gpt()
    idx, valid = pad_rows([list(range(30)), [4]], 0, 'cpu', left=True)
    with pytest.raises(ValueError, match="exceed block_size 32"):
        model.generate(idx, [3, 2], valid=valid)   # 30 + 3
    assert model.generate(idx, [2, 31], valid=valid).shape == (2, 30 + 31)
    idx, valid = pad_rows([[1, 2, 3], [4]], 0, 'cpu')   # right-padded: row 1 ends in column 0
    with pytest.raises(ValueError, match="pad prompts on the left"):
        model.generate(idx, 2, valid=valid)

# -----------------------------------------------------------------------------
# Configs, presets, parameter counts

def test_make_config_presets_and_errors():
    assert make_config('gpt', 'gpt2').n_layer == 12
    cfg = make_config('vae', 'tiny', latent_dim=32, causal=True)
    assert cfg.latent_dim == 32 and cfg.causal and cfg.repa_layer == cfg.n_enc_layer // 2
    assert isinstance(make_config('dit', 'tiny'), DiTConfig)
    with pytest.raises(ValueError, match="dit-b"):
        make_config('dit', 'huge')
    with pytest.raises(ValueError, match="n_layers"):
        make_config('gpt', 'tiny', n_layers=3)
    with pytest.raises(ValueError):
        make_config('bert', 'tiny')

@pytest.mark.parametrize("kind,cls,size,target", [
    ('dit', DiT, 'dit-b', 114e6), ('dit', DiT, 'dit-m', 328e6), ('dit', DiT, 'dit-l', 768e6),
    ('vae', TextVAE, 'paper', 350e6), ('gpt', GPT, 'gpt2', 124e6),
    ('gpt', GPT, 'gpt2-medium', 355e6), ('gpt', GPT, 'gpt2-large', 774e6)])
def test_paper_size_parameter_counts(kind, cls, size, target):
    with torch.device('meta'):   # shapes only: no memory, no init cost
        model = cls(make_config(kind, size))
    assert abs(model.num_params(non_embedding=False) / target - 1) < 0.15

def test_every_preset_builds_and_counts_flops():
    families = [('vae', TextVAE, VAE_SIZES), ('dit', DiT, DIT_SIZES), ('gpt', GPT, GPT_SIZES)]
    for kind, cls, sizes in families:
        for size in sizes:
            with torch.device('meta'):
                model = cls(make_config(kind, size))
            n = model.num_params()
            assert 0 < n < model.num_params(non_embedding=False)
            if kind != 'dit':   # the DiT's FLOPs are counted: see the next test
                assert model.flops_per_token(1024) > 6 * n

@pytest.mark.parametrize("size", list(DIT_SIZES))
def test_dit_forward_flops_are_attention_mlp_and_io_only(size):
    """Counted by torch on the meta device, a 1,024-token row (context and target) costs what
    its attention, MLP, input and output layers cost, within 5%: adaLN is paid per row and time,
    not per token (per token it was 1.45x attention + MLP at dit-l)."""
    from torch.utils.flop_counter import FlopCounterMode
    L = 1024
    with torch.device('meta'):
        model = DiT(make_config('dit', size, block_size=L))
        x, t, is_target = torch.zeros(1, L, 64), torch.rand(1), torch.arange(L)[None] >= 300
    with FlopCounterMode(display=False) as counter:
        model(x, t, is_target)
    C, n_layer, hidden = model.config.n_embd, model.config.n_layer, int(model.config.n_embd * 4)
    per_layer = 2 * 4 * C * C + 2 * 2 * L * C + 2 * 2 * C * hidden   # qkv+proj, scores+values, MLP
    expected = n_layer * per_layer + 2 * 2 * 64 * C                  # + input and output layers
    assert abs(counter.get_total_flops() / L / expected - 1) < 0.05

def test_dit_modulation_per_time_equals_the_per_token_computation():
    """Each distinct time's adaLN modulation, shared by its tokens, is what every token would
    compute for itself (here: each token given its own entry of the time table)."""
    model = tiny_dit()
    x, t, is_target = dit_inputs(B=3)
    B, L = is_target.shape
    pos = torch.arange(L).expand(B, L)
    per_row = model.denoise(x, torch.stack([torch.ones_like(t), t], 1), is_target.long(), is_target, pos, None)
    per_token = model.denoise(x, torch.where(is_target, t[:, None], 1.0), torch.arange(L).expand(B, L),
                              is_target, pos, None)
    assert torch.allclose(per_row, per_token, atol=1e-6)
    assert torch.equal(per_row, model(x, t, is_target))

@pytest.mark.parametrize("kind", ['vae', 'dit', 'gpt'])
def test_activation_checkpointing_changes_nothing_but_memory(kind):
    model = {'vae': lambda: tiny_vae(dropout=0.1), 'dit': tiny_dit, 'gpt': tiny_gpt}[kind]()
    model.train()
    if kind == 'gpt':
        idx = torch.randint(0, V, (2, 9))
        run = lambda: model(idx, targets=idx)[1]
    elif kind == 'vae':
        idx = torch.randint(0, V, (2, 9))
        run = lambda: model(idx)[0].float().pow(2).mean()
    else:
        x, t, is_target = dit_inputs()
        run = lambda: model(x, t, is_target).pow(2).mean()

    def loss_and_grads(on):
        model.checkpointing = on
        model.zero_grad()
        torch.manual_seed(1)   # the same dropout and sampling noise, recomputed alike
        loss = run()
        loss.backward()
        return loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        saved = []
        plain = loss_and_grads(False)
        plain_saved, saved = sum(saved), []
        checkpointed = loss_and_grads(True)
        assert sum(saved) < plain_saved / 2
    assert torch.equal(plain[0], checkpointed[0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], checkpointed[1]))

@pytest.mark.parametrize("kind", ['vae', 'dit', 'gpt'])
def test_residual_stream_is_bf16_under_autocast(kind):
    """An fp32 table added to bf16 outputs would make every block's input fp32."""
    model = {'vae': tiny_vae, 'dit': tiny_dit, 'gpt': tiny_gpt}[kind]()
    blocks = {'vae': lambda: list(model.encoder_blocks) + list(model.decoder_blocks), 'dit': lambda: model.blocks,
              'gpt': lambda: model.transformer.h}[kind]()
    seen = []
    for block in blocks:
        block.register_forward_hook(lambda module, args, out: seen.append((args[0].dtype, out.dtype)))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        if kind == 'dit':
            model(*dit_inputs())
        else:
            model(torch.randint(0, V, (2, 9)))
    assert len(seen) == len(blocks) and set(seen) == {(torch.bfloat16, torch.bfloat16)}

def test_gpt_kv_cache_chunks_match_full_forward():
    model = tiny_gpt()
    idx = torch.randint(0, V, (2, 12))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer)
    parts = (idx[:, :5], idx[:, 5:9], idx[:, 9:10], idx[:, 10:])   # prefill, chunk, 1 token, rest
    chunks = [model(part, kv_cache=cache)[0] for part in parts]
    assert cache.seq_len() == 12
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)
