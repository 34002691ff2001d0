"""Build small model files for tests: GGUF the way llama.cpp's converter lays it out, and tokenizers.

`gguf.GGUFWriter` does the file format; what this module adds is the llama.cpp conventions
Ember must undo: tensor names (`blk.N.attn_q.weight`), the Q/K row permutation, and the
tokenizer metadata of a byte-level BPE vocabulary.
"""

from __future__ import annotations

import os

import gguf
import numpy as np
import torch

from ember.loader.tokenizer import byte_alphabet

QT = gguf.GGMLQuantizationType

# Hugging Face per-layer names -> llama.cpp names.
_LAYER = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def llama_cpp_permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of Q/K rows (two halves per head -> interleaved)."""
    shape = weight.shape
    return weight.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_name(hf: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`."""
    base, _, suffix = hf.rpartition(".")
    if base in _GLOBAL:
        return f"{_GLOBAL[base]}.{suffix}"
    _, _, idx, part = base.split(".", 3)
    return f"blk.{idx}.{_LAYER[part]}.{suffix}"


def byte_vocab() -> tuple[list[str], list[int]]:
    """256 byte tokens (GPT-2 byte alphabet) then the special tokens; llama.cpp token types."""
    tokens = list(byte_alphabet().values()) + SPECIAL_TOKENS
    types = [1] * 256 + [3] * len(SPECIAL_TOKENS)  # 1 normal, 3 control
    return tokens, types


def encode(array: np.ndarray, qtype: QT) -> np.ndarray:
    """`array` in GGUF storage for `qtype`: float arrays as is, others as quantized bytes."""
    if qtype == QT.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == QT.F16:
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype)


def add_tensor(writer: gguf.GGUFWriter, name: str, data: np.ndarray, qtype: QT) -> None:
    """Add a tensor already in storage form (`encode`, or raw bytes of the right size)."""
    if data.dtype == np.uint8:
        writer.add_tensor(name, data, raw_dtype=qtype)
    else:
        writer.add_tensor(name, data)


def random_bytes_for(shape: tuple[int, ...], qtype: QT, seed: int = 0) -> np.ndarray:
    """Bytes of the right size for a `shape` tensor of `qtype` (for types nobody will decode)."""
    block, type_size = gguf.constants.GGML_QUANT_SIZES[qtype]
    assert shape[-1] % block == 0
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*shape[:-1], shape[-1] // block * type_size), dtype=np.uint8)


def write_gguf(path: str | os.PathLike, tensors: dict[str, tuple[np.ndarray, QT]], arch: str = "llama",
               metadata: dict | None = None) -> str:
    """A GGUF file with the given (storage array, type) tensors and metadata keys.

    Metadata values: int -> uint32, float -> float32, str -> string, list[str] -> string array,
    list[int] -> int32 array.
    """
    path = os.fspath(path)
    writer = gguf.GGUFWriter(path, arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        else:  # pragma: no cover - test helper misuse
            raise TypeError(f"unsupported metadata value for {key}: {value!r}")
    for name, (data, qtype) in tensors.items():
        add_tensor(writer, name, data, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def llama_metadata(config, arch: str = "llama", with_tokenizer: bool = True) -> dict:
    """The metadata llama.cpp writes for a Llama model with this transformers config."""
    meta = {
        f"{arch}.block_count": config.num_hidden_layers,
        f"{arch}.context_length": config.max_position_embeddings,
        f"{arch}.embedding_length": config.hidden_size,
        f"{arch}.feed_forward_length": config.intermediate_size,
        f"{arch}.attention.head_count": config.num_attention_heads,
        f"{arch}.attention.head_count_kv": config.num_key_value_heads,
        f"{arch}.attention.layer_norm_rms_epsilon": float(config.rms_norm_eps),
        f"{arch}.rope.freq_base": float(_rope_theta(config)),
        f"{arch}.vocab_size": config.vocab_size,
        "general.name": "tiny-test-llama",
    }
    if with_tokenizer:
        tokens, types = byte_vocab()
        assert len(tokens) <= config.vocab_size
        meta.update({
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": tokens.index("<|im_start|>"),
            "tokenizer.ggml.eos_token_id": tokens.index("<|im_end|>"),
        })
    return meta


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return params["rope_theta"]
    return getattr(config, "rope_theta", 10000.0)


def write_llama_gguf(path, model, qtypes: dict[str, QT] | None = None, arch: str = "llama",
                     skip: tuple[str, ...] = (), metadata_overrides: dict | None = None,
                     permute: bool = True) -> str:
    """A transformers Llama model converted as llama.cpp would: names, Q/K permutation, metadata.

    `qtypes` maps GGUF tensor names to a storage type (default F32); `skip` leaves tensors out.
    A type the gguf package cannot quantize (IQ*, K-quants) gets random bytes of the right size:
    only for files that must be rejected before those bytes are decoded.
    """
    config = model.config
    qtypes = qtypes or {}
    tensors = {}
    for hf, tensor in model.state_dict().items():
        if hf == "lm_head.weight" and config.tie_word_embeddings:
            continue
        name = gguf_name(hf)
        if name in skip:
            continue
        array = tensor.detach().to(torch.float32).numpy()
        if permute and name.endswith("attn_q.weight"):
            array = llama_cpp_permute(array, config.num_attention_heads)
        elif permute and name.endswith("attn_k.weight"):
            array = llama_cpp_permute(array, config.num_key_value_heads)
        qtype = qtypes.get(name, QT.F32)
        try:
            data = encode(array, qtype)
        except NotImplementedError:
            data = random_bytes_for(array.shape, qtype)
        tensors[name] = (data, qtype)
    metadata = llama_metadata(config, arch)
    metadata.update(metadata_overrides or {})
    return write_gguf(path, tensors, arch=arch, metadata=metadata)


def tiny_llama(seed: int = 0, tie: bool = False, **overrides):
    """A small random transformers LlamaForCausalLM (GQA, untied head unless asked)."""
    import transformers

    torch.manual_seed(seed)
    kwargs = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=tie)
    kwargs.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    with torch.no_grad():  # norm weights start at exactly 1; make them matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.5 * torch.rand_like(p))
    return model


def write_byte_tokenizer_json(directory) -> None:
    """A tokenizer.json for a byte-level BPE over the 256 byte symbols (no merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(byte_alphabet().values())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(os.path.join(directory, "tokenizer.json"))
