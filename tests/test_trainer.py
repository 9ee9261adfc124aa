"""StageTrainer (trainer.py): gradient clipping and its reported norm, the per-step costs it removes."""

from __future__ import annotations

import pytest
import torch

from hfstage.models import build_model
from hfstage.trainer import StageTrainer, StageTrainingArguments

TINY = {"type": "pair_cnn", "channels": [4, 8], "feat_dim": 16, "hidden_dim": 16}


def test_gradient_clipping_clips_and_reports_the_norm_before_clipping(tmp_path):
    """StageTrainer clips through torch directly in the plain case; the result must be what
    ``clip_grad_norm_`` gives: the pre-clip norm returned, the gradients scaled to max_grad_norm."""
    from hfstage.data.npz_pairs import PairCollator

    torch.manual_seed(0)
    model = build_model(TINY)
    args = StageTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_grad_norm=1e-3,
                                  loss="cross_entropy")
    trainer = StageTrainer(model=model, args=args, data_collator=PairCollator())
    batch = {"pixel_values": torch.randint(0, 255, (8, 2, 28, 28), dtype=torch.uint8),
             "labels": torch.tensor([0, 1] * 4)}
    inputs = PairCollator()(batch)
    model.train()
    trainer.compute_loss(model, dict(inputs)).backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    norm = trainer._clip_grad_norm(model)
    assert float(norm) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 1e-3
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(after) == pytest.approx(1e-3, rel=1e-3)
    assert trainer._clip_params  # the direct path was taken (one process, no DTensor)


def test_per_step_costs_removed_without_side_effects(tmp_path):
    """accelerate's lomo_optim probe answers from a cache; the GC freeze of a stage is undone after it."""
    import gc

    from accelerate import optimizer as acc_optimizer

    from hfstage.data.npz_pairs import PairCollator, PairDataset

    x = torch.randint(0, 255, (64, 2, 28, 28), dtype=torch.uint8).numpy()
    y = torch.randint(0, 2, (64,)).numpy()
    args = StageTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=3,
                                  per_device_train_batch_size=16, save_strategy="no", disable_tqdm=True,
                                  remove_unused_columns=False, label_names=["labels"])
    trainer = StageTrainer(model=build_model(TINY), args=args, train_dataset=PairDataset(x, y),
                           data_collator=PairCollator())
    assert hasattr(acc_optimizer.is_lomo_available, "cache_info")  # cached once a stage trainer exists
    acc_optimizer.is_lomo_available()
    assert acc_optimizer.is_lomo_available.cache_info().hits + acc_optimizer.is_lomo_available.cache_info().misses >= 1
    before = gc.get_freeze_count()
    trainer.train()
    assert gc.get_freeze_count() == before
    gc.freeze()  # another owner's freeze is left as it was: nothing more is frozen, nothing thawed
    try:
        before = gc.get_freeze_count()
        alive = [[] for _ in range(5000)]  # created after that freeze: a second freeze would take them too
        trainer.train()
        assert alive and 0 < gc.get_freeze_count() <= before  # (frozen objects still die when their last reference goes)
    finally:
        gc.unfreeze()
    from hfstage import devices

    assert devices._allocator_tuned is not None  # decided (and, on glibc, made) when the stage trained
    assert trainer.model_accepts_loss_kwargs is False and trainer._n_params == trainer.model.num_parameters(
        exclude_embeddings=True)
