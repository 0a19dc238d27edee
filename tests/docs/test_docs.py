"""The docs cannot drift: every hook is documented, and the plugin examples of the docs run.

The plugin tutorial (docs/plugins.md) is checked block by block: blocks with ``title="path"`` are the
files of the example package (pieces with the same title are joined in order) and must equal the
shipped ``plugins/lsaf-depth-allocator``; the package is then registered on a fresh plugin manager
and used; untitled Python blocks run in order in one namespace, as a reader would run them. The
README's plugin example is registered and used the same way. ``mkdocs build`` itself runs in CI
(``make docs``), not here.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
import tomllib
import types
from pathlib import Path

import pluggy
import pytest

from lsa_framework import hookspecs, registry
from lsa_framework.types import Scores

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_PAGE = ROOT / "docs" / "plugins.md"
EXAMPLE_PACKAGE = ROOT / "plugins" / "lsaf-depth-allocator"
#: Files of the tutorial that must be identical to the shipped example package.
SHIPPED_FILES = ("pyproject.toml", "lsaf_depth_allocator/__init__.py", "tests/test_depth.py")
NO_SCORES = Scores(values={}, higher_is_important=True, spread=0.0)

FENCE = re.compile(r"^```(?P<lang>[\w+-]*)(?P<attrs>[^\n]*)\n(?P<code>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def code_blocks(markdown: str) -> list[tuple[str, str | None, str]]:
    """(language, title or None, code) of every fenced block, in order."""
    blocks = []
    for match in FENCE.finditer(markdown):
        title = re.search(r'title="([^"]+)"', match["attrs"])
        blocks.append((match["lang"], title[1] if title else None, match["code"]))
    return blocks


def tutorial_files() -> dict[str, str]:
    """The files the tutorial builds: its titled blocks, pieces of one file joined by two blank lines."""
    pieces: dict[str, list[str]] = {}
    for _lang, title, code in code_blocks(PLUGIN_PAGE.read_text()):
        if title:
            pieces.setdefault(title, []).append(code.strip("\n"))
    return {path: "\n\n\n".join(parts) + "\n" for path, parts in pieces.items()}


def fresh_manager() -> pluggy.PluginManager:
    return registry.new_plugin_manager(entry_points=False)


def load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hookspec_functions() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {name: f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker)}


def test_every_hook_has_a_docstring_and_is_on_the_plugin_page():
    specs = hookspec_functions()
    pm = fresh_manager()
    assert set(specs) == {name for name in vars(pm.hook) if name.startswith("lsaf_")}
    page = PLUGIN_PAGE.read_text()
    for name, function in specs.items():
        assert (inspect.getdoc(function) or "").strip(), f"hookspec {name} has no docstring"
        assert f"`{name}(" in page, f"hook {name} is not described in docs/plugins.md"


def test_tutorial_builds_the_shipped_example_package():
    files = tutorial_files()
    for path in SHIPPED_FILES:
        assert path in files, f"the tutorial does not show {path}"
        assert files[path] == (EXAMPLE_PACKAGE / path).read_text(), f"docs/plugins.md and the shipped {path} differ"
    entry_points = tomllib.loads(files["pyproject.toml"])["project"]["entry-points"]["lsa_framework"]
    assert entry_points == {"depth": "lsaf_depth_allocator"}


@pytest.fixture
def tutorial_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The tutorial's package written to a temporary folder, importable as ``lsaf_depth_allocator``."""
    for path, text in tutorial_files().items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    module = load_module("lsaf_depth_allocator", tmp_path / "lsaf_depth_allocator" / "__init__.py")
    monkeypatch.setitem(sys.modules, "lsaf_depth_allocator", module)
    monkeypatch.chdir(tmp_path)
    return module


def test_tutorial_package_registers_and_allocates(tutorial_package: types.ModuleType):
    pm = fresh_manager()
    pm.register(tutorial_package, name="lsaf_depth_allocator")
    entry = registry.lookup("allocators", "depth", pm)
    allocator = entry.cls(entry.cls.Options(delta=0.2))
    sizes = {f"layer.{i}": 4096 for i in range(5)}
    got = allocator.allocate(NO_SCORES, sizes, 0.6)
    assert [round(got[f"layer.{i}"], 9) for i in range(5)] == [0.4, 0.5, 0.6, 0.7, 0.8]


def test_tutorial_python_blocks_and_tests_run(tutorial_package: types.ModuleType, tmp_path: Path):
    namespace: dict[str, object] = {"__name__": "tutorial"}
    snippets = [code for lang, title, code in code_blocks(PLUGIN_PAGE.read_text()) if lang == "python" and not title]
    assert len(snippets) >= 3
    for code in snippets:
        exec(compile(code, str(PLUGIN_PAGE), "exec"), namespace)
    tests = load_module("tutorial_test_depth", tmp_path / "tests" / "test_depth.py")
    test_functions = [f for name, f in vars(tests).items() if name.startswith("test_")]
    assert test_functions
    for test in test_functions:
        test()


def test_readme_plugin_example_runs(tmp_path: Path):
    blocks = [code for lang, _title, code in code_blocks((ROOT / "README.md").read_text()) if lang == "python"]
    example = next(code for code in blocks if "@hookimpl" in code)
    (tmp_path / "readme_plugin.py").write_text(example)
    pm = fresh_manager()
    pm.register(load_module("readme_plugin", tmp_path / "readme_plugin.py"), name="readme_plugin")
    found = registry.collect("allocators", pm)
    new = set(found) - set(registry.collect("allocators", fresh_manager()))
    assert len(new) == 1, "the README example should register exactly one allocator"
    cls = found[new.pop()].cls
    sizes = {f"layer.{i}": 1000 for i in range(4)}
    got = cls(cls.Options()).allocate(NO_SCORES, sizes, 0.5)
    values = [got[f"layer.{i}"] for i in range(4)]
    assert values == sorted(values) and values[0] < values[-1]
    assert sum(values) / 4 == pytest.approx(0.5, abs=1e-9)


def test_architecture_plugin_example_refines_a_layout():
    from lsa_framework.model.discovery import discover_layout
    from tests.conftest import make_tiny_llama

    blocks = [
        code for lang, _t, code in code_blocks((ROOT / "docs" / "architectures.md").read_text()) if lang == "python"
    ]
    namespace: dict[str, object] = {"__name__": "architectures_page"}
    exec(compile(blocks[0], "docs/architectures.md", "exec"), namespace)
    plugin = namespace["KeepOutputProjections"]()  # type: ignore[operator]
    model = make_tiny_llama(num_layers=2)
    assert not plugin.matches(model)
    layout = plugin.refine(model, discover_layout(model))
    assert layout.architecture == "generic+my-family"
    assert all(info.projection != "o" for info in layout.all_linears()) and len(layout.linears[0]) == 6
