"""The README's picture: the released box and mask weights grounding one expression in one synthetic image.

    python benchmarks/readme_picture.py    # writes docs/readme_picture.png (needs `make-synthetic --out data`)

Both predictions are drawn with the package's own `viz.draw_prediction`, side by side on the same image.
The default image is val image 4210 of the default set (6 shapes); the expression is one of its annotated
expressions, so it names an object that is in the image.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from seqtr_lib.images import to_rgb_uint8
from seqtr_lib.predict import Grounder
from seqtr_lib.viz import draw_prediction, grid_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="data/images/synthetic/4210.jpg")
    parser.add_argument("--expression", default="the red triangle below the red diamond")
    parser.add_argument("--box-weights", default="weights/synthetic_det.pt")
    parser.add_argument("--mask-weights", default="weights/synthetic_mask.pt")
    parser.add_argument("--out", type=Path, default=Path("docs/readme_picture.png"))
    args = parser.parse_args()

    image = to_rgb_uint8(args.image)
    figure, axes = grid_figure(2, columns=2, cell=3.6)
    for ax, weights, task in zip(axes, (args.box_weights, args.mask_weights), ("box", "mask")):
        prediction = Grounder.from_checkpoint(weights, device="cpu").predict(image, args.expression, task=task)
        draw_prediction(ax, image, prediction)
        ax.set_title(f"{task}: {weights}", fontsize=9)
        print(task, prediction.box.round(1).tolist() if task == "box" else prediction.polygon.round(1).tolist())
    figure.suptitle(f'"{args.expression}"', fontsize=11)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
