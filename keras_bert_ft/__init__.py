"""keras_bert_ft: fine-tune BERT-family TF-Hub encoders with tf_keras.

Public names are imported lazily, so `import keras_bert_ft` does no TensorFlow work.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "HubEncoder": "encoder",
    "group_variables": "encoder",
    "Preprocessor": "preprocessing",
    "Examples": "data",
    "load_examples": "data",
    "examples_from_lists": "data",
    "make_dataset": "data",
    "read_dataset": "data",
    "build_classifier": "models",
    "build_multilabel_classifier": "models",
    "build_regressor": "models",
    "build_task_model": "models",
    "create_optimizer": "optimization",
    "AdamW": "optimization",
    "get_strategy": "strategy",
    "enable_determinism": "determinism",
    "export_saved_model": "export",
    "load_export": "export",
    "predict_export": "export",
    "FineTuneConfig": "training",
    "FineTuneResult": "training",
    "fine_tune": "training",
    "classification_metrics": "metrics",
    "regression_metrics": "metrics",
    "multilabel_metrics": "metrics",
    "tune_thresholds": "metrics",
    "f1_score": "metrics",
    "mcc": "metrics",
    "pearson": "metrics",
    "spearman": "metrics",
    "KbftError": "errors",
    "convert_hf_bert": "convert",
    "convert_tf1_bert": "convert",
    "convert_checkpoint": "convert",
    "TaskConfig": "tasks",
    "fine_tune_task": "tasks",
    "fine_tune_tagging": "tasks",
    "fine_tune_qa": "tasks",
    "fine_tune_summarization": "tasks",
    "layer_multipliers": "layerwise",
    "GradualUnfreezing": "unfreeze",
    "run_seeds": "seeds",
    "sweep_layers": "sweep",
    "diff_models": "diff",
    "probe_layers": "probe",
    "linear_cka": "representations",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"keras_bert_ft.{_EXPORTS[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_bert_ft' has no attribute {name!r}")


def __dir__():
    return __all__
