# Cola DLM on the embedded corpus, 2-core CPU: config/tiny.py with a causal VAE trained with the
# masked-token objective, and a block-causal DiT that generates in blocks of 4 latents.
#   python prepare.py config/cola.py && python train_gpt.py config/cola.py && \
#   python train_vae.py config/cola.py && python train_dit.py config/cola.py && \
#   python sample.py config/cola.py --prompt="Mia went to the park."
# A key written STAGE_key (gpt_, vae_, dit_, ...) applies to that stage only.
out_dir = 'out/cola'
data_dir = 'data/tiny'   # the same prepared data as config/tiny.py
device = 'cpu'
dtype = 'float32'
compile = False
seed = 1337

# data: the embedded corpus of short stories (corpus.py)
dataset = "synthetic"
compact_vocab = True

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

# the VAE: causal (a latent never depends on later tokens, so decoded blocks stay as they are)
# plus Cola's masked-token objective
vae_block_size = 128
vae_causal = True
vae_mask_prob = 0.15
vae_max_iters = 600
vae_lr_decay_iters = 600
vae_learning_rate = 1e-3
vae_min_lr = 1e-4
vae_kl_warmup_iters = 200
vae_projector_dim = 256

# the DiT: block-causal over blocks of 4 target latents
dit_block_size = 128
dit_latent_block = 4
dit_max_iters = 600
dit_lr_decay_iters = 600
dit_learning_rate = 1e-3
dit_min_lr = 1e-4
dit_ema_decay = 0.995

# sampling: 16 Euler steps per block, CFG 7 (sample.py's defaults, written out)
sample_steps_per_block = 16
sample_cfg_scale = 7.0
