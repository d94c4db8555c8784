//! `prep@i` stage: the iteration's seed batch — `prep.seeds_per_iteration` training seeds
//! at `harmful_fraction`, with `revise_fraction` of each class marked `generated_*` for
//! attacker revision and the rest `vanilla_*` (method.md §1.1). Seeded by
//! `rng_for(seed, key, row)`; the key includes the iteration, so each iteration draws anew.
use anyhow::bail;
use rand::seq::{index, SliceRandom};

use super::StageContext;
use crate::game::{SeedKind, SeedLabel};
use crate::schema::prep::{PrepRow, PrepSchema};
use crate::schema::seeds::Split;
use crate::schema::seeds::{SeedRow, SeedsSchema};

/// Bump when the output for the same inputs would change.
pub const VERSION: u32 = 1;

/// What `prep` reads from the spec: the `prep` section, all of it in the key.
pub type Params = crate::spec::PrepParams;

pub fn params(spec: &crate::spec::Spec) -> Params {
    spec.raw.prep.clone()
}

impl crate::spec::PrepParams {
    /// The key parameters of `prep@i`: the whole section.
    pub fn key(&self) -> serde_json::Value {
        super::to_key(self)
    }
}

/// Pick `n` of `pool` and mark `round(n · revise)` of them for revision.
fn draw<'a>(pool: &[&'a SeedRow], n: usize, revise: f64, rng_pick: &mut impl rand::Rng, rng_mark: &mut impl rand::Rng) -> Vec<(&'a SeedRow, bool)> {
    let picked: Vec<&SeedRow> = index::sample(rng_pick, pool.len(), n).into_iter().map(|i| pool[i]).collect();
    let marked = (n as f64 * revise).round() as usize;
    let mut flags = vec![false; n];
    for i in index::sample(rng_mark, n, marked.min(n)) {
        flags[i] = true;
    }
    picked.into_iter().zip(flags).collect()
}

pub fn run(p: &Params, ctx: &mut StageContext<'_>) -> anyhow::Result<()> {
    let seeds = ctx.read_parquet::<SeedsSchema>("dataset")?;
    let harmful: Vec<&SeedRow> = seeds.iter().filter(|r| r.split == Split::Train && r.label == SeedLabel::Harmful).collect();
    let benign: Vec<&SeedRow> = seeds.iter().filter(|r| r.split == Split::Train && r.label == SeedLabel::Benign).collect();
    let n = p.seeds_per_iteration as usize;
    let n_harmful = (n as f64 * p.harmful_fraction).round() as usize;
    let n_benign = n - n_harmful;
    if n_harmful > harmful.len() || n_benign > benign.len() {
        bail!(
            "prep.seeds_per_iteration = {n} at harmful_fraction {} needs {n_harmful} harmful and {n_benign} benign training seeds; the dataset has {} and {}",
            p.harmful_fraction,
            harmful.len(),
            benign.len()
        );
    }
    // Separate generators per purpose (rows 0..=4), so changing one class's count does
    // not shift the other class's draws.
    let mut batch = draw(&harmful, n_harmful, p.revise_fraction, &mut ctx.rng(0), &mut ctx.rng(1));
    batch.extend(draw(&benign, n_benign, p.revise_fraction, &mut ctx.rng(2), &mut ctx.rng(3)));
    batch.shuffle(&mut ctx.rng(4));
    let rows: Vec<PrepRow> = batch
        .into_iter()
        .enumerate()
        .map(|(i, (s, revise))| PrepRow {
            row: i as u32,
            seed_id: s.id.clone(),
            text: s.text.clone(),
            label: s.label,
            data_type: SeedKind::of(s.label, revise),
            revise,
            source: s.source.clone(),
            category: s.category.clone(),
        })
        .collect();
    ctx.output.metric("seeds", rows.len());
    for kind in [SeedKind::GeneratedHarmful, SeedKind::VanillaHarmful, SeedKind::GeneratedBenign, SeedKind::VanillaBenign] {
        ctx.output.metric(kind.as_str(), rows.iter().filter(|r| r.data_type == kind).count());
    }
    ctx.output.write_parquet::<PrepSchema>(&rows)?;
    Ok(())
}
