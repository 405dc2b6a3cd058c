"""ranlens: see where a Residual Attention Network looks.

``ranlens.model`` holds the network, its weights, training and the inference service;
``ranlens.app`` the web app on top of it; ``ranlens.cli`` the ``ranlens`` command above both.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ranlens")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
