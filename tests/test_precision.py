"""`mixed_precision="auto"`: bfloat16 only where the hardware computes it natively."""

import pytest

import keras_bert_ft as kbft
from keras_bert_ft.training import precision
from keras_bert_ft.training.tpu import resolve_hardware_settings


@pytest.mark.parametrize("tpu, gpus, flags, policy, why", [
    (True, (), (), "mixed_bfloat16", "TPU"),
    (False, ((8, 0),), (), "mixed_bfloat16", "8.0"),
    (False, ((9, 0), (7, 5)), ("amx_bf16",), "float32", "7.5"),  # the oldest GPU decides
    (False, (), ("avx2", "fma"), "float32", "neither AVX512-BF16 nor AMX"),
    (False, (), ("avx512f", "avx512_bf16"), "mixed_bfloat16", "avx512_bf16"),
    (False, (), ("amx_bf16", "amx_tile"), "mixed_bfloat16", "amx_bf16"),
])
def test_auto_follows_the_hardware(tpu, gpus, flags, policy, why):
    chosen, reason = precision.choose_precision(tpu=tpu, gpus=gpus, flags=flags)
    assert chosen == policy and why in reason


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nflags : other\n")
    assert precision.cpu_flags(str(info)) == ("fpu", "avx2", "amx_bf16")
    assert precision.cpu_flags(str(tmp_path / "missing")) == ()


def test_auto_is_the_default_and_resolves_on_this_machine(monkeypatch):
    import tensorflow as tf
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)  # the suite sets it
    assert kbft.FineTuneConfig().mixed_precision == "auto"
    for flags, expected in ((("avx2",), "float32"), (("avx512_bf16",), "mixed_bfloat16")):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(precision, "gpu_capabilities", lambda: ())
        config = resolve_hardware_settings(kbft.FineTuneConfig(), tf.distribute.get_strategy())
        assert config.mixed_precision == expected
    # An explicit choice is kept as asked, and runs saved before `auto` build in float32.
    mine = resolve_hardware_settings(kbft.FineTuneConfig(mixed_precision="float32"),
                                     tf.distribute.get_strategy())
    assert mine.mixed_precision == "float32"
    assert precision.resolve_precision(None) == "float32"


def test_kbft_cpu_bfloat16_0_keeps_auto_at_float32_on_a_bfloat16_cpu(monkeypatch):
    import tensorflow as tf
    monkeypatch.setattr(precision, "cpu_flags", lambda: ("avx512_bf16",))
    monkeypatch.setattr(precision, "gpu_capabilities", lambda: ())
    for value, expected in (("0", "float32"), ("off", "float32"), ("1", "mixed_bfloat16")):
        monkeypatch.setenv(precision.CPU_BF16_ENV, value)
        config = resolve_hardware_settings(kbft.FineTuneConfig(), tf.distribute.get_strategy())
        assert config.mixed_precision == expected, value
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    policy, why = precision.auto_precision()
    assert policy == "float32" and "KBFT_CPU_BFLOAT16=0 keeps float32" in why
    # TPUs and GPUs are not the CPU's choice
    assert precision.choose_precision(tpu=True, gpus=(), flags=(), cpu_bfloat16=False)[0] \
        == "mixed_bfloat16"
    assert precision.choose_precision(tpu=False, gpus=((8, 0),), flags=(),
                                      cpu_bfloat16=False)[0] == "mixed_bfloat16"


def test_doctor_says_which_precision_auto_picks_and_why():
    from keras_bert_ft.doctor import device_findings
    lines = [f.message for f in device_findings() if f.check == "precision"]
    assert len(lines) == 1 and lines[0].startswith("--mixed-precision auto picks ")
    assert ": " in lines[0]
