"""Export a trained model's inference graph for serving (see jaxocr/export.py for the inputs
and outputs, PaddleOCR's inference models' own).

    python launch/export.py -c CONFIG -o Global.checkpoints=RUN_DIR --format stablehlo \
        --out inference/rec.stablehlo

Writes the serialised StableHLO (jax.export) and, beside it, PATH.json: how to call it
(input names, symbolic shapes, layout, normalisation; the dictionary of a recogniser).
Reload it with `jaxocr.export.load_stablehlo(PATH)` or
`jax.export.deserialize(open(PATH, "rb").read()).call(x)`.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxocr import cli  # noqa: E402


def main():
    p = cli.parser(__doc__)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--format", choices=["stablehlo"], default="stablehlo",
                   help="stablehlo: jax.export's serialised StableHLO (ONNX: not yet)")
    p.add_argument("--out", required=True, help="the file to write (PATH.json goes beside it)")
    args = p.parse_args()
    cli.set_cpu_devices(args.cpu_devices)
    cfg = cli.load(args)
    import jax
    from jaxocr.export import export_stablehlo
    from jaxocr.training.loop import Components
    comp = Components(cfg, mesh=None)
    image_shape = comp.image_shape or (32, 320, 3)
    state, meta = comp.restore_for_inference(image_shape)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    card = export_stablehlo(comp, variables, image_shape, args.out)
    print(f"wrote {args.out} ({card['task']}, global_step {meta.get('global_step', 0)}; inputs "
          + ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in card["inputs"])
          + f") and {args.out}.json", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
