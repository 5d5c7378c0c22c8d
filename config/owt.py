# The paper-scale recipe on OpenWebText2 for one 8-GPU node. Every stage reads this file:
#   python prepare.py config/owt.py                      # download + tokenize OpenWebText2
#   torchrun --standalone --nproc_per_node=8 train_vae.py config/owt.py
#   torchrun --standalone --nproc_per_node=8 train_dit.py config/owt.py
#   torchrun --standalone --nproc_per_node=8 train_gpt.py config/owt.py   # the baseline
#   python sample.py config/owt.py --prompt="The history of"
#   python eval.py config/owt.py --model=textldm,gpt      # the paper's four sets, one table each
# (reported): a setting the paper reports (PAPER.md). (ours): the paper does not say; the
# reason is beside it, and the README lists them all. `python rehearsal.py` runs this very file,
# shrunk, through every stage on a CPU (CI does); `python rehearsal.py --gpu=True` on one GPU.
out_dir = 'out/owt'
data_dir = 'data/owt'
device = 'cuda'
dtype = 'bfloat16'
compile = True
seed = 1337

# data
dataset = 'owt2'
# The tokenizer: every later stage reads it from data_dir/meta.json. Two choices:
#  'gpt2' (ours; the default): GPT-2's BPE, as the GPT-2 baseline reads; uint16 memmaps (2 bytes a
#    token). The REPA teacher below has its own tokenizer: aligned through character offsets.
#    Vocabulary-sized matrices: VAE 102.9M (embedding + head) of 357.1M; GPT 64.3M (tied) of 774.0M.
#  'Qwen/Qwen3-1.7B' (the paper's setting, as its "223M of embeddings and LM head" suggests): the
#    teacher's own tokenizer, so REPA aligns token for token; 151,669 ids, so uint32 memmaps (4
#    bytes a token: twice GPT-2's per token; Qwen3's tokenizer makes fewer tokens of a text, by how
#    much on OpenWebText2 is unmeasured). VAE 310.6M of 564.8M; GPT 194.1M of 903.8M: a GPT
#    baseline of that tokenizer is not GPT-2 Large's size any more. Use its own data_dir
#    (data/owt_qwen3): checkpoints and data of two tokenizers refuse to mix.
#    (sizes: model.py presets 'paper' and 'gpt2-large' built on the meta device)
tokenizer = 'gpt2'
num_proc = 16
val_fraction = 0.0005  # (ours) ~8.5K documents held out, by a seeded draw per document
max_bad_lines = 1000

# shared training settings
block_size = 1024                # (reported) sequences of up to 1024 tokens
learning_rate = 1e-4             # (reported) AdamW at 1e-4
min_lr = 1e-5                    # (ours) cosine decay to lr/10 over the run, nanoGPT's schedule
warmup_iters = 2000              # (ours) linear warm-up: Adam's early steps are noisy at this size
beta2 = 0.95                     # (ours) nanoGPT's choice for large Transformers, steadier than 0.999
grad_clip = 1.0                  # (ours) clip the global grad norm at 1, as GPT-2-style runs do
weight_decay = 0.0               # (ours) none reported; none is the safe default for a VAE and a DiT
eval_interval = 2000
eval_iters = 48                  # (ours) 48 batches: divisible by 8 ranks, ~0.8M tokens per evaluation
log_interval = 50
batch_size = 16                  # per GPU per micro-step
activation_checkpointing = False # (ours) not needed: dit-l keeps ~29 GiB of activations per micro-step
                                 # (bench.py --what=memory); True cuts that ~25x for ~1/3 more compute
gradient_accumulation_steps = 48 # global: 6 per GPU -> 16 * 6 * 1024 ~ 100K tokens per GPU per step (reported)

# VAE: ~350M (reported), 200K steps (reported); REPA on Qwen3-1.7B's third-to-last layer (reported)
vae_size = 'paper'               # (ours) 10 + 10 layers at width 1024 = 357M: the reported size
vae_latent_dim = 64              # (reported)
vae_kl_weight = 1e-3             # (reported) beta...
vae_kl_warmup_iters = 10000      # ...with a warm-up (reported); its length (ours): 5% of the run
vae_repa_weight = 1.0            # (reported) lambda
vae_truncate_prob = 0.5          # (ours) inputs are randomly truncated (reported); how often, and per micro-batch (ours)
vae_max_iters = 200000
vae_lr_decay_iters = 200000
vae_gradient_accumulation_steps = 8  # (ours) 16 * 1 * 1024 tokens per GPU: the teacher's forward costs too
vae_repa_teacher = 'Qwen/Qwen3-1.7B'
vae_repa_teacher_layer = -3
vae_projector_dim = 2048         # (ours) REPA's projector width for a 2048-wide teacher

# DiT: the 768M model (reported), 2M steps for the main results (1M for ablations) (reported)
dit_size = 'dit-l'               # (ours) 26 layers at width 1280 = 775M: the reported size
dit_max_iters = 2000000
dit_lr_decay_iters = 2000000
dit_logit_normal_std = 1.5       # (reported)
dit_cfg_dropout = 0.1            # (reported); per micro-batch (ours: no padding, unmasked attention)
dit_truncate_prob = 0.5          # (ours) micro-batches cut short, so every continuation length evaluation asks is trained
dit_ema_decay = 0.9999           # (ours) DiT's EMA; sampling uses the EMA weights

# GPT baseline of the same size and budget: GPT-2 Large's shape (774M)
gpt_size = 'gpt2-large'
gpt_max_iters = 2000000
gpt_lr_decay_iters = 2000000
gpt_learning_rate = 3e-4         # (ours) 1e-4 is slow for a GPT; 3e-4 is GPT-2-Large-scale practice
gpt_min_lr = 3e-5

# sampling: 50 Euler steps, CFG 7 (reported), timesteps spaced like the training distribution (reported)
sample_steps = 50
sample_cfg_scale = 7.0
sample_time_grid = 'logit_normal'

# evaluation (reported): 1,000 random documents of each set, cut at 40-60%; ROUGE, BERTScore,
# MAUVE; gen-PPL under GPT-2 Large with the unigram entropy. The sampler as above.
eval_set = 'wikisource,wikipedia,tinystories,lm1b'
eval_num_docs = 1000
eval_num_uncond = 1000
eval_steps = 50
eval_cfg_scale = 7.0
eval_time_grid = 'logit_normal'
