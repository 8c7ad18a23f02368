"""The Triton row kernels of the full-vocabulary divergences (klgrad.triton_logits is their
host side; docs/logits.md, "The GPU path"). Importing this module imports triton: it is
imported only when the Triton backend is used. Under TRITON_INTERPRET=1 (set before triton
is imported) the kernels run on CPU tensors, which is how the tests run them.

One program per row streams the row in blocks of BLOCK entries with an online maximum and
sum of exponentials, element-wise in float32 whatever the logits' dtype (float32, bfloat16,
float16), the row's sums across blocks and its value in float64:

* reverse-kl, forward-kl and the renormalised top-k forms: one pass for the log-sum-exps
  and the value (the KL accumulated against running shifts, as the C++ kernel's online
  pass), a second that writes the gradient;
* jensen-shannon: the log-sum-exps, then the value (it needs both rows normalised), then
  the gradient;
* the tail forms: one pass for the log-sum-exps of K's and the tail's entries of both rows
  (each summed directly, never as 1 - mass(K)) and K's KL terms, a second for the gradient.

K (a top-k form's set) is given per row by the chooser's k-th largest logit `thr` and the
number `take` of the entries equal to it that belong to K (the first ones by index, so
ties go to the smaller index, as in the C++ kernel): each pass recomputes membership from
the chooser's logits with a running count, so no V-sized mask exists. The first pass
writes K's indices in index order. The gradient is written to g (which may be the logits
themselves: each block is read before it is written) in g's dtype.

The row functions (_pair_row, _jsd_row, _tail_row) share their steps as @triton.jit
helpers, which Triton inlines (constexpr flags pass through): a block of both rows
(_load_pair), its membership in K (_top_k_block), the orientation (a, b) (_orient), the
online states (_lse_step, _kl_step), the normalisers and probabilities (_normalisers,
_prob) and the row's status (_status).
"""
import triton
import triton.language as tl

# The forms (constexpr: a kernel reads no other global); FORMS maps the divergences' names
# to their codes.
_NAMES = ("reverse-kl", "forward-kl", "jensen-shannon", "forward-kl-top-k", "reverse-kl-top-k",
          "forward-kl-top-k-tail", "reverse-kl-top-k-tail")
RKL, FKL, JSD, FKL_TOP_K, RKL_TOP_K, FKL_TAIL, RKL_TAIL = (tl.constexpr(i)
                                                          for i in range(len(_NAMES)))
FORMS = {name: code for code, name in enumerate(_NAMES)}

# Row statuses (the C++ driver's row_status): the host raises for the first bad row.
OK, BAD_Z, BAD_REF, INFINITE_RKL = (tl.constexpr(i) for i in range(4))


@triton.jit
def _shift(m):
    """A running maximum as a usable shift: 0 while it is -inf (nothing summed yet)."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _f64(x):
    return x.to(tl.float64)


@triton.jit
def _rescale(m_old, m_new):
    """The float64 factor taking sums at shift m_old to shift m_new; 0 while m_old is -inf
    (those sums are 0, and exp(-inf - -inf) would be NaN)."""
    return tl.where(m_old == float("-inf"), 0.0,
                    tl.exp(_f64(_shift(m_old)) - _f64(_shift(m_new))))


@triton.jit
def _lse_step(m, s, a):
    """The online log-sum-exp state (m: the running maximum, float32; s = sum exp(a - m),
    float64 across blocks) after the block a."""
    m_new = tl.maximum(m, tl.max(a, 0))
    s = s * _rescale(m, m_new) + _f64(tl.sum(tl.exp(a - _shift(m_new)), 0))
    return m_new, s


@triton.jit
def _kl_step(ma, sa, mb, sb, w, a, b):
    """The online KL state after the block (a, b): the log-sum-exp states of a and b and
    w = sum e^(a - ma) ((a - ma) - (b - mb)) against the running shifts (float64 across
    blocks), so that sum softmax(a) (log softmax(a) - log softmax(b)) = w / sa - log sa +
    log sb with no cancellation between large shifts. Entries whose exponential is 0 add
    nothing; an entry where a has mass and b is -inf makes w +inf, which stays +inf."""
    ma_new = tl.maximum(ma, tl.max(a, 0))
    mb_new = tl.maximum(mb, tl.max(b, 0))
    ca, cb = _shift(ma_new), _shift(mb_new)
    ra = _rescale(ma, ma_new)
    moved = ra * (w + sa * ((_f64(_shift(ma)) - _f64(ca)) - (_f64(_shift(mb)) - _f64(cb))))
    w = tl.where(w == float("inf"), w, moved)
    ea = tl.exp(a - ca)
    w += _f64(tl.sum(tl.where(ea > 0, ea * ((a - ca) - (b - cb)), 0.0), 0))
    sa = sa * ra + _f64(tl.sum(ea, 0))
    sb = sb * _rescale(mb, mb_new) + _f64(tl.sum(tl.exp(b - cb), 0))
    return ma_new, sa, mb_new, sb, w


@triton.jit
def _log_add(a, b):
    """log(exp(a) + exp(b)) (-inf where both are -inf)."""
    top = tl.maximum(a, b)
    safe = tl.where(top == float("-inf"), 0.0, top)
    return safe + tl.log(tl.exp(a - safe) + tl.exp(b - safe))


@triton.jit
def _expm1(d):
    """exp(d) - 1 to a few ulps for small d too: (u - 1) d / log(u), u = exp(d) (the
    rounding of u cancels between u - 1 and log u); d where u rounds to 1, -1 where it is
    0, +inf where it overflows."""
    u = tl.exp(d)
    ratio = tl.where((u == 0.0) | (u == float("inf")), u - 1.0, (u - 1.0) * d / tl.log(u))
    return tl.where(u == 1.0, d, ratio)


@triton.jit
def _minus(p, q, log_ratio):
    """p - q for probabilities p and q = p exp(log_ratio), as -p expm1(log_ratio): the
    difference keeps its digits where p and q are close; p - q itself where q is far above
    p (no digit to lose, and exp(log_ratio) may overflow), or p is 0."""
    return tl.where((p > 0) & (log_ratio < 80.0), -p * _expm1(log_ratio), p - q)


@triton.jit
def _bad(raw):
    """1 where a block holds a NaN or +inf logit, else 0."""
    return tl.max(((raw != raw) | (raw == float("inf"))).to(tl.int32), 0)


@triton.jit
def _note_bad(bad_z, bad_r, zraw, rraw):
    """The row pair's bad-logit flags (_bad: 1 once a block held a NaN or +inf logit) after
    the blocks zraw of the policy's row and rraw of ref's."""
    return tl.maximum(bad_z, _bad(zraw)), tl.maximum(bad_r, _bad(rraw))


@triton.jit
def _in_top_k(chooser, inside, thr, take, ties_before):
    """Membership of a block's entries in K: above the threshold, or equal to it and among
    the first `take` such entries of the row. Returns (in K, the block's ties)."""
    tie = inside & (chooser == thr)
    rank = ties_before + tl.cumsum(tie.to(tl.int32), 0)
    in_k = inside & ((chooser > thr) | (tie & (rank <= take)))
    return in_k, tl.sum(tie.to(tl.int32), 0)


@triton.jit
def _store_indices(idx_row, offs, in_k, kept):
    """Writes the block's K entries at positions kept.. of the row's indices (index order);
    returns the new count."""
    pos = kept + tl.cumsum(in_k.to(tl.int32), 0) - 1
    tl.store(idx_row + pos, offs.to(tl.int64), mask=in_k)
    return kept + tl.sum(in_k.to(tl.int32), 0)


@triton.jit
def _load(row, offs, inside, inv_tau):
    """A block of a row: the raw logits widened to float32 (-inf past V) and them / tau."""
    raw = tl.load(row + offs, mask=inside, other=float("-inf")).to(tl.float32)
    return raw, raw * inv_tau


@triton.jit
def _load_pair(z_row, r_row, j0, V, inv_tau, BLOCK: tl.constexpr):
    """The block of both rows at j0: (offs, inside = offs < V, the policy's raw logits, x
    = them / tau, ref's raw logits, y = them / tau) (see _load)."""
    offs = j0 + tl.arange(0, BLOCK)
    inside = offs < V
    zraw, x = _load(z_row, offs, inside, inv_tau)
    rraw, y = _load(r_row, offs, inside, inv_tau)
    return offs, inside, zraw, x, rraw, y


@triton.jit
def _top_k_block(z_row, r_row, j0, V, inv_tau, thr, take, ties,
                 REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """_load_pair's block with its membership in K (_in_top_k; the chooser is the policy's
    row for a reverse form, ref's for a forward one) and the row's count of ties after it:
    (offs, inside, zraw, x, rraw, y, in_k, ties)."""
    offs, inside, zraw, x, rraw, y = _load_pair(z_row, r_row, j0, V, inv_tau, BLOCK)
    in_k, n = _in_top_k(zraw if REVERSE else rraw, inside, thr, take, ties)
    return offs, inside, zraw, x, rraw, y, in_k, ties + n


@triton.jit
def _orient(x, y, REVERSE: tl.constexpr):
    """(a, b) = (x, y) for a reverse form, (y, x) for a forward one; the same swap takes a
    pair of a's and b's to the policy's and ref's."""
    if REVERSE:
        a, b = x, y
    else:
        a, b = y, x
    return a, b


@triton.jit
def _pair_block(z_row, r_row, j0, V, inv_tau, thr, take, ties,
                REVERSE: tl.constexpr, TOP_K: tl.constexpr, BLOCK: tl.constexpr):
    """_pair_row's block at j0: (offs, inside, zraw, rraw, a, b, in_k, ties), (a, b) as
    _orient's, and for the top-k forms a -inf outside K (_top_k_block's in_k and ties; else
    in_k = inside and ties unchanged)."""
    if TOP_K:
        offs, inside, zraw, x, rraw, y, in_k, ties = _top_k_block(
            z_row, r_row, j0, V, inv_tau, thr, take, ties, REVERSE, BLOCK)
    else:
        offs, inside, zraw, x, rraw, y = _load_pair(z_row, r_row, j0, V, inv_tau, BLOCK)
        in_k = inside
    a, b = _orient(x, y, REVERSE)
    if TOP_K:
        a = tl.where(in_k, a, float("-inf"))
    return offs, inside, zraw, rraw, a, b, in_k, ties


@triton.jit
def _store_grad(g_row, offs, inside, g):
    """Writes a block of the gradient (float32) in g's dtype."""
    tl.store(g_row + offs, g.to(g_row.dtype.element_ty), mask=inside)


@triton.jit
def _lse_start():
    """An empty online log-sum-exp state (see _lse_step): the maximum -inf (float32), the
    sum 0 (float64)."""
    return tl.full([], float("-inf"), tl.float32), tl.zeros([], tl.float64)


@triton.jit
def _scan_start():
    """The int32 counters of a first pass, all 0: (bad_z, bad_r, ties, kept)."""
    return (tl.zeros([], tl.int32), tl.zeros([], tl.int32), tl.zeros([], tl.int32),
            tl.zeros([], tl.int32))


@triton.jit
def _lse(m, s):
    """The log-sum-exp (float64) of a finished online state (m, s)."""
    return _f64(_shift(m)) + tl.log(s)


@triton.jit
def _log_sum(m, lse):
    """The float32 log-sum of a row's log-sum-exp lse (float64) against the shift of its
    maximum m: log-probabilities are then (x - shift) - log-sum, exact to the log-sum's
    rounding whatever the size of the logits."""
    return (lse - _f64(_shift(m))).to(tl.float32)


@triton.jit
def _normalisers(ma, sa, mb, sb):
    """From the finished log-sum-exp states of a and b: (lse_a, lse_b, their log-sums
    (_log_sum), lse_a - lse_b in float32)."""
    lse_a = _lse(ma, sa)
    lse_b = _lse(mb, sb)
    return lse_a, lse_b, _log_sum(ma, lse_a), _log_sum(mb, lse_b), (lse_a - lse_b).to(tl.float32)


@triton.jit
def _prob(v, m, log_sum):
    """Probabilities exp((v - shift) - log-sum) of a block v of a row with maximum m."""
    return tl.exp((v - _shift(m)) - log_sum)


@triton.jit
def _status(bad_z, empty_z, bad_r, empty_r, Z_FIRST: tl.constexpr):
    """A row's status: BAD_Z where the policy's row holds a bad logit (_note_bad's flag) or
    no mass (empty_z), BAD_REF likewise for ref's row, the policy's row checked first where
    Z_FIRST (else ref's), OK where neither is bad."""
    z = (bad_z != 0) | empty_z
    r = (bad_r != 0) | empty_r
    if Z_FIRST:
        status = tl.where(z, BAD_Z, tl.where(r, BAD_REF, OK))
    else:
        status = tl.where(r, BAD_REF, tl.where(z, BAD_Z, OK))
    return status


@triton.jit
def _infinite_rkl(status, value):
    """A reverse form's status with a gradient: INFINITE_RKL where the row is otherwise OK
    and its value is +inf."""
    return tl.where((status == OK) & (value == float("inf")), INFINITE_RKL, status)


@triton.jit
def _pair_row(z_row, r_row, g_row, idx_row, thr, take, V, inv_tau, c,
              FORM: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """reverse-kl, forward-kl and their renormalised top-k forms: KL(softmax(a) ||
    softmax(b)) with (a, b) = (x, y) for the reverse forms, (y, x) for the forward ones, a
    restricted to K for the top-k forms (the chooser renormalised over K, the other side
    full). c = scale / tau. Returns (value, status)."""
    REVERSE: tl.constexpr = FORM == RKL or FORM == RKL_TOP_K
    TOP_K: tl.constexpr = FORM == FKL_TOP_K or FORM == RKL_TOP_K
    ma, sa = _lse_start()
    mb, sb = _lse_start()
    w = tl.zeros([], tl.float64)
    bad_z, bad_r, ties, kept = _scan_start()
    for j0 in range(0, V, BLOCK):
        offs, inside, zraw, rraw, a, b, in_k, ties = _pair_block(
            z_row, r_row, j0, V, inv_tau, thr, take, ties, REVERSE, TOP_K, BLOCK)
        bad_z, bad_r = _note_bad(bad_z, bad_r, zraw, rraw)
        if TOP_K:
            kept = _store_indices(idx_row, offs, in_k, kept)
        ma, sa, mb, sb, w = _kl_step(ma, sa, mb, sb, w, a, b)
    value = w / sa - tl.log(sa) + tl.log(sb)
    empty_z, empty_r = _orient(sa == 0, sb == 0, REVERSE)
    status = _status(bad_z, empty_z, bad_r, empty_r, REVERSE)  # a's row checked first
    if WRITE_GRAD:
        if REVERSE:
            status = _infinite_rkl(status, value)
        lse_a, lse_b, lsa, lsb, gap = _normalisers(ma, sa, mb, sb)
        shift_term = (lse_a - lse_b + value).to(tl.float32)  # log pi - log ref - value + (b - a)
        ties = tl.zeros([], tl.int32)
        for j0 in range(0, V, BLOCK):
            offs, inside, _, _, a, b, _, ties = _pair_block(
                z_row, r_row, j0, V, inv_tau, thr, take, ties, REVERSE, TOP_K, BLOCK)
            p = _prob(a, ma, lsa)
            if REVERSE:  # d/dx: p (log p - log q - value), p = softmax(a), q = softmax(b)
                g = tl.where(p > 0, c * p * ((a - b) - shift_term), 0.0)
            else:  # d/dx of KL(softmax(a) || softmax(x)): softmax(x) - softmax(a)
                g = c * _minus(_prob(b, mb, lsb), p, (a - b) - gap)
            _store_grad(g_row, offs, inside, g)
    return value, status


@triton.jit
def _log_ratios_to_mix(x, y, lse_gap, log_lam, log_rest):
    """(log pi - log M, log ref - log M), M = lam ref + (1 - lam) pi, from the log-ratio
    d = log ref - log pi = (y - x) + (lse_x - lse_y): log pi - log M =
    -log((1 - lam) + lam e^d) and log ref - log M = -log(lam + (1 - lam) e^-d), which keeps
    the digits that log pi - log M loses when both are large and close."""
    d = (y - x) + lse_gap
    same = d == 0  # exactly 0 there (a pair of identical rows has a zero gradient)
    return (tl.where(same, 0.0, -_log_add(log_rest, log_lam + d)),
            tl.where(same, 0.0, -_log_add(log_lam, log_rest - d)))


@triton.jit
def _jsd_row(z_row, r_row, g_row, V, inv_tau, c, lam,
             WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """jensen-shannon: lam KL(ref || M) + (1 - lam) KL(pi || M), M = lam ref + (1 - lam) pi;
    gradient (1 - lam) pi (log pi - log M - KL(pi || M)) / tau. Returns (value, status)."""
    mx, sx = _lse_start()
    my, sy = _lse_start()
    bad_z = tl.zeros([], tl.int32)
    bad_r = tl.zeros([], tl.int32)
    for j0 in range(0, V, BLOCK):
        _, _, zraw, x, rraw, y = _load_pair(z_row, r_row, j0, V, inv_tau, BLOCK)
        bad_z, bad_r = _note_bad(bad_z, bad_r, zraw, rraw)
        mx, sx = _lse_step(mx, sx, x)
        my, sy = _lse_step(my, sy, y)
    lse_x, lse_y, lsx, lsy, gap = _normalisers(mx, sx, my, sy)
    log_lam = tl.log(lam)
    log_rest = tl.log(1.0 - lam)
    kl_pm = tl.zeros([], tl.float64)
    kl_rm = tl.zeros([], tl.float64)
    for j0 in range(0, V, BLOCK):
        _, _, _, x, _, y = _load_pair(z_row, r_row, j0, V, inv_tau, BLOCK)
        pm, rm = _log_ratios_to_mix(x, y, gap, log_lam, log_rest)
        p = _prob(x, mx, lsx)
        r = _prob(y, my, lsy)
        kl_pm += _f64(tl.sum(tl.where(p > 0, p * pm, 0.0), 0))
        kl_rm += _f64(tl.sum(tl.where(r > 0, r * rm, 0.0), 0))
    value = lam * kl_rm + (1.0 - lam) * kl_pm
    status = _status(bad_z, sx == 0, bad_r, sy == 0, True)
    if WRITE_GRAD:
        kl = kl_pm.to(tl.float32)
        for j0 in range(0, V, BLOCK):
            offs, inside, _, x, _, y = _load_pair(z_row, r_row, j0, V, inv_tau, BLOCK)
            pm, _ = _log_ratios_to_mix(x, y, gap, log_lam, log_rest)
            p = _prob(x, mx, lsx)
            g = tl.where(p > 0, (c * (1.0 - lam)) * p * (pm - kl), 0.0)
            _store_grad(g_row, offs, inside, g)
    return value, status


@triton.jit
def _tail_row(z_row, r_row, g_row, idx_row, thr, take, V, inv_tau, c,
              REVERSE: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """The tail forms: KL from the chooser's k + 1 bins (each entry of K, and the tail V \\ K)
    to the other side's, both with their full-vocabulary probabilities; (a, b) = (x, y)
    for the reverse form (K the policy's), (y, x) for the forward one. The tails'
    log-masses are summed directly over the entries outside K. Returns (value, status)."""
    mka, ska = _lse_start()  # K's entries of a and b: the KL state
    mkb, skb = _lse_start()
    wk = tl.zeros([], tl.float64)
    mta, sta = _lse_start()  # the tails' log-sum-exp states
    mtb, stb = _lse_start()
    bad_z, bad_r, ties, kept = _scan_start()
    for j0 in range(0, V, BLOCK):
        offs, inside, zraw, x, rraw, y, in_k, ties = _top_k_block(
            z_row, r_row, j0, V, inv_tau, thr, take, ties, REVERSE, BLOCK)
        bad_z, bad_r = _note_bad(bad_z, bad_r, zraw, rraw)
        kept = _store_indices(idx_row, offs, in_k, kept)
        a, b = _orient(x, y, REVERSE)
        mka, ska, mkb, skb, wk = _kl_step(mka, ska, mkb, skb, wk,
                                          tl.where(in_k, a, float("-inf")),
                                          tl.where(in_k, b, float("-inf")))
        mta, sta = _lse_step(mta, sta, tl.where(in_k, float("-inf"), a))
        mtb, stb = _lse_step(mtb, stb, tl.where(in_k, float("-inf"), b))
    lka = _lse(mka, ska)  # log-masses (unnormalised) of K and of the tail
    lkb = _lse(mkb, skb)
    lta = _lse(mta, sta)
    ltb = _lse(mtb, stb)
    lse_a = _log_add(lka, lta)
    lse_b = _log_add(lkb, ltb)
    # K's bins: sum_K e^(a - lse_a) ((a - lse_a) - (b - lse_b)), from the KL state.
    k_terms = tl.where(ska > 0, tl.exp(lka - lse_a) * (
        wk / ska + (lse_b - _f64(_shift(mkb))) - (lse_a - _f64(_shift(mka)))), 0.0)
    la_tail = lta - lse_a
    lb_tail = ltb - lse_b
    tail_mass = tl.exp(la_tail)
    value = k_terms + tl.where(tail_mass > 0, tail_mass * (la_tail - lb_tail), 0.0)
    lse_z, lse_r = _orient(lse_a, lse_b, REVERSE)
    status = _status(bad_z, lse_z == float("-inf"), bad_r, lse_r == float("-inf"), True)
    if WRITE_GRAD:
        mz, mr = _orient(tl.maximum(mka, mta), tl.maximum(mkb, mtb), REVERSE)
        lsz = _log_sum(mz, lse_z)
        lsr = _log_sum(mr, lse_r)
        if REVERSE:
            status = _infinite_rkl(status, value)
            # on K: pi ((x - y) - (lse_z - lse_r) - value); off K: pi (log P - log R - value),
            # 0 where P = 0 (every pi off K is then 0)
            on_shift = (lse_z - lse_r + value).to(tl.float32)
            h = tl.where(la_tail == float("-inf"), 0.0,
                         la_tail - lb_tail - value).to(tl.float32)
        else:
            # off K: pi (1 - R / P), the factor taken in float64 (it cancels where R ~ P);
            # where P = 0 every pi off K is 0
            off_k = (1.0 - tl.exp(tl.where(lb_tail == float("-inf"), float("-inf"),
                                           la_tail - lb_tail))).to(tl.float32)
            gap_rz = (lse_r - lse_z).to(tl.float32)
        ties = tl.zeros([], tl.int32)
        for j0 in range(0, V, BLOCK):
            offs, inside, _, x, _, y, in_k, ties = _top_k_block(
                z_row, r_row, j0, V, inv_tau, thr, take, ties, REVERSE, BLOCK)
            p = _prob(x, mz, lsz)
            if REVERSE:
                g = tl.where(p > 0, c * p * tl.where(in_k, (x - y) - on_shift, h), 0.0)
            else:
                g = c * tl.where(in_k, _minus(p, _prob(y, mr, lsr), (y - x) - gap_rz),
                                 p * off_k)
            _store_grad(g_row, offs, inside, g)
    return value, status


@triton.jit
def _zero_row(g_row, idx_row, V, K, WRITE_GRAD: tl.constexpr, TOP_K: tl.constexpr,
              BLOCK: tl.constexpr):
    """A masked row: never read; its gradient row 0 and its indices -1."""
    cols = tl.arange(0, BLOCK)
    if WRITE_GRAD:
        for j0 in range(0, V, BLOCK):
            offs = j0 + cols
            _store_grad(g_row, offs, offs < V, tl.zeros([BLOCK], tl.float32))
    if TOP_K:
        for j0 in range(0, K, BLOCK):
            offs = j0 + cols
            tl.store(idx_row + offs, tl.full([BLOCK], -1, tl.int64), mask=offs < K)


@triton.jit
def logits_rows(z_ptr, r_ptr, g_ptr, value_ptr, status_ptr, mask_ptr, scale_ptr, thr_ptr,
                take_ptr, idx_ptr, V, K, stride_z, stride_r, stride_g, inv_tau, lam,
                FORM: tl.constexpr, HAS_MASK: tl.constexpr, WRITE_GRAD: tl.constexpr,
                BLOCK: tl.constexpr):
    """One row per program: value[row] (0 in masked rows), status[row] (OK, or why the row
    is bad), and with WRITE_GRAD g[row] = scale * d value / d z (scale_ptr: one float32,
    the row's weight in the loss). thr, take, idx: the top-k forms' K (see the module)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    r_row = r_ptr + row * stride_r
    g_row = g_ptr + row * stride_g
    idx_row = idx_ptr + row * K
    TOP_K: tl.constexpr = FORM >= FKL_TOP_K
    valid = True
    if HAS_MASK:
        valid = tl.load(mask_ptr + row) != 0
    if valid:
        c = tl.load(scale_ptr) * inv_tau
        thr = 0.0
        take = 0
        if TOP_K:
            thr = tl.load(thr_ptr + row)
            take = tl.load(take_ptr + row)
        if FORM == JSD:
            value, status = _jsd_row(z_row, r_row, g_row, V, inv_tau, c, lam, WRITE_GRAD, BLOCK)
        elif FORM == FKL_TAIL or FORM == RKL_TAIL:
            value, status = _tail_row(z_row, r_row, g_row, idx_row, thr, take, V, inv_tau, c,
                                      FORM == RKL_TAIL, WRITE_GRAD, BLOCK)
        else:
            value, status = _pair_row(z_row, r_row, g_row, idx_row, thr, take, V, inv_tau, c,
                                      FORM, WRITE_GRAD, BLOCK)
        tl.store(value_ptr + row, value.to(tl.float32))
        tl.store(status_ptr + row, status)
    else:
        _zero_row(g_row, idx_row, V, K, WRITE_GRAD, TOP_K, BLOCK)
        tl.store(value_ptr + row, 0.0)
        tl.store(status_ptr + row, OK)
