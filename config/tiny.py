# The embedded default: the whole pipeline on a 2-core CPU with no network.
#   python prepare.py config/tiny.py && python train_gpt.py config/tiny.py && \
#   python train_vae.py config/tiny.py && python train_dit.py config/tiny.py && \
#   python sample.py config/tiny.py --prompt="Mia went to the park."
# A key written STAGE_key (gpt_, vae_, dit_, ...) applies to that stage only.
out_dir = 'out/tiny'
data_dir = 'data/tiny'
device = 'cpu'
dtype = 'float32'
compile = False
seed = 1337

# data: the embedded corpus of short stories (corpus.py)
dataset = 'synthetic'
synthetic_stories = 100_000  # ~6.8M tokens, written in a few seconds
val_fraction = 0.01
num_proc = 2
compact_vocab = True  # ~200 of GPT-2's ids occur in it: a 100x cheaper output layer on a CPU

# shared training settings
size = 'tiny'
batch_size = 32
eval_interval = 100
eval_iters = 10
log_interval = 20
warmup_iters = 50
weight_decay = 0.0

# the GPT: baseline, and the REPA teacher the VAE aligns with (exported to out_dir/gpt_hf)
gpt_block_size = 128
gpt_max_iters = 600
gpt_lr_decay_iters = 600
gpt_learning_rate = 2e-3
gpt_min_lr = 2e-4

# the VAE
vae_block_size = 128
vae_max_iters = 600
vae_lr_decay_iters = 600
vae_learning_rate = 1e-3
vae_min_lr = 1e-4
vae_kl_warmup_iters = 200
vae_projector_dim = 256

# the DiT
dit_block_size = 128
dit_max_iters = 600
dit_lr_decay_iters = 600
dit_learning_rate = 1e-3
dit_min_lr = 1e-4
dit_ema_decay = 0.995
