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
// The module with the most `unsafe` (SIMD intrinsics and raw views of tensor memory; every
// block states the invariant it relies on). The only other uses are the two read-only file
// maps of model/tensors.rs and model/gguf.rs, each allowed at its one call.
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
// The spec bounds batch sizes by this without linking the kernel (the core crate has no tch).
const _: () = assert!(MAX_ROWS as u64 == crate::spec::MAX_DECODE_ROWS);
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
    /// With `team`, the kernel gets helpers (as many as libtorch had threads, minus this one);
    /// without (models too small for a team to pay, `TEAM_MIN_WEIGHTS_PER_STEP`), it runs on
    /// this thread alone. Either way libtorch is single-threaded until the guard drops, which
    /// also makes decoding independent of `run.threads`: libtorch's attention over a few query
    /// rows with an explicit mask gives other bits with 2 threads than with 1 (measured, see
    /// docs/stage-params.md "Thread count and bytes"), while one thread is one fixed order.
    pub fn enter(team: bool) -> DecodeThreads {
        if TEAM.with(|t| t.borrow().is_some()) {
            return DecodeThreads { torch_threads: None }; // nested: the outer guard owns the team
        }
        let torch_threads = tch::get_num_threads().max(1);
        if team {
            TEAM.with(|t| *t.borrow_mut() = Some(SpinTeam::new(torch_threads as usize - 1)));
        }
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
/// Spins of the owner, waiting for chunks a helper claimed, before it yields its core: on a
/// loaded machine that helper may be descheduled, and yielding lets it (or anything) run.
const SPINS_BEFORE_YIELD: u32 = 4096;

/// A job: `f(chunk)` for chunks 0..total. Lifetime-erased; see `SpinTeam::run`.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync + 'static));

/// The claim word: job epoch (high 32 bits), chunk count (16 bits), next unclaimed chunk
/// (low 16 bits). One atomic, so a claim is valid only for the epoch it read: a thread that
/// wakes late for an old job cannot take a chunk of a newer one.
fn ticket(epoch: u64, total: usize, next: usize) -> u64 {
    (epoch << 32) | ((total as u64) << 16) | next as u64
}
fn ticket_parts(t: u64) -> (u64, usize, usize) {
    (t >> 32, ((t >> 16) & 0xffff) as usize, (t & 0xffff) as usize)
}

struct Shared {
    /// See [`ticket`]. The owner writes `job` and resets `completed` before publishing a new
    /// epoch here (Release); claimants read `job` only after a successful claim (Acquire).
    ticket: AtomicU64,
    job: UnsafeCell<Option<Job>>,
    /// Chunks of the current job finished (by anyone).
    completed: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the owner between jobs, when every chunk of the previous
// job has completed and so no claimant is reading it; a claimant reads it only after winning a
// chunk of the current epoch, and the owner does not return (nor write `job`) before that
// chunk completes. The closure it points to is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    /// Claims and runs chunks of epoch `epoch` until none is left unclaimed (returns at once
    /// when that epoch is over).
    fn work(&self, epoch: u64) {
        loop {
            let t = self.ticket.load(Ordering::Acquire);
            let (e, total, next) = ticket_parts(t);
            if e != epoch || next >= total {
                return;
            }
            if self.ticket.compare_exchange_weak(t, t + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            // SAFETY: we won chunk `next` of this epoch: the owner wrote `job` before publishing
            // it and keeps the closure alive until this chunk is reported `completed`.
            let job = unsafe { *self.job.get() }.expect("job is set before its epoch");
            let f = unsafe { &*job.0 };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(next))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.completed.fetch_add(1, Ordering::Release);
        }
    }
}

/// The decode kernel's thread team. Work is handed out as chunks that any member claims, the
/// owner included, rather than one fixed share per thread: on a machine shared with other
/// processes a helper may be descheduled for a whole scheduler tick, and a fixed share would
/// hold every one of a step's ~210 matmuls up by that long; with claimed chunks the others take
/// over its share and only a chunk already started is waited for.
struct SpinTeam {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    epoch: std::cell::Cell<u64>,
}

impl SpinTeam {
    /// Chunks per team member: enough that a member who falls behind costs a small fraction.
    const CHUNKS_PER_THREAD: usize = 8;

    fn new(helpers: usize) -> SpinTeam {
        let shared = Arc::new(Shared {
            ticket: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            completed: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let helpers = (1..=helpers)
            .map(|task| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("decode-kernel-{task}")).spawn(move || helper_loop(&shared)).expect("spawning a decode kernel thread")
            })
            .collect();
        SpinTeam { shared, helpers, epoch: std::cell::Cell::new(0) }
    }

    fn size(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(c)` for every chunk `c` in `0..chunks` (1 ≤ chunks ≤ 65535), each exactly once,
    /// on whichever team member claims it; returns when all have finished.
    fn run(&self, chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!((1..=0xffff).contains(&chunks), "chunk count {chunks} out of range");
        let shared = &*self.shared;
        let epoch = (self.epoch.get() + 1) & 0xffff_ffff;
        self.epoch.set(epoch);
        shared.completed.store(0, Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        // SAFETY: lifetime erasure only; this function does not return before every chunk has
        // completed (the wait below), and only a chunk's claimant calls `f`.
        let job = Job(unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(f) });
        // SAFETY: every chunk of the previous job completed, so nobody reads `job` now.
        unsafe { *shared.job.get() = Some(job) };
        shared.ticket.store(ticket(epoch, chunks, 0), Ordering::Release);
        for h in &self.helpers {
            h.thread().unpark();
        }
        shared.work(epoch);
        let mut spins = 0u32;
        while shared.completed.load(Ordering::Acquire) < chunks {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(SPINS_BEFORE_YIELD) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        assert!(!shared.panicked.load(Ordering::Acquire), "the decode kernel panicked");
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

fn helper_loop(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let epoch = ticket_parts(shared.ticket.load(Ordering::Acquire)).0;
            if epoch != seen {
                break epoch;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
            } else if idle_since.elapsed() > SPIN_BEFORE_PARK {
                std::thread::park();
                idle_since = Instant::now();
            }
        };
        seen = epoch;
        shared.work(epoch);
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
        // Chunk c owns rows [c·per, (c+1)·per) of the output (whole blocks of 8): disjoint, so
        // shared as a raw pointer. Every row is computed by the same code whichever thread
        // claims it, so the bits do not depend on the team or on who did what.
        let blocks = n.div_ceil(BLOCK);
        let chunks = blocks.min(threads * SpinTeam::CHUNKS_PER_THREAD).min(0xffff);
        let per = blocks.div_ceil(chunks) * BLOCK;
        let chunks = n.div_ceil(per);
        let out = SendPtr(yt.as_mut_ptr());
        team.run(chunks, &|chunk| {
            let r0 = (chunk * per).min(n);
            let r1 = ((chunk + 1) * per).min(n);
            let out = &out;
            // SAFETY: chunks write disjoint row ranges of `yt`, which outlives `team.run`.
            let out = unsafe { std::slice::from_raw_parts_mut(out.0.add(r0 * LANES), (r1 - r0) * LANES) };
            if r1 > r0 {
                run(r0, out);
            }
        });
    });
}

/// `yt`'s base pointer, shared with the team (chunks write disjoint ranges).
struct SendPtr(*mut f32);
// SAFETY: see `matmul_xt`: each chunk derives a disjoint sub-slice.
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
            let _team = DecodeThreads::enter(true);
            assert_eq!(tch::get_num_threads(), 1, "libtorch runs single-threaded inside the guard");
            assert_eq!(TEAM.with(|t| t.borrow().as_ref().map(SpinTeam::size)), Some(3));
            let _nested = DecodeThreads::enter(true);
            for _ in 0..3 {
                let teamed = small_rows_linear_with(isa, &x, &w, None).expect("supported");
                assert!(teamed.equal(&alone), "team result differs from one thread");
            }
        }
        assert_eq!(tch::get_num_threads(), 3, "the guard restores libtorch's thread count");
        assert!(TEAM.with(|t| t.borrow().is_none()));
    }

    /// Every chunk runs exactly once per job, over many jobs in a row (a helper that wakes late
    /// must not take a chunk of the next job), also when one member is slow (as a descheduled
    /// helper on a loaded machine is: the others take its share).
    #[test]
    fn the_team_runs_every_chunk_exactly_once_even_with_a_slow_member() {
        let team = SpinTeam::new(3);
        for job in 0..2000usize {
            let chunks = 1 + job % 37;
            let counts: Vec<AtomicUsize> = (0..chunks).map(|_| AtomicUsize::new(0)).collect();
            team.run(chunks, &|c| {
                if job % 100 == 0 && c == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                counts[c].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|n| n.load(Ordering::Relaxed) == 1), "job {job}: a chunk ran other than once");
        }
        // The others take the chunks while one member sleeps. Seen in at least one of 20 jobs:
        // on a loaded machine (a test build beside it) the helpers themselves can be
        // descheduled for the whole 50 ms of one job, which says nothing about the team.
        let parallel = (0..20).any(|_| {
            let claimed_by = std::sync::Mutex::new(std::collections::HashSet::new());
            team.run(64, &|c| {
                if c == 0 {
                    std::thread::sleep(Duration::from_millis(50));
                }
                claimed_by.lock().expect("lock").insert(std::thread::current().id());
            });
            let n = claimed_by.lock().expect("lock").len();
            n >= 2
        });
        assert!(parallel, "the others work while one member is slow");
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
