"""
Continue a prompt (or generate from nothing) with TextLDM or with the GPT baseline: the
command-line front of sampling.py (TextLDM's flow sampler and the GPT's) and cola.py (a DiT
trained block-causally generates block by block, and sample 0 is printed as it comes).

    python sample.py config/tiny.py --prompt="Mia had 3 apples." --num_samples=4
    python sample.py config/tiny.py --model=gpt --prompt="FILE:prompt.txt" --out=samples.jsonl
"""
import json
import os
import time

import torch

import configurator
import sampling
import training
from sampling import autoregressive_options, continuation, flow_options, gpt_continue, load_textldm

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `sample_key` in a config file is ours alone)
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'bfloat16' if torch.cuda.is_available() else 'float32'
compile = False
seed = 1337
model = 'textldm'          # 'textldm' or 'gpt'
prompt = ''                # text, 'FILE:path' to read it from a file, or '' for unconditional
num_samples = 4
max_new_tokens = 64
out = ''                   # a .jsonl file for {prompt, continuation, ...} records ('' = none)
dit_path = '{out_dir}/dit.pt'
gpt_path = '{out_dir}/gpt.pt'
globals().update(sampling.SAMPLER)  # the sampler's keys (steps, cfg_scale, renoise, ...): sampling.py
# -----------------------------------------------------------------------------


def check_lengths(prompt_len, new_tokens, limits):
    """Stop with a clear message if the prompt + new tokens overrun a context: limits = [(name, tokens)]."""
    for name, limit in limits:
        if prompt_len + new_tokens > limit:
            raise SystemExit(f"prompt of {prompt_len} tokens + {new_tokens} new tokens exceeds the "
                             f"{name}'s context of {limit} tokens: shorten the prompt or max_new_tokens")


def main():
    config = configurator.configure(globals(), 'sample')
    training.check_precision(device, dtype)
    flow_options(config), autoregressive_options(config)   # the sampler's keys, checked before any work
    text = prompt
    if text.startswith('FILE:'):
        with open(text[5:], encoding='utf-8') as f:
            text = f.read()
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    stream = {}   # a Cola DiT's on_text: prints as it goes
    if model == 'textldm':
        dit, space, _ = load_textldm(dit_path, device)
        vocab, prompt_ids = space.vocab, space.vocab.encode(text).tolist()
        check_lengths(len(prompt_ids), max_new_tokens, [('DiT', dit.config.block_size)])
        check_lengths(len(prompt_ids), 0, [('VAE', space.block_size)])
        continue_fn, flow = continuation(dit, config)
        if dit.config.latent_block:   # block by block: sample 0 is printed as each block is decoded
            print(f"Cola, blocks of {dit.config.latent_block} latents; sample 0 as decoded:\n{text}", end='')
            stream = dict(on_text=lambda new: print(vocab.decode(new[0]), end='', flush=True))
        run = lambda: continue_fn(dit, space, [prompt_ids] * num_samples, [max_new_tokens] * num_samples,
                                  generator=generator, **stream, **flow)
    elif model == 'gpt':
        gpt, vocab, _ = training.load_model(gpt_path, 'gpt')
        gpt.to(device)
        prompt_ids = vocab.encode(text).tolist()
        check_lengths(max(1, len(prompt_ids)), max_new_tokens, [('GPT', gpt.config.block_size)])
        run = lambda: gpt_continue(gpt, vocab, [prompt_ids] * num_samples, [max_new_tokens] * num_samples,
                                   generator=generator, **autoregressive_options(config))
    else:
        raise configurator.ConfigError(f"model={model!r}: 'textldm' or 'gpt'")
    t0 = time.time()
    with training.autocast('cuda' if device.startswith('cuda') else 'cpu', dtype):
        continuations = [vocab.decode(ids) for ids in run()]
    if stream:
        print()
    print(f"{num_samples} samples of up to {max_new_tokens} tokens with {model} in {time.time() - t0:.2f}s")
    records = [{'model': model, 'seed': seed, 'sample': i, 'prompt': text, 'continuation': c}
               for i, c in enumerate(continuations)]
    for r in records:
        print(f"--- sample {r['sample']}\n{text}\033[1m{r['continuation']}\033[0m" if os.isatty(1)
              else f"--- sample {r['sample']}\n{text}{r['continuation']}")
    if out:
        with open(out, 'w', encoding='utf-8') as f:
            f.writelines(json.dumps(r) + '\n' for r in records)
    return records


if __name__ == '__main__':
    main()
