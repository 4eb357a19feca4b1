"""prompt_build: compile a prompt variant's blocks into one system prompt, strictly, and hash it.

Input: {"variant_id": ID, "vars": {name: text}, "record": true}. The variant (a
`prompt_variant` span: metadata.family, metadata.block_ids, metadata.vars = {name: default or
null}) and each of its blocks (`prompt_block` spans: `content` text, metadata.priority) are
read verified (hash, signature, trusted key), and only from the caller's tenant or the
system's. Blocks are sorted by metadata.priority, highest first (doctrine 120 > product 100 >
app 90 > task 70; a tie keeps the variant's order), joined with a blank line, and every
`{{ name }}` in them is replaced by the variable's text in one pass (a value is never scanned
again). A variable with no value is an error naming it, never an empty string; a variable the
variant does not declare is refused. compiled_hash = BLAKE3 of the compiled text's UTF-8
bytes (the golden vectors in tests/vectors/prompts.json pin all of this). While the
prompt_circuit_breaker policy's temporary "synthesize now" block for the variant's family is
unexpired in the caller's tenant, it is added to the blocks (metadata.temporary).

Output: {"ok", "compiled", "compiled_hash", "build_id", "variant_id", "variant_seq",
"family", "variant_metadata", "blocks": [{"id", "seq", "priority"}] (in the compiled
order), "error": {"code", "message", "where"}}.
With "record": true (the default) the `prompt_build` span is appended (once per variant
version, vars and tenant: its id is derived from them); with false it is returned as
"span" for the caller (the runner appends it after the model answered).
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000011"
NAME = "prompt_build"

NAME_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
NAME_REST = NAME_FIRST + "0123456789"
HEX = "0123456789abcdef"
MAX_BLOCKS = 64
#: The latest unexpired temporary block of a family in the caller's tenant (the
#: prompt_circuit_breaker policy's "synthesize now"): added to every build of the family.
OVERRIDE = (
    "SELECT h.id::text AS id FROM ledger.span_heads h "
    "JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = 'prompt_block' AND h.tenant_id = %(tenant)s AND NOT h.is_deleted "
    "AND r.metadata->>'family' = %(family)s AND r.metadata->'temporary' = 'true'::jsonb "
    "AND r.at + make_interval(secs => CASE WHEN jsonb_typeof(r.metadata->'ttl_s') = 'number' "
    "THEN least((r.metadata->>'ttl_s')::float8, 86400) ELSE 0 END) > now() "
    "ORDER BY h.position DESC LIMIT 1"
)


def fail(code, message, where=None):
    return {"ok": False, "error": {"code": code, "message": message, "where": where}}


def is_uuid(value):
    if not isinstance(value, str) or len(value) != 36:
        return False
    for i, c in enumerate(value.lower()):
        if i in (8, 13, 18, 23):
            if c != "-":
                return False
        elif c not in HEX:
            return False
    return True


def valid_name(name):
    if not name or len(name) > 64 or name[0] not in NAME_FIRST:
        return False
    return all(c in NAME_REST for c in name)


def interpolate(text, values, where):
    """(text with every {{ name }} replaced, None) or (None, error)."""
    out = []
    i = 0
    while True:
        j = text.find("{{", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out), None
        k = text.find("}}", j + 2)
        if k < 0:
            return None, fail("PROMPT_TEMPLATE_INVALID", "'{{' at offset " + str(j) +
                              " is never closed with '}}'", where)
        name = text[j + 2:k].strip()
        if not valid_name(name):
            return None, fail("PROMPT_TEMPLATE_INVALID", "'{{" + text[j + 2:k][:40] +
                              "}}' at offset " + str(j) + " is not a variable name (a letter "
                              "or '_', then letters, digits or '_')", where)
        value = values.get(name)
        if value is None:
            return None, fail("PROMPT_VARIABLE_MISSING", "variable '" + name + "' has no "
                              "value: pass it in vars or give it a default in the variant's "
                              "metadata.vars", where + ": {{" + name + "}}")
        out.append(text[i:j])
        out.append(value)
        i = k + 2


def compile_blocks(blocks, values):
    """blocks: [{"id", "content", "priority"}] in the variant's order; values: {name: text}.
    (compiled text, None) or (None, error). Pure: tests/vectors/prompts.json runs this."""
    order = sorted(range(len(blocks)), key=lambda n: (-blocks[n]["priority"], n))
    parts = []
    for n in order:
        text, error = interpolate(blocks[n]["content"], values, "block " + blocks[n]["id"])
        if error is not None:
            return None, error
        parts.append(text)
    return "\n\n".join(parts), None


def merge_vars(declared, given):
    """The variant's defaults overlaid with the caller's values: (values, None) or error."""
    if declared is None:
        declared = {}
    if not isinstance(declared, dict):
        return None, fail("PROMPT_VARIANT_INVALID", "metadata.vars must be an object of "
                          "name -> default text (or null: required)", "metadata.vars")
    if given is None:
        given = {}
    if not isinstance(given, dict):
        return None, fail("PROMPT_VARIABLE_INVALID", "vars must be an object of name -> text",
                          "vars")
    values = {}
    for name, default in declared.items():
        if default is not None and not isinstance(default, str):
            return None, fail("PROMPT_VARIANT_INVALID", "the default of '" + str(name) +
                              "' is not text", "metadata.vars." + str(name))
        if default is not None:
            values[name] = default
    for name, value in given.items():
        if name not in declared:
            return None, fail("PROMPT_VARIABLE_UNDECLARED", "variable '" + str(name)[:64] +
                              "' is not declared by the variant (metadata.vars names: " +
                              ", ".join(sorted(declared)) + ")", "vars." + str(name)[:64])
        if value is not None and not isinstance(value, str):
            return None, fail("PROMPT_VARIABLE_INVALID", "variable '" + name + "' must be "
                              "text", "vars." + name)
        if value is not None:
            values[name] = value
    return values, None


def visible(span, tenant, kind):
    return span is not None and span.get("entity_type") == kind and \
        not span.get("is_deleted") and span.get("tenant_id") in (tenant, "system")


def read_all(ctx, ids, kind, wheres):
    """The verified heads of `ids` (one read) if each is a `kind` the caller's tenant may use:
    (spans in order, None) or (None, the error naming the first that is not)."""
    for span_id, where in zip(ids, wheres, strict=True):
        if not is_uuid(span_id):
            return None, fail("PROMPT_NOT_FOUND", "not a span id: " + repr(span_id)[:60], where)
    found = ctx.verified_many(sorted(set(i.lower() for i in ids)))
    tenant = ctx.identity["tenant_id"]
    out = []
    for span_id, where in zip(ids, wheres, strict=True):
        span = found.get(span_id.lower())
        if not visible(span, tenant, kind):
            return None, fail("PROMPT_NOT_FOUND", "no " + kind + " " + span_id + " in tenant " +
                              tenant + " or system", where)
        out.append(span)
    return out, None


def build(ctx, args):
    variants, error = read_all(ctx, [args.get("variant_id")], "prompt_variant", ["variant_id"])
    if error is not None:
        return error
    variant = variants[0]
    meta = variant.get("metadata") or {}
    ids = meta.get("block_ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_BLOCKS:
        return fail("PROMPT_VARIANT_INVALID", "metadata.block_ids must list 1 to " +
                    str(MAX_BLOCKS) + " prompt_block ids", "metadata.block_ids")
    spans, error = read_all(ctx, ids, "prompt_block",
                            ["metadata.block_ids[" + str(n) + "]" for n in range(len(ids))])
    if error is not None:
        return error
    blocks = []
    for block in spans:
        priority = (block.get("metadata") or {}).get("priority")
        if not isinstance(priority, int) or isinstance(priority, bool):
            return fail("PROMPT_BLOCK_INVALID", "metadata.priority must be an integer "
                        "(doctrine 120, product 100, app 90, task 70)",
                        "block " + block["id"] + ": metadata.priority")
        if not isinstance(block.get("content"), str):
            return fail("PROMPT_BLOCK_INVALID", "content must be the block's text",
                        "block " + block["id"] + ": content")
        blocks.append({"id": block["id"], "seq": block["seq"], "content": block["content"],
                       "priority": priority})
    family = meta.get("family")
    if isinstance(family, str):
        found = ctx.sql_one(OVERRIDE, {"tenant": ctx.identity["tenant_id"], "family": family})
        if found is not None:
            override, error = read_all(ctx, [found["id"]], "prompt_block", ["override"])
            block = override[0] if error is None else {}
            if isinstance(block.get("content"), str):
                priority = (block.get("metadata") or {}).get("priority")
                blocks.append({"id": block["id"], "seq": block["seq"],
                               "content": block["content"], "temporary": True,
                               "priority": priority if isinstance(priority, int) and
                               not isinstance(priority, bool) else 115})
    values, error = merge_vars(meta.get("vars"), args.get("vars"))
    if error is not None:
        return error
    compiled, error = compile_blocks(blocks, values)
    if error is not None:
        return error
    compiled_hash = ctx.blake3(compiled)
    tenant = ctx.identity["tenant_id"]
    vars_hash = ctx.blake3(ctx.json_dumps(values))
    build_id = ctx.derived_id("prompt_build", variant["id"], variant["seq"], compiled_hash,
                              vars_hash, tenant)
    order = sorted(range(len(blocks)), key=lambda n: (-blocks[n]["priority"], n))
    used = [{"id": blocks[n]["id"], "seq": blocks[n]["seq"], "priority": blocks[n]["priority"]}
            for n in order]  # in the compiled order
    span = {
        "id": build_id, "entity_type": "prompt_build", "who": NAME, "did": "built",
        "this": meta.get("family") or variant.get("name") or variant["id"],
        "parent_id": variant["id"], "related_to": sorted(set(b["id"] for b in blocks)),
        "owner_id": ctx.identity["user_id"], "tenant_id": tenant, "visibility": "tenant",
        "status": "complete", "trace_id": ctx.trace_id,
        "input": {"vars": values}, "output": {"compiled": compiled},
        "metadata": {"family": meta.get("family"), "variant_id": variant["id"],
                     "variant_seq": variant["seq"], "blocks": used,
                     "compiled_hash": compiled_hash, "length": len(compiled)},
    }
    out = {"ok": True, "compiled": compiled, "compiled_hash": compiled_hash,
           "build_id": build_id, "variant_id": variant["id"], "variant_seq": variant["seq"],
           "family": meta.get("family"), "variant_metadata": meta, "blocks": used,
           "error": None}
    if args.get("record", True):
        if ctx.head(build_id) is None:
            ctx.append([span])
    else:
        out["span"] = span
    return out


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    return build(ctx, args)
