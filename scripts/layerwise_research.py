"""Research builds of docs/benchmark.md, "Tried (research, ...)" (2026-12-05 and 2026-12-06), and one probe.

They change the generator or the pretraining loss in ways that are not `Recipe` fields, so they
are not `python -m fusion_bench_larv.synth build` options. Each variant patches one function of
the package in this process and then runs `build` with the given flags; the assets go where
`--cache-dir` says and record the recipe of the flags only (not the patch), so keep each
variant in a cache folder of its own. Measure a build with
`python -m fusion_bench_larv.synth layerwise --tasks 8 --cache-dir DIR --out OUT`.

    python scripts/layerwise_research.py grain 25 10 -- --tasks 8 --from-scratch --cache-dir DIR ...
        every image gets a random low-frequency colour field (std 25 per 8-px cell, smoothed) and
        pixel grain (std 10), in pretraining and in the task datasets alike
    python scripts/layerwise_research.py domain 25 [0.25] -- --tasks 8 --from-scratch --cache-dir DIR ...
        each task gets a fixed low-level domain of its own (a colour mixing I + N(0, 0.25) and a
        faint grating of amplitude 25, both drawn from the task's name); the optional second
        number is the colour mixing's spread (0: gratings alone, the same ones); these are
        now the recipe's fields (`build --task-grating 25 --task-colour-mix
        0.25`, the same images), so the folders record them, where older ones did not; shift=PX
        among the numbers also moves each pretraining image by a random whole-pixel offset of at
        most PX in x and y (edge pixels repeated), drawn per image and step; ftshift=PX does the
        same to the fine-tuning images; broad=1 adds six pretraining-only tasks (relations of
        two objects, tilt, kinds of glyph and object: attributes no suite task labels)
    python scripts/layerwise_research.py holdout -- --tasks 8 --from-scratch --cache-dir DIR ...
        the supervised term of pretraining skips the images of the 8-task suite (they stay in
        the contrastive term); it is trained on the other 12 tasks' labels only
    python scripts/layerwise_research.py ft-only SRC DST key=value ...
        fine-tune the 8 towers again from SRC's pretrained model (SRC's prompts and datasets are
        copied to DST), with the recipe's fine-tuning fields overridden, e.g. finetune_lr=6e-5;
        ft_weight_decay=X sets the fine-tuning weight decay alone (the recipe has one for both);
        ftshift=PX moves the fine-tuning images as in `domain`;
        SRC holds one build (any seed: DST gets the same seed)
    python scripts/layerwise_research.py lines-curves DIR [SEED]
        no build: fact 3's task-arithmetic and LiNeS grids on the validation and the test splits
        of the 8-task build in DIR, and the margin at the values chosen on validation against the
        margin at the values best on test
    python scripts/layerwise_research.py patch-rows DIR [SEED]
        no build: for the 8-task build in DIR, the share of the test images' centred patch
        variance that lies in the row space of the pretrained and of each fine-tuned patch
        embedding (and in the best row space of that size, the principal one), and how far
        fine-tuning turns that row space (mean squared cosine of the principal angles; 1 = not
        at all)
"""

from __future__ import annotations

import ast
import inspect
import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np


def _build(args):
    from fusion_bench_larv.synth.__main__ import main

    return main(["build", *args])


def grain(field_std: float, grain_std: float, args) -> int:
    from fusion_bench_larv.synth import tasks as T

    render = T.render

    def grained(scene, rng):
        arr = render(scene, rng).astype(np.float64)
        field = np.kron(rng.normal(0, field_std, (4, 4, 3)), np.ones((8, 8, 1)))
        field = (field + np.roll(field, 4, 0) + np.roll(field, 4, 1) + np.roll(field, (4, 4), (0, 1))) / 4
        arr = arr + field + rng.normal(0, grain_std, arr.shape)
        return np.clip(arr, 0, 255).round().astype(np.uint8)

    T.render = grained  # tasks.generate looks `render` up in its module
    return _build(args)


def domain(amplitude: float, mix_std: float, args) -> int:
    """The per-task domains are the recipe's now (``Recipe.task_grating``, ``task_colour_mix``,
    synth/domains.py, the same images); this adds their flags to the build's."""
    return _build([*args, "--task-grating", str(amplitude), "--task-colour-mix", str(mix_std)])


#: the fine-tuning loop's forward call, where ``ftshift`` moves the images
FINETUNE_CALL = "head, pixels[idx], logit_scale"


def _patch(function: str, old: str, new: str, what: str, **names) -> None:
    """Replace the one line ``old`` of model.<function> by ``new`` (``names`` join its globals)."""
    from fusion_bench_larv.synth import model as M

    source = textwrap.dedent(inspect.getsource(getattr(M, function)))
    if source.count(old) != 1:
        raise SystemExit(f"{what}: model.{function}'s line {old!r} changed; update this script")
    namespace = {**vars(M), **names}
    exec(compile(source.replace(old, new), f"{function}_{what}", "exec"), namespace)
    setattr(M, function, namespace[function])


def _shift(px: int, function: str, call: str) -> None:
    """Patch model.<function> so the images of ``call`` move by up to ``px`` pixels (a random crop)."""
    import torch
    import torch.nn.functional as F

    def shifted(x, gen):
        n, _, h, w = x.shape
        padded = F.pad(x, (px, px, px, px), mode="replicate")
        dy, dx = (torch.randint(2 * px + 1, (2, n), generator=gen)).tolist()
        return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])

    _patch(function, call, call.replace("pixels[idx]", "SHIFTED(pixels[idx], gen)"), "shift", SHIFTED=shifted)


def _extra_tasks():
    """Pretraining-only tasks: attributes and scene types that no suite task labels."""
    from fusion_bench_larv.synth import tasks as T

    colours = list(T.FG_COLOURS)

    def pair(rng, left, right):
        cy = 32 + rng.uniform(-4, 4)
        objs = [T.Obj("shape", name, colour, size, cx + rng.uniform(-2, 2), cy, angle=float(rng.uniform(-8, 8)))
                for (name, colour, size), cx in ((left, 17), (right, 47))]
        return T.Scene(objects=objs, **T._nuisance(rng))

    def left_colour(y, rng):
        other = rng.choice([c for c in colours if c != colours[y]])
        return pair(rng, (rng.choice(T.SHAPES), colours[y], "small"), (rng.choice(T.SHAPES), other, "small"))

    def larger_side(y, rng):
        sizes = ("medium", "tiny") if y == 0 else ("tiny", "medium")
        colour = rng.choice(colours)
        return pair(rng, (rng.choice(T.SHAPES), colour, sizes[0]), (rng.choice(T.SHAPES), colour, sizes[1]))

    def same_shape(y, rng):
        a = rng.choice(T.SHAPES)
        b = a if y == 0 else rng.choice([s for s in T.SHAPES if s != a])
        return pair(rng, (a, rng.choice(colours), "small"), (b, rng.choice(colours), "small"))

    def tilt(y, rng):
        angle = (-35.0, 0.0, 35.0)[y] + rng.uniform(-5, 5)
        return T._single(rng, name=rng.choice([s for s in T.SHAPES if s != "circle"]), angle=float(angle))

    def glyph_kind(y, rng):
        if y == 0:
            d = rng.choice(T.DIGITS)
            return T._glyph(rng, d, d, "digit")
        if y == 1:
            c = rng.choice(T.LETTERS)
            return T._glyph(rng, c, rng.choice([c, c.lower()]), "letter")
        table, kind = (T.SYMBOLS, "symbol") if y == 2 else (T.GREEK, "greek")
        name = rng.choice(list(table))
        return T._glyph(rng, name, table[name], kind, font="sans-serif")

    def object_kind(y, rng):
        if y == 0:
            return T._single(rng)
        if y == 1:
            return T._single(rng, kind="arrow", name=rng.choice(T.ARROWS))
        if y == 2:
            return T._single(rng, kind="bar", name=rng.choice(T.ORIENTATIONS), size="large")
        return glyph_kind(int(rng.integers(4)), rng)

    def spec(name, classnames, templates, sample):
        return T.TaskSpec(name, tuple(classnames), tuple(templates), sample)

    return {t.name: t for t in (
        spec("left_colour", colours, ["a {} object on the left.", "the left one is {}."], left_colour),
        spec("larger_side", ["left", "right"], ["the bigger object is on the {}.", "a larger shape on the {}."], larger_side),
        spec("same_shape", ["same", "different"], ["two {} shapes.", "a pair of {} objects."], same_shape),
        spec("tilt", ["tilted left", "upright", "tilted right"], ["a shape {}.", "an object, {}."], tilt),
        spec("glyph_kind", ["digit", "letter", "symbol", "greek letter"], ["a photo of a {}.", "a {} character."], glyph_kind),
        spec("object_kind", ["shape", "arrow", "bar", "character"], ["a photo of a {}.", "a single {}."], object_kind),
    )}


def _broaden() -> None:
    """Pretraining also sees the extra tasks (contrastive and supervised terms); the suite is unchanged."""
    from fusion_bench_larv.synth import build as B
    from fusion_bench_larv.synth import tasks as T

    extras = _extra_tasks()
    generate, prompts, pretrained, suite_tasks = T.generate, T.prompts, B._pretrained, B.suite_tasks

    def generate_any(task, split, n, seed, with_captions=False):
        if task not in extras:
            return generate(task, split, n, seed, with_captions=with_captions)
        spec, rng = extras[task], np.random.default_rng(T.task_seed(seed, task, split))
        ys = rng.permutation(np.arange(n) % len(spec.classnames))
        scenes = [spec.sample(int(y), rng) for y in ys]
        images = np.stack([T.render(scene, rng) for scene in scenes])
        captions = [T.caption(scene, rng, ("none", False)) for scene in scenes]
        return (images, ys.astype(np.int64), captions) if with_captions else (images, ys.astype(np.int64))

    def pretrained_broad(*a, **kw):
        B.suite_tasks = lambda n: (*suite_tasks(n), *extras)
        try:
            return pretrained(*a, **kw)
        finally:
            B.suite_tasks = suite_tasks

    T.generate = B.generate = generate_any  # the build puts each task's domain on what this returns
    B.prompts = lambda task: (list(extras[task].classnames), list(extras[task].templates)) if task in extras else prompts(task)
    B._pretrained = pretrained_broad
    print("pretraining also on:", ", ".join(extras))


def holdout(args) -> int:
    import torch

    from fusion_bench_larv.synth.tasks import SUITES, suite_tasks

    old = "loss = loss + label_weight * F.cross_entropy(logits.masked_fill(~own, -1e4), target[idx])"
    new = ("ce = F.cross_entropy(logits.masked_fill(~own, -1e4), target[idx], reduction='none'); "
           "kept = SUPERVISED[task_of[idx]]; loss = loss + label_weight * (ce * kept).sum() / kept.sum().clamp(min=1)")
    suite = suite_tasks(20)
    _patch("pretrain", old, new, "holdout", SUPERVISED=torch.tensor([0.0 if t in SUITES[8] else 1.0 for t in suite]))
    print("supervised term on:", ", ".join(t for t in suite if t not in SUITES[8]))
    return _build(args)


def ft_only(src: str, dst: str, overrides) -> int:
    from fusion_bench_larv.synth import build as B
    from fusion_bench_larv.synth import model as M
    from fusion_bench_larv.synth.tasks import SUITES

    over = dict(a.split("=", 1) for a in overrides)
    weight_decay = over.pop("ft_weight_decay", None)
    if "ftshift" in over:
        _shift(int(over.pop("ftshift")), "finetune", FINETUNE_CALL)
    found = sorted(Path(src).glob("tinyclip_synth_seed*"))
    if len(found) != 1:
        raise SystemExit(f"ft-only: {src} must hold one tinyclip_synth_seed<S> folder, found {len(found)}")
    s, d = found[0], Path(dst) / found[0].name
    if d.exists():
        raise SystemExit(f"ft-only: {d} exists; use a new DST")
    d.mkdir(parents=True)
    manifest = json.loads((s / "manifest.json").read_text())
    shutil.copy(s / "prompts.json", d / "prompts.json")
    for name in ("data", "pretrained"):
        shutil.copytree(s / name, d / name)
    for key, value in over.items():
        manifest["recipe"][key] = type(manifest["recipe"][key])(ast.literal_eval(value))
    for key in ("digests", "timings_s"):
        manifest[key] = {a: v for a, v in manifest[key].items() if not a.startswith("finetuned/")}
    manifest["shipped"] = []
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if weight_decay is not None:
        finetune = M.finetune

        def decayed(*a, **kw):
            return finetune(*a, **{**kw, "weight_decay": float(weight_decay)})

        M.finetune = decayed  # build calls M.finetune
    B.build(SUITES[8], cache_dir=dst, recipe=B.Recipe(**manifest["recipe"]), shipped=False)
    return 0


def patch_rows(cache: str, seed: int) -> int:
    from transformers import CLIPVisionModel

    from fusion_bench_larv.synth import model as M
    from fusion_bench_larv.synth.build import ensure
    from fusion_bench_larv.synth.datasets import load_split
    from fusion_bench_larv.synth.tasks import SUITES

    assets = ensure(list(SUITES[8]), cache_dir=cache, seed=seed, build_if_missing=False)

    def rows(path):  # an orthonormal basis of the patch embedding's row space, and the patch size
        w = CLIPVisionModel.from_pretrained(str(path)).vision_model.embeddings.patch_embedding.weight.detach()
        return np.linalg.qr(w.reshape(w.shape[0], -1).double().numpy().T)[0], w.shape[-1]

    q0, p = rows(assets.pretrained)
    shares, overlaps = [], []
    for task in SUITES[8]:
        x = M.to_pixels(load_split(assets, task, "test")[0])
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(-1, q0.shape[0]).double().numpy()
        patches = patches - patches.mean(0)
        qt, _ = rows(assets.finetuned(task))
        share = [float(((patches @ q) ** 2).sum() / (patches ** 2).sum()) for q in (q0, qt)]
        spectrum = np.linalg.svd(patches, compute_uv=False) ** 2
        share.append(float(spectrum[: q0.shape[1]].sum() / spectrum.sum()))  # the best row space of this size
        overlaps.append(float((np.linalg.svd(q0.T @ qt, compute_uv=False) ** 2).mean()))
        shares.append(share)
        print(f"{task:20s} variance in the rows: pretrained {share[0]:.3f}, fine-tuned {share[1]:.3f}, "
              f"principal {share[2]:.3f}; overlap {overlaps[-1]:.4f}")
    mean = np.mean(shares, axis=0)
    print(f"{'mean':20s} variance in the rows: pretrained {mean[0]:.3f}, fine-tuned {mean[1]:.3f}, principal "
          f"{mean[2]:.3f}; overlap {np.mean(overlaps):.4f} (a random row space of this size holds "
          f"{q0.shape[1] / q0.shape[0]:.3f}; principal: the {q0.shape[1]} principal directions)")
    return 0


def lines_curves(cache: str, seed: int) -> int:
    """Fact 3's two grids on the validation and the test splits: how much of a build's margin the
    choice of λ and β on validation costs or adds against the grid values best on test."""
    import torch

    from fusion_bench_larv.synth import layerwise as LW
    from fusion_bench_larv.synth.build import ensure
    from fusion_bench_larv.synth.tasks import SUITES

    torch.set_num_threads(1)
    tasks = list(SUITES[8])
    suite = LW._load(ensure(tasks, cache_dir=cache, seed=seed, build_if_missing=False), tasks)
    task_sum, alpha, arms = LW._fact3_arms(suite)  # the layerwise command's own fact-3 grids
    evaluate = LW._Evaluator(suite, 2 * 2 * len(LW.GRID) * len(tasks), progress=True)
    curves = {name: {v: {split: LW._mean(evaluate(LW._rescaled(suite.theta0, task_sum, scales), tasks, split).values())
                         for split in ("val", "test")} for v, scales in grid.items()} for name, grid in arms.items()}
    evaluate.bar.close()
    print(f"{'grid':>5} | task arithmetic val / test | LiNeS (α {alpha:.3f}) val / test")
    for v in LW.GRID:
        ta, li = curves["task_arithmetic"][v], curves["lines"][v]
        print(f"{v:>5} | {ta['val']:6.2f} / {ta['test']:6.2f}           | {li['val']:6.2f} / {li['test']:6.2f}")
    pick = {name: (LW._pick({v: c["val"] for v, c in curve.items()}), max(curve, key=lambda v: curve[v]["test"]))
            for name, curve in curves.items()}
    test = lambda name, which: curves[name][pick[name][which]]["test"]
    print(f"chosen on val: λ {pick['task_arithmetic'][0]}, β {pick['lines'][0]}: margin "
          f"{test('lines', 0) - test('task_arithmetic', 0):+.2f}")
    print(f"best on test:  λ {pick['task_arithmetic'][1]}, β {pick['lines'][1]}: margin "
          f"{test('lines', 1) - test('task_arithmetic', 1):+.2f} (the choice on val costs task arithmetic "
          f"{test('task_arithmetic', 1) - test('task_arithmetic', 0):.2f} and LiNeS {test('lines', 1) - test('lines', 0):.2f})")
    return 0


def main(argv) -> int:
    if not argv or argv[0] not in ("grain", "domain", "holdout", "ft-only", "patch-rows", "lines-curves"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "ft-only":
        return ft_only(rest[0], rest[1], rest[2:])
    if what == "patch-rows":
        return patch_rows(rest[0], int(rest[1]) if len(rest) > 1 else 0)
    if what == "lines-curves":
        return lines_curves(rest[0], int(rest[1]) if len(rest) > 1 else 0)
    params, args = (rest[:rest.index("--")], rest[rest.index("--") + 1:]) if "--" in rest else ([], rest)
    if what == "grain":
        return grain(float(params[0]), float(params[1]), args)
    if what == "domain":
        keys = dict(p.split("=", 1) for p in params if "=" in p)
        params = [p for p in params if "=" not in p]
        unknown = sorted(set(keys) - {"shift", "ftshift", "broad"})
        if unknown or keys.get("broad", "1") not in ("0", "1"):
            raise SystemExit(f"domain: unknown or bad keys {unknown or keys}; known: shift=PX, ftshift=PX, broad=0|1")
        if "shift" in keys:
            _shift(int(keys["shift"]), "pretrain", "pixel_values=pixels[idx]")
        if "ftshift" in keys:
            _shift(int(keys["ftshift"]), "finetune", FINETUNE_CALL)
        if keys.get("broad") == "1":
            _broaden()
        return domain(float(params[0]), float(params[1]) if len(params) > 1 else 0.25, args)
    return holdout(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
