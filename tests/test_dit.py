"""Tests for stage 2 (train_dit.py) and the sampler (sample.py): the flow-matching time
convention, a toy 2-D mixture learned and sampled back, CFG, Euler vs Heun, time grids, the
context/target packing, a tiny end-to-end run on the embedded corpus, exact resume (EMA
included), and the errors a user can run into.

Run: python -m pytest tests/test_dit.py -q   (CPU, offline, ~1-2 min on 2 cores)
"""
import json
import math
import os
import runpy
import shutil
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import sampling  # noqa: E402
from helpers import load_ckpt, read_metrics, run_script, script_function, write_data_dir  # noqa: E402
from model import DiT, flow_matching_loss, make_config  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Small CPU ops on a loaded 2-core machine are ~100x slower with competing threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed_dit(latent_dim=4, block_size=32, seed=0, scale=0.15, dtype=torch.float32):
    """A small DiT whose zero-initialised (adaLN-Zero) parameters are randomised, so the output
    depends on x, t and the context."""
    torch.manual_seed(seed)
    dit = DiT(make_config('dit', 'tiny', latent_dim=latent_dim, block_size=block_size,
                          n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(scale * torch.randn_like(p))
    return dit.eval().to(dtype)


def context_batch(B=3, C=5, N=4, D=4, seed=1):
    """Context latents with padding (row 1 has 3 valid latents, row 2 none) and N target slots."""
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(B, C, D, generator=g)
    context_valid = torch.arange(C)[None, :] < torch.tensor([C, 3, 0][:B])[:, None]
    return context, context_valid, torch.ones(B, N, dtype=torch.bool)


# -----------------------------------------------------------------------------
# The time convention: t = 0 is noise, t = 1 is data, velocity = data - noise

class RecordingStub(torch.nn.Module):
    def __init__(self, output=None):
        super().__init__()
        self.output, self.calls = output, []

    def forward(self, x, t, is_target, valid=None):
        self.calls.append((x.clone(), t.clone()))
        return torch.zeros_like(x) if self.output is None else self.output


def test_flow_matching_loss_time_convention():
    g = torch.Generator().manual_seed(0)
    B, L, D = 3, 6, 4
    x_data, noise = torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g)
    is_target = torch.arange(L)[None, :] >= torch.tensor([2, 0, 5])[:, None]
    t = torch.tensor([0.0, 0.3, 1.0])
    stub = RecordingStub()
    loss_zero = flow_matching_loss(stub, x_data, t, is_target, noise=noise)
    x_t, times = stub.calls[0]
    expect = torch.where(is_target[..., None], t[:, None, None] * x_data + (1 - t[:, None, None]) * noise, x_data)
    assert torch.allclose(x_t, expect, atol=1e-6)
    assert torch.equal(times, t)   # the DiT gets each row's target time (its context is clean: t = 1)
    assert torch.allclose(x_t[0, 2:], noise[0, 2:])                        # t = 0: pure noise
    # a velocity of 0 costs |data - noise|^2 averaged over target positions and channels
    err = (x_data - noise).pow(2).mean(-1)
    assert torch.allclose(loss_zero, err[is_target].mean(), atol=1e-6)
    # the exact velocity (data - noise) on the targets costs nothing, whatever the context outputs
    exact = torch.where(is_target[..., None], x_data - noise, 100.0)
    assert flow_matching_loss(RecordingStub(exact), x_data, t, is_target, noise=noise).item() < 1e-10


def test_sampler_integrates_from_noise_at_0_to_data_at_1():
    """With the exact straight-path velocity towards a point x*, v = (x* - x) / (1 - t), Euler
    lands on x* at t = 1 and keeps the context untouched: the sampler uses the same convention."""
    target = torch.tensor([[[1.5, -2.0, 0.5]]]).double()
    seen = []

    def dit(x, t, is_target, valid):
        seen.append(t.unique().tolist())
        return (target - x) / (1 - t).clamp(min=1e-12)[:, None, None]

    context, context_valid = torch.randn(1, 2, 3), torch.ones(1, 2, dtype=torch.bool)
    for grid in ('uniform', 'logit_normal'):
        seen.clear()
        out = sampling.sample_flow(dit, context, context_valid, torch.ones(1, 1, dtype=torch.bool), steps=5,
                                 cfg_scale=1.0, grid=grid, generator=torch.Generator().manual_seed(0),
                                 net_dtype=torch.float64)
        assert out.shape == (1, 1, 3)
        assert torch.allclose(out, target, atol=1e-9)
        assert seen[0] == [0.0] and all(a[0] < b[0] for a, b in zip(seen, seen[1:]))  # starts at noise


# -----------------------------------------------------------------------------
# Self-conditioning: the DiT reads its own previous clean estimate x_t + (1 - t) v

class SelfCondStub(torch.nn.Module):
    """Records (x, t, x_self) of every call; returns a fixed velocity field f(x, t)."""
    config = make_config('dit', 'tiny', latent_dim=3, self_cond=True)

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, is_target, valid=None, x_self=None):
        self.calls.append((x.clone(), t.clone(), None if x_self is None else x_self.clone()))
        return 0.5 * x.flip(-1) + t[:, None, None]   # any function of x and t


def test_self_conditioning_in_training_feeds_a_no_grad_estimate_to_half_the_rows():
    g = torch.Generator().manual_seed(0)
    B, L, D = 4, 5, 3
    x_data, noise = torch.randn(B, L, D, generator=g), torch.randn(B, L, D, generator=g)
    is_target = torch.arange(L)[None, :] >= torch.tensor([2, 0, 4, 1])[:, None]
    stub = SelfCondStub()
    flow_matching_loss(stub, x_data, torch.rand(B, generator=g), is_target, noise=noise, self_cond=True)
    (x_half, t_half, none), (x_t, t, x_self) = stub.calls
    assert none is None and torch.equal(x_half, x_t[:2]) and torch.equal(t_half, t[:2])
    times = torch.where(is_target, t[:, None], 1.0)   # the context is clean
    estimate = x_t[:2] + (1 - times[:2])[..., None] * stub(x_half, t_half, is_target[:2])
    assert torch.allclose(x_self[:2], torch.where(is_target[:2, :, None], estimate, 0.0))
    assert torch.equal(x_self[2:], torch.zeros_like(x_self[2:]))   # the other half: no estimate
    assert not x_self.requires_grad


def test_training_flops_count_the_self_conditioning_pass():
    """The DiT's FLOPs an iteration (MFU's numerator, the quick start's budget): self-conditioning
    adds a no-grad forward over half the rows, ~0.5 of the forward + backward's ~3 forwards; Cola's
    rows carry a noisy copy."""
    from cola import train_flops_per_token

    def counted(self_cond, latent_block=0, block_size=64):
        config = make_config('dit', 'tiny', latent_dim=8, block_size=block_size, self_cond=self_cond,
                             latent_block=latent_block)
        return train_flops_per_token(config, n_noisy=block_size // 2 if latent_block else 0)

    plain = counted(False)
    assert 1.12 < counted(True) / plain < 1.22
    assert counted(False, latent_block=4) > 1.3 * plain   # [context | clean target | noisy target]
    state = torch.random.get_rng_state()
    counted(True)
    assert torch.equal(torch.random.get_rng_state(), state)   # counting draws nothing from training's RNG


@pytest.mark.parametrize('cfg_scale', [1.0, 3.0])
def test_self_conditioning_in_sampling_feeds_each_pass_its_previous_estimate(cfg_scale):
    stub = SelfCondStub()
    context, context_valid, target_valid = context_batch(B=2, C=3, N=2, D=3)
    sampling.sample_flow(stub, context, context_valid, target_valid, steps=4, cfg_scale=cfg_scale,
                       generator=torch.Generator().manual_seed(0), net_dtype=torch.float64)
    passes = 2 if cfg_scale != 1.0 else 1
    assert len(stub.calls) == 4
    is_target = (torch.arange(5) >= 3).expand(2 * passes, 5)[..., None]
    assert torch.equal(stub.calls[0][2], torch.zeros_like(stub.calls[0][2]))   # none at the first step
    for (x, t, _), (_, _, x_self) in zip(stub.calls, stub.calls[1:]):
        assert x.shape[0] == 2 * passes        # conditional and unconditional rows, each its own estimate
        estimate = x + (1 - t)[:, None, None] * stub(x, t, None)
        assert torch.allclose(x_self, torch.where(is_target, estimate, 0.0))


def test_self_conditioning_dit_with_a_zero_estimate_path_is_the_plain_dit():
    """The estimate enters through its own bias-free projection: zeroed, the DiT is the plain one."""
    plain = perturbed_dit()
    config = make_config('dit', 'tiny', latent_dim=4, block_size=32, n_layer=2, n_head=2, n_embd=32, self_cond=True)
    with_sc = DiT(config).eval()
    missing, unexpected = with_sc.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ['self_cond_embedder.weight'] and not unexpected
    torch.nn.init.zeros_(with_sc.self_cond_embedder.weight)
    context, context_valid, target_valid = context_batch()
    run = lambda dit: sampling.sample_flow(dit, context, context_valid, target_valid, steps=6, cfg_scale=3.0,
                                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(plain), run(with_sc))
    with pytest.raises(ValueError, match='self_cond'):
        plain(torch.zeros(1, 2, 4), torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), x_self=torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match='TextLDM'):
        make_config('dit', 'tiny', self_cond=True, latent_block=4)


# -----------------------------------------------------------------------------
# Learning and sampling a toy 2-D mixture

MODES = torch.tensor([[2.0, 0.0], [-1.0, 1.732], [-1.0, -1.732]])
WEIGHTS = torch.tensor([0.5, 0.3, 0.2])


def test_toy_mixture_modes_and_weights():
    torch.manual_seed(0)
    dit = DiT(make_config('dit', 'tiny', latent_dim=2, block_size=4, n_layer=2, n_head=2, n_embd=32))
    steps, B, std = 250, 512, 0.1
    opt = torch.optim.Adam(dit.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * i / steps)))
    g = torch.Generator().manual_seed(0)
    one_target = torch.ones(B, 1, dtype=torch.bool)   # one target token, no context
    for _ in range(steps):
        k = torch.multinomial(WEIGHTS, B, replacement=True, generator=g)
        x = (MODES[k] + std * torch.randn(B, 2, generator=g))[:, None, :]
        loss = flow_matching_loss(dit, x, torch.rand(B, generator=g), one_target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    dit.eval()
    n = 1000
    z = sampling.sample_flow(dit, torch.zeros(n, 0, 2), torch.zeros(n, 0, dtype=torch.bool),
                           torch.ones(n, 1, dtype=torch.bool), steps=50, cfg_scale=1.0,
                           generator=torch.Generator().manual_seed(1))[:, 0].float()
    distance, nearest = torch.cdist(z, MODES).min(dim=1)
    fractions = torch.bincount(nearest, minlength=3).float() / n
    assert (fractions > 0.05).all(), f"a mode was missed: {fractions.tolist()}"
    assert (fractions - WEIGHTS).abs().max() < 0.07, f"weights {fractions.tolist()} vs {WEIGHTS.tolist()}"
    assert (distance < 0.5).float().mean() > 0.9, "most samples should lie near a mode"
    # stochastic steps with a full re-noise each step find every mode, and sharpen the mixture
    # (a lower temperature: the heaviest mode gains), keeping the modes' order of weight
    z = sampling.sample_flow(dit, torch.zeros(n, 0, 2), torch.zeros(n, 0, dtype=torch.bool),
                           torch.ones(n, 1, dtype=torch.bool), steps=100, cfg_scale=1.0, renoise=1.0,
                           generator=torch.Generator().manual_seed(1))[:, 0].float()
    distance, nearest = torch.cdist(z, MODES).min(dim=1)
    sharpened = torch.bincount(nearest, minlength=3).float() / n
    assert (sharpened > 0.05).all() and (sharpened[:-1] > sharpened[1:]).all(), sharpened.tolist()
    assert sharpened[0] > fractions[0] + 0.05, (sharpened.tolist(), fractions.tolist())
    assert (distance < 0.5).float().mean() > 0.9, "renoise=1: most samples should lie near a mode"


def test_stochastic_steps_match_their_closed_form():
    """With the exact velocity of 1-D Gaussian data N(m, sd^2) every step is linear in x, so the
    spread of the samples follows a scalar recursion: the sampled std must match it for the ODE
    (renoise=0, ~sd) and for stochastic steps (renoise=1 concentrates the samples)."""
    m, sd, n, steps = 1.5, 0.3, 20000, 50
    gain = lambda t: t * sd ** 2 / (t ** 2 * sd ** 2 + (1 - t) ** 2)   # E[x1 | x_t] = m + gain (x_t - t m)

    def exact(x, t, is_target, valid, **_):
        t = torch.where(is_target, t[:, None].double(), 1.0)[..., None]
        return torch.where(t < 1, (m + gain(t) * (x.double() - t * m) - x) / (1 - t).clamp(min=1e-12), 0.0)

    def predicted_std(renoise):
        grid, var = torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist(), 1.0
        for t, t1 in zip(grid[:-1], grid[1:]):   # x' = t' x1 + (1 - t') (c x0 + renoise z)
            a = t1 * gain(t) + (1 - t1) * (1 - renoise ** 2) ** 0.5 * (1 - t * gain(t)) / (1 - t)
            var = a ** 2 * var + (1 - t1) ** 2 * renoise ** 2
        return var ** 0.5

    run = lambda renoise: sampling.sample_flow(
        exact, torch.zeros(n, 0, 1), torch.zeros(n, 0, dtype=torch.bool), torch.ones(n, 1, dtype=torch.bool),
        steps=steps, cfg_scale=1.0, renoise=renoise, generator=torch.Generator().manual_seed(0))[:, 0, 0]
    ode = run(0.0)
    for renoise in (0.0, 0.5, 1.0):
        z = run(renoise)
        assert abs(z.mean() - m) < 0.01 and abs(z.std() / predicted_std(renoise) - 1) < 0.02, (renoise, z.std())
        assert renoise == 0 or (z - ode).abs().mean() > 0.05   # other noise, other samples
    assert predicted_std(0.0) > 0.95 * sd and predicted_std(1.0) < 0.7 * sd


# -----------------------------------------------------------------------------
# Classifier-free guidance, solvers, time grids

def manual_euler(dit, context, context_valid, target_valid, steps, generator, scale=1.0, net_dtype=torch.float32):
    """Euler on a uniform grid calling the DiT directly; with scale != 1 the unconditional
    velocity is the DiT on the target alone (what training sees when the context is dropped)."""
    B, C, D = context.shape
    N = target_valid.shape[1]
    noise = torch.randn(B, N, D, generator=generator, dtype=torch.float64)
    x = torch.cat([context.double(), noise], dim=1)
    is_target = (torch.arange(C + N) >= C).expand(B, -1)
    valid = torch.cat([context_valid, target_valid], dim=1)
    grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist()
    for t0, t1 in zip(grid[:-1], grid[1:]):
        times = torch.full((B,), t0, dtype=net_dtype)
        v = dit(x.to(net_dtype), times, is_target, valid).double()[:, C:]
        if scale != 1.0:
            xt = x[:, C:]
            v_u = dit(xt.to(net_dtype), times, is_target[:, C:], target_valid).double()
            v = v_u + scale * (v - v_u)
        x = torch.cat([x[:, :C], x[:, C:] + (t1 - t0) * v], dim=1)
    return x[:, C:]


def test_an_empty_prompt_is_the_dropped_context_path():
    """Training drops a context by marking it padding; sampling from an empty prompt gives the
    same velocities, so an unconditional sample is what classifier-free guidance trained."""
    dit = perturbed_dit()
    context, _, target_valid = context_batch()
    dropped = torch.zeros(context.shape[:2], dtype=torch.bool)
    runs = [sampling.sample_flow(dit, c, v, target_valid, steps=3, cfg_scale=1.0,
                               generator=torch.Generator().manual_seed(0))
            for c, v in ((context, dropped), (context[:, :0], dropped[:, :0]))]
    assert torch.allclose(runs[0], runs[1], atol=1e-6)


def test_cfg_scale_one_is_the_conditional_model():
    dit = perturbed_dit()
    context, context_valid, target_valid = context_batch()
    run = lambda **kw: sampling.sample_flow(dit, context, context_valid, target_valid, steps=8,
                                          generator=torch.Generator().manual_seed(5), **kw)
    ours = run(cfg_scale=1.0)
    manual = manual_euler(dit, context, context_valid, target_valid, 8, torch.Generator().manual_seed(5))
    assert ours.dtype == torch.float64 and ours.shape == (3, 4, 4)
    assert torch.allclose(ours, manual, atol=1e-6)
    # guidance outside its interval is no guidance
    assert torch.allclose(run(cfg_scale=7.0, guidance_interval=(2.0, 3.0)), ours, atol=1e-12)
    # with guidance the context matters: the samples differ from the conditional model's
    guided = run(cfg_scale=4.0)
    assert (guided - ours)[:2].abs().max() > 1e-2
    # row 2 has no context: conditional and unconditional coincide, guidance changes nothing
    assert torch.allclose(guided[2], ours[2], atol=1e-5)


def test_cfg_combines_conditional_and_unconditional_like_training():
    """v = v_u + s (v_c - v_u), with v_u the DiT on the target alone (fp64, tight)."""
    dit = perturbed_dit(dtype=torch.float64)
    context, context_valid, target_valid = context_batch()
    ours = sampling.sample_flow(dit, context, context_valid, target_valid, steps=6, cfg_scale=3.0,
                              generator=torch.Generator().manual_seed(7), net_dtype=torch.float64)
    manual = manual_euler(dit, context, context_valid, target_valid, 6, torch.Generator().manual_seed(7),
                          scale=3.0, net_dtype=torch.float64)
    assert torch.allclose(ours, manual, atol=1e-8)


def test_many_euler_steps_agree_with_heun():
    dit = perturbed_dit(dtype=torch.float64, scale=0.1)
    with torch.no_grad():   # randomised weights make v oscillate in t (features up to 1000 t): keep it smooth
        half = dit.t_embedder.frequency_dim // 2
        freqs = 1000 * torch.exp(-math.log(10000) * torch.arange(half) / half)
        dit.t_embedder.mlp[0].weight[:, torch.cat([freqs, freqs]) > 4] = 0
    context, context_valid, target_valid = context_batch(B=2)
    run = lambda steps, solver: sampling.sample_flow(
        dit, context, context_valid, target_valid, steps=steps, solver=solver, cfg_scale=1.0,
        generator=torch.Generator().manual_seed(3), net_dtype=torch.float64)
    heun = run(40, 'heun')
    err = lambda a: (a - heun).abs().max().item()
    assert err(run(400, 'euler')) < 5e-3
    assert err(run(3, 'euler')) > 4 * err(run(400, 'euler'))   # the field is curved enough to tell
    assert (run(80, 'heun') - heun).abs().max() < err(run(400, 'euler'))   # Heun is 2nd order


def test_time_grids():
    for steps in (1, 2, 7, 50):
        for kind in ('uniform', 'logit_normal'):
            g = sampling.make_time_grid(steps, kind, std=1.5)
            assert g.dtype == torch.float64 and g.shape == (steps + 1,)
            assert g[0] == 0 and g[-1] == 1 and (g[1:] > g[:-1]).all()
    g = sampling.make_time_grid(10, 'logit_normal', std=1.5)
    assert torch.allclose(g + g.flip(0), torch.ones(11, dtype=torch.float64))   # symmetric around 0.5
    assert g[5] == 0.5
    # the inner points are the quantiles i/steps of sigmoid(N(0, std^2)), the training distribution
    normal = torch.distributions.Normal(0.0, 1.5)
    assert torch.allclose(normal.cdf(torch.logit(g[1:-1]).float()), torch.arange(1, 10) / 10, atol=1e-5)
    assert torch.allclose(sampling.make_time_grid(4), torch.tensor([0, 0.25, 0.5, 0.75, 1], dtype=torch.float64))
    with pytest.raises(ValueError):
        sampling.make_time_grid(4, 'cosine')


# -----------------------------------------------------------------------------
# train_dit.py's pieces (its functions live in a script with top-level code)

def test_pack_puts_context_then_target():
    pack = script_function('train_dit.py', 'pack', {'torch': torch})
    B, W, D = 4, 6, 2
    context = torch.arange(B * W * D, dtype=torch.float32).view(B, W, D)
    target = -1 - torch.arange(B * W * D, dtype=torch.float32).view(B, W, D)
    cut = torch.tensor([0, 2, 5, 6])
    packed, is_target = pack(context, target, cut)
    assert packed.shape == (B, W, D)
    for b, c in enumerate(cut.tolist()):
        assert torch.equal(packed[b], torch.cat([context[b, :c], target[b, :W - c]]))
        assert is_target[b].tolist() == [i >= c for i in range(W)]


class WindowStub:
    """data.windows() of train_dit.py: token i of every row is i (so a shift is visible)."""
    class vocab:
        eot = -1

    @staticmethod
    def windows(split, batch_size, length, rng):
        return np.tile(np.arange(length), (batch_size, 1))


def dit_batch_fn(**keys):
    ns = dict(np=np, torch=torch, data=WindowStub, batch_size=8, block_size=64, truncate_prob=0.5,
              context_min=0.0, context_max=0.75, cfg_dropout=0.1)
    return script_function('train_dit.py', 'batch_fn', {**ns, **keys})


def test_training_batches_of_every_length_and_never_padded():
    """Evaluation continues prompts of every length by continuations of every length (LM1B
    sentences are ~30 tokens): the DiT trains on windows cut short as well as full ones, a whole
    micro-batch at a time, and a tenth of the micro-batches without context; no packed row
    (context then target) has padding, so the DiT's attention needs no mask."""
    fn, rng = dit_batch_fn(batch_size=8), np.random.default_rng(0)
    widths, dropped = [], 0
    for _ in range(2000):
        context, context_valid, target, target_valid, cut = fn('train', rng)
        width = context.shape[1]
        widths.append(width)
        assert (cut + target_valid.sum(1) == width).all() and (target_valid.sum(1) >= 1).all()
        assert (context_valid.sum(1) == cut).all() and (cut <= 0.75 * width).all()
        dropped += bool((cut == 0).all())
        b, c = 0, int(cut[0])   # the context is the window's start, the target what follows it
        assert context[b, :c].tolist() == list(range(c)) and (context[b, c:] == -1).all()
        assert target[b, :width - c].tolist() == list(range(c, width)) and (target[b, width - c:] == -1).all()
    widths = np.array(widths)
    assert set(widths) == set(range(1, 65)) and 0.4 < (widths == 64).mean() < 0.55   # 1: a dropped 2-token window
    assert 0.08 < dropped / 2000 < 0.14   # cfg_dropout=0.1 (plus the odd batch whose every cut is 0)
    # without truncation, unconditional targets still come in every length a continuation has
    fn = dit_batch_fn(truncate_prob=0.0, cfg_dropout=1.0)
    assert {fn('train', rng)[0].shape[1] for _ in range(500)} == set(range(16, 65))
    # truncate_prob=0 draws nothing for it: full windows, then the cut points
    full = dit_batch_fn(truncate_prob=0.0, cfg_dropout=0.0, batch_size=8)('train', np.random.default_rng(1))
    rng = np.random.default_rng(1)
    rng.random()   # the context-drop draw
    assert full[0].shape == (8, 64) and full[4].tolist() == rng.integers(0, 48 + 1, size=8).tolist()


def test_textldm_training_attention_is_never_masked(monkeypatch):
    """The DiT's attention in a training step gets no mask (SDPA may pick its flash kernel); the
    frozen VAE's encoding of the contexts, which do differ in length, does."""
    import latent_space
    import model
    import tokenization
    from model import TextVAE
    class Data(WindowStub):
        vocab = tokenization.Vocab()   # GPT-2's ids; the windows hold ids 0..15
    names = dict(np=np, torch=torch, nn=torch.nn, data=Data, batch_size=4, block_size=16,
                 truncate_prob=0.5, context_min=0.0, context_max=0.75, cfg_dropout=0.5,
                 timestep_sampling='uniform', logit_normal_std=1.0, flow_matching_loss=flow_matching_loss)
    for name in ('batch_fn', 'pack', 'sample_timesteps', 'FlowMatchingObjective'):
        script_function('train_dit.py', name, names)
    torch.manual_seed(0)
    vae = TextVAE(make_config('vae', 'tiny', block_size=16, latent_dim=4, n_embd=32, n_head=2))
    space = latent_space.LatentSpace(vae.eval(), torch.zeros(4), torch.ones(4), Data.vocab)
    dit = DiT(make_config('dit', 'tiny', latent_dim=4, block_size=16, n_layer=2, n_head=2, n_embd=32))
    objective = names['FlowMatchingObjective'](dit, space)
    masks, sdpa = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(model.F, 'scaled_dot_product_attention',
                        lambda *a, **kw: masks.append(kw.get('attn_mask')) or sdpa(*a, **kw))
    rng = np.random.default_rng(0)
    for _ in range(6):
        masks.clear()
        objective(*names['batch_fn']('train', rng))[0].backward()
        n_vae = 2 * vae.config.n_enc_layer   # contexts and targets are encoded apart
        assert len(masks) == n_vae + dit.config.n_layer and all(m is None for m in masks[n_vae:])


def test_flow_matching_loss_ignores_the_padding_of_a_short_window():
    """A row of n tokens padded to W scores what the same row of n tokens alone scores."""
    dit = perturbed_dit(latent_dim=4)
    torch.manual_seed(3)
    x, noise = torch.randn(1, 12, 4), torch.randn(1, 12, 4)
    is_target = torch.arange(12)[None, :] >= 5
    valid = torch.arange(12)[None, :] < 9                # 5 context, 4 target tokens, 3 padding
    t = torch.tensor([0.3])
    padded = flow_matching_loss(dit, x, t, is_target, valid, noise)
    alone = flow_matching_loss(dit, x[:, :9], t, is_target[:, :9], valid[:, :9], noise[:, :9])
    assert padded.item() == pytest.approx(alone.item(), rel=1e-5)
    x2 = x.clone()
    x2[:, 9:] += 100.0                                   # what the padding holds does not matter
    assert flow_matching_loss(dit, x2, t, is_target, valid, noise).item() == pytest.approx(padded.item(), rel=1e-5)


def test_training_timesteps_follow_the_logit_normal():
    ns = {'torch': torch, 'timestep_sampling': 'logit_normal', 'logit_normal_std': 1.5, 'logit_normal_mean': 0.0}
    sample_timesteps = script_function('train_dit.py', 'sample_timesteps', ns)
    torch.manual_seed(0)
    t = sample_timesteps(20000, 'cpu')
    assert ((t > 0) & (t < 1)).all()
    assert abs(torch.logit(t.double()).std().item() - 1.5) < 0.05
    assert abs(torch.logit(t.double()).mean().item()) < 0.05
    ns['logit_normal_mean'] = -0.5                       # a time shift towards the noise
    shifted = torch.logit(sample_timesteps(20000, 'cpu').double())
    assert abs(shifted.mean().item() + 0.5) < 0.05 and abs(shifted.std().item() - 1.5) < 0.05
    ns['timestep_sampling'] = 'uniform'
    u = sample_timesteps(20000, 'cpu')
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.std().item() - 12 ** -0.5) < 0.01


# -----------------------------------------------------------------------------
# The tiny end-to-end pipeline on the embedded corpus, built once

TINY = ['config/tiny.py', '--block_size=32', '--batch_size=4', '--eval_iters=2', '--log_interval=3']
PROMPT = 'Mia was a clever girl who had 2 coins.'


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp('dit_pipeline')
    data_dir = write_data_dir(str(root / 'data'), n_stories=200)
    out_dir = str(root / 'out')
    common_args = TINY + [f'--data_dir={data_dir}', f'--out_dir={out_dir}', '--max_iters=6', '--eval_interval=3']
    run_script('train_gpt.py', *common_args)
    assert os.path.isfile(os.path.join(out_dir, 'gpt_hf', 'config.json'))
    vae = run_script('train_vae.py', *common_args)   # REPA on: the teacher is out_dir/gpt_hf; compact vocab
    assert 'REPA teacher' in vae.stdout and 'val_repa' in vae.stdout
    # v-prediction here: after 6 iterations an x-prediction DiT lands on its own (input-blind)
    # output whatever the noise, so seeds could not be told apart (x is tested on its own below)
    run_script('train_dit.py', *common_args, '--prediction=v')
    return dict(root=root, data_dir=data_dir, out_dir=out_dir)


def run_sample(p, *args, check=True):
    return run_script('sample.py', 'config/tiny.py', f"--out_dir={p['out_dir']}", f"--data_dir={p['data_dir']}",
                      '--num_samples=2', '--max_new_tokens=8', '--steps=4', *args, check=check)


def sample_records(p, name, *args):
    path = str(p['root'] / f'{name}.jsonl')
    result = run_sample(p, f'--out={path}', *args)
    with open(path) as f:
        records = [json.loads(line) for line in f]
    return records, result


def test_end_to_end_train_and_sample(pipeline):
    p = pipeline
    for stage, key in (('gpt', 'val_loss'), ('vae', 'val_recon_acc'), ('dit', 'val_loss')):
        metrics = read_metrics(os.path.join(p['out_dir'], f'{stage}_metrics.jsonl'))
        assert metrics[-1]['iter'] == 6 and math.isfinite(metrics[-1][key])
    dit_ckpt = load_ckpt(os.path.join(p['out_dir'], 'dit.pt'))
    assert dit_ckpt['model_args']['vocab_ids'] is not None   # the VAE's compact vocabulary travels along

    first, result = sample_records(p, 'seed1a', f'--prompt={PROMPT}', '--seed=1')
    assert len(first) == 2 and PROMPT in result.stdout
    for r in first:
        assert r['prompt'] == PROMPT and isinstance(r['continuation'], str) and r['model'] == 'textldm'
        assert '<|endoftext|>' not in r['continuation']
    again, _ = sample_records(p, 'seed1b', f'--prompt={PROMPT}', '--seed=1')
    assert again == first                                        # same seed, same text
    other, _ = sample_records(p, 'seed2', f'--prompt={PROMPT}', '--seed=2')
    assert [r['continuation'] for r in other] != [r['continuation'] for r in first]

    gpt, _ = sample_records(p, 'gpt', '--model=gpt', f'--prompt={PROMPT}', '--top_k=20')
    assert len(gpt) == 2 and all(r['model'] == 'gpt' and r['prompt'] == PROMPT for r in gpt)

    uncond, _ = sample_records(p, 'uncond', '--prompt=', '--solver=heun', '--renoise=0.0', '--time_grid=logit_normal')
    assert len(uncond) == 2 and all(r['prompt'] == '' for r in uncond)


def test_dit_initial_weights_come_from_the_seed_then_the_vae(pipeline, tmp_path):
    """train_dit.py seeds, builds the VAE (its initialisation draws from torch's RNG), then the
    DiT: the order every measured run used. Moving the seeding after the VAE once changed every
    DiT's initial weights, and with them the quick start's numbers."""
    import dataclasses
    import latent_space
    import training
    from model import DiTConfig
    run_script('train_dit.py', *TINY, f"--data_dir={pipeline['data_dir']}", f'--out_dir={tmp_path}',
               f"--vae_path={pipeline['out_dir']}/vae.pt", '--max_iters=0', '--prediction=v')
    saved = load_ckpt(tmp_path / 'dit.pt')
    training.seed_everything(1337)   # config/tiny.py's seed, rank 0
    latent_space.LatentSpace.load(saved['model_args']['vae_path'])
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    dit = DiT(DiTConfig(**{k: v for k, v in saved['model_args'].items() if k in fields}))
    assert all(torch.equal(v, saved['model']['dit.' + k]) for k, v in dit.state_dict().items())


def test_resume_is_exact_including_ema(pipeline):
    p = pipeline
    args = TINY + [f"--data_dir={p['data_dir']}", f"--vae_path={p['out_dir']}/vae.pt", '--eval_interval=10',
                   '--ema_decay=0.9']
    straight, stopped = str(p['root'] / 'dit_straight'), str(p['root'] / 'dit_resumed')
    run_script('train_dit.py', *args, f'--out_dir={straight}', '--max_iters=20')
    first = run_script('train_dit.py', *args, f'--out_dir={stopped}', '--max_iters=10')
    resumed = run_script('train_dit.py', *args, f'--out_dir={stopped}', '--max_iters=20', '--init_from=resume')
    assert 'resumed' in resumed.stdout
    counted = lambda out: [line for line in out.splitlines() if 'GFLOP an iteration of full windows' in line]
    assert len(counted(resumed.stdout)) == 1 and counted(resumed.stdout) == counted(first.stdout)
    a, b = (read_metrics(os.path.join(d, 'dit_metrics.jsonl')) for d in (straight, stopped))
    assert a[-1]['iter'] == 20 and a == b
    ca, cb = (load_ckpt(os.path.join(d, 'dit.pt')) for d in (straight, stopped))
    assert ca['iter_num'] == cb['iter_num'] == 20
    for key in ('model', 'ema'):
        assert ca[key].keys() == cb[key].keys()
        assert all(torch.equal(ca[key][k], cb[key][k]) for k in ca[key])
    # the EMA is a separate average, not a copy of the weights
    assert any(not torch.equal(ca['ema'][k], ca['model']['dit.' + k]) for k in ca['ema'])


# -----------------------------------------------------------------------------
# Clear errors. Errors raised before any work are checked in this process (the scripts raise
# SystemExit with a message: exit status 1, no traceback), one of them also as a subprocess.

def script_error(monkeypatch, script, *argv):
    """Run a stage script in this process with fresh defaults; return the SystemExit message."""
    monkeypatch.setattr(sys, 'argv', [script, *argv])
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
    message = excinfo.value.code
    assert isinstance(message, str) and message, f"{script} should exit with a message, got {message!r}"
    return message


def sample_error(monkeypatch, p, *argv):
    return script_error(monkeypatch, 'sample.py', 'config/tiny.py', f"--out_dir={p['out_dir']}",
                        f"--data_dir={p['data_dir']}", '--num_samples=2', '--max_new_tokens=8', '--steps=4', *argv)


def test_dit_paired_with_vae_of_another_latent_size(pipeline, monkeypatch):
    p = pipeline
    other = str(p['root'] / 'vae4')
    run_script('train_vae.py', *TINY, f"--data_dir={p['data_dir']}", f'--out_dir={other}', '--latent_dim=4',
               '--repa_teacher=None', '--max_iters=1')
    # sampling: the pipeline's 8-channel DiT (config/tiny.py) whose checkpoint names the 4-channel VAE
    ckpt = load_ckpt(os.path.join(p['out_dir'], 'dit.pt'))
    assert ckpt['model_args']['latent_dim'] == 8
    ckpt['model_args']['vae_path'] = os.path.join(other, 'vae.pt')
    torch.save(ckpt, os.path.join(other, 'dit.pt'))
    message = sample_error(monkeypatch, p, f"--dit_path={other}/dit.pt", f'--prompt={PROMPT}')
    assert 'trained on 8-channel latents' in message and 'makes 4' in message
    # training: resuming the 8-channel DiT on the 4-channel VAE
    shutil.copy(os.path.join(p['out_dir'], 'dit.pt'), os.path.join(other, 'dit.pt'))
    message = script_error(monkeypatch, 'train_dit.py', *TINY, f"--data_dir={p['data_dir']}", f'--out_dir={other}',
                           '--init_from=resume', '--max_iters=8')
    assert 'trained on the 8-channel latents' in message and 'makes 4 channels' in message


def test_x_prediction_trains_and_samples(pipeline):
    """config/tiny.py's prediction='x' and self_cond=True, end to end: the checkpoint records
    them, sampling reads them (the pipeline's DiT is v-prediction with self_cond)."""
    p = pipeline
    out = str(p['root'] / 'xpred')
    run_script('train_dit.py', *TINY, f"--data_dir={p['data_dir']}", f'--out_dir={out}', '--max_iters=2',
               '--eval_interval=2', f"--vae_path={p['out_dir']}/vae.pt")
    model_args = load_ckpt(os.path.join(out, 'dit.pt'))['model_args']
    assert model_args['prediction'] == 'x' and model_args['self_cond']
    runs = [sample_records(p, f'x{i}', f'--dit_path={out}/dit.pt', f'--prompt={PROMPT}', '--seed=3')[0]
            for i in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_missing_vae(pipeline, monkeypatch):
    p = pipeline
    missing = str(p['root'] / 'nonexistent' / 'vae.pt')
    message = script_error(monkeypatch, 'train_dit.py', *TINY, f"--data_dir={p['data_dir']}",
                           f"--out_dir={p['root'] / 'nv'}", f'--vae_path={missing}', '--max_iters=2')
    assert missing in message and 'not found' in message
    assert not os.path.exists(p['root'] / 'nv' / 'dit.pt')
    # a DiT whose VAE has gone
    ckpt = load_ckpt(os.path.join(p['out_dir'], 'dit.pt'))
    ckpt['model_args']['vae_path'] = missing
    torch.save(ckpt, str(p['root'] / 'orphan_dit.pt'))
    message = sample_error(monkeypatch, p, f"--dit_path={p['root'] / 'orphan_dit.pt'}")
    assert missing in message and 'not found' in message


@pytest.mark.parametrize('model', ['textldm', 'gpt'])
def test_prompt_longer_than_context(pipeline, monkeypatch, model):
    long_prompt = ' '.join([PROMPT] * 6)   # ~60 tokens; the models hold 32
    message = sample_error(monkeypatch, pipeline, f'--model={model}', f'--prompt={long_prompt}')
    assert 'exceeds' in message and 'context of 32 tokens' in message


@pytest.mark.parametrize('arg, key', [('--solver=rk4', 'solver'), ('--model=bert', 'model'),
                                      ('--time_grid=cosine', 'time_grid'), ('--ode_dtype=float16x', 'ode_dtype'),
                                      ('--renoise=1.5', 'renoise'), ('--renoise=0.5 --solver=heun', 'renoise'),
                                      ('--top_p=0.0', 'top_p'), ('--temperature=-1.0', 'temperature')])
def test_bad_sampler_options(pipeline, monkeypatch, arg, key):
    message = sample_error(monkeypatch, pipeline, *arg.split(), '--prompt=')
    assert message.startswith('config error') and key in message


def test_bad_option_exits_nonzero_without_traceback(pipeline):
    result = run_sample(pipeline, '--solver=rk4', check=False)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr and "config error: solver='rk4'" in result.stderr
