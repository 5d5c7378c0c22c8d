# The REPA teacher and gen-PPL judge of the CPU-scale reproduction (config/repro.py): a GPT of
# the baseline's shape (6 x 128) trained twice as long from another seed, so stronger than the
# baseline (as in the paper, where the teacher is a far larger LM) and never the baseline itself.
#   python train_gpt.py config/repro_teacher.py     # exports out/repro_teacher/gpt_hf
exec(open('config/repro.py').read())

out_dir = 'out/repro_teacher'
seed = 7  # its own initialisation and data order: a model of its own, not a longer baseline run
gpt_max_iters = 500
gpt_lr_decay_iters = 500
gpt_export_dir = '{out_dir}/gpt_hf'
