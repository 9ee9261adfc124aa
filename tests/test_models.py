import pytest
import torch
from transformers import AutoConfig, AutoModel

import hfstage  # noqa: F401
from hfstage.errors import ConfigError
from hfstage.models import MODELS, build_model
from hfstage.models.pair_cnn import PairCNNConfig

ALL_SIX = ["diff", "concat", "product", "cosine", "l2", "residual"]


@pytest.mark.parametrize("fusion, symmetric", [(["diff"], True), (["product"], True), (["sum"], True),
                                               (["cosine"], True), (["l2"], True), (["residual"], True),
                                               (["diff", "product"], True), (["concat"], False), (ALL_SIX, False)])
@pytest.mark.parametrize("use_fusion", [False, True])
def test_fusion_symmetry(fusion, symmetric, use_fusion):
    torch.manual_seed(0)
    model = build_model({"type": "pair_cnn", "channels": [4, 8], "feat_dim": 16, "fusion": fusion,
                         "use_fusion": use_fusion}).eval()
    x = torch.rand(6, 2, 28, 28)
    with torch.no_grad():
        a, b = model(pixel_values=x).logits, model(pixel_values=x.flip(1)).logits
    assert a.shape == (6,)
    assert torch.allclose(a, b, atol=1e-5) == symmetric


def test_forward_backward_and_auto_reload(tmp_path):
    model = build_model({"type": "pair_cnn", "channels": [4, 8], "convs_per_block": 2, "feat_dim": 16},
                        image_size=[20, 24])
    x = torch.rand(3, 2, 20, 24)
    model(pixel_values=x).logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "hfstage_pair_cnn" and config.image_size == [20, 24] and config.convs_per_block == 2
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "PairCNNModel"
    before, after = model.state_dict(), again.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.allclose(model(pixel_values=x).logits, again(pixel_values=x).logits, atol=1e-6)


@pytest.mark.parametrize("model_cfg, message", [
    ({"type": "pair_cnm"}, "unknown model 'pair_cnm' (did you mean 'pair_cnn'?)"),
    ({"type": "pair_cnn", "chanels": [4]}, "model.chanels: unknown argument of model 'pair_cnn' (did you mean 'channels'?)"),
    ({"type": "pair_cnn", "fusion": ["dif"]}, "fusion must be a non-empty list"),
    ({"type": "pair_cnn", "dropout": 1.5}, "dropout must be in [0, 1)"),
])
def test_bad_model_config(model_cfg, message):
    with pytest.raises(ConfigError) as err:
        build_model(model_cfg)
    assert message in str(err.value)


def test_adaptive_fusion_mixes_one_head_per_operation():
    torch.manual_seed(0)
    model = build_model({"type": "pair_cnn", "channels": [4, 8], "feat_dim": 16, "fusion": ALL_SIX,
                         "use_fusion": True}).eval()
    assert list(model.heads) == ALL_SIX and model.fusion_weights.shape == (6,)
    x = torch.rand(5, 2, 28, 28)
    with torch.no_grad():
        emb = model.encoder(((x.reshape(10, 1, 28, 28) - 0.5) / 0.5).contiguous(memory_format=torch.channels_last))
        a, b = emb.reshape(5, 2, -1).unbind(1)
        feats = model.features(a, b)
        assert feats["cosine"].shape == (5, 1) and feats["l2"].shape == (5, 1) and feats["concat"].shape == (5, 32)
        per_head = torch.stack([model.heads[f](feats[f])[:, 0] for f in ALL_SIX], 1)
        model.fusion_weights.copy_(torch.tensor([0.0, 0, 0, 9, 0, 0]))
        w = torch.softmax(model.fusion_weights, 0)
        assert torch.allclose(model(pixel_values=x).logits, (per_head * w).sum(1), atol=1e-5)
    model.train()
    model(pixel_values=x).logits.sum().backward()
    assert model.fusion_weights.grad is not None and model.heads["residual"][0].weight.grad is not None


def test_registry_lists_pair_cnn():
    assert "pair_cnn" in MODELS.names()
    assert PairCNNConfig().fusion == ["diff", "product"]


@pytest.mark.parametrize("encoder_cfg", [
    {"encoder": "resnet", "channels": [4, 8, 8], "layers": [3, 3, 3]},
    {"encoder": "resnet", "channels": [8, 8], "layers": [1, 2], "use_bottleneck": True, "use_se": True},
    {"encoder": "resnet", "channels": [4, 8], "layers": [1, 1], "use_cbam": True, "width_mult": 2.0},
    {"encoder": "cnn", "channels": [4, 8], "use_se": True},
    {"encoder": "cnn", "channels": [4, 8], "use_cbam": True},
    {"encoder": "fpn", "channels": [4, 8, 8], "layers": [1, 1, 1], "fpn_dim": 8, "use_se": True},
])
def test_encoders_train_reload_and_stay_symmetric(encoder_cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model({"type": "pair_cnn", "feat_dim": 16, "hidden_dim": 16, **encoder_cfg})
    x = torch.rand(4, 2, 28, 28)
    model(pixel_values=x).logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    names = " ".join(n for n, _ in model.named_parameters())
    assert ("gate" in names) == bool(encoder_cfg.get("use_se")) and ("spatial" in names) == bool(encoder_cfg.get("use_cbam"))
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = model(pixel_values=x).logits
        assert torch.allclose(out, again(pixel_values=x).logits, atol=1e-5)
        assert torch.allclose(out, model(pixel_values=x.flip(1)).logits, atol=1e-5)


@pytest.mark.parametrize("model_cfg, message", [
    ({"encoder": "vit"}, "encoder must be one of cnn, resnet, fpn"),
    ({"encoder": "fpn", "channels": [4, 8], "layers": [1]}, "needs one block count per stage"),
    ({"encoder": "fpn", "layers": [1, 1], "fpn_dim": 0}, "fpn_dim must be >= 1"),
    ({"encoder": "resnet", "channels": [4, 8], "layers": [3, 3, 3]}, "needs one block count per stage"),
    ({"use_bottleneck": True}, "use_bottleneck applies to encoder: resnet or fpn"),
    ({"use_se": True, "use_cbam": True}, "alternatives"),
    ({"width_mult": 0}, "width_mult must be > 0"),
])
def test_bad_encoder_settings(model_cfg, message):
    with pytest.raises(ConfigError) as err:
        build_model({"type": "pair_cnn", **model_cfg})
    assert message in str(err.value)


def test_fpn_uses_every_pyramid_level():
    """Each level's pooled features reach the embedding: zeroing one level's smoothing changes the output."""
    from hfstage.models.encoders import FPN

    torch.manual_seed(0)
    fpn = FPN(1, [4, 8, 16], [1, 1, 1], False, False, False, width=6).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        out = fpn(x)
        assert out.shape == (2, 18)
        for level in range(3):
            saved = fpn.smooth[level].weight.clone()
            fpn.smooth[level].weight.zero_()
            fpn.smooth[level].bias.zero_()
            changed = fpn(x)
            assert torch.allclose(changed[:, 6 * level: 6 * level + 6], torch.zeros(2, 6))
            fpn.smooth[level].weight.copy_(saved)
