"""colab/finetune_tpu.ipynb: a valid notebook whose code compiles, that uses the strategy,
TPU rules, resume, determinism, multi-worker and doctor, and whose every keras_bert_ft call
is exercised by another test."""

import glob
import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")

from test_notebooks import (ROOT, _is_module, check_api_references, code_sources, read,  # noqa: E402
                            referenced_names)

TPU_NOTEBOOK = os.path.join(ROOT, "colab", "finetune_tpu.ipynb")
LINK = "https://colab.research.google.com/github/<org>/keras_bert_ft/blob/main/colab/finetune_tpu.ipynb"


def test_tpu_notebook_is_valid_compiles_and_has_no_outputs():
    nb = read(TPU_NOTEBOOK)
    nbformat.validate(nb)
    for index, source in code_sources(nb):
        compile(source, f"finetune_tpu.ipynb[cell {index}]", "exec")
    check_api_references(nb, "colab/finetune_tpu.ipynb")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_tpu_notebook_uses_the_scale_out_features():
    nb = read(TPU_NOTEBOOK)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in nb.cells)
    assert "!kbft doctor" in code and "doctor.doctor()" in code
    assert 'kbft.get_strategy("auto", tpu_address=TPU_ADDRESS)' in code
    assert "resolve_hardware_settings(config, strategy)" in code
    assert re.search(r"output_dir=OUTPUT,\s+backup_steps=\d+", code)
    assert "deterministic=" in code and "--strategy multiworker" in code and "TF_CONFIG" in code
    assert "kbft.load_export" in code and "result.export(" in code
    for rule in ("TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED", '"/job:localhost"', "mixed_bfloat16",
                 "steps_per_execution", "distribute_datasets_from_function", "int32"):
        assert rule in text, rule
    assert LINK in text
    with open(os.path.join(ROOT, "colab", "README.md"), encoding="utf-8") as f:
        assert LINK in f.read()


def test_every_package_call_of_the_notebook_is_exercised_by_a_test():
    whole = "\n".join(source for _, source in code_sources(read(TPU_NOTEBOOK)))  # aliases span cells
    called = {name for _, name in referenced_names(whole)}
    called = {n for n in called if n != "__version__" and not _is_module(n)} | {"doctor"}
    tests = ""
    for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py")):
        if os.path.basename(path) not in ("test_colab_tpu.py", "test_notebooks.py"):
            with open(path, encoding="utf-8") as f:
                tests += f.read()
    missing = sorted(name for name in called if not re.search(rf"\b{name}\(", tests))
    assert not missing, f"notebook calls not exercised by any test: {missing}"
    assert {"get_strategy", "resolve_hardware_settings", "FineTuneConfig", "fine_tune",
            "doctor", "load_export"} <= called
