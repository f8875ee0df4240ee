"""GradSimCore counting backends agree with the float64 brute force, up to ties within 1e-6 of Φ."""
from __future__ import annotations

import gzip
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from coreset.similarity import BACKENDS, choose_backend, count_similar, quantile_threshold, stack_list_column, threshold
from coreset.similarity.brute import cosine_matrix
from coreset.similarity.threshold import count_at_quantile

TIE = 1e-6
MNIST = Path("/work/shared/data/mnist")

# (backend, options): every backend plus the configurations that exercise blocking and chunking.
CONFIGS = [
    ("brute", {}),
    ("auto", {}),
    ("auto", {"block_size": 16}),
    ("gram", {}),
    ("gram", {"block_size": 7}),
    ("gram", {"dtype": torch.float64, "block_size": 64}),
    ("faiss", {}),
    ("faiss", {"max_results_per_chunk": 50}),
]


def bounds(err: np.ndarray, emb: np.ndarray, phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample count range allowed when pairs within TIE of Φ may go either way."""
    cos = cosine_matrix(err, emb)
    np.fill_diagonal(cos, np.nan)
    with np.errstate(invalid="ignore"):
        return (cos > phi + TIE).sum(1), (cos > phi - TIE).sum(1)


def assert_agree(err: np.ndarray, emb: np.ndarray, phi: float) -> None:
    lo, hi = bounds(err, emb, phi)
    for name, options in CONFIGS:
        counts = count_similar(err, emb, phi, name, **options)
        assert counts.dtype == np.int64 and counts.shape == (len(err),)
        assert np.all((lo <= counts) & (counts <= hi)), (name, options, phi)


def random_factors(n: int, c: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, c)) * 2
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    p[np.arange(n), rng.integers(0, c, n)] -= 1.0
    return p.astype(np.float32), np.maximum(rng.standard_normal((n, d)), 0).astype(np.float32)


@pytest.mark.parametrize("phi", [-0.3, 0.0, 0.2, 0.5, 0.9])
def test_backends_match_brute_on_random_data(phi: float) -> None:
    err, emb = random_factors(120, 5, 12, seed=1)
    assert_agree(err, emb, phi)


@pytest.mark.parametrize("phi", [-0.5, 0.0, 0.5, 0.999999, 1.0])
def test_backends_match_brute_with_duplicates_and_zero_gradients(phi: float) -> None:
    err, emb = random_factors(60, 4, 8, seed=2)
    err = np.concatenate([err, err[:20], err[:5], np.zeros((3, 4), np.float32)])
    emb = np.concatenate([emb, emb[:20], emb[:5], emb[:3]])
    assert_agree(err, emb, phi)


def test_float16_round_trip() -> None:
    err, emb = random_factors(100, 6, 16, seed=3)
    err16, emb16 = err.astype(np.float16), emb.astype(np.float16)
    for phi in (0.1, 0.6):
        assert_agree(err16, emb16, phi)
        for name, options in CONFIGS:  # float16 tensors are accepted too
            torch_counts = count_similar(torch.from_numpy(err16), torch.from_numpy(emb16), phi, name, **options)
            assert np.array_equal(torch_counts, count_similar(err16, emb16, phi, name, **options))


def test_faiss_gpu_route_on_cpu_indexes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch (k-NN + CPU range-search fallback) run with a CPU index standing in for
    the GPU one, and a small k so both the k-NN part and the fallback are used."""
    from coreset.similarity import faiss_range

    monkeypatch.setattr(faiss_range.faiss, "StandardGpuResources", lambda: None)
    monkeypatch.setattr(faiss_range.faiss, "index_cpu_to_gpu", lambda resources, device, index: index)
    monkeypatch.setattr(faiss_range, "GPU_K", 8)
    err, emb = random_factors(80, 4, 6, seed=6)
    seen = []
    for phi in (0.0, 0.7, 0.95):
        counts = faiss_range.count_similar(err, emb, phi, use_gpu=True, max_results_per_chunk=400)
        assert np.array_equal(counts, faiss_range.count_similar(err, emb, phi, use_gpu=False))
        seen.extend(counts)
    assert min(seen) < 8 < max(seen)  # both routes exercised


def test_strictly_greater_and_exact_cosines() -> None:
    # [h; 1] is the same for all rows, so cos(g_i, g_j) = cos(err_i, err_j) ∈ {1, 0} exactly.
    err = np.array([[1, 0], [2, 0], [0, 1]], np.float32)
    emb = np.zeros((3, 1), np.float32)
    for phi, expected in [(1.0, [0, 0, 0]), (0.5, [1, 1, 0]), (0.0, [1, 1, 0]), (-0.1, [2, 2, 2])]:
        for name, options in CONFIGS:
            assert count_similar(err, emb, phi, name, **options).tolist() == expected, (name, phi)


def test_zero_gradient_has_cosine_zero_with_everything() -> None:
    err = np.array([[0, 0, 0], [1, -1, 0], [0.5, -0.5, 0]], np.float32)
    emb = np.ones((3, 2), np.float32)
    for name, options in CONFIGS:
        assert count_similar(err, emb, -0.5, name, **options).tolist() == [2, 2, 2]
        assert count_similar(err, emb, 0.0, name, **options).tolist() == [0, 1, 1]


@pytest.mark.parametrize("name", BACKENDS.names())
@pytest.mark.parametrize("phi", [-1.01, 1.5, float("nan")])
def test_threshold_outside_range_is_rejected(name: str, phi: float) -> None:
    err, emb = random_factors(5, 3, 4, seed=0)
    with pytest.raises(ValueError, match="Φ must lie in"):
        count_similar(err, emb, phi, name)


def test_unknown_backend() -> None:
    with pytest.raises(KeyError, match="allowed: auto, brute, faiss, gram"):
        count_similar(np.zeros((2, 2)), np.zeros((2, 2)), 0.5, "annoy")


def test_quantile_threshold_exact_and_sampled() -> None:
    err, emb = random_factors(200, 5, 10, seed=4)
    cos = cosine_matrix(err, emb)
    exact = np.quantile(cos[np.triu_indices(200, 1)], 0.9)
    assert quantile_threshold(err, emb, 0.9) == pytest.approx(exact, abs=1e-6)
    sampled = quantile_threshold(err, emb, 0.9, max_pairs=5000, seed=7)
    assert sampled == quantile_threshold(err, emb, 0.9, max_pairs=5000, seed=7)
    assert abs(np.mean(cos[np.triu_indices(200, 1)] <= sampled) - 0.9) < 0.02
    assert quantile_threshold(err[:1], emb[:1], 0.9) == 1.0


def test_sampled_pairs_are_the_drawn_pairs_cosines() -> None:
    """The sampled path reads each drawn pair (i ≠ j, uniform) off the Gram blocks: the same
    numbers as the explicit cosine of that pair, whichever row block holds it."""
    err, emb = random_factors(300, 5, 10, seed=8)
    cos = cosine_matrix(err, emb)
    rng = np.random.default_rng(3)
    i = rng.integers(0, 300, 4000)
    j = (i + rng.integers(1, 300, 4000)) % 300
    with patch.object(threshold, "PAIR_BLOCK_FLOATS", 300 * 7):  # row blocks of 7: pairs in 43 blocks
        sampled = threshold._sampled_pair_cosines(err, emb, 4000, seed=3)
    np.testing.assert_allclose(sampled, cos[i, j], atol=2e-6)


def test_fused_quantile_count_matches_threshold_then_count() -> None:
    err, emb = random_factors(150, 5, 10, seed=5)
    counts, phi = count_at_quantile(err, emb, 0.8, block_size=40)
    assert phi == quantile_threshold(err, emb, 0.8)
    assert np.array_equal(counts, count_similar(err, emb, phi, "gram"))
    lo, hi = bounds(err, emb, phi)
    assert np.all((lo <= counts) & (counts <= hi))


def test_auto_prefers_gram_by_measurement() -> None:
    assert choose_backend(1300, 1000, 512)[0] == "gram"
    assert choose_backend(50, 10, 64) == ("gram", {"device": "cpu"})


def test_stack_list_column_formats() -> None:
    values = np.arange(12, dtype=np.float16).reshape(4, 3)
    objects = pd.Series(list(values))
    arrow = pa.array(list(values), type=pa.list_(pa.float16(), 3))
    arrow_backed = pd.Series(pd.arrays.ArrowExtensionArray(arrow))
    for column in (objects, arrow, pa.chunked_array([arrow[:2], arrow[2:]]), arrow_backed):
        out = stack_list_column(column)
        assert out.dtype == np.float16 and np.array_equal(out, values)


def _idx(path: Path, header: int, count: int, width: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(header + count * width), np.uint8)[header:].reshape(count, width)


@pytest.mark.skipif(not MNIST.exists(), reason="MNIST not available")
def test_backends_agree_on_real_mnist_features() -> None:
    n = 2000
    x = _idx(MNIST / "train-images-idx3-ubyte.gz", 16, n, 784).astype(np.float32) / 255.0
    y = _idx(MNIST / "train-labels-idx1-ubyte.gz", 8, n, 1)[:, 0].astype(np.int64)
    torch.manual_seed(0)
    emb = torch.relu(torch.from_numpy(x) @ torch.randn(784, 64) / 28.0)
    logits = emb @ torch.randn(64, 10) * 0.3
    err = torch.softmax(logits, 1)
    err[torch.arange(n), torch.from_numpy(y)] -= 1.0
    err16, emb16 = err.half().numpy(), emb.half().numpy()  # as stored in the gradient table
    for c in range(10):
        rows = y == c
        phi = quantile_threshold(err16[rows], emb16[rows], 0.9)
        counts = {name: count_similar(err16[rows], emb16[rows], phi, name) for name in ("brute", "gram", "faiss")}
        lo, hi = bounds(err16[rows], emb16[rows], phi)
        for name, got in counts.items():
            assert np.all((lo <= got) & (got <= hi)), (c, name)
        assert counts["gram"].mean() == pytest.approx(0.1 * (rows.sum() - 1), rel=0.05)
