# Cola DLM on the embedded corpus, 2-core CPU: config/tiny.py with a causal VAE trained with the
# masked-token objective, and a block-causal DiT that generates in blocks of 4 latents.
#   python prepare.py config/cola.py && python train_gpt.py config/cola.py && \
#   python train_vae.py config/cola.py && python train_dit.py config/cola.py && \
#   python sample.py config/cola.py --prompt="Mia went to the park."
exec(open('config/tiny.py').read())  # everything as in the embedded default, except:
# (so also tiny's 16-channel latents, x-prediction and 2,000 DiT iterations; a Cola iteration
# costs about twice a TextLDM one, as each window carries a clean and a noisy copy of its target.
# Cola's samples have not been measured with these settings yet.)

out_dir = 'out/cola'
data_dir = 'data/tiny'   # the same prepared data as config/tiny.py

# the VAE: causal (a latent never depends on later tokens, so decoded blocks stay as they are)
# plus Cola's masked-token objective
vae_causal = True
vae_mask_prob = 0.15

# the DiT: block-causal over blocks of 4 target latents (self-conditioning is TextLDM's only)
dit_latent_block = 4
dit_self_cond = False

# sampling: 16 Euler steps per block, CFG 7, the ODE (sample.py's defaults, written out; tiny's
# stochastic steps are measured for TextLDM only)
sample_steps_per_block = 16
sample_cfg_scale = 7.0
sample_renoise = eval_renoise = 0.0
eval_cfg_scale = 7.0
