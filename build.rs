//! Link libtorch so that binaries and tests of this crate find it without LD_LIBRARY_PATH.
//! tch's own rpath and `--no-as-needed -ltorch` do not reach dependants (docs/toolchain.md,
//! "Linking pitfall"), so this package emits them itself.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
