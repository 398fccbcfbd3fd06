"""Transformer blocks of a state dict: which parameter belongs to which block, in depth order.

LARV (Wang et al., arXiv 2602.09413) gives every repeated transformer block ``l = 0..L-1`` its own
scale. This module finds the blocks from the parameter names alone, with anchored regexes in the
style of timm's ``group_matcher``:

* a *pattern* is an ordered tuple of regexes, each with exactly one capture group holding the
  block number (``\\d+``); they are matched with ``re.match`` (anchored at the start of the name);
* the blocks of the first regex come first, then those of the second, and so on; within one regex
  blocks are ordered by the captured number read as an integer (``layers.10`` after ``layers.9``);
* the block count ``L`` comes from the matches, never from a constant. Gaps in the captured
  numbers are allowed (a pruned model, or a user regex that selects a subset): ``Block.index`` is
  the dense depth position ``0..L-1`` and ``Block.prefix`` keeps the original number;
* a block's prefix is the name up to the end of the capture group plus the ``.`` that follows it
  (``vision_model.encoder.layers.3.``). One (regex, number) pair with two different prefixes (for
  example both ``model.visual...`` and ``visual...`` in one state dict) is ambiguous and raises;
* every other key is a *non-block* key (embeddings, pre/post LayerNorm, projection heads). Which
  scale those get is the caller's choice (``non_block_scale``, default 1.0 in LARV: ours, not the
  paper's);
* if nothing matches, ``find_blocks`` raises ``ValueError`` naming the pattern(s) and sample keys,
  so a change of key format can never turn the veneer into a silent no-op.

Presets (``BLOCK_PATTERNS``), tried in this order when no pattern is given:

* ``hf_clip``: Hugging Face CLIP vision tower, transformers 4 ``vision_model.encoder.layers.<i>.``
  and transformers 5 ``encoder.layers.<i>.`` (no leading ``model.``: with it, encoder-decoder
  models such as BART would match their encoder only and silently leave the decoder unscaled);
* ``open_clip``: ``visual.transformer.resblocks.<i>.`` with or without a leading ``model.``
  (FusionBench's open_clip wrappers keep the network under ``model``);
* ``t5``: ``encoder.block.<i>.`` then ``decoder.block.<i>.``: encoder blocks first, then decoder
  blocks, one depth order of ``2N`` blocks. An optional ``model.`` or ``base_model.model.`` (PEFT)
  prefix is accepted (one state dict must not mix prefixed and unprefixed names of a block).
"""

import logging
import math
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "BLOCK_PATTERNS",
    "Block",
    "BlockLayout",
    "find_blocks",
    "diagnostic_keys",
    "scale_map",
]

BLOCK_PATTERNS: Dict[str, Tuple[str, ...]] = {
    "hf_clip": (r"(?:vision_model\.)?encoder\.layers\.(\d+)\.",),
    "open_clip": (r"(?:model\.)?visual\.transformer\.resblocks\.(\d+)\.",),
    "t5": (
        r"(?:base_model\.model\.|model\.)?encoder\.block\.(\d+)\.",
        r"(?:base_model\.model\.|model\.)?decoder\.block\.(\d+)\.",
    ),
}

_NUM_SAMPLE_KEYS = 5


@dataclass(frozen=True)
class Block:
    """One transformer block.

    Attributes:
        index: depth position ``0..L-1``.
        prefix: the matched name prefix, e.g. ``"vision_model.encoder.layers.3."``.
        keys: the parameter names of this block, in state-dict order.
    """

    index: int
    prefix: str
    keys: Tuple[str, ...]


@dataclass(frozen=True)
class BlockLayout:
    """The blocks of a state dict in depth order, and the keys outside every block.

    Attributes:
        blocks: the blocks, ``blocks[l].index == l``.
        non_block_keys: names outside every block, in state-dict order.
        pattern: the regexes that produced ``blocks``.
        keys: every name given to ``find_blocks``, in its order (so that mappings built from the
            layout, such as ``scale_map``, keep state-dict order).
    """

    blocks: Tuple[Block, ...]
    non_block_keys: Tuple[str, ...]
    pattern: Tuple[str, ...]
    keys: Tuple[str, ...] = ()

    @property
    def num_blocks(self) -> int:
        """The block count ``L``."""
        return len(self.blocks)


def _compile_pattern(pattern: Sequence[str], name: str) -> List["re.Pattern[str]"]:
    """Compile one pattern (a tuple of regexes), checking each has exactly one capture group."""
    if len(pattern) == 0:
        raise ValueError(f"{name} must hold at least one regex, got {pattern!r}")
    compiled = []
    for regex in pattern:
        if not isinstance(regex, str):
            raise TypeError(f"{name} must be a regex string or a sequence of them, got {regex!r}")
        try:
            rx = re.compile(regex)
        except re.error as exc:
            raise ValueError(f"{name}: invalid regex {regex!r}: {exc}") from exc
        if rx.groups != 1:
            raise ValueError(
                f"{name}: regex {regex!r} must have exactly one capture group (the block number), "
                f"it has {rx.groups}"
            )
        compiled.append(rx)
    return compiled


def _match_layout(
    keys: Sequence[str], pattern: Tuple[str, ...], name: str
) -> Optional[BlockLayout]:
    """Split ``keys`` into blocks with ``pattern``; ``None`` when no key matches."""
    compiled = _compile_pattern(pattern, name)
    # 1. Assign every key to (regex position, block number) or to the non-block keys.
    members: Dict[Tuple[int, int], List[str]] = {}
    prefixes: Dict[Tuple[int, int], str] = {}
    non_block: List[str] = []
    for key in keys:
        for position, rx in enumerate(compiled):
            m = rx.match(key)
            if m is None:
                continue
            try:
                number = int(m.group(1))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name}: regex {rx.pattern!r} captured {m.group(1)!r} from key {key!r}; "
                    "the capture group must hold the block number (an integer)"
                ) from None
            end = m.end(1)
            prefix = key[: end + 1] if key[end : end + 1] == "." else key[:end]
            slot = (position, number)
            if prefixes.setdefault(slot, prefix) != prefix:
                raise ValueError(
                    f"{name}: block {number} of regex {rx.pattern!r} has two prefixes, "
                    f"{prefixes[slot]!r} and {prefix!r}; use an explicit block_pattern"
                )
            members.setdefault(slot, []).append(key)
            break
        else:
            non_block.append(key)
    if not members:
        return None
    # 2. Depth order: regex position first, then the block number as an integer.
    blocks = []
    for index, slot in enumerate(sorted(members)):
        blocks.append(Block(index=index, prefix=prefixes[slot], keys=tuple(members[slot])))
    for position, rx in enumerate(compiled):
        numbers = sorted(number for pos, number in members if pos == position)
        if numbers and numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            log.warning("Block numbers of %r have gaps: %s", rx.pattern, numbers)
    return BlockLayout(
        blocks=tuple(blocks),
        non_block_keys=tuple(non_block),
        pattern=tuple(pattern),
        keys=tuple(keys),
    )


def _candidates(block_pattern: Union[str, Sequence[str], None]) -> List[Tuple[str, Tuple[str, ...]]]:
    """``[(name for messages, tuple of regexes), ...]`` to try, in order."""
    if block_pattern is None:
        return [(f"block_pattern preset {name!r}", p) for name, p in BLOCK_PATTERNS.items()]
    if isinstance(block_pattern, str):
        if block_pattern in BLOCK_PATTERNS:
            return [(f"block_pattern preset {block_pattern!r}", BLOCK_PATTERNS[block_pattern])]
        return [("block_pattern", (block_pattern,))]
    if isinstance(block_pattern, Sequence):
        return [("block_pattern", tuple(block_pattern))]
    raise TypeError(
        "block_pattern must be None, a preset name, a regex or a sequence of regexes, "
        f"got {block_pattern!r}"
    )


def validate_block_pattern(block_pattern: Union[str, Sequence[str], None]) -> None:
    """Raise what :func:`find_blocks` would raise for a malformed ``block_pattern``, without keys."""
    for name, pattern in _candidates(block_pattern):
        _compile_pattern(pattern, name)


def find_blocks(
    keys: Iterable[str],
    block_pattern: Union[str, Sequence[str], None] = None,
) -> BlockLayout:
    """Find the transformer blocks among parameter names.

    Args:
        keys: parameter names, in state-dict order.
        block_pattern: ``None`` tries the presets of ``BLOCK_PATTERNS`` in order and the first
            one that matches any key wins; a preset name (``"hf_clip"``, ``"open_clip"``,
            ``"t5"``); or a user regex, or a sequence of regexes (their blocks concatenated in
            that order), each with exactly one capture group for the block number, matched with
            ``re.match``.

    Returns:
        The ``BlockLayout``.

    Raises:
        ValueError: a regex does not compile or has not exactly one capture group; the capture
            group caught something that is not an integer; a block has two prefixes; or no key
            matches (the message names the pattern(s) and a few sample keys).
        TypeError: ``block_pattern`` is neither ``None``, a string nor a sequence of strings.
    """
    keys = list(keys)
    candidates = _candidates(block_pattern)
    # 2. The first candidate that matches wins.
    for name, pattern in candidates:
        layout = _match_layout(keys, pattern, name)
        if layout is not None:
            log.debug("%s matched %d blocks", name, layout.num_blocks)
            return layout
    tried = "; ".join(f"{name} = {' , '.join(pattern)}" for name, pattern in candidates)
    raise ValueError(
        f"No parameter name matches the block pattern(s) ({tried}). "
        f"{len(keys)} keys, e.g. {keys[:_NUM_SAMPLE_KEYS]!r}. Set block_pattern to an anchored "
        "regex with one capture group for the block number."
    )


def diagnostic_keys(block: Block, state_dict: Mapping[str, Tensor]) -> List[str]:
    """The block's diagnostic matrices: 2-D floating-point weights with both sides > 1.

    These are the attention q/k/v/out (or fused in-projection) and MLP fc1/fc2 weights; biases,
    norms and other 1-D or degenerate tensors are scaled with their block but take no part in
    the diagnostics. Keys of the block that ``state_dict`` lacks are skipped.

    Args:
        block: the block.
        state_dict: tensors by name (typically the pretrained model's).

    Returns:
        The names, in the block's order.
    """
    selected = []
    for key in block.keys:
        tensor = state_dict.get(key)
        if (
            tensor is not None
            and tensor.ndim == 2
            and tensor.is_floating_point()
            and min(tensor.shape) > 1
        ):
            selected.append(key)
    return selected


def scale_map(
    layout: BlockLayout,
    block_scales: Union[Sequence[float], Tensor],
    non_block_scale: float = 1.0,
) -> Dict[str, float]:
    """Resolve ``{parameter name: scale}`` for every key of the layout.

    Args:
        layout: the blocks.
        block_scales: one scale per block, ``len == layout.num_blocks``.
        non_block_scale: the scale of every key outside the blocks (LARV default 1.0: ours).

    Returns:
        A dict covering every key of the layout, in state-dict order when the layout has it
        (``BlockLayout.keys``), otherwise blocks in depth order then non-block keys.

    Raises:
        ValueError: wrong number of block scales, or a non-finite scale.
    """
    if isinstance(block_scales, Tensor):
        block_scales = block_scales.detach().cpu().tolist()
    scales = [float(s) for s in block_scales]
    if len(scales) != layout.num_blocks:
        raise ValueError(
            f"block_scales must hold one scale per block ({layout.num_blocks}), got {len(scales)}"
        )
    if not all(math.isfinite(s) for s in scales):
        raise ValueError(f"block_scales must be finite, got {scales!r}")
    non_block_scale = float(non_block_scale)
    if not math.isfinite(non_block_scale):
        raise ValueError(f"non_block_scale must be finite, got {non_block_scale!r}")
    by_key = {}
    for block, scale in zip(layout.blocks, scales):
        for key in block.keys:
            by_key[key] = scale
    for key in layout.non_block_keys:
        by_key[key] = non_block_scale
    if layout.keys:
        return {key: by_key[key] for key in layout.keys}
    return by_key
