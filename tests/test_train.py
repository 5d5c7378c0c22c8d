"""Tests for the training machinery: train_gpt.py, train_vae.py, training.py and the configurator,
loop and checkpoints. The stage scripts run as subprocesses, as a user runs them, on a tiny
prepared data dir (tests/helpers.py); REPA teachers are tiny random transformers models.

Run: python -m pytest tests/test_train.py -q   (CPU, about 1.5 minutes on 2 cores)
"""
import codecs
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import configurator
import helpers
import tokenization
import training
from helpers import load_ckpt, read_metrics, run_many, run_script, torchrun_command

# Small everything. A real learning rate with a short warm-up and decay, so that a few
# iterations move the weights far beyond the tolerance of the comparisons below.
TINY = ['--device=cpu', '--dtype=float32', '--compile=False', '--size=tiny', '--block_size=32',
        '--batch_size=4', '--eval_iters=2', '--compact_vocab=True', '--log_interval=5',
        '--learning_rate=3e-3', '--min_lr=3e-4', '--warmup_iters=5', '--lr_decay_iters=20']
VAE = ['--projector_dim=64', '--stats_batches=2', '--kl_warmup_iters=15']
VAE_METRICS = ('val_loss', 'val_recon_ce', 'val_recon_acc', 'val_kl', 'val_repa')


def args(data_dir, out_dir, *extra):
    return [*TINY, f'--data_dir={data_dir}', f'--out_dir={out_dir}', *extra]


def assert_same_weights(a, b, exact=True, atol=1e-5):
    """Every tensor of the two checkpoints' models (and optimizer moments) agrees."""
    assert a['model'].keys() == b['model'].keys()
    for key in a['model']:
        same = torch.equal if exact else (lambda x, y: torch.allclose(x, y, rtol=0, atol=atol))
        assert same(a['model'][key], b['model'][key]), f"model tensor {key} differs"
    for i, state in a['optimizer']['state'].items():
        for name, value in state.items():
            other = b['optimizer']['state'][i][name]
            assert (torch.equal(value, other) if exact else torch.allclose(value, other, rtol=1e-4, atol=1e-6)), \
                f"optimizer state {i}.{name} differs"


def assert_clean_checkpoint(ckpt):
    for key in ckpt['model']:
        assert not key.startswith('_orig_mod') and '._orig_mod' not in key, key
    for key in ('optimizer', 'scaler', 'iter_num', 'best_val_loss', 'model_args', 'config', 'rng'):
        assert key in ckpt, key
    assert {'python', 'numpy', 'torch', 'data'} <= set(ckpt['rng'][0])


# -----------------------------------------------------------------------------
# Shared fixtures: one data dir, one trained GPT (whose export is a REPA teacher), tiny teachers

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return helpers.write_data_dir(tmp_path_factory.mktemp('data'), n_stories=200,
                                  extra_docs=helpers.UNICODE_DOCS)


@pytest.fixture(scope='module')
def gpt_run(data_dir, tmp_path_factory):
    """out_dir after 4 iterations of train_gpt.py: gpt.pt, gpt_metrics.jsonl, gpt_hf/."""
    out = tmp_path_factory.mktemp('gpt_run')
    result = run_script('train_gpt.py', *args(data_dir, out, '--max_iters=4', '--eval_interval=2'))
    return out, result


@pytest.fixture(scope='module')
def vae_run(data_dir, gpt_run, tmp_path_factory):
    """A VAE trained for 4 iterations in a copy of gpt_run's out_dir, so its default teacher
    '{out_dir}/gpt_hf' is the GPT exported there."""
    out = tmp_path_factory.mktemp('vae_run') / 'out'
    shutil.copytree(gpt_run[0], out)
    result = run_script('train_vae.py', *args(data_dir, out, *VAE, '--max_iters=4', '--eval_interval=2'))
    return out, result


@pytest.fixture(scope='module')
def gpt2_teacher(tmp_path_factory):
    return helpers.gpt2_tokenizer_teacher(tmp_path_factory.mktemp('gpt2_teacher'), n_embd=48)


@pytest.fixture(scope='module')
def other_teacher(tmp_path_factory):
    texts = helpers.corpus_text(200, 0, helpers.UNICODE_DOCS)
    return helpers.other_tokenizer_teacher(tmp_path_factory.mktemp('llama_teacher'), texts, n_embd=40)


# -----------------------------------------------------------------------------
# 1. A few iterations of each script

def test_train_gpt_writes_checkpoint_metrics_and_export(gpt_run):
    out, _ = gpt_run
    ckpt = load_ckpt(out / 'gpt.pt')
    assert_clean_checkpoint(ckpt)
    assert ckpt['iter_num'] == 4 and ckpt['config']['max_iters'] == 4
    assert ckpt['model_args']['vocab_ids'] is not None  # compact_vocab
    metrics = read_metrics(out / 'gpt_metrics.jsonl')
    assert [m['iter'] for m in metrics] == [0, 2, 4]
    assert all(math.isfinite(m['val_loss']) for m in metrics)
    assert metrics[-1]['val_loss'] < metrics[0]['val_loss']  # it learns something
    hf_config = json.loads((out / 'gpt_hf' / 'config.json').read_text())
    assert hf_config['textldm_vocab_ids'] == ckpt['model_args']['vocab_ids']
    assert not (out / 'gpt_hf.tmp').exists()


def test_train_vae_with_exported_gpt_teacher(vae_run):
    out, result = vae_run
    assert f"REPA teacher {out}/gpt_hf" in result.stdout  # '{out_dir}/gpt_hf' follows --out_dir
    assert 'one to one' in result.stdout
    ckpt = load_ckpt(out / 'vae.pt')
    assert_clean_checkpoint(ckpt)
    latent_dim = ckpt['model_args']['latent_dim']
    assert ckpt['latent_mean'].shape == ckpt['latent_std'].shape == (latent_dim,)
    assert torch.isfinite(ckpt['latent_mean']).all() and (ckpt['latent_std'] > 0).all()
    assert ckpt['model_args']['teacher_hidden'] == 128  # the tiny GPT's width
    metrics = read_metrics(out / 'vae_metrics.jsonl')
    assert [m['iter'] for m in metrics] == [0, 2, 4]
    for m in metrics:
        assert set(VAE_METRICS) <= set(m) and all(math.isfinite(m[k]) for k in VAE_METRICS)
        assert 0 <= m['val_recon_acc'] <= 1 and -1 <= m['val_repa'] <= 1


# -----------------------------------------------------------------------------
# 2. Resume equivalence, and evaluation that does not disturb training

def test_a_scratch_run_starts_fresh_metrics(data_dir, gpt_run, tmp_path):
    shutil.copy(gpt_run[0] / 'gpt_metrics.jsonl', tmp_path / 'gpt_metrics.jsonl')   # an earlier run's
    run_script('train_gpt.py', *args(data_dir, tmp_path, '--max_iters=2', '--eval_interval=2', '--export_dir='))
    assert [m['iter'] for m in read_metrics(tmp_path / 'gpt_metrics.jsonl')] == [0, 2]


def test_gpt_resume_is_exact(data_dir, tmp_path):
    common_args = ['--eval_interval=5', '--export_dir=', '--dropout=0.1']
    run_many([['train_gpt.py', *args(data_dir, tmp_path / 'full', *common_args, '--max_iters=20')],
              ['train_gpt.py', *args(data_dir, tmp_path / 'split', *common_args, '--max_iters=10')]])
    assert load_ckpt(tmp_path / 'split' / 'gpt.pt')['iter_num'] == 10
    run_script('train_gpt.py', *args(data_dir, tmp_path / 'split', *common_args, '--max_iters=20',
                                     '--init_from=resume'))
    full, split = (read_metrics(tmp_path / d / 'gpt_metrics.jsonl') for d in ('full', 'split'))
    assert [m['iter'] for m in split] == [0, 5, 10, 15, 20]  # no second line for iter 10
    assert full == split
    assert_same_weights(load_ckpt(tmp_path / 'full' / 'gpt.pt'), load_ckpt(tmp_path / 'split' / 'gpt.pt'))


def test_vae_resume_is_exact_and_evaluation_does_not_disturb_training(data_dir, gpt_run, tmp_path):
    """The VAE draws posterior noise, dropout, truncation lengths and warms up its KL weight:
    all of it must continue across a resume, and none of it may be shifted by evaluation."""
    teacher = f'--repa_teacher={gpt_run[0]}/gpt_hf'
    common_args = [*VAE, teacher, '--dropout=0.1', '--truncate_prob=0.5']
    run = lambda name, *extra: ['train_vae.py', *args(data_dir, tmp_path / name, *common_args, *extra)]
    run_many([run('split', '--max_iters=10', '--eval_interval=5'),
              run('full', '--max_iters=20', '--eval_interval=5')])
    run_many([run('split', '--max_iters=20', '--eval_interval=5', '--init_from=resume'),
              run('rare_eval', '--max_iters=20', '--eval_interval=20')])
    full, split, rare = (read_metrics(tmp_path / d / 'vae_metrics.jsonl') for d in ('full', 'split', 'rare_eval'))
    assert full == split
    assert [m['iter'] for m in rare] == [0, 20] and rare[-1] == full[-1]
    full_ckpt = load_ckpt(tmp_path / 'full' / 'vae.pt')
    assert_same_weights(full_ckpt, load_ckpt(tmp_path / 'split' / 'vae.pt'))
    assert_same_weights(full_ckpt, load_ckpt(tmp_path / 'rare_eval' / 'vae.pt'))
    assert torch.equal(full_ckpt['latent_mean'], load_ckpt(tmp_path / 'split' / 'vae.pt')['latent_mean'])


def toy_run(out_dir, prefetch, max_iters=8, init_from='scratch', keep_checkpoints=False):
    """training.train in this process on a toy regression with dropout, 2 micro-steps a step:
    (the training batches the objective saw, the threads batch_fn ran in, checkpoint, metrics)."""
    import threading
    seen, threads = [], set()

    def batch_fn(split, rng):
        threads.add(threading.current_thread().name)
        x = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
        return x, x.sum(1, keepdim=True)

    class Objective(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.drop = torch.nn.Linear(3, 1), torch.nn.Dropout(0.5)  # dropout: torch's RNG in use

        def forward(self, x, y):
            if self.training:
                seen.append(x)
            return torch.nn.functional.mse_loss(self.net(self.drop(x)), y), {}
    cfg = dict(out_dir=str(out_dir), dtype='float32', compile=False, seed=3, init_from=init_from,
               max_iters=max_iters, eval_interval=4, eval_iters=2, log_interval=100, batch_size=4,
               gradient_accumulation_steps=2, learning_rate=0.1, min_lr=0.01, warmup_iters=2,
               lr_decay_iters=8, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0, wandb_log=False,
               keep_checkpoints=keep_checkpoints)
    torch.manual_seed(0)
    training.train(cfg, 'toy', Objective(), batch_fn, training.Dist('cpu'), {}, prefetch=prefetch)
    return seen, threads, load_ckpt(out_dir / 'toy.pt'), read_metrics(out_dir / 'toy_metrics.jsonl')


def test_keep_checkpoints_keeps_each_evaluations_weights(tmp_path):
    """keep_checkpoints: out_dir/STAGE_ITER.pt at every evaluation, the weights as they were then
    (the last one equals the final checkpoint's), and nothing else changes."""
    _, _, plain, plain_metrics = toy_run(tmp_path / 'plain', prefetch=True)
    _, _, final, metrics = toy_run(tmp_path / 'kept', prefetch=True, keep_checkpoints=True)
    assert metrics == plain_metrics and sorted(os.listdir(tmp_path / 'plain')) == ['toy.pt', 'toy_metrics.jsonl']
    assert sorted(os.listdir(tmp_path / 'kept')) == ['toy.pt', 'toy_0.pt', 'toy_4.pt', 'toy_8.pt', 'toy_metrics.jsonl']
    kept = {it: load_ckpt(tmp_path / 'kept' / f'toy_{it}.pt') for it in (0, 4, 8)}
    assert [kept[it]['iter_num'] for it in (0, 4, 8)] == [0, 4, 8] and 'optimizer' not in kept[8]
    for k, v in final['model'].items():
        assert torch.equal(kept[8]['model'][k], v) and not torch.equal(kept[0]['model'][k], v)


def test_batches_built_in_a_background_thread_change_nothing(tmp_path):
    """prefetch builds each next batch in a thread while the model works: the same batches in
    the same order, the same checkpoint (weights, next batch, every RNG) and metrics as in line,
    and the same across a resume."""
    ahead, ahead_threads, ahead_ckpt, ahead_metrics = toy_run(tmp_path / 'ahead', prefetch=True)
    in_line, in_line_threads, in_line_ckpt, in_line_metrics = toy_run(tmp_path / 'in_line', prefetch=False)
    assert any(name.startswith('next_batch') for name in ahead_threads) and in_line_threads == {'MainThread'}
    assert len(ahead) == len(in_line) == 16 and all(torch.equal(a, b) for a, b in zip(ahead, in_line))
    assert ahead_metrics == in_line_metrics and len(ahead_metrics) == 3
    assert_same_weights(ahead_ckpt, in_line_ckpt)
    assert all(torch.equal(a, b) for a, b in zip(ahead_ckpt['next_batch'][0], in_line_ckpt['next_batch'][0]))
    assert repr(ahead_ckpt['rng']) == repr(in_line_ckpt['rng'])
    toy_run(tmp_path / 'split', prefetch=True, max_iters=4)
    split, _, split_ckpt, split_metrics = toy_run(tmp_path / 'split', prefetch=True, init_from='resume')
    assert len(split) == 8 and all(torch.equal(a, b) for a, b in zip(split, ahead[8:])) and split_metrics == ahead_metrics
    assert_same_weights(split_ckpt, ahead_ckpt)


# -----------------------------------------------------------------------------
# 3. REPA alignment: the teacher's tokenizer is GPT-2's (one to one) or another (character offsets)

def test_repa_teacher_with_gpt2_tokenizer_aligns_one_to_one(data_dir, gpt2_teacher, tmp_path):
    result = run_script('train_vae.py', *args(data_dir, tmp_path, *VAE, f'--repa_teacher={gpt2_teacher}',
                                              '--max_iters=2', '--eval_interval=2'))
    assert 'aligned one to one' in result.stdout
    assert load_ckpt(tmp_path / 'vae.pt')['model_args']['teacher_hidden'] == 48
    repa = read_metrics(tmp_path / 'vae_metrics.jsonl')[-1]['val_repa']
    assert math.isfinite(repa) and repa != 0.0  # 0 would mean no token got a teacher state


def test_repa_teacher_with_another_tokenizer_aligns_by_characters(data_dir, other_teacher, tmp_path):
    # the data holds 'é', '日本', '🙂': random windows start and end inside UTF-8 characters
    result = run_script('train_vae.py', *args(data_dir, tmp_path, *VAE, f'--repa_teacher={other_teacher}',
                                              '--max_iters=4', '--eval_interval=2', '--truncate_prob=0.5'))
    assert 'through character offsets' in result.stdout
    assert load_ckpt(tmp_path / 'vae.pt')['model_args']['teacher_hidden'] == 40
    for m in read_metrics(tmp_path / 'vae_metrics.jsonl'):
        assert math.isfinite(m['val_repa']) and m['val_repa'] != 0.0 and math.isfinite(m['val_loss'])


def test_repa_cache_holds_the_teachers_states_shared_by_seeds_resumed_by_chunk(data_dir, other_teacher, tmp_path):
    """repa_cache_windows: the teacher runs once on a fixed pool, in chunks of 128 windows. The
    cached states are the live teacher's (bf16); a run at another seed reuses them, a deleted
    (or never written: killed) chunk is all a later run computes; another layer stops early."""
    cache = tmp_path / 'cache'
    cached = [*VAE, f'--repa_teacher={other_teacher}', '--repa_teacher_layer=-2', '--repa_cache_windows=300',
              f'--repa_cache_dir={cache}', '--max_iters=4', '--eval_interval=2', '--truncate_prob=0.5']
    first = run_script('train_vae.py', *args(data_dir, tmp_path / 'a', *cached))
    assert 'the teacher on 300 train windows' in first.stdout and 'the teacher on 8 val windows' in first.stdout
    assert sorted(os.listdir(cache)) == ['about.json', 'train_00000.pt', 'train_00128.pt', 'train_00256.pt', 'val_00000.pt']
    for m in read_metrics(tmp_path / 'a' / 'vae_metrics.jsonl'):
        assert math.isfinite(m['val_repa']) and m['val_repa'] < 0.0 and math.isfinite(m['val_loss'])

    from teacher import Teacher
    data = tokenization.TokenData(data_dir, True)
    teacher = Teacher(other_teacher, -2, 'cpu', 32, data.tokenizer)
    chunk = load_ckpt(cache / 'train_00128.pt')
    assert chunk['windows'].shape == (128, 32) and chunk['states'].dtype == torch.bfloat16
    live, have = teacher.features(*teacher.inputs(chunk['windows'], torch.ones_like(chunk['windows'], dtype=torch.bool),
                                                  data.vocab), 32)
    assert torch.equal(have, chunk['have']) and have.float().mean() > 0.9
    assert torch.allclose(chunk['states'].float(), live, rtol=1e-2, atol=1e-2)

    os.remove(cache / 'train_00128.pt')
    again = run_script('train_vae.py', *args(data_dir, tmp_path / 'b', *cached, '--seed=7'))
    assert 'the teacher on 128 train windows' in again.stdout and 'the teacher on 8 val' not in again.stdout
    assert torch.equal(load_ckpt(cache / 'train_00128.pt')['states'], chunk['states'])
    other_layer = run_script('train_vae.py', *args(data_dir, tmp_path / 'c', *cached, '--repa_teacher_layer=-3'), check=False)
    assert other_layer.returncode != 0 and 'holds the states of' in other_layer.stderr
    assert 'the teacher on' not in other_layer.stdout


def _word_tokenizer(words):
    """A teacher tokenizer that reads whole words (split on whitespace and punctuation)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(['[UNK]', *words])}, unk_token='[UNK]'))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token='[UNK]')


def test_align_by_characters_hand_made():
    align = tokenization.align_by_characters
    tokenizer = _word_tokenizer(['Hello', 'world', 'unbelievable', '.'])
    # 'Hello' | ' world' (our second token spans the space too) -> one teacher word each
    ids, pairs = align(tokenization.encode('Hello world'), tokenizer)
    assert ids == tokenizer('Hello world', add_special_tokens=False)['input_ids'] and pairs.tolist() == [[0, 0], [1, 1]]
    # four of our tokens ('un', 'bel', 'iev', 'able') inside one teacher word
    ours = tokenization.encode('unbelievable.')
    assert len(ours) == 5
    _, pairs = align(ours, tokenizer)
    assert pairs.tolist() == [[0, 0], [1, 0], [2, 0], [3, 0], [4, 1]]
    # <|endoftext|> is a blank line between documents: it covers no teacher word here
    ids, pairs = align(tokenization.encode('Hello') + [tokenization.EOT] + tokenization.encode('world'), tokenizer)
    assert len(ids) == 2 and pairs.tolist() == [[0, 0], [2, 1]]


def test_align_by_characters_windows_inside_utf8_characters():
    align = tokenization.align_by_characters
    tokenizer = helpers.train_tokenizer(helpers.corpus_text(50, 0, helpers.UNICODE_DOCS), vocab_size=280)
    text = ' '.join(helpers.UNICODE_DOCS)
    ours = tokenization.encode(text)
    # every start and length, so windows begin and end inside multi-byte characters
    cut_inside = 0
    for start in range(0, len(ours) - 1):
        for length in (1, 2, 3, 7, 20):
            window = ours[start:start + length]
            ids, pairs = align(window, tokenizer)
            pairs = [tuple(pair) for pair in pairs.tolist()]
            decoded = tokenization.decode(window)  # the same text, bad bytes as U+FFFD
            cut_inside += '\ufffd' in decoded
            assert ids == tokenizer(decoded, add_special_tokens=False)['input_ids']
            # every token of ours gets a teacher token and every teacher token is used, in order
            assert sorted({i for i, _ in pairs}) == list(range(len(window)))
            assert sorted({j for _, j in pairs}) == list(range(len(ids)))
            assert pairs == sorted(pairs) and all(0 <= j < len(ids) for _, j in pairs)
            firsts = [min(j for i2, j in pairs if i2 == i) for i in range(len(window))]
            assert firsts == sorted(firsts)
    assert cut_inside > 10


def align_by_characters_quadratic(ids, tokenizer):
    """align_by_characters as it was before it was made linear (issue 16): the reference."""
    enc, decoder = tokenization.get_tokenizer(), codecs.getincrementaldecoder('utf-8')('replace')
    pieces, starts = [], []
    for t in ids:
        starts.append(sum(map(len, pieces)))
        pieces.append('\n\n' if t == tokenization.EOT else decoder.decode(enc.decode_single_token_bytes(t)))
    pieces.append(decoder.decode(b'', final=True))
    text = ''.join(pieces)
    ends = starts[1:] + [len(text)]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.array(encoded['offset_mapping'], dtype=np.int64).reshape(-1, 2)
    pairs = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        e = max(e, min(s + 1, len(text)))
        first = np.searchsorted(offsets[:, 1], s, side='right')
        last = np.searchsorted(offsets[:, 0], e, side='left')
        pairs += [(i, j) for j in range(first, last)]
    return encoded['input_ids'], pairs


def test_align_by_characters_equals_the_quadratic_reference():
    """Exactly the old output on windows cut inside UTF-8 characters, around and between
    <|endoftext|>s, of tokens that complete no character (empty spans), and on empty windows;
    with a byte-level BPE (offsets cover all text), a word tokenizer (gaps between words) and
    offsets out of order."""
    eot = [tokenization.EOT]
    docs = [*helpers.UNICODE_DOCS, *helpers.corpus_text(20, 1)]
    stream = [t for doc in docs for t in [*tokenization.encode(doc), *eot]]
    rng = np.random.default_rng(0)
    windows = [[], eot, eot * 3, tokenization.encode('日')[:1], tokenization.encode('🙂')[1:3], stream[:1024]]
    for _ in range(300):
        start, length = rng.integers(0, len(stream)), rng.integers(1, 80)
        windows.append(stream[start:start + length])

    def unordered(text, **kwargs):  # offsets out of order, as a special token's (0, 0) mid-text gives
        n = len(text)
        return {'input_ids': [7, 8, 9], 'offset_mapping': [(n // 3, n), (0, 0), (0, n // 2)]}
    tokenizers = [helpers.train_tokenizer(docs, vocab_size=280),
                  _word_tokenizer(['Le', 'café', 'the', 'was', 'a', '.']), unordered]
    for tokenizer in tokenizers:
        for window in windows:
            ids, pairs = tokenization.align_by_characters(window, tokenizer)
            old_ids, old_pairs = align_by_characters_quadratic(window, tokenizer)
            assert ids == old_ids and pairs.dtype == np.int64 and pairs.shape == (len(old_pairs), 2)
            assert [tuple(pair) for pair in pairs.tolist()] == old_pairs, window
    # the windows do hold tokens that complete no character (an empty span), many of them
    decoder, enc = codecs.getincrementaldecoder('utf-8')('replace'), tokenization.get_tokenizer()
    assert sum(decoder.decode(enc.decode_single_token_bytes(t)) == '' for w in windows for t in w) > 50


# -----------------------------------------------------------------------------
# 4. Two processes under torchrun (gloo on CPU) = one process with the same global batch

def test_ddp_two_ranks_match_one_process(data_dir, tmp_path):
    common_args = ['--max_iters=6', '--eval_interval=3', '--export_dir=', '--gradient_accumulation_steps=2']
    run_many([['train_gpt.py', *args(data_dir, tmp_path / 'one', *common_args)],
              torchrun_command('train_gpt.py', *args(data_dir, tmp_path / 'two', *common_args), nproc=2)])
    one, two = load_ckpt(tmp_path / 'one' / 'gpt.pt'), load_ckpt(tmp_path / 'two' / 'gpt.pt')
    assert len(one['rng']) == 1 and len(two['rng']) == 2  # it really ran on two ranks
    assert_same_weights(one, two, exact=False, atol=1e-5)
    m_one, m_two = (read_metrics(tmp_path / d / 'gpt_metrics.jsonl') for d in ('one', 'two'))
    assert [m['iter'] for m in m_one] == [m['iter'] for m in m_two] == [0, 3, 6]
    for a, b in zip(m_one, m_two):
        assert a['val_loss'] == pytest.approx(b['val_loss'], abs=1e-5)
    # The comparison can fail: at this learning rate each step moves the weights by ~1e-3, so
    # other micro-batches (a stream dealt to the wrong rank) would be far outside atol.
    assert m_one[-1]['val_loss'] < m_one[0]['val_loss'] - 0.1


# NCCL takes tensors on the GPU only; gloo, which the CPU tests run on, takes any device, so a
# CPU tensor in a collective passes here and stops a GPU run at its first evaluation. Two checks
# close that gap: every collective of the project is a method of training.Dist (read from the
# source), and each of those methods hands torch.distributed a tensor on the configured device
# (a Dist configured for the 'meta' device, which no tensor reaches by accident).
COLLECTIVES = {'all_reduce', 'all_gather', 'all_gather_object', 'all_gather_into_tensor', 'all_to_all',
               'all_to_all_single', 'barrier', 'monitored_barrier', 'broadcast', 'broadcast_object_list',
               'reduce', 'reduce_scatter', 'reduce_scatter_tensor', 'gather', 'gather_object', 'scatter',
               'scatter_object_list', 'send', 'recv', 'isend', 'irecv'}


def collective_calls(path):
    """(enclosing class or None, name) of each call torch.distributed.NAME / dist.NAME in a file."""
    import ast
    tree = ast.parse(open(path).read())
    imported_as = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for a in node.names if a.name == 'torch.distributed'}
    found = []

    def visit(node, cls):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, child.name)
                continue
            if isinstance(child, ast.ImportFrom) and child.module == 'torch.distributed':
                found.extend((cls, a.name) for a in child.names if a.name in COLLECTIVES)
            if isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute) and child.func.attr in COLLECTIVES:
                owner = ast.unparse(child.func.value)
                if owner in imported_as or owner == 'torch.distributed':
                    found.append((cls, child.func.attr))
            visit(child, cls)
    visit(tree, None)
    return found


def test_every_collective_is_a_method_of_dist():
    sources = [f for f in os.listdir(helpers.ROOT) if f.endswith('.py')]
    calls = {f: collective_calls(os.path.join(helpers.ROOT, f)) for f in sources}
    assert {name for _, name in calls['training.py']} >= {'all_reduce', 'all_gather_object', 'barrier'}
    outside = {f: c for f, c in calls.items() if any(cls != 'Dist' or f != 'training.py' for cls, _ in c)}
    assert not outside, f"collectives outside training.Dist: {outside}"


def test_collectives_receive_tensors_on_the_configured_device(monkeypatch):
    class Handed(Exception):  # a meta tensor has no value: stop once the device is seen
        pass
    devices = []

    def all_reduce(tensor, *args, **kwargs):
        devices.append(tensor.device)
        raise Handed
    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    dist_ = training.Dist('cpu')                    # a single process...
    dist_.ddp, dist_.world_size, dist_.device = True, 2, 'meta'  # ...configured as a rank of two
    calls = [lambda: dist_.all_reduce_sum({'loss': 1.0, 'count': 2.0}),
             lambda: dist_.any(True), lambda: dist_.any(torch.zeros((), dtype=torch.bool)),
             lambda: training.check_finite(dist_, False, 10, 'ckpt.pt'),   # the validation loss's flag
             lambda: training.check_finite(dist_, torch.ones((), dtype=torch.bool), 10, 'ckpt.pt')]
    for call in calls:
        with pytest.raises(Handed):
            call()
    assert devices == [torch.device('meta')] * len(calls)


# -----------------------------------------------------------------------------
# 5. A NaN loss stops the run and keeps the last good checkpoint

def test_nan_loss_stops_and_keeps_last_checkpoint(data_dir, gpt_run, tmp_path):
    shutil.copy(gpt_run[0] / 'gpt.pt', tmp_path / 'gpt.pt')  # a good checkpoint at iter 4
    shutil.copy(gpt_run[0] / 'gpt_metrics.jsonl', tmp_path / 'gpt_metrics.jsonl')
    common_args = ['--export_dir=', '--eval_interval=5']
    before = (tmp_path / 'gpt.pt').read_bytes()
    metrics_before = (tmp_path / 'gpt_metrics.jsonl').read_text()
    result = run_script('train_gpt.py', *args(data_dir, tmp_path, *common_args, '--max_iters=20',
                                              '--init_from=resume', '--learning_rate=1e30', '--log_interval=1'),
                        check=False)
    assert result.returncode != 0
    assert 'NaN' in result.stderr
    assert (tmp_path / 'gpt.pt').read_bytes() == before
    assert (tmp_path / 'gpt_metrics.jsonl').read_text() == metrics_before
    ckpt = load_ckpt(tmp_path / 'gpt.pt')
    assert ckpt['iter_num'] == 4 and all(torch.isfinite(v).all() for v in ckpt['model'].values())


# -----------------------------------------------------------------------------
# 6. Bad input: a clear message and a non-zero exit before any training

def assert_fails_early(result, message, out_dir, stage):
    """A non-zero exit, `message` in stderr, no traceback, and no checkpoint written."""
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, (message, result.stderr[-2000:])
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(out_dir, f'{stage}.pt'))


def test_bad_command_line(data_dir, tmp_path):
    # the configurator's own cases are tested in process below; here: the scripts use it first
    cases = [(['--bogus_key=1'], "unknown key 'bogus_key'"),
             (['--max_iters=abc'], 'max_iters'),
             (['config/no_such_config.py'], 'no_such_config.py'),
             (['--init_from=bogus'], "init_from='bogus'"),
             (['--init_from=resume'], 'not found')]
    results = run_many([['train_gpt.py', *args(data_dir, tmp_path / str(i), *extra)]
                        for i, (extra, _) in enumerate(cases)], check=False)
    for i, ((_, message), result) in enumerate(zip(cases, results)):
        assert_fails_early(result, message, tmp_path / str(i), 'gpt')


def test_bad_data_and_teachers(data_dir, vae_run, gpt2_teacher, tmp_path):
    """Missing data, data of another tokenizer, a teacher that cannot be loaded, a resumed VAE
    whose projector was made for a teacher of another width."""
    llama_data = helpers.write_data_dir(tmp_path / 'llama_data', n_stories=20, tokenizer='llama')
    (tmp_path / 'garbage').mkdir()
    (tmp_path / 'garbage' / 'config.json').write_text('{not json')
    resumed = tmp_path / 'resumed'
    shutil.copytree(vae_run[0], resumed)
    before = (resumed / 'vae.pt').read_bytes()
    cases = [('gpt', args(tmp_path / 'nothing', tmp_path / 'o0'), 'no prepared data', tmp_path / 'o0'),
             ('gpt', args(llama_data, tmp_path / 'o1'), "'llama'", tmp_path / 'o1'),
             ('vae', args(data_dir, tmp_path / 'o2', *VAE, f'--repa_teacher={tmp_path}/missing'),
              'cannot load the REPA teacher', tmp_path / 'o2'),
             ('vae', args(data_dir, tmp_path / 'o3', *VAE, f'--repa_teacher={tmp_path}/garbage'),
              'cannot load the REPA teacher', tmp_path / 'o3'),
             ('vae', args(data_dir, resumed, *VAE, f'--repa_teacher={gpt2_teacher}', '--init_from=resume',
                          '--max_iters=6'), 'width', None),
             ('vae', args(data_dir, tmp_path / 'o4', *VAE, f'--repa_teacher={gpt2_teacher}',
                          '--repa_teacher_layer=-9'), 'repa_teacher_layer=-9', tmp_path / 'o4'),
             ('vae', args(data_dir, tmp_path / 'o5', *VAE, '--repa_teacher=None', '--repa_cache_windows=64'),
              'repa_cache_windows=64', tmp_path / 'o5')]
    results = run_many([[f'train_{stage}.py', *argv] for stage, argv, _, _ in cases], check=False,
                       env={'HF_HUB_OFFLINE': '1'})
    for (stage, _, message, out_dir), result in zip(cases, results):
        assert_fails_early(result, message, out_dir or tmp_path / 'none', stage)
    assert (resumed / 'vae.pt').read_bytes() == before


def test_bad_configurations_stop_before_any_model_is_loaded(data_dir, vae_run, gpt2_teacher, tmp_path):
    """On a GPU node a bad setting must cost seconds, not a teacher load: the teacher's layer
    and context are read from its config alone (its folder here has no weights), the batch split
    from torchrun's WORLD_SIZE, and a VAE's vocabulary against the DiT's data."""
    configs = {}
    for name, n_positions in (('short', 16), ('no_weights', 128)):
        folder = tmp_path / name
        folder.mkdir()
        config = json.load(open(os.path.join(gpt2_teacher, 'config.json')))
        (folder / 'config.json').write_text(json.dumps({**config, 'n_positions': n_positions}))
        configs[name] = folder
    other_data = helpers.write_data_dir(tmp_path / 'other_data', n_stories=20,
                                        extra_docs=["Quantum zebras juggle xylophones in Reykjavik."])
    cases = [('vae', args(data_dir, tmp_path / 'o1', *VAE, f"--repa_teacher={configs['no_weights']}",
                          '--repa_teacher_layer=5'), 'repa_teacher_layer=5', tmp_path / 'o1'),
             ('vae', args(data_dir, tmp_path / 'o2', *VAE, f"--repa_teacher={configs['short']}"),
              'block_size=32 is longer than the 16-token context of repa_teacher=', tmp_path / 'o2'),
             ('dit', [a for a in args(other_data, tmp_path / 'o3', f"--vae_path={vae_run[0]}/vae.pt")
                      if not a.startswith('--compact_vocab')],
              f"data_dir='{other_data}' holds", tmp_path / 'o3'),
             ('dit', [a for a in args(data_dir, tmp_path / 'o5', f"--vae_path={vae_run[0]}/vae.pt",
                                      '--logit_normal_std=0.0') if not a.startswith('--compact_vocab')],
              'logit_normal_std=0.0 must be > 0', tmp_path / 'o5')]
    results = run_many([[f'train_{stage}.py', *argv] for stage, argv, _, _ in cases], check=False,
                       env={'HF_HUB_OFFLINE': '1'})
    for (stage, _, message, out_dir), result in zip(cases, results):
        assert_fails_early(result, message, out_dir, stage)
    assert f"the VAE vae_path='{vae_run[0]}/vae.pt' does not know" in results[2].stderr
    split = run_script('train_gpt.py', *args(data_dir, tmp_path / 'o4', '--gradient_accumulation_steps=3'),
                       check=False, env={'WORLD_SIZE': '2'})
    assert_fails_early(split, 'gradient_accumulation_steps=3 must be a positive multiple of the 2 ranks',
                       tmp_path / 'o4', 'gpt')


# -----------------------------------------------------------------------------
# 7. The configurator, in process

DEFAULTS = dict(out_dir='out/x', data_dir='data/x', max_iters=1, learning_rate=1.0, compile=False,
                teacher='{out_dir}/teacher', data_file='{data_dir}/train.bin', device='cpu', optional=None)


def configure(tmp_path, file_text, *argv, stage='vae'):
    path = tmp_path / 'exp.py'
    path.write_text(file_text)
    defaults = dict(DEFAULTS)
    config = configurator.configure(defaults, stage, [str(path), *argv])
    assert {k: v for k, v in defaults.items() if k != '_defaults'} == config  # applied to the globals in place
    return config


def test_configure_again_starts_from_the_defaults(tmp_path):
    """A script's main() called twice in one process (tests, notebooks): the second run does not
    inherit the first one's values; constants (UPPER_CASE) and _private names are not keys."""
    script = dict(DEFAULTS, CHUNK=4, _cache=None)
    assert configurator.configure(script, 'vae', ['--max_iters=5'])['max_iters'] == 5 and script['max_iters'] == 5
    config = configurator.configure(script, 'vae', ['--out_dir=o'])
    assert config['max_iters'] == 1 and config['teacher'] == 'o/teacher' and 'CHUNK' not in config
    for bad in ('--CHUNK=1', '--_cache=1'):
        with pytest.raises(SystemExit, match='unknown key'):
            configurator.configure(script, 'vae', [bad])


def test_configure_precedence(tmp_path):
    # the file: STAGE_key beats key whatever their order in the file
    text = 'vae_max_iters = 3\nmax_iters = 2\n'
    assert configure(tmp_path, '')['max_iters'] == 1
    assert configure(tmp_path, 'max_iters = 2\n')['max_iters'] == 2
    assert configure(tmp_path, text)['max_iters'] == 3
    assert configure(tmp_path, text, '--max_iters=4')['max_iters'] == 4
    assert configure(tmp_path, text, '--vae_max_iters=5', '--max_iters=4')['max_iters'] == 5
    assert configure(tmp_path, text, '--max_iters=4', '--vae_max_iters=5')['max_iters'] == 5


def test_configure_ignores_other_stages_and_unknown_file_keys(tmp_path):
    text = 'gpt_max_iters = 7\ndit_learning_rate = 9.0\ndataset = "synthetic"\nimport os\n'
    config = configure(tmp_path, text)
    assert config['max_iters'] == 1 and config['learning_rate'] == 1.0
    assert 'dataset' not in config and 'gpt_max_iters' not in config
    assert configure(tmp_path, text, stage='gpt')['max_iters'] == 7
    # on the command line, only this script's keys: a typo of eval_iters is not "the eval stage's"
    for arg in ('--gpt_max_iters=8', '--eval_iter=5', '--dit_bogus=1'):
        with pytest.raises(SystemExit, match=arg[2:].split('=')[0]):
            configure(tmp_path, text, arg)


def test_configure_resolves_templates_after_overrides(tmp_path):
    config = configure(tmp_path, 'out_dir = "out/file"\n', '--out_dir=out/cli', '--data_dir=d')
    assert config['teacher'] == 'out/cli/teacher' and config['data_file'] == 'd/train.bin'
    config = configure(tmp_path, 'out_dir = "out/file"\n')
    assert config['teacher'] == 'out/file/teacher'
    config = configure(tmp_path, 'teacher = "{out_dir}/mine"\n', '--out_dir=o')
    assert config['teacher'] == 'o/mine'
    assert configure(tmp_path, '', '--teacher=hub/model')['teacher'] == 'hub/model'


def test_configure_types(tmp_path):
    config = configure(tmp_path, 'learning_rate = 3\n', '--device=cuda:1')
    assert config['learning_rate'] == 3.0 and type(config['learning_rate']) is float  # int for float
    assert config['device'] == 'cuda:1'  # a bare word is a string
    assert configure(tmp_path, '', '--teacher=None')['teacher'] is None  # None turns a path off
    assert configure(tmp_path, '', '--optional=(1, 2)')['optional'] == (1, 2)  # None default: any type
    assert configure(tmp_path, '', '--compile=True')['compile'] is True
    for bad in ('--max_iters=True', '--max_iters=1.5', '--max_iters=abc', '--compile=1',
                '--learning_rate=True', '--device=3'):
        with pytest.raises(SystemExit) as e:
            configure(tmp_path, '', bad)
        key = bad[2:].split('=')[0]
        assert key in str(e.value.code), (bad, e.value.code)
    with pytest.raises(SystemExit, match='max_iters'):
        configure(tmp_path, 'max_iters = 1.5\n')  # a file value of the wrong type, too


def test_configure_errors(tmp_path):
    with pytest.raises(SystemExit) as e:
        configurator.configure(dict(DEFAULTS), 'vae', [str(tmp_path / 'missing.py')])
    assert 'missing.py' in str(e.value.code)
    for bad, key in (('--nope=1', 'nope'), ('--vae_nope=1', 'vae_nope'), ('--max_iters', 'max_iters')):
        with pytest.raises(SystemExit) as e:
            configure(tmp_path, '', bad)
        assert key in str(e.value.code) and e.value.code not in (0, None)


# Every script reads every config file: a config file holds the keys of all stages, and a key of
# one script is never taken for another stage's with another meaning (bench.py's own
# `sample_prompt`, an int, once read the sample stage's prompt text and stopped).
SCRIPTS = {'prepare.py': 'prepare', 'train_gpt.py': 'gpt', 'train_vae.py': 'vae', 'train_dit.py': 'dit',
           'sample.py': 'sample', 'eval.py': 'eval', 'bench.py': 'bench', 'rehearsal.py': 'rehearsal',
           'curves.py': 'curves'}


def script_defaults(script):
    """A script's configurable defaults, read from its top-level assignments without running its
    work: everything before its call of configurator.configure, lower-case names, plain values,
    and the sampler's keys that sample.py and eval.py take with globals().update(sampling.SAMPLER)."""
    import ast
    import sampling
    path = os.path.join(helpers.ROOT, script)
    namespace = {'torch': torch, 'os': os, 'sampling': sampling, '__file__': path}
    for node in ast.parse(open(path).read()).body:
        if 'configurator.configure' in ast.unparse(node):
            break
        if (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)
                or ast.unparse(node) == 'globals().update(sampling.SAMPLER)'):
            exec(compile(ast.Module(body=[node], type_ignores=[]), path, 'exec'), namespace)
    return {k: v for k, v in namespace.items() if k.islower() and not k.startswith('_')
            and isinstance(v, (int, float, bool, str, tuple, list, type(None)))}


def test_every_script_reads_every_config_file(monkeypatch):
    monkeypatch.chdir(helpers.ROOT)   # config/cola.py reads config/tiny.py
    configs = sorted(os.path.join('config', f) for f in os.listdir('config') if f.endswith('.py'))
    assert 'config/owt.py' in configs and 'config/tiny.py' in configs
    for script, stage in SCRIPTS.items():
        defaults = script_defaults(script)
        assert {'out_dir', 'data_dir', 'device', 'dtype', 'compile', 'seed'} <= set(defaults) or \
            script in ('rehearsal.py', 'curves.py'), script   # the one drives the stage scripts, the other reads files
        for config in configs:
            configurator.configure(dict(defaults), stage, [config])   # raises ConfigError on a clash


def test_quick_start_dit_stays_within_its_compute_budget(monkeypatch):
    """Issue 18's budget: config/tiny.py's DiT spends no more FLOPs than 4,000 iterations of the
    width-128 'tiny' DiT on 16 channels it trained until 2026-12-06, counted as train_dit.py counts
    them; config/repro.py and config/cola.py keep that DiT and VAE, with which their README numbers
    were measured."""
    import model
    from cola import train_flops_per_token
    monkeypatch.chdir(helpers.ROOT)   # config/repro.py and config/cola.py read config/tiny.py
    stages = {stage: {name: configurator.configure(script_defaults(f'train_{stage}.py'), stage, [f'config/{name}.py'])
                      for name in ('tiny', 'repro', 'cola')} for stage in ('vae', 'dit')}
    dit, vae = stages['dit'], stages['vae']
    flops = lambda size, latent_dim: train_flops_per_token(
        model.make_config('dit', size, latent_dim=latent_dim, block_size=128, self_cond=True))

    quick = dit['tiny']
    assert quick['size'] == 'nano' and quick['lr_decay_iters'] == quick['max_iters'] and quick['self_cond']
    assert (quick['block_size'], dit['repro']['block_size']) == (128, 128)
    assert quick['max_iters'] * flops('nano', vae['tiny']['latent_dim']) <= 4000 * flops('tiny', 16)
    for name in ('repro', 'cola'):
        assert (dit[name]['size'], dit[name]['max_iters'], dit[name]['lr_decay_iters']) == ('tiny', 4000, 4000)
        assert (vae[name]['latent_dim'], vae[name]['max_iters'], vae[name]['lr_decay_iters']) == (16, 300, 300)


def test_no_key_reads_as_another_stages_key_of_another_type():
    defaults = {stage: script_defaults(script) for script, stage in SCRIPTS.items()}
    assert {'learning_rate', 'max_iters', 'batch_size'} <= set(defaults['dit'])   # shown at the top
    assert {'steps', 'renoise', 'top_p'} <= set(defaults['sample']) & set(defaults['eval'])
    for stage, keys in defaults.items():
        for key, value in keys.items():
            for other, other_keys in defaults.items():
                rest = key[len(other) + 1:] if key.startswith(other + '_') and other != stage else None
                if rest in other_keys and None not in (value, other_keys[rest]):
                    assert type(value) is type(other_keys[rest]) or {type(value), type(other_keys[rest])} <= {int, float}, \
                        f"{stage}'s {key}={value!r} reads as {other}'s {rest}={other_keys[rest]!r}"


def test_vae_batches_are_never_padded_and_its_attention_is_unmasked(monkeypatch):
    """Truncation cuts a whole micro-batch to one length, so the VAE's attention (in training,
    causal or not) runs without a mask: SDPA's fastest kernels."""
    import torch.nn.functional as F
    import model

    class Data:
        vocab = tokenization.Vocab()

        @staticmethod
        def windows(split, batch_size, length, rng):
            return rng.integers(0, 100, size=(batch_size, length))

    names = dict(np=np, torch=torch, nn=torch.nn, F=F, data=Data, batch_size=4, block_size=16, truncate_prob=0.5,
                 min_length=4, mask_prob=0.25, teacher=None, cache=None, masked_mean=model.masked_mean,
                 kl_divergence=model.kl_divergence, repa_loss=model.repa_loss)
    batch_fn = helpers.script_function('train_vae.py', 'batch_fn', names)
    objective_class = helpers.script_function('train_vae.py', 'VAEObjective', names)
    rng, widths = np.random.default_rng(0), []
    for _ in range(400):
        idx, masked = batch_fn('train', rng)
        assert masked.shape == idx.shape and masked.dtype == torch.bool
        widths.append(idx.shape[1])
    assert set(widths) == set(range(4, 17)) and 0.45 < np.mean(np.array(widths) == 16) < 0.6
    masks, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(model.F, 'scaled_dot_product_attention',
                        lambda *a, **kw: masks.append(kw.get('attn_mask', a[3] if len(a) > 3 else None)) or sdpa(*a, **kw))
    for causal in (False, True):
        vae = model.TextVAE(model.make_config('vae', 'tiny', block_size=16, n_embd=32, n_head=2, latent_dim=4,
                                              causal=causal, masked_tokens=True))
        loss, metrics = objective_class(vae, None, 1.0)(*batch_fn('train', rng))
        loss.backward()
        assert len(masks) == 4 and all(m is None for m in masks) and 'masked_ce' in metrics
        masks.clear()


def test_a_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
    """As when the disk fills: torch.save raises halfway through the temporary file."""
    path = str(tmp_path / 'vae.pt')
    training.save_atomic({'iter_num': 1}, path)

    def half_written(obj, f):
        with open(f, 'wb') as out:
            out.write(b'PK partial')
        raise RuntimeError('unexpected pos')
    monkeypatch.setattr(torch, 'save', half_written)
    with pytest.raises(RuntimeError, match='unexpected pos'):
        training.save_atomic({'iter_num': 2}, path)
    assert os.listdir(tmp_path) == ['vae.pt'] and training.load_checkpoint(path)['iter_num'] == 1
