"""
Evaluate TextLDM, the GPT baseline and any transformers causal LM with the same code.

    python eval.py config/tiny.py                            # TextLDM of out_dir
    python eval.py config/tiny.py --model=textldm,gpt,noREPA=textldm:out/x/dit.pt
    python eval.py config/owt.py --model=hf:gpt2-large --eval_set=wikisource,lm1b

Continuation (the paper's protocol): `num_docs` documents from `eval_set`, drawn in a seeded
order, tokenized with the tokenizer of our models in the run (their data's: they must share it;
GPT-2's BPE when only transformers models run) and truncated to `max_doc_tokens` (0: the smallest
context of the models in the run, so all see the same documents), are cut at a token drawn
uniformly from those between 40% and 60% of the length. Each model continues the prompt by as
many of those tokens as the true remainder has (a model with another tokenizer samples as many
of its own and is cut to that) and is scored against the remainder: ROUGE-1/2/L F1, BERTScore F1 (no IDF, no
rescaling), MAUVE (remainders against continuations), on the embedded corpus its checker.
Prompts go `batch_size` at once, each continued to its own length: any lengths, left-padded, for
the GPT; for TextLDM and transformers models, prompts whose longest + longest continuation fit the
context. Greedy continuations do not depend on the batching; sampled ones only through the order
in which random numbers are drawn.
Unconditional: `num_uncond` samples of `uncond_length` tokens from an empty prompt: an
autoregressive model continues a lone <|endoftext|> (a document from its start, what GPT-2 does
from nothing), TextLDM takes its dropped-context path (the one classifier-free guidance
trained); scored by generative perplexity under the `judge` LM, always with the unigram entropy
and the mean length in tokens (a sample's unigram entropy grows with its length: a model whose
samples end sooner has a lower entropy; compare the two together).
The 'data' row scores real documents cut to that length, and the true remainders: the reference.

End-of-text policy, the same for every model: a model generates the requested number of tokens
and its text is cut at the first <|endoftext|>. A sample cut there has *ended*: the judge scores
its tokens and the <|endoftext|> that ends it, after the <|endoftext|> that starts every
document; a sample that ran to full length is scored without one. So an empty sample costs
-log p(<|endoftext|> | <|endoftext|>) in gen-PPL, has entropy 0, ROUGE and BERTScore 0, and MAUVE
featurises it as an end-of-text token: no sample is ever dropped from an average.

Sets: 'synthetic' (held-out stories of the embedded corpus), 'file:PATHS', or one of the paper's
four on the Hugging Face hub (eval_sets.py: wikisource, wikipedia, tinystories, lm1b). A hub set is
fetched whole, every shard, by huggingface_hub into its cache (HF_HUB_CACHE or HF_HOME; with
HF_HUB_OFFLINE=1 only the cache is read), and the documents are drawn from all its rows: a seeded
permutation, read with pyarrow row group by row group, so memory holds a few row groups, never the set.
"""
import json
import math
import os
import time
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

import configurator
import corpus
import documents
import export
import sampling
import tokenization
import training
from eval_sets import HUB_SETS, hub_documents, select_documents

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `eval_key` in a config file is ours alone)
out_dir = 'out/tiny'
data_dir = 'data/tiny'     # its val.bin measures the VAE's reconstruction
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False            # unused: evaluation runs eagerly
seed = 1337                # documents, cut points and sampling
model = 'textldm'          # rows, comma-separated: textldm[:PATH/dit.pt], gpt[:PATH/gpt.pt], hf:NAME_OR_FOLDER;
                           # 'LABEL=...' names a row. In a config file shared by all stages: eval_model
dit_path = '{out_dir}/dit.pt'
gpt_path = '{out_dir}/gpt.pt'
eval_set = 'synthetic'     # 'synthetic', 'file:PATHS' (what prepare.py's `input` takes) or one of HUB_SETS;
                           # several, comma-separated: one table each, all in eval.json
heldout_seed = 20260507    # the stories of eval_set='synthetic' (prepare.py trains on synthetic_seed=0)
text_delimiter = ''        # file: .txt, a line equal to this separates documents ('' = one per file)
num_docs = 1000
max_doc_tokens = 0         # 0 = the smallest context of the models evaluated
min_doc_tokens = 8         # shorter documents are skipped (at least 4, for a 40-60% cut to exist)
num_uncond = 1000
uncond_length = 0          # 0 = the smallest context of the models evaluated, minus one
batch_size = 32
rouge = True               # each metric can be switched off
bertscore = True
bertscore_model = 'roberta-large'  # hub name or local folder
bertscore_layers = 0       # 0 = bert-score's choice for a model it knows, else the last layer
mauve = True
mauve_featurizer = 'gpt2-large'    # hub name or local folder, any transformers encoder or decoder
mauve_min_samples = 100    # MAUVE quantises N samples into N/10 clusters: fewer is noise, skipped
gen_ppl = True
judge = 'gpt2-large'       # a transformers causal LM; our exports (out_dir/gpt_hf, compact or not) work
recon = True               # VAE reconstruction accuracy on data_dir's val.bin
recon_batches = 10
globals().update(sampling.SAMPLER)  # the sampler's keys (steps, cfg_scale, renoise, ...): sampling.py
# -----------------------------------------------------------------------------


# -----------------------------------------------------------------------------
# Documents and the 40-60% cut

def load_documents(spec):
    """The texts of a set: the held-out stories, local files, or a hub set (eval_sets.py)."""
    if spec == 'synthetic':
        return list(corpus.generate_stories(num_docs, heldout_seed))
    if spec.startswith('file:'):
        return list(documents.Reader(text_delimiter, max_bad_lines=0).files(documents.input_files(spec[5:])))
    return hub_documents(spec)


def cut_points(lengths, seed):
    """The prompt length of each document: uniform over ceil(0.4 n) .. floor(0.6 n) (integers)."""
    rng = np.random.default_rng([seed, 1])
    return [int(rng.integers((2 * n + 4) // 5, 3 * n // 5 + 1)) for n in lengths]


# -----------------------------------------------------------------------------
# The models: a dict of label, context (most prompt + continuation tokens), space (the VAE or
# None), tokenizer (ours: the data's; None for transformers models), generate(prompts as ids
# of the evaluation's tokenizer, lengths, torch generator) -> [(ids, ended)], and for ours
# trained: the checkpoint's path, iteration and training seed

def progress(label, done, total, t0, step=1):
    if (10 * done) // total != (10 * (done - step)) // total:  # every 10%
        print(f"  {label}: {done}/{total} in {time.time() - t0:.0f}s", flush=True)


def batches_within(prompts, lengths, context=math.inf):
    """Batches of at most batch_size indices, by prompt length (so that a batch pads little),
    whose longest prompt + longest continuation fit the context: TextLDM packs a batch as
    [prompts, padded | targets, padded] into one sequence, and transformers' generate() runs
    every left-padded row to the longest continuation (past a learned position table's end)."""
    out = []
    for i in sorted(range(len(prompts)), key=lambda i: len(prompts[i])):   # stable: the same batches every run
        group = out[-1] + [i] if out else [i]
        fits = max(len(prompts[j]) for j in group) + max(lengths[j] for j in group) <= context
        if out and len(group) <= batch_size and fits:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def textldm_candidate(label, path):
    dit, space, ckpt = sampling.load_textldm(path, device)
    run, flow = sampling.continuation(dit, globals())
    context = min(dit.config.block_size, space.block_size)

    def generate(prompts, lengths, generator):
        out, t0 = [None] * len(prompts), time.time()
        for batch in batches_within(prompts, lengths, context):
            rows = [space.vocab.from_tokenizer(prompts[i]).tolist() for i in batch]
            ids = run(dit, space, rows, [lengths[i] for i in batch], generator=generator, **flow)
            for i, row in zip(batch, ids):
                out[i] = (space.vocab.to_tokenizer(row).tolist(), len(row) < lengths[i])
            progress(label, len(out) - out.count(None), len(out), t0, step=len(batch))
        return out
    return dict(label=label, context=context, space=space, tokenizer=space.vocab.tokenizer, generate=generate,
                trained=trained(path, ckpt))


def in_batches(label, continue_batch, context=math.inf):
    """generate() of an autoregressive model: batches_within(..., context) prompts at once,
    left-padded, the results put back in the prompts' order. continue_batch(prompts, lengths,
    generator) -> [(ids, ended)] as generate(): each row sampled to its own length (a
    batch runs to its longest) and cut at the first <|endoftext|>."""
    def generate(prompts, lengths, generator):
        out, t0 = [None] * len(prompts), time.time()
        for batch in batches_within(prompts, lengths, context):
            rows = continue_batch([prompts[i] for i in batch], [lengths[i] for i in batch], generator)
            for i, row in zip(batch, rows):
                out[i] = row
            progress(label, len(out) - out.count(None), len(out), t0, step=len(batch))
        return out
    return generate


def gpt_candidate(label, path):
    gpt, vocab, ckpt = training.load_model(path, 'gpt')
    gpt.to(device)

    def continue_batch(prompts, lengths, generator):   # each row cut at <|endoftext|>: it ended if shorter
        rows = sampling.gpt_continue(gpt, vocab, [vocab.from_tokenizer(p).tolist() for p in prompts], lengths,
                                     generator, **sampling.autoregressive_options(globals()))
        return [(vocab.to_tokenizer(row).tolist(), len(row) < n) for row, n in zip(rows, lengths)]
    # any prompts share a batch: a row needs only its own prompt + continuation within the context
    return dict(label=label, context=gpt.config.block_size, space=None, tokenizer=vocab.tokenizer,
                generate=in_batches(label, continue_batch), trained=trained(path, ckpt))


def trained(path, ckpt):
    """Which point of which run a checkpoint of ours is (eval.json keeps it with the row: curves.py)."""
    return dict(path=path, iter=ckpt.get('iter_num'), seed=ckpt.get('config', {}).get('seed'))


class HFModel:
    """A transformers causal LM and how the evaluation's tokens (`base`, a Tokenizer) map to its
    ids: through a compact vocabulary of ours (config.json `textldm_vocab_ids`, the base id of each
    row), or through text and its own tokenizer."""

    def __init__(self, name, what, base):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            self.model = AutoModelForCausalLM.from_pretrained(name).eval().to(device)
            self.vocab = export.exported_vocab(self.model.config, f"the {what} '{name}'")
            self.tokenizer = None if self.vocab else AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"cannot load the {what} '{name}' as a transformers causal LM: {e}")
        if self.vocab is not None and self.vocab.tokenizer.sha256 != base.sha256:
            raise SystemExit(f"the {what} '{name}' reads a compact vocabulary of tokenizer={self.vocab.tokenizer.name!r}, "
                             f"the evaluation's tokens are tokenizer={base.name!r}'s (those of the models evaluated)")
        self.base = base
        self.eot = int(self.vocab.eot if self.vocab else self.tokenizer.eos_token_id)
        self.bos = self.eot if self.vocab or self.tokenizer.bos_token_id is None else self.tokenizer.bos_token_id
        cfg = self.model.config
        self.context = getattr(cfg, 'n_positions', None) or getattr(cfg, 'max_position_embeddings', None) or 1024

    def from_base(self, ids):
        if self.vocab:
            return self.vocab.from_tokenizer(ids).tolist()
        return self.tokenizer(self.base.decode(ids), add_special_tokens=False)['input_ids']

    def to_base(self, ids):
        return self.vocab.to_tokenizer(ids).tolist() if self.vocab else list(self.base.encode(self.tokenizer.decode(ids)))

    def judged(self, ids, ended):
        """What the judge scores of a sample (base ids): <|endoftext|>, its text re-tokenized
        and <|endoftext|> if it ended. A compact vocabulary lacks the tokens its corpus never had;
        if the text re-tokenizes into one, the tokens as generated are scored instead."""
        text = self.base.decode(ids)
        if self.vocab is None:
            tokens = self.tokenizer(text, add_special_tokens=False)['input_ids']
        else:
            mapped = self.vocab.lookup[self.base.encode(text)]
            tokens = (mapped if (mapped >= 0).all() else self.vocab.from_tokenizer(ids)).tolist()
        return ([self.bos] + tokens + [self.eot] * ended)[:self.context]


def hf_candidate(label, name, base):
    lm = HFModel(name, 'model', base)

    @torch.no_grad()
    def continue_batch(prompts, lengths, generator):  # generate() draws from torch's RNG, seeded per model
        rows = [lm.from_base(p) if p and p != [lm.base.eot] else [lm.bos] for p in prompts]
        # left-padded with an attention mask (generate() then counts positions over the real tokens);
        # the pad id is given, as a tokenizer may have none
        x, valid = sampling.pad_rows(rows, lm.eot, device, left=True)
        options = sampling.autoregressive_options(globals())
        options = dict(do_sample=True, **options) if options['temperature'] > 0 else dict(do_sample=False)
        y = lm.model.generate(x, attention_mask=valid.long(), max_new_tokens=max(lengths), eos_token_id=lm.eot,
                              pad_token_id=lm.eot, **options)[:, x.shape[1]:].tolist()
        return [hf_sample(lm, row[:n], n) for row, n in zip(y, lengths)]
    # the longest prompt + continuation within the context, counted in base tokens (another
    # tokenizer may make a prompt longer: a model with a longer context than the documents' copes)
    return dict(label=label, context=lm.context, space=None, tokenizer=None,
                generate=in_batches(label, continue_batch, lm.context))


def hf_sample(lm, ids, n):
    """A row of n of the model's own tokens -> (base ids, ended): its text up to <|endoftext|>
    in base tokens, cut to n of them (another tokenizer may give more, or fewer)."""
    kept, ended = sampling.end_of_text(ids, lm.eot)
    return sampling.end_of_text((lm.to_base(kept) + [lm.base.eot] * ended)[:n], lm.base.eot)


def parse_candidate(spec):
    """'[LABEL=]textldm[:PATH] | gpt[:PATH] | hf:NAME' -> (label, kind, path)."""
    label, _, rest = spec.partition('=') if '=' in spec.split(':')[0] else ('', '', spec)
    kind, _, path = rest.partition(':')
    if kind in ('textldm', 'gpt') or (kind == 'hf' and path):
        return label or rest, kind, path or dict(textldm=dit_path, gpt=gpt_path)[kind]
    raise configurator.ConfigError(f"model: {spec!r} is not textldm[:PATH], gpt[:PATH] or hf:NAME_OR_FOLDER")


def load_candidates(specs):
    """The model dicts (see above), and the evaluation's Tokenizer: our models' (they must share
    it), else GPT-2's. Ours load first: a transformers model maps from the tokens they share."""
    parsed = [parse_candidate(s) for s in specs]
    ours = {i: dict(textldm=textldm_candidate, gpt=gpt_candidate)[kind](label, path)
            for i, (label, kind, path) in enumerate(parsed) if kind != 'hf'}
    tokenizers = {c['tokenizer'].sha256: c for c in ours.values()}
    if len(tokenizers) > 1:
        a, b = list(tokenizers.values())[:2]
        raise SystemExit(f"{a['label']} reads tokenizer={a['tokenizer'].name!r} tokens, {b['label']} "
                         f"tokenizer={b['tokenizer'].name!r}'s: evaluate them in separate runs")
    base = next(iter(tokenizers.values()))['tokenizer'] if tokenizers else tokenization.load('gpt2')
    return [ours[i] if i in ours else hf_candidate(label, path, base)
            for i, (label, _, path) in enumerate(parsed)], base


# -----------------------------------------------------------------------------
# Metrics: small functions over lists of texts, in [0, 1] unless said

def rouge_f1(candidates, references):
    """Mean ROUGE-1/2/L F1 (rouge-score's tokenizer, Porter stemming)."""
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=True)
    scores = [scorer.score(ref, cand) for cand, ref in zip(candidates, references)]
    return {k: float(np.mean([s[k].fmeasure for s in scores])) for k in ('rouge1', 'rouge2', 'rougeL')}


@lru_cache(maxsize=None)
def bert_scorer(name, layers):
    import bert_score
    if not layers and name not in bert_score.utils.model2layers:
        from transformers import AutoConfig
        layers = AutoConfig.from_pretrained(name).num_hidden_layers
    return bert_score.BERTScorer(model_type=name, num_layers=layers or None, device=device, batch_size=batch_size)


def bertscore_f1(candidates, references, name, layers=0):
    """Mean BERTScore F1. A pair with an empty side scores 0: bert-score's own rule, applied here
    because its path for empty strings fails under transformers 5."""
    keep = [i for i, (c, r) in enumerate(zip(candidates, references)) if c.strip() and r.strip()]
    f1 = np.zeros(len(candidates))
    if keep:
        f1[keep] = bert_scorer(name, layers).score([candidates[i] for i in keep], [references[i] for i in keep])[2].numpy()
    return float(f1.mean())


@lru_cache(maxsize=None)
def featurizer(name):
    from transformers import AutoModel, AutoTokenizer
    return AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval().to(device)


@torch.no_grad()
def mauve_features(texts, name, max_len=1024):
    """mauve-text's featurisation, done here so local folders work and empty texts stay (as the
    end-of-text token): the last layer's hidden state at each text's last token."""
    tokenizer, net = featurizer(name)
    max_len = min(max_len, getattr(net.config, 'max_position_embeddings', None) or max_len)
    fallback = next(t for t in (tokenizer.eos_token_id, tokenizer.sep_token_id, 0) if t is not None)
    rows = [tokenizer(t, truncation=True, max_length=max_len)['input_ids'] or [fallback] for t in texts]
    features = []
    for i in range(0, len(rows), batch_size):
        ids, valid = sampling.pad_rows(rows[i:i + batch_size], 0, device)
        hidden = net(input_ids=ids, attention_mask=valid.long()).last_hidden_state
        features.append(hidden[torch.arange(len(ids)), valid.sum(1) - 1].float().cpu())
    return torch.cat(features).numpy()


def mauve_score(p_texts, q_texts, name, num_buckets='auto', seed=25):
    """MAUVE of p (human) against q (model) with mauve-text's quantisation and divergence curve."""
    import mauve as mauve_text
    return float(mauve_text.compute_mauve(p_features=mauve_features(p_texts, name), q_features=mauve_features(q_texts, name),
                                          num_buckets=num_buckets, seed=seed, device_id=-1, verbose=False).mauve)


def unigram_entropy(ids):
    """Entropy in nats of one sample's empirical token distribution (0 for an empty sample)."""
    if len(ids) == 0:
        return 0.0
    p = np.unique(np.asarray(ids), return_counts=True)[1] / len(ids)
    return float(-(p * np.log(p)).sum())


@torch.no_grad()
def judge_nll(lm, sequences):
    """Summed negative log-likelihood (nats) of every token after the first, and their count."""
    total, count = 0.0, 0
    for i in range(0, len(sequences), batch_size):
        ids, valid = sampling.pad_rows(sequences[i:i + batch_size], 0, device)
        logits = lm(input_ids=ids, attention_mask=valid.long()).logits.float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction='none')
        total, count = total + nll[valid[:, 1:]].sum().item(), count + valid[:, 1:].sum().item()
    return total, count


def unconditional_metrics(samples, judge_lm, base):
    """[(ids of the Tokenizer base, ended)] -> gen-PPL (exp of the NLL per scored token, pooled over
    samples; not in [0, 1]), mean unigram entropy of the texts' tokens, mean length, share of empties."""
    ids = [base.encode(base.decode(sample_ids)) for sample_ids, _ in samples]
    m = dict(entropy=float(np.mean([unigram_entropy(i) for i in ids])), uncond_tokens=float(np.mean([len(i) for i in ids])),
             uncond_empty=float(np.mean([len(i) == 0 for i in ids])))
    if judge_lm is not None:
        total, count = judge_nll(judge_lm.model, [judge_lm.judged(i, ended) for i, ended in samples])
        m['gen_ppl'] = math.exp(total / max(count, 1))
    return m


def checker_rates(prompts, continuations):
    checked = corpus.check_many(list(zip(prompts, continuations)))
    return {f'check_{k}': checked[k] for k in ('grammar', 'all_parse', 'consistency', 'score', 'perfect')}


def continuation_metrics(continuations, references, prompts, checker=False):
    m = dict(empty=float(np.mean([not c.strip() for c in continuations])))
    m.update(rouge_f1(continuations, references) if rouge else {})
    if bertscore:
        m['bertscore'] = bertscore_f1(continuations, references, bertscore_model, bertscore_layers)
    if mauve and len(references) < mauve_min_samples:
        print(f"  MAUVE skipped: {len(references)} documents < mauve_min_samples={mauve_min_samples}")
    elif mauve:
        m['mauve'] = mauve_score(references, continuations, mauve_featurizer, seed=seed)
    return dict(m, **checker_rates(prompts, continuations)) if checker else m


@torch.no_grad()
def recon_accuracy(space, data, batches, rng):
    """Share of the tokens of full val windows that decode(encode(x)) gives back (posterior means)."""
    correct = total = 0
    for _ in range(batches):
        idx = torch.from_numpy(data.windows('val', batch_size, space.block_size, rng)).to(device)
        correct, total = correct + (space.decode(space.encode(idx)) == idx).sum().item(), total + idx.numel()
    return correct / total


COLUMNS = [('rouge1', 'R-1', 100), ('rouge2', 'R-2', 100), ('rougeL', 'R-L', 100), ('bertscore', 'BERTScore', 100),
           ('mauve', 'MAUVE', 100), ('check_grammar', 'grammar %', 100), ('check_all_parse', 'all parse %', 100),
           ('check_consistency', 'consistent %', 100), ('check_score', 'check score %', 100),
           ('gen_ppl', 'gen-PPL', 1), ('entropy', 'entropy', 1), ('uncond_tokens', 'uncond tokens', 1),
           ('uncond_empty', 'empty %', 100),
           ('vae_recon_acc', 'VAE recon %', 100)]


def markdown_table(rows):
    """{label: metrics} -> a markdown table of the columns some row has ('-' where missing)."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows.values())]
    cell = lambda v, scale: '-' if v is None else f"{v * scale:.1f}" if scale == 100 else f"{v:.2f}"
    lines = ['| model | ' + ' | '.join(c[1] for c in cols) + ' |', '|---' * (len(cols) + 1) + '|']
    lines += [f"| {label} | " + ' | '.join(cell(r.get(k), s) for k, _, s in cols) + ' |' for label, r in rows.items()]
    return '\n'.join(lines)


# -----------------------------------------------------------------------------
def evaluate(cand, prompts, remainders, prompt_texts, references, length, judge_lm, base, checker=False):
    """One model's row and sample records on one set."""
    label, t0 = cand['label'], time.time()
    print(f"{label}: continuing {len(prompts)} prompts, then {num_uncond} unconditional samples", flush=True)
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)  # every model draws from the same seeds, whatever ran before it
    with training.autocast('cuda' if device.startswith('cuda') else 'cpu', dtype):
        continuations = [base.decode(ids) for ids, _ in cand['generate'](prompts, [len(r) for r in remainders], generator)]
        uncond = cand['generate']([[]] * num_uncond, [length] * num_uncond, generator) if num_uncond else []
    print(f"{label}: scoring", flush=True)
    row = continuation_metrics(continuations, references, prompt_texts, checker)
    row.update(unconditional_metrics(uncond, judge_lm, base) if uncond else {})
    if cand.get('trained'):
        row['trained'] = cand['trained']
    if cand.get('recon_data'):
        row['vae_recon_acc'] = recon_accuracy(cand['space'], cand['recon_data'], recon_batches,
                                              np.random.default_rng([seed, 2]))
    records = [dict(model=label, kind='continuation', doc=i, prompt=p, reference=r, continuation=c)
               for i, (p, r, c) in enumerate(zip(prompt_texts, references, continuations))]
    records += [dict(model=label, kind='unconditional', sample=i, text=base.decode(ids), ended=ended)
                for i, (ids, ended) in enumerate(uncond)]
    return dict(row, seconds=time.time() - t0), records


def split_sets(spec):
    """'lm1b,file:a.jsonl,b/*.txt,wikipedia' -> ['lm1b', 'file:a.jsonl,b/*.txt', 'wikipedia']: a
    file: set keeps its own comma-separated paths."""
    sets = []
    for piece in (p.strip() for p in spec.split(',')):
        named = piece in ('synthetic', *HUB_SETS) or piece.startswith('file:')
        if sets and sets[-1].startswith('file:') and piece and not named:
            sets[-1] += ',' + piece
        elif piece:
            sets.append(piece)
    return sets


def evaluate_set(name, candidates, doc_len, length, judge_lm, base):
    """Every model on one set: (result dict of eval.json, sample records)."""
    t0 = time.time()
    print(f"eval set {name}: loading documents", flush=True)
    full = select_documents(load_documents(name), num_docs, min_doc_tokens, seed, base.encode)
    if not full:
        raise SystemExit(f"eval_set={name!r} has no document of at least min_doc_tokens={min_doc_tokens} tokens")
    docs = [d[:doc_len] for d in full]
    cuts = cut_points([len(d) for d in docs], seed)
    prompts, remainders = [d[:c] for d, c in zip(docs, cuts)], [d[c:] for d, c in zip(docs, cuts)]
    prompt_texts, references = [base.decode(p) for p in prompts], [base.decode(r) for r in remainders]
    print(f"{len(docs)} documents of <= {doc_len} tokens (mean {np.mean([len(d) for d in docs]):.0f}); "
          f"unconditional samples of {length} tokens", flush=True)
    checker = name == 'synthetic'  # the embedded corpus has a grammar and facts to check
    data_row = checker_rates(prompt_texts, references) if checker else {}
    if num_uncond:  # real documents, cut to the samples' length; they 'ended' if they fit whole
        data_row.update(unconditional_metrics([(d[:length], len(d) <= length) for d in full[:num_uncond]], judge_lm, base))
    rows, records = ({'data': data_row} if data_row else {}), []
    for cand in candidates:
        rows[cand['label']], cand_records = evaluate(cand, prompts, remainders, prompt_texts, references,
                                                     length, judge_lm, base, checker)
        records += [dict(r, set=name) for r in cand_records]
    result = dict(num_docs=len(docs), max_doc_tokens=doc_len, uncond_length=length, num_uncond=num_uncond,
                  judge=judge if judge_lm else None, rows=rows, seconds=time.time() - t0)
    return result, records


def main():
    config = configurator.configure(globals(), 'eval')
    training.check_precision(device, dtype)
    sampling.flow_options(config), sampling.autoregressive_options(config)   # the sampler's keys, checked before any model loads
    sets = split_sets(eval_set)
    for name in sets or ['']:
        if not (name in ('synthetic', *HUB_SETS) or name.startswith('file:')):
            raise configurator.ConfigError(f"eval_set={name!r}: 'synthetic', 'file:PATHS' or one of {', '.join(HUB_SETS)}, "
                                     f"comma-separated")
    if min_doc_tokens < 4 or num_docs < 1 or num_uncond < 0:
        raise configurator.ConfigError("min_doc_tokens must be >= 4, num_docs >= 1 and num_uncond >= 0")
    t_start = time.time()
    candidates, base = load_candidates([s.strip() for s in model.split(',') if s.strip()])
    for cand in candidates:  # the VAE's reconstruction on data_dir: data of its tokenizer, checked now
        if cand['space'] is not None and recon and os.path.isfile(os.path.join(data_dir, 'meta.json')):
            cand['recon_data'] = tokenization.TokenData(data_dir, vocab=cand['space'].vocab, vocab_of=cand['label'])
    context = min(c['context'] for c in candidates)
    doc_len, length = max_doc_tokens or context, uncond_length or context - 1
    if doc_len > context or length >= context:
        raise configurator.ConfigError(f"max_doc_tokens={doc_len} must be at most, uncond_length={length} below, "
                                 f"the smallest context of the models, {context}")
    judge_lm = HFModel(judge, 'judge', base) if gen_ppl and num_uncond else None
    results, records = {}, []
    for name in sets:
        results[name], set_records = evaluate_set(name, candidates, doc_len, length, judge_lm, base)
        records += set_records

    os.makedirs(out_dir, exist_ok=True)
    result = dict(sets=results, config=config, seconds=time.time() - t_start)
    path = os.path.join(out_dir, 'eval.json')
    with open(path + '.tmp', 'w') as f:  # renamed when whole: a killed run leaves the old file
        json.dump(result, f, indent=2)
    os.replace(path + '.tmp', path)
    with open(os.path.join(out_dir, 'eval_samples.jsonl'), 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    for name, r in results.items():
        print(f"\n{name}, {r['num_docs']} documents, judge {r['judge'] or '-'}, {r['seconds']:.0f}s:\n")
        print(markdown_table(r['rows']))
    print(f"\n{out_dir}/eval.json and eval_samples.jsonl in {time.time() - t_start:.0f}s")
    return result


if __name__ == '__main__':
    main()
