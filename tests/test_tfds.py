"""TFDS datasets without TensorFlow: launch/convert.py writes PaddleOCR label files and LMDBs as
array_record shards, resumably; TFDSDataSet reads them back sample for sample, and trains."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from jaxocr.data.charset import CharacterDict
from jaxocr.data.fixtures import write_label_file_dataset, write_lmdb_dataset
from jaxocr.data.sources import DetLabelFilter, build_source

ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"
G = {"max_text_length": 25}


def convert(*args):
    r = subprocess.run([sys.executable, "launch/convert.py", *map(str, args)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def tfds_section(out, name, split="train"):
    return {"name": "TFDSDataSet", "tfds_name": name, "data_dir": str(out), "split": split}


def test_label_files_round_trip_sample_for_sample_and_a_conversion_resumes(tmp_path):
    label_file = write_label_file_dataset(tmp_path / "src", 25, ALNUM, seed=4, corrupt=2)
    with open(label_file, "a") as f:
        f.write("images/missing.png\tabc\n")  # dropped at build, counted
    out = tmp_path / "tfds"
    said = convert("--label_file_list", label_file, "--data_dir", tmp_path / "src",
                   "--out", out, "--name", "lines", "--shard_size", 10)
    assert "wrote lines/train" in said and "missing_image 1" in said
    plain = build_source({"name": "SimpleDataSet", "data_dir": str(tmp_path / "src"),
                          "label_file_list": [label_file]}, "train", CharacterDict(), G, 0)
    read = build_source(tfds_section(out, "lines"), "train", CharacterDict(), G, 0)
    assert len(read) == len(plain) == 25 and read.dropped == {}  # the missing one not written
    for i in range(len(read)):
        a, b = plain.load(i), read.load(i)
        assert a["image_bytes"] == b["image_bytes"] and a["label"] == b["label"]  # corrupt too

    shards = sorted(p for p in os.listdir(out / "lines" / "1.0.0") if ".array_record-" in p)
    assert len(shards) == 3
    before = {p: os.stat(out / "lines" / "1.0.0" / p).st_mtime_ns for p in shards}
    os.remove(out / "lines" / "1.0.0" / shards[1])  # as if interrupted while writing shard 1
    convert("--label_file_list", label_file, "--data_dir", tmp_path / "src", "--out", out,
            "--name", "lines", "--shard_size", 10)
    after = {p: os.stat(out / "lines" / "1.0.0" / p).st_mtime_ns for p in shards}
    assert after[shards[0]] == before[shards[0]] and after[shards[2]] == before[shards[2]]
    again = build_source(tfds_section(out, "lines"), "train", CharacterDict(), G, 0)
    assert [again.load(i)["label"] for i in range(25)] == plain.labels


def test_an_lmdb_and_a_det_label_file_convert_and_read_back(tmp_path):
    labels = write_lmdb_dataset(tmp_path / "lmdb" / "a", 12, ALNUM, seed=2)
    out = tmp_path / "tfds"
    convert("--lmdb", tmp_path / "lmdb", "--out", out, "--name", "lines", "--split", "test")
    read = build_source(tfds_section(out, "lines", "test"), "eval", CharacterDict(), G, 0)
    assert [read.load(i)["label"] for i in range(len(read))] == labels

    from jaxocr.data.det_fixtures import write_det_label_file_dataset
    det_labels = write_det_label_file_dataset(tmp_path / "det", 4, seed=1, image_size=(64, 96))
    convert("--label_file_list", det_labels, "--data_dir", tmp_path / "det", "--out", out,
            "--name", "scenes")
    plain = build_source({"name": "SimpleDataSet", "data_dir": str(tmp_path / "det"),
                          "label_file_list": [det_labels]}, "train", None, G, 0,
                         label_filter=DetLabelFilter())
    read = build_source(tfds_section(out, "scenes"), "train", None, G, 0,
                        label_filter=DetLabelFilter())
    assert [read.load(i)["label"] for i in range(4)] == plain.labels  # PaddleOCR's JSON
    # the dictionary rules apply when reading: a label of unknown characters only is dropped
    (tmp_path / "dict.txt").write_text("~\n")
    strict = build_source(tfds_section(out, "lines", "test"), "eval",
                          CharacterDict(tmp_path / "dict.txt"), G, 0)
    assert strict.dropped == {"unknown_char": 12} and len(strict) == 0


def test_a_missing_dataset_or_feature_is_one_clear_error(tmp_path):
    from jaxocr.config import ConfigError
    with pytest.raises(FileNotFoundError, match="cannot open 'nothing' split 'train'"):
        build_source(tfds_section(tmp_path, "nothing"), "train", CharacterDict(), G, 0)
    label_file = write_label_file_dataset(tmp_path / "src", 3, ALNUM, seed=4)
    convert("--label_file_list", label_file, "--data_dir", tmp_path / "src", "--out",
            tmp_path / "tfds", "--name", "lines")
    with pytest.raises(ConfigError, match="no feature 'text'"):
        build_source({**tfds_section(tmp_path / "tfds", "lines"), "label_key": "text"},
                     "train", CharacterDict(), G, 0)


def test_training_reads_a_tfds_dataset(tmp_path):
    from jaxocr.training.loop import train
    label_file = write_label_file_dataset(tmp_path / "src", 16, ALNUM, seed=4)
    convert("--label_file_list", label_file, "--data_dir", tmp_path / "src", "--out",
            tmp_path / "tfds", "--name", "lines")
    result = train(tiny_config(tmp_path / "run", "Global.max_steps=2",
                               "Train.dataset.name=TFDSDataSet",
                               "Train.dataset.tfds_name=lines",
                               f"Train.dataset.data_dir={tmp_path / 'tfds'}",
                               "Train.dataset.split=train"))
    assert result["global_step"] == 2 and np.isfinite(result["train"]["loss"])
