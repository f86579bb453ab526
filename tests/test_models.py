import importlib
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import ReferenceHead, reference_param_groups
from dino.architectures import ALIASES, NAMES
from dino.config import TrainConfig
from dino.models import (
    ARCHITECTURES,
    FACTORIES,
    BackboneSpec,
    DINOHead,
    MultiCropWrapper,
    VisionTransformer,
    WeightNormLinear,
    build_backbone,
)
from dino.training.optim import param_groups


@pytest.mark.parametrize(
    "size, dims", [("tiny", (192, 12, 3)), ("small", (384, 12, 6)), ("base", (768, 12, 12))]
)
def test_vit_sizes(size, dims):
    """The DeiT / DINO sizes (DINO Table 1)."""
    model = build_backbone(f"vit_{size}", patch_size=16, img_size=32)
    embed_dim, depth, heads = dims
    assert model.embed_dim == embed_dim and len(model.blocks) == depth
    assert model.blocks[0].attn.num_heads == heads
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, embed_dim)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_keeps_its_declared_contract(name):
    """Each registry entry builds with its family's factory, at its declared defaults, into a
    backbone whose features are as wide as declared; only patched ones refuse odd sides."""
    entry = ARCHITECTURES[name]
    assert entry.family in FACTORIES
    depth = 1 if entry.patched else None  # one block is enough to check the contract
    model = build_backbone(name, depth=depth).eval()
    side = entry.image_size // 7  # 32: small, and a multiple of the default patch (16)
    assert model(torch.randn(2, 3, side, side)).shape == (2, entry.embed_dim)
    assert BackboneSpec(name).feature_dim == entry.embed_dim
    if entry.patched:
        assert model.patch_size == entry.patch_size
        assert model.pos_embed.shape[1] == 1 + (entry.image_size // entry.patch_size) ** 2
        with pytest.raises(ValueError, match="multiple of the patch size"):
            model(torch.randn(1, 3, side + 1, side + 1))
    else:
        assert model(torch.randn(2, 3, side + 1, side + 1)).shape == (2, entry.embed_dim)


def test_a_width_override_changes_the_declared_feature_width_of_vits_only():
    assert BackboneSpec("vit_tiny", embed_dim=48).feature_dim == 48
    assert BackboneSpec("resnet18", embed_dim=48).feature_dim == 512


def test_configuration_accepts_exactly_the_registry():
    """``--arch`` is checked against the same registry that builds the backbones."""
    assert ", ".join(NAMES) in TrainConfig.__dataclass_fields__["arch"].metadata["help"]
    for name in [*ARCHITECTURES, *ALIASES, "timm:any_name"]:  # timm's are checked when built
        TrainConfig(arch=name)


@pytest.mark.parametrize("patch", [4, 8, 16, 7])
def test_patch_sizes_and_interpolation(patch):
    model = build_backbone("vit_tiny", patch_size=patch, img_size=patch * 4, depth=2)
    for h, w in [(patch * 4, patch * 4), (patch * 2, patch * 6), (patch * 5, patch * 3)]:
        tokens = model.forward_features(torch.randn(1, 3, h, w))
        assert tokens.shape == (1, 1 + (h // patch) * (w // patch), 192)


def test_reference_parameter_names():
    model = build_backbone("vit_small", depth=1)
    names = set(model.state_dict())
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "blocks.0.norm1.weight",
        "blocks.0.norm1.bias",
        "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias",
        "blocks.0.attn.proj.weight",
        "blocks.0.attn.proj.bias",
        "blocks.0.norm2.weight",
        "blocks.0.norm2.bias",
        "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc1.bias",
        "blocks.0.mlp.fc2.weight",
        "blocks.0.mlp.fc2.bias",
        "norm.weight",
        "norm.bias",
    }
    assert names == expected
    assert model.pos_embed.shape == (1, 197, 384)


def test_vit_outputs_and_attention():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", patch_size=8, img_size=32, depth=3).eval()
    x = torch.randn(2, 3, 32, 48)
    layers = model.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and all(t.shape == (2, 1 + 4 * 6, 192) for t in layers)
    torch.testing.assert_close(layers[-1][:, 0], model(x))
    attn = model.get_last_selfattention(x)
    assert attn.shape == (2, 3, 25, 25)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 3, 25))


@pytest.mark.parametrize("explicit_up_to", [0, 256])  # fused kernel, explicit products
def test_attention_equals_explicit_softmax(monkeypatch, explicit_up_to):
    vit_module = importlib.import_module("dino.models.vit")  # dino.models.vit is also a function

    monkeypatch.setattr(vit_module, "CPU_EXPLICIT_ATTENTION_TOKENS", explicit_up_to)
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", patch_size=8, img_size=16, depth=1)
    attn = model.blocks[0].attn
    x = torch.randn(2, 5, 192)
    weights = attn.attention_map(x)  # (B, heads, N, N)
    v = attn.qkv(x).reshape(2, 5, 3, 3, 64).permute(2, 0, 3, 1, 4)[2]
    explicit = attn.proj((weights @ v).transpose(1, 2).reshape(2, 5, 192))
    torch.testing.assert_close(attn(x), explicit, rtol=1e-4, atol=1e-5)


def test_pos_embed_unchanged_at_training_size_and_bicubic_otherwise():
    model = build_backbone("vit_tiny", patch_size=16, img_size=224, depth=1)
    assert model.interpolate_pos_encoding(224, 224) is model.pos_embed
    assert model.interpolate_pos_encoding(96, 96).shape == (1, 37, 192)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 100, 96))


def reference_pos_encoding(model, height, width):
    """The reference ViT's interpolate_pos_encoding, from its definition: the stored
    embeddings for the training number of patches and a square input in pixels, else a
    bicubic resampling by scale factor (rows (H // p + 0.1) / side, columns likewise)."""
    n, p = model.pos_embed.shape[1] - 1, model.patch_size
    if (height // p) * (width // p) == n and height == width:
        return model.pos_embed
    side = int(math.sqrt(n))
    grid = model.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((height // p + 0.1) / side, (width // p + 0.1) / side)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, model.pos_embed.shape[-1])
    return torch.cat((model.pos_embed[:, :1], grid), dim=1)


def test_evaluation_backbones_drop_partial_patches_as_the_reference():
    torch.manual_seed(0)
    model = build_backbone("vit_tiny", patch_size=16, img_size=64, depth=1).eval()
    x = torch.randn(1, 3, 70, 61)  # 4 x 3 patches and a remainder
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(x)  # training and default: the clear error
    model.crop_remainder = True  # what dino.eval.load_backbone sets
    torch.testing.assert_close(model(x), model(x[..., :64, :48]))
    # The grid of 72 x 64 px is the training 4 x 4, but the input is not square in pixels:
    # like the reference, the embeddings are resampled (by 4.1 / 4), not used as stored.
    for h, w in [(72, 64), (64, 64), (70, 61), (100, 37)]:
        torch.testing.assert_close(
            model.interpolate_pos_encoding(h, w), reference_pos_encoding(model, h, w)
        )
    assert not torch.equal(model.interpolate_pos_encoding(72, 64), model.pos_embed)


def test_drop_path_only_in_training():
    model = build_backbone("vit_tiny", patch_size=8, img_size=16, depth=2, drop_path_rate=0.5)
    x = torch.randn(4, 3, 16, 16)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))


def test_head_structure_and_frozen_magnitude():
    head = DINOHead(32, 100)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert head.mlp[0].out_features == 2048 and head.mlp[4].out_features == 256
    assert head.last_layer.weight_g.shape == (100, 1) and head.last_layer.weight_v.shape == (
        100,
        256,
    )
    assert torch.all(head.last_layer.weight_g == 1) and not head.last_layer.weight_g.requires_grad
    bn = DINOHead(32, 100, use_bn=True)
    assert [type(m).__name__ for m in bn.mlp][:4] == ["Linear", "BatchNorm1d", "GELU", "Linear"]
    assert isinstance(bn.mlp[6], torch.nn.Linear)
    assert DINOHead(32, 100, norm_last_layer=False).last_layer.weight_g.requires_grad
    out = head(torch.randn(4, 32))
    assert out.shape == (4, 100)
    # Unit bottleneck and unit-norm rows bound every logit by 1.
    assert out.abs().max() <= 1 + 1e-5


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated")
def test_weight_norm_linear_matches_torch_weight_norm():
    torch.manual_seed(0)
    ours = WeightNormLinear(8, 5)
    ours.weight_g.data.uniform_(0.5, 2.0)
    ref = torch.nn.utils.weight_norm(torch.nn.Linear(8, 5, bias=False))
    ref.load_state_dict(ours.state_dict())  # same names: weight_g, weight_v
    x = torch.randn(3, 8)
    torch.testing.assert_close(ours(x), ref(x))


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_head_parameter_order_equals_the_reference(norm_last_layer):
    """Optimizer state is stored by position: our head's parameters, and so its optimizer
    groups, come in the order of the reference head, whose last layer is torch's weight_norm
    (weight_g, then weight_v)."""
    ref = ReferenceHead(24, 10, hidden_dim=32, bottleneck=16)
    ref.last_layer.weight_g.requires_grad = not norm_last_layer
    ours = DINOHead(24, 10, norm_last_layer=norm_last_layer, hidden_dim=32, bottleneck_dim=16)
    expected = [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert [n for n, _ in expected[-2:]] == ["last_layer.weight_g", "last_layer.weight_v"]
    assert [(n, tuple(p.shape)) for n, p in ours.named_parameters()] == expected
    for a, b in zip(param_groups(ours), reference_param_groups(ref), strict=True):
        assert [p.shape for p in a["params"]] == [p.shape for p in b["params"]]


def test_multicrop_wrapper_one_pass_per_resolution():
    calls = []

    class Spy(VisionTransformer):
        def forward(self, x):
            calls.append(tuple(x.shape))
            return super().forward(x)

    model = MultiCropWrapper(
        Spy(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2),
        DINOHead(24, 10, hidden_dim=16, bottleneck_dim=8),
    )
    crops = [torch.randn(2, 3, 16, 16)] * 2 + [torch.randn(2, 3, 8, 8)] * 3
    assert model(crops).shape == (10, 10)
    assert calls == [(4, 3, 16, 16), (6, 3, 8, 8)]


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ValueError, match="vit_small.*resnet50"):
        build_backbone("vit_huge")
