"""CLIPClassificationTaskPool: prompts from config, FusionBench fallback, errors, real evaluation."""

from __future__ import annotations

import math

import pytest
from omegaconf import DictConfig

import fusion_bench.taskpool.clip_vision.taskpool as fb_clip_taskpool
from fusion_bench.models.hf_clip import HFCLIPClassifier
from fusion_bench_larv.taskpools.clip_classification import CLIPClassificationTaskPool

DUMMY_DATASET = DictConfig({"_target_": "datasets.load_from_disk", "dataset_path": "never-loaded"})


def make_pool(test_datasets=None, **kwargs) -> CLIPClassificationTaskPool:
    """A pool that is constructed only (no model or data is loaded before ``setup``)."""
    kwargs.setdefault("clip_model", "never-loaded")
    kwargs.setdefault("processor", "never-loaded")
    return CLIPClassificationTaskPool(test_datasets or {"my_task": DUMMY_DATASET}, **kwargs)


def test_prompts_from_config():
    pool = make_pool(classnames={"my_task": ["cat", "dog"]}, templates={"my_task": ["a photo of a {}.", "a {}!"]})
    names, templates = pool.get_classnames_and_templates("my_task")
    assert names == ["cat", "dog"]
    assert [t("cat") for t in templates] == ["a photo of a cat.", "a cat!"]


def test_fallback_to_fusion_bench_table():
    pool = make_pool({"mnist": DUMMY_DATASET})
    names, templates = pool.get_classnames_and_templates("mnist")
    assert names == [str(d) for d in range(10)]
    assert templates[0]("3") == 'a photo of the number: "3".'


def test_config_overrides_table_key_by_key():
    pool = make_pool({"mnist": DUMMY_DATASET}, classnames={"mnist": list("abcdefghij")})
    names, templates = pool.get_classnames_and_templates("mnist")
    assert names == list("abcdefghij")
    assert templates[0]("a") == 'a photo of the number: "a".'  # templates still from the table


def test_unknown_task_raises_naming_it():
    with pytest.raises(ValueError, match="'no_such_task'.*classnames and templates"):
        make_pool({"no_such_task": DUMMY_DATASET})
    with pytest.raises(ValueError, match="'no_such_task'.*templates"):
        make_pool({"no_such_task": DUMMY_DATASET}, classnames={"no_such_task": ["a", "b"]})


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"classnames": ["a", "b"]}, TypeError, "`classnames` must be a mapping"),
        ({"classnames": {"my_task": "ab"}}, TypeError, "`classnames.my_task`"),
        ({"classnames": {"my_task": []}}, TypeError, "`classnames.my_task`"),
        ({"classnames": {"my_task": ["a", "a"]}}, ValueError, "duplicate class names"),
        ({"classnames": {"my_task": ["a", ""]}}, TypeError, "non-empty strings"),
        ({"classnames": {"my_task": ["a"]}, "templates": {"my_task": ["no placeholder"]}}, ValueError, "`templates.my_task`.*'no placeholder'"),
        ({"classnames": {"my_task": ["a"]}, "templates": {"my_task": ["{} and {}"]}}, ValueError, "exactly one"),
        ({"classnames": {"my_task": ["a"]}, "templates": {"my_task": ["{x} {}"]}}, ValueError, "cannot be formatted"),
    ],
)
def test_validation_names_key_and_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_pool(**kwargs)


def test_accepts_omegaconf_containers():
    pool = make_pool(
        classnames=DictConfig({"my_task": ["x", "y"]}),
        templates=DictConfig({"my_task": ["a {}"]}),
    )
    assert pool.get_classnames_and_templates("my_task")[0] == ["x", "y"]


def test_evaluate_uses_config_prompts_and_restores_lookup(tiny_synth, monkeypatch, tmp_path):
    """Evaluate a real tiny CLIP on a task name FusionBench does not know."""
    from transformers import CLIPVisionModel

    seen = []
    original_set = HFCLIPClassifier.set_classification_task

    def spy(self, classnames, templates=None):
        seen.append((list(classnames), [t("X") for t in templates]))
        return original_set(self, classnames, templates)

    monkeypatch.setattr(HFCLIPClassifier, "set_classification_task", spy)
    lookup_before = fb_clip_taskpool.get_classnames_and_templates
    pretrained = str(tiny_synth.assets.pretrained)
    pool = CLIPClassificationTaskPool(
        {"my_shapes": DictConfig({"_target_": "datasets.load_from_disk", "dataset_path": str(tiny_synth.assets.data("shapes", "test"))})},
        classnames={"my_shapes": ["circle", "square", "triangle", "star", "cross", "hexagon"]},
        templates={"my_shapes": ["a photo of a {}."]},
        clip_model=pretrained,
        processor=pretrained,
        dataloader_kwargs={"batch_size": 32, "num_workers": 0, "pin_memory": False},
    )
    report = pool.evaluate(CLIPVisionModel.from_pretrained(pretrained))
    assert fb_clip_taskpool.get_classnames_and_templates is lookup_before
    assert seen == [(["circle", "square", "triangle", "star", "cross", "hexagon"], ["a photo of a X."])]
    assert set(report) >= {"my_shapes", "average"}
    assert 0.0 <= report["my_shapes"]["accuracy"] <= 1.0 and math.isfinite(report["my_shapes"]["loss"])
