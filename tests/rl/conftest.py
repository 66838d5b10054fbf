import jax
import pytest


@pytest.fixture
def float64():
    """Run a test in float64, to check the doc's figures to 1e-6 (a context, so no global state leaks)."""
    with jax.enable_x64(True):
        yield
