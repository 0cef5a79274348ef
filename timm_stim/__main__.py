"""``python -m timm_stim COMMAND ...``: the package's command-line tools.

Commands:
    push     publish a checkpoint to the Hugging Face Hub in timm's format (timm_stim.hub)
    analyze  measure how well the subnetworks of checkpoints do on their own (timm_stim.analyze)
    export   save a trained subnetwork as a plain, smaller timm model (timm_stim.export)
"""
import importlib
import sys
from typing import List, Optional

# command -> (module, one-line help); modules are imported only when their command runs.
COMMANDS = {
    'push': ('timm_stim.hub', 'publish a checkpoint to the Hugging Face Hub in timm\'s format'),
    'analyze': ('timm_stim.analyze', 'evaluate the full network and its subnetworks (network loafing)'),
    'export': ('timm_stim.export', 'save a subnetwork as a plain timm model of smaller depth'),
}


def _usage() -> str:
    lines = ['usage: python -m timm_stim COMMAND [ARGS]', '', 'commands:']
    lines += [f'  {name:<9} {help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', 'Run `python -m timm_stim COMMAND --help` for the options of a command.',
              'Training is `python train_stim.py` (timm\'s train.py flags plus --stim-*).']
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f'error: unknown command {command!r}; expected one of {", ".join(COMMANDS)}.\n\n{_usage()}',
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == '__main__':
    sys.exit(main())
