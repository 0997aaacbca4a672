"""Aspect-ratio bucket tables and assignment (spec §3.6)."""
import pytest

from pixart_jax.pipelines.aspect_ratios import ASPECT_RATIO_1024, TEST_TABLES, TRAIN_TABLES, bin_size, closest_bucket


def test_tables():
    assert len(ASPECT_RATIO_1024) == 40 and all(len(TEST_TABLES[size]) == 33 for size in (256, 512, 1024))
    assert len(TEST_TABLES[2048]) == 40  # diffusers' PixArt-Σ bins to every 2048 bucket
    for size, table in TRAIN_TABLES.items():
        for key, (h, w) in table.items():
            assert h % (size // 16) == 0 and w % (size // 16) == 0, (size, key)  # multiples of 64 px at 1024
            assert abs(h / w - float(key)) < 0.06, (size, key)  # nominal keys are rounded ratios
    tokens = [(h // 16) * (w // 16) for h, w in ASPECT_RATIO_1024.values()]
    assert min(tokens) == 3696 and max(tokens) == 4096


def test_assignment():
    assert closest_bucket(1024, 1024, ASPECT_RATIO_1024) == "1.0"
    assert closest_bucket(300, 1200, ASPECT_RATIO_1024) == "0.25"
    assert closest_bucket(1000, 937, ASPECT_RATIO_1024) == "1.07"
    assert bin_size(620, 1000, TEST_TABLES[512]) == (384, 640)
    assert closest_bucket(1, 1, {"0.5": (1, 2), "1.5": (3, 2)}) == "0.5"  # ties: the first key wins


def test_same_bins_as_diffusers():
    pytest.importorskip("torch")
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as ref
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    for size, table in ((2048, sigma.ASPECT_RATIO_2048_BIN), (1024, ref.ASPECT_RATIO_1024_BIN),
                        (512, ref.ASPECT_RATIO_512_BIN), (256, ref.ASPECT_RATIO_256_BIN)):
        assert {k: tuple(map(int, v)) for k, v in table.items()} == TEST_TABLES[size]
