"""prompt_eval: run a variant against fixtures and record each outcome as a prompt_eval_result.

Input: {"variant_id": ID, "provider": NAME, "suite": name, "fixtures": [fixture]}; a fixture
is {"name", "type", "user", "context"?, "vars"?, "context_chars"?, "must_contain"?: [text],
"must_not_contain"?: [text], "must_error"?: true | CODE, "schema"?: JSON schema}.
Types and what each checks beyond its own checks:
  happy             nothing more
  ambiguous         the answer asks a follow_up_question
  overlong_context  the context is padded to context_chars characters (default 20000)
  conflicting       nothing more (give must_not_contain for the instruction to resist)
  tool_unavailable  the answer proposes no actions and reports tool_use_count 0
must_contain / must_not_contain compare case-insensitively with the answer's text; must_error
passes only when the run fails (with that code, if one is given); schema checks the answer
object (type, required, properties, items, enum, minimum, maximum, minLength, maxLength,
minItems, maxItems).

Each fixture is one run of prompt_run (recorded: its prompt_run span) and one
prompt_eval_result span (passed, the failed checks, the run id). Everything is appended once,
after the last model answered. Output: {"ok", "eval_id", "variant_id", "suite", "total",
"passed", "pass_rate", "results": [{"fixture", "type", "passed", "failures", "run_id",
"result_id"}], "error"}.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000013"
NAME = "prompt_eval"

RUN_ID = "00000000-0000-4000-8000-000000000012"
TYPES = ("happy", "ambiguous", "overlong_context", "conflicting", "tool_unavailable")
MAX_FIXTURES = 50
FILLER = "This sentence is context padding and says nothing of use. "


def fail(code, message, where=None):
    return {"ok": False, "error": {"code": code, "message": message, "where": where}}


def type_ok(value, expected):
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    if expected == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if expected == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected == "null":
        return value is None
    return False


def schema_problems(value, schema, path):
    """What in `value` breaks `schema` (a JSON-schema subset), as short texts."""
    if not isinstance(schema, dict):
        return []
    out = []
    expected = schema.get("type")
    if expected is not None:
        kinds = expected if isinstance(expected, list) else [expected]
        if not any(type_ok(value, k) for k in kinds):
            return [path + ": not " + "/".join(str(k) for k in kinds)]
    if "enum" in schema and value not in schema["enum"]:
        out.append(path + ": not one of the enum")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(path + ": below " + str(schema["minimum"]))
        if "maximum" in schema and value > schema["maximum"]:
            out.append(path + ": above " + str(schema["maximum"]))
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append(path + ": shorter than " + str(schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(path + ": longer than " + str(schema["maxLength"]))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(path + ": fewer than " + str(schema["minItems"]) + " items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(path + ": more than " + str(schema["maxItems"]) + " items")
        for n, item in enumerate(value):
            out.extend(schema_problems(item, schema.get("items"), path + "[" + str(n) + "]"))
    if isinstance(value, dict):
        for name in schema.get("required") or []:
            if name not in value:
                out.append(path + "." + str(name) + ": required")
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                out.extend(schema_problems(value[name], sub, path + "." + name))
    return out


def texts(value):
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def judge(fixture, run):
    """The failed checks of one fixture's run (empty: passed)."""
    failures = []
    answer = run.get("answer")
    error = run.get("error")
    must_error = fixture.get("must_error")
    if must_error:
        if error is None:
            failures.append("must_error: the run succeeded")
        elif isinstance(must_error, str) and error.get("code") != must_error:
            failures.append("must_error: failed with " + str(error.get("code")) + ", not " +
                            must_error)
        return failures
    if error is not None or answer is None:
        return ["the run failed: " + str((error or {}).get("code"))]
    text = answer["text"].lower()
    for needle in texts(fixture.get("must_contain")):
        if needle.lower() not in text:
            failures.append("must_contain: " + repr(needle)[:80])
    for needle in texts(fixture.get("must_not_contain")):
        if needle.lower() in text:
            failures.append("must_not_contain: " + repr(needle)[:80])
    if fixture.get("schema") is not None:
        failures.extend("schema " + p for p in schema_problems(answer, fixture["schema"],
                                                               "answer")[:10])
    kind = fixture.get("type")
    if kind == "ambiguous" and not (answer.get("follow_up_question") or "").strip():
        failures.append("ambiguous: no follow_up_question")
    if kind == "tool_unavailable":
        if answer.get("actions"):
            failures.append("tool_unavailable: actions were proposed")
        if (answer.get("telemetry") or {}).get("tool_use_count"):
            failures.append("tool_unavailable: tool_use_count is not 0")
    return failures


def check_fixture(fixture, n):
    where = "fixtures[" + str(n) + "]"
    if not isinstance(fixture, dict):
        return fail("PROMPT_INPUT_INVALID", "a fixture is an object", where)
    if not isinstance(fixture.get("name"), str) or not fixture["name"]:
        return fail("PROMPT_INPUT_INVALID", "a fixture needs a name", where + ".name")
    if fixture.get("type") not in TYPES:
        return fail("PROMPT_INPUT_INVALID", "type must be one of " + ", ".join(TYPES),
                    where + ".type")
    for field in ("must_contain", "must_not_contain"):
        if fixture.get(field) is not None and (
                not isinstance(fixture[field], list) or
                len(texts(fixture[field])) != len(fixture[field])):
            return fail("PROMPT_INPUT_INVALID", field + " is a list of texts",
                        where + "." + field)
    return None


def padded_context(fixture):
    context = list(fixture.get("context") or [])
    if fixture.get("type") == "overlong_context":
        size = fixture.get("context_chars") or 20000
        if not isinstance(size, int) or size < 1 or size > 1000000:
            size = 20000
        filler = FILLER * (size // len(FILLER) + 1)
        context = [{"role": "user", "content": filler[:size]},
                   {"role": "assistant", "content": "Noted."}] + context
    return context


def evaluate(ctx, args):
    fixtures = args.get("fixtures")
    if not isinstance(fixtures, list) or not fixtures or len(fixtures) > MAX_FIXTURES:
        return fail("PROMPT_INPUT_INVALID", "fixtures must list 1 to " + str(MAX_FIXTURES) +
                    " fixtures", "fixtures")
    for n, fixture in enumerate(fixtures):
        error = check_fixture(fixture, n)
        if error is not None:
            return error
    suite = args.get("suite") if isinstance(args.get("suite"), str) else "default"
    eval_id = ctx.new_id()
    tenant = ctx.identity["tenant_id"]
    spans, seen, results = [], set(), []
    variant_id = args.get("variant_id")
    family = None
    for fixture in fixtures:
        run_input = {"variant_id": variant_id, "user": fixture.get("user"),
                     "context": padded_context(fixture), "vars": fixture.get("vars"),
                     "provider": args.get("provider"), "params": args.get("params"),
                     "session": "eval:" + eval_id, "record": False}
        run = ctx.call(RUN_ID, run_input)
        if run.get("run_id") is None:  # refused before any call: the fixture is at fault
            error = run.get("error") or {}
            if error.get("code") in ("PROMPT_NOT_FOUND", "PROMPT_VARIANT_INVALID",
                                     "PROMPT_BLOCK_INVALID", "PROMPT_TEMPLATE_INVALID"):
                return {"ok": False, "error": error}
        for span in run.get("spans") or []:
            if span["id"] not in seen:
                seen.add(span["id"])
                spans.append(span)
        family = run.get("family") or family
        failures = judge(fixture, run)
        result_id = ctx.new_id()
        results.append({"fixture": fixture["name"], "type": fixture["type"],
                        "passed": not failures, "failures": failures,
                        "run_id": run.get("run_id"), "result_id": result_id})
        spans.append({
            "id": result_id, "entity_type": "prompt_eval_result", "who": NAME,
            "did": "passed" if not failures else "failed", "this": fixture["name"][:200],
            "parent_id": run.get("variant_id") or None,
            "related_to": [run["run_id"]] if run.get("run_id") else None,
            "owner_id": ctx.identity["user_id"], "tenant_id": tenant,
            "visibility": "tenant", "status": "passed" if not failures else "failed",
            "trace_id": ctx.trace_id,
            "metadata": {"eval_id": eval_id, "suite": suite[:200], "family": run.get("family"),
                         "variant_id": run.get("variant_id"), "fixture": fixture["name"][:200],
                         "type": fixture["type"], "passed": not failures,
                         "failures": failures[:20], "run_id": run.get("run_id"),
                         "error": (run.get("error") or {}).get("code"),
                         "confidence": (run.get("answer") or {}).get("confidence")}})
    ctx.append(spans)
    passed = len([r for r in results if r["passed"]])
    return {"ok": True, "eval_id": eval_id, "variant_id": variant_id, "family": family,
            "suite": suite, "total": len(results), "passed": passed,
            "pass_rate": passed / len(results), "results": results, "error": None}


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    return evaluate(ctx, args)
