"""The op audit: which ops an export's graphs use, and whether TF Serving can run them.

TF Serving's model server links core TensorFlow and one tensorflow-text; a SavedModel
that uses a newer tensorflow-text op fails to load there with `Op type not registered`
(tensorflow/serving #2267: `TFText>RoundRobinTrim`). `tf_serving_ops.json` beside this
file lists, per TF Serving release, the tensorflow-text ops its server runs, read from
the tensorflow/serving and tensorflow/text sources (where, is in the file). An export
passes when every op of every function is core TensorFlow or run by every release
listed there.

    >>> report = audit_export("runs/demo/export")
    >>> report.missing  # {} when serving-safe, else {op: [releases that lack it]}
"""

import dataclasses
import json
import os
from typing import Dict, List, Set

from keras_bert_ft.errors import KbftError, bad_argument

SERVED_OPS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tf_serving_ops.json")


@dataclasses.dataclass
class AuditReport:
    """`ops`: op type -> the functions (or `<graph>`) of the export that use it;
    `missing`: op type -> the TF Serving releases that cannot run it."""

    export_dir: str
    ops: Dict[str, List[str]]
    missing: Dict[str, List[str]]
    releases: List[str]

    @property
    def ok(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        if self.ok:
            return (f"{self.export_dir}: serving-safe: {len(self.ops)} op types, each core "
                    f"TensorFlow or run by TF Serving {', '.join(self.releases)}")
        lines = [f"{self.export_dir}: NOT serving-safe: {len(self.missing)} op type(s) that "
                 "TF Serving's model server cannot run:"]
        for op, releases in sorted(self.missing.items()):
            used = ", ".join(sorted(self.ops[op])[:3])
            lines.append(f"  {op}: missing in TF Serving {', '.join(releases)} (used by {used})")
        return "\n".join(lines)


def served_ops() -> dict:
    """The reviewed op lists (`tf_serving_ops.json`)."""
    with open(SERVED_OPS_FILE, encoding="utf-8") as f:
        return json.load(f)


def export_ops(export_dir: str, name: str = "export_dir") -> Dict[str, List[str]]:
    """Every op type in the graph and every library function of a SavedModel, with the
    functions that use it. Calls of library functions (a node whose op is a function's
    name) are not ops."""
    from tensorflow.core.protobuf import saved_model_pb2
    import tensorflow as tf

    path = os.path.join(export_dir, "saved_model.pb") if isinstance(export_dir, str) else ""
    if not path or not tf.io.gfile.exists(path):
        raise bad_argument(name, export_dir, "a SavedModel folder (with saved_model.pb)")
    saved = saved_model_pb2.SavedModel()
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            saved.ParseFromString(f.read())
    except Exception as err:  # protobuf raises DecodeError and others
        raise KbftError(f"{path} is not a SavedModel protobuf ({type(err).__name__}). "
                        f"Received: {name}={export_dir!r}", argument=name) from None
    found: Dict[str, Set[str]] = {}
    for meta_graph in saved.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name for f in graph.library.function}
        for node in graph.node:
            if node.op not in functions:
                found.setdefault(node.op, set()).add("<graph>")
        for function in graph.library.function:
            for node in function.node_def:
                if node.op not in functions:
                    found.setdefault(node.op, set()).add(function.signature.name)
    return {op: sorted(where) for op, where in found.items()}


def audit_export(export_dir: str, name: str = "export_dir") -> AuditReport:
    """Checks every op of `export_dir` against core TensorFlow and the tensorflow-text
    ops of every TF Serving release in `tf_serving_ops.json`.

    An op is core when this TensorFlow registers it and no tensorflow-text version
    listed does; an op registered nowhere (a custom op library) is missing everywhere.
    """
    import tensorflow as tf  # noqa: F401
    import tensorflow_text  # noqa: F401  (registers its ops, so they are not "unknown")
    from tensorflow.python.framework import op_def_registry

    lists = served_ops()
    releases = lists["releases"]
    text_ops = set(lists["installed_tensorflow_text_ops"]["ops"])
    for release in releases.values():
        text_ops |= set(release["tensorflow_text_ops"])
    ops = export_ops(export_dir, name)
    missing = {}
    for op in ops:
        if op in text_ops:
            lacking = [name for name, release in releases.items()
                       if op not in release["tensorflow_text_ops"]]
        elif op_def_registry.get(op) is not None:
            lacking = []  # core TensorFlow
        else:
            lacking = list(releases)
        if lacking:
            missing[op] = lacking
    return AuditReport(export_dir=export_dir, ops=ops, missing=missing, releases=list(releases))


def check_serving(export_dir: str) -> AuditReport:
    """`audit_export`, raising a KbftError that names each op TF Serving cannot run."""
    report = audit_export(export_dir)
    if not report.ok:
        raise KbftError(report.summary().replace("\n", ";"))
    return report
