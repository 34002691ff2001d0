"""`int4`: weight-only 4-bit, group-wise (32 inputs per group), asymmetric.

Groups of 32 line up with GGUF's Q4_0/Q4_1 blocks, and the C kernel's grid is Q4_1's:
w = q * scale + minimum, q in 0..15, one fp16 (scale, minimum) per group of 32 inputs of each
output row. So a Q4_0/Q4_1 tensor is repacked from its raw blocks (`pack_quantized`) with no
float step and no loss, and a float weight is quantized min/max onto the same kind of grid.
Two packings, chosen at load:
- for the C kernel (csrc/linear_int4.h), at every batch size: blocks of 8 output rows,
  `block_codes` uint8 [N/8, K/32, 4, 32] in the order of `pack_blocks` (one 32-byte load holds
  4 consecutive codes of each of the 8 rows, twice) and `block_scale_min` fp16
  [N/8, K/32, 2, 8] (8 scales, then 8 minimums); 0.625 bytes per weight. Activations are
  quantized to int8 per group of 32 (`q8.quantize_q8`, llama.cpp's Q8_0) and multiplied as
  integers, 8 rows per instruction (16 under the AVX-512 variants, `vpdpbusd` with VNNI);
- without it (no C compiler, or N not a multiple of 8):
  `aten._convert_weight_to_int4pack_for_cpu`'s layout for `aten._weight_int4pack_mm_for_cpu`,
  whose grid is w = (q - 8) * scale + zero with bf16 (scale, zero) and which wants bf16
  activations (its fp32 path is a slow fallback), so x is cast to bf16 and the result back;
  large batches (prefill) dequantize to x's dtype and use the dense GEMM. torch lays the codes
  out differently on each CPU variant (ATEN_CPU_CAPABILITY: blocks of 32 rows on AVX2; of 64 on
  AVX-512, a shorter last block in row pairs; row pairs on `default`), so nothing here reads
  its bytes by a fixed layout: `unpack_int4` learns where each code went from the packer itself.
The C kernel serves prefill as well: it beats the fp32 GEMM on a dequantized copy.

MixPE's product (../shared/papers/NOTES.md: y = sum_g s_g (sum_{k in g} q_k x_k - z_g sum_{k in g}
x_k), an integer dot per group and one scale per group after it) is this kernel's: per group
of 32, the int4 codes times the int8 activation codes summed as integers, then once per group
scale * d_x times that sum plus minimum * d_x * sum(x codes) (z_g = -minimum / scale). So there
is no separate `mixpe` method; what MixPE adds beyond it is hardware (a mixed-precision
processing element), which a CPU has no counterpart for.
"""

from __future__ import annotations

import ctypes

import functools

import torch
import torch.nn.functional as F

from ember.kernels import native
from ember.kernels.linear.base import LINEAR_METHODS, WeightOnlyLinear, fp32_linear
from ember.kernels.linear.q8 import quantize_q8

KERNEL_DTYPE = torch.bfloat16  # the aten kernel's activations and (scale, zero)
BLOCK_SCALE_DTYPE = torch.float16  # the C kernel's (scale, minimum), as in GGUF's blocks
GROUP = 32
BLOCK_N = 32  # the aten path takes output sizes in multiples of 32
ROWS = 8  # the C kernel's rows per block
ATEN_CENTRE = 8  # the aten grid's code for `zero`


def quantize_int4(weight: torch.Tensor, group: int = GROUP, dtype: torch.dtype = BLOCK_SCALE_DTYPE,
                  centre: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min/max per group -> codes int32 [N, K] in 0..15 and (scale, offset) in `dtype`
    [N, K/group] with w ~= (q - centre) * scale + offset: centre 0 gives the C kernel's
    (scale, minimum), centre 8 aten's (scale, zero).

    Scale and offset are rounded to `dtype` before the codes are chosen, so the codes are the
    nearest ones under the (scale, offset) the kernel will really use."""
    n, k = weight.shape
    if k % group:
        raise ValueError(f"int4 needs the input size ({k}) to be a multiple of the group size {group}")
    w = weight.float().view(n, k // group, group)
    lo, hi = w.amin(-1), w.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-6).to(dtype)
    offset = (lo + centre * scale.float()).to(dtype)
    q = torch.round((w - offset.float()[..., None]) / scale.float()[..., None] + centre).clamp(0, 15)
    return q.to(torch.int32).view(n, k), scale, offset


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """uint8 bytes -> their nibbles, flat: byte b's low nibble at 2b, its high one at 2b + 1."""
    b = packed.reshape(-1)
    return torch.stack([b & 15, b >> 4], dim=-1).reshape(-1)


@functools.cache
def aten_code_order(n: int, k: int) -> torch.Tensor | None:
    """For the codes of an [n, k] weight packed by `aten._convert_weight_to_int4pack_for_cpu`:
    int32 [n * k] (int64 past 2**31 codes), entry row * k + input = the nibble (as `_nibbles`
    numbers them) holding that code; None if the packing is not a placement of the n * k nibbles.
    Cached per shape: a model has a handful.

    The layout depends on the CPU variant torch runs (and on n), so it is learned from the packer
    in this very process: each pass packs one base-16 digit of every code's own position, and
    the nibbles read back spell, for each nibble, the position it came from."""
    size = n * k
    position = torch.arange(size, dtype=torch.int64)
    source = torch.zeros(size, dtype=torch.int64)
    shift = 0
    while shift == 0 or (1 << shift) < size:
        digit = ((position >> shift) & 15).to(torch.int32).view(n, k)
        nib = _nibbles(torch.ops.aten._convert_weight_to_int4pack_for_cpu(digit, 1))
        if nib.numel() != size:
            return None
        source |= nib.to(torch.int64) << shift
        shift += 4
    if int(source.max()) >= size:
        return None
    index = torch.int32 if size < 2 ** 31 else torch.int64
    order = torch.full((size,), -1, dtype=index)
    order[source] = position.to(index)
    return None if bool((order < 0).any()) else order  # n * k sources fill n * k slots: a bijection


def codes_through_kernel(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes int32 [N, K] of an aten-packed weight, recovered through what the aten kernel
    computes rather than its bytes: the identity times the weight with scale 1 and zero 0 is
    q - 8, exact in bf16. K x K x N products: for tests, and for a packing `aten_code_order`
    cannot read."""
    eye = torch.eye(k, dtype=KERNEL_DTYPE)
    scale_zero = torch.stack([torch.ones(k // GROUP, n), torch.zeros(k // GROUP, n)], dim=-1).to(KERNEL_DTYPE)
    w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, packed, GROUP, scale_zero)  # [K, N]
    return (w.float().t() + ATEN_CENTRE).round().to(torch.int32).contiguous()


def unpack_int4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes int32 [N, K] back from `aten._convert_weight_to_int4pack_for_cpu`'s packing, on
    whatever layout torch chose for this CPU (`aten_code_order`)."""
    order = aten_code_order(n, k)
    if order is None:
        return codes_through_kernel(packed, n, k)
    return _nibbles(packed).index_select(0, order).view(n, k).to(torch.int32)


def pack_blocks(q: torch.Tensor, scale: torch.Tensor, minimum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [N, K] in 0..15 and scale, minimum [N, K/32] -> the C kernel's blocks of 8 rows:
    codes uint8 [N/8, G, 4, 32], byte 4r + t of quad pair j holding (row r, input 32g + 8j + t)
    in its low nibble and input 32g + 8j + 4 + t in its high one; (scale, minimum) [N/8, G, 2, 8]."""
    n, k = q.shape
    g = k // GROUP
    qv = q.to(torch.uint8).view(n // ROWS, ROWS, g, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)  # [b, g, j, r, t, half]
    codes = (qv[..., 0] | (qv[..., 1] << 4)).reshape(n // ROWS, g, 4, 32).contiguous()
    sm = torch.stack([scale, minimum]).view(2, n // ROWS, ROWS, g).permute(1, 3, 0, 2).contiguous()
    return codes, sm


def repack_q4(weight) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q4_0/Q4_1 GGMLBlocks weight -> pack_blocks' (codes, scale-minimum) in one C pass
    (csrc/linear.c ember_repack_q4); pack_blocks(*weight.q4_codes()) where the C kernels are
    off, and as the reference tests hold the C pass to."""
    lib = native.load("linear")
    if lib is None:
        return pack_blocks(*weight.q4_codes())
    n, k = weight.shape
    data = weight.data.contiguous()
    codes = torch.empty((n // ROWS, k // GROUP, 4, 32), dtype=torch.uint8)
    sm = torch.empty((n // ROWS, k // GROUP, 2, ROWS), dtype=torch.float16)
    has_min = weight.qtype == "Q4_1"
    lib.ember_repack_q4(ctypes.c_void_p(data.data_ptr()), ctypes.c_long(n), ctypes.c_long(k), ctypes.c_int(has_min),
                        ctypes.c_void_p(codes.data_ptr()), ctypes.c_void_p(sm.data_ptr()),
                        ctypes.c_int(torch.get_num_threads()))
    if not has_min:  # Q4_0: w = d (q - 8), a minimum of -8 d (exact in fp16), as q4_codes gives it
        sm[:, :, 1] = sm[:, :, 0] * -8
    return codes, sm


def unpack_blocks(codes: torch.Tensor, sm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of pack_blocks: codes int32 [N, K], scale and minimum (sm's dtype) [N, K/32]."""
    nb, g = codes.shape[:2]
    c = codes.view(nb, g, 4, ROWS, 4)
    q = torch.stack([c & 15, c >> 4], dim=-1)  # [b, g, j, r, t, half]
    q = q.permute(0, 3, 1, 2, 5, 4).reshape(nb * ROWS, g * GROUP).to(torch.int32)
    s = sm.permute(2, 0, 3, 1).reshape(2, nb * ROWS, g)
    return q, s[0], s[1]


def dequantize_int4(params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight [N, K] of either packing, each on its own grid."""
    if "block_codes" in params:
        q, scale, offset = unpack_blocks(params["block_codes"], params["block_scale_min"])
        centre = 0
    else:
        sz = params["scale_zero"]  # [K/group, N, 2]
        groups, n = sz.shape[0], sz.shape[1]
        q, scale, offset = unpack_int4(params["qweight"], n, groups * GROUP), sz[..., 0].t(), sz[..., 1].t()
        centre = ATEN_CENTRE
    n, k = q.shape
    q = q.float().view(n, k // GROUP, GROUP)
    return ((q - centre) * scale.float()[..., None] + offset.float()[..., None]).view(n, k).to(dtype)


def reference_apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Plain torch for either kernel: dequantize, then F.linear in fp32, on the activations the
    kernel sees (int8 per group for the C kernel; bf16-rounded for the aten kernel)."""
    x2 = x.reshape(-1, x.shape[-1])
    x2 = quantize_q8(x2) if "block_codes" in params else x2.to(KERNEL_DTYPE)
    return fp32_linear(x2, dequantize_int4(params), params, x.dtype).view(*x.shape[:-1], -1)


@LINEAR_METHODS.register("int4")
class Int4Linear(WeightOnlyLinear):
    name = "int4"
    # The tied output head keeps 8 bits: it is a Q8_0 tensor in the GGUF, and 4 bits there cost
    # more perplexity than all 30 layers' projections together (benchmarks/README.md).
    head_method = "int8"

    def __init__(self, use_native: bool | None = None):
        super().__init__()
        self.use_native = native.available() if use_native is None else use_native

    def pack(self, weight, bias, dtype):
        if self.takes_blocks(weight.shape[0]):
            codes, sm = pack_blocks(*quantize_int4(weight))
            return self.add_bias({"block_codes": codes, "block_scale_min": sm}, bias, dtype)
        if weight.shape[0] % BLOCK_N:
            raise ValueError(f"int4 needs the output size ({weight.shape[0]}) to be a multiple of {BLOCK_N}")
        q, scale, zero = quantize_int4(weight, dtype=KERNEL_DTYPE, centre=ATEN_CENTRE)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        params = {"qweight": packed, "scale_zero": torch.stack([scale.t(), zero.t()], dim=-1).contiguous()}
        return self.add_bias(params, bias, dtype)

    def pack_quantized(self, weight, bias, dtype):
        # Q4_0 and Q4_1 are this kernel's grid already: codes and fp16 scales are moved, not recomputed.
        if weight.qtype in ("Q4_0", "Q4_1") and self.takes_blocks(weight.shape[0]):
            codes, sm = repack_q4(weight)
            return self.add_bias({"block_codes": codes, "block_scale_min": sm}, bias, dtype)
        return super().pack_quantized(weight, bias, dtype)

    def takes_blocks(self, rows: int) -> bool:
        return self.use_native and rows % ROWS == 0

    def dequantize(self, params, dtype):
        return dequantize_int4(params, dtype)

    def packed_bytes(self, out_features, in_features, dtype):
        # either packing: half a byte per code, a 16-bit (scale, offset) pair per group of 32
        return out_features * in_features // 2 + out_features * (in_features // GROUP) * 4

    def energy_model(self):
        # int8 activations times 4-bit codes as integer dots; the head stays int8
        return {"weight_dtype": "int4-w4a8", "head_weight_bits": 8}

    def native_weight(self, params, with_bias=True):
        if "block_codes" not in params:
            return None
        c = params["block_codes"]
        return native.weight("int4", c, c.shape[0] * ROWS, c.shape[1] * GROUP, sm=params["block_scale_min"],
                             bias=params.get("bias") if with_bias else None)

    def kernel_takes_large_batches(self, params):
        # Integer dots at 8 rows per instruction outrun the fp32 GEMM on a dequantized copy
        # at every batch size (benchmarks/README.md, "int4 kernel").
        return "block_codes" in params and native.available()

    def fallback(self, x2, params):
        if "block_codes" in params:  # packed for a C kernel that is not here after all
            return F.linear(x2, dequantize_int4(params, x2.dtype))
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(KERNEL_DTYPE), params["qweight"], GROUP,
                                                          params["scale_zero"])
