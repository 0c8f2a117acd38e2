"""The absl apps (``python -m launch.<name>``); `launch.app` is their one entry point.

Importing the package imports `launch.app` first, which sets the environment defaults (Hugging Face
offline, transformers quiet) before any launcher imports jax or transformers.
"""

from launch import app  # noqa: F401
