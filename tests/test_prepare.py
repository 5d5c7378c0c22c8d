"""Tests for prepare.py and the tokenizer: the formats it reads (OpenWebText2's real layout
among them), the resumable download, the validation split, and every bad input.

Run: python -m pytest tests/test_prepare.py -q   (CPU, offline, ~20 s)
"""
import http.server
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import zstandard

import corpus
import prepare
import tokenization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOCS = [
    'Hello world.',
    'Unicode: café, naïve, “quotes”, 日本語 and an emoji 🙂.',
    'A literal <|endoftext|> in a text is ordinary text.',
    'Two lines\nof text,\n\nand a paragraph.\n',
    'x' * 3000,
]


def run(tmp_path, *args):
    """prepare.py in this process (fast); returns (stats, data_dir)."""
    data_dir = tmp_path / 'data'
    return prepare.main([f'--data_dir={data_dir}', '--num_proc=1', *args]), data_dir


def documents(data_dir, split):
    """The documents of train.bin or val.bin, decoded."""
    ids = np.fromfile(data_dir / f'{split}.bin', dtype=np.uint16)
    ends = np.flatnonzero(ids == tokenization.EOT)
    assert len(ends) and ends[-1] == len(ids) - 1  # EOT after every document, the last included
    starts = np.r_[0, ends[:-1] + 1]
    return [tokenization.decode(ids[s:e]) for s, e in zip(starts, ends)]


def assert_split(data_dir, expected):
    """train and val hold the expected documents, each once, each split in input order."""
    train, val = documents(data_dir, 'train'), documents(data_dir, 'val')
    assert sorted(train + val) == sorted(expected) and train and val
    for part in (train, val):
        order = [expected.index(doc) for doc in part]
        assert order == sorted(order)
    meta = json.loads((data_dir / 'meta.json').read_text())
    assert (meta['train_docs'], meta['val_docs']) == (len(train), len(val))
    assert meta['train_tokens'] * 2 == os.path.getsize(data_dir / 'train.bin')
    assert meta['val_tokens'] * 2 == os.path.getsize(data_dir / 'val.bin')
    return meta


def no_outputs(data_dir):
    return not any((data_dir / name).exists() for name in ('train.bin', 'val.bin', 'meta.json'))


def jsonl(texts):
    return ''.join(json.dumps({'text': t, 'meta': {'url': f'https://example.com/{i}'}}) + '\n'
                   for i, t in enumerate(texts)).encode()


def zst(data):
    return zstandard.ZstdCompressor().compress(data)


def make_tar(path, members):
    with tarfile.open(path, 'w') as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def owt2_archive(path, filler=0):
    """A small openwebtext2.jsonl.zst.tar: a tar of .jsonl.zst shards of {"text", "meta"} lines,
    one empty document and one blank one among them (and a document of `filler` random bytes in
    hex, which zstd cannot shrink much)."""
    texts = DOCS + ['', '  \n'] + [f'Document {i}: ' + 'word ' * i for i in range(30)]
    texts += [random.Random(0).randbytes(filler).hex()] if filler else []
    shards = {f'RS_2011-{m:02d}.jsonl.zst': zst(jsonl(texts[i::3])) for m, i in ((1, 0), (2, 1), (3, 2))}
    make_tar(path, shards)
    return [t for shard in (texts[0::3], texts[1::3], texts[2::3]) for t in shard if t.strip()]

# -----------------------------------------------------------------------------
# tokenizer


def test_tokenizer_is_gpt2_and_endoftext_in_text_is_plain_text():
    assert tokenization.encode('Hello world') == [15496, 995]
    assert tokenization.EOT == 50256 and tokenization.VOCAB_SIZE == 50257
    assert tokenization.get_tokenizer().n_vocab == 50257
    ids = tokenization.encode('a <|endoftext|> b')
    assert tokenization.EOT not in ids and tokenization.decode(ids) == 'a <|endoftext|> b'

# -----------------------------------------------------------------------------
# sources


def test_owt2_archive_in_its_real_layout(tmp_path):
    expected = owt2_archive(tmp_path / 'openwebtext2.jsonl.zst.tar')
    stats, data_dir = run(tmp_path, '--dataset=owt2', f'--input={tmp_path}/openwebtext2.jsonl.zst.tar',
                          '--val_fraction=0.3')
    meta = assert_split(data_dir, expected)
    assert meta['empty_docs'] == 2 and meta['bad_lines'] == 0 and meta['source'] == 'owt2'
    assert (meta['tokenizer'], meta['vocab_size'], meta['dtype']) == ('gpt2', 50257, 'uint16')
    assert (meta['val_fraction'], meta['split_seed']) == (0.3, 0)
    assert stats['seconds'] > 0 and not list(data_dir.glob('*.tmp'))


def test_worker_processes_write_the_same_bytes(tmp_path):
    owt2_archive(tmp_path / 'owt2.tar')
    _, one = run(tmp_path / 'a', '--dataset=owt2', f'--input={tmp_path}/owt2.tar', '--val_fraction=0.3')
    _, two = run(tmp_path / 'b', '--dataset=owt2', f'--input={tmp_path}/owt2.tar', '--val_fraction=0.3',
                 '--num_proc=2')
    for name in ('train.bin', 'val.bin'):
        assert (one / name).read_bytes() == (two / name).read_bytes()


def test_text_formats_and_globs(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'a.txt').write_text('\n' + DOCS[3] + '\n')  # one document per file, blank lines off
    (src / 'b.txt').write_text('first\n---\nsecond\nstill second\n---\n\n---\nthird\n')
    (src / 'c.jsonl').write_bytes(jsonl(DOCS[:2]))
    (src / 'd.jsonl.zst').write_bytes(zst(jsonl(DOCS[2:])))
    make_tar(src / 'e.tar', {'inner/f.txt': b'in a tar', 'inner/g.jsonl.zst': zst(jsonl(['zst in a tar'])),
                             'inner/h.jsonl': jsonl(['jsonl in a tar']), 'README': b'skipped'})
    expected = ([DOCS[3].strip('\n'), 'first', 'second\nstill second', 'third'] + DOCS[:2] + DOCS[2:]
                + ['in a tar', 'zst in a tar', 'jsonl in a tar'])
    _, data_dir = run(tmp_path, '--dataset=text', f'--input={src}/*.txt, {src}/c.jsonl,{src}/d.jsonl.zst,{src}/e.tar',
                      '--text_delimiter=---', '--val_fraction=0.4')
    meta = assert_split(data_dir, expected)
    assert meta['empty_docs'] == 1 and meta['skipped_members'] == 1
    _, by_glob = run(tmp_path / 'glob', '--dataset=text', f'--input={src}/**/*.*', '--text_delimiter=---',
                     '--val_fraction=0.4')  # the same files in the same (sorted) order
    assert (by_glob / 'train.bin').read_bytes() == (data_dir / 'train.bin').read_bytes()


def test_bad_lines_within_the_limit_are_skipped_and_counted(tmp_path):
    lines = jsonl(['one']) + b'not json\n{"no_text": 1}\n{"text": 5}\n[1, 2]\n\n' + jsonl(['two', 'three'])
    (tmp_path / 'x.jsonl').write_bytes(lines)
    _, data_dir = run(tmp_path, '--dataset=text', f'--input={tmp_path}/x.jsonl', '--max_bad_lines=4',
                      '--val_fraction=0.5')
    assert assert_split(data_dir, ['one', 'two', 'three'])['bad_lines'] == 4


def test_lone_surrogates_from_json_escapes_are_mended(tmp_path):
    (tmp_path / 'x.jsonl').write_text('{"text": "pair \\ud83d\\ude00, lone \\ud83d."}\n{"text": "plain"}\n')
    _, data_dir = run(tmp_path, '--dataset=text', f'--input={tmp_path}/x.jsonl', '--val_fraction=0.5')
    assert_split(data_dir, ['pair \U0001F600, lone \ufffd.', 'plain'])


def test_synthetic_corpus_and_max_docs(tmp_path):
    _, data_dir = run(tmp_path, '--synthetic_stories=300', '--synthetic_seed=3', '--val_fraction=0.1',
                      '--max_docs=250')
    meta = assert_split(data_dir, list(corpus.generate_stories(250, 3)))
    assert meta['source'] == 'synthetic' and meta['corpus_version'] == corpus.VERSION


def test_val_split_is_deterministic_and_seeded(tmp_path):
    def split(name, seed):
        _, data_dir = run(tmp_path / name, '--synthetic_stories=400', '--val_fraction=0.2', f'--split_seed={seed}')
        return (data_dir / 'train.bin').read_bytes(), (data_dir / 'val.bin').read_bytes()
    assert split('a', 0) == split('b', 0)
    assert split('a', 0) != split('c', 1)
    assert len(documents(tmp_path / 'c' / 'data', 'val')) in range(50, 110)  # ~20% of 400

# -----------------------------------------------------------------------------
# download


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves one file over HTTP on 127.0.0.1 with Range support; the first `drops` responses
    hang up halfway through the body."""

    def __init__(self, payload, drops):
        super().__init__(('127.0.0.1', 0), RangeHandler)
        self.payload, self.drops, self.ranges = payload, drops, []
        self.url = f'http://127.0.0.1:{self.server_address[1]}/openwebtext2.jsonl.zst.tar'
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        payload, total = self.server.payload, len(self.server.payload)
        if not self.path.endswith('.tar'):
            return self.send_error(404)
        self.server.ranges.append(self.headers.get('Range'))
        start = int(re.fullmatch(r'bytes=(\d+)-', self.headers.get('Range', 'bytes=0-')).group(1))
        if start >= total:
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{total}')
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header('Content-Range', f'bytes {start}-{total - 1}/{total}')
        self.send_header('Content-Length', str(total - start))
        self.end_headers()
        body = payload[start:]
        if self.server.drops > 0:
            self.server.drops -= 1
            body = body[:len(body) // 2]  # then the connection closes: fewer bytes than announced
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    servers = []

    def start(drops):
        expected = owt2_archive(tmp_path / 'served.tar', filler=300_000)  # several 64 KiB blocks
        servers.append(ArchiveServer((tmp_path / 'served.tar').read_bytes(), drops))
        return servers[-1], expected
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_interrupted_download_resumes_with_a_range_request(tmp_path, server):
    srv, expected = server(drops=1)
    path = tmp_path / 'dl' / 'openwebtext2.jsonl.zst.tar'
    _, data_dir = run(tmp_path, '--dataset=owt2', f'--owt2_url={srv.url}', f'--download_path={path}',
                      '--val_fraction=0.3')
    assert srv.ranges[0] is None and len(srv.ranges) == 2
    resumed_at = int(re.fullmatch(r'bytes=(\d+)-', srv.ranges[1]).group(1))  # asks only for the rest
    assert 0 < resumed_at <= len(srv.payload) // 2
    assert path.read_bytes() == srv.payload and not path.with_name(path.name + '.part').exists()
    assert assert_split(data_dir, expected)['url'] == srv.url


def test_download_that_never_completes_fails_and_keeps_the_part(tmp_path, server):
    srv, _ = server(drops=100)
    path = tmp_path / 'dl' / 'owt2.tar'
    with pytest.raises(SystemExit, match='failed 2 times; rerun to resume'):
        run(tmp_path, '--dataset=owt2', f'--owt2_url={srv.url}', f'--download_path={path}', '--download_retries=1')
    assert not path.exists() and path.with_name('owt2.tar.part').exists() and no_outputs(tmp_path / 'data')
    with pytest.raises(SystemExit, match='404'):
        run(tmp_path, '--dataset=owt2', f'--owt2_url={srv.url}.missing', f'--download_path={path}x')

# -----------------------------------------------------------------------------
# bad input: a message, and none of train.bin, val.bin, meta.json left behind


def bad_inputs(tmp_path):
    """name -> (extra arguments, expected message)"""
    good = zst(jsonl(DOCS * 20))
    (tmp_path / 'corrupt.jsonl.zst').write_bytes(b'this is not zstd data' * 50)
    (tmp_path / 'truncated.jsonl.zst').write_bytes(good[:len(good) // 2])
    owt2_archive(tmp_path / 'whole.tar')
    whole = (tmp_path / 'whole.tar').read_bytes()
    with tarfile.open(tmp_path / 'whole.tar') as tar:
        first, last = tar.getmembers()[0], tar.getmembers()[-1]
    (tmp_path / 'truncated.tar').write_bytes(whole[:last.offset_data + last.size // 2])
    # cut exactly after the first member, where tarfile alone would stop without a word
    (tmp_path / 'cut.tar').write_bytes(whole[:first.offset_data + -(-first.size // 512) * 512])
    (tmp_path / 'bad.jsonl').write_bytes(jsonl(['ok']) + b'{"text": \n' * 3)
    (tmp_path / 'latin1.txt').write_bytes('café'.encode('latin-1'))
    (tmp_path / 'notes.doc').write_bytes(b'x')
    return {
        'missing': ('--dataset=text', f'--input={tmp_path}/nothing/*.jsonl', 'matches no file'),
        'corrupt_zst': ('--dataset=text', f'--input={tmp_path}/corrupt.jsonl.zst', 'corrupt zstd'),
        'truncated_zst': ('--dataset=text', f'--input={tmp_path}/truncated.jsonl.zst', 'truncated'),
        'truncated_tar': ('--dataset=owt2', f'--input={tmp_path}/truncated.tar', 'truncated or corrupt archive'),
        'tar_cut_between_members': ('--dataset=owt2', f'--input={tmp_path}/cut.tar', 'end of archive'),
        'bad_json_lines': ('--dataset=text', f'--input={tmp_path}/bad.jsonl', '--max_bad_lines=2', 'max_bad_lines=2'),
        'undecodable_bytes': ('--dataset=text', f'--input={tmp_path}/latin1.txt', 'not UTF-8'),
        'unsupported_file': ('--dataset=text', f'--input={tmp_path}/notes.doc', 'unsupported file type'),
        'unknown_dataset': ('--dataset=wiki', "use 'synthetic', 'text' or 'owt2'"),
        'empty_val_split': ('--synthetic_stories=5', '--val_fraction=0.0', '0 val documents'),
    }


CASES = ['missing', 'corrupt_zst', 'truncated_zst', 'truncated_tar', 'tar_cut_between_members',
         'bad_json_lines', 'undecodable_bytes', 'unsupported_file', 'unknown_dataset', 'empty_val_split']


@pytest.mark.parametrize('case', CASES)
def test_bad_input_fails_with_a_message_and_leaves_no_outputs(tmp_path, case):
    *args, message = bad_inputs(tmp_path)[case]
    data_dir = tmp_path / 'data'
    data_dir.mkdir()
    for name in ('train.bin', 'val.bin', 'meta.json'):  # a previous run's outputs
        (data_dir / name).write_text('old')
    with pytest.raises(SystemExit, match=re.escape(message)):
        run(tmp_path, *args)
    assert no_outputs(data_dir) and not list(data_dir.glob('*.tmp'))


def cli(tmp_path, *args):
    return subprocess.run([sys.executable, 'prepare.py', f'--data_dir={tmp_path}/data', '--num_proc=1', *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_success_and_failure_exit_codes(tmp_path):
    done = cli(tmp_path, '--synthetic_stories=200', '--val_fraction=0.1')
    assert done.returncode == 0, done.stderr
    assert assert_split(tmp_path / 'data', list(corpus.generate_stories(200, 0)))['train_docs'] > 150
    *args, message = bad_inputs(tmp_path)['corrupt_zst']
    failed = cli(tmp_path, *args)
    assert failed.returncode != 0 and message in failed.stderr and no_outputs(tmp_path / 'data')
    unknown = cli(tmp_path, '--no_such_key=1')
    assert unknown.returncode != 0 and 'no_such_key' in unknown.stderr
