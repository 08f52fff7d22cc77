"""Sequence tasks: token tagging, span QA and extractive summarisation, each with its entry point.

`fine_tune_task(task, train, validation, ...)` dispatches on `task` ("tagging", "qa",
"summarization") to `fine_tune_tagging`, `fine_tune_qa` or `fine_tune_summarization`;
each returns a result with `.metrics`, `.predict(...)`, `.export(dir)` and `.save(dir)`.
Modules load lazily: importing this package does no TensorFlow work.
"""

import importlib

TASKS = ("tagging", "qa", "summarization")

_EXPORTS = {
    "TaskConfig": "common",
    "TaskResult": "common",
    "fine_tune_tagging": "tagging",
    "load_tagged": "tagging",
    "read_conll": "tagging",
    "TaggedSentences": "tagging",
    "fine_tune_qa": "qa",
    "ensemble_qa": "qa",
    "restore_qa": "qa",
    "load_squad": "qa",
    "split_articles": "qa",
    "QAExample": "qa",
    "fine_tune_summarization": "summarization",
    "load_documents": "summarization",
    "split_sentences": "summarization",
    "Document": "summarization",
}
_ENTRY_POINTS = {"tagging": "fine_tune_tagging", "qa": "fine_tune_qa",
                 "summarization": "fine_tune_summarization"}

__all__ = sorted(_EXPORTS) + ["TASKS", "fine_tune_task", "predict_export"]


def fine_tune_task(task: str, train, validation=None, config=None, **kwargs):
    """Runs the entry point of `task` ("tagging", "qa" or "summarization")."""
    if task not in _ENTRY_POINTS:
        from keras_bert_ft.errors import bad_argument
        raise bad_argument("task", task, f"one of {', '.join(TASKS)}")
    return __getattr__(_ENTRY_POINTS[task])(train, validation, config, **kwargs)


def predict_export(export_dir: str, *inputs, batch_size: int = 32) -> list:
    """Runs a task export on Python string lists (tagging: texts; qa: questions,
    contexts; summarization: documents) and decodes its outputs as the task's
    `result.predict` does."""
    from keras_bert_ft.tasks import common
    meta, batches = common.run_export(export_dir, *inputs, batch_size=batch_size)
    decode = importlib.import_module(f"keras_bert_ft.tasks.{meta['task']}").decode
    return [row for batch in batches for row in decode(batch)]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"keras_bert_ft.tasks.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_bert_ft.tasks' has no attribute {name!r}")


def __dir__():
    return __all__
