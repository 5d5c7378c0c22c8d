"""bench.py runs at a tiny size on the CPU and prints its tables. No timing is asserted here:
speed targets live in the benchmark's output (README), never in tests."""

import helpers


def table_rows(output):
    return [line for line in output.splitlines() if line.startswith('| ') and '---' not in line]


def test_bench_sample_tiny():
    out = helpers.run_script('bench.py', '--what=sample', '--gen_lengths=(8,)', '--gen_batches=(1, 2)',
                             '--gen_steps=2', '--gen_prompt=4', '--gen_cola_block=4',
                             '--gen_cola_steps=2').stdout
    rows = table_rows(out)
    header = [cell.strip() for cell in rows[0].strip('|').split('|')]
    assert header[:2] == ['new tokens', 'batch'] and len(rows) == 3  # header + 2 batch sizes
    assert header[-2:] == ['TextLDM speed-up', 'Cola speed-up'] and 'GPT tok/s' in header
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip('|').split('|')]
        assert len(cells) == len(header) and cells[1] in ('1', '2')
        speedups = [float(cell.rstrip('x')) for cell in cells[-2:]]
        assert all(s > 0 for s in speedups)


def test_bench_eval_tiny():
    out = helpers.run_script('bench.py', '--what=eval', '--eval_prompts=3', '--eval_new_tokens=4',
                             '--eval_prompt_range=(5, 12)', '--gen_steps=50').stdout
    rows = [[cell.strip() for cell in row.strip('|').split('|')] for row in table_rows(out)]
    assert [r[0] for r in rows] == ['GPT generation', 'one at a time', 'batch of 3, left-padded',
                                    'model', 'gpt2-large', 'TextLDM dit-l', 'TextLDM VAE']
    assert all(float(r[3]) > 0 and float(r[4]) > 0 for r in rows[1:3])   # new tokens/s, per CPU second
    gpt, dit = float(rows[4][2]), float(rows[5][2])   # TFLOP of one 1024-token document
    assert 1.5 < gpt < 2.0 and 50 < dit / gpt < 100   # ~2 x 774M x 1024; 100 DiT passes of about its size



    out = helpers.run_script('bench.py', '--what=train', '--train_iters=2', '--compile_modes=(False,)',
                             '--seq_len=16', '--train_batch_size=2', timeout=600).stdout
    rows = table_rows(out)
    assert [r.split('|')[1].strip() for r in rows[1:]] == ['gpt', 'vae', 'dit']
    for row in rows[1:]:
        assert float(row.split('|')[4].replace(',', '')) > 0  # tokens/s


def test_bench_rejects_unknown_benchmark():
    result = helpers.run_script('bench.py', '--what=nope', check=False)
    assert result.returncode != 0 and 'nope' in result.stderr


def test_bench_flops_counts_every_dit_preset():
    rows = table_rows(helpers.run_script('bench.py', '--what=flops', '--seq_len=64').stdout)
    header = [cell.strip() for cell in rows[0].strip('|').split('|')]
    cells = [[cell.strip() for cell in row.strip('|').split('|')] for row in rows[1:]]
    assert header[0] == 'DiT' and [c[0] for c in cells] == ['nano', 'tiny', 'small', 'dit-b', 'dit-m', 'dit-l']
    per_token, per_time = header.index('adaLN per token') + 1, header.index('adaLN per time') + 1
    for c in cells:
        assert float(c[per_time].rstrip('x')) < 1.05 < float(c[per_token].rstrip('x'))


def test_bench_repa_small():
    out = helpers.run_script('bench.py', '--what=repa', '--repa_vae_size=tiny', '--repa_window=64', '--repa_batch=2',
                             '--repa_batches=1', '--repa_teacher_vocab=300').stdout
    rows = [[cell.strip() for cell in row.strip('|').split('|')] for row in table_rows(out)]
    assert rows[0] == ['part of one step', 'cost', 'share'] and len(rows) == 7
    vae, whole, cut = (float(row[1].split()[0]) for row in rows[1:4])
    assert 0 < cut < whole and vae > 0  # the cut teacher does less work
    assert 'parameters dropped' in rows[3][0] and float(rows[-1][1].split()[0]) > 0  # ms per window


def test_bench_dit_step_times_adaln_per_token_and_per_time():
    rows = table_rows(helpers.run_script('bench.py', '--what=dit_step', '--seq_len=16', '--train_batch_size=2',
                                         '--repeats=1').stdout)
    assert len(rows) == 3 and 'per token' in rows[1] and 'per time' in rows[2]
    assert float(rows[2].split('|')[3].strip().rstrip('x')) > 0


def test_bench_memory_counts_saved_activations_per_stage():
    out = helpers.run_script('bench.py', '--what=memory', '--seq_len=16', '--dtype=bfloat16').stdout
    rows = table_rows(out)
    cells = {r.split('|')[1].strip(): [float(c.strip().replace(',', '')) for c in r.split('|')[3:6]] for r in rows[1:]}
    assert set(cells) == {'vae', 'dit', 'gpt'}
    for fp32_residual, bf16_residual, checkpointing in cells.values():
        assert 0 < checkpointing < bf16_residual < fp32_residual   # bf16 residuals, then checkpointing, keep less
