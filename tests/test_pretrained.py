"""--pretrained's weight loading: a bundle trained on a GPU fine-tunes on a CPU-only machine."""
from __future__ import annotations

import pytest
import torch


class _Net(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.encoder = torch.nn.Conv3d(1, 4, 3)
        self.decoder = torch.nn.Module()
        self.decoder.seg_layers = torch.nn.ModuleList([torch.nn.Conv3d(4, classes, 1)])  # not loaded: the labels differ


def _save_as_if_on_a_gpu(state: dict, path) -> None:
    """torch.save with every storage tagged 'cuda:0', as a checkpoint written on a GPU is."""
    serialization = torch.serialization

    def tag(obj):
        return "cuda:0"

    serialization.register_package(-100, tag, lambda obj, location: None)
    try:
        torch.save(state, path)
    finally:
        serialization._package_registry[:] = [e for e in serialization._package_registry if e[1] is not tag]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_weights_saved_on_a_gpu_load_on_a_cpu_except_the_heads(tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from medseg_auto.pretrained import load_weights

    source = _Net(classes=3)
    checkpoint = tmp_path / "checkpoint_final.pth"
    _save_as_if_on_a_gpu({"network_weights": source.state_dict(), "init_args": {}}, checkpoint)
    target = _Net(classes=2)  # other labels: other heads
    with pytest.raises(RuntimeError, match="CUDA"):  # what nnU-Net's loader does with the file on a CPU
        load_pretrained_weights(target, str(checkpoint))
    head = target.decoder.seg_layers[0].weight.clone()
    load_weights(target, checkpoint)
    assert torch.equal(target.encoder.weight, source.encoder.weight)
    assert torch.equal(target.encoder.bias, source.encoder.bias)
    assert torch.equal(target.decoder.seg_layers[0].weight, head)  # the heads keep their own initialisation
