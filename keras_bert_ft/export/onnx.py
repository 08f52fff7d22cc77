"""The model core as ONNX (`kbft export --format onnx`): token ids in, the task's numbers out.

ONNX Runtime has no tensorflow-text, so the ONNX file starts after tokenisation: inputs
`input_word_ids`, `input_mask`, `input_type_ids` (int32 `[batch, tokens]`), outputs
`probabilities` (classification, multilabel) or `score` (regression), computed by the
same `predict_numbers` as the SavedModel's outputs. Beside it go `vocab.txt`, `tokenizer.json`
(lower-casing, special ids, sequence length, label names, multilabel thresholds) and
`kbft_onnx_runner.py`, a NumPy + onnxruntime runner whose WordPiece tokenizer gives the
ids of the export's (tests check every SST-2 and MRPC row). Needs the `onnx` extra:
`pip install "keras_bert_ft[onnx]"` (tf2onnx, onnxruntime).
"""

import json
import os
import shutil
from typing import Optional

import tensorflow as tf

from keras_bert_ft.config import SENTENCE_TASKS
from keras_bert_ft.encoders.native import portable_ops
from keras_bert_ft.errors import KbftError
from keras_bert_ft.export import onnx_runner

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RUNNER_FILE = "kbft_onnx_runner.py"
METADATA_FILE = "kbft_onnx.json"
INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


def check_onnx_task(task: str) -> None:
    """ONNX takes the sentence tasks: the decoding of tagging, qa and summarisation
    (words, windows, sentences) runs in TensorFlow string ops."""
    if task not in SENTENCE_TASKS:
        raise KbftError(f"--format onnx does not apply to --task {task} (it exports "
                        f"{', '.join(SENTENCE_TASKS)} models; export {task} as a SavedModel). "
                        f"Received: task={task!r}", argument="format")


def check_onnx_dir(output_dir: str, name: str = "output") -> None:
    """Refuses a path that is a file, unwritable, or a non-empty folder that is not an
    earlier ONNX export of ours."""
    from keras_bert_ft.paths import check_output_folder
    check_output_folder(output_dir, name, what="an earlier keras_bert_ft ONNX export to replace",
                        ours=lambda p: os.path.isfile(os.path.join(p, METADATA_FILE)))


def _converter():
    try:
        import tf2onnx
        import onnxruntime  # noqa: F401  (the parity check below runs it)
    except ImportError:
        raise KbftError('--format onnx needs tf2onnx and onnxruntime: pip install '
                        '"keras_bert_ft[onnx]"', argument="format") from None
    return tf2onnx


def export_onnx(result, output_dir: str, opset: int = 17, name: str = "output") -> str:
    """Writes `result`'s model core as ONNX with its tokenizer settings and runner into
    `output_dir` (new, empty, or an earlier ONNX export; written to a temporary folder and
    renamed), then checks it against the SavedModel graph on a few sentences."""
    from keras_bert_ft.export.saved_model import atomic_write
    check_onnx_task(result.task)
    check_onnx_dir(output_dir, name)
    tf2onnx = _converter()
    pre = result.serving.preprocessor
    if pre.lower_case is None or not pre.source.endswith(".txt"):
        raise KbftError("--format onnx needs a vocab.txt preprocessor (the runner tokenises "
                        "with it); this model's is a TF-Hub preprocess model. "
                        f"Received: preprocessor={pre.source!r}", argument="format")
    result = float32_result(result)  # after the refusals: it may build a model
    serving = result.serving
    pre = serving.preprocessor
    keys = ("score",) if result.task == "regression" else ("probabilities",)
    spec = [tf.TensorSpec([None, None], tf.int32, name=k) for k in INPUTS]

    def core(input_word_ids, input_mask, input_type_ids):
        outputs = serving.predict_numbers({"input_word_ids": input_word_ids,
                                            "input_mask": input_mask,
                                            "input_type_ids": input_type_ids})
        return {k: tf.identity(outputs[k], name=k) for k in keys}

    function = tf.function(core, input_signature=spec, autograph=False)
    settings = {
        "task": result.task, "lower_case": bool(pre.lower_case),
        "seq_length": int(pre.seq_length), "cls_id": pre.cls_id, "sep_id": pre.sep_id,
        "pad_id": pre.pad_id, "unk_token": "[UNK]", "pair": bool(result.pair),
        "label_names": [str(n) for n in result.label_names],
        "thresholds": result.thresholds, "outputs": list(keys),
    }

    def write(folder):
        os.makedirs(folder, exist_ok=True)
        with portable_ops():  # traced here: no op that tf2onnx lacks
            tf2onnx.convert.from_function(function, input_signature=spec, opset=opset,
                                          custom_op_handlers={"Erfc": (_erfc, [])},
                                          output_path=os.path.join(folder, ONNX_FILE))
        shutil.copyfile(pre.source, os.path.join(folder, "vocab.txt"))
        with open(os.path.join(folder, TOKENIZER_FILE), "w", encoding="utf-8") as f:
            json.dump(settings, f, indent=2)
        shutil.copyfile(onnx_runner.__file__, os.path.join(folder, RUNNER_FILE))
        _check_parity(folder, serving, result.pair)
        with open(os.path.join(folder, METADATA_FILE), "w", encoding="utf-8") as f:
            json.dump({"onnx": ONNX_FILE, "opset": opset, "tokenizer": TOKENIZER_FILE,
                       "runner": RUNNER_FILE, "config": _config_json(result)}, f, indent=2)

    atomic_write(output_dir, write, name=name)
    return output_dir


def float32_result(result):
    """`result` when its model computes in float32; else the same weights in a float32
    rebuild of it. A model trained under mixed precision (`mixed_bfloat16`, the default on
    CPUs with bfloat16 units) keeps float32 weights, and ONNX Runtime's CPU kernels have no
    bfloat16 matrix products: the ONNX model computes in float32 (its parity check is
    against this float32 graph)."""
    if not any(getattr(layer, "compute_dtype", None) in ("bfloat16", "float16")
               for layer in [result.model, *result.model.submodules]):
        return result
    import dataclasses
    from keras_bert_ft.export.restore import rebuild
    weights = result.model.get_weights()
    config = dataclasses.replace(result.config, mixed_precision="float32")
    return rebuild(config, result.info, lambda model: model.set_weights(weights))


def _erfc(ctx, node, name, args):
    """TensorFlow's exact GELU computes erfc, which tf2onnx does not convert: 1 - erf(x)."""
    import numpy as np
    from tf2onnx import utils
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name)
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
    ctx.replace_inputs(node, [one.output[0], erf.output[0]])
    node.type = "Sub"


def _config_json(result) -> Optional[dict]:
    from keras_bert_ft.config import to_json
    return to_json(result.config) if result.config is not None else None


PARITY_TEXTS = ["a gorgeous, witty and deeply moving film .", "The PLOT is a mess; jokes fall flat!",
                "Café déjà vu — naïve 東京 2024", ""]


def _check_parity(folder: str, serving, pair: bool, atol: float = 1e-4) -> None:
    """The ONNX runner against the SavedModel graph (`serve_fn`) on a few sentences:
    an export whose ids or numbers differ is not written."""
    import numpy as np
    runner = onnx_runner.OnnxModel(folder)
    columns = [PARITY_TEXTS] + ([PARITY_TEXTS[::-1]] if pair else [])
    got = runner.predict(*columns)
    want = serving.serve_fn(*[tf.constant(c) for c in columns])
    for key in runner.settings["outputs"]:
        difference = float(np.max(np.abs(got[key] - want[key].numpy())))
        if not difference <= atol:
            raise KbftError(f"The ONNX model's {key} differ from the SavedModel's by "
                            f"{difference:.2e} (> {atol}); nothing was written.")
