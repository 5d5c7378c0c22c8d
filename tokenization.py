"""
Tokens: the data's tokenizer (GPT-2's BPE offline, or any transformers tokenizer), the vocabulary
a model works in (all of the tokenizer's ids, or the ids its data uses), and the token memmaps
prepare.py writes, read as training windows.
"""
import codecs
import hashlib
import importlib.util
import json
import os
import re
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


def align_by_characters(ids, tokenizer, data_tokenizer=None):
    """Decode our tokens (ids of `data_tokenizer`, a Tokenizer; GPT-2's by default) to text,
    tokenize it with the teacher's `tokenizer`, and pair each of our tokens with the teacher
    tokens whose character spans overlap its own. Bytes are decoded
    incrementally, so a window that starts or ends inside a UTF-8 character decodes to U+FFFD
    there instead of failing; a token that completes no character takes the character it
    begins. <|endoftext|> becomes a blank line, the document break a teacher expects.
    Returns the teacher's ids (a list) and the pairs: an (n, 2) int64 array of rows (our
    position, teacher position), in order. Linear in the window: it runs on every window trained on."""
    data_tokenizer, decoder = data_tokenizer or load('gpt2'), codecs.getincrementaldecoder('utf-8')('replace')
    pieces = ['\n\n' if t == data_tokenizer.eot else decoder.decode(data_tokenizer.token_bytes(t)) for t in ids]
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
# The data's tokenizer: prepare.py's `tokenizer` key, recorded in meta.json and in every checkpoint

class Tokenizer:
    """'gpt2' (GPT-2's BPE through tiktoken, offline: the default) or any transformers tokenizer,
    by hub name or local folder. name, vocab_size, eot (the id written after every document:
    '<|endoftext|>' where the vocabulary has it, else the tokenizer's eos token), dtype (of the
    memmaps: uint16 while the ids fit, else uint32), sha256 (of the vocabulary: two names for one
    tokenizer agree, two tokenizers do not), encode(text) and decode(ids)."""

    def __init__(self, name):
        self.name, self.hf = name, None
        if name == 'gpt2':
            self.vocab_size, self.eot, self.sha256 = VOCAB_SIZE, EOT, GPT2_RANKS_SHA256
        else:
            from transformers import AutoTokenizer
            try:
                self.hf = AutoTokenizer.from_pretrained(name)
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"cannot load tokenizer={name!r} (a transformers tokenizer: hub name or "
                                 f"folder, or 'gpt2'): {e}")
            vocab = self.hf.get_vocab()
            self.vocab_size = max(vocab.values()) + 1
            self.eot = vocab.get('<|endoftext|>', self.hf.eos_token_id)
            if self.eot is None:
                raise SystemExit(f"tokenizer={name!r} has neither '<|endoftext|>' nor an eos token to end documents with")
            self.sha256 = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()
            self._bytes = None
        self.dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, text):
        """Text -> ids. Special tokens written in the text are ordinary text (as encode_ordinary)."""
        return encode(text) if self.hf is None else self.encode_batch([text])[0]

    def encode_batch(self, texts):
        if self.hf is None:
            return get_tokenizer().encode_ordinary_batch(texts)
        try:
            return self.hf(texts, add_special_tokens=False, split_special_tokens=True)['input_ids']
        except (UnicodeEncodeError, TypeError):  # lone surrogates (JSON escapes) become U+FFFD, as in tiktoken
            texts = [re.sub('[\ud800-\udfff]', '\ufffd', text) for text in texts]
            return self.hf(texts, add_special_tokens=False, split_special_tokens=True)['input_ids']

    def decode(self, ids):
        """Ids -> text; bytes cut mid-character become U+FFFD."""
        if self.hf is None:
            return decode(ids)
        return self.hf.decode([int(i) for i in ids], clean_up_tokenization_spaces=False)

    def token_bytes(self, i):
        """The bytes token i stands for (what align_by_characters decodes incrementally)."""
        if self.hf is None:
            return get_tokenizer().decode_single_token_bytes(int(i))
        if self._bytes is None:
            self._bytes = self._byte_table()
        return self._bytes[int(i)]

    def _byte_table(self):
        """Each id's bytes: byte-level BPE (GPT-2, Qwen, Llama 3, SmolLM) spells them in GPT-2's
        printable alphabet; SentencePiece (Llama 2, Mistral) writes a space as U+2581 and raw bytes
        as <0xHH>; added and special tokens are their text."""
        decoder = json.loads(self.hf.backend_tokenizer.to_str()).get('decoder') or {}
        byte_level = 'ByteLevel' in json.dumps(decoder)
        from_unicode = {c: b for b, c in byte_to_unicode().items()}
        added = set(self.hf.all_special_ids) | set(self.hf.added_tokens_decoder)
        table = [b''] * self.vocab_size
        for piece, i in self.hf.get_vocab().items():
            if i in added:
                table[i] = piece.encode()
            elif byte_level and all(c in from_unicode for c in piece):
                table[i] = bytes(from_unicode[c] for c in piece)
            elif len(piece) == 6 and piece.startswith('<0x') and piece.endswith('>'):
                table[i] = bytes([int(piece[3:5], 16)])
            else:
                table[i] = piece.replace('\u2581', ' ').encode()
        return table

    def describe(self):
        """What checkpoints and meta.json record of it."""
        return dict(tokenizer=self.name, tokenizer_sha256=self.sha256)


@lru_cache(maxsize=None)
def load(name='gpt2'):
    return Tokenizer(name)


def recorded(record, where):
    """The Tokenizer a meta.json or a checkpoint's model_args names (GPT-2's if it names none: it
    was written when GPT-2's was the only one), checked to be the one it was: a hub tokenizer
    updated since, or a folder replaced, is refused."""
    tokenizer = load(record.get('tokenizer', 'gpt2'))
    if record.get('tokenizer_sha256', tokenizer.sha256) != tokenizer.sha256:
        raise SystemExit(f"{where} was made with tokenizer={tokenizer.name!r} of vocabulary sha256 "
                         f"{record['tokenizer_sha256'][:12]}..., which now loads as {tokenizer.sha256[:12]}...: "
                         f"the tokenizer changed since")
    return tokenizer


# -----------------------------------------------------------------------------
# Data: the token memmaps written by prepare.py

class Vocab:
    """The token ids a model works in. Normally all of its tokenizer's (ids=None). With compact_vocab,
    only the ids that occur in the prepared data, renumbered 0..K-1: the embedded corpus uses ~200 of
    GPT-2's 50257 tokens, and a full-vocabulary output layer would cost a CPU run ~100x more.
    Checkpoints store `vocab_ids` and the tokenizer (state()), so every later stage maps text in
    and out the same way."""

    def __init__(self, ids=None, tokenizer=None):
        self.tokenizer = tokenizer or load('gpt2')
        self.ids = None if ids is None else np.asarray(ids, dtype=np.int64)
        self.size = self.tokenizer.vocab_size if ids is None else len(self.ids)
        self.lookup = None
        if self.ids is not None:
            self.lookup = np.full(self.tokenizer.vocab_size, -1, dtype=np.int64)
            self.lookup[self.ids] = np.arange(len(self.ids))
        self.eot = self.from_tokenizer([self.tokenizer.eot])[0]

    @classmethod
    def of(cls, model_args, where):
        """The vocabulary a checkpoint's model_args (or an exported config.json) records."""
        return cls(model_args.get('vocab_ids'), recorded(model_args, where))

    def from_tokenizer(self, ids):
        """Tokenizer ids -> model ids (an error names a token the model has never seen)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.lookup is None:
            return ids
        out = self.lookup[ids]
        if (out < 0).any():
            unknown = self.tokenizer.decode([ids[out < 0][0]])
            raise SystemExit(f"token {unknown!r} is not in this model's compact vocabulary "
                             f"({self.size} tokens seen in its training data)")
        return out

    def to_tokenizer(self, ids):
        ids = np.asarray(ids, dtype=np.int64)
        return ids if self.ids is None else self.ids[ids]

    def encode(self, text):
        return self.from_tokenizer(self.tokenizer.encode(text))

    def decode(self, ids):
        return self.tokenizer.decode(self.to_tokenizer(ids))

    def state(self):
        """What a checkpoint stores: the tokenizer, and None or the list of its ids kept."""
        return dict(self.tokenizer.describe(), vocab_ids=None if self.ids is None else self.ids.tolist())

    def check_same(self, other, this, that):
        """Stop, naming both, if `other` is a vocabulary of another tokenizer or other ids."""
        if self.tokenizer.sha256 != other.tokenizer.sha256:
            raise SystemExit(f"{this}: tokenizer={self.tokenizer.name!r}; {that}: tokenizer="
                             f"{other.tokenizer.name!r}. Use one tokenizer throughout")
        if self.state() != other.state():
            raise SystemExit(f"{this} and {that} have different compact vocabularies (the ids of "
                             f"different training data): was one of them replaced?")


class TokenData:
    """Random windows from data_dir/{train,val}.bin, in the ids of `vocab`. Re-opens the memmap
    per call (nanoGPT's fix for a memory leak) and reads meta.json: the tokenizer, and the memmaps'
    dtype. Data of another tokenizer than `vocab`'s is refused, naming both."""

    def __init__(self, data_dir, compact_vocab=False, vocab=None, vocab_of='the model'):
        meta_path = os.path.join(data_dir, 'meta.json')
        if not os.path.isfile(meta_path):
            raise SystemExit(f"no prepared data in '{data_dir}' (missing meta.json): "
                             f"run `python prepare.py <config>` first")
        with open(meta_path) as f:
            self.meta = json.load(f)
        if vocab is not None and vocab.tokenizer.sha256 != self.meta.get('tokenizer_sha256', GPT2_RANKS_SHA256):
            raise SystemExit(f"data_dir={data_dir!r} is tokenized with tokenizer={self.meta.get('tokenizer')!r}, "
                             f"{vocab_of} was trained on tokenizer={vocab.tokenizer.name!r} tokens: use data "
                             f"of its tokenizer, or train it on this data")
        self.tokenizer = vocab.tokenizer if vocab else recorded(self.meta, meta_path)
        if self.meta.get('vocab_size') != self.tokenizer.vocab_size:
            raise SystemExit(f"{meta_path}: vocab_size {self.meta.get('vocab_size')} is not the "
                             f"{self.tokenizer.vocab_size} of tokenizer={self.tokenizer.name!r}: run prepare.py again")
        self.dtype = np.dtype(self.meta.get('dtype', 'uint16'))
        self.data_dir = data_dir
        # a later stage passes the vocabulary its VAE was trained with (`vocab_of` names it)
        self.vocab = vocab or Vocab(self._ids_in_data() if compact_vocab else None, self.tokenizer)
        if vocab is not None and vocab.ids is not None:
            missing = np.setdiff1d(self._ids_in_data(), vocab.ids)
            if len(missing):  # else a token it never saw would stop the run mid-training
                raise SystemExit(f"data_dir={data_dir!r} holds {len(missing)} token ids that {vocab_of} "
                                 f"does not know (its compact vocabulary has the {vocab.size} tokens of "
                                 f"its own training data), e.g. {self.tokenizer.decode(missing[:5])!r}: use its "
                                 f"data_dir, or train it on this data")

    def _memmap(self, split):
        path = os.path.join(self.data_dir, f'{split}.bin')
        if not os.path.isfile(path):
            raise SystemExit(f"'{path}' is missing: run `python prepare.py <config>` again")
        return np.memmap(path, dtype=self.dtype, mode='r')

    def _ids_in_data(self):
        counts = sum(np.bincount(self._memmap(split), minlength=self.tokenizer.vocab_size) for split in ('train', 'val'))
        return np.union1d(np.flatnonzero(counts), [self.tokenizer.eot])

    def windows(self, split, batch_size, length, rng):
        """(batch_size, length) int64 numpy array of random token windows, in model ids."""
        data = self._memmap(split)
        if len(data) <= length:
            raise SystemExit(f"{split}.bin has {len(data)} tokens, fewer than one window of {length}")
        starts = rng.integers(0, len(data) - length, size=batch_size)
        windows = np.stack([data[s:s + length] for s in starts]).astype(np.int64)
        return windows if self.vocab.lookup is None else self.vocab.from_tokenizer(windows)


# GPT-2's byte alphabet: vocab.json spells each byte as a printable character

def byte_to_unicode():
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
