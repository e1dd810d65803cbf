"""The package layout as BUILD.md draws it: imports only point down the layers, the models import nothing but
`models/` and the schema, no import cycles, and no private names cross module boundaries.

Every `import` is read from the source (also those inside functions), so a lazy import cannot hide a cycle
or an upward dependency."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Bottom to top; a module may import its own layer and the layers below it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("contracts", ("earthrep.schema", "earthrep.sensors", "earthrep.parallel", "earthrep.errors")),
    ("io", ("earthrep.io",)),
    ("data", ("earthrep.data",)),
    ("models", ("earthrep.models",)),
    ("training", ("earthrep.training",)),
    ("inference", ("earthrep.inference",)),
    ("interop", ("earthrep.interop",)),
    ("evaluation", ("earthrep.evaluation",)),
    ("tools", ("earthrep.train", "earthrep.embed", "earthrep.convert", "earthrep.parity", "earthrep.flux",
               "earthrep.gpp", "earthrep.evaluate", "earthrep.summarize", "earthrep.refit_heads")),
)
MODELS_MAY_IMPORT = ("earthrep.models", "earthrep.schema")


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _package_modules() -> dict[str, Path]:
  return {_module_name(p): p for p in sorted((REPO / "earthrep").rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> list[tuple[str, int]]:
  """(earthrep module, line) for every import in the file; `from pkg import name` resolves to pkg.name
  when that is a module."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "earthrep"]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "earthrep":
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.append((full if full in known else node.module, node.lineno))
  return out


def _layer(module: str) -> int:
  best, rank = -1, None
  for i, (_, prefixes) in enumerate(LAYERS):
    for p in prefixes:
      if (module == p or module.startswith(p + ".")) and len(p) > best:
        best, rank = len(p), i
  assert rank is not None, f"{module} is in no layer of the picture; add it to LAYERS and BUILD.md"
  return rank


def test_every_module_has_a_layer_and_imports_point_down():
  modules = _package_modules()
  problems = []
  for name, path in modules.items():
    if name == "earthrep":
      continue
    own = _layer(name)
    for target, line in _imports(path, set(modules)):
      if target == "earthrep":
        problems.append(f"{path.relative_to(REPO)}:{line}: imports the bare package")
        continue
      if _layer(target) > own:
        problems.append(f"{path.relative_to(REPO)}:{line}: {LAYERS[own][0]} module {name} imports "
                        f"{target} ({LAYERS[_layer(target)][0]})")
      if name.startswith("earthrep.models") and not target.startswith(MODELS_MAY_IMPORT):
        problems.append(f"{path.relative_to(REPO)}:{line}: models import only models/ and the schema, "
                        f"not {target}")
  assert not problems, "\n".join(problems)


def test_no_import_cycles():
  modules = _package_modules()
  graph = {name: {t for t, _ in _imports(path, set(modules)) if t in modules and t != name}
           for name, path in modules.items()}
  graph = {k: {t for t in v if not k.startswith(t + ".")} for k, v in graph.items()}   # a package's own __init__
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> None:
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
      if nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = 2

  for node in sorted(graph):
    if node not in state:
      visit(node)


def _private_uses(path: Path, known: set[str]) -> list[str]:
  """`from earthrep... import _x` and `<earthrep module alias>._x` in one file."""
  tree = ast.parse(path.read_text(), str(path))
  aliases, found = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "earthrep":
      for a in node.names:
        if a.name.startswith("_"):
          found.append(f"{path.relative_to(REPO)}:{node.lineno}: imports {node.module}.{a.name}")
        elif f"{node.module}.{a.name}" in known:
          aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "earthrep" and a.asname:
          aliases[a.asname] = a.name
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
        and node.attr.startswith("_") and not node.attr.startswith("__")):
      found.append(f"{path.relative_to(REPO)}:{node.lineno}: uses {aliases[node.value.id]}.{node.attr}")
  return found


def test_no_private_names_across_modules_and_no_fixtures_from_benchmarks():
  known = set(_package_modules())
  files = [p for d in ("earthrep", "data_prep", "benchmarks", "tests", "experiments") for p in (REPO / d).rglob("*.py")]
  problems = [line for p in files for line in _private_uses(p, known)]
  for p in (REPO / "tests").rglob("*.py"):
    for node in ast.walk(ast.parse(p.read_text())):
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      problems += [f"{p.relative_to(REPO)}:{node.lineno}: tests import {n}" for n in names
                   if n.split(".")[0] == "benchmarks"]
  assert not problems, "\n".join(problems)


def test_the_picture_in_build_md_lists_every_layer():
  text = (REPO / "BUILD.md").read_text()
  for name, prefixes in LAYERS:
    for p in prefixes:
      if name != "tools":
        assert f"`{p.replace('earthrep.', 'earthrep/').replace('.', '/')}" in text, f"BUILD.md does not show {p}"
