"""Convert PaddleOCR label files or LMDBs into a TFDS dataset (array_record shards: encoded
images and text labels), for `Train.dataset.name: TFDSDataSet`.

    python launch/convert.py --label_file_list train.txt [more.txt ...] --data_dir DIR \
        --out DATA_DIR --name my_rec [--split train] [--shard_size 10000]
    python launch/convert.py --lmdb LMDB_DIR --out DATA_DIR --name my_rec --split train

Every readable sample is written as it is (its image file's bytes, its label as written):
the dictionary and length rules apply when training reads it, as for the original files.
Missing or unreadable images are skipped and counted. Shards are written one by one and
renamed when complete: the same command resumes an interrupted conversion. Then train with

    -o Train.dataset.name=TFDSDataSet Train.dataset.tfds_name=my_rec \
       Train.dataset.data_dir=DATA_DIR Train.dataset.split=train
"""
import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class KeepAll:
    """A label filter that keeps every line (the training run applies the real rules)."""

    def __init__(self):
        self.dropped = collections.Counter()
        self.chars_removed, self.removed_chars = 0, collections.Counter()

    def __call__(self, label: str) -> bool:
        return True


def source(args):
    from jaxocr.data.charset import CharacterDict
    from jaxocr.data.sources import LMDBDataSet, SimpleDataSet
    if args.lmdb:
        return LMDBDataSet(args.lmdb, CharacterDict(), 0, label_filter=KeepAll())
    return SimpleDataSet(args.data_dir, args.label_file_list, CharacterDict(), 0,
                         delimiter=args.delimiter, label_filter=KeepAll())


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--label_file_list", nargs="+", help="PaddleOCR label files")
    given.add_argument("--lmdb", help="a folder holding LMDBs (data.mdb), PaddleOCR's layout")
    p.add_argument("--data_dir", default=".", help="the label files' image root")
    p.add_argument("--delimiter", default="\t")
    p.add_argument("--out", required=True, help="the TFDS data_dir to write into")
    p.add_argument("--name", required=True, help="the dataset's name (Train.dataset.tfds_name)")
    p.add_argument("--split", default="train")
    p.add_argument("--shard_size", type=int, default=10000, help="samples per shard")
    args = p.parse_args()
    from tqdm import tqdm
    from jaxocr.data.tfds_data import write_tfds_dataset
    from jaxocr.data.transforms import BadSample
    src = source(args)
    skipped = collections.Counter(src.dropped)

    def sample(i):
        try:
            return src.load(i)
        except BadSample:
            skipped["unreadable"] += 1
            return None

    with tqdm(total=len(src), unit="sample", disable=None) as bar:
        out = write_tfds_dataset(sample, len(src), args.out, args.name, args.split,
                                 args.shard_size, progress=bar.update)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items()) if v) or "none"
    print(f"wrote {args.name}/{args.split} to {out} (skipped: {counts})", file=sys.stderr)


if __name__ == "__main__":
    from jaxocr import cli
    cli.run(main)
