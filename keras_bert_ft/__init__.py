"""keras_bert_ft: fine-tune BERT-family TF-Hub encoders with tf_keras.

Public names are imported lazily, so `import keras_bert_ft` does no TensorFlow work.
"""

import importlib
import os

# TensorFlow's oneDNN kernels on x86 CPUs. TensorFlow turns them on by itself only on CPUs
# with AVX512-VNNI / BF16 / AMX; on an AVX2 machine they cut batch-1 serving latency by
# half in an A/B (docs/measurements.md, "Serving"). TensorFlow reads this when it first
# runs, so it is set before any module here imports TensorFlow; a user's own value is kept.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# The Keras that `_keras` chooses (tf_keras), set here too so that whichever module of the
# toolkit first imports TensorFlow, TensorFlow loads tf_keras, not Keras 3 and its
# scikit-learn import (about 2 s of every start). A user's own value is kept.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"

_EXPORTS = {
    "HubEncoder": "encoders.hub_encoder",
    "group_variables": "encoders.hub_encoder",
    "Preprocessor": "data.preprocessing",
    "Examples": "data.examples",
    "load_examples": "data.examples",
    "examples_from_lists": "data.examples",
    "make_dataset": "data.examples",
    "read_dataset": "data.examples",
    "build_classifier": "tasks.models",
    "build_multilabel_classifier": "tasks.models",
    "build_regressor": "tasks.models",
    "build_task_model": "tasks.models",
    "create_optimizer": "training.optimization",
    "AdamW": "training.optimization",
    "get_strategy": "training.strategy",
    "enable_determinism": "training.determinism",
    "export_saved_model": "export.saved_model",
    "load_export": "export.saved_model",
    "predict_export": "export.saved_model",
    "FineTuneConfig": "config",
    "FineTuneResult": "training.runner",
    "fine_tune": "training.runner",
    "restore": "export.restore",
    "get_task": "tasks",
    "classification_metrics": "tasks.scores",
    "regression_metrics": "tasks.scores",
    "multilabel_metrics": "tasks.scores",
    "tune_thresholds": "tasks.scores",
    "f1_score": "tasks.scores",
    "mcc": "tasks.scores",
    "pearson": "tasks.scores",
    "spearman": "tasks.scores",
    "KbftError": "errors",
    "convert_hf_bert": "encoders.convert",
    "convert_tf1_bert": "encoders.convert",
    "convert_checkpoint": "encoders.convert",
    "TaskConfig": "tasks",
    "fine_tune_task": "tasks",
    "fine_tune_tagging": "tasks",
    "fine_tune_qa": "tasks",
    "fine_tune_summarization": "tasks",
    "pretrain": "tasks.pretrain",
    "layer_multipliers": "training.layerwise",
    "GradualUnfreezing": "training.unfreeze",
    "run_seeds": "research.seeds",
    "sweep_layers": "research.sweep",
    "diff_models": "research.diff",
    "probe_layers": "research.probe",
    "compare_pretrained": "research.probe",
    "ablate_layers": "research.ablate",
    "linear_cka": "research.representations",
    "tune": "research.tune",
    "predict_file": "export.predictions",
    "keras": "_keras",
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
