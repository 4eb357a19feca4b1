"""prompt_bandit: choose a family's variant by UCB1 over what its runs and evals scored.

Input: {"family": NAME, "seed": int (optional), "exploration": c (default 0.5)}.
Each variant of the family the caller's tenant may use (its own and the system's active
ones) is scored from the platform's records in the tenant: every prompt_eval_result is one
observation worth 1 when it passed, else 0, and every prompt_run one worth its confidence,
or 0 when it failed (so the eval pass rate, the confidence and the error rate all count). The
score is mean + c * sqrt(2 ln N / n) (N observations in all, n of this variant): the mean
rewards what worked, the bonus keeps trying what was tried little. A variant never observed
is chosen before any other; a tie is broken by a pseudo-random draw seeded with `seed` (a
fresh one when none is given), so a test or a simulation can replay a choice.

Each choice is a `prompt_variant_selection` span (family, variant, every variant's
observations, mean and score, the seed); prompt_run uses a family's latest selection.
Output: {"ok", "selection_id", "family", "variant_id", "scores": [...], "seed", "error"}.
"""

KERNEL_ID = "00000000-0000-4000-8000-000000000014"
NAME = "prompt_bandit"

VARIANTS = (
    "SELECT h.id::text AS id FROM ledger.span_heads h "
    "JOIN ledger.universal_registry r ON r.id = h.id AND r.seq = h.seq "
    "WHERE h.entity_type = 'prompt_variant' AND h.tenant_id IN (%(tenant)s, 'system') "
    "AND NOT h.is_deleted AND coalesce(h.status, 'active') = 'active' "
    "AND r.metadata->>'family' = %(family)s ORDER BY h.position"
)
OBSERVED = (
    "SELECT r.metadata->>'variant_id' AS variant_id, count(*) AS n, "
    "sum(CASE WHEN r.entity_type = 'prompt_eval_result' "
    "THEN CASE WHEN r.status = 'passed' THEN 1.0 ELSE 0.0 END "
    "WHEN r.status = 'error' THEN 0.0 "
    "ELSE least(greatest(coalesce((r.metadata->>'confidence')::float8, 0.0), 0.0), 1.0) END"
    ") AS reward "
    "FROM ledger.universal_registry r "
    "WHERE r.entity_type IN ('prompt_eval_result', 'prompt_run') "
    "AND r.tenant_id = %(tenant)s AND r.public_key = ANY(%(keys)s) "
    "AND r.metadata->>'family' = %(family)s GROUP BY 1"
)

LN2 = 0.6931471805599453
MASK = 0xFFFFFFFFFFFFFFFF


def ln(x):
    """The natural logarithm of x > 0 (kernels import nothing: no math module)."""
    k = 0
    while x >= 2.0:
        x = x / 2.0
        k += 1
    while x < 1.0:
        x = x * 2.0
        k -= 1
    t = (x - 1.0) / (x + 1.0)
    t2 = t * t
    term, total, n = t, 0.0, 1
    while n < 60:
        total += term / n
        term = term * t2
        n += 2
    return k * LN2 + 2.0 * total


def next_random(state):
    """xorshift64*: (next state, a float in [0, 1))."""
    state = state ^ (state >> 12)
    state = state ^ ((state << 25) & MASK)
    state = state ^ (state >> 27)
    value = (state * 0x2545F4914F6CDD1D) & MASK
    return state, (value >> 11) / 9007199254740992.0


def choose(stats, seed, exploration):
    """stats: [{"variant_id", "n", "reward"}] (in a stable order); the chosen variant id and
    every variant's figures. Pure: tools/bench_prompts.py simulates with it."""
    state = (seed or 1) & MASK or 1
    total = sum(s["n"] for s in stats)
    scored = []
    for s in stats:
        state, draw = next_random(state)
        if s["n"] == 0:
            mean, score = None, None
        else:
            mean = s["reward"] / s["n"]
            bonus = exploration * (2.0 * ln(max(total, 1)) / s["n"]) ** 0.5 if total > 1 else 0.0
            score = mean + bonus
        scored.append({"variant_id": s["variant_id"], "n": s["n"], "mean": mean,
                       "score": score, "draw": draw})
    unseen = [s for s in scored if s["n"] == 0]
    pool = unseen if unseen else scored
    best = max(pool, key=lambda s: (s["score"] if s["score"] is not None else 0.0, s["draw"]))
    return best["variant_id"], scored


def select(ctx, args):
    family = args.get("family")
    if not isinstance(family, str) or not family or len(family) > 200:
        return {"ok": False, "error": {"code": "PROMPT_INPUT_INVALID",
                                       "message": "name a family", "where": "family"}}
    seed = args.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed <= 0 or seed > 2 ** 52:
        seed = int(ctx.new_id().replace("-", "")[:13], 16) or 1
    exploration = args.get("exploration", 0.5)
    if not isinstance(exploration, (int, float)) or isinstance(exploration, bool) or \
            exploration < 0 or exploration > 10:
        return {"ok": False, "error": {"code": "PROMPT_INPUT_INVALID", "message":
                                       "exploration is a number from 0 to 10",
                                       "where": "exploration"}}
    tenant = ctx.identity["tenant_id"]
    variants = ctx.sql(VARIANTS, {"tenant": tenant, "family": family})
    if not variants:
        return {"ok": False, "error": {"code": "PROMPT_NOT_FOUND", "message": "no active "
                                       "prompt_variant of family " + repr(family)[:80],
                                       "where": "family"}}
    observed = {r["variant_id"]: r for r in ctx.sql(
        OBSERVED, {"tenant": tenant, "family": family, "keys": sorted(ctx.platform_keys)})}
    stats = [{"variant_id": v["id"], "n": int((observed.get(v["id"]) or {}).get("n") or 0),
              "reward": float((observed.get(v["id"]) or {}).get("reward") or 0.0)}
             for v in variants]
    chosen, scored = choose(stats, seed, exploration)
    selection_id = ctx.new_id()
    ctx.append([{
        "id": selection_id, "entity_type": "prompt_variant_selection", "who": NAME,
        "did": "selected", "this": family, "parent_id": chosen,
        "owner_id": ctx.identity["user_id"], "tenant_id": tenant, "visibility": "tenant",
        "status": "selected", "trace_id": ctx.trace_id,
        "metadata": {"family": family, "variant_id": chosen, "seed": seed,
                     "exploration": exploration, "policy": "ucb1", "scores": scored}}])
    return {"ok": True, "selection_id": selection_id, "family": family, "variant_id": chosen,
            "scores": scored, "seed": seed, "error": None}


def main(ctx):
    args = ctx.input if isinstance(ctx.input, dict) else {}
    return select(ctx, args)
