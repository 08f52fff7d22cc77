"""Tasks as plugins: each module implements `base.Task` for its task(s), and `REGISTRY`
names them. Adding a task touches its module and one line here.

`fine_tune_task(task, train, validation, ...)` is `fine_tune(..., task=task)`; each
returns a result with `.metrics`, `.predict(...)`, `.export(dir)` and `.save(dir)`.
Modules load lazily: importing this package does no TensorFlow work.
"""

import importlib

from keras_bert_ft.config import SEQUENCE_TASKS as TASKS, TASKS as ALL_TASKS

# task name -> (module, the Task instance's name in it)
REGISTRY = {
    "classification": ("sentence", "CLASSIFICATION"),
    "multilabel": ("sentence", "MULTILABEL"),
    "regression": ("sentence", "REGRESSION"),
    "tagging": ("tagging", "TASK"),
    "qa": ("qa", "TASK"),
    "summarization": ("summarization", "TASK"),
    "pretrain": ("pretrain", "TASK"),
}
assert tuple(REGISTRY) == ALL_TASKS

_EXPORTS = {
    "load_tagged": "tagging",
    "read_conll": "tagging",
    "TaggedSentences": "tagging",
    "ensemble_qa": "qa",
    "restore_qa": "qa",
    "load_squad": "qa",
    "split_articles": "qa",
    "cloze_questions": "qa",
    "QAExample": "qa",
    "load_documents": "summarization",
    "split_sentences": "summarization",
    "Document": "summarization",
    "fine_tune_tagging": "tagging",
    "fine_tune_qa": "qa",
    "fine_tune_summarization": "summarization",
    "load_texts": "pretrain",
}

__all__ = sorted(_EXPORTS) + [
    "TASKS", "REGISTRY", "get_task", "fine_tune_task", "predict_export", "TaskConfig",
    "TaskResult"]


def get_task(name: str):
    """The plugin of task `name`."""
    if name not in REGISTRY:
        from keras_bert_ft.errors import bad_argument
        raise bad_argument("task", name, f"one of {', '.join(REGISTRY)}")
    module, attr = REGISTRY[name]
    return getattr(importlib.import_module(f"keras_bert_ft.tasks.{module}"), attr)


def fine_tune_task(task: str, train, validation=None, config=None, **kwargs):
    """`fine_tune` for `task` (any of the registered tasks)."""
    from keras_bert_ft.training.runner import fine_tune
    get_task(task)
    return fine_tune(train, validation, config, **dict(kwargs, task=task))


def predict_export(export_dir: str, *inputs, batch_size: int = 32) -> list:
    """Runs a tagging, qa or summarization export on Python string lists (tagging: texts;
    qa: questions, contexts; summarization: documents) and decodes its outputs as the
    task's `result.predict` does."""
    from keras_bert_ft.errors import bad_argument
    from keras_bert_ft.export.saved_model import load_export, read_metadata, run_export
    meta = read_metadata(export_dir)
    if meta.get("task") not in TASKS:
        raise bad_argument("export_dir", export_dir,
                           f"an export of one of the tasks {', '.join(TASKS)}")
    batches = run_export(load_export(export_dir), meta, *inputs, batch_size=batch_size)
    decode = importlib.import_module(f"keras_bert_ft.tasks.{meta['task']}").decode
    return [row for batch in batches for row in decode(batch)]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"keras_bert_ft.tasks.{_EXPORTS[name]}")
        value = getattr(module, name)
    elif name in ("TaskConfig", "FineTuneConfig"):
        from keras_bert_ft.config import FineTuneConfig as value
    elif name == "TaskResult":
        from keras_bert_ft.training.runner import FineTuneResult as value
    else:
        raise AttributeError(f"module 'keras_bert_ft.tasks' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return __all__
