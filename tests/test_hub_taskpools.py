"""Our replacements for two FusionBench task pools (config/taskpool/larv/), on the hub-shaped cache.

- ``larv/clip-vit-base-patch32_robustness_corrupted`` loads only the evaluated split;
  FusionBench's config (pre-0.2 format, compat loader) loads every split of each data set.
- ``larv/flan-t5_glue_text_generation`` caches tokenized GLUE under FusionBench's
  ``path.cache_dir`` keyed by the tokenizer, and reports an average over the tasks with a score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config, run_hub_cli
from hub_fixture import GLUE_TASKS, ROBUSTNESS_TASKS, _t5_tokenizer
from test_hub_cli import empty_cwd, reported_tasks, task_results  # noqa: F401 (fixture)

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config"


def compose_root(*overrides):
    return compose_config(REPO_CONFIG, overrides)


@pytest.fixture
def load_dataset_calls(monkeypatch):
    """Record every ``datasets.load_dataset`` call (arguments only; nothing is loaded)."""
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or {"contrast": "one split"})
    return calls


def test_robustness_pool_loads_only_the_evaluated_split(load_dataset_calls):
    from fusion_bench.utils import instantiate

    cfg = compose_root("modelpool=CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted",
                       "taskpool=larv/clip-vit-base-patch32_robustness_corrupted", "+corruption=contrast")
    assert cfg.taskpool._target_ == "fusion_bench.taskpool.CLIPVisionModelTaskPool"
    assert cfg.taskpool.base_model == "openai/clip-vit-base-patch32"
    assert list(cfg.taskpool.test_datasets) == list(ROBUSTNESS_TASKS)
    for task, dataset in cfg.taskpool.test_datasets.items():
        instantiate(dataset)
    assert [kw.get("split") for _, kw in load_dataset_calls] == ["contrast"] * 4
    assert [kw["path"] for _, kw in load_dataset_calls] == [
        "tanganke/stanford_cars", "tanganke/eurosat", "tanganke/resisc45", "tanganke/gtsrb"]


def test_fusionbench_robustness_pool_loads_every_split(load_dataset_calls):
    """Why ours exists: FusionBench's config loads the whole data set, then picks the split."""
    from fusion_bench.dataset import load_dataset_from_config

    cfg = compose_root("modelpool=CLIPVisionModelPool/clip-vit-base-patch32_robustness_corrupted",
                       "taskpool=CLIPVisionModelTaskPool/clip-vit-base-patch32_robustness_corrupted",
                       "+corruption=contrast")
    dataset = OmegaConf.create({**OmegaConf.to_container(cfg.taskpool.tasks[0].dataset, resolve=True),
                                "type": cfg.taskpool.dataset_type})
    assert load_dataset_from_config(dataset) == "one split"
    assert load_dataset_calls == [(("tanganke/stanford_cars",), {})]  # no split: all 9 are downloaded


def test_glue_pool_composes_with_fusionbench_cache_dir():
    cfg = compose_root("modelpool=Seq2SeqLMPool/flan-t5-base_glue_lora16", "taskpool=larv/flan-t5_glue_text_generation",
                       "path.cache_dir=/some/cache")
    assert cfg.taskpool.cache_dir == "/some/cache"
    assert [t.name for t in cfg.taskpool.tasks] == list(GLUE_TASKS)
    assert [t.dataset.split for t in cfg.taskpool.tasks] == [GLUE_TASKS[t][1] for t in GLUE_TASKS]


def test_glue_average_skips_nan_scores():
    from fusion_bench_larv.taskpools.flan_t5_glue import glue_average

    report = {"cola": {"accuracy": 0.5}, "rte": {"accuracy": 0.25}, "stsb": {"spearman_rho": float("nan")}}
    assert glue_average(report, ["cola", "rte", "stsb"]) == {"score": 0.375, "num_scored": 2}
    report["stsb"] = {"spearman_rho": 0.75}
    assert glue_average(report, ["cola", "rte", "stsb"]) == {"score": 0.5, "num_scored": 3}
    nothing = glue_average({"stsb": {"spearman_rho": float("nan")}}, ["stsb"])
    assert math.isnan(nothing["score"]) and nothing["num_scored"] == 0


def test_glue_cache_is_keyed_by_tokenizer(hub_cache, tmp_path, monkeypatch):
    """Two tokenizers, one cache folder: each reads its own token ids (FusionBench's key is the task)."""
    import datasets

    from fusion_bench_larv.taskpools.flan_t5_glue import FlanT5GLUETaskPool

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", hub_cache.hf_home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    tasks = [{"name": "cola", "dataset": {"name": "cola", "split": "validation"}}]
    ids = {}
    for max_length in (24, 40):
        path = tmp_path / f"tok{max_length}"
        _t5_tokenizer(max_length=max_length).save_pretrained(path)
        pool = FlanT5GLUETaskPool(tasks=tasks, tokenizer=str(path), cache_dir=str(tmp_path / "cache"))
        first = pool.load_glue("cola")["validation"]["input_ids"][0]
        again = FlanT5GLUETaskPool(tasks=tasks, tokenizer=str(path), cache_dir=str(tmp_path / "cache"))
        assert again.load_glue("cola")["validation"]["input_ids"][0] == first  # read back from the cache
        ids[max_length] = first
    assert [len(ids[24]), len(ids[40])] == [24, 40]
    assert len(list((tmp_path / "cache" / "fusion_bench_larv" / "flan-t5_glue" / "cola").iterdir())) == 2


def test_glue_pool_rejects_unknown_task():
    from fusion_bench_larv.taskpools.flan_t5_glue import FlanT5GLUETaskPool

    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
        FlanT5GLUETaskPool(tasks=[{"name": "wnli", "dataset": {"name": "wnli", "split": "validation"}}],
                           tokenizer="google/flan-t5-base")


def test_glue_pool_through_cli_keeps_working_directory_empty(hub_cache, tmp_path, empty_cwd):
    """The real pool and our GLUE task pool, from an empty folder: the cache goes to path.cache_dir."""
    log_dir = tmp_path / "run"
    run_hub_cli(["fusion_bench", "method=simple_average", "modelpool=Seq2SeqLMPool/flan-t5-base_glue_lora16",
                 "taskpool=larv/flan-t5_glue_text_generation", f"path.log_dir={log_dir}"], hub_cache, empty_cwd)
    report = json.loads((log_dir / "program_report.json").read_text())
    assert reported_tasks(report) == list(GLUE_TASKS)
    report = task_results(report)
    scores = [report[t].get("accuracy", report[t].get("spearman_rho")) for t in GLUE_TASKS]
    finite = [s for s in scores if not math.isnan(s)]
    assert report["average"] == {"score": pytest.approx(sum(finite) / len(finite)), "num_scored": len(finite)}
    cache = hub_cache.fusion_bench_cache / "fusion_bench_larv" / "flan-t5_glue"
    assert sorted(p.name for p in cache.iterdir()) == sorted(GLUE_TASKS)
