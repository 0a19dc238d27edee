from lsa_framework.types import Scores

from lsaf_depth_allocator import DepthAllocator, DepthOptions


def test_ramp_is_linear_and_exact():
    sizes = {f"layer.{i}": 1000 for i in range(5)}
    got = DepthAllocator(DepthOptions(delta=0.1)).allocate(Scores({}, True, 0.0), sizes, 0.5)
    expected = [0.4, 0.45, 0.5, 0.55, 0.6]  # target − δ + 2δ·i/(L − 1)
    assert all(abs(got[f"layer.{i}"] - e) < 1e-9 for i, e in enumerate(expected))
    assert abs(sum(got.values()) / len(got) - 0.5) < 1e-9


def test_clipping_keeps_the_mean():
    sizes = {f"layer.{i}": 1000 * (i + 1) for i in range(4)}
    got = DepthAllocator(DepthOptions(delta=0.3)).allocate(Scores({}, True, 0.0), sizes, 0.1)
    assert min(got.values()) == 0.0
    mean = sum(got[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert abs(mean - 0.1) < 1e-6
