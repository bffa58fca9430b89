//! A `tiny` model whose logits are all equal, for the decoding tests that only need some
//! model to drive a decoder (seeding, step counts), not a trained one: no training to wait
//! for. Every weight is zero, so every activation is: RMSNorm of a zero row is zero (its eps
//! keeps it finite), attention averages zero values, and the head gives all-zero logits.
//! Greedy decoding on it picks id 0 (`<|endoftext|>`) at once; sampled decoding draws from
//! the uniform distribution over what the filters leave.

use candle_core::{DType, Device, Tensor};
use card::config::{Config, ObjectiveKind};
use card::data::{load_data, Prepared};
use card::model::{tensor_specs, Attention, Transformer};
use std::sync::OnceLock;

pub struct Uniform {
    /// The `tiny` preset's data (the tokenizer a trained `tiny` fixture has too).
    pub data: Prepared,
    pub model: Transformer,
}

pub fn uniform() -> &'static Uniform {
    static U: OnceLock<Uniform> = OnceLock::new();
    U.get_or_init(|| {
        let mut cfg = Config::load("tiny", &[]).unwrap();
        cfg.train.objective = ObjectiveKind::Card;
        let data = load_data(&cfg, None).unwrap();
        let mut mc = cfg.model.clone();
        mc.vocab_size = data.tokenizer.vocab_size();
        let specs = tensor_specs(&mc);
        let model = Transformer::from_tensors(&mc, |name| {
            let s = specs.iter().find(|s| s.name == name).expect("a spec");
            Tensor::zeros(s.shape.as_slice(), DType::F32, &Device::Cpu)
        })
        .unwrap();
        // The premise: every logit of every position is the same number.
        let ids = Tensor::new(&[[2u32, 7, 11, 3]], &Device::Cpu).unwrap();
        let logits = model.forward(&ids, Attention::Causal, None).unwrap();
        let l: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            l.iter().all(|&x| x == l[0]),
            "the zero model's logits differ"
        );
        Uniform { data, model }
    })
}
