"""The dress rehearsal of the paper-scale recipe (rehearsal.py): config/owt.py itself through every
stage under torchrun with 2 ranks, on local stand-ins in real formats (an OpenWebText2 archive, a
Qwen3 teacher with its own tokenizer, the four evaluation sets in the hub cache's layout).

Run: python -m pytest tests/test_rehearsal.py -q   (CPU, offline, ~1-2 min on 2 cores)
"""
import json
import os
import re
import sys

import pytest

import helpers
import rehearsal

# The only keys the rehearsal may override: what shrinks the run (sizes, window, batch, iterations,
# device, dtype, compile), where its files go, and the local stand-ins for what a GPU node downloads.
SHRINK = {'size', 'block_size', 'batch_size', 'gradient_accumulation_steps', 'eval_iters', 'max_iters',
          'lr_decay_iters', 'warmup_iters', 'kl_warmup_iters', 'eval_interval', 'log_interval',
          'projector_dim', 'stats_batches', 'val_fraction', 'num_proc', 'num_samples', 'max_new_tokens',
          'num_docs', 'num_uncond', 'recon_batches', 'steps', 'device', 'dtype', 'compile'}
PLACES = {'out_dir', 'data_dir', 'out', 'prompt', 'model'}
STAND_INS = {'input', 'repa_teacher', 'judge', 'bertscore_model', 'mauve_featurizer', 'bertscore', 'mauve'}


@pytest.fixture(scope='module')
def rehearsed(tmp_path_factory):
    work = tmp_path_factory.mktemp('rehearsal')
    result = helpers._run([sys.executable, 'rehearsal.py', f'--work_dir={work}'], True, None, 900)
    return work, result.stdout


@pytest.mark.parametrize('scale', ['cpu', 'gpu', 'dry_run'])
def test_only_shrinking_overrides(scale):
    paths = dict(work='w', archive='a.tar', teacher='t', hub='h', data='d', out='o')
    s = dict(rehearsal.SCALES['gpu'], **rehearsal.DRY_RUN) if scale == 'dry_run' else rehearsal.SCALES[scale]
    for stage, argv, _ in rehearsal.stage_commands(s, paths):
        assert 'config/owt.py' in argv, stage
        keys = {a[2:].partition('=')[0] for a in argv if a.startswith('--') and '=' in a and '.py' not in a}
        keys -= {'standalone', 'nproc_per_node', 'max-restarts'}   # torchrun's own
        assert keys <= SHRINK | PLACES | STAND_INS, (stage, keys - SHRINK - PLACES - STAND_INS)


def test_rehearsal_runs_every_stage_of_config_owt(rehearsed):
    work, stdout = rehearsed
    assert 'every stage passed' in stdout
    summary = json.loads((work / 'rehearsal.json').read_text())
    assert list(summary['stages']) == ['prepare', 'vae', 'dit', 'gpt', 'sample', 'eval']
    meta = json.loads((work / 'data' / 'meta.json').read_text())
    assert meta['source'] == 'owt2' and meta['input'][0].endswith('openwebtext2.jsonl.zst.tar')
    assert 'aligned through character offsets' in stdout  # the teacher's tokenizer is not GPT-2's
    owt = {}
    exec(open(os.path.join(helpers.ROOT, 'config', 'owt.py')).read(), owt)
    for stage in ('vae', 'dit', 'gpt'):
        ckpt = helpers.load_ckpt(work / 'out' / f'{stage}.pt')
        assert len(ckpt['rng']) == 2, stage          # it ran on two ranks
        config = ckpt['config']                       # config/owt.py's settings, where not shrunk
        assert (config['beta2'], config['weight_decay'], config['grad_clip']) == (owt['beta2'], 0.0, 1.0)
        assert config['learning_rate'] == owt.get(f'{stage}_learning_rate', owt['learning_rate'])
        assert config['dtype'] == 'float32' and config['block_size'] == 64
    vae = helpers.load_ckpt(work / 'out' / 'vae.pt')
    assert vae['model_args']['latent_dim'] == owt['vae_latent_dim'] and vae['model_args']['vocab_ids'] is None
    dit = helpers.load_ckpt(work / 'out' / 'dit.pt')['config']
    assert (dit['truncate_prob'], dit['ema_decay'], dit['cfg_dropout']) == (0.5, owt['dit_ema_decay'], 0.1)
    samples = [json.loads(line) for line in open(work / 'samples.jsonl')]
    assert len(samples) == 2 and samples[0]['prompt'] == rehearsal.PROMPT


def test_rehearsal_evaluates_the_four_sets_drawn_from_every_shard(rehearsed):
    work, _ = rehearsed
    result = json.loads((work / 'out' / 'eval.json').read_text())
    assert list(result['sets']) == ['wikisource', 'wikipedia', 'tinystories', 'lm1b']
    config = result['config']                       # the paper's sampler, from config/owt.py
    assert (config['steps'], config['cfg_scale'], config['time_grid']) == (50, 7.0, 'logit_normal')
    for name, one in result['sets'].items():
        assert one['num_docs'] == 6 and set(one['rows']) >= {'textldm', 'gpt'}, name
        for row in ('textldm', 'gpt'):
            assert {'rouge1', 'gen_ppl', 'entropy'} <= set(one['rows'][row]), (name, row)
    records = [json.loads(line) for line in open(work / 'out' / 'eval_samples.jsonl')]
    prompts = [r['prompt'] for r in records if r['set'] == 'wikipedia' and r['kind'] == 'continuation']
    shards = {re.match(r'\[wikipedia (\S+) \d+\]', p).group(1) for p in prompts}
    assert len(shards) >= 2, shards                # drawn from the whole set, not its first shard
