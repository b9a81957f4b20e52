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


@pytest.mark.parametrize("name", FAMILY_REPRESENTATIVES)
def test_backbone_builds_runs_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    info = ModelInfo(backbone=name)
    net = build_network(info).eval()
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        logits = net(x)
        dense = net.dense_forward(x[:1])
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    assert dense.shape == (1, 10, 1, 1), "a 256 px image is exactly one window"
    path = save_model(net, info, tmp_path / f"{name}.pt")
    loaded = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x), logits)
    assert loaded.info.backbone == name


def test_dense_head_equals_window_head_on_one_window():
    torch.manual_seed(1)
    net = PatchClassifier("efficientnet-lite0").eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(net.dense_forward(x)[0, :, 0, 0], net(x)[0], atol=1e-5, rtol=1e-5)


def test_pretrained_lite_weights_load_offline():
    a = PatchClassifier("efficientnet-lite0", pretrained=True)
    b = PatchClassifier("efficientnet-lite0", pretrained=False)
    wa = a.features.model._conv_stem.weight
    wb = b.features.model._conv_stem.weight
    assert not torch.equal(wa, wb)
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
