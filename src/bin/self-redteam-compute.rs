//! `self-redteam-compute`: the same CLI as `self-redteam`, built with the model runtime
//! (feature `compute`, links libtorch). `self-redteam run` starts it once per node as
//! `self-redteam-compute exec JOB` (src/executor.rs) and hands it the verbs that need a model
//! (`generate`, `judge`, `serve`, `run --in-process`, `verify --recompute`). Found beside
//! `self-redteam`, or at `$SELF_REDTEAM_COMPUTE`.
fn main() {
    // Before any thread or libtorch call: MKL reads its reproducibility mode once.
    self_redteam::model::reduce::pin_mkl_reproducibility();
    self_redteam::cli::run_main()
}
