"""
Quality against training compute, as a figure: the checker's rates (grammar %, check score %)
of eval.py's results against the training iteration of the checkpoint each row evaluated, one
line per model and training seed; and, for the README, a table of each model's last point over
its seeds: the mean, and the lowest and highest seed. eval.py writes each of our rows with its checkpoint's
iteration and seed; `keep_checkpoints=True` keeps the points of one run to evaluate:

    python train_dit.py config/tiny.py --keep_checkpoints=True --eval_interval=1000
    for it in 1000 2000 3000 4000 5000 6000 6780; do python eval.py config/tiny.py \
        --model=TextLDM=textldm:out/tiny/dit_$it.pt --out_dir=out/tiny/eval_$it; done
    python curves.py --evals='out/tiny/eval_*/eval.json' --out=out/tiny/curves.png

A model evaluated at one iteration only (the GPT baseline, whose iterations are not the DiT's)
is drawn as a dashed horizontal line: the level to reach. Also prints the points, and the seeds
table (`table`: the eval.json keys of its columns; `out=''` draws no figure).
"""
import glob
import json
import os

import configurator

# -----------------------------------------------------------------------------
# defaults (a config file and --key=value override them; `curves_key` in a config file is ours alone)
evals = 'out/tiny/eval.json'   # eval.json files: comma-separated paths or globs
eval_set = 'synthetic'         # the set whose rows are drawn (the checker's rates exist for 'synthetic')
metrics = 'check_grammar,check_score'   # eval.json keys, one panel each
table = 'rouge1,bertscore,check_grammar,check_all_parse,check_consistency,check_score,gen_ppl,entropy,uncond_tokens'
out = 'curves.png'             # '' = the tables only
# -----------------------------------------------------------------------------

TITLES = {'check_grammar': 'grammar %', 'check_all_parse': 'all parse %', 'check_consistency': 'consistent %',
          'check_score': 'check score %', 'rouge1': 'R-1', 'rouge2': 'R-2', 'rougeL': 'R-L', 'bertscore': 'BERTScore',
          'mauve': 'MAUVE', 'gen_ppl': 'gen-PPL', 'entropy': 'entropy', 'uncond_tokens': 'uncond tokens'}
RATES = {'check_grammar', 'check_all_parse', 'check_consistency', 'check_score', 'check_perfect', 'rouge1', 'rouge2',
         'rougeL', 'bertscore', 'mauve'}   # fractions in eval.json, % here


def read_points(paths, set_name, keys, optional=()):
    """{(label, seed): [(iteration, {key: value}), ...] sorted by iteration} from the rows of our
    models (those eval.py wrote with `trained`) in the eval.json files; rates in %. Every row has
    `keys`; the `optional` keys are read where a row has them (gen-PPL needs unconditional samples)."""
    points = {}
    for path in paths:
        with open(path) as f:
            sets = json.load(f)['sets']
        if set_name not in sets:
            raise SystemExit(f"{path} has no eval_set={set_name!r} (it has {', '.join(sets)})")
        for label, row in sets[set_name]['rows'].items():
            if row.get('trained', {}).get('iter') is None:
                continue   # the data row, a transformers model, or a checkpoint that records no iteration
            missing = [k for k in keys if row.get(k) is None]
            if missing:
                raise SystemExit(f"{path}: row {label!r} has no {', '.join(missing)}")
            values = {k: row[k] * (100 if k in RATES else 1) for k in (*keys, *optional) if row.get(k) is not None}
            points.setdefault((label, row['trained']['seed']), []).append((row['trained']['iter'], values))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in sorted(points.items())}


def draw(points, keys, path):
    import matplotlib
    matplotlib.use('Agg')   # files only, no display
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    iterations = [it for series in points.values() for it, _ in series]
    colors = {}
    for (label, seed), series in points.items():
        color = colors.setdefault(label, f'C{len(colors)}')
        for ax, key in zip(axes[0], keys):
            ys = [values[key] for _, values in series]
            if len({it for it, _ in series}) == 1:   # one point: a level to reach
                ax.axhline(sum(ys) / len(ys), color=color, linestyle='--', linewidth=1,
                           label=f'{label} (seed {seed}, {series[0][0]:,} its)')
            else:
                ax.plot([it for it, _ in series], ys, marker='o', color=color, label=f'{label} (seed {seed})')
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel('training iterations')
        ax.set_title(TITLES.get(key, key))
        ax.set_xlim(0, max(iterations) * 1.05)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc='lower right')
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    fig.savefig(path + '.tmp.png', dpi=120)
    os.replace(path + '.tmp.png', path)   # whole or not at all
    plt.close(fig)


def seeds_table(points, keys):
    """Markdown rows: each model's last point at each of its seeds, as the mean (lowest-highest)."""
    finals = {}
    for (label, seed), series in points.items():
        finals.setdefault(label, []).append((seed, *series[-1]))
    lines = ['| model (seeds; iterations) | ' + ' | '.join(TITLES.get(k, k) for k in keys) + ' |',
             '|---|' + '---|' * len(keys)]
    def cell(key, vs):
        digits = 1 if key in RATES or key == 'uncond_tokens' else 2
        mean = f'{sum(vs) / len(vs):.{digits}f}'
        return mean if len(vs) == 1 else f'{mean} ({min(vs):.{digits}f}-{max(vs):.{digits}f})'

    for label, runs in finals.items():
        cells = []
        for k in keys:
            vs = [values[k] for _, _, values in runs if k in values]
            cells.append(cell(k, vs) if len(vs) == len(runs) else '-')   # a seed without it: no mean
        seeds, its = '/'.join(str(s) for s, _, _ in runs), '/'.join(sorted({f'{it:,}' for _, it, _ in runs}))
        lines.append(f'| {label} ({seeds}; {its}) | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main():
    configurator.configure(globals(), 'curves')
    keys = [k.strip() for k in metrics.split(',') if k.strip()]
    columns = [k.strip() for k in table.split(',') if k.strip()]
    paths = sorted({p for spec in evals.split(',') if spec.strip()
                    for p in (glob.glob(spec.strip(), recursive=True) or [spec.strip()])})
    for p in paths:
        if not os.path.isfile(p):
            raise SystemExit(f"no eval.json at {p!r}: run eval.py first (evals={evals!r})")
    points = read_points(paths, eval_set, keys, columns)
    if not points:
        raise SystemExit(f"no row of ours in {len(paths)} eval.json file(s): eval.py writes which checkpoint "
                         f"each row of a textldm or gpt model is")
    print('| model | seed | iteration | ' + ' | '.join(TITLES.get(k, k) for k in keys) + ' |')
    print('|---|---|---|' + '---|' * len(keys))
    for (label, seed), series in points.items():
        for it, values in series:
            print(f'| {label} | {seed} | {it:,} | ' + ' | '.join(f'{values[k]:.1f}' for k in keys) + ' |')
    print('\n' + seeds_table(points, columns))
    if out:
        draw(points, keys, out)
        print(f"{out}: {len(points)} lines from {len(paths)} eval.json file(s)")
    return points


if __name__ == '__main__':
    main()
