"""DINO's augmentation operations on batches of crops, each crop with its own parameters,
computing what PIL computes (the operations of ``transforms.MultiCropAugmentation``).

Crops are (N, 3, H, W) float32 tensors holding the integers 0..255 of the uint8 image PIL
would hold after each operation: every operation rounds, truncates and clips where PIL's
8-bit code does, so a batched crop agrees with PIL's pixel for pixel up to float rounding
(a level in rare pixels of resized and blurred crops). Parameters are (N,) tensors on the
crops' device. Each function is one batched computation, but ``resized_crops_loop`` (PIL's
own resampling kernel, crop by crop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BICUBIC_A = -0.5  # PIL's bicubic kernel (torch's non-antialiased bicubic uses -0.75)
SOLARIZE_AT = 128


def _bicubic(x: Tensor) -> Tensor:
    x = x.abs()
    a = BICUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_weights(start: Tensor, length: Tensor, out_size: int, in_size: int) -> Tensor:
    """PIL's antialiased bicubic resampling of ``length`` input pixels from ``start`` to
    ``out_size`` pixels, as a matrix: (N,) starts and lengths -> (N, out_size, in_size).

    Row o holds the weights of output pixel o (PIL's ``precompute_coeffs``: the kernel is
    widened by the scale when shrinking, so every input pixel counts; weights normalised
    to sum 1); columns outside [start, start + length) are 0.
    """
    start, length = start.float()[:, None, None], length.float()[:, None, None]
    scale = length / out_size  # (N, 1, 1)
    filter_scale = scale.clamp(min=1.0)
    support = 2.0 * filter_scale
    o = torch.arange(out_size, device=start.device, dtype=torch.float32)[None, :, None]
    centre = (o + 0.5) * scale  # in crop coordinates, (N, out, 1)
    x = torch.arange(in_size, device=start.device, dtype=torch.float32)[None, None, :] - start
    lo = torch.floor(centre - support + 0.5).clamp(min=0)
    hi = torch.minimum(torch.floor(centre + support + 0.5), length)
    inside = (x >= lo) & (x < hi)
    w = torch.where(inside, _bicubic((x - centre + 0.5) / filter_scale), 0.0)
    return w / w.sum(dim=-1, keepdim=True)  # (N, out, in)


def _round8(x: Tensor) -> Tensor:
    return x.round().clamp(0, 255)


def resized_crops_matmul(
    images: Tensor, index: Tensor, boxes: Tensor, size: int, flip: Tensor
) -> Tensor:
    """Crops ``boxes`` (N, 4: top, left, height, width) of ``images[index]`` resized to
    ``size`` (PIL bicubic, antialiased) and mirrored where ``flip``: (N, 3, size, size).

    ``images`` is (B, 3, H, W) uint8 (images smaller than H x W padded at the bottom and
    right; boxes never reach the padding). Two batched products, horizontal pass first and
    rounded to 8 bits in between as PIL does: (B, 3, H, W) @ (B, 1, W, k*size) per image
    for its k crops, then (N, 1, size, H) @ (N, 3, H, size). Dense products do more
    arithmetic than PIL's banded filter, but in two kernels whatever N is: for GPUs, and
    for small images on CPUs.
    Crops are grouped per image, so ``index`` must list each image's crops together,
    the same count for every image (``index`` sorted, each image k times).
    """
    n, (b, _, h, w) = index.shape[0], images.shape
    k = n // b
    wx = resample_weights(boxes[:, 1], boxes[:, 3], size, w)  # (N, size, W)
    wx = torch.where(flip[:, None, None], wx.flip(1), wx)  # mirror: output columns reversed
    wy = resample_weights(boxes[:, 0], boxes[:, 2], size, h)  # (N, size, H)
    x = images.float()
    wx_per_image = wx.view(b, k * size, w).transpose(1, 2)[:, None]  # (B, 1, W, k*size)
    rows = _round8(x @ wx_per_image)  # (B, 3, H, k*size)
    rows = rows.view(b, 3, h, k, size).permute(0, 3, 1, 2, 4).reshape(n, 3, h, size)
    return _round8(wy[:, None] @ rows)  # (N, 3, size, size)


def resized_crops_loop(
    images: Tensor, index: Tensor, boxes: Tensor, size: int, flip: Tensor
) -> Tensor:
    """``resized_crops_matmul`` one crop at a time with ``F.interpolate(bicubic,
    antialias=True)``, whose uint8 CPU kernel is PIL's resampling (same weights, same 8-bit
    rounding between passes) with SIMD: for large images on CPUs. Returns float32
    (N, 3, size, size)."""
    out = torch.empty(index.shape[0], 3, size, size, dtype=torch.uint8, device=images.device)
    uint8_kernel = images.device.type == "cpu"
    crops = zip(index.tolist(), boxes.tolist(), strict=True)
    for c, (b, (top, left, height, width)) in enumerate(crops):
        crop = images[b : b + 1, :, top : top + height, left : left + width]
        if not uint8_kernel:
            crop = crop.float()
        resized = F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)
        out[c] = _round8(resized[0]) if not uint8_kernel else resized[0]
    return torch.where(flip[:, None, None, None], out.flip(-1), out).float()


def luminance(x: Tensor) -> Tensor:
    """PIL's RGB -> L: (R * 19595 + G * 38470 + B * 7471 + 2^15) >> 16, (N, 1, H, W).
    Exact in float32: every sum is below 2^24."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 32768) / 65536)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``Image.blend``: degenerate + factor * (x - degenerate), truncated, clipped."""
    f = factor.view(-1, 1, 1, 1)
    return torch.floor(degenerate + f * (x - degenerate)).clamp(0, 255)


def adjust_brightness(x: Tensor, factor: Tensor) -> Tensor:
    """ImageEnhance.Brightness: a blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def adjust_contrast(x: Tensor, factor: Tensor) -> Tensor:
    """ImageEnhance.Contrast: a blend with the crop's mean luminance, rounded to an integer."""
    mean = torch.floor(luminance(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)
    return _blend(mean.expand_as(x), x, factor)


def adjust_saturation(x: Tensor, factor: Tensor) -> Tensor:
    """ImageEnhance.Color: a blend with the crop's luminance."""
    return _blend(luminance(x).expand_as(x), x, factor)


def grayscale(x: Tensor) -> Tensor:
    """RandomGrayscale on a PIL image: luminance in all three channels."""
    return luminance(x).expand_as(x).clone()


def adjust_hue(x: Tensor, factor: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` on a PIL image: PIL's 8-bit HSV, the hue byte shifted by
    int(factor * 255) with wrap-around, back to RGB. PIL's ``rgb2hsv`` and ``hsv2rgb`` mix
    float and double arithmetic, and a hue byte off by one moves a saturated pixel by
    several levels, so each step is computed in the precision PIL computes it in."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]  # (N, H, W) each, float32
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    spread = maxc - minc
    grey = spread == 0
    cr = torch.where(grey, torch.ones_like(spread), spread)
    rc, gc, bc = (maxc - r) / cr, (maxc - g) / cr, (maxc - b) / cr
    rd, gd, bd = rc.double(), gc.double(), bc.double()  # 2.0 + ... and 4.0 + ...: double
    other = torch.where(g == maxc, 2.0 + rd - bd, 4.0 + gd - rd).float()
    h = torch.where(r == maxc, bc - gc, other)
    h = torch.fmod(h.double() / 6.0 + 1.0, 1.0).float()  # float h = fmod(h / 6.0 + 1.0, 1.0)
    hue = torch.where(grey, 0.0, torch.trunc(h.double() * 255.0).clamp(0, 255))
    s = spread / maxc.clamp(min=1)
    sat = torch.where(grey, 0.0, torch.trunc(s.double() * 255.0).clamp(0, 255))
    shift = torch.trunc(factor.double() * 255.0).view(-1, 1, 1)  # np.int32(f * 255) as uint8
    hue = torch.remainder(hue + shift, 256.0)
    # PIL's hsv2rgb
    sector = torch.floor(hue * 6.0 / 255.0)
    frac = (hue * 6.0 / 255.0 - sector).float().double()  # float f
    fs = (sat.float() / 255.0).double()  # float fs
    v = maxc.double()
    p = torch.floor(v * (1.0 - fs) + 0.5).clamp(0, 255)  # C round(): half away from 0
    q = torch.floor(v * (1.0 - fs * frac) + 0.5).clamp(0, 255)
    t = torch.floor(v * (1.0 - fs * (1.0 - frac)) + 0.5).clamp(0, 255)
    sector = torch.remainder(sector, 6).long()
    # each channel takes v, p, q or t by sector (PIL's switch): gather from the four
    values = torch.stack([v, p, q, t]).float()  # (4, N, H, W)
    rgb = values.gather(0, _HSV_SECTORS.to(x.device)[:, sector].view(3, *sector.shape))
    return torch.where((sat == 0)[:, None], x, rgb.transpose(0, 1))


# hsv2rgb's switch: which of (v, p, q, t) = (0, 1, 2, 3) each channel takes in sectors 0..5
_HSV_SECTORS = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]])


def box_blur_radius(sigma: Tensor, passes: int = 3) -> Tensor:
    """The box radius of PIL's ``GaussianBlur(sigma)``: ``passes`` box blurs whose
    composition has standard deviation ``sigma`` (Gwosdek et al. 2011, as PIL computes it)."""
    sigma2 = sigma * sigma / passes
    length = torch.sqrt(12.0 * sigma2 + 1.0)
    whole = torch.floor((length - 1.0) / 2.0)
    part = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2)
    part = part / (6 * (sigma2 - (whole + 1) * (whole + 1)))
    return whole + part


def gaussian_blur(x: Tensor, sigma: Tensor, passes: int = 3) -> Tensor:
    """PIL's ``ImageFilter.GaussianBlur(sigma)``: ``passes`` box blurs of fractional radius
    along rows, then ``passes`` along columns, edge pixels repeated, each rounded to 8 bits.

    A box of radius r = n + f weighs the 2n + 1 pixels around a pixel by 1 / (2r + 1) each
    and the next two by f / (2r + 1); the weights are PIL's 24-bit fixed-point ones, so
    that sums land where PIL's do (a sum within 2^-16 of a rounding boundary may round the
    other way in float32: about one pixel in 10^5)."""
    radius = box_blur_radius(sigma.float(), passes)  # (N,), float32 as PIL computes it
    whole = torch.floor(radius)
    one = float(1 << 24)
    inner = torch.floor(one / (radius * 2 + 1))  # PIL's ww and fw, exact in float32
    edge = torch.floor((one - (whole * 2 + 1) * inner) / 2)
    reach = int(float(whole.max())) + 1  # taps on each side
    offsets = torch.arange(-reach, reach + 1, device=x.device).abs()[None]
    n = whole[:, None]
    tap = torch.where(offsets <= n, inner[:, None], torch.where(offsets == n + 1, edge[:, None], 0))
    tap = (tap / one).view(*tap.shape, 1, 1, 1)  # (N, taps, 1, 1, 1)
    for dim in (-1, -2):
        for _ in range(passes):
            x = torch.floor(_taps_along(x, tap, reach, dim) + 0.5)
    return x


def _taps_along(x: Tensor, tap: Tensor, reach: int, dim: int) -> Tensor:
    """Sum over offsets k of tap[n, k] * x shifted along ``dim`` (edges repeated)."""
    pad = (reach, reach, 0, 0) if dim == -1 else (0, 0, reach, reach)
    padded = F.pad(x, pad, mode="replicate")
    length = x.shape[dim]
    out = padded.narrow(dim, 0, length) * tap[:, 0]
    for k in range(1, tap.shape[1]):
        out.addcmul_(padded.narrow(dim, k, length), tap[:, k])
    return out


def solarize(x: Tensor) -> Tensor:
    """ImageOps.solarize: pixels at or above 128 become 255 - x."""
    return torch.where(x >= SOLARIZE_AT, 255.0 - x, x)
