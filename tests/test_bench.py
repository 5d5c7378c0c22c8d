"""bench.py runs at a tiny size on the CPU and prints its tables. No timing is asserted here:
speed targets live in the benchmark's output (README), never in tests."""
import re

import helpers


def table_rows(output):
    return [line for line in output.splitlines() if line.startswith('| ') and '---' not in line]


def test_bench_sample_tiny():
    out = helpers.run_script('bench.py', '--what=sample', '--sample_lengths=(8,)', '--sample_batches=(1, 2)',
                             '--sample_steps=2', '--sample_prompt=4').stdout
    rows = table_rows(out)
    assert rows[0].startswith('| new tokens') and len(rows) == 3  # header + 2 batch sizes
    for row in rows[1:]:
        speedup = re.search(r'([\d.]+)x \|$', row)
        assert speedup and float(speedup.group(1)) > 0


def test_bench_train_tiny():
    out = helpers.run_script('bench.py', '--what=train', '--train_iters=2', '--compile_modes=(False,)',
                             '--seq_len=16', '--train_batch_size=2', timeout=600).stdout
    rows = table_rows(out)
    assert [r.split('|')[1].strip() for r in rows[1:]] == ['gpt', 'vae', 'dit']
    for row in rows[1:]:
        assert float(row.split('|')[4].replace(',', '')) > 0  # tokens/s


def test_bench_rejects_unknown_benchmark():
    result = helpers.run_script('bench.py', '--what=nope', check=False)
    assert result.returncode != 0 and 'nope' in result.stderr
