"""
Benchmarks for the README. Each prints a markdown table with the machine it ran on.

    python bench.py --what=prepare   # prepare.py's tokenizing speed vs plain tiktoken, peak memory
    python bench.py --what=corpus    # how fast the embedded story generator writes tokens
    python bench.py --what=prepare,corpus
    python bench.py --what=flops --seq_len=1024   # the DiT's forward FLOPs per token, counted
    python bench.py --what=dit_step --train_batch_size=16   # the quick start's DiT step: adaLN per time against per token
    python bench.py --what=memory --dtype=bfloat16 --vae_size=paper --dit_size=dit-l --gpt_size=gpt2-large
    python bench.py --what=repa      # the REPA teacher's and its inputs' share of a paper-size VAE step
    python bench.py --what=eval --gpt_size=gpt2   # eval.py's GPT rows, one prompt at a time vs a batch; FLOPs

The prepare benchmark writes a synthetic OpenWebText2 archive (a tar of .jsonl.zst shards, real
English prose from Python's own documentation, ~6 KB per document like OpenWebText2's) into a
temporary folder, runs prepare.py on it in a fresh process, and removes it afterwards.
"""
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import configurator
import latent_space
import tokenization
import standins

# -----------------------------------------------------------------------------
out_dir = 'out/bench'
data_dir = 'data/tiny'
device = 'cpu'
dtype = 'float32'
compile = False
seed = 1337
what = 'prepare'           # comma-separated: prepare, corpus, train, sample, flops, dit_step, memory, repa, eval
prepare_mb = 32            # text for the throughput runs
memory_mb = (16, 64)       # two corpus sizes: peak memory should not grow with the corpus
memory_num_proc = 2
repeats = 3                # speeds are the best of this many runs (a shared machine is noisy)
corpus_stories = 100_000
# train and sample: sizes are model.py presets. On a GPU, e.g.
#   --device=cuda --dtype=bfloat16 --vae_size=paper --dit_size=dit-l --gpt_size=gpt2-large --seq_len=1024
vae_size = 'tiny'
dit_size = 'tiny'
gpt_size = 'tiny'          # for sampling, the GPT of about the DiT's size (dit-l ~ gpt2-large)
seq_len = 128              # training window
latent_dim = 16            # dit_step: the quick start's latent channels
train_batch_size = 8
train_iters = 20           # tokens/s is taken over the second half (compilation happens in the first)
compile_modes = (False, True)
gen_lengths = (128, 512, 1024)
gen_batches = (1, 64)
gen_prompt = 32            # prompt tokens before each continuation
gen_steps = 50
gen_cfg_scale = 7.0
gen_cola_block = 16        # the block-causal (Cola) DiT: tokens per block (0 = leave it out)
gen_cola_steps = 16        # Euler steps per block
# repa: config/owt.py's VAE step (FLOPs counted, not run) and its teacher's inputs (timed on this CPU)
repa_vae_size = 'paper'
repa_teacher_layer = -3
repa_window = 1024
repa_batch = 16
repa_batches = 4           # batches of teacher inputs timed
repa_teacher_vocab = 8000  # the stand-in teacher tokenizer's (config/owt.py's Qwen3 tokenizer is a download)
eval_prompts = 32          # eval: prompts of random lengths in eval_prompt_range, each continued by
eval_prompt_range = (20, 200)  # eval_new_tokens, one at a time and as one batch
eval_new_tokens = 64
eval_doc_tokens = 1024     # eval: FLOPs of one document of this length, cut at its middle, at the paper's sizes
# -----------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.abspath(__file__))


def table(header, rows):
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for row in rows:
        print('| ' + ' | '.join(str(x) for x in row) + ' |')
    print()


def machine():
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"

# -----------------------------------------------------------------------------
# prepare.py


def english_documents(megabytes):
    """Real English prose with some code: Python's pydoc topics, one per document, repeated with
    a numbered title line until there are `megabytes` MB of text."""
    from pydoc_data.topics import topics
    texts, size, copy = [], 0, 0
    while size < megabytes * 1e6:
        for name, text in sorted(topics.items()):
            texts.append(f"{name} ({copy})\n\n{text}")
            size += len(texts[-1])
        copy += 1
    return texts


# runs prepare.py and adds its CPU time (after imports; its workers included) and peak memory
PREPARE_CHILD = """
import json, resource, sys
import tokenization, prepare
tokenization.get_tokenizer()
def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime
before = cpu(resource.RUSAGE_SELF)
stats = prepare.main(sys.argv[1:])
stats['cpu'] = cpu(resource.RUSAGE_SELF) - before + cpu(resource.RUSAGE_CHILDREN)
stats['rss'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
stats['workers_rss'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print('STATS', json.dumps(stats))
"""
LAUNCHER = 'import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))'


def run_prepare(archive, data_dir, num_proc):
    """prepare.py in a fresh process; returns its stats. It is started through a small launcher
    process: on Linux a process started directly from this one (which holds the whole corpus)
    would inherit this one's ru_maxrss across exec."""
    args = ['--dataset=owt2', f'--input={archive}', f'--data_dir={data_dir}', f'--num_proc={num_proc}']
    out = subprocess.run([sys.executable, '-c', LAUNCHER, sys.executable, '-c', PREPARE_CHILD, *args],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.split('STATS ', 1)[1])


def import_rss_mib():
    """Peak memory of a process that only imports prepare.py and loads the tokenizer."""
    code = ('import resource, tokenization, prepare; tokenization.get_tokenizer(); '
            'print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)')
    return float(subprocess.check_output([sys.executable, '-c', LAUNCHER, sys.executable, '-c', code],
                                         cwd=ROOT, text=True))


def tiktoken_speed(texts, how):
    """Plain tiktoken on texts in memory: (tokens, seconds, CPU seconds)."""
    encoding = tokenization.get_tokenizer()
    start, start_cpu = time.time(), time.process_time()
    if how == 'encode_ordinary':
        n = sum(len(encoding.encode_ordinary(text)) for text in texts)
    elif how == 'encode_to_numpy':  # what each prepare.py process calls
        n = sum(len(encoding.encode_to_numpy(text, disallowed_special=())) for text in texts)
    else:
        n = sum(map(len, encoding.encode_ordinary_batch(texts, num_threads=int(how[-1]))))
    return n, time.time() - start, time.process_time() - start_cpu


def bench_prepare(cfg):
    work = tempfile.mkdtemp(prefix='bench_prepare_')
    try:
        texts = english_documents(cfg['prepare_mb'])
        archive = os.path.join(work, 'owt2.tar')
        standins.write_owt2_archive(archive, texts, shards=8)
        rows, best = [], 0  # the most tokens per CPU second of plain tiktoken in one thread

        def row(what, tokens, seconds, cpu, versus=''):
            rows.append((what, f'{tokens:,}', f'{seconds:.2f}', f'{tokens / seconds:,.0f}', f'{cpu:.2f}',
                         f'{tokens / cpu:,.0f}', versus))
        for how in ('encode_ordinary', 'encode_to_numpy', 'encode_ordinary_batch threads=1',
                    'encode_ordinary_batch threads=2'):
            n, seconds, cpu = min((tiktoken_speed(texts, how) for _ in range(cfg['repeats'])), key=lambda r: r[2])
            best = max(best, n / cpu) if not how.endswith('2') else best
            row(f'tiktoken {how} (text in memory)', n, seconds, cpu)
        for num_proc in (1, 2):
            s = min((run_prepare(archive, os.path.join(work, f'data{num_proc}'), num_proc)
                     for _ in range(cfg['repeats'])), key=lambda s: s['cpu'])
            tokens = s['train_tokens'] + s['val_tokens'] - s['train_docs'] - s['val_docs']  # less EOTs
            row(f'prepare.py num_proc={num_proc} (read tar, zstd, JSON; tokenize; write)', tokens,
                s['seconds'], s['cpu'], f"{tokens / s['cpu'] / best:.2f}")
        print(f"prepare.py throughput on {len(texts):,} documents ({cfg['prepare_mb']} MB of English "
              f"text) in an OpenWebText2-style archive, best of {cfg['repeats']}. prepare.py's time runs "
              f"from its first read to its last write (start-up excluded); its CPU time adds up "
              f"the main process and the workers. {machine()}\n")
        table(('what', 'tokens', 'seconds', 'tokens/s', 'CPU seconds', 'tokens per CPU second',
               'per CPU second, vs the best 1-thread tiktoken'), rows)

        rows = []
        for mb in cfg['memory_mb']:
            texts = english_documents(mb)
            standins.write_owt2_archive(archive, texts, shards=8)
            s = run_prepare(archive, os.path.join(work, f'mem{mb}'), cfg['memory_num_proc'])
            rows.append((f'{mb} MB', f"{len(texts):,}", f"{s['train_tokens'] + s['val_tokens']:,}",
                         f"{s['rss']:.0f}", f"{s['workers_rss']:.0f}"))
        print(f"prepare.py peak memory (ru_maxrss) with num_proc={cfg['memory_num_proc']}; a process that "
              f"only imports prepare.py and loads the tokenizer peaks at {import_rss_mib():.0f} MiB\n")
        table(('text', 'documents', 'tokens', 'main process MiB', 'largest worker MiB'), rows)
    finally:
        shutil.rmtree(work)

# -----------------------------------------------------------------------------
# corpus.py


def bench_corpus(cfg):
    import corpus
    start, start_cpu = time.time(), time.process_time()
    stories = list(corpus.generate_stories(cfg['corpus_stories'], 0))
    seconds, cpu = time.time() - start, time.process_time() - start_cpu
    tokens = sum(map(len, tokenization.get_tokenizer().encode_ordinary_batch(stories)))
    print(f"corpus.generate_stories: {machine()}\n")
    table(('stories', 'tokens', 'tokens per story', 'seconds', 'tokens/s', 'CPU seconds', 'tokens per CPU second'),
          [(f'{len(stories):,}', f'{tokens:,}', f'{tokens / len(stories):.1f}', f'{seconds:.2f}',
            f'{tokens / seconds:,.0f}', f'{cpu:.2f}', f'{tokens / cpu:,.0f}')])


# -----------------------------------------------------------------------------
# Training throughput: the real stage scripts, on the embedded corpus, timed by their own logs


def stage_run(script, args, cwd):
    """Run a stage script; (its last progress line, its peak RSS in MiB)."""
    proc = subprocess.Popen([sys.executable, script, *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        sys.exit(f"{script} failed:\n{output[-3000:]}")
    progress = [line for line in output.splitlines() if ' tok/s' in line]
    return progress[-1], usage.ru_maxrss / 1024


def parse_progress(line):
    """'vae iter 20: loss ... 123ms/it 4,567 tok/s mfu 40.1% mem 3.2GiB' -> dict of the figures."""
    words = line.replace(',', '').split()
    found = {'tok/s': float(words[words.index('tok/s') - 1])}
    for key in ('mfu', 'mem'):
        if key in words:
            found[key] = words[words.index(key) + 1]
    return found


def bench_train(cfg):
    work = tempfile.mkdtemp(prefix='bench_train_')
    try:
        data = os.path.join(work, 'data')
        subprocess.run([sys.executable, 'prepare.py', '--synthetic_stories=5000', f'--data_dir={data}',
                        '--num_proc=1'], cwd=ROOT, check=True, capture_output=True)
        n = cfg['train_iters']
        common_args = [f'--data_dir={data}', f"--device={cfg['device']}", f"--dtype={cfg['dtype']}",
                       f'--max_iters={n}', f'--eval_interval={n}', f'--log_interval={n // 2}', '--eval_iters=1',
                       f"--block_size={cfg['seq_len']}", f"--batch_size={cfg['train_batch_size']}", '--warmup_iters=0']
        rows = []
        for compiled in cfg['compile_modes']:
            out = os.path.join(work, f'out{int(compiled)}')
            for stage in ('gpt', 'vae', 'dit'):
                vocab = [] if stage == 'dit' else ['--compact_vocab=False']  # GPT-2's full vocabulary
                line, rss = stage_run(f'train_{stage}.py', [*common_args, *vocab, f'--out_dir={out}',
                                                            f'--compile={compiled}', f"--size={cfg[stage + '_size']}"], ROOT)
                figures = parse_progress(line)
                memory = figures.get('mem', f'{rss:.0f} MiB RSS')
                rows.append((stage, cfg[stage + '_size'], compiled, f"{figures['tok/s']:,.0f}",
                             figures.get('mfu', 'n/a'), memory))
        print(f"Training throughput of the stage scripts (the VAE with its REPA teacher, the GPT "
              f"this run trained), window {cfg['seq_len']}, batch {cfg['train_batch_size']}, "
              f"{cfg['device']} {cfg['dtype']}, over iterations {n // 2 + 1}-{n}. {machine()}\n")
        table(('stage', 'size', 'compile', 'tokens/s', 'MFU', 'peak memory'), rows)
    finally:
        shutil.rmtree(work)


# -----------------------------------------------------------------------------
# The DiT's FLOPs, counted: what each forward pass computes, against what attention and MLP need

def bench_flops(cfg):
    """Forward FLOPs per token of every DiT preset on a seq_len row (context and target), counted
    by torch's FlopCounterMode on the meta device (no memory, no compute): adaLN computed once per
    distinct time of a row (the DiT's way) and once per token (the way of image DiTs and of this
    DiT's first version), against the attention + MLP + input/output layers the row needs."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    import model
    L, rows = cfg['seq_len'], []
    for size in model.DIT_SIZES:
        with torch.device('meta'):
            dit = model.DiT(model.make_config('dit', size, block_size=L))
            x, t = torch.zeros(1, L, dit.config.latent_dim), torch.full((1,), 0.5)
            is_target = torch.arange(L)[None] >= L // 2
        pos, counts = torch.arange(L, device='meta')[None], {}
        per_token = (torch.where(is_target, t[:, None], 1.0), pos)   # each token its own time-table entry
        per_row = (torch.stack([torch.ones_like(t), t], dim=1), is_target.long())
        for name, (times, segment) in (('per token', per_token), ('per time', per_row)):
            with FlopCounterMode(display=False) as counter:
                dit.denoise(x, times, segment, is_target, pos, None)
            counts[name] = counter.get_total_flops() / L
        C, hidden = dit.config.n_embd, int(dit.config.n_embd * dit.config.mlp_ratio)
        needed = dit.config.n_layer * (8 * C * C + 4 * L * C + 4 * C * hidden) + 4 * dit.config.latent_dim * C
        rows.append((size, f"{dit.num_params() / 1e6:.0f}M", f"{needed / 1e9:.3f}", f"{counts['per token'] / 1e9:.3f}",
                     f"{counts['per token'] / needed:.2f}x", f"{counts['per time'] / 1e9:.3f}",
                     f"{counts['per time'] / needed:.3f}x", f"{counts['per token'] / counts['per time']:.2f}x"))
    print(f"DiT forward GFLOP per token, a {L}-token row (context and target: two distinct times), counted "
          f"by torch.utils.flop_counter on the meta device\n")
    table(('DiT', 'params', 'attention + MLP + in/out', 'adaLN per token', 'ratio', 'adaLN per time', 'ratio',
           'saved'), rows)


def bench_dit_step(cfg):
    """Milliseconds per DiT training step (loss, forward and backward) as train_dit.py runs it
    (adaLN per distinct time, no attention mask) and the image DiTs' way (adaLN per token, here with
    a mask on every batch), alternating in one process; the median of `repeats` x 5 rounds."""
    import statistics
    import torch
    import model
    torch.manual_seed(cfg['seed'])
    dit = model.DiT(model.make_config('dit', cfg['dit_size'], latent_dim=cfg['latent_dim'], block_size=cfg['seq_len'],
                                      prediction='x', self_cond=True))
    B, L = cfg['train_batch_size'], cfg['seq_len']
    x, t = torch.randn(B, L, cfg['latent_dim']), torch.rand(B)
    is_target = torch.arange(L)[None] >= torch.randint(0, 3 * L // 4, (B, 1))
    everything = torch.ones(B, L, dtype=torch.bool)

    def per_token(x, t, is_target, valid=None, x_self=None):   # each token its own time-table entry, and a mask
        pos = torch.arange(L).expand(x.shape[0], L)
        times = torch.where(is_target, t[:, None], 1.0)
        mask = model.build_attention_mask(L, x.device, everything[:x.shape[0]])
        return dit.denoise(x, times, pos, is_target, pos, mask, x_self)

    def step(net):
        dit.zero_grad(set_to_none=True)
        model.flow_matching_loss(net, x, t, is_target, self_cond=True).backward()

    times = {'per token': [], 'per time': []}
    for net in (per_token, dit):   # warm-up
        step(net)
    for _ in range(5 * cfg['repeats']):
        for name, net in (('per token', per_token), ('per time', dit)):
            start = time.perf_counter()
            step(net)
            times[name].append(1000 * (time.perf_counter() - start))
    ms = {name: statistics.median(v) for name, v in times.items()}
    print(f"DiT training step, '{cfg['dit_size']}' ({dit.num_params() / 1e6:.2f}M), {B} x {L} tokens, "
          f"{cfg['latent_dim']}-channel latents, x-prediction and self-conditioning (the quick start's DiT), "
          f"{torch.get_num_threads()} threads, median of {len(times['per time'])} alternating steps. {machine()}\n")
    table(('DiT', 'ms per step', 'speed-up'), [('adaLN per token, masked attention', f"{ms['per token']:.0f}", '1.00x'),
                                              ('adaLN per time, no mask (train_dit.py)', f"{ms['per time']:.0f}",
                                               f"{ms['per token'] / ms['per time']:.2f}x")])


def bench_memory(cfg):
    """Activation memory per token of each stage's training loss at the configured sizes: the bytes
    autograd keeps for the backward pass (each storage once; parameters and their casts left out),
    counted on the CPU: with the residual stream in fp32 under autocast, in the autocast dtype (as
    model.py keeps it), and with activation checkpointing; on CUDA also the allocator's peak above the
    weights. One window of seq_len tokens (memory per token barely depends on the batch). The VAE
    without its projector and teacher (the teacher keeps nothing: no gradient)."""
    import model
    as_model = model.autocast_dtype
    settings = (('fp32 residual', lambda x: x.dtype, False), ('autocast residual', as_model, False),
                ('checkpointing', as_model, True))
    rows = [memory_row(cfg, kind, settings) for kind in ('vae', 'dit', 'gpt')]
    cuda = cfg['device'].startswith('cuda')
    columns = [f'{name}: {what} KiB/token' for name, _, _ in settings for what in (('saved', 'peak') if cuda else ('saved',))]
    print(f"Activation memory of one training loss, a {cfg['seq_len']}-token window, {cfg['device']} {cfg['dtype']}. "
          f"{machine()}\n")
    table(('stage', 'size', *columns), rows)


def memory_row(cfg, kind, settings):
    """bench_memory's row of one stage: KiB per token kept for the backward pass under each of
    `settings` (name, the residual stream's dtype, activation checkpointing), and on CUDA the peak."""
    import torch
    import model
    device, L = cfg['device'], cfg['seq_len']
    cuda = device.startswith('cuda')
    torch.manual_seed(cfg['seed'])
    cls = {'vae': model.TextVAE, 'dit': model.DiT, 'gpt': model.GPT}[kind]
    net = cls(model.make_config(kind, cfg[f'{kind}_size'], block_size=L)).to(device).train()
    weights = {tuple(p.shape) for p in net.parameters()} | {tuple(p.shape[::-1]) for p in net.parameters()}
    if kind == 'dit':
        x, is_target = torch.randn(1, L, net.config.latent_dim, device=device), torch.arange(L, device=device)[None] >= L // 2
        loss_fn = lambda: model.flow_matching_loss(net, x, torch.rand(1, device=device), is_target)
    else:
        idx = torch.randint(0, 50257, (1, L), device=device)
        loss_fn = ((lambda: net(idx, targets=idx)[1]) if kind == 'gpt' else
                   (lambda: torch.nn.functional.cross_entropy(net(idx)[0].float().flatten(0, 1), idx.flatten())))
    row, as_model = [kind, cfg[f'{kind}_size']], model.autocast_dtype
    for _, residual_dtype, checkpointing in settings:
        model.autocast_dtype, net.checkpointing = residual_dtype, checkpointing
        kept = {}   # storage -> bytes: views of one tensor share it

        def pack(t):
            if tuple(t.shape) not in weights:
                kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast(
                'cuda' if cuda else 'cpu', dtype=getattr(torch, cfg['dtype']), enabled=cfg['dtype'] != 'float32'):
            loss = loss_fn()
        peak = (torch.cuda.max_memory_allocated() - base) if cuda else None
        loss.backward()
        net.zero_grad(set_to_none=True)
        row.append(f"{sum(kept.values()) / L / 1024:,.0f}")
        if cuda:
            row.append(f"{peak / L / 1024:,.0f}")
    model.autocast_dtype = as_model
    return row


# -----------------------------------------------------------------------------
# Sampling speed: TextLDM (all tokens at once, `gen_steps` ODE steps with CFG) against the
# GPT with its key/value cache (one token per step). Weights are random: speed does not care.


def timed(fn, device):
    """Seconds of one call of fn, after one warm-up call."""
    import torch
    fn()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    start = time.time()
    fn()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.time() - start


def bench_sample(cfg):
    import torch
    import model
    import cola
    import sampling
    device, longest = cfg['device'], cfg['gen_prompt'] + max(cfg['gen_lengths'])
    net_dtype = torch.bfloat16 if cfg['dtype'] == 'bfloat16' and device.startswith('cuda') else torch.float32

    def build(cls, kind, **overrides):
        config = model.make_config(kind, cfg[f'{kind}_size'], block_size=longest, **overrides)
        return cls(config).to(device, net_dtype).eval()
    vae = build(model.TextVAE, 'vae')
    D, block = vae.config.latent_dim, cfg['gen_cola_block']
    dit = build(model.DiT, 'dit', latent_dim=D)
    cola_dit = build(model.DiT, 'dit', latent_dim=D, latent_block=block) if block else None
    gpt = build(model.GPT, 'gpt')
    space = latent_space.LatentSpace(vae, torch.zeros(D), torch.ones(D), tokenization.Vocab())
    flow = dict(cfg_scale=cfg['gen_cfg_scale'], ode_dtype=torch.float32)
    rows, generator = [], torch.Generator(device).manual_seed(cfg['seed'])
    for length in cfg['gen_lengths']:
        for batch in cfg['gen_batches']:
            prompts = [list(range(1000, 1000 + cfg['gen_prompt']))] * batch
            textldm = timed(lambda: sampling.textldm_continue(dit, space, prompts, [length] * batch, generator=generator,
                                                            steps=cfg['gen_steps'], **flow), device)
            seconds = {'TextLDM': textldm}
            if cola_dit is not None:  # every block to the full length (random weights would stop at any <|endoftext|>)
                context_ids, context_valid = sampling.pad_rows(prompts, 0, device)

                def cola_run():
                    latents = cola.sample_blocks(cola_dit, space.encode(context_ids, context_valid), context_valid,
                                                 length, steps=cfg['gen_cola_steps'], generator=generator,
                                                 net_dtype=net_dtype, **flow)
                    return space.decode(latents)
                seconds['Cola'] = timed(cola_run, device)
            idx = torch.tensor(prompts, device=device)
            with torch.no_grad():
                seconds['GPT'] = timed(lambda: gpt.generate(idx, length, top_k=50, generator=generator), device)
            print(f"  {length} new tokens x {batch}: " + ', '.join(f'{k} {v:.2f} s' for k, v in seconds.items()), flush=True)
            row = [length, batch]
            for k in seconds:
                row += [f'{seconds[k]:.3f}', f'{batch * length / seconds[k]:,.0f}']
            rows.append(row + [f"{seconds['GPT'] / seconds[k]:.1f}x" for k in seconds if k != 'GPT'])
    names = [k for k in seconds if k != 'GPT']
    cola_text = (f"; Cola = the same DiT block-causal, blocks of {block}, {cfg['gen_cola_steps']} Euler steps "
                 f"a block with CFG and a key/value cache of the finished blocks" if cola is not None else '')
    print(f"Sampling a continuation after a {cfg['gen_prompt']}-token prompt: TextLDM "
          f"(DiT '{cfg['dit_size']}' {dit.num_params() / 1e6:.1f}M + VAE '{cfg['vae_size']}', "
          f"{cfg['gen_steps']} Euler steps, CFG {cfg['gen_cfg_scale']}: two passes a step){cola_text}; "
          f"against GPT '{cfg['gpt_size']}' ({gpt.num_params() / 1e6:.1f}M) with a KV cache; "
          f"{device} {net_dtype}. {machine()}\n")
    table(('new tokens', 'batch', *[f'{k} {u}' for k in (*names, 'GPT') for u in ('s', 'tok/s')],
           *[f'{k} speed-up' for k in names]), rows)


# -----------------------------------------------------------------------------
# REPA's share of a VAE step at paper sizes: the teacher's FLOPs against the VAE's, counted on
# the meta device (shapes only: no weights, no time), and the teacher's inputs (its tokenizer and
# the character alignment, CPU work on every rank) timed for real.

QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)


def repa_step_flops(cfg):
    """FLOPs of one step's VAE forward+backward, of the whole teacher (all blocks and the LM head)
    and of the teacher as teacher.py runs it (cut after its layer); its parameters, and those cut."""
    import torch
    import torch.nn.functional as F
    from transformers import Qwen3Config, Qwen3ForCausalLM
    import model
    import teacher
    from training import counted_flops
    B, T, layer = cfg['repa_batch'], cfg['repa_window'], cfg['repa_teacher_layer']
    vae_config = model.make_config('vae', cfg['repa_vae_size'], vocab_size=tokenization.VOCAB_SIZE, block_size=T)
    with torch.device('meta'):
        vae = model.TextVAE(vae_config)
        projector = model.Projector(vae_config.n_embd, 2048, QWEN3_1_7B['hidden_size'])  # config/owt.py's
        lm = Qwen3ForCausalLM(Qwen3Config(**QWEN3_1_7B))
        idx, valid = torch.zeros(B, T, dtype=torch.long), torch.ones(B, T, dtype=torch.bool)
        target = torch.zeros(B, T, QWEN3_1_7B['hidden_size'])

    def vae_step():  # train_vae.py's objective, CE + KL + REPA, and its backward
        logits, mean, logvar, hidden = vae(idx, valid)
        loss = (F.cross_entropy(logits.flatten(0, 1), idx.flatten()) + model.kl_divergence(mean, logvar, valid)
                + model.repa_loss(projector(hidden), target, valid))
        loss.backward()
    # a padding mask cannot be inspected on meta tensors: the causal mask goes in as if prepared
    causal = {'full_attention': None}
    params = sum(p.numel() for p in lm.parameters())
    with torch.no_grad():
        whole = counted_flops(lambda: lm(input_ids=idx, attention_mask=causal, output_hidden_states=True))
        trunk, dropped = teacher.cut_after(lm, layer)
        cut = counted_flops(lambda: trunk(input_ids=idx, attention_mask=causal, use_cache=False))
    return counted_flops(vae_step), whole, cut, params, dropped


def repa_inputs_cpu(cfg, folder):
    """CPU ms per window of align_by_characters and per batch of Teacher.inputs, on 1,024-token
    windows of English text, with a stand-in teacher whose tokenizer is a byte-level BPE trained
    on that text; and the teacher's tokens per window."""
    import numpy as np
    import torch
    from teacher import Teacher
    B, T = cfg['repa_batch'], cfg['repa_window']
    texts = english_documents(4)
    standins.write_teacher(folder, texts, cfg['repa_teacher_vocab'], 'cpu', hidden_size=64, intermediate_size=128,
                           num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    stand_in = Teacher(folder, cfg['repa_teacher_layer'], 'cpu', T)
    ids = tokenization.get_tokenizer().encode_ordinary_batch(texts)
    stream = np.array([t for doc in ids for t in doc + [tokenization.EOT]], dtype=np.int64)
    starts = np.random.default_rng(cfg['seed']).integers(0, len(stream) - T, size=(cfg['repa_batches'], B))
    batches = [torch.from_numpy(stream[s[:, None] + np.arange(T)]) for s in starts]
    valid, vocab = torch.ones(B, T, dtype=torch.bool), tokenization.Vocab()
    start = time.process_time()
    for x in batches:
        stand_in.inputs(x, valid, vocab)
    per_batch = 1000 * (time.process_time() - start) / len(batches)
    start = time.process_time()
    widths = [len(tokenization.align_by_characters(w.tolist(), stand_in.tokenizer)[0]) for x in batches for w in x]
    per_window = 1000 * (time.process_time() - start) / len(widths)
    return per_window, per_batch, sum(widths) / len(widths)


def bench_repa(cfg):
    from training import PEAK_FLOPS
    vae, whole, cut, params, dropped = repa_step_flops(cfg)
    work = tempfile.mkdtemp(prefix='bench_repa_')
    try:
        per_window, per_batch, teacher_tokens = repa_inputs_cpu(cfg, os.path.join(work, 'teacher'))
    finally:
        shutil.rmtree(work)
    B, T, peak = cfg['repa_batch'], cfg['repa_window'], PEAK_FLOPS['H200']
    at_peak = 1000 * (vae + cut) / peak  # ms: no real step is shorter
    print(f"REPA's share of a VAE step: VAE '{cfg['repa_vae_size']}', batch {B} x {T} tokens, a Qwen3-1.7B-shaped "
          f"teacher ({params / 1e9:.2f}B parameters, random) read at layer {cfg['repa_teacher_layer']} on {T} "
          f"tokens a window. FLOPs counted by torch's FlopCounterMode on the meta device; the teacher's inputs "
          f"timed on this CPU with a stand-in tokenizer (byte-level BPE of {cfg['repa_teacher_vocab']} tokens "
          f"trained on the text; {teacher_tokens:.0f} teacher tokens a window). {machine()}\n")
    table(('part of one step', 'cost', 'share'), [
        ("VAE forward + backward (projector and losses)", f'{vae / 1e12:.3g} TFLOP', ''),
        (f"the whole teacher: all {QWEN3_1_7B['num_hidden_layers']} blocks, LM head, every hidden state",
         f'{whole / 1e12:.3g} TFLOP', f'{100 * whole / (vae + whole):.0f}% of the step'),
        (f"the teacher cut (teacher.py): blocks up to its layer, no LM head ({dropped / 1e6:.1f}M parameters dropped)",
         f'{cut / 1e12:.3g} TFLOP', f'{100 * cut / (vae + cut):.0f}% of the step'),
        ("the step with the teacher cut, at the H200's bf16 peak (989 TFLOP/s): a lower bound", f'{at_peak:.0f} ms', ''),
        (f"teacher inputs of one rank's batch (Teacher.inputs, {B} windows), CPU", f'{per_batch:.1f} ms',
         f'{100 * per_batch / at_peak:.0f}% of that bound'),
        ("of which align_by_characters, per window", f'{per_window:.2f} ms', '')])


def bench_eval(cfg):
    """eval.py's GPT rows: prompts of mixed lengths one at a time (what batching prompts of equal
    length only comes to, as real documents' prompts all differ) against one batch,
    left-padded (sampling.gpt_continue). Then the FLOPs of one document at the paper's sizes,
    counted on shapes alone (meta tensors), for a GPU estimate (README)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    import eval as ev
    import model
    import sampling
    device, n = cfg['device'], cfg['eval_new_tokens']
    net_dtype = torch.bfloat16 if cfg['dtype'] == 'bfloat16' and device.startswith('cuda') else torch.float32
    rng = np.random.default_rng(cfg['seed'])
    low, high = cfg['eval_prompt_range']
    prompts = [rng.integers(0, 50000, rng.integers(low, high + 1)).tolist() for _ in range(cfg['eval_prompts'])]
    gpt = model.GPT(model.make_config('gpt', cfg['gpt_size'])).to(device, net_dtype).eval()
    vocab, generator = tokenization.Vocab(), torch.Generator(device).manual_seed(cfg['seed'])
    one = lambda p: gpt.generate(torch.tensor([p], device=device), n, top_k=50, generator=generator)
    runs = {'one at a time': lambda: [one(p) for p in prompts],
            f'batch of {len(prompts)}, left-padded': lambda: sampling.gpt_continue(
                gpt, vocab, prompts, [n] * len(prompts), generator, top_k=50)}
    one(prompts[0])   # warm-up
    rows, seconds = [], []
    for name, run in runs.items():
        seconds.append(timed_once(run, device))
        rows.append((name, *(f'{t:.1f}' for t in seconds[-1]), *(f'{len(prompts) * n / t:,.1f}' for t in seconds[-1])))
    print(f"GPT '{cfg['gpt_size']}' ({gpt.num_params() / 1e6:.0f}M), {len(prompts)} prompts of {low}-{high} tokens "
          f"(mean {np.mean([len(p) for p in prompts]):.0f}), {n} new tokens each, top-k 50; {device} {net_dtype}; "
          f"batching speed-up {seconds[0][0] / seconds[1][0]:.1f}x in seconds, {seconds[0][1] / seconds[1][1]:.1f}x "
          f"in CPU seconds (the reliable one on a shared machine). {machine()}\n")
    table(('GPT generation', 'seconds', 'CPU seconds', 'new tokens/s', 'per CPU second'), rows)

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()
    T, cut = cfg['eval_doc_tokens'], cfg['eval_doc_tokens'] // 2
    with torch.device('meta'), torch.no_grad():   # shapes only
        big_gpt = model.GPT(model.make_config('gpt', 'gpt2-large', block_size=T)).eval()
        vae = model.TextVAE(model.make_config('vae', 'paper', block_size=T)).eval()
        dit = model.DiT(model.make_config('dit', 'dit-l', latent_dim=vae.config.latent_dim, block_size=T)).eval()
        ids, latents = torch.zeros(1, T, dtype=torch.long), torch.zeros(1, T, vae.config.latent_dim)
        gpt_flops = flops(lambda: big_gpt(ids))   # KV-cached generation computes each token once, as this pass
        dit_flops = flops(lambda: dit(latents, torch.ones(1), torch.arange(T)[None] >= cut))
        vae_flops = flops(lambda: (vae.encode(ids[:, :cut]), vae.decode(latents[:, cut:])))
    steps = cfg['gen_steps']
    print(f"FLOPs of one {T}-token document cut at {cut} (FlopCounterMode; attention counted in full, causal or not):\n")
    table(('model', 'what', 'TFLOP per document'),
          [('gpt2-large', 'one pass over the document (prompt pass + one pass per new token)', f'{gpt_flops / 1e12:.2f}'),
           ('TextLDM dit-l', f'{steps} steps x 2 passes (CFG) over {T} latents', f'{2 * steps * dit_flops / 1e12:.1f}'),
           ('TextLDM VAE', 'encode the prompt, decode the continuation', f'{vae_flops / 1e12:.2f}')])
    # eval.py's own cuts and batches (batch_size 32) of 1,000 documents of T tokens
    cuts = ev.cut_points([T] * 1000, ev.seed)
    prompts, rest = [[0] * c for c in cuts], [T - c for c in cuts]
    batches, within = ev.batches_within(prompts, rest), ev.batches_within(prompts, rest, T)
    print(f"1,000 documents of {T} tokens, cut as eval.py cuts them: the GPT's {len(batches)} batches run "
          f"{sum(max(rest[i] for i in b) for b in batches):,} decode steps ({sum(rest):,} one prompt at a time); "
          f"TextLDM and hf: rows, whose batches must fit the context, make {len(within)} batches.\n")


def timed_once(fn, device):
    """(seconds, CPU seconds of this process) of one call of fn."""
    import torch
    start, cpu_start = time.time(), time.process_time()
    fn()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
    return time.time() - start, time.process_time() - cpu_start


if __name__ == '__main__':
    config = configurator.configure(globals(), 'bench')
    for name in what.split(','):
        benches = {'prepare': bench_prepare, 'corpus': bench_corpus, 'train': bench_train, 'sample': bench_sample,
                   'flops': bench_flops, 'dit_step': bench_dit_step,
                   'memory': bench_memory, 'repa': bench_repa, 'eval': bench_eval}
        if name.strip() not in benches:
            raise configurator.ConfigError(f"what={name!r}: choose from {', '.join(benches)}")
        benches[name.strip()](config)
