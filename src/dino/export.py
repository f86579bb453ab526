"""A backbone in the files other libraries read: the published state-dict layout, safetensors,
a Hugging Face transformers ``ViTModel`` folder and ONNX.

- ``backbone``: ``torch.save`` of the backbone's state dict, the keys of the published
  ``dino_deitsmall16_pretrain.pth`` (cls_token, pos_embed, patch_embed.proj.*, blocks.*,
  norm.*); timm's ``vit_*`` models and ``torch.hub`` load it strictly.
- ``safetensors``: the same tensors, with the architecture in the file's metadata.
- ``hf``: ``config.json`` + ``model.safetensors`` of a ``ViTModel`` (ViTs only): the fused
  qkv projection is split into query / key / value and every name mapped to HF's.
- ``onnx``: the final-norm [CLS] output (B, D) for images (B, 3, H, W) with dynamic batch,
  height and width; position embeddings are resampled inside the graph exactly as
  ``VisionTransformer.interpolate_pos_encoding`` does (see ``PortableViT``).

The optional packages (safetensors; onnx and onnxscript for ONNX) are imported where used;
``pip install -e '.[export]'`` installs them and the runtimes the tests check against.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from dino.errors import ConfigError
from dino.eval.load import native_image_size
from dino.models import VisionTransformer

FORMATS = ("backbone", "safetensors", "hf", "onnx")
ONNX_OPSET = 18


def export_backbone(model: nn.Module, fmt: str, output: str | Path) -> list[Path]:
    """Write ``model`` (a backbone in eval mode) to ``output`` in format ``fmt``; returns the
    files written (``hf`` writes a folder of two)."""
    writers: dict[str, Callable[[nn.Module, Path], list[Path]]] = {
        "backbone": save_backbone,
        "safetensors": save_safetensors,
        "hf": save_hf,
        "onnx": save_onnx,
    }
    if fmt not in writers:
        raise ConfigError(f"--format: unknown {fmt!r}; valid: {', '.join(FORMATS)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return writers[fmt](model.eval(), output)


def backbone_metadata(model: nn.Module) -> dict[str, str]:
    """What fixes a backbone's shapes, as strings (safetensors metadata holds only strings)."""
    if not isinstance(model, VisionTransformer):
        return {"family": "resnet", "embed_dim": str(model.embed_dim)}
    return {
        "family": "vit",
        "embed_dim": str(model.embed_dim),
        "depth": str(len(model.blocks)),
        "num_heads": str(model.num_heads),
        "patch_size": str(model.patch_size),
        "img_size": str(native_image_size(model)),
    }


def save_backbone(model: nn.Module, path: Path) -> list[Path]:
    torch.save(_plain_state(model), path)
    return [path]


def save_safetensors(model: nn.Module, path: Path) -> list[Path]:
    save_file = _optional("safetensors.torch", "safetensors", "safetensors").save_file
    save_file(_plain_state(model), str(path), metadata={"format": "pt", **backbone_metadata(model)})
    return [path]


def save_hf(model: nn.Module, folder: Path) -> list[Path]:
    """A transformers ``ViTModel`` folder: ``config.json`` and ``model.safetensors``. Load it
    with ``ViTModel.from_pretrained(folder, add_pooling_layer=False)``; its
    ``last_hidden_state[:, 0]`` is our [CLS] output (HF applies the final layernorm)."""
    vit = _require_vit(model, "hf")
    save_file = _optional("safetensors.torch", "safetensors", "hf").save_file
    folder.mkdir(parents=True, exist_ok=True)
    config, weights = folder / "config.json", folder / "model.safetensors"
    config.write_text(json.dumps(hf_config(vit), indent=2) + "\n")
    save_file(hf_state_dict(vit), str(weights), metadata={"format": "pt"})
    return [config, weights]


def hf_config(vit: VisionTransformer) -> dict[str, Any]:
    """The ``ViTConfig`` fields of ``vit``: exact GELU, LayerNorm eps 1e-6, qkv bias, no dropout."""
    return {
        "architectures": ["ViTModel"],
        "model_type": "vit",
        "hidden_size": vit.embed_dim,
        "num_hidden_layers": len(vit.blocks),
        "num_attention_heads": vit.num_heads,
        "intermediate_size": vit.get_parameter("blocks.0.mlp.fc1.weight").shape[0],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": native_image_size(vit),
        "patch_size": vit.patch_size,
        "num_channels": 3,
        "qkv_bias": True,
        "encoder_stride": vit.patch_size,
    }


def hf_state_dict(vit: VisionTransformer) -> dict[str, Tensor]:
    """Our ViT's weights under transformers' ``ViTModel`` names (no pooler)."""
    ours = _plain_state(vit)
    out = {
        "embeddings.cls_token": ours["cls_token"],
        "embeddings.position_embeddings": ours["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": ours["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": ours["patch_embed.proj.bias"],
        "layernorm.weight": ours["norm.weight"],
        "layernorm.bias": ours["norm.bias"],
    }
    renames = {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(len(vit.blocks)):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            # qkv rows are [query; key; value], each (D, ...) with the heads side by side.
            q, k, v = ours[f"{src}attn.qkv.{kind}"].chunk(3, dim=0)
            for name, part in (("query", q), ("key", k), ("value", v)):
                out[f"{dst}attention.attention.{name}.{kind}"] = part.contiguous()
            for a, b in renames.items():
                out[f"{dst}{b}.{kind}"] = ours[f"{src}{a}.{kind}"]
    return out


def save_onnx(model: nn.Module, path: Path) -> list[Path]:
    """ONNX (opset 18) of the backbone's output for images of any batch size and any sides
    (multiples of a ViT's patch size): input ``images`` (B, 3, H, W), output ``features``
    (B, D)."""
    _optional("onnx", "onnx", "onnx")
    _optional("onnxscript", "onnxscript", "onnx")
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ConfigError("--format onnx: needs torch >= 2.5 (torch.onnx.export(dynamo=True))")
    size = native_image_size(model)
    net = PortableViT(model).eval() if isinstance(model, VisionTransformer) else model
    dims = {
        0: torch.export.Dim("batch"),
        2: torch.export.Dim("height"),
        3: torch.export.Dim("width"),
    }
    torch.onnx.export(
        net,
        (torch.zeros(2, 3, size, size),),
        str(path),
        input_names=["images"],
        output_names=["features"],
        dynamic_shapes={_first_argument(net): dims},
        opset_version=ONNX_OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    return [path]


class PortableViT(nn.Module):
    """``VisionTransformer.forward`` with its position-embedding resampling written as two
    matrix products, so that a traced graph (ONNX) holds it for every input size.

    The reference resamples the (side, side) grid bicubically (a = -0.75, half-pixel
    centres) by the factor (h0 + 0.1) / side, and keeps it unchanged when h0 = w0 = side.
    Bicubic resampling is separable: grid' = R_h @ grid @ R_w^T, with R (out, side) built
    from the output size alone (``bicubic_matrix``), so neither branch depends on a Python
    value of the input's shape. Outputs equal the wrapped model's to float rounding.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, images: Tensor) -> Tensor:
        vit = self.vit
        B, _, H, W = images.shape
        h0, w0 = H // vit.patch_size, W // vit.patch_size
        side = math.isqrt(vit.pos_embed.shape[1] - 1)
        native = (torch.scalar_tensor(h0) == side) & (torch.scalar_tensor(w0) == side)
        grid = vit.pos_embed[0, 1:].reshape(side, side, -1).permute(2, 0, 1)  # (D, side, side)
        grid = bicubic_matrix(h0, side, native) @ grid @ bicubic_matrix(w0, side, native).T
        patch_pos = grid.permute(1, 2, 0).reshape(1, -1, grid.shape[0])  # (1, h0 * w0, D)
        tokens = torch.cat((vit.cls_token.expand(B, -1, -1), vit.patch_embed(images)), dim=1)
        x = tokens + torch.cat((vit.pos_embed[:, :1], patch_pos), dim=1)  # (B, 1 + N, D)
        for block in vit.blocks:
            x = block(x)
        return vit.norm(x)[:, 0]


def bicubic_matrix(n_out: int, n_in: int, identity: Tensor) -> Tensor:
    """(n_out, n_in) weights of PyTorch's bicubic resampling (align_corners=False) by the
    factor (n_out + 0.1) / n_in along one axis; the identity where ``identity`` is true."""
    dst = torch.arange(n_out, dtype=torch.float32)
    src = (dst + 0.5) * (n_in / (dst.new_zeros(()) + n_out + 0.1)) - 0.5  # source coordinate
    first = src.floor()
    taps = (first.long().unsqueeze(1) + torch.arange(-1, 3)).clamp(0, n_in - 1)  # (n_out, 4)
    weights = _cubic_weights(src - first)  # (n_out, 4)
    columns = torch.arange(n_in)
    resample = ((taps.unsqueeze(-1) == columns) * weights.unsqueeze(-1)).sum(dim=1)
    same = (dst.long().unsqueeze(1) == columns).float()
    return torch.where(identity, same, resample)


def _cubic_weights(t: Tensor, a: float = -0.75) -> Tensor:
    """Keys' cubic convolution weights of the taps at offsets -1, 0, 1, 2 from floor(x),
    for fractional positions t (n,) -> (n, 4)."""

    def near(x: Tensor) -> Tensor:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack((far(t + 1), near(t), near(1 - t), far(2 - t)), dim=-1)


def _plain_state(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as a plain dict of contiguous tensors that share no storage."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _require_vit(model: nn.Module, fmt: str) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"--format {fmt}: a ViT backbone is needed, this is a ResNet")
    return model


def _first_argument(net: nn.Module) -> str:
    return next(iter(inspect.signature(net.forward).parameters))


def _optional(module: str, package: str, fmt: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--format {fmt}: needs the {package} package; pip install -e '.[export]'"
        ) from None
