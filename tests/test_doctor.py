"""kbft doctor: reports this machine (CPU only, versions consistent) and gives one fix per finding."""

import io
import json

from keras_bert_ft import doctor
from keras_bert_ft import cli

GOOD = {"tensorflow": "2.20.0", "tensorflow-text": "2.20.1", "tf-keras": "2.20.1",
        "tensorflow-hub": "0.16.1", "tf-models-official": "2.20.0", "keras": "3.15.1"}


def by_check(findings):
    return {f.check: f for f in findings}


def test_reports_this_machine(capsys):
    assert cli.main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "0 error(s)" in text
    findings = by_check(doctor.run_checks())
    assert findings["versions"].level == "ok" and "consistent" in findings["versions"].message
    assert findings["tensorflow_text"].level == "ok"
    # conftest splits the one CPU into two logical devices; physically there is one, no GPU/TPU.
    assert findings["devices"].message.startswith("1 CPU, 0 GPU, 0 TPU")
    assert findings["strategy"].message.endswith("default strategy on CPU")
    assert not [f for f in findings.values() if f.level == "error"]
    assert doctor.doctor(out=io.StringIO()) == 0  # what the notebook calls
    assert cli.main(["doctor", "--json"]) == 0
    assert {"versions", "keras", "devices", "strategy"} <= {
        f["check"] for f in json.loads(capsys.readouterr().out)}


def test_version_mismatches_get_one_fix_each():
    findings = doctor.version_findings(GOOD | {"tensorflow-text": "2.15.0", "tf-keras": None,
                                               "tensorflow-hub": "0.12.0"})
    fixes = {f.message.split()[0]: f.fix for f in findings}
    assert all(f.level == "error" for f in findings) and len(findings) == 3
    assert fixes["tensorflow-text"] == "pip install 'tensorflow-text~=2.20.0'"
    assert fixes["tf-keras"] == "pip install 'tf-keras~=2.20.0'"
    assert fixes["tensorflow-hub"] == "pip install 'tensorflow-hub>=0.16.1'"
    assert doctor.version_findings(GOOD | {"tensorflow": None})[0].level == "error"


def test_keras3_and_legacy_switch():
    ok = doctor.keras_findings(GOOD, {})
    assert ok[0].level == "ok" and "Keras 3" in ok[0].message
    bad = doctor.keras_findings(GOOD, {"TF_USE_LEGACY_KERAS": "0"})
    assert bad[0].level == "error" and bad[0].fix.startswith("unset TF_USE_LEGACY_KERAS")


def test_missing_tensorflow_text_is_an_error():
    def importer(name):
        if name == "tensorflow_text":
            raise ImportError("undefined symbol: _ZN10tensorflow")
        return __import__(name)

    finding = by_check(doctor.import_findings(importer))["tensorflow_text"]
    assert finding.level == "error" and "undefined symbol" in finding.message
    assert "CaseFoldUTF8" in finding.message and finding.fix.startswith("pip install")


def test_tpu_and_colab_specifics():
    findings = doctor.tpu_findings({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, tpu_attached=True,
                                   libtpu=False, colab=True)
    levels = {(f.check, f.level) for f in findings}
    assert levels == {("colab", "ok"), ("tpu", "error"), ("tpu", "warn")}
    runtime = next(f for f in findings if f.level == "error")
    assert "libtpu" in runtime.message and doctor.LIBTPU_INDEX in runtime.fix
    assert doctor.tpu_findings({}, tpu_attached=False, libtpu=False, colab=False) == []


def test_bad_tf_config_is_reported():
    finding = doctor.cluster_findings({"TF_CONFIG": '{"cluster": {}}'})[0]
    assert finding.level == "error" and "TF_CONFIG" in finding.message
    good = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}})
    assert doctor.cluster_findings({"TF_CONFIG": good})[0].message.startswith("this process is worker 1")


def test_onednn_is_on_unless_the_user_turned_it_off():
    """keras_bert_ft turns TensorFlow's oneDNN CPU kernels on before TensorFlow is imported
    (TensorFlow itself does only on AVX512-VNNI/BF16/AMX CPUs); a user's own 0 is kept."""
    import os
    import subprocess
    import sys
    code = ("import keras_bert_ft, os, tensorflow\n"
            "from keras_bert_ft import doctor\n"
            "f = doctor.onednn_finding(os.environ)\n"
            "print(f.level, os.environ['TF_ENABLE_ONEDNN_OPTS'], f.message)")
    seen = {}
    for value in (None, "0"):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if value is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = value
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        seen[value] = out.stdout.strip().splitlines()[-1]
    assert seen[None].startswith("ok 1 oneDNN CPU kernels are on"), seen
    assert seen["0"].startswith("ok 0 oneDNN CPU kernels are off: TF_ENABLE_ONEDNN_OPTS=0"), seen
    # this test process imported keras_bert_ft (conftest) before TensorFlow: on here as well
    assert doctor.onednn_finding(os.environ).level == "ok"


def test_onednn_imported_too_late_is_a_warning_with_its_fix(monkeypatch):
    from tensorflow.python.util import _pywrap_util_port
    monkeypatch.setattr(_pywrap_util_port, "IsMklEnabled", lambda: False)
    monkeypatch.setattr(_pywrap_util_port, "IsX86Available", lambda: True)
    finding = doctor.onednn_finding({"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert finding.level == "warn" and "imported before keras_bert_ft" in finding.message
    assert "import keras_bert_ft before tensorflow" in finding.fix
