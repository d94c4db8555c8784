//! CPU matmul for decoding steps: `y = x · Wᵀ` for a few rows `x` [m ≤ 64, k] against an
//! HF-layout weight `W` [n, k], without autograd.
//!
//! Why it exists: in a batch-16 decoding step every linear layer is a [16 × k]·[k × n] product
//! whose cost is reading `W` once. MKL's sgemm (what `Tensor::linear` calls) first copies `W`
//! into packed panels on every call, and perf showed that copy plus the kernel behind it was
//! ~65% of a SmolLM2 decoding step. This kernel streams `W` once per 16 rows of `x`, without
//! copying it: each 16 rows of `x` are transposed into a [k × 16] block (one 16-lane vector per
//! k, resident in L1/L2) and each output row is `Σ_k W[r, k] · xᵀ[k]` with broadcast-FMAs,
//! eight rows of `W` at a time (eight independent accumulators hide the FMA latency). Under a `DecodeThreads` guard, rows of `W` are split
//! across a team of busy-waiting threads, as many as libtorch had.
//!
//! Numerics: every output element is the sequential f32 FMA sum over k, in the same order
//! whatever `m` is and whichever other rows share the batch, so a row's result does not
//! depend on its batch at all. It differs from MKL's blocked sum by float rounding only.
//!
//! Used only where the caller knows no gradient is needed (the KV-cache decoding path); any
//! input it does not handle (non-CPU, non-f32, > 64 rows, no AVX2/FMA) returns `None` and the
//! caller falls back to `Tensor::linear`.
// The one module with `unsafe`: SIMD intrinsics and raw views of tensor memory; every block
// states the invariant it relies on.
#![allow(unsafe_code)]
use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// The most rows (`x` rows: sequences in a decoding step) the kernel takes. They are done in
/// groups of `LANES`, one vector lane per row, each group streaming `W` once; past this, a
/// batched GEMM's reuse of `W` wins.
pub const MAX_ROWS: usize = 64;
const LANES: usize = 16;
/// Rows of `W` per inner block: independent accumulators.
const BLOCK: usize = 8;

/// Which vector kernel this CPU can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
}

/// Environment variable that caps the decode kernel's instruction set: `avx512` (the default:
/// the best the CPU has), `avx2` (never the AVX-512 kernel, as on an AVX2-only CPU such as an
/// AMD EPYC of this project's machine kind) or `off` (no kernel: every matmul goes through
/// `Tensor::linear`). `scripts/isa_avx2.sh` sets it together with the switches that move
/// libtorch's own kernels (ATen, MKL, oneDNN) to AVX2, so one machine can run the paths of the
/// other; the binary rejects any other value at start-up (`isa_cap_from_env`).
pub const ISA_ENV: &str = "SELF_REDTEAM_DECODE_ISA";

/// The most capable kernel `ISA_ENV` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaCap {
    Avx512,
    Avx2,
    Off,
}

/// `ISA_ENV` parsed: `Ok(None)` when unset or empty, an error naming the variable and the
/// accepted values otherwise.
pub fn isa_cap_from_env() -> Result<Option<IsaCap>, String> {
    match std::env::var(ISA_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!("{ISA_ENV}={v:?}: expected avx512, avx2 or off")),
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "avx512" => Ok(Some(IsaCap::Avx512)),
            "avx2" => Ok(Some(IsaCap::Avx2)),
            "off" => Ok(Some(IsaCap::Off)),
            _ => Err(format!("{ISA_ENV}={v:?}: expected avx512, avx2 or off")),
        },
    }
}

impl Isa {
    /// The best kernel the running CPU supports, if any, within the cap of `ISA_ENV` (read
    /// once per process; an invalid value is reported by the binary before any work and
    /// counts as unset here).
    pub fn detect() -> Option<Isa> {
        static DETECTED: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| Isa::detect_with(isa_cap_from_env().ok().flatten().unwrap_or(IsaCap::Avx512)))
    }

    /// The best kernel the running CPU supports within `cap`.
    pub fn detect_with(cap: IsaCap) -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if cap == IsaCap::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if cap != IsaCap::Off && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Some(Isa::Avx2Fma);
            }
        }
        let _ = cap;
        None
    }
}

/// While alive (on the thread that created it), libtorch runs single-threaded on this thread
/// and the decode kernel splits its rows over a team of as many threads as libtorch had: this
/// thread plus helpers that busy-wait for work between kernel calls.
///
/// Why: a decoding step is ~210 small matmuls separated by small libtorch ops. Handing each
/// matmul to a sleeping thread pool (rayon) costs a wake-up per call, and libtorch's OpenMP
/// workers busy-wait after every parallel op, competing with the kernel's threads for the
/// cores (perf: a third of a batch-16 step spinning in libgomp). So, as llama.cpp does, the
/// helpers spin (then park after `SPIN_BEFORE_PARK` idle) and libtorch gets one thread.
/// libtorch's OpenMP and MKL thread counts are per calling thread, so threads already running
/// libtorch ops keep theirs; `at::set_num_threads` also records the count as the default for
/// threads that first touch libtorch later, which the guard's drop restores.
pub struct DecodeThreads {
    torch_threads: Option<i32>,
}

impl DecodeThreads {
    pub fn enter() -> DecodeThreads {
        if TEAM.with(|t| t.borrow().is_some()) {
            return DecodeThreads { torch_threads: None }; // nested: the outer guard owns the team
        }
        let torch_threads = tch::get_num_threads().max(1);
        TEAM.with(|t| *t.borrow_mut() = Some(SpinTeam::new(torch_threads as usize - 1)));
        tch::set_num_threads(1);
        DecodeThreads { torch_threads: Some(torch_threads) }
    }
}

impl Drop for DecodeThreads {
    fn drop(&mut self) {
        if let Some(threads) = self.torch_threads {
            tch::set_num_threads(threads);
            TEAM.with(|t| t.borrow_mut().take());
        }
    }
}

/// Below this many weights per decoding step, a team costs more (thread start, spinning) than
/// it saves; the kernel then runs on the calling thread alone.
pub const TEAM_MIN_WEIGHTS_PER_STEP: usize = 1 << 22;

thread_local! {
    /// Per-thread (xᵀ, yᵀ) buffers of `small_rows_linear_with`.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static TEAM: RefCell<Option<SpinTeam>> = const { RefCell::new(None) };
}

/// Idle time after which a helper stops spinning and parks until the next job.
const SPIN_BEFORE_PARK: Duration = Duration::from_millis(2);

/// A job: `f(task)` for task 0 (the owner) and 1..=helpers. Lifetime-erased; see `SpinTeam::run`.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));

struct Shared {
    /// Bumped by the owner after writing `job`; helpers run the job once per new value.
    epoch: AtomicU64,
    job: UnsafeCell<Option<Job>>,
    /// Helpers that finished the current job.
    done: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the owner while no helper reads it (before bumping `epoch`,
// after every helper reported `done` for the previous job); helpers read it only after
// observing the new `epoch` (Release/Acquire). The closure it points to is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

struct SpinTeam {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl SpinTeam {
    fn new(helpers: usize) -> SpinTeam {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let helpers = (1..=helpers)
            .map(|task| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("decode-kernel-{task}"))
                    .spawn(move || helper_loop(&shared, task))
                    .expect("spawning a decode kernel thread")
            })
            .collect();
        SpinTeam { shared, helpers }
    }

    fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(0)` here and `f(1..size)` on the helpers; returns when all have finished.
    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let shared = &*self.shared;
        shared.done.store(0, Ordering::Relaxed);
        // SAFETY: lifetime erasure only; this function does not return before every helper
        // has finished calling `f` (the `done` wait below), so `f` outlives its uses.
        let job = Job(unsafe {
            std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(f)
        });
        // SAFETY: no helper is reading `job` (all reported `done` for the previous epoch).
        unsafe { *shared.job.get() = Some(job) };
        shared.epoch.fetch_add(1, Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }
        let own = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        while shared.done.load(Ordering::Acquire) < self.helpers.len() {
            std::hint::spin_loop();
        }
        if let Err(payload) = own {
            std::panic::resume_unwind(payload);
        }
        assert!(!shared.panicked.load(Ordering::Acquire), "a decode kernel thread panicked");
    }
}

impl Drop for SpinTeam {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for h in self.helpers.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

fn helper_loop(shared: &Shared, task: usize) {
    let mut seen = 0u64;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() > SPIN_BEFORE_PARK {
                std::thread::park();
                idle_since = Instant::now();
            }
        }
        // SAFETY: the owner wrote `job` before bumping `epoch`, which we observed (Acquire),
        // and keeps the closure alive until we report `done`.
        let job = unsafe { *shared.job.get() }.expect("job is set before its epoch");
        let f = unsafe { &*job.0 };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(task))).is_err() {
            shared.panicked.store(true, Ordering::Release);
        }
        shared.done.fetch_add(1, Ordering::Release);
    }
}

/// `x · Wᵀ (+ bias)` for `x` [.., k] with at most `MAX_ROWS` rows, `weight` [n, k] contiguous
/// f32 on the CPU. `None` when the inputs are outside what the kernel handles.
pub fn small_rows_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    small_rows_linear_with(Isa::detect()?, x, weight, bias)
}

/// `small_rows_linear` with a chosen kernel (tests run both on one machine). The caller must
/// make sure the CPU supports `isa` (`Isa::detect`); `None` otherwise.
pub fn small_rows_linear_with(isa: Isa, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    // What the CPU can run, whatever `ISA_ENV` says (tests pick kernels explicitly).
    let supported = match Isa::detect_with(IsaCap::Avx512) {
        Some(Isa::Avx512) => true,
        Some(Isa::Avx2Fma) => isa == Isa::Avx2Fma,
        None => false,
    };
    if !supported
        || x.device() != Device::Cpu
        || weight.device() != Device::Cpu
        || x.kind() != Kind::Float
        || weight.kind() != Kind::Float
        || x.requires_grad()
        || weight.dim() != 2
        || !weight.is_contiguous()
        || x.dim() == 0
    {
        return None;
    }
    let (n, k) = (weight.size()[0], weight.size()[1]);
    let mut shape = x.size();
    if *shape.last()? != k || k == 0 || n == 0 {
        return None;
    }
    let rows = x.numel() / k as usize;
    if rows == 0 || rows > MAX_ROWS {
        return None;
    }
    let (n, k) = (n as usize, k as usize);
    let x2 = x.reshape([rows as i64, k as i64]).contiguous();
    // SAFETY: `x2` is a contiguous f32 CPU tensor of rows·k elements that outlives `xs`.
    let xs = unsafe { std::slice::from_raw_parts(x2.data_ptr() as *const f32, rows * k) };
    // SAFETY: `weight` is a contiguous f32 CPU tensor of n·k elements, borrowed for this call.
    let ws = unsafe { std::slice::from_raw_parts(weight.data_ptr() as *const f32, n * k) };
    let out = Tensor::empty([rows as i64, n as i64], (Kind::Float, Device::Cpu));
    // SAFETY: `out` was just allocated contiguous with rows·n f32 elements and is not shared.
    let ys = unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, rows * n) };
    SCRATCH.with(|scratch| {
        let (xt, yt) = &mut *scratch.borrow_mut();
        // Reused across calls: a fresh multi-MB buffer per call costs page faults and a memset.
        // Only this call's k·16 / n·16 prefix is used (and zero-filled when padding is needed).
        xt.resize(xt.len().max(k * LANES), 0.0);
        yt.resize(yt.len().max(n * LANES), 0.0);
        let (xt, yt) = (&mut xt[..k * LANES], &mut yt[..n * LANES]);
        for (xs, ys) in xs.chunks(k * LANES).zip(ys.chunks_mut(n * LANES)) {
            let group_rows = xs.len() / k;
            // This group's xᵀ padded to 16 lanes: xt[kk·16 + m] = x[16·group + m, kk].
            if group_rows < LANES {
                xt.fill(0.0);
            }
            for (m, row) in xs.chunks_exact(k).enumerate() {
                for (kk, &v) in row.iter().enumerate() {
                    xt[kk * LANES + m] = v;
                }
            }
            matmul_xt(isa, xt, ws, k, yt);
            // y[m, r] = yt[r·16 + m], in blocks of 8 rows of W so the writes are contiguous.
            for (r0, block) in (0..n).step_by(BLOCK).zip(yt.chunks(BLOCK * LANES)) {
                let width = block.len() / LANES;
                for m in 0..group_rows {
                    let dst = &mut ys[m * n + r0..m * n + r0 + width];
                    for (b, d) in dst.iter_mut().enumerate() {
                        *d = block[b * LANES + m];
                    }
                }
            }
        }
    });
    let out = match bias {
        Some(b) => out + b,
        None => out,
    };
    *shape.last_mut()? = n as i64;
    Some(out.view(shape.as_slice()))
}

/// yt[r·16 + m] = Σ_k w[r·k + kk] · xt[kk·16 + m] for every row r of `w`, split across the
/// `DecodeThreads` team of this thread (one thread without one).
fn matmul_xt(isa: Isa, xt: &[f32], w: &[f32], k: usize, yt: &mut [f32]) {
    let n = w.len() / k;
    let run = |r0: usize, out: &mut [f32]| {
        let rows = out.len() / LANES;
        let w = &w[r0 * k..(r0 + rows) * k];
        // SAFETY: `isa` was checked against the running CPU by the caller; slice lengths are
        // consistent (w: rows·k, xt: k·16, out: rows·16).
        unsafe {
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => avx512::rows(xt, w, k, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => avx2::rows(xt, w, k, out),
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("no vector kernel on this architecture"),
            }
        }
    };
    TEAM.with(|team| {
        let team = team.borrow();
        let threads = team.as_ref().map_or(1, SpinTeam::size).min(n.div_ceil(BLOCK));
        let Some(team) = team.as_ref().filter(|_| threads > 1) else {
            run(0, yt);
            return;
        };
        // Task t owns rows [t·per, (t+1)·per) of the output: disjoint, so shared as a raw pointer.
        let per = n.div_ceil(threads).div_ceil(BLOCK) * BLOCK;
        let out = SendPtr(yt.as_mut_ptr());
        team.run(&|task| {
            let r0 = (task * per).min(n);
            let r1 = ((task + 1) * per).min(n);
            let out = &out;
            // SAFETY: tasks write disjoint row ranges of `yt`, which outlives `team.run`.
            let out = unsafe { std::slice::from_raw_parts_mut(out.0.add(r0 * LANES), (r1 - r0) * LANES) };
            if r1 > r0 {
                run(r0, out);
            }
        });
    });
}

/// `yt`'s base pointer, shared with the team (tasks write disjoint ranges).
struct SendPtr(*mut f32);
// SAFETY: see `matmul_xt`: each task derives a disjoint sub-slice.
unsafe impl Sync for SendPtr {}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, LANES};
    use std::arch::x86_64::*;

    /// out[r·16..] = Σ_kk w[r, kk] · xt[kk] for the rows of `w` ([rows, k]).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows(xt: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        let n = w.len() / k;
        let xp = xt.as_ptr();
        let mut r = 0;
        while r + BLOCK <= n {
            let wp = w.as_ptr().add(r * k);
            let mut acc = [_mm512_setzero_ps(); BLOCK];
            for kk in 0..k {
                let xv = _mm512_loadu_ps(xp.add(kk * LANES));
                for (b, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(b * k + kk)), xv, *a);
                }
            }
            for (b, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add((r + b) * LANES), *a);
            }
            r += BLOCK;
        }
        while r < n {
            let wp = w.as_ptr().add(r * k);
            let mut a = _mm512_setzero_ps();
            for kk in 0..k {
                a = _mm512_fmadd_ps(_mm512_set1_ps(*wp.add(kk)), _mm512_loadu_ps(xp.add(kk * LANES)), a);
            }
            _mm512_storeu_ps(out.as_mut_ptr().add(r * LANES), a);
            r += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BLOCK, LANES};
    use std::arch::x86_64::*;

    /// As `avx512::rows` with two 8-lane halves per row; the per-element sum order is the same.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows(xt: &[f32], w: &[f32], k: usize, out: &mut [f32]) {
        const HALF: usize = BLOCK / 2;
        let n = w.len() / k;
        let xp = xt.as_ptr();
        let mut r = 0;
        while r + HALF <= n {
            let wp = w.as_ptr().add(r * k);
            let mut lo = [_mm256_setzero_ps(); HALF];
            let mut hi = [_mm256_setzero_ps(); HALF];
            for kk in 0..k {
                let xl = _mm256_loadu_ps(xp.add(kk * LANES));
                let xh = _mm256_loadu_ps(xp.add(kk * LANES + 8));
                for b in 0..HALF {
                    let wv = _mm256_set1_ps(*wp.add(b * k + kk));
                    lo[b] = _mm256_fmadd_ps(wv, xl, lo[b]);
                    hi[b] = _mm256_fmadd_ps(wv, xh, hi[b]);
                }
            }
            for b in 0..HALF {
                _mm256_storeu_ps(out.as_mut_ptr().add((r + b) * LANES), lo[b]);
                _mm256_storeu_ps(out.as_mut_ptr().add((r + b) * LANES + 8), hi[b]);
            }
            r += HALF;
        }
        while r < n {
            let wp = w.as_ptr().add(r * k);
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for kk in 0..k {
                let wv = _mm256_set1_ps(*wp.add(kk));
                lo = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(kk * LANES)), lo);
                hi = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(kk * LANES + 8)), hi);
            }
            _mm256_storeu_ps(out.as_mut_ptr().add(r * LANES), lo);
            _mm256_storeu_ps(out.as_mut_ptr().add(r * LANES + 8), hi);
            r += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        x.to_kind(Kind::Double).linear(&w.to_kind(Kind::Double), b.map(|b| b.to_kind(Kind::Double)).as_ref())
    }

    fn max_rel_err(got: &Tensor, want: &Tensor) -> f64 {
        let diff = (got.to_kind(Kind::Double) - want).abs().max().double_value(&[]);
        diff / want.abs().max().double_value(&[]).max(1e-30)
    }

    #[test]
    fn the_isa_cap_never_raises_what_the_cpu_has() {
        let best = Isa::detect_with(IsaCap::Avx512);
        assert_eq!(Isa::detect_with(IsaCap::Off), None);
        let capped = Isa::detect_with(IsaCap::Avx2);
        assert!(capped.is_none() || capped == Some(Isa::Avx2Fma), "{capped:?}");
        if best.is_some() {
            assert_eq!(capped, Some(Isa::Avx2Fma), "every AVX-512 CPU of this kind also has AVX2+FMA");
        }
    }

    #[test]
    fn matches_double_precision_linear_for_every_kernel_and_shape() {
        let Some(best) = Isa::detect_with(IsaCap::Avx512) else { return };
        let isas: &[Isa] = if best == Isa::Avx512 { &[Isa::Avx512, Isa::Avx2Fma] } else { &[Isa::Avx2Fma] };
        tch::manual_seed(7);
        // Odd n (remainder rows), odd k, 1..16 rows, 3-d input, with and without bias.
        for &isa in isas {
            for &(rows, k, n) in &[(1usize, 5usize, 3usize), (16, 576, 192), (7, 33, 29), (3, 64, 1000), (17, 40, 24), (64, 96, 50)] {
                let x = Tensor::randn([rows as i64, 1, k as i64], (Kind::Float, Device::Cpu));
                let w = Tensor::randn([n as i64, k as i64], (Kind::Float, Device::Cpu));
                let b = Tensor::randn([n as i64], (Kind::Float, Device::Cpu));
                for bias in [None, Some(&b)] {
                    let got = small_rows_linear_with(isa, &x, &w, bias).expect("supported input");
                    assert_eq!(got.size(), vec![rows as i64, 1, n as i64]);
                    let err = max_rel_err(&got, &reference(&x, &w, bias));
                    assert!(err < 1e-5, "{isa:?} rows {rows} k {k} n {n}: relative error {err}");
                }
            }
        }
    }

    #[test]
    fn a_row_gives_the_same_bits_alone_and_in_a_batch() {
        let Some(isa) = Isa::detect() else { return };
        tch::manual_seed(3);
        let x = Tensor::randn([40, 300], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([77, 300], (Kind::Float, Device::Cpu));
        let batch = small_rows_linear_with(isa, &x, &w, None).expect("supported");
        for row in [0, 5, 15, 16, 39] {
            let alone = small_rows_linear_with(isa, &x.narrow(0, row, 1), &w, None).expect("supported");
            assert!(alone.equal(&batch.narrow(0, row, 1)), "row {row} differs alone vs in the batch");
        }
    }

    #[test]
    fn the_thread_team_gives_the_same_bits_as_one_thread_and_restores_torch_threads() {
        let Some(isa) = Isa::detect() else { return };
        tch::manual_seed(5);
        let x = Tensor::randn([16, 96], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([1003, 96], (Kind::Float, Device::Cpu)); // 1003: uneven split
        let alone = small_rows_linear_with(isa, &x, &w, None).expect("supported");
        tch::set_num_threads(3);
        {
            let _team = DecodeThreads::enter();
            assert_eq!(tch::get_num_threads(), 1, "libtorch runs single-threaded inside the guard");
            assert_eq!(TEAM.with(|t| t.borrow().as_ref().map(SpinTeam::size)), Some(3));
            let _nested = DecodeThreads::enter();
            for _ in 0..3 {
                let teamed = small_rows_linear_with(isa, &x, &w, None).expect("supported");
                assert!(teamed.equal(&alone), "team result differs from one thread");
            }
        }
        assert_eq!(tch::get_num_threads(), 3, "the guard restores libtorch's thread count");
        assert!(TEAM.with(|t| t.borrow().is_none()));
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let w = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let too_many = Tensor::randn([MAX_ROWS as i64 + 1, 4], (Kind::Float, Device::Cpu));
        assert!(small_rows_linear(&too_many, &w, None).is_none());
        let double = Tensor::randn([2, 4], (Kind::Double, Device::Cpu));
        assert!(small_rows_linear(&double, &w.to_kind(Kind::Double), None).is_none());
        let wrong_k = Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
        assert!(small_rows_linear(&wrong_k, &w, None).is_none());
        let needs_grad = Tensor::randn([2, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(small_rows_linear(&needs_grad, &w, None).is_none());
        let strided = Tensor::randn([4, 8], (Kind::Float, Device::Cpu)).tr();
        assert!(small_rows_linear(&Tensor::randn([2, 4], (Kind::Float, Device::Cpu)), &strided, None).is_none());
    }
}
