//! Gemma / Gemma 2 parity with transformers on the fixtures of scripts/make_fixtures.py.
#![allow(clippy::unwrap_used)]

use burn::tensor::DType;
use zoo_gemma::{GemmaDecoder, load_gemma};
use zoo_nn::testing::{PARITY_TOL, Reference, assert_close, assert_slices_close, device, fixture, to_vec};
use zoo_nn::{MaskSpec, TextTokenizer};
use zoo_nn::{Sampling, StopReason, generate};

const FIXTURES: [&str; 3] = ["gemma-mqa", "gemma-gqa", "gemma2-a"];

fn prompts(name: &str) -> Vec<String> {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
            .unwrap();
    meta["prompts"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

#[test]
fn logits_match_transformers() {
    let dev = device();
    for name in FIXTURES {
        let dir = fixture(name);
        let r = Reference::read(&dir.join("reference.safetensors"));
        let (model, config) = load_gemma(&dir, DType::F32, &dev).unwrap();
        let tok = TextTokenizer::from_dir(&dir).unwrap();
        tok.check_vocab(config.vocab_size).unwrap();
        for (i, prompt) in prompts(name).iter().enumerate() {
            let ids = tok.inner().encode(prompt.as_str(), true).unwrap().get_ids().to_vec();
            let want: Vec<u32> = r.i64(&format!("input_ids_{i}")).iter().map(|&v| v as u32).collect();
            assert_eq!(ids, want, "{name}: prompt {i} ids");
            let logits = model.forward(r.int_tensor::<2>(&format!("input_ids_{i}"), &dev));
            assert_close(logits, &r.f32(&format!("logits_{i}")), PARITY_TOL, &format!("{name} logits {i}"));
        }
    }
}

#[test]
fn greedy_generation_matches_transformers_and_batching() {
    let dev = device();
    for name in FIXTURES {
        let dir = fixture(name);
        let r = Reference::read(&dir.join("reference.safetensors"));
        let (model, config) = load_gemma(&dir, DType::F32, &dev).unwrap();
        let decoder =
            GemmaDecoder { model: &model, max_len: config.max_position_embeddings, device: dev.clone() };
        let sampling = Sampling { max_new_tokens: 8, ..Default::default() };
        let prompts: Vec<Vec<u32>> =
            (0..3).map(|i| r.i64(&format!("input_ids_{i}")).iter().map(|&v| v as u32).collect()).collect();
        // Generation in the fixture ran without an eos stop.
        let mut one_by_one = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let out = generate(&decoder, std::slice::from_ref(p), &[], &sampling, |_, _| {}).unwrap();
            let want: Vec<u32> = r.i64(&format!("generated_{i}")).iter().map(|&v| v as u32).collect();
            assert_eq!(out[0].token_ids, want, "{name}: greedy ids of prompt {i}");
            assert_eq!(out[0].stop_reason, StopReason::MaxNewTokens);
            one_by_one.push(out[0].token_ids.clone());
        }
        // Left-padded batch of prompts of different lengths = one at a time.
        let batched = generate(&decoder, &prompts, &[], &sampling, |_, _| {}).unwrap();
        let batched: Vec<Vec<u32>> = batched.into_iter().map(|g| g.token_ids).collect();
        assert_eq!(batched, one_by_one, "{name}: batched vs one at a time");
        println!("{name}: greedy ids equal transformers' for 3 prompts x 8 tokens, batched too");
    }
}

#[test]
fn cached_decode_equals_uncached_forward() {
    let dev = device();
    for name in FIXTURES {
        let dir = fixture(name);
        let r = Reference::read(&dir.join("reference.safetensors"));
        let (model, _) = load_gemma(&dir, DType::F32, &dev).unwrap();
        let ids = r.int_tensor::<2>("input_ids_2", &dev);
        let [_, l] = ids.dims();
        let full = to_vec(model.forward(ids.clone()));
        let mut cache = model.new_cache(1, l, &dev);
        let mut pieces = Vec::new();
        let split = l / 2;
        for (start, end) in std::iter::once((0, split)).chain((split..l).map(|i| (i, i + 1))) {
            let x = model.embed(ids.clone().slice([0..1, start..end]));
            let pos = vec![(start as i64..end as i64).collect::<Vec<_>>()];
            let h = model.forward_embeds(x, &pos, &MaskSpec::causal(), Some(&mut cache));
            pieces.extend(to_vec(model.logits(h)));
        }
        assert_slices_close(&pieces, &full, 1e-5, &format!("{name} cached vs uncached"));
    }
}

#[test]
fn eos_stops_generation_and_is_excluded() {
    let dev = device();
    let dir = fixture("gemma-mqa");
    let r = Reference::read(&dir.join("reference.safetensors"));
    let (model, config) = load_gemma(&dir, DType::F32, &dev).unwrap();
    let decoder =
        GemmaDecoder { model: &model, max_len: config.max_position_embeddings, device: dev.clone() };
    let prompt: Vec<u32> = r.i64("input_ids_0").iter().map(|&v| v as u32).collect();
    let want: Vec<u32> = r.i64("generated_0").iter().map(|&v| v as u32).collect();
    // Declare the third generated token an end-of-sequence id.
    let eos = want[2];
    let first = want.iter().position(|&t| t == eos).unwrap();
    let out = generate(
        &decoder,
        &[prompt],
        &[eos],
        &Sampling { max_new_tokens: 8, ..Default::default() },
        |_, _| {},
    )
    .unwrap();
    assert_eq!(out[0].stop_reason, StopReason::Eos);
    assert_eq!(out[0].token_ids, want[..first]);
}

#[test]
fn seeded_sampling_is_reproducible_and_bad_input_is_refused() {
    let dev = device();
    let dir = fixture("gemma2-a");
    let (model, config) = load_gemma(&dir, DType::F32, &dev).unwrap();
    let decoder =
        GemmaDecoder { model: &model, max_len: config.max_position_embeddings, device: dev.clone() };
    let s = Sampling {
        temperature: Some(1.5),
        top_k: Some(50),
        top_p: Some(0.9),
        seed: 3,
        max_new_tokens: 6,
        ..Default::default()
    };
    let a = generate(&decoder, &[vec![2, 10, 20]], &[], &s, |_, _| {}).unwrap();
    let b = generate(&decoder, &[vec![2, 10, 20]], &[], &s, |_, _| {}).unwrap();
    assert_eq!(a, b);
    let e = generate(&decoder, &[vec![]], &[], &s, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("empty prompt"), "{e}");
    let long = vec![5u32; config.max_position_embeddings];
    let e = generate(&decoder, &[long], &[], &s, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("does not fit the context"), "{e}");
}

/// Continuous batching: a request that joins a running batch between decode steps (left-padded
/// to the columns cached so far, prefilled into its own cache, appended) gets the greedy ids it
/// gets alone, as do the rows already running, while finished rows leave the batch.
#[test]
fn a_request_joining_a_running_batch_gets_its_own_answer() {
    let dev = device();
    for name in FIXTURES {
        let dir = fixture(name);
        let r = Reference::read(&dir.join("reference.safetensors"));
        let (model, config) = load_gemma(&dir, DType::F32, &dev).unwrap();
        let decoder =
            GemmaDecoder { model: &model, max_len: config.max_position_embeddings, device: dev.clone() };
        let prompts: Vec<Vec<u32>> =
            (0..3).map(|i| r.i64(&format!("input_ids_{i}")).iter().map(|&v| v as u32).collect()).collect();
        let short = Sampling { max_new_tokens: 3, ..Default::default() };
        let long = Sampling { max_new_tokens: 8, ..Default::default() };
        // Rows 0 (8 tokens) and 1 (3 tokens) start; row 2 joins after two steps.
        let mut run = zoo_nn::generate::Running::start(
            &decoder,
            &prompts[..2],
            &[long.clone(), short.clone()],
            &[0, 1],
            16,
        )
        .unwrap();
        let mut got: Vec<Option<Vec<u32>>> = vec![None; 3];
        let mut steps = 0;
        while !run.is_done() {
            if steps == 2 {
                assert!(run.can_join(prompts[2].len(), 8));
                run.join(&decoder, &prompts[2..], std::slice::from_ref(&long), &[2]).unwrap();
            }
            for (tag, g) in run.step(&decoder, &[], |_, _| true).unwrap() {
                got[tag] = Some(g.token_ids);
            }
            steps += 1;
        }
        for (i, s) in [&long, &short, &long].into_iter().enumerate() {
            let alone = generate(&decoder, std::slice::from_ref(&prompts[i]), &[], s, |_, _| {}).unwrap();
            assert_eq!(got[i].as_ref().unwrap(), &alone[0].token_ids, "{name}: row {i}");
        }
    }
}
