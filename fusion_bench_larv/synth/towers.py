"""Fine-tune a build's towers, one after another or in worker processes (``build(jobs=N)``).

Each tower depends only on the pretrained model, its task's training split and its own seed, so
the order and the process that trains it do not change its weights: ``jobs=2`` writes the same
files as ``jobs=1`` (with the default one thread). The workers share the build's ``threads``,
at least one each, so ``--threads 2 --jobs 2`` runs two single-thread towers at a time; each
writes its tower atomically; the calling process, which holds the cache's lock, records each
tower in the manifest as it arrives. A failed tower stops the others that have not started; the
finished ones stay, so the next build resumes.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

#: in a worker process only: the pretrained model and processor, loaded by its first tower (a
#: worker lives for one ``finetune_towers`` call, so a rebuilt model is never served from memory)
_IN_WORKER: Dict[str, Tuple[object, object]] = {}


def check_jobs(jobs) -> int:
    """``jobs`` as a positive int, or ``ValueError`` naming it."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"`jobs` must be a whole number >= 1 (worker processes fine-tuning towers), got {jobs!r}")
    return jobs


def _load_pretrained(path: Path) -> Tuple[object, object]:
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(str(path)).eval(), CLIPProcessor.from_pretrained(str(path), use_fast=False)


def finetune_tower(assets, recipe, task: str, seed: int, pretrained, quiet: bool = False) -> float:
    """Fine-tune ``task``'s tower of ``assets`` from ``pretrained`` (model, processor) with
    ``recipe`` and write it; return the seconds."""
    from . import model as M
    from .datasets import load_split
    from ..atomic import atomic_dir
    from .tasks import prompts

    start = time.perf_counter()
    clip, processor = pretrained
    images, labels = load_split(assets, task, "train")
    head = M.zeroshot_head(clip, processor, *prompts(task))
    tower = M.finetune(
        clip,
        head,
        images,
        labels,
        steps=recipe.finetune_steps,
        batch_size=recipe.finetune_batch,
        lr=recipe.finetune_lr,
        weight_decay=recipe.weight_decay,
        seed=seed,
        logit_scale=recipe.finetune_logit_scale,
        desc=f"fine-tune {task}",
        quiet=quiet,
    )
    with atomic_dir(assets.finetuned(task)) as tmp:
        tower.save_pretrained(tmp)
    return time.perf_counter() - start


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _work(cache_dir: str, cache_seed: int, recipe_dict: dict, task: str, seed: int) -> float:
    from .build import Recipe
    from .cache import Assets

    assets = Assets(cache_dir, cache_seed)
    if not _IN_WORKER:
        _IN_WORKER["pretrained"] = _load_pretrained(assets.pretrained)
    return finetune_tower(assets, Recipe(**recipe_dict), task, seed, _IN_WORKER["pretrained"], quiet=True)


def finetune_towers(
    assets,
    recipe,
    tasks: Sequence[str],
    seed_of: Callable[[str], int],
    record: Callable[[str, float], None],
    jobs: int = 1,
    threads: Optional[int] = 1,
) -> None:
    """Fine-tune ``tasks``' towers, calling ``record(task, seconds)`` as each one is written.

    ``jobs`` > 1 trains up to that many towers at once in spawned processes that share
    ``threads`` torch threads (``None``: this process's count), at least one each; 1 trains
    them here, one by one.
    """
    from tqdm.auto import tqdm

    jobs = min(check_jobs(jobs), len(tasks))
    if jobs <= 1:
        pretrained = _load_pretrained(assets.pretrained)  # the one on disk now, once for all towers
        for task in tqdm(tasks, desc="fine-tune towers"):
            record(task, finetune_tower(assets, recipe, task, seed_of(task), pretrained))
        return
    per_worker = max(1, (torch.get_num_threads() if threads is None else threads) // jobs)
    bar = tqdm(total=len(tasks), desc=f"fine-tune towers ({jobs} processes)")
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads and a lock
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=(per_worker,)) as pool:
        running = {
            pool.submit(_work, str(assets.cache_dir), assets.seed, recipe.to_dict(), task, seed_of(task)): task
            for task in tasks
        }
        failed = []
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task = running.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        failed.append((task, future.exception()))
                        for other in running:  # the towers not started yet; the running ones finish
                            other.cancel()
                        continue
                    record(task, future.result())
                    bar.update()
        finally:
            for future in running:
                future.cancel()
            bar.close()
    if failed:
        task, error = failed[0]
        raise RuntimeError(f"fine-tuning the tower of task {task!r} failed in a worker process: {error!r} "
                           f"({bar.n} tower(s) finished and recorded; the next build resumes)") from error
