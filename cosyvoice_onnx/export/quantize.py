"""Dynamic int8 for the weight MatMuls of an fp32 graph (per output channel), as the LM prefill and the flow
estimator use it; the decode graphs use MatMulNBits instead (export/lm.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from onnx import TensorProto

from ..int8 import DEFAULT_WEIGHT_BITS, parse_weight_bits


def quantize_weight_matmuls(src: Path, dst: Path, weight_bits: int = DEFAULT_WEIGHT_BITS,
                            nodes: Sequence[str] | None = None) -> Path:
    """Writes `src` with its MatMuls (all, or the named `nodes`) quantized to int8 into `dst`.

    weight_bits 7 keeps every x86 CPU's int8 sums exact (see cosyvoice_onnx/int8.py); 8 is exact only with VNNI.
    """
    bits = parse_weight_bits(weight_bits)
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        _quantize(src, dst, bits, nodes)
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return Path(dst)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drops the quantizer's advice to pre-process (shape inference and graph fusions): these graphs are already
    fused, their shapes known, and the export prints its own progress."""
    return "pre-processing before quantization" not in record.getMessage()


def _quantize(src: Path, dst: Path, bits: int, nodes: Sequence[str] | None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The contrib ops have no ONNX shape inference, so the quantizer is told that unknown tensors are float.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=bits == 7,
                     op_types_to_quantize=["MatMul"], nodes_to_quantize=list(nodes) if nodes is not None else None,
                     use_external_data_format=False, extra_options={"DefaultTensorType": TensorProto.FLOAT})
