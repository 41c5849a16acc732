"""A frozen convolution whose weight torchao holds in int8 (model/quantize.py), trained through without keeping the
weight's float copy alive.

torchao's weight-only tensors dequantize at the level of torch functions, above autograd, so autograd keeps each
convolution's dequantized weight (and its input) until the backward pass. Over a whole UNet that is every
convolution in the run's dtype again: the SD1.5-shaped base's NF4 run then peaked above the float run (2.92 against
2.82 GiB). bitsandbytes avoids this for its Linear layers by dequantizing again in the backward pass; this does the
same for a convolution. The weight is frozen, so the backward pass needs only the input's gradient: the weight
dequantized again, and the input's shape, not the input itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """torchao's symmetric int8 weight as floats, equal to its own dequantize() (tested), which goes through its
    generic block-wise path in float32: 1.04 ms against 0.21 ms for a 320-channel 3x3 convolution here, paid twice
    per convolution a step. In the weight's own dtype the product is exact before its one rounding: an int8 value
    and a bf16 scale each fit in bf16's 8 bits of mantissa."""
    qdata, scale, zero_point = (getattr(weight, name, None) for name in ("qdata", "scale", "zero_point"))
    if qdata is None or scale is None or zero_point is None or scale.dim() != qdata.dim() or zero_point.any():
        return weight.dequantize()
    return qdata.to(weight.dtype) * scale.to(weight.dtype)


class _FrozenConvolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor, layer: torch.nn.Conv2d) -> torch.Tensor:
        ctx.layer, ctx.input_shape = layer, inputs.shape
        return layer.convolve(inputs, dequantized(layer.weight))  # the float weight is freed when this returns

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        layer = ctx.layer
        weight = dequantized(layer.weight).to(grad_output.dtype)
        grad_input = torch.nn.grad.conv2d_input(ctx.input_shape, weight, grad_output, layer.stride, layer.padding,
                                                layer.dilation, layer.groups)
        return grad_input, None


class FrozenQuantizedConv2d(torch.nn.Conv2d):
    """A torch Conv2d (so peft and diffusers treat it as one) whose forward, where the input needs a gradient,
    keeps nothing for the backward pass but the input's shape. Zero padding only, as quantize.py applies it."""

    def convolve(self, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inputs, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and inputs.requires_grad and not self.weight.requires_grad:
            return _FrozenConvolution.apply(inputs, self)
        return self.convolve(inputs, dequantized(self.weight))
