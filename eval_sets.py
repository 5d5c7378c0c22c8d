"""
The paper's four evaluation sets (WikiSource, Wikipedia, TinyStories, One Billion Words) as the
Hugging Face hub publishes them, and the documents eval.py draws from a set: at random from all
of it, as the paper draws 1,000 per set.
"""
import glob
import os
import re

import numpy as np

import tokenization

# The paper's four sets on the Hugging Face hub: (dataset repo, revision, file prefix, text column),
# as published. wikimedia's dumps shard a config into <config>/train-0000K-of-0000N.parquet (columns
# id, url, title, text; 5 shards for wikisource 20231201.en, 41 for wikipedia 20231101.en);
# TinyStories' validation split is data/validation-00000-of-00001-<hash>.parquet; lm1b is a script
# dataset whose parquet exists only on the hub's converted ref, as plain_text/test/0000.parquet.
# Documents are drawn from every shard, so the first use downloads the whole set into the hub cache
# (wikipedia's is the large one); later runs, and offline runs, read that cache.
HUB_SETS = {
    'wikisource': ('wikimedia/wikisource', 'main', '20231201.en/train-', 'text'),
    'wikipedia': ('wikimedia/wikipedia', 'main', '20231101.en/train-', 'text'),
    'tinystories': ('roneneldan/TinyStories', 'main', 'data/validation-', 'text'),
    'lm1b': ('billion-word-benchmark/lm1b', 'refs/convert/parquet', 'plain_text/test/', 'text'),
}


class ParquetRows:
    """A text column of parquet files, the files one after another, as a sequence of rows that
    reads lazily: len() comes from the footers (metadata only) and take(indices) reads only the
    row groups that hold those rows, so memory holds a few row groups, never the set."""

    def __init__(self, paths, column):
        import pyarrow.parquet as pq  # requirements.txt: the hub sets are parquet
        self.column, self.groups, sizes = column, [], [0]
        for path in paths:
            f = pq.ParquetFile(path)
            if column not in f.schema_arrow.names:
                raise SystemExit(f"{path} has no column {column!r} (it has {', '.join(f.schema_arrow.names)})")
            for g in range(f.num_row_groups):
                self.groups.append((f, g))
                sizes.append(f.metadata.row_group(g).num_rows)
        self.starts = np.cumsum(sizes)  # the first row of each row group in the whole set, then the total

    def __len__(self):
        return int(self.starts[-1])

    def take(self, indices):
        """The texts of these rows, in the order asked; each row group holding some is read once."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and not (0 <= indices.min() and indices.max() < len(self)):
            raise IndexError(f"rows {indices.min()}..{indices.max()} of a set of {len(self)}")
        group = np.searchsorted(self.starts, indices, side='right') - 1  # skips empty row groups
        out = [None] * len(indices)
        for g in np.unique(group):
            f, k = self.groups[g]
            texts = f.read_row_group(k, columns=[self.column]).column(0)
            for j in np.flatnonzero(group == g):
                out[j] = texts[int(indices[j] - self.starts[g])].as_py()
        return out


def hub_documents(name):
    """A hub set as ParquetRows over all its shards. huggingface_hub fetches them into its cache
    once; offline (HF_HUB_OFFLINE=1, or no network) the same call finds the cached snapshot that
    refs/<revision> names, so a copied cache (HF_HUB_CACHE or HF_HOME) is enough."""
    from huggingface_hub import snapshot_download
    repo, revision, prefix, column = HUB_SETS[name]
    where = f"eval_set={name!r}: {prefix}*.parquet of the dataset {repo} at revision {revision!r}"
    need = "it needs the network, or a Hugging Face cache that holds it (HF_HUB_CACHE or HF_HOME)"
    try:
        folder = snapshot_download(repo, repo_type='dataset', revision=revision, allow_patterns=[prefix + '*.parquet'])
    except Exception as e:  # offline and not cached, cached in part, a moved repo: say which set and why
        raise SystemExit(f"{where} cannot be fetched: {need}. {type(e).__name__}: {e}")
    paths = sorted(glob.glob(os.path.join(folder, glob.escape(prefix) + '*.parquet')))
    if not paths:  # a cached snapshot of that revision, but not of these files
        raise SystemExit(f"{where}: no such file in {folder}: {need}")
    # a copy without the tree listing huggingface_hub checks it against may lack shards: -of-N says
    shards = {int(m.group(1)) for m in (re.search(r'-of-(\d+)', os.path.basename(p)) for p in paths) if m}
    if shards and shards != {len(paths)}:
        raise SystemExit(f"{where}: {len(paths)} of {max(shards)} shards in {folder}: {need}, whole")
    return ParquetRows(paths, column)


def select_documents(texts, n, min_tokens, seed, encode=tokenization.encode):
    """Up to n documents as ids (encode: text -> ids; GPT-2's by default), visited in a seeded random order of the whole set, skipping
    short ones. texts: a list, or ParquetRows, read 2n rows of that order at a time."""
    docs, order = [], np.random.default_rng(seed).permutation(len(texts))
    step = 2 * max(n, 1)  # room for the short documents skipped, in few reads
    for start in range(0, len(order), step):
        chunk = order[start:start + step]
        for text in texts.take(chunk) if hasattr(texts, 'take') else [texts[i] for i in chunk]:
            ids = list(encode(text or ''))  # a null row is an empty document
            docs += [ids] if len(ids) >= min_tokens else []
            if len(docs) == n:
                return docs
    return docs
