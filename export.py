"""
Our GPT as a transformers GPT-2 folder (train_gpt.py writes out_dir/gpt_hf), complete and offline:
a REPA teacher (teacher.py), a judge (eval.py), or input to any transformers tool. Its weights,
its tokenizer's files (GPT-2's are written from tiktoken's ranks), or, for a compact vocabulary,
the ids it keeps in config.json, which exported_vocab reads back.
"""
import json
import os

import torch

import tokenization
from tokenization import byte_to_unicode

# GPT-2 stores these as Conv1D with weight (in, out); nn.Linear wants (out, in).
CONV1D_SUFFIXES = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')


def save_weights(gpt, folder, eos_token_id=tokenization.EOT):
    """Write our GPT (model.GPT) as a transformers GPT-2 folder (config + weights) that GPT2LMHeadModel loads."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = gpt.config
    if not cfg.bias:
        raise ValueError("GPT-2 checkpoints need bias=True")
    hf_config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function='gelu_new',
                           layer_norm_epsilon=1e-5, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                           attn_pdrop=cfg.dropout, tie_word_embeddings=True,
                           bos_token_id=eos_token_id, eos_token_id=eos_token_id)
    hf_model = GPT2LMHeadModel(hf_config)
    target = hf_model.state_dict()
    with torch.no_grad():
        for key, param in gpt.state_dict().items():
            target[key].copy_(param.t() if key.endswith(CONV1D_SUFFIXES) else param)
    hf_model.save_pretrained(folder)


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
    ranks = tokenization.get_tokenizer()._mergeable_ranks
    to_unicode = byte_to_unicode()
    as_text = lambda token: ''.join(to_unicode[b] for b in token)
    vocab = {as_text(token): rank for token, rank in ranks.items()}
    vocab['<|endoftext|>'] = tokenization.EOT
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
    """Save our GPT as a transformers GPT-2 folder. With the full vocabulary it gets its tokenizer's
    files (GPT-2's, written from tiktoken's ranks, or the transformers tokenizer's own); with a
    compact one, config.json records the tokenizer and the ids it keeps (`textldm_tokenizer`,
    `textldm_vocab_ids`), which train_vae.py and eval.py read to map text in."""
    save_weights(gpt, folder, eos_token_id=int(vocab.eot))
    if vocab.ids is None and vocab.tokenizer.hf is None:
        save_gpt2_tokenizer(folder)
    elif vocab.ids is None:
        vocab.tokenizer.hf.save_pretrained(folder)
    else:
        path = os.path.join(folder, 'config.json')
        with open(path) as f:
            hf_config = json.load(f)
        hf_config.update({f'textldm_{k}': v for k, v in vocab.state().items()})
        with open(path, 'w') as f:
            json.dump(hf_config, f, indent=2)


def exported_vocab(hf_config, where):
    """The compact Vocab an exported GPT's config.json records (export_gpt), or None."""
    if getattr(hf_config, 'textldm_vocab_ids', None) is None:
        return None
    record = {k: getattr(hf_config, f'textldm_{k}') for k in ('vocab_ids', 'tokenizer', 'tokenizer_sha256')
              if hasattr(hf_config, f'textldm_{k}')}
    return tokenization.Vocab.of(record, where)
