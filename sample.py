"""
Continue a prompt (or generate from nothing) with TextLDM or with the GPT baseline.

TextLDM: encode the prompt with the VAE, draw Gaussian noise for the whole continuation,
integrate the flow ODE from t = 0 (noise) to t = 1 (data) with the DiT's velocity (Euler or
Heun, classifier-free guidance; or stochastic Euler steps, renoise > 0), then decode every token
in parallel with the VAE and cut at the first <|endoftext|>. The number of network evaluations
does not grow with the length.

    python sample.py config/tiny.py --prompt="Mia had 3 apples." --num_samples=4
    python sample.py config/tiny.py --model=gpt --prompt="FILE:prompt.txt" --out=samples.jsonl
"""
import json
import os
import time

import torch

import common
from model import DiTCache, block_causal_mask, clean_estimate

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `sample_key` in a config file is ours alone)
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False
seed = 1337
model = 'textldm'          # 'textldm' or 'gpt'
prompt = ''                # text, 'FILE:path' to read it from a file, or '' for unconditional
num_samples = 4
max_new_tokens = 64
out = ''                   # a .jsonl file for {prompt, continuation, ...} records ('' = none)
dit_path = '{out_dir}/dit.pt'
gpt_path = '{out_dir}/gpt.pt'
steps = 50                 # ODE steps
steps_per_block = 16       # Cola (a DiT trained with latent_block > 0): ODE steps for each block
solver = 'euler'           # 'euler' or 'heun'
cfg_scale = 7.0            # classifier-free guidance; 1 = the conditional model alone
guidance_min_t = 0.0       # guidance only for t in [guidance_min_t, guidance_max_t]
guidance_max_t = 1.0
time_grid = 'uniform'      # 'uniform' or 'logit_normal' (the training distribution's quantiles)
logit_normal_std = 1.5
ode_dtype = 'float64'      # the ODE state and its updates; the network runs in `dtype`
renoise = 0.0              # Euler only: share of the noise re-drawn at each step (0 = the ODE, 1 = all)
temperature = 1.0          # GPT sampling
top_k = 0                  # 0 = off
top_p = 1.0                # 1 = off
# -----------------------------------------------------------------------------


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
    times = torch.where(is_target, torch.full_like(x[..., 0], float(t)), torch.ones_like(x[..., 0]))
    guided = scale != 1.0
    if guided:
        x, times = torch.cat([x, x]), torch.cat([times, times])
        is_target, valid = torch.cat([is_target, is_target]), torch.cat([valid, unconditional_valid])
    extra = {} if x_self is None else dict(x_self=x_self.to(net_dtype))
    v = dit(x.to(net_dtype), times.to(net_dtype), is_target, valid, **extra).to(x.dtype)
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
# Cola: block-by-block generation with a block-causal DiT (trained with latent_block > 0)

class CachedPrefix:
    """The clean tokens one guidance pass is conditioned on, kept as the DiT's key/value cache:
    the prompt, then each finished block, committed once; denoising steps only read it."""

    def __init__(self, dit, context, context_valid, net_dtype):
        self.dit, self.net_dtype = dit, net_dtype
        self.cache = DiTCache(dit.config.n_layer)
        if context.shape[1]:
            self._run(context, 1.0, False, context_valid, commit=True)

    def _run(self, x, t, role, valid=None, commit=False):
        B, n, _ = x.shape
        times = torch.full((B, n), t, dtype=self.net_dtype, device=x.device)
        is_target = torch.full((B, n), role, dtype=torch.bool, device=x.device)
        v = self.dit(x.to(self.net_dtype), times, is_target, valid, cache=self.cache, commit=commit)
        return v.to(x.dtype)

    def velocity(self, x, t):
        """(B, n, D) noisy block at time t -> its velocity, given every committed token."""
        return self._run(x, t, True)

    def commit(self, x):
        """Add the finished block x (clean, t = 1) to the cache."""
        self._run(x, 1.0, True, commit=True)


class FullPrefix:
    """The same without a cache: the whole clean prefix is recomputed at every step, under the
    training mask (model.block_causal_mask). Slow; the reference the cached path is tested against."""

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
        mask = block_causal_mask(block, noisy)
        v = self.dit(seq.to(self.net_dtype), times.to(self.net_dtype), role, valid, mask)
        return v[:, -x.shape[1]:].to(x.dtype)

    def commit(self, x):
        self.x, self.valid, self.role, self.block = self._extend(x)
        self.n_blocks += 1


@torch.no_grad()
def sample_blocks(dit, context, context_valid, max_new_tokens, steps=16, solver='euler', cfg_scale=7.0,
                  guidance_interval=(0.0, 1.0), grid='uniform', std=1.5, ode_dtype=torch.float64,
                  generator=None, net_dtype=torch.float32, use_cache=True, on_block=None, renoise=0.0):
    """Cola: the target latents block by block (dit.config.latent_block tokens each; the last may
    be shorter), each integrated from noise in `steps` ODE steps given the clean blocks before it.
    With CFG the unconditional pass sees the generated blocks but not the prompt. context: (B, C, D)
    normalised clean latents (C may be 0), context_valid (B, C). on_block(latents so far) may
    return True to stop early. Returns (B, n, D) latents, n <= max_new_tokens."""
    B, _, D = context.shape
    Prefix = CachedPrefix if use_cache else FullPrefix
    cond = Prefix(dit, context, context_valid, net_dtype)
    uncond = Prefix(dit, context[:, :0], context_valid[:, :0], net_dtype) if cfg_scale != 1.0 else None
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


# -----------------------------------------------------------------------------
# TextLDM and GPT continuations, from token ids to token ids

def pad_rows(rows, pad, device):
    """list of id lists -> (B, max_len) long tensor right-padded with `pad`, and its valid mask."""
    width = max([len(r) for r in rows] + [0])
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.as_tensor(r, dtype=torch.long)
    return ids.to(device), (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).to(device)


def cut_at_eot(ids, eot):
    ids = list(ids)
    return ids[:ids.index(eot)] if eot in ids else ids


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
    return [cut_at_eot(row[:n].tolist(), space.vocab.eot) for row, n in zip(ids, lengths)]


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
        new_rows = [cut_at_eot(row[:n].tolist(), eot) for row, n in zip(ids, lengths)]
        if on_text is not None:
            on_text([new[len(old):] for new, old in zip(new_rows, rows)])
        rows[:] = new_rows
        return all(eot in row[:n].tolist() or latents.shape[1] >= n for row, n in zip(ids, lengths))

    sample_blocks(dit, context, context_valid, max(lengths, default=0), generator=generator,
                  net_dtype=next(dit.parameters()).dtype, on_block=after_block, **flow)
    return rows


def gpt_continue(gpt, vocab, prompts, lengths, generator=None, temperature=1.0, top_k=0, top_p=1.0):
    """Continue each prompt with the GPT's KV-cached sampler; an empty prompt starts after an
    <|endoftext|>, i.e. at the beginning of a document."""
    device = next(gpt.parameters()).device
    out = []
    for p, n in zip(prompts, lengths):
        idx = torch.tensor([list(p) or [vocab.eot]], dtype=torch.long, device=device)
        row = gpt.generate(idx, n, temperature=temperature, top_k=top_k or None,
                           top_p=top_p if top_p < 1 else None, generator=generator)
        out.append(cut_at_eot(row[0, idx.shape[1]:].tolist(), vocab.eot))
    return out


def load_textldm(dit_path, device):
    """(EMA DiT, LatentSpace) with the checks that a DiT and its VAE belong together, made on
    the CPU before either is moved to `device`."""
    dit, _, ckpt = common.load_model(dit_path, 'dit', ema=True)
    vae_path = ckpt['model_args']['vae_path']
    space = common.LatentSpace.load(vae_path)
    if dit.config.latent_dim != space.latent_dim:
        raise SystemExit(f"the DiT in {dit_path} was trained on {dit.config.latent_dim}-channel latents, "
                         f"the VAE {vae_path} makes {space.latent_dim}")
    if ckpt['model_args'].get('vocab_ids', space.vocab.state()) != space.vocab.state():
        raise SystemExit(f"the DiT in {dit_path} was trained on latents of another vocabulary than "
                         f"the VAE now at {vae_path}: was that file replaced?")
    return dit.to(device), space.to(device)


def check_flow_keys(solver, time_grid, ode_dtype, renoise):
    """The sampler's keys, checked before any work (sample.py and eval.py)."""
    if solver not in ('euler', 'heun'):
        raise common.ConfigError(f"solver={solver!r}: 'euler' or 'heun'")
    if time_grid not in ('uniform', 'logit_normal'):
        raise common.ConfigError(f"time_grid={time_grid!r}: 'uniform' or 'logit_normal'")
    if ode_dtype not in ('float32', 'float64'):
        raise common.ConfigError(f"ode_dtype={ode_dtype!r}: 'float32' or 'float64'")
    if not 0 <= renoise <= 1 or (renoise and solver != 'euler'):
        raise common.ConfigError(f"renoise={renoise}: stochastic steps take 0 <= renoise <= 1, with solver='euler'")


def check_lengths(prompt_len, new_tokens, limits):
    for name, limit in limits:
        if prompt_len + new_tokens > limit:
            raise SystemExit(f"prompt of {prompt_len} tokens + {new_tokens} new tokens exceeds the "
                             f"{name}'s context of {limit} tokens: shorten the prompt or max_new_tokens")


# -----------------------------------------------------------------------------
def main():
    common.configure(globals(), 'sample')
    common.check_precision(device, dtype)
    text = prompt
    if text.startswith('FILE:'):
        with open(text[5:], encoding='utf-8') as f:
            text = f.read()
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    if model == 'textldm':
        check_flow_keys(solver, time_grid, ode_dtype, renoise)
        dit, space = load_textldm(dit_path, device)
        vocab, prompt_ids = space.vocab, space.vocab.encode(text).tolist()
        check_lengths(len(prompt_ids), max_new_tokens, [('DiT', dit.config.block_size)])
        check_lengths(len(prompt_ids), 0, [('VAE', space.block_size)])
        flow = dict(steps=steps, solver=solver, cfg_scale=cfg_scale, grid=time_grid, std=logit_normal_std,
                    guidance_interval=(guidance_min_t, guidance_max_t), ode_dtype=getattr(torch, ode_dtype),
                    renoise=renoise)
        if dit.config.latent_block:   # a Cola DiT: block by block, sample 0 printed as it comes
            print(f"Cola, blocks of {dit.config.latent_block} latents; sample 0 as decoded:\n{text}", end='')
            stream = lambda new: print(vocab.decode(new[0]), end='', flush=True)

            def run():
                rows = cola_continue(dit, space, [prompt_ids] * num_samples, max_new_tokens, generator=generator,
                                     on_text=stream, **{**flow, 'steps': steps_per_block})
                print()
                return rows
        else:
            run = lambda: textldm_continue(dit, space, [prompt_ids] * num_samples, [max_new_tokens] * num_samples,
                                           generator=generator, **flow)
    elif model == 'gpt':
        gpt, vocab, _ = common.load_model(gpt_path, 'gpt')
        gpt.to(device)
        prompt_ids = vocab.encode(text).tolist()
        check_lengths(max(1, len(prompt_ids)), max_new_tokens, [('GPT', gpt.config.block_size)])
        run = lambda: gpt_continue(gpt, vocab, [prompt_ids] * num_samples, [max_new_tokens] * num_samples,
                                   generator=generator, temperature=temperature, top_k=top_k, top_p=top_p)
    else:
        raise common.ConfigError(f"model={model!r}: 'textldm' or 'gpt'")
    t0 = time.time()
    with common.autocast('cuda' if device.startswith('cuda') else 'cpu', dtype):
        continuations = [vocab.decode(ids) for ids in run()]
    print(f"{num_samples} samples of up to {max_new_tokens} tokens with {model} in {time.time() - t0:.2f}s")
    records = [{'model': model, 'seed': seed, 'sample': i, 'prompt': text, 'continuation': c}
               for i, c in enumerate(continuations)]
    for r in records:
        print(f"--- sample {r['sample']}\n{text}\033[1m{r['continuation']}\033[0m" if os.isatty(1)
              else f"--- sample {r['sample']}\n{text}{r['continuation']}")
    if out:
        with open(out, 'w', encoding='utf-8') as f:
            f.writelines(json.dumps(r) + '\n' for r in records)
    return records


if __name__ == '__main__':
    main()
