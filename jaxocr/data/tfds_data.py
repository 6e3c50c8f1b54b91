"""TFDS datasets without TensorFlow: `TFDSDataSet` reads any prepared TFDS dataset by random
access (`tfds.data_source`: array_record files), and `write_tfds_dataset` writes one from any
source (launch/convert.py: PaddleOCR label files or LMDB), shard by shard, resumable.

A written dataset has two features: `image`, the image file's encoded bytes as they were (PNG,
JPEG: decoded by the pipeline's DecodeImage, as from a label file), and `label`, the text as
written (a recognition label, or PaddleOCR's JSON polygons for detection). A dataset prepared
elsewhere may name its features otherwise (`image_key`, `label_key`) and may hold decoded
images (uint8 arrays: passed on as the sample's image).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np

from jaxocr.data.source_api import EveryEntryEachEpoch
from jaxocr.data.transforms import BadSample

log = logging.getLogger("jaxocr")

SCAN_CHUNK = 1024  # records read per call while scanning the labels at build time
TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _features():
    import tensorflow_datasets as tfds
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes
        "label": tfds.features.Text(),
    })


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TFDSDataSet(EveryEntryEachEpoch):
    """A split of a prepared TFDS dataset. Labels are read once at build time and filtered by
    `keep` (the task's rule: characters, length, CTC frames; the drops counted as for a label
    file); raw index i is the i-th kept record. The data source is reopened lazily in each
    worker process."""

    def __init__(self, tfds_name: str, data_dir: str | None, split: str, keep,
                 image_key: str = "image", label_key: str = "label"):
        self.tfds_name, self.data_dir, self.split = tfds_name, data_dir, split
        self.image_key, self.label_key = image_key, label_key
        self._source = None
        source = self.source()
        missing = {image_key, label_key} - set(source.dataset_info.features.keys())
        if missing:
            raise ValueError(f"TFDSDataSet {tfds_name}: no feature {sorted(missing)[0]!r} "
                             f"(it has {sorted(source.dataset_info.features.keys())}); set "
                             f"image_key / label_key")
        import tensorflow_datasets as tfds
        features = source.dataset_info.features
        # records of encoded bytes and text (what convert.py writes) are read straight from
        # their protos: tfds's generic numpy decoding costs 3x the read itself
        self._raw = (isinstance(features[image_key], tfds.features.Tensor) and
                     features[image_key].np_dtype == np.object_ and
                     type(features[label_key]).__name__ == "Text" and
                     hasattr(source, "data_source"))
        kept = []
        for start in range(0, len(source), SCAN_CHUNK):
            ids = list(range(start, min(start + SCAN_CHUNK, len(source))))
            for i, record in zip(ids, source.__getitems__(ids)):
                try:
                    label = _text(record[label_key])
                except UnicodeDecodeError:
                    keep.dropped["malformed"] += 1
                    continue
                if keep(label):
                    kept.append(i)
        self._records = np.asarray(kept, np.int64)
        self.dropped = dict(keep.dropped)
        self.chars_removed = keep.chars_removed
        self.removed_chars = keep.removed_chars

    def source(self):
        if self._source is None:
            import tensorflow_datasets as tfds
            try:
                self._source = tfds.data_source(self.tfds_name, data_dir=self.data_dir,
                                                split=self.split)
            except Exception as e:  # tfds raises several types for a missing or bad dataset
                raise FileNotFoundError(
                    f"TFDSDataSet: cannot open {self.tfds_name!r} split {self.split!r} under "
                    f"{self.data_dir}: {str(e).splitlines()[0]}") from None
        return self._source

    def _read_raw(self, index: int) -> dict:
        from tensorflow_datasets.proto import tf_example_pb2
        example = tf_example_pb2.Example.FromString(self.source().data_source[index])
        feature = example.features.feature
        return {k: feature[k].bytes_list.value[0] for k in (self.image_key, self.label_key)}

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return len(self._records)

    def load(self, i: int) -> dict:
        index = int(self._records[i])
        try:
            record = self._read_raw(index) if self._raw else self.source()[index]
        except Exception as e:  # a damaged shard: this sample is unreadable, not the run
            raise BadSample(f"TFDS {self.tfds_name} record {index}: {e}") from None
        image, where = record[self.image_key], f"{self.tfds_name}/{self.split}#{index}"
        label = _text(record[self.label_key])
        if isinstance(image, bytes):
            return {"image_bytes": image, "label": label, "img_path": where}
        return {"image": np.asarray(image), "label": label, "img_path": where}

    def __repr__(self) -> str:
        return (f"TFDSDataSet({len(self)} samples of {self.tfds_name}/{self.split} under "
                f"{self.data_dir}, dropped {self.dropped})")


def write_tfds_dataset(samples, count: int, data_dir: str, name: str, split: str = "train",
                       shard_size: int = 10000, version: str = "1.0.0", progress=None) -> str:
    """Write `count` samples ({'image_bytes', 'label'}; `samples(i)` gives sample i, None to
    skip it) as split `split` of TFDS dataset `name` under `data_dir`. Shard k holds samples
    [k * shard_size, (k + 1) * shard_size); a finished shard is renamed into place, so an
    interrupted run resumes at the first missing one. Returns the dataset's directory.
    `progress(n)`: called with the samples done per shard."""
    import tensorflow_datasets as tfds
    from array_record.python.array_record_module import ArrayRecordWriter
    features = _features()
    out = os.path.join(data_dir, name, version)
    os.makedirs(out, exist_ok=True)
    shards = max(1, -(-count // shard_size))
    template = tfds.core.ShardedFileTemplate(data_dir=out, template=TEMPLATE, dataset_name=name,
                                             split=split, filetype_suffix="array_record")
    lengths_file = os.path.join(out, f".{split}_shard_lengths.json")
    lengths = json.load(open(lengths_file)) if os.path.exists(lengths_file) else {}
    for k in range(shards):
        path = os.fspath(template.sharded_filepath(shard_index=k, num_shards=shards))
        if os.path.exists(path) and str(k) in lengths:
            if progress:
                progress(min(shard_size, count - k * shard_size))
            continue
        written = 0
        writer = ArrayRecordWriter(path + ".tmp", "group_size:1")
        for i in range(k * shard_size, min((k + 1) * shard_size, count)):
            sample = samples(i)
            if sample is not None:
                writer.write(features.serialize_example(
                    {"image": sample["image_bytes"], "label": sample["label"]}))
                written += 1
        writer.close()
        os.replace(path + ".tmp", path)
        lengths[str(k)] = written
        with open(lengths_file, "w") as f:
            json.dump(lengths, f)
        if progress:
            progress(min(shard_size, count - k * shard_size))
    splits = {split: [lengths[str(k)] for k in range(shards)]}
    if os.path.exists(os.path.join(out, "dataset_info.json")):  # keep the splits written before
        for other in tfds.builder_from_directory(out).info.splits.values():
            splits.setdefault(other.name, list(other.shard_lengths))
    infos = [tfds.core.SplitInfo(name=s, shard_lengths=n, num_bytes=0,
                                 filename_template=template.replace(split=s))
             for s, n in splits.items()]
    tfds.folder_dataset.write_metadata(
        data_dir=out, features=features, split_infos=infos, filename_template=TEMPLATE,
        check_data=False, description="written by jaxocr's launch/convert.py")
    return out
