"""The top-k forms over vocabulary shards (klgrad.shards): the global K, chosen from every
rank's candidates, and each form's value and slice gradient from all-reduced sums over K
and over the rest of the row (docs/logits.md, "Top-k forms" and "Vocabulary-parallel
shards").

K is the chooser's k largest logits over the whole vocabulary, ties to the smaller
vocabulary index, as the kernel chooses it: each rank sorts its slice (stably, so equal
logits keep their index order), offers its first k entries (padded with -inf at indices past
the vocabulary when the slice is narrower than k), and every rank all-gathers the offers and
takes the k largest of them by the same rule. The tails R = ref(V \\ K) and P = pi(V \\ K) are
summed directly over the entries outside K, as the kernel sums them (never 1 - mass(K)).
"""
import torch

__all__ = ["FORMS", "global_top_k", "in_top_k", "divergence"]

# form: is the reference the chooser (the forward forms) or the policy (the reverse ones)
FORMS = {"forward-kl-top-k": "ref", "forward-kl-top-k-tail": "ref",
         "reverse-kl-top-k": "policy", "reverse-kl-top-k-tail": "policy"}


def _by_index_then_value(values, indices):
    """values and indices reordered: descending value, ascending index among equal values."""
    by_index = indices.argsort(-1)
    values, indices = values.gather(-1, by_index), indices.gather(-1, by_index)
    order = torch.sort(values, dim=-1, descending=True, stable=True).indices
    return values.gather(-1, order), indices.gather(-1, order)


def _offer(logits, k, offset, vocabulary):
    """This slice's k best (values, vocabulary indices), rows x k; a slice narrower than k
    pads with -inf at indices vocabulary, vocabulary + 1, ... (after every real entry)."""
    rows, width = logits.shape
    columns = torch.arange(width, device=logits.device).expand(rows, width) + offset
    values, indices = _by_index_then_value(logits, columns)
    take = min(k, width)
    values, indices = values[:, :take], indices[:, :take]
    if take < k:
        pad = torch.arange(vocabulary, vocabulary + k - take, device=logits.device)
        values = torch.cat([values, values.new_full((rows, k - take), -float("inf"))], -1)
        indices = torch.cat([indices, pad.expand(rows, k - take)], -1)
    return values, indices


def global_top_k(logits, k, offset, vocabulary, group):
    """K (rows x k vocabulary indices, descending logit, ties to the smaller index) of the
    rows whose slices `logits` (rows x V_r, this rank's columns from `offset`) holds."""
    import torch.distributed as dist

    values, indices = _offer(logits, k, offset, vocabulary)
    world = dist.get_world_size(group)
    every_value = [torch.empty_like(values) for _ in range(world)]
    every_index = [torch.empty_like(indices) for _ in range(world)]
    dist.all_gather(every_value, values.contiguous(), group=group)
    dist.all_gather(every_index, indices.contiguous(), group=group)
    _, ranked = _by_index_then_value(torch.cat(every_value, -1), torch.cat(every_index, -1))
    return ranked[:, :k]


def in_top_k(top_k, offset, width):
    """A rows x width bool: which of this slice's entries are in K."""
    local = top_k - offset
    inside = (local >= 0) & (local < width)
    hits = torch.zeros(top_k.shape[0], width + 1, dtype=torch.bool, device=top_k.device)
    return hits.scatter_(1, torch.where(inside, local, width), True)[:, :width]


def _sums(group, *terms):
    """Each term (rows x V_r) summed over the whole row: float64 sums of the slices,
    all-reduced in one collective."""
    import torch.distributed as dist

    sums = torch.stack([t.sum(-1, dtype=torch.float64) for t in terms])
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return tuple(sums)


def _where(condition, x):
    return torch.where(condition, x, 0)


def _column(x, like):
    return x.to(like.dtype).unsqueeze(-1)


def _renormalised(form, lp, lr, k_mask, group):
    """forward-kl / reverse-kl over K: the chooser c renormalised over K against the other
    side's full softmax o at K: value S / c(K) - log c(K), S = sum_K c (log c - log o)."""
    p, r = torch.exp(lp), torch.exp(lr)
    (c, lc, lo) = (r, lr, lp) if FORMS[form] == "ref" else (p, lp, lr)
    mass, s = _sums(group, _where(k_mask, c), _where(k_mask & (c > 0), c * (lc - lo)))
    value = s / mass - torch.log(mass)
    if FORMS[form] == "ref":  # (pi - rt [K]) / tau
        return value, p - _where(k_mask, r / _column(mass, r))
    pt = p / _column(mass, p)  # pt (log pt - log ref - value) on K, 0 off K
    log_pt = lp - _column(torch.log(mass), lp)
    return value, _where(k_mask & (p > 0), pt * (log_pt - lr - _column(value, lp)))


def _xlog_ratio(x, y):
    """x log(x / y) per row, 0 where x is 0 (+inf where y is 0 < x)."""
    return torch.where(x > 0, x * (torch.log(x) - torch.log(y)), 0)


def _tail(form, lp, lr, k_mask, group):
    """The tail forms: K's bins and the tail bin, both sides' full-vocabulary masses."""
    p, r = torch.exp(lp), torch.exp(lr)
    (c, lc, lo) = (r, lr, lp) if FORMS[form] == "ref" else (p, lp, lr)
    ref_tail, pi_tail, s = _sums(group, _where(~k_mask, r), _where(~k_mask, p),
                                 _where(k_mask & (c > 0), c * (lc - lo)))
    log_r, log_p = _column(torch.log(ref_tail), lp), _column(torch.log(pi_tail), lp)
    if FORMS[form] == "ref":  # (pi - ref) on K, pi (1 - R / P) off K
        value = s + _xlog_ratio(ref_tail, pi_tail)
        off = _where(p > 0, p - torch.exp(lp + log_r - log_p))
        return value, torch.where(k_mask, p - r, off)
    value = s + _xlog_ratio(pi_tail, ref_tail)  # pi (log u_b - log r_b - value), b j's bin
    log_ratio = torch.where(k_mask, lp - lr, log_p - log_r)
    return value, _where(p > 0, p * (log_ratio - _column(value, lp)))


def divergence(form, lp, lr, k_mask, group):
    """(value per row (float64), d value / d (logits / tau) of the slice) of a top-k form,
    with the slice's global log-probabilities lp, lr and K's entries in k_mask."""
    run = _tail if form.endswith("-tail") else _renormalised
    return run(form, lp, lr, k_mask, group)
