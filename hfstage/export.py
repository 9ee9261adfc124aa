"""``hfstage export STAGE --format onnx|pt2``: a saved stage as an ONNX model or a ``torch.export`` program.

The stage is traced on a real batch of its own data (its eval split, through the task's evaluation collator),
with the batch dimension dynamic (and the time axis for sequences and audio), then checked at once: the exported
model is run (onnxruntime; the loaded program for pt2) on a *second* real batch of another size and compared
with PyTorch. Above ``tolerance`` (1e-4) the export fails and nothing is left behind.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from hfstage.checkpoint import atomic_write_json, publish_dir, staging_dir
from hfstage.errors import CheckpointError, ConfigError, DataError, StageError, first_line

logger = logging.getLogger("hfstage")

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4
# model type -> (inputs with their dynamic axes, outputs)
SPECS = {
    "hfstage_pair_cnn": ({"pixel_values": {0: "batch"}}, ["logits"]),
    "hfstage_timm": ({"pixel_values": {0: "batch"}}, ["logits"]),
    "hfstage_sequence": ({"input_values": {0: "batch", 1: "time"}, "attention_mask": {0: "batch", 1: "time"}},
                         ["logits"]),
    "hfstage_speech": ({"input_values": {0: "batch", 1: "samples"}, "attention_mask": {0: "batch", 1: "samples"},
                        "canonical_ids": {0: "batch", 1: "phonemes"}, "canonical_mask": {0: "batch", 1: "phonemes"}},
                       ["logits", "error_logits", "output_lengths"]),
}


class _Positional(torch.nn.Module):
    """The model with positional tensor inputs and a tuple of tensor outputs, as exporters want it."""

    def __init__(self, model, inputs: list[str], outputs: list[str]):
        super().__init__()
        self.model, self.inputs, self.outputs = model, inputs, outputs

    def forward(self, *args):
        out = self.model(**dict(zip(self.inputs, args)))
        return tuple(out[name] for name in self.outputs)


def _batches(checkpoint, model, sizes: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    """Two real batches (of ``sizes``) from the stage's eval split, as the evaluation collator makes them."""
    from hfstage.evaluation import checkpoint_task, split_path

    task = checkpoint_task(checkpoint)  # (speech: with the stage's processor)
    split = split_path(checkpoint.data, "val")
    dataset = task.load_split(split, "the stage's eval split", limit=sum(sizes))
    if len(dataset) < 2:
        raise DataError(f"{split}: needs at least 2 samples to export and check the model")
    collate = task.collator(None, training=False, model_config=model.config)
    first = min(sizes[0], len(dataset) - 1)
    chosen = [list(range(first)), list(range(first, len(dataset)))]
    return [collate([dataset[i] for i in indices]) for indices in chosen]


def export_stage(stage: str | Path, fmt: str = "onnx", out: str | Path | None = None, opset: int = 17,
                 data_dir: str | None = None, tolerance: float = TOLERANCE) -> dict:
    """Export a stage (a stage folder, a run's best stage, or an ``hf://`` reference); returns what export.json holds."""
    from hfstage.resolve import resolve_checkpoint

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose {' or '.join(FORMATS)}")
    checkpoint = resolve_checkpoint(stage)
    if data_dir is not None:
        checkpoint.data.path = data_dir
    model = checkpoint.load_model().eval()
    model_type = "hfstage_timm" if checkpoint.task == "image_classification" else model.config.model_type
    if model_type not in SPECS:
        raise CheckpointError(f"{checkpoint.stage_dir}: a {model_type} model; export knows {', '.join(SPECS)}")
    dynamic, outputs = SPECS[model_type]
    names = list(dynamic)
    try:
        trace_batch, check_batch = _batches(checkpoint, model, (2, 5))
    except (DataError, CheckpointError) as exc:
        raise DataError(f"export checks the model on real data and could not read it: {exc} (give --data DIR)") from None
    wrapped = _Positional(model, names, outputs).eval()
    trace_args = tuple(trace_batch[n] for n in names)
    if out is None:  # beside a local stage; ./export/<owner>--<name>/<stage>/ for a Hub one (never the Hub cache)
        out = checkpoint.stage_dir / fmt if checkpoint.reference is None else Path("export", *checkpoint.eval_dir.parts[1:], fmt)
    out = Path(out)
    staged = staging_dir(out)
    began = time.time()
    try:
        with torch.no_grad():
            expected = [t.float().numpy() for t in wrapped(*(check_batch[n] for n in names))]
        if fmt == "onnx":
            target = staged / "model.onnx"
            got, exporter, opset = _onnx(wrapped, trace_args, names, outputs, dynamic, opset, target, check_batch,
                                         expected)
        else:
            target = staged / "model.pt2"
            got, exporter = _pt2(wrapped, trace_args, names, dynamic, target, check_batch), "torch.export"
        diff = max(float(np.abs(np.asarray(g, dtype=np.float64) - e).max()) for g, e in zip(got, expected))
        if not diff <= tolerance:
            raise StageError(f"export of {checkpoint.stage_dir} to {fmt}: the exported model differs from PyTorch by "
                             f"{diff:.3g} (max abs) on a batch of {len(check_batch[names[0]])}, above {tolerance:g}; "
                             "nothing was written")
        result = {"stage": checkpoint.reference or str(checkpoint.stage_dir), "format": fmt, "file": target.name,
                  "inputs": {n: list(dynamic[n].values()) for n in names}, "outputs": outputs,
                  "opset": opset if fmt == "onnx" else None, "exporter": exporter, "max_abs_difference": diff,
                  "checked_batch_size": int(len(check_batch[names[0]])), "tolerance": tolerance,
                  "seconds": round(time.time() - began, 2)}
        atomic_write_json(staged / "export.json", result)
        publish_dir(staged, out)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    result["path"] = str(out / target.name)
    logger.info("exported %s to %s (max abs difference %.3g)", checkpoint.stage_dir, result["path"], diff)
    return result


def _dynamic_shapes(names: list[str], dynamic: dict) -> tuple:
    """torch.export's ``dynamic_shapes`` for the positional inputs: one ``Dim`` per axis label, shared by the inputs
    that carry it (``input_values`` and ``attention_mask`` have the same time axis)."""
    dims: dict[str, torch.export.Dim] = {}
    return (tuple({axis: dims.setdefault(label, torch.export.Dim.DYNAMIC) for axis, label in dynamic[n].items()}
                  for n in names),)


def _onnx(wrapped, args, names, outputs, dynamic, opset, target: Path, check_batch, expected):
    """Export with the TorchScript-based exporter (it handles packed RNN sequences, which torch.export refuses);
    if its graph fails on the second batch (a shape traced as a constant) or it cannot export the model, with the
    torch.export-based one. Returns the outputs of the exported model on ``check_batch`` (``expected``: PyTorch's)."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("--format onnx needs onnx and onnxruntime: pip install 'hfstage[export]'") from None
    import warnings

    def run() -> list:
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        used = {i.name for i in session.get_inputs()}  # an input the graph never reads is dropped by the exporter
        return session.run(None, {n: check_batch[n].numpy() for n in names if n in used})

    failures = []
    for dynamo in (False, True):
        # traced with autograd on: in no_grad mode torch swaps in fused kernels (the transformer encoder's fast
        # path) that have no ONNX form
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the exporters' deprecation and shape-inference notes
                if dynamo:
                    torch.onnx.export(wrapped, args, str(target), input_names=names, output_names=outputs,
                                      opset_version=max(opset, 18), dynamic_shapes=_dynamic_shapes(names, dynamic),
                                      dynamo=True, verbose=False)
                else:
                    torch.onnx.export(wrapped, args, str(target), input_names=names, output_names=outputs,
                                      opset_version=opset, dynamo=False,
                                      dynamic_axes={n: {a: f"{n}_{label}" for a, label in dynamic[n].items()}
                                                    for n in names})
            got = run()
        except Exception as exc:  # noqa: BLE001  either exporter, or onnxruntime on its graph
            failures.append(f"{'torch.export' if dynamo else 'TorchScript'} exporter: "
                            f"{first_line(exc)[:160]}")
            continue
        if all(np.shape(g) == np.shape(e) and np.allclose(g, e, atol=TOLERANCE) for g, e in zip(got, expected)):
            return got, "torch.export" if dynamo else "torchscript", max(opset, 18) if dynamo else opset
        failures.append(f"{'torch.export' if dynamo else 'TorchScript'} exporter: its graph differs on a second batch")
    raise StageError(f"--format onnx: no exporter produced a model that matches PyTorch ({'; '.join(failures)})")


def _pt2(wrapped, args, names, dynamic, target: Path, check_batch):
    try:
        program = torch.export.export(wrapped, args, dynamic_shapes=_dynamic_shapes(names, dynamic))
    except Exception as exc:  # noqa: BLE001  torch.export refuses some layers (packed RNN sequences)
        raise ConfigError(f"--format pt2: torch.export cannot capture this model ({first_line(exc)[:200]}); "
                          "use --format onnx") from None
    torch.export.save(program, str(target))
    loaded = torch.export.load(str(target)).module()
    with torch.no_grad():
        return [t.float().numpy() for t in loaded(*(check_batch[n] for n in names))]
