"""Tasks (tasks/): every task kind is a Task with declared fields of known kinds; the base's hooks are documented no-ops."""

from __future__ import annotations

import pytest

from hfstage.errors import ConfigError


def test_every_task_is_a_task_with_declared_fields_of_known_kinds():
    from hfstage.data.fields import FIELD_KINDS
    from hfstage.tasks import TASKS, Task

    for name in TASKS.names():
        task = TASKS.get(name)
        assert issubclass(task, Task) and task.name == name and task.card is not None
        assert task.fields and all(f.kind in FIELD_KINDS for f in task.fields)


def test_the_base_task_hooks_are_no_ops_with_their_documented_results(tmp_path):
    from hfstage.tasks import Task

    task = Task()
    assert task.tuned_decision({"eval_loss": 1.0}) == {} and task.error_rate(None) is None
    assert task.bind(None) is None and task.bind_stage(tmp_path) is None and task.save_with_model(tmp_path, None) is None
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="has no unlabelled data kind"):
        task.load_unlabeled(tmp_path, "data.unlabeled_file")
