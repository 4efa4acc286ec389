import os
from pathlib import Path

import pytest
import torch

# Tests run single-threaded like the Ray workers, and never touch a model hub.
torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# After the settings: huggingface_hub reads HF_HUB_OFFLINE once, when diffusers first imports it.
from tests.factories import FASHION_ROOT, TINY_SUITE  # noqa: E402


def pytest_sessionstart(session):
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").exists():
        pytest.exit("Fashion-MNIST is missing: apt-get install -y dataset-fashion-mnist", returncode=2)


def _token_file_state() -> bytes | None:
    try:
        return (Path.home() / ".ray" / "auth_token").read_bytes()
    except OSError:
        return None


@pytest.fixture(scope="session", autouse=True)
def leaves_no_token_file():
    """The suite leaves ~/.ray/auth_token as it found it (issue 30 item 1): a plain ray.init() or `ray start` under Ray
    2.60 writes a fresh token there, which turns token auth on for every later client and head on the machine and,
    sent to a head without auth, broke runs. A file the machine already had is left alone, and must stay the same."""
    before = _token_file_state()
    yield
    after = _token_file_state()
    assert after == before, (
        f"the test suite {'wrote' if before is None else 'changed'} {Path.home() / '.ray' / 'auth_token'}; "
        "start Ray with harness.runtime.cluster.use_session_token() or RAY_AUTH_MODE set, never a plain ray.init()"
    )


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (two CPUs), shared by the tests that need one."""
    import ray

    from harness.runtime.cluster import use_session_token

    use_session_token()  # a plain ray.init() would write ~/.ray/auth_token (issue 30 item 1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_suite():
    from harness.config.loader import load_suite

    return load_suite(str(TINY_SUITE))


@pytest.fixture(scope="session")
def tiny_real(tiny_suite):
    from harness.models.data import load_real_data

    return load_real_data(tiny_suite.data)
