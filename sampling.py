"""
Continuing prompts, the library sample.py and eval.py share. TextLDM: encode the prompt with
the VAE, draw Gaussian noise for the whole continuation, integrate the flow ODE from t = 0
(noise) to t = 1 (data) with the DiT's velocity (Euler or Heun, classifier-free guidance; or
stochastic Euler steps, renoise > 0), then decode every token in parallel with the VAE and cut
at the first <|endoftext|>. The number of network evaluations does not grow with the length.
The GPT baseline: its KV-cached sampler. The block-causal (Cola) sampler is in cola.py.
"""
import torch

import configurator
import latent_space
import tokenization
import training
from model import clean_estimate


# The sampler's settings: the keys sample.py and eval.py both take (in a config file, `sample_steps`
# or `eval_steps` sets one script's; `steps`, both).
SAMPLER = dict(
    steps=50,                 # ODE steps
    steps_per_block=16,       # Cola (a DiT trained with latent_block > 0): ODE steps for each block
    solver='euler',           # 'euler' or 'heun'
    cfg_scale=7.0,            # classifier-free guidance; 1 = the conditional model alone
    guidance_min_t=0.0,       # guidance only for t in [guidance_min_t, guidance_max_t]
    guidance_max_t=1.0,
    time_grid='uniform',      # 'uniform' or 'logit_normal' (the training distribution's quantiles)
    logit_normal_std=1.5,
    ode_dtype='float64',      # the ODE state and its updates; the network runs in the script's `dtype`
    renoise=0.0,              # Euler only: share of the noise re-drawn at each step (0 = the ODE, 1 = all)
    temperature=1.0,          # autoregressive models (GPT, hf:): plain ancestral sampling by default
    top_k=0,                  # 0 = off
    top_p=1.0,                # 1 = off
)


# -----------------------------------------------------------------------------
# The flow ODE

def make_time_grid(steps, kind='uniform', std=1.5):
    """steps + 1 times from 0 (noise) to 1 (data), fp64. 'logit_normal' spaces them like the
    quantiles of the training distribution, so steps are dense where training put its weight."""
    if kind == 'uniform':
        return torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == 'logit_normal':
        inner = torch.sigmoid(std * torch.special.ndtri(torch.arange(1, steps, dtype=torch.float64) / steps))
        return torch.cat([torch.zeros(1, dtype=torch.float64), inner, torch.ones(1, dtype=torch.float64)])
    raise ValueError(f"time grid {kind!r}: 'uniform' or 'logit_normal'")


def guided_velocity(dit, x, t, is_target, valid, unconditional_valid, scale, net_dtype, x_self=None):
    """The DiT's velocity at scalar time t for the target positions; with scale != 1 the
    conditional and unconditional (no context) passes run as one batch and are combined:
    v = v_uncond + scale * (v_cond - v_uncond). x_self: (B, ...) or, with scale != 1, (2B, ...)
    previous clean estimates of the conditional (then unconditional) pass, for a self_cond DiT.
    Returns the velocity and the raw velocities of the passes run (B or 2B rows)."""
    B = x.shape[0]
    guided = scale != 1.0
    if guided:
        x = torch.cat([x, x])
        is_target, valid = torch.cat([is_target, is_target]), torch.cat([valid, unconditional_valid])
    times = torch.full((x.shape[0],), float(t), dtype=net_dtype, device=x.device)
    extra = {} if x_self is None else dict(x_self=x_self.to(net_dtype))
    v = dit(x.to(net_dtype), times, is_target, valid, **extra).to(x.dtype)
    return (v[B:] + scale * (v[:B] - v[B:]) if guided else v), v


@torch.no_grad()
def sample_flow(dit, context, context_valid, target_valid, steps=50, solver='euler', cfg_scale=7.0,
                guidance_interval=(0.0, 1.0), grid='uniform', std=1.5, ode_dtype=torch.float64,
                generator=None, net_dtype=torch.float32, renoise=0.0):
    """Integrate the ODE for the target latents. context: (B, C, D) normalised clean latents
    (C may be 0) with context_valid (B, C); target_valid (B, N). Returns (B, N, D) latents.
    A self_cond DiT gets, at every evaluation, each pass's own previous clean estimate (zeros at
    the first), as in training. renoise > 0: stochastic steps (see integrate)."""
    B, C, D = context.shape
    N = target_valid.shape[1]
    noise = torch.randn(B, N, D, generator=generator, device=context.device, dtype=torch.float64)
    context = context.to(ode_dtype)   # the ODE state is the target; the context stays clean
    is_target = torch.arange(C + N, device=context.device).expand(B, -1) >= C
    valid = torch.cat([context_valid, target_valid], dim=1)
    unconditional_valid = valid & is_target
    times = make_time_grid(steps, grid, std)
    self_cond = getattr(getattr(dit, 'config', None), 'self_cond', False)
    estimate = torch.zeros(2 * B, C + N, D, dtype=ode_dtype, device=context.device)  # conditional, unconditional

    def velocity(x, t):
        scale = cfg_scale if guidance_interval[0] <= t <= guidance_interval[1] else 1.0
        passes = 2 * B if scale != 1.0 else B
        x = torch.cat([context, x], dim=1)
        v, raw = guided_velocity(dit, x, t, is_target, valid, unconditional_valid, scale, net_dtype,
                                 estimate[:passes] if self_cond else None)
        if self_cond:
            x_passes = x.repeat(passes // B, 1, 1)
            new = clean_estimate(x_passes, torch.full_like(x_passes[..., 0], t), raw)
            estimate[:passes, C:] = new[:, C:]   # none for the (clean) context
        return v[:, C:]

    return integrate(velocity, noise.to(ode_dtype), times, solver, renoise, generator)


def integrate(velocity, x, times, solver='euler', renoise=0.0, generator=None):
    """Integrate dx/dt = velocity(x, t) over the time grid `times` (fp64, 0 -> 1).
    renoise > 0 (Euler only): stochastic steps. On the straight path x_t = t x1 + (1 - t) x0 the
    velocity gives both estimates, x1 = x_t + (1 - t) v and x0 = x_t - t v, and an Euler step is
    exactly x' = t' x1 + (1 - t') x0. A stochastic step swaps that share of x0 for fresh noise z:
    x' = t' x1 + (1 - t') (sqrt(1 - renoise^2) x0 + renoise z). renoise = 1 re-noises the clean
    estimate at every step, so each step can revise what the last one chose; it concentrates the
    samples (a lower temperature), unlike the ODE, which keeps the data's spread."""
    for t0, t1 in zip(times[:-1].tolist(), times[1:].tolist()):
        v0 = velocity(x, t0)
        if solver == 'heun':
            v1 = velocity(x + (t1 - t0) * v0, t1)
            x = x + (t1 - t0) * 0.5 * (v0 + v1)
        elif renoise > 0:
            x1, x0 = x + (1 - t0) * v0, x - t0 * v0
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64).to(x.dtype)
            x = t1 * x1 + (1 - t1) * ((1 - renoise ** 2) ** 0.5 * x0 + renoise * z)
        else:
            x = x + (t1 - t0) * v0
    return x


# -----------------------------------------------------------------------------
# TextLDM and GPT continuations, from token ids to token ids

def pad_rows(rows, pad, device, left=False):
    """list of id lists -> (B, max_len) long tensor padded with `pad`, and its valid mask. Padded
    on the right, or on the left: then every row ends in the last column, where a GPT continues."""
    width = max([len(r) for r in rows] + [0])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        where = slice(width - len(r), width) if left else slice(0, len(r))
        ids[b, where], valid[b, where] = torch.as_tensor(r, dtype=torch.long), True
    return ids.to(device), valid.to(device)


def end_of_text(ids, eot):
    """(tokens before the first eot, whether there was one): every sample is cut there."""
    ids = list(ids)
    return (ids[:ids.index(eot)], True) if eot in ids else (ids, False)


def textldm_continue(dit, space, prompts, lengths, generator=None, **flow):
    """Continue each prompt (a list of model ids, may be empty) by lengths[i] tokens."""
    device = space.mean.device
    context_ids, context_valid = pad_rows(prompts, space.vocab.eot, device)
    context = (space.encode(context_ids, context_valid) if context_ids.shape[1]
               else torch.zeros(len(prompts), 0, space.latent_dim, device=device))
    _, target_valid = pad_rows([[0] * n for n in lengths], 0, device)
    net_dtype = next(dit.parameters()).dtype
    latents = sample_flow(dit, context, context_valid, target_valid, generator=generator,
                          net_dtype=net_dtype, **flow)
    ids = space.decode(latents, target_valid).cpu()
    return [end_of_text(row[:n].tolist(), space.vocab.eot)[0] for row, n in zip(ids, lengths)]


def continuation(dit, cfg):
    """How this DiT continues prompts, and with which keywords (from cfg, a config holding the
    sampler's keys): all tokens at once (TextLDM), or block by block, steps_per_block ODE steps
    each, if it was trained block-causally (cola.py). Either function takes
    (dit, space, prompts, lengths, generator=..., **flow)."""
    flow = flow_options(cfg)
    if not dit.config.latent_block:
        return textldm_continue, flow
    from cola import cola_continue   # cola.py builds on this file
    return cola_continue, dict(flow, steps=cfg['steps_per_block'])


def gpt_continue(gpt, vocab, prompts, lengths, generator=None, temperature=1.0, top_k=0, top_p=1.0):
    """Continue each prompt (model ids) by lengths[i] tokens with the GPT's KV-cached sampler, all
    in one batch: the prompts left-padded, max(lengths) tokens sampled, each row cut to its own
    length (so a row needs only its own prompt + length within the context), then at its first
    <|endoftext|>. An empty prompt starts after an <|endoftext|>, i.e.
    at the beginning of a document."""
    if not prompts:
        return []
    device = next(gpt.parameters()).device
    idx, valid = pad_rows([list(p) or [vocab.eot] for p in prompts], vocab.eot, device, left=True)
    rows = gpt.generate(idx, list(lengths), temperature=temperature, top_k=top_k or None,
                        top_p=top_p if top_p < 1 else None, generator=generator,
                        valid=None if valid.all() else valid)[:, idx.shape[1]:]   # unpadded: the fast path
    return [end_of_text(row[:n].tolist(), vocab.eot)[0] for row, n in zip(rows.cpu(), lengths)]


def load_textldm(dit_path, device):
    """(EMA DiT, LatentSpace, the DiT's checkpoint) with the checks that a DiT and its VAE belong
    together, made on the CPU before either is moved to `device`."""
    dit, _, ckpt = training.load_model(dit_path, 'dit', ema=True)
    vae_path = ckpt['model_args']['vae_path']
    space = latent_space.LatentSpace.load(vae_path)
    if dit.config.latent_dim != space.latent_dim:
        raise SystemExit(f"the DiT in {dit_path} was trained on {dit.config.latent_dim}-channel latents, "
                         f"the VAE {vae_path} makes {space.latent_dim}")
    tokenization.Vocab.of(ckpt['model_args'], dit_path).check_same(
        space.vocab, f"the DiT in {dit_path}", f"the VAE now at {vae_path}")
    return dit.to(device), space.to(device), ckpt


def flow_options(cfg):
    """sample_flow's keywords from a config holding the sampler's keys (sample.py's and eval.py's),
    checked before any work."""
    solver, time_grid, ode_dtype, renoise = cfg['solver'], cfg['time_grid'], cfg['ode_dtype'], cfg['renoise']
    if solver not in ('euler', 'heun'):
        raise configurator.ConfigError(f"solver={solver!r}: 'euler' or 'heun'")
    if time_grid not in ('uniform', 'logit_normal'):
        raise configurator.ConfigError(f"time_grid={time_grid!r}: 'uniform' or 'logit_normal'")
    if ode_dtype not in ('float32', 'float64'):
        raise configurator.ConfigError(f"ode_dtype={ode_dtype!r}: 'float32' or 'float64'")
    if not 0 <= renoise <= 1 or (renoise and solver != 'euler'):
        raise configurator.ConfigError(f"renoise={renoise}: stochastic steps take 0 <= renoise <= 1, with solver='euler'")
    return dict(steps=cfg['steps'], solver=solver, cfg_scale=cfg['cfg_scale'], grid=time_grid,
                std=cfg['logit_normal_std'], guidance_interval=(cfg['guidance_min_t'], cfg['guidance_max_t']),
                ode_dtype=getattr(torch, ode_dtype), renoise=renoise)


def autoregressive_options(cfg):
    """gpt_continue's keywords (temperature, top_k, top_p) from a config holding the sampler's keys, checked."""
    temperature, top_k, top_p = cfg['temperature'], cfg['top_k'], cfg['top_p']
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise configurator.ConfigError(f"temperature={temperature}, top_k={top_k}, top_p={top_p}: "
                                       f"temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), 0 < top_p <= 1 (1 = off)")
    return dict(temperature=temperature, top_k=top_k, top_p=top_p)
