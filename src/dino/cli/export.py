"""``dino export``: a backbone from any checkpoint the evaluation commands read, written for
other libraries (the published state-dict layout, safetensors, a Hugging Face ViTModel
folder, ONNX)."""

from __future__ import annotations

import argparse
from typing import Any

from dino.cli.flags import add_backbone_flags

FORMATS = ("backbone", "safetensors", "hf", "onnx")  # dino.export.FORMATS, without torch
HOW_TO_LOAD = {
    "backbone": "a backbone state dict in the published layout (timm vit_*, torch.hub "
    "weights=..., load_state_dict(torch.load(...)))",
    "safetensors": "safetensors.torch.load_file(...), the same keys",
    "hf": "transformers.ViTModel.from_pretrained(..., add_pooling_layer=False); "
    "last_hidden_state[:, 0] is the [CLS] feature",
    "onnx": "onnxruntime.InferenceSession(...): input 'images' (B, 3, H, W), "
    "output 'features' (B, D)",
}


def add(sub: Any) -> None:
    """The ``export`` subcommand of ``sub`` (an argparse subparsers action)."""
    p = sub.add_parser("export", help="write a backbone for timm, transformers, ONNX runtimes")
    add_backbone_flags(p, loader=False, hardware=False)
    p.add_argument(
        "--format",
        default="backbone",
        choices=FORMATS,
        help="backbone: published state-dict layout (.pth); safetensors; hf: a transformers "
        "ViTModel folder; onnx: [CLS] features, any batch and image size",
    )
    p.add_argument("--output", required=True, help="file to write (a folder with --format hf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from dino.eval.load import describe_backbone, load_backbone
    from dino.export import export_backbone
    from dino.progress import log

    model = load_backbone(
        args.checkpoint, args.checkpoint_key, args.arch, args.patch_size, args.trust_checkpoint
    )
    written = export_backbone(model, args.format, args.output)
    log(
        f"{args.checkpoint} [{args.checkpoint_key}]: {describe_backbone(model)} -> "
        f"{', '.join(map(str, written))}; {HOW_TO_LOAD[args.format]}"
    )
