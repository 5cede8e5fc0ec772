"""How a model runs on a CPU: memory format, bf16 autocast where the CPU has bf16 units, folded BatchNorm.

An execution is a set of steps, written as a spec string joined by ``+``::

    fp32                              eager float32, as trained (no step)
    channels_last                     images and convolution weights in NHWC (oneDNN's native layout)
    bf16                              the backbone's convolutions from `BF16_FROM` on in bfloat16 (under
                                      autocast; with fold_bn the weights are stored in bf16 once)
    fold_bn                           inference only: each DarkNet conv absorbs its BatchNorm (a bias)
    recheck                           with bf16: samples whose greedy choices were near-ties are generated
                                      again in float32 (see RECHECK below)
    channels_last+bf16+fold_bn+recheck  auto's choice on a CPU with bf16 units and a large backbone
    auto                              `pick_execution`: the fastest safe choice for this model and device

Only the backbone's bulk runs in bf16: it is nearly all of a 640 px inference (the convolutions were 71 % of
a channels_last bf16 run's time). Measured on the released synthetic box weights (tokens equal to float32's):
the whole encoder side under autocast 95.7 % of 486 held-out val expressions; DarkNet from its second stage
on, 97.9 % of 1,650 (from its fourth, 98.3 %). The stem and first stage (6.7 % of DarkNet-53's
multiply-adds), the fusion, the transformer and the token decoder stay float32.

RECHECK. Even so bf16 moves some tokens: where the model hesitates between two bins (or two memory cells
for query selection) a small error decides. `generate` therefore watches every greedy choice of a bf16
run and generates a sample again in float32 when a winning logit led the runner-up by less than
RECHECK_MARGIN; only near-ties pay for float32, and the tokens are float32's unless bf16 moved a logit
by more than that margin. A model that hesitates on most samples (random weights: all of them) would pay
twice, so once more than RECHECK_GIVE_UP of its first RECHECK_TRIAL or more samples were rechecked it runs
float32 alone (`RecheckTally`, `ran_as` names what runs).

bf16 is chosen only on a CPU with bf16 units (`cpu_bf16_units`: the CPU's flags, what oneDNN is allowed to
use, and torch's own check), never assumed. Elsewhere torch emulates bfloat16, correct but slower than
float32, so ``auto`` keeps float32 there; naming ``bf16`` still runs it (tests do, to check the agreement).
``SEQTR_CPU_BF16=0`` / ``=1`` overrides the detection.
"""

from __future__ import annotations

import copy
import math
import os
import weakref
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEPS = ("channels_last", "bf16", "fold_bn", "recheck")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) at or above which it may use bf16 dot-product instructions.
_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
              "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")
# CPU flags (Linux /proc/cpuinfo) of bf16 dot-product units: x86 AVX512-BF16 or AMX-BF16, Arm BF16.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# The auto choice turns bf16 on for models whose backbone does enough convolution work to gain from it:
# DarkNet channels x image area, relative to the paper's (width 1 at 640 px). Measured on a 2-core AMD EPYC
# (avx512_bf16): the paper model gains 2x; the synthetic model (width 0.125 at 128 px, 1/1600 of it) does not.
BF16_MIN_WORK = 0.05
# A bf16 sample is generated again in float32 when any of its greedy choices led the runner-up by less than
# this (in logits). Measured on the released synthetic box weights (486 held-out val expressions): 0.01 kept
# 99.4 % of float32's boxes with 6 % of the samples rechecked, 0.02 all of them with 12 %, 0.1 with 52 %.
# A mask cannot be kept so: 93 % of the synthetic mask's samples had a lead under 0.01 (36 near-tie chances).
RECHECK_MARGIN = 0.02
# bf16 + recheck costs t_bf16 + r x t_fp32 a sample at a recheck rate r, more than float32 alone once
# r > 1 - t_bf16 / t_fp32: 0.42 on the 2-core EPYC (0.675 s against 1.157 s, paper box model), higher where
# bf16 gains more. Past RECHECK_GIVE_UP, after RECHECK_TRIAL samples, a prepared model runs float32 only.
RECHECK_GIVE_UP = 1 / 3
RECHECK_TRIAL = 16
# Prepared bf16 + recheck models -> (their float32 counterpart, how often it was needed) (`prepare`, `generate`).
_RECHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# The first DarkNet module run in bf16 (`seqtr_lib.model.darknet.DarkNet53.layers`); those before stay float32.
BF16_FROM = "down2"


@dataclass
class RecheckTally:
    """How many samples a bf16 + recheck model generated and how many it generated again in float32; once
    more than RECHECK_GIVE_UP of at least RECHECK_TRIAL were rechecked, bf16 no longer pays and `generate`
    runs float32 alone (``float32_from``: the samples seen by then)."""

    samples: int = 0
    rechecked: int = 0
    float32_from: int | None = None

    def add(self, samples: int, rechecked: int) -> None:
        self.samples += samples
        self.rechecked += rechecked
        if (self.float32_from is None and self.samples >= RECHECK_TRIAL
                and self.rechecked > RECHECK_GIVE_UP * self.samples):
            self.float32_from = self.samples

    def describe(self) -> str:
        if self.float32_from is not None:
            return (f"bf16 given up: {self.rechecked} of the first {self.float32_from} samples were near-ties "
                    f"rechecked in float32 (over {RECHECK_GIVE_UP:.0%} costs more than float32 alone); float32 since")
        return f"{self.rechecked} of {self.samples} samples rechecked in float32"


def recheck_tally(model: nn.Module) -> RecheckTally | None:
    """The `RecheckTally` of a model `Execution.prepare` returned with bf16 + recheck, else None."""
    return _RECHECKS[model][1] if model in _RECHECKS else None


class ExecutionError(ValueError):
    """An execution spec that names an unknown step or asks for one the device cannot run."""


@dataclass(frozen=True)
class Execution:
    """Steps applied to a model for inference (`prepare`) and the context it runs in (`encoding`)."""

    channels_last: bool = False
    bf16: bool = False
    fold_bn: bool = False
    recheck: bool = False  # with bf16: near-tie samples generated again in float32 (`generate`)
    reason: str = ""  # why auto chose it (empty when named)

    @property
    def name(self) -> str:
        steps = [step for step in STEPS if getattr(self, step)]
        return "+".join(steps) if steps else "fp32"

    def describe(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` ready for inference under this execution: the same module when no step changes it
        (channels_last is applied in place and does not change values), else a copy (BatchNorm folded, the
        backbone's bf16 part wrapped); the weights given are never changed."""
        fallback = None
        if self.bf16 and self.recheck:  # float32 for the samples whose choices were too close to call in bf16 (`generate`)
            fallback = Execution(channels_last=self.channels_last, fold_bn=self.fold_bn).prepare(model)
        if self.fold_bn or self.bf16:
            model = fold_batchnorm(model) if self.fold_bn else copy.deepcopy(model)
        if self.bf16:
            _backbone_in_bf16(model.backbone, store_bf16=self.fold_bn)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if fallback is not None:
            _RECHECKS[model] = (fallback, RecheckTally())
        return model

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images in this execution's memory format."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images



FP32 = Execution()


def parse_execution(spec: str) -> Execution:
    """``fp32`` or steps joined by ``+`` (any order) -> Execution; ``auto`` is resolved by `pick_execution`."""
    spec = spec.strip()
    if spec in ("fp32", "none", ""):
        return FP32
    steps = [step.strip() for step in spec.split("+")]
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ExecutionError(f"execution {spec!r}: unknown step(s) {', '.join(map(repr, unknown))}; use 'auto', "
                             f"'fp32' or steps joined by '+' from {', '.join(STEPS)}")
    return Execution(**{step: True for step in steps})


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``) from a Linux cpuinfo file; empty elsewhere."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_bf16_units(flags: set[str] | None = None, environ: dict[str, str] | None = None,
                   torch_supports: bool | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 in hardware, and why: (yes, reason).

    Yes needs all of: a bf16 flag (`BF16_FLAGS`) among ``flags`` (default: /proc/cpuinfo's), oneDNN not
    capped below its bf16 ISA (``ONEDNN_MAX_CPU_ISA``), and torch's mkldnn reporting bf16 support
    (``torch_supports``, default: asked; it also says yes on AVX-512 CPUs that only emulate bf16).
    ``SEQTR_CPU_BF16=1`` / ``0`` in ``environ`` (default: os.environ) decides instead.
    """
    environ = os.environ if environ is None else environ
    override = environ.get("SEQTR_CPU_BF16", "").strip()
    if override in ("0", "1"):
        return override == "1", f"SEQTR_CPU_BF16={override}"
    flags = cpu_flags() if flags is None else flags
    found = sorted(set(BF16_FLAGS) & flags)
    if not found:
        return False, "no bf16 units among the CPU flags"
    cap = environ.get("ONEDNN_MAX_CPU_ISA", environ.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
    if cap and cap not in _BF16_ISAS:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} keeps oneDNN off the bf16 units"
    if torch_supports is None:
        torch_supports = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if not torch_supports:
        return False, "torch's oneDNN reports no bf16 support"
    return True, f"CPU flags {', '.join(found)}"


def backbone_work(model_config: Any, image_size: int) -> float:
    """Convolution work of the backbone relative to the paper's: (darknet_width x image_size / 640)^2
    (channels in and out both scale with the width)."""
    return (model_config.darknet_width * image_size / 640) ** 2


def pick_execution(device: torch.device | str, model_config: Any, image_size: int,
                   flags: set[str] | None = None, environ: dict[str, str] | None = None,
                   torch_supports: bool | None = None, generalised: bool = False) -> Execution | None:
    """The fastest safe inference execution for a model of ``model_config`` at ``image_size`` on ``device``.

    On a CPU: channels_last and folded BatchNorm always (the same values, cheaper); bf16 where the CPU has
    bf16 units and the backbone's work is at least BF16_MIN_WORK of the paper's, never for a ``generalised``
    model (data.max_objects > 0: no recheck of its answers). On a GPU: None, the model runs as its training
    step does (train.amp's autocast, train.channels_last).
    """
    device = torch.device(device)
    if device.type != "cpu":
        return None
    has_units, why = cpu_bf16_units(flags, environ, torch_supports)
    work = backbone_work(model_config, image_size)
    # A mask's 2N tokens nearly always hold a near-tie: bf16 kept 76 % of the synthetic mask's sequences and
    # recheck would redo nearly all of them in float32, so masks stay float32.
    bf16 = has_units and work >= BF16_MIN_WORK and getattr(model_config, "task", "box") == "box" and not generalised
    if not has_units:
        reason = why
    elif work >= BF16_MIN_WORK and generalised:
        reason = f"bf16 units ({why}), but a generalised answer has no bf16 recheck: float32"
    elif work >= BF16_MIN_WORK and not bf16:
        reason = f"bf16 units ({why}), but bf16 does not keep a mask's tokens: float32"
    elif not bf16:
        reason = f"bf16 units ({why}) but a small backbone ({work:.4f} of the paper's work) gains nothing"
    else:
        reason = f"bf16 units: {why}"
    return Execution(channels_last=True, bf16=bf16, fold_bn=True, recheck=bf16, reason=reason)


def resolve(spec: str | Execution | None, device: torch.device | str, model_config: Any,
            image_size: int, generalised: bool = False) -> Execution | None:
    """An Execution from a spec; ``auto`` (or None) is `pick_execution`'s choice (None on a GPU); a
    ``generalised`` model's (data.max_objects > 0) never holds bf16."""
    if isinstance(spec, Execution):
        chosen = spec
    elif spec is None or spec.strip() == "auto":
        return pick_execution(device, model_config, image_size, generalised=generalised)
    else:
        chosen = parse_execution(spec)
    if generalised and chosen.bf16:
        raise ExecutionError(f"execution {chosen.name!r}: bf16 is not supported for a generalised model "
                             "(data.max_objects > 0, no recheck of its answers); use 'auto', 'fp32' or drop bf16")
    return chosen


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which each DarkNet convolution absorbs its BatchNorm's running statistics:
    w' = w * g / sqrt(v + eps), b' = b - m * g / sqrt(v + eps), and the BatchNorm becomes an identity.

    Exact in real arithmetic for a model in eval mode (float rounding differs by ~1e-6 relative). Only
    `ConvBNLeaky` layers are folded; each keeps a `FoldedBatchNorm` in its BatchNorm's place, where
    `padding_zeroed` zeroes the padding of a non-square image as before.
    """
    from seqtr_lib.model.darknet import ConvBNLeaky
    from seqtr_lib.model.fusion import FoldedBatchNorm

    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, ConvBNLeaky) and isinstance(module.bn, nn.BatchNorm2d):
            conv, bn = module.conv, module.bn
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                weight = conv.weight * scale.reshape(-1, 1, 1, 1)
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
            fused.weight = nn.Parameter(weight.contiguous(memory_format=torch.contiguous_format),
                                        requires_grad=False)
            fused.bias = nn.Parameter(bias, requires_grad=False)
            module.conv = fused.to(conv.weight.device)
            module.bn = FoldedBatchNorm()
    return folded


def training_bf16(device: torch.device, amp: str) -> bool:
    """Whether a training step (and the validation inside it) runs under bf16 autocast: ``train.amp`` bf16
    on a GPU, or on a CPU with bf16 units (`cpu_bf16_units`); elsewhere it would only be slower."""
    if amp != "bf16":
        return False
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_units()[0])


def machine_description() -> dict[str, Any]:
    """The CPU, its bf16 detection and the torch build, for benchmark reports."""
    from seqtr_lib.reports import cpu_model

    flags = cpu_flags()
    has_units, why = cpu_bf16_units()
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "torch": torch.__version__,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "bf16_units": has_units, "bf16_detection": why,
            "flags": sorted(flag for flag in flags if flag.startswith(("avx", "amx", "fma", "f16c")))
            + sorted(flag for flag in flags if flag in ("bf16", "asimd", "sve", "sve2"))}


class Bf16Module(nn.Module):
    """Runs ``module`` under bf16 autocast on its input's device; ``to_float`` returns float32 (a map that
    leaves the backbone), else the bf16 result goes on to the next wrapped module."""

    def __init__(self, module: nn.Module, to_float: bool) -> None:
        super().__init__()
        self.module = module
        self.to_float = to_float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.module(x)
        return out.float() if self.to_float else out


def _backbone_in_bf16(backbone: nn.Module, store_bf16: bool) -> None:
    """Wrap the DarkNet modules from BF16_FROM on in `Bf16Module` (in place); ``store_bf16`` also stores
    their weights in bf16 (only valid with BatchNorm folded: a BatchNorm must keep float32 statistics)."""
    from seqtr_lib.model.darknet import OUTPUT_MODULES

    names = [name for name, _ in backbone.layers.named_children()]
    for name in names[names.index(BF16_FROM):]:
        module = getattr(backbone.layers, name)
        if store_bf16:
            module.to(torch.bfloat16)
        setattr(backbone.layers, name, Bf16Module(module, to_float=name in OUTPUT_MODULES))


def ran_as(model: nn.Module, execution: Execution) -> str:
    """The name of what ``model`` (prepared by ``execution``) now runs: ``execution``'s, or its float32
    counterpart's once the recheck gave bf16 up (`RecheckTally`)."""
    tally = recheck_tally(model)
    if tally is not None and tally.float32_from is not None:
        return Execution(channels_last=execution.channels_last, fold_bn=execution.fold_bn).name
    return execution.name


def runs_in_bf16(model: nn.Module) -> bool:
    """Whether ``model`` (as `Execution.prepare` returns it) runs part of its backbone in bf16."""
    return any(isinstance(module, Bf16Module) for module in model.modules())


def generate(model: nn.Module, execution: Execution, images: torch.Tensor, pad_mask: torch.Tensor,
             expression_ids: torch.Tensor, decoder: Any = None, **decoding: Any) -> dict[str, torch.Tensor]:
    """`SeqTR.generate` of a model that ``execution.prepare`` returned: images in its memory format; decoding
    by ``decoder`` (e.g. a GraphDecoder) when given.

    With bf16, recheck and greedy decoding, every choice the model made (each token, and the query-selection cell) is
    checked: a sample whose winning logit led the runner-up by less than ``RECHECK_MARGIN`` anywhere is
    generated again in float32 and takes that result. The output then also holds ``min_margin`` float (B,)
    (the smallest lead, bf16) and ``rechecked`` bool (B,). Once a model's `RecheckTally` gives bf16 up, its
    samples are generated in float32 alone (no such keys).
    """
    images = execution.images(images)
    fallback, tally = _RECHECKS.get(model, (None, None))
    check = (fallback is not None and decoder is None and decoding.get("strategy", "greedy") == "greedy"
             and RECHECK_MARGIN > 0)
    if check and tally.float32_from is not None:  # near-ties were so common that bf16 stopped paying
        return generate(fallback, FP32, images, pad_mask, expression_ids, **decoding)
    steps: list[torch.Tensor] = []
    handle = model.predictor.register_forward_hook(lambda m, i, out: steps.append(out.float())) if check else None
    try:
        memory = model.encode(images, pad_mask, expression_ids)
        if decoder is not None:
            return decoder.generate_from_memory(memory, **decoding)
        generated = model.generate_from_memory(memory, **decoding)
    finally:
        if handle is not None:
            handle.remove()
    if not check:
        return generated
    margin = _smallest_lead(model, memory, steps, generated, decoding.get("task"))
    return redo_near_ties(generated, margin, RECHECK_MARGIN, tally,
                          lambda rows: generate(fallback, FP32, images[rows], pad_mask[rows], expression_ids[rows],
                                                **decoding))


def redo_near_ties(generated: dict[str, torch.Tensor], margin: torch.Tensor, threshold: float, tally: RecheckTally,
                   regenerate: Any) -> dict[str, torch.Tensor]:
    """The recheck's second half, shared by bf16 here and the exported int8 encoder (`seqtr_lib.runtime`): the
    samples whose smallest lead ``margin`` (B,) is under ``threshold`` take what ``regenerate(rows)`` gives them (in
    float32), the tally counts them; adds ``min_margin`` and ``rechecked`` (B,)."""
    unsure = margin < threshold
    tally.add(len(unsure), int(unsure.sum()))
    if bool(unsure.any()):
        rows = unsure.nonzero()[:, 0]
        for key, value in regenerate(rows).items():
            generated[key][rows] = value.to(generated[key].dtype)
    return {**generated, "min_margin": margin, "rechecked": unsure}


def _lead(logits: torch.Tensor) -> torch.Tensor:
    """How far the largest of each row's logits (B, V) is ahead of the second: (B,), inf for one value."""
    if logits.shape[-1] < 2:
        return torch.full(logits.shape[:1], math.inf, device=logits.device)
    top = logits.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def _smallest_lead(model: nn.Module, memory: Any, steps: list[torch.Tensor], generated: dict[str, torch.Tensor],
                   task: str | None) -> torch.Tensor:
    """Each sample's smallest lead of a winning logit over the runner-up, over the query-selection cell
    (with query selection) and every emitted token up to its EOS (``steps``: the predictor's logits (B, V),
    one per decoding step, in order)."""
    aids = model.aids
    cell_logits = aids.cell_logits(memory) if aids is not None and aids.query_projection is not None else None
    return smallest_lead(model.layout, steps, generated, task, cell_logits)


def smallest_lead(layout: Any, steps: list[torch.Tensor], generated: dict[str, torch.Tensor], task: str | None,
                  cell_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's smallest lead of a winning logit over the runner-up, over the query-selection cell
    (``cell_logits`` (B, S), with query selection) and every emitted token up to its EOS (``steps``: the
    predictor's logits (B, V), one per decoding step, in order). Also the exported int8 runtime's recheck."""
    batch, device = steps[0].shape[0], steps[0].device
    smallest = torch.full((batch,), math.inf, device=device)
    if cell_logits is not None:
        smallest = torch.minimum(smallest, _lead(cell_logits.float()))
    offset = 0
    for part in layout.parts_to_generate(task):
        tokens = generated[f"{part}_tokens"]
        count = layout.length(part) if not layout.stops_at_eos(part) else len(steps) - offset
        for step in range(count):
            logits = steps[offset + step]
            if layout.stops_at_eos(part):
                live = ~(tokens[:, :step] == layout.eos).any(dim=1)  # rows that had not ended yet
                lead = _lead(logits).masked_fill(~live, math.inf)
            else:
                lead = _lead(logits[:, :layout.eos])  # a box never emits EOS
            smallest = torch.minimum(smallest, lead)
        offset += count
    return smallest
