"""``StageTrainer``: a ``transformers.Trainer`` that trains one curriculum stage.

Following TRL, the trainer has its own ``TrainingArguments`` subclass holding what a stage adds
(the loss, per-group learning-rate multipliers, distillation) and overrides only ``compute_loss`` and
``create_optimizer``; the loop, devices, precision and checkpointing stay the Trainer's and
accelerate's. Freezing, dropout and parameter groups are ``surgery.py``'s.
"""

from __future__ import annotations

import functools
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from hfstage.devices import cpu_only, tune_cpu_allocator
from hfstage.errors import StageError
from hfstage.losses import CrossEntropyLoss, DistillationLoss, build_loss
from hfstage.surgery import parameter_groups

logger = logging.getLogger("hfstage")


def _cache_accelerate_lomo_probe() -> None:
    """Make accelerate's per-step "is the ``lomo_optim`` package installed?" probe a one-time check.

    ``AcceleratedOptimizer.step`` and ``zero_grad`` call ``is_lomo_available()`` on every optimizer step
    (accelerate 1.15), and each call is an uncached ``importlib.util.find_spec`` that stats every
    ``sys.path`` entry: ~0.4 ms per step measured here, as much as the whole forward pass of a small
    model on a GPU. Whether a package is installed does not change while a process trains, so the
    answer is cached; the rest of accelerate's behaviour is untouched.
    """
    from accelerate import accelerator as acc_accelerator
    from accelerate import optimizer as acc_optimizer

    for module in (acc_optimizer, acc_accelerator):
        probe = getattr(module, "is_lomo_available", None)
        if probe is not None and not hasattr(probe, "cache_info"):
            module.is_lomo_available = functools.cache(probe)



@dataclass
class StageTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus what one curriculum stage adds."""

    stage_name: str = field(default="stage", metadata={"help": "Name of the stage, for messages and logs."})
    stage_index: int = field(default=1, metadata={"help": "Number of the stage in its curriculum (from 1)."})
    loss: Any = field(default="cross_entropy", metadata={
        "help": "Training loss: a registered loss name or a mapping {type: NAME, argument: value, ...}."})
    label_smoothing: float = field(default=0.0, metadata={"help": "Label smoothing of the training loss."})
    lr_multipliers: dict[str, float] = field(
        default_factory=dict, metadata={"help": "Parameter-name glob -> learning-rate multiplier."}
    )
    distillation: dict[str, float] = field(default_factory=dict, metadata={
        "help": "With a teacher model: the arguments of DistillationLoss (temperature, alpha)."})
    # A non-finite training loss stops the stage (StageTrainer), so the Trainer's own per-step NaN filter,
    # which reads the loss back from the device every step, has nothing left to do.
    logging_nan_inf_filter: bool = False
    on_nonfinite: str = field(default="stop", metadata={"help": "stop | skip: what a non-finite training loss does."})
    nonfinite_check_steps: int = field(
        default=25,
        metadata={"help": "On accelerators, how often (in steps) the non-finite-loss flag is read back; "
                  "also at every log, evaluation and save. On the CPU every step is checked."},
    )

    @classmethod
    def for_stage(cls, cfg, stage, index: int, work: Path, label_names: Sequence[str] = ("labels",)):
        """The arguments of stage ``index`` of run config ``cfg``: hfstage's keys (see ``training_args.MODELLED``),
        then the stage's ``training_args`` (every other TrainingArguments field)."""
        steps = stage.eval_steps
        precision = stage.mixed_precision
        kwargs = dict(
            output_dir=str(work),
            num_train_epochs=stage.epochs,
            learning_rate=stage.lr,
            lr_scheduler_type=stage.scheduler,
            lr_scheduler_kwargs=dict(stage.scheduler_kwargs),
            warmup_steps=stage.warmup_ratio,
            weight_decay=stage.weight_decay,
            optim=stage.optim,
            per_device_train_batch_size=stage.batch_size,
            per_device_eval_batch_size=stage.eval_batch_size,
            gradient_accumulation_steps=stage.gradient_accumulation_steps,
            train_sampling_strategy="group_by_length" if stage.group_by_length else "random",
            max_grad_norm=stage.max_grad_norm,
            on_nonfinite=stage.on_nonfinite,
            eval_strategy="steps" if steps else "epoch",
            save_strategy="steps" if steps else "epoch",
            eval_steps=steps,
            save_steps=steps,
            save_total_limit=1,
            load_best_model_at_end=True,
            metric_for_best_model=cfg.metric_for_best_model,
            greater_is_better=cfg.greater_is_better,
            logging_steps=cfg.logging_steps,
            report_to="none",  # hfstage's trackers log the whole curriculum as one run (tracking.py)
            seed=cfg.seed + index - 1,  # each stage its own data order and augmentation draws, reproducibly
            use_cpu=cpu_only(),
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            dataloader_num_workers=cfg.data.num_workers,
            label_names=list(label_names),
            remove_unused_columns=False,
            disable_tqdm=False,
            stage_name=stage.name,
            stage_index=index,
            loss=stage.loss,
            label_smoothing=stage.label_smoothing,
            lr_multipliers=dict(stage.lr_multipliers),
            distillation={k: v for k, v in (stage.teacher or {}).items() if k != "checkpoint"},
        )
        kwargs.update(stage.training_args)  # names hfstage does not model (disable_tqdm may turn the bar off)
        args = cls(**kwargs)
        if precision == "no":
            args.mixed_precision = "no"  # overrides what the accelerate config asked for
        return args


class _BarsOnly(ProgressCallback):
    """The Trainer's progress bars without its printed log dicts (hfstage logs each event as one line)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def _quiet_console(trainer: Trainer) -> None:
    """Unless verbose: progress bars only in a terminal, and never the Trainer's printed dicts."""
    import sys

    from hfstage.log import verbose

    if verbose():
        return
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    if not trainer.args.disable_tqdm and trainer.is_world_process_zero() and sys.stderr.isatty():
        trainer.add_callback(_BarsOnly)


class _NonFiniteCheck(TrainerCallback):
    """Reads the device-side non-finite record back before anything is logged, evaluated or saved."""

    def __init__(self, trainer: StageTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        every = max(args.nonfinite_check_steps, 1)
        if control.should_log or control.should_evaluate or control.should_save or state.global_step % every == 0:
            self.trainer.check_finite()

    def on_epoch_end(self, args, state, control, **kwargs):
        self.trainer.check_finite()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer.check_finite()


def _is_dtensor(param) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return False
    return isinstance(param, DTensor)


class StageTrainer(Trainer):
    """Trains one stage: the stage's loss in training, plain cross-entropy for ``eval_loss``.

    ``eval_loss`` never includes label smoothing or focal weighting, so stages that train with
    different losses are compared on the same scale when the curriculum decides what to keep.
    """

    # our losses are per-batch means: let the Trainer divide by the accumulation steps
    loss_is_scaled_for_ga = False
    # None: the non-finite-loss check is deferred on accelerators and immediate on the CPU
    defer_nonfinite_check: bool | None = None

    def __init__(self, *args, eval_data_collator=None, teacher_model=None, adapt_dataset=None,
                 eval_in_training: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapt_dataset = adapt_dataset  # kind: adabn, the target images whose BatchNorm statistics are taken
        self.eval_in_training = eval_in_training  # train_on_eval: an estimator must not early-stop on its own data
        self.adapted: dict | None = None
        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.eval().requires_grad_(False)
        # evaluation (also the evaluations inside training) must never see training augmentation
        self.eval_data_collator = eval_data_collator or self.data_collator
        _cache_accelerate_lomo_probe()
        a = self.args
        self.train_loss_fn = build_loss(a.loss, a.label_smoothing, f"stage '{a.stage_name}': loss")
        self.train_loss_fn.bind_model(self.model)
        # eval_loss: plain cross-entropy, or the loss's own unweighted form (multi-task losses)
        self.eval_loss_fn = self.train_loss_fn.evaluation() or CrossEntropyLoss()
        if teacher_model is not None:
            self.train_loss_fn = DistillationLoss(self.train_loss_fn, **a.distillation)
        self._n_params: int | None = None
        self._clip_params: list | None = None  # the parameters clipped directly (empty: accelerate's path)
        self.skipped_steps = 0  # on_nonfinite: skip
        self._buffer_snapshot: list[torch.Tensor] = []  # on_nonfinite: skip, the buffers before this forward
        self._snapshot_model: nn.Module | None = None
        # our losses are per-batch means and never take ``num_items_in_batch``: skip the Trainer's per-step
        # count of label tokens over every batch (it exists for token-level LM losses)
        self.model_accepts_loss_kwargs = False
        self._first_bad_step: torch.Tensor | None = None  # on accelerators: a device-side record, read back rarely
        self.add_callback(_NonFiniteCheck(self))
        _quiet_console(self)

    def train(self, *args, **kwargs):
        """``Trainer.train`` with the objects alive before training frozen out of the cyclic GC.

        The Python heap of a process that imported torch, transformers and accelerate holds millions of
        objects; every full GC pass (one at the start of ``train``, more while training allocates) walks
        all of them. Freezing them for the duration of the stage makes those passes cheap (measured
        +3% samples/s on the overhead benchmark's small pair model on CPU, bench/overhead.py).
        The process's malloc is also set up for training once (``hfstage.devices.tune_cpu_allocator``:
        ~30% faster steps on the CPU, where every step otherwise page-faults its memory back in).
        """
        if getattr(self.model, "fits_without_gradients", False):
            return self._fit_without_gradients()
        if self.adapt_dataset is not None:
            return self._recalibrate_batchnorm()
        tune_cpu_allocator()
        # only where nothing is frozen yet: a second freeze could not be undone without thawing what another
        # owner froze (seen in a test process on a GPU machine: each stage left ~12k more objects frozen)
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            return super().train(*args, **kwargs)
        finally:
            if freeze:
                gc.unfreeze()

    def _in_order(self, dataset):
        """A whole split's batches in order, without augmentation (the eval collator): what the stages with no
        gradient steps (a fitted estimator, AdaBN) pass over."""
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, shuffle=False,
                          collate_fn=self.eval_data_collator, num_workers=self.args.dataloader_num_workers)

    def _features(self, dataset, fit: bool = False):
        """(features, labels) of a whole split, in order, without augmentation (the eval collator)."""
        import numpy as np

        batches = list(self._in_order(dataset))
        ys = [batch.pop("labels").numpy() for batch in batches]
        if fit:
            self.model.fit_features(batches)
        return np.concatenate([self.model.features(**batch) for batch in batches]), np.concatenate(ys)

    def _fit_without_gradients(self):
        """A model fitted in one pass (``models/estimator.py``): features of the training split, fit (LightGBM
        early-stops on the eval split), no optimizer and no steps; evaluation then runs as for any model."""
        import time

        from transformers.trainer_utils import TrainOutput

        began = time.time()
        x, y = self._features(self.train_dataset, fit=True)
        held_out = self.eval_dataset is not None and not self.eval_in_training
        x_eval, y_eval = self._features(self.eval_dataset) if held_out else (None, None)
        logged = self.model.fit_estimator(x, y, x_eval, y_eval)
        seconds = time.time() - began
        self.state.epoch = 1.0
        self.state.log_history.append({"step": 0, "epoch": 1.0, "features": int(x.shape[1]), **logged})
        logger.info("fitted %s on %d samples x %d features in %.1f s (%s)", self.model.config.estimator, len(x),
                    x.shape[1], seconds, ", ".join(f"{k} {v}" for k, v in logged.items()))
        return TrainOutput(0, 0.0, {"train_runtime": seconds})

    def _recalibrate_batchnorm(self):
        """A ``kind: adabn`` stage: BatchNorm statistics re-estimated on the target images (no augmentation, no
        gradient steps, weights untouched); evaluation then runs as for any stage."""
        import time

        from transformers.trainer_utils import TrainOutput

        from hfstage.adapt import recalibrate_batchnorm

        began = time.time()
        self.adapted = recalibrate_batchnorm(self.model, self._in_order(self.adapt_dataset))
        seconds = time.time() - began
        self.state.epoch = 1.0
        self.state.log_history.append({"step": 0, "epoch": 1.0, **self.adapted})
        logger.info("AdaBN: %d BatchNorm layers re-estimated on %d target images in %.1f s",
                    self.adapted["batchnorm_layers"], self.adapted["target_images"], seconds)
        return TrainOutput(0, 0.0, {"train_runtime": seconds})

    def _clip_grad_norm(self, model):
        """Gradient clipping straight through ``torch.nn.utils.clip_grad_norm_`` in the plain cases.

        accelerate's ``clip_grad_norm_`` re-checks the torch version and walks every parameter looking
        for DTensor gradients on each step (~0.4 ms/step measured on a small model, as much as the clipping
        itself); for one process or DDP, with no DTensor parameters, it then does exactly this: unscale
        (fp16) and clip. FSDP, DeepSpeed, XLA and tensor-parallel models keep accelerate's path.
        """
        if self._clip_params is None:
            from accelerate.utils import DistributedType

            params = [p for p in model.parameters() if p.requires_grad]
            plain = self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU,
                                                          DistributedType.MULTI_CPU)
            self._clip_params = params if plain and not any(_is_dtensor(p) for p in params) else []
        if not self._clip_params:
            return super()._clip_grad_norm(model)
        self.accelerator.unscale_gradients()
        return torch.nn.utils.clip_grad_norm_(self._clip_params, self.args.max_grad_norm, foreach=True)

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's FLOP estimate, with the parameter count walked once per stage instead of every step."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return 0
        if self._n_params is None:
            self._n_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[main_input].numel() * self._n_params

    def _get_train_sampler(self, train_dataset=None):
        """``group_by_length`` from the data set's own ``lengths`` (reading every sample to measure it is slow)."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and hasattr(dataset, "lengths"):
            from transformers.trainer_pt_utils import LengthGroupedSampler

            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=[int(n) for n in dataset.lengths])
        return super()._get_train_sampler(train_dataset)

    def get_eval_dataloader(self, eval_dataset=None):
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def get_test_dataloader(self, test_dataset):
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_test_dataloader(test_dataset)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        fn = self.train_loss_fn if model.training else self.eval_loss_fn
        targets = {key: inputs.pop(key) for key in fn.label_keys}  # more targets (multi-task)
        if model.training and self.args.on_nonfinite == "skip":
            self._snapshot_buffers(model)
        outputs = model(**inputs)
        if model.training and self.teacher_model is not None:
            loss = fn(outputs, labels, self._teacher_outputs(inputs, outputs), **targets)
        else:
            loss = fn(outputs, labels, **targets)
        if model.training:
            if self.args.on_nonfinite == "skip":
                loss = self._skip_if_nonfinite(loss)
            else:
                self._note_finite(loss.detach())
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _buffers_of(model: nn.Module) -> list[torch.Tensor]:
        return [b for b in model.buffers() if b.numel()]

    def _snapshot_buffers(self, model: nn.Module) -> None:
        """``on_nonfinite: skip``: copy the model's buffers (BatchNorm statistics) before each training forward."""
        self._snapshot_model = model
        buffers = self._buffers_of(model)
        if len(self._buffer_snapshot) != len(buffers):
            self._buffer_snapshot = [b.detach().clone() for b in buffers]
            return
        with torch.no_grad():
            for saved, buffer in zip(self._buffer_snapshot, buffers):
                saved.copy_(buffer)

    def _skip_if_nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        """``on_nonfinite: skip``: a non-finite loss is replaced by a zero that is not connected to the model,
        so backward leaves every gradient of this batch unset and the optimizer (which skips parameters
        without a gradient) makes no update from it. Needs the loss on the host every step."""
        if torch.isfinite(loss.detach()):
            return loss
        # the forward pass already moved BatchNorm's running statistics towards the bad batch: undo it
        with torch.no_grad():
            for saved, buffer in zip(self._buffer_snapshot, self._buffers_of(self._snapshot_model)):
                buffer.copy_(saved)
        self.skipped_steps += 1
        logger.warning("stage %d '%s': the training loss is %s at step %d; that batch was skipped (%d so far)",
                       self.args.stage_index, self.args.stage_name, loss.item(), self.state.global_step + 1,
                       self.skipped_steps)
        return torch.zeros((), device=loss.device, dtype=loss.dtype, requires_grad=True)

    def _note_finite(self, loss: torch.Tensor) -> None:
        """Stop the stage on a non-finite training loss.

        On the CPU the check is immediate. On an accelerator, reading the loss back every step would make
        the host wait for the device each step; instead the first bad step is recorded on the device and
        read back every ``nonfinite_check_steps`` steps and before every log, evaluation and save
        (``_NonFiniteCheck``), so no checkpoint with non-finite weights is ever written.
        """
        step = self.state.global_step + 1
        defer = self.defer_nonfinite_check
        if not (loss.device.type != "cpu" if defer is None else defer):
            if not torch.isfinite(loss):
                self._raise_nonfinite(loss.item(), step)
            return
        if self._first_bad_step is None:
            self._first_bad_step = torch.zeros((), dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss) & (self._first_bad_step == 0)
        self._first_bad_step = torch.where(bad, torch.full_like(self._first_bad_step, step), self._first_bad_step)

    def check_finite(self) -> None:
        """Raise if the device-side record holds a non-finite step (one read-back)."""
        if self._first_bad_step is not None:
            step = int(self._first_bad_step.item())
            if step:
                self._raise_nonfinite(float("nan"), step, exact=False)

    def _raise_nonfinite(self, value: float, step: int, exact: bool = True) -> None:
        what = f"became {value}" if exact else "became NaN or Inf"
        raise StageError(
            f"stage {self.args.stage_index} '{self.args.stage_name}': the training loss {what} at step {step}; "
            f"the stage was stopped and earlier stages are intact (lower the lr, enable max_grad_norm, or check the data)"
        )

    def _teacher_outputs(self, inputs, student_outputs):
        teacher = self.teacher_model
        student_logits = student_outputs["logits"]
        if next(teacher.parameters()).device != student_logits.device:
            teacher.to(student_logits.device)
        with torch.no_grad():
            out = teacher(**inputs)
        if out["logits"].shape != student_logits.shape:
            raise StageError(
                f"stage {self.args.stage_index} '{self.args.stage_name}': the teacher's logits have shape "
                f"{tuple(out['logits'].shape)} but the model's have {tuple(student_logits.shape)}; distil between "
                "models of one task and architecture family"
            )
        return out

    def create_optimizer(self, model=None):
        if not self.args.lr_multipliers:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            base_lr = optimizer_kwargs.pop("lr", self.args.learning_rate)
            param_groups = parameter_groups(opt_model, self.args.lr_multipliers,
                                            set(self.get_decay_parameter_names(opt_model)), base_lr,
                                            self.args.weight_decay, f"stage '{self.args.stage_name}'")
            self.optimizer = optimizer_cls(param_groups, lr=base_lr, **optimizer_kwargs)
        return self.optimizer
