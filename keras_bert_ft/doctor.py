"""kbft doctor: checks this environment for what breaks TF-Hub BERT fine-tuning, one fix per finding.

Checked: the TensorFlow / tensorflow-text / tf-keras / tensorflow-hub / tf-models-official
versions against each other (tensorflow-text and tf-keras must match TensorFlow's
major.minor), Keras 3 vs tf_keras (hub.KerasLayer needs tf_keras: tensorflow/hub #903),
whether tensorflow_text imports (exports need it at load time: tensorflow/hub #705), the
devices and the strategy `get_strategy("auto")` would pick, `TF_CONFIG`, and TPU / Colab
specifics (the TPU runtime library, TF-Hub's load format for remote TPUs).
"""

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from typing import Callable, Dict, List, Mapping, Optional

LEVELS = ("ok", "warn", "error")
_TF_DISTS = ("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "tensorflow-macos", "tf-nightly")
# Packages whose major.minor must equal TensorFlow's (they ship compiled ops or track its API).
_PAIRED = ("tensorflow-text", "tf-keras", "tf-models-official")
LIBTPU_INDEX = "https://storage.googleapis.com/libtpu-tf-releases/index.html"


@dataclasses.dataclass
class Finding:
    """One check's result: `level` ok/warn/error, what was found, and the one fix."""
    level: str
    check: str
    message: str
    fix: str = ""


def installed_versions() -> Dict[str, Optional[str]]:
    """Installed versions of the packages the toolkit depends on (None: not installed)."""
    versions = {"tensorflow": None}
    for dist in _TF_DISTS:
        version = _version(dist)
        if version:
            versions["tensorflow"] = version
            break
    for dist in ("tensorflow-text", "tf-keras", "tensorflow-hub", "tf-models-official", "keras"):
        versions[dist] = _version(dist)
    return versions


def _version(dist: str) -> Optional[str]:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str):
    parts = version.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return None


def version_findings(versions: Mapping[str, Optional[str]]) -> List[Finding]:
    """Checks the installed versions against each other."""
    tf_version = versions.get("tensorflow")
    if not tf_version:
        return [Finding("error", "versions", "TensorFlow is not installed.",
                        "pip install 'tensorflow~=2.20.0'")]
    series = "{}.{}".format(*(_major_minor(tf_version) or (2, 20)))
    findings = []
    for dist in _PAIRED:
        version = versions.get(dist)
        if not version:
            findings.append(Finding("error", "versions", f"{dist} is not installed.",
                                    f"pip install '{dist}~={series}.0'"))
        elif _major_minor(version) != _major_minor(tf_version):
            findings.append(Finding(
                "error", "versions", f"{dist} {version} does not match tensorflow {tf_version} "
                "(compiled ops and APIs must come from the same release).",
                f"pip install '{dist}~={series}.0'"))
    hub = versions.get("tensorflow-hub")
    if not hub:
        findings.append(Finding("error", "versions", "tensorflow-hub is not installed.",
                                "pip install 'tensorflow-hub>=0.16.1'"))
    elif (_major_minor(hub) or (0, 0)) < (0, 16):
        findings.append(Finding("error", "versions", f"tensorflow-hub {hub} predates tf_keras "
                                "support (hub.KerasLayer fails under Keras 3).",
                                "pip install 'tensorflow-hub>=0.16.1'"))
    if not findings:
        listed = ", ".join(f"{d} {versions[d]}" for d in ("tensorflow", *_PAIRED, "tensorflow-hub"))
        findings.append(Finding("ok", "versions", f"{listed}: consistent"))
    return findings


def keras_findings(versions: Mapping[str, Optional[str]],
                   environ: Mapping[str, str]) -> List[Finding]:
    """Keras 3 vs tf_keras: the toolkit and tensorflow_hub must both use tf_keras."""
    legacy = environ.get("TF_USE_LEGACY_KERAS")
    if legacy is not None and legacy.strip().lower() not in ("1", "true", "yes"):
        return [Finding("error", "keras", f"TF_USE_LEGACY_KERAS={legacy} makes tensorflow_hub "
                        "use Keras 3, whose models reject hub.KerasLayer (tensorflow/hub #903).",
                        "unset TF_USE_LEGACY_KERAS (keras_bert_ft sets it to 1 itself)")]
    keras3 = versions.get("keras")
    if keras3 and (_major_minor(keras3) or (0, 0)) >= (3, 0):
        return [Finding("ok", "keras", f"keras {keras3} (Keras 3) is installed beside tf_keras "
                        f"{versions.get('tf-keras')}; keras_bert_ft and tensorflow_hub use "
                        "tf_keras. Build your own layers with `from keras_bert_ft._keras import "
                        "keras` (or `import tf_keras`), not `import keras`.")]
    return [Finding("ok", "keras", f"tf_keras {versions.get('tf-keras')} (Keras 2)")]


def import_findings(importer: Callable[[str], object] = importlib.import_module) -> List[Finding]:
    """tensorflow_text must import (tokenisation, and loading any export); hub must use tf_keras."""
    findings = []
    try:
        importer("tensorflow_text")
        findings.append(Finding("ok", "tensorflow_text", "imports (exports can be loaded)"))
    except Exception as err:  # ImportError, or a NotFoundError for a mismatched .so
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        findings.append(Finding(
            "error", "tensorflow_text", f"import tensorflow_text fails ({first}); tokenisation "
            "and loading an export (\"Op type not registered 'CaseFoldUTF8'\") need it.",
            "pip install 'tensorflow-text==<your tensorflow major.minor>.*'"))
    try:
        from keras_bert_ft._keras import keras
        hub = importer("tensorflow_hub")
        if not issubclass(hub.KerasLayer, keras.layers.Layer):
            findings.append(Finding(
                "error", "tensorflow_hub", "hub.KerasLayer is not a tf_keras layer (Keras 3 "
                "was picked up first).", "import keras_bert_ft before tensorflow_hub, or set "
                "TF_USE_LEGACY_KERAS=1 before importing TensorFlow"))
    except Exception as err:
        findings.append(Finding("error", "tensorflow_hub", f"import fails: {err}"[:200],
                                "pip install 'tensorflow-hub>=0.16.1' tf-keras"))
    return findings


def device_findings() -> List[Finding]:
    """The devices TensorFlow sees and the strategy `auto` would pick."""
    import tensorflow as tf
    from keras_bert_ft.training.strategy import describe_auto

    cpus = tf.config.list_physical_devices("CPU")
    gpus = tf.config.list_physical_devices("GPU")
    tpus = tf.config.list_physical_devices("TPU")
    text = f"{len(cpus)} CPU, {len(gpus)} GPU, {len(tpus)} TPU device(s) visible to TensorFlow"
    findings = [Finding("ok", "devices", text)]
    if not gpus and _nvidia_driver() and not tpus:
        findings = [Finding("warn", "devices", f"{text}, but an NVIDIA driver is present: "
                            "this TensorFlow build does not use the GPU.",
                            "pip install 'tensorflow[and-cuda]~=2.20.0'")]
    findings.append(Finding("ok", "strategy", f"get_strategy('auto') picks: {describe_auto()}"))
    from keras_bert_ft.training.precision import gpu_capabilities, precision_here
    policy, why = precision_here(tpu=bool(tpus), gpus=gpu_capabilities())
    findings.append(Finding("ok", "precision", f"--mixed-precision auto picks {policy}: {why}"))
    findings.append(onednn_finding(os.environ))
    return findings


def onednn_finding(environ: Mapping[str, str]) -> Finding:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process, and why."""
    from tensorflow.python.util import _pywrap_util_port
    on = bool(_pywrap_util_port.IsMklEnabled())
    value = environ.get("TF_ENABLE_ONEDNN_OPTS")
    if on:
        return Finding("ok", "onednn", f"oneDNN CPU kernels are on (TF_ENABLE_ONEDNN_OPTS="
                       f"{value}; keras_bert_ft sets 1 unless it is set)")
    if value is not None and value.strip().lower() in ("0", "false", "no", "off"):
        return Finding("ok", "onednn", f"oneDNN CPU kernels are off: TF_ENABLE_ONEDNN_OPTS="
                       f"{value} (serving at batch 1 is about half as fast on CPU)")
    if not _pywrap_util_port.IsX86Available():
        return Finding("ok", "onednn", "oneDNN CPU kernels are off (not an x86 CPU)")
    return Finding("warn", "onednn", "oneDNN CPU kernels are off: TensorFlow was imported "
                   "before keras_bert_ft, so its TF_ENABLE_ONEDNN_OPTS=1 came too late",
                   "import keras_bert_ft before tensorflow, or set TF_ENABLE_ONEDNN_OPTS=1")


def _nvidia_driver() -> bool:
    return os.path.exists("/proc/driver/nvidia/version")


def cluster_findings(environ: Mapping[str, str]) -> List[Finding]:
    """`TF_CONFIG`, when set, must describe a cluster this process is a task of."""
    if not environ.get("TF_CONFIG"):
        return []
    from keras_bert_ft.errors import KbftError
    from keras_bert_ft.training.strategy import read_tf_config

    saved = os.environ.get("TF_CONFIG")
    os.environ["TF_CONFIG"] = environ["TF_CONFIG"]
    try:
        config = read_tf_config()
    except KbftError as err:
        return [Finding("error", "TF_CONFIG", str(err), "fix TF_CONFIG or unset it for "
                        "one-machine training")]
    finally:
        if saved is None:
            os.environ.pop("TF_CONFIG", None)
        else:
            os.environ["TF_CONFIG"] = saved
    task = config["task"]
    return [Finding("ok", "TF_CONFIG", f"this process is {task['type']} {task['index']} of "
                    f"{json.dumps(config['cluster'])}")]


def tpu_findings(environ: Mapping[str, str], *, tpu_attached: bool, libtpu: bool,
                 colab: bool) -> List[Finding]:
    """TPU and Colab specifics: the TPU runtime library, TF-Hub's load format."""
    findings = []
    remote = bool(environ.get("COLAB_TPU_ADDR") or environ.get("TPU_NAME"))
    if colab:
        findings.append(Finding("ok", "colab", "running on Google Colab" +
                                (" with a TPU" if tpu_attached or remote else "")))
    if tpu_attached and not libtpu:
        findings.append(Finding(
            "error", "tpu", "a TPU is attached to this VM, but TensorFlow's TPU runtime "
            "(libtpu) is not installed, so get_strategy('auto') trains on the CPU.",
            f"pip install 'tensorflow-tpu~=2.20.0' -f {LIBTPU_INDEX}"))
    elif tpu_attached:
        findings.append(Finding("ok", "tpu", "a TPU is attached and libtpu is installed"))
    if remote and environ.get("TFHUB_MODEL_LOAD_FORMAT", "") != "UNCOMPRESSED":
        findings.append(Finding(
            "warn", "tpu", "a TPU reached over the network cannot read this VM's TF-Hub cache "
            "(\"File system scheme '[local]' not implemented\").",
            "export TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED (fine_tune sets it for tfhub.dev "
            "handles on a TPU), and keep your own models and output_dir on gs://"))
    return findings


def platform_findings() -> List[Finding]:
    version = sys.version_info
    text = f"Python {platform.python_version()} on {platform.system()} {platform.machine()}"
    if not (3, 9) <= (version.major, version.minor) < (3, 13):
        return [Finding("warn", "python", f"{text}: TensorFlow 2.20 supports Python 3.9-3.12.",
                        "use Python 3.9 to 3.12 (e.g. a venv with python3.11)")]
    return [Finding("ok", "python", text)]


def run_checks() -> List[Finding]:
    """Every check, on this machine."""
    versions = installed_versions()
    findings = platform_findings() + version_findings(versions)
    findings += keras_findings(versions, os.environ)
    findings += import_findings()
    findings += device_findings()
    findings += cluster_findings(os.environ)
    findings += tpu_findings(
        os.environ, tpu_attached=os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"),
        libtpu=_has_module("libtpu"), colab=_on_colab())
    return findings


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _on_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ or _has_module("google.colab")


def format_findings(findings: List[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.level.upper():<6}{f.check:<16}{f.message}")
        if f.fix:
            lines.append(f"{'':<22}fix: {f.fix}")
    errors = sum(f.level == "error" for f in findings)
    warnings = sum(f.level == "warn" for f in findings)
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)


def doctor(as_json: bool = False, out=None) -> int:
    """Prints the findings; returns 1 when any is an error, else 0."""
    findings = run_checks()
    text = (json.dumps([dataclasses.asdict(f) for f in findings], indent=2) if as_json
            else format_findings(findings))
    print(text, file=out or sys.stdout)
    return int(any(f.level == "error" for f in findings))
