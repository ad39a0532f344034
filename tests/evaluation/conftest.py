import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def indexed_data(tmp_path_factory):
    """An indexed .bin/.idx prefix of 40 random documents (20-120 tokens, ids < 256)."""
    from minibridge.training.data import IndexedDatasetWriter

    prefix = tmp_path_factory.mktemp("indexed") / "docs"
    rng = np.random.default_rng(0)
    writer = IndexedDatasetWriter(prefix)
    for _ in range(40):
        writer.add_document(rng.integers(0, 256, size=int(rng.integers(20, 120))).tolist())
    writer.finalize()
    return str(prefix)
