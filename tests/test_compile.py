"""Each stage's training step compiles as one graph: the scripts run here with torch.compile
patched to fullgraph=True, which raises at the first graph break. Dynamo traces with the 'eager'
backend (seconds, no C++ compiler); whether the step breaks into several graphs is decided by
the tracing, the same for every backend.

Run: python -m pytest tests/test_compile.py -q   (CPU, ~1 min on 2 cores)
"""
import os
import runpy
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from helpers import tiny_pipeline  # noqa: E402

COMMON = ['--device=cpu', '--dtype=float32', '--compile=True', '--max_iters=1', '--eval_interval=1',
          '--eval_iters=1', '--batch_size=2', '--block_size=32', '--warmup_iters=1']


@pytest.fixture(scope='module')
def pipeline(tmp_path_factory):
    return tiny_pipeline(str(tmp_path_factory.mktemp('compile')), iters=1)


@pytest.mark.parametrize('script, extra', [
    ('train_gpt.py', ['--compact_vocab=True']),
    ('train_vae.py', ['--compact_vocab=True', '--projector_dim=32', '--stats_batches=1']),
    ('train_vae.py', ['--compact_vocab=True', '--repa_teacher=None', '--mask_prob=0.2', '--causal=True',
                      '--stats_batches=1']),
    ('train_dit.py', []),
    ('train_dit.py', ['--self_cond=True', '--prediction=x']),
    ('train_dit.py', ['--latent_block=4']),
], ids=['gpt', 'vae-repa', 'vae-masked', 'dit', 'dit-self-cond', 'cola'])
def test_training_step_compiles_without_graph_breaks(pipeline, tmp_path, monkeypatch, script, extra):
    data_dir, out_dir = pipeline
    run_dir = tmp_path / 'out'
    run_dir.mkdir()
    reads = {'train_vae.py': 'gpt_hf', 'train_dit.py': 'vae.pt'}   # the teacher, the VAE
    if script in reads:
        os.symlink(os.path.join(out_dir, reads[script]), run_dir / reads[script])
    traced = []
    compile_ = torch.compile

    def fullgraph(model, **kw):
        traced.append(model)
        return compile_(model, fullgraph=True, backend='eager', **kw)

    monkeypatch.setattr(torch, 'compile', fullgraph)
    monkeypatch.setattr(sys, 'argv', [script, *COMMON, f'--data_dir={data_dir}',
                                      f'--out_dir={run_dir}', *extra])
    torch._dynamo.reset()
    runpy.run_path(os.path.join(ROOT, script), run_name='__main__')
    assert len(traced) == 1 and os.path.exists(run_dir / script.replace('train_', '').replace('.py', '.pt'))
