"""klgrad.testing: unit-test a trainer's own PyTorch KL code against klgrad, token by token.

``assert_matches(fn, spec)`` checks that ``fn(logp, ref, old)`` -- the per-token KL term a
trainer sums into its loss -- has klgrad's value and gradient for ``spec`` on a grid that
covers every clamp edge the presets know; ``identify(fn)`` names every klgrad spec that does.
klgrad's side always comes from ``klgrad.evaluate`` and ``klgrad.explain``: nothing here
re-implements a formula. Importing this module imports torch (``import klgrad`` does not).
"""
import functools
import math

import torch

import klgrad

__all__ = ["assert_matches", "identify", "grid", "candidates", "Match", "Matches", "Mismatch",
           "relative_error", "row_relative_error"]


# --- comparing a kernel's per-row results with a reference ---------------------------------

def relative_error(a, b):
    """max |a - b| / |b| over the entries (values, losses), in float64."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float(((a - b).abs() / b.abs().clamp(min=1e-300)).max())


def row_relative_error(a, b):
    """max over rows of max |a - b| / max |b| (rows: the last dimension), in float64: a
    gradient's error on the scale of its own row (entries far below it carry no relative
    accuracy in float32, whichever kernel computes them)."""
    a, b = a.double().flatten(0, -2), b.double().flatten(0, -2)
    scale = b.abs().max(dim=1).values.clamp(min=1e-300)
    return float(((a - b).abs().max(dim=1).values / scale).max())


# --- the grid ------------------------------------------------------------------------------
#
# Log-ratios s = logp - ref: ordinary points, tiny ones (where exp(-s) - 1 + s cancels), and
# 1e-3 either side of every clamp edge the presets know: the log-ratio and value bounds 10,
# 20 and 40 (docs/presets.md), the log-ratios where k3 (-2.6109, 10.99998) and k2 (+-sqrt 20)
# reach a value bound of 10, and 1e-2 either side of exp's overflow in float and double.

_ORDINARY = (-5.0, -1.3, -0.7, -0.2, 0.0, 0.05, 0.4, 1.0, 2.5, 4.0, 7.0)
_TINY = (1e-8, -1e-8, 1e-12, -1e-12)
_CLAMP_BOUNDS = (10.0, 20.0, 40.0)
_VALUE_EDGES = (-2.6109, 10.99998, math.sqrt(20.0), -math.sqrt(20.0))
_OVERFLOW = (math.log(torch.finfo(torch.float32).max), math.log(torch.finfo(torch.float64).max))
_NEAR, _NEAR_OVERFLOW = 1e-3, 1e-2

# Off-policy points pair a few log-ratios (ordinary, either side of the value clamps, beyond
# the log-ratio clamp) with log-weights lw = logp - old at the same edges. A tiny log-ratio
# goes with ordinary weights only: a trainer's exp(-s) - 1 + s is only good to a few ulp of
# 1, which a weight of e^40 would make 10 or more, deciding a value clamp by rounding alone.
_OFF_POLICY_S = (-25.0, -3.0, -1.3, -0.2, 0.4, 2.5, 12.0, 25.0)
_OFF_POLICY_LW = (1e-8, 0.3, -0.7, 2.0, -3.0)

# No preset clamps beyond |40|, and klgrad's overflow guard acts only beyond it (43.4 in
# float, docs/numerics.md): only such points are asked whether klgrad guarded them.
_LARGEST_CLAMP = 40.0


def _either_side(edges, near):
    out = []
    for e in edges:
        out += [e, -e, e - near, e + near, -e - near, -e + near]
    return out


def _log_ratios():
    return (list(_ORDINARY) + list(_TINY) + _either_side(_CLAMP_BOUNDS, _NEAR) +
            [e + d for e in _VALUE_EDGES for d in (-_NEAR, _NEAR)])


def _overflow_edges():
    return [x for e in _OVERFLOW for x in (e - _NEAR_OVERFLOW, e + _NEAR_OVERFLOW,
                                           -e - _NEAR_OVERFLOW, -e + _NEAR_OVERFLOW)]


def _point(s, lw, base):
    # logp, ref and old all stay <= 0 (they are log-probabilities): logp <= min(0, s, lw).
    logp = min(0.0, s, lw) - base
    return (logp, logp - s, logp - lw)


def grid():
    """The built-in points, as a list of (logp, ref, old) triples of floats.

    On-policy (old == logp): every log-ratio above, exp's overflow edges included.
    Off-policy: a few log-ratios times log-weights at the same edges. Pass
    ``points=grid() + [...]`` to assert_matches or identify to add your own.
    """
    bases = (0.5, 2.3)
    on = _log_ratios() + _overflow_edges()
    lws = list(_OFF_POLICY_LW) + _either_side(_CLAMP_BOUNDS, _NEAR) + _overflow_edges()
    off = [(s, lw) for s in _OFF_POLICY_S for lw in lws]
    off += [(s, lw) for s in _TINY for lw in _OFF_POLICY_LW]
    off += [(s, 0.3) for s in _overflow_edges()]
    pairs = [(s, 0.0) for s in on] + off
    return [_point(s, lw, bases[i % 2]) for i, (s, lw) in enumerate(pairs)]


class _Grid:
    """The points in the working dtype, as klgrad's 1 x P batch and as fn's 1-D tensors."""

    def __init__(self, points, dtype):
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype}: klgrad computes in torch.float32 or torch.float64")
        triples = list(grid() if points is None else points)
        if not triples or any(len(t) != 3 for t in triples):
            raise ValueError("points= must be a non-empty sequence of (logp, ref, old) triples")
        columns = torch.tensor(triples, dtype=torch.float64).t().to(dtype).contiguous()
        if not bool(torch.isfinite(columns).all()):
            raise ValueError("points= holds a NaN or infinite log-probability")
        self.dtype = dtype
        self.logp, self.ref, self.old = columns[0], columns[1], columns[2]
        self.s = (self.logp - self.ref).double()
        self.lw = (self.logp - self.old).double()
        self.on_policy = self.old == self.logp
        self.far = (self.s.abs() > _LARGEST_CLAMP) | (self.lw.abs() > _LARGEST_CLAMP)
        self.size = len(triples)
        # The absolute floor: a trainer computes k3 as exp(-s) - 1 + s and its gradient as
        # 1 - exp(-s), cancelling terms of size 1 (times a weight w = exp(lw)): near s = 0
        # its result is only good to a few ulp of that size, not relative to the tiny value.
        weight = torch.exp(self.lw.clamp(max=300.0)).clamp(min=1.0)
        self.floor = 16 * torch.finfo(dtype).eps * weight

    def batch(self, index=None):
        """logp, ref and behavior as klgrad's 1 x P padded batch (of the points `index`, a
        tensor of indices, if given)."""
        pick = (lambda t: t.view(1, -1)) if index is None else (lambda t: t[index].view(1, -1))
        return pick(self.logp), pick(self.ref), pick(self.old)


# --- both sides --------------------------------------------------------------------------

class _Side:
    """Per-token value and gradient (float64) of one side of a comparison."""

    def __init__(self, value, grad):
        self.value, self.grad = value, grad


def _run_user(fn, g):
    logp = g.logp.clone().requires_grad_(True)
    out = fn(logp, g.ref.clone(), g.old.clone())
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"fn(logp, ref, old) returned {type(out).__name__}; it must return a "
                        "torch.Tensor of per-token values")
    if out.shape != logp.shape:
        raise ValueError(f"fn(logp, ref, old) returned shape {tuple(out.shape)} for logp of shape "
                         f"{tuple(logp.shape)}: return one value per token (the per-token term, "
                         "before any sum, mean or beta)")
    grad = None
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out.sum(), logp, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(logp)
    return _Side(out.detach().double(), grad.double())


def _run_klgrad(spec, g, index=None):
    """klgrad's value and coef (float64) for a parsed spec on the grid (or the points
    `index`), and how many tokens its overflow guard clamped."""
    logp, ref, old = g.batch(index)
    r = klgrad.evaluate(spec, logp, ref, behavior=old)
    return _Side(r.value[0].double(), r.coef[0].double()), r.guarded


def _guarded(spec, g, index):
    """The points of `index` where klgrad's overflow guard acts. A batch whose guarded count
    is its size is all guarded, one whose count is 0 none; others are halved."""
    if len(index) == 0:
        return []
    n = _run_klgrad(spec, g, index)[1]
    if n == len(index):
        return index.tolist()
    if n == 0 or len(index) == 1:
        return []
    half = len(index) // 2
    return _guarded(spec, g, index[:half]) + _guarded(spec, g, index[half:])


def _tolerance_units(a, b, rtol, atol):
    """How many tolerances apart a and b are (inf where one is NaN or inf and they differ)."""
    units = (a - b).abs() / (rtol * torch.maximum(a.abs(), b.abs()) + atol)
    return torch.where(a == b, torch.zeros_like(units), torch.nan_to_num(units, nan=math.inf))


class _Comparison:
    """fn against klgrad for one per-token spec, point by point."""

    def __init__(self, spec, g, mine, rtol, name=None):
        self.spec, self.grid, self.mine, self.rtol = spec, g, mine, rtol
        self.name = name or spec
        parsed = klgrad.Spec(spec)
        self.theirs, guarded = _run_klgrad(parsed, g)
        atol_value = g.floor
        # A differentiable weight adds w k to w k': the gradient cancels terms of the value's
        # size, so its floor scales with the value too.
        atol_grad = torch.maximum(g.floor, 16 * torch.finfo(g.dtype).eps *
                                  torch.maximum(mine.value.abs(), self.theirs.value.abs()))
        atol_grad = torch.nan_to_num(atol_grad, nan=0.0)
        self.value_units = _tolerance_units(mine.value, self.theirs.value, rtol, atol_value)
        self.grad_units = _tolerance_units(mine.grad, self.theirs.grad, rtol, atol_grad)
        self.value_bad = self.value_units > 1
        self.grad_bad = self.grad_units > 1
        self.raw_bad = self.value_bad | self.grad_bad
        self.excused = torch.zeros_like(self.raw_bad)
        self.bad = self.raw_bad
        self._parsed, self._resolved = parsed, not guarded

    def resolve(self):
        """Excuses the far mismatching points where klgrad's overflow guard acts: there it
        deliberately differs from exp's overflow (docs/numerics.md). `bad` is final after it."""
        if not self._resolved:
            for i in _guarded(self._parsed, self.grid, torch.nonzero(self.raw_bad & self.grid.far).flatten()):
                self.excused[i] = True
            self.bad = self.raw_bad & ~self.excused
            self._resolved = True
        return self

    def near_count(self):
        """Mismatches at points no overflow guard reaches (a lower bound before resolve)."""
        return int((self.raw_bad & ~self.grid.far).sum())

    def count(self, where=None):
        return int((self.bad if where is None else self.bad & where).sum())

    def worst_units(self):
        units = torch.maximum(self.value_units, self.grad_units)
        return float(torch.where(self.bad, units, torch.zeros_like(units)).max())

    def worst(self):
        units = torch.maximum(self.value_units, self.grad_units)
        return int(torch.where(self.bad, units, torch.full_like(units, -1.0)).argmax())

    def rows(self, limit, where=None):
        """The first `limit` mismatching points (of `where`, if given) as table rows."""
        bad = self.bad if where is None else self.bad & where
        return [self.row(i) for i in torch.nonzero(bad).flatten().tolist()[:limit]]

    def row(self, i):
        differs = [name for name, flag in (("value", self.value_bad[i]), ("gradient", self.grad_bad[i]))
                   if bool(flag)]
        return (float(self.grid.s[i]), float(self.grid.lw[i]), float(self.mine.value[i]),
                float(self.theirs.value[i]), float(self.mine.grad[i]), float(self.theirs.grad[i]),
                ", ".join(differs))


_HEADER = ("log-ratio s", "log-weight", "value: fn", "klgrad", "d/dlogp: fn", "klgrad coef",
           "differs")


def _table(rows):
    cells = [_HEADER] + [tuple(f"{x:.10g}" if isinstance(x, float) else x for x in r) for r in rows]
    widths = [max(len(c[k]) for c in cells) for k in range(len(_HEADER))]
    return "\n".join("  " + "  ".join(c[k].rjust(widths[k]) if k < 6 else c[k]
                                      for k in range(len(_HEADER))).rstrip() for c in cells)


def _excused_note(c):
    n = int(c.excused.sum())
    if not n:
        return ""
    return (f"\n({n} point{'s' if n > 1 else ''} where klgrad's overflow guard acts not compared: "
            "fn gives inf, NaN or another value there, klgrad a bounded finite one; "
            "docs/numerics.md)")


# --- the spec compared per token -----------------------------------------------------------

_AGGREGATION_KEYS = ("agg", "agg-norm", "agg-eps", "agg-seq-eps", "agg-scale", "beta")


def _per_token(spec):
    """The canonical text of spec with agg=token-sum and beta=1: klgrad's value and coef are
    then per token the term fn returns and its gradient (a mean or beta would only rescale)."""
    text = str(klgrad.Spec(str(spec)))
    items = text.split(",")
    for item in items[1:]:
        key, _, val = item.partition("=")
        if key in ("level", "is-level"):
            raise ValueError(f"spec '{text}' has {item}, whose terms span a sequence; "
                             "assert_matches compares one token at a time (level=token, "
                             "is-level=token)")
    kept = [i for i in items if i.partition("=")[0] not in _AGGREGATION_KEYS]
    return ",".join(kept + ["agg=token-sum"])


# --- assert_matches ------------------------------------------------------------------------

def _describe(g, rtol):
    return (f"{str(g.dtype).replace('torch.', '')}, rtol={rtol:g}, "
            f"absolute floor {16 * torch.finfo(g.dtype).eps:.2g} x max(1, weight)")


def assert_matches(fn, spec, *, dtype=torch.float64, points=None, rtol=1e-9):
    """Assert that fn(logp, ref, old) is klgrad's `spec` token by token, value and gradient.

    fn returns the per-token KL term (before beta and any sum or mean); its gradient is
    d(sum fn)/d(logp) by autograd; `old` is the behaviour log-prob (ignore it if your term has
    no importance weight). klgrad's side is `spec` with agg=token-sum and beta=1 (the spec's
    own agg and beta are replaced: they only rescale). Points where klgrad's overflow guard
    acts are not compared (docs/numerics.md). Raises AssertionError with a table of the
    first mismatching points.
    """
    per_token = _per_token(spec)
    g = _Grid(points, dtype)
    c = _Comparison(per_token, g, _run_user(fn, g), rtol).resolve()
    if c.count():
        raise AssertionError(
            f"fn differs from klgrad spec '{spec}' at {c.count()} of {g.size} points "
            f"({_describe(g, rtol)}); klgrad side: '{per_token}'. First mismatches:\n"
            f"{_table(c.rows(5))}{_excused_note(c)}")


# --- identify ------------------------------------------------------------------------------

_ESTIMATORS = ("k1", "k2", "k3", "abs")
_PLACEMENTS = ("in-reward", "as-loss", "both")
_WEIGHTS = ("none", "detached", "differentiable")
_PRESETS = ("verl", "openrlhf", "nemo-rl", "trl", "slime", "open-instruct", "roll", "easyr1")
# Trainer options that are more than preset=P: slime's low_var_kl is its k3 with a value
# clamp after the weight (include/klgrad/presets.hpp).
_PRESET_OPTIONS = {"slime": {"k3-as-loss": ("clamp=value:-10:10/after-weight",)}}


@functools.lru_cache(maxsize=1)
def candidates():
    """Every per-token klgrad spec identify tries, canonical and without repeats: each
    estimator and straight-through pair x placement x weighting, with no preset and with
    each preset whose trainer can express the term (and its named options)."""
    terms = [f"{a}~{b}" if a != b else a for a in _ESTIMATORS for b in _ESTIMATORS]
    out, seen = [], set()
    for preset in (None,) + _PRESETS:
        for term in terms:
            for place in _PLACEMENTS:
                options = ("",) + _PRESET_OPTIONS.get(preset, {}).get(f"{term}-{place}", ())
                for option in options:
                    for weight in _WEIGHTS:
                        text = f"{term}-{place}" + (f",preset={preset}" if preset else "")
                        text += f",is={weight}" + (f",{option}" if option else "")
                        try:
                            canonical = str(klgrad.Spec(text))
                        except klgrad.SpecError:
                            continue  # the trainer cannot express this term
                        if canonical not in seen:
                            seen.add(canonical)
                            out.append(canonical)
    return tuple(out)


def _follows(verdict):
    return f"{verdict['token']['follows']} (one state), {verdict['sequence']['follows']} (sequences)"


class Match:
    """A klgrad spec that agrees with fn: `spec` (canonical text), `scope` ("on- and
    off-policy", or "on-policy only": fn agrees where old == logp, i.e. pass
    behavior=logp.detach() to klgrad), `explain` (klgrad.explain(spec)), and `on_policy` /
    `off_policy`: the divergence whose gradient the term follows in expectation."""

    def __init__(self, spec, scope, off_policy_rows=()):
        self.spec, self.scope = spec, scope
        self.explain = klgrad.explain(spec)
        self.on_policy = _follows(self.explain["on_policy"])
        self.off_policy = _follows(self.explain["off_policy"])
        self.off_policy_rows = list(off_policy_rows)

    def __repr__(self):
        only = ", on-policy only" if self.scope != "on- and off-policy" else ""
        return (f"Match('{self.spec}'{only}: on-policy follows {self.on_policy}; "
                f"from mu {self.off_policy})")


class Mismatch:
    """The nearest candidate when nothing matches: `spec`, `count` of `points` that differ,
    `worst` (log-ratio, log-weight, fn value, klgrad value, fn gradient, klgrad coef, what
    differs) and `rows`, the first mismatching points."""

    def __init__(self, c):
        self.spec, self.count, self.points = c.name, c.count(), c.grid.size
        self.worst = c.row(c.worst())
        self.rows = c.rows(5)
        self.note = _excused_note(c)

    def __repr__(self):
        s, lw, v, kv, d, kd, what = self.worst
        return (f"Mismatch('{self.spec}': {self.count} of {self.points} points differ; worst at "
                f"s={s:.10g}, log-weight={lw:.10g}: value fn={v:.10g} klgrad={kv:.10g}, "
                f"gradient fn={d:.10g} klgrad={kd:.10g})")

    def __str__(self):
        return (f"nearest klgrad spec '{self.spec}' differs at {self.count} of {self.points} "
                f"points; first mismatches:\n{_table(self.rows)}{self.note}")


class Matches(list):
    """identify's result: a list of Match (empty when nothing agrees), with `nearest` (a
    Mismatch: the closest spec that does not match, or None) and `description` (the grid)."""

    def __init__(self, matches, nearest, description):
        super().__init__(matches)
        self.nearest, self.description = nearest, description

    def __repr__(self):
        if self:
            return "Matches([\n" + "".join(f"  {m!r},\n" for m in self) + "])"
        return f"Matches([], no klgrad spec agrees on {self.description}; nearest: {self.nearest!r})"

    def __str__(self):
        if self:
            return repr(self)
        return f"no klgrad spec agrees with fn on {self.description};\n{self.nearest}"


def _per_token_candidate(text):
    # No canonical candidate names an agg (no preset's is token-sum), nor a beta.
    return text + ",agg=token-sum"


def identify(fn, *, dtype=torch.float64, points=None, rtol=1e-9):
    """Every klgrad spec whose per-token value and gradient agree with fn(logp, ref, old).

    Candidates: candidates() (each estimator and straight-through pair x placement x weighting,
    with and without each preset), each evaluated once over the whole grid, compared as in
    assert_matches. Returns Matches: the specs agreeing everywhere; if none does, those
    agreeing on-policy (old == logp: a trainer whose weight is exp(logp - sg(logp)), or that
    ignores old), each marked "on-policy only"; if none, an empty Matches whose `nearest`
    names the closest spec and its worst point.
    """
    g = _Grid(points, dtype)
    mine = _run_user(fn, g)
    comparisons = [_Comparison(_per_token_candidate(t), g, mine, rtol, t) for t in candidates()]
    for c in comparisons:  # resolve those that may match, at least on-policy
        if not bool((c.raw_bad & ~g.far & g.on_policy).any()):
            c.resolve()
    full = [c for c in comparisons if not c.count()]
    if full:
        matches = [Match(c.name, "on- and off-policy") for c in full]
    else:
        on = [c for c in comparisons if bool(g.on_policy.any()) and not c.count(g.on_policy)]
        matches = [Match(c.name, "on-policy only", c.rows(5, ~g.on_policy)) for c in on]
    others = sorted((c for c in comparisons if c.count()), key=_Comparison.near_count)
    nearest = min((c.resolve() for c in others[:8]), key=lambda c: (c.count(), c.worst_units()),
                  default=None)
    return Matches(matches, Mismatch(nearest) if nearest else None,
                   f"{g.size} points ({_describe(g, rtol)})")
