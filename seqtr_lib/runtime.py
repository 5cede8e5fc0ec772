"""Run an exported SeqTR (`seqtr_lib.export`) with OpenVINO or ONNX Runtime instead of PyTorch.

    model = ExportedSeqTR("exported/synthetic_det")              # OpenVINO when installed, else ONNX Runtime
    generated = model.generate(images, pad_mask, expression_ids)  # what SeqTR.generate returns

The runtime runs the encoder once and one decoder step per token; the keys and values of the positions so far stay
on the runtime's side between steps (OpenVINO: the step graph made stateful, the cache its state; ONNX Runtime:
the step's outputs bound to runtime-held buffers that the next step reads), and the encoder's memory is handed
over once per answer. The token choices (greedy or nucleus, EOS, a generalised answer's grammar) are made
by `seqtr_lib.model.decoding.decode`, the code that decodes the PyTorch model, from the runtime's logits.
No attention maps (`Grounder.predict(return_attention=True)` needs the PyTorch backend).

The runtimes come with the optional extra: ``pip install ".[deploy]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seqtr_lib.codec import TokenLayout
from seqtr_lib.config import Experiment, experiment_from_dict
from seqtr_lib.execution import RecheckTally, redo_near_ties, smallest_lead
from seqtr_lib.export import read_manifest
from seqtr_lib.model import decoding as token_decoding
from seqtr_lib.text import Vocabulary

RUNTIMES = ("openvino", "onnxruntime")
# An int8 sample is generated again with the float32 encoder when any greedy choice (a token, the query-selection
# cell) led the runner-up by less than this, in logits. int8 moves logits further than bf16 (execution.py's 0.02):
# on the released synthetic box weights with ONNX Runtime's int8 encoder (1,024 val expressions), 0.02 kept
# 87.9 % of float32's boxes (9.5 % rechecked), 0.1 98.2 % (45.7 %), 0.2 99.8 % (74.6 %). Past RecheckTally's
# give-up share int8 stops paying and the export runs float32 alone, as a bf16 model does.
RECHECK_MARGIN = 0.2


class RuntimeMissing(ImportError):
    """The runtime asked for is not installed."""


def available_runtimes() -> tuple[str, ...]:
    """The installed runtimes, in the order ``auto`` prefers them (OpenVINO was the faster on every CPU measured:
    benchmarks/README.md)."""
    import importlib.util

    return tuple(name for name in RUNTIMES if importlib.util.find_spec(name) is not None)


def _openvino_compiled(model: Any, threads: int) -> Any:
    """An OpenVINO model (or the path of an ONNX file) compiled for this CPU, in float32, for latency."""
    import openvino as ov

    # f32 inference precision: on CPUs with bf16 units OpenVINO would otherwise compute in bf16.
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads,
                                                  "PERFORMANCE_HINT": "LATENCY"})


def _onnxruntime_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Graph:
    """One ONNX graph compiled by a runtime: ``run(inputs) -> {output name: array}``."""

    def __init__(self, path: Path, runtime: str, threads: int) -> None:
        self.runtime = runtime  # one of RUNTIMES: ExportedSeqTR checked it
        if runtime == "openvino":
            self.compiled = _openvino_compiled(str(path), threads)
            self.request = self.compiled.create_infer_request()
            self.outputs = [output.get_any_name() for output in self.compiled.outputs]
        else:
            self.session = _onnxruntime_session(path, threads)
            self.outputs = [output.name for output in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.runtime == "openvino":
            results = self.request.infer(inputs)
            return {name: np.array(results[self.compiled.output(name)]) for name in self.outputs}
        return dict(zip(self.outputs, self.session.run(None, inputs)))


class _Tokens(nn.Module):
    """What `decoding.decode` needs of a model besides its decoder: the layout and the input embeddings."""

    def __init__(self, layout: TokenLayout, tables: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.layout = layout
        self.token_embedding = nn.Embedding.from_pretrained(torch.from_numpy(tables["token_embedding"]))
        task = tables.get("task_embedding")
        self.task_embedding = None if task is None else nn.Embedding.from_pretrained(torch.from_numpy(task))

    def part_start(self, index: int, batch: int) -> torch.Tensor:
        return self.task_embedding.weight[index].expand(batch, 1, -1)


class _CachedStep:
    """The exported decoder step with its self-attention cache kept by the runtime: `begin` hands over one batch's
    encoder memory and empties the cache, then `run(input, position)` feeds one input of each sample and returns
    the logits (B, V), the cache growing by that position. One decoding at a time per object."""

    CACHE = {"self_keys": "new_self_keys", "self_values": "new_self_values"}
    MEMORY = ("memory_keys", "memory_values", "memory_attend")

    def __init__(self, path: Path, runtime: str, threads: int, cache: dict[str, int], length: int) -> None:
        self.runtime, self.cache, self.length = runtime, cache, length
        if runtime == "openvino":
            import openvino as ov
            from openvino import passes

            graph = ov.Core().read_model(str(path))
            # Each cache input/output pair becomes one state: the runtime feeds a step's written cache to the next.
            manager = passes.Manager()
            manager.register_pass(passes.MakeStateful(self.CACHE))
            manager.run_passes(graph)
            self.request = _openvino_compiled(graph, threads).create_infer_request()
        else:
            self.session = _onnxruntime_session(path, threads)

    def begin(self, encoded: dict[str, np.ndarray]) -> None:
        batch = encoded["start"].shape[0]
        shape = (self.cache["layers"], batch, self.cache["heads"], self.length, self.cache["head_size"])
        memory = {key: np.ascontiguousarray(encoded[key]) for key in self.MEMORY}
        if self.runtime == "openvino":
            import openvino as ov

            for state in self.request.query_state():
                state.state = ov.Tensor(np.zeros(shape, np.float32))
            self.held = memory  # the shared tensors below read these arrays: they must outlive the decoding
            for key, array in memory.items():
                self.request.set_tensor(key, ov.Tensor(array, shared_memory=True))
            return
        import onnxruntime as ort

        self.binding = self.session.io_binding()
        self.binding.bind_output("logits", "cpu")  # bound first: the first of get_outputs()
        for key, array in memory.items():
            self.binding.bind_ortvalue_input(key, ort.OrtValue.ortvalue_from_numpy(array))
        # Two sets of cache buffers, read and written in turn: a step never writes the buffer it reads.
        self.buffers = [{key: ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for key in self.CACHE}
                        for _ in range(2)]

    def run(self, inputs: np.ndarray, position: int) -> np.ndarray:
        index = np.array([position], dtype=np.int64)
        if self.runtime == "openvino":
            self.request.infer({"input": inputs, "index": index})
            return self.request.get_tensor("logits").data.copy()
        read, written = self.buffers[position % 2], self.buffers[(position + 1) % 2]
        self.binding.bind_cpu_input("input", inputs)
        self.binding.bind_cpu_input("index", index)
        for key, output in self.CACHE.items():
            self.binding.bind_ortvalue_input(key, read[key])
            self.binding.bind_ortvalue_output(output, written[key])
        self.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()[0].numpy().copy()  # a view of a buffer the next step reuses


class _StepDecoding:
    """`decoding.Decoding` for the exported step: each input not yet fed runs one step (the runtime keeps the
    cache); the logits of the last are returned."""

    last_attention = None

    def __init__(self, step: _CachedStep, encoded: dict[str, np.ndarray], record: list[torch.Tensor] | None) -> None:
        self.step = step
        self.inputs = torch.from_numpy(encoded["start"])
        step.begin(encoded)
        self.position = 0
        self.record = record  # each step's logits, for the recheck (`ExportedSeqTR.generate`)

    def append(self, embeddings: torch.Tensor) -> None:
        self.inputs = torch.cat([self.inputs, embeddings], dim=1)

    def next_logits(self) -> torch.Tensor:
        for column in range(self.inputs.shape[1]):
            logits = self.step.run(np.ascontiguousarray(self.inputs[:, column:column + 1].numpy()), self.position)
            self.position += 1
        self.inputs = self.inputs[:, :0]
        logits = torch.from_numpy(logits)
        if self.record is not None:
            self.record.append(logits)
        return logits


class ExportedSeqTR:
    """An export folder compiled by a runtime (``openvino``, ``onnxruntime`` or ``auto``: the first installed of
    `RUNTIMES`), with what `Grounder` needs besides: the experiment, the vocabulary and the token layout."""

    def __init__(self, directory: str | Path, runtime: str = "auto", precision: str = "fp32",
                 threads: int | None = None) -> None:
        directory = Path(directory)
        self.manifest = manifest = read_manifest(directory)
        installed = available_runtimes()
        if runtime == "auto":
            if not installed:
                raise RuntimeMissing("no inference runtime is installed: pip install '.[deploy]' (OpenVINO and "
                                     "ONNX Runtime), or use the torch backend")
            runtime = installed[0]
        elif runtime not in RUNTIMES:
            raise ValueError(f"runtime {runtime!r} is unknown; use 'auto' or one of {', '.join(RUNTIMES)}")
        elif runtime not in installed:
            raise RuntimeMissing(f"runtime {runtime!r} is not installed: pip install '.[deploy]'")
        self.runtime = runtime
        self.directory = directory
        threads = threads or torch.get_num_threads() or os.cpu_count() or 1
        graphs = manifest["graphs"]
        self.precision, self.reason = choose_precision(manifest, precision, runtime)
        self.encoder = _Graph(directory / graphs["encoder"], runtime, threads)
        self.encoder_int8 = (_Graph(directory / graphs["encoder_int8"], runtime, threads)
                             if self.precision == "int8" else None)
        self.tally = RecheckTally() if self.encoder_int8 is not None else None
        self.step = _CachedStep(directory / graphs["step"], runtime, threads, manifest["cache"],
                                manifest["layout"]["decoder_length"])
        self.experiment: Experiment = experiment_from_dict(manifest["config"], source=str(directory))
        self.vocabulary = Vocabulary.from_list(manifest["vocabulary"])
        data = self.experiment.data
        self.layout = TokenLayout(self.experiment.model.task, self.experiment.model.num_bin,
                                  self.experiment.model.num_ray, data.max_objects, data.max_points)
        with np.load(directory / graphs["embeddings"]) as tables:
            self.tokens = _Tokens(self.layout, dict(tables))

    @property
    def name(self) -> str:
        """What runs, for `Prediction.execution`: e.g. ``openvino fp32`` or ``openvino int8+recheck``, and
        ``openvino fp32 (int8 given up)`` once the recheck found int8 no longer pays."""
        if self.tally is None:
            return f"{self.runtime} fp32"
        return f"{self.runtime} fp32 (int8 given up)" if self.tally.float32_from is not None else \
            f"{self.runtime} int8+recheck"

    def encode(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor,
               int8: bool = False) -> dict[str, np.ndarray]:
        """The encoder graph's outputs (`seqtr_lib.export`) for a batch as `SeqTR.encode` takes it; ``int8``: the
        quantised encoder's."""
        graph = self.encoder_int8 if int8 else self.encoder
        return graph.run({"images": np.ascontiguousarray(images.float().cpu().numpy()),
                          "pad_mask": np.ascontiguousarray(pad_mask.cpu().numpy()),
                          "expression_ids": np.ascontiguousarray(expression_ids.cpu().numpy())})

    @torch.no_grad()
    def generate(self, images: torch.Tensor, pad_mask: torch.Tensor, expression_ids: torch.Tensor,
                 task: str | None = None, strategy: str = "greedy", top_p: float = 0.9,
                 generator: torch.Generator | None = None, return_attention: bool = False,
                 step_logits: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """`SeqTR.generate` of the exported network: the same keys, tokens and scores. ``step_logits``, a list,
        receives each step's logits (B, V) in order."""
        if return_attention:
            raise ValueError("an exported model returns no attention maps; use the torch backend for them")
        int8 = self.tally is not None and self.tally.float32_from is None
        check = int8 and strategy == "greedy"
        steps: list[torch.Tensor] | None = [] if check else step_logits
        encoded = self.encode(images, pad_mask, expression_ids, int8=int8)
        generated = self._decode(encoded, task, strategy, top_p, generator, steps)
        if not check:
            return generated
        cell_logits = torch.from_numpy(encoded["cell_logits"]) if "cell_logits" in encoded else None
        margin = smallest_lead(self.layout, steps, generated, task, cell_logits)
        return redo_near_ties(generated, margin, RECHECK_MARGIN, self.tally,
                              lambda rows: self._decode(self.encode(images[rows], pad_mask[rows], expression_ids[rows]),
                                                        task, strategy, top_p, generator, None))

    def _decode(self, encoded: dict[str, np.ndarray], task: str | None, strategy: str, top_p: float,
                generator: torch.Generator | None, steps: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        decoding = _StepDecoding(self.step, encoded, steps)
        return token_decoding.decode(self.tokens, decoding, task, strategy, top_p, generator)


PRECISIONS = ("fp32", "int8", "auto")
# ``auto`` takes int8 only where the export's agreement record (benchmarks/cpu_agreement.py --exported --record)
# shows that int8 + recheck kept float32's answers on at least this share of expressions.
AGREEMENT_NEEDED = 0.99


def choose_precision(manifest: dict[str, Any], precision: str, runtime: str) -> tuple[str, str]:
    """(``fp32`` or ``int8``, why) for an export run by ``runtime``: ``int8`` needs its quantised encoder
    (`export.quantize_encoder`); ``auto`` takes int8 only where the agreement measured for this export and this
    runtime (each has its own int8 kernels) reached `AGREEMENT_NEEDED`, never for a generalised model (no
    recheck of its answers)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    has_int8 = "encoder_int8" in manifest["graphs"]
    generalised = manifest["config"].get("data", {}).get("max_objects", 0) > 0
    if precision == "int8":
        if not has_int8:
            raise ValueError("this export has no int8 encoder: export again with --calibration-data DATA_ROOT")
        if generalised:
            raise ValueError("int8 is not supported for a generalised model (data.max_objects > 0, no recheck of "
                             "its answers); use precision 'fp32'")
        return "int8", "asked for"
    if precision == "fp32":
        return "fp32", "asked for"
    agreement = manifest.get("agreement", {}).get(runtime)
    if not has_int8:
        return "fp32", "no int8 encoder in the export"
    if generalised:
        return "fp32", "a generalised answer has no int8 recheck"
    if agreement is None:
        return "fp32", f"int8's agreement with float32 was never measured for this export with {runtime}"
    if (agreement.get("recheck") or {}).get("float32_from") is not None:
        return "fp32", (f"int8's choices were near-ties on {agreement['recheck']['rechecked']} of "
                        f"{agreement['recheck']['samples']} measured samples: the recheck gave int8 up")
    if agreement["equal_to_fp32"] < AGREEMENT_NEEDED:
        return "fp32", (f"int8 + recheck kept {agreement['equal_to_fp32']:.1%} of float32's answers "
                        f"(< {AGREEMENT_NEEDED:.0%})")
    return "int8", f"int8 + recheck kept {agreement['equal_to_fp32']:.1%} of float32's answers"
