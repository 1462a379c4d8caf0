"""The scale benchmarks run end to end on small inputs and report consistent figures (they assert nothing
themselves; these tests check that what they print is measured, not made up)."""

import multiprocessing
import statistics
from concurrent.futures import ProcessPoolExecutor

import pytest

from transferops_bench.scale import ThroughputSpec, _own_peak_rss_gib, data, throughput


@pytest.mark.parametrize("size", [28, 20])  # sizes that are not multiples of the noise blocks
def test_throughput_times_the_trainer_and_the_bare_step_on_shards(size):
    spec = ThroughputSpec(image_size=size, batch_size=16, steps=3, width=8, repeats=3)
    r = throughput(spec, "cpu")
    assert r["device"].startswith("cpu") and r["image_size"] == size
    assert len(r["trainer_img_s_runs"]) == len(r["bare_step_img_s_runs"]) == 3
    assert r["trainer_img_s"] == pytest.approx(statistics.median(r["trainer_img_s_runs"]), abs=0.1)
    assert r["bare_step_img_s"] == pytest.approx(statistics.median(r["bare_step_img_s_runs"]), abs=0.1)
    assert min(r["trainer_img_s_runs"]) > 0 and min(r["bare_step_img_s_runs"]) > 0
    assert r["ratio"] == pytest.approx(r["trainer_img_s"] / r["bare_step_img_s"], rel=0.01)


@pytest.mark.slow  # a benchmark's own check (~10 s); the sharded data path is tested in tests/unit/test_data.py
def test_data_benchmark_ingests_and_trains_one_epoch_and_reports_memory(tmp_path):
    r = data(images=120, size=40, workers=1, width=4, keep=tmp_path / "work")
    assert r["images"] == 120 and r["image_size"] == 40
    assert r["ingest_img_s"] > 0 and 0 < r["ingest_peak_rss_gib"] < 4
    assert r["epoch_steps"] >= 1 and 0 < r["epoch_peak_rss_gib"] < 4
    # the sampled peaks of the anonymous and file-backed parts never exceed the whole's high-water mark
    assert 0 < r["epoch_peak_anon_gib"] <= r["epoch_peak_rss_gib"] + 0.01
    assert 0 < r["epoch_peak_file_gib"] <= r["epoch_peak_rss_gib"] + 0.01
    assert (tmp_path / "work").is_dir()


def test_a_spawned_phase_reports_its_own_peak_not_its_parents():
    """ru_maxrss of a spawned child carries its parent's high-water mark across exec; the benchmark's figure
    for a phase must be that phase's process alone."""
    ballast = bytearray(768 << 20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page: 768 MiB resident here
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child = pool.submit(_own_peak_rss_gib).result()
    assert _own_peak_rss_gib() > 0.7
    assert child < 0.4, f"the child reported {child:.2f} GiB: its parent's peak"
    del ballast
