"""Ranking by cosine similarity and the ground-truth readers (JSON, CSV, revisited pickle)."""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import RunsCode
from dino.data.transforms import whole_image_transform
from dino.errors import DataError
from dino.eval.metrics import relevance
from dino.eval.retrieval import (
    NameIndex,
    rank_database,
    read_ground_truth,
    read_revisited,
    revisited_images,
)

QUERIES = NameIndex(["q1.jpg", "sub/q2.png"], "queries/")
DATABASE = NameIndex(["a.jpg", "b.jpg", "c/d.png", "x/same.png", "y/same.png"], "db/")


def test_rank_database():
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    database = torch.tensor([[0.0, 1.0], [3.0, 0.1], [1.0, 1.0]])
    sims, idx = rank_database(queries, database, chunk_size=1)
    assert idx.tolist() == [[1, 2, 0], [0, 2, 1]]
    torch.testing.assert_close(sims[:, 0], torch.tensor([3 / (9.01**0.5), 1.0]))


def test_names_by_path_stem_or_file_name():
    assert DATABASE("c/d.png", "gt") == DATABASE("c/d", "gt") == DATABASE("d", "gt") == 2
    assert QUERIES("q2.png", "gt") == 1
    with pytest.raises(DataError, match="gt: 'same' names several images of db/"):
        DATABASE("same", "gt")
    with pytest.raises(DataError, match="gt: 'zz' is not an image of db/"):
        DATABASE("zz", "gt")


def test_json_ground_truth_both_forms(tmp_path):
    mapping = {"q1.jpg": {"ok": ["a.jpg", "c/d"], "junk": ["b"]}, "sub/q2": ["b.jpg"]}
    (tmp_path / "gt.json").write_text(json.dumps(mapping))
    expected = {0: relevance([0, 2], [1]), 1: relevance([1])}
    assert read_ground_truth(tmp_path / "gt.json", QUERIES, DATABASE) == expected
    listed = [{"query": "q1", "ok": ["a", "d"], "junk": ["b"]}, {"query": "q2", "ok": ["b"]}]
    (tmp_path / "list.json").write_text(json.dumps(listed))
    assert read_ground_truth(tmp_path / "list.json", QUERIES, DATABASE) == expected
    (tmp_path / "bad.json").write_text(json.dumps([{"query": "q1"}]))
    with pytest.raises(DataError, match="needs 'query' and 'ok'"):
        read_ground_truth(tmp_path / "bad.json", QUERIES, DATABASE)


def test_csv_ground_truth(tmp_path):
    (tmp_path / "gt.csv").write_text("query,item,junk\nq1.jpg,a.jpg,0\nq1.jpg,b.jpg,junk\nq2,d\n")
    expected = {0: relevance([0], [1]), 1: relevance([2])}
    assert read_ground_truth(tmp_path / "gt.csv", QUERIES, DATABASE) == expected
    (tmp_path / "bad.csv").write_text("q1.jpg\n")
    with pytest.raises(DataError, match="line 1 has 1 columns"):
        read_ground_truth(tmp_path / "bad.csv", QUERIES, DATABASE)


def revisited_gnd():
    return {
        "imlist": ["all_souls_1", "radcliffe_2", "magdalen_3"],
        "qimlist": ["query_1"],
        "gnd": [
            {
                "easy": np.array([0]),
                "hard": [2],
                "junk": [1],
                "bbx": np.array([2.0, 4.0, 10.0, 12.0]),
            }
        ],
    }


def test_revisited_pickle_and_optional_query_crops(tmp_path):
    with open(tmp_path / "gnd_test.pkl", "wb") as f:
        pickle.dump(revisited_gnd(), f)
    gnd = read_revisited(tmp_path / "gnd_test.pkl")
    assert gnd.imlist == ["all_souls_1", "radcliffe_2", "magdalen_3"]
    assert gnd.bbx == [(2.0, 4.0, 10.0, 12.0)]
    assert gnd.relevance("hard") == {0: relevance([2], [0, 1])}
    assert gnd.relevance("medium") == {0: relevance([0, 2], [1])}
    jpg = tmp_path / "jpg"
    jpg.mkdir()
    for name in gnd.imlist + gnd.qimlist:
        Image.new("RGB", (20, 16)).save(jpg / f"{name}.jpg")
    queries, database = revisited_images(gnd, jpg, jpg, whole_image_transform(16))
    assert [p.name for p in database.images] == [f"{n}.jpg" for n in gnd.imlist]
    assert queries.load(0).size == (20, 16)  # whole, as the reference's DINO script reads it
    queries, _ = revisited_images(gnd, jpg, jpg, whole_image_transform(16), crop_queries=True)
    assert queries.load(0).size == (8, 8)  # cropped to the bounding box
    assert queries[0][0].shape == (3, 16, 16)


def test_revisited_pickle_runs_no_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "gnd_evil.pkl", "wb") as f:
        pickle.dump({**revisited_gnd(), "x": RunsCode()}, f)
    with pytest.raises(DataError, match="refused to build"):
        read_revisited(tmp_path / "gnd_evil.pkl")
    assert not (tmp_path / "pwned").exists()
