"""
The configurator every script uses: defaults are a script's module-level globals; a config file
and --key=value overrides change them. One config file describes a whole experiment, so it may
hold keys of every stage; a key written `STAGE_key` (e.g. `vae_max_iters`) applies to that stage only.
Precedence: defaults < file `key` < file `STAGE_key` < command line `--key` < `--STAGE_key`.
"""
import ast
import os
import sys


class ConfigError(SystemExit):
    """Raised for a bad config: exits non-zero with a message naming the key, before any work."""

    def __init__(self, msg):
        super().__init__(f"config error: {msg}")


def _check_type(key, value, default):
    if default is None or value is None:
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if type(value) is not type(default):
        raise ConfigError(f"{key}={value!r} has type {type(value).__name__}, "
                          f"expected {type(default).__name__} (default {default!r})")
    return value


def _parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: --device=cuda


def _stage_key(key, stage, known):
    """Map a key to (target key, extra priority) for this stage, or None if it is not ours."""
    if key in known:
        return key, 0
    prefix, _, rest = key.partition('_')
    if prefix == stage and rest in known:
        return rest, 1
    return None


def configure(defaults, stage, argv=None):
    """Apply `[config_file] [--key=value ...]` to `defaults` (a script's globals()) in place.

    Returns the resolved config as a dict (what goes into checkpoints). Strings containing
    {out_dir} or {data_dir} are formatted after all overrides, so derived paths follow them.
    Keys: the module's globals of those types, except _private and UPPER_CASE constants.
    The defaults are remembered at the first call (in defaults['_defaults']), so a script's main()
    called again in the same process starts from them, not from the last run's values.
    """
    argv = sys.argv[1:] if argv is None else argv
    known = defaults.setdefault('_defaults', {
        k: v for k, v in defaults.items()
        if not k.startswith('_') and not k.isupper() and isinstance(v, (int, float, bool, str, type(None), tuple, list))})
    updates = {}  # key -> (priority, value)

    def apply(key, value, priority, strict):
        mapped = _stage_key(key, stage, known)
        if mapped is None:  # in a file, another script's key; on the command line, a mistake
            if strict:
                raise ConfigError(f"unknown key '{key}' for {stage} (known: {', '.join(sorted(known))})")
            return
        target, stage_priority = mapped
        value = _check_type(key, value, known[target])
        if target not in updates or updates[target][0] <= priority + stage_priority:
            updates[target] = (priority + stage_priority, value)

    for arg in argv:
        if arg.startswith('--'):
            continue
        if not os.path.isfile(arg):
            raise ConfigError(f"config file '{arg}' not found")
        namespace = {}
        with open(arg) as f:
            exec(compile(f.read(), arg, 'exec'), namespace)
        for key, value in namespace.items():
            if not key.startswith('_') and not callable(value) and not isinstance(value, type(sys)):
                apply(key, value, 0, strict=False)
    for arg in argv:
        if not arg.startswith('--'):
            continue
        key, eq, text = arg[2:].partition('=')
        if not eq:
            raise ConfigError(f"'{arg}' must be written --key=value")
        apply(key, _parse_value(text), 2, strict=True)

    config = {k: v for k, v in known.items()}
    config.update({k: v for k, (_, v) in updates.items()})
    for key, value in config.items():
        if isinstance(value, str) and ('{out_dir}' in value or '{data_dir}' in value):
            config[key] = value.format(out_dir=config.get('out_dir', ''), data_dir=config.get('data_dir', ''))
    defaults.update(config)
    return config
