"""Vision Transformer as used by DINO (Dosovitskiy et al. 2021, DeiT variant; DINO section 3.2).

Parameter names match the reference implementation (and timm), so published DINO weights
load with ``strict=True``: cls_token, pos_embed, patch_embed.proj, blocks.{i}.norm1,
blocks.{i}.attn.qkv, blocks.{i}.attn.proj, blocks.{i}.norm2, blocks.{i}.mlp.fc1/fc2, norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dino.architectures import BackboneSpec


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero a whole residual branch per sample with probability ``rate``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.rate, self.training)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


# Up to this many tokens a CPU computes attention as explicit products: PyTorch's fused CPU
# kernel is several times slower there, and the (N, N) matrices are still small.
CPU_EXPLICIT_ATTENTION_TOKENS = 256


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x)
        if x.device.type == "cpu" and N <= CPU_EXPLICIT_ATTENTION_TOKENS:
            # Short sequences on a CPU: two batched products beat the fused kernel, 3-6x
            # forward + backward in bf16 (README, "Speed").
            out = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        else:
            # Fused kernel: never materialises the (N, N) attention matrix.
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))

    def attention_map(self, x: Tensor) -> Tensor:
        """Softmax attention weights, shape (B, heads, N, N)."""
        q, k, _ = self._qkv(x)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class VisionTransformer(nn.Module):
    """ViT backbone; ``forward`` returns the final-norm [CLS] token, shape (B, embed_dim).

    Input sides must be multiples of the patch size, unless ``crop_remainder`` is set (the
    evaluation backbones of ``dino.eval.load_backbone``): then, as in the reference ViT, the
    patch embedding drops the last partial row and column of patches, which the reference's
    retrieval protocol (aspect-keeping thumbnails, scaled copies) relies on.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.crop_remainder = False  # True: drop partial patches instead of raising (above)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        # Deeper blocks drop more; computed on the CPU even when built on the meta device.
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def interpolate_pos_encoding(self, height: int, width: int) -> Tensor:
        """Position embeddings for a (height, width) input, shape (1, 1 + N, D).

        Bicubic resampling of the patch grid as in the reference; the +0.1 on the target grid
        keeps ``floor(in * scale)`` from rounding one patch short. As in the reference, the
        stored embeddings are used as they are only for a square input (in pixels) with the
        training number of patches.
        """
        n_train = self.pos_embed.shape[1] - 1
        h0, w0 = height // self.patch_size, width // self.patch_size
        if h0 * w0 == n_train and height == width:
            return self.pos_embed
        side = int(math.sqrt(n_train))
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, D, side, side)
        grid = F.interpolate(
            grid.float(),
            scale_factor=((h0 + 0.1) / side, (w0 + 0.1) / side),
            mode="bicubic",
        ).to(patch_pos.dtype)
        if grid.shape[-2:] != (h0, w0):
            raise RuntimeError(f"position grid {tuple(grid.shape[-2:])} != {(h0, w0)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def prepare_tokens(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) to tokens (B, 1 + N, D) with [CLS] first and positions added."""
        B, _, H, W = x.shape
        if not self.crop_remainder and (H % self.patch_size or W % self.patch_size):
            raise ValueError(f"input {H}x{W} is not a multiple of the patch size {self.patch_size}")
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(B, -1, -1), tokens), dim=1)
        return tokens + self.interpolate_pos_encoding(H, W)

    def forward_features(self, x: Tensor) -> Tensor:
        """Final-norm token sequence, shape (B, 1 + N, D)."""
        x = self.prepare_tokens(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[:, 0]

    def get_intermediate_layers(self, x: Tensor, n: int = 1) -> list[Tensor]:
        """Normalised token sequences of the last ``n`` blocks, each (B, 1 + N, D)."""
        x = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i >= len(self.blocks) - n:
                outputs.append(self.norm(x))
        return outputs

    def get_last_selfattention(self, x: Tensor) -> Tensor:
        """Attention weights of the last block, shape (B, heads, 1 + N, 1 + N)."""
        x = self.prepare_tokens(x)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        assert isinstance(last, Block)
        return last.attn.attention_map(last.norm1(x))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def vit(spec: BackboneSpec, drop_path_rate: float = 0.0) -> VisionTransformer:
    """The ViT ``spec`` describes: its registry entry's size, with the spec's overrides."""
    entry = spec.entry
    if entry.patch_size is None or entry.depth is None or entry.num_heads is None:
        raise ValueError(f"{spec.arch} is not a ViT")
    return VisionTransformer(
        img_size=spec.img_size or entry.image_size,
        patch_size=spec.patch_size or entry.patch_size,
        in_chans=spec.in_chans,
        embed_dim=spec.embed_dim or entry.embed_dim,
        depth=spec.depth or entry.depth,
        num_heads=spec.num_heads or entry.num_heads,
        drop_path_rate=drop_path_rate,
    )
