"""The resolved torch/torchvision pair must work together (a mismatched pair fails on its C++ ops)."""
import torch


def test_torchvision_imports_and_its_ops_run():
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torchvision.__version__
