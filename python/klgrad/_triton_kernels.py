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
def _log_sum(m, lse):
    """The float32 log-sum of a row's log-sum-exp lse (float64) against the shift of its
    maximum m: log-probabilities are then (x - shift) - log-sum, exact to the log-sum's
    rounding whatever the size of the logits."""
    return (lse - _f64(_shift(m))).to(tl.float32)


@triton.jit
def _pair_row(z_row, r_row, g_row, idx_row, thr, take, V, inv_tau, c,
              FORM: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """reverse-kl, forward-kl and their renormalised top-k forms: KL(softmax(a) ||
    softmax(b)) with (a, b) = (x, y) for the reverse forms, (y, x) for the forward ones, a
    restricted to K for the top-k forms (the chooser renormalised over K, the other side
    full). c = scale / tau. Returns (value, status)."""
    REVERSE: tl.constexpr = FORM == RKL or FORM == RKL_TOP_K
    TOP_K: tl.constexpr = FORM == FKL_TOP_K or FORM == RKL_TOP_K
    cols = tl.arange(0, BLOCK)
    ma = tl.full([], float("-inf"), tl.float32)
    mb = tl.full([], float("-inf"), tl.float32)
    sa = tl.zeros([], tl.float64)
    sb = tl.zeros([], tl.float64)
    w = tl.zeros([], tl.float64)
    bad_z = tl.zeros([], tl.int32)
    bad_r = tl.zeros([], tl.int32)
    ties = tl.zeros([], tl.int32)
    kept = tl.zeros([], tl.int32)
    for j0 in range(0, V, BLOCK):
        offs = j0 + cols
        inside = offs < V
        zraw, x = _load(z_row, offs, inside, inv_tau)
        rraw, y = _load(r_row, offs, inside, inv_tau)
        bad_z = tl.maximum(bad_z, _bad(zraw))
        bad_r = tl.maximum(bad_r, _bad(rraw))
        if REVERSE:
            a, b = x, y
        else:
            a, b = y, x
        if TOP_K:
            in_k, n = _in_top_k(zraw if REVERSE else rraw, inside, thr, take, ties)
            ties += n
            kept = _store_indices(idx_row, offs, in_k, kept)
            a = tl.where(in_k, a, float("-inf"))
        ma, sa, mb, sb, w = _kl_step(ma, sa, mb, sb, w, a, b)
    value = w / sa - tl.log(sa) + tl.log(sb)
    bad_a = (bad_z if REVERSE else bad_r) | (sa == 0).to(tl.int32)
    bad_b = (bad_r if REVERSE else bad_z) | (sb == 0).to(tl.int32)
    status = tl.where(bad_a != 0, BAD_Z if REVERSE else BAD_REF,
                      tl.where(bad_b != 0, BAD_REF if REVERSE else BAD_Z, OK))
    if WRITE_GRAD:
        if REVERSE:
            status = tl.where((status == OK) & (value == float("inf")), INFINITE_RKL, status)
        lse_a = _f64(_shift(ma)) + tl.log(sa)
        lse_b = _f64(_shift(mb)) + tl.log(sb)
        lsa = _log_sum(ma, lse_a)
        lsb = _log_sum(mb, lse_b)
        gap = (lse_a - lse_b).to(tl.float32)
        shift_term = (lse_a - lse_b + value).to(tl.float32)  # log pi - log ref - value + (b - a)
        ties = tl.zeros([], tl.int32)
        for j0 in range(0, V, BLOCK):
            offs = j0 + cols
            inside = offs < V
            zraw, x = _load(z_row, offs, inside, inv_tau)
            rraw, y = _load(r_row, offs, inside, inv_tau)
            if REVERSE:
                a, b = x, y
            else:
                a, b = y, x
            if TOP_K:
                in_k, n = _in_top_k(zraw if REVERSE else rraw, inside, thr, take, ties)
                ties += n
                a = tl.where(in_k, a, float("-inf"))
            p = tl.exp((a - _shift(ma)) - lsa)
            if REVERSE:  # d/dx: p (log p - log q - value), p = softmax(a), q = softmax(b)
                g = tl.where(p > 0, c * p * ((a - b) - shift_term), 0.0)
            else:  # d/dx of KL(softmax(a) || softmax(x)): softmax(x) - softmax(a)
                g = c * _minus(tl.exp((b - _shift(mb)) - lsb), p, (a - b) - gap)
            tl.store(g_row + offs, g.to(g_row.dtype.element_ty), mask=inside)
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
    cols = tl.arange(0, BLOCK)
    mx = tl.full([], float("-inf"), tl.float32)
    my = tl.full([], float("-inf"), tl.float32)
    sx = tl.zeros([], tl.float64)
    sy = tl.zeros([], tl.float64)
    bad_z = tl.zeros([], tl.int32)
    bad_r = tl.zeros([], tl.int32)
    for j0 in range(0, V, BLOCK):
        offs = j0 + cols
        inside = offs < V
        zraw, x = _load(z_row, offs, inside, inv_tau)
        rraw, y = _load(r_row, offs, inside, inv_tau)
        bad_z = tl.maximum(bad_z, _bad(zraw))
        bad_r = tl.maximum(bad_r, _bad(rraw))
        mx, sx = _lse_step(mx, sx, x)
        my, sy = _lse_step(my, sy, y)
    lse_x = _f64(_shift(mx)) + tl.log(sx)
    lse_y = _f64(_shift(my)) + tl.log(sy)
    lsx = _log_sum(mx, lse_x)
    lsy = _log_sum(my, lse_y)
    gap = (lse_x - lse_y).to(tl.float32)
    log_lam = tl.log(lam)
    log_rest = tl.log(1.0 - lam)
    kl_pm = tl.zeros([], tl.float64)
    kl_rm = tl.zeros([], tl.float64)
    for j0 in range(0, V, BLOCK):
        offs = j0 + cols
        inside = offs < V
        _, x = _load(z_row, offs, inside, inv_tau)
        _, y = _load(r_row, offs, inside, inv_tau)
        pm, rm = _log_ratios_to_mix(x, y, gap, log_lam, log_rest)
        p = tl.exp((x - _shift(mx)) - lsx)
        r = tl.exp((y - _shift(my)) - lsy)
        kl_pm += _f64(tl.sum(tl.where(p > 0, p * pm, 0.0), 0))
        kl_rm += _f64(tl.sum(tl.where(r > 0, r * rm, 0.0), 0))
    value = lam * kl_rm + (1.0 - lam) * kl_pm
    status = tl.where((bad_z != 0) | (sx == 0), BAD_Z,
                      tl.where((bad_r != 0) | (sy == 0), BAD_REF, OK))
    if WRITE_GRAD:
        kl = kl_pm.to(tl.float32)
        for j0 in range(0, V, BLOCK):
            offs = j0 + cols
            inside = offs < V
            _, x = _load(z_row, offs, inside, inv_tau)
            _, y = _load(r_row, offs, inside, inv_tau)
            pm, _ = _log_ratios_to_mix(x, y, gap, log_lam, log_rest)
            p = tl.exp((x - _shift(mx)) - lsx)
            g = tl.where(p > 0, (c * (1.0 - lam)) * p * (pm - kl), 0.0)
            tl.store(g_row + offs, g.to(g_row.dtype.element_ty), mask=inside)
    return value, status


@triton.jit
def _tail_row(z_row, r_row, g_row, idx_row, thr, take, V, inv_tau, c,
              REVERSE: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """The tail forms: KL from the chooser's k + 1 bins (each entry of K, and the tail V \\ K)
    to the other side's, both with their full-vocabulary probabilities; (a, b) = (x, y)
    for the reverse form (K the policy's), (y, x) for the forward one. The tails'
    log-masses are summed directly over the entries outside K. Returns (value, status)."""
    cols = tl.arange(0, BLOCK)
    mka = tl.full([], float("-inf"), tl.float32)  # K's entries of a and b: the KL state
    mkb = tl.full([], float("-inf"), tl.float32)
    ska = tl.zeros([], tl.float64)
    skb = tl.zeros([], tl.float64)
    wk = tl.zeros([], tl.float64)
    mta = tl.full([], float("-inf"), tl.float32)  # the tails' log-sum-exp states
    mtb = tl.full([], float("-inf"), tl.float32)
    sta = tl.zeros([], tl.float64)
    stb = tl.zeros([], tl.float64)
    bad_z = tl.zeros([], tl.int32)
    bad_r = tl.zeros([], tl.int32)
    ties = tl.zeros([], tl.int32)
    kept = tl.zeros([], tl.int32)
    for j0 in range(0, V, BLOCK):
        offs = j0 + cols
        inside = offs < V
        zraw, x = _load(z_row, offs, inside, inv_tau)
        rraw, y = _load(r_row, offs, inside, inv_tau)
        bad_z = tl.maximum(bad_z, _bad(zraw))
        bad_r = tl.maximum(bad_r, _bad(rraw))
        in_k, n = _in_top_k(zraw if REVERSE else rraw, inside, thr, take, ties)
        ties += n
        kept = _store_indices(idx_row, offs, in_k, kept)
        if REVERSE:
            a, b = x, y
        else:
            a, b = y, x
        mka, ska, mkb, skb, wk = _kl_step(mka, ska, mkb, skb, wk,
                                          tl.where(in_k, a, float("-inf")),
                                          tl.where(in_k, b, float("-inf")))
        mta, sta = _lse_step(mta, sta, tl.where(in_k, float("-inf"), a))
        mtb, stb = _lse_step(mtb, stb, tl.where(in_k, float("-inf"), b))
    lka = _f64(_shift(mka)) + tl.log(ska)  # log-masses (unnormalised) of K and of the tail
    lkb = _f64(_shift(mkb)) + tl.log(skb)
    lta = _f64(_shift(mta)) + tl.log(sta)
    ltb = _f64(_shift(mtb)) + tl.log(stb)
    lse_a = _log_add(lka, lta)
    lse_b = _log_add(lkb, ltb)
    # K's bins: sum_K e^(a - lse_a) ((a - lse_a) - (b - lse_b)), from the KL state.
    k_terms = tl.where(ska > 0, tl.exp(lka - lse_a) * (
        wk / ska + (lse_b - _f64(_shift(mkb))) - (lse_a - _f64(_shift(mka)))), 0.0)
    la_tail = lta - lse_a
    lb_tail = ltb - lse_b
    tail_mass = tl.exp(la_tail)
    value = k_terms + tl.where(tail_mass > 0, tail_mass * (la_tail - lb_tail), 0.0)
    lse_z = lse_a if REVERSE else lse_b
    lse_r = lse_b if REVERSE else lse_a
    status = tl.where((bad_z != 0) | (lse_z == float("-inf")), BAD_Z,
                      tl.where((bad_r != 0) | (lse_r == float("-inf")), BAD_REF, OK))
    if WRITE_GRAD:
        mz = tl.maximum(mka, mta) if REVERSE else tl.maximum(mkb, mtb)
        mr = tl.maximum(mkb, mtb) if REVERSE else tl.maximum(mka, mta)
        lsz = _log_sum(mz, lse_z)
        lsr = _log_sum(mr, lse_r)
        if REVERSE:
            status = tl.where((status == OK) & (value == float("inf")), INFINITE_RKL, status)
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
            offs = j0 + cols
            inside = offs < V
            zraw, x = _load(z_row, offs, inside, inv_tau)
            rraw, y = _load(r_row, offs, inside, inv_tau)
            in_k, n = _in_top_k(zraw if REVERSE else rraw, inside, thr, take, ties)
            ties += n
            lp = (x - _shift(mz)) - lsz
            p = tl.exp(lp)
            if REVERSE:
                g = tl.where(p > 0, c * p * tl.where(in_k, (x - y) - on_shift, h), 0.0)
            else:
                ref = tl.exp((y - _shift(mr)) - lsr)
                g = c * tl.where(in_k, _minus(p, ref, (y - x) - gap_rz), p * off_k)
            tl.store(g_row + offs, g.to(g_row.dtype.element_ty), mask=inside)
    return value, status


@triton.jit
def _zero_row(g_row, idx_row, V, K, WRITE_GRAD: tl.constexpr, TOP_K: tl.constexpr,
              BLOCK: tl.constexpr):
    """A masked row: never read; its gradient row 0 and its indices -1."""
    cols = tl.arange(0, BLOCK)
    if WRITE_GRAD:
        for j0 in range(0, V, BLOCK):
            offs = j0 + cols
            tl.store(g_row + offs, tl.zeros([BLOCK], tl.float32).to(g_row.dtype.element_ty),
                     mask=offs < V)
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
