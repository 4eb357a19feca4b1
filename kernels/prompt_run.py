"""prompt_run: answer a user with a prompt variant: build, call the model, check the contract.

Input: {"variant_id": ID | "family": NAME, "user": text, "context": [{role, content}],
"vars": {...}, "provider": NAME, "params": {...}, "session": text, "record": true}.
- The variant is the one named, or for a family the latest `prompt_variant_selection` of the
  caller's tenant for it (only one a platform key signed), else the family's first active
  variant (the tenant's before the system's).
- messages = the compiled system prompt (prompt_build) + the context (user and assistant
  turns only) + the user's text as the last user message. User text never lands in a
  system message: the build takes only the variant's declared variables.
- The model is called through provider_exec (stage 0 makes the call and records a
  provider_execution span); the provider is input.provider, else the variant's
  metadata.provider.
- The answer must be one JSON object, the output contract: {"text": str, "confidence":
  0..1, "follow_up_question": str | null (optional), "actions": [{"action": str, "args":
  {...}}], "citations": [str | {...}], "telemetry": {"tool_use_count": int >= 0}}. An
  answer that breaks it gets one repair request (the problem named); a second failure is a
  recorded error (PROMPT_OUTPUT_INVALID). Model output is untrusted: proposed actions are
  returned and counted, never run here (the API sends each through the gate as a proposal).
- Escalation: when the answer's confidence is below the variant's metadata.min_confidence
  and the variant names metadata.escalate_to ({"variant_id"} and/or {"provider"}: a
  stronger variant or provider), the run is made once more with it (recorded as its own
  prompt_run with escalated_from; the first gets escalated_to) and its answer is returned.
- One `prompt_run` span records the run (model, latency, tokens, compiled_hash, the
  prompt_build and provider_execution ids, confidence, tool_use_count, how many actions were
  proposed; hashes and lengths of the texts, never the texts), with the prompt_build span
  the first time that build is used. Both are written after the model answered, so the
  ledger's append lock is never held while a model thinks: the prompt_build span (rare, its
  id derived) with ctx.append, the prompt_run span with ctx.record: batched with the
  provider records on the host's recorder connection, no commit of its own in this boot
  (readable a few ms later; the API flushes before it answers).

Output: {"ok", "run_id", "answer": contract | None, "variant_id", "family",
"compiled_hash", "build_id", "provider", "model", "tokens_in", "tokens_out", "latency_ms",
"provider_latency_ms", "execution_ids", "repaired", "error": {"code", "message", "where"}};
with "record": false the spans are not appended but returned as "spans" (prompt_eval runs
many fixtures and appends everything once, after the last model answered).
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000012"
NAME = "prompt_run"

BUILD_ID = "00000000-0000-4000-8000-000000000011"
PROVIDER_EXEC_ID = "00000000-0000-4000-8000-000000000005"
MAX_TEXT = 65536
MAX_CONTEXT = 100
FIELDS = ("text", "confidence", "follow_up_question", "actions", "citations", "telemetry")

#: One round trip: the tenant's latest selection of the family (only one a platform key
#: signed), and the family's first active variant (the tenant's before the system's).
PICK_VARIANT = (
    "SELECT (SELECT r.metadata->>'variant_id' FROM ledger.span_heads h "
    "JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = 'prompt_variant_selection' AND h.tenant_id = %(tenant)s "
    "AND NOT h.is_deleted AND r.metadata->>'family' = %(family)s "
    "AND r.public_key = ANY(%(keys)s) "
    "ORDER BY h.position DESC LIMIT 1) AS chosen, "
    "(SELECT h.id::text FROM ledger.span_heads h "
    "JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = 'prompt_variant' AND h.tenant_id IN (%(tenant)s, 'system') "
    "AND NOT h.is_deleted AND coalesce(h.status, 'active') = 'active' "
    "AND r.metadata->>'family' = %(family)s "
    "ORDER BY (h.tenant_id = %(tenant)s) DESC, h.position LIMIT 1) AS first"
)

REPAIR = ("Your answer did not follow the output contract: {problem}. Answer again with only "
          "one JSON object: {\"text\": string, \"confidence\": number from 0 to 1, "
          "\"follow_up_question\": string or null, \"actions\": [{\"action\": string, "
          "\"args\": object}], \"citations\": [], \"telemetry\": {\"tool_use_count\": "
          "integer}}.")


def fail(code, message, where=None):
    return {"code": code, "message": message, "where": where}


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def unfenced(text):
    """The answer without a surrounding ```json fence, which models often add."""
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        inner = text[3:-3]
        newline = inner.find("\n")
        return inner[newline + 1:] if newline >= 0 else inner
    return text


def contract_problem(value):
    """Why `value` is not the output contract, or None."""
    if not isinstance(value, dict):
        return "the answer is not a JSON object"
    extra = sorted(k for k in value if k not in FIELDS)
    if extra:
        return "unknown field " + repr(extra[0])[:60]
    text = value.get("text")
    if not isinstance(text, str) or not text.strip():
        return "text must be a non-empty string"
    confidence = value.get("confidence")
    if not is_number(confidence) or confidence < 0 or confidence > 1:
        return "confidence must be a number from 0 to 1"
    question = value.get("follow_up_question")
    if question is not None and not isinstance(question, str):
        return "follow_up_question must be a string or null"
    actions = value.get("actions")
    if not isinstance(actions, list):
        return "actions must be a list"
    for n, action in enumerate(actions):
        if not isinstance(action, dict) or not isinstance(action.get("action"), str) or \
                not action.get("action"):
            return "actions[" + str(n) + "] must be an object with an action name"
        if not isinstance(action.get("args", {}), dict):
            return "actions[" + str(n) + "].args must be an object"
        if sorted(k for k in action if k not in ("action", "args")):
            return "actions[" + str(n) + "] has a field other than action and args"
    citations = value.get("citations")
    if not isinstance(citations, list) or \
            not all(isinstance(c, (str, dict)) for c in citations):
        return "citations must be a list of strings or objects"
    telemetry = value.get("telemetry")
    if not isinstance(telemetry, dict):
        return "telemetry must be an object with tool_use_count"
    count = telemetry.get("tool_use_count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return "telemetry.tool_use_count must be a whole number >= 0"
    return None


def parse_answer(ctx, text):
    """(contract, None) or (None, problem)."""
    if not isinstance(text, str):
        return None, "the model gave no text"
    parsed = ctx.json_loads(unfenced(text))
    if not parsed["ok"]:
        return None, "the answer is " + parsed["error"]
    problem = contract_problem(parsed["value"])
    if problem is not None:
        return None, problem
    return parsed["value"], None


def check_input(args):
    user = args.get("user")
    if not isinstance(user, str) or not user.strip():
        return fail("PROMPT_INPUT_INVALID", "user must be the user's text", "user")
    if len(user) > MAX_TEXT:
        return fail("PROMPT_INPUT_INVALID", "user is over " + str(MAX_TEXT) + " characters",
                    "user")
    context = args.get("context")
    if context is None:
        return None
    if not isinstance(context, list) or len(context) > MAX_CONTEXT:
        return fail("PROMPT_INPUT_INVALID", "context must be a list of at most " +
                    str(MAX_CONTEXT) + " {role, content} messages", "context")
    for n, message in enumerate(context):
        where = "context[" + str(n) + "]"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return fail("PROMPT_INPUT_INVALID", "role must be user or assistant (the system "
                        "prompt is the build's alone)", where + ".role")
        if not isinstance(message.get("content"), str) or len(message["content"]) > MAX_TEXT:
            return fail("PROMPT_INPUT_INVALID", "content must be text of at most " +
                        str(MAX_TEXT) + " characters", where + ".content")
        if sorted(k for k in message if k not in ("role", "content")):
            return fail("PROMPT_INPUT_INVALID", "a message has only role and content", where)
    return None


def pick_variant(ctx, args):
    if args.get("variant_id") is not None:
        return args.get("variant_id"), None
    family = args.get("family")
    if not isinstance(family, str) or not family:
        return None, fail("PROMPT_INPUT_INVALID", "name a variant_id or a family", "family")
    tenant = ctx.identity["tenant_id"]
    found = ctx.sql_one(PICK_VARIANT, {"tenant": tenant, "family": family,
                                       "keys": sorted(ctx.platform_keys)}) or {}
    if found.get("chosen"):
        return found["chosen"], None
    if not found.get("first"):
        return None, fail("PROMPT_NOT_FOUND", "no active prompt_variant of family " +
                          repr(family)[:80] + " in tenant " + tenant + " or system", "family")
    return found["first"], None


def fingerprint(ctx, text):
    if text is None:
        return {"blake3": None, "length": 0}
    return {"blake3": ctx.blake3(text), "length": len(text)}


def escalate(ctx, args, meta, answer, run_id):
    """One more run with the variant's metadata.escalate_to ({"variant_id"} and/or
    {"provider"}: a stronger variant or provider) when the answer's confidence is below
    metadata.min_confidence; its output (spans not appended), or None."""
    floor = meta.get("min_confidence")
    target = meta.get("escalate_to")
    if answer is None or not is_number(floor) or answer["confidence"] >= floor or \
            not isinstance(target, dict) or args.get("escalated_from"):
        return None
    again = dict(args, escalated_from=run_id, record=False)
    if isinstance(target.get("variant_id"), str):
        again["variant_id"] = target["variant_id"]
        again.pop("family", None)
    if isinstance(target.get("provider"), str):
        again["provider"] = target["provider"]
    escalated = ctx.call(KERNEL_ID, again)
    return escalated if escalated.get("run_id") else None


def run(ctx, args):
    started = ctx.clock_ms()
    error = check_input(args)
    if error is not None:
        return {"ok": False, "error": error}
    variant_id, error = pick_variant(ctx, args)
    if error is not None:
        return {"ok": False, "error": error}
    built = ctx.call(BUILD_ID, {"variant_id": variant_id, "vars": args.get("vars"),
                                "record": False})
    if not built["ok"]:
        return {"ok": False, "error": built["error"]}
    meta = built.get("variant_metadata") or {}
    provider = args.get("provider") or meta.get("provider")
    if not isinstance(provider, str) or not provider:
        return {"ok": False, "error": fail("PROMPT_INPUT_INVALID", "no provider: pass one, or "
                                           "set the variant's metadata.provider", "provider")}
    params = dict(meta.get("params") or {})
    if isinstance(args.get("params"), dict):
        params.update(args["params"])
    messages = [{"role": "system", "content": built["compiled"]}]
    messages.extend({"role": m["role"], "content": m["content"]}
                    for m in (args.get("context") or []))
    messages.append({"role": "user", "content": args["user"]})

    calls = []
    answer, problem, text = None, None, None
    for attempt in (0, 1):
        result = ctx.call(PROVIDER_EXEC_ID, {"provider": provider, "messages": messages,
                                             "params": params})
        calls.append(result)
        if not result.get("ok"):
            problem = None
            break
        text = result.get("text")
        answer, problem = parse_answer(ctx, text)
        if problem is None or attempt == 1:
            break
        messages = messages + [
            {"role": "assistant", "content": text if isinstance(text, str) else ""},
            {"role": "user", "content": REPAIR.replace("{problem}", problem)}]

    last = calls[-1]
    error = None
    if not last.get("ok"):
        error = last.get("error") or fail("PROVIDER_UNAVAILABLE", "the call failed")
        error = fail(error.get("code"), error.get("message"), "provider " + provider)
    elif problem is not None:
        error = fail("PROMPT_OUTPUT_INVALID", "the model's answer broke the output contract "
                     "after one repair request: " + problem, "answer")
    tenant = ctx.identity["tenant_id"]
    execution_ids = [c.get("execution_id") for c in calls if c.get("execution_id")]
    tokens_in = sum(c.get("tokens_in") or 0 for c in calls)
    tokens_out = sum(c.get("tokens_out") or 0 for c in calls)
    provider_ms = sum(c.get("latency_ms") or 0 for c in calls)
    latency_ms = int(ctx.clock_ms() - started)
    run_id = ctx.new_id()
    telemetry = (answer or {}).get("telemetry") or {}
    actions = (answer or {}).get("actions") or []
    session = args.get("session") if isinstance(args.get("session"), str) else None
    span = {
        "id": run_id, "entity_type": "prompt_run", "who": NAME, "did": "ran",
        "this": built.get("family") or variant_id, "parent_id": built["variant_id"],
        "related_to": [built["build_id"]] + execution_ids,
        "owner_id": ctx.identity["user_id"], "tenant_id": tenant, "visibility": "tenant",
        "status": "error" if error else "complete", "trace_id": ctx.trace_id,
        "duration_ms": latency_ms, "error": error,
        "metadata": {
            "family": built.get("family"), "variant_id": built["variant_id"],
            "variant_seq": built["variant_seq"], "build_id": built["build_id"],
            "compiled_hash": built["compiled_hash"], "provider": provider,
            "model": last.get("model"), "latency_ms": latency_ms,
            "provider_latency_ms": provider_ms, "tokens_in": tokens_in,
            "tokens_out": tokens_out, "execution_ids": execution_ids,
            "attempts": len(calls), "repaired": len(calls) > 1 and error is None,
            "confidence": (answer or {}).get("confidence"),
            "tool_use_count": telemetry.get("tool_use_count"),
            "actions_proposed": len(actions),
            "action_names": [a["action"][:100] for a in actions][:20],
            "session": session[:200] if session else None,
            "min_confidence": meta.get("min_confidence"),
            "escalated_from": args.get("escalated_from"),
            "user": fingerprint(ctx, args["user"]),
            "answer": fingerprint(ctx, text)},
    }
    appended = []
    if ctx.head(built["build_id"]) is None:
        appended.append(built["span"])
    appended.append(span)
    out = {"ok": error is None, "run_id": run_id, "answer": answer,
            "variant_id": built["variant_id"], "family": built.get("family"),
            "compiled_hash": built["compiled_hash"], "build_id": built["build_id"],
            "provider": provider, "model": last.get("model"), "tokens_in": tokens_in,
            "tokens_out": tokens_out, "latency_ms": latency_ms,
            "provider_latency_ms": provider_ms, "execution_ids": execution_ids,
            "repaired": span["metadata"]["repaired"], "error": error}
    escalated = escalate(ctx, args, meta, answer, run_id)
    if escalated is not None:
        span["metadata"]["escalated_to"] = escalated["run_id"]
        ids = set(s["id"] for s in appended)
        appended.extend(s for s in escalated.pop("spans") if s["id"] not in ids)
        out = dict(escalated, escalated_from=run_id)
    if args.get("record", True):
        builds = [s for s in appended if s["entity_type"] == "prompt_build"]
        if builds:  # the first run of a build: its id is derived, so appended at once
            ctx.append(builds)
        ctx.record([s for s in appended if s["entity_type"] != "prompt_build"])
    else:
        out["spans"] = appended  # the caller appends them (after its own model calls)
    return out


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    return run(ctx, args)
