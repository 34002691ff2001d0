"""Relative K/V error of XQuant's latent quantization against per-token and KIVI-style K/V
quantization, from the real layer inputs X of one 256-token pydoc window (all in float64 through
ember/kv/codecs/xquant_ref.py). Prints per layer; the figures are in benchmarks/README.md, "XQuant".

    .venv/bin/python benchmarks/xquant_kv_error.py
"""
import torch
from ember.loader import default_model_path, load_model
from ember.models.llama import rms_norm
from ember.kernels.attention import AttentionMetadata
from ember.kv.codecs.xquant import kv_weights
from ember.kv.codecs import xquant_ref as ref
lm = load_model(default_model_path(), dtype=torch.float32)
m, cfg = lm.model, lm.model.cfg
from pydoc_data.topics import topics
ids = torch.tensor(lm.tokenizer.encode("\n\n".join(topics.values())[5000:12000])[:256])
xs = []
hooks = [l.register_forward_pre_hook(lambda mod, a: xs.append(rms_norm(a[0], mod.input_norm, mod.cfg.rms_norm_eps))) for l in m.layers]
m(ids, torch.arange(len(ids)), AttentionMetadata.no_cache([len(ids)]))
for h in hooks: h.remove()
for L in (0, 5, 15, 29):
    w, b = kv_weights(m, L); u, s, vh = ref.svd(w)
    lat = xs[L].double() @ u
    mag = lat.abs().amax(0)
    print(L, "S[:4]", [round(float(x),1) for x in s[:4]], "latent absmax top ch", [round(float(x),1) for x in mag[:6]], "median", round(float(mag.median()),2))
    kv = xs[L].double() @ w.double()
    for bits, g in ((4, 32), (4, 16), (2, 32)):
        lq = ref.fake_quant(lat, bits, g)
        e = ((lq - lat) @ (s[:, None] * vh)).norm() / kv.norm()
        # per-token KV-space quantization (z = latent*S), and direct per-token K/V groups, for comparison
        z = lat * s; ez = ((ref.fake_quant(z, bits, g) - z) @ vh).norm() / kv.norm()
        ekv = (ref.fake_quant(kv, bits, g) - kv).norm() / kv.norm()
        print(f"   b{bits} g{g}: rel KV err latent {float(e):.4f}  z=latent*S {float(ez):.4f}  K,V per token {float(ekv):.4f}")
print("KIVI-style (keys per channel over 16-token blocks, values per token g32) vs latent, 4 bits:")
for L in (0, 5, 15, 29):
    w, b = kv_weights(m, L); u, s, vh = ref.svd(w)
    x = xs[L].double(); kv = x @ w.double(); n = kv.shape[0] // 16 * 16
    k, v = kv[:n, :192], kv[:n, 192:]
    kb = k.reshape(-1, 16, 192).transpose(1, 2)  # per channel over 16 tokens
    kq = ref.fake_quant(kb, 4, 16).transpose(1, 2).reshape(n, 192)
    vq = ref.fake_quant(v, 4, 32)
    e_kivi_k = (kq - k).norm() / k.norm(); e_kivi_v = (vq - v).norm() / v.norm()
    lat = ref.fake_quant(x[:n] @ u, 4, 32) @ (s[:, None] * vh)
    e_xq_k = (lat[:, :192] - k).norm() / k.norm(); e_xq_v = (lat[:, 192:] - v).norm() / v.norm()
    print(f"  layer {L}: K err kivi {float(e_kivi_k):.4f} xquant {float(e_xq_k):.4f} | V err kivi {float(e_kivi_v):.4f} xquant {float(e_xq_v):.4f}")
