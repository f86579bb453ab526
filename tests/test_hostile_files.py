"""Hostile and careless files end in one line or are handled (issue 19, items 5, 6 and 9):
weights-only checkpoints that would allocate terabytes, hold NaN or are malformed; output
paths that would overwrite, misalign or fail after the work; ground-truth files that are
malformed; a disk that fills during a checkpoint save.

The inputs are generated, from seeded random choices where there are many. Cases that
would allocate without the checks run in a subprocess under an address-space limit, so
that a regression fails fast instead of swapping.
"""

import csv
import json
import os
import pickle
import random
import re
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino.cli import main
from dino.errors import CheckpointError, DataError
from dino.eval.load import load_backbone
from dino.eval.retrieval import NameIndex, read_ground_truth, read_revisited
from dino.models import build_backbone

WIDTH = 64  # a 64-wide ViT needs no recorded heads (64-dim heads, as DINO's)
FAST = ["--device", "cpu", "--precision", "fp32", "--num_workers", "0"]


def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", 8, img_size=32, depth=2, embed_dim=WIDTH, num_heads=1)
    return vit.state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A tiny backbone file and a folder of 4 images of distinct colours."""
    root = tmp_path_factory.mktemp("hostile")
    torch.save(tiny_state(), root / "ok.pth")
    for i in range(4):
        (root / "imgs").mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), (60 * i, 200 - 40 * i, 30)).save(root / "imgs" / f"{i}.png")
    return root


def dino(capsys, *args) -> tuple[int, str]:
    """``dino ARGS`` in this process: (exit code, stderr)."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dino: error: "), err
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------- checkpoints (item 5)


def expanded(*shape: int) -> torch.Tensor:
    """A tensor of ``shape`` that stores one number: a few bytes in a file, any size loaded."""
    return torch.zeros(1).expand(*shape)


def without_blocks(state, *blocks):
    return {
        k: v for k, v in state.items() if not k.startswith(tuple(f"blocks.{b}." for b in blocks))
    }


def with_nan(state, key, value=float("nan")):
    state = {k: v.clone() for k, v in state.items()}
    state[key].view(-1)[0] = value
    return state


# (id, the file's content made from a valid state dict, what the one-line error says)
HOSTILE = [
    ("string_tensor", lambda s: {**s, "cls_token": "x"}, r"'cls_token' is of type str, not"),
    ("none_tensor", lambda s: {**s, "norm.weight": None}, r"'norm.weight' is of type NoneType"),
    ("int_key", lambda s: {**s, 0: torch.ones(1)}, r"has a key 0, not a name"),
    ("sparse", lambda s: {**s, "norm.bias": s["norm.bias"].to_sparse()}, "only dense tensors"),
    ("meta", lambda s: {**s, "norm.bias": torch.empty(WIDTH, device="meta")}, "only dense"),
    ("list_args", lambda s: {"teacher": s, "args": ["vit_small"]}, "its args is a list"),
    ("list_arch", lambda s: {"teacher": s, "args": {"arch": ["vit_small"]}}, r"args arch is \["),
    ("str_patch", lambda s: {"teacher": s, "args": {"patch_size": "8"}}, "args patch_size is '8'"),
    ("bool_heads", lambda s: {"teacher": s, "args": {"num_heads": True}}, "args num_heads is True"),
    ("heads_5", lambda s: {"teacher": s, "args": {"num_heads": 5}}, "which num_heads 5 does not"),
    ("zero_dim_cls", lambda s: {**s, "cls_token": torch.tensor(1.0)}, r"cls_token has shape \(\)"),
    ("no_width", lambda s: {**s, "cls_token": torch.zeros(1, 1, 0)}, "embed_dim 0, less than 1"),
    ("no_blocks", lambda s: without_blocks(s, 0, 1), "a ViT without blocks"),
    ("block_0_gone", lambda s: without_blocks(s, 0), r"missing keys: blocks\.0\."),
    ("flat_pos", lambda s: {**s, "pos_embed": torch.zeros(17, WIDTH)}, "pos_embed has shape"),
    ("not_square", lambda s: {**s, "pos_embed": torch.zeros(1, 18, WIDTH)}, "not a square grid"),
    ("patch_100", lambda s: {**s, "patch_embed.proj.weight": expanded(WIDTH, 3, 100, 100)},
     "patch_size 100, more than the 64"),
    ("chans_5000", lambda s: {**s, "patch_embed.proj.weight": expanded(WIDTH, 5000, 8, 8)},
     "in_chans 5000, more than the 1024"),
    ("grid_1000", lambda s: {**s, "pos_embed": expanded(1, 1 + 1000**2, WIDTH)},
     "grid 1000, more than the 512"),
    ("nan_weight", lambda s: with_nan(s, "blocks.0.attn.qkv.weight"),
     r"blocks\.0\.attn\.qkv\.weight holds 1 NaN or infinite values"),
    ("inf_norm", lambda s: with_nan(s, "norm.weight", float("inf")), r"norm\.weight holds 1 NaN"),
    ("a_list", lambda s: [s], "expected a state dict or a checkpoint mapping, got list"),
    ("a_tensor", lambda s: torch.ones(3), "got Tensor"),
]  # fmt: skip


@pytest.mark.parametrize("make, message", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_checkpoint_is_refused_naming_the_file(tmp_path, make, message):
    path = tmp_path / "hostile.pth"
    torch.save(make(tiny_state()), path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message) as e:
        load_backbone(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert time.perf_counter() - start < 5


def test_hostile_checkpoint_on_the_command_line(files, capsys):
    path = files / "nan.pth"
    torch.save(with_nan(tiny_state(), "blocks.1.mlp.fc2.weight"), path)
    code, err = dino(capsys, "embed", "--checkpoint", path, "--data_path", files / "imgs",
                     "--output", files / "nan.npy", *FAST)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and f"{path}: blocks.1.mlp.fc2.weight holds 1 NaN" in line
    assert not (files / "nan.npy").exists()


def test_corrupted_bytes_load_or_end_in_one_line(files):
    """Seeded byte flips and truncations of a valid file, and flips inside its pickle (the
    zip archive rebuilt around it, so that the unpickler meets them)."""
    data = (files / "ok.pth").read_bytes()
    with zipfile.ZipFile(files / "ok.pth") as z:
        entries = {n: z.read(n) for n in z.namelist()}
    pkl = next(n for n in entries if n.endswith("data.pkl"))
    rng = random.Random(19)
    refused = 0
    for i in range(90):
        path = files / f"corrupt{i}.pth"
        if i % 3 == 0:  # flips anywhere
            b = bytearray(data)
            for _ in range(rng.randint(1, 20)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            path.write_bytes(bytes(b))
        elif i % 3 == 1:
            path.write_bytes(data[: rng.randrange(len(data))])
        else:
            b = bytearray(entries[pkl])
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
                for name, content in entries.items():
                    z.writestr(name, bytes(b) if name == pkl else content)
        try:
            load_backbone(path)
        except CheckpointError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            refused += 1
        path.unlink()
    assert refused >= 30  # every truncation at least


@pytest.mark.parametrize(
    "content, message",
    [
        (
            {"linear.weight": expanded(10**6, 10**6), "linear.bias": expanded(10**6)},
            r"needs 3725\.3 GiB, more than",
        ),
        (
            {"linear.weight": torch.full((3, 8), float("nan")), "linear.bias": torch.zeros(3)},
            "linear.weight holds 24 NaN",
        ),
        ({"linear.weight": torch.zeros(3, 8), "linear.bias": "0"}, "'linear.bias' is of type str"),
    ],
    ids=["four_terabytes", "nan", "string"],
)
def test_hostile_linear_heads(tmp_path, content, message):
    from dino.eval.linear import load_linear_head

    torch.save({"state_dict": content}, tmp_path / "head.pth")
    with pytest.raises(CheckpointError, match=message) as e:
        load_linear_head(tmp_path / "head.pth")
    assert str(e.value).startswith(str(tmp_path / "head.pth"))


def test_hostile_files_where_a_command_resumes_or_reads_features(files, tmp_path, capsys):
    """A linear.pth in --output_dir that is not a probe; a feature dump holding NaN."""
    (tmp_path / "lin").mkdir()
    torch.save({"epoch": 3}, tmp_path / "lin" / "linear.pth")
    imgs = tmp_path / "labelled"
    for c in range(2):
        (imgs / f"c{c}").mkdir(parents=True)
        Image.new("RGB", (32, 32), (200 * c, 0, 0)).save(imgs / f"c{c}" / "0.png")
    code, err = dino(capsys, "linear", "--checkpoint", files / "ok.pth", "--train_path", imgs,
                     "--val_path", imgs, "--output_dir", tmp_path / "lin", *FAST)  # fmt: skip
    assert code == 2 and "linear.pth: not a linear probe written by dino linear" in err
    one_error_line(err)
    dump = tmp_path / "dump"
    dump.mkdir()
    for split in ("train", "test"):
        torch.save(torch.full((4, 8), float("nan")), dump / f"{split}feat.pth")
        torch.save(torch.zeros(4, dtype=torch.long), dump / f"{split}labels.pth")
    code, err = dino(capsys, "knn", "--load_features", dump, "--nb_knn", 1)
    assert code == 2 and "trainfeat.pth holds 32 NaN or infinite values" in one_error_line(err)


def run_limited(script: str, *args: str, address_space: int = 6 << 30, timeout: float = 120):
    """``python -c script args`` under an address-space limit (RLIMIT_AS): an allocation
    beyond it fails at once instead of swapping."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


EMBED_EACH = """
import sys
from dino.cli import main
data, out = sys.argv[1], sys.argv[2]
for path in sys.argv[3:]:
    code = main(["embed", "--checkpoint", path, "--data_path", data, "--output", out,
                 "--device", "cpu", "--num_workers", "0"])
    print(path, code, flush=True)
"""


def test_files_that_ask_for_terabytes_are_refused_before_allocating(files):
    """A 460 KB file with a blocks.999999.* key (a million blocks), a 200,000-wide cls_token
    (480 GB of qkv), a position grid of a million patches, and a whole 8192-wide, 64-block
    ViT stored as broadcast views (a few KB on disk, 192 GiB built)."""
    state = tiny_state()
    made = {
        "million_blocks": {**state, "blocks.999999.norm1.weight": torch.ones(WIDTH)},
        "wide_cls_token": {**state, "cls_token": torch.zeros(1, 1, 200_000)},
        "huge_grid": {**state, "pos_embed": expanded(1, 1 + 600**2, WIDTH)},
    }
    with torch.device("meta"):
        big = build_backbone("vit_base", 16, img_size=224, depth=64, embed_dim=8192, num_heads=128)
    made["broadcast_giant"] = {
        "teacher": {k: expanded(*v.shape) for k, v in big.state_dict().items()},
        "args": {"num_heads": 128},
    }
    paths = []
    for name, content in made.items():
        torch.save(content, files / f"{name}.pth")
        paths.append(str(files / f"{name}.pth"))
    assert (files / "million_blocks.pth").stat().st_size < 500_000
    start = time.perf_counter()
    out = run_limited(EMBED_EACH, str(files / "imgs"), str(files / "big.npy"), *paths)
    assert time.perf_counter() - start < 60
    assert [line.split()[-1] for line in out.stdout.splitlines()] == ["2"] * 4, out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 4 and "Traceback" not in out.stderr, out.stderr
    assert "million_blocks.pth: refused" in errors[0] and "depth 1000000, more than" in errors[0]
    assert "wide_cls_token.pth: refused" in errors[1] and "embed_dim 200000" in errors[1]
    assert "huge_grid.pth: refused" in errors[2] and "grid 600, more than the 512" in errors[2]
    assert re.search(r"broadcast_giant.pth: its .* needs 192\.\d GiB, more than", errors[3])


def test_nan_features_from_finite_weights_name_the_image(files, capsys):
    """Weights that are finite but overflow: the final norm's scale at 3e38."""
    state = tiny_state()
    state["norm.weight"] = torch.full((WIDTH,), 3e38)
    torch.save(state, files / "overflow.pth")
    code, err = dino(capsys, "embed", "--checkpoint", files / "overflow.pth", "--data_path",
                     files / "imgs", "--output", files / "overflow.npy", *FAST)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and "0.png: the backbone's features are NaN or infinite" in line
    assert not (files / "overflow.npy").exists()


# ---------------------------------------------------------------- outputs (item 6)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_embed_never_writes_a_file_it_was_not_named(files, tmp_path, capsys):
    """Generated --output paths: each run writes exactly FILE.npy and FILE.jsonl, or ends in
    one line having written nothing."""
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "thesis.txt").write_text("chapter 1\n")
    (tmp_path / "emb.txt").write_text("unrelated\n")
    (tmp_path / "a_folder.npy").mkdir()
    (tmp_path / "blocker").write_text("a file")
    cases = {  # --output: the files it may write (relative to tmp_path), or the error
        "notes": "--output: expected a FILE.npy name",
        "thesis.txt": "--output: expected a FILE.npy name",
        "a_folder.npy": "is a folder",
        "blocker/e.npy": "blocker is a file, not a folder",
        "blocker/sub/e.npy": "blocker is a file, not a folder",
        str(files / "ok.pth"): "expected a FILE.npy name",
        "emb.npy": ["emb.npy", "emb.jsonl"],
        "new/deeper/e.npy": ["new/deeper/e.npy", "new/deeper/e.jsonl"],
        "line\nbreak.npy": ["line\nbreak.npy", "line\nbreak.jsonl"],
        os.fsdecode(b"caf\xe9.npy"): [os.fsdecode(b"caf\xe9.npy"), os.fsdecode(b"caf\xe9.jsonl")],
    }
    for output, expected in cases.items():
        before = snapshot(tmp_path)
        code, err = dino(capsys, "embed", "--checkpoint", files / "ok.pth", "--data_path",
                         files / "imgs", "--output", tmp_path / output, *FAST)  # fmt: skip
        after = snapshot(tmp_path)
        changed = sorted(k for k in after if before.get(k) != after[k])
        assert not [k for k in before if k not in after], output
        if isinstance(expected, str):
            assert code == 2 and expected in one_error_line(err), (output, err)
            assert changed == [], output
        else:
            assert code == 0, (output, err)
            assert changed == sorted(expected), output


def write_odd_names(folder: Path) -> list[str]:
    """Images whose names break a one-name-a-line list, are not UTF-8, or start a formula."""
    names = [b"a\nb.png", b"x\xe2\x80\xa8y.png", b"\xff\xfe.png", b"=HYPERLINK(1).png",
             b"@SUM.png", b"+1.png", b"-x.png", b"plain.png"]  # fmt: skip
    folder.mkdir(parents=True)
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (30 * i, 100, 255 - 30 * i)).save(
            os.path.join(os.fsencode(folder), name), format="PNG"
        )
    return sorted(os.fsdecode(n) for n in names)


def test_odd_file_names_stay_on_their_row(files, tmp_path, capsys):
    from dino.eval.embed import read_embeddings

    expected = write_odd_names(tmp_path / "odd")
    code, err = dino(capsys, "embed", "--checkpoint", files / "ok.pth", "--data_path",
                     tmp_path / "odd", "--output", tmp_path / "e.npy", *FAST)  # fmt: skip
    assert code == 0, err
    x, names = read_embeddings(tmp_path / "e.npy")
    assert len(names) == x.shape[0] == 8 and sorted(names) == expected
    for name, row in zip(names, x, strict=True):  # each row is its own image's features
        alone = tmp_path / "alone"
        alone.mkdir()
        os.link(os.path.join(os.fsencode(tmp_path / "odd"), os.fsencode(name)),
                os.path.join(os.fsencode(alone), b"only.png"))  # fmt: skip
        assert main(["embed", "--checkpoint", str(files / "ok.pth"), "--data_path", str(alone),
                     "--output", str(tmp_path / "one.npy"), *FAST]) == 0  # fmt: skip
        np.testing.assert_allclose(np.load(tmp_path / "one.npy")[0], row, rtol=1e-5, atol=1e-6)
        (alone / "only.png").unlink()
        alone.rmdir()


def test_rankings_csv_is_one_record_a_row_and_safe_in_a_spreadsheet(files, tmp_path, capsys):
    from dino.cli.outputs import csv_cell

    names = write_odd_names(tmp_path / "odd")
    out = tmp_path / "ranking.csv"
    code, err = dino(capsys, "retrieve", "--checkpoint", files / "ok.pth", "--query_path",
                     tmp_path / "odd", "--database_path", tmp_path / "odd", "--output", out,
                     "--top", 2, *FAST)  # fmt: skip
    assert code == 0, err
    rows = list(csv.reader(out.open(encoding="utf-8", newline="")))
    assert rows[0] == ["query", "rank", "item", "similarity"] and len(rows) == 1 + 8 * 2
    cells = {c for r in rows[1:] for c in (r[0], r[2])}
    assert "a\nb.png" in cells and "x\u2028y.png" in cells and "\\xff\\xfe.png" in cells
    for formula in ("=HYPERLINK(1).png", "@SUM.png", "+1.png", "-x.png"):
        assert "'" + formula in cells and formula not in cells
    assert all(float(r[3]) <= 1.0001 for r in rows[1:])  # numbers, negative ones too, as they are
    pairs = tmp_path / "pairs.csv"  # near-duplicate pairs: their CSV, and their names printed
    code, err = dino(capsys, "copydetect", "--checkpoint", files / "ok.pth", "--data_path",
                     tmp_path / "odd", "--pairs", "--threshold", -1, "--output", pairs,
                     *FAST)  # fmt: skip
    assert code == 0, err
    rows = list(csv.reader(pairs.open(encoding="utf-8", newline="")))
    assert len(rows) > 1 and not {c for r in rows for c in r[:2]} & {
        "=HYPERLINK(1).png",
        "@SUM.png",
    }
    assert {c for r in rows[1:] for c in r[:2]} <= {csv_cell(n) for n in names}


def test_an_error_is_one_line_whatever_the_file_name(tmp_path, capsys):
    path = tmp_path / "line\nbreak\u2028and \udcff.pth"
    code, err = dino(capsys, "embed", "--checkpoint", path, "--data_path", tmp_path,
                     "--output", tmp_path / "e.npy")  # fmt: skip
    assert code == 2 and "line\\nbreak\\u2028and \\udcff.pth: no such" in one_error_line(err)


def test_csv_cells():
    from dino.cli.outputs import csv_cell

    quoted = {"=1+1": "'=1+1", "+A1": "'+A1", "-A1": "'-A1", "@x": "'@x", "\tx": "'\tx",
              "\rx": "'\rx", "-0.25": "-0.25", "+3": "+3", "a=b": "a=b",
              "caf\udce9": "caf\\xe9"}  # fmt: skip
    assert {k: csv_cell(k) for k in quoted} == quoted
    assert csv_cell(3) == 3


def blocked(tmp_path: Path) -> Path:
    (tmp_path / "blocker").write_text("a file where a folder should be")
    return tmp_path / "blocker"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command starts its work (loads a backbone, draws demo images)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the command started working before checking its outputs")

    monkeypatch.setattr("dino.cli.backbone.open_backbone", forbidden)
    monkeypatch.setattr("dino.data.demo.demo_splits", forbidden)
    monkeypatch.setattr("dino.data.video_demo.demo_videos", forbidden)


def test_unwritable_outputs_are_said_before_any_work(files, tmp_path, capsys, no_work):
    bad = blocked(tmp_path)
    ckpt = ["--checkpoint", files / "ok.pth", *FAST]
    imgs = files / "imgs"
    commands = [
        ("embed", *ckpt, "--data_path", imgs, "--output", bad / "e.npy"),
        ("retrieve", *ckpt, "--query_path", imgs, "--database_path", imgs,
         "--output", bad / "r.csv"),
        ("retrieve", *ckpt, "--query_path", imgs, "--database_path", imgs,
         "--dump_features", bad / "d"),
        ("copydetect", *ckpt, "--data_path", imgs, "--pairs", "--output", bad / "p.csv"),
        ("copydetect", *ckpt, "--data_path", imgs, "--pairs", "--dump_features", bad),
        ("knn", *ckpt, "--train_path", imgs, "--val_path", imgs, "--dump_features", bad / "d"),
        ("linear", *ckpt, "--train_path", imgs, "--val_path", imgs, "--output_dir", bad / "lin"),
        ("attention", "--checkpoint", files / "ok.pth", "--image", imgs / "0.png",
         "--output_dir", bad / "att"),
        ("attention", "--checkpoint", files / "ok.pth", "--video", imgs, "--output_dir", bad),
        ("demo-data", bad / "demo", "--n_train", 4, "--n_val", 4),
        ("demo-data", bad, "--video"),
    ]  # fmt: skip
    for argv in commands:
        code, err = dino(capsys, *argv)
        line = one_error_line(err)
        assert code == 2 and "blocker is a file, not a folder" in line, (argv, line)


def test_an_output_that_is_an_input_is_refused(files, tmp_path, capsys, no_work):
    truth = tmp_path / "gt.csv"
    truth.write_text("0.png,1.png\n")
    imgs = files / "imgs"
    code, err = dino(capsys, "retrieve", "--checkpoint", files / "ok.pth", "--query_path", imgs,
                     "--database_path", imgs, "--ground_truth", truth,
                     "--output", truth)  # fmt: skip
    assert code == 2 and "is the --ground_truth file" in one_error_line(err)
    assert truth.read_text() == "0.png,1.png\n"


def test_stores_keep_odd_names_aligned_and_read_old_stores(tmp_path):
    from dino.eval.store import extract_to_store, open_store

    names = ["a\nb", "x\u2028y", os.fsdecode(b"\xff"), "plain"]
    images = torch.utils.data.TensorDataset(torch.randn(4, 2), torch.arange(4))
    stored, _ = extract_to_store(torch.nn.Identity(), images, tmp_path / "s", names, {})
    assert stored.names == names and np.asarray(stored.blocks[0]).shape == (4, 2)
    (tmp_path / "s" / "names.jsonl").unlink()  # a store written before names.jsonl
    (tmp_path / "s" / "names.txt").write_text("a\nb\nc\nd\n")
    assert open_store(tmp_path / "s").names == ["a", "b", "c", "d"]


def _meta(**changes) -> str:
    meta = {"format": 2, "count": 4, "shard_size": 10000, "classes": []}
    return json.dumps({**meta, **changes})


# file of the store, what it is made to hold, what the refusal says
STORE_DAMAGE = {
    "store.json not JSON": ("store.json", "{", "store.json: not readable as JSON"),
    "store.json a list": ("store.json", "[]", "store.json: not a feature store"),
    "shard_size 0": ("store.json", _meta(shard_size=0), "store.json: not a feature store"),
    "count a string": ("store.json", _meta(count="ten"), "store.json: not a feature store"),
    "classes not names": ("store.json", _meta(classes=[1, 2]), "store.json: not a feature store"),
    "a name not a string": ("names.jsonl", "1\n2\n3\n4\n", "expected one JSON string a line"),
    "features garbage": ("features-00000.npy", b"\x93NUMPY junk", "shard 0 is not readable"),
    "features of objects": ("features-00000.npy", np.array([{}] * 4), "shard 0 is not readable"),
    "features 1-D": ("features-00000.npy", np.zeros(4, np.float32), "expected (N, D) floats"),
    "items misshaped": ("items-00000.npy", np.zeros((3, 2), np.int64), "expected (4, 2) integers"),
    "items beyond the names": ("items-00000.npy", np.full((4, 2), 9), "items beyond the 4 names"),
}


@pytest.mark.parametrize("damage", list(STORE_DAMAGE))
def test_a_damaged_feature_store_is_refused_naming_the_file(tmp_path, capsys, damage):
    from dino.eval.store import extract_to_store, open_store

    images = torch.utils.data.TensorDataset(torch.randn(4, 2), torch.arange(4) % 2)
    for split in ("train", "test"):
        extract_to_store(torch.nn.Identity(), images, tmp_path / split, list("abcd"), {})
    name, content, message = STORE_DAMAGE[damage]
    path = tmp_path / "train" / name
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=True)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=re.escape(message)) as e:
        open_store(tmp_path / "train")
    assert str(tmp_path / "train") in str(e.value)
    code, err = dino(capsys, "knn", "--load_features", tmp_path, "--nb_knn", 1)
    assert code == 2 and message in one_error_line(err)


# ---------------------------------------------------------------- ground truth (item 9)


def revisited(**gnd_changes) -> dict:
    gnd = {"easy": np.array([0]), "hard": [2], "junk": [1], "bbx": np.array([2.0, 4.0, 10.0, 12.0])}
    return {"imlist": ["im_a", "im_b", "im_c"], "qimlist": ["q"], "gnd": [{**gnd, **gnd_changes}]}


def nested_list_pickle(depth: int) -> bytes:
    """A pickle of a list nested ``depth`` deep, built with the stack (pickle.dumps recurses)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


BAD_REVISITED = [
    ("inverted_box", revisited(bbx=[10.0, 12.0, 2.0, 4.0]),
     r"gnd\[0\]\['bbx'\]: \(10.0, 12.0, 2.0, 4.0\) is not a box"),
    ("nan_box", revisited(bbx=[float("nan"), 0, 5, 5]),
     r"gnd\[0\]\['bbx'\]: \(nan, .* is not a box"),
    ("three_number_box", revisited(bbx=[1, 2, 3]), r"gnd\[0\]\['bbx'\]: expected 4 numbers"),
    ("text_box", revisited(bbx="abcd"), "expected 4 numbers"),
    ("gnd_5", {**revisited(), "gnd": 5}, "gnd must be a list of mappings, one per query, got 5"),
    ("gnd_of_ints", {**revisited(), "gnd": [5]}, "gnd must be a list of mappings"),
    ("index_x", revisited(easy=["x"]), r"gnd\[0\]\['easy'\]: 'x' is not an index"),
    ("index_3", revisited(hard=[3]), r"gnd\[0\]\['hard'\]: index 3 is outside imlist \(0..2\)"),
    ("index_minus_1", revisited(junk=[-1]), r"gnd\[0\]\['junk'\]: index -1 is outside imlist"),
    ("float_index", revisited(easy=[1.0]), r"gnd\[0\]\['easy'\]: 1.0 is not an index"),
    ("scalar_indices", revisited(easy=7), r"gnd\[0\]\['easy'\]: expected a list of indices"),
    ("imlist_5", {**revisited(), "imlist": 5}, "imlist: expected a list of image names, got 5"),
    ("imlist_ints", {**revisited(), "imlist": [1, 2, 3]}, "imlist: 1 is not an image name"),
    ("more_gnd_than_queries", {**revisited(), "qimlist": []}, "1 gnd entries for 0 queries"),
]  # fmt: skip


@pytest.mark.parametrize("content, message", [b[1:] for b in BAD_REVISITED],
                         ids=[b[0] for b in BAD_REVISITED])  # fmt: skip
def test_malformed_revisited_ground_truth(tmp_path, content, message):
    path = tmp_path / "gnd_x.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=message) as e:
        read_revisited(path)
    assert str(e.value).startswith(str(path))


@pytest.mark.parametrize(
    "data, message",
    [
        (nested_list_pickle(200_000), "expected a mapping with imlist"),
        (b"\x80\x04\x95garbage", "not a revisited ground-truth pickle"),
        (pickle.dumps(revisited())[:-9], "not a revisited ground-truth pickle"),
        (b"", "not a revisited ground-truth pickle"),
    ],
    ids=["deeply_nested", "garbage", "truncated", "empty"],
)
def test_unreadable_revisited_ground_truth(tmp_path, data, message):
    path = tmp_path / "gnd_x.pkl"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_revisited(path)


QUERIES = NameIndex(["q1.jpg", "q2.jpg"], "queries/")
DATABASE = NameIndex(["a.jpg", "b.jpg", "c.jpg"], "db/")

BAD_GROUND_TRUTH = [
    ("nested.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("latin1.json", "{\"q1\": [\"caf\xe9\"]}".encode("latin-1"), "not valid JSON"),
    ("number.json", "5", "expected a mapping of queries or a list of entries"),
    ("ok_text.json", json.dumps({"q1": {"ok": "a.jpg"}}),
     r"entry 0 \('q1'\) 'ok': expected a list"),
    ("ok_nested.json", json.dumps({"q1": [["a.jpg"]]}),
     r"entry 0 \('q1'\) 'ok': \['a.jpg'\] is not"),
    ("query_dict.json", json.dumps([{"query": {"x": 1}, "ok": []}]),
     "query: {'x': 1} is not an image name"),
    ("junk_null.json", json.dumps({"q1": {"ok": [], "junk": None}}), "'junk': expected a list"),
    ("unknown.json", json.dumps({"q1": ["zz.jpg"]}), "'zz.jpg' is not an image of db/"),
    ("latin1.csv", "q1,caf\xe9\n".encode("latin-1"),
     r"not UTF-8 text \(invalid continuation byte at byte 6\)"),
    ("huge_cell.csv", "q1," + "a" * 200_000 + "\n", "line 1: not valid CSV"),
    ("four_columns.csv", "q1,a,1,x\n", "line 1 has 4 columns"),
    ("after_header.csv", "query,item\nq1,a\n\nq2\n", "line 4 has 1 columns"),
    ("unknown.csv", "q1,zz\n", "'zz' is not an image of db/"),
]  # fmt: skip


@pytest.mark.parametrize(
    "name, content, message", BAD_GROUND_TRUTH, ids=[b[0] for b in BAD_GROUND_TRUTH]
)
def test_malformed_ground_truth(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message) as e:
        read_ground_truth(path, QUERIES, DATABASE)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def random_json(rng: random.Random, depth: int = 0):
    kinds = ["str", "name", "int", "float", "bool", "null"] + (
        ["list", "dict"] if depth < 4 else []
    )
    kind = rng.choice(kinds)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        keys = ["query", "ok", "junk", "q1", "q2.jpg", "x"]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return {"str": "zz", "name": rng.choice(["a.jpg", "b", "q1"]), "int": rng.randint(-3, 3),
            "float": float("nan"), "bool": True, "null": None}[kind]  # fmt: skip


def test_random_json_ground_truth_is_read_or_refused_in_one_line(tmp_path):
    rng = random.Random(9)
    read = refused = 0
    for i in range(300):
        path = tmp_path / f"gt{i}.json"
        path.write_text(json.dumps(random_json(rng)))
        try:
            truth = read_ground_truth(path, QUERIES, DATABASE)
            read += 1
            assert set(truth) <= {0, 1}
        except DataError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            refused += 1
    assert read and refused


def test_random_revisited_ground_truth_is_valid_or_refused(tmp_path):
    """Seeded replacements of one value of a valid gnd: read back only when every index is
    in imlist and every box a box."""
    rng = random.Random(5)
    values = [None, 5, -1, 3, 2, "x", 1.5, float("nan"), [], [0, 1], [3], ["a"], [[0]],
              np.array([0, 2]), np.array([[0]]), np.array([9]), [2.0, 1.0, 1.0, 2.0], [0, 0, 4, 4],
              {"a": 1}, (0, 1, 2, 3)]  # fmt: skip
    for i in range(200):
        content = revisited()
        key = rng.choice(["easy", "hard", "junk", "bbx", "imlist", "qimlist", "gnd"])
        if key in ("imlist", "qimlist", "gnd"):
            content[key] = rng.choice(values)
        else:
            content["gnd"][0][key] = rng.choice(values)
        path = tmp_path / f"gnd{i}.pkl"
        path.write_bytes(pickle.dumps(content))
        try:
            gnd = read_revisited(path)
        except DataError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e)
            continue
        for split in (gnd.easy, gnd.hard, gnd.junk):
            assert all(0 <= j < len(gnd.imlist) for q in split for j in q)
        assert all(b is None or (b[0] < b[2] and b[1] < b[3]) for b in gnd.bbx)


def test_bad_ground_truth_on_the_command_line(files, tmp_path, capsys):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"0.png": ["9.png"]}))
    imgs = files / "imgs"
    code, err = dino(capsys, "retrieve", "--checkpoint", files / "ok.pth", "--query_path", imgs,
                     "--database_path", imgs, "--ground_truth", path,
                     "--output", tmp_path / "r.csv", *FAST)  # fmt: skip
    assert code == 2 and f"{path}: '9.png' is not an image of" in one_error_line(err)
    gnd = tmp_path / "gnd_x.pkl"
    gnd.write_bytes(pickle.dumps(revisited(bbx=[10.0, 12.0, 2.0, 4.0])))
    code, err = dino(capsys, "retrieve", "--checkpoint", files / "ok.pth", "--ground_truth", gnd,
                     "--database_path", imgs, "--output", tmp_path / "r.csv", *FAST)  # fmt: skip
    assert code == 2 and "gnd[0]['bbx']: (10.0, 12.0, 2.0, 4.0) is not a box" in one_error_line(err)


def test_malformed_ground_truth_is_said_before_any_work(files, tmp_path, capsys, no_work):
    imgs = files / "imgs"
    for name, content in (("gt.json", "[" * 100_000 + "]" * 100_000), ("gt.csv", b"q,caf\xe9\n")):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        code, err = dino(capsys, "retrieve", "--checkpoint", files / "ok.pth", "--query_path",
                         imgs, "--database_path", imgs, "--ground_truth", path,
                         "--output", tmp_path / "r.csv")  # fmt: skip
        assert code == 2 and one_error_line(err).startswith(f"dino: error: {path}: ")


# ---------------------------------------------------------------- a full disk (item 9)


SAVE_UNDER_A_SIZE_LIMIT = """
import sys, torch
from dino.checkpoint import save_atomic
from dino.errors import WriteError
path = sys.argv[1]
save_atomic({"w": torch.ones(1000)}, path)  # 4 KB: fits
try:
    save_atomic({"w": torch.ones(1_000_000)}, path)  # 4 MB: the disk is "full"
except WriteError as e:
    print(e)
"""


def test_a_disk_that_fills_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    """Files are limited to 1 MB (RLIMIT_FSIZE; SIGXFSZ ignored, so writes fail with EFBIG
    as on a full disk)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    path = tmp_path / "checkpoint.pth"
    out = subprocess.run(
        [sys.executable, "-c", SAVE_UNDER_A_SIZE_LIMIT, str(path)], capture_output=True,
        text=True, timeout=120, preexec_fn=limit,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    message = out.stdout.strip()
    assert "\n" not in message and message.startswith(f"{path}: writing failed, disk full?")
    assert "the previous file is intact" in message
    assert torch.equal(torch.load(path)["w"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temporary left


def test_a_failed_save_ends_the_command_with_exit_1(files, tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    root = tmp_path / "labelled"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (200 * c, 50 * i, 0)).save(root / f"c{c}" / f"{i}.png")
    code, err = dino(capsys, "linear", "--checkpoint", files / "ok.pth", "--train_path", root,
                     "--val_path", root, "--epochs", 1, "--output_dir", tmp_path / "lin",
                     "--batch_size", 4, *FAST)  # fmt: skip
    line = one_error_line(err)
    assert code == 1 and f"{tmp_path / 'lin' / 'linear.pth'}: writing failed, disk full?" in line
    assert "nothing was written" in line and "inline_container.cc" in line
    assert not (tmp_path / "lin" / "linear.pth").exists()
