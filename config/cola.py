# Cola DLM on the embedded corpus, 2-core CPU: config/tiny.py with a causal VAE trained with the
# masked-token objective, and a block-causal DiT that generates in blocks of 4 latents.
#   python prepare.py config/cola.py && python train_gpt.py config/cola.py && \
#   python train_vae.py config/cola.py && python train_dit.py config/cola.py && \
#   python sample.py config/cola.py --prompt="Mia went to the park."
exec(open('config/tiny.py').read())  # everything as in the embedded default, except:
# (so also tiny's x-prediction and its sampler; a Cola iteration costs about twice a TextLDM one,
# 54.6 against 26.7 GFLOP, as each window carries a clean and a noisy copy of its target.
# Measured: README, "Reproduction".)

out_dir = 'out/cola'
data_dir = 'data/tiny'   # the same prepared data as config/tiny.py

# the VAE: causal (a latent never depends on later tokens, so decoded blocks stay as they are)
# plus Cola's masked-token objective
vae_causal = True
vae_mask_prob = 0.15
vae_latent_dim = 16  # and the quick start's 16 channels and 300 iterations before 2026-12-06, as measured
vae_max_iters = 300
vae_lr_decay_iters = 300

# the DiT: block-causal over blocks of 4 target latents (self-conditioning is TextLDM's only)
dit_latent_block = 4
dit_self_cond = False
# the width-128 DiT, 4,000 iterations and the paper's std 1.5 of the quick start before 2026-12-06,
# with which Cola was measured (README, "Cola"); tiny's width-96 settings are untried with Cola
dit_size = 'tiny'
dit_max_iters = 4000
dit_lr_decay_iters = 4000
dit_logit_normal_std = 1.5

# sampling: tiny's stochastic steps (renoise 1, CFG 1), 16 a block (sample.py's default). On the
# same DiT (seed 1337) they give 91.4% grammar where the ODE with CFG 7 gives 74.4%
sample_steps_per_block = eval_steps_per_block = 16
