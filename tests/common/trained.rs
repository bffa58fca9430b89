//! A briefly trained `tiny` CARD model, shared by the decoding tests of one test binary.

use candle_core::Device;
use card::config::{Config, ObjectiveKind};
use card::data::{load_data, Prepared, TextTokenizer};
use card::decode::{GenOptions, Sampling};
use card::model::{Backend, Transformer};
use card::train::Trainer;
use std::collections::HashMap;
use std::sync::OnceLock;

pub struct Fixture {
    pub data: Prepared,
    pub model: Transformer,
    /// The trained weights twice: as plain tensors (either backend decodes them) and as
    /// training `Var`s (only candle's forward with `KvCache` does).
    pub plain: Transformer,
    pub vars: Transformer,
    /// The trained weights on the device the invariant tests run on (`common::device`).
    pub on_device: Transformer,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut cfg = Config::load("tiny", &[]).unwrap();
        cfg.train.objective = ObjectiveKind::Card;
        cfg.train.max_steps = 400;
        let data = load_data(&cfg, None).unwrap();
        let mut t = Trainer::new(cfg, &data, &Device::Cpu).unwrap();
        for _ in 0..400 {
            t.step().unwrap();
        }
        let model = t.eval_model().unwrap();
        let mc = &t.cfg.model; // the vocabulary resolved from the data
        let plain = Transformer::from_tensors(mc, |n| t.params.tensor(n)?.copy()).unwrap();
        let vars = Transformer::from_params(mc, &t.params).unwrap();
        let dev = super::device();
        // The weights `eval_model` decodes (the EMA where the run keeps one), copied over.
        let on_device =
            Transformer::from_tensors(mc, |n| t.eval_tensor(n)?.to_device(&dev)).unwrap();
        Fixture {
            data,
            model,
            plain,
            vars,
            on_device,
        }
    })
}

/// The fixture's tokenizer.
pub fn tok() -> &'static TextTokenizer {
    &fixture().data.tokenizer
}

/// Decoding options on one backend.
pub fn opts(max_new: usize, sampling: Sampling, backend: Backend) -> GenOptions<'static> {
    GenOptions {
        sampling,
        backend: Some(backend),
        ..GenOptions::new(max_new, tok())
    }
}

pub fn encode(texts: &[&str]) -> Vec<Vec<u32>> {
    texts.iter().map(|p| tok().encode(p).unwrap()).collect()
}

/// Total variation distance between two distributions over token pairs.
pub fn total_variation(p: &HashMap<(u32, u32), f64>, q: &HashMap<(u32, u32), f64>) -> f64 {
    let keys: std::collections::HashSet<_> = p.keys().chain(q.keys()).collect();
    keys.iter()
        .map(|k| (p.get(k).unwrap_or(&0.0) - q.get(k).unwrap_or(&0.0)).abs())
        .sum::<f64>()
        / 2.0
}
