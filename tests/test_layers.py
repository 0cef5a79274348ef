"""The package's layers, read from its source: every import, at module level or inside a function.

* core (``timm_stim/*.py`` and ``timm_stim/adapters/``) imports neither ``training`` nor ``tools``;
* ``training`` (the train program) never imports ``tools``, and ``tools`` never import ``training``;
* no import cycle among the package's modules;
* no ``_private`` name imported from another module of the package (``__dunder__`` names are public).

Only the entry point (``timm_stim/__main__.py``, ``timm_stim/cli.py``) may import both layers.
"""
import ast
import os
from typing import Dict, List, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'timm_stim'
ENTRY_POINTS = {f'{PACKAGE}.__main__', f'{PACKAGE}.cli'}


def _modules() -> Dict[str, str]:
    """Every module of the package, by dotted name (a package by its own name), with its path."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                modules['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
    return modules


MODULES = _modules()


def _imports(module: str) -> List[Tuple[str, str, int]]:
    """(imported module of the package, name imported from it or '', line) of every import in ``module``."""
    path = MODULES[module]
    package = module if path.endswith('__init__.py') else module.rsplit('.', 1)[0]
    found = []
    for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
        if isinstance(node, ast.Import):
            found += [(_known(a.name), '', node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f'{base}.{alias.name}'
                if submodule in MODULES:  # from . import errors: the module itself
                    found.append((submodule, '', node.lineno))
                else:
                    found.append((_known(base), alias.name, node.lineno))
    return [(target, name, line) for target, name, line in found if target]


def _known(name: str) -> str:
    """The package module ``name`` names (its longest known prefix), or '' outside the package."""
    parts = name.split('.')
    for end in range(len(parts), 0, -1):
        if '.'.join(parts[:end]) in MODULES:
            return '.'.join(parts[:end])
    return ''


def _layer(module: str) -> str:
    if module in ENTRY_POINTS:
        return 'entry'
    parts = module.split('.')
    return parts[1] if len(parts) > 1 and parts[1] in ('training', 'tools') else 'core'


# What each layer may import (the entry point imports anything).
ALLOWED = {'core': {'core'}, 'training': {'core', 'training'}, 'tools': {'core', 'tools'}}

GRAPH: Dict[str, List[Tuple[str, str, int]]] = {m: _imports(m) for m in MODULES}


def _where(module: str, line: int) -> str:
    return f'{os.path.relpath(MODULES[module], ROOT)}:{line}'


def test_the_parser_sees_imports_inside_functions_and_relative_imports():
    """The checks below would pass vacuously on a parser that missed these forms."""
    analyze = {(target, name) for target, name, _ in GRAPH[f'{PACKAGE}.tools.analyze']}
    assert (f'{PACKAGE}.stimulator', 'get_stimulator') in analyze  # inside evaluate_subnets
    assert (f'{PACKAGE}.errors', 'InputError') in analyze  # from ..errors import
    assert _layer(f'{PACKAGE}.adapters.resnet') == 'core' and _layer(f'{PACKAGE}.training.train') == 'training'


def test_no_layer_imports_a_layer_it_must_not():
    offenders = []
    for module, imports in GRAPH.items():
        layer = _layer(module)
        if layer == 'entry':
            continue
        for target, name, line in imports:
            if _layer(target) not in ALLOWED[layer]:
                offenders.append(f'{_where(module, line)}: {layer} imports {target}' + (f'.{name}' if name else ''))
    assert not offenders, '\n'.join(offenders)


def test_no_private_name_is_imported_from_another_module():
    offenders = [f'{_where(module, line)}: {name} from {target}'
                 for module, imports in GRAPH.items() for target, name, line in imports
                 if name.startswith('_') and not name.endswith('__') and target != module]
    assert not offenders, '\n'.join(offenders)


def test_the_modules_import_each_other_without_a_cycle():
    edges: Dict[str, Set[str]] = {m: {t for t, _, _ in imports if t != m} for m, imports in GRAPH.items()}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: List[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                cycles.append(' -> '.join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, '\n'.join(cycles)


def test_no_test_module_imports_conftest():
    """Shared test helpers are fixtures (conftest.py) or plain functions in tests/helpers.py."""
    offenders = []
    folder = os.path.join(ROOT, 'tests')
    for name in sorted(os.listdir(folder)):
        if name.endswith('.py'):
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
                offenders += [f'tests/{name}:{node.lineno}' for n in names if n.split('.')[0] == 'conftest']
    assert not offenders, offenders
