"""
Turn a corpus into the token memmaps every later stage reads: data_dir/train.bin and val.bin
(the ids of `tokenizer`, the end-of-text id after every document; uint16 while the vocabulary
fits, else uint32) and data_dir/meta.json, which names the tokenizer for every later stage.

    python prepare.py config/tiny.py      # the embedded stories: offline, a few seconds
    python prepare.py config/owt.py       # OpenWebText2: downloads ~29 GB, then tokenizes it
    python prepare.py config/tiny.py --dataset=text --input='books/*.txt' --data_dir=data/books
    python prepare.py config/owt.py --tokenizer=Qwen/Qwen3-1.7B --data_dir=data/owt_qwen3

Sources (`dataset`):
    synthetic  corpus.generate_stories(synthetic_stories, synthetic_seed), see corpus.py
    text       `input`: comma-separated files or globs of .txt (one document per file,
               or documents separated by a line equal to `text_delimiter`), .jsonl or .jsonl.zst
               (one JSON object per line, the document in "text"), or .tar archives of those
    owt2       OpenWebText2 as EleutherAI published it: one tar of .jsonl.zst shards. `input`
               names a local copy; otherwise it is downloaded from `owt2_url` to `download_path`
               (resumed after an interruption, size checked)

Safety: the old train.bin, val.bin and meta.json are deleted first; the new ones are written as
*.tmp and renamed at the very end, meta.json last. So data_dir never mixes two runs, and a
failed or killed run leaves none of the three. Bad input (corrupt or truncated archives,
undecodable bytes, more than `max_bad_lines` bad JSON lines) stops the run with a message.
"""
import json
import os
import time
from collections import deque
from multiprocessing import Pool

import numpy as np

import configurator
import corpus
import tokenization
from documents import Reader, input_files

# -----------------------------------------------------------------------------
# defaults, overridden by the config file and --key=value (see configurator.configure)
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cpu'         # device, dtype, compile: unused here, known to every script
dtype = 'float32'
compile = False
seed = 1337            # the training seed; the data has its own seeds below, so it stays put
dataset = 'synthetic'  # 'synthetic', 'text' or 'owt2'
tokenizer = 'gpt2'     # 'gpt2' (GPT-2's BPE, offline) or a transformers tokenizer: hub name or folder
input = ''             # text: files or globs, comma-separated; owt2: a local copy of the tar
text_delimiter = ''    # .txt: a line equal to this separates documents ('' = one per file)
synthetic_stories = 100_000
synthetic_seed = 0
val_fraction = 0.01    # each document goes to val with this probability...
split_seed = 0         # ...drawn from this seed, in document order
max_docs = 0           # stop after this many documents (0 = all): quick trials on owt2
max_bad_lines = 100    # skip (and count) up to this many unreadable JSON lines, then fail
num_proc = min(8, os.cpu_count() or 1)  # tokenizer processes (1 = in this process)
owt2_url = 'https://huggingface.co/datasets/segyges/OpenWebText2/resolve/main/openwebtext2.jsonl.zst.tar'
download_path = '{data_dir}/openwebtext2.jsonl.zst.tar'
download_retries = 20
# -----------------------------------------------------------------------------
OUTPUTS = ('train.bin', 'val.bin', 'meta.json')
CHUNK_CHARS = 1 << 20  # documents are sent to the tokenizer processes in ~1 MB chunks


def fail(message):
    raise SystemExit(f"prepare.py: {message}")

# -----------------------------------------------------------------------------
# Download, resumable


def content_range(header):
    """'bytes 100-999/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    span, _, total = header.split(' ')[-1].partition('/')
    return (None if span == '*' else int(span.split('-')[0])), int(total)


def fetch(url, part, have, total):
    """One request: write the file from byte `have` on into `part`; return the file's size as
    the server announces it (None if it does not)."""
    import requests
    from tqdm import tqdm
    with requests.get(url, headers={'Range': f'bytes={have}-'} if have else {}, stream=True, timeout=60) as r:
        if r.status_code == 416 and 'Content-Range' in r.headers:  # nothing after byte `have`
            return content_range(r.headers['Content-Range'])[1]
        r.raise_for_status()
        if r.status_code == 206:
            start, size = content_range(r.headers['Content-Range'])
            if start != have:
                fail(f"{url}: asked for bytes from {have}, got them from {start}")
        else:  # 200: the whole file (the first request, or a server that ignores Range)
            have, size = 0, int(r.headers['Content-Length']) if 'Content-Length' in r.headers else None
        if total is not None and size != total:
            fail(f"{url} changed size ({total} -> {size} bytes) during the download: delete {part}")
        with open(part, 'ab' if have else 'wb') as f, \
                tqdm(total=size, initial=have, unit='B', unit_scale=True, unit_divisor=1024,
                     desc=os.path.basename(part), mininterval=1) as bar:
            for block in r.iter_content(chunk_size=1 << 16):  # a dropped connection loses < 64 KiB
                f.write(block)
                bar.update(len(block))
    return size


def download(url, path, retries):
    """Download `url` to `path` through `path`.part, resuming with an HTTP Range request after an
    interruption. The file gets its final name only once its size is the announced one."""
    import requests
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    part, total = path + '.part', None
    for attempt in range(retries + 1):
        have = os.path.getsize(part) if os.path.exists(part) else 0
        try:
            total = fetch(url, part, have, total)
            if total is None:  # nothing to check against: say so, and keep what came
                print(f"download: the server sent no size; {os.path.getsize(part):,} bytes unchecked")
                total = os.path.getsize(part)
        except requests.HTTPError as e:
            if e.response.status_code < 500:
                fail(f"download failed: {e}")
            print(f"download: {e}; retrying")
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
            print(f"download interrupted ({type(e).__name__}: {e}); resuming")
        size = os.path.getsize(part) if os.path.exists(part) else 0
        if total is not None and size == total:
            os.replace(part, path)
            return path
        if total is not None and size > total:  # a stale .part of another file: start over
            os.remove(part)
        time.sleep(min(30, 2 ** attempt - 1))  # 0, 1, 3, 7, ... seconds
    fail(f"download of {url} failed {retries + 1} times; rerun to resume from {part}")

# -----------------------------------------------------------------------------
# Tokenizing and writing


def tokenize(documents, name):
    """Documents -> (ids of the tokenizer `name`, with its end-of-text id after each document, in
    its memmap dtype; tokens per document; number of empty documents, which are skipped). Runs in
    the worker processes. A special token written in a text is plain text."""
    tokenizer = tokenization.load(name)
    texts = [text for text in documents if text and not text.isspace()]
    eot = np.array([tokenizer.eot], dtype=np.uint32)
    pieces, lengths = [], []
    if tokenizer.hf is not None:
        for ids in (tokenizer.encode_batch(texts) if texts else []):
            pieces += (np.array(ids, dtype=np.uint32), eot)
            lengths.append(len(ids) + 1)
    else:
        encoding = tokenization.get_tokenizer()
        for text in texts:
            try:  # ids straight into numpy, no Python list; disallowed_special=(): like encode_ordinary
                ids = encoding.encode_to_numpy(text, disallowed_special=())
            except UnicodeEncodeError:  # lone surrogates (from JSON escapes): encode_ordinary mends them
                ids = np.array(encoding.encode_ordinary(text), dtype=np.uint32)
            pieces += (ids, eot)
            lengths.append(len(ids) + 1)
    tokens = np.concatenate(pieces).astype(tokenizer.dtype) if pieces else np.zeros(0, dtype=tokenizer.dtype)
    return tokens, np.array(lengths, dtype=np.int64), len(documents) - len(texts)


def chunks(documents, max_docs):
    """Lists of about CHUNK_CHARS characters of documents; at most max_docs documents (0 = all)."""
    chunk, size = [], 0
    for i, text in enumerate(documents, 1):
        chunk.append(text)
        size += len(text)
        if size >= CHUNK_CHARS or i == max_docs:
            yield chunk
            chunk, size = [], 0
        if i == max_docs:
            return
    if chunk:
        yield chunk


def tokenized(chunks, name, num_proc):
    """tokenize() over chunks, in order. At most 2 * num_proc chunks are in flight, so memory
    stays bounded however much faster the reading is than the tokenizing."""
    if num_proc <= 1:
        yield from (tokenize(chunk, name) for chunk in chunks)
        return
    tokenization.load(name)  # load it once here, so that forked workers inherit it
    if name != 'gpt2':  # a transformers tokenizer's own threads do not survive the fork
        os.environ['TOKENIZERS_PARALLELISM'] = 'false'
    with Pool(num_proc) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(tokenize, (chunk, name)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def write_splits(results, paths, val_fraction, split_seed):
    """Send each document to val with probability val_fraction, else to train; return counts.
    The draws follow document order, so the split depends only on the input and the seed."""
    rng = np.random.default_rng(split_seed)
    n = dict(train_tokens=0, val_tokens=0, train_docs=0, val_docs=0, empty_docs=0)
    start = last_print = time.time()
    with open(paths['train.bin'], 'wb') as train, open(paths['val.bin'], 'wb') as val:
        for tokens, lengths, empty in results:
            is_val = rng.random(len(lengths)) < val_fraction
            if is_val.any():
                in_val = np.repeat(is_val, lengths)
                tokens[in_val].tofile(val)
                tokens[~in_val].tofile(train)
            else:
                tokens.tofile(train)
            n['val_docs'] += int(is_val.sum())
            n['train_docs'] += int((~is_val).sum())
            n['val_tokens'] += int(lengths[is_val].sum())
            n['train_tokens'] += int(lengths[~is_val].sum())
            n['empty_docs'] += empty
            if time.time() - last_print > 10:
                last_print, total = time.time(), n['train_tokens'] + n['val_tokens']
                print(f"{n['train_docs'] + n['val_docs']:,} documents, {total:,} tokens, "
                      f"{total / (last_print - start):,.0f} tokens/s", flush=True)
    return n


def documents_of(cfg, reader):
    """The source's documents, and what meta.json should say about where they come from."""
    if cfg['dataset'] == 'synthetic':
        source = dict(synthetic_stories=cfg['synthetic_stories'], synthetic_seed=cfg['synthetic_seed'],
                      corpus_version=corpus.VERSION)
        return corpus.generate_stories(cfg['synthetic_stories'], cfg['synthetic_seed']), source
    if cfg['dataset'] == 'owt2' and not cfg['input']:
        if not os.path.exists(cfg['download_path']):
            download(cfg['owt2_url'], cfg['download_path'], cfg['download_retries'])
        return reader.files([cfg['download_path']]), dict(input=[cfg['download_path']], url=cfg['owt2_url'])
    if cfg['dataset'] in ('text', 'owt2'):
        files = input_files(cfg['input'])
        return reader.files(files), dict(input=files)
    fail(f"dataset='{cfg['dataset']}': use 'synthetic', 'text' or 'owt2'")


def main(argv=None):
    cfg = configurator.configure(globals(), 'prepare', argv)
    if not 0 <= cfg['val_fraction'] < 1:
        fail(f"val_fraction={cfg['val_fraction']} must be in [0, 1)")
    os.makedirs(cfg['data_dir'], exist_ok=True)
    outputs = {name: os.path.join(cfg['data_dir'], name) for name in OUTPUTS}
    temporary = {name: path + '.tmp' for name, path in outputs.items()}
    for name in reversed(OUTPUTS):  # meta.json first: it is what marks a finished run
        if os.path.exists(outputs[name]):
            os.remove(outputs[name])
    reader = Reader(cfg['text_delimiter'], cfg['max_bad_lines'])
    tokenizer = tokenization.load(cfg['tokenizer'])  # a bad name stops here, before any reading
    try:
        documents, source = documents_of(cfg, reader)
        start = time.time()
        results = tokenized(chunks(documents, cfg['max_docs']), cfg['tokenizer'], cfg['num_proc'])
        n = write_splits(results, temporary, cfg['val_fraction'], cfg['split_seed'])
        elapsed = time.time() - start
        if n['train_docs'] == 0 or n['val_docs'] == 0:
            fail(f"{n['train_docs']} train and {n['val_docs']} val documents: need both "
                 f"(change val_fraction={cfg['val_fraction']} or add documents)")
        meta = dict(tokenizer.describe(), vocab_size=tokenizer.vocab_size, dtype=np.dtype(tokenizer.dtype).name,
                    eot=int(tokenizer.eot),
                    **n, bad_lines=reader.bad_lines, skipped_members=reader.skipped_members,
                    source=cfg['dataset'], **source, max_docs=cfg['max_docs'],
                    val_fraction=cfg['val_fraction'], split_seed=cfg['split_seed'])
        with open(temporary['meta.json'], 'w') as f:
            json.dump(meta, f, indent=2)
        for name in OUTPUTS:  # meta.json last
            os.replace(temporary[name], outputs[name])
    finally:
        for path in temporary.values():
            if os.path.exists(path):
                os.remove(path)
    return report(meta, elapsed)


def report(meta, seconds):
    """Print a summary; return meta.json's content with the time taken."""
    tokens = meta['train_tokens'] + meta['val_tokens']
    print(f"{meta['source']}: {meta['train_docs']:,} train + {meta['val_docs']:,} val documents, "
          f"{meta['train_tokens']:,} + {meta['val_tokens']:,} tokens in {seconds:.1f}s "
          f"({tokens / max(seconds, 1e-9):,.0f} tokens/s); skipped {meta['empty_docs']} empty "
          f"documents and {meta['bad_lines']} bad lines")
    return dict(meta, seconds=seconds)


if __name__ == '__main__':
    main()
