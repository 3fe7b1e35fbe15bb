"""kft's layers import downward only (docs/architecture.md): checked on the source, without importing it.

Every module under src/kft is parsed with `ast`; its imports of kft modules, at the top or inside a
function, must name its own layer or a lower one, must not close a cycle between modules, and must
not reach for another module's private (`_x`) names. Outside `kft/families/`, no code names a model
family or one of its KerasHub classes: it asks the family.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from conftest import REPO

SRC = Path(REPO, "src")
# Lowest first; a module may import its own layer and any layer before it. Layers on one rank
# (training and export) may not import each other.
LAYERS = [
    ["core"],
    ["families"],
    ["config"],
    ["data"],
    ["models"],
    ["distribute"],
    ["quant"],
    ["generation"],
    ["evaluate"],
    ["plan"],
    ["training", "export"],
    ["kft"],
    ["cli"],
]
RANK = {layer: rank for rank, names in enumerate(LAYERS) for layer in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(Path(SRC, "kft").rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kft"


def imports(module: str, tree: ast.AST):
    """(line, imported kft module, imported name or None) for each kft import in `tree`."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "kft":
                    yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1]
                    + ([base] if base else [])
                )
            if base.split(".")[0] != "kft":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                yield (
                    (node.lineno, child, None)
                    if child in MODULES
                    else (node.lineno, base, alias.name)
                )


def import_graph(modules=MODULES) -> dict[str, list[tuple[int, str, str | None]]]:
    return {
        m: list(imports(m, ast.parse(p.read_text(encoding="utf-8")))) for m, p in modules.items()
    }


GRAPH = import_graph()


def upward_imports(graph) -> list[str]:
    found = []
    for module, edges in graph.items():
        for line, target, _ in edges:
            if target == module or target not in MODULES:
                continue
            own, theirs = layer_of(module), layer_of(target)
            if own != theirs and RANK[theirs] >= RANK[own]:
                found.append(
                    f"{MODULES[module].relative_to(SRC)}:{line} ({own}) imports {target} ({theirs})"
                )
    return found


def cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each as a list of names."""
    edges = {m: sorted({t for _, t, _ in e if t in graph and t != m}) for m, e in graph.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in edges:
        if v not in index:
            visit(v)
    return groups


def private_imports(graph) -> list[str]:
    found = [
        f"{MODULES[m].relative_to(SRC)}:{line} imports {name} from {target}"
        for m, edges in graph.items()
        for line, target, name in edges
        if name and name.startswith("_") and not name.startswith("__") and target != m
    ]
    for module, path in MODULES.items():  # module._private, through an imported kft module
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kft"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        # A name the module also binds itself (a parameter, an assignment) is not the module there.
        bound = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
        bound |= {
            n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
        }
        aliases = {k: v for k, v in aliases.items() if k not in bound}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.append(
                    f"{path.relative_to(SRC)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"
                )
    return found


def test_every_module_belongs_to_a_layer():
    assert sorted({layer_of(m) for m in MODULES} - set(RANK)) == []


def test_no_module_imports_a_higher_layer():
    assert upward_imports(GRAPH) == []


def test_no_import_cycle_between_modules():
    assert cycles(GRAPH) == []


def test_no_private_name_crosses_modules():
    assert private_imports(GRAPH) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from kft.training import recipe\n", "imports kft.training.recipe (training)"),
        ("from kft.quant.quantize import apply\n", "imports kft.quant.quantize (quant)"),
    ],
)
def test_an_upward_import_is_named(source, expected):
    graph = {**GRAPH, "kft.models.lora": list(imports("kft.models.lora", ast.parse(source)))}
    assert any(expected in line for line in upward_imports(graph))


def test_a_cycle_is_named():
    graph = dict(GRAPH)
    graph["kft.core.errors"] = [(1, "kft.core.progress", None)]
    graph["kft.core.progress"] = [(1, "kft.core.errors", None)]
    assert ["kft.core.errors", "kft.core.progress"] in cycles(graph)


# A family's name or a KerasHub class of a family, in a string literal that is not a docstring.
FAMILY_WORDS = re.compile(
    r"\bgemma\d?(_text|_moe)?\b|\bGemma\d?[A-Z]\w*|\bGemma\d?(Text)?(Backbone|CausalLM|Tokenizer)\b"
)


def prose(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docs: docstrings, and help text (a `help=` argument, or
    the text of a config key: kft.config's `_key(default, help)`)."""
    ids = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for call in ast.walk(tree):
        if isinstance(call, ast.Call):
            texts = [k.value for k in call.keywords if k.arg == "help"]
            if isinstance(call.func, ast.Name) and call.func.id == "_key":
                texts += call.args[1:2]
            ids |= {id(n) for text in texts for n in ast.walk(text)}
    return ids


def family_literals(path: Path, root: Path = SRC) -> list[str]:
    """`file:line 'literal'` for each string in `path` naming a family or a family's KerasHub class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = prose(tree)
    return [
        f"{path.relative_to(root)}:{node.lineno} {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and FAMILY_WORDS.search(node.value)
    ]


OUTSIDE_FAMILIES = [p for m, p in MODULES.items() if layer_of(m) != "families"]


def test_no_family_is_named_outside_the_families_folder():
    assert [line for p in OUTSIDE_FAMILIES for line in family_literals(p)] == []


def test_a_family_branch_is_named(tmp_path):
    original = Path(SRC, "kft", "models", "lora.py")
    source = original.read_text(encoding="utf-8")
    branched = tmp_path / "lora.py"
    branched.write_text(
        source + '\n\ndef odd(family):\n    return family.name == "gemma4"\n', encoding="utf-8"
    )
    assert family_literals(original) == []
    assert [line.split(" ", 1)[1] for line in family_literals(branched, root=tmp_path)] == [
        "'gemma4'"
    ]


def test_every_module_is_named_in_docs_architecture():
    """docs/architecture.md tours every module (a family folder's files by folder and file name)."""
    doc = Path(REPO, "docs", "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in MODULES.values():
        relative = path.relative_to(Path(SRC, "kft")).as_posix()
        if path.name == "__init__.py" and not path.read_text(encoding="utf-8").strip():
            continue  # an empty package marker
        parts = relative.split("/")
        if parts[0] == "families" and len(parts) == 3:
            named = f"families/{parts[1]}/" in doc and parts[2] in doc
        else:
            named = relative in doc or (relative == "__init__.py" and "kft/__init__.py" in doc)
        if not named:
            missing.append(relative)
    assert missing == []


def test_the_cli_and_the_recipe_import_no_keras_before_the_backend_is_chosen():
    """`kft train` sets KERAS_BACKEND=jax in backend.setup(); a module-level `import keras` on the
    way there would pick TensorFlow (the CI failure this test keeps from coming back)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    code = (
        "import sys, kft.cli, kft.training.recipe, kft.export, kft.plan; "
        "assert 'keras' not in sys.modules, 'keras imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
