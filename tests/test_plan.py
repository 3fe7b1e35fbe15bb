"""`kft plan`: sizes from config.json only, a verdict, and `kft train` stopping before an OOM."""

import re

import pytest
from conftest import CONFIGS, run_cli

LAST_LINE = re.compile(
    r"^kft plan: peak \d+\.\d\d GB per device, (fits|does not fit) in \d+\.\d\d GB$"
)

GEMMA3_270M_HF = {
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 640,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "intermediate_size": 2048,
}


def test_keras_and_hugging_face_config_json_give_the_same_sizes():
    from kft import plan

    keras_arch = plan.architecture(
        "gemma3_270m_gguf"
    )  # the table (or the prepared preset's own config.json)
    hf_arch = plan.from_config_json(GEMMA3_270M_HF)
    assert plan.parameters(keras_arch) == plan.parameters(hf_arch)
    # Gemma 3 270M: 268M parameters, 168M of them the embedding.
    assert abs(sum(plan.parameters(hf_arch).values()) - 268.1e6) < 1e6


def _decoder_parameters(backbone):
    return sum(int(v.numpy().size) for v in backbone.weights)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3", "gemma4"])
def test_planned_parameters_match_the_built_model_of_every_family(family):
    from quantize_helpers import tiny_backbone

    from kft import plan

    backbone = tiny_backbone(family)
    config = {"class_name": type(backbone).__name__, "config": backbone.get_config()}
    planned = sum(plan.parameters(plan.from_config_json(config)).values())
    actual = _decoder_parameters(backbone)
    assert abs(planned - actual) / actual < 0.03, (planned, actual)


# The tutorial's LoRA (rank 4, query+value): the 16 GB thresholds below were set with it.
TUTORIAL_LORA = ["--set", "lora.rank=4", "--set", "lora.targets=[query, value]"]


def test_plan_for_a_kaggle_preset_works_offline_and_ends_with_the_verdict_line(capsys):
    code, out, _ = run_cli(
        [
            "plan",
            "--preset",
            "gemma2_9b_en",
            "--device-memory",
            "16GB",
            *TUTORIAL_LORA,
            "--set",
            "model.precision=float32",
        ],
        capsys,
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert LAST_LINE.match(lines[-1]) and "does not fit" in lines[-1]
    assert any("does not fit: try model.quantize int4" in line for line in lines)
    code, out, _ = run_cli(
        [
            "plan",
            "--preset",
            "gemma2_9b_en",
            "--device-memory",
            "16GB",
            *TUTORIAL_LORA,
            "--set",
            "model.quantize=int4",
        ],
        capsys,
    )
    assert LAST_LINE.match(out.strip().splitlines()[-1]) and "fits in 16.00 GB" in out
    code, out, _ = run_cli(
        [
            "plan",
            "--preset",
            "gemma2_9b_en",
            "--device-memory",
            "16GB",
            *TUTORIAL_LORA,
            "--set",
            "model.quantize=int4",
            "--set",
            "model.int4_block_size=32",
        ],
        capsys,
    )
    assert "does not fit: try model.int4_block_size 128" in out  # 5 bytes per group and column more


def test_quantization_shrinks_the_planned_base_by_the_kernel_ratios():
    from kft import config as config_lib
    from kft import plan

    def base(mode):
        c = config_lib.load(
            None,
            {"model.preset": "gemma_7b_en", "model.quantize": mode, "model.precision": "float32"},
        )
        return plan.make(c, "100GB").lines[0][1]

    float_gb, int8_gb, int4_gb = base("none"), base("int8"), base("int4")
    assert abs(float_gb - 8.54e9 * 4 / 1e9) < 0.1  # 8.54B float32 parameters
    assert int8_gb < 0.35 * float_gb and int4_gb < 0.25 * float_gb  # the float embedding stays


def test_a_model_axis_divides_the_base_and_a_batch_axis_the_activations():
    from kft import config as config_lib
    from kft import plan

    c = config_lib.load(None, {"model.preset": "gemma2_9b_en", "train.batch_size": 8})
    one = dict(plan.make(c, "16GB").lines)
    sharded = dict(plan.make(c, "16GB", devices=8, model_axis=2).lines)
    base_key = next(k for k in one if k.startswith("base"))
    assert sharded[base_key] == pytest.approx(one[base_key] / 2)
    act_one = next(v for k, v in one.items() if k.startswith("activations"))
    act_sharded = next(v for k, v in sharded.items() if k.startswith("activations"))
    # Batch 8 over a batch axis of 4; the model axis (2) splits the heads and feed-forward width, not
    # the residual stream, so the activations fall by more than 4x but less than 8x.
    assert act_one / 8 < act_sharded < act_one / 4
    data_parallel = dict(plan.make(c, "16GB", devices=4, model_axis=1).lines)
    assert next(
        v for k, v in data_parallel.items() if k.startswith("activations")
    ) == pytest.approx(act_one / 4)


def test_an_unknown_preset_is_one_line_naming_what_plan_knows(capsys):
    code, _, err = run_cli(["plan", "--preset", "llama_7b", "--device-memory", "16GB"], capsys)
    assert code == 2 and "gemma2_9b_en" in err and err.count("\n") == 1


def test_train_stops_before_loading_when_the_plan_does_not_fit(
    tiny_presets, tmp_path, capsys, monkeypatch
):
    from kft import plan

    monkeypatch.setattr(plan, "detect_device", lambda: (0.01, "cpu"))
    code, _, err = run_cli(
        [
            "train",
            "--config",
            f"{CONFIGS}/tiny.yaml",
            "--preset",
            tiny_presets["gemma3"],
            "--output-dir",
            str(tmp_path / "run"),
        ],
        capsys,
    )
    assert code == 2 and "does not fit: try" in err and "train.memory_check: false" in err
    assert not (tmp_path / "run").exists()


def test_measuring_before_and_after_is_planned_and_can_be_the_peak(monkeypatch):
    """The main job's measured peaks (docs/performance.md, benchmarks/calibrate_plan.py --new-tokens): 4.16 GB
    with 32 new tokens per sample and 5.55 GB with 256, while training alone plans 3.81 GB."""
    from kft import config as config_lib
    from kft import plan
    from kft.generation import screened_argmax

    monkeypatch.setattr(screened_argmax, "cpu_has_bfloat16_dots", lambda: True)
    a = plan.from_config_json(GEMMA3_270M_HF)

    def planned(**sets):
        c = config_lib.load("configs/gemma3_270m_person_json.yaml", sets)
        return plan.estimate(a, c, 24.0, accelerator="cpu")

    silent = planned(**{"output.samples": 0})
    assert silent.measuring_lines == [] and silent.peak == pytest.approx(silent.training)
    short, long = planned(), planned(**{"output.sample_max_new_tokens": 256})
    assert short.training == pytest.approx(silent.training) and long.training == pytest.approx(
        silent.training
    )
    assert silent.peak < short.peak < long.peak
    assert abs(short.peak / 4.16 - 1) < 0.25 and abs(long.peak / 5.55 - 1) < 0.25
    # 224 positions more of Gemma 3 270M's cache (18 layers, keys and values, 1 x 256 float32) for 64 rows.
    assert long.peak - short.peak == pytest.approx(
        plan.CACHE_COPIES * 64 * 18 * 2 * 224 * 256 * 4 / 1e9
    )
    # The decode copies: the decoder's float kernels and a bfloat16 vocabulary, on a CPU only.
    copies = dict(short.measuring_lines)["measuring: decode copies (CPU)"]
    assert copies == pytest.approx(((29e6 + 71e6) * 4 + 262144 * 640 * 2) / 1e9, rel=0.02)
    gpu = plan.estimate(
        a, config_lib.load("configs/gemma3_270m_person_json.yaml"), 16.0, accelerator="gpu"
    )
    assert "measuring: decode copies (CPU)" not in dict(gpu.measuring_lines)


def test_a_run_that_trains_in_memory_but_cannot_measure_is_told_so(capsys):
    # Gemma 2B in float32 on a 14 GB device: training plans 13.1 GB; 2,048 new tokens per sample
    # make the generate chunk's cache (25 prompts x 2,304 positions) the peak.
    sets = [
        "--preset",
        "gemma_2b_en",
        "--device-memory",
        "14GB",
        "--set",
        "model.precision=float32",
    ]
    code, out, _ = run_cli(["plan", *sets, "--set", "output.samples=0"], capsys)
    assert code == 0 and "fits in 14.00 GB" in out.strip().splitlines()[-1]
    code, out, _ = run_cli(["plan", *sets, "--set", "output.sample_max_new_tokens=2048"], capsys)
    assert "does not fit in 14.00 GB" in out.strip().splitlines()[-1]
    assert "measuring: key/value cache (25 prompts x 2304 positions)" in out


def test_gptq_at_load_is_planned_and_auto_takes_the_nearest_codes_where_it_does_not_fit(capsys):
    """GPTQ holds a block's input Hessians, or the widest layer's Hessian and ~4 copies while solving
    (XLA's compiled buffer plan for the solve, `memory_analysis()` on CPU: H and 3.25 n^2 floats of
    temporaries for n inputs). Gemma 2 9B's down
    projection is 14,336 wide: it fits a 16 GB T4 beside the int4 decoder. Gemma 7B's is 24,576: not."""
    from kft import config as config_lib
    from kft import plan

    def made(preset, rounding):
        c = config_lib.load(
            None,
            {
                "model.preset": preset,
                "model.quantize": "int4",
                "model.precision": "float32",
                "lora.rank": 4,
                "lora.targets": ["query", "value"],
                "model.int4_rounding": rounding,
                "data.seq_len": 256,
                "train.batch_size": 1,
            },
        )
        return c, plan.make(c, "16GB")

    c9, p9 = made("gemma2_9b_en", "auto")
    solve = dict(p9.quantizing_lines)["GPTQ at load: Hessians and solve, largest float kernel"]
    assert solve == pytest.approx((5 * 14336**2 + 2 * 3584 * 14336) * 4 / 1e9)
    assert 0 < p9.quantizing < p9.training and p9.fits
    assert plan.int4_rounding(c9, 1, 1, "16GB") == "gptq"
    # On a mesh the base is rounded on the host and the first device before it is laid out
    # (kft.distribute.placement): the float base never reaches the devices, data parallel or on a model axis.
    assert plan.int4_rounding(c9, 8, 1, "16GB") == plan.int4_rounding(c9, 8, 2, "16GB") == "gptq"
    on_axis = plan.make(c9, "16GB", 8, 2)
    assert on_axis.quantizing < p9.quantizing  # the first device holds half the quantized decoder
    c7, p7 = made("gemma_7b_en", "auto")
    assert (
        p7.quantizing == 0 and p7.fits and plan.int4_rounding(c7, 1, 1, "16GB") == "least-squares"
    )
    assert "least-squares (GPTQ's work at load would not fit" in capsys.readouterr().out
    _, explicit = made("gemma_7b_en", "gptq")
    assert not explicit.fits and explicit.peak == explicit.quantizing
    assert explicit.advice.startswith("does not fit: try model.int4_rounding least-squares")
    code, out, _ = run_cli(
        [
            "plan",
            "--preset",
            "gemma_7b_en",
            "--device-memory",
            "16GB",
            "--set",
            "model.quantize=int4",
            "--set",
            "model.precision=float32",
        ],
        capsys,
    )
    assert (
        code == 0
        and "GPTQ at load: does not fit on the device, so int4_rounding auto = least-squares" in out
    )
    c8, p8 = made("gemma_7b_en", "least-squares")
    assert p8.quantizing_lines == [] and p8.peak == pytest.approx(p7.peak)


def test_host_memory_and_disk_at_load_are_planned_and_auto_takes_gptq_only_where_both_fit(
    monkeypatch,
):
    """A quantized base never sits whole, in float, in host memory (Gemma 2 9B in float32: 37 GB): each
    layer is quantized as it loads (kft.quant.quantize_on_load), or for GPTQ parked on disk and read back a
    block at a time (kft.quant.parking). The host holds what stays float (the token embedding) and one float
    kernel, or one block's for GPTQ; the disk, GPTQ's float decoder. Where either is short, auto rounds
    by the nearest codes; an explicit gptq is refused before loading, in one line."""
    from kft import config as config_lib
    from kft import plan
    from kft.core.errors import KftError

    def config(rounding="auto", mode="int4"):
        return config_lib.load(
            None,
            {
                "model.preset": "gemma2_9b_en",
                "model.quantize": mode,
                "model.precision": "float32",
                "lora.rank": 4,
                "lora.targets": ["query", "value"],
                "model.int4_rounding": rounding,
                "data.seq_len": 256,
                "train.batch_size": 1,
            },
        )

    arch = plan.architecture("gemma2_9b_en")
    parts = plan.parameters(arch)
    kept_float = (
        (sum(parts.values()) - parts["attention"] - parts["feed-forward"]) * 4 / 1e9
    )  # embedding, norms
    block = (parts["attention"] / arch.layers + 3 * arch.hidden * arch.ffw) * 4 / 1e9
    float_decoder = (parts["attention"] + parts["feed-forward"]) * 4 / 1e9
    roomy = plan.estimate(
        arch, config(), 16.0, accelerator="gpu", host_memory_gb=29.0, disk_gb=60.0
    )
    assert (
        roomy.quantizing > 0
        and roomy.host == pytest.approx(kept_float + block)
        and 0.7 < block < 0.9
    )
    assert roomy.disk == pytest.approx(float_decoder) and 33 < float_decoder < 34
    rendered = plan.render(roomy)
    assert (
        f"host memory at load: {roomy.host:.2f} GB beside the process (what stays float and one block's float "
        f"kernels; {roomy.host_as_it_loads:.2f} GB with least-squares rounding)" in rendered
    )
    assert (
        f"disk at load: up to {float_decoder:.2f} GB, where GPTQ parks the float decoder kernels"
        in rendered
    )
    assert LAST_LINE.match(rendered.splitlines()[-1])
    assert (
        kept_float < roomy.host_as_it_loads < kept_float + 0.25
    )  # + the widest kernel as it loads
    for short, where in (
        (dict(host_memory_gb=4.2), "in host memory"),
        (dict(disk_gb=20.0), "on disk"),
    ):
        nearest = plan.estimate(arch, config(), 16.0, accelerator="gpu", **short)
        assert (
            nearest.quantizing == nearest.disk == 0
            and f"does not fit {where}" in nearest.quantizing_lines[0][0]
        )
        assert nearest.host == roomy.host_as_it_loads
    streamed = plan.estimate(
        arch, config(mode="int8"), 16.0, accelerator="gpu", host_memory_gb=64.0
    )
    assert (
        streamed.host == pytest.approx(roomy.host_as_it_loads) and streamed.disk == 0
    )  # int8 parks nothing
    # Gemma 4's per-layer embedding, a lookup table, is quantized on the host: in float while that happens.
    e2b = config_lib.load(
        None, {"model.preset": "gemma4_2b", "model.quantize": "int4", "model.precision": "float32"}
    )
    e2b_plan, parts = (
        plan.make(e2b, "16GB", accelerator="gpu"),
        plan.parameters(plan.architecture("gemma4_2b")),
    )
    assert e2b_plan.host_as_it_loads > parts["per-layer embedding"] * (4 + 0.5) / 1e9
    assert (
        plan.make(config(), "16GB", accelerator="cpu").host == 0
    )  # there the host is the device: in the lines
    none = config_lib.load(None, {"model.preset": "gemma2_9b_en", "model.precision": "float32"})
    assert (
        plan.make(none, "16GB", accelerator="gpu").host == 0
    )  # a float base goes straight to the devices
    # kft train's check on a Kaggle GPU machine (29 GB of RAM): auto takes GPTQ where the disk has room.
    monkeypatch.setattr(plan, "detect_device", lambda: (16.0, "gpu"))
    monkeypatch.setattr(plan, "_available_ram", lambda: 29e9)
    monkeypatch.setattr(plan, "_free_disk", lambda: 60e9)
    plan.check_before_training(config())
    assert plan.int4_rounding(config()) == "gptq"
    monkeypatch.setattr(plan, "_free_disk", lambda: 20e9)
    assert plan.int4_rounding(config()) == "least-squares"
    with pytest.raises(
        KftError, match=rf"GPTQ parks up to {float_decoder:.2f} GB .*20\.00 GB free; set TMPDIR"
    ):
        plan.check_before_training(config("gptq"))
    monkeypatch.setattr(plan, "_free_disk", lambda: 60e9)
    monkeypatch.setattr(plan, "_available_ram", lambda: 4.2e9)
    with pytest.raises(
        KftError, match=rf"loading the int4 base takes {roomy.host:.2f} GB of host memory.*4\.20 GB"
    ):
        plan.check_before_training(config("gptq"))
    monkeypatch.setattr(plan, "_available_ram", lambda: 64e9)
    plan.check_before_training(config("gptq"))  # a machine with the RAM for it
    assert plan.int4_rounding(config()) == "gptq"


def test_a_preference_run_plans_two_answers_per_pair():
    from kft import config as config_lib
    from kft import plan

    def activations(**sets):
        c = config_lib.load(None, {"model.preset": "gemma2_2b_en", "train.batch_size": 4, **sets})
        return next((k, v) for k, v in plan.make(c, "16GB").lines if k.startswith("activations"))

    sft, dpo = activations(), activations(**{"train.objective": "dpo"})
    assert dpo[1] == pytest.approx(2 * sft[1]) and "4 pairs x 2 answers" in dpo[0]
    assert activations(**{"train.objective": "orpo", "train.batch_size": 2})[1] == pytest.approx(
        sft[1]
    )
    # Packed pairs: batch_size rows of 2 x seq_len, the positions of as many unpacked pairs (and
    # attention rows twice as long, so a little more).
    packed = activations(**{"train.objective": "dpo", "data.packing": True})
    assert "4 x 512" in packed[0] and "packed pairs" in packed[0]
    assert dpo[1] < packed[1] < 1.5 * dpo[1]
