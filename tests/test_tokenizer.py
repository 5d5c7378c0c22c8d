"""The data's tokenizer (issue 17): GPT-2's BPE as before, bit for bit, or any transformers
tokenizer; uint32 memmaps when its ids do not fit uint16, followed by every stage; mixing two
tokenizers refused before any work, naming both.

Run: python -m pytest tests/test_tokenizer.py -q   (CPU, offline, ~2 min)
"""
import hashlib
import json
import os

import numpy as np
import pytest

import helpers
import export
import prepare
import tokenization
from standins import train_tokenizer

# Common words of the stories, added after 70,000 unused tokens: the data's most frequent ids
# and its end-of-text id are then above 65,535, so only uint32 memmaps can hold them.
WORDS = ['Mia', 'apples', 'girl', 'the', 'was', 'had', 'and', 'she']


@pytest.fixture(scope='module')
def big_tokenizer(tmp_path_factory):
    """A transformers tokenizer folder with 70,300+ ids: a byte-level BPE trained on the stories,
    70,000 unused tokens, '<|endoftext|>' (special) and WORDS."""
    tokenizer = train_tokenizer(helpers.corpus_text(200), vocab_size=300)
    tokenizer.add_tokens([f'<unused{i}>' for i in range(70_000)])
    tokenizer.add_tokens(['<|endoftext|>'], special_tokens=True)
    tokenizer.add_tokens(WORDS)
    folder = tmp_path_factory.mktemp('big_tokenizer')
    tokenizer.save_pretrained(folder)
    return str(folder)


def prepared(path, *args):
    data_dir = path / 'data'
    prepare.main([f'--data_dir={data_dir}', '--num_proc=1', '--synthetic_stories=500', '--val_fraction=0.1', *args])
    return data_dir, json.loads((data_dir / 'meta.json').read_text())


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gpt2_memmaps_unchanged_bit_for_bit(tmp_path):
    """The default writes the bytes prepare.py wrote before `tokenizer` existed (sha256 of the
    code at 58737ba on these arguments), and a transformers folder holding GPT-2's tokenizer
    writes the same bytes through the other path."""
    data_dir, meta = prepared(tmp_path / 'tiktoken')
    assert sha256(data_dir / 'train.bin') == '3ad2d40b1ebcadfba6ade5b7e368cbcd0f759f3b0bbdb28644aa793d6b3669cd'
    assert sha256(data_dir / 'val.bin') == '07444fe8c00923a6ac62bcefeacf613baf6a153b8e1178d86caf611e28c2ba2e'
    assert (meta['tokenizer'], meta['vocab_size'], meta['dtype'], meta['eot']) == ('gpt2', 50257, 'uint16', 50256)
    folder = tmp_path / 'gpt2_folder'
    export.save_gpt2_tokenizer(folder)
    hf_dir, hf_meta = prepared(tmp_path / 'hf', f'--tokenizer={folder}')
    assert (hf_meta['vocab_size'], hf_meta['dtype'], hf_meta['eot']) == (50257, 'uint16', 50256)
    for name in ('train.bin', 'val.bin'):
        assert (hf_dir / name).read_bytes() == (data_dir / name).read_bytes()


def test_big_vocabulary_writes_uint32(big_tokenizer, tmp_path):
    tokenizer = tokenization.load(big_tokenizer)
    assert tokenizer.vocab_size > 70_000 and tokenizer.eot > 65_535 and tokenizer.dtype == np.uint32
    data_dir, meta = prepared(tmp_path / 'one', f'--tokenizer={big_tokenizer}')
    assert (meta['tokenizer'], meta['dtype'], meta['eot']) == (big_tokenizer, 'uint32', tokenizer.eot)
    assert meta['vocab_size'] == tokenizer.vocab_size and meta['tokenizer_sha256'] == tokenizer.sha256
    ids = np.fromfile(data_dir / 'train.bin', dtype=np.uint32)
    assert len(ids) == meta['train_tokens'] and (ids > 65_535).mean() > 0.05  # WORDS and the end-of-text id
    ends = np.flatnonzero(ids == tokenizer.eot)
    stories = helpers.corpus_text(500)
    assert ends[-1] == len(ids) - 1 and tokenizer.decode(ids[:ends[0]]) in stories
    two_dir, _ = prepared(tmp_path / 'two', f'--tokenizer={big_tokenizer}', '--num_proc=2')  # forked workers
    for name in ('train.bin', 'val.bin'):
        assert (two_dir / name).read_bytes() == (data_dir / name).read_bytes()
    data = tokenization.TokenData(str(data_dir), compact_vocab=True)
    window = data.windows('train', 2, 64, np.random.default_rng(0))
    assert data.vocab.tokenizer.name == big_tokenizer and window.max() < data.vocab.size < 400


def test_bytes_of_tokens_and_alignment_across_tokenizers(big_tokenizer, tmp_path):
    """Each id's bytes rebuild the text (what align_by_characters decodes), and a GPT-2 teacher
    aligns with data in the big tokenizer's tokens through characters."""
    from teacher import Teacher
    tokenizer = tokenization.load(big_tokenizer)
    text = helpers.corpus_text(3)[2] + ' ' + helpers.UNICODE_DOCS[0]
    ids = tokenizer.encode(text)
    # a lone surrogate (a JSON escape) becomes U+FFFD, as tiktoken makes it, instead of failing
    assert tokenizer.decode(tokenizer.encode('a \ud800 b')) == 'a \ufffd b'
    assert b''.join(tokenizer.token_bytes(i) for i in ids).decode() == tokenizer.decode(ids) == text
    teacher = Teacher(helpers.gpt2_tokenizer_teacher(tmp_path / 'gpt2', n_embd=32, n_layer=2), -1, 'cpu', 128,
                      data_tokenizer=tokenizer)
    assert not teacher.same_tokens
    theirs, pairs = tokenization.align_by_characters(ids, teacher.tokenizer, tokenizer)
    assert teacher.tokenizer.decode(theirs) == text
    for i in (0, len(ids) // 2, len(ids) - 1):  # our token's characters lie within its teachers' span
        mine = tokenizer.decode([ids[i]]).strip()
        assert mine in teacher.tokenizer.decode([theirs[j] for j in pairs[pairs[:, 0] == i, 1]])


def test_pipeline_in_uint32_tokens(big_tokenizer, tmp_path):
    """prepare -> GPT (exported with the big tokenizer's files) -> VAE with that export as a REPA
    teacher, aligned one to one -> DiT -> sample -> eval, all in the big tokenizer's ids."""
    data_dir, _ = prepared(tmp_path, f'--tokenizer={big_tokenizer}')
    out = tmp_path / 'out'
    common = [f'--data_dir={data_dir}', f'--out_dir={out}', '--device=cpu', '--dtype=float32', '--size=tiny',
              '--block_size=32', '--batch_size=4', '--max_iters=2', '--eval_interval=2', '--eval_iters=1',
              '--warmup_iters=1']
    helpers.run_script('train_gpt.py', *common)
    from transformers import AutoTokenizer
    exported = AutoTokenizer.from_pretrained(out / 'gpt_hf')
    assert exported('Mia had apples', add_special_tokens=False)['input_ids'] == tokenization.load(big_tokenizer).encode('Mia had apples')
    vae = helpers.run_script('train_vae.py', *common, '--compact_vocab=True', '--projector_dim=32', '--stats_batches=1')
    assert 'one to one' in vae.stdout
    helpers.run_script('train_dit.py', *common)
    sample = helpers.run_script('sample.py', f'--out_dir={out}', '--device=cpu', '--prompt=Mia had 3 apples.',
                                '--num_samples=1', '--max_new_tokens=8', '--steps=2')
    assert 'Mia had 3 apples.' in sample.stdout
    helpers.run_script('eval.py', f'--out_dir={out}', f'--data_dir={data_dir}', '--device=cpu', '--model=textldm,gpt',
                       f'--judge={out}/gpt_hf', '--num_docs=4', '--num_uncond=2', '--steps=2', '--rouge=False',
                       '--bertscore=False', '--recon_batches=1')
    result = json.loads((out / 'eval.json').read_text())['sets']['synthetic']
    assert set(result['rows']) == {'data', 'textldm', 'gpt'} and result['rows']['textldm']['vae_recon_acc'] >= 0
    assert np.isfinite(result['rows']['gpt']['gen_ppl'])


def test_mixing_tokenizers_fails_before_any_work(big_tokenizer, tmp_path):
    """A DiT trained on a VAE of another tokenizer than its data, a GPT resumed on data of another
    tokenizer, eval of models of two tokenizers, a compact teacher of another tokenizer, a DiT
    whose VAE file was replaced by one of another tokenizer: each stops with a message naming both."""
    big_dir, _ = prepared(tmp_path / 'big', f'--tokenizer={big_tokenizer}')
    gpt2_data, gpt2_out = helpers.tiny_pipeline(tmp_path / 'gpt2')  # compact GPT-2 models and export
    big_out = tmp_path / 'big_out'
    common = ['--device=cpu', '--dtype=float32', '--size=tiny', '--block_size=32', '--batch_size=4',
              '--max_iters=2', '--eval_interval=2', '--eval_iters=1', '--warmup_iters=1']
    helpers.run_many([['train_gpt.py', *common, f'--data_dir={big_dir}', f'--out_dir={big_out}'],
                      ['train_vae.py', *common, f'--data_dir={big_dir}', f'--out_dir={big_out}', '--repa_teacher=None',
                       '--stats_batches=1']])
    cases = [(['train_dit.py', *common, f'--data_dir={gpt2_data}', f'--out_dir={tmp_path}/o1', f'--vae_path={big_out}/vae.pt'],
              [big_tokenizer, "'gpt2'"]),
             (['train_gpt.py', *common, f'--data_dir={gpt2_data}', f'--out_dir={big_out}', '--init_from=resume',
               '--max_iters=4'], [big_tokenizer, "'gpt2'"]),
             (['eval.py', '--device=cpu', f'--model=textldm:{gpt2_out}/dit.pt,gpt:{big_out}/gpt.pt', '--num_docs=2',
               f'--out_dir={tmp_path}/o3'], [big_tokenizer, "'gpt2'", 'separate runs']),
             (['train_vae.py', *common, f'--data_dir={big_dir}', f'--out_dir={tmp_path}/o4',
               f'--repa_teacher={gpt2_out}/gpt_hf'], [big_tokenizer, "'gpt2'", 'compact'])]
    before = (big_out / 'gpt.pt').read_bytes()
    results = helpers.run_many([argv for argv, _ in cases], check=False)
    for (argv, names), result in zip(cases, results):
        assert result.returncode != 0, argv
        message = result.stderr.strip().splitlines()[-1]
        assert all(name in message for name in names), (argv, message)
        assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert (big_out / 'gpt.pt').read_bytes() == before
    os.replace(big_out / 'vae.pt', os.path.join(gpt2_out, 'vae.pt'))  # the DiT's vae_path, now another tokenizer's
    result = helpers.run_script('sample.py', '--device=cpu', f'--out_dir={gpt2_out}', '--steps=1', check=False)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert all(name in result.stderr for name in (big_tokenizer, "'gpt2'", 'the VAE now at')), result.stderr[-2000:]
    assert not os.path.exists(tmp_path / 'o1' / 'dit.pt') and not os.path.exists(tmp_path / 'o4' / 'vae.pt')
