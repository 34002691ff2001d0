"""Structured outputs (issue 19): validity, decode overhead and time to first token.

- **Validity**: N requests (default 200) across 10 JSON schemas of real shapes (nested objects,
  arrays, enums, bounded numbers, required and optional fields), chat prompts that ask for the
  JSON, temperature 0.7; the share of outputs that parse and validate against their schema
  (jsonschema_rs, else jsonschema, else parse only), constrained and the same requests free.
- **Overhead**: decode tok/s at 1, 8 and 32 concurrent sequences with a JSON schema that cannot
  close within the run (an array of at least 64 objects) against the same requests free
  (ignore_eos), alternating blocks in one run; tok/s over the steps where every sequence decodes.
- **TTFT**: one request with a schema the grammar cache has not seen (compile included), then
  the same schema again (a cache hit).

    .venv/bin/python benchmarks/structured.py --output results/structured.json
    .venv/bin/python benchmarks/structured.py --n 20 --concurrency 1,8 --new-tokens 32   # quick
"""

from __future__ import annotations

import json
import time

from common import base_parser, environment, load_ember, log, print_table, set_threads, write_json

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "email": {"type": "string", "format": "email"}}, "required": ["name", "age"], "additionalProperties": False}
SCHEMAS = {
    "person": PERSON,
    "address": {"type": "object", "properties": {
        "street": {"type": "string", "maxLength": 60}, "city": {"type": "string", "maxLength": 40},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"}, "country": {"enum": ["US", "FR", "DE", "JP"]}},
        "required": ["street", "city", "country"], "additionalProperties": False},
    "product": {"type": "object", "properties": {
        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}, "price": {"type": "number", "minimum": 0,
                                                                              "maximum": 10000},
        "in_stock": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string", "maxLength": 16},
                                                   "maxItems": 5}},
        "required": ["sku", "price", "in_stock"], "additionalProperties": False},
    "order": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1}, "customer": PERSON,
        "items": {"type": "array", "minItems": 1, "maxItems": 4, "items": {"type": "object", "properties": {
            "sku": {"type": "string", "maxLength": 12}, "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
            "required": ["sku", "quantity"], "additionalProperties": False}}},
        "required": ["id", "customer", "items"], "additionalProperties": False},
    "event": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 60}, "date": {"type": "string", "format": "date"},
        "attendees": {"type": "integer", "minimum": 0, "maximum": 100000},
        "kind": {"enum": ["talk", "workshop", "party"]}}, "required": ["title", "date", "kind"],
        "additionalProperties": False},
    "review": {"type": "object", "properties": {
        "rating": {"type": "integer", "minimum": 1, "maximum": 5}, "summary": {"type": "string", "maxLength": 120},
        "pros": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        "cons": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3}},
        "required": ["rating", "summary"], "additionalProperties": False},
    "weather": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40}, "temperature_c": {"type": "number", "minimum": -90, "maximum": 60},
        "conditions": {"enum": ["sunny", "cloudy", "rain", "snow"]},
        "forecast": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
            "day": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
            "high": {"type": "integer", "minimum": -90, "maximum": 60}}, "required": ["day", "high"],
            "additionalProperties": False}}},
        "required": ["city", "temperature_c", "conditions"], "additionalProperties": False},
    "book": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 80}, "authors": {"type": "array", "minItems": 1, "maxItems": 3,
                                                                  "items": {"type": "string", "maxLength": 40}},
        "year": {"type": "integer", "minimum": 1450, "maximum": 2030}, "isbn": {"type": "string",
                                                                                "pattern": "^[0-9]{13}$"}},
        "required": ["title", "authors", "year"], "additionalProperties": False},
    "task": {"type": "object", "properties": {
        "title": {"type": "string", "maxLength": 60}, "priority": {"enum": ["low", "medium", "high"]},
        "done": {"type": "boolean"}, "estimate_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "subtasks": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
            "title": {"type": "string", "maxLength": 40}, "done": {"type": "boolean"}},
            "required": ["title", "done"], "additionalProperties": False}}},
        "required": ["title", "priority", "done"], "additionalProperties": False},
    "recipe": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 60}, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
        "ingredients": {"type": "array", "minItems": 1, "maxItems": 6, "items": {"type": "object", "properties": {
            "item": {"type": "string", "maxLength": 30}, "grams": {"type": "integer", "minimum": 1, "maximum": 2000}},
            "required": ["item", "grams"], "additionalProperties": False}},
        "vegetarian": {"type": "boolean"}},
        "required": ["name", "servings", "ingredients"], "additionalProperties": False},
}
# cannot close within a benchmark run: masks over JSON structure at every step
LONG = {"type": "array", "minItems": 64, "items": {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}},
    "required": ["name", "age", "tags"], "additionalProperties": False}}


def validator():
    try:
        import jsonschema_rs

        return "jsonschema_rs", lambda schema, value: jsonschema_rs.is_valid(schema, value)
    except ImportError:
        pass
    try:
        import jsonschema

        return "jsonschema", lambda schema, value: jsonschema.Draft202012Validator(schema).is_valid(value)
    except ImportError:
        return "parse only", lambda schema, value: True


def validity(llm, n: int, seed: int, max_tokens: int) -> list[dict]:
    from ember import SamplingParams
    from ember.structured import StructuredOutputsParams

    name, valid = validator()
    log(f"validity: {n} requests over {len(SCHEMAS)} schemas, validated with {name}")
    names = [list(SCHEMAS)[i % len(SCHEMAS)] for i in range(n)]
    convs = [[{"role": "user", "content": f"Reply with one JSON object describing a {k}, following this JSON "
                                          f"schema: {json.dumps(SCHEMAS[k])}"}] for k in names]
    rows = []
    for constrained in (True, False):
        params = [SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=seed + i,
                                 structured_outputs=StructuredOutputsParams(json=SCHEMAS[k]) if constrained else None)
                  for i, k in enumerate(names)]
        prompts = [{"prompt_token_ids": llm.encode_chat(c)} for c in convs]
        t0 = time.perf_counter()
        outs = llm.generate(prompts, params)
        seconds = time.perf_counter() - t0
        parsed = ok = 0
        for k, out in zip(names, outs):
            try:
                value = json.loads(out.outputs[0].text)
            except ValueError:
                continue
            parsed += 1
            ok += bool(valid(SCHEMAS[k], value))
        rows.append({"mode": "json schema" if constrained else "free", "requests": n, "parse %": 100 * parsed / n,
                     "valid %": 100 * ok / n, "cut by max_tokens": sum(o.outputs[0].finish_reason == "length"
                                                                     for o in outs),
                     "validator": name, "seconds": seconds,
                     "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
                     # what the cut outputs were doing when max_tokens ran out (their last characters)
                     "cut examples": [{"schema": k, "tail": o.outputs[0].text[-160:]}
                                      for k, o in zip(names, outs) if o.outputs[0].finish_reason == "length"][:8]})
    return rows


def decode_rate(llm, c: int, new_tokens: int, constrained: bool, prompt_ids: list[int]) -> float:
    from ember import SamplingParams
    from ember.structured import StructuredOutputsParams

    engine = llm.engine
    so = StructuredOutputsParams(json=LONG) if constrained else None
    params = SamplingParams(temperature=0.8, max_tokens=new_tokens, ignore_eos=True, seed=1, structured_outputs=so)
    ids = [engine.add_request({"prompt_token_ids": prompt_ids}, params) for _ in range(c)]
    seconds = tokens = 0.0
    while engine.has_unfinished():
        engine.step()
        st = engine.last_step
        if st.num_seqs == c and st.num_scheduled_tokens == c:
            seconds += st.seconds
            tokens += c
    for i in ids:
        engine.release(i)
    return tokens / seconds if seconds else float("nan")


def overhead(llm, concurrency: list[int], new_tokens: int, repeats: int) -> list[dict]:
    prompt_ids = llm.encode_chat([{"role": "user", "content": "List people as JSON."}])
    rows = []
    for c in concurrency:
        free, constrained = [], []
        decode_rate(llm, c, 8, True, prompt_ids)  # warm: compile, executor threads
        for _ in range(repeats):  # alternating blocks: load drift hits both alike
            free.append(decode_rate(llm, c, new_tokens, False, prompt_ids))
            constrained.append(decode_rate(llm, c, new_tokens, True, prompt_ids))
        f, s = sorted(free)[len(free) // 2], sorted(constrained)[len(constrained) // 2]
        rows.append({"concurrency": c, "free tok/s": f, "json schema tok/s": s, "overhead %": 100 * (f - s) / f})
        log(f"C={c}: free {f:.1f} tok/s, json schema {s:.1f} tok/s")
    return rows


def ttft(llm, repeats: int) -> list[dict]:
    from ember import SamplingParams
    from ember.structured import StructuredOutputsParams

    conv = [{"role": "user", "content": "Describe a person as JSON."}]
    cold, warm = [], []
    for r in range(repeats):
        schema = dict(PERSON, description=f"run {r} {time.time()}")  # a text the cache has not seen
        for into in (cold, warm):
            p = SamplingParams(temperature=0, max_tokens=1, structured_outputs=StructuredOutputsParams(json=schema))
            t0 = time.perf_counter()
            llm.chat(conv, p)
            into.append(time.perf_counter() - t0)
    return [{"grammar cache": "cold (compile included)", "ttft ms": 1000 * sorted(cold)[len(cold) // 2]},
            {"grammar cache": "warm", "ttft ms": 1000 * sorted(warm)[len(warm) // 2]}]


def main() -> None:
    p = base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="validity requests (0: skip)")
    p.add_argument("--max-tokens", type=int, default=256, help="per validity request")
    p.add_argument("--concurrency", default="1,8,32", help="overhead: concurrent sequences ('' to skip)")
    p.add_argument("--new-tokens", type=int, default=64, help="overhead: tokens per sequence")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    threads = set_threads(args.threads)
    llm = load_ember(args.dtype.split(",")[0], threads, args.model, max_num_seqs=64)
    out = {"environment": environment(threads), "dtype": args.dtype.split(",")[0]}
    if args.n:
        out["validity"] = validity(llm, args.n, args.seed, args.max_tokens)
        print_table([{k: v for k, v in r.items() if k != "cut examples"} for r in out["validity"]], title="validity")
    concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if concurrency:
        out["overhead"] = overhead(llm, concurrency, args.new_tokens, args.repeats)
        print_table(out["overhead"], title="decode overhead (same run, alternating blocks)")
    out["ttft"] = ttft(llm, args.repeats)
    print_table(out["ttft"], title="time to first token, one request")
    write_json(args.output, out)


if __name__ == "__main__":
    main()
