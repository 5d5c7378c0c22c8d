"""Tests for teacher.py: the REPA teacher cut after the layer REPA reads gives the full model's
hidden states there, and never runs the blocks after it or its LM head. Tiny random teachers of
the two families the project meets (GPT-2, and Qwen3 as config/owt.py's Qwen3-1.7B), saved as
transformers folders with a tokenizer that is not GPT-2's.

Run: python -m pytest tests/test_teacher.py -q
"""
import re

import pytest
import torch
import torch.nn as nn

import helpers
from teacher import Teacher, cut_after

DEPTH = 4
LAYERS = (0, 1, -3, -1, DEPTH, -(DEPTH + 1))  # hidden_states indices: -1 and DEPTH are the normed output


@pytest.fixture(scope='module', params=['gpt2', 'qwen3'])
def teacher_folder(request, tmp_path_factory):
    texts = helpers.corpus_text(50, 0, helpers.UNICODE_DOCS)
    return helpers.other_tokenizer_teacher(tmp_path_factory.mktemp(request.param), texts, n_embd=64,
                                           n_layer=DEPTH, arch=request.param)


def teacher_batch(teacher, lengths=(17, 9)):
    """Two rows of the teacher's own tokens, the second padded; our position i is its token i."""
    torch.manual_seed(0)
    ids = torch.randint(2, teacher.config.vocab_size, (len(lengths), max(lengths)))
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    pairs = torch.tensor([(b, i, i) for b, n in enumerate(lengths) for i in range(n)])
    return ids, mask, pairs


def test_cut_teacher_gives_the_full_models_hidden_states(teacher_folder):
    from transformers import AutoModelForCausalLM
    full = AutoModelForCausalLM.from_pretrained(teacher_folder).eval()
    for layer in LAYERS:
        teacher = Teacher(teacher_folder, layer, 'cpu', block_size=32)
        assert not teacher.same_tokens  # aligned through characters: features() averages over pairs
        ids, mask, pairs = teacher_batch(teacher)
        with torch.no_grad():
            expected = full(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True).hidden_states[layer]
        states, has_state = teacher.features(ids, mask, pairs, ids.shape[1])
        assert states.dtype == torch.float32 and torch.equal(has_state, mask)
        torch.testing.assert_close(states[mask], expected[mask], rtol=1e-5, atol=1e-5, msg=f"layer {layer}")


def test_cut_teacher_never_runs_later_blocks_or_the_lm_head(teacher_folder):
    for layer in LAYERS:
        teacher = Teacher(teacher_folder, layer, 'cpu', block_size=32)
        keep = layer % (DEPTH + 1)
        ran = []  # (name, module) of every module whose forward ran, in order
        for name, module in teacher.model.named_modules():
            module.register_forward_hook(lambda m, args, out, name=name: ran.append((name, m)))
        teacher.features(*teacher_batch(teacher), 17)
        blocks = sorted({int(found[2]) for name, _ in ran if (found := re.fullmatch(r'(h|layers)\.(\d+)', name))})
        assert blocks == list(range(keep)), f"layer {layer}"
        final_norm = [m for name, m in ran if name in ('ln_f', 'norm') and not isinstance(m, nn.Identity)]
        assert len(final_norm) == (keep == DEPTH), f"layer {layer}"
        assert not any(isinstance(m, nn.Linear) and m.out_features == teacher.config.vocab_size for _, m in ran)


def test_cut_after_drops_the_later_blocks_and_says_what_it_cannot_cut():
    from transformers import OPTConfig, OPTModel, Qwen3Config, Qwen3ForCausalLM
    config = Qwen3Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=DEPTH,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    model = Qwen3ForCausalLM(config)
    block = sum(p.numel() for p in model.model.layers[0].parameters())
    base, dropped = cut_after(model, -3)  # after block 2: blocks 3 and 4 and the final norm go
    assert base is model.model and len(base.layers) == 2 and isinstance(base.norm, nn.Identity)
    assert dropped == 2 * block + 32 + 100 * 32  # and the LM head (untied here)
    opt = OPTModel(OPTConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
                             word_embed_proj_dim=16))  # its blocks sit deeper, in decoder.layers
    with pytest.raises(SystemExit, match='cannot cut the REPA teacher'):
        cut_after(opt, -1)
