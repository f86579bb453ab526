"""The DINO projection head and the multi-crop wrapper (DINO section 3.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation: W = g * v / ||v|| per output row.

    Stores ``weight_g`` (out, 1) and ``weight_v`` (out, in), the names of
    ``torch.nn.utils.weight_norm`` that published DINO checkpoints use, registered in its
    order (``weight_g`` first): an optimizer's state is saved by parameter position, so the
    order must equal the reference's for its optimizer state to line up with ours.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        init = nn.Linear(in_dim, out_dim, bias=False).weight.detach()  # PyTorch's default init
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        self.weight_v = nn.Parameter(init.clone())

    @property
    def weight(self) -> Tensor:
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (d -> hidden -> hidden -> bottleneck), L2 normalisation, weight-normed Linear to K.

    Input (B, in_dim), output (B, out_dim) logits. Layer indices in ``mlp`` match the
    reference (Linear at 0 / 2 / 4, or 0 / 3 / 6 with BatchNorm at 1 / 4).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            dims = [in_dim] + [hidden_dim] * (nlayers - 1)
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
                layers.append(nn.Linear(d_in, d_out))
                if use_bn:
                    layers.append(nn.BatchNorm1d(d_out))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        # A frozen magnitude of 1 keeps the logits bounded; it stabilises training (DINO app. D).
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)  # (B, bottleneck)
        return self.last_layer(x)  # (B, K)


class MultiCropWrapper(nn.Module):
    """Backbone + head applied to a list of crops, one backbone pass per crop resolution.

    Crops of the same size must be adjacent in the list (the global crops first). The
    outputs are concatenated crop-major, (sum of batch sizes, K), and the head runs once.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Tensor | Sequence[Tensor]) -> Tensor:
        return self.forward_with_features(crops)[1]

    def forward_with_features(self, crops: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """(backbone features (sum of batch sizes, D), head outputs (sum of batch sizes, K))."""
        if isinstance(crops, Tensor):
            crops = [crops]
        features = torch.cat([self.backbone(group) for group in _group_by_size(crops)])
        return features, self.head(features)


class WithFeatures(nn.Module):
    """``MultiCropWrapper.forward_with_features`` as ``forward``, for the wrappers that only
    call ``forward`` (DistributedDataParallel, torch.compile)."""

    def __init__(self, model: MultiCropWrapper) -> None:
        super().__init__()
        self.model = model

    def forward(self, crops: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_features(crops)


def _group_by_size(crops: Sequence[Tensor]) -> list[Tensor]:
    """Concatenate runs of equally sized crops: [g1, g2, l1, l2] -> [cat(g1, g2), cat(l1, l2)]."""
    groups: list[list[Tensor]] = []
    for crop in crops:
        if groups and groups[-1][0].shape[-2:] == crop.shape[-2:]:
            groups[-1].append(crop)
        else:
            groups.append([crop])
    return [g[0] if len(g) == 1 else torch.cat(g) for g in groups]
