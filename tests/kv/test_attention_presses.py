"""Attention-scored presses against the oracle: per-entry scores computed from transformers'
own attention weights (eager attention, `output_attentions=True`) and hidden states for the
same model and prompt, by kvpress's formulas. Ember's scores come from what the serving path
holds: the paged cache after a real prefill, and the prompt's last queries re-run over it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ember import LLM, SamplingParams
from ember.kv.press import KV_PRESSES
from ember.kv.press.window import observe_window

LAYERS = (0, 13, 29)
PROMPT_TOKENS = 300
REL_TOL = 1e-4  # of the largest score; fp32 on both sides (measured <= 6.4e-7, kept sets identical)


@pytest.fixture(scope="module")
def prompt_ids(ember_lm, topics_text):
    return ember_lm.tokenizer.encode(topics_text[3000:12000])[:PROMPT_TOKENS]


@pytest.fixture(scope="module")
def ember_side(ember_lm, prompt_ids):
    """The prompt prefilled by the engine (chunked: 128 tokens a step) and its cache."""
    llm = LLM(loaded=ember_lm, kv_cache_tokens=1024, threads=2, max_num_batched_tokens=128)
    engine = llm.engine
    rid = engine.add_request({"prompt_token_ids": prompt_ids}, SamplingParams(max_tokens=2, ignore_eos=True))
    seq = engine.groups[rid][0]
    while not seq.output_token_ids:
        engine.step()
    table = torch.tensor(seq.block_ids)
    cache = [engine.kv_cache.gather(layer, table, len(prompt_ids)) for layer in LAYERS]
    total = len(prompt_ids)
    windows = {n: observe_window(engine.model, engine.kv_cache, prompt_ids[total - n:], total - n, total, seq.block_ids)
               for n in (1, 64, total)}
    while engine.has_unfinished():
        engine.step()
    engine.release(rid)
    return cache, windows


@pytest.fixture(scope="module")
def hf_side(hf_model, prompt_ids):
    before = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf_model(torch.tensor([prompt_ids]), output_attentions=True, output_hidden_states=True,
                           use_cache=True)
    finally:
        hf_model.set_attn_implementation(before)
    return out


def group_mean(scores, num_kv_heads):  # [H, T] -> [Hkv, T]
    return scores.view(num_kv_heads, -1, scores.shape[-1]).mean(1)


@torch.no_grad()
def reference_scores(name, hf_model, out, layer):
    """kvpress's score for this press, from transformers' tensors ([Hkv, T])."""
    attn = out.attentions[layer][0].float()  # [H, T, T]
    keys = out.past_key_values.layers[layer].keys[0].float()  # [Hkv, T, D] after RoPE
    values = out.past_key_values.layers[layer].values[0].float()
    hkv, total, d = keys.shape
    if name == "snapkv":
        w = attn[:, -64:, :-64].mean(1)
        w = group_mean(F.avg_pool1d(w[None], 5, padding=2, stride=1)[0], hkv)
        return F.pad(w, (0, 64), value=float(w.max()) + 1)
    if name == "tova":
        w = attn[:, -1, :-1].mean(0, keepdim=True).repeat(hkv, 1)
        return F.pad(w, (0, 1), value=float(w.max()) + 1)
    if name == "observed":
        return group_mean(attn.sum(1) / torch.arange(total, 0, -1), hkv)
    assert name == "expected-attention"
    module = hf_model.model.layers[layer]
    h = module.input_layernorm(out.hidden_states[layer][0])[4:]
    q = module.self_attn.q_proj(h).view(h.shape[0], -1, d).transpose(0, 1)  # [H, n, D] before RoPE
    mu = q.mean(1)
    c = q - mu[:, None]
    cov = torch.einsum("hni,hnj->hij", c, c) / q.shape[1]
    cos, sin = hf_model.model.rotary_emb(mu, torch.arange(total, total + 512)[None])
    cos, sin = cos[0], sin[0]
    p = torch.zeros(d, d)
    p[d // 2:, :d // 2], p[:d // 2, d // 2:] = torch.eye(d // 2), -torch.eye(d // 2)
    rot = (cos[:, :, None] * torch.eye(d) + sin[:, :, None] * p).mean(0)
    mu, cov = mu @ rot.T, rot @ cov @ rot.T
    k = keys[:, 4:].repeat_interleave(q.shape[0] // hkv, 0)  # [H, n, D]
    logits = torch.einsum("hd,hnd->hn", mu, k) / d ** 0.5 + torch.einsum("hni,hij,hnj->hn", k, cov, k) / d / 2
    w = group_mean(logits.softmax(-1), hkv) * values[:, 4:].norm(dim=-1)
    return F.pad(w, (4, 0), value=float(w.max()) + 1)


WINDOW = {"snapkv": 64, "tova": 1, "observed": PROMPT_TOKENS, "expected-attention": PROMPT_TOKENS}


@pytest.mark.parametrize("name", list(WINDOW))
def test_scores_match_transformers_attention(name, ember_side, hf_side, hf_model):
    """Every layer checked: Ember's per-KV-head scores equal the oracle's within REL_TOL of the
    largest score, and the entries kept at 50% (one set per layer from the head-mean score)
    agree but for near ties."""
    cache, windows = ember_side
    press = KV_PRESSES.create(name, 0.5)
    assert press.window(PROMPT_TOKENS) == WINDOW[name]
    window = windows[WINDOW[name]]
    for i, layer in enumerate(LAYERS):
        keys, values = cache[i]
        ours = press.score(layer, keys, values, window)
        ref = reference_scores(name, hf_model, hf_side, layer)
        assert ours.shape == ref.shape == (keys.shape[1], PROMPT_TOKENS)
        err = (ours - ref).abs().max() / ref.abs().max()
        assert err < REL_TOL, f"{name} layer {layer}: max error {err:.2e} of the largest score"
        kept = set(press.select(layer, keys, values, PROMPT_TOKENS // 2, window).tolist())
        ref_kept = set(ref.mean(0).topk(PROMPT_TOKENS // 2).indices.tolist())
        assert len(kept ^ ref_kept) <= 2, f"{name} layer {layer}: kept sets differ in {len(kept ^ ref_kept)}"


@torch.no_grad()
def test_window_queries_are_the_prompts_own(ember_side, hf_side, hf_model):
    """The re-run window's queries before RoPE equal transformers' q_proj of the same tokens'
    hidden states (so the window reproduces the prefill, not an approximation of it)."""
    _, windows = ember_side
    window = windows[64]
    for layer in LAYERS:
        module = hf_model.model.layers[layer]
        h = module.input_layernorm(hf_side.hidden_states[layer][0][-64:])
        ref = module.self_attn.q_proj(h).view(64, -1, 64)
        ours = window.prerope_queries(layer)
        assert torch.allclose(ours, ref, atol=1e-3 * float(ref.abs().max()))
