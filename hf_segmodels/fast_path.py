"""The package's fastest CPU inference path: `hf_segmodels.fastest(model)`.

What it does, measured on the CPUs this package is benchmarked on (`benchmarks/bench_fastest.py`, results in
`benchmarks/results/fastest.md`), against the alternatives a user has (eager PyTorch, `torch.compile`, ONNX Runtime
or OpenVINO on the exported graph):

- eager PyTorch in `torch.inference_mode()` with the package's fast kernels (`hf_segmodels.kernels`: Winograd 3x3
  convolutions, folded BatchNorms, SegFormer's merged decoder, and oneDNN linear products where they are measured
  clearly faster on the running CPU; plain eager inference keeps PyTorch's linear kernel). By default nothing is
  compiled and nothing is rebuilt for new input sizes: the only warm-up is each linear product shape's one-time kernel
  measurement (`hf_segmodels.onednn`), a fraction of one forward pass, remembered for the process.
- memory that is reused instead of returned to the operating system: a forward allocates hundreds of MB of
  activations, and every fresh page costs a page fault. On Linux with glibc, `tune_memory_allocator=True` asks the
  allocator to keep freed memory (`mallopt(M_MMAP_MAX, 0)`, `mallopt(M_TRIM_THRESHOLD, 2 GiB)`) and PyTorch to back
  large tensors with transparent huge pages (PyTorch's own `THP_MEM_ALLOC_ENABLE=1`, effective when set before the
  process first allocates a large tensor; set it in the environment to be sure). These are process-wide settings:
  the process keeps its peak memory instead of returning it.

- optionally (`fastest(model, compile=True)`, or `HF_SEGMODELS_FASTEST=compile`), the forward compiled by
  `torch.compile` (inductor) with freezing: the parameters become constants of the graph and the convolution / linear
  weights are pre-packed for oneDNN. It pays off on SegFormer (`bench_fastest.py --with_compile segformer-b0
  --compile_freezing`; inductor's default settings do not), at a one-time cost of tens of seconds per input size
  (`dynamic=False`: sliding windows share one size, so they compile once; torch.compile keeps up to its cache limit
  of sizes). Frozen weights: if a parameter or buffer changes after compilation, the next call compiles again.

The result is a model-like callable: `fastest(model)(pixel_values=...)` gives `model(pixel_values=...)`'s outputs (in
eval mode; equal up to float rounding where a linear product takes the other kernel),
`fastest(model).full_resolution_logits(...)` and every other attribute of the model work as on the model, and
`hf_segmodels.infer_logits(fastest(model), ...)` runs sliding windows through it. `fastest(model)` is cached on the
model: calling it again returns the same object.

One switch for `pipeline("image-segmentation")`, `hf_segmodels.infer_logits` and `examples/evaluate.py`: the
environment variable `HF_SEGMODELS_FASTEST=1` makes `infer_logits` (which the pipeline and evaluate.py run) use
`fastest(model)` (`evaluate.py --fastest` does the same for one run); `HF_SEGMODELS_FASTEST=compile` uses
`fastest(model, compile=True)`.
"""

import ctypes
import ctypes.util
import os
import platform

import torch

from .onednn import measure_kernels

ENVIRONMENT_VARIABLE = "HF_SEGMODELS_FASTEST"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
_memory_tuned = False


def _switch() -> str:
    return os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()


def requested() -> bool:
    """Whether `HF_SEGMODELS_FASTEST` asks for the fastest path (`1`, `true`, `yes`, or `compile`)."""
    return _switch() in ("1", "true", "yes", "compile")


def compile_requested() -> bool:
    """Whether `HF_SEGMODELS_FASTEST=compile` asks for the compiled fastest path (`fastest(model, compile=True)`)."""
    return _switch() == "compile"


def tune_memory() -> bool:
    """Keeps freed memory in the process (glibc) and asks PyTorch for transparent huge pages; returns whether the
    allocator settings could be applied (Linux with glibc). Idempotent."""
    global _memory_tuned
    if _memory_tuned:
        return True
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    _memory_tuned = applied
    return applied


class FastestModel:
    """`model` run in inference mode (eval) with the package's fastest CPU settings; see the module docstring.
    Calls and attributes are the model's."""

    def __init__(self, model: torch.nn.Module, compile: bool = False):
        self.__dict__["model"] = model
        self.__dict__["compile"] = compile
        self.__dict__["_compiled"] = {}  # method name -> (its torch.compile'd version, the weights' state it froze)

    def _weights_state(self) -> tuple:
        """Identifies the weights a compilation froze: each parameter's and buffer's storage and version counter
        (storages alone for inference tensors, which have no version counter)."""
        tensors = (*self.model.parameters(), *self.model.buffers())
        try:
            return tuple((tensor.data_ptr(), tensor._version) for tensor in tensors)
        except RuntimeError:
            return tuple(tensor.data_ptr() for tensor in tensors)

    def _call(self, name: str, *args, **kwargs):
        """The model's method `name` (`forward` for calls), compiled with frozen weights when `compile`."""
        if self.model.training:
            self.model.eval()
        function = self.model if name == "forward" else getattr(self.model, name)
        if not self.compile:
            with torch.inference_mode():
                return function(*args, **kwargs)
        state = self._weights_state()
        if name not in self._compiled or self._compiled[name][1] != state:  # (first call, or weights changed since)
            self._compiled[name] = (torch.compile(function, dynamic=False, options={"freezing": True}), state)
        with torch.no_grad():  # (inductor's freezing needs parameters without autograd, not inference tensors)
            return self._compiled[name][0](*args, **kwargs)

    def __call__(self, *args, **kwargs):
        return self._call("forward", *args, **kwargs)

    def full_resolution_logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's `full_resolution_logits` (B, num_labels, H, W), in inference mode (compiled when `compile`:
        what `infer_logits`, the pipeline and evaluate.py run)."""
        return self._call("full_resolution_logits", pixel_values)

    def full_resolution_semantic_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's `full_resolution_semantic_map` (B, H, W) (MaskFormer), in inference mode (compiled when
        `compile`)."""
        return self._call("full_resolution_semantic_map", pixel_values)

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self.model, name, value)

    def __repr__(self) -> str:
        return f"fastest({self.model.__class__.__name__}{', compile=True' if self.compile else ''})"


def fastest(model: torch.nn.Module, tune_memory_allocator: bool = True, compile: bool = False) -> FastestModel:
    """The fastest CPU inference path of one of our models: a callable with `model(pixel_values=...)`'s signature and
    outputs (eval mode). Cached on the model. `tune_memory_allocator=False` leaves the process's allocator alone.
    `compile=True` runs the forward through `torch.compile` with inductor's freezing (see the module docstring:
    tens of seconds of compilation per input size, faster afterwards on SegFormer)."""
    if isinstance(model, FastestModel):
        if model.compile == compile:
            return model
        model = model.model
    if not hasattr(model, "full_resolution_logits"):
        raise TypeError(f"fastest() takes a model of hf_segmodels, got {type(model).__name__}.")
    key = "_hf_segmodels_fastest_compiled" if compile else "_hf_segmodels_fastest"
    cached = model.__dict__.get(key)
    if cached is None:
        cached = FastestModel(model.eval(), compile=compile)
        model.__dict__[key] = cached
    measure_kernels()  # linear products through the kernel measured faster on this CPU (hf_segmodels.onednn)
    if tune_memory_allocator:
        tune_memory()
    return cached


def from_environment(model):
    """`model`, or the fastest path `HF_SEGMODELS_FASTEST` asks for (`fastest(model)`, or with `compile` the
    compiled one): the one switch `infer_logits` and the pipeline read."""
    return fastest(model, compile=compile_requested()) if requested() else model


__all__ = [
    "ENVIRONMENT_VARIABLE", "FastestModel", "compile_requested", "fastest", "from_environment", "requested",
    "tune_memory",
]  # fmt: skip
