//! Reductions to one number whose bits do not depend on libtorch's intra-op thread count.
//!
//! Why: ATen reduces a tensor to a single element in two passes when it has at least
//! `GRAIN` elements and more than one thread: each thread sums its own slice, then the
//! partial sums are added. The slices follow the thread count, so `sum`, `mean` and `norm`
//! of a large tensor give other last bits with 2 threads than with 1 (measured on AMD EPYC
//! and Intel Xeon, docs/stage-params.md "Thread count and bytes"). That is what made the
//! update's gradient norm, and through the clipping factor every weight, depend on
//! `run.threads`. A reduction with many outputs is split over the outputs instead, each
//! output summed whole by one thread in one order, so it is independent of the thread count.
//!
//! So a large tensor is summed as rows of `CHUNK` elements (zero-padded: adding +0.0 changes
//! no sum), one partial sum per row, and then the partials the same way until fewer than
//! `GRAIN` remain, which ATen sums serially. Gradients flow through (pad, view and sum are
//! differentiable), so losses use it too.
use tch::{Kind, Tensor};

/// MKL's environment switch for conditional numerical reproducibility.
pub const MKL_CBWR_ENV: &str = "MKL_CBWR";

/// Where MKL documents it, asks its matrix products for results independent of the thread
/// count: MKL's "strict CNR" mode (`MKL_CBWR=AUTO,STRICT`) makes `?gemm` bitwise reproducible
/// whatever the number of threads on Intel processors with AVX2 or AVX-512. Needed for the
/// update's weight gradients (GEMMs over every token of a batch), which on an Intel Xeon
/// differed in the last bits between 1 and 2 threads (issue report: two of 21 weight tensors).
/// Only on Intel: on the AMD EPYC measured here, MKL's default GEMMs were already invariant
/// while strict mode made a small product thread-dependent instead (docs/stage-params.md).
/// A `MKL_CBWR` the user set is left alone. Call first thing in `main`, before any thread or
/// libtorch call (MKL reads the variable once).
pub fn pin_mkl_reproducibility() {
    if std::env::var_os(MKL_CBWR_ENV).is_some() {
        return;
    }
    let intel = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.lines().any(|l| l.starts_with("vendor_id") && l.ends_with("GenuineIntel")));
    if intel {
        std::env::set_var(MKL_CBWR_ENV, "AUTO,STRICT");
    }
}

/// ATen's `at::internal::GRAIN_SIZE`: below this many elements a reduction runs serially.
pub const GRAIN: i64 = 32_768;
/// Elements per partial sum.
const CHUNK: i64 = 4_096;

/// The sum of every element of `t`, accumulated and returned as `kind`.
pub fn sum(t: &Tensor, kind: Kind) -> Tensor {
    let mut flat = t.reshape([-1]).to_kind(kind);
    while flat.numel() as i64 >= GRAIN {
        let n = flat.numel() as i64;
        let rows = (n + CHUNK - 1) / CHUNK;
        let padded = if rows * CHUNK == n { flat } else { flat.constant_pad_nd([0, rows * CHUNK - n]) };
        flat = padded.view([rows, CHUNK]).sum_dim_intlist(&[1i64][..], false, kind);
    }
    flat.sum(kind)
}

/// The Euclidean norm of every element of `t`, in f32: √(Σ x²) with the sum of [`sum`].
pub fn norm(t: &Tensor) -> Tensor {
    let t = t.to_kind(Kind::Float);
    sum(&(&t * &t), Kind::Float).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(t: &Tensor) -> u64 {
        t.to_kind(Kind::Double).double_value(&[]).to_bits()
    }

    /// With 1 and with 2 threads, `sum` and `norm` of tensors below, at and far above the
    /// grain give the same bits; ATen's own `sum` of large tensors is shown to differ, so this
    /// test would notice if it stopped exercising the two-pass reduction.
    #[test]
    fn sums_and_norms_are_the_same_bits_for_any_thread_count() {
        let before = tch::get_num_threads();
        tch::manual_seed(7);
        let sizes = [1i64, 4_095, GRAIN - 1, GRAIN, GRAIN + 1, 3_000_001];
        let tensors: Vec<Tensor> = sizes.iter().map(|&n| Tensor::randn([n], (Kind::Float, tch::Device::Cpu))).collect();
        let large: Vec<Tensor> = (0..5).map(|_| Tensor::randn([3_000_001], (Kind::Float, tch::Device::Cpu))).collect();
        let run = |threads: i32| {
            tch::set_num_threads(threads);
            let ours: Vec<(u64, u64)> = tensors.iter().map(|t| (bits(&sum(t, Kind::Float)), bits(&norm(t)))).collect();
            let aten: Vec<u64> = large.iter().map(|t| bits(&t.sum(Kind::Float))).collect();
            (ours, aten)
        };
        let (one, aten_one) = run(1);
        let (two, aten_two) = run(2);
        tch::set_num_threads(before);
        assert_eq!(one, two, "sum/norm bits differ between 1 and 2 threads");
        if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
            assert_ne!(aten_one, aten_two, "ATen's own sums of 3M floats no longer depend on the thread count: recheck why this module exists");
        }
        // And they are sums: against an f64 reference.
        for (t, (s, _)) in tensors.iter().zip(&one) {
            let exact = t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]);
            let got = f64::from_bits(*s);
            assert!((got - exact).abs() <= 1e-6 * (t.numel() as f64).sqrt() * 4.0 + 1e-4, "{got} vs {exact}");
        }
    }

    #[test]
    fn gradients_flow_through_the_padded_sum() {
        let x = Tensor::randn([GRAIN + 5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        sum(&(&x * 3.0), Kind::Float).backward();
        let g = x.grad();
        assert_eq!(g.size(), vec![GRAIN + 5]);
        assert!(g.eq(3.0).all().int64_value(&[]) == 1, "d/dx Σ 3x = 3 everywhere");
    }
}
