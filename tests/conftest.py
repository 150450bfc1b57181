"""Shared tiny data for the data tests: generated once per session (a few seconds on 2 cores)."""
import pytest

from datasets.synthetic import make_official_layout, make_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    """16 train + 8 val synthetic mp4s, 48 x 64 px, 16 frames."""
    return make_synthetic_dataset(str(tmp_path_factory.mktemp("synthetic")), num_train=16, num_val=8, height=48,
                                  num_frames=16, seed=1, workers=2)


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory) -> str:
    """The official SSv2 layout in miniature: 6 train + 4 validation VP9 webm videos, 32 x 42 px, plus the jsons."""
    return make_official_layout(str(tmp_path_factory.mktemp("official")), num_train=6, num_val=4, height=32,
                                num_frames=12, seed=2, workers=2)
