use super::*;

#[test]
fn sampling_values_are_checked() {
    for (s, needle) in [
        (Sampling { max_new_tokens: 0, ..Default::default() }, "max_new_tokens"),
        (Sampling { temperature: Some(-1.0), ..Default::default() }, "temperature"),
        (Sampling { top_p: Some(1.5), ..Default::default() }, "top_p"),
        (Sampling { top_p: Some(0.0), ..Default::default() }, "top_p"),
        (Sampling { top_k: Some(0), ..Default::default() }, "top_k"),
        (Sampling { repetition_penalty: Some(0.0), ..Default::default() }, "repetition_penalty"),
    ] {
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn choose_greedy_penalty_topk_topp() {
    let s = Sampling::default();
    let mut rng = Rng::new(1);
    assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[], &s, &mut rng), 1);
    // A penalty of 4 on token 1 (2.0 -> 0.5) makes token 2 the argmax.
    let s = Sampling { repetition_penalty: Some(4.0), ..Default::default() };
    assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[1], &s, &mut rng), 2);
    // top_k = 1 at any temperature is greedy.
    let s = Sampling { temperature: Some(5.0), top_k: Some(1), ..Default::default() };
    for _ in 0..20 {
        assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[], &s, &mut rng), 1);
    }
    // A tiny top_p keeps only the most likely token.
    let s = Sampling { temperature: Some(1.0), top_p: Some(0.01), ..Default::default() };
    for _ in 0..20 {
        assert_eq!(choose(&mut [0.1, 2.0, 1.0], &[], &s, &mut rng), 1);
    }
    // Sampling follows the distribution: token 1 is drawn most often.
    let s = Sampling { temperature: Some(1.0), ..Default::default() };
    let mut counts = [0; 3];
    for _ in 0..2000 {
        counts[choose(&mut [0.0, 2.0, 1.0], &[], &s, &mut rng) as usize] += 1;
    }
    assert!(counts[1] > counts[2] && counts[2] > counts[0], "{counts:?}");
}

#[test]
fn same_seed_same_draws() {
    let s = Sampling { temperature: Some(1.0), ..Default::default() };
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        (0..50).map(|_| choose(&mut [0.0, 0.5, 1.0, 0.2], &[], &s, &mut rng)).collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
}

#[test]
fn stream_holds_back_split_characters() {
    // Byte-level pieces: "é" is two bytes, decodable only once both arrive.
    let pieces: Vec<&[u8]> = vec![b"h", &[0xC3], &[0xA9], b"!"];
    let decode = |ids: &[u32]| {
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| pieces[i as usize].to_vec()).collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let mut s = TextStream::default();
    let out: Vec<String> = (0..4).map(|i| s.push(i, decode)).collect();
    assert_eq!(out, ["h", "", "é", "!"]);
}

#[test]
fn left_padding_positions_start_at_each_rows_first_token() {
    let valid = vec![vec![false, false, true, true], vec![true; 4]];
    assert_eq!(row_positions(&valid), vec![vec![0, 0, 0, 1], vec![0, 1, 2, 3]]);
}

/// The head sees the last position only, and gives what projecting every position and keeping
/// the last gave.
#[test]
fn only_the_last_position_is_projected() {
    let dev = crate::testing::device();
    let hidden =
        crate::testing::tensor_from(&(0..24).map(|i| i as f32 * 0.1).collect::<Vec<_>>(), [2, 3, 4], &dev);
    let w = crate::testing::tensor_from(&(0..20).map(|i| (i as f32).sin()).collect::<Vec<_>>(), [4, 5], &dev);
    let head = |h: Tensor<3>| {
        let [b, l, c] = h.dims();
        h.reshape([b * l, c]).matmul(w.clone()).reshape([b, l, 5])
    };
    let mut seen = 0;
    let got = super::last_position_logits(hidden.clone(), |h| {
        seen = h.dims()[1];
        head(h)
    });
    assert_eq!(seen, 1);
    let all = head(hidden);
    let want = all.slice([0..2, 2..3, 0..5]).reshape([2, 5]);
    assert_eq!(crate::testing::to_vec(got), crate::testing::to_vec(want));
}
