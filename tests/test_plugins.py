"""Tests for workqueue.plugins: finding and loading plugins (the built-ins' work: test_builtin_plugins).

Plugins are real packages written into tmp_path; each test uses its own module names so nothing
collides in sys.modules, and the `forget_plugin_modules` fixture removes what a test imported.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from workqueue.errors import PluginError
from workqueue.plugins import TaskType, describe, find_plugins, load_plugins

REPO = Path(__file__).resolve().parents[1]
BUILTIN_MODULES = ("wq_send_email", "wq_resize_image", "wq_generate_pdf", "wq_example_hello")

MakePlugin = Callable[..., Path]
RUN = "def run(payload):\n    return payload\n"


@pytest.fixture(autouse=True)
def forget_plugin_modules() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("wqt_") or name.partition(".")[0] in BUILTIN_MODULES:
            del sys.modules[name]


@pytest.fixture
def module(tmp_path: Path) -> str:
    """A module name no other test uses."""
    return "wqt_" + re.sub(r"\W", "_", tmp_path.name)


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "plugins"
    path.mkdir()
    return path


@pytest.fixture
def make_plugin(plugin_dir: Path) -> MakePlugin:
    """Write a plugin distribution into plugin_dir: pyproject.toml plus the given files."""

    def make(folder: str, dist: str, entry_points: dict[str, str], files: dict[str, str]) -> Path:
        root = plugin_dir / folder
        lines = ["[project]", f'name = "{dist}"', "", '[project.entry-points."workqueue.tasks"]']
        lines += [f'"{name}" = "{value}"' for name, value in entry_points.items()]
        write_files(root, {"pyproject.toml": "\n".join(lines) + "\n", **files})
        return root

    return make


def write_files(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load(plugin_dir: Path) -> dict[str, TaskType]:
    # search_path=[]: see only the plugin directory, never what happens to be installed.
    return load_plugins([plugin_dir], search_path=[])


def test_flat_layout_loads_without_installing(
    make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    # A relative and an absolute import inside the package, both of which must work.
    root = make_plugin("double", "wq-test-double", {"double": f"{module}:run"}, {
        f"{module}/__init__.py": "from .impl import run\n",
        f"{module}/impl.py": (
            f"from {module} import helpers\n\n"
            "def run(payload):\n    return helpers.double(payload)\n"
        ),
        f"{module}/helpers.py": "def double(payload):\n    return {'x': payload['x'] * 2}\n",
    })
    task = load(plugin_dir)["double"]
    assert (task.plugin, task.source) == ("wq-test-double", str(root.resolve()))
    assert task.handler({"x": 21}) == {"x": 42}
    assert not task.is_coroutine and not task.wants_context


def test_src_layout_loads(make_plugin: MakePlugin, plugin_dir: Path, module: str) -> None:
    make_plugin("srcplug", "wq-test-src", {"from_src": f"{module}.tasks:run"}, {
        f"src/{module}/__init__.py": "",
        f"src/{module}/tasks.py": "def run(payload):\n    return 'from src'\n",
    })
    assert load(plugin_dir)["from_src"].handler({}) == "from src"


def test_missing_plugin_dir_is_ignored(tmp_path: Path) -> None:
    assert load_plugins([tmp_path / "absent"], search_path=[]) == {}


def test_plugin_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "plugins.txt"
    not_a_dir.write_text("")
    with pytest.raises(PluginError, match=r"plugins\.txt is not a directory"):
        load_plugins([not_a_dir], search_path=[])


def test_directories_that_are_not_plugins_are_ignored(plugin_dir: Path) -> None:
    (plugin_dir / "__pycache__").mkdir()
    (plugin_dir / "README.md").write_text("drop plugins here\n")
    write_files(plugin_dir / "other", {"pyproject.toml": '[project]\nname = "not-a-plugin"\n'})
    write_files(plugin_dir / "tool", {"pyproject.toml": "[tool.black]\nline-length = 100\n"})
    assert load(plugin_dir) == {}


async def test_coroutine_and_context_are_detected(
    make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    make_plugin("kinds", "wq-test-kinds", {
        "async_ctx": f"{module}:async_ctx",
        "plain": f"{module}:plain",
        "keyword_ctx": f"{module}:keyword_ctx",
        "callable_object": f"{module}:callable_object",
    }, {f"{module}/__init__.py": (
        "async def async_ctx(payload, ctx):\n    return ctx.job_id\n"
        "def plain(payload):\n    return payload\n"
        "def keyword_ctx(payload, *, ctx):\n    return ctx.job_id\n"
        "class Handler:\n    async def __call__(self, payload):\n        return 'called'\n"
        "callable_object = Handler()\n"
    )})
    tasks = load(plugin_dir)
    flags = {name: (task.is_coroutine, task.wants_context) for name, task in tasks.items()}
    assert flags == {
        "async_ctx": (True, True),
        "callable_object": (True, False),
        "keyword_ctx": (False, True),
        "plain": (False, False),
    }
    assert await tasks["async_ctx"].handler({}, ctx=SimpleNamespace(job_id="j1")) == "j1"
    assert await tasks["callable_object"].handler({}) == "called"


def test_same_type_in_two_distributions_names_both(
    make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    first = make_plugin("one", "wq-test-one", {"clash": f"{module}_a:run"}, {f"{module}_a.py": RUN})
    second = make_plugin(
        "two", "wq-test-two", {"clash": f"{module}_b:run"}, {f"{module}_b.py": RUN}
    )
    with pytest.raises(PluginError) as caught:
        load(plugin_dir)
    message = str(caught.value)
    assert "'clash'" in message
    for dist, root in (("wq-test-one", first), ("wq-test-two", second)):
        assert dist in message and str(root.resolve()) in message
    assert f"{module}_a" not in sys.modules  # found, refused, never imported


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        ("raise RuntimeError('boom at import')\n", RuntimeError),
        ("def broken(:\n    pass\n", SyntaxError),
    ],
    ids=["raises", "syntax-error"],
)
def test_broken_import_names_plugin_and_path(
    make_plugin: MakePlugin, plugin_dir: Path, module: str, code: str, cause: type[Exception]
) -> None:
    root = make_plugin(
        "broken", "wq-test-broken", {"broken": f"{module}:run"}, {f"{module}/__init__.py": code}
    )
    with pytest.raises(PluginError) as caught:
        load(plugin_dir)
    message = str(caught.value)
    assert "wq-test-broken" in message and f"{module}:run" in message
    assert str(root.resolve()) in message
    assert isinstance(caught.value.__cause__, cause)
    assert module not in sys.modules  # no half-initialised module left behind


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("run = 42\n", "not a callable"),
        ("def other(payload):\n    pass\n", "AttributeError"),
        ("def run():\n    pass\n", "one required argument"),
        ("def run(payload, extra):\n    pass\n", "one required argument"),
    ],
    ids=["not-callable", "missing", "no-payload", "two-required"],
)
def test_unusable_handler_is_an_error(
    make_plugin: MakePlugin, plugin_dir: Path, module: str, code: str, expected: str
) -> None:
    make_plugin("bad", "wq-test-bad", {"bad": f"{module}:run"}, {f"{module}.py": code})
    with pytest.raises(PluginError, match=expected) as caught:
        load(plugin_dir)
    assert "wq-test-bad" in str(caught.value)


@pytest.mark.parametrize(
    ("pyproject", "expected"),
    [("[project\nname = 'x'\n", "cannot read plugin metadata"),
     ('[project.entry-points."workqueue.tasks"]\nx = "m:f"\n', "name is missing")],
    ids=["invalid-toml", "no-name"],
)
def test_bad_pyproject_names_the_file(plugin_dir: Path, pyproject: str, expected: str) -> None:
    write_files(plugin_dir / "bad", {"pyproject.toml": pyproject})
    with pytest.raises(PluginError, match=expected) as caught:
        load(plugin_dir)
    assert str((plugin_dir / "bad" / "pyproject.toml").resolve()) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value"), [("has space", "m:f"), ("9lives", "m:f"), ("ok", "no_colon"), ("ok", "m:")]
)
def test_bad_task_type_or_entry_point_is_an_error(
    make_plugin: MakePlugin, plugin_dir: Path, name: str, value: str
) -> None:
    make_plugin("bad", "wq-test-bad", {name: value}, {})
    with pytest.raises(PluginError, match="wq-test-bad"):
        load(plugin_dir)


def test_module_already_imported_from_elsewhere_names_both(
    make_plugin: MakePlugin, plugin_dir: Path
) -> None:
    # json is already imported from the standard library; the plugin must not replace it.
    root = make_plugin(
        "shadow", "wq-test-shadow", {"shadow": "json:run"}, {"json/__init__.py": RUN}
    )
    with pytest.raises(PluginError) as caught:
        load(plugin_dir)
    message = str(caught.value)
    assert str(root.resolve()) in message and os.path.realpath(json.__file__) in message
    assert sys.modules["json"] is json


def test_loading_twice_reuses_the_imported_module(
    make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    make_plugin("again", "wq-test-again", {"again": f"{module}:run"}, {f"{module}.py": RUN})
    assert load(plugin_dir)["again"].handler is load(plugin_dir)["again"].handler


def test_installed_and_dropped_in_same_distribution_counts_once(
    tmp_path: Path, make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    site, lib = tmp_path / "site", tmp_path / "lib"
    write_files(site / "Workqueue_Same-0.1.dist-info", {
        "METADATA": "Metadata-Version: 2.1\nName: Workqueue_Same\nVersion: 0.1\n",
        "entry_points.txt": f"[workqueue.tasks]\nsame = {module}_installed:run\n",
    })
    write_files(lib, {f"{module}_installed.py": "def run(payload):\n    return 'installed'\n"})
    make_plugin("same", "workqueue.same", {"same": f"{module}_dropped:run"}, {
        f"{module}_dropped.py": "def run(payload):\n    return 'dropped in'\n",
    })
    tasks = load_plugins([plugin_dir], search_path=[str(site), str(lib)])
    assert list(tasks) == ["same"]
    assert (tasks["same"].source, tasks["same"].plugin) == ("installed", "Workqueue_Same")
    assert tasks["same"].handler({}) == "installed"
    assert f"{module}_dropped" not in sys.modules


def test_loading_leaves_sys_path_unchanged(
    make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    make_plugin("flat", "wq-test-flat", {"flat": f"{module}_flat:run"}, {f"{module}_flat.py": RUN})
    make_plugin("src", "wq-test-src", {"src": f"{module}_src:run"}, {f"src/{module}_src.py": RUN})
    before = list(sys.path)
    assert set(load(plugin_dir)) == {"flat", "src"}
    assert sys.path == before


def test_results_are_sorted_and_described(
    make_plugin: MakePlugin, plugin_dir: Path, module: str
) -> None:
    entry_points = {"zeta": f"{module}:run", "alpha": f"{module}:run"}
    root = make_plugin("many", "wq-test-many", entry_points, {f"{module}.py": RUN})
    assert [found.name for found in find_plugins([plugin_dir], search_path=[])] == ["alpha", "zeta"]
    tasks = load(plugin_dir)
    assert list(tasks) == ["alpha", "zeta"]
    source = str(root.resolve())
    assert describe(tasks) == [
        {"name": "alpha", "plugin": "wq-test-many", "source": source},
        {"name": "zeta", "plugin": "wq-test-many", "source": source},
    ]


def test_repo_plugins_are_the_builtins_and_the_example() -> None:
    tasks = load_plugins([REPO / "plugins"], search_path=[])
    assert list(tasks) == ["generate_pdf", "hello", "resize_image", "send_email"]
    # Blocking work (Pillow, fpdf2) runs in a thread; network work on the event loop.
    kinds = {name: task.is_coroutine for name, task in tasks.items()}
    assert kinds == {"generate_pdf": False, "hello": True, "resize_image": False, "send_email": True}
    assert all(task.wants_context and task.options.schema is not None for task in tasks.values())
