"""loraquant: compress LoRA adapters to about 2 bits per weight and serve them packed.

    import loraquant
    q = loraquant.compress(lora_A, lora_B, bits=2.0, scaling=alpha / r)
    y = q.apply(x)              # x @ dW_hat^T from the packed codes
    A_hat, B_hat = q.dequantize()
"""
from . import _core
from ._api import QuantizedLoRA, compress, compress_adapter
from ._core import FormatError

__version__ = _core.build_info()["version"]


def build_info() -> dict:
    """What this build was compiled with: version, compiler, eigen, openmp, cuda."""
    return dict(_core.build_info())


__all__ = ["QuantizedLoRA", "compress", "compress_adapter", "FormatError", "build_info", "__version__"]

from .adapter_file import CompressedAdapter, load, save

__all__ += ["CompressedAdapter", "load", "save"]

from .peft_io import compress_peft, export_peft

_TORCH_API = ("load_adapter", "quantize_peft_model", "PackedLoRALayer")


def __getattr__(name):
    """The torch-side API (loraquant.hf) loads on first use, so numpy-only installs still
    import loraquant (these names stay out of __all__ for the same reason)."""
    if name in _TORCH_API:
        from . import hf
        return getattr(hf, name)
    raise AttributeError(f"module 'loraquant' has no attribute {name!r}")


from .batch import BatchReport, compress_many
from .calibration import Calibration, calibrate

__all__ += ["compress_peft", "export_peft", "compress_many", "BatchReport", "Calibration",
            "calibrate"]
