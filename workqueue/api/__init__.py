"""The HTTP side: the application and its routes.

    app.py         `create_app`: checks settings against plugins, wires roles as cleanup contexts
    routes.py      the handlers of every route
    body.py        reading a request body (type, size, encoding, depth, duplicate keys)
    middleware.py  request ids, metrics, the bearer token, errors -> JSON answers
    state.py       every AppKey
"""

from .app import create_app

__all__ = ["create_app"]
