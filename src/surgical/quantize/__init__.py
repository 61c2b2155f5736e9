"""The quantize stage package: ``formats`` (backends, save, reload), ``measure`` (size, memory, speed in a
fresh process) and ``stage`` (``run``: quantize, measure, model card). The pipeline re-verifies the result in
its own ``verify-quantized`` stage; nothing here imports verify."""

from .formats import (
    BACKENDS,
    QMAP_FILE,
    SCHEMES,
    WEIGHTS_FILE,
    QuantizeError,
    check_supported,
    conv1d_to_linear,
    count_quantized_modules,
    has_conv1d,
    load_quantized,
    output_embedding_names,
    quantize_in_place,
    save_quantized,
)
from .measure import (
    compare,
    dir_size_bytes,
    measure,
    measure_here,
    tensor_bytes,
    tokens_per_s,
    weights_memory_bytes,
)
from .stage import QuantizeResult, format_description, model_card, run

__all__ = [
    "BACKENDS", "QMAP_FILE", "SCHEMES", "WEIGHTS_FILE", "QuantizeError", "QuantizeResult", "check_supported",
    "compare", "conv1d_to_linear", "count_quantized_modules", "dir_size_bytes", "format_description",
    "has_conv1d", "load_quantized", "measure", "measure_here", "model_card", "output_embedding_names",
    "quantize_in_place", "run", "save_quantized", "tensor_bytes", "tokens_per_s", "weights_memory_bytes",
]
