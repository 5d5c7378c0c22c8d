"""
Tokens: GPT-2's BPE offline, the vocabulary a model works in (all of GPT-2's ids, or the ids its
data uses), the token memmaps prepare.py writes, and the tokenizer a transformers folder of ours
carries (an exported GPT is a complete GPT-2 folder: a REPA teacher, a judge, any transformers tool).
"""
import codecs
import hashlib
import importlib.util
import json
import os
from functools import lru_cache

import numpy as np

# -----------------------------------------------------------------------------
# GPT-2 BPE, offline. tiktoken.get_encoding('gpt2') downloads its ranks; the same ranks ship
# in the openai-whisper source package (installed with --no-deps by the README's install
# command). We load them from there, check the sha256 tiktoken itself expects for r50k_base,
# and build the standard encoding. On a machine with no whisper package we fall back to
# tiktoken's own (downloading) loader.

GPT2_RANKS_SHA256 = '306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930'
EOT = 50256
VOCAB_SIZE = 50257


def _gpt2_ranks_path():
    override = os.environ.get('TEXTLDM_GPT2_RANKS')
    if override:
        return override
    spec = importlib.util.find_spec('whisper')  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], 'assets', 'gpt2.tiktoken')


@lru_cache(maxsize=None)
def get_tokenizer():
    """The GPT-2 tokenizer (tiktoken Encoding): 'Hello world' -> [15496, 995], EOT 50256."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    path = _gpt2_ranks_path()
    if path is None or not os.path.isfile(path):
        try:
            return tiktoken.get_encoding('gpt2')
        except Exception as e:  # offline and no whisper package: say what to install
            raise RuntimeError("GPT-2 BPE ranks not found: run `pip install --no-deps "
                               "openai-whisper==20250625` (ships whisper/assets/gpt2.tiktoken)") from e
    with open(path, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != GPT2_RANKS_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} is not the GPT-2 ranks' {GPT2_RANKS_SHA256}")
    ranks = load_tiktoken_bpe(path, expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(name='gpt2', pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={'<|endoftext|>': EOT}, explicit_n_vocab=VOCAB_SIZE)


def encode(text):
    """Text -> GPT-2 ids. A literal '<|endoftext|>' in the text is ordinary text, not EOT."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids):
    """GPT-2 ids -> text; bytes cut mid-character become U+FFFD instead of raising."""
    return get_tokenizer().decode([int(i) for i in ids], errors='replace')


def align_by_characters(ids, tokenizer):
    """Decode our tokens to text, tokenize it with the teacher's tokenizer, and pair each of our
    tokens with the teacher tokens whose character spans overlap its own. Bytes are decoded
    incrementally, so a window that starts or ends inside a UTF-8 character decodes to U+FFFD
    there instead of failing; a token that completes no character takes the character it
    begins. <|endoftext|> becomes a blank line, the document break a teacher expects.
    Returns the teacher's ids (a list) and the pairs: an (n, 2) int64 array of rows (our
    position, teacher position), in order. Linear in the window: it runs on every window trained on."""
    enc, decoder = get_tokenizer(), codecs.getincrementaldecoder('utf-8')('replace')
    pieces = ['\n\n' if t == EOT else decoder.decode(enc.decode_single_token_bytes(t)) for t in ids]
    pieces.append(decoder.decode(b'', final=True))  # U+FFFD for a character cut at the end
    text = ''.join(pieces)
    lengths = np.fromiter(map(len, pieces[:-1]), dtype=np.int64, count=len(ids))
    # token i spans characters bounds[i]:bounds[i + 1], the last one also what the final flush added
    bounds = np.append(np.cumsum(lengths) - lengths, len(text))
    starts = bounds[:-1]
    ends = np.maximum(bounds[1:], np.minimum(starts + 1, len(text)))  # an empty span: the character it begins
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.array(encoded['offset_mapping'], dtype=np.int64).reshape(-1, 2)
    first = np.searchsorted(offsets[:, 1], starts, side='right')  # first teacher token ending after start
    last = np.searchsorted(offsets[:, 0], ends, side='left')      # first teacher token starting at/after end
    # token i pairs with teacher tokens first[i] .. last[i] - 1: expand the ranges without a loop
    count = np.maximum(last - first, 0)  # never negative for ordered offsets; as range() was
    ours = np.repeat(np.arange(len(ids)), count)
    theirs = np.repeat(first - (np.cumsum(count) - count), count) + np.arange(count.sum())
    return encoded['input_ids'], np.stack([ours, theirs], axis=1)


# -----------------------------------------------------------------------------
# Data: the token memmaps written by prepare.py

class Vocab:
    """The token ids a model works in. Normally GPT-2's own (ids=None). With compact_vocab, only
    the ids that occur in the prepared data, renumbered 0..K-1: the embedded corpus uses ~200 of
    GPT-2's 50257 tokens, and a full-vocabulary output layer would cost a CPU run ~100x more.
    Checkpoints store `vocab_ids`, so every later stage maps text in and out the same way."""

    def __init__(self, ids=None):
        self.ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        self.size = VOCAB_SIZE if ids is None else len(self.ids)
        self.lookup = None
        if self.ids is not None:
            self.lookup = np.full(VOCAB_SIZE, -1, dtype=np.int64)
            self.lookup[self.ids] = np.arange(len(self.ids))
        self.eot = self.from_gpt2([EOT])[0]

    def from_gpt2(self, ids):
        """GPT-2 ids -> model ids (an error names a token the model has never seen)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.lookup is None:
            return ids
        out = self.lookup[ids]
        if (out < 0).any():
            unknown = decode([ids[out < 0][0]])
            raise SystemExit(f"token {unknown!r} is not in this model's compact vocabulary "
                             f"({self.size} tokens seen in its training data)")
        return out

    def to_gpt2(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self.ids is None else self.ids[ids]

    def encode(self, text):
        return self.from_gpt2(encode(text))

    def decode(self, ids):
        return decode(self.to_gpt2(ids))

    def state(self):
        """What a checkpoint stores: None or the list of GPT-2 ids."""
        return None if self.ids is None else self.ids.tolist()


class TokenData:
    """Random windows from data_dir/{train,val}.bin, in the ids of `vocab`. Re-opens the memmap
    per call (nanoGPT's fix for a memory leak) and checks meta.json, so data of another
    tokenizer is refused."""

    def __init__(self, data_dir, compact_vocab=False, vocab=None, vocab_of='the model'):
        meta_path = os.path.join(data_dir, 'meta.json')
        if not os.path.isfile(meta_path):
            raise SystemExit(f"no prepared data in '{data_dir}' (missing meta.json): "
                             f"run `python prepare.py <config>` first")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if self.meta.get('tokenizer') != 'gpt2' or self.meta.get('vocab_size') != VOCAB_SIZE:
            raise SystemExit(f"{meta_path}: data tokenized with {self.meta.get('tokenizer')!r} "
                             f"(vocab {self.meta.get('vocab_size')}); this project needs 'gpt2' (50257)")
        self.data_dir = data_dir
        # a later stage passes the vocabulary its VAE was trained with (`vocab_of` names it)
        self.vocab = vocab or Vocab(self._ids_in_data() if compact_vocab else None)
        if vocab is not None and vocab.ids is not None:
            missing = np.setdiff1d(self._ids_in_data(), vocab.ids)
            if len(missing):  # else a token it never saw would stop the run mid-training
                raise SystemExit(f"data_dir={data_dir!r} holds {len(missing)} token ids that {vocab_of} "
                                 f"does not know (its compact vocabulary has the {vocab.size} tokens of "
                                 f"its own training data), e.g. {decode(missing[:5])!r}: use its data_dir, "
                                 f"or train it on this data")

    def _memmap(self, split):
        path = os.path.join(self.data_dir, f'{split}.bin')
        if not os.path.isfile(path):
            raise SystemExit(f"'{path}' is missing: run `python prepare.py <config>` again")
        return np.memmap(path, dtype=np.uint16, mode='r')

    def _ids_in_data(self):
        counts = sum(np.bincount(self._memmap(split), minlength=VOCAB_SIZE) for split in ('train', 'val'))
        return np.union1d(np.flatnonzero(counts), [EOT])

    def windows(self, split, batch_size, length, rng):
        """(batch_size, length) int64 numpy array of random token windows, in model ids."""
        data = self._memmap(split)
        if len(data) <= length:
            raise SystemExit(f"{split}.bin has {len(data)} tokens, fewer than one window of {length}")
        starts = rng.integers(0, len(data) - length, size=batch_size)
        windows = np.stack([data[s:s + length] for s in starts]).astype(np.int64)
        return windows if self.vocab.lookup is None else self.vocab.from_gpt2(windows)


# -----------------------------------------------------------------------------
# A transformers tokenizer folder for our GPT-2 BPE, so an exported GPT (train_gpt.py) is a
# complete GPT-2 folder: usable as a REPA teacher, a judge, or by any transformers tool, offline.

def _byte_to_unicode():
    """GPT-2's reversible map of the 256 bytes to printable characters (vocab.json's alphabet)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_by_bpe(token, ranks, max_rank):
    """Replay BPE on `token` with merges of rank < max_rank: the two parts it was merged from."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(parts[i] + parts[i + 1], max_rank), i) for i in range(len(parts) - 1)]
        rank, i = min(pairs)
        if rank >= max_rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def save_gpt2_tokenizer(folder):
    """Write vocab.json/merges.txt (and tokenizer.json) equal to GPT-2's, from tiktoken's ranks."""
    ranks = get_tokenizer()._mergeable_ranks
    to_unicode = _byte_to_unicode()
    as_text = lambda token: ''.join(to_unicode[b] for b in token)
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    vocab['<|endoftext|>'] = EOT
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if rank >= 256:
            left, right = _split_by_bpe(token, ranks, rank)
            merges.append(f'{as_text(left)} {as_text(right)}')
    # The standard GPT-2 pipeline in the tokenizers library: byte-level pre-tokenizer, BPE, decoder.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(' ')) for m in merges]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token='<|endoftext|>',
                                        eos_token='<|endoftext|>', unk_token='<|endoftext|>')
    tokenizer.save_pretrained(folder)
    return tokenizer


def export_gpt(gpt, vocab, folder):
    """Save our GPT as a transformers GPT-2 folder. With the full vocabulary it gets GPT-2's
    tokenizer files; with a compact one, the GPT-2 ids it uses go into config.json
    (`textldm_vocab_ids`), which train_vae.py and eval.py read to map text in."""
    gpt.save_pretrained(folder, eos_token_id=int(vocab.eot))
    if vocab.ids is None:
        save_gpt2_tokenizer(folder)
    else:
        path = os.path.join(folder, 'config.json')
        with open(path) as f:
            hf_config = json.load(f)
        hf_config['textldm_vocab_ids'] = vocab.state()
        with open(path, 'w') as f:
            json.dump(hf_config, f, indent=2)
