# The ablation of the CPU-scale reproduction (config/repro.py): the same VAE and DiT, with the
# same data, seeds and iterations, but a VAE trained without REPA.
#   python train_vae.py config/repro_norepa.py && python train_dit.py config/repro_norepa.py
exec(open('config/repro.py').read())

out_dir = 'out/repro_norepa'
vae_repa_teacher = None
