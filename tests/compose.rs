//! A composed VLM configured as PaliGemma gives the paligemma crate's (and transformers') outputs.
#![allow(clippy::unwrap_used)]

use burn::tensor::DType;
use vlm_zoo::compose::Vlm;
use zoo_nn::testing::{PARITY_TOL, Reference, assert_close, device, fixture};

#[test]
fn composed_paligemma_matches_the_paligemma_crate() {
    let dev = device();
    for name in ["paligemma-a", "paligemma2-a"] {
        let dir = fixture(name);
        let r = Reference::read(&dir.join("reference.safetensors"));
        let (pg, _) = zoo_paligemma::load_paligemma(&dir, DType::F32, &dev).unwrap();
        let ids: Vec<u32> = r.i64("input_ids_0").into_iter().map(|v| v as u32).collect();
        let pixels = r.tensor::<3>("pixel_values_0", &dev).unsqueeze::<4>();
        let want = pg.forward(pixels.clone(), std::slice::from_ref(&ids), &[vec![0; ids.len()]]).unwrap();
        let vlm = Vlm::from_paligemma(pg);
        let got = vlm.forward(pixels, std::slice::from_ref(&ids), vec![ids.len()]).unwrap();
        assert_close(
            got.clone(),
            &zoo_nn::testing::to_vec(want),
            1e-6,
            &format!("{name}: composed vs paligemma"),
        );
        assert_close(got, &r.f32("logits_0"), PARITY_TOL, &format!("{name}: composed vs transformers"));
    }
}
