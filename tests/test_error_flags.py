"""Every `--flag` a message names exists on the command that prints it.

A command's messages are the string literals (not docstrings, not argparse definitions) of the functions it can
reach: a static call graph from its `main`, following imports (those inside functions too) through the project's
modules, a function's references to other functions, classes (all their methods) and module constants. A flag
written after a script (`main.py --flag`, `main.py's --flag`) is checked against that script's parser instead.

Run: python -m pytest tests/test_error_flags.py -q
"""
import argparse
import ast
import importlib
import os
import re

import pytest

from tests.fixtures import ROOT

# Commands a user runs -> their module. benchmarks/bench.py is left out: a developer's speed benchmark on
# synthetic data that reaches main.py's data pipeline without main.py's flags (and none of its input errors).
ENTRY_POINTS = {"main.py": "main", "evaluate.py": "evaluation_scripts.evaluate",
                "benchmark.py": "evaluation_scripts.benchmark", "serve.py": "evaluation_scripts.serve",
                "export_hf.py": "evaluation_scripts.export_hf",
                "random_reward_model.py": "evaluation_scripts.random_reward_model",
                "side_by_side.py": "benchmarks.side_by_side", "serve_load.py": "benchmarks.serve_load",
                "tiny.py": "model.tiny"}
PACKAGES = ("data", "model", "training", "utils", "evaluation_scripts", "benchmarks")
FOREIGN_FLAGS = {"critic_model_name_or_path"}  # DeepSpeed-Chat step 3's: export_hf.py says where to pass the export
FLAG = re.compile(r"(?:\b([\w]+\.py)(?:'s)?\s+)?(?<![\w-])--([a-z][a-z0-9_]*)")
PARSER_CALLS = {"ArgumentParser", "add_argument", "add_argument_group", "add_mutually_exclusive_group"}


def _call_name(node):
    return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")


def _imports(nodes, package):
    """name -> (module, attribute or None) bound by the import statements among `nodes` (walked)."""
    table = {}
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                table[alias.asname or alias.name.split(".")[0]] = (alias.name if alias.asname
                                                                   else alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".") if package else []
            source = ".".join(parts[:len(parts) - node.level + 1] + [node.module or ""]).strip(".") \
                if node.level else node.module
            for alias in node.names:
                table[alias.asname or alias.name] = (source, alias.name)
    return table


class Module:
    def __init__(self, root, path):
        rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        self.name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
        self.package = self.name if path.endswith("__init__.py") else self.name.rpartition(".")[0]
        self.path = path
        with open(path) as f:
            self.tree = ast.parse(f.read())
        self.defs, body = {}, []  # top-level functions, classes and constants; the other module-level code
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in (n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                    self.defs[target.id] = node
            elif not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)):
                body.append(node)
        self.body = ast.Module(body=body, type_ignores=[])
        self.imports = _imports(body, self.package)
        self.docstrings = {id(n.body[0].value) for n in ast.walk(self.tree)
                           if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                           and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}


class Project:
    """The project's modules, and what each entry point reaches and may print."""

    def __init__(self, root, packages=PACKAGES, top_level=("main.py",)):
        paths = [os.path.join(root, name) for name in top_level if os.path.exists(os.path.join(root, name))]
        for package in packages:
            paths += [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(root, package))
                      for name in names if name.endswith(".py")]
        self.modules = {m.name: m for m in (Module(root, path) for path in paths)}

    def resolve(self, module, attribute, seen=()):
        """The (module, top-level name or None for its body) a reference lands on; None outside the project."""
        if module not in self.modules:
            full = f"{module}.{attribute}"
            return (full, None) if attribute and full in self.modules else None
        if attribute is None:
            return module, None
        found = self.modules[module]
        if attribute in found.defs:
            return module, attribute
        if attribute in found.imports and (module, attribute) not in seen:  # a re-export
            return self.resolve(*found.imports[attribute], seen + ((module, attribute),))
        return (f"{module}.{attribute}", None) if f"{module}.{attribute}" in self.modules else (module, None)

    def references(self, node, module):
        """The project nodes `node` refers to: names it loads that are not its own locals, attribute chains on
        modules. Constants used only inside argparse definitions are help text, not followed."""
        table, bound = dict(module.imports), set()
        if not isinstance(node, ast.Module):
            bound = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            bound |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
                      for a in n.posonlyargs + n.args + n.kwonlyargs + [n.vararg, n.kwarg] if a}
        table = {name: target for name, target in table.items() if name not in bound}
        table.update(_imports([node], module.package))
        in_parser = {id(n) for call in ast.walk(node) if isinstance(call, ast.Call) and _call_name(call) in PARSER_CALLS
                     for n in ast.walk(call)}
        found = set()
        for child in ast.walk(node):
            chain = []
            while isinstance(child, ast.Attribute):
                chain.insert(0, child.attr)
                child = child.value
            if not isinstance(child, ast.Name) or child.id in bound and child.id not in table:
                continue
            target = self.resolve(*table[child.id]) if child.id in table else \
                (module.name, child.id) if child.id in module.defs else None
            for attribute in chain:
                if target is None or target[1] is not None:
                    break
                target = self.resolve(target[0], attribute)
            if target is None or id(child) in in_parser and self.is_constant(target):
                continue
            found.add(target)
        return found

    def is_constant(self, target):
        return target[1] is not None and isinstance(self.node(target), (ast.Assign, ast.AnnAssign))

    def node(self, target):
        module = self.modules[target[0]]
        return module.body if target[1] is None else module.defs[target[1]]

    def reached(self, entry):
        todo, done = [(entry, None), (entry, "main")], set()
        while todo:
            target = todo.pop()
            if target in done or target[0] not in self.modules or \
                    target[1] is not None and target[1] not in self.modules[target[0]].defs:
                continue
            done.add(target)
            todo += [(target[0], None), *self.references(self.node(target), self.modules[target[0]])]
        return done

    def messages(self, entry):
        """[(module, line, text)] of every string literal with a space in what `entry` reaches (f-strings with
        their fields as {})."""
        found = []
        for target in sorted(self.reached(entry), key=str):
            module, node = self.modules[target[0]], self.node(target)
            skip = set(module.docstrings) | {id(n) for call in ast.walk(node) if isinstance(call, ast.Call)
                                             and _call_name(call) in PARSER_CALLS for n in ast.walk(call)}
            for child in ast.walk(node):
                if id(child) in skip:
                    continue
                if isinstance(child, ast.JoinedStr):
                    skip.update(id(value) for value in child.values)
                    text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in child.values)
                elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                    text = child.value
                else:
                    continue
                if " " in text.strip():
                    found.append((module, child.lineno, text))
        return found

    def wrong_flags(self, entry, flags_of):
        """'path:line: --flag (on command): text' for each flag a message names that its command lacks."""
        wrong = []
        for module, line, text in self.messages(entry):
            for script, flag in FLAG.findall(text):
                command = ENTRY_POINTS.get(script, entry)
                if flag not in FOREIGN_FLAGS and flag not in flags_of(command):
                    where = os.path.relpath(module.path, ROOT)
                    wrong.append(f"{where}:{line}: --{flag} (no such flag on {script or entry}): {text[:120]}")
        return sorted(set(wrong))


class _Parsed(Exception):
    pass


def parser_flags(module_name):
    """The --flags of the parser `module_name` builds (its parse_args, or main, stopped at parsing)."""
    module = importlib.import_module(module_name)
    built = []

    def capture(parser, *args, **kwargs):
        built.append(parser)
        raise _Parsed
    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = capture
    try:
        (getattr(module, "parse_args", None) or module.main)([])
    except _Parsed:
        pass
    finally:
        argparse.ArgumentParser.parse_args = original
    return {option[2:] for option in built[0]._option_string_actions if option.startswith("--")}


@pytest.fixture(scope="module")
def project():
    return Project(ROOT)


@pytest.mark.parametrize("script", sorted(ENTRY_POINTS))
def test_every_flag_a_message_names_exists_on_its_command(project, script):
    flags = {}
    wrong = project.wrong_flags(ENTRY_POINTS[script], lambda m: flags.setdefault(m, parser_flags(m)))
    assert not wrong, "\n".join(wrong)


def test_the_check_reaches_messages_through_calls_and_finds_a_wrong_flag(tmp_path):
    """A made-up project: an error naming a flag its command lacks is found through an import inside a
    function and a call chain; the same flag qualified by the command that has it, or only in help text, is not."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "helpers.py").write_text(
        "HELP = 'default from --config'\n"
        "def check(x):\n    if x:\n        raise ValueError(f'bad {x}: pass --nope instead')\n"
        "def fine():\n    raise ValueError('use main.py --lr here')\n"
        "def unused():\n    raise ValueError('pass --never_reached')\n")
    (tmp_path / "cli.py").write_text(
        "import argparse\n"
        "def main(argv=None):\n    from pkg.helpers import HELP, check, fine\n"
        "    parser = argparse.ArgumentParser()\n    parser.add_argument('--x', help=f'x, {HELP}')\n"
        "    check(parser.parse_args(argv).x)\n    fine()\n")
    project = Project(str(tmp_path), packages=("pkg",), top_level=("cli.py",))
    flags = {"cli": {"x"}, "main": {"lr"}}
    wrong = project.wrong_flags("cli", flags.__getitem__)
    assert len(wrong) == 1 and "--nope (no such flag on cli)" in wrong[0], wrong
