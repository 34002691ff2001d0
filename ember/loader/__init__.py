"""Load a model and its tokenizer from a GGUF file or a Hugging Face directory, offline."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ember.kernels.attention import get_attention_backend
from ember.kernels.linear import get_linear_method
from ember.config import DTYPES
from ember.loader.auto import resolve_auto
from ember.loader.default_model import default_model_path
from ember.loader.errors import ModelLoadError
from ember.loader.tokenizer import EmberTokenizer
from ember.models import MODELS, ModelConfig


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: EmberTokenizer
    config: ModelConfig
    path: str
    source_format: str  # "gguf" or "hf"
    linear: str = "dense"  # the projections' LinearMethod
    auto_notes: tuple[str, ...] = ()  # what `auto` options chose and why (loader/auto.py)


def resolve_model_path(model: str | None) -> str:
    path = default_model_path() if model is None else os.path.expanduser(model)
    if not os.path.exists(path):
        raise ModelLoadError(f"model not found: {path}")
    return path


def read_model_config(path: str) -> tuple[ModelConfig, str]:
    config, fmt, _ = describe_model(path)
    return config, fmt


def describe_model(path: str) -> tuple[ModelConfig, str, set[str]]:
    """The model's shape, its format ("gguf" or "hf") and its projections' storage types (GGUF
    type names; empty for a Hugging Face directory), read without loading tensors."""
    if os.path.isdir(path):
        from ember.loader import hf_dir
        return hf_dir.read_config(path), "hf", set()
    from ember.loader.gguf import GGUFFile
    gguf_file = GGUFFile(path)
    return gguf_file.model_config(), "gguf", gguf_file.projection_types()


def dtype_name(dtype: torch.dtype | str) -> str:
    """A dtype as config.DTYPES names it ("fp32", "bf16"), or "auto"; a bad one raises ValueError."""
    if isinstance(dtype, torch.dtype):
        names = [name for name, dt in DTYPES.items() if dt == dtype]
        if not names:
            raise ValueError(f"dtype {dtype} is not one of: auto, fp32, bf16")
        return names[0]
    if dtype != "auto" and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of: auto, fp32, bf16")
    return dtype


def load_model(model: str | None = None, dtype: torch.dtype | str = torch.float32, linear: str = "dense",
               attention: str = "torch", progress: bool = False, quantizer: str = "rtn",
               calibration_tokens: int = 8192) -> LoadedModel:
    """`dtype`: a torch dtype or a name ("fp32", "bf16"); `linear`: a LinearMethod's name.
    Either may be "auto", resolved from the file's storage and this CPU (loader/auto.py); the
    LoadedModel says what was chosen and why. `quantizer`: "rtn" (each method's own
    quantization at packing) or "gptq" (quant/gptq.py: calibrated on `calibration_tokens` of
    the evaluation text's tail, layer by layer; progress on stderr) or "gptq-mse" (the same,
    each uniform group's range searched for the least squared error)."""
    if quantizer not in ("rtn", "gptq", "gptq-mse"):
        raise ValueError(f"quantizer {quantizer!r} is not one of: rtn, gptq, gptq-mse")
    if quantizer != "rtn":
        from ember.quant.gptq import grid_for
        grid_for(get_linear_method(linear))  # a method GPTQ can't serve fails before loading
    path = resolve_model_path(model)
    if os.path.isdir(path):
        from ember.loader import hf_dir
        config = hf_dir.read_config(path)
        tokenizer = EmberTokenizer.from_dir(path)
        weights_iter, total, fmt, stored = hf_dir.iter_weights(path, torch.float32), None, "hf", set()
    else:
        from ember.loader.gguf import GGUFFile
        gguf_file = GGUFFile(path)
        config = gguf_file.model_config()
        tokenizer = EmberTokenizer.from_gguf_metadata(gguf_file.metadata)
        weights_iter, total, fmt = gguf_file.weights(config, torch.float32, keep_blocks=True), gguf_file.num_tensors(), "gguf"
        stored = gguf_file.projection_types()
        del gguf_file  # with weights_iter below: the reader and its metadata go before packing
    resolved = resolve_auto(linear, dtype_name(dtype), fmt, stored)
    linear, dtype = resolved.linear, DTYPES[resolved.dtype]
    if progress:
        from tqdm import tqdm
        weights_iter = tqdm(weights_iter, total=total, desc=f"loading {os.path.basename(path)}", unit="tensor", leave=False)
    weights = dict(weights_iter)
    del weights_iter  # drops the iterator's hold on the file's tensors before packing
    body = get_linear_method(linear if quantizer == "rtn" else "dense")  # GPTQ needs the float weights
    net = MODELS.create(config.architecture, config, body, get_attention_backend(attention),
                        dtype=dtype, lm_head_method=get_linear_method("dense"))
    try:
        net.load_weights(weights)
    except ValueError as exc:  # missing tensors, shapes the config does not expect: the file's fault
        raise ModelLoadError(str(exc)) from exc
    net.eval()
    if quantizer != "rtn":
        from ember.eval.perplexity import calibration_record, calibration_windows, default_eval_text
        from ember.quant.gptq import calibrate
        text = default_eval_text()
        windows, start = calibration_windows(tokenizer, text, calibration_tokens)
        calibrate(net, get_linear_method(linear), windows, search=quantizer == "gptq-mse")
        net.calibration = calibration_record(text, start)
    return LoadedModel(net, tokenizer, config, path, fmt, linear, resolved.notes)


__all__ = ["LoadedModel", "ModelLoadError", "describe_model", "dtype_name", "load_model", "read_model_config", "resolve_model_path", "default_model_path"]
