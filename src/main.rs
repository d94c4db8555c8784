//! `self-redteam`, the command users type. It links the libtorch-free core crate only
//! (core/Cargo.toml), so the store and audit verbs start in milliseconds; stages and the
//! model verbs run in `self-redteam-compute` (src/bin/self-redteam-compute.rs), which this
//! binary starts as a child per node (`exec JOB`) or hands the command to.
fn main() {
    self_redteam_core::cli::run_main()
}
