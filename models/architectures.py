"""Architectures: the paper's small MNIST CNN, CIFAR-style ResNet18 and ResNet34-8x, and the
WideResNet-28-2 that MixMatch trains on 32x32 images.

Each model starts with a fixed normalisation layer, so inputs are images in [0, 1].
The ResNet attribute names (conv1, bn1, layer1..4, shortcut, linear) follow the common CIFAR ResNet
layout, so a ResNet34-8x state dict such as the DFME teacher's loads into `resnet34_8x`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.errors import unknown_name


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a fixed first layer."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class MnistNet(nn.Module):
    """The small CNN of the paper's MNIST victim: two 5x5 conv + max-pool stages, then 500 hidden units
    (also the PATE teachers' CNN, on 28x28 or 32x32 images)."""

    def __init__(self, num_classes=10, channels=1, mean=(0.0,), std=(1.0,), size=28):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        side = ((size - 4) // 2 - 4) // 2  # 4 for 28x28 images, 5 for 32x32
        self.fc1 = nn.Linear(side * side * 50, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.normalize(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stem without max-pool, four stages, global average pool, linear head."""

    def __init__(self, blocks, num_classes=10, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.in_planes = 64
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._stage(64, blocks[0], 1)
        self.layer2 = self._stage(128, blocks[1], 2)
        self.layer3 = self._stage(256, blocks[2], 2)
        self.layer4 = self._stage(512, blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _stage(self, planes, count, stride):
        layers = []
        for s in [stride] + [1] * (count - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class WideBlock(nn.Module):
    """Pre-activation residual block of a WideResNet: BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        pre = F.leaky_relu(self.bn1(x), 0.1)
        out = self.conv1(pre)
        out = self.conv2(F.leaky_relu(self.bn2(out), 0.1))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WideResNet-depth-width (Zagoruyko and Komodakis 2016): three groups of (depth - 4) / 6 blocks, of
    16 * width, 32 * width and 64 * width channels; WRN-28-2 has 1.5M parameters."""

    def __init__(self, depth=28, width=2, num_classes=10, channels=3, mean=(0.0,) * 3, std=(1.0,) * 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, not {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(channels, widths[0], 3, padding=1, bias=False)
        blocks, in_planes = [], widths[0]
        for group, planes in enumerate(widths[1:]):
            for i in range(n):
                blocks.append(WideBlock(in_planes, planes, 2 if group > 0 and i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x):
        out = self.blocks(self.conv1(self.normalize(x)))
        out = F.leaky_relu(self.bn(out), 0.1)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


ARCHITECTURES = {
    "mnistnet": lambda spec: MnistNet(spec.num_classes, spec.channels, spec.mean, spec.std, spec.input_shape[-1]),
    "resnet18": lambda spec: ResNet([2, 2, 2, 2], spec.num_classes, spec.channels, spec.mean, spec.std),
    "resnet34_8x": lambda spec: ResNet([3, 4, 6, 3], spec.num_classes, spec.channels, spec.mean, spec.std),
    "wrn28_2": lambda spec: WideResNet(28, 2, spec.num_classes, spec.channels, spec.mean, spec.std),
}


def create(name: str, spec) -> nn.Module:
    """Build the named architecture for a dataset spec; ValueError lists the valid names."""
    if name not in ARCHITECTURES:
        raise unknown_name("architecture", name, ARCHITECTURES)
    return ARCHITECTURES[name](spec)
