"""Tests for eval.py's four hub sets, read offline through huggingface_hub's real download code:
helpers.write_hub_sets lays them out as the hub cache stores a download (refs, snapshots, blobs,
trees), huggingface_hub runs in offline mode against that cache, pyarrow reads the shards.

Run: python -m pytest tests/test_eval_sets.py -q   (CPU, a few seconds)
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import eval as ev
import helpers
import tokenization

SETS = ['wikisource', 'wikipedia', 'tinystories', 'lm1b']


@pytest.fixture(scope='module')
def hub(tmp_path_factory):
    """(cache folder, what write_hub_sets wrote), shared by the tests that only read it."""
    cache = tmp_path_factory.mktemp('hub')
    return str(cache), helpers.write_hub_sets(str(cache))


@pytest.fixture
def offline(monkeypatch):
    """use(cache): huggingface_hub offline, its cache at `cache`. It reads HF_HUB_OFFLINE and
    HF_HUB_CACHE once, when imported, into huggingface_hub.constants: set those too."""
    import huggingface_hub.constants as constants

    def use(cache):
        monkeypatch.setenv('HF_HUB_OFFLINE', '1')
        monkeypatch.setenv('HF_HUB_CACHE', str(cache))
        monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
        monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(cache))
    return use


def source(ids):
    """(set, file) named by the tag write_hub_sets puts at the start of every long document."""
    name, path = re.match(r'\[(\S+) (\S+) \d+\]', tokenization.decode(ids)).groups()
    return name, path


# -----------------------------------------------------------------------------
# Each set, from the cache, through huggingface_hub

@pytest.mark.parametrize('name', SETS)
def test_each_hub_set_reads_whole_from_the_offline_cache(name, hub, offline):
    cache, written = hub
    offline(cache)
    rows = ev.load_documents(name)
    texts = written[name]['texts']  # the set's files only: not the other splits and configs
    assert len(rows) == len(texts) and len(rows.groups) > len(written[name]['files'])  # several row groups
    assert rows.take(np.arange(len(rows))) == texts
    docs = ev.select_documents(rows, 10, 8, seed=0)
    assert len(docs) == 10 and {source(d) for d in docs} <= {(name, f) for f in written[name]['files']}


def test_take_returns_the_rows_asked_in_their_order(hub, offline):
    cache, written = hub
    offline(cache)
    rows, texts = ev.load_documents('wikipedia'), written['wikipedia']['texts']
    asked = np.random.default_rng(0).integers(0, len(texts), 50)  # any order, repeats, across shards
    assert rows.take(asked) == [texts[i] for i in asked]
    assert rows.take([]) == []
    for bad in ([len(texts)], [-1]):
        with pytest.raises(IndexError, match='of a set of'):  # said plainly, not deep in pyarrow
            rows.take(bad)


# -----------------------------------------------------------------------------
# The draw: the whole set, seeded, short documents skipped

def test_draw_covers_every_shard_and_matches_the_draw_from_a_list(hub, offline):
    cache, written = hub
    offline(cache)
    rows, texts = ev.load_documents('wikipedia'), written['wikipedia']['texts']
    docs = ev.select_documents(rows, 40, 8, seed=1)
    assert {path for _, path in map(source, docs)} == set(written['wikipedia']['files'])  # all 4, not the first
    # the same documents, in the same order, as the whole set held in memory would give
    assert docs == ev.select_documents(texts, 40, 8, seed=1)
    assert docs == ev.select_documents(ev.load_documents('wikipedia'), 40, 8, seed=1)
    assert docs != ev.select_documents(rows, 40, 8, seed=2)


def test_short_documents_are_skipped(hub, offline):
    cache, written = hub
    offline(cache)
    rows, texts = ev.load_documents('wikisource'), written['wikisource']['texts']
    long = [t for t in texts if len(tokenization.encode(t)) >= 8]
    assert 0 < len(long) < len(texts)  # the set has both kinds
    docs = ev.select_documents(rows, len(texts), 8, seed=0)  # asks for more than there are
    assert sorted(tokenization.decode(d) for d in docs) == sorted(long)


def test_only_the_row_groups_of_the_drawn_rows_are_read(hub, offline, monkeypatch):
    cache, written = hub
    offline(cache)
    reads = []
    read_row_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, 'read_row_group',
                        lambda f, i, *a, **k: reads.append((id(f), i)) or read_row_group(f, i, *a, **k))
    for whole in ('read', 'iter_batches', 'read_row_groups'):  # never a whole file
        monkeypatch.setattr(pq.ParquetFile, whole, lambda *a, **k: pytest.fail("read a whole file"))
    monkeypatch.setattr(pq, 'read_table', lambda *a, **k: pytest.fail("read a whole file"))

    rows, texts = ev.load_documents('wikipedia'), written['wikipedia']['texts']
    assert len(rows) == len(texts) and reads == []  # the sizes come from the footers alone
    n = 4
    first = np.random.default_rng(3).permutation(len(texts))[:2 * n]  # the first chunk select_documents reads
    assert sum(len(tokenization.encode(texts[i])) >= 8 for i in first) >= n  # so it reads no other
    ev.select_documents(rows, n, 8, seed=3)
    groups = {int(g) for g in np.searchsorted(rows.starts, first, side='right') - 1}
    assert sorted(reads) == sorted((id(rows.groups[g][0]), rows.groups[g][1]) for g in groups)  # each once
    assert len(groups) < len(rows.groups)


# -----------------------------------------------------------------------------
# A set that is not there, or not whole: a clear exit, not a traceback

@pytest.mark.parametrize('name', SETS)
def test_a_missing_set_exits_with_a_clear_message(name, tmp_path, offline):
    offline(tmp_path)  # an empty cache
    with pytest.raises(SystemExit) as e:
        ev.load_documents(name)
    repo, revision = ev.HUB_SETS[name][:2]
    message = str(e.value.code)
    assert all(s in message for s in (repr(name), repo, repr(revision), 'network', 'HF_HUB_CACHE')), message


@pytest.mark.parametrize('listed', [True, False], ids=['tree-listing', 'no-tree-listing'])
def test_a_partial_copy_exits_with_a_clear_message(listed, tmp_path, offline):
    written = helpers.write_hub_sets(str(tmp_path))['wikipedia']
    snapshot = os.path.join(written['storage'], 'snapshots', written['commit'])
    os.remove(os.path.join(snapshot, written['files'][-1]))  # an interrupted download
    if not listed:  # a cache from before huggingface_hub kept tree listings
        shutil.rmtree(os.path.join(written['storage'], 'trees'))
    offline(tmp_path)
    with pytest.raises(SystemExit) as e:
        ev.load_documents('wikipedia')
    message = str(e.value.code)
    assert "'wikipedia'" in message and 'wikimedia/wikipedia' in message and 'network' in message, message
    assert listed or '3 of 4 shards' in message, message


# -----------------------------------------------------------------------------
# The environment variables a user sets, read by a fresh process

@pytest.mark.parametrize('variable', ['HF_HUB_CACHE', 'HF_HOME'])
def test_the_environment_points_a_fresh_process_at_the_cache(variable, tmp_path):
    cache = tmp_path / 'hub' if variable == 'HF_HOME' else tmp_path  # HF_HOME's cache is HF_HOME/hub
    written = helpers.write_hub_sets(str(cache), docs_per_shard=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith(('HF_', 'HUGGINGFACE_'))}
    env.update(HF_HUB_OFFLINE='1', **{variable: str(tmp_path)})
    code = "import eval; print(*(len(eval.load_documents(s)) for s in eval.HUB_SETS))"
    out = subprocess.run([sys.executable, '-c', code], cwd=helpers.ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == [str(len(written[s]['texts'])) for s in ev.HUB_SETS]
