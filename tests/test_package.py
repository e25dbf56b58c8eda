"""The package's public surface is exactly what `__all__` names, and every name there exists."""

import workqueue


def test_all_names_exist_and_nothing_public_is_left_out() -> None:
    assert all(hasattr(workqueue, name) for name in workqueue.__all__)
    public = {name for name in vars(workqueue) if not name.startswith("_") and not isinstance(
        getattr(workqueue, name), type(workqueue))}  # submodules are not part of the surface
    assert public == set(workqueue.__all__)
