"""Backbone registry and model files: every family builds, runs and round-trips."""

from __future__ import annotations

import pytest
import torch

from MammoPatchLib.errors import ConfigError, ModelFileError
from MammoPatchLib.model_file import ModelInfo, build_network, load_model, read_model_payload, save_model
from MammoPatchLib.networks import BACKBONES, PatchClassifier, available_backbones

FAMILY_REPRESENTATIVES = ["efficientnet-lite0", "efficientnet-b0", "efficientnetv2-s", "resnet50", "densenet121",
                          "swin-t", "mobilenet-v3-large", "vgg19"]


def test_all_six_poster_families_are_registered():
    families = {BACKBONES[n].family for n in FAMILY_REPRESENTATIVES}
    assert families == {"EfficientNet", "ResNet50", "DenseNet", "Swin Transformer", "MobileNet", "VGG19"}
    assert set(FAMILY_REPRESENTATIVES) <= set(available_backbones()), "CI installs torchvision"


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("vgg19", "swin-t") else n
                                  for n in FAMILY_REPRESENTATIVES])
def test_backbone_builds_runs_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    info = ModelInfo(backbone=name)
    net = build_network(info).eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        logits = net.classify(x)
        dense = net(torch.rand(1, 3, 288, 320))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert dense.shape == (1, 10, 2, 3), "one output per 256 px window at a 32 px stride"
    path = save_model(net, info, tmp_path / f"{name}.pt")
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network.classify(x), logits)
    assert loaded.info.backbone == name


@pytest.mark.parametrize("pooling", ["mean", "learned"])
def test_one_network_serves_windows_and_whole_images(pooling):
    """The dense output at window (i, j) is the head applied to that window's feature cells of
    the whole image: exactly the window classifier when it is given the same features."""
    torch.manual_seed(1)
    net = PatchClassifier("efficientnet-lite0", pretrained=True, head_pooling=pooling).eval()
    if pooling == "learned":
        with torch.no_grad():
            net.head.pool.weight.add_(0.01 * torch.randn_like(net.head.pool.weight))
    image = torch.rand(1, 3, 320, 352)
    with torch.no_grad():
        dense = net(image)
        features = net.features(image)
        for i, j in [(0, 0), (1, 2), (2, 3)]:
            window = net.head(features[:, :, i:i + 8, j:j + 8]).flatten(1)
            torch.testing.assert_close(dense[:, :, i, j], window, atol=1e-5, rtol=1e-5)
        assert net(image[:, :, :256, :256]).shape == (1, 10, 1, 1), "a lone 256 px window is one output"


def test_version_1_model_files_are_converted_on_load(tmp_path):
    """Files written before the head became convolutional (Linear head, Lite under a wrapper
    prefix) load into the new network with identical outputs."""
    torch.manual_seed(2)
    info = ModelInfo()
    net = build_network(info, pretrained=True).eval()
    old_state = {}
    for key, value in net.state_dict().items():
        if key.startswith("features."):
            key = "features.model." + key[len("features."):]
        elif key.startswith("head.hidden."):
            key, value = "head.2." + key.split(".")[-1], value.flatten(1) if value.ndim == 4 else value
        elif key.startswith("head.out."):
            key, value = "head.4." + key.split(".")[-1], value.flatten(1) if value.ndim == 4 else value
        old_state[key] = value
    from MammoPatchLib.model_file import weights_sha256

    torch.save({"format": "mammopatch-model", "format_version": 1, "info": info.to_dict(), "state_dict": old_state,
                "sha256": weights_sha256(old_state)}, tmp_path / "v1.pt")
    loaded = load_model(tmp_path / "v1.pt")
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network.classify(x), net.classify(x))


def test_pretrained_lite_weights_load_offline():
    a = PatchClassifier("efficientnet-lite0", pretrained=True)
    b = PatchClassifier("efficientnet-lite0", pretrained=False)
    assert not torch.equal(a.features._conv_stem.weight, b.features._conv_stem.weight)
    with pytest.raises(ConfigError, match="no offline ImageNet weights"):
        PatchClassifier("resnet50", pretrained=True)


def test_model_file_carries_metadata_and_half_weights(tmp_path):
    info = ModelInfo(spacing_mm=0.2, thresholds=[0.4] * 10, description="x")
    net = build_network(info)
    full = save_model(net, info, tmp_path / "full.pt")
    half = save_model(net, info, tmp_path / "half.pt", half=True)
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    payload = read_model_payload(half)
    assert payload["info"]["spacing_mm"] == 0.2 and payload["info"]["window"] == 256
    assert payload["info"]["stride"] == 32 and len(payload["sha256"]) == 64
    assert "preprocessing" in payload["info"] and payload["info"]["library_version"]
    assert load_model(full).info.thresholds == [0.4] * 10


def test_model_file_refusals(tmp_path):
    info = ModelInfo(backbone="efficientnet-lite0")
    path = save_model(build_network(info), info, tmp_path / "m.pt")
    with pytest.raises(ModelFileError, match=r"not \['Mass'\]"):
        load_model(path, expected_classes=["Mass"])
    with pytest.raises(ModelFileError, match="not resnet50"):
        load_model(path, expected_backbone="resnet50")
    # Weights for another architecture under a lying header.
    payload = torch.load(path, weights_only=True)
    payload["info"]["backbone"] = "mobilenet-v3-large"
    torch.save(payload, tmp_path / "liar.pt")
    with pytest.raises(ModelFileError, match="do not fit a mobilenet-v3-large"):
        load_model(tmp_path / "liar.pt")
    # A bare state dict, a corrupted file, a non-model file.
    torch.save(build_network(info).state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ModelFileError, match="not a MammoPatch model file"):
        load_model(tmp_path / "bare.pt")
    payload = torch.load(path, weights_only=True)
    key = next(iter(payload["state_dict"]))
    payload["state_dict"][key] = payload["state_dict"][key] + 1
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(tmp_path / "tampered.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk" * 10)
    with pytest.raises(ModelFileError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


def test_cell_logits_of_a_block_equal_the_whole_maps_heads():
    """Exact mode runs the heads (every ensemble member with its own tuned last stage, over the
    one trunk) on a view's valid block only: the block's logits equal the whole map's, inside
    the map and where the block touches its edge."""
    torch.manual_seed(2)
    net = PatchClassifier(head="cell", neighbourhood=3, bottleneck=8, hidden=16, ensemble=3, tuned_stages=1).eval()
    assert net.head_reach == 1
    features = torch.randn(2, net.features.features_before(torch.zeros(1, 3, 32, 32), 1).shape[1], 9, 7)
    with torch.no_grad():
        whole = net.head(features)
        for rows, cols in [(slice(3, 5), slice(2, 6)), (slice(0, 4), slice(4, 7)), (slice(0, 9), slice(0, 7))]:
            torch.testing.assert_close(net.cell_logits(features, rows, cols), whole[..., rows, cols],
                                       atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cell head"):
        PatchClassifier(head="window").head_reach
