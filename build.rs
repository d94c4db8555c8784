//! Link libtorch so that binaries and tests of this crate find it without LD_LIBRARY_PATH.
//! tch's own rpath and `--no-as-needed -ltorch` do not reach dependants (docs/toolchain.md,
//! "Linking pitfall"), so this package emits them itself — for every target that links the
//! model runtime, and never for the `self-redteam` binary, which links only the libtorch-free
//! core crate (the `ldd` test in tests/it/executor.rs checks it).
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        // A search path only: harmless for a binary that needs none of it (the core binary).
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        let force = ["-Wl,--no-as-needed", "-ltorch"];
        for arg in force {
            println!("cargo:rustc-link-arg-bin=self-redteam-compute={arg}");
            println!("cargo:rustc-link-arg-tests={arg}");
            println!("cargo:rustc-link-arg-examples={arg}");
            println!("cargo:rustc-link-arg-benches={arg}");
        }
    }
}
