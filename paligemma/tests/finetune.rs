//! Fine-tuning parity with transformers (scripts/make_finetune_reference.py): the training ids of
//! (prefix, suffix) rows, the suffix-only loss and the gradient of every parameter after one
//! backward pass on the paligemma-a fixture.
#![allow(clippy::unwrap_used)]

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::DType;
use zoo_nn::testing::{PARITY_TOL, Reference, assert_slices_close, device, fixture, to_vec};
use zoo_paligemma::{PaliGemmaProcessor, load_paligemma};

/// Replaces every float parameter by its gradient (zeros where none).
struct ToGrads<'a>(&'a GradientsParams);

impl ModuleMapper for ToGrads<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value) = (param.id, param.val());
        let grad = self.0.get::<D>(id).unwrap_or_else(|| value.zeros_like());
        Param::initialized(id, grad)
    }
}

/// Every float parameter with its module path, in visit order.
#[derive(Default)]
struct Params {
    path: Vec<String>,
    out: Vec<(String, Vec<f32>)>,
}

impl ModuleVisitor for Params {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.push((self.path.join("."), to_vec(param.val())));
    }
}

fn params<M: Module>(m: &M) -> Vec<(String, Vec<f32>)> {
    let mut v = Params::default();
    m.visit(&mut v);
    v.out
}

#[test]
fn loss_and_every_gradient_equal_transformers() {
    let dev = device().autodiff();
    let dir = fixture("paligemma-a");
    let refdir = fixture("paligemma-a-finetune");
    let (model, config) = load_paligemma(&dir, DType::F32, &dev).unwrap();
    let proc = PaliGemmaProcessor::from_dir(&dir, &config).unwrap();
    let b = Reference::read(&refdir.join("batch.safetensors"));
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(refdir.join("rows.json")).unwrap()).unwrap();
    let want_ids = b.i64("input_ids");
    let want_types = b.i64("token_type_ids");
    let width = b.shape("input_ids")[1];

    // The rows as the processor lays them out: <loc> tokens of the suffix are whole tokens.
    let (mut ids, mut prefix, mut suffix_len) = (Vec::new(), Vec::new(), Vec::new());
    for (i, row) in rows.as_array().unwrap().iter().enumerate() {
        let p = proc.prompt_ids(row["prefix"].as_str().unwrap()).unwrap();
        let s = proc.suffix_ids(row["suffix"].as_str().unwrap()).unwrap();
        let mut r = [p.as_slice(), s.as_slice()].concat();
        let types: Vec<i64> = (0..r.len()).map(|t| (t >= p.len()) as i64).collect();
        let n = r.len();
        assert_eq!(
            r.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            want_ids[i * width..i * width + n],
            "row {i} ids"
        );
        assert_eq!(types, want_types[i * width..i * width + n], "row {i} token types");
        r.resize(width, 0);
        ids.push(r);
        prefix.push(p.len());
        suffix_len.push(s.len());
    }
    let types: Vec<Vec<u32>> =
        prefix.iter().map(|&p| (0..width).map(|t| (t >= p) as u32).collect()).collect();
    let pixels = b.tensor::<4>("pixel_values", &dev);
    let logits = model.forward(pixels, &ids, &types).unwrap();
    let loss = zoo_nn::train::loss::suffix_cross_entropy(logits, &ids, &prefix, &suffix_len);
    assert_slices_close(&to_vec(loss.clone()), &b.f32("loss"), PARITY_TOL, "loss");

    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let ours = params(&model.valid().map(&mut ToGrads(&grads)));
    let (want, _) = load_paligemma(&refdir, DType::F32, &device()).unwrap();
    let want = params(&want);
    assert_eq!(ours.len(), want.len());
    let mut worst = 0f32;
    for ((name, got), (_, exp)) in ours.iter().zip(&want) {
        let (_, d) = zoo_nn::testing::max_excess(got, exp, 0.0, 0.0);
        worst = worst.max(d);
        assert_slices_close(got, exp, PARITY_TOL, &format!("grad {name}"));
    }
    println!("{} parameter gradients within tolerance, max |diff| {worst:.3e}", ours.len());
    assert!(ours.len() > 30);
}
