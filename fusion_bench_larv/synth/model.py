"""The tiny CLIP of ``tinyclip_synth*``: tokenizer, architecture, pretraining and fine-tuning.

- Tokenizer: a hand-made CLIP BPE (every byte symbol, alone and as a word end ``</w>``, plus
  merges that spell out each word of the generated captions and prompts), so no download is
  ever needed and a caption is about one token per word.
- Pretraining: the symmetric contrastive (InfoNCE) loss of CLIP (Radford et al., 2021) on
  generated images and captions covering the attributes of every task of the suite, plus (with
  ``label_weight`` > 0) a supervised multi-task term on the vision tower: a stand-in for the
  breadth of a real pretraining corpus, so that the towers start from features that separate
  each task's classes while the captions (which name a task's labels only sometimes) keep
  zero-shot accuracy well below what fine-tuning reaches.
- Fine-tuning: the task-vector papers' recipe (Ilharco et al., 2023, "Editing models with task
  arithmetic"): the whole vision tower is trained with cross-entropy against a *frozen*
  zero-shot head (the text tower's class embeddings averaged over the prompt templates, as
  FusionBench's ``HFCLIPClassifier`` computes them); the visual projection stays frozen too.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    CLIPVisionModel,
)
from transformers.models.clip.tokenization_clip import bytes_to_unicode

log = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# OpenAI CLIP's pixel statistics, so the processor looks like the real one.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass
class ModelSize:
    """Architecture of the tiny CLIP (vision tower shaped like a ViT-B: 12 blocks)."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 96
    vision_layers: int = 12
    vision_heads: int = 12
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    projection_dim: int = 64
    max_text_len: int = 64


def _train_merges(word_counts: Dict[str, int]) -> List[Tuple[str, str]]:
    """BPE merges, most frequent pair first, until every word is one symbol.

    A word is a string of byte symbols; its last symbol carries the ``</w>`` suffix. A pair's
    count is the sum over the words it occurs in of the word's count, capped at 1000. Ties go to
    the lexicographically smallest pair, so the merges depend on nothing but ``word_counts``
    (``tokenizers``' trainer breaks ties in a per-process random order, which made two builds of
    the same seed differ).
    """
    words = [(list(w[:-1]) + [w[-1] + "</w>"], min(c, 1000)) for w, c in sorted(word_counts.items()) if w]
    merges: List[Tuple[str, str]] = []
    while True:
        counts: Dict[Tuple[str, str], int] = {}
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + count
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if (symbols[i], symbols[i + 1]) == best:
                    symbols[i : i + 2] = [best[0] + best[1]]
                i += 1


def _bpe_vocab(word_counts: Dict[str, int]):
    """CLIP-format vocabulary and merges: every byte symbol (alone and word-final) plus the BPE
    merges of :func:`_train_merges` on the given pre-tokenized words. An empty ``word_counts``
    gives a purely character-level tokenizer.
    """
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges = _train_merges(word_counts)
    known = set(tokens)
    for a, b in merges:
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)
    vocab = {t: i for i, t in enumerate(tokens + [BOS, EOS])}
    return vocab, ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]


def build_processor(path: Path, size: ModelSize, corpus: Sequence[str] = ()) -> CLIPProcessor:
    """Write a CLIP tokenizer + image processor to ``path`` and return it.

    The tokenizer is hand-made (no download): a byte-level CLIP BPE whose merges spell out the
    words of ``corpus`` (captions, class names, templates); with an empty corpus it is purely
    character-level (an empty merges file).
    """
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = _bpe_vocab({})
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("\n".join(merges) + "\n")
    if corpus:
        chars = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"))
        words: Dict[str, int] = {}
        for text in corpus:  # CLIP's own pre-tokenization (lowercase, regex split, byte symbols)
            word = ""
            for token in chars.tokenize(text):
                word += token
                if word.endswith("</w>"):
                    words[word[: -len("</w>")]] = words.get(word[: -len("</w>")], 0) + 1
                    word = ""
        vocab, merges = _bpe_vocab(words)
        (path / "vocab.json").write_text(json.dumps(vocab))
        (path / "merges.txt").write_text("\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(
        str(path / "vocab.json"),
        str(path / "merges.txt"),
        model_max_length=size.max_text_len,
        pad_token=EOS,
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size.image_size},
        crop_size={"height": size.image_size, "width": size.image_size},
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def build_clip(size: ModelSize, tokenizer: CLIPTokenizer) -> CLIPModel:
    """A randomly initialised ``CLIPModel`` (call ``torch.manual_seed`` first)."""
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=4 * size.text_hidden,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=size.max_text_len,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(EOS),
    )
    vision = dict(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        image_size=size.image_size,
        patch_size=size.patch_size,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=size.projection_dim)
    return CLIPModel(config)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → normalised ``[N, 3, H, W]`` float (what the processor outputs)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _cosine_lr(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _optimizer(params, lr: float, weight_decay: float, steps: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps, warmup))
    return opt, sched


def pretrain(
    model: CLIPModel,
    processor: CLIPProcessor,
    images: np.ndarray,
    captions: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    groups: Optional[np.ndarray] = None,
    groups_per_batch: int = 2,
    task_ids: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
    num_classes: Optional[Sequence[int]] = None,
    label_weight: float = 0.0,
) -> List[float]:
    """Contrastive image-caption pretraining in place; returns the loss curve.

    With ``groups`` (one task id per image), each batch is drawn from ``groups_per_batch``
    random tasks, so in-batch negatives share the task's nuisance attributes and the
    contrastive loss must use the attribute the task is about (hard negatives).

    With ``label_weight`` > 0 (and ``task_ids``, ``labels``, ``num_classes``: each image's
    task index, its label in that task, and every task's class count), the vision tower also learns a
    supervised multi-task objective: a linear probe per task on the pooled output, trained
    jointly and thrown away afterwards (loss = contrastive + ``label_weight`` × cross-entropy
    of each image's task head). A tiny ViT trained for minutes learns little beyond colour from
    the contrastive loss alone; this stands in for the breadth of a real pretraining corpus,
    so that fine-tuning starts from features that already separate each task's classes.
    """
    gen = torch.Generator().manual_seed(seed)
    head = None
    if label_weight > 0:
        if task_ids is None or labels is None or num_classes is None:
            raise ValueError("label_weight > 0 needs task_ids, labels and num_classes")
        offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(num_classes)[:-1]]), dtype=torch.long)
        counts = torch.as_tensor(list(num_classes), dtype=torch.long)
        task_of = torch.as_tensor(task_ids, dtype=torch.long)
        target = offsets[task_of] + torch.as_tensor(labels, dtype=torch.long)
        head = torch.nn.Linear(model.config.vision_config.hidden_size, int(counts.sum()))
        column = torch.arange(int(counts.sum()))
    members = None
    if groups is not None:
        members = [torch.from_numpy(np.flatnonzero(groups == g)) for g in np.unique(groups)]
    tokens = processor.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
    pixels = to_pixels(images)
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt, sched = _optimizer(params, lr, weight_decay, steps)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="pretrain tiny CLIP", leave=False, dynamic_ncols=True)
    for _ in bar:
        if members is None:
            idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        else:
            picked = torch.randperm(len(members), generator=gen)[:groups_per_batch]
            per = -(-batch_size // len(picked))
            idx = torch.cat([members[g][torch.randint(len(members[g]), (per,), generator=gen)] for g in picked.tolist()])[:batch_size]
        ids, mask = tokens["input_ids"][idx], tokens["attention_mask"][idx]
        keep = int(mask.sum(1).max())  # trim the batch's padding
        out = model(input_ids=ids[:, :keep], attention_mask=mask[:, :keep], pixel_values=pixels[idx], return_loss=True)
        loss = out.loss
        if head is not None:
            logits = head(out.vision_model_output.pooler_output)
            lo = offsets[task_of[idx]]
            own = (column[None] >= lo[:, None]) & (column[None] < (lo + counts[task_of[idx]])[:, None])
            loss = loss + label_weight * F.cross_entropy(logits.masked_fill(~own, -1e4), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def zeroshot_head(model: CLIPModel, processor: CLIPProcessor, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class embeddings ``[C, D]`` exactly as ``fusion_bench.models.hf_clip.HFCLIPClassifier``."""
    model.eval()
    rows = []
    for name in classnames:
        inputs = processor.tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
        emb = model.text_projection(model.text_model(**inputs)[1])
        emb = F.normalize(emb, dim=-1).mean(0)
        rows.append(F.normalize(emb, dim=-1))
    return torch.stack(rows)


def vision_logits(
    model: CLIPModel, vision: torch.nn.Module, head: torch.Tensor, pixels: torch.Tensor, scale: Optional[float] = None
) -> torch.Tensor:
    """Cosine logits against the frozen head, times ``scale`` (default: the model's logit scale)."""
    emb = model.visual_projection(vision(pixel_values=pixels).pooler_output)
    scale = model.logit_scale.exp() if scale is None else scale
    return scale * F.normalize(emb, dim=-1) @ head.t()


def finetune(
    model: CLIPModel,
    head: torch.Tensor,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    logit_scale: Optional[float] = None,
    desc: str = "fine-tune",
    quiet: bool = False,
) -> CLIPVisionModel:
    """Fine-tune a copy of ``model``'s vision tower against the frozen head; returns it.

    ``logit_scale``: the fixed temperature of the training loss (``None``: the model's own).
    Only the loss sees it: predictions (argmax) do not depend on it. ``quiet``: no progress bar
    (a worker process among others).
    """
    tower = CLIPVisionModel(model.config.vision_config)
    tower.vision_model.load_state_dict(model.vision_model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    pixels, targets = to_pixels(images), torch.from_numpy(labels)
    opt, sched = _optimizer(tower.parameters(), lr, weight_decay, steps)
    tower.train()
    bar = tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True, disable=quiet)
    for _ in bar:
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        loss = F.cross_entropy(vision_logits(model, tower, head, pixels[idx], logit_scale), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tower.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tower.eval()
    return tower


@torch.no_grad()
def correct(model: CLIPModel, vision: torch.nn.Module, head: torch.Tensor, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether ``vision`` with the zero-shot ``head`` gets each image right (bool per image)."""
    vision.eval()
    pixels = to_pixels(images)
    preds = torch.cat([vision_logits(model, vision, head, pixels[i : i + 512]).argmax(-1) for i in range(0, len(pixels), 512)])
    return preds.numpy() == labels
