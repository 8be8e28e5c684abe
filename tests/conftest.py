"""Test-wide settings: a deterministic hypothesis profile, the ``gpu`` marker's skip hook, and the
``one_blas_thread`` fixture."""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "deterministic", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("nondeterministic", deadline=None)
settings.load_profile(os.environ.get("OPTKIT_HYPOTHESIS_PROFILE", "deterministic"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def one_blas_thread():
    """One BLAS thread for modules of tiny products (``pytestmark = pytest.mark.usefixtures(...)``):
    they gain nothing from threads, and on a busy 2-core machine spinning BLAS threads made them
    5-100x slower. A no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
