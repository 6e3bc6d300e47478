//! Tiny dense linear algebra for the meta-learners: the systems are at most a few dozen
//! unknowns, so a straightforward Cholesky beats pulling a BLAS into the addon.

/// Solves `a x = b` for a symmetric positive-definite `a` (row-major, `n × n`), in place:
/// `a` is overwritten with its Cholesky factor and `b` with the solution.
/// Returns `false` when the matrix is not positive definite (the caller then keeps its
/// previous or prior solution rather than publishing garbage).
pub fn cholesky_solve(a: &mut [f64], b: &mut [f64], n: usize) -> bool {
    debug_assert!(a.len() >= n * n && b.len() >= n);
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if !(d > 0.0) || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in (j + 1)..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    // forward: L y = b
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= a[i * n + k] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    // backward: Lᵀ x = y
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in (i + 1)..n {
            s -= a[k * n + i] * b[k];
        }
        b[i] = s / a[i * n + i];
    }
    b[..n].iter().all(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_small_spd_system() {
        // A = [[4,2],[2,3]], x = [1,2] → b = [8, 8]
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![8.0, 8.0];
        assert!(cholesky_solve(&mut a, &mut b, 2));
        assert!((b[0] - 1.0).abs() < 1e-12 && (b[1] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn refuses_an_indefinite_matrix() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        let mut b = vec![1.0, 1.0];
        assert!(!cholesky_solve(&mut a, &mut b, 2));
    }
}
