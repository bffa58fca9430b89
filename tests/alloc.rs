//! The decoding loops allocate nothing per token on the host backend: with a counting global
//! allocator, generating 56 tokens costs exactly as many allocations as generating 16 (the
//! difference would be the per-token allocations). Its own test binary, so no other test
//! allocates while it counts.

use candle_core::Device;
use card::config::{Config, ObjectiveKind};
use card::data::load_data;
use card::decode::{ArDecoder, CardDecoder, Decoder, GenOptions, Sampling};
use card::runtime::alloc::{allocations, Counting};
use card::train::Trainer;

#[global_allocator]
static ALLOC: Counting<std::alloc::System> = Counting(std::alloc::System);

#[test]
fn decoding_allocates_nothing_per_token() {
    let mut cfg = Config::load("tiny", &[]).unwrap();
    cfg.train.objective = ObjectiveKind::Card;
    let data = load_data(&cfg, None).unwrap();
    let mut trainer = Trainer::new(cfg, &data, &Device::Cpu).unwrap();
    for _ in 0..20 {
        trainer.step().unwrap();
    }
    let model = trainer.eval_model().unwrap();
    let tok = &data.tokenizer;
    let prompt = vec![tok.encode("Alice was beginning").unwrap()];
    let count = |d: &dyn Decoder, n: usize| {
        let opts = GenOptions {
            max_new_tokens: n,
            eos_id: u32::MAX, // never generated: every run makes exactly n tokens
            mask_id: tok.mask_id(),
            sampling: Sampling::default(),
            seed: 0,
            stop: None,
            backend: None,
        };
        let before = allocations().0;
        let g = d.generate(&model, &prompt, &opts, &mut |_| {}).unwrap();
        let used = allocations().0 - before;
        assert_eq!(g.generated_tokens(), n);
        (used, g.forward_passes)
    };
    let card = CardDecoder {
        block_size: 4,
        step_limit: 4,
        threshold: 0.5,
        ..CardDecoder::default()
    };
    for (name, d) in [("ar", &ArDecoder as &dyn Decoder), ("card", &card)] {
        count(d, 16); // first use: thread pools and other one-time setup
        let (short, short_passes) = count(d, 16);
        let (long, long_passes) = count(d, 56);
        assert!(
            long_passes > short_passes,
            "{name}: more tokens take more passes"
        );
        assert_eq!(
            long,
            short,
            "{name}: {} extra passes allocated {} times",
            long_passes - short_passes,
            long as i64 - short as i64
        );
    }
}
