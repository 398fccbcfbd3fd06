"""Block detection and the per-key scale map (fusion_bench_larv.blocks)."""

import pytest
import torch

from fusion_bench_larv.blocks import (
    BLOCK_PATTERNS,
    Block,
    BlockLayout,
    diagnostic_keys,
    find_blocks,
    scale_map,
)

BLOCK_PARAMS = ("self_attn.q_proj.weight", "self_attn.q_proj.bias", "mlp.fc1.weight")


def hf_clip_keys(num_layers, prefix="vision_model."):
    keys = [f"{prefix}embeddings.patch_embedding.weight", f"{prefix}pre_layrnorm.weight"]
    for layer in range(num_layers):
        keys += [f"{prefix}encoder.layers.{layer}.{p}" for p in BLOCK_PARAMS]
    return keys + [f"{prefix}post_layernorm.weight", "visual_projection.weight"]


# --- presets -----------------------------------------------------------------------------------


def test_hf_clip_transformers4_layout():
    keys = hf_clip_keys(12)
    layout = find_blocks(keys)
    assert layout.num_blocks == 12
    assert layout.pattern == BLOCK_PATTERNS["hf_clip"]
    assert [b.index for b in layout.blocks] == list(range(12))
    assert layout.blocks[3].prefix == "vision_model.encoder.layers.3."
    assert layout.blocks[3].keys == tuple(
        f"vision_model.encoder.layers.3.{p}" for p in BLOCK_PARAMS
    )
    assert layout.non_block_keys == (
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.post_layernorm.weight",
        "visual_projection.weight",
    )


def test_hf_clip_transformers5_layout_without_vision_model_prefix():
    layout = find_blocks(hf_clip_keys(4, prefix=""))
    assert layout.num_blocks == 4
    assert layout.blocks[0].prefix == "encoder.layers.0."
    assert "embeddings.patch_embedding.weight" in layout.non_block_keys


def test_full_clip_model_text_tower_is_not_a_block():
    # anchored: `text_model.encoder.layers.<i>.` must not match the vision preset
    keys = hf_clip_keys(2) + [f"text_model.encoder.layers.{i}.mlp.fc1.weight" for i in range(3)]
    layout = find_blocks(keys)
    assert layout.num_blocks == 2
    assert all(k in layout.non_block_keys for k in keys if k.startswith("text_model."))


def test_numeric_not_lexicographic_order():
    keys = [f"vision_model.encoder.layers.{i}.mlp.fc1.weight" for i in sorted(map(str, range(12)))]
    assert keys[2].startswith("vision_model.encoder.layers.10.")  # input is lexicographic
    layout = find_blocks(keys)
    assert [b.prefix for b in layout.blocks] == [
        f"vision_model.encoder.layers.{i}." for i in range(12)
    ]
    assert layout.blocks[10].index == 10


@pytest.mark.parametrize("lead", ["", "model."])
def test_open_clip_with_and_without_model_prefix(lead):
    keys = [f"{lead}visual.conv1.weight"]
    keys += [f"{lead}visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(3)]
    keys += [f"{lead}visual.transformer.resblocks.{i}.mlp.c_fc.weight" for i in range(3)]
    keys += [f"{lead}visual.ln_post.weight", f"{lead}visual.proj"]
    layout = find_blocks(keys)
    assert layout.pattern == BLOCK_PATTERNS["open_clip"]
    assert layout.num_blocks == 3
    assert layout.blocks[1].prefix == f"{lead}visual.transformer.resblocks.1."
    assert layout.blocks[1].keys == (
        f"{lead}visual.transformer.resblocks.1.attn.in_proj_weight",
        f"{lead}visual.transformer.resblocks.1.mlp.c_fc.weight",
    )
    assert layout.non_block_keys == (f"{lead}visual.conv1.weight", f"{lead}visual.ln_post.weight",
                                     f"{lead}visual.proj")


@pytest.mark.parametrize("lead", ["", "model.", "base_model.model."])
def test_t5_encoder_blocks_then_decoder_blocks(lead):
    # input interleaves decoder and encoder names; depth order is encoder 0..2 then decoder 0..2
    keys = [f"{lead}shared.weight"]
    for i in (2, 0, 1):
        keys += [f"{lead}decoder.block.{i}.layer.0.SelfAttention.q.weight",
                 f"{lead}encoder.block.{i}.layer.0.SelfAttention.q.weight"]
    keys += [f"{lead}encoder.final_layer_norm.weight", f"{lead}lm_head.weight"]
    layout = find_blocks(keys)
    assert layout.pattern == BLOCK_PATTERNS["t5"]
    assert [b.prefix for b in layout.blocks] == (
        [f"{lead}encoder.block.{i}." for i in range(3)]
        + [f"{lead}decoder.block.{i}." for i in range(3)]
    )
    assert [b.index for b in layout.blocks] == list(range(6))
    assert layout.non_block_keys == (
        f"{lead}shared.weight", f"{lead}encoder.final_layer_norm.weight", f"{lead}lm_head.weight"
    )


def test_preset_by_name():
    keys = ["visual.transformer.resblocks.0.attn.in_proj_weight", "visual.proj"]
    assert find_blocks(keys, "open_clip").num_blocks == 1
    with pytest.raises(ValueError, match="open_clip"):
        find_blocks(hf_clip_keys(2), "open_clip")


# --- user patterns -----------------------------------------------------------------------------


def test_user_regex():
    keys = ["patch_embed.proj.weight"] + [f"blocks.{i}.attn.qkv.weight" for i in range(11, -1, -1)]
    layout = find_blocks(keys, r"blocks\.(\d+)\.")
    assert layout.num_blocks == 12
    assert layout.pattern == (r"blocks\.(\d+)\.",)
    assert [b.prefix for b in layout.blocks] == [f"blocks.{i}." for i in range(12)]
    assert layout.non_block_keys == ("patch_embed.proj.weight",)


def test_user_regex_sequence_orders_by_regex_first():
    keys = ["dec.0.w", "enc.1.w", "dec.1.w", "enc.0.w"]
    layout = find_blocks(keys, [r"enc\.(\d+)\.", r"dec\.(\d+)\."])
    assert [b.prefix for b in layout.blocks] == ["enc.0.", "enc.1.", "dec.0.", "dec.1."]


def test_user_regex_gaps_get_dense_indices():
    keys = [f"blocks.{i}.w" for i in (0, 2, 5)]
    layout = find_blocks(keys, r"blocks\.(\d+)\.")
    assert [(b.index, b.prefix) for b in layout.blocks] == [(0, "blocks.0."), (1, "blocks.2."),
                                                            (2, "blocks.5.")]


@pytest.mark.parametrize("bad", [r"blocks\.\d+\.", r"(blocks)\.(\d+)\.", r"(?:blocks)\.\d+"])
def test_user_regex_without_exactly_one_group_raises(bad):
    with pytest.raises(ValueError, match=r"block_pattern.*capture group"):
        find_blocks(["blocks.0.w"], bad)


def test_user_regex_invalid_or_non_integer_group_raises():
    with pytest.raises(ValueError, match="block_pattern"):
        find_blocks(["blocks.0.w"], r"blocks\.((\d+)")
    with pytest.raises(ValueError, match="integer"):
        find_blocks(["blocks.a.w"], r"blocks\.(\w+)\.")


def test_bad_block_pattern_type_raises():
    with pytest.raises(TypeError, match="block_pattern"):
        find_blocks(["blocks.0.w"], 3)


def test_nothing_matches_names_pattern_and_sample_keys():
    keys = [f"net.{i}.weight" for i in range(20)]
    with pytest.raises(ValueError) as info:
        find_blocks(keys, r"blocks\.(\d+)\.")
    message = str(info.value)
    assert r"blocks\.(\d+)\." in message
    assert "net.0.weight" in message and "net.4.weight" in message
    assert "net.19.weight" not in message  # a few samples, not all keys


def test_nothing_matches_auto_detect_names_every_preset():
    with pytest.raises(ValueError) as info:
        find_blocks(["net.0.weight"])
    for name in BLOCK_PATTERNS:
        assert name in str(info.value)
    assert "net.0.weight" in str(info.value)


def test_ambiguous_prefix_raises():
    keys = ["visual.transformer.resblocks.0.w", "model.visual.transformer.resblocks.0.w"]
    with pytest.raises(ValueError, match="two prefixes"):
        find_blocks(keys)


# --- diagnostic keys and scale map ------------------------------------------------------------


def test_diagnostic_keys_are_2d_float_with_both_sides_above_one():
    block = Block(index=0, prefix="b.0.",
                  keys=("b.0.q.weight", "b.0.q.bias", "b.0.norm.weight", "b.0.row", "b.0.ids",
                        "b.0.fc.weight", "b.0.absent", "b.0.cube"))
    state_dict = {
        "b.0.q.weight": torch.zeros(4, 4),
        "b.0.q.bias": torch.zeros(4),
        "b.0.norm.weight": torch.zeros(4),
        "b.0.row": torch.zeros(1, 4),
        "b.0.ids": torch.zeros(4, 4, dtype=torch.long),
        "b.0.fc.weight": torch.zeros(8, 4, dtype=torch.bfloat16),
        "b.0.cube": torch.zeros(2, 2, 2),
    }
    assert diagnostic_keys(block, state_dict) == ["b.0.q.weight", "b.0.fc.weight"]


def test_scale_map_covers_every_key_in_state_dict_order():
    keys = hf_clip_keys(3)
    layout = find_blocks(keys)
    scales = scale_map(layout, [0.5, 1.0, 1.5], non_block_scale=0.9)
    assert list(scales) == keys
    for block, expected in zip(layout.blocks, [0.5, 1.0, 1.5]):
        assert all(scales[k] == expected for k in block.keys)
    assert all(scales[k] == 0.9 for k in layout.non_block_keys)
    assert scale_map(layout, torch.tensor([0.5, 1.0, 1.5]))["visual_projection.weight"] == 1.0


def test_scale_map_without_key_order_still_covers_every_key():
    layout = BlockLayout(blocks=(Block(0, "b.0.", ("b.0.w",)),), non_block_keys=("emb",),
                         pattern=(r"b\.(\d+)\.",))
    assert scale_map(layout, [2.0]) == {"b.0.w": 2.0, "emb": 1.0}


def test_scale_map_validates_scales():
    layout = find_blocks(hf_clip_keys(2))
    with pytest.raises(ValueError, match="block_scales"):
        scale_map(layout, [1.0])
    with pytest.raises(ValueError, match="block_scales"):
        scale_map(layout, [1.0, float("nan")])
    with pytest.raises(ValueError, match="non_block_scale"):
        scale_map(layout, [1.0, 1.0], non_block_scale=float("inf"))
