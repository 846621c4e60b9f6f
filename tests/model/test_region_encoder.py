import torch

from regionscribe.model.region_encoder import BOX_FREQUENCIES, RegionEncoder, box_features, patch_grid, pyramid_layers


def test_pyramid_layers_match_gpt4roi():
    # CLIP ViT-L/14: 24 blocks -> 25 hidden states; select -2, 4 levels 3 apart -> blocks 14, 17, 20, 23
    assert pyramid_layers(25, -2, 3, 4) == [14, 17, 20, 23]
    # the tiny preset: 6 blocks, select -1, 3 levels 2 apart
    assert pyramid_layers(7, -1, 2, 3) == [2, 4, 6]
    assert pyramid_layers(12, -2, 3, 4) == [1, 4, 7, 10]


def test_pyramid_layers_too_shallow_raises():
    import pytest

    with pytest.raises(ValueError, match="cannot give"):
        pyramid_layers(5, -1, 3, 4)


def test_patch_grid_drops_cls_token():
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    grid = patch_grid(tokens)
    assert grid.shape == (2, 3, 4, 4)
    assert torch.equal(grid[0, :, 0, 0], tokens[0, 1])  # first patch, not the CLS token
    assert torch.equal(patch_grid(tokens[:, 1:]), grid)  # SigLIP: no CLS token


def _encoder(image_size=112, levels=2, out=2, position_encoding="sinusoidal"):
    return RegionEncoder(vision_hidden=4, lm_hidden=8, image_size=image_size, num_levels=levels, fuse_channels=4,
                         num_fuse=1, gn_groups=2, roi_output=out, roi_sampling_ratio=2, region_hidden=8,
                         position_hidden=4, position_encoding=position_encoding)


def test_roi_align_equals_hand_computed_average():
    """A feature map whose value is its column index: the aligned RoI average over a box is its mean column."""
    enc = _encoder()
    fine = torch.arange(28, dtype=torch.float32).repeat(28, 1)[None, None]  # [1,1,28,28], stride 4 at 112 px
    coarse = torch.arange(14, dtype=torch.float32).repeat(14, 1)[None, None]  # stride 8
    box = torch.tensor([[16.0, 16.0, 48.0, 48.0]]) / 112  # pixels 16..48
    pooled_fine, pooled_coarse = enc.pool([fine, coarse], [box])
    # coarse: feature coords 2..6, shifted by -0.5 (aligned=True) -> 1.5..5.5; two output cells: [1.5,3.5] and
    # [3.5,5.5], whose averages of f(c) = c are 2.5 and 4.5
    assert torch.allclose(pooled_coarse[0, 0], torch.tensor([[2.5, 4.5], [2.5, 4.5]]))
    # fine: 4..12 -> 3.5..11.5 -> cells [3.5,7.5], [7.5,11.5] -> 5.5, 9.5
    assert torch.allclose(pooled_fine[0, 0], torch.tensor([[5.5, 9.5], [5.5, 9.5]]))


def test_every_box_pooled_from_every_level_in_image_order():
    enc = _encoder()
    levels = [torch.randn(2, 4, 28, 28), torch.randn(2, 4, 14, 14)]
    boxes = [torch.tensor([[0.1, 0.1, 0.5, 0.5]]), torch.tensor([[0.2, 0.2, 0.9, 0.6], [0.0, 0.0, 1.0, 1.0]])]
    pooled = enc.pool(levels, boxes)
    assert [p.shape[0] for p in pooled] == [3, 3]
    # box 2 belongs to image 1: pooling image 1 alone gives the same numbers
    alone = enc.pool([lv[1:] for lv in levels], [boxes[1]])
    assert torch.allclose(pooled[0][1:], alone[0]) and torch.allclose(pooled[1][1:], alone[1])
    tokens = enc(enc.pyramid([torch.randn(2, 17, 4), torch.randn(2, 17, 4)]), boxes)
    assert [t.shape for t in tokens] == [torch.Size([1, 8]), torch.Size([2, 8])]


def test_pyramid_upsamples_shallow_levels():
    enc = _encoder(levels=2)
    maps = enc.pyramid([torch.randn(1, 17, 4), torch.randn(1, 17, 4)])
    assert [m.shape[-1] for m in maps] == [8, 4]  # shallow x2, deepest at the patch grid


def test_box_features_code_position_monotonically_and_finely():
    xs = torch.linspace(0, 0.8, 9)
    boxes = torch.stack([xs, torch.full_like(xs, 0.3), xs + 0.2, torch.full_like(xs, 0.6)], 1)
    f = box_features(boxes)
    assert f.shape == (9, 8 + 16 * BOX_FREQUENCIES)
    assert torch.allclose(f[:, 4], xs + 0.1) and torch.allclose(f[:, 6], torch.full_like(xs, 0.2))  # cx, w
    # the lowest frequency's sine of cx rises with cx over the whole image: left/right is a linear read-out
    assert (f[1:, 8 + 4 * BOX_FREQUENCIES] > f[:-1, 8 + 4 * BOX_FREQUENCIES]).all()
    # boxes that differ only in x get clearly different codes (the failure this replaced: a direction of std 0.009)
    assert (torch.cdist(f, f) + torch.eye(9) * 10).min() > 0.5


def test_position_moves_the_region_token():
    """Same appearance, different place: the token changes as much as the position term weighs."""
    torch.manual_seed(0)
    enc = _encoder()
    levels = [torch.zeros(1, 4, 28, 28), torch.zeros(1, 4, 14, 14)]  # no appearance signal at all
    left = enc(levels, [torch.tensor([[0.05, 0.4, 0.25, 0.6]])])[0]
    right = enc(levels, [torch.tensor([[0.75, 0.4, 0.95, 0.6]])])[0]
    assert (left - right).norm() > 0.1 * left.norm()
