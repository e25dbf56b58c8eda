"""Find and load the task types workqueue can run, from installed plugins and plugin directories.

Loading happens in two phases, as flake8's plugin finder does: `find_plugins` reads metadata only
(no plugin code runs) and returns sorted `FoundTask` records; `load_plugins` imports each one and
checks that its handler is callable, turning every failure into one `PluginError` that names the
plugin and where it came from.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from workqueue.errors import PluginError
from workqueue.task import TaskOptions, options_of

__all__ = ["ENTRY_POINT_GROUP", "FoundTask", "TaskType", "describe", "find_plugins", "load_plugins"]

ENTRY_POINT_GROUP = "workqueue.tasks"
INSTALLED = "installed"

_TASK_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class FoundTask:
    """A task type declared by a plugin, found but not imported yet."""

    name: str  # the task type (the entry point name)
    value: str  # the entry point value, "module:attr"
    plugin: str  # distribution name as the plugin spells it
    source: str  # "installed" or the plugin's directory
    # Where the plugin's top-level module is imported from; None means the normal import system.
    import_path: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class TaskType:
    """A loaded task type, ready for the worker to call."""

    name: str
    handler: Callable[..., Any]
    plugin: str
    source: str
    is_coroutine: bool  # runs on the event loop; otherwise the worker runs it in a thread
    wants_context: bool  # the worker passes ctx=JobContext(...) as a keyword
    options: TaskOptions = field(default_factory=TaskOptions)  # what @task declared


def find_plugins(
    plugin_dirs: Sequence[Path], search_path: Sequence[str] | None = None
) -> list[FoundTask]:
    """Find every declared task type without running plugin code, sorted by name.

    Installed distributions come first in precedence: a plugin directory holding a distribution
    that is also installed (as after `pip install -e plugins/x`) is skipped, so it counts once.
    """
    found = _find_installed(search_path)
    installed = {_normalise(task.plugin) for task in found}
    for plugin_dir in dict.fromkeys(Path(d).resolve() for d in plugin_dirs):
        if not plugin_dir.exists():
            continue  # the default plugins/ may simply be absent
        if not plugin_dir.is_dir():
            raise PluginError(f"plugin directory {plugin_dir} is not a directory")
        for dist_dir in sorted(plugin_dir.iterdir()):
            dropped = _find_dropped_in(dist_dir)
            if dropped and _normalise(dropped[0].plugin) not in installed:
                found.extend(dropped)
    found.sort(key=lambda task: (task.name, _normalise(task.plugin), task.source))
    _check_unique(found)
    return found


def load_plugins(
    plugin_dirs: Sequence[Path], search_path: Sequence[str] | None = None
) -> dict[str, TaskType]:
    """Find and load every task type, sorted by name.

    Sources are installed distributions (importlib.metadata, entry-point group "workqueue.tasks";
    search_path=None means sys.path, tests pass a directory holding a *.dist-info) and plugin
    packages dropped into each of plugin_dirs without being installed.
    """
    return {found.name: _load(found) for found in find_plugins(plugin_dirs, search_path)}


def describe(tasks: Mapping[str, TaskType]) -> list[dict[str, str]]:
    """Summarise loaded task types for the start-up log line."""
    return [{"name": t.name, "plugin": t.plugin, "source": t.source} for t in tasks.values()]


def _find_installed(search_path: Sequence[str] | None) -> list[FoundTask]:
    if search_path is None:
        dists = importlib.metadata.distributions()
        import_path = None
    else:
        dists = importlib.metadata.distributions(path=list(search_path))
        import_path = tuple(search_path)
    found: list[FoundTask] = []
    seen: set[str] = set()
    for dist in dists:
        name = dist.metadata["Name"]
        # The same distribution can sit on the path twice; like importlib.metadata.entry_points(),
        # the first one on the path wins instead of clashing with itself.
        if not name or _normalise(name) in seen:
            continue
        seen.add(_normalise(name))
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            found.append(_found(ep.name, ep.value, name, INSTALLED, import_path))
    return found


def _find_dropped_in(dist_dir: Path) -> list[FoundTask]:
    pyproject = dist_dir / "pyproject.toml"
    if not dist_dir.is_dir() or not pyproject.is_file():
        return []  # __pycache__, notes, anything that is not a distribution
    try:
        with pyproject.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise PluginError(f"cannot read plugin metadata {pyproject}: {e}") from e
    project = data.get("project")
    groups = project.get("entry-points") if isinstance(project, dict) else None
    if not isinstance(project, dict) or not isinstance(groups, dict) or ENTRY_POINT_GROUP not in groups:
        return []  # a Python project, but not a workqueue plugin
    entry_points = groups[ENTRY_POINT_GROUP]
    name = project.get("name")
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{pyproject}: [project] name is missing; a plugin needs a name")
    if not isinstance(entry_points, dict) or not all(
        isinstance(v, str) for v in entry_points.values()
    ):
        raise PluginError(
            f'{pyproject}: [project.entry-points."{ENTRY_POINT_GROUP}"] must map task types '
            'to "module:callable" strings'
        )
    # Flat layout imports from the distribution directory, src layout from its src/.
    import_path = (str(dist_dir), str(dist_dir / "src"))
    return [_found(k, v, name, str(dist_dir), import_path) for k, v in entry_points.items()]


def _found(
    name: str, value: str, plugin: str, source: str, import_path: tuple[str, ...] | None
) -> FoundTask:
    where = f"plugin {plugin!r} from {source}"
    if not _TASK_TYPE_NAME.match(name):
        raise PluginError(
            f"{where}: task type {name!r} is not a valid name "
            "(letters, digits, '_', '.', '-'; starting with a letter or '_'; at most 128)"
        )
    module, _, attr = (part.strip() for part in value.partition(":"))
    if not _is_dotted_name(module) or not _is_dotted_name(attr):
        raise PluginError(f"{where}: entry point {name} = {value!r} is not 'module:callable'")
    return FoundTask(name, f"{module}:{attr}", plugin, source, import_path)


def _check_unique(found: Sequence[FoundTask]) -> None:
    # `found` is sorted by name, so two claims on one task type sit side by side.
    for first, second in zip(found, found[1:]):
        if first.name == second.name:
            raise PluginError(
                f"task type {first.name!r} is claimed by two plugins: {first.plugin!r} from "
                f"{first.source} and {second.plugin!r} from {second.source}; remove one of them"
            )


def _load(found: FoundTask) -> TaskType:
    where = f"plugin {found.plugin!r} (entry point {found.name} = {found.value!r}) "
    where += f"from {found.source}"
    module_name, _, attr = found.value.partition(":")
    try:
        handler: Any = _import(module_name, found.import_path)
        for part in attr.split("."):
            handler = getattr(handler, part)
    except Exception as e:  # SyntaxError too: a plugin's bug must stop start-up, named
        raise PluginError(f"{where} failed to load: {type(e).__name__}: {e}") from e
    if not callable(handler):
        raise PluginError(f"{where}: {attr} is a {type(handler).__name__}, not a callable")
    wants_context = _wants_context(handler, where)
    # An object with `async def __call__` is a coroutine function too, but inspect says otherwise.
    is_coroutine = inspect.iscoroutinefunction(handler) or (
        not inspect.isroutine(handler) and inspect.iscoroutinefunction(type(handler).__call__)
    )
    return TaskType(found.name, handler, found.plugin, found.source, is_coroutine, wants_context,
                    options_of(handler))


def _wants_context(handler: Callable[..., Any], where: str) -> bool:
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # some builtins have no signature; assume the plain form
        return False
    ctx = signature.parameters.get("ctx")
    wants_context = ctx is not None and ctx.kind in (ctx.POSITIONAL_OR_KEYWORD, ctx.KEYWORD_ONLY)
    # Check the call the worker will make now, so a wrong signature stops start-up, not every job.
    try:
        signature.bind({}, **({"ctx": None} if wants_context else {}))
    except TypeError as e:
        raise PluginError(
            f"{where}: the handler must take the payload as its one required argument "
            f"(and optionally `ctx`), but {e}"
        ) from e
    return wants_context


def _import(module_name: str, import_path: tuple[str, ...] | None) -> ModuleType:
    if import_path is None:
        return importlib.import_module(module_name)
    # Import the top-level package from the plugin's own directory only; putting that directory
    # on sys.path would let every plugin shadow every other module for the whole process.
    top = module_name.partition(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, list(import_path))
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module {top!r} in {' or '.join(import_path)}", name=top)
    existing = sys.modules.get(top)
    if existing is None:
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        # Registered before it runs so the package's own absolute and relative imports find it.
        sys.modules[top] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            # Leave no half-initialised module behind for the next import to pick up.
            for name in set(sys.modules) - before:
                if name == top or name.startswith(top + "."):
                    del sys.modules[name]
            raise
    elif (other := _origin(getattr(existing, "__spec__", None))) != _origin(spec):
        raise ImportError(
            f"module {top!r} is already imported from {other or 'elsewhere'}; "
            "rename the plugin's module",
            name=top,
        )
    return importlib.import_module(module_name)


def _origin(spec: importlib.machinery.ModuleSpec | None) -> str | None:
    if spec is None:
        return None
    where = spec.origin or next(iter(spec.submodule_search_locations or []), None)
    return os.path.realpath(where) if where else None


def _is_dotted_name(value: str) -> bool:
    return bool(value) and all(part.isidentifier() for part in value.split("."))


def _normalise(distribution: str) -> str:
    """PEP 503: `Workqueue_Send.Email` and `workqueue-send-email` are one distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()
