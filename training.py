"""
The training machinery train_gpt.py, train_vae.py and train_dit.py share: devices, DDP and
precision; checkpoints with every RNG state; the optimizer and its schedule; and the loop itself.
"""
import contextlib
import json
import math
import os
import random
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
import torch.distributed as dist

from configurator import ConfigError
from tokenization import Vocab

# -----------------------------------------------------------------------------
# Devices, DDP, precision

# Dense bf16 tensor-core peaks, for MFU against the card actually in use (not always an A100).
PEAK_FLOPS = {'H200': 989e12, 'H100 PCIe': 756e12, 'H100': 989e12, 'A100': 312e12}


def peak_flops(device):
    """bf16 peak FLOP/s of a CUDA device by its name, or None (CPU, unknown card: no MFU)."""
    if not str(device).startswith('cuda'):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)


def counted_flops(step):
    """FLOPs of step() as torch's FlopCounterMode counts them (matmuls and attention): what the
    model really computes, for MFU. On tensors of the 'meta' device it costs no memory and ~1 s."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


class Dist:
    """Who we are in a (possibly single-process) run. DDP when torchrun has set RANK."""

    def __init__(self, device):
        self.ddp = int(os.environ.get('RANK', -1)) != -1
        self.rank, self.local_rank, self.world_size = 0, 0, 1
        self.device = device
        if self.ddp:
            self.rank = int(os.environ['RANK'])
            self.local_rank = int(os.environ['LOCAL_RANK'])
            self.world_size = int(os.environ['WORLD_SIZE'])
            if device.startswith('cuda'):
                self.device = f'cuda:{self.local_rank}'
                torch.cuda.set_device(self.device)
                # bound to its GPU: NCCL's collectives and barrier then know which device is ours
                dist.init_process_group(backend='nccl', device_id=torch.device(self.device))
            else:
                dist.init_process_group(backend='gloo')
        self.master = self.rank == 0
        self.device_type = 'cuda' if self.device.startswith('cuda') else 'cpu'
        if self.device_type == 'cuda':
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores
            torch.backends.cudnn.allow_tf32 = True

    # Every collective of the project goes through the three methods below (a test checks that
    # no other code calls torch.distributed), and each puts its tensor on self.device: NCCL takes
    # CUDA tensors only, and gloo on a CPU test run would not notice a CPU tensor in a GPU run.

    def all_reduce_sum(self, values):
        """Sum a dict of floats over ranks (evaluation metrics and their counts)."""
        if not self.ddp:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def any(self, flag):
        """True on every rank if `flag` (a bool or a 0-d tensor, on any device) is true on any rank."""
        if not self.ddp:
            return bool(flag)
        t = torch.as_tensor(flag).to(device=self.device, dtype=torch.int32)  # gloo cannot reduce bools
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t)

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, ...] on every rank (per-rank RNG states, pending batches).
        Pickled objects travel through tensors on the current CUDA device under NCCL (set above)."""
        if not self.ddp:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self):
        if self.ddp:
            # every rank reaches here before any tears down: a gloo rank torn down while its peer
            # is still connected (rank 0 writing its export) aborts with 'terminate called'
            dist.barrier()
            dist.destroy_process_group()


def autocast(device_type, dtype):
    """bf16/fp16 autocast for the matmuls on GPU; a no-op in fp32 or on CPU."""
    if device_type == 'cpu' or dtype == 'float32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def check_precision(device, dtype):
    if dtype not in ('float32', 'bfloat16', 'float16'):
        raise ConfigError(f"dtype={dtype!r}: choose 'float32', 'bfloat16' or 'float16'")
    if not (device == 'cpu' or device.startswith('cuda') or device == 'mps'):
        raise ConfigError(f"device={device!r}: choose 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available (use --device=cpu)")


def to_device(batch, device):
    """Move a tuple of CPU tensors to the device; pinned + non_blocking so the copy overlaps compute."""
    if device.startswith('cuda'):
        return tuple(b.pin_memory().to(device, non_blocking=True) for b in batch)
    return tuple(b.to(device) for b in batch)


# -----------------------------------------------------------------------------
# Checkpoints: atomic, complete (every RNG state), never with a torch.compile prefix

def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a kill at any instant leaves the old file. A
    failed write (a full disk) removes its partial file, and the error goes on."""
    tmp = path + '.tmp'
    try:
        torch.save(obj, tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)


def load_checkpoint(path, what='checkpoint'):
    if not os.path.isfile(path):
        raise SystemExit(f"{what} '{path}' not found")
    return torch.load(path, map_location='cpu', weights_only=False)


def rng_state(data_streams):
    return {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            'data': [stream.bit_generator.state for stream in data_streams]}


def set_rng_state(state, data_streams):
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    for stream, saved in zip(data_streams, state['data']):
        stream.bit_generator.state = saved


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# Optimisation

def get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Linear warm-up, then cosine decay to min_lr at lr_decay_iters (not max_iters), then flat."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def make_optimizer(model, learning_rate, weight_decay, beta1, beta2, device_type):
    """AdamW with weight decay on matrices (embeddings, linears) only, fused on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2),
                             fused=device_type == 'cuda')


# -----------------------------------------------------------------------------
# The training loop every stage shares. A stage supplies an `objective`: an nn.Module whose
# forward(*batch) returns (loss, {name: scalar tensor}), and a `batch_fn(split, rng)` that
# returns a tuple of CPU tensors drawn with the numpy Generator `rng` (the data RNG, kept
# apart from torch's so evaluation and model code never shift the data stream). batch_fn may
# run in a background thread while the model works: it must draw from `rng` alone. The first
# tensor of a batch is its (B, T) token ids: T may differ from batch to batch (no padding), and
# tokens/s counts them. `on_device(batch)`, if given, transforms each batch on the device outside
# the objective, so that torch.compile and DDP see the objective alone (the VAE's frozen teacher).


def check_batch_split(cfg, world_size=None):
    """The global batch and the validation batches must split evenly across the ranks. Scripts
    call this first, before any model or teacher is loaded: world_size is torchrun's."""
    world_size = world_size or int(os.environ.get('WORLD_SIZE', 1))
    for key in ('gradient_accumulation_steps', 'eval_iters'):
        if cfg[key] < 1 or cfg[key] % world_size:
            raise ConfigError(f"{key}={cfg[key]} must be a positive multiple of the {world_size} ranks "
                              f"(the global batch is split across them)")


@torch.no_grad()
def evaluate(objective, val_batches, dist_, dtype, seed, on_device=None):
    """Mean of each metric over the fixed validation batches. Torch's RNG is forked and seeded,
    so the noise drawn in evaluation is the same every time and training's stream is untouched."""
    objective.eval()
    sums = {'loss': 0.0}  # every rank sends the same keys, even one with no batches
    with torch.random.fork_rng(devices=[dist_.device] if dist_.device_type == 'cuda' else []):
        torch.manual_seed(seed + dist_.rank)
        for batch in val_batches:
            with autocast(dist_.device_type, dtype):
                inputs = to_device(batch, dist_.device)
                loss, metrics = objective(*(on_device(inputs) if on_device else inputs))
            for k, v in {'loss': loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    objective.train()
    sums = dist_.all_reduce_sum({**sums, 'count': float(len(val_batches))})
    count = max(1.0, sums.pop('count'))
    return {f'val_{k}': v / count for k, v in sums.items()}


def ema_update(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, parameters and buffers alike."""
    with torch.no_grad():
        ema_p, p = list(ema.parameters()), list(model.parameters())
        torch._foreach_lerp_(ema_p, p, 1.0 - decay)
        for eb, b in zip(ema.buffers(), model.buffers()):
            eb.copy_(b)


def in_line(fn, *args):
    """fn(*args) now, as a finished Future: what ThreadPoolExecutor.submit gives, without a thread."""
    future = Future()
    future.set_result(fn(*args))
    return future


def train(cfg, stage, objective, batch_fn, dist_, model_args, flops_per_token=0.0, ema=None,
          before_step=None, on_device=None, prefetch=True):
    """Train `objective` for cfg['max_iters'] iterations (or resume), writing out_dir/{stage}.pt
    and out_dir/{stage}_metrics.jsonl. `ema` = (ema_module, source_module, decay) or None.
    prefetch: build each next batch in a background thread while the model works on this one
    (False: in line; the batches, and so every result, are the same)."""
    out_dir, device, dtype = cfg['out_dir'], dist_.device, cfg['dtype']
    ckpt_path = os.path.join(out_dir, f'{stage}.pt')
    metrics_path = os.path.join(out_dir, f'{stage}_metrics.jsonl')
    check_batch_split(cfg, dist_.world_size)
    accum = cfg['gradient_accumulation_steps'] // dist_.world_size  # the global count is split across ranks
    if dist_.master:
        os.makedirs(out_dir, exist_ok=True)

    raw = objective.to(device)
    optimizer = make_optimizer(raw, cfg['learning_rate'], cfg['weight_decay'], cfg['beta1'],
                               cfg['beta2'], dist_.device_type)
    scaler = torch.amp.GradScaler(dist_.device_type, enabled=dtype == 'float16')
    # One data stream per global micro-step: rank r owns streams r*accum .. r*accum+accum-1, so
    # N ranks see exactly the batches one process with N times the accumulation would see.
    data_streams = [np.random.default_rng([cfg['seed'], dist_.rank * accum + m]) for m in range(accum)]
    # Fixed validation batches, drawn once from their own stream and dealt out to the ranks.
    val_rng = np.random.default_rng([cfg['seed'], 2 ** 31])
    val_batches = [batch_fn('val', val_rng) for _ in range(cfg['eval_iters'])][dist_.rank::dist_.world_size]
    iter_num, best_val_loss, resumed_at = 0, float('inf'), None

    if cfg['init_from'] == 'resume':
        ckpt = load_checkpoint(ckpt_path, f"{stage} checkpoint to resume")
        this_run = ', '.join(f"{k}={cfg[k]!r}" for k in ('data_dir', 'vae_path') if k in cfg)
        Vocab.of(ckpt['model_args'], ckpt_path).check_same(Vocab.of(model_args, 'this run'), f"{ckpt_path} (to resume)",
                                                           f"this run ({this_run})")
        raw.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scaler.load_state_dict(ckpt['scaler'])
        if ema is not None:
            ema[0].load_state_dict(ckpt['ema'])
        iter_num, best_val_loss = ckpt['iter_num'], ckpt['best_val_loss']
        resumed_at = iter_num
        if len(ckpt['rng']) != dist_.world_size:
            raise SystemExit(f"checkpoint was written by {len(ckpt['rng'])} ranks, this run has "
                             f"{dist_.world_size}: exact resume needs the same number")
        set_rng_state(ckpt['rng'][dist_.rank], data_streams)
        batch = ckpt['next_batch'][dist_.rank]
        print0(dist_, f"resumed {ckpt_path} at iter {iter_num}")
    elif cfg['init_from'] != 'scratch':
        raise ConfigError(f"init_from={cfg['init_from']!r}: choose 'scratch' or 'resume'")
    else:
        batch = batch_fn('train', data_streams[0])
        if dist_.master and os.path.exists(metrics_path):  # a fresh run, fresh metrics
            os.remove(metrics_path)

    model = torch.compile(raw) if cfg['compile'] else raw
    if dist_.ddp:
        local = [dist_.local_rank] if dist_.device_type == 'cuda' else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=local)
    wandb = init_wandb(cfg, stage) if dist_.master else None

    def save():
        states = dist_.gather(rng_state(data_streams)), dist_.gather(batch)
        if dist_.master:
            weights = {'model': raw.state_dict(), 'ema': ema[0].state_dict() if ema else None,
                       'iter_num': iter_num, 'model_args': model_args, 'config': cfg}
            save_atomic({**weights, 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
                         'best_val_loss': best_val_loss, 'rng': states[0], 'next_batch': states[1]}, ckpt_path)
            if cfg['keep_checkpoints']:   # the weights alone, for evaluating this point of the run later
                save_atomic(weights, os.path.join(out_dir, f'{stage}_{iter_num}.pt'))

    # One worker, one batch ahead: the next batch (for the VAE, the teacher's tokenizer and the
    # character alignment: CPU work, much of it Python) is built while this one's forward and
    # backward run. It is waited for before the step ends, so a checkpoint holds it and the data
    # RNG after it.
    pool = ThreadPoolExecutor(1, thread_name_prefix='next_batch') if prefetch else None
    submit = pool.submit if prefetch else in_line
    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # checked when we sync anyway
    if flops_per_token:   # of full windows (a DiT's shorter micro-batches cost less; MFU counts their tokens)
        per_iter = flops_per_token * cfg['batch_size'] * cfg['block_size'] * cfg['gradient_accumulation_steps']
        print0(dist_, f"{stage}: {per_iter / 1e9:,.2f} GFLOP an iteration of full windows, forward and "
                      f"backward ({flops_per_token / 1e6:,.2f} MFLOP a token)")
    peak, t0, steps, tokens = peak_flops(device), time.time(), 0, 0  # steps and tokens since t0
    while True:
        lr = get_lr(iter_num, cfg['learning_rate'], cfg['min_lr'], cfg['warmup_iters'], cfg['lr_decay_iters'])
        for group in optimizer.param_groups:
            group['lr'] = lr
        if before_step is not None:
            before_step(iter_num)

        # Evaluate and checkpoint (not again at the iteration we resumed from: it is on disk).
        if (iter_num % cfg['eval_interval'] == 0 or iter_num == cfg['max_iters']) and iter_num != resumed_at:
            check_finite(dist_, nonfinite, iter_num, ckpt_path)
            metrics = evaluate(raw, val_batches, dist_, dtype, cfg['seed'], on_device)
            # the last step's update can break the weights after its (finite) loss was taken
            check_finite(dist_, not math.isfinite(metrics['val_loss']), iter_num, ckpt_path)
            best_val_loss = min(best_val_loss, metrics['val_loss'])
            if dist_.master:
                record = {'iter': iter_num, **{k: round(v, 6) for k, v in metrics.items()}}
                print(' '.join(f'{k} {v}' for k, v in record.items()), flush=True)
                append_jsonl(metrics_path, record)
                if wandb:
                    wandb.log({**metrics, 'lr': lr}, step=iter_num)
            save()
            t0, steps, tokens = time.time(), 0, 0  # evaluation and saving are not training time
        if iter_num >= cfg['max_iters']:
            break

        # One optimizer step: `accum` micro-steps, gradients synced on the last one only.
        for micro in range(accum):
            if dist_.ddp:
                model.require_backward_grad_sync = micro == accum - 1
            inputs, tokens = to_device(batch, device), tokens + batch[0].numel() * dist_.world_size
            upcoming = submit(batch_fn, 'train', data_streams[(micro + 1) % accum])
            with autocast(dist_.device_type, dtype):
                loss, _ = model(*(on_device(inputs) if on_device else inputs))
            scaler.scale(loss / accum).backward()
            batch = upcoming.result()
        nonfinite |= ~torch.isfinite(loss.detach())
        if cfg['grad_clip'] > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg['grad_clip'])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema_update(ema[0], ema[1], ema[2])

        iter_num, steps = iter_num + 1, steps + 1
        if iter_num % cfg['log_interval'] == 0:
            check_finite(dist_, nonfinite, iter_num, ckpt_path)
            dt = time.time() - t0
            tok_s = tokens / dt
            mfu = f" mfu {100 * flops_per_token * tok_s / (peak * dist_.world_size):.1f}%" if peak else ''
            if dist_.device_type == 'cuda':
                mfu += f" mem {torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f}GiB"
            print0(dist_, f"{stage} iter {iter_num}: loss {loss.item():.4f} lr {lr:.2e} "
                          f"{1000 * dt / steps:.0f}ms/it {tok_s:,.0f} tok/s{mfu}")
            t0, steps, tokens = time.time(), 0, 0
    if pool is not None:
        pool.shutdown()
    if wandb:
        wandb.finish()
    return raw


def print0(dist_, *args):
    if dist_.master:
        print(*args, flush=True)


def check_finite(dist_, nonfinite, iter_num, ckpt_path):
    """Stop on a NaN/inf loss before anything is saved, so the last good checkpoint stays.
    Every rank learns of a NaN seen by any of them, so all stop together."""
    if dist_.any(nonfinite):
        raise SystemExit(f"loss became NaN or inf before iter {iter_num}; stopping. The last good "
                         f"checkpoint ({ckpt_path}, if any) is untouched: lower learning_rate or "
                         f"use bfloat16/float32, then resume")


def init_wandb(cfg, stage):
    if not cfg['wandb_log']:
        return None
    import wandb
    wandb.init(project=cfg['wandb_project'], name=f"{cfg['wandb_run_name']}-{stage}", config=cfg)
    return wandb


def append_jsonl(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def load_model(path, kind, ema=False):
    """(model in eval mode, its Vocab, checkpoint) from a stage checkpoint: 'vae', 'dit' or 'gpt'.
    The objective's state dict holds the network under the attribute named `kind`."""
    import dataclasses
    import model as models
    ckpt = load_checkpoint(path, f'{kind} checkpoint')
    net_class, config_class = {'vae': (models.TextVAE, models.VAEConfig), 'dit': (models.DiT, models.DiTConfig),
                               'gpt': (models.GPT, models.GPTConfig)}[kind]
    fields = {f.name for f in dataclasses.fields(config_class)}
    net = net_class(config_class(**{k: v for k, v in ckpt['model_args'].items() if k in fields}))
    state = ckpt['ema'] if ema else {k[len(kind) + 1:]: v for k, v in ckpt['model'].items()
                                     if k.startswith(kind + '.')}
    net.load_state_dict(state)
    return net.eval(), Vocab.of(ckpt['model_args'], path), ckpt
