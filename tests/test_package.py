"""The package's public surface is exactly what `__all__` names, and every name there exists; the
client side of it loads without the service's libraries."""

import subprocess
import sys

import workqueue


def test_all_names_exist_and_nothing_public_is_left_out() -> None:
    assert all(hasattr(workqueue, name) for name in workqueue.__all__)
    # dir(), not vars(): the names imported on first use (PEP 562) are listed before they are loaded.
    public = {name for name in dir(workqueue) if not name.startswith("_") and not isinstance(
        getattr(workqueue, name), type(workqueue))}  # submodules are not part of the surface
    assert public == set(workqueue.__all__)


def test_the_client_imports_neither_aiohttp_nor_redis() -> None:
    """A web app that only enqueues should not load the service: `from workqueue import Client`
    pulls in httpx and nothing of aiohttp or redis."""
    code = ("import sys; import workqueue.client; from workqueue import Client, AsyncClient, APIError; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiohttp', 'redis')))")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert answer.stdout.strip() == "[]"


def test_the_task_decorator_stays_the_decorator_once_the_service_has_loaded() -> None:
    """`workqueue.task` is both a module and the decorator it defines: importing the module (the
    service does) must not turn a plugin's `from workqueue import task` into the module."""
    code = ("import workqueue.plugins, workqueue.api; from workqueue import task; "
            "import inspect; print(inspect.isfunction(task))")
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert answer.stdout.strip() == "True"
