"""
The REPA teacher: a frozen pretrained transformers language model, whose hidden states at one
layer train_vae.py aligns the VAE's encoder with, and the inputs it reads: our tokens in its own
vocabulary, or its own tokens paired with ours through character offsets.
"""
import numpy as np
import torch
import torch.nn as nn

import export
import tokenization
from configurator import ConfigError

# -----------------------------------------------------------------------------
# Only what REPA reads: the blocks up to its layer, never the LM head. On Qwen3-1.7B at layer -3
# that skips 2 of 28 blocks and the 151,936-wide output layer, whose logits alone (16 x 1,024
# tokens, bf16) would take 5 GB.

FINAL_NORMS = ('norm', 'ln_f', 'final_layer_norm')  # Llama/Qwen/Mistral, GPT-2, GPT-NeoX


def cut_after(model, layer):
    """Cut a transformers model in place so that its base model's last_hidden_state is the full
    model's hidden_states[layer] (0 = the embeddings, k = after block k, negative from the end).
    The blocks after that layer go, and the final norm with them: transformers applies it to the
    last entry of hidden_states only, so it stays only when the layer is the last.
    Returns (the base model, the number of parameters dropped)."""
    base = model.base_model  # the model without its LM head
    depth = base.config.num_hidden_layers
    keep = layer % (depth + 1)  # blocks to run
    blocks = [name for name, child in base.named_children() if isinstance(child, nn.ModuleList) and len(child) == depth]
    norms = [name for name in FINAL_NORMS if isinstance(getattr(base, name, None), nn.Module)]
    if len(blocks) != 1 or len(norms) != 1:
        raise SystemExit(f"cannot cut the REPA teacher ({type(base).__name__}) after its layer {layer}: expected "
                         f"one list of its {depth} blocks and one final norm ({', '.join(FINAL_NORMS)}) on it, "
                         f"as GPT-2 (h, ln_f) and Llama/Qwen-style models (layers, norm) have")
    before = sum(p.numel() for p in model.parameters())
    setattr(base, blocks[0], getattr(base, blocks[0])[:keep])
    if keep < depth:
        setattr(base, norms[0], nn.Identity())
    return base, before - sum(p.numel() for p in base.parameters())


# -----------------------------------------------------------------------------
# The REPA teacher

class Teacher:
    """A frozen causal LM from transformers, cut after the layer REPA reads (cut_after). Not an
    nn.Module attribute of the objective, so it is neither trained, nor saved, nor wrapped by
    DDP or torch.compile."""

    def __init__(self, name_or_path, layer, device, block_size, data_tokenizer=None):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        cannot_load = lambda e: SystemExit(f"cannot load the REPA teacher '{name_or_path}': {e}\n(set "
                                           f"repa_teacher to a transformers causal LM, or None to train without REPA)")
        try:  # the config first: a bad layer or a short context stops before the weights load
            self.config = AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError, KeyError) as e:
            raise cannot_load(e)
        depth = self.config.num_hidden_layers  # hidden_states: the embeddings, then each layer
        if not -(depth + 1) <= layer <= depth:
            raise ConfigError(f"repa_teacher_layer={layer}: repa_teacher={name_or_path!r} has {depth} "
                              f"layers (hidden_states indices {-(depth + 1)}..{depth})")
        self.context = (getattr(self.config, 'max_position_embeddings', None)
                        or getattr(self.config, 'n_positions', None) or float('inf'))
        if block_size > self.context:
            raise ConfigError(f"block_size={block_size} is longer than the {self.context}-token context of "
                              f"repa_teacher={name_or_path!r}: shorten the VAE's window")
        try:  # loaded whole, as published (AutoModel would list an untied LM head as unexpected)
            model = AutoModelForCausalLM.from_pretrained(
                name_or_path, dtype=torch.bfloat16 if device.startswith('cuda') else torch.float32)
        except (OSError, ValueError, KeyError) as e:
            raise cannot_load(e)
        self.model, dropped = cut_after(model, layer)  # cut on the CPU: the device never holds the rest
        self.model.requires_grad_(False).eval().to(device)
        self.layer, self.device, self.name, self.block_size = layer, device, name_or_path, block_size
        if layer in (0, -(depth + 1)):
            print(f"note: repa_teacher_layer={layer} is the teacher's embedding output, not a "
                  f"hidden layer: REPA then only aligns with token identities")
        self.hidden_size = self.config.hidden_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError, KeyError, TypeError):
            self.tokenizer = None
        # One to one when the teacher reads the data's tokens (or a compact renumbering of them,
        # as an exported tiny GPT does): then self.vocab maps the data's ids to the teacher's.
        data_tokenizer = data_tokenizer or tokenization.load('gpt2')
        self.vocab = self._token_space(data_tokenizer)
        self.same_tokens = self.vocab is not None
        how = (f'one to one (tokenizer={data_tokenizer.name!r})' if self.same_tokens else
               f'through character offsets (the data is in tokenizer={data_tokenizer.name!r} tokens)')
        print(f"REPA teacher {name_or_path}: hidden {self.hidden_size}, layer {layer} (runs {layer % (depth + 1)} "
              f"of {depth} blocks, no LM head: {dropped / 1e6:.2f}M parameters dropped), aligned {how}")

    def _token_space(self, data_tokenizer):
        """The teacher's ids as a Vocab of the data's tokenizer, or None: align through characters."""
        compact = export.exported_vocab(self.config, f'the REPA teacher {self.name}')
        if compact is not None:   # a compact export of ours: no tokenizer files, only its ids
            if compact.tokenizer.sha256 != data_tokenizer.sha256:
                raise SystemExit(f"the REPA teacher {self.name} reads a compact vocabulary of "
                                 f"tokenizer={compact.tokenizer.name!r}, the data is in tokenizer="
                                 f"{data_tokenizer.name!r} tokens: use a teacher with a tokenizer of its own")
            return compact
        if self.tokenizer is None:
            if self.config.vocab_size != data_tokenizer.vocab_size:
                raise SystemExit(f"the REPA teacher {self.name} has no tokenizer and its vocabulary "
                                 f"({self.config.vocab_size}) is not the data's ({data_tokenizer.vocab_size}): "
                                 f"save its tokenizer in its folder")
            return tokenization.Vocab(tokenizer=data_tokenizer)  # a tokenizer-less export: the data's ids
        probe = "Hello world, it's 3.14 -- naïve café 日本語\n\n  end"
        same = (max(self.tokenizer.get_vocab().values()) + 1 == data_tokenizer.vocab_size and
                self.tokenizer(probe, add_special_tokens=False)['input_ids'] == list(data_tokenizer.encode(probe)))
        return tokenization.Vocab(tokenizer=data_tokenizer) if same else None

    def inputs(self, idx, valid, vocab):
        """CPU side, run while building the batch: the teacher's input ids and mask, and the
        alignment (rows of [batch, our position, teacher position]) when the tokenizers differ.
        idx is in the ids of `vocab` (the VAE's), padded with its end-of-text token."""
        ids = vocab.to_tokenizer(idx.numpy())
        if self.same_tokens:
            return torch.from_numpy(self.vocab.from_tokenizer(ids)), valid, torch.zeros(0, 3, dtype=torch.long)
        rows = [tokenization.align_by_characters(row[v].tolist(), self.tokenizer, vocab.tokenizer)
                for row, v in zip(ids, valid.numpy())]
        width = max(1, max(len(teacher_ids) for teacher_ids, _ in rows))
        if width > self.context:  # its tokenizer cut a window into more tokens than it can read
            raise SystemExit(f"a window of block_size={self.block_size} tokens is {width} tokens for "
                             f"repa_teacher={self.name!r}, whose context is {self.context}: shorten block_size")
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, (teacher_ids, _) in enumerate(rows):
            ids[b, :len(teacher_ids)] = torch.tensor(teacher_ids, dtype=torch.long)
            mask[b, :len(teacher_ids)] = True
        pairs = np.concatenate([np.insert(pairs_b, 0, b, axis=1) for b, (_, pairs_b) in enumerate(rows)])
        return ids, mask, torch.from_numpy(pairs)

    @torch.no_grad()
    def features(self, ids, mask, pairs, length):
        """(B, length, hidden) fp32 teacher states on our token positions, and (B, length) bool:
        which of our positions got one. With different tokenizers, a token of ours takes the
        mean of the states of every teacher token that overlaps its characters."""
        states = self.model(input_ids=ids, attention_mask=mask.long(), use_cache=False).last_hidden_state.float()
        if self.same_tokens:
            return states, mask
        b, i, j = pairs.unbind(1)
        summed = states.new_zeros(ids.shape[0], length, states.shape[-1]).index_put_((b, i), states[b, j], accumulate=True)
        count = states.new_zeros(ids.shape[0], length).index_put_((b, i), states.new_ones(len(b)), accumulate=True)
        return summed / count.clamp(min=1).unsqueeze(-1), count > 0
