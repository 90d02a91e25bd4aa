"""`cudnn-fp8`: non-causal self-attention through cuDNN's FP8 SDPA forward (`sdpa_fp8` of `nvidia-cudnn-frontend`).

cuDNN takes Q, K, V in E4M3 with one FP32 descale each (value = code · descale) and writes O in E4M3; on Hopper a
BF16 O is refused (cuDNN allows it only on Blackwell, cuDNN ≥ 9.13). What the kernel computes, per row, with the
softmax online over KV tiles (`reference` below is the same arithmetic in PyTorch):

  S  = (Q8 · K8ᵀ) · q_scale · k_scale / √D      E4M3 products are exact, fp32 accumulation
  P  = exp(S − rowmax S)                          fp32, P ≤ 1
  P8 = e4m3(P · scale_s)                          scale_s = 448, descale_s = 1/448: P's full E4M3 range
  O  = (P8 · V8) · descale_s · v_scale / Σ P      ΣP of the unrounded P
  O8 = e4m3(O · scale_o)                          scale_o multiplies before the cast

`attend` sets scale_o = 1 / (2 · v_scale) and returns O8 · 2 · v_scale in q's dtype. O is a weighted average of
V's rows, but the numerator uses the rounded P8 (up to 2⁻⁴ above P) while ΣP does not, so |O| ≤ (1 + 2⁻⁴) · 448 ·
v_scale: scaled by 1 / (2 · v_scale), |O8| ≤ 238, never saturated, and a power of two leaves the E4M3 rounding what
it would be at v_scale (outside the subnormal range below 2⁻⁵ · v_scale).

Q (and K, V when they come as tensors) is quantised per tensor with `quant.fp8.fp8_window` (scale amax / 448 on the
device); an FP8 KV cache hands its window as an `FP8Window`, read as stored: its data is usually a strided prefix
view of a heads-first [B, H, S, D] buffer, and cuDNN gets those strides (no copy). The descales are device tensors
in the variant pack, so nothing syncs with the host. One graph per (device, B, H, Lq, Lk, D, strides) — the KV window
grows while it fills, so a run builds a few — one cuDNN handle and one workspace per device; the handle runs on
torch's current stream.

Limits (cuDNN's, checked up front): sm_90+, cuDNN ≥ 9.1.0 and not 9.10.0 (the frontend refuses FP8 SDPA forward
there), head_dim a multiple of 16 and at most 128, Q/K/V with the same heads (no GQA), D contiguous.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

import torch

from longlive.model.attention import KV, FP8Window
from longlive.quant import kernels
from longlive.quant.formats import E4M3_MAX, to_e4m3
from longlive.quant.fp8 import fp8_window
from longlive.quant.tensors import FP8Tensor

FP8 = torch.float8_e4m3fn
MIN_CUDNN = 90100  # cuDNN 9.1.0: the first with FP8 SDPA forward (the frontend's own check)
REFUSED_CUDNN = (91000,)  # 9.10.0: the frontend refuses FP8 SDPA forward on it
HEAD_DIM_MULTIPLE, MAX_HEAD_DIM = 16, 128  # cuDNN's FP8 SDPA head dims on Hopper
P_SCALE = E4M3_MAX  # scale_s: P ≤ 1 uses E4M3's whole range
O_HEADROOM = 2.0  # O8 = O / (2 · v_scale): see the module docstring
INSTALL_HINT = "pip install nvidia-cudnn-frontend, or the project's extra: pip install 'longlive[cudnn]'"

# variant-pack uids
_Q, _K, _V, _DESCALE_Q, _DESCALE_K, _DESCALE_V, _DESCALE_S, _SCALE_S, _SCALE_O, _O, _AMAX_O, _AMAX_S = range(1, 13)


# ---------------------------------------------------------------------------------------------------------------
# availability
# ---------------------------------------------------------------------------------------------------------------

_FRONTEND: Any = None  # the `cudnn` module once it has a libcudnn
_READY: set[int] = set()  # CUDA device indices that passed `unavailable`


def _backend_version(cudnn: Any) -> int | None:
    try:
        return int(cudnn.backend_version())
    except Exception:  # the frontend raises when it has no libcudnn ("Unable to find symbol cudnnGetVersion")
        return None


def _loaded_libcudnn() -> str | None:
    """Path of the libcudnn.so this process has loaded (torch's, from its nvidia-cudnn-cu12 wheel), or None."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as f:
            for line in f:
                path = line.split()[-1]
                if os.path.basename(path).startswith("libcudnn.so"):
                    return path
    except OSError:
        return None
    return None


def _adopt_torch_libcudnn(cudnn: Any) -> None:
    """Hand the frontend the libcudnn torch loaded, when its own search (LD_LIBRARY_PATH, this interpreter's
    site-packages, the linker's default path) found none — e.g. torch and the frontend in different prefixes."""
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.version()  # makes torch load its libcudnn
    path = _loaded_libcudnn()
    setter = getattr(getattr(cudnn, "_pybind_module", None), "_set_dlhandle_cudnn", None)
    if path is not None and setter is not None:
        setter(ctypes.CDLL(path)._handle)


def _frontend() -> Any:
    """The `cudnn` module with a libcudnn behind it. ImportError without the package; RuntimeError without the
    library."""
    global _FRONTEND
    if _FRONTEND is None:
        import cudnn  # optional extra `cudnn` (tests/test_layers.py OPTIONAL_EXTRAS)

        if _backend_version(cudnn) is None:
            _adopt_torch_libcudnn(cudnn)
        if _backend_version(cudnn) is None:
            raise RuntimeError(
                f"cudnn-fp8: nvidia-cudnn-frontend {getattr(cudnn, '__version__', '?')} is installed but cannot load "
                "libcudnn (neither its own search nor torch's bundled library found it); install torch's "
                "nvidia-cudnn-cu12 wheel or put the directory of libcudnn.so.9 on LD_LIBRARY_PATH"
            )
        _FRONTEND = cudnn
    return _FRONTEND


def version_string(version: int) -> str:
    """cuDNN's integer version as major.minor.patch (9.x: 90100 → 9.1.0; 8.x: 8907 → 8.9.7)."""
    if version < 10000:
        return f"{version // 1000}.{version % 1000 // 100}.{version % 100}"
    return f"{version // 10000}.{version % 10000 // 100}.{version % 100}"


def _version_reason(version: int) -> str | None:
    if version < MIN_CUDNN:
        return (
            f"cudnn-fp8 needs cuDNN >= {version_string(MIN_CUDNN)} (the first with FP8 SDPA forward), but the loaded "
            f"libcudnn is {version_string(version)}; upgrade the nvidia-cudnn-cu12 wheel (or torch)"
        )
    if version in REFUSED_CUDNN:
        return (
            f"cudnn-fp8: the cuDNN frontend refuses FP8 SDPA forward on cuDNN {version_string(version)}; "
            "use another cuDNN 9 release (upgrade the nvidia-cudnn-cu12 wheel)"
        )
    return None


def _frontend_reason() -> str | None:
    try:
        cudnn = _frontend()
    except ImportError as e:
        return f"cudnn-fp8 needs the nvidia-cudnn-frontend package ({INSTALL_HINT}): {e}"
    except RuntimeError as e:
        return str(e)
    return _version_reason(_backend_version(cudnn) or 0)


def unavailable(device: torch.device | str) -> str | None:
    """Why `cudnn-fp8` cannot run on `device` (no CUDA, a GPU older than sm_90, no frontend or libcudnn, a cuDNN
    without FP8 SDPA forward), or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"cudnn-fp8 needs a CUDA device, but the model is on {device.type}"
    if not torch.cuda.is_available():
        return "cudnn-fp8 needs a CUDA device, but torch sees no GPU"
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index in _READY:
        return None
    major, minor = torch.cuda.get_device_capability(index)
    if major < 9:
        return f"cudnn-fp8 needs an sm_90+ GPU (Hopper); this is {torch.cuda.get_device_name(index)} sm_{major}{minor}"
    reason = _frontend_reason()
    if reason is None:
        _READY.add(index)
    return reason


# ---------------------------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------------------------


def _data(x: KV) -> torch.Tensor:
    return x.data if isinstance(x, FP8Window) else x


def check_inputs(q: torch.Tensor, k: KV, v: KV) -> None:
    """Shapes, dtypes and head_dim against cuDNN's FP8 SDPA limits, before any work (device-independent)."""
    if q.ndim != 4:
        raise ValueError(f"cudnn-fp8 takes q as [B, Lq, H, D], got shape {tuple(q.shape)}")
    B, _, H, D = q.shape
    for name, x in (("k", k), ("v", v)):
        data = _data(x)
        if data.ndim != 4 or data.shape[0] != B or data.shape[2] != H or data.shape[3] != D:
            raise ValueError(
                f"cudnn-fp8: {name} must be [B={B}, Lk, H={H}, D={D}] like q {tuple(q.shape)} (no GQA), "
                f"got {tuple(data.shape)}"
            )
        if isinstance(x, FP8Window):
            if data.dtype != FP8:
                raise ValueError(f"cudnn-fp8: the FP8Window {name} must hold float8_e4m3fn data, got {data.dtype}")
            if x.scale.numel() != 1 or x.scale.dtype != torch.float32:
                raise ValueError(
                    f"cudnn-fp8: the FP8Window {name} needs one float32 scale, got {x.scale.dtype} "
                    f"{tuple(x.scale.shape)}"
                )
        elif not data.is_floating_point():
            raise ValueError(f"cudnn-fp8: {name} must be a floating-point tensor or an FP8Window, got {data.dtype}")
        if data.device != q.device or (isinstance(x, FP8Window) and x.scale.device != q.device):
            raise ValueError(f"cudnn-fp8: {name} is on {data.device} but q is on {q.device}")
    if _data(k).shape[1] != _data(v).shape[1]:
        raise ValueError(f"cudnn-fp8: k and v need the same length, got {_data(k).shape[1]} and {_data(v).shape[1]}")
    if _data(k).shape[1] == 0:
        raise ValueError("cudnn-fp8: the key window is empty (Lk = 0); attention over no keys is undefined")
    if D % HEAD_DIM_MULTIPLE or D > MAX_HEAD_DIM:
        raise ValueError(
            f"cudnn-fp8: head_dim {D} is not supported by cuDNN's FP8 SDPA forward (it needs a multiple of "
            f"{HEAD_DIM_MULTIPLE}, at most {MAX_HEAD_DIM}); use attn=cudnn for this model"
        )


def _check_fp8_layout(name: str, data: torch.Tensor) -> None:
    """cuDNN reads E4M3 operands with D contiguous, 16-byte strides and a 16-byte aligned start."""
    steps = [s for s, n in zip(data.stride()[:3], data.shape[:3], strict=True) if n > 1]  # D's own stride is 1
    if (data.stride(3) != 1 and data.shape[3] > 1) or any(s % 16 for s in steps) or data.data_ptr() % 16:
        raise ValueError(
            f"cudnn-fp8: the E4M3 {name} (shape {tuple(data.shape)}, strides {data.stride()}, storage offset "
            f"{data.storage_offset()}) breaks cuDNN's layout rules: head_dim contiguous, every other stride a "
            "multiple of 16 elements, the first element 16-byte aligned"
        )


def _bhsd_strides(data: torch.Tensor) -> tuple[int, int, int, int]:
    """Strides of a [B, L, H, D] tensor in cuDNN's (B, H, L, D) order; a size-1 dim gets an outermost stride (it
    never steps, and an arbitrary value could look like overlap)."""
    size, stride = data.shape, data.stride()
    outer = max(n * s for n, s in zip(size, stride, strict=True))
    fixed = [s if n > 1 else outer for n, s in zip(size, stride, strict=True)]
    return fixed[0], fixed[2], fixed[1], fixed[3]


# ---------------------------------------------------------------------------------------------------------------
# graphs, handles, buffers
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Graph:
    graph: Any
    workspace: int  # bytes
    amax_s_declared: bool  # the fallback form for a backend that wants the deprecated Amax_S output


_GRAPHS: dict[tuple, _Graph] = {}
_HANDLES: dict[int, Any] = {}
_BUFFERS: dict[int, dict[str, torch.Tensor]] = {}


def _handle(cudnn: Any, device: torch.device) -> Any:
    handle = _HANDLES.get(device.index)
    if handle is None:
        with torch.cuda.device(device):
            handle = _HANDLES[device.index] = cudnn.create_handle()
    return handle


def _buffers(device: torch.device) -> dict[str, torch.Tensor]:
    """Per-device constants (scale_s, descale_s) and the Amax outputs nobody reads."""
    bufs = _BUFFERS.get(device.index)
    if bufs is None:
        bufs = _BUFFERS[device.index] = {
            "scale_s": torch.full((1,), P_SCALE, dtype=torch.float32, device=device),
            "descale_s": torch.full((1,), 1.0 / P_SCALE, dtype=torch.float32, device=device),
            "amax_o": torch.zeros(1, dtype=torch.float32, device=device),
            "amax_s": torch.zeros(1, dtype=torch.float32, device=device),
        }
    return bufs


def _workspace(device: torch.device, nbytes: int) -> torch.Tensor:
    bufs = _buffers(device)
    ws = bufs.get("workspace")
    if ws is None or ws.numel() < nbytes:
        ws = bufs["workspace"] = torch.empty(max(nbytes, 256), dtype=torch.uint8, device=device)
    return ws


def _build(cudnn: Any, device: torch.device, dims: tuple, strides: tuple, declare_amax_s: bool) -> _Graph:
    B, H, Lq, Lk, D = dims
    sq, sk, sv, so = strides
    e4m3, f32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
    g = cudnn.pygraph(
        io_data_type=e4m3, intermediate_data_type=f32, compute_data_type=f32, handle=_handle(cudnn, device)
    )

    def scalar(uid: int, name: str) -> Any:
        return g.tensor(dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=f32, uid=uid, name=name)

    q = g.tensor(dim=[B, H, Lq, D], stride=list(sq), data_type=e4m3, uid=_Q, name="q")
    k = g.tensor(dim=[B, H, Lk, D], stride=list(sk), data_type=e4m3, uid=_K, name="k")
    v = g.tensor(dim=[B, H, Lk, D], stride=list(sv), data_type=e4m3, uid=_V, name="v")
    o, _, amax_s, amax_o = g.sdpa_fp8(
        q=q,
        k=k,
        v=v,
        descale_q=scalar(_DESCALE_Q, "descale_q"),
        descale_k=scalar(_DESCALE_K, "descale_k"),
        descale_v=scalar(_DESCALE_V, "descale_v"),
        descale_s=scalar(_DESCALE_S, "descale_s"),
        scale_s=scalar(_SCALE_S, "scale_s"),
        scale_o=scalar(_SCALE_O, "scale_o"),
        generate_stats=False,
        attn_scale=D**-0.5,
        use_causal_mask=False,
        name="sdpa_fp8",
    )
    o.set_uid(_O).set_output(True).set_dim([B, H, Lq, D]).set_stride(list(so)).set_data_type(e4m3)
    amax_o.set_uid(_AMAX_O).set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    if declare_amax_s:
        amax_s.set_uid(_AMAX_S).set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(f32)
    g.build([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    return _Graph(g, int(g.get_workspace_size()), declare_amax_s)


def _graph(cudnn: Any, device: torch.device, dims: tuple, strides: tuple) -> _Graph:
    key = (device.index, dims, strides)
    entry = _GRAPHS.get(key)
    if entry is None:
        errors = []
        for declare_amax_s in (False, True):  # Amax_S left virtual (the frontend's advice), else declared
            try:
                entry = _build(cudnn, device, dims, strides, declare_amax_s)
                break
            except Exception as e:  # cudnnGraphNotSupportedError, or the frontend's ValueError/RuntimeError
                errors.append(f"{type(e).__name__}: {e}")
        if entry is None:
            B, H, Lq, Lk, D = dims
            again = f"; with Amax_S declared: {errors[1]}" if errors[1] != errors[0] else ""
            raise ValueError(
                f"cudnn-fp8: cuDNN {cudnn.backend_version_string()} (frontend {cudnn.__version__}, "
                f"{torch.cuda.get_device_name(device)}) has no FP8 SDPA forward plan for B={B}, H={H}, Lq={Lq}, "
                f"Lk={Lk}, head_dim={D}, strides (B, H, L, D) q{strides[0]} k{strides[1]} v{strides[2]} "
                f"o{strides[3]}: {errors[0]}{again}"
            )
        _GRAPHS[key] = entry
    return entry


# ---------------------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------------------


def attend_fp8(qw: FP8Window, kw: FP8Window, vw: FP8Window) -> FP8Window:
    """cuDNN's FP8 SDPA on E4M3 windows ([B, L, H, D], checked by `attend`): O in E4M3 [B, Lq, H, D] with its scale
    (2 · v_scale), on torch's current stream, without a host sync."""
    cudnn = _frontend()
    device = qw.data.device
    B, Lq, H, D = qw.data.shape
    out = torch.empty((B, Lq, H, D), dtype=FP8, device=device)
    strides = tuple(_bhsd_strides(t) for t in (qw.data, kw.data, vw.data, out))
    entry = _graph(cudnn, device, (B, H, Lq, kw.data.shape[1], D), strides)
    bufs = _buffers(device)
    out_scale = vw.scale.reshape(1).float() * O_HEADROOM
    pack = {
        _Q: qw.data,
        _K: kw.data,
        _V: vw.data,
        _DESCALE_Q: qw.scale,
        _DESCALE_K: kw.scale,
        _DESCALE_V: vw.scale,
        _DESCALE_S: bufs["descale_s"],
        _SCALE_S: bufs["scale_s"],
        _SCALE_O: torch.reciprocal(out_scale),
        _O: out,
        _AMAX_O: bufs["amax_o"],
    }
    if entry.amax_s_declared:
        pack[_AMAX_S] = bufs["amax_s"]
    handle = _handle(cudnn, device)
    cudnn.set_stream(handle, torch.cuda.current_stream(device).cuda_stream)
    entry.graph.execute(pack, _workspace(device, entry.workspace), handle=handle)
    return FP8Window(out, out_scale)


def attend(q: torch.Tensor, k: KV, v: KV) -> torch.Tensor:
    """Non-causal attention of q [B, Lq, H, D] over k, v [B, Lk, H, D] (tensors or FP8Windows) through cuDNN's FP8
    SDPA; [B, Lq, H, D] in q's dtype (contiguous)."""
    check_inputs(q, k, v)
    if q.device.type != "cuda":
        raise ValueError(f"cudnn-fp8 needs CUDA tensors, but q is on {q.device}; use attn=auto (or math)")
    reason = unavailable(q.device)
    if reason is not None:
        raise RuntimeError(reason)
    if q.shape[1] == 0:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    qw = fp8_window(q)
    kw = k if isinstance(k, FP8Window) else fp8_window(k)
    vw = v if isinstance(v, FP8Window) else fp8_window(v)
    _check_fp8_layout("k", kw.data)
    _check_fp8_layout("v", vw.data)
    with torch.cuda.device(q.device):
        o = attend_fp8(qw, kw, vw)
        # one Triton pass (float(O8) · scale, cast) where `FP8Window.dequantize` makes three
        rows = o.data.view(-1, o.data.shape[-2] * o.data.shape[-1])
        flat = FP8Tensor(data=rows, scale=o.scale, shape=tuple(o.data.shape), granularity="tensor")
        return kernels.dequantize_fp8(flat, q.dtype)


def reference(q: torch.Tensor, k: KV, v: KV, rows: int | None = None) -> torch.Tensor:
    """`attend`'s arithmetic in PyTorch (module docstring), on any device: the same E4M3 windows, S and P in fp32,
    P8 = e4m3(P · 448), O8 = e4m3(O / (2 · v_scale)). It takes the row max over all keys at once; cuDNN's online
    softmax takes it per KV tile, which rounds P8 the same way whenever a row's maximum lies in the first tile.
    `rows` query rows per step (default: about 2²⁵ scores at a time)."""
    check_inputs(q, k, v)
    B, Lq, H, D = q.shape
    qw = fp8_window(q)
    kw = k if isinstance(k, FP8Window) else fp8_window(k)
    vw = v if isinstance(v, FP8Window) else fp8_window(v)
    Lk = kw.data.shape[1]
    qk_scale = qw.scale.float() * kw.scale.float() * D**-0.5
    v_descale = vw.scale.float() / P_SCALE
    out_scale = vw.scale.reshape(1).float() * O_HEADROOM
    inv_out = torch.reciprocal(out_scale)
    rows = rows or max(1, 2**25 // (H * Lk))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for b in range(B):
        kb = kw.data[b].float().transpose(0, 1)  # [H, Lk, D]
        vb = vw.data[b].float().transpose(0, 1)
        for r in range(0, Lq, rows):
            qb = qw.data[b, r : r + rows].float().transpose(0, 1)  # [H, n, D]
            s = torch.matmul(qb, kb.transpose(1, 2)) * qk_scale
            p = torch.exp(s - s.amax(dim=-1, keepdim=True))
            p8 = to_e4m3(p * P_SCALE).float()
            o = torch.matmul(p8, vb) * v_descale / p.sum(dim=-1, keepdim=True)
            o8 = to_e4m3(o * inv_out).float()
            out[b, r : r + rows] = (o8 * out_scale).transpose(0, 1).to(q.dtype)
    return out


__all__ = ["attend", "attend_fp8", "check_inputs", "reference", "unavailable", "version_string"]
