"""Train on every local device (one process, a ('data',) mesh over the local devices).

    python launch/multihost.py -c configs/rec/rec_mv3_none_bilstm_ctc.yml [-o Key.sub=value ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    args = cli.parser(__doc__).parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    from jaxocr.training.loop import train
    train(cfg)


if __name__ == "__main__":
    cli.run(main)
