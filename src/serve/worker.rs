//! The model thread: one loaded model, fed by a bounded queue. Requests that arrive within a
//! short window are run as one batch: generation rows share the decoder (each with its own
//! sampling, stopping when its client goes away), image and text encodings share one forward.

use crate::generate::{GenerationOutput, Generator, Request};
use crate::zero_shot::{Scorer, ZeroShot};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use zoo_nn::{NnError, Result};

/// What a generation client receives: text pieces as they come, then the result.
#[derive(Debug)]
pub enum Event {
    /// A piece of text.
    Piece(String),
    /// The whole output.
    Done(Result<GenerationOutput>),
}

/// Embeddings of images and texts, L2-normalised.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Embeddings {
    /// `[n_images][dim]`.
    pub image_embeds: Vec<Vec<f32>>,
    /// `[n_texts][dim]`.
    pub text_embeds: Vec<Vec<f32>>,
}

/// One unit of work.
pub enum Job {
    /// Generate for one request, streaming events.
    Generate(Request, mpsc::UnboundedSender<Event>),
    /// Embed images and texts.
    Embed(Vec<image::DynamicImage>, Vec<String>, oneshot::Sender<Result<Embeddings>>),
    /// Score images against texts.
    ZeroShot(Vec<image::DynamicImage>, Vec<String>, oneshot::Sender<Result<ZeroShot>>),
}

/// The loaded model (one per process, so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum Loaded {
    /// Gemma / PaliGemma.
    Generator(Generator),
    /// SigLIP / SigLIP 2 / CLIP.
    Scorer(Scorer),
}

impl Loaded {
    /// `model_type`.
    pub fn kind(&self) -> &str {
        match self {
            Self::Generator(g) => &g.kind,
            Self::Scorer(s) => &s.kind,
        }
    }
}

/// Counters the worker keeps for /metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Jobs waiting in the queue.
    pub queued: AtomicUsize,
    /// Batches run, by size bucket (1, 2-4, 5-8, 9-16, 17+).
    pub batch_sizes: [AtomicUsize; 5],
    /// Tokens generated.
    pub tokens: AtomicUsize,
    /// Microseconds spent generating.
    pub generate_micros: AtomicUsize,
}

impl WorkerStats {
    fn record_batch(&self, n: usize) {
        let bucket = match n {
            0 | 1 => 0,
            2..=4 => 1,
            5..=8 => 2,
            9..=16 => 3,
            _ => 4,
        };
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the worker loop on the current thread until the queue closes: takes a job, gathers what
/// else arrives within `window` (up to `max_batch`), runs them, repeats.
pub fn run(
    loaded: Loaded,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    window: Duration,
    stats: Arc<WorkerStats>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + window;
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(500));
                }
                Err(_) => break,
            }
        }
        stats.queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        let (mut gen_jobs, mut embed_jobs, mut score_jobs) = (Vec::new(), Vec::new(), Vec::new());
        for j in jobs {
            match j {
                Job::Generate(r, tx) => gen_jobs.push((r, tx)),
                Job::Embed(i, t, tx) => embed_jobs.push((i, t, tx)),
                Job::ZeroShot(i, t, tx) => score_jobs.push((i, t, tx)),
            }
        }
        if !gen_jobs.is_empty() {
            stats.record_batch(gen_jobs.len());
            generate_batch(&loaded, gen_jobs, &stats);
        }
        if !embed_jobs.is_empty() {
            stats.record_batch(embed_jobs.len());
            embed_batch(&loaded, embed_jobs);
        }
        for (images, texts, tx) in score_jobs {
            stats.record_batch(1);
            let out = match &loaded {
                Loaded::Scorer(s) => s.score(&images, &texts),
                Loaded::Generator(g) => Err(not_served(&g.kind, "zero-shot")),
            };
            let _ = tx.send(out);
        }
    }
}

fn not_served(kind: &str, what: &str) -> NnError {
    NnError::Config(format!("this server's model is a {kind}, which does not do {what}"))
}

fn generate_batch(loaded: &Loaded, jobs: Vec<(Request, mpsc::UnboundedSender<Event>)>, stats: &WorkerStats) {
    let Loaded::Generator(g) = loaded else {
        for (_, tx) in jobs {
            let _ = tx.send(Event::Done(Err(not_served(loaded.kind(), "text generation"))));
        }
        return;
    };
    // Clients that left while queued are dropped before any work.
    let jobs: Vec<_> = jobs.into_iter().filter(|(_, tx)| !tx.is_closed()).collect();
    if jobs.is_empty() {
        return;
    }
    let requests: Vec<Request> = jobs.iter().map(|(r, _)| r.clone()).collect();
    let started = Instant::now();
    let result = g.run(&requests, |row, piece| jobs[row].1.send(Event::Piece(piece.to_string())).is_ok());
    stats.generate_micros.fetch_add(started.elapsed().as_micros() as usize, Ordering::Relaxed);
    match result {
        Ok(outputs) => {
            for ((_, tx), o) in jobs.iter().zip(outputs) {
                stats.tokens.fetch_add(o.token_ids.len(), Ordering::Relaxed);
                let _ = tx.send(Event::Done(Ok(o)));
            }
        }
        Err(e) if jobs.len() > 1 => {
            // One bad request must not fail the others: each is run alone.
            let _ = e;
            for (r, tx) in jobs {
                let out = g
                    .run(std::slice::from_ref(&r), |_, piece| {
                        tx.send(Event::Piece(piece.to_string())).is_ok()
                    })
                    .map(|mut v| v.remove(0));
                let _ = tx.send(Event::Done(out));
            }
        }
        Err(e) => {
            let _ = jobs[0].1.send(Event::Done(Err(e)));
        }
    }
}

type EmbedJob = (Vec<image::DynamicImage>, Vec<String>, oneshot::Sender<Result<Embeddings>>);

fn embed_batch(loaded: &Loaded, jobs: Vec<EmbedJob>) {
    let Loaded::Scorer(s) = loaded else {
        for (_, _, tx) in jobs {
            let _ = tx.send(Err(not_served(loaded.kind(), "embeddings")));
        }
        return;
    };
    let all_images: Vec<image::DynamicImage> = jobs.iter().flat_map(|(i, _, _)| i.iter().cloned()).collect();
    let all_texts: Vec<String> = jobs.iter().flat_map(|(_, t, _)| t.iter().cloned()).collect();
    type Rows = Vec<Vec<f32>>;
    let run = || -> Result<(Rows, Rows)> {
        let images =
            if all_images.is_empty() { Vec::new() } else { zoo_nn::host::rows(s.embed_images(&all_images)?) };
        let texts =
            if all_texts.is_empty() { Vec::new() } else { zoo_nn::host::rows(s.embed_texts(&all_texts)?) };
        Ok((images, texts))
    };
    match run() {
        Ok((images, texts)) => {
            let (mut i0, mut t0) = (0, 0);
            for (imgs, txts, tx) in jobs {
                let out = Embeddings {
                    image_embeds: images[i0..i0 + imgs.len()].to_vec(),
                    text_embeds: texts[t0..t0 + txts.len()].to_vec(),
                };
                i0 += imgs.len();
                t0 += txts.len();
                let _ = tx.send(Ok(out));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for (_, _, tx) in jobs {
                let _ = tx.send(Err(NnError::Config(msg.clone())));
            }
        }
    }
}
