"""Training recipes shipped with timm_stim: YAML files for ``train_stim.py -c``, usable by name.

Each ``*.yaml`` beside this file is a recipe; its name is the file name without ``.yaml``
(``-c resnet50_imagenet_stpp`` is ``-c .../recipes/resnet50_imagenet_stpp.yaml``). The file
starts with a comment block; three of its lines are read as metadata:

    # title: ResNet-50 on ImageNet, ST++ (...), 200 epochs
    # published: 80.50 top-1 (ImageNet val; the authors' log: 80.496, epoch 199)
    # command: python train.py --exp ... (the authors' command for that row of their README)

Everything else in the file is ``train_stim.py`` options, keyed by their dest. The recipes that
reproduce a row of the authors' README, and what still differs, are listed in docs/reproduction.md.
"""
import os
import re
from dataclasses import dataclass
from typing import List, Optional

__all__ = ['Recipe', 'RECIPE_DIR', 'list_recipes', 'get_recipe', 'resolve_config_path']

RECIPE_DIR = os.path.dirname(os.path.abspath(__file__))
_META = re.compile(r'^#\s*(title|published|command)\s*:\s*(.*\S)\s*$')


@dataclass(frozen=True)
class Recipe:
    """One shipped recipe.

    Attributes:
        name: what ``-c`` accepts (the file name without ``.yaml``).
        path: the YAML file.
        title: one line saying what it trains.
        published: the published result it reproduces, or None for recipes of our own.
        command: the authors' command for that published row, or None.
    """
    name: str
    path: str
    title: str = ''
    published: Optional[str] = None
    command: Optional[str] = None


def _read_meta(path: str) -> dict:
    meta = {}
    with open(path) as f:
        for line in f:
            if not line.startswith('#'):
                break  # metadata lives in the leading comment block
            match = _META.match(line)
            if match:
                meta[match.group(1)] = match.group(2)
    return meta


def list_recipes() -> List[Recipe]:
    """Every shipped recipe, sorted by name."""
    recipes = []
    for file in sorted(os.listdir(RECIPE_DIR)):
        if file.endswith('.yaml'):
            path = os.path.join(RECIPE_DIR, file)
            recipes.append(Recipe(name=file[:-len('.yaml')], path=path, **_read_meta(path)))
    return recipes


def get_recipe(name: str) -> Recipe:
    """The shipped recipe called ``name``; ``KeyError`` listing the names when there is none."""
    for recipe in list_recipes():
        if recipe.name == name:
            return recipe
    raise KeyError(f'no recipe named {name!r}; shipped recipes: {", ".join(r.name for r in list_recipes())}.')


def resolve_config_path(config: str) -> Optional[str]:
    """The YAML file a ``-c`` value means: an existing path as given, else a shipped recipe's name.

    Returns:
        The path, or None when ``config`` is neither a file nor a recipe name.
    """
    if os.path.isfile(config):
        return config
    name = os.path.basename(config)
    name = name[:-len('.yaml')] if name.endswith('.yaml') else name
    if os.sep in config or '/' in config:
        return None  # a path that does not exist is not silently replaced by a recipe
    try:
        return get_recipe(name).path
    except KeyError:
        return None


def main(argv=None) -> int:
    """``timm-stim recipes``: list the shipped recipes with what they reproduce."""
    import argparse
    from ...errors import command_prog
    parser = argparse.ArgumentParser(prog=command_prog('recipes'), description=main.__doc__.split(':', 1)[1].strip())
    parser.add_argument('name', nargs='?', help='print this recipe\'s YAML instead of the list')
    args = parser.parse_args(argv)
    if args.name:
        try:
            recipe = get_recipe(args.name)
        except KeyError as e:
            parser.error(str(e.args[0]))
        with open(recipe.path) as f:
            print(f.read(), end='')
        return 0
    for r in list_recipes():
        print(f'{r.name}: {r.title or "(no title)"}')
        print(f'    published: {r.published or "- (a recipe of our own)"}')
        if r.command:
            print(f"    authors' command: {r.command}")
    print('\nRun one with: timm-stim train -c NAME [--data-dir DIR ...] (or python train_stim.py -c NAME).')
    print('What each reproduction recipe still does differently from the authors\' run: docs/reproduction.md.')
    return 0
