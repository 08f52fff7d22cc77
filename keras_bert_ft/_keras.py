"""The one module that decides which Keras the toolkit uses: tf_keras (Keras 2).

`tensorflow_hub.KerasLayer` is a Keras-2 layer, so a Keras-3 model rejects it
(tensorflow/hub #903). Every other module takes `keras` from here, so users never
have to set `TF_USE_LEGACY_KERAS=1` themselves.

On TensorFlow 2.16+ `tf.keras` and `import keras` are Keras 3; `check_tf_keras` refuses
their objects where the toolkit takes a callback, metric, layer, optimizer or loss.
"""

import os
import sys
import types
from typing import Optional

# tensorflow_hub and tf-models-official read this to pick tf_keras as well.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tf_keras as keras  # noqa: E402

__all__ = ["keras", "check_tf_keras", "without_layer_traces", "keras_tensors", "stored_value"]


def without_layer_traces():
    """A context in which `tf.saved_model.save` stores Keras layers as plain trackables
    (their variables) without tracing every layer's `call` for Keras's own reloading:
    exports serve their signatures and are rebuilt from their config, so those traces
    took two thirds of the export time and were never read (tf_keras's `save_traces=False`)."""
    try:
        from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope
    except ImportError:  # a tf_keras without the switch: save as before
        import contextlib
        return contextlib.nullcontext()
    return keras_option_scope(save_traces=False)


def keras_tensors(specs):
    """tf_keras' symbolic tensors (what functional models are wired with) for a nest of
    `tf.TensorSpec`s; None when this tf_keras has no such type (then a layer lets tf_keras
    trace its call for them, as usual)."""
    try:
        from tf_keras.src.engine.keras_tensor import KerasTensor
    except ImportError:
        return None
    import tensorflow as tf
    return tf.nest.map_structure(KerasTensor, specs)


def stored_value(variable):
    """The value `variable` holds, in the dtype it is stored in, also where a mixed-precision
    policy's autocast is on (inside a layer's call tf_keras reads its AutoCastVariables in
    the compute dtype, bfloat16 or float16)."""
    try:
        from tf_keras.src.mixed_precision.autocast_variable import enable_auto_cast_variables
    except ImportError:  # a tf_keras without it: variables read as stored
        import contextlib
        enable_auto_cast_variables = lambda dtype: contextlib.nullcontext()  # noqa: E731
    import tensorflow as tf
    with enable_auto_cast_variables(None):
        return tf.convert_to_tensor(variable)


# kind -> the namespace that holds it, in tf_keras and in Keras 3 alike.
KINDS = {"callback": "callbacks", "metric": "metrics", "layer": "layers",
         "optimizer": "optimizers", "loss": "losses"}
_BASES = {"callbacks": "Callback", "metrics": "Metric", "layers": "Layer",
          "optimizers": "Optimizer", "losses": "Loss"}
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def check_tf_keras(obj, name: str, kind: str, *, instead: Optional[str] = None) -> None:
    """Raises a one-line `KbftError` (argument=`name`) when `obj` is a Keras 3 object.

    `kind`: "callback", "metric", "layer", "optimizer" or "loss", for the message and for
    the tf_keras class it suggests (`instead` replaces that suggestion, e.g. "a HubEncoder
    or a handle string"). Anything that is not a Keras 3 object passes (the
    caller checks the rest). Keras 3 is never imported here: an object of it can only
    exist once something imported it.

    Example:
        >>> check_tf_keras(keras.callbacks.EarlyStopping(), "callbacks[0]", "callback")  # fine
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}. Received: kind={kind!r}")
    if not is_other_keras(obj):
        return
    from keras_bert_ft.errors import KbftError
    namespace = KINDS[kind]
    defined = obj if isinstance(obj, (type, *_FUNCTIONS)) else type(obj)
    short = getattr(defined, "__name__", type(obj).__name__)
    other = _other_keras_module()
    public = getattr(getattr(other, namespace, None), short, None) is defined
    where = f"keras.{namespace}.{short}" if public else f"{_module_of(obj)}.{short}"
    version = str(getattr(other, "__version__", "3"))
    label = "Keras 3" if version.startswith("3") else f"keras {version}"
    if public and hasattr(getattr(keras, namespace), short):
        use = f"tf_keras.{namespace}.{short}"
    else:
        use = f"a subclass of tf_keras.{namespace}.{_BASES[namespace]}"
    use = instead or f"{use} (`import tf_keras`, or `from keras_bert_ft._keras import keras`)"
    received = " ".join(repr(obj).split())
    if len(received) > 160:
        received = received[:157] + "..."
    raise KbftError(
        f"{name} is a {label} {kind} ({where}); keras_bert_ft runs on tf_keras (Keras 2): "
        f"use {use}. Received: {name}={received}", argument=name)


def is_other_keras(obj) -> bool:
    """Whether `obj` (an instance, class or function) comes from the `keras` package (Keras
    3 on TF 2.16+) rather than tf_keras. Never imports `keras`."""
    module = _module_of(obj)
    if module == "keras" or module.startswith("keras."):
        return True
    other = _other_keras_module()
    if other is None:
        return False
    bases = tuple(b for b in (getattr(getattr(other, ns, None), base, None)
                              for ns, base in _BASES.items()) if isinstance(b, type))
    if isinstance(obj, type):
        return issubclass(obj, bases)
    return isinstance(obj, bases)


def _module_of(obj) -> str:
    """The module that defines `obj`: a class's or function's own, an instance's class's."""
    if isinstance(obj, (type, *_FUNCTIONS)):
        return getattr(obj, "__module__", None) or ""
    return type(obj).__module__ or ""


def _other_keras_module():
    """The imported `keras` package, when it is not tf_keras itself (None otherwise)."""
    module = sys.modules.get("keras")
    return None if module is None or module is keras else module
