import numpy as np

from transferops.data.shards import Split


def random_split(n: int, classes: int, size: int = 12, seed: int = 0) -> Split:
    """Random images whose class shifts the mean brightness: learnable, tiny."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    images = rng.integers(0, 128, (n, 1, size, size)) + (labels * (127 // max(1, classes - 1)))[:, None, None, None]
    return Split(images.astype(np.uint8), labels.astype(np.int64))


def brightness_images(n: int, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, 1, size, size) uint8 images whose class (0, 1, 2) is their brightness band, and the labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    images = rng.integers(0, 60, (n, 1, size, size)) + (labels * 95)[:, None, None, None]
    return images.astype(np.uint8), labels.astype(np.int64)


def brightness_model(size: int = 12, steps: int = 40, seed: int = 0):
    """A smallcnn (width 8, 1 channel, 3 classes) trained in ~1 s to tell the brightness bands apart; eval mode."""
    import torch

    from transferops.models import create_model

    torch.manual_seed(seed)
    model = create_model("smallcnn", 3, in_channels=1, width=8)
    images, labels = brightness_images(96, size, seed)
    x, y = torch.from_numpy(images.astype(np.float32) / 255), torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), 0.01)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()
