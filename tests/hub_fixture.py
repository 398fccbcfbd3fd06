"""A Hugging Face cache shaped like the hub, with tiny models and data sets under the real ids.

FusionBench's real pool and task-pool configs name hub ids (``openai/clip-vit-base-patch32``,
``tanganke/clip-vit-base-patch32_sun397``, ``tanganke/sun397``, ``google/flan-t5-base``, ...).
:func:`build_hub_cache` lays out ``$HF_HOME`` so that, with ``HF_HUB_OFFLINE=1``, every one of
those configs loads, unchanged, from disk in seconds:

- models: ``$HF_HOME/hub/models--<org>--<name>/{refs/main, snapshots/<40-hex>/...}``, as
  ``huggingface_hub`` stores a download (``from_pretrained`` and ``peft`` read them offline);
- data sets: ``$HF_HOME/datasets/<org>___<snake_name>/<config>/0.0.0/<hash>/`` (arrow files plus
  ``dataset_info.json``). ``datasets`` 4.x offline reads its own cache folder, not hub dataset
  snapshots (``datasets/load.py::CachedDatasetModuleFactory``).

What is in it (every size is tiny, and chosen so that a wrong pairing fails loudly):

- three CLIPs, one per backbone, each with processor and a character-level tokenizer; their
  vision widths differ (16 / 24 / 32) and so do their block counts (2 / 3 / 4), so a vision
  tower evaluated with another backbone's text tower crashes at the visual projection;
- ``tanganke/clip-vit-<backbone>_<task>``: the pretrained vision tower plus a task-specific
  update, for every task of TALL20 (a superset of every CLIP pool's tasks);
- ``google/flan-t5-base``: a T5 with 2 encoder and 2 decoder blocks and a fast tokenizer;
  ``tanganke/flan-t5-base_glue-<task>_lora-16``: one ``peft`` LoRA adapter per GLUE task;
- the test split of each TALL20 data set and the corrupted splits of the robustness data sets
  (8 random images each), and its train split (20 images: FusionBench's validation sets,
  ``dataset/image_classification/val/<task>.yaml``, are 10 % of it, so 2 images). Half of each split is labelled with the pretrained ViT-B/32's own
  zero-shot prediction (FusionBench's heads: class names and templates of the task), the other
  half with another class, so accuracies differ from job to job instead of all being 0;
- GLUE's train and evaluation splits (4 rows each).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

#: backbone → (vision width, vision blocks)
CLIP_BACKBONES: Dict[str, Tuple[int, int]] = {
    "clip-vit-base-patch32": (16, 2),
    "clip-vit-base-patch16": (24, 3),
    "clip-vit-large-patch14": (32, 4),
}
#: FusionBench task name → (data set id, config, evaluated split), as in FusionBench 0.2.33's
#: ``dataset/image_classification/test/*.yaml`` (fer2013 through ``fusion_bench.dataset.fer2013``)
IMAGE_DATASETS: Dict[str, Tuple[str, Optional[str], str]] = {
    "sun397": ("tanganke/sun397", None, "test"),
    "stanford-cars": ("tanganke/stanford_cars", None, "test"),
    "resisc45": ("tanganke/resisc45", None, "test"),
    "eurosat": ("tanganke/eurosat", None, "test"),
    "svhn": ("svhn", "cropped_digits", "test"),
    "gtsrb": ("tanganke/gtsrb", None, "test"),
    "mnist": ("mnist", None, "test"),
    "dtd": ("tanganke/dtd", None, "test"),
    "oxford_flowers102": ("dpdl-benchmark/oxford_flowers102", None, "test"),
    "pcam": ("1aurent/PatchCamelyon", None, "test"),
    "fer2013": ("clip-benchmark/wds_fer2013", None, "test"),
    "oxford-iiit-pet": ("timm/oxford-iiit-pet", None, "test"),
    "stl10": ("tanganke/stl10", None, "test"),
    "cifar100": ("tanganke/cifar100", None, "test"),
    "cifar10": ("tanganke/cifar10", None, "test"),
    "food101": ("ethz/food101", None, "validation"),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", None, "test"),
    "emnist_letters": ("tanganke/emnist_letters", None, "test"),
    "kmnist": ("tanganke/kmnist", None, "test"),
    "rendered-sst2": ("nateraw/rendered-sst2", None, "test"),
}
TALL20 = tuple(IMAGE_DATASETS)
#: FusionBench's corrupted splits (``clip-vit-base-patch32_robustness_corrupted``)
CORRUPTIONS = ("motion_blur", "impulse_noise", "gaussian_noise", "pixelate", "spatter", "contrast", "jpeg_compression")
ROBUSTNESS_TASKS = ("stanford-cars", "eurosat", "resisc45", "gtsrb")
#: GLUE task → (text columns, evaluated split, regression?)
GLUE_TASKS: Dict[str, Tuple[Tuple[str, ...], str, bool]] = {
    "cola": (("sentence",), "validation", False),
    "mnli": (("premise", "hypothesis"), "validation_matched", False),
    "mrpc": (("sentence1", "sentence2"), "validation", False),
    "qnli": (("question", "sentence"), "validation", False),
    "qqp": (("question1", "question2"), "validation", False),
    "rte": (("sentence1", "sentence2"), "validation", False),
    "sst2": (("sentence",), "validation", False),
    "stsb": (("sentence1", "sentence2"), "validation", True),
}
T5_ENCODER_BLOCKS = T5_DECODER_BLOCKS = 2  # equal, as in flan-t5 (generation sizes its cache by the encoder count)
IMAGES_PER_SPLIT = 8
TRAIN_IMAGES = 20  # the validation task pools take 10 % of the train split: 2 images
#: the backbone whose zero-shot predictions label half of every image split
LABEL_BACKBONE = "clip-vit-base-patch32"
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class HubCache:
    """A laid-out cache: ``env`` points a process (and its subprocesses) at it, offline."""

    hf_home: Path
    fusion_bench_cache: Path

    @property
    def env(self) -> Dict[str, str]:
        """``HF_HOME``, FusionBench's cache (``path.cache_dir``), the offline flags, and the user
        caches (matplotlib's font cache, ``XDG_CACHE_HOME``) next to them, so nothing lands in ``~``."""
        return {
            "HF_HOME": str(self.hf_home),
            "FUSION_BENCH_CACHE_DIR": str(self.fusion_bench_cache),
            "MPLCONFIGDIR": str(self.hf_home.parent / "mplconfig"),
            "XDG_CACHE_HOME": str(self.hf_home.parent / "xdg_cache"),
            **{k: "1" for k in OFFLINE_VARS},
        }

    def clip_blocks(self, backbone: str) -> int:
        return CLIP_BACKBONES[backbone][1]


# ---------------------------------------------------------------------------------------------
# Hub layout
# ---------------------------------------------------------------------------------------------


def snapshot_dir(hf_home: Path, repo_id: str, kind: str = "models") -> Path:
    """Create ``hub/<kind>--<org>--<name>/refs/main`` and return its (empty) snapshot folder."""
    repo = hf_home / "hub" / f"{kind}--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_dataset(hf_home: Path, repo_id: str, config: Optional[str], splits: Dict[str, dict]) -> Path:
    """Write ``splits`` (``{split: {column: values}}``) where offline ``load_dataset`` finds them."""
    import datasets
    import pyarrow as pa
    from datasets.naming import camelcase_to_snakecase

    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    config_name = config or "default"
    path = hf_home / "datasets" / "___".join(parts) / config_name / "0.0.0" / hashlib.sha1(repo_id.encode()).hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    split_dict = datasets.SplitDict(dataset_name=parts[-1])
    features = None
    for split, columns in splits.items():
        table = datasets.Dataset.from_dict(columns).data.table
        features = datasets.Features.from_arrow_schema(table.schema)
        with pa.OSFile(str(path / f"{parts[-1]}-{split}.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
        split_dict.add(datasets.SplitInfo(name=split, num_examples=table.num_rows, dataset_name=parts[-1]))
    datasets.DatasetInfo(features=features, config_name=config_name, dataset_name=parts[-1],
                         splits=split_dict).write_to_directory(str(path))
    return path


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------


def _max_prompt_chars(tasks: Iterable[str]) -> int:
    """Longest zero-shot prompt FusionBench builds for ``tasks`` (one token per character)."""
    from fusion_bench.tasks.clip_classification import get_classnames_and_templates

    longest = 0
    for task in tasks:
        classnames, templates = get_classnames_and_templates(task)
        longest = max(longest, max(len(t(c)) for c in classnames for t in templates))
    return longest


def _task_update(model, task: str, scale: float = 0.02) -> None:
    """Add a task-specific perturbation (seeded by the task name) to every parameter, in place."""
    import torch

    g = torch.Generator().manual_seed(int(hashlib.sha1(task.encode()).hexdigest()[:8], 16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def write_clips(hf_home: Path, tasks: Iterable[str] = TALL20) -> Dict[str, tuple]:
    """Write the CLIPs and fine-tuned towers; return ``{backbone: (CLIPModel, CLIPProcessor)}``."""
    import torch
    from transformers import CLIPVisionModel

    from fusion_bench_larv.synth.model import ModelSize, build_clip, build_processor

    tasks = list(tasks)
    clips = {}
    text_len = _max_prompt_chars(tasks) + 2  # + start and end tokens
    for i, (backbone, (width, blocks)) in enumerate(CLIP_BACKBONES.items()):
        size = ModelSize(image_size=32, patch_size=16, vision_hidden=width, vision_layers=blocks, vision_heads=2,
                         text_hidden=16, text_layers=1, text_heads=2, projection_dim=16, max_text_len=text_len)
        path = snapshot_dir(hf_home, f"openai/{backbone}")
        processor = build_processor(path, size)
        torch.manual_seed(i)
        clip = build_clip(size, processor.tokenizer)
        clip.save_pretrained(path)
        processor.save_pretrained(path)
        clips[backbone] = (clip.eval(), processor)
        for task in tasks:
            tower = CLIPVisionModel(clip.config.vision_config)
            tower.vision_model.load_state_dict(clip.vision_model.state_dict())
            _task_update(tower, f"{backbone}/{task}")
            tower.save_pretrained(snapshot_dir(hf_home, f"tanganke/{backbone}_{task}"))
    return clips


def _images(n: int, seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _zero_shot_classifier(clip, processor, task: str):
    from fusion_bench.models.hf_clip import HFCLIPClassifier
    from fusion_bench.tasks.clip_classification import get_classnames_and_templates

    classifier = HFCLIPClassifier(clip, processor)
    classifier.set_classification_task(*get_classnames_and_templates(task))
    return classifier


def _half_right_labels(classifier, processor, images) -> List[int]:
    """The first half: the classifier's predictions; the rest: the next class."""
    import torch

    with torch.no_grad():
        predicted = classifier(processor(images=images, return_tensors="pt")["pixel_values"]).argmax(-1).tolist()
    n = len(classifier.classnames)
    half = len(images) // 2
    return predicted[:half] + [(p + 1) % n for p in predicted[half:]]


def write_image_datasets(hf_home: Path, clips: Dict[str, tuple]) -> None:
    for k, (task, (repo_id, config, split)) in enumerate(IMAGE_DATASETS.items()):
        names = [split] + (list(CORRUPTIONS) if task in ROBUSTNESS_TASKS else []) + ["train"]
        clip, processor = clips[LABEL_BACKBONE]
        classifier = _zero_shot_classifier(clip, processor, task)
        splits = {}
        for j, name in enumerate(names):
            images = _images(TRAIN_IMAGES if name == "train" else IMAGES_PER_SPLIT, seed=100 * k + j)
            labels = _half_right_labels(classifier, processor, images)
            if task == "fer2013":  # webdataset columns, renamed by fusion_bench.dataset.fer2013
                keys = [f"{name}_{i}" for i in range(len(images))]
                splits[name] = {"__key__": keys, "__url__": keys, "jpg": images, "cls": labels}
            else:
                splits[name] = {"image": images, "label": labels}
        write_dataset(hf_home, repo_id, config, splits)


# ---------------------------------------------------------------------------------------------
# Flan-T5 + LoRA, GLUE
# ---------------------------------------------------------------------------------------------


def _t5_tokenizer(max_length: int = 64):
    """A character-level fast tokenizer with T5's special tokens (``<pad>``=0, ``</s>``=1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    chars = ["▁"] + [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Split("", "isolated")])
    tok.decoder = decoders.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, model_max_length=max_length,
                           pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def write_flan_t5(hf_home: Path, tasks: Iterable[str] = GLUE_TASKS) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _t5_tokenizer()
    path = snapshot_dir(hf_home, "google/flan-t5-base")
    tokenizer.save_pretrained(path)
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=T5_ENCODER_BLOCKS,
                      num_decoder_layers=T5_DECODER_BLOCKS, num_heads=2, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    base = T5ForConditionalGeneration(config)
    base.save_pretrained(path)
    for task in tasks:
        lora = get_peft_model(
            T5ForConditionalGeneration.from_pretrained(path),
            LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM"),
        )
        _task_update(lora, f"flan-t5/{task}", scale=0.05)  # lora_B starts at 0: make the update nonzero
        out = snapshot_dir(hf_home, f"tanganke/flan-t5-base_glue-{task}_lora-16")
        lora.save_pretrained(out)
        adapter = json.loads((out / "adapter_config.json").read_text())
        adapter["base_model_name_or_path"] = "google/flan-t5-base"
        (out / "adapter_config.json").write_text(json.dumps(adapter, indent=2))


def _sentences(n: int, seed: int) -> List[str]:
    rng = np.random.default_rng(seed)
    words = ["the", "movie", "was", "good", "bad", "a", "cat", "sat", "on", "mat", "it", "is", "not"]
    return [" ".join(rng.choice(words, size=5)) for _ in range(n)]


def write_glue(hf_home: Path) -> None:
    for k, (task, (columns, eval_split, regression)) in enumerate(GLUE_TASKS.items()):
        n = IMAGES_PER_SPLIT
        splits = {}
        for j, split in enumerate(["train", eval_split]):
            data = {c: _sentences(n, 10 * k + j + i) for i, c in enumerate(columns)}
            data["label"] = [float(i) for i in range(n)] if regression else [i % 2 for i in range(n)]
            data["idx"] = list(range(n))
            splits[split] = data
        write_dataset(hf_home, "glue", task, splits)


def build_hub_cache(root: Path) -> HubCache:
    """Lay out the whole cache under ``root`` (about 10 s on 2 cores)."""
    root = Path(root)
    cache = HubCache(hf_home=root / "hf_home", fusion_bench_cache=root / "fusion_bench_cache")
    saved = {k: os.environ.get(k) for k in cache.env}
    os.environ.update(cache.env)  # `datasets` and `peft` read these at call time
    try:
        clips = write_clips(cache.hf_home)
        write_image_datasets(cache.hf_home, clips)
        write_flan_t5(cache.hf_home)
        write_glue(cache.hf_home)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return cache
