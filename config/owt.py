# The paper-scale recipe on OpenWebText2 for one 8-GPU node (PAPER.md; marked values are the
# paper's reported defaults). Every stage reads this file:
#   python prepare.py config/owt.py                      # download + tokenize OpenWebText2
#   torchrun --standalone --nproc_per_node=8 train_vae.py config/owt.py
#   torchrun --standalone --nproc_per_node=8 train_dit.py config/owt.py
#   torchrun --standalone --nproc_per_node=8 train_gpt.py config/owt.py   # the baseline
#   python sample.py config/owt.py --prompt="The history of"
out_dir = 'out/owt'
data_dir = 'data/owt'
device = 'cuda'
dtype = 'bfloat16'
compile = True
seed = 1337

# data
dataset = 'owt2'
num_proc = 16
val_fraction = 0.0005  # ~8.5K documents held out, by a seeded draw per document
max_bad_lines = 1000

# shared training settings: 1024-token windows, AdamW at 1e-4 (reported)
block_size = 1024
learning_rate = 1e-4
min_lr = 1e-5
weight_decay = 0.0
warmup_iters = 2000
eval_interval = 2000
eval_iters = 48
log_interval = 50
batch_size = 16                  # per GPU per micro-step
gradient_accumulation_steps = 48 # global: 6 per GPU -> 16 * 6 * 1024 ~ 100K tokens per GPU per step

# VAE: ~350M, 200K steps (reported); REPA on Qwen3-1.7B's third-to-last layer (reported)
vae_size = 'paper'
vae_max_iters = 200000
vae_lr_decay_iters = 200000
vae_kl_warmup_iters = 10000
vae_gradient_accumulation_steps = 8
vae_repa_teacher = 'Qwen/Qwen3-1.7B'
vae_projector_dim = 2048

# DiT: the 768M model, 2M steps for the main results (1M for ablations) (reported)
dit_size = 'dit-l'
dit_max_iters = 2000000
dit_lr_decay_iters = 2000000
dit_ema_decay = 0.9999

# GPT baseline of the same size and budget: GPT-2 Large's shape (774M)
gpt_size = 'gpt2-large'
gpt_max_iters = 2000000
gpt_lr_decay_iters = 2000000
gpt_learning_rate = 3e-4
gpt_min_lr = 3e-5

# sampling: 50 Euler steps, CFG 7 (reported)
sample_steps = 50
sample_cfg_scale = 7.0
