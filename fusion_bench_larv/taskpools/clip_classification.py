"""A CLIP image-classification task pool whose class names and prompt templates come from config.

FusionBench's :class:`~fusion_bench.taskpool.CLIPVisionModelTaskPool` builds each task's
zero-shot head from class names and templates looked up **by task name** in a fixed table
(``fusion_bench.tasks.clip_classification``), so it cannot evaluate a dataset that is not in
that table (and ``CLIPTemplateFactory.register_dataset`` is broken in 0.2.33).
:class:`CLIPClassificationTaskPool` takes them from its config instead and falls back to the
table for task names FusionBench knows. Everything else (datasets, dataloaders, the
``HFCLIPClassifier``, the report with per-task ``accuracy``/``loss`` and ``average``) is
FusionBench's own code.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

import fusion_bench.taskpool.clip_vision.taskpool as _fb_clip_taskpool
from fusion_bench import auto_register_config
from fusion_bench.taskpool import CLIPVisionModelTaskPool
from fusion_bench.tasks.clip_classification import CLIPTemplateFactory

log = logging.getLogger(__name__)

__all__ = ["CLIPClassificationTaskPool"]


def _plain(value):
    """DictConfig/ListConfig → plain containers; other values unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _validate_table(key: str, table, check: Callable[[str, str, object], List[str]]) -> Dict[str, List[str]]:
    """Check a ``{task: [str, ...]}`` mapping; ``check`` validates one task's list."""
    table = _plain(table)
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise TypeError(f"`{key}` must be a mapping {{task: [str, ...]}}, got {type(table).__name__}: {table!r}")
    return {str(task): check(key, str(task), value) for task, value in table.items()}


def _check_strings(key: str, task: str, value) -> List[str]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        raise TypeError(f"`{key}.{task}` must be a non-empty list of strings, got {value!r}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise TypeError(f"`{key}.{task}` must contain non-empty strings only, got {bad!r} in {list(value)!r}")
    return list(value)


def _check_classnames(key: str, task: str, value) -> List[str]:
    names = _check_strings(key, task, value)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`{key}.{task}` has duplicate class names {duplicates!r}")
    return names


def _check_templates(key: str, task: str, value) -> List[str]:
    templates = _check_strings(key, task, value)
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(
                f"`{key}.{task}`: every template needs exactly one `{{}}` placeholder for the "
                f"class name, got {template!r}"
            )
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(f"`{key}.{task}`: template {template!r} cannot be formatted ({err})") from err
    return templates


@auto_register_config
class CLIPClassificationTaskPool(CLIPVisionModelTaskPool):
    """``CLIPVisionModelTaskPool`` with class names and prompt templates taken from config.

    For each test dataset (task) the zero-shot head uses ``classnames[task]`` and
    ``templates[task]`` when given; whichever is missing comes from FusionBench's built-in
    table (``fusion_bench.tasks.clip_classification``) if it knows the task name. A task that
    is neither configured nor known raises ``ValueError`` naming it, at construction time.

    Args:
        test_datasets: as for ``CLIPVisionModelTaskPool``: ``{task: dataset or dataset config}``
            whose items are ``{"image": PIL image, "label": int}``.
        classnames: ``{task: [class name, ...]}``, in label order.
        templates: ``{task: [template, ...]}``; each template is a ``str.format`` string
            with exactly one ``{}`` placeholder, e.g. ``"a photo of a {}."``.
        **kwargs: every other ``CLIPVisionModelTaskPool`` argument (``clip_model``,
            ``processor``, ``dataloader_kwargs``, ...).

    Example (a user's own dataset saved with ``datasets.Dataset.save_to_disk``)::

        _target_: fusion_bench_larv.taskpools.clip_classification.CLIPClassificationTaskPool
        _recursive_: false
        base_model: openai/clip-vit-base-patch32
        clip_model:
          _target_: transformers.CLIPModel.from_pretrained
          pretrained_model_name_or_path: ${..base_model}
        processor:
          _target_: transformers.CLIPProcessor.from_pretrained
          pretrained_model_name_or_path: ${..base_model}
        test_datasets:
          my_flowers:
            _target_: datasets.load_from_disk
            dataset_path: /data/my_flowers/test
          mnist: ...                      # known to FusionBench: no prompts needed
        classnames:
          my_flowers: [daisy, rose, tulip]
        templates:
          my_flowers: ["a photo of a {}.", "a close-up photo of a {}, a type of flower."]
        dataloader_kwargs: {batch_size: 128, num_workers: 0, pin_memory: false, shuffle: false}
    """

    def __init__(
        self,
        test_datasets,
        *,
        classnames: Optional[Mapping[str, Sequence[str]]] = None,
        templates: Optional[Mapping[str, Sequence[str]]] = None,
        **kwargs,
    ):
        super().__init__(test_datasets, **kwargs)
        self._classname_table = _validate_table("classnames", classnames, _check_classnames)
        self._template_table = _validate_table("templates", templates, _check_templates)
        # fail fast: every task to evaluate must have prompts
        for task in self._test_datasets.keys():
            self.get_classnames_and_templates(str(task))

    def get_classnames_and_templates(self, task: str) -> Tuple[List[str], List[Callable[[str], str]]]:
        """``(classnames, template callables)`` for ``task``: config first, then FusionBench's table."""
        names = self._classname_table.get(task)
        templates = self._template_table.get(task)
        if names is None or templates is None:
            if task not in CLIPTemplateFactory.get_available_datasets():
                missing = " and ".join(k for k, v in (("classnames", names), ("templates", templates)) if v is None)
                raise ValueError(
                    f"task {task!r} has no {missing} in the task pool config and is not in "
                    f"FusionBench's built-in table; add `{missing.split(' and ')[0]}.{task}: [...]` "
                    f"to the task pool config"
                )
            table_names, table_templates = CLIPTemplateFactory.get_classnames_and_templates(task)
            names = list(table_names) if names is None else names
            if templates is None:
                return names, list(table_templates)
        return list(names), [(lambda c, t=t: t.format(c)) for t in templates]

    def evaluate(self, model, name=None, **kwargs):
        """FusionBench's ``evaluate``, with this pool's prompt lookup.

        FusionBench's ``evaluate`` resolves prompts through the module-level
        ``get_classnames_and_templates`` of ``fusion_bench.taskpool.clip_vision.taskpool``;
        rather than paste that method, the lookup is swapped for this pool's for the duration
        of the call and restored afterwards (also on error).
        """
        original = _fb_clip_taskpool.get_classnames_and_templates
        _fb_clip_taskpool.get_classnames_and_templates = self.get_classnames_and_templates
        try:
            return super().evaluate(model, name=name, **kwargs)
        finally:
            _fb_clip_taskpool.get_classnames_and_templates = original
