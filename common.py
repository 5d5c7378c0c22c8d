"""
What every stage script needs, written once: the configurator, the GPT-2 tokenizer, and the
training machinery (DDP, batches, checkpoints, LR schedule, logging) shared by train_gpt.py,
train_vae.py and train_dit.py.
"""
import ast
import codecs
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import random
import sys
import time
from functools import lru_cache

import numpy as np
import torch
import torch.distributed as dist

# -----------------------------------------------------------------------------
# Configurator: defaults are a script's module-level globals; a config file and --key=value
# overrides change them. One config file describes a whole experiment, so it may hold keys
# of every stage; a key written `STAGE_key` (e.g. `vae_max_iters`) applies to that stage only.
# Precedence: defaults < file `key` < file `STAGE_key` < command line `--key` < `--STAGE_key`.

class ConfigError(SystemExit):
    """Raised for a bad config: exits non-zero with a message naming the key, before any work."""

    def __init__(self, msg):
        super().__init__(f"config error: {msg}")


def _check_type(key, value, default):
    if default is None or value is None:
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{key}={value!r} has type {type(value).__name__}, "
                          f"expected {type(default).__name__} (default {default!r})")
    return value


def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: --device=cuda


def _stage_key(key, stage, known):
    """Map a key to (target key, extra priority) for this stage, or None if it is not ours."""
    if key in known:
        return key, 0
    prefix, _, rest = key.partition('_')
    if prefix == stage and rest in known:
        return rest, 1
    return None


def configure(defaults, stage, argv=None):
    """Apply `[config_file] [--key=value ...]` to `defaults` (a script's globals()) in place.

    Returns the resolved config as a dict (what goes into checkpoints). Strings containing
    {out_dir} or {data_dir} are formatted after all overrides, so derived paths follow them.
    """
    argv = sys.argv[1:] if argv is None else argv
    known = {k: v for k, v in defaults.items()
             if not k.startswith('_') and isinstance(v, (int, float, bool, str, type(None), tuple, list))}
    updates = {}  # key -> (priority, value)

    def apply(key, value, priority, strict):
        mapped = _stage_key(key, stage, known)
        if mapped is None:  # in a file, another script's key; on the command line, a mistake
            if strict:
                raise ConfigError(f"unknown key '{key}' for {stage} (known: {', '.join(sorted(known))})")
            return
        target, stage_priority = mapped
        value = _check_type(key, value, known[target])
        if target not in updates or updates[target][0] <= priority + stage_priority:
            updates[target] = (priority + stage_priority, value)

    for arg in argv:
        if arg.startswith('--'):
            continue
        if not os.path.isfile(arg):
            raise ConfigError(f"config file '{arg}' not found")
        namespace = {}
        with open(arg) as f:
            exec(compile(f.read(), arg, 'exec'), namespace)
        for key, value in namespace.items():
            if not key.startswith('_') and not callable(value) and not isinstance(value, type(sys)):
                apply(key, value, 0, strict=False)
    for arg in argv:
        if not arg.startswith('--'):
            continue
        key, eq, text = arg[2:].partition('=')
        if not eq:
            raise ConfigError(f"'{arg}' must be written --key=value")
        apply(key, _parse_value(text), 2, strict=True)

    config = {k: v for k, v in known.items()}
    config.update({k: v for k, (_, v) in updates.items()})
    for key, value in config.items():
        if isinstance(value, str) and ('{out_dir}' in value or '{data_dir}' in value):
            config[key] = value.format(out_dir=config.get('out_dir', ''), data_dir=config.get('data_dir', ''))
    defaults.update(config)
    return config


# -----------------------------------------------------------------------------
# GPT-2 BPE, offline. tiktoken.get_encoding('gpt2') downloads its ranks; the same ranks ship
# in the openai-whisper source package (installed with --no-deps by the README's install
# command). We load them from there, check the sha256 tiktoken itself expects for r50k_base,
# and build the standard encoding. On a machine with no whisper package we fall back to
# tiktoken's own (downloading) loader.

GPT2_RANKS_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'
EOT = 50256
VOCAB_SIZE = 50257


def _gpt2_ranks_path():
    override = os.environ.get('TEXTLDM_GPT2_RANKS')
    if override:
        return override
    spec = importlib.util.find_spec('whisper')  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], 'assets', 'gpt2.tiktoken')


@lru_cache(maxsize=None)
def get_tokenizer():
    """The GPT-2 tokenizer (tiktoken Encoding): 'Hello world' -> [15496, 995], EOT 50256."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    path = _gpt2_ranks_path()
    if path is None or not os.path.isfile(path):
        try:
            return tiktoken.get_encoding('gpt2')
        except Exception as e:  # offline and no whisper package: say what to install
            raise RuntimeError("GPT-2 BPE ranks not found: run `pip install --no-deps "
                               "openai-whisper==20250625` (ships whisper/assets/gpt2.tiktoken)") from e
    with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} is not the GPT-2 ranks' {GPT2_RANKS_SHA256}")
    ranks = load_tiktoken_bpe(path, expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(name='gpt2', pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={'<|endoftext|>': EOT}, explicit_n_vocab=VOCAB_SIZE)


def encode(text):
    """Text -> GPT-2 ids. A literal '<|endoftext|>' in the text is ordinary text, not EOT."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids):
    """GPT-2 ids -> text; bytes cut mid-character become U+FFFD instead of raising."""
    return get_tokenizer().decode([int(i) for i in ids], errors='replace')


def align_by_characters(ids, tokenizer):
    """Decode our tokens to text, tokenize it with the teacher's tokenizer, and pair each of our
    tokens with the teacher tokens whose character spans overlap its own. Bytes are decoded
    incrementally, so a window that starts or ends inside a UTF-8 character decodes to U+FFFD
    there instead of failing; a token that completes no character takes the character it
    begins. <|endoftext|> becomes a blank line, the document break a teacher expects."""
    enc, decoder = get_tokenizer(), codecs.getincrementaldecoder('utf-8')('replace')
    pieces, starts = [], []
    for t in ids:
        starts.append(sum(map(len, pieces)))
        pieces.append('\n\n' if t == EOT else decoder.decode(enc.decode_single_token_bytes(t)))
    pieces.append(decoder.decode(b'', final=True))
    text = ''.join(pieces)
    ends = starts[1:] + [len(text)]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.array(encoded['offset_mapping'], dtype=np.int64).reshape(-1, 2)
    pairs = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        e = max(e, min(s + 1, len(text)))  # an empty span: the character this token begins
        first = np.searchsorted(offsets[:, 1], s, side='right')  # first teacher token ending after s
        last = np.searchsorted(offsets[:, 0], e, side='left')   # first teacher token starting at/after e
        pairs += [(i, j) for j in range(first, last)]
    return encoded['input_ids'], pairs


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


# -----------------------------------------------------------------------------
# Data: the token memmaps written by prepare.py

class Vocab:
    """The token ids a model works in. Normally GPT-2's own (ids=None). With compact_vocab, only
    the ids that occur in the prepared data, renumbered 0..K-1: the embedded corpus uses ~200 of
    GPT-2's 50257 tokens, and a full-vocabulary output layer would cost a CPU run ~100x more.
    Checkpoints store `vocab_ids`, so every later stage maps text in and out the same way."""

    def __init__(self, ids=None):
        self.ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        self.size = VOCAB_SIZE if ids is None else len(self.ids)
        self.lookup = None
        if self.ids is not None:
            self.lookup = np.full(VOCAB_SIZE, -1, dtype=np.int64)
            self.lookup[self.ids] = np.arange(len(self.ids))
        self.eot = self.from_gpt2([EOT])[0]

    def from_gpt2(self, ids):
        """GPT-2 ids -> model ids (an error names a token the model has never seen)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.lookup is None:
            return ids
        out = self.lookup[ids]
        if (out < 0).any():
            unknown = decode([ids[out < 0][0]])
            raise SystemExit(f"token {unknown!r} is not in this model's compact vocabulary "
                             f"({self.size} tokens seen in its training data)")
        return out

    def to_gpt2(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self.ids is None else self.ids[ids]

    def encode(self, text):
        return self.from_gpt2(encode(text))

    def decode(self, ids):
        return decode(self.to_gpt2(ids))

    def state(self):
        """What a checkpoint stores: None or the list of GPT-2 ids."""
        return None if self.ids is None else self.ids.tolist()


class TokenData:
    """Random windows from data_dir/{train,val}.bin, in the ids of `vocab`. Re-opens the memmap
    per call (nanoGPT's fix for a memory leak) and checks meta.json, so data of another
    tokenizer is refused."""

    def __init__(self, data_dir, compact_vocab=False, vocab=None, vocab_of='the model'):
        meta_path = os.path.join(data_dir, 'meta.json')
        if not os.path.isfile(meta_path):
            raise SystemExit(f"no prepared data in '{data_dir}' (missing meta.json): "
                             f"run `python prepare.py <config>` first")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get('tokenizer') != 'gpt2' or self.meta.get('vocab_size') != VOCAB_SIZE:
            raise SystemExit(f"{meta_path}: data tokenized with {self.meta.get('tokenizer')!r} "
                             f"(vocab {self.meta.get('vocab_size')}); this project needs 'gpt2' (50257)")
        self.data_dir = data_dir
        # a later stage passes the vocabulary its VAE was trained with (`vocab_of` names it)
        self.vocab = vocab or Vocab(self._ids_in_data() if compact_vocab else None)
        if vocab is not None and vocab.ids is not None:
            missing = np.setdiff1d(self._ids_in_data(), vocab.ids)
            if len(missing):  # else a token it never saw would stop the run mid-training
                raise SystemExit(f"data_dir={data_dir!r} holds {len(missing)} token ids that {vocab_of} "
                                 f"does not know (its compact vocabulary has the {vocab.size} tokens of "
                                 f"its own training data), e.g. {decode(missing[:5])!r}: use its data_dir, "
                                 f"or train it on this data")

    def _memmap(self, split):
        path = os.path.join(self.data_dir, f'{split}.bin')
        if not os.path.isfile(path):
            raise SystemExit(f"'{path}' is missing: run `python prepare.py <config>` again")
        return np.memmap(path, dtype=np.uint16, mode='r')

    def _ids_in_data(self):
        counts = sum(np.bincount(self._memmap(split), minlength=VOCAB_SIZE) for split in ('train', 'val'))
        return np.union1d(np.flatnonzero(counts), [EOT])

    def windows(self, split, batch_size, length, rng):
        """(batch_size, length) int64 numpy array of random token windows, in model ids."""
        data = self._memmap(split)
        if len(data) <= length:
            raise SystemExit(f"{split}.bin has {len(data)} tokens, fewer than one window of {length}")
        starts = rng.integers(0, len(data) - length, size=batch_size)
        windows = np.stack([data[s:s + length] for s in starts]).astype(np.int64)
        return windows if self.vocab.lookup is None else self.vocab.from_gpt2(windows)


def to_device(batch, device):
    """Move a tuple of CPU tensors to the device; pinned + non_blocking so the copy overlaps compute."""
    if device.startswith('cuda'):
        return tuple(b.pin_memory().to(device, non_blocking=True) for b in batch)
    return tuple(b.to(device) for b in batch)


# -----------------------------------------------------------------------------
# Checkpoints: atomic, complete (every RNG state), never with a torch.compile prefix

def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a kill at any instant leaves the old file."""
    tmp = path + '.tmp'
    torch.save(obj, tmp)
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
# apart from torch's so evaluation and model code never shift the data stream).


def check_batch_split(cfg, world_size=None):
    """The global batch and the validation batches must split evenly across the ranks. Scripts
    call this first, before any model or teacher is loaded: world_size is torchrun's."""
    world_size = world_size or int(os.environ.get('WORLD_SIZE', 1))
    for key in ('gradient_accumulation_steps', 'eval_iters'):
        if cfg[key] < 1 or cfg[key] % world_size:
            raise ConfigError(f"{key}={cfg[key]} must be a positive multiple of the {world_size} ranks "
                              f"(the global batch is split across them)")


@torch.no_grad()
def evaluate(objective, val_batches, dist_, dtype, seed):
    """Mean of each metric over the fixed validation batches. Torch's RNG is forked and seeded,
    so the noise drawn in evaluation is the same every time and training's stream is untouched."""
    objective.eval()
    sums = {'loss': 0.0}  # every rank sends the same keys, even one with no batches
    with torch.random.fork_rng(devices=[dist_.device] if dist_.device_type == 'cuda' else []):
        torch.manual_seed(seed + dist_.rank)
        for batch in val_batches:
            with autocast(dist_.device_type, dtype):
                loss, metrics = objective(*to_device(batch, dist_.device))
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


def train(cfg, stage, objective, batch_fn, dist_, model_args, flops_per_token=0.0, tokens_per_sample=0,
          ema=None, before_step=None):
    """Train `objective` for cfg['max_iters'] iterations (or resume), writing out_dir/{stage}.pt
    and out_dir/{stage}_metrics.jsonl. `ema` = (ema_module, source_module, decay) or None."""
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

    model = torch.compile(raw) if cfg['compile'] else raw
    if dist_.ddp:
        local = [dist_.local_rank] if dist_.device_type == 'cuda' else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=local)
    wandb = init_wandb(cfg, stage) if dist_.master else None

    def save():
        states = dist_.gather(rng_state(data_streams)), dist_.gather(batch)
        if dist_.master:
            save_atomic({'model': raw.state_dict(), 'optimizer': optimizer.state_dict(),
                         'scaler': scaler.state_dict(), 'ema': ema[0].state_dict() if ema else None,
                         'iter_num': iter_num, 'best_val_loss': best_val_loss,
                         'model_args': model_args, 'config': cfg, 'rng': states[0],
                         'next_batch': states[1]}, ckpt_path)

    nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # checked when we sync anyway
    tokens_per_iter = tokens_per_sample * cfg['batch_size'] * accum * dist_.world_size
    peak, t0, steps = peak_flops(device), time.time(), 0  # steps timed since t0
    while True:
        lr = get_lr(iter_num, cfg['learning_rate'], cfg['min_lr'], cfg['warmup_iters'], cfg['lr_decay_iters'])
        for group in optimizer.param_groups:
            group['lr'] = lr
        if before_step is not None:
            before_step(iter_num)

        # Evaluate and checkpoint (not again at the iteration we resumed from: it is on disk).
        if (iter_num % cfg['eval_interval'] == 0 or iter_num == cfg['max_iters']) and iter_num != resumed_at:
            check_finite(dist_, nonfinite, iter_num, ckpt_path)
            metrics = evaluate(raw, val_batches, dist_, dtype, cfg['seed'])
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
            t0, steps = time.time(), 0  # evaluation and saving are not training time
        if iter_num >= cfg['max_iters']:
            break

        # One optimizer step: `accum` micro-steps, gradients synced on the last one only.
        for micro in range(accum):
            if dist_.ddp:
                model.require_backward_grad_sync = micro == accum - 1
            with autocast(dist_.device_type, dtype):
                loss, _ = model(*to_device(batch, device))
            batch = batch_fn('train', data_streams[(micro + 1) % accum])  # built while the GPU works
            scaler.scale(loss / accum).backward()
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
            tok_s = tokens_per_iter * steps / dt
            mfu = f" mfu {100 * flops_per_token * tok_s / (peak * dist_.world_size):.1f}%" if peak else ''
            if dist_.device_type == 'cuda':
                mfu += f" mem {torch.cuda.max_memory_allocated(device) / 2 ** 30:.1f}GiB"
            print0(dist_, f"{stage} iter {iter_num}: loss {loss.item():.4f} lr {lr:.2e} "
                          f"{1000 * dt / steps:.0f}ms/it {tok_s:,.0f} tok/s{mfu}")
            t0, steps = time.time(), 0
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


# -----------------------------------------------------------------------------
# A transformers tokenizer folder for our GPT-2 BPE, so an exported GPT (train_gpt.py) is a
# complete GPT-2 folder: usable as a REPA teacher, a judge, or by any transformers tool, offline.

def _byte_to_unicode():
    """GPT-2's reversible map of the 256 bytes to printable characters (vocab.json's alphabet)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_by_bpe(token, ranks, max_rank):
    """Replay BPE on `token` with merges of rank < max_rank: the two parts it was merged from."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(parts[i] + parts[i + 1], max_rank), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank >= max_rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def save_gpt2_tokenizer(folder):
    """Write vocab.json/merges.txt (and tokenizer.json) equal to GPT-2's, from tiktoken's ranks."""
    ranks = get_tokenizer()._mergeable_ranks
    to_unicode = _byte_to_unicode()
    as_text = lambda token: ''.join(to_unicode[b] for b in token)
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    vocab['<|endoftext|>'] = EOT
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if rank >= 256:
            left, right = _split_by_bpe(token, ranks, rank)
            merges.append(f'{as_text(left)} {as_text(right)}')
    # The standard GPT-2 pipeline in the tokenizers library: byte-level pre-tokenizer, BPE, decoder.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(' ')) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token='<|endoftext|>',
                                        eos_token='<|endoftext|>', unk_token='<|endoftext|>')
    tokenizer.save_pretrained(folder)
    return tokenizer


def update_checkpoint(path, **items):
    """Add entries to a checkpoint on disk, atomically (e.g. the VAE's latent statistics)."""
    ckpt = load_checkpoint(path)
    ckpt.update(items)
    save_atomic(ckpt, path)


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
    return net.eval(), Vocab(ckpt['model_args'].get('vocab_ids')), ckpt


def export_gpt(gpt, vocab, folder):
    """Save our GPT as a transformers GPT-2 folder. With the full vocabulary it gets GPT-2's
    tokenizer files; with a compact one, the GPT-2 ids it uses go into config.json
    (`textldm_vocab_ids`), which train_vae.py and eval.py read to map text in."""
    gpt.save_pretrained(folder, eos_token_id=int(vocab.eot))
    if vocab.ids is None:
        save_gpt2_tokenizer(folder)
    else:
        path = os.path.join(folder, 'config.json')
        with open(path) as f:
            hf_config = json.load(f)
        hf_config['textldm_vocab_ids'] = vocab.state()
        with open(path, 'w') as f:
            json.dump(hf_config, f, indent=2)


class LatentSpace:
    """The frozen VAE as the DiT sees it: tokens -> per-channel normalised latents and back.
    A plain object, not an nn.Module, so it is never trained, saved with the DiT, or DDP-wrapped.
    The latents are the posterior means, normalised with the mean/std train_vae.py measured."""

    def __init__(self, vae, latent_mean, latent_std, vocab):
        device = next(vae.parameters()).device
        self.vae, self.vocab = vae.requires_grad_(False), vocab
        self.mean = torch.as_tensor(latent_mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(latent_std, dtype=torch.float32, device=device).clamp(min=1e-6)
        self.latent_dim, self.block_size = vae.config.latent_dim, vae.config.block_size

    @classmethod
    def load(cls, vae_path, device='cpu'):
        """The latent space of a finished train_vae.py run (vae.pt with its latent statistics).
        Callers check it on the CPU against their data and DiT, then move it with .to(device)."""
        vae, vocab, ckpt = load_model(vae_path, 'vae')
        if 'latent_mean' not in ckpt:
            raise SystemExit(f"{vae_path} has no latent statistics: it is not a finished train_vae.py run")
        return cls(vae.to(device), ckpt['latent_mean'], ckpt['latent_std'], vocab)

    def to(self, device):
        self.vae, self.mean, self.std = self.vae.to(device), self.mean.to(device), self.std.to(device)
        return self

    @torch.no_grad()
    def encode(self, idx, valid=None):
        """(B, T) ids -> (B, T, latent_dim) fp32 normalised latents."""
        mean, _, _ = self.vae.encode(idx, valid)
        return (mean.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, z, valid=None):
        """(B, T, latent_dim) normalised latents -> (B, T) token ids (argmax of the decoder)."""
        z = z.to(self.mean.dtype) * self.std + self.mean
        return self.vae.decode(z.to(next(self.vae.parameters()).dtype), valid).argmax(-1)
