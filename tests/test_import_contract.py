"""The house's import contract: every arrow between bertc's rooms points down.

Read from the source with `ast` (every `import` and `from ... import`, at module
level or inside functions), so a lazy import that points up fails too.  The
layers, top to bottom (a room may import its own modules and any room below it):

    bertc.cli, bertc.cli_help          the absl command line
    bertc.serving, bertc.client        serve an artifact / talk to a server
    bertc.builder                      `bertc build`: pipeline, stages, output, targets
    bertc.verify                       proof: compare, artifact, per pass, inspection
    bertc.passes, bertc.runtime        pass selection; the one runner, TF settings, CPU
    bertc.artifact                     the artifact format
    bertc.sources, bertc.text          checkpoints in; text in
    bertc.model                        config, names, the TF BERT, freezing
    bertc.atomic, bertc.version        atomic output directories (build, convert); the version
    bertc.errors                       the error types
    rewrites                           GraphDef passes: imports nothing of bertc

The client knows only HTTP and text (it imports neither TensorFlow's side of bertc
nor the server), and serving stands on the artifact, not on the model code.
`bertc/__init__.py` is the API's front door and may reach anything (lazily).
"""

import ast
import os

import bertc_testing as bt

LAYERS = [
    {"bertc.cli"},
    {"bertc.serving", "bertc.client"},
    {"bertc.builder"},
    {"bertc.verify"},
    {"bertc.passes", "bertc.runtime"},
    {"bertc.artifact"},
    {"bertc.sources", "bertc.text"},
    {"bertc.model"},
    {"bertc.atomic", "bertc.version"},
    {"bertc.errors"},
]
#: Rooms of one layer that must not import each other, and other narrower rules.
FORBIDDEN = {
    "bertc.client": {"bertc.serving", "bertc.runtime", "bertc.artifact", "bertc.model",
                     "bertc.builder", "bertc.verify", "bertc.sources", "bertc.passes"},
    "bertc.serving": {"bertc.client", "bertc.builder", "bertc.verify", "bertc.model",
                      "bertc.sources", "bertc.passes"},
    "bertc.text": {"bertc.sources"},
    "bertc.passes": {"bertc.runtime"},
    "bertc.runtime": {"bertc.passes"},
}


def room(module: str) -> str:
    """'bertc.builder.targets.neuron' -> 'bertc.builder'; 'rewrites.graph' -> 'rewrites'."""
    if module == "bertc.cli_help":
        return "bertc.cli"  # the command line's help text, its own file
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "bertc" and len(parts) > 1 else parts[0]


def layer(room_name: str) -> int:
    for index, rooms in enumerate(LAYERS):
        if room_name in rooms:
            return index
    raise AssertionError(f"{room_name} is in no layer of the contract; add it to LAYERS")


def module_name(path: str) -> str:
    rel = os.path.relpath(path, bt.REPO_ROOT)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def imports_of(path: str):
    """[(line, imported module)] of a source file (bertc and rewrites only)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "bertc":  # from bertc import x: a room, a module, or the API
                found += [(node.lineno, f"bertc.{a.name}" if _is_module("bertc", a.name)
                           else "bertc") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return [(line, m) for line, m in found if m.split(".")[0] in ("bertc", "rewrites")]


def _is_module(package: str, name: str) -> bool:
    base = os.path.join(bt.REPO_ROOT, package, name)
    return os.path.isdir(base) or os.path.isfile(base + ".py")


def source_files(package: str):
    for dirpath, _, names in os.walk(os.path.join(bt.REPO_ROOT, package)):
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def violations():
    found = []
    for path in list(source_files("bertc")) + list(source_files("rewrites")):
        here = module_name(path)
        if here == "bertc":
            continue  # the package's front door
        mine = room(here)
        for line, target in imports_of(path):
            theirs = room(target)
            where = f"{os.path.relpath(path, bt.REPO_ROOT)}:{line} imports {target}"
            if theirs == mine or target == "bertc":
                if target == "bertc" and mine != "bertc.cli":
                    found.append(f"{where} (the package front door; import the module)")
                continue
            if mine == "rewrites":
                found.append(f"{where} (rewrites imports nothing of bertc)")
                continue
            if theirs == "rewrites":
                continue  # bertc may use the passes
            if layer(theirs) <= layer(mine):
                found.append(f"{where} ({theirs} is not below {mine})")
            elif theirs in FORBIDDEN.get(mine, ()):
                found.append(f"{where} ({mine} may not import {theirs})")
    return found


def test_every_import_points_down():
    assert violations() == []


def test_the_contract_can_fail(tmp_path, monkeypatch):
    """An upward arrow is reported: a model module importing the builder."""
    fake_root = tmp_path / "repo"
    (fake_root / "bertc" / "model").mkdir(parents=True)
    (fake_root / "rewrites").mkdir()
    (fake_root / "bertc" / "model" / "bad.py").write_text(
        "def f():\n    from bertc.builder import pipeline\n")
    (fake_root / "rewrites" / "bad.py").write_text("import bertc.model.config\n")
    monkeypatch.setattr(bt, "REPO_ROOT", str(fake_root))
    found = violations()
    assert any("bertc/model/bad.py:2 imports bertc.builder" in v for v in found), found
    assert any("rewrites/bad.py:1" in v and "imports nothing of bertc" in v for v in found)
