"""Command line: ``python -m seqtr_lib <command>`` (or the ``seqtr`` console script).

Heavy imports stay inside each command so that ``--help`` and config errors are instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seqtr_lib.config import ConfigError, experiment_to_dict, load_params
from seqtr_lib.images import MAX_IMAGE_PIXELS


def _add_params(parser: argparse.ArgumentParser, required: bool = True, default: str | None = None) -> None:
    parser.add_argument("--params", required=required and default is None, default=default,
                        help=f"params YAML file (default: {default})" if default else
                        "params YAML file, e.g. params/synthetic_det.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params value, e.g. --set train.lr=1e-4 (repeatable)")


def _add_exported(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exported", default="", metavar="DIR",
                        help="run an export folder (python -m seqtr_lib export) instead of a checkpoint, with "
                             "--runtime and --precision (needs pip install '.[deploy]')")
    parser.add_argument("--runtime", choices=("auto", "openvino", "onnxruntime"), default="auto",
                        help="with --exported: auto takes OpenVINO when installed, else ONNX Runtime")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8"), default="auto",
                        help="with --exported: int8 runs the quantised encoder with its float32 recheck; auto takes "
                             "it only where the export's measured agreement allows")


def cmd_make_synthetic(args: argparse.Namespace) -> None:
    from seqtr_lib.data.synthetic import generate_dataset

    from seqtr_lib.config import GeneralisedConfig

    shares = GeneralisedConfig(args.multi_target, args.no_target, args.split_objects)
    summary = generate_dataset(args.out, num_images=args.num_images, seed=args.seed,
                               image_size=args.image_size, workers=args.workers, generalised=shares)
    print(json.dumps(summary, indent=2))


def cmd_contact_sheet(args: argparse.Namespace) -> None:
    from seqtr_lib.samples import contact_sheet

    path = contact_sheet(args.data_root, split=args.split, out_path=args.out, num_samples=args.num_samples,
                         seed=args.seed)
    print(f"wrote {path}")


def cmd_convert_refer(args: argparse.Namespace) -> None:
    from seqtr_lib.data.convert import convert_refer

    convert_refer(args.refs, args.instances, args.out)
    print(f"wrote {args.out}")


def cmd_convert_grefcoco(args: argparse.Namespace) -> None:
    from seqtr_lib.data.grefcoco import convert_grefcoco

    counts = convert_grefcoco(args.grefs, args.instances, args.out)
    print(f"wrote {args.out}: " + ", ".join(f"{split} {count} refs" for split, count in counts.items()))


def cmd_check_params(args: argparse.Namespace) -> None:
    experiment = load_params(args.params, args.overrides)
    print(json.dumps(experiment_to_dict(experiment), indent=2))


def cmd_model_summary(args: argparse.Namespace) -> None:
    from seqtr_lib.data.refer import AnnotationError, load_vocabulary, scene_classes
    from seqtr_lib.model.seqtr import build_model, count_parameters, without_weight_files
    from seqtr_lib.text import SPECIAL_TOKENS, Vocabulary

    experiment = load_params(args.params, args.overrides)
    try:
        vocabulary = load_vocabulary(experiment)
        source = f"the {len(vocabulary)}-word vocabulary of {experiment.annotation_path}"
    except (FileNotFoundError, AnnotationError) as error:
        # Only the word embedding depends on the data; count it for a stand-in vocabulary instead of failing.
        vocabulary = Vocabulary([*SPECIAL_TOKENS, *(f"word{i}" for i in range(args.vocabulary_size - 3))])
        source = (f"a stand-in vocabulary of {args.vocabulary_size} words (--vocabulary-size): no dataset "
                  f"({str(error).splitlines()[0]})")
    model = build_model(without_weight_files(experiment.model), vocabulary, scene_classes(experiment),
                        experiment.data.max_objects, experiment.data.max_points)
    rows = count_parameters(model)
    width = max(len(name) for name in rows)
    print(f"{'part':<{width}}  {'parameters':>12}  {'trainable':>12}")
    for name, (total, trainable) in rows.items():
        print(f"{name:<{width}}  {total:>12,}  {trainable:>12,}")
    print(f"{'total':<{width}}  {sum(t for t, _ in rows.values()):>12,}  {sum(t for _, t in rows.values()):>12,}")
    print(f"word embedding counted for {source}")


def cmd_train(args: argparse.Namespace) -> None:
    from seqtr_lib.engine import NonFiniteLossError, TrainingInterrupted, train

    experiment = load_params(args.params, args.overrides)
    try:
        result = train(experiment)
    except (NonFiniteLossError, TrainingInterrupted) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(3 if isinstance(error, NonFiniteLossError) else 130) from None
    if result["is_main"]:
        print(f"best validation score {result['best_score']:.2f} at epoch {result['best_epoch'] + 1}; "
              f"checkpoints in {result['run_dir']}")


def cmd_pretrain_backbone(args: argparse.Namespace) -> None:
    from seqtr_lib.pretrain import pretrain_backbone

    experiment = load_params(args.params, args.overrides)
    summary = pretrain_backbone(experiment, args.out, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps,
                                val_limit=args.val_limit)
    shown = ", ".join(f"{name} {value:.1f} %" for name, value in summary["val_accuracy"].items())
    print(f"{summary['steps']} steps in {summary['train_seconds']:.0f} s; val: {shown}")
    print(f"wrote {args.out} and {args.out}.json; train with --set model.darknet_weights={args.out} "
          "--set model.trainable_backbone_modules=2")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from seqtr_lib.evaluation import evaluate

    experiment = load_params(args.params, args.overrides, start_files=False)
    splits = tuple(s for s in args.splits.split(",") if s) if args.splits else None
    if bool(args.checkpoint) == bool(args.exported):
        raise ValueError("give one of --checkpoint (a training checkpoint) and --exported (an export folder)")
    if args.exported and not Path(args.exported).is_dir():
        raise ValueError(f"--exported {args.exported}: no such folder (python -m seqtr_lib export --checkpoint C --out "
                         "DIR writes one)")
    results = evaluate(experiment, args.checkpoint or args.exported, splits, shuffle_ablation=args.shuffle_ablation,
                       strategy=args.strategy, top_p=args.top_p, limit=args.limit or None,
                       cuda_graphs=args.cuda_graphs, execution=args.execution, runtime=args.runtime,
                       precision=args.precision)
    for split, per_weights in results["splits"].items():
        for weights, metrics in per_weights.items():
            shown = ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()
                              if k not in ("num_expressions", "skipped_images"))
            print(f"{split:>6} {weights:>12}: {shown} ({metrics['num_expressions']} expressions)")
    print(f"wrote {experiment.run_dir / 'metrics.json'}")


def cmd_predict(args: argparse.Namespace) -> None:
    from seqtr_lib.checkpoint import resolve_checkpoint
    from seqtr_lib.predict import Grounder

    if args.exported:  # an export folder holds the params and vocabulary too
        grounder = Grounder.from_export(args.exported, runtime=args.runtime, precision=args.precision,
                                        max_pixels=args.max_pixels or None)
    else:
        if args.checkpoint:  # the checkpoint holds everything the Grounder needs: no params to find from any cwd
            path, which = resolve_checkpoint(Path(), "", args.checkpoint)
        else:
            experiment = load_params(args.params, args.overrides, start_files=False)
            path, which = resolve_checkpoint(experiment.run_dir, experiment.name)
        print(which)
        grounder = Grounder.from_checkpoint(path, device=args.device, max_pixels=args.max_pixels or None,
                                            execution=args.execution)
    print(f"backend: {grounder.describe_backend()}")
    prediction = grounder.predict(args.image, args.expression, task=args.task, return_attention=bool(args.attention),
                                  strategy=args.strategy, top_p=args.top_p, seed=args.seed)
    if prediction.objects is not None:
        print(prediction.description())
    if prediction.box is not None:
        print("box (x1, y1, x2, y2):", [round(float(v), 1) for v in prediction.box])
    if prediction.polygon is not None:
        print("polygon (x, y, ...):", [round(float(v), 1) for v in prediction.polygon.reshape(-1)])
    out = grounder.save_overlay(args.image, args.expression, prediction, args.out)
    print(f"wrote {out}")
    if args.attention:
        print(f"wrote {grounder.save_attention(args.image, args.expression, prediction, args.attention)}")


def cmd_export(args: argparse.Namespace) -> None:
    from seqtr_lib.export import calibration_batches, export_checkpoint, quantize_encoder

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} (encoder.onnx, decoder_step.onnx)")
    if args.calibration_data:
        batches = calibration_batches(out, args.calibration_data, args.calibration_split, args.calibration_images)
        described = f"{args.calibration_data}, split {args.calibration_split}, first {args.calibration_images}"
        print(f"wrote {quantize_encoder(out, batches, described)}")


def cmd_export_weights(args: argparse.Namespace) -> None:
    from seqtr_lib.checkpoint import export_weights

    out = export_weights(args.checkpoint, args.out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def cmd_import_seqtr(args: argparse.Namespace) -> None:
    from seqtr_lib.data.refer import original_vocabulary, read_annotations
    from seqtr_lib.original import import_release
    from seqtr_lib.text import load_token_to_ix

    experiment = load_params(args.params, args.overrides, start_files=False)
    if args.token_to_ix:
        vocabulary, source = load_token_to_ix(args.token_to_ix), args.token_to_ix
    else:
        vocabulary = original_vocabulary(read_annotations(experiment.annotation_path))
        source = f"every split of {experiment.annotation_path}, in the original's order"
    print(f"vocabulary: {len(vocabulary)} words from {source}")
    out = args.out or experiment.run_dir / "seqtr_release.pt"
    print(f"wrote {import_release(args.checkpoint, experiment, vocabulary, out)}")


def cmd_export_seqtr(args: argparse.Namespace) -> None:
    from seqtr_lib.checkpoint import load
    from seqtr_lib.original import export_release

    out = export_release(load(args.checkpoint), args.out)
    print(f"wrote {out} and {out.parent / 'token_to_ix.pkl'}")


def _top_p(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--top-p must lie in (0, 1], got {text}")
    return value


def _add_strategy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strategy", choices=("greedy", "top_p"), default="greedy",
                   help="greedy: the most likely token at every step (the paper's); top_p: nucleus sampling")
    p.add_argument("--top-p", type=_top_p, default=0.9, help="probability mass of the nucleus (--strategy top_p)")


def _add_execution(p: argparse.ArgumentParser) -> None:
    p.add_argument("--execution", default="auto",
                   help="how the network runs on a CPU: auto (the fastest safe choice, printed), fp32, or steps "
                        "joined by '+' from channels_last, bf16, fold_bn, recheck (e.g. channels_last+bf16+fold_bn+recheck)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqtr", description="SeqTR visual grounding")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("make-synthetic", help="generate the synthetic 'shapes' grounding dataset")
    p.add_argument("--out", default="data", help="data root to write annotations/ and images/ into")
    p.add_argument("--num-images", type=int, default=6000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.add_argument("--multi-target", type=float, default=0.0,
                   help="generalised set: share of records naming several objects (docs/method.md, section 11)")
    p.add_argument("--no-target", type=float, default=0.0, help="generalised set: share of records naming nothing")
    p.add_argument("--split-objects", type=float, default=0.0,
                   help="generalised set: share of images with an object cut in pieces by a shape in front of it")
    p.set_defaults(run=cmd_make_synthetic)

    p = commands.add_parser("contact-sheet", help="draw dataset samples with boxes, masks and expressions")
    p.add_argument("--data-root", default="data")
    p.add_argument("--split", default="train")
    p.add_argument("--out", default="outputs/synthetic_samples.png")
    p.add_argument("--num-samples", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_contact_sheet)

    p = commands.add_parser("convert-refer", help="convert an original refer release to instances.json")
    p.add_argument("--refs", required=True, help="refs(unc).p from the refer release")
    p.add_argument("--instances", required=True, help="COCO instances.json of the same release")
    p.add_argument("--out", required=True, help="output instances.json")
    p.set_defaults(run=cmd_convert_refer)

    p = commands.add_parser("convert-grefcoco", help="convert a gRefCOCO release (expressions naming zero or more "
                            "objects) to instances.json")
    p.add_argument("--grefs", required=True, help="grefs(unc).json (or grefs(unc).p) from the gRefCOCO release")
    p.add_argument("--instances", required=True, help="the release's COCO instances.json")
    p.add_argument("--out", required=True, help="output instances.json, e.g. data/annotations/grefcoco/instances.json")
    p.set_defaults(run=cmd_convert_grefcoco)

    p = commands.add_parser("check-params", help="validate a params file and print the resolved values")
    _add_params(p)
    p.set_defaults(run=cmd_check_params)

    p = commands.add_parser("train", help="train (alone, or under torchrun for several processes)")
    _add_params(p)
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("pretrain-backbone", help="train the DarkNet backbone to find and classify every "
                            "object of the synthetic scenes; writes a Darknet .weights file")
    _add_params(p, default="params/synthetic_det.yaml")
    p.add_argument("--out", default="weights/synthetic_darknet.weights")
    p.add_argument("--epochs", type=int, default=2, help="passes over the training expressions' images")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (default 0: the epochs)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's peak rate (cosine decay to 0)")
    p.add_argument("--val-limit", type=int, default=1000, help="val expressions whose objects are scored")
    p.set_defaults(run=cmd_pretrain_backbone)

    p = commands.add_parser("evaluate", help="evaluate a checkpoint's raw and EMA weights; writes metrics.json")
    _add_params(p)
    p.add_argument("--checkpoint", default="", help="the checkpoint whose raw and EMA weights are scored")
    p.add_argument("--splits", default="", help="comma-separated, e.g. val,testA (default: all but train)")
    p.add_argument("--shuffle-ablation", action="store_true",
                   help="also evaluate with expressions shuffled across samples (proof that words are used)")
    p.add_argument("--limit", type=int, default=0,
                   help="score only the first N expressions of each split (whole batches; default 0: all)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="greedy decoding replayed from CUDA graphs (the same tokens; faster on a GPU)")
    _add_execution(p)
    _add_strategy(p)
    _add_exported(p)
    p.set_defaults(run=cmd_evaluate)

    p = commands.add_parser("predict", help="ground one expression in one image; prints and draws the result")
    _add_params(p, default="params/synthetic_det.yaml")
    p.add_argument("--checkpoint", default="",
                   help="default: the params' run (<output_dir>/<name>/best.pt), else its released weights; "
                        "given, the params are not read (the checkpoint holds the model and its decoding)")
    p.add_argument("--image", required=True)
    p.add_argument("--expression", required=True)
    p.add_argument("--task", choices=("box", "mask"), default=None, help="default: the checkpoint's task")
    p.add_argument("--out", default="prediction.png", help="overlay PNG to write")
    p.add_argument("--attention", default="", metavar="PNG",
                   help="also write where the decoder looked for each token (cross-attention panels) to this PNG")
    p.add_argument("--device", default=None)
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS,
                   help=f"refuse larger images before decoding them (default {MAX_IMAGE_PIXELS:,}; 0: no limit)")
    _add_execution(p)
    _add_strategy(p)
    p.add_argument("--seed", type=int, default=0, help="seed of top_p sampling")
    _add_exported(p)
    p.set_defaults(run=cmd_predict)

    p = commands.add_parser("export", help="write a checkpoint as ONNX graphs for a CPU runtime (OpenVINO, ONNX "
                                           "Runtime), optionally with an int8 encoder")
    p.add_argument("--checkpoint", required=True, help="e.g. weights/synthetic_det.pt")
    p.add_argument("--out", required=True, help="the export folder to write, e.g. exported/synthetic_det")
    p.add_argument("--calibration-data", default="", metavar="DATA_ROOT",
                   help="also write an int8 encoder, calibrated on images of the checkpoint's dataset read from here")
    p.add_argument("--calibration-split", default="train")
    p.add_argument("--calibration-images", type=int, default=64, help="how many (image, expression) samples")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("export-weights", help="write a checkpoint's EMA weights in half precision, alone")
    p.add_argument("--checkpoint", required=True, help="a training checkpoint, e.g. outputs/synthetic_det/best.pt")
    p.add_argument("--out", required=True, help="e.g. weights/synthetic_det.pt")
    p.set_defaults(run=cmd_export_weights)

    p = commands.add_parser("import-seqtr", help="convert a release checkpoint of the original SeqTR code into ours")
    p.add_argument("--checkpoint", required=True, help="the original release file, e.g. det_best.pth")
    _add_params(p)
    p.add_argument("--token-to-ix", default="", help="the release's token_to_ix.pkl (default: the vocabulary "
                   "rebuilt from every split of the params' annotation file, as the original builds it)")
    p.add_argument("--out", default="", help="default: <output_dir>/<name>/seqtr_release.pt")
    p.set_defaults(run=cmd_import_seqtr)

    p = commands.add_parser("export-seqtr", help="write a checkpoint of ours as an original SeqTR release file")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="e.g. export/det_best.pth (token_to_ix.pkl is written beside it)")
    p.set_defaults(run=cmd_export_seqtr)

    p = commands.add_parser("model-summary", help="build the model of a params file and count its parameters")
    _add_params(p)
    p.add_argument("--vocabulary-size", type=int, default=1000,
                   help="words assumed for the embedding when the dataset is absent (default 1000)")
    p.set_defaults(run=cmd_model_summary)

    # --debug before the command or after it: a subcommand's copy leaves the value alone unless given there.
    for subparser in commands.choices.values():
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> None:
    from seqtr_lib.images import BadImageError

    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ConfigError, OSError, ValueError, BadImageError) as error:
        # What a user can fix (a path, a params value, a file that is no checkpoint or image): one line.
        if args.debug:
            raise
        print(f"error: {error} (--debug, before or after the command, shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None
