"""Datasets: embedded synthetic source and bundled target, folder/archive/s3/torchvision readers, shards."""
