//! Benchmark of `status` (Engine::resolve) on a store where every node of a 100-iteration
//! plan is cached: 504 artifacts, one small file each, published through the real store.
//! Stages that are not built yet get placeholder outputs here — `status` only reads
//! manifests, so what the files hold does not matter for its cost.
//! Run: `cargo bench --profile dev --bench status` (scripts/bench_status.sh does).
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use self_redteam::engine::Engine;
use self_redteam::plan::Plan;
use self_redteam::spec::Spec;
use self_redteam::store::{Artifact, Manifest, Store};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec = Spec::load(&root.join("tests/fixtures/tiny.yaml")).expect("tiny.yaml is valid");
    let plan = Plan::new(&spec, Some(100));
    let tmp = tempfile::tempdir().expect("temp store");
    let store = Store::open(tmp.path()).expect("open store");
    let t0 = Instant::now();
    {
        let _lock = store.lock().expect("lock");
        let mut done: HashMap<String, Artifact> = HashMap::new();
        for node in &plan.nodes {
            let digests: Vec<_> = node.inputs.iter().map(|(_, p)| done[&p.to_string()].manifest.content_digest.clone()).collect();
            let version = node.id.kind.version();
            let components = node.components(version, plan.seed, &digests);
            let key = components.key();
            let staging = store.begin(node.id.kind.name(), &key).expect("begin");
            std::fs::write(staging.dir.join("out.bin"), node.name().as_bytes()).expect("write");
            let mut m = Manifest::draft(&node.name(), node.id.kind.name(), node.id.iteration, components);
            m.metrics.insert("x".into(), serde_json::json!(1.0));
            let a = store.publish(staging, m, false).expect("publish");
            done.insert(node.name(), a);
        }
    }
    println!("populated {} artifacts in {:.2}s", plan.nodes.len(), t0.elapsed().as_secs_f64());
    let engine = Engine::new(&spec, plan, store);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let resolved = engine.resolve().expect("resolve");
        times.push(t.elapsed().as_secs_f64());
        assert!(resolved.iter().all(|r| r.state == self_redteam::engine::State::Cached), "every node cached");
    }
    times.sort_by(f64::total_cmp);
    println!(
        "status (Engine::resolve), 100 iterations, {} nodes all cached: best {:.1} ms, median {:.1} ms",
        engine.plan.nodes.len(),
        times[0] * 1e3,
        times[2] * 1e3
    );
}
