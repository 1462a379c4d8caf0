import hashlib
import pickle
import struct
import tarfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from transferops.config import DatasetConfig, IngestConfig, SplitConfig, config_from_dict
from transferops.data import archive, sources
from transferops.data.shards import (
    MappedShard,
    ShardedArray,
    ShardWriter,
    load_split,
    open_npy,
    read_manifest,
    stratified_split,
    write_dataset,
)
from transferops.data.sources import ArraySource, load_all, open_source
from transferops.data.synthetic import BUNDLED_FACES, bundled_fonts, render_digits
from transferops.errors import ConfigError, DataError


def read_dataset(spec: DatasetConfig, size: int, channels: int, seed: int = 0) -> SimpleNamespace:
    """List and decode a whole (small) dataset, as ingest would, into memory."""
    import tempfile

    src = open_source(spec, IngestConfig(), seed, Path(tempfile.mkdtemp()), f"test {spec.kind}")
    return SimpleNamespace(images=load_all(src, size, channels), labels=src.labels, classes=src.classes, source=src)


def test_synthetic_digits_are_deterministic_per_image_and_vary_with_seed():
    a, la = render_digits(3, 28, seed=1)
    b, lb = render_digits(3, 28, seed=1)
    c, _ = render_digits(3, 28, seed=2)
    assert a.shape == (30, 1, 28, 28) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)
    assert np.bincount(la).tolist() == [3] * 10
    # white ink on a dark background, like the handwritten target
    assert a.mean() < 90 and a.max() > 200
    # image i is a pure function of (seed, i): rendering a subset, in any order, gives the same bytes
    src = open_source(DatasetConfig(samples_per_class=3), IngestConfig(), 1, Path("."), "src")
    assert np.array_equal(src.decode(17, 28, 1), a[17]) and np.array_equal(src.decode(4, 28, 3)[2], a[4][0])


def test_synthetic_fonts_come_from_the_pinned_matplotlib_wheel_not_the_machine(tmp_path):
    import matplotlib

    fonts = bundled_fonts()
    assert len(fonts) == len(BUNDLED_FACES) == 21
    assert all(str(f).startswith(matplotlib.get_data_path()) for f in fonts)
    # fonts_dir opts into a folder of fonts instead: only its faces (plus Pillow's) are used
    (tmp_path / "f").mkdir()
    for face in ("cmr10.ttf", "DejaVuSans.ttf"):
        (tmp_path / "f" / face).write_bytes((fonts[0].parent / face).read_bytes())
    own, _ = render_digits(2, 20, seed=0, fonts_dir=str(tmp_path / "f"))
    assert not np.array_equal(own, render_digits(2, 20, seed=0)[0])
    with pytest.raises(DataError, match="not a folder of .ttf/.otf fonts"):
        render_digits(1, 16, seed=0, fonts_dir=str(tmp_path / "none"))


def test_sklearn_target_is_resized_real_digits():
    ds = read_dataset(DatasetConfig(kind="sklearn_digits"), 28, 1)
    assert ds.images.shape == (1797, 1, 28, 28)
    assert ds.classes == [str(d) for d in range(10)]
    assert np.bincount(ds.labels).min() >= 170
    assert (ds.source.native_size, ds.source.colour) == (8, False)


def test_stratified_split_is_disjoint_stratified_and_seeded():
    labels = np.repeat(np.arange(4), 20)
    split = SplitConfig(test_fraction=0.25, val_per_class=3, labels_per_class=2)
    s = stratified_split(labels, list("abcd"), split, seed=0)
    assert {k: len(v) for k, v in s.items()} == {"labeled": 8, "unlabeled": 40, "val": 12, "test": 20}
    for name in ("labeled", "val", "test"):
        assert np.bincount(labels[s[name]], minlength=4).tolist() == [len(s[name]) // 4] * 4
    everything = np.concatenate(list(s.values()))
    assert sorted(everything.tolist()) == list(range(80))
    again = stratified_split(labels, list("abcd"), split, seed=0)
    other = stratified_split(labels, list("abcd"), split, seed=1)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["test"], other["test"])


def test_split_refuses_more_labels_than_a_class_has_naming_dataset_and_class():
    labels = np.repeat(np.arange(2), 5)
    with pytest.raises(DataError) as e:
        stratified_split(labels, ["cat", "dog"], SplitConfig(0.2, 1, 10), seed=0, where="ingest.target (x: /d)")
    assert str(e.value).startswith("ingest.target (x: /d): class 'cat' has 5 images, too few for 1 test")


def _array_source(images: np.ndarray, labels: np.ndarray, classes) -> ArraySource:
    """Images held as (N, H, W) arrays, decoded at their own size."""
    return ArraySource(images[:, 0], classes, labels, [f"a[{i}]" for i in range(len(labels))], "arrays", 8, False)


def test_shards_stream_byte_identical_to_np_save_and_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (50, 1, 8, 8), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 10)
    w = ShardWriter(tmp_path / "x.npy", images.shape)
    for start in range(0, 50, 7):
        w.append(images[start : start + 7])
    digest = w.close()
    np.save(tmp_path / "ref.npy", images, allow_pickle=False)
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert digest == hashlib.sha256((tmp_path / "ref.npy").read_bytes()).hexdigest()

    splits = stratified_split(labels, list("abcde"), SplitConfig(0.2, 2, None), seed=0)
    src = _array_source(images, labels, list("abcde"))
    m, hashes = write_dataset(tmp_path / "d", src, splits, shard_size=7, size=8, channels=1, workers=1)
    assert [sh["count"] for sh in m["splits"]["labeled"]["shards"]] == [7, 7, 7, 7, 2]  # 30 images, shards of 7
    assert hashes[3] == hashlib.sha1(images[3].tobytes()).hexdigest()
    got = load_split(tmp_path / "d", "labeled")
    assert isinstance(got.images, ShardedArray) and all(isinstance(p, MappedShard) for p in got.images.parts)
    assert np.array_equal(np.asarray(got.images), images[splits["labeled"]])
    assert np.array_equal(got.labels, labels[splits["labeled"]])
    # a gather across shards, unsorted and with repeats, reads exactly those rows
    pick = np.array([29, 0, 8, 8, 15, 3])
    assert np.array_equal(got.images.take(pick), images[splits["labeled"]][pick])
    assert np.array_equal(got.images[5:12], images[splits["labeled"]][5:12])
    # a second gather gives the same rows (nothing carried between gathers)
    assert np.array_equal(got.images.take(pick), images[splits["labeled"]][pick])
    # same data -> same version (in parallel too); a flipped byte -> a clear error naming the shard
    m2, _ = write_dataset(tmp_path / "e", src, splits, shard_size=7, size=8, channels=1, workers=2)
    assert m2["version"] == m["version"] == read_manifest(tmp_path / "d")["version"]
    shard = tmp_path / "d" / m["splits"]["test"]["shards"][0]["images"]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{shard.name}: sha256 does not match"):
        load_split(tmp_path / "d", "test")
    with pytest.raises(DataError, match="run `transferops ingest` first"):
        load_split(tmp_path / "missing", "test")


def test_a_corrupt_image_found_by_a_decode_worker_names_its_file(tmp_path):
    root = _image_folder(tmp_path / "data", n=40)
    (root / "dog" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    src = open_source(DatasetConfig(kind="image_folder", path=str(root)), IngestConfig(), 0, tmp_path, "t")
    splits = {"labeled": np.arange(len(src))}
    with pytest.raises(DataError, match="dog/bad.png: corrupt or unreadable image"):
        write_dataset(tmp_path / "out", src, splits, shard_size=16, size=8, channels=1, workers=2)


def _image_folder(root: Path, classes=("cat", "dog"), n=3, size=(12, 10)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def test_image_folder_reads_classes_resizes_converts_and_knows_its_geometry(tmp_path):
    root = _image_folder(tmp_path / "data")
    ds = read_dataset(DatasetConfig(kind="image_folder", path=str(root)), 16, 1, 0)
    assert ds.classes == ["cat", "dog"]
    assert ds.images.shape == (6, 1, 16, 16)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    rgb = read_dataset(DatasetConfig(kind="image_folder", path=str(root)), 16, 3, 0)
    assert rgb.images.shape == (6, 3, 16, 16)
    assert (ds.source.native_size, ds.source.colour) == (12, True)  # 12x10 colour noise


@pytest.mark.parametrize(
    ("make_bad", "needle"),
    [
        (lambda d: (d / "cat" / "x.png").write_bytes(b"not a png at all"), "x.png: corrupt or unreadable image"),
        (lambda d: (d / "cat" / "z.png").write_bytes(b""), "z.png: zero-byte file"),
        (lambda d: (d / "cat" / "notes.txt").write_text("hello"), "notes.txt: not an image file"),
        (lambda d: (d / "empty").mkdir(), "empty: empty class folder"),
    ],
)
def test_bad_image_folders_fail_with_the_file_named(tmp_path, make_bad, needle):
    root = _image_folder(tmp_path / "data")
    make_bad(root)
    with pytest.raises(DataError) as e:
        read_dataset(DatasetConfig(kind="image_folder", path=str(root)), 16, 1, 0)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        read_dataset(DatasetConfig(kind="image_folder", path=str(tmp_path / "nope")), 16, 1, 0)


def test_zip_and_tar_archives_are_read_like_folders(tmp_path):
    root = _image_folder(tmp_path / "data")
    zpath = tmp_path / "data.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(root.rglob("*.png")):
            zf.write(f, f"data/{f.relative_to(root)}")
    tpath = tmp_path / "data.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        tf.add(root, arcname=".")
    folder = read_dataset(DatasetConfig(kind="image_folder", path=str(root)), 16, 1, 0)
    for path in (zpath, tpath):
        ds = read_dataset(DatasetConfig(kind="image_folder", path=str(path)), 16, 1, 0)
        assert ds.classes == folder.classes
        assert np.array_equal(ds.images, folder.images)


@pytest.mark.parametrize("name", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_zip_slip_is_refused_and_nothing_written(tmp_path, name):
    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ok/a.png", b"x")
        zf.writestr(name, b"x")
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError, match="escape the extraction dir"):
        archive.safe_extract(zpath, dest, LIMITS)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.png").exists()


def test_tar_symlink_is_refused(tmp_path):
    tpath = tmp_path / "evil.tar"
    with tarfile.open(tpath, "w") as tf:
        info = tarfile.TarInfo("cls/link.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DataError, match="is a link"):
        archive.safe_extract(tpath, tmp_path / "out", LIMITS)


LIMITS = archive.Limits(max_bytes=64 << 20, max_entries=1000)


def _zeros_zip(path: Path, size: int, entries: int = 1) -> Path:
    """A few-KB zip that expands to ``size`` bytes of zeros per entry (a decompression bomb)."""
    block = b"\0" * (1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for e in range(entries):
            with zf.open(f"cls/{e}.png", "w", force_zip64=True) as f:
                for _ in range(size >> 20):
                    f.write(block)
    return path


def _written(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_zip_bomb_declaring_past_the_cap_is_refused_before_writing(tmp_path):
    bomb = _zeros_zip(tmp_path / "bomb.zip", 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    dest = tmp_path / "out"
    dest.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(DataError) as e:
        archive.safe_extract(bomb, dest, LIMITS)
    assert time.perf_counter() - t0 < 5
    assert "declares 0.25 GiB uncompressed, over ingest.archive_max_gib=0.06 GiB" in str(e.value)
    assert _written(dest) == 0


def test_archive_with_too_many_entries_is_refused(tmp_path):
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(20):
            zf.writestr(f"c/{i}.png", b"x")
    with pytest.raises(DataError, match="20 entries exceed ingest.archive_max_entries=10"):
        archive.safe_extract(zpath, tmp_path, archive.Limits(1 << 30, 10))


def test_tar_gz_bomb_is_refused_at_its_first_header(tmp_path):
    import io

    tpath = tmp_path / "bomb.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        info = tarfile.TarInfo("cls/zeros.png")
        info.size = 512 << 20
        tf.addfile(info, io.BufferedReader(io.BytesIO(b"\0" * info.size)))
    dest = tmp_path / "out"
    dest.mkdir()
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="over ingest.archive_max_gib"):
        archive.safe_extract(tpath, dest, LIMITS)
    assert time.perf_counter() - t0 < 5 and _written(dest) == 0


def test_a_lying_header_cannot_write_past_what_it_declared_nor_past_the_cap(tmp_path, monkeypatch):
    # the zip says each entry is 1 KiB; the data is 8 MiB of zeros: extraction stops at the declared size
    zpath = _zeros_zip(tmp_path / "liar.zip", 8 << 20)
    raw = bytearray(zpath.read_bytes())
    with zipfile.ZipFile(zpath) as zf:
        info = zf.infolist()[0]
    for width in (8, 4):  # the local header's zip64 field, then the central directory's 32-bit one
        true = (8 << 20).to_bytes(width, "little")
        for at in [i for i in range(len(raw) - width) if raw[i : i + width] == true]:
            raw[at : at + width] = (1024).to_bytes(width, "little")
    zpath.write_bytes(bytes(raw))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError, match="liar.zip: corrupt or truncated archive"):
        archive.safe_extract(zpath, dest, LIMITS)
    assert _written(dest) <= 1024 and info.file_size == 8 << 20
    # and the real-byte budget stops extraction at the cap whatever the headers say
    monkeypatch.setattr(archive, "_check_declared", lambda *a: None)
    bomb = _zeros_zip(tmp_path / "bomb.zip", 16 << 20, entries=3)
    dest2 = tmp_path / "out2"
    dest2.mkdir()
    with pytest.raises(DataError, match="expands past ingest.archive_max_gib"):
        archive.safe_extract(bomb, dest2, archive.Limits(20 << 20, 1000, max_ratio=float("inf")))
    assert _written(dest2) <= 20 << 20


def test_zip_bomb_under_the_size_cap_is_refused_by_its_ratio_before_writing(tmp_path):
    zpath = tmp_path / "zeros.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cls/ok.png", bytes(range(256)) * 4)  # a normal entry first: nothing of it is written either
    _zeros_zip(tmp_path / "bomb.zip", 32 << 20)
    with zipfile.ZipFile(tmp_path / "bomb.zip") as src, zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr(src.infolist()[0], src.read("cls/0.png"), compress_type=zipfile.ZIP_DEFLATED)
    assert zpath.stat().st_size < 1 << 20  # 32 MiB of zeros, far under the 64 MiB size cap
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError) as e:
        archive.safe_extract(zpath, dest, LIMITS)
    msg = str(e.value)
    assert "entry 'cls/0.png' expands" in msg and "over ingest.archive_max_ratio=200" in msg and "\n" not in msg
    assert _written(dest) == 0 and list(dest.iterdir()) == []
    # the same archive passes with a cap above its ratio (the check is the ratio, not the zeros)
    ok = archive.safe_extract(zpath, tmp_path / "ok", archive.Limits(64 << 20, 1000, max_ratio=1e6))
    assert _written(ok) == (32 << 20) + 1024


def test_tar_gz_bomb_under_the_size_cap_is_refused_by_its_ratio_before_writing(tmp_path):
    import io

    tpath = tmp_path / "zeros.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        info = tarfile.TarInfo("cls/zeros.png")
        info.size = 32 << 20
        tf.addfile(info, io.BufferedReader(io.BytesIO(b"\0" * info.size)))
    assert tpath.stat().st_size < 1 << 20
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError, match=r"the archive expands [\d,]+:1 .* over ingest.archive_max_ratio=200"):
        archive.safe_extract(tpath, dest, LIMITS)
    assert _written(dest) == 0


def test_small_or_ordinary_entries_pass_the_ratio_cap(tmp_path):
    zpath = tmp_path / "small.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("cls/blank.txt", b"\0" * (512 << 10))  # ~1000:1, but under 1 MiB: not ratio-checked
        zf.writestr("cls/noise.bin", np.random.default_rng(0).bytes(2 << 20))  # ~1:1
    out = archive.safe_extract(zpath, tmp_path / "out", LIMITS)
    assert _written(out) == (512 << 10) + (2 << 20)


def test_archive_max_ratio_is_read_from_params():
    ing = config_from_dict({}, ["ingest.archive_max_ratio=50"]).ingest
    assert archive.Limits.from_config(ing).max_ratio == 50.0
    assert archive.Limits.from_config(IngestConfig()).max_ratio == 200.0
    with pytest.raises(ConfigError, match="ingest.archive_max_ratio: expected a float >= 1, got 0.5"):
        config_from_dict({}, ["ingest.archive_max_ratio=0.5"])


def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = {3: 0x0803, 1: 0x0801}[arr.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        for d in arr.shape:
            f.write(struct.pack(">I", d))
        f.write(arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_is_read_from_files_in_its_format(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    ds = read_dataset(DatasetConfig(kind="torchvision", name="MNIST", path=str(tmp_path)), 20, 1, 0)
    assert ds.images.shape == (30, 1, 20, 20)
    assert ds.classes == [str(d) for d in range(10)]
    assert np.bincount(ds.labels).tolist() == [3] * 10


def test_torchvision_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as e:
        read_dataset(DatasetConfig(kind="torchvision", name="MNIST", path=str(tmp_path)), 28, 1, 0)
    assert str(tmp_path) in str(e.value) and "download" in str(e.value)
    with pytest.raises(DataError, match="expected one of MNIST"):
        read_dataset(DatasetConfig(kind="torchvision", name="ImageNet22k", path=str(tmp_path)), 28, 1, 0)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "data", size=(40, 40))
    monkeypatch.setattr(sources, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match="possible decompression bomb"):
        read_dataset(DatasetConfig(kind="image_folder", path=str(root)), 16, 1, 0)


def test_max_per_class_caps_deterministically():
    spec = DatasetConfig(kind="sklearn_digits", max_per_class=7)
    a = read_dataset(spec, 8, 1, 0)
    assert np.bincount(a.labels).tolist() == [7] * 10
    assert np.array_equal(a.images, read_dataset(spec, 8, 1, 0).images)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from /proc")
def test_random_gathers_from_mapped_shards_keep_resident_pages_bounded(tmp_path):
    """Gathering 256 MB at random from 192 MB of shards just written (the page cache holds them in large
    folios, which a fault through the mapping maps whole: 94 MiB for one batch of 768 KiB) adds next to
    nothing to the file-backed resident size: rows are read through the file descriptor."""

    def rss_file_mib() -> float:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssFile:"))
        return int(line.split()[1]) / 1024

    rows, row = 4096, (3, 64, 64)  # 12 KiB a row: 48 MiB a shard
    for i in range(4):
        np.save(tmp_path / f"s{i}.npy", np.full((rows, *row), i, dtype=np.uint8), allow_pickle=False)
    data = ShardedArray([open_npy(tmp_path / f"s{i}.npy") for i in range(4)])
    before = rss_file_mib()
    rng = np.random.default_rng(0)
    peak = 0.0
    for _ in range(340):  # 340 gathers of 64 rows: 255 MiB read, more than the data
        idx = rng.integers(0, len(data), 64)
        got = data.take(idx)
        assert np.array_equal(got[:, 0, 0, 0], idx // rows)
        peak = max(peak, rss_file_mib() - before)
    assert peak < 8, f"{peak:.0f} MiB of mapped pages resident"
    # reads with repeats, unsorted, across shards and in contiguous runs give exactly the rows asked for
    idx = np.array([4095, 4096, 4097, 3, 3, 16383, 0, 1, 2, 8191])
    assert np.array_equal(data.take(idx)[:, 0, 0, 0], idx // rows)
    # a view of a shard (or an unpickled one) has no file to read from: it is read by indexing
    views = ShardedArray([data.parts[0][10:20], pickle.loads(pickle.dumps(data.parts[1]))])
    assert np.array_equal(views.take(np.array([0, 9, 10]))[:, 0, 0, 0], [0, 0, 1])
