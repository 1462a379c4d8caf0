"""The scale benchmarks run end to end on small inputs and report consistent figures (they assert nothing
themselves; these tests check that what they print is measured, not made up)."""

import pytest

from transferops.scale import ThroughputSpec, data, throughput


@pytest.mark.parametrize("size", [28, 20])  # sizes that are not multiples of the noise blocks
def test_throughput_times_the_trainer_and_the_bare_step_on_shards(size):
    spec = ThroughputSpec(image_size=size, batch_size=16, steps=3, width=8)
    r = throughput(spec, "cpu")
    assert r["device"].startswith("cpu") and r["image_size"] == size
    assert r["trainer_img_s"] > 0 and r["bare_step_img_s"] > 0
    assert r["ratio"] == pytest.approx(r["trainer_img_s"] / r["bare_step_img_s"], rel=0.01)


def test_data_benchmark_ingests_and_trains_one_epoch_and_reports_memory(tmp_path):
    r = data(images=120, size=40, workers=1, width=4, keep=tmp_path / "work")
    assert r["images"] == 120 and r["image_size"] == 40
    assert r["ingest_img_s"] > 0 and 0 < r["ingest_peak_rss_gib"] < 4
    assert r["epoch_steps"] >= 1 and 0 < r["epoch_peak_rss_gib"] < 4
    assert (tmp_path / "work").is_dir()
