# The Cola row of the CPU-scale reproduction (README, "Reproduction"): config/repro.py with a
# causal VAE trained with the masked-token objective and a block-causal DiT (blocks of 4).
#   python train_vae.py config/repro_cola.py && python train_dit.py config/repro_cola.py
exec(open('config/repro.py').read())

out_dir = 'out/repro_cola'
vae_causal = True
vae_mask_prob = 0.15
dit_latent_block = 4
