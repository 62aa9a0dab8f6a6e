//! Segmentation masks against the PyTorch reference decoder of scripts/make_seg_fixture.py: the
//! segment tokens transformers generated with the PaliGemma fixture, decoded by our tokenizer,
//! parsed, decoded to 64x64 masks (within the parity tolerance) and placed into the image
//! (thresholded masks equal); and boxes and whole-image masks against big_vision's own
//! segmentation evaluator (scripts/make_seg_bigvision_fixture.py), pixel for pixel.
#![allow(clippy::unwrap_used)]

use npyz::WriterBuilder;
use zoo_nn::testing::{PARITY_TOL, assert_slices_close, device, fixture};
use zoo_paligemma::segment::{CocoRle, SegmentationDecoder, decode_masks, parse_segments, place_mask};
use zoo_paligemma::{PaliGemmaProcessor, load::read_config};

fn read_json(name: &str) -> serde_json::Value {
    let path = fixture("paligemma-seg").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn reference() -> serde_json::Value {
    read_json("reference.json")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn uints(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every case of bigvision_masks.json: the box from the loc tokens and the whole-image mask from
/// the (exact, float32) 64x64 mask equal big_vision's evaluator's, pixel for pixel.
#[test]
fn boxes_and_masks_equal_big_visions_evaluator() {
    let (r, bv) = (reference(), read_json("bigvision_masks.json"));
    let mut masks: Vec<Vec<f32>> =
        r["groups"].as_array().unwrap().iter().map(|g| floats(&g["mask64"])).collect();
    masks.push(floats(&bv["masks64"]["synthetic"]));
    assert_eq!(masks.len() as u64, bv["masks64"]["count"].as_u64().unwrap());
    let cases = bv["cases"].as_array().unwrap();
    let (mut empty, mut inside) = (0, 0);
    for (i, case) in cases.iter().enumerate() {
        let (size, locs) = (uints(&case["size"]), uints(&case["locs"]));
        let (w, h) = (size[0], size[1]);
        let mut text: String = locs.iter().map(|v| format!("<loc{v:04}>")).collect();
        text += &"<seg000>".repeat(16);
        text += " thing";
        let parsed = parse_segments(&text, w, h);
        assert!(parsed.errors.is_empty(), "case {i}: {:?}", parsed.errors);
        let what = format!("case {i}: {w}x{h}, locs {locs:?}, mask {}", case["mask"]);
        assert_eq!(parsed.groups[0].bbox.to_vec(), uints(&case["box"]), "{what}: box");
        let full = place_mask(&masks[case["mask"].as_u64().unwrap() as usize], parsed.groups[0].bbox, w, h);
        let want: CocoRle = serde_json::from_value(case["mask_rle"].clone()).unwrap();
        let differ = full.iter().zip(want.decode()).filter(|(a, b)| **a != *b).count();
        assert_eq!(differ, 0, "{what}: pixels that differ from big_vision's mask");
        assert_eq!(CocoRle::encode(&full, w, h), want, "{what}: RLE");
        empty += usize::from(case["empty"].as_bool().unwrap());
        inside += full.iter().filter(|&&b| b).count();
    }
    println!("{} cases ({empty} empty boxes, {inside} pixels inside in all) equal big_vision's", cases.len());
    assert!(cases.len() >= 100 && empty > 0 && empty < cases.len());
}

#[test]
fn masks_equal_the_pytorch_decoder() {
    let r = reference();
    let dir = fixture(r["model"].as_str().unwrap());
    let config = read_config(&dir).unwrap();
    let proc = PaliGemmaProcessor::from_dir(&dir, &config).unwrap();
    let ids: Vec<u32> =
        r["generated"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let text = proc.tokenizer.decode(&ids).unwrap();
    assert_eq!(text, r["text"].as_str().unwrap(), "decoded text");
    let (w, h) = (r["width"].as_u64().unwrap() as u32, r["height"].as_u64().unwrap() as u32);
    let parsed = parse_segments(&text, w, h);
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(parsed.groups.len(), groups.len());
    // The fixture's last group is cut off by the model's 64 positions: reported, not decoded.
    assert_eq!(parsed.errors.len(), 1, "{:?}", parsed.errors);
    assert!(parsed.errors[0].contains("<seg> codes, expected 16"), "{}", parsed.errors[0]);

    let dec = SegmentationDecoder::load(&fixture("paligemma-seg").join("vae-oid.npz"), &device()).unwrap();
    let codes: Vec<[u32; 16]> = parsed.groups.iter().map(|g| g.codes).collect();
    let m64 = zoo_nn::host::to_vec(dec.forward(&codes));
    let masks = decode_masks(&dec, &parsed, w, h);
    for (i, (g, want)) in parsed.groups.iter().zip(groups).enumerate() {
        let want_codes: Vec<u32> =
            want["codes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(g.codes.to_vec(), want_codes, "group {i} codes");
        let want_box: Vec<u32> =
            want["box"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(g.bbox.to_vec(), want_box, "group {i} box");
        assert_eq!(g.label, want["label"].as_str().unwrap());
        let want64: Vec<f32> =
            want["mask64"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_slices_close(
            &m64[i * 4096..(i + 1) * 4096],
            &want64,
            PARITY_TOL,
            &format!("group {i} 64x64 mask"),
        );
        // The box's resized values move by no more than the 64x64 mask (BILINEAR weights are
        // >= 0 and sum to 1): no pixel can change sides of 0 while this holds.
        let ours = &m64[i * 4096..(i + 1) * 4096];
        let max = ours.iter().zip(&want64).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        let margin = want["min_abs_in_box"].as_f64().unwrap() as f32;
        assert!(
            max < margin,
            "group {i}: 64x64 masks differ by {max:e}, the resized mask's margin is {margin:e}"
        );
        let want_rle: CocoRle = serde_json::from_value(want["mask_rle"].clone()).unwrap();
        let inside = masks[i].mask_rle.decode().iter().filter(|&&b| b).count();
        assert_eq!(inside as u64, want["inside"].as_u64().unwrap(), "group {i} pixels inside");
        assert!(inside > 0 && inside < (w * h) as usize);
        assert_eq!(masks[i].mask_rle, want_rle, "group {i} full-image mask");
    }
}

#[test]
fn a_broken_npz_names_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = device();
    // Not a zip at all.
    let p = tmp.path().join("vae-oid.npz");
    std::fs::write(&p, b"not a zip").unwrap();
    let e = SegmentationDecoder::load(&p, &dev).unwrap_err().to_string();
    assert!(e.contains("vae-oid.npz") && e.contains("not an npz"), "{e}");
    // Missing keys and a wrong shape, written as numpy would (one .npy per array).
    let write = |entries: &[(&str, Vec<u64>)]| {
        let f = std::fs::File::create(&p).unwrap();
        let mut zip = zip::ZipWriter::new(f);
        for (name, shape) in entries {
            zip.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
            let n: u64 = shape.iter().product();
            let mut w = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(shape)
                .writer(&mut zip)
                .begin_nd()
                .unwrap();
            w.extend((0..n).map(|_| 0.5f32)).unwrap();
            w.finish().unwrap();
        }
        zip.finish().unwrap();
    };
    write(&[("_vq_vae._embedding", vec![128, 512])]);
    let e = SegmentationDecoder::load(&p, &dev).unwrap_err().to_string();
    assert!(e.contains("decoder.0.weight") && e.contains("missing"), "{e}");
    let mut all: Vec<(String, Vec<u64>)> = SegmentationDecoder::keys()
        .into_iter()
        .map(|(k, s)| (k, s.into_iter().map(|d| d as u64).collect()))
        .collect();
    // The real file also holds the VQ-VAE's encoder: other keys are ignored.
    all.push(("encoder.0.weight".to_string(), vec![8, 3, 3, 3]));
    let refs: Vec<(&str, Vec<u64>)> = all.iter().map(|(k, s)| (k.as_str(), s.clone())).collect();
    write(&refs);
    SegmentationDecoder::load(&p, &dev).unwrap();
    all[0].1 = vec![64, 512];
    let refs: Vec<(&str, Vec<u64>)> = all.iter().map(|(k, s)| (k.as_str(), s.clone())).collect();
    write(&refs);
    let e = SegmentationDecoder::load(&p, &dev).unwrap_err().to_string();
    assert!(e.contains("_vq_vae._embedding") && e.contains("[64, 512]") && e.contains("[128, 512]"), "{e}");
}
