"""ViT models through timm: the on-device resize, loading a local checkpoint, and the extra guard."""

from __future__ import annotations

import sys

import pytest
import torch

from sampa.extras import MissingExtraError, available, require

timm = pytest.importorskip("timm")  # the vision extra
from safetensors.torch import save_file  # noqa: E402

from sampa.models import vit  # noqa: E402


def test_resize_upsamples_on_the_device_and_skips_the_right_size():
    resize = vit.Resize(64)
    x = torch.randn(2, 3, 32, 32)
    expected = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(resize(x), expected)
    y = torch.randn(1, 3, 64, 64)
    assert resize(y) is y


def test_tiny_vit_classifies_cifar_sized_images():
    torch.manual_seed(0)
    model = vit.vit_tiny(num_classes=10)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_loads_a_local_checkpoint_with_a_new_head(tmp_path, monkeypatch):
    monkeypatch.setattr(vit, "ARCHITECTURE", "vit_tiny_patch16_224")  # same code path, 5.7M parameters
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0)  # like orig_in21k: no head
    path = tmp_path / "model.safetensors"
    save_file(source.state_dict(), str(path))
    model = vit.vit_b16(num_classes=10, weights=path, tag="augreg_in21k")
    resize, net = model
    assert isinstance(resize, vit.Resize) and resize.size == 224
    loaded = net.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.state_dict().items())
    assert net.head.weight.shape == (10, 192)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)  # CIFAR input, resized inside
    from_dir = vit.vit_b16(num_classes=10, weights=tmp_path, tag="augreg_in21k")  # a --local-dir download
    assert torch.equal(from_dir[1].pos_embed, source.pos_embed)


def test_missing_weights_name_what_to_put_where(tmp_path):
    with pytest.raises(vit.WeightsUnavailableError, match=r"no file .*absent.safetensors\); put model.safe"):
        vit.vit_b16(10, weights=tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="unknown ViT-B/16 checkpoint tag 'in1k'; choose one of: orig_in21k"):
        vit.vit_b16(10, weights=None, tag="in1k")


def test_a_missing_extra_stops_with_one_line(monkeypatch):
    assert available("vision")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(MissingExtraError) as err:
        vit.vit_tiny(10)
    assert str(err.value) == "needs the vision extra: pip install -e '.[vision]'"
    with pytest.raises(ValueError, match="unknown extra/module 'cv'/'timm'"):
        require("cv", "timm")
    assert not available("vision")
