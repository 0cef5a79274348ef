"""``timm-stim COMMAND ...`` (or ``python -m timm_stim COMMAND ...``): the package's command-line tools.

Commands:
    train    timm's train.py with stimulative training (timm_stim.cli: timm_stim.training.train with the Hub
             publisher plugged in; same as train_stim.py)
    recipes  list the shipped training recipes, or print one (timm_stim.training.recipes)
    push     publish a checkpoint to the Hugging Face Hub in timm's format (timm_stim.tools.push)
    analyze  measure how well the subnetworks of checkpoints do on their own (timm_stim.tools.analyze)
    export   save a trained subnetwork as a plain, smaller timm model (timm_stim.tools.export)
    family   score every subnetwork, mark the Pareto front, export it as plain timm models (timm_stim.tools.family)
    data     prepare the offline datasets: embedded digits, Fashion-MNIST (timm_stim.datasets)
"""
import importlib
import sys
from typing import List, Optional

# command -> (module, one-line help); modules are imported only when their command runs.
COMMANDS = {
    'train': ('timm_stim.cli', 'train a timm model: every option of timm\'s train.py, plus --stim-*'),
    'recipes': ('timm_stim.training.recipes', 'list the shipped recipes (train -c NAME runs one), or print one'),
    'push': ('timm_stim.tools.push', 'publish a checkpoint to the Hugging Face Hub in timm\'s format'),
    'analyze': ('timm_stim.tools.analyze', 'evaluate the full network and its subnetworks (network loafing)'),
    'export': ('timm_stim.tools.export', 'save a subnetwork as a plain timm model of smaller depth'),
    'family': ('timm_stim.tools.family', 'score every subnetwork (accuracy, FLOPs, latency), export the Pareto front'),
    'data': ('timm_stim.datasets', 'prepare offline data: embedded digits, Fashion-MNIST from the Debian package'),
}


def _usage() -> str:
    lines = ['usage: timm-stim [--version] COMMAND [ARGS]   (or: python -m timm_stim COMMAND [ARGS])', '',
             'commands:']
    lines += [f'  {name:<9} {help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', 'Run `timm-stim COMMAND --help` for the options of a command.',
              '`timm-stim train ...` is the same program as `python train_stim.py ...`.']
    return '\n'.join(lines)


def version_line() -> str:
    """``timm-stim X (timm Y, torch Z)``: what ``--version`` prints."""
    import timm
    import torch
    from .version import __version__
    return f'timm-stim {__version__} (timm {timm.__version__}, torch {torch.__version__})'


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch to a command's ``main``; returns the exit code (commands that fail raise SystemExit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ('-V', '--version'):
        print(version_line())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f'timm-stim: error: unknown command {command!r}; expected one of {", ".join(COMMANDS)}.\n\n{_usage()}',
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result = module.main(rest)
    # Commands return an exit code; train returns its results (a dict) and has succeeded if it returns.
    return result if isinstance(result, int) else 0


if __name__ == '__main__':
    sys.exit(main())
