"""Export of the speech-token LM as two ONNX graphs, `lm_prefill` and `lm_decode`, in fp32, fp16 or int8.

The graphs are built from the module's weights by export/lm_graph.py (their inputs and outputs are described
there); fp16 and int8 are derived from the fp32 files.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from ..config import ModelConfig
from ..int8 import DEFAULT_WEIGHT_BITS
from ..onnx_backend.lm import DECODE, PREFILL, graph_path
from ..plan import EXPORT_PRECISIONS
from ..torch_backend.llm import CosyVoice3LM
from .lm_graph import MAX_POSITIONS, build_decode, build_decode_batch, build_prefill
from .quantize import quantize_weight_matmuls

# Protobuf cannot hold 2 GiB; the real prefill graph is ~2.0 GB, so switch to one `.onnx.data` file well before.
EXTERNAL_DATA_BYTES = 1 << 30
# int8, chosen by speed on the real-size LM (2-core AVX-512 VNNI CPU), per graph: the decode's one-row
# MatMuls run fastest as MatMulNBits (8-bit weights in blocks of 128 along the input axis, symmetric, int8
# activations at accuracy_level 4): 9.4 ms/token vs 10.3 for dynamic per-channel int8, with 0.6x its logits
# error (blocks of 32: 10.5 ms, 0.4x). The prefill's 180-row MatMuls run 1.7x faster as dynamic per-channel
# int8 (MLAS int8 GEMM) than as MatMulNBits.
INT8_DECODE_BLOCK_SIZE = 128
INT8_DECODE_ACCURACY_LEVEL = 4


def save_graph(model: onnx.ModelProto, path: Path) -> Path:
    """Weights inline when small, else in `<name>.onnx.data` next to it; ORT finds either from the path."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def _export_fp32(lm: CosyVoice3LM, out_dir: Path, max_positions: int) -> list[Path]:
    written = []
    for base, build in ((PREFILL, build_prefill), (DECODE, build_decode)):
        written.append(save_graph(build(lm, max_positions), graph_path(out_dir, base)))
    return written


def _convert_fp16(src: Path, dst: Path, int8_weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    """Every float weight, the RoPE tables and the cache in fp16; logits are cast back to float32.

    Every op of these graphs has an fp16 CPU kernel, and the RoPE tables were computed in fp32 before rounding,
    so no angle loses its phase: logits stay within 0.5% of their spread at 3000 positions (tiny model) and
    within 0.005 of fp32 at the real size.
    """
    model = onnx.load(str(src))
    graph = model.graph
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float16"), tensor.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    logits = next(value for value in graph.output if value.name == "logits")
    logits.type.tensor_type.elem_type = TensorProto.FLOAT
    producer = next(node for node in graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "logits_fp16"
    graph.node.append(helper.make_node("Cast", ["logits_fp16"], ["logits"], name="logits/to_fp32",
                                       to=TensorProto.FLOAT))
    return save_graph(model, dst)


def _quantize_dynamic(src: Path, dst: Path, int8_weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    return quantize_weight_matmuls(src, dst, int8_weight_bits)


def _quantize_nbits(src: Path, dst: Path, int8_weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    """int8_weight_bits does not apply: MatMulNBits multiplies int8 blocks without saturating on any CPU."""
    from onnxruntime.quantization import matmul_nbits_quantizer

    quantizer = matmul_nbits_quantizer.MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=8, block_size=INT8_DECODE_BLOCK_SIZE, is_symmetric=True,
        accuracy_level=INT8_DECODE_ACCURACY_LEVEL)
    # It logs two INFO lines per MatMul; the export prints its own progress.
    logger = logging.getLogger(matmul_nbits_quantizer.__name__)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        quantizer.process()
    finally:
        logger.setLevel(level)
    return save_graph(quantizer.model.model, dst)


CONVERTERS = {"fp16": {PREFILL: _convert_fp16, DECODE: _convert_fp16},
              "int8": {PREFILL: _quantize_dynamic, DECODE: _quantize_nbits}}


def export_lm(module: CosyVoice3LM, cfg: ModelConfig, out_dir: Path, precision: str = "fp32",
              fp32_paths: Sequence[Path] | None = None, max_positions: int = MAX_POSITIONS,
              int8_weight_bits: int = DEFAULT_WEIGHT_BITS) -> list[Path]:
    """Writes `lm_prefill` and `lm_decode` in one precision and returns their paths.

    fp16 and int8 are converted from the fp32 graphs `fp32_paths` (prefill, decode) when given, e.g. the ones
    this export run has just written; otherwise from an fp32 build in a scratch folder, so each call writes only
    the files of the precision asked for. int8_weight_bits: the prefill's int8 weight width (cosyvoice_onnx/int8.py).
    """
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(EXPORT_PRECISIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm = module.eval()
    if precision == "fp32":
        return _export_fp32(lm, out_dir, max_positions)
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        sources = fp32_paths or _export_fp32(lm, Path(scratch), max_positions)
        return [CONVERTERS[precision][base](fp32, graph_path(out_dir, base, precision), int8_weight_bits)
                for base, fp32 in zip((PREFILL, DECODE), sources)]


def export_lm_batch(module: CosyVoice3LM, out_dir: Path, precisions: Sequence[str], source_sha256: str,
                    max_positions: int = MAX_POSITIONS) -> list[Path]:
    """Writes the optional batched decode graph (`lm_decode_batch[.int8|.fp16].onnx`) per precision.

    It is a separate file beside the export, never listed in the manifest, so an export without it stays
    byte-identical; `source_sha256` (the LM checkpoint's, as the manifest records it) goes into its metadata so
    a batched graph left over from other weights is refused when loaded (onnx_backend/lm_batch.py).
    """
    from ..onnx_backend.lm_batch import SOURCE_KEY, batch_graph_name

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_decode_batch(module.eval(), max_positions)
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, SOURCE_KEY: source_sha256})
    written = []
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        fp32 = save_graph(model, Path(scratch) / batch_graph_name("fp32"))
        del model
        for precision in precisions:
            target = out_dir / batch_graph_name(precision)
            if precision == "fp32":
                written.append(save_graph(onnx.load(str(fp32)), target))
            else:
                # The batched step's MatMuls see a few rows, like the single decode's one: its int8 scheme fits.
                written.append(CONVERTERS[precision][DECODE](fp32, target))
    return written


def export_batch_decode(model_dir: Path, out_dir: Path | None = None, precisions: str | Sequence[str] = "fp32",
                        llm_variant: str = "base", progress=print) -> list[Path]:
    """`cosyvoice-onnx export --batch-decode`: the batched decode graphs of a model folder into its export
    folder (default MODEL/onnx), whose manifest must already name the same LM checkpoint."""
    import torch

    from ..errors import ExportError
    from ..hash_cache import HashCache
    from ..manifest import read_manifest
    from ..model_files import inspect_model_dir
    from ..onnx_backend.loader import default_export_dir
    from ..plan import parse_precisions
    from ..torch_backend.loader import load_module

    files = inspect_model_dir(model_dir, llm_variant)
    out = Path(out_dir) if out_dir else default_export_dir(files)
    source = read_manifest(out).get("sources", {}).get("llm", {}).get("sha256")
    if not source:
        raise ExportError(f"{out}: its manifest records no LM checkpoint; run `cosyvoice-onnx export` first")
    if HashCache.in_folder(out).sha256(files.llm) != source:
        raise ExportError(f"{out} was exported from another LM checkpoint than {files.llm.name} (--llm {llm_variant}); "
                          "export the batched graph with the --llm the export was made with")
    torch.set_grad_enabled(False)
    progress(f"[lm batch] exporting the batched decode graph at {', '.join(parse_precisions(precisions))}")
    paths = export_lm_batch(load_module(files, "lm"), out, parse_precisions(precisions), source)
    progress(f"[lm batch] wrote {', '.join(p.name for p in paths)}")
    return paths
