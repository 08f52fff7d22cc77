"""The wheel: `python -m build --wheel` makes one that holds the whole package and nothing
else, and that installs into a clean virtual environment where `kbft` runs the demo.

The clean venv gets the wheel with `pip install --no-deps --no-index` (nothing is
downloaded); its heavy dependencies (TensorFlow & co.) come from this interpreter's
site-packages through a `.pth` file. A `.pth` path line adds that folder to `sys.path`
after the venv's own site-packages and does not run the `.pth` files inside it, so this
checkout's editable install stays out: the test proves that `keras_bert_ft` is imported
from the venv.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SST2 = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "sst2"))
PACKAGE = "keras_bert_ft"
# What a source tree holds besides the package; none of it belongs in the wheel.
NOT_COPIED = (".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
              ".pytest_cache", ".bench-venvs")

pytestmark = pytest.mark.slow


def run(argv, cwd, timeout=600, env=None):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Builds the wheel from a copy of the source tree (so the build's `build/` and
    `*.egg-info` land there, not in the checkout). `--no-isolation`: setuptools comes
    from this environment instead of a download."""
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
         str(tmp / "dist"), str(source)], cwd=str(tmp))
    wheels = sorted((tmp / "dist").glob("*.whl"))
    assert len(wheels) == 1, wheels
    return str(wheels[0]), str(source)


def package_files(source):
    """The package's files in the source tree, as paths inside the wheel."""
    found = set()
    for folder, dirs, files in os.walk(os.path.join(source, PACKAGE)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                found.add(os.path.relpath(os.path.join(folder, name), source)
                          .replace(os.sep, "/"))
    return found


def test_wheel_holds_the_package_and_nothing_else(wheel):
    path, source = wheel
    assert os.path.basename(path).startswith(f"{PACKAGE}-") and path.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(metadata).decode()
    tops = {name.split("/")[0] for name in names}
    assert tops == {PACKAGE, os.path.basename(metadata.rsplit("/", 1)[0])}, tops
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "notebooks/",
                                                  "colab/", "scripts/"))]
    assert os.path.isdir(os.path.join(source, "tests"))  # present in the source, left out
    # Every file of the package is in the wheel: every subpackage has its __init__.py,
    # and any data file next to the code is declared in setup.cfg's package_data.
    missing = sorted(package_files(source) - names)
    assert not missing, f"files of {PACKAGE}/ missing from the wheel: {missing}"
    assert re.search(r"^kbft = keras_bert_ft\.cli:console$", entry_points, re.M), entry_points


@pytest.fixture(scope="module")
def clean_venv(wheel, tmp_path_factory):
    """A venv holding only the wheel; the dependencies come from this interpreter's
    site-packages through a `.pth` file. Returns (venv folder, environment, work dir)."""
    path, _ = wheel
    tmp = tmp_path_factory.mktemp("venv")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(tmp))
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-deps", "--no-index", "--no-cache-dir", path], cwd=str(tmp))
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               cwd=str(tmp)).stdout.strip()
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    with open(os.path.join(site, "_kbft_test_dependencies.pth"), "w") as f:
        f.write("\n".join(sorted(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    work = tmp / "work"  # not the checkout: nothing there may shadow the installed package
    work.mkdir()
    return venv, env, str(work)


def test_installed_package_comes_from_the_wheel(clean_venv):
    venv, env, work = clean_venv
    proc = run([str(venv / "bin" / "python"), "-c",
                "import keras_bert_ft; print(keras_bert_ft.__file__); "
                "print(keras_bert_ft.__version__)"], cwd=work, env=env)
    location, version = proc.stdout.split()[-2:]
    assert os.path.realpath(location).startswith(os.path.realpath(str(venv)) + os.sep), location
    assert not os.path.realpath(location).startswith(os.path.realpath(ROOT) + os.sep)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version), version


def test_kbft_help_and_demo_from_the_wheel(clean_venv, tmp_path):
    venv, env, work = clean_venv
    kbft = str(venv / "bin" / "kbft")
    with open(kbft) as f:  # the console script runs the venv's interpreter
        assert str(venv / "bin" / "python") in f.read(500)
    help_text = run([kbft, "--help"], cwd=work, env=env, timeout=300).stdout
    assert help_text.startswith("usage: kbft") and "demo" in help_text
    if not os.path.isfile(os.path.join(SST2, "train.tsv")):
        pytest.skip(f"SST-2 not found at {SST2} (the shared data folder beside the "
                    "checkout is absent)")
    output = tmp_path / "demo"
    proc = run([kbft, "demo", "--train-examples", "64", "--epochs", "1", "--output",
                str(output), "--data", SST2], cwd=work, env=env)
    match = re.search(r"^SST-2 .* accuracy: ([01]\.\d+) \((\d+) sentences", proc.stdout, re.M)
    assert match, proc.stdout[-3000:]
    assert 0.0 <= float(match.group(1)) <= 1.0 and int(match.group(2)) > 0
    assert os.path.isfile(output / "export" / "saved_model.pb")
    assert os.path.isfile(output / "metrics.json")
