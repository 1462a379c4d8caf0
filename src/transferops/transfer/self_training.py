"""Methods that learn from their own predictions on unlabelled target images.

- ``shot``: source-free adaptation (Liang et al., "Do We Really Need to Access the Source Data?", ICML 2020).
  The source head (hypothesis) is frozen and the backbone is trained on the unlabelled target alone with
  information maximisation (confident individual predictions, diverse over the batch) and self-supervised
  pseudo-labels from class centroids in feature space. It needs the source *model*, never the source data.
- ``fixmatch``: semi-supervised transfer for k > 0 (Sohn et al., NeurIPS 2020): cross-entropy on the labelled
  target images plus, for each unlabelled image whose weakly augmented view is predicted confidently,
  cross-entropy of its strongly augmented view against that prediction.

Every forward pass here sees target images only: BatchNorm statistics are the target's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transferops.config import FixMatchConfig, SHOTConfig
from transferops.data.augment import train_transform
from transferops.data.shards import Split
from transferops.errors import ConfigError
from transferops.models import TransferNet
from transferops.models.inference import predict_features
from transferops.transfer.base import Batch, Strategy, TransferContext, register
from transferops.transfer.domains import classify, labeled_target_term, target_pass
from transferops.transfer.losses import entropy, information_maximisation, nearest_centroid, shot_centroids


class Centroids(nn.Module):
    """SHOT's class centroids and the epoch they were computed for (buffers: saved with the training state,
    so a run resumed mid-epoch labels its batches exactly as the uninterrupted run did)."""

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(num_classes, feature_dim + 1))
        self.register_buffer("valid", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("epoch", torch.tensor(-1))


@register("shot")
class SHOT(Strategy):
    """Source-free adaptation: frozen source head; the backbone minimises the mean prediction entropy, maximises
    the entropy of the mean prediction (``diversity_weight``) and fits the pseudo-labels of the nearest class
    centroid (``pseudo_label_weight``). Centroids are recomputed at every epoch start over the whole unlabelled
    target split: weighted by the predicted probabilities, then refined once with the hard assignments
    (cosine distance on features with a constant 1 appended, as in the paper). With labelled target images
    (k > 0) their cross-entropy is added (``target_weight``)."""

    cfg: SHOTConfig
    streams = ("unlabeled",)
    optional_streams = ("labeled",)
    uses_target_labels = False
    uses_source_data = False

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        if not ctx.same_classes or self.cfg.reinit_head:
            raise ConfigError(
                "finetune.method shot: adapts the source classifier, which needs the source's classes on the target "
                "(map the classes with ingest.class_map) and finetune.shot.reinit_head: false"
            )
        super().prepare(model, ctx)
        model.head.requires_grad_(False)
        self.extra["centroids"] = Centroids(ctx.num_classes, model.feature_dim).to(ctx.device)
        self._device = ctx.device
        self._unlabeled: Split | None = None

    def attach(self, data: dict[str, Split], device: torch.device) -> None:
        self._unlabeled = data["unlabeled"]

    def on_epoch_start(self, model: TransferNet, epoch: int) -> None:
        c = self.extra["centroids"]
        if int(c.epoch) == epoch or self._unlabeled is None:
            return
        feats = torch.from_numpy(predict_features(model, self._unlabeled, device=self._device)).to(self._device)
        with torch.no_grad():
            probs = F.softmax(model.head(feats), 1)
            centroids, valid = shot_centroids(feats, probs)
        c.centroids.copy_(centroids)
        c.valid.copy_(valid)
        c.epoch.fill_(epoch)

    def loss(self, model: TransferNet, batches: dict[str, Batch], progress: float):
        ft, fl = target_pass(model, batches)
        logits = classify(model, ft)
        ent, div = information_maximisation(logits)
        c = self.extra["centroids"]
        pseudo = nearest_centroid(ft.detach().float(), c.centroids, c.valid)
        ce_pseudo = F.cross_entropy(logits, pseudo)
        loss = ent - self.cfg.diversity_weight * div + self.cfg.pseudo_label_weight * ce_pseudo
        logs = {"target_entropy": ent.detach(), "diversity": div.detach(), "ce_pseudo": ce_pseudo.detach()}
        ce_t = labeled_target_term(self.target_ce, model, fl, batches, logs)
        if ce_t is not None:
            loss = loss + self.cfg.target_weight * ce_t
        return loss, logs


@register("fixmatch")
class FixMatch(Strategy):
    """FixMatch on the target: CE on labelled target images (weak view: ``finetune.augment``) + ``unlabeled_weight``
    x CE of the strong view (``strong_augment`` on top of the weak one) of each unlabelled image against the
    weak view's prediction, kept when its confidence is at least ``threshold``. Needs labelled target images
    (k > 0); starts from the source model (its head kept when the classes match)."""

    cfg: FixMatchConfig
    streams = ("labeled", "unlabeled")

    def prepare(self, model: TransferNet, ctx: TransferContext) -> None:
        super().prepare(model, ctx)
        self._seed = ctx.seed

    def strong_view(self, x: torch.Tensor, progress: float) -> torch.Tensor:
        """The strong augmentation of a (weakly augmented) batch, drawn from the run's seed and the step (via
        ``progress``): the same step draws the same view, also after a resume."""
        return train_transform(x, self.cfg.strong_augment, self._seed, 10**9 + round(progress * 1e9))

    def loss(self, model: TransferNet, batches: dict[str, Batch], progress: float):
        (xl, yl), (xu, _) = batches["labeled"], batches["unlabeled"]
        xs = self.strong_view(xu, progress)
        logits = model(torch.cat([xl, xu, xs]))  # one domain: labelled, weak and strong target views together
        ll, lw, ls = logits.split([len(xl), len(xu), len(xs)])
        ce = self.target_ce(ll, yl)
        conf, pseudo = F.softmax(lw.detach().float(), 1).max(1)
        mask = (conf >= self.cfg.threshold).float()
        unlabeled = (F.cross_entropy(ls.float(), pseudo, reduction="none") * mask).mean()
        loss = ce + self.cfg.unlabeled_weight * unlabeled
        return loss, {
            "ce": ce.detach(),
            "unlabeled": unlabeled.detach(),
            "pseudo_label_rate": mask.mean(),
            "target_entropy": entropy(lw.detach()).mean(),
        }
