"""EVA-02 specifics. Parity with timm and the shared interface are covered for every variant by
test_parity.py and test_interface.py; these check the rotary embedding on its own and that a
model built on the meta device computes the same function once materialised."""

from __future__ import annotations

import pytest
import torch

import visionzoo
from visionzoo.models.eva import RotaryEmbedding2d, apply_rotary


@pytest.mark.parametrize("grid", [(16, 16), (8, 8), (24, 24), (4, 6)])
def test_rotary_table_matches_timm(grid):
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, apply_rot_embed_cat

    reference = RotaryEmbeddingCat(64, in_pixels=False, feat_shape=list(grid), ref_feat_shape=(16, 16))
    ours = RotaryEmbedding2d(64, ref_grid=(16, 16))(grid, torch.device("cpu"))
    torch.testing.assert_close(ours, reference.get_embed(), rtol=1e-6, atol=1e-6)
    x = torch.randn(2, 3, grid[0] * grid[1], 64)
    torch.testing.assert_close(apply_rotary(x, ours), apply_rot_embed_cat(x, reference.get_embed()))


def test_rotation_preserves_norms_and_relative_positions():
    rope = RotaryEmbedding2d(64)((4, 4), torch.device("cpu"))
    q = torch.randn(1, 64).expand(16, 64)  # the same query at every position
    rotated = apply_rotary(q, rope)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm(dim=-1))
    # q.k after rotation depends on the offset between positions only: (0,0)-(0,1) equals (2,2)-(2,3)
    scores = rotated @ rotated.T
    torch.testing.assert_close(scores[0, 1], scores[10, 11])


def test_meta_built_model_matches_after_materialising():
    """The rope table is computed in forward, so nothing is lost when building on meta."""
    torch.manual_seed(0)
    reference = visionzoo.create_model("eva02_tiny_patch14_336", img_size=56).eval()
    with torch.device("meta"):
        model = visionzoo.create_model("eva02_tiny_patch14_336", img_size=56)
    model = model.to_empty(device="cpu").eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_card_defaults_follow_timm():
    assert visionzoo.create_model("eva02_tiny_patch14_224", img_size=56).num_classes == 0  # MIM backbone
    info = visionzoo.model_info("eva02_base_patch14_448")
    assert info["num_classes"] == 1000 and info["input_size"] == [3, 448, 448]


def test_wrong_input_size_is_a_clear_error():
    model = visionzoo.create_model("eva02_tiny_patch14_336", img_size=56).eval()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 112, 112))
