"""Preference tuning (train.objective dpo | orpo): data, losses and gradients against a direct
computation on full logits, the precomputed reference, runs from the base and from an SFT run."""

import json
import math
import os

import numpy as np
import pytest
from conftest import CONFIGS

from kft.config import ConfigError, from_dict
from kft.core.errors import KftError

FACTS = os.path.join(os.path.dirname(CONFIGS), "src", "kft", "data", "bundled", "tiny_facts.jsonl")


def fact_pairs(path) -> str:
    """tiny_facts as pairs: chosen = the fact's answer, rejected = the next fact's (memorisable)."""
    rows = [json.loads(line) for line in open(FACTS, encoding="utf-8")]
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            wrong = rows[(i + 1) % len(rows)]["response"]
            pair = {"instruction": row["instruction"], "chosen": row["response"], "rejected": wrong}
            f.write(json.dumps(pair) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return fact_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl")


def short_fact_pairs(path) -> str:
    """tiny_facts as short pairs (a prompt column, one-word answers; data.template text): two pairs
    fit a packed row at seq_len 64."""
    rows = [json.loads(line) for line in open(FACTS, encoding="utf-8")]
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            answers = [r["response"].split()[-1] for r in (row, rows[(i + 1) % len(rows)])]
            f.write(
                json.dumps(
                    {"prompt": row["instruction"], "chosen": answers[0], "rejected": answers[1]}
                )
            )
            f.write("\n")
    return str(path)


@pytest.fixture(scope="module")
def short_pairs(tmp_path_factory):
    return short_fact_pairs(tmp_path_factory.mktemp("pairs") / "short.jsonl")


def data_config(**kw):
    from kft.config import DataConfig

    return DataConfig(**{"template": "dolly", "seq_len": 64, "shuffle": False, **kw})


def records(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


# --- data ---------------------------------------------------------------------------------------


def trained_text(segments):
    return "".join(t for t, trained in segments if trained)


def prompt_text(segments):
    return "".join(t for t, trained in segments if not trained)


def test_the_common_layouts_become_the_same_prompt_and_answers():
    from kft.data import preference, templates

    chat = templates.Template(name="gemma-chat", columns={})
    user = {"role": "user", "content": "Capital of France?"}
    layouts = [
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},  # TRL standard
        {"messages": [user], "chosen": "Paris", "rejected": "Lyon"},
        {  # UltraFeedback binarized: whole conversations
            "prompt": "ignored when the conversations carry it",
            "chosen": [user, {"role": "assistant", "content": "Paris"}],
            "rejected": [user, {"role": "assistant", "content": "Lyon"}],
        },
    ]
    explicit = {  # TRL's explicit conversational form: the prompt apart, each answer one turn
        "prompt": [user],
        "chosen": [{"role": "assistant", "content": "Paris"}],
        "rejected": [{"role": "assistant", "content": "Lyon"}],
    }
    rendered = [preference.render_pairs([r], chat)[0] for r in layouts[:2]]
    conversation = preference.render_pairs([layouts[2]], chat)[0]
    split_apart = preference.render_pairs([explicit], chat)[0]
    for chosen, rejected in [*rendered, conversation, split_apart]:
        assert prompt_text(chosen) == prompt_text(rejected) == prompt_text(rendered[0][0])
        assert trained_text(chosen) == "Paris<end_of_turn>\n"[: len(trained_text(chosen))]
        assert trained_text(chosen).startswith("Paris") and trained_text(rejected).startswith(
            "Lyon"
        )
    # A multi-turn prompt: its earlier model reply is prompt, only the last reply is the answer.
    turns = [
        user,
        {"role": "model", "content": "Paris."},
        {"role": "user", "content": "And Spain?"},
    ]
    record = {"messages": turns, "chosen": "Madrid", "rejected": "Rome"}
    chosen, _ = preference.render_pairs([record], chat)[0]
    assert trained_text(chosen).startswith("Madrid") and "Paris." in prompt_text(chosen)


def test_anthropic_hh_texts_split_at_their_shared_prefix_and_dolly_reads_its_own_fields():
    from kft.data import preference, templates

    text = templates.Template(name="text", columns={})
    hh = {
        "chosen": "\n\nHuman: Hi?\n\nAssistant: Hello there.",
        "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away.",
    }
    (chosen, rejected) = preference.render_pairs([hh], text)[0]
    assert prompt_text(chosen) == prompt_text(rejected) == "\n\nHuman: Hi?\n\nAssistant:"
    assert trained_text(chosen) == " Hello there." and trained_text(rejected) == " Go away."
    dolly = templates.Template(name="dolly", columns={"chosen": "good", "rejected": "bad"})
    row = {"instruction": "Say hi", "context": "", "good": "hi", "bad": "no"}
    (chosen, rejected) = preference.render_pairs([row], dolly)[0]
    assert prompt_text(chosen) == "Instruction:\nSay hi\n\nResponse:\n"
    assert (trained_text(chosen), trained_text(rejected)) == ("hi", "no")


def test_bad_preference_records_are_refused_with_the_fix(tokenizers):
    from kft.data import preference

    tok = tokenizers["gemma3"]
    with pytest.raises(KftError, match=r"missing column\(s\) rejected.*data.columns"):
        preference.build(records([{"prompt": "a", "chosen": "b"}]), tok, data_config(), 0)
    same = [{"prompt": "a", "chosen": "b", "rejected": "b"}]
    with pytest.raises(KftError, match="same chosen and rejected answer"):
        preference.build(records(same), tok, data_config(template="chat"), 0)
    with pytest.raises(KftError, match="record 0 has no prompt"):
        preference.build(
            records([{"chosen": "x", "rejected": "y"}]), tok, data_config(template="text"), 0
        )
    with pytest.raises(ConfigError, match="train.objective"):
        from_dict({"train": {"objective": "ppo"}})
    with pytest.raises(ConfigError, match="model.init_adapter.*16 bits"):
        from_dict({"model": {"init_adapter": "runs/x", "precision": "bfloat16"}})
    from_dict({"model": {"init_adapter": "runs/x", "precision": "bfloat16", "quantize": "int8"}})


def test_pairs_are_interleaved_rows_with_their_reference(tokenizers, pairs_file):
    from kft.data import dataset, preference

    built = preference.build(
        dataset.load_records(data_config(source=pairs_file)), tokenizers["gemma3"], data_config(), 0
    )
    pairs = built.train
    assert len(pairs) == 16 and built.stats["pairs"]
    pairs = preference.with_reference(pairs, np.arange(32, dtype="float32"))
    x, y, w = pairs.batch(np.array([3, 5]), pad_to_multiple=8)
    np.testing.assert_array_equal(y, [6, 7, 10, 11])  # chosen, rejected of pair 3, then pair 5
    rows = x["token_ids"].shape[0]
    assert rows == 4 and w.tolist() == [1, 1, 1, 1]
    np.testing.assert_array_equal(
        x["token_ids"][1], pairs.rejected.token_ids[3, : x["token_ids"].shape[1]]
    )


def test_packed_pairs_hold_whole_pairs_in_rows_of_twice_seq_len(tokenizers, short_pairs):
    from kft.data import dataset, preference

    config = data_config(packing=True, template="text")
    built = preference.build(
        dataset.load_records(data_config(source=short_pairs)), tokenizers["gemma3"], config, 0
    )
    packed, pairs = built.train, built.train.pairs
    assert built.stats["train_examples"] == 16 and built.stats["packed_rows"] == len(packed) == 8
    assert packed.token_ids.shape[1] == 2 * config.seq_len
    answers = sorted(int(a) for a in packed.slots.reshape(-1) if a >= 0)
    assert answers == list(range(32))  # every answer once
    for r, row in enumerate(packed.slots):
        for k, answer in enumerate(row[row >= 0]):
            assert answer % 2 == k % 2 and (k % 2 == 0 or row[k - 1] == answer - 1)  # c, r adjacent
            side = pairs.chosen if answer % 2 == 0 else pairs.rejected
            at = packed.segment_ids[r] == k + 1
            n = int(side.padding_mask[answer // 2].sum())
            np.testing.assert_array_equal(packed.token_ids[r, at], side.token_ids[answer // 2, :n])
            np.testing.assert_array_equal(packed.rows.token_positions[r, at], np.arange(n))
    packed = preference.with_reference(packed, np.arange(32, dtype="float32"))
    x, y, w = packed.batch(np.arange(2))
    assert y.shape == x["answer_slots"].shape == (2, packed.slots.shape[1]) and w.tolist() == [1, 1]
    np.testing.assert_array_equal(y, np.where(packed.slots[:2] >= 0, packed.slots[:2], 0))


def test_pair_figures_of_packed_rows_leave_out_empty_slots_and_weigh_every_step_alike():
    from kft.models.preference import PairMetric, PreferenceLoss

    # Packed outputs (rows, slots, [log-prob, tokens]): step 1 holds 2 pairs, step 2 one pair and
    # an empty slot pair (0 tokens), which no figure may count.
    step1 = np.array([[[-1.0, 3], [-5.0, 3], [-2.0, 2], [-1.0, 2]]], "float32")
    step2 = np.array([[[-1.0, 4], [-3.0, 4], [0.0, 0], [0.0, 0]]], "float32")
    zero = np.zeros((1, 4), "float32")
    accuracy = PairMetric("reward_accuracy", "dpo", 0.1, 0.1)
    accuracy.update_state(zero, step1)
    assert float(accuracy.result()) == 0.5  # the second pair prefers its rejected answer
    accuracy.update_state(zero, step2)
    assert float(accuracy.result()) == 0.75  # the mean of the steps' 0.5 and 1.0
    loss = float(PreferenceLoss("dpo", 0.1, 0.1)(zero, step2))
    assert loss == pytest.approx(math.log1p(math.exp(-0.1 * 2.0)), rel=1e-6)


# --- losses and gradients against full logits ------------------------------------------------


def full_logit_logps(logits, x_rows):
    """Each row's summed log-prob of its trained targets, from full logits (NumPy float64)."""
    logits = np.asarray(logits, "float64")
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, x_rows.targets[..., None], -1)[..., 0]
    return (picked * x_rows.loss_weights).sum(-1), x_rows.loss_weights.sum(-1)


def dpo_numpy(logps, reference, beta):
    c, r = logps[0::2] - reference[0::2], logps[1::2] - reference[1::2]
    return float(np.mean(np.log1p(np.exp(-beta * (c - r)))))


def orpo_numpy(logps, counts, lam):
    mean = logps / counts
    c, r = mean[0::2], mean[1::2]
    log_odds = (c - r) - (np.log1p(-np.exp(c)) - np.log1p(-np.exp(r)))
    nll = -logps[0::2].sum() / counts[0::2].sum()
    return float(nll - lam * np.mean(-np.log1p(np.exp(-log_odds))))


def setup_model(preset, pairs_file, objective, seed=0, **data):
    """A tiny task with LoRA (B made non-zero so every factor gets a gradient), compiled for `objective`."""
    import keras

    from kft.data import dataset, preference
    from kft.evaluate import evaluation
    from kft.models import lora
    from kft.quant import frozen_base

    task = frozen_base.load(preset, "float32")[0]
    keras.utils.set_random_seed(seed)
    lora.enable(task.backbone, 4, 8.0, ["all-linear"])
    built = preference.build(
        dataset.load_records(data_config(source=pairs_file)),
        task.preprocessor.tokenizer,
        data_config(**data),
        0,
    )
    model = evaluation.compile_preference(task, None, objective, 0.1, 0.1)
    return task, model, built.train


def jax_grads(model, x, y, loss_of, with_outputs=False):
    """(loss, gradients) of the trainable variables (and the model's outputs, `with_outputs`)."""
    import jax

    trainable = [v.value for v in model.trainable_variables]
    fixed = [v.value for v in model.non_trainable_variables]

    def f(values):
        out, _ = model.stateless_call(values, fixed, x)
        return loss_of(y, out), out

    (loss, out), grads = jax.value_and_grad(f, has_aux=True)(trainable)
    return (loss, grads, out) if with_outputs else (loss, grads)


SLOW_FAMILIES = ("gemma", "gemma2", "gemma4", "llama", "llama3", "mistral", "qwen3")


@pytest.mark.parametrize(
    "family",
    ["gemma3", *(pytest.param(f, marks=pytest.mark.slow) for f in ("qwen", *SLOW_FAMILIES))],
)  # the default tier: Gemma 3 (the 2x4 mesh test trains DPO on Gemma); slow: every other family
def test_dpo_at_step_0_is_log_2_and_the_reference_is_a_second_forward_of_the_base(
    tiny_presets, pairs_file, family
):
    import keras

    from kft.data import preference
    from kft.evaluate import evaluation
    from kft.quant import frozen_base

    task, model, pairs = setup_model(tiny_presets[family], pairs_file, "dpo")
    outputs = evaluation.pair_outputs(model, pairs, 4)  # LoRA B = 0: the reference
    base = frozen_base.load(tiny_presets[family], "float32")[0]  # no LoRA at all
    rows = pairs.rows(np.arange(len(pairs)))
    logits = base(rows.inputs())
    expected, counts = full_logit_logps(logits, rows)
    np.testing.assert_allclose(outputs[:, 0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outputs[:, 1], counts)
    pairs = preference.with_reference(pairs, outputs[:, 0])
    x, y, _ = pairs.batch(np.arange(8))
    loss = keras.Model.test_on_batch(model, x, y, return_dict=True)["loss"]
    assert abs(loss - math.log(2)) < 1e-6


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
@pytest.mark.parametrize(
    "family", ["gemma3", *(pytest.param(f, marks=pytest.mark.slow) for f in ("gemma2", "qwen"))]
)  # slow: Gemma 2's logit soft cap, Qwen's untied head
def test_losses_and_gradients_equal_a_direct_computation_on_full_logits(
    tiny_presets, pairs_file, objective, family
):
    import jax
    import jax.numpy as jnp
    import keras

    from kft.data import preference
    from kft.models import lora
    from kft.models.preference import PreferenceLoss

    task, model, pairs = setup_model(tiny_presets[family], pairs_file, objective)
    rng = np.random.default_rng(0)
    for v in lora.lora_variables(task.backbone).values():  # B != 0, so A gets gradients too
        v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))
    reference = rng.normal(-20, 3, 2 * len(pairs)).astype("float32")
    pairs = preference.with_reference(pairs, reference)
    index = np.arange(4)
    x, y, _ = pairs.batch(index)
    rows = pairs.rows(index)
    loss_fn = PreferenceLoss(objective, 0.1, 0.1)
    kft_loss, kft_grads = jax_grads(model, x, y, lambda y_, out: loss_fn(y_, out))

    # The same loss written directly on the task's full-vocabulary logits, in JAX (for gradients).
    inputs = rows.inputs()
    targets, weights = jnp.asarray(rows.targets), jnp.asarray(rows.loss_weights)
    task_vars = {v.path: v for v in task.trainable_variables}
    order = [v.path for v in model.trainable_variables]
    assert set(order) == set(task_vars)
    fixed = [v.value for v in task.non_trainable_variables]

    def direct(values):
        by_path = dict(zip(order, values))
        logits, _ = task.stateless_call(
            [by_path[v.path] for v in task.trainable_variables], fixed, inputs
        )
        logp = jax.nn.log_softmax(logits.astype("float32"), -1)
        picked = jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        logps, counts = (picked * weights).sum(-1), weights.sum(-1)
        if objective == "dpo":
            ratio = (logps - y)[0::2] - (logps - y)[1::2]
            return -jnp.mean(jax.nn.log_sigmoid(0.1 * ratio))
        mean = logps / counts
        c, r = mean[0::2], mean[1::2]
        log_odds = (c - r) - (jnp.log1p(-jnp.exp(c)) - jnp.log1p(-jnp.exp(r)))
        nll = -logps[0::2].sum() / counts[0::2].sum()
        return nll - 0.1 * jnp.mean(jax.nn.log_sigmoid(log_odds))

    direct_loss, direct_grads = jax.value_and_grad(direct)(
        [v.value for v in model.trainable_variables]
    )
    logits = np.asarray(task(inputs))
    logps, counts = full_logit_logps(logits, rows)
    numpy_loss = dpo_numpy(logps, y, 0.1) if objective == "dpo" else orpo_numpy(logps, counts, 0.1)
    assert abs(float(kft_loss) - numpy_loss) < 1e-5
    assert abs(float(direct_loss) - numpy_loss) < 1e-5
    for path, ours, theirs in zip(order, kft_grads, direct_grads):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5, err_msg=path)
    assert max(float(np.abs(np.asarray(g)).max()) for g in kft_grads) > 1e-4  # not all zero
    del keras


@pytest.mark.parametrize(
    "objective", ["dpo", pytest.param("orpo", marks=pytest.mark.slow)]
)  # ORPO's empty slots: the default tier checks its loss on full logits, DPO's packing here
def test_packed_pairs_give_the_unpacked_losses_and_gradients(tiny_presets, short_pairs, objective):
    from kft.data import dataset, preference
    from kft.models import lora
    from kft.models.preference import PreferenceLoss

    task, model, pairs = setup_model(
        tiny_presets["gemma3"], short_pairs, objective, template="text"
    )
    rng = np.random.default_rng(1)
    for v in lora.lora_variables(task.backbone).values():
        v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))
    reference = rng.normal(-20, 3, 2 * len(pairs)).astype("float32")
    packed = preference.build(
        dataset.load_records(data_config(source=short_pairs)),
        task.preprocessor.tokenizer,
        data_config(packing=True, template="text"),
        0,
    ).train
    packed = preference.with_reference(packed, reference)
    pairs = preference.with_reference(pairs, reference)
    loss_fn = PreferenceLoss(objective, 0.1, 0.1)

    def loss_of(y_, out):
        return loss_fn(y_, out)

    x, y, _ = pairs.batch(np.arange(len(pairs)))
    unpacked_loss, unpacked_grads, unpacked_out = jax_grads(model, x, y, loss_of, True)
    x, y, _ = packed.batch(np.arange(len(packed)))  # every pair, in fewer rows
    packed_loss, packed_grads, out = jax_grads(model, x, y, loss_of, True)
    unpacked_out, out = np.asarray(unpacked_out), np.asarray(out)
    answers = packed.slots >= 0
    assert out.shape == (*packed.slots.shape, 2) and np.all(out[~answers] == 0)
    np.testing.assert_allclose(out[answers], unpacked_out[packed.slots[answers]], atol=1e-4)
    assert abs(float(packed_loss) - float(unpacked_loss)) < 1e-5
    for ours, theirs in zip(packed_grads, unpacked_grads):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-5)


# --- runs ----------------------------------------------------------------------------------------


def tiny_run(out, preset, **settings):
    import kft

    return kft.train(
        os.path.join(CONFIGS, "tiny.yaml"),
        **{
            "model.preset": preset,
            "train.epochs": None,
            "train.max_steps": 24,
            "train.log_every": 4,
            "output.samples": 2,
            "output.tensorboard": False,
            "output.dir": str(out),
            **settings,
        },
    )


@pytest.fixture(scope="module")
def sft_run(tiny_presets, tmp_path_factory):
    return tiny_run(
        tmp_path_factory.mktemp("sft") / "run", tiny_presets["gemma3"], **{"train.max_steps": 12}
    )


@pytest.mark.parametrize(
    "packed", [True, pytest.param(False, marks=pytest.mark.slow)]
)  # unpacked DPO runs in the default tier from an SFT run (below)
def test_dpo_memorises_a_preference_set_to_100_percent_reward_accuracy(
    tiny_presets, pairs_file, short_pairs, tmp_path, capsys, packed
):
    settings = {"train.objective": "dpo", "data.source": pairs_file}
    if packed:  # two short pairs a row: 8 rows, 2 a batch (a reference computed unpacked)
        settings.update(
            {
                "data.source": short_pairs,
                "data.template": "text",
                "data.packing": True,
                "train.batch_size": 2,
            }
        )
    result = tiny_run(tmp_path / "dpo", tiny_presets["gemma3"], **settings)
    if packed:
        assert "packed 16 training pairs into 8 rows of 128" in capsys.readouterr().out
    m = result.metrics
    assert abs(m["first_loss"] - math.log(2)) < 1e-5
    rows = [json.loads(line) for line in open(result.run_dir / "metrics.jsonl")]
    assert (
        rows[-1]["reward_accuracy"] == 1.0 and rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    )
    assert {"logps_chosen", "logps_rejected"} <= set(rows[-1])
    assert m["pairs_measured_on"] == "training" and m["pairs_reward_accuracy_after"] == 1.0
    assert m["pairs_preferred_after"] > m["pairs_preferred_before"]
    assert m["pairs_reward_margin_before"] == 0.0
    saved = np.load(result.run_dir / "reference_logps.npz")
    assert saved["train"].shape == (16, 2)
    from kft.evaluate import evaluation

    # `kft eval RUN`: the adapter reloaded, the same pairs, against the run's saved reference.
    again = evaluation.evaluate_run(result.run_dir)
    assert again["pairs"]["reward_accuracy"] == 1.0
    assert again["pairs"]["reward_margin"] == pytest.approx(
        m["pairs_reward_margin_after"], rel=1e-4
    )


@pytest.mark.slow  # 40 steps; ORPO's loss and gradients are checked in the default tier
def test_orpo_learns_the_chosen_answers_without_a_reference(tiny_presets, pairs_file, tmp_path):
    result = tiny_run(
        tmp_path / "orpo",
        tiny_presets["gemma3"],
        **{"train.objective": "orpo", "data.source": pairs_file, "train.max_steps": 40},
    )
    m = result.metrics
    assert m["final_loss"] < m["first_loss"]
    assert m["pairs_reward_accuracy_after"] == 1.0 > m["pairs_reward_accuracy_before"]
    assert "train" not in np.load(result.run_dir / "reference_logps.npz")  # ORPO needs none


def test_a_run_started_from_an_sft_run_keeps_its_behaviour_at_step_0(
    tiny_presets, pairs_file, sft_run, tmp_path, capsys
):
    from kft.export import export

    result = tiny_run(
        tmp_path / "dpo",
        tiny_presets["gemma3"],
        **{
            "train.objective": "dpo",
            "data.source": pairs_file,
            "train.max_steps": 4,
            "model.init_adapter": str(sft_run.run_dir),
            "data.eval_fraction": 0.25,
            "train.eval_every": 2,
        },
    )
    m = result.metrics
    assert abs(m["first_loss"] - math.log(2)) < 1e-5
    # Evaluated while training (steps 2 and 4) on the held-out pairs against their reference: the
    # last evaluation is the after-measurement's model.
    rows = [json.loads(line) for line in open(result.run_dir / "metrics.jsonl")]
    evals = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and m["pairs_measured_on"] == "held-out"
    for key in ("reward_accuracy", "reward_margin", "logps_chosen"):
        assert evals[-1][f"eval_{key}"] == pytest.approx(m[f"pairs_{key}_after"], abs=1e-5)
    # Greedy answers of the merged start model before any step = the SFT model's own.
    from kft.generation import loading, sampling

    prompts = [json.loads(line)["prompt"] for line in open(result.run_dir / "samples.jsonl")]
    before = json.loads((result.run_dir / "before.json").read_text())["generations"]
    sft = loading.load_tuned(sft_run.run_dir)
    sft.compile(sampler="greedy")
    assert sampling.generate(sft, sft.preprocessor.tokenizer, prompts, 16) == before
    assert (result.run_dir / "init_adapter" / "adapter.safetensors").is_file()
    with pytest.raises(KftError, match="--with-base"):
        export(str(result.run_dir), "peft", str(tmp_path / "peft"))
    import shutil

    moved = tmp_path / "copied_without_its_start"
    shutil.copytree(result.run_dir, moved, ignore=shutil.ignore_patterns("init_adapter"))
    with pytest.raises(KftError, match="trained on top of another run's adapter.*missing"):
        loading.load_tuned(moved)  # never silently on the bare base
    # Exports merge both adapters: transformers' logits of the hf export, and of the PEFT adapter
    # on the base --with-base writes (the SFT model), equal the run's own.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuned = loading.load_tuned(result.run_dir)
    ids = np.array([[2, 10, 11, 12, 13, 14, 15]])
    ours = np.asarray(tuned({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}))
    hf = AutoModelForCausalLM.from_pretrained(
        export(str(result.run_dir), "hf", str(tmp_path / "hf"))
    )
    peft_dir = export(str(result.run_dir), "peft", str(tmp_path / "peft"), with_base=True)
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(peft_dir / "base"), peft_dir
    )
    for model in (hf, with_adapter):
        theirs = model(torch.tensor(ids)).logits.detach().numpy()
        np.testing.assert_allclose(theirs, ours, atol=1e-4)


def int8_adapter(folder, run_dir):
    """A copy of `run_dir`'s adapter recorded as trained on an int8 base (what the refusals read)."""
    import shutil

    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("checkpoints", "init_adapter"))
    meta = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**meta, "quantize": "int8"}))
    return folder


def test_continuing_a_quantized_runs_lora_is_refused_where_it_cannot_be(
    tiny_presets, pairs_file, sft_run, tmp_path
):
    preset = tiny_presets["gemma3"]
    int8 = int8_adapter(tmp_path / "int8", sft_run.run_dir)
    dpo = {"train.objective": "dpo", "data.source": pairs_file, "train.max_steps": 2}
    start = {"model.init_adapter": str(int8)}
    for settings, fix in (
        ({**start, "model.quantize": "int8", "lora.rank": 4}, "set lora.rank: 8"),
        ({**start}, "set model.quantize: int8"),
        (
            {"model.init_adapter": str(sft_run.run_dir), "model.quantize": "int8"},
            "model.quantize: none",
        ),
    ):
        with pytest.raises(KftError, match=fix):  # before any model loads
            tiny_run(tmp_path / "refused", preset, **dpo, **settings)


@pytest.mark.slow  # two tiny runs on an int8 base (~25 s); its refusals are in the default tier
def test_on_a_quantized_base_a_run_continues_the_sft_runs_lora(tiny_presets, pairs_file, tmp_path):
    from kft.generation import loading, sampling
    from kft.models import adapter

    preset = tiny_presets["gemma3"]
    int8_sft = tiny_run(
        tmp_path / "sft8", preset, **{"train.max_steps": 4, "model.quantize": "int8"}
    )
    dpo = {"train.objective": "dpo", "data.source": pairs_file, "train.max_steps": 2}
    start = {"model.init_adapter": str(int8_sft.run_dir)}
    result = tiny_run(tmp_path / "dpo8", preset, **dpo, **start, **{"model.quantize": "int8"})
    assert abs(result.metrics["first_loss"] - math.log(2)) < 1e-5  # the policy: the SFT model
    prompts = [json.loads(line)["prompt"] for line in open(result.run_dir / "samples.jsonl")]
    before = json.loads((result.run_dir / "before.json").read_text())["generations"]
    sft = loading.load_tuned(int8_sft.run_dir)
    sft.compile(sampler="greedy")
    assert sampling.generate(sft, sft.preprocessor.tokenizer, prompts, 16) == before
    meta = adapter.read_config(result.run_dir)
    assert meta["quantize"] == "int8" and meta["continued_from"] and "init_adapter" not in meta
    tuned = loading.load_tuned(result.run_dir)  # one adapter on the rebuilt int8 base
    ids = np.array([[2, 10, 11, 12, 13, 14, 15]])
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    moved = np.abs(np.asarray(tuned(x)) - np.asarray(sft(x))).max()
    assert 0 < moved < 1.0  # trained on from the SFT adapter, not from zero


def test_merging_an_adapter_equals_applying_it(tiny_presets, sft_run):
    from kft.generation import loading
    from kft.models import adapter
    from kft.quant import frozen_base

    tuned = loading.load_tuned(sft_run.run_dir)
    merged = frozen_base.load(tiny_presets["gemma3"], "float32")[0]
    assert adapter.merge(sft_run.run_dir, merged.backbone) == 14
    x = {"token_ids": np.array([[2, 10, 11, 12, 13, 14]]), "padding_mask": np.ones((1, 6), bool)}
    np.testing.assert_allclose(np.asarray(merged(x)), np.asarray(tuned(x)), rtol=1e-5, atol=1e-5)
