//! The inner loop of mini-batch linear training, with hand-written AVX-512 and AVX2/FMA
//! versions chosen at run time and a portable scalar version everywhere else.
//!
//! Why by hand: the loop is two 32-wide passes per row (a dot product, then `g += err·x`),
//! and Rust never contracts `a*b + c` into a fused multiply-add on its own (it would change
//! rounding), so the compiled scalar loop runs at half the machine's FMA throughput even
//! with `-C target-cpu=native`. Why at run time: the addon ships as one binary per platform,
//! and a binary built for AVX2 would crash with SIGILL on an older CPU.
//!
//! The dispatch happens once per epoch (`sgd_epoch`) or per mini-batch, never per row, so
//! its cost is invisible. Every version computes the same sums in the same order of rows;
//! they differ only in rounding (FMA rounds once, and the SIMD lanes group a dot product's
//! terms differently), which the tests bound at 1e-12 relative per call and the bench at
//! 1e-9 on whole runs.

use std::sync::atomic::{AtomicU8, Ordering};

/// Which kernel runs: set once from CPU detection (the widest the CPU has), or forced by
/// `MLOPS_KERNEL=scalar|avx2|avx512` (to compare paths, or to rule a SIMD path out when
/// debugging; a forced kernel the CPU lacks falls back to the next narrower one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2Fma,
    /// AVX-512F: eight lanes, and masked loads for the last columns.
    Avx512,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2Fma => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }
}

static CHOSEN: AtomicU8 = AtomicU8::new(0); // 0 = undecided, 1 = scalar, 2 = avx2+fma, 3 = avx512

fn detect() -> Kernel {
    let forced = std::env::var("MLOPS_KERNEL").unwrap_or_default();
    let widest = match forced.as_str() {
        "scalar" => return Kernel::Scalar,
        "avx2" => Kernel::Avx2Fma,
        _ => Kernel::Avx512,
    };
    [Kernel::Avx512, Kernel::Avx2Fma]
        .into_iter()
        .filter(|&k| widest == Kernel::Avx512 || k == Kernel::Avx2Fma)
        .find(|&k| kernel_available(k))
        .unwrap_or(Kernel::Scalar)
}

/// The kernel this process uses (detected on first call).
pub fn kernel() -> Kernel {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Kernel::Scalar,
        2 => Kernel::Avx2Fma,
        3 => Kernel::Avx512,
        _ => {
            let k = detect();
            let code = match k {
                Kernel::Scalar => 1,
                Kernel::Avx2Fma => 2,
                Kernel::Avx512 => 3,
            };
            CHOSEN.store(code, Ordering::Relaxed);
            k
        }
    }
}

/// One mini-batch of squared-error gradient on raw rows: for each row `r` in `rows`,
/// `err = b + w·x_r − y_r`, `gw += err·x_r`, and returns `(Σ err, Σ err²)`.
/// `gw` must be zeroed by the caller (it accumulates).
#[inline]
pub fn batch_gradient(
    w: &[f64],
    b: f64,
    x: &[f64],
    y: &[f64],
    rows: &[usize],
    gw: &mut [f64],
) -> (f64, f64) {
    batch_gradient_with(kernel(), w, b, x, y, rows, gw)
}

/// `batch_gradient` with an explicit kernel (tests compare the two).
pub fn batch_gradient_with(
    k: Kernel,
    w: &[f64],
    b: f64,
    x: &[f64],
    y: &[f64],
    rows: &[usize],
    gw: &mut [f64],
) -> (f64, f64) {
    let d = w.len();
    assert_eq!(gw.len(), d, "gradient buffer length");
    check_rows(d, x, y, rows);
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if kernel_available(Kernel::Avx512) => {
            // SAFETY: the CPU supports AVX-512F (checked above), and every row slice was
            // bounds-checked against `x` and `y` just before.
            unsafe { avx512::batch_gradient(w, b, x, y, rows, gw) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma if kernel_available(Kernel::Avx2Fma) => {
            // SAFETY: the CPU supports AVX2 and FMA (checked above), and every row slice
            // was bounds-checked against `x` and `y` just before.
            unsafe { avx2::batch_gradient(w, b, x, y, rows, gw) }
        }
        _ => scalar_batch_gradient(w, b, x, y, rows, gw),
    }
}

/// One epoch of plain mini-batch SGD on squared error over `rows` of `x`/`y`, in that
/// order, `batch` rows per step: per batch, `g = Σ err·x / m + l2·w`,
/// `w += −lr·g`, `b −= lr·Σ err / m`. Returns `Σ err²` over the epoch (summed per batch,
/// then over batches). The scalar and AVX2 kernels do the per-batch arithmetic of
/// [`batch_gradient`] followed by that update, element for element. The AVX-512 one runs a
/// whole epoch in one call, eight rows at a time with the gradient in registers, and sums
/// in its own order (within 1e-12 of the scalar kernel per epoch, as the tests check).
#[allow(clippy::too_many_arguments)]
pub fn sgd_epoch(
    k: Kernel,
    w: &mut [f64],
    b: &mut f64,
    x: &[f64],
    y: &[f64],
    rows: &[usize],
    batch: usize,
    lr: f64,
    l2: f64,
) -> f64 {
    let d = w.len();
    assert!(batch > 0, "batch size");
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512 && d <= 32 && kernel_available(Kernel::Avx512) {
        check_rows(d, x, y, rows);
        // SAFETY: AVX-512F is present, and every row is inside `x` and `y` (checked).
        let epoch = match d.div_ceil(8) {
            0 | 1 => avx512::epoch::<1>,
            2 => avx512::epoch::<2>,
            3 => avx512::epoch::<3>,
            _ => avx512::epoch::<4>,
        };
        return unsafe { epoch(w, b, x, y, rows, batch, lr, l2) };
    }
    let mut gw = vec![0.0; d];
    let mut total = 0.0;
    for chunk in rows.chunks(batch) {
        gw.iter_mut().for_each(|g| *g = 0.0);
        let (gb, se) = batch_gradient_with(k, w, *b, x, y, chunk, &mut gw);
        total += se;
        let m = chunk.len() as f64;
        for (g, wj) in gw.iter_mut().zip(w.iter()) {
            *g = *g / m + l2 * wj;
        }
        for (wj, g) in w.iter_mut().zip(&gw) {
            *wj += -lr * g;
        }
        *b -= lr * (gb / m);
    }
    total
}

/// Sum of squared errors `Σ (b + w·x_r − y_r)²` over `rows` (validation and test losses).
pub fn sse(w: &[f64], b: f64, x: &[f64], y: &[f64], rows: &[usize]) -> f64 {
    sse_with(kernel(), w, b, x, y, rows)
}

/// `sse` with an explicit kernel (tests compare the two).
pub fn sse_with(k: Kernel, w: &[f64], b: f64, x: &[f64], y: &[f64], rows: &[usize]) -> f64 {
    let d = w.len();
    check_rows(d, x, y, rows);
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 if kernel_available(Kernel::Avx512) => {
            // SAFETY: AVX-512F is present, and every row was bounds-checked above.
            unsafe { avx512::sse(w, b, x, y, rows) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma if kernel_available(Kernel::Avx2Fma) => {
            // SAFETY: AVX2 and FMA are present, and every row was bounds-checked above.
            unsafe { avx2::sse(w, b, x, y, rows) }
        }
        _ => rows
            .iter()
            .map(|&r| {
                let e = b + dot(w, &x[r * d..(r + 1) * d]) - y[r];
                e * e
            })
            .sum(),
    }
}

/// Predictions `out[i] = b + w·x_rows[i]` (the scoring of validation and test rows).
pub fn predict(w: &[f64], b: f64, x: &[f64], rows: &[usize], out: &mut [f64]) {
    predict_with(kernel(), w, b, x, rows, out)
}

/// `predict` with an explicit kernel (tests compare the two).
pub fn predict_with(k: Kernel, w: &[f64], b: f64, x: &[f64], rows: &[usize], out: &mut [f64]) {
    let d = w.len();
    assert_eq!(out.len(), rows.len(), "output length");
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 | Kernel::Avx2Fma if kernel_available(k) => {
            for &r in rows {
                assert!((r + 1) * d <= x.len(), "row {r} out of range");
            }
            // SAFETY: the kernel's features are present (checked above), and every row was
            // bounds-checked just before.
            unsafe {
                if k == Kernel::Avx512 {
                    avx512::predict(w, b, x, rows, out)
                } else {
                    avx2::predict(w, b, x, rows, out)
                }
            }
        }
        _ => {
            for (o, &r) in out.iter_mut().zip(rows) {
                *o = b + dot(w, &x[r * d..(r + 1) * d]);
            }
        }
    }
}

/// Every row index must address a whole row of `x` and an entry of `y`: the SIMD kernels
/// read through raw pointers, so this check is what keeps them in bounds.
fn check_rows(d: usize, x: &[f64], y: &[f64], rows: &[usize]) {
    for &r in rows {
        assert!(
            (r + 1) * d <= x.len() && r < y.len(),
            "row {r} out of range"
        );
    }
}

/// Whether `k` can run on this CPU.
pub fn kernel_available(k: Kernel) -> bool {
    match k {
        Kernel::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => is_x86_feature_detected!("avx512f"),
        #[cfg(not(target_arch = "x86_64"))]
        Kernel::Avx2Fma | Kernel::Avx512 => false,
    }
}

fn scalar_batch_gradient(
    w: &[f64],
    b: f64,
    x: &[f64],
    y: &[f64],
    rows: &[usize],
    gw: &mut [f64],
) -> (f64, f64) {
    let d = w.len();
    let (mut gb, mut se) = (0.0, 0.0);
    for &r in rows {
        let row = &x[r * d..(r + 1) * d];
        let err = b + dot(w, row) - y[r];
        se += err * err;
        for (g, xi) in gw.iter_mut().zip(row) {
            *g += err * xi;
        }
        gb += err;
    }
    (gb, se)
}

/// Dot product with four independent accumulators (the same association as the AVX2
/// version's four lanes, so the two paths differ only by FMA rounding).
#[inline]
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let chunks = n / 4;
    for c in 0..chunks {
        let i = c * 4;
        acc[0] += a[i] * b[i];
        acc[1] += a[i + 1] * b[i + 1];
        acc[2] += a[i + 2] * b[i + 2];
        acc[3] += a[i + 3] * b[i + 3];
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for i in chunks * 4..n {
        s += a[i] * b[i];
    }
    s
}

/// `sse` and `predict` of a SIMD module, both over that module's `each_dot` (the loop that
/// differs between AVX2 and AVX-512), compiled for its `target_feature`.
#[cfg(target_arch = "x86_64")]
macro_rules! sse_and_predict {
    ($features:literal) => {
        /// `Σ (b + w·x_r − y_r)²`.
        #[target_feature(enable = $features)]
        pub unsafe fn sse(w: &[f64], b: f64, x: &[f64], y: &[f64], rows: &[usize]) -> f64 {
            let mut total = 0.0;
            each_dot(w, x, rows, |_, r, s| {
                let e = b + s - *y.get_unchecked(r);
                total += e * e;
            });
            total
        }

        /// `out[i] = b + w·x_rows[i]`.
        #[target_feature(enable = $features)]
        pub unsafe fn predict(w: &[f64], b: f64, x: &[f64], rows: &[usize], out: &mut [f64]) {
            each_dot(w, x, rows, |i, _, s| *out.get_unchecked_mut(i) = b + s);
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Calls `f(i, r, w·x_r)` for every row, in order, four rows at a time, so four
    /// independent dot products are in flight instead of one chain; each is summed in the
    /// same association as the scalar `dot`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn each_dot(w: &[f64], x: &[f64], rows: &[usize], mut f: impl FnMut(usize, usize, f64)) {
        let d = w.len();
        let full = d / 4 * 4;
        let wp = w.as_ptr();
        let hsum = |v: __m256d| {
            let lo = _mm256_castpd256_pd128(v);
            let hi = _mm256_extractf128_pd(v, 1);
            let pair = _mm_add_pd(lo, hi);
            _mm_cvtsd_f64(pair) + _mm_cvtsd_f64(_mm_unpackhi_pd(pair, pair))
        };
        let mut at = 0;
        let mut quads = rows.chunks_exact(4);
        for q in &mut quads {
            let p = [
                x.as_ptr().add(q[0] * d),
                x.as_ptr().add(q[1] * d),
                x.as_ptr().add(q[2] * d),
                x.as_ptr().add(q[3] * d),
            ];
            let mut acc = [_mm256_setzero_pd(); 4];
            let mut j = 0;
            while j < full {
                let wv = _mm256_loadu_pd(wp.add(j));
                for k in 0..4 {
                    acc[k] = _mm256_fmadd_pd(wv, _mm256_loadu_pd(p[k].add(j)), acc[k]);
                }
                j += 4;
            }
            for k in 0..4 {
                let mut s = hsum(acc[k]);
                for t in full..d {
                    s += *wp.add(t) * *p[k].add(t);
                }
                f(at + k, q[k], s);
            }
            at += 4;
        }
        for &r in quads.remainder() {
            let xp = x.as_ptr().add(r * d);
            let mut acc = _mm256_setzero_pd();
            let mut j = 0;
            while j < full {
                acc = _mm256_fmadd_pd(_mm256_loadu_pd(wp.add(j)), _mm256_loadu_pd(xp.add(j)), acc);
                j += 4;
            }
            let mut s = hsum(acc);
            for t in full..d {
                s += *wp.add(t) * *xp.add(t);
            }
            f(at, r, s);
            at += 1;
        }
    }

    sse_and_predict!("avx2,fma");

    /// Rows per pass: the errors of a chunk are computed first (independent dot products the
    /// CPU overlaps), then the gradient accumulates over the chunk with its running sums held
    /// in registers. Doing both per row, as the scalar loop does, chains every row's update
    /// on the previous one's store and runs at the FMA latency, not its throughput.
    const CHUNK: usize = 64;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn batch_gradient(
        w: &[f64],
        b: f64,
        x: &[f64],
        y: &[f64],
        rows: &[usize],
        gw: &mut [f64],
    ) -> (f64, f64) {
        let d = w.len();
        let full = d / 4 * 4;
        let (mut gb, mut se) = (0.0, 0.0);
        let wp = w.as_ptr();
        let gp = gw.as_mut_ptr();
        let mut err = [0.0f64; CHUNK];
        for chunk in rows.chunks(CHUNK) {
            // Phase 1: errors.
            for (i, &r) in chunk.iter().enumerate() {
                let xp = x.as_ptr().add(r * d);
                let mut acc0 = _mm256_setzero_pd();
                let mut acc1 = _mm256_setzero_pd();
                let mut j = 0;
                while j + 8 <= full {
                    acc0 = _mm256_fmadd_pd(
                        _mm256_loadu_pd(wp.add(j)),
                        _mm256_loadu_pd(xp.add(j)),
                        acc0,
                    );
                    acc1 = _mm256_fmadd_pd(
                        _mm256_loadu_pd(wp.add(j + 4)),
                        _mm256_loadu_pd(xp.add(j + 4)),
                        acc1,
                    );
                    j += 8;
                }
                if j < full {
                    acc0 = _mm256_fmadd_pd(
                        _mm256_loadu_pd(wp.add(j)),
                        _mm256_loadu_pd(xp.add(j)),
                        acc0,
                    );
                }
                let acc = _mm256_add_pd(acc0, acc1);
                // Lanes (0+2) + (1+3), as the scalar version sums its accumulators.
                let lo = _mm256_castpd256_pd128(acc);
                let hi = _mm256_extractf128_pd(acc, 1);
                let pair = _mm_add_pd(lo, hi);
                let mut s = _mm_cvtsd_f64(pair) + _mm_cvtsd_f64(_mm_unpackhi_pd(pair, pair));
                for k in full..d {
                    s += *wp.add(k) * *xp.add(k);
                }
                let e = b + s - *y.get_unchecked(r);
                se += e * e;
                gb += e;
                err[i] = e;
            }
            // Phase 2: g += Σ err_r · x_r, sixteen columns at a time in four registers.
            let mut j = 0;
            while j + 16 <= full {
                let mut a0 = _mm256_loadu_pd(gp.add(j));
                let mut a1 = _mm256_loadu_pd(gp.add(j + 4));
                let mut a2 = _mm256_loadu_pd(gp.add(j + 8));
                let mut a3 = _mm256_loadu_pd(gp.add(j + 12));
                for (i, &r) in chunk.iter().enumerate() {
                    let xp = x.as_ptr().add(r * d + j);
                    let e = _mm256_set1_pd(err[i]);
                    a0 = _mm256_fmadd_pd(e, _mm256_loadu_pd(xp), a0);
                    a1 = _mm256_fmadd_pd(e, _mm256_loadu_pd(xp.add(4)), a1);
                    a2 = _mm256_fmadd_pd(e, _mm256_loadu_pd(xp.add(8)), a2);
                    a3 = _mm256_fmadd_pd(e, _mm256_loadu_pd(xp.add(12)), a3);
                }
                _mm256_storeu_pd(gp.add(j), a0);
                _mm256_storeu_pd(gp.add(j + 4), a1);
                _mm256_storeu_pd(gp.add(j + 8), a2);
                _mm256_storeu_pd(gp.add(j + 12), a3);
                j += 16;
            }
            while j < full {
                let mut a0 = _mm256_loadu_pd(gp.add(j));
                for (i, &r) in chunk.iter().enumerate() {
                    a0 = _mm256_fmadd_pd(
                        _mm256_set1_pd(err[i]),
                        _mm256_loadu_pd(x.as_ptr().add(r * d + j)),
                        a0,
                    );
                }
                _mm256_storeu_pd(gp.add(j), a0);
                j += 4;
            }
            for k in full..d {
                let mut a = *gp.add(k);
                for (i, &r) in chunk.iter().enumerate() {
                    a += err[i] * *x.as_ptr().add(r * d + k);
                }
                *gp.add(k) = a;
            }
        }
        (gb, se)
    }
}

/// The AVX-512 versions. The same two phases as `avx2`, eight lanes wide: a 32-column row
/// is four loads and four FMAs per pass instead of eight, and the last `d % 8` columns go
/// through masked loads (which never touch memory in the masked-off lanes) instead of a
/// scalar tail.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes of the 8-column block starting at column `j` that are inside a `d`-wide row.
    #[inline(always)]
    fn lanes(d: usize, j: usize) -> __mmask8 {
        let left = d.saturating_sub(j);
        if left >= 8 {
            0xFF
        } else {
            ((1u32 << left) - 1) as __mmask8
        }
    }

    /// `w·x` for four rows at once: four independent chains in flight.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot4(wp: *const f64, d: usize, p: [*const f64; 4]) -> [f64; 4] {
        let mut acc = [_mm512_setzero_pd(); 4];
        let mut j = 0;
        while j < d {
            let m = lanes(d, j);
            let wv = _mm512_maskz_loadu_pd(m, wp.add(j));
            for k in 0..4 {
                acc[k] = _mm512_fmadd_pd(wv, _mm512_maskz_loadu_pd(m, p[k].add(j)), acc[k]);
            }
            j += 8;
        }
        [
            _mm512_reduce_add_pd(acc[0]),
            _mm512_reduce_add_pd(acc[1]),
            _mm512_reduce_add_pd(acc[2]),
            _mm512_reduce_add_pd(acc[3]),
        ]
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot1(wp: *const f64, d: usize, p: *const f64) -> f64 {
        let mut acc = _mm512_setzero_pd();
        let mut j = 0;
        while j < d {
            let m = lanes(d, j);
            acc = _mm512_fmadd_pd(
                _mm512_maskz_loadu_pd(m, wp.add(j)),
                _mm512_maskz_loadu_pd(m, p.add(j)),
                acc,
            );
            j += 8;
        }
        _mm512_reduce_add_pd(acc)
    }

    /// Calls `f(i, r, w·x_r)` for every row, in order, four rows at a time.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn each_dot(w: &[f64], x: &[f64], rows: &[usize], mut f: impl FnMut(usize, usize, f64)) {
        let d = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut quads = rows.chunks_exact(4);
        let mut i = 0;
        for q in &mut quads {
            let s = dot4(
                wp,
                d,
                [
                    xp.add(q[0] * d),
                    xp.add(q[1] * d),
                    xp.add(q[2] * d),
                    xp.add(q[3] * d),
                ],
            );
            for k in 0..4 {
                f(i + k, q[k], s[k]);
            }
            i += 4;
        }
        for &r in quads.remainder() {
            f(i, r, dot1(wp, d, xp.add(r * d)));
            i += 1;
        }
    }

    sse_and_predict!("avx512f");

    /// Lane `k` of the result is the sum of the lanes of `a[k]`: eight horizontal sums in
    /// 14 shuffles and 7 additions, where eight `_mm512_reduce_add_pd` take 24 and 24.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum8(a: [__m512d; 8]) -> __m512d {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn pairs(x: __m512d, y: __m512d) -> __m512d {
            _mm512_add_pd(_mm512_unpacklo_pd(x, y), _mm512_unpackhi_pd(x, y))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn halves(x: __m512d, y: __m512d) -> __m512d {
            _mm512_add_pd(
                _mm512_shuffle_f64x2::<0x88>(x, y),
                _mm512_shuffle_f64x2::<0xDD>(x, y),
            )
        }
        halves(
            halves(pairs(a[0], a[1]), pairs(a[2], a[3])),
            halves(pairs(a[4], a[5]), pairs(a[6], a[7])),
        )
    }

    /// Lanes of `w ⊙ x` for one row of `B` eight-column blocks (summed by the caller).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn products<const B: usize>(
        wv: &[__m512d; 4],
        m: &[__mmask8; 4],
        p: *const f64,
    ) -> __m512d {
        let mut a = _mm512_mul_pd(wv[0], _mm512_maskz_loadu_pd(m[0], p));
        for t in 1..B {
            a = _mm512_fmadd_pd(wv[t], _mm512_maskz_loadu_pd(m[t], p.add(8 * t)), a);
        }
        a
    }

    /// [`super::sgd_epoch`] for `d ≤ 32` with `B` eight-column blocks (so that each width
    /// gets straight-line code): one epoch, eight rows at a time. Per group: the eight dot
    /// products (each row's lanes summed together by [`sum8`]), the eight errors as one
    /// vector (their squares and sum accumulate as vectors, reduced once per batch and once
    /// per epoch), then `g += err·x` for those rows, even and odd rows in separate sums. The
    /// batch's gradient stays in registers and the update is done on whole registers.
    ///
    /// Why this shape: measured on the bench's 6,000 shuffled rows of 32 columns, it is
    /// about a quarter faster than four rows at a time with a reduction per row. The work
    /// per row is small against reading the row, so what counts is how few instructions
    /// sit between the loads: one horizontal sum per eight rows instead of one per row,
    /// and no scalar chain through the squared errors.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn epoch<const B: usize>(
        w: &mut [f64],
        b: &mut f64,
        x: &[f64],
        y: &[f64],
        rows: &[usize],
        batch: usize,
        lr: f64,
        l2: f64,
    ) -> f64 {
        /// Rows are shuffled: ask for the ones this many ahead, so that they are in L1 by
        /// the time they are needed (8 to 16 measured best; none was 15 % slower).
        const AHEAD: usize = 16;
        let d = w.len();
        let n = rows.len();
        let rp = rows.as_ptr();
        let (xp, yp, wp) = (x.as_ptr(), y.as_ptr(), w.as_mut_ptr());
        let m = [lanes(d, 0), lanes(d, 8), lanes(d, 16), lanes(d, 24)];
        let mut sev = _mm512_setzero_pd();
        let mut se_rest = 0.0;
        let mut err = [0.0f64; 8];
        let mut s = 0;
        while s < n {
            let e = (s + batch).min(n);
            let bv = *b;
            let bvec = _mm512_set1_pd(bv);
            let mut wv = [_mm512_setzero_pd(); 4];
            for t in 0..B {
                wv[t] = _mm512_maskz_loadu_pd(m[t], wp.add(8 * t));
            }
            let mut ga = [_mm512_setzero_pd(); 4];
            let mut gc = [_mm512_setzero_pd(); 4];
            let mut gbv = _mm512_setzero_pd();
            let mut gb_rest = 0.0;
            let mut r = s;
            while r + 8 <= e {
                if r + AHEAD + 8 <= n {
                    for k in AHEAD..AHEAD + 8 {
                        let q = xp.add(*rp.add(r + k) * d) as *const i8;
                        for t in 0..B {
                            _mm_prefetch::<_MM_HINT_T0>(q.add(64 * t));
                        }
                    }
                }
                let mut acc = [_mm512_setzero_pd(); 8];
                for k in 0..8 {
                    acc[k] = products::<B>(&wv, &m, xp.add(*rp.add(r + k) * d));
                }
                let idx = _mm512_loadu_si512(rp.add(r) as *const _);
                let yv = _mm512_i64gather_pd::<8>(idx, yp as *const _);
                let ev = _mm512_sub_pd(_mm512_add_pd(bvec, sum8(acc)), yv);
                sev = _mm512_fmadd_pd(ev, ev, sev);
                gbv = _mm512_add_pd(gbv, ev);
                _mm512_storeu_pd(err.as_mut_ptr(), ev);
                for k in (0..8).step_by(2) {
                    let (e0, e1) = (_mm512_set1_pd(err[k]), _mm512_set1_pd(err[k + 1]));
                    let p0 = xp.add(*rp.add(r + k) * d);
                    let p1 = xp.add(*rp.add(r + k + 1) * d);
                    for t in 0..B {
                        let (v0, v1) = (
                            _mm512_maskz_loadu_pd(m[t], p0.add(8 * t)),
                            _mm512_maskz_loadu_pd(m[t], p1.add(8 * t)),
                        );
                        ga[t] = _mm512_fmadd_pd(e0, v0, ga[t]);
                        gc[t] = _mm512_fmadd_pd(e1, v1, gc[t]);
                    }
                }
                r += 8;
            }
            // The batch's last rows (fewer than eight), one at a time.
            while r < e {
                let i = *rp.add(r);
                let p = xp.add(i * d);
                let ek = bv + _mm512_reduce_add_pd(products::<B>(&wv, &m, p)) - *yp.add(i);
                se_rest += ek * ek;
                gb_rest += ek;
                let ev = _mm512_set1_pd(ek);
                for t in 0..B {
                    ga[t] = _mm512_fmadd_pd(ev, _mm512_maskz_loadu_pd(m[t], p.add(8 * t)), ga[t]);
                }
                r += 1;
            }
            // The update: g = g·(1/m) + l2·w; w += −lr·g. Multiplying by the reciprocal, not
            // dividing: the next batch waits for these weights, and four 512-bit divisions
            // (and the bias's) sat on that path, about 70 cycles per batch. `1/m` does not
            // depend on the batch's data, so it is ready long before it is needed. (It
            // rounds differently from `g/m` in the last bit; the scalar kernel divides.)
            let gb = _mm512_reduce_add_pd(gbv) + gb_rest;
            let inv = 1.0 / (e - s) as f64;
            let (iv, l2v, lrv) = (_mm512_set1_pd(inv), _mm512_set1_pd(l2), _mm512_set1_pd(-lr));
            for t in 0..B {
                let g = _mm512_add_pd(
                    _mm512_mul_pd(_mm512_add_pd(ga[t], gc[t]), iv),
                    _mm512_mul_pd(l2v, wv[t]),
                );
                _mm512_mask_storeu_pd(
                    wp.add(8 * t),
                    m[t],
                    _mm512_add_pd(wv[t], _mm512_mul_pd(lrv, g)),
                );
            }
            *b -= lr * (gb * inv);
            s = e;
        }
        _mm512_reduce_add_pd(sev) + se_rest
    }

    const CHUNK: usize = 64;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn batch_gradient(
        w: &[f64],
        b: f64,
        x: &[f64],
        y: &[f64],
        rows: &[usize],
        gw: &mut [f64],
    ) -> (f64, f64) {
        let d = w.len();
        let (mut gb, mut se) = (0.0, 0.0);
        let mut err = [0.0f64; CHUNK];
        for chunk in rows.chunks(CHUNK) {
            // Phase 1: the chunk's errors, four dot products at a time.
            each_dot(w, x, chunk, |i, r, s| {
                let e = b + s - *y.get_unchecked(r);
                se += e * e;
                gb += e;
                *err.get_unchecked_mut(i) = e;
            });
            // Phase 2: g += Σ err_r · x_r over up to 32 columns per pass, even and odd
            // rows into separate sums so two FMA chains run side by side.
            let mut j = 0;
            while j < d {
                match (d - j).div_ceil(8) {
                    1 => accumulate::<1>(d, j, x, chunk, &err, gw),
                    2 => accumulate::<2>(d, j, x, chunk, &err, gw),
                    3 => accumulate::<3>(d, j, x, chunk, &err, gw),
                    _ => accumulate::<4>(d, j, x, chunk, &err, gw),
                }
                j += 32;
            }
        }
        (gb, se)
    }

    /// `gw[j .. j + 8·B] += Σ_i err[i] · x_{chunk[i]}[j .. j + 8·B]` (the last block masked
    /// at `d`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn accumulate<const B: usize>(
        d: usize,
        j: usize,
        x: &[f64],
        chunk: &[usize],
        err: &[f64],
        gw: &mut [f64],
    ) {
        let gp = gw.as_mut_ptr().add(j);
        let xp = x.as_ptr().add(j);
        let mut m = [0 as __mmask8; B];
        let mut a = [_mm512_setzero_pd(); B];
        let mut c = [_mm512_setzero_pd(); B];
        for t in 0..B {
            m[t] = lanes(d, j + 8 * t);
            a[t] = _mm512_maskz_loadu_pd(m[t], gp.add(8 * t));
        }
        let mut pairs = chunk.chunks_exact(2);
        let mut i = 0;
        for pr in &mut pairs {
            let (e0, e1) = (
                _mm512_set1_pd(*err.get_unchecked(i)),
                _mm512_set1_pd(*err.get_unchecked(i + 1)),
            );
            let (p0, p1) = (xp.add(pr[0] * d), xp.add(pr[1] * d));
            for t in 0..B {
                a[t] = _mm512_fmadd_pd(e0, _mm512_maskz_loadu_pd(m[t], p0.add(8 * t)), a[t]);
                c[t] = _mm512_fmadd_pd(e1, _mm512_maskz_loadu_pd(m[t], p1.add(8 * t)), c[t]);
            }
            i += 2;
        }
        if let [r] = pairs.remainder() {
            let e = _mm512_set1_pd(*err.get_unchecked(i));
            let p = xp.add(r * d);
            for t in 0..B {
                a[t] = _mm512_fmadd_pd(e, _mm512_maskz_loadu_pd(m[t], p.add(8 * t)), a[t]);
            }
        }
        for t in 0..B {
            _mm512_mask_storeu_pd(gp.add(8 * t), m[t], _mm512_add_pd(a[t], c[t]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: usize, d: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut s = 0x1234_5678u64;
        let mut u = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        };
        let x: Vec<f64> = (0..rows * d).map(|_| u() * 10.0).collect();
        let y: Vec<f64> = (0..rows).map(|_| u()).collect();
        let w: Vec<f64> = (0..d).map(|_| u()).collect();
        (x, y, w)
    }

    #[test]
    fn simd_and_scalar_agree_for_every_width() {
        for k in simd() {
            // Widths around every lane count and pass width (4, 8, 16, 32 columns).
            for d in [1, 3, 4, 5, 8, 9, 15, 16, 17, 31, 32, 33, 40, 64, 65] {
                // 50 rows: a chunk remainder, an odd pair and a quad remainder.
                let (x, y, w) = data(50, d);
                let rows: Vec<usize> = (0..50).rev().collect();
                let mut g1 = vec![0.0; d];
                let mut g2 = vec![0.0; d];
                let a = batch_gradient_with(Kernel::Scalar, &w, 0.3, &x, &y, &rows, &mut g1);
                let b = batch_gradient_with(k, &w, 0.3, &x, &y, &rows, &mut g2);
                let close = |p: f64, q: f64| (p - q).abs() <= 1e-12 * p.abs().max(q.abs()).max(1.0);
                assert!(
                    close(a.0, b.0) && close(a.1, b.1),
                    "{k:?} d={d}: {a:?} vs {b:?}"
                );
                for (p, q) in g1.iter().zip(&g2) {
                    assert!(close(*p, *q), "{k:?} d={d}: {p} vs {q}");
                }
            }
        }
    }

    /// The SIMD kernels this CPU can run (none: the scalar path is all there is to test).
    fn simd() -> Vec<Kernel> {
        let k: Vec<Kernel> = [Kernel::Avx2Fma, Kernel::Avx512]
            .into_iter()
            .filter(|&k| kernel_available(k))
            .collect();
        if k.is_empty() {
            eprintln!("no SIMD kernel on this CPU: only the scalar kernel runs");
        }
        k
    }

    #[test]
    fn sse_simd_and_scalar_agree() {
        for k in simd() {
            for d in [1, 3, 4, 7, 8, 9, 32, 33] {
                let (x, y, w) = data(41, d);
                let rows: Vec<usize> = (0..41).collect();
                let a = sse_with(Kernel::Scalar, &w, -0.2, &x, &y, &rows);
                let b = sse_with(k, &w, -0.2, &x, &y, &rows);
                assert!(
                    (a - b).abs() <= 1e-12 * a.abs().max(1.0),
                    "{k:?} d={d}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn predict_simd_and_scalar_agree() {
        for k in simd() {
            for d in [1, 3, 4, 7, 8, 9, 32, 33] {
                let (x, _, w) = data(43, d);
                let rows: Vec<usize> = (0..43).rev().collect();
                let (mut a, mut b) = (vec![0.0; 43], vec![0.0; 43]);
                predict_with(Kernel::Scalar, &w, 0.7, &x, &rows, &mut a);
                predict_with(k, &w, 0.7, &x, &rows, &mut b);
                for (i, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (p - q).abs() <= 1e-12 * p.abs().max(1.0),
                        "{k:?} d={d} row {i}: {p} vs {q}"
                    );
                    let r = rows[i];
                    let serial = 0.7 + (0..d).map(|j| w[j] * x[r * d + j]).sum::<f64>();
                    assert!((p - serial).abs() <= 1e-12 * serial.abs().max(1.0));
                }
            }
        }
    }

    /// One epoch through `sgd_epoch` against the same steps taken batch by batch with
    /// `batch_gradient`: equal to the last bit for the scalar and AVX2 kernels with batches
    /// of up to 64 rows (their contract; the AVX-512 epoch sums in its own order), and
    /// within 1e-12 of the scalar kernel for every kernel, width and batch.
    #[test]
    fn an_epoch_in_one_call_is_the_batch_by_batch_update() {
        let mut kernels = simd();
        kernels.push(Kernel::Scalar);
        for k in kernels {
            for d in [1, 5, 8, 13, 32, 33] {
                for batch in [1, 7, 32, 64, 100] {
                    let (x, y, w0) = data(203, d);
                    let (lr, l2) = (0.001, 0.01);
                    let (mut w, mut b) = (w0.clone(), 0.25);
                    let rows: Vec<usize> = (0..203).rev().collect();
                    let se = sgd_epoch(k, &mut w, &mut b, &x, &y, &rows, batch, lr, l2);
                    let (mut w2, mut b2, mut se2) = (w0.clone(), 0.25, 0.0);
                    for chunk in rows.chunks(batch) {
                        let mut g = vec![0.0; d];
                        let (gb, s) = batch_gradient_with(k, &w2, b2, &x, &y, chunk, &mut g);
                        se2 += s;
                        let m = chunk.len() as f64;
                        for j in 0..d {
                            g[j] = g[j] / m + l2 * w2[j];
                            w2[j] += -lr * g[j];
                        }
                        b2 -= lr * (gb / m);
                    }
                    let (mut w3, mut b3) = (w0.clone(), 0.25);
                    let se3 = sgd_epoch(
                        Kernel::Scalar,
                        &mut w3,
                        &mut b3,
                        &x,
                        &y,
                        &rows,
                        batch,
                        lr,
                        l2,
                    );
                    let close =
                        |p: f64, q: f64| (p - q).abs() <= 1e-12 * p.abs().max(q.abs()).max(1.0);
                    if batch <= 64 && k != Kernel::Avx512 {
                        assert_eq!((&w, b, se), (&w2, b2, se2), "{k:?} d={d} batch={batch}");
                    }
                    assert!(close(se, se3) && close(b, b3), "{k:?} d={d} batch={batch}");
                    for (p, q) in w.iter().zip(&w3) {
                        assert!(close(*p, *q), "{k:?} d={d} batch={batch}: {p} vs {q}");
                    }
                }
            }
        }
    }

    /// A row ending exactly at the end of `x`: the masked loads of its last columns must
    /// not read past it (a fault here would be a crash, not a wrong number).
    #[test]
    fn the_last_row_of_a_buffer_is_read_in_bounds() {
        for k in simd() {
            for d in [1, 3, 9, 33] {
                let (x, y, w) = data(5, d);
                let mut g = vec![0.0; d];
                let (mut p, mut q) = (vec![0.0; 1], vec![0.0; 1]);
                batch_gradient_with(k, &w, 0.0, &x, &y, &[4], &mut g);
                predict_with(k, &w, 0.0, &x, &[4], &mut p);
                predict_with(Kernel::Scalar, &w, 0.0, &x, &[4], &mut q);
                assert!((p[0] - q[0]).abs() <= 1e-12 * q[0].abs().max(1.0));
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_row_past_the_end_is_refused_not_read() {
        let (x, y, w) = data(4, 8);
        let mut g = vec![0.0; 8];
        batch_gradient_with(Kernel::Avx2Fma, &w, 0.0, &x, &y, &[4], &mut g);
    }
}
