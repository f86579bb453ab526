"""dino export: each format read back by the library it is for gives our [CLS] features.

The runtimes (timm, transformers, safetensors, onnxruntime) come with the ``export`` extra;
each test skips when its package is absent.
"""

import sys

import pytest
import torch

from dino.cli import main
from dino.cli.export import FORMATS as CLI_FORMATS
from dino.export import FORMATS, PortableViT, bicubic_matrix
from dino.models import build_backbone

# A ViT small enough for seconds: 48 dims, 2 blocks, 3 heads, patch 4, trained at 32 px.
TINY = {"embed_dim": 48, "depth": 2, "num_heads": 3, "patch_size": 4}
PUBLISHED_ORDER_HEAD = ["cls_token", "pos_embed", "patch_embed.proj.weight"]
PUBLISHED_ORDER_HEAD += ["patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias"]


def tiny_vit():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", img_size=32, **TINY).eval()
    with torch.no_grad():  # every weight random, so that no mapping hides behind 0 or 1
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return vit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A full checkpoint (our layout) of ``tiny_vit`` and that backbone."""
    vit = tiny_vit()
    path = tmp_path_factory.mktemp("export") / "checkpoint.pth"
    teacher = {f"backbone.{k}": v for k, v in vit.state_dict().items()}
    torch.save({"teacher": teacher, "args": {"arch": "vit_tiny", **TINY}}, path)
    return path, vit


def export(checkpoint, fmt, output):
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--output", str(output)])
        == 0
    )


def images(size, batch=3):
    return torch.randn(batch, 3, *((size, size) if isinstance(size, int) else size))


def test_formats_listed_once():
    assert CLI_FORMATS == FORMATS


def test_backbone_file_is_the_published_layout(checkpoint, tmp_path, capsys):
    path, vit = checkpoint
    export(path, "backbone", tmp_path / "vit.pth")
    assert "-> " in capsys.readouterr().out
    state = torch.load(tmp_path / "vit.pth", weights_only=True)
    assert type(state) is dict and list(state)[:6] == PUBLISHED_ORDER_HEAD
    assert list(state)[-2:] == ["norm.weight", "norm.bias"]
    x = images(32)
    reloaded = build_backbone("vit_tiny", img_size=32, **TINY)
    reloaded.load_state_dict(state, strict=True)
    torch.testing.assert_close(reloaded.eval()(x), vit(x))


def test_timm_reads_the_backbone_file(checkpoint, tmp_path):
    timm = pytest.importorskip("timm")
    path, vit = checkpoint
    export(path, "backbone", tmp_path / "vit.pth")
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=0,
        img_size=32,
        global_pool="token",
        **TINY,
    ).eval()
    model.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=True)
    x = images(32)
    with torch.no_grad():
        ours, features, pooled = vit(x), model.forward_features(x)[:, 0], model(x)
    assert (features - ours).abs().max() < 1e-4 and (pooled - ours).abs().max() < 1e-4


def test_safetensors_holds_the_same_tensors_and_the_architecture(checkpoint, tmp_path):
    st = pytest.importorskip("safetensors")
    path, vit = checkpoint
    export(path, "safetensors", tmp_path / "vit.safetensors")
    loaded = pytest.importorskip("safetensors.torch").load_file(tmp_path / "vit.safetensors")
    for name, value in vit.state_dict().items():
        assert torch.equal(loaded[name], value), name
    with st.safe_open(tmp_path / "vit.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["family"] == "vit" and meta["patch_size"] == "4" and meta["num_heads"] == "3"


def test_transformers_vit_model_gives_our_features(checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    path, vit = checkpoint
    export(path, "hf", tmp_path / "hf")
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    model = transformers.ViTModel.from_pretrained(tmp_path / "hf", add_pooling_layer=False).eval()
    assert model.config.layer_norm_eps == 1e-6 and model.config.intermediate_size == 4 * 48
    x = images(32)
    with torch.no_grad():
        hf = model(pixel_values=x).last_hidden_state[:, 0]  # after HF's final layernorm
    assert (hf - vit(x)).abs().max() < 1e-4


def test_portable_vit_equals_the_model_at_every_size():
    vit = tiny_vit()
    portable = PortableViT(vit)
    with torch.no_grad():
        for size in (32, 48, 24, (24, 40), (36, 20), 72):
            x = images(size, batch=2)
            torch.testing.assert_close(portable(x), vit(x), atol=1e-5, rtol=0)
    # The grid is resampled bicubically even at one patch off the training size.
    same = torch.tensor(True)
    assert torch.equal(bicubic_matrix(8, 8, same), torch.eye(8))
    assert not torch.equal(bicubic_matrix(8, 8, ~same), torch.eye(8))


def test_onnx_runs_at_any_batch_and_image_size(checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path, vit = checkpoint
    export(path, "onnx", tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"))
    assert [i.name for i in session.get_inputs()] == ["images"]
    for size, batch in ((32, 3), (48, 1), ((24, 40), 2)):
        x = images(size, batch)
        (out,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert abs(torch.from_numpy(out) - vit(x)).max() < 1e-4, size


def test_a_missing_package_is_named_with_the_extra(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # import fails
    path, _ = checkpoint
    out = tmp_path / "vit.safetensors"
    assert (
        main(["export", "--checkpoint", str(path), "--format", "safetensors", "--output", str(out)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs the safetensors package; pip install -e '.[export]'")
    assert len(err.splitlines()) == 1 and not out.exists()


def test_resnet_exports_its_state_dict_and_refuses_hf(tmp_path, capsys):
    resnet = build_backbone("resnet18")
    path = tmp_path / "resnet.pth"
    torch.save(resnet.state_dict(), path)
    export(path, "backbone", tmp_path / "out.pth")
    state = torch.load(tmp_path / "out.pth", weights_only=True)
    assert list(state) == list(resnet.state_dict()) and not any(k.startswith("fc.") for k in state)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(path),
                "--format",
                "hf",
                "--output",
                str(tmp_path / "hf"),
            ]
        )
        == 2
    )
    assert "a ViT backbone is needed" in capsys.readouterr().err


@pytest.mark.slow
def test_resnet_onnx_runs_at_any_image_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    resnet = build_backbone("resnet18").eval()
    path = tmp_path / "resnet.pth"
    torch.save(resnet.state_dict(), path)
    export(path, "onnx", tmp_path / "resnet.onnx")
    session = ort.InferenceSession(str(tmp_path / "resnet.onnx"))
    for size in (64, (48, 80)):
        x = images(size, batch=2)
        (out,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert abs(torch.from_numpy(out) - resnet(x)).max() < 1e-4, size
