"""Shared fixtures. Each area may add fixtures here; keep them small and documented."""
import os

# JAX tests on CPU: never grab a GPU if the machine has one, keep runs deterministic.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
