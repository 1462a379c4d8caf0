"""The one place that reads ``params.yaml``.

The file is parsed into frozen, typed dataclasses; every field has a default and a comment that says what it
does. Unknown keys and wrong types are rejected with a one-line message naming the key, so a typo in a
params file fails at once instead of silently training with a default. ``--set a.b=c`` overrides are parsed
like ``dvc exp run -S``: the value is read as YAML (``2`` is an int, ``0.1`` a float, ``null`` is None).

Nothing here touches the file system except :func:`load_config`, and nothing happens at import.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from transferops.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"


# --------------------------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class BaseConfig:
    """Settings shared by every stage."""

    seed: int = 0
    """Seeds python, numpy and torch; the same seed gives the same metrics on CPU."""
    artifacts_dir: str = "artifacts"
    """Root of every stage's outputs (relative paths are taken from the working directory)."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (Apple GPUs)."""
    num_threads: int = 0
    """torch intra-op threads on CPU; 0 keeps torch's default (one per core)."""
    deterministic: bool = True
    """Ask torch for deterministic kernels (slower on GPU, required for bit-identical resume); false also lets
    cuDNN pick the fastest kernels (``cudnn.benchmark``)."""
    state_uri: str = ""
    """Where resumable training state lives: a local folder or ``s3://bucket/prefix``; empty =
    ``<artifacts_dir>/state``. On Kubeflow, point it at S3 (or a mounted volume) so a retried pod finds the
    state of the pod it replaces: states are keyed by pipeline run and stage."""

    def __post_init__(self) -> None:
        check_value(self.num_threads >= 0, "num_threads", "an int >= 0", self.num_threads)
        check_value(_is_device(self.device), "device", "auto, cpu, cuda, cuda:N or mps", self.device)


DEVICES = ("auto", "cpu", "cuda", "mps")
"""Device names ``base.device`` takes as they are; ``cuda:N`` picks one GPU."""


def _is_device(name: str) -> bool:
    index = name.removeprefix("cuda:")
    return name in DEVICES or (name.startswith("cuda:") and index.isdigit())


@dataclass(frozen=True)
class SplitConfig:
    """How one dataset is cut into splits; every split is stratified by class and seeded."""

    test_fraction: float = 0.3
    """Share of each class held out for the final test."""
    val_per_class: int = 5
    """Images per class kept for model selection (best checkpoint, early stopping)."""
    labels_per_class: int | None = None
    """Labelled training images per class; null = all that remain. The rest becomes the ``unlabeled`` split."""

    def __post_init__(self) -> None:
        check_value(0.0 <= self.test_fraction < 1.0, "test_fraction", "a float in [0, 1)", self.test_fraction)
        check_value(self.val_per_class >= 0, "val_per_class", "an int >= 0", self.val_per_class)
        check_value(
            self.labels_per_class is None or self.labels_per_class >= 0,
            "labels_per_class",
            "null or an int >= 0",
            self.labels_per_class,
        )


DatasetKind = Literal["synthetic_digits", "sklearn_digits", "image_folder", "torchvision"]
TorchvisionName = Literal["", "MNIST", "FashionMNIST", "USPS", "SVHN", "CIFAR10", "CIFAR100"]
"""torchvision datasets ingest can read (``transferops.data.sources`` knows how to build each); empty for the
other kinds."""
AUGMENT_POLICIES = ("none", "affine", "crop_flip", "randaug", "photometric")
"""Augmentation policies (``transferops.data.augment`` implements each); ``train.augment`` joins them with +."""


@dataclass(frozen=True)
class DatasetConfig:
    """Where one domain's images come from."""

    kind: DatasetKind = "synthetic_digits"
    """synthetic_digits (rendered from fonts), sklearn_digits (bundled handwritten digits), image_folder
    (a class-per-sub-folder tree, a .zip/.tar archive of one, or an s3:// prefix), torchvision (a built-in
    dataset by ``name`` under ``path``)."""
    path: str = ""
    """image_folder: folder, archive or s3:// URL. torchvision: the root the dataset was downloaded to."""
    name: TorchvisionName = ""
    """torchvision dataset name: MNIST, FashionMNIST, USPS, SVHN, CIFAR10, CIFAR100."""
    download: bool = False
    """torchvision: download into ``path`` when missing (needs a network)."""
    samples_per_class: int = 600
    """synthetic_digits: images rendered per class. Enough that the source model's own variance does not
    dominate the seed spread of what is transferred (reports/methods-notes.md)."""
    fonts_dir: str = ""
    """synthetic_digits: empty = the faces bundled in matplotlib's pinned wheel plus Pillow's built-in font
    (the same bytes on every machine); a folder = every .ttf/.otf under it instead (machine-dependent)."""
    max_per_class: int = 0
    """Cap on images read per class (0 = no cap); handy to subsample a large dataset."""
    split: SplitConfig = field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        check_value(self.samples_per_class > 0, "samples_per_class", "an int > 0", self.samples_per_class)
        check_value(self.max_per_class >= 0, "max_per_class", "an int >= 0", self.max_per_class)
        needs_path = self.kind in ("image_folder", "torchvision")
        check_value(not needs_path or bool(self.path), "path", f"a path for kind={self.kind}", self.path)
        check_value(self.kind != "torchvision" or bool(self.name), "name", "a torchvision dataset name", self.name)


@dataclass(frozen=True)
class IngestConfig:
    """Reading, validating and sharding the source and target datasets."""

    image_size: int | Literal["auto"] = "auto"
    """Every image is stored at image_size x image_size. auto: the median size of the datasets that have one
    (image folders, torchvision), clipped to 28..256 (store natural images a little larger than
    model.input_size, e.g. 256 for a 224 crop); 28 when only digits are read."""
    channels: int | Literal["auto"] = "auto"
    """1 (grayscale) or 3 (RGB); auto: 3 when either dataset has colour images, else 1."""
    shard_size: int = 4096
    """Images per shard file (few large files keep DVC and S3 fast; shards are written and read streaming,
    so this does not bound memory)."""
    workers: int = 0
    """Processes that decode and resize images; 0 = every CPU this process may use."""
    on_leakage: Literal["fail", "warn"] = "warn"
    """Identical images in the test split and a training split: fail ingest, or warn in the report."""
    min_per_class: int = 1
    """A class with fewer images than this fails ingest (an empty class folder always does)."""
    class_map: dict[str, str] = field(default_factory=dict)
    """Renames target classes onto source classes (e.g. {"zero": "0"}) when their names differ."""
    archive_max_gib: float = 64.0
    """A .zip/.tar dataset whose uncompressed size exceeds this is refused (checked from its header before
    extracting, and against the bytes really written while extracting)."""
    archive_max_entries: int = 5_000_000
    """A .zip/.tar dataset with more entries than this is refused before extracting."""
    archive_max_ratio: float = 200.0
    """A .zip entry (or a whole compressed .tar) that expands more than this many times its compressed size
    is refused before extracting: a decompression bomb can stay under ``archive_max_gib`` and still fill a
    disk. 200 is far above what image datasets reach (JPEG/PNG barely compress; raw bitmaps of photos by
    under 10) and far below deflate's ~1000:1 on zeros. Entries expanding to under 1 MiB are not checked."""
    source: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(split=SplitConfig(test_fraction=0.0, val_per_class=30))
    )
    """The labelled source domain: all of it trains (no test split), a larger val split picks the epoch."""
    target: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(kind="sklearn_digits", split=SplitConfig(labels_per_class=1))
    )
    """The target domain: 1 labelled image per class by default, the low-label regime where transfer matters.
    A partial ``target:`` section keeps these defaults for the keys it leaves out."""

    def __post_init__(self) -> None:
        check_value(
            self.image_size == "auto" or self.image_size >= 8, "image_size", "auto or an int >= 8", self.image_size
        )
        check_value(self.channels in (1, 3, "auto"), "channels", "auto, 1 or 3", self.channels)
        check_value(self.workers >= 0, "workers", "an int >= 0", self.workers)
        check_value(self.shard_size > 0, "shard_size", "an int > 0", self.shard_size)
        check_value(self.archive_max_gib > 0, "archive_max_gib", "a float > 0", self.archive_max_gib)
        check_value(self.archive_max_entries > 0, "archive_max_entries", "an int > 0", self.archive_max_entries)
        check_value(self.archive_max_ratio >= 1, "archive_max_ratio", "a float >= 1", self.archive_max_ratio)


@dataclass(frozen=True)
class ModelConfig:
    """The network: a small CPU-friendly CNN or a torchvision backbone."""

    name: str = "smallcnn"
    """smallcnn, or a torchvision classification model: resnet18, resnet34, resnet50, mobilenet_v3_small, ..."""
    weights: str = "none"
    """Initial weights for pretrain: none, a torchvision enum (ResNet18_Weights.IMAGENET1K_V1, looked up in
    TORCH_HOME) or a local checkpoint path."""
    width: int = 32
    """smallcnn: channels of the first block (doubled per block)."""
    dropout: float = 0.1
    """Dropout before the classifier head."""
    input_size: int = 0
    """Side of the images the network sees; 0 = the stored size (ingest.image_size). Smaller: training crops
    (crop_flip: random-resized crop; other policies: a random crop) and evaluation takes the centre crop."""
    norm: Literal["batch", "group"] = "batch"
    """smallcnn: BatchNorm, or GroupNorm (independent of the batch: small per-GPU batches, exact DDP)."""

    def __post_init__(self) -> None:
        check_value(self.width > 0, "width", "an int > 0", self.width)
        check_value(self.input_size >= 0, "input_size", "an int >= 0", self.input_size)
        check_value(0.0 <= self.dropout < 1.0, "dropout", "a float in [0, 1)", self.dropout)


Optimizer = Literal["adamw", "adam", "sgd"]
"""Optimizers ``transferops.training.loop.OPTIMIZERS`` builds (a test keeps the two lists equal)."""
Scheduler = Literal["cosine", "constant", "step"]
"""Learning-rate schedules ``transferops.training.loop.SCHEDULES`` builds."""


def _check_augment(key: str, value: str) -> None:
    unknown = [p for p in value.split("+") if p not in AUGMENT_POLICIES]
    check_value(not unknown, key, f"policies among {', '.join(AUGMENT_POLICIES)} joined by +", value)


@dataclass(frozen=True)
class TrainConfig:
    """An optimisation budget; shared by pretrain, finetune and the from-scratch baseline."""

    epochs: int = 5
    batch_size: int = 64
    steps_per_epoch: int = 0
    """Optimizer steps per epoch; 0 = one pass over the labelled training split. Set it when that split is
    tiny (few labels per class), otherwise an epoch is a single step."""
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Optimizer = "adamw"
    """adamw, adam or sgd (momentum 0.9, nesterov)."""
    scheduler: Scheduler = "cosine"
    """cosine (with linear warm-up), constant or step."""
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    augment: str = "affine"
    """Augmentation policy on the device: none, affine (rotation/scale/shift/shear), crop_flip (random-resized
    crop + flip, natural images), randaug, photometric (polarity, contrast, colours, blur, noise); join with +
    (e.g. affine+photometric)."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision on CUDA (fp16 adds a gradient scaler); CPU runs stay fp32 unless bf16 is asked."""
    channels_last: bool = False
    """Keep activations in NHWC (faster convolutions with tensor cores)."""
    compile: bool = False
    """torch.compile the backbone (minutes of compilation for a large speed-up on long GPU runs)."""
    log_every_steps: int = 50
    """Read the running loss from the device (a host-device sync) every N steps and at epoch ends."""
    prefetch: int = 2
    """Batches assembled ahead in a background thread (pinned memory on CUDA); 0 = in the loop."""
    sync_bn: bool = False
    """Under data parallelism (torchrun), normalise BatchNorm over the global batch (GPUs only)."""
    select_best: bool = True
    """Keep the weights of the epoch with the best validation score, not the last (pretrain: source val
    accuracy). finetune chooses what is scored with ``finetune.select`` instead."""
    early_stopping_patience: int = 0
    """Stop after this many epochs without validation improvement; 0 = never."""
    checkpoint_every_steps: int = 0
    """Also save the full training state every N steps (it is always saved at epoch ends), so a preempted run
    loses at most N steps; 0 = epoch ends only."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            check_value(getattr(self, key) > 0, key, "an int > 0", getattr(self, key))
        _check_augment("augment", self.augment)
        check_value(self.log_every_steps > 0, "log_every_steps", "an int > 0", self.log_every_steps)
        for key in ("steps_per_epoch", "warmup_steps", "early_stopping_patience", "checkpoint_every_steps", "prefetch"):
            check_value(getattr(self, key) >= 0, key, "an int >= 0", getattr(self, key))
        check_value(self.lr > 0, "lr", "a float > 0", self.lr)
        check_value(self.weight_decay >= 0, "weight_decay", "a float >= 0", self.weight_decay)
        check_value(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "a float in [0, 1)", self.label_smoothing)

    def budget(self, **changes: Any) -> TrainConfig:
        """The training budget alone (a plain :class:`TrainConfig`), with ``changes`` applied."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**values, **changes})


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    """Training on the labelled source domain."""

    augment: str = "affine+photometric"
    """The source model meets targets that look unlike its source (polarity, colour, contrast): photometric
    augmentation on half the source images readies it (``transferops.data.augment``)."""


# ---- transfer methods: one typed sub-section per method; the strategy of the same name reads it
@dataclass(frozen=True)
class MethodConfig:
    """Base of every transfer method's own settings."""

    reinit_head: bool = False
    """Start from a fresh classifier head even when the source and target classes are the same."""


@dataclass(frozen=True)
class LinearProbeConfig(MethodConfig):
    """Feature extraction: the source backbone is frozen and only a new head trains."""

    reinit_head: bool = True
    cache_features: bool = True
    """Run the frozen backbone once over the data and train the head on cached features (no augmentation);
    false: a forward pass through the backbone every step, with augmentation."""


@dataclass(frozen=True)
class FinetuneMethodConfig(MethodConfig):
    """Fine-tuning of the source model: of all of it, or partial (``freeze_stages``, gradual unfreezing)."""

    backbone_lr_mult: float = 0.1
    """Backbone learning rate = lr * backbone_lr_mult (discriminative learning rates)."""
    layer_decay: float = 1.0
    """Layer-wise decay: stage i of n trains at backbone lr * layer_decay^(n-1-i); 1 = the same for all."""
    freeze_stages: int = 0
    """Freeze the first N backbone stages (0 = train everything)."""
    unfreeze_every: int = 0
    """Gradual unfreezing: start with the backbone frozen and unfreeze one more stage, from the top, every N
    epochs (0 = off)."""

    def __post_init__(self) -> None:
        check_value(self.backbone_lr_mult >= 0, "backbone_lr_mult", "a float >= 0", self.backbone_lr_mult)
        check_value(0 < self.layer_decay <= 1, "layer_decay", "a float in (0, 1]", self.layer_decay)
        check_value(self.freeze_stages >= 0, "freeze_stages", "an int >= 0", self.freeze_stages)
        check_value(self.unfreeze_every >= 0, "unfreeze_every", "an int >= 0", self.unfreeze_every)


@dataclass(frozen=True)
class L2SPConfig(MethodConfig):
    """Fine-tuning regularised towards the source weights: alpha/2 ||w - w0||^2 + beta/2 ||w_head||^2."""

    alpha: float = 0.01
    """Strength of the pull of the shared (backbone) weights back to their source values."""
    beta: float = 0.01
    """Plain L2 on the parameters that are new (a fresh head); the source head is treated as shared."""
    backbone_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        for key in ("alpha", "beta", "backbone_lr_mult"):
            check_value(getattr(self, key) >= 0, key, "a float >= 0", getattr(self, key))


@dataclass(frozen=True)
class KDConfig(MethodConfig):
    """Knowledge distillation: CE + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))."""

    alpha: float = 0.5
    temperature: float = 4.0
    teacher: str = ""
    """Teacher checkpoint path; empty = the source model (needs the same classes as the target)."""
    student: str = ""
    """Student architecture (a model name); empty = a copy of the source model fine-tuned as the student."""
    distill_unlabeled: bool = True
    """Also distil on unlabelled target images (the teacher labels them softly)."""

    def __post_init__(self) -> None:
        check_value(self.alpha >= 0, "alpha", "a float >= 0", self.alpha)
        check_value(self.temperature > 0, "temperature", "a float > 0", self.temperature)


@dataclass(frozen=True)
class JointConfig(MethodConfig):
    """One model trained on alpha * L_source + (1 - alpha) * L_target."""

    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_value(0 <= self.alpha <= 1, "alpha", "a float in [0, 1]", self.alpha)


@dataclass(frozen=True)
class AdaptationConfig(MethodConfig):
    """Unsupervised domain adaptation: labelled source + unlabelled target (+ labelled target when k > 0)."""

    trade_off: float = 1.0
    """Weight of the domain-alignment term."""
    target_weight: float = 1.0
    """Weight of the cross-entropy on labelled target images, when there are any."""

    def __post_init__(self) -> None:
        check_value(self.trade_off >= 0, "trade_off", "a float >= 0", self.trade_off)
        check_value(self.target_weight >= 0, "target_weight", "a float >= 0", self.target_weight)


@dataclass(frozen=True)
class DANNConfig(AdaptationConfig):
    """Domain-adversarial training: gradient reversal into a domain discriminator."""

    hidden: int = 1024
    """Width of the discriminator's hidden layers: 1024, as in the DANN paper's Office experiments and
    Transfer-Learning-Library's DANN/CDAN; CDAN inherits it. Wider than 256 paid on the embedded default for
    both methods (reports/methods-notes.md)."""
    schedule_gamma: float = 10.0
    """GRL coefficient lambda(p) = 2 / (1 + exp(-gamma p)) - 1 over training progress p."""
    discriminator_lr_mult: float = 1.0
    discriminator_norm: Literal["none", "batch"] = "none"
    """BatchNorm (``batch``) or none in the discriminator's hidden layers. Its batch mixes both domains, so
    its statistics tell the domains apart on top of the features; without it DANN's training curves rise
    steadily instead of swinging between epochs (reports/methods-notes.md)."""


@dataclass(frozen=True)
class MMDConfig(AdaptationConfig):
    """DAN: multi-kernel maximum mean discrepancy between source and target features."""

    trade_off: float = 2.0
    """Weight of the MMD term (chosen on the embedded default: reports/methods-notes.md)."""
    kernel_multipliers: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    """Gaussian kernel bandwidths as multiples of the batch's mean squared distance."""


@dataclass(frozen=True)
class CoralConfig(AdaptationConfig):
    """Deep CORAL: squared Frobenius distance between source and target feature covariances / (4 d^2)."""

    trade_off: float = 10.0


@dataclass(frozen=True)
class MCCConfig(AdaptationConfig):
    """Minimum class confusion on unlabelled target predictions."""

    trade_off: float = 2.0
    """Weight of the class-confusion term. Not higher: when the source model makes a confident systematic
    mistake (e.g. calls most handwritten 7s 3s), a strong confusion term confirms it instead of correcting it
    (reports/methods-notes.md)."""
    temperature: float = 3.5
    """Softmax temperature of the predictions whose class confusion is minimised (softer than the paper's
    2.5: reports/methods-notes.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_value(self.temperature > 0, "temperature", "a float > 0", self.temperature)


@dataclass(frozen=True)
class CDANConfig(DANNConfig):
    """Conditional adversarial: the discriminator sees the multilinear map of features and predictions."""

    discriminator_norm: Literal["none", "batch"] = "batch"
    """As for DANN, but CDAN's conditioning on predictions keeps ``batch`` steadier across seeds here
    (reports/methods-notes.md)."""
    entropy_conditioning: bool = True
    """CDAN+E: weight each example's domain loss by 1 + exp(-entropy of its prediction) (confident examples,
    whose conditioning is meaningful, count more)."""
    randomized_dim: int = 1024
    """When features x classes exceed 4096, the multilinear map is approximated by a fixed random projection
    to this many dimensions (the paper's randomized multilinear map)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_value(self.randomized_dim > 0, "randomized_dim", "an int > 0", self.randomized_dim)


@dataclass(frozen=True)
class SHOTConfig(MethodConfig):
    """Source-free adaptation: frozen source head, information maximisation and clustering pseudo-labels on
    the unlabelled target. Needs the source model only, never the source data."""

    diversity_weight: float = 1.0
    """Weight of the diversity term -H(mean prediction) of information maximisation (its entropy term has
    weight 1)."""
    pseudo_label_weight: float = 0.3
    """Weight of the cross-entropy on the self-supervised pseudo-labels (nearest class centroid)."""
    target_weight: float = 1.0
    """Weight of the cross-entropy on labelled target images, when there are any."""

    def __post_init__(self) -> None:
        for key in ("diversity_weight", "pseudo_label_weight", "target_weight"):
            check_value(getattr(self, key) >= 0, key, "a float >= 0", getattr(self, key))


@dataclass(frozen=True)
class FixMatchConfig(MethodConfig):
    """Semi-supervised transfer (k > 0): labelled target CE + pseudo-labels from a weakly augmented view,
    kept when confident, trained on a strongly augmented view of the same unlabelled images."""

    threshold: float = 0.8
    """Confidence a weak-view prediction needs to become a pseudo-label. Lower than the paper's 0.95: here the
    first pseudo-labels come from a source model on a shifted target, which is rarely that confident even where
    it is right (reports/methods-notes.md)."""
    unlabeled_weight: float = 1.0
    """Weight (lambda_u) of the pseudo-label loss."""
    strong_augment: str = "randaug+photometric"
    """The strong view: an augmentation policy (``train.augment`` syntax) applied on top of the weak view,
    which is ``finetune.augment``."""

    def __post_init__(self) -> None:
        check_value(0 < self.threshold < 1, "threshold", "a float in (0, 1)", self.threshold)
        check_value(self.unlabeled_weight >= 0, "unlabeled_weight", "a float >= 0", self.unlabeled_weight)
        _check_augment("strong_augment", self.strong_augment)


SELECTION_CRITERIA = ("snd",)
"""Label-free model-selection criteria (``transferops.evaluation.selection.CRITERIA``)."""
ClassBalance = Literal["none", "weighted", "sampler"]
"""How ``finetune.class_balance`` counters an imbalanced labelled target."""
Select = Literal["last", "val", "snd"]
"""What ``finetune.select`` may name: the last epoch, the best target val accuracy, or a label-free criterion."""
MethodName = Literal[
    "cdan", "coral", "dann", "fixmatch", "full_finetune", "joint", "kd", "l2sp", "linear_probe", "mcc", "mmd", "shot"
]
"""Transfer methods: each has a typed sub-section in ``finetune`` and a strategy of the same name in
``transferops.transfer`` (written out here because the strategies import torch and this module; a test keeps
the three lists equal)."""

MethodChoice = Literal[MethodName, "recipe", "auto"]
"""What ``finetune.method`` may name: a method, or a rule that picks one from the data when finetune runs
(``transferops.transfer.choice``): ``recipe`` (FixMatch at k > 0 with unlabelled target images, fine-tuning
without them, SHOT at k = 0) or ``auto`` (a budgeted search over ``finetune.auto.candidates`` on the labelled
val split)."""


@dataclass(frozen=True)
class AutoConfig:
    """``finetune.method: auto``: a small budgeted search, selected on the labelled target val split (k > 0)."""

    candidates: list[str] = field(default_factory=lambda: ["full_finetune", "fixmatch", "l2sp", "mcc"])
    """Methods tried. The recipe's method for the data (FixMatch with an unlabelled pool, else
    ``full_finetune``) is tried first, added if missing: it is the default the others must beat (ties and
    near-ties go to it). A candidate the data rules out (a new class set for a domain-adaptation method, no
    unlabelled images for FixMatch) is skipped and said so."""
    epochs: int = 2
    """Epochs each candidate trains in the search (the finetune budget otherwise); the winner is then trained
    with the full budget."""
    min_margin: float = 0.02
    """A candidate replaces the default only when its val accuracy beats it by more than this: with 5 val
    images per class one image is 2 points on 10 classes, so smaller gaps are selection noise."""

    def __post_init__(self) -> None:
        check_value(len(self.candidates) > 0, "auto.candidates", "a non-empty list of methods", self.candidates)
        unknown = [m for m in self.candidates if m not in typing.get_args(MethodName)]
        check_value(not unknown, "auto.candidates", "methods among " + ", ".join(typing.get_args(MethodName)), unknown)
        check_value(self.epochs > 0, "auto.epochs", "an int > 0", self.epochs)
        check_value(0.0 <= self.min_margin < 1.0, "auto.min_margin", "a float in [0, 1)", self.min_margin)


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Transfer from the source checkpoint to the target domain."""

    epochs: int = 6
    steps_per_epoch: int = 25
    lr: float = 1e-3
    method: MethodChoice = "recipe"
    """The transfer method (its settings are the sub-section of the same name below), or ``recipe`` / ``auto``:
    chosen from the data when finetune runs; lineage, metrics and tags record the method chosen. The default,
    ``recipe``, uses the unlabelled target images a user nearly always has (FixMatch at k > 0; fine-tuning
    when there are none; reports/methods-notes.md)."""
    auto: AutoConfig = field(default_factory=AutoConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    full_finetune: FinetuneMethodConfig = field(default_factory=FinetuneMethodConfig)
    l2sp: L2SPConfig = field(default_factory=L2SPConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    joint: JointConfig = field(default_factory=JointConfig)
    dann: DANNConfig = field(default_factory=DANNConfig)
    mmd: MMDConfig = field(default_factory=MMDConfig)
    coral: CoralConfig = field(default_factory=CoralConfig)
    mcc: MCCConfig = field(default_factory=MCCConfig)
    cdan: CDANConfig = field(default_factory=CDANConfig)
    shot: SHOTConfig = field(default_factory=SHOTConfig)
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    select: Select = "val"
    """Which epoch's weights are kept. ``val``: the best labelled target val accuracy when the target has
    labelled training images; with none (k = 0) no target label may be read, so the last epoch. ``last``: the
    last epoch. ``snd``: the best soft neighbourhood density of the predictions on the unlabelled target
    (Saito et al., 2021): label-free, usable at k = 0."""
    class_balance: ClassBalance = "none"
    """Counter an imbalanced labelled target (real targets are long-tailed). ``weighted``: the labelled target
    cross-entropy weighs class c by n / (K n_c) (scikit-learn's "balanced"); ``sampler``: labelled batches draw
    classes uniformly (:class:`~transferops.data.batches.BalancedBatchStream`); ``none``: neither. The
    from-scratch baseline trains with the same setting, so the gain compares like with like."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_value(self.select_best, "select_best", "true (finetune keeps the epoch that `select` names)", False)

    @property
    def method_config(self) -> MethodConfig:
        """The settings of the selected method (a concrete one: ``recipe``/``auto`` are resolved first)."""
        return self.settings(self.method)

    def settings(self, method: str) -> MethodConfig:
        """The typed settings of ``method``."""
        if method not in typing.get_args(MethodName):
            raise ConfigError(f"finetune.method: {method!r} is chosen when finetune runs, it has no settings")
        return getattr(self, method)


def method_names() -> list[str]:
    """Names of the methods that have a typed sub-section in ``finetune``."""
    hints = typing.get_type_hints(FinetuneConfig)
    return sorted(
        f.name
        for f in dataclasses.fields(FinetuneConfig)
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], MethodConfig)
    )


@dataclass(frozen=True)
class EvaluateConfig:
    """Scoring on the target test split, and the baselines it is compared with."""

    ece_bins: int = 15
    """Equal-width confidence bins of the expected calibration error and the reliability diagram."""
    from_scratch_baseline: bool = True
    """Train the same architecture on the labelled target only, for the finetune budget, learning as pretrain does
    (its learning rate, optimiser, weight decay, label smoothing and augmentation: stages/baseline.py)."""
    source_only_baseline: bool = True
    """Score the source model with its source head (only when both domains share their class names)."""
    tta: Literal["none", "flip", "crops"] = "none"
    """Test-time augmentation of the reported test scores: ``flip`` averages the image and its mirror (wrong for
    digits and text, whose mirror is another shape); ``crops`` averages the centre and four corner crops. Off by
    default: on the embedded digits it did not help (reports/tta.md)."""
    review_per_class: int = 2
    """Right and wrong test images per class shown with their saliency maps in the evaluate run's review panels."""

    def __post_init__(self) -> None:
        check_value(self.ece_bins > 0, "ece_bins", "an int > 0", self.ece_bins)
        check_value(self.review_per_class >= 0, "review_per_class", "an int >= 0", self.review_per_class)


GateMetric = Literal["accuracy", "balanced_accuracy", "macro_f1"]
"""Test-split metrics the promotion gate can compare (``transferops.evaluation.metrics.GATE_METRICS``)."""


@dataclass(frozen=True)
class RegisterConfig:
    """The MLflow model registry and the promotion gate."""

    model_name: str = ""
    """Registered model name; empty: ``transferops-<target dataset>`` (``transferops-digits`` for the embedded
    target). A name stands for one task (class list and input shape): another task is refused under it."""
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    min_accuracy: float = 0.5
    """Absolute floor: a candidate below it is not registered at all (the decision is still logged)."""
    min_delta: float = 0.0
    """Promote when the metric >= the champion's + min_delta, both scored now on the same test split;
    a negative value tolerates a small drop (e.g. -0.01), a positive one demands a real improvement."""
    metric: GateMetric = "accuracy"
    """What the gate compares (and ``min_accuracy`` floors): ``accuracy``; ``balanced_accuracy`` (mean
    per-class recall) or ``macro_f1`` for an imbalanced target, where accuracy rewards the majority class."""
    int8_max_drop: float = 0.01
    """Largest test-accuracy loss (fraction: 0.01 = 1 point) of the INT8 ONNX export against fp32 for it to ship
    with the version; a version whose INT8 export loses more ships fp32 only, and its model card says why."""
    int8_min_agreement: float = 0.99
    """Smallest share of test images on which the INT8 export predicts the fp32 export's class for it to ship: an
    export can keep the accuracy while changing many answers (a weak model's close calls)."""

    def __post_init__(self) -> None:
        check_value(0.0 <= self.min_accuracy <= 1.0, "min_accuracy", "a float in [0, 1]", self.min_accuracy)
        check_value(-1.0 <= self.min_delta <= 1.0, "min_delta", "a float in [-1, 1]", self.min_delta)
        check_value(0.0 <= self.int8_max_drop <= 1.0, "int8_max_drop", "a float in [0, 1]", self.int8_max_drop)
        check_value(
            0.0 <= self.int8_min_agreement <= 1.0, "int8_min_agreement", "a float in [0, 1]", self.int8_min_agreement
        )


@dataclass(frozen=True)
class RankConfig:
    """Transferability ranking of candidate backbones before any fine-tuning (LogME, LEEP, NCE, H-score)."""

    candidates: list[str] = field(default_factory=list)
    """``name`` or ``name@weights``: a torchvision model (weights a torchvision enum read from TORCH_HOME, or
    none) or ``smallcnn``; weights may be a transferops checkpoint path (e.g. artifacts/pretrain/model.pt)."""
    score: Literal["logme", "hscore", "hscore_shrinkage", "leep", "nce", "mean_rank"] = "logme"
    """The score that picks the winner (mean_rank: the consensus of every score a candidate has)."""
    apply: bool = False
    """Use the winner as model.name/model.weights for pretraining (off: rank and report only)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """Whether a (scheduled) pipeline run retrains, decided right after ingest against the current champion."""

    retrain_when: Literal["always", "data_changed", "shifted"] = "always"
    """always; data_changed: only when the target data's version differs from the champion's; shifted: only
    when the new target images differ from the champion's training images (domain-classifier AUC on the
    champion's features at or above ``shift_auc``)."""
    shift_auc: float = 0.75
    """Domain-classifier ROC AUC (0.5 = indistinguishable, 1 = fully separable) from which the target counts as
    shifted."""
    sample: int = 512
    """Target images per side (reference and new) the shift is measured on."""

    def __post_init__(self) -> None:
        check_value(0.5 <= self.shift_auc <= 1.0, "shift_auc", "a float in [0.5, 1]", self.shift_auc)
        check_value(self.sample >= 20, "sample", "an int >= 20", self.sample)


@dataclass(frozen=True)
class MlflowConfig:
    """Experiment tracking."""

    tracking_uri: str = ""
    """Empty: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    experiment: str = "transferops"
    system_metrics: bool = True
    """Record CPU, memory, disk, network (and GPU, when pynvml can read one) as ``system/*`` metrics of the
    training runs (pretrain, finetune), beside their throughput."""
    system_metrics_interval: float = 10.0
    """Seconds between two system-metrics samples."""

    def __post_init__(self) -> None:
        interval = self.system_metrics_interval
        check_value(interval > 0, "system_metrics_interval", "a float > 0", interval)


LOCATION_KEYS = ("artifacts_dir", "state_uri")
"""``base`` keys that say where outputs go, not what they are: not part of a config's identity."""


@dataclass(frozen=True)
class Config:
    """The whole resolved configuration of a pipeline run."""

    base: BaseConfig = field(default_factory=BaseConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what is saved beside checkpoints and logged to MLflow)."""
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Stable short hash of some sections: identifies 'the same config' for resume and lineage.

        Where things are stored (``base.artifacts_dir``, ``base.state_uri``) is left out: the same training in
        another folder (a Kubeflow task's workspace differs on every attempt) is the same training.
        """
        data = {name: dataclasses.asdict(getattr(self, name)) for name in sections}
        for key in LOCATION_KEYS:
            data.get("base", {}).pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------- parsing
def check_value(ok: bool, key: str, expected: str, got: Any) -> None:
    """Refuse a value with the one-line error every section uses (``key: expected ..., got ...``)."""
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) if a != "" else '""' for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str, default: Any = None) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (nested dataclasses included: a partial
    section is merged onto ``default``, the enclosing section's default for it)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping (section), got {value!r}")
        return _build(tp, value, key, default if isinstance(default, tp) else None)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {_coerce(kt, str(k), f"{key}.{k}"): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(it, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # a bug in this module, not in params


def build_section(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Validate a mapping into the dataclass ``cls``; errors name keys under ``prefix``. Adapters use it for
    the params sections they own (``kfp``), so every section is parsed by the same rules."""
    return _build(cls, data, prefix)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _build(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """``cls`` from ``data``; keys not in ``data`` keep their value in ``base`` (the enclosing section's default
    for this one), else the class default. So ``ingest.target: {kind: image_folder, path: x}`` keeps the
    target's own split (1 label per class), not :class:`SplitConfig`'s."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown key {where!r} (expected one of: {', '.join(names)})")
    kwargs = {}
    for f in fields:
        default = getattr(base, f.name) if base is not None else None
        if f.name in data:
            if default is None and dataclasses.is_dataclass(hints[f.name]):
                default = _field_default(f)
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], f"{prefix}.{f.name}" if prefix else f.name, default)
        elif base is not None:
            kwargs[f.name] = default
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # field checks name their key relative to the section: make it absolute
        raise ConfigError(f"{prefix}.{exc}" if prefix else str(exc)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], yaml-parsed value), as ``dvc exp run -S`` reads it."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with every ``a.b=c`` override applied (missing sections are created)."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


OTHER_SECTIONS = {"kfp": "the Kubeflow pipeline (transferops.kubeflow.settings), read when it is compiled"}
"""Sections of params.yaml that adapters own and parse themselves: the core config knows no cluster."""


def config_from_dict(data: dict[str, Any] | None, overrides: list[str] | None = None) -> Config:
    """Build and validate a :class:`Config` from a parsed params mapping plus ``--set`` overrides.

    Sections in :data:`OTHER_SECTIONS` are left to their adapters; an override of one of them cannot take
    effect here and is refused rather than silently ignored.
    """
    overrides = list(overrides or [])
    for text in overrides:
        section = text.split("=", 1)[0].split(".", 1)[0].strip()
        if section in OTHER_SECTIONS:
            raise ConfigError(
                f"--set {text!r}: {section}.* configures {OTHER_SECTIONS[section]}; it cannot take effect here "
                f"(use it with `transferops pipeline compile|submit|schedule|run-local --set`)"
            )
    data = apply_overrides(data or {}, overrides)
    core = {k: v for k, v in data.items() if k not in OTHER_SECTIONS}
    try:
        return _build(Config, core)
    except ConfigError as exc:
        if overrides and _from_overrides(str(exc), overrides):
            raise ConfigError(f"--set: {exc}") from None
        raise


def _from_overrides(message: str, overrides: list[str]) -> bool:
    """Whether a config error is about a key given with ``--set`` (then --set, not the file, is to blame)."""
    keys = [t.split("=", 1)[0].strip() for t in overrides]
    return any(f"'{k}'" in message or message.startswith(f"{k}:") for k in keys)


def read_params(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The parsed params file (the one place YAML is read); errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; expected a params file (e.g. params.yaml)")
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def load_config(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | None = None) -> Config:
    """Read a params file, apply ``--set`` overrides and validate; errors name the file (or ``--set``) and
    the key."""
    data = read_params(path)
    try:
        return config_from_dict(data, overrides)
    except ConfigError as exc:
        if str(exc).startswith("--set"):
            raise
        raise ConfigError(f"{Path(path)}: {exc}") from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (saved beside every checkpoint)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
