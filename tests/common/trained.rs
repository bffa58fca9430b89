//! A briefly trained `tiny` CARD model, shared by the decoding tests of one test binary.

use candle_core::Device;
use card::config::{Config, ObjectiveKind};
use card::data::{load_data, Prepared};
use card::model::Transformer;
use card::train::Trainer;
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
