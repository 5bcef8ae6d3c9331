"""The Triton kernels of the fused KD loss (Hinton, Vinyals, Dean 2015); launched by kd_triton.py.

Per row of student logits s and teacher logits t (C classes), at temperature T, with
k = log2(e)/T, centred logits d_s = s − max(s), d_t = t − max(t):

    z_q = Σ 2^(k·d_s)   z_p = Σ 2^(k·d_t)   z_1 = Σ 2^(log2(e)·d_s)     (softmax sums at T and at 1)
    A   = Σ 2^(k·d_t)·(d_t − d_s)                                     (teacher-weighted log-ratio)
    KL  = ln2·(k·A/z_p + log2 z_q − log2 z_p)                         (KL(p ‖ q), p the teacher's)
    CE  = ln2·log2 z_1 − d_s[y]
    ∂/∂s = scale·[(1−α)·T·w·(q − p) + α·w_ce·(softmax(s) − onehot(y))]

All six statistics merge across blocks and across programs (online softmax, Milakov &
Gimelshein 2018): a block with its own maxima joins a running one by rescaling with
2^(k·(m_old − m_new)), so a row is read once for its statistics. Per element: two exp2 (three
with CE at T ≠ 1), no divides (each row's sums are inverted once), fp32 throughout, and the
gradient is rounded once, to the input dtype, with the term's weight already in ``scale``.

Maxima start at −FLT_MAX rather than −inf, so a block of −inf (masked) classes never computes
(−inf) − (−inf); classes the teacher gives probability 0 add 0 to A (a where(), not 0·inf).

Kernels: ``_kd_rows_kernel`` (a persistent grid over tiles of ROWS rows; the row in one block,
or, with SINGLE=False, a statistics loop and a gradient loop over blocks of one row) and, for
rows too long for one program, ``_kd_split_stats_kernel`` + ``_kd_split_grad_kernel`` (each row
split into chunks across programs; the second kernel combines the chunks' statistics).
``_kd_scale_grad_kernel`` is backward: it scales the stored gradient only where grad_output ≠ 1.
"""

from __future__ import annotations

import triton
import triton.language as tl

_K_LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) == exp2(x·log2e)
_K_LN2 = tl.constexpr(0.6931471805599453)  # ln(x) == log2(x)·ln2
_K_M0 = tl.constexpr(-3.4028234663852886e38)  # −FLT_MAX: the running maxima's start
_K_NEG_INF = tl.constexpr(float("-inf"))
N_STATS = 6  # per (row, chunk) in the split workspace: m_s, m_t, z_q, z_p, z_1, A


@triton.jit
def _merge_block(m_s, m_t, z_q, z_p, z_1, a, s, t, k_soft, HAS_CE: tl.constexpr, SAME_T: tl.constexpr):
    """Running statistics (R,) joined with a block s, t (R, B) of fp32 (masked lanes −inf)."""
    m_s_new = tl.maximum(m_s, tl.max(s, axis=1))
    m_t_new = tl.maximum(m_t, tl.max(t, axis=1))
    dm_s = m_s - m_s_new  # ≤ 0 and finite (maxima start at −FLT_MAX)
    dm_t = m_t - m_t_new
    f_p = tl.exp2(dm_t * k_soft)  # one exp2 per row and block for each rescale
    d_s = s - m_s_new[:, None]
    d_t = t - m_t_new[:, None]
    e_q = tl.exp2(d_s * k_soft)
    e_p = tl.exp2(d_t * k_soft)
    # A rescales with p's factor and shifts by the maxima's moves (z_p before its update).
    a = f_p * (a + z_p * (dm_t - dm_s)) + tl.sum(tl.where(e_p > 0.0, e_p * (d_t - d_s), 0.0), axis=1)
    z_p = z_p * f_p + tl.sum(e_p, axis=1)
    z_q = z_q * tl.exp2(dm_s * k_soft) + tl.sum(e_q, axis=1)
    if HAS_CE:
        if SAME_T:
            z_1 = z_q
        else:
            z_1 = z_1 * tl.exp2(dm_s * _K_LOG2E) + tl.sum(tl.exp2(d_s * _K_LOG2E), axis=1)
    return m_s_new, m_t_new, z_q, z_p, z_1, a


@triton.jit
def _ce_rows(y_ptr, s_ptr, rows, row_ok, stride_s, C, ignore_index, w_ce0, inv_n_lab_ptr, CE_MEAN: tl.constexpr):
    """(label made safe to gather, CE weight, s[y]) per row. w_ce0 = α·scale; unlabeled rows get 0.
    An out-of-range label (only with check_label_range=False) makes s[y] NaN, never a wild read."""
    y = tl.load(y_ptr + rows, mask=row_ok, other=ignore_index).to(tl.int64)
    labeled = (y != ignore_index) & row_ok
    in_range = (y >= 0) & (y < C)
    w_ce = tl.where(labeled, w_ce0, 0.0)
    if CE_MEAN:
        w_ce = w_ce * tl.load(inv_n_lab_ptr)  # 1/n_labeled, a device scalar: no host sync
    y = tl.where(labeled & in_range, y, 0)
    s_y = tl.load(s_ptr + rows * stride_s + y, mask=row_ok, other=0.0).to(tl.float32)
    s_y = tl.where(labeled & ~in_range, float("nan"), s_y)
    return y, w_ce, s_y


@triton.jit
def _finish_rows(m_s, z_q, z_p, z_1, a, s_y, w_ce, k_soft, w_kd, HAS_CE: tl.constexpr):
    """(loss, 1/z_q, 1/z_p, 1/z_1) per row from its statistics; w_kd = (1−α)·T²·scale (·1/N)."""
    r_q = 1.0 / z_q
    r_p = 1.0 / z_p
    loss = w_kd * ((a * r_p * k_soft + tl.log2(z_q) - tl.log2(z_p)) * _K_LN2)
    r_1 = r_q
    if HAS_CE:
        r_1 = 1.0 / z_1
        ce = tl.log2(z_1) * _K_LN2 - (s_y - m_s)
        loss += tl.where(w_ce != 0.0, w_ce * ce, 0.0)  # where(): an unlabeled row's CE may be inf
    return loss, r_q, r_p, r_1


@triton.jit
def _grad_block(e_q, e_p, e_1, r_q, r_p, r_1, g_kd, w_ce, cols, y, HAS_CE: tl.constexpr):
    """∂loss/∂s for a block (R, B), in fp32; g_kd = (1−α)·T·scale (·1/N)."""
    g = g_kd * (e_q * r_q[:, None] - e_p * r_p[:, None])
    if HAS_CE:
        g += w_ce[:, None] * (e_1 * r_1[:, None] - tl.where(cols[None, :] == y[:, None], 1.0, 0.0))
    return g


@triton.jit
def _grad_of_logits(s, t, m_s, m_t, k_soft, r_q, r_p, r_1, g_kd, w_ce, cols, y,
                    HAS_CE: tl.constexpr, SAME_T: tl.constexpr):
    """∂loss/∂s for a block (R, B) of raw logits s, t against the row maxima m_s, m_t (R,):
    the exponentials the gradient needs (the CE one only when its temperature differs), then
    _grad_block. Shared by the looped and the split kernels' gradient passes."""
    d_s = s - m_s[:, None]
    e_q = tl.exp2(d_s * k_soft)
    e_p = tl.exp2((t - m_t[:, None]) * k_soft)
    e_1 = e_q
    if HAS_CE and not SAME_T:
        e_1 = tl.exp2(d_s * _K_LOG2E)
    return _grad_block(e_q, e_p, e_1, r_q, r_p, r_1, g_kd, w_ce, cols, y, HAS_CE)



@triton.jit
def _kd_rows_kernel(
    s_ptr, t_ptr, y_ptr, g_ptr, loss_ptr, inv_n_lab_ptr,
    N, C, C_BUCKET, stride_s, stride_t, stride_g,
    k_soft, w_kd, g_kd, w_ce0, ignore_index,
    HAS_CE: tl.constexpr, CE_MEAN: tl.constexpr, COMPUTE_GRAD: tl.constexpr, SAME_T: tl.constexpr,
    SINGLE: tl.constexpr,  # the row fits one block: read once, gradient from registers
    ROWS: tl.constexpr, BLOCK: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Persistent: program p takes the tiles p, p + P, p + 2P, … of ROWS rows each.
    C_BUCKET (next power of two of C) is only the autotuner's key."""
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    n_tiles = tl.cdiv(N, ROWS)
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        col_ok = cols < C
        for tile in tl.range(pid, n_tiles, n_prog, num_stages=NUM_STAGES):
            rows = (tile * ROWS + tl.arange(0, ROWS)).to(tl.int64)  # (R,) int64: row·stride cannot overflow
            row_ok = rows < N
            mask = row_ok[:, None] & col_ok[None, :]
            s = tl.load(s_ptr + rows[:, None] * stride_s + cols[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
            t = tl.load(t_ptr + rows[:, None] * stride_t + cols[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
            m_s = tl.maximum(tl.max(s, axis=1), _K_M0)  # (R,)
            m_t = tl.maximum(tl.max(t, axis=1), _K_M0)
            d_s = s - m_s[:, None]
            d_t = t - m_t[:, None]
            e_q = tl.exp2(d_s * k_soft)
            e_p = tl.exp2(d_t * k_soft)
            z_q = tl.sum(e_q, axis=1)
            z_p = tl.sum(e_p, axis=1)
            a = tl.sum(tl.where(e_p > 0.0, e_p * (d_t - d_s), 0.0), axis=1)
            e_1 = e_q
            z_1 = z_q
            y = rows
            w_ce = z_q
            s_y = z_q
            if HAS_CE:
                if not SAME_T:
                    e_1 = tl.exp2(d_s * _K_LOG2E)
                    z_1 = tl.sum(e_1, axis=1)
                y, w_ce, s_y = _ce_rows(y_ptr, s_ptr, rows, row_ok, stride_s, C, ignore_index, w_ce0,
                                        inv_n_lab_ptr, CE_MEAN)
            loss, r_q, r_p, r_1 = _finish_rows(m_s, z_q, z_p, z_1, a, s_y, w_ce, k_soft, w_kd, HAS_CE)
            tl.store(loss_ptr + rows, loss, mask=row_ok)
            if COMPUTE_GRAD:
                g = _grad_block(e_q, e_p, e_1, r_q, r_p, r_1, g_kd, w_ce, cols, y, HAS_CE)
                tl.store(g_ptr + rows[:, None] * stride_g + cols[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)
    else:
        n_blocks = tl.cdiv(C, BLOCK)
        for tile in range(pid, n_tiles, n_prog):
            rows = (tile * ROWS + tl.arange(0, ROWS)).to(tl.int64)
            row_ok = rows < N
            s_row = s_ptr + rows[:, None] * stride_s
            t_row = t_ptr + rows[:, None] * stride_t
            m_s = tl.full([ROWS], _K_M0, tl.float32)
            m_t = tl.full([ROWS], _K_M0, tl.float32)
            z_q = tl.zeros([ROWS], tl.float32)
            z_p = tl.zeros([ROWS], tl.float32)
            z_1 = tl.zeros([ROWS], tl.float32)
            a = tl.zeros([ROWS], tl.float32)
            for b in tl.range(0, n_blocks, num_stages=NUM_STAGES):  # statistics: s and t read once
                offs = b * BLOCK + cols
                mask = row_ok[:, None] & (offs < C)[None, :]
                s = tl.load(s_row + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
                t = tl.load(t_row + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
                m_s, m_t, z_q, z_p, z_1, a = _merge_block(m_s, m_t, z_q, z_p, z_1, a, s, t, k_soft, HAS_CE, SAME_T)
            y = rows
            w_ce = z_q
            s_y = z_q
            if HAS_CE:
                y, w_ce, s_y = _ce_rows(y_ptr, s_ptr, rows, row_ok, stride_s, C, ignore_index, w_ce0,
                                        inv_n_lab_ptr, CE_MEAN)
            loss, r_q, r_p, r_1 = _finish_rows(m_s, z_q, z_p, z_1, a, s_y, w_ce, k_soft, w_kd, HAS_CE)
            tl.store(loss_ptr + rows, loss, mask=row_ok)
            if COMPUTE_GRAD:
                # Gradient: blocks in reverse, so the ones read last above are likeliest still in L2.
                for i in tl.range(0, n_blocks, num_stages=NUM_STAGES):
                    offs = (n_blocks - 1 - i) * BLOCK + cols
                    mask = row_ok[:, None] & (offs < C)[None, :]
                    s = tl.load(s_row + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
                    t = tl.load(t_row + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
                    g = _grad_of_logits(s, t, m_s, m_t, k_soft, r_q, r_p, r_1, g_kd, w_ce, offs, y, HAS_CE, SAME_T)
                    tl.store(g_ptr + rows[:, None] * stride_g + offs[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kd_split_stats_kernel(
    s_ptr, t_ptr, ws_ptr, C, C_BUCKET, stride_s, stride_t, n_chunks, k_soft,
    HAS_CE: tl.constexpr, SAME_T: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Program (row, chunk): the chunk's six statistics into ws[row, chunk, :]."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    rows = row + tl.zeros([1], tl.int64)  # (1,): the row-tile helpers with one row
    cols = tl.arange(0, BLOCK)
    m_s = tl.full([1], _K_M0, tl.float32)
    m_t = tl.full([1], _K_M0, tl.float32)
    z_q = tl.zeros([1], tl.float32)
    z_p = tl.zeros([1], tl.float32)
    z_1 = tl.zeros([1], tl.float32)
    a = tl.zeros([1], tl.float32)
    for b in tl.range(0, CHUNK // BLOCK, num_stages=NUM_STAGES):
        offs = chunk * CHUNK + b * BLOCK + cols
        mask = (offs < C)[None, :]
        s = tl.load(s_ptr + rows[:, None] * stride_s + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
        t = tl.load(t_ptr + rows[:, None] * stride_t + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
        m_s, m_t, z_q, z_p, z_1, a = _merge_block(m_s, m_t, z_q, z_p, z_1, a, s, t, k_soft, HAS_CE, SAME_T)
    out = ws_ptr + (rows * n_chunks + chunk) * 6
    tl.store(out + 0, m_s)
    tl.store(out + 1, m_t)
    tl.store(out + 2, z_q)
    tl.store(out + 3, z_p)
    tl.store(out + 4, z_1)
    tl.store(out + 5, a)


@triton.jit
def _kd_split_grad_kernel(
    s_ptr, t_ptr, y_ptr, g_ptr, loss_ptr, inv_n_lab_ptr, ws_ptr,
    C, C_BUCKET, stride_s, stride_t, stride_g, n_chunks,
    k_soft, w_kd, g_kd, w_ce0, ignore_index,
    HAS_CE: tl.constexpr, CE_MEAN: tl.constexpr, COMPUTE_GRAD: tl.constexpr, SAME_T: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK: tl.constexpr, N_CHUNKS_P2: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """Program (row, chunk): combine the row's chunk statistics, then write the chunk's gradient
    (and, chunk 0, the row's loss)."""
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    rows = row + tl.zeros([1], tl.int64)
    ch = tl.arange(0, N_CHUNKS_P2)
    ok = ch < n_chunks
    src = ws_ptr + (row * n_chunks + ch) * 6
    ms_c = tl.load(src + 0, mask=ok, other=_K_M0)  # (N_CHUNKS_P2,)
    mt_c = tl.load(src + 1, mask=ok, other=_K_M0)
    m_s = tl.max(ms_c, axis=0)
    m_t = tl.max(mt_c, axis=0)
    f_p = tl.exp2((mt_c - m_t) * k_soft)
    zp_c = tl.load(src + 3, mask=ok, other=0.0)
    a_c = tl.load(src + 5, mask=ok, other=0.0)
    z_q = tl.sum(tl.load(src + 2, mask=ok, other=0.0) * tl.exp2((ms_c - m_s) * k_soft), axis=0)
    z_p = tl.sum(zp_c * f_p, axis=0)
    a = tl.sum(f_p * (a_c + zp_c * ((mt_c - m_t) - (ms_c - m_s))), axis=0)
    z_1 = z_q
    if HAS_CE and not SAME_T:
        z_1 = tl.sum(tl.load(src + 4, mask=ok, other=0.0) * tl.exp2((ms_c - m_s) * _K_LOG2E), axis=0)
    # scalars -> (1,) for the row-tile helpers
    zero = tl.zeros([1], tl.float32)
    m_s1 = m_s + zero
    m_t1 = m_t + zero
    row_ok = rows >= 0
    y = rows
    w_ce = zero
    s_y = zero
    if HAS_CE:
        y, w_ce, s_y = _ce_rows(y_ptr, s_ptr, rows, row_ok, stride_s, C, ignore_index, w_ce0, inv_n_lab_ptr, CE_MEAN)
    loss, r_q, r_p, r_1 = _finish_rows(m_s1, z_q + zero, z_p + zero, z_1 + zero, a + zero, s_y, w_ce, k_soft, w_kd,
                                       HAS_CE)
    tl.store(loss_ptr + rows, loss, mask=row_ok & (chunk == 0))
    if COMPUTE_GRAD:
        cols = tl.arange(0, BLOCK)
        for b in tl.range(0, CHUNK // BLOCK, num_stages=NUM_STAGES):
            offs = chunk * CHUNK + b * BLOCK + cols
            mask = (offs < C)[None, :]
            s = tl.load(s_ptr + rows[:, None] * stride_s + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
            t = tl.load(t_ptr + rows[:, None] * stride_t + offs[None, :], mask=mask, other=_K_NEG_INF).to(tl.float32)
            g = _grad_of_logits(s, t, m_s1, m_t1, k_soft, r_q, r_p, r_1, g_kd, w_ce, offs, y, HAS_CE, SAME_T)
            tl.store(g_ptr + rows[:, None] * stride_g + offs[None, :], g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kd_scale_grad_kernel(g_ptr, go_ptr, C, stride_g, stride_go, BLOCK: tl.constexpr):
    """Backward: g[row] *= grad_output[row] in fp32, only where grad_output ≠ 1. The test is a
    load mask, so with grad_output == 1 (training: the weight is in the kernel) no gradient
    byte moves and the host never reads grad_output."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    go = tl.load(go_ptr + row * stride_go).to(tl.float32)
    mask = offs < tl.where(go != 1.0, C, 0)  # nothing to do for a row whose grad_output is 1
    g = tl.load(g_ptr + row * stride_g + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(g_ptr + row * stride_g + offs, (g * go).to(g_ptr.dtype.element_ty), mask=mask)
