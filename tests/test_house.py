"""The library's arrangement, read from its source: floors whose imports only go down (no circle), small functions,
and every public name of `pixart_jax` importable."""
import ast
import importlib

import pixart_jax
from tests.helpers.paths import ROOT

# Lowest first. A module may import its own group and any group on a lower floor; groups sharing a floor are
# independent of each other.
FLOORS = [
    ["choices", "files", "optim", "seeds"],
    ["images", "sharding"],
    ["models", "samplers"],
    ["weights"],
    ["pipelines"],
    ["training", "torch", "testing"],
    ["planning", "demo", "serving"],
    ["cli", "__init__"],
]
FLOOR = {group: level for level, groups in enumerate(FLOORS) for group in groups}
MAX_LINES, MAX_PARAMS = 60, 10
# diffusers' call signature is the front door of the pipelines: their `__call__`s keep every keyword.
DIFFUSERS_CALLS = {"pipelines/text_to_image.py", "pipelines/controlnet.py", "torch/pipeline.py", "torch/controlnet.py"}
LIBRARY = ROOT / "pixart_jax"


def group(path):
    """`models` for pixart_jax/models/t5.py, `files` for pixart_jax/files.py, `__init__` for the package itself."""
    return path.relative_to(LIBRARY).parts[0].removesuffix(".py")


def imported_groups(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "pixart_jax" else [f"pixart_jax.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pixart_jax" and len(parts) > 1:
                yield parts[1]


def test_every_group_has_a_floor():
    assert sorted({group(p) for p in LIBRARY.rglob("*.py")} - set(FLOOR)) == []


def test_imports_only_go_down():
    wrong = []
    for path in sorted(LIBRARY.rglob("*.py")):
        here = group(path)
        for there in set(imported_groups(path)) - {here}:
            if FLOOR[there] >= FLOOR[here]:
                wrong.append(f"{path.relative_to(ROOT)} (floor {FLOOR[here]}) imports {there} (floor {FLOOR[there]})")
    assert wrong == []


def test_no_import_circle_between_modules():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        targets = set()
        for node in tree.body:  # module-level imports: the ones that run when the module is imported
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[name] = targets - {name}
    done, path = set(), []

    def visit(name):
        assert name not in path, f"import circle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for target in sorted(graph[name]):
            if target != "pixart_jax":
                visit(target)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


def test_functions_are_small():
    large = []
    for path in sorted(LIBRARY.rglob("*.py")):
        where = str(path.relative_to(LIBRARY))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            params = [a for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in ("self", "cls")]
            params += [a for a in (args.vararg, args.kwarg) if a]
            lines = node.end_lineno - node.lineno + 1
            front_door = node.name == "__call__" and where in DIFFUSERS_CALLS
            if lines > MAX_LINES or (len(params) > MAX_PARAMS and not front_door):
                large.append(f"{where}:{node.lineno} {node.name}: {lines} lines, {len(params)} parameters")
    assert large == []


def test_public_names_import_from_the_package():
    for name in pixart_jax.__all__:
        value = getattr(pixart_jax, name)
        if callable(value):
            assert importlib.import_module(value.__module__).__name__.startswith("pixart_jax."), name
