//! The model thread: one loaded model, fed by a bounded queue. Generation is continuously
//! batched: rows share the decoder, each with its own sampling and length, a request joins the
//! running batch at the next decode step and leaves it when it ends or its client goes away.
//! Image and text encodings queued together share one forward.

use crate::Model;
use crate::generate::{GenerationOutput, Generator, Request, Session};
use crate::zero_shot::ZeroShot;
use std::collections::{HashMap, VecDeque};
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
    /// Requests that joined a running batch.
    pub joined: AtomicUsize,
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

/// Runs the worker loop on the current thread until the queue closes. Generation is
/// continuous: requests that arrive within `window` of an idle moment start a batch, and later
/// ones join the running batch at its next decode step (when their prompt fits the positions
/// cached so far; otherwise they start the next batch), up to `max_batch` rows. Embedding and
/// zero-shot jobs run between decode steps, those queued together as one forward.
pub fn run(
    loaded: Model,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    window: Duration,
    stats: Arc<WorkerStats>,
) {
    let mut session: Option<(Session, HashMap<usize, Client>)> = None;
    // Waiting requests with their prompt's length in tokens (counted once, on arrival).
    let mut waiting: VecDeque<(Request, Client, usize)> = VecDeque::new();
    let mut next_tag = 0usize;
    let mut open = true;
    loop {
        // Take what has arrived; block only when there is nothing to do.
        let mut jobs = Vec::new();
        if session.is_none() && waiting.is_empty() {
            if !open {
                return;
            }
            match rx.blocking_recv() {
                Some(j) => jobs.push(j),
                None => return,
            }
            let deadline = Instant::now() + window;
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(500));
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
        } else {
            loop {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        stats.queued.fetch_sub(jobs.len(), Ordering::Relaxed);
        let (mut embed_jobs, mut score_jobs) = (Vec::new(), Vec::new());
        for j in jobs {
            match j {
                Job::Generate(r, tx) => match &loaded {
                    Model::Generator(g) => {
                        if let Some(len) = runnable(g, &r, &tx) {
                            waiting.push_back((r, tx, len));
                        }
                    }
                    Model::Scorer(s) => {
                        let _ = tx.send(Event::Done(Err(not_served(&s.kind, "text generation"))));
                    }
                },
                Job::Embed(i, t, tx) => embed_jobs.push((i, t, tx)),
                Job::ZeroShot(i, t, tx) => score_jobs.push((i, t, tx)),
            }
        }
        if !embed_jobs.is_empty() {
            stats.record_batch(embed_jobs.len());
            embed_batch(&loaded, embed_jobs);
        }
        for (images, texts, tx) in score_jobs {
            stats.record_batch(1);
            let out = match &loaded {
                Model::Scorer(s) => s.score(&images, &texts),
                Model::Generator(g) => Err(not_served(&g.kind, "zero-shot")),
            };
            let _ = tx.send(out);
        }
        let Model::Generator(g) = &loaded else { continue };
        // Clients that left while waiting are dropped before any work.
        waiting.retain(|(_, tx, _)| !tx.is_closed());
        admit(g, &mut session, &mut waiting, &mut next_tag, max_batch, &stats);
        let Some((s, clients)) = &mut session else { continue };
        let started = Instant::now();
        let result = g.step(s, |tag, piece| {
            clients.get(&tag).is_some_and(|tx| tx.send(Event::Piece(piece.to_string())).is_ok())
        });
        stats.generate_micros.fetch_add(started.elapsed().as_micros() as usize, Ordering::Relaxed);
        match result {
            Ok(finished) => {
                for (tag, o) in finished {
                    stats.tokens.fetch_add(o.token_ids.len(), Ordering::Relaxed);
                    if let Some(tx) = clients.remove(&tag) {
                        let _ = tx.send(Event::Done(Ok(o)));
                    }
                }
                if s.is_done() {
                    session = None;
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (_, tx) in clients.drain() {
                    let _ = tx.send(Event::Done(Err(NnError::Config(msg.clone()))));
                }
                session = None;
            }
        }
    }
}

type Client = mpsc::UnboundedSender<Event>;

/// The prompt length of a request that can run at all; one that cannot (its prompt too long for
/// the context, no image for PaliGemma) is answered now.
fn runnable(g: &Generator, r: &Request, tx: &Client) -> Option<usize> {
    let why = match g.prompt_ids(&r.prompt) {
        Ok(ids) if ids.len() < g.max_len() && (!g.needs_image() || r.image.is_some()) => {
            return Some(ids.len());
        }
        Ok(ids) if ids.len() >= g.max_len() => NnError::Config(format!(
            "prompt of {} tokens does not fit the context of {} tokens",
            ids.len(),
            g.max_len()
        )),
        Ok(_) => NnError::Config("PaliGemma needs an image".into()),
        Err(e) => e,
    };
    let _ = tx.send(Event::Done(Err(why)));
    None
}

/// Starts a batch from the waiting requests, or lets them join the running one.
fn admit(
    g: &Generator,
    session: &mut Option<(Session, HashMap<usize, Client>)>,
    waiting: &mut VecDeque<(Request, Client, usize)>,
    next_tag: &mut usize,
    max_batch: usize,
    stats: &WorkerStats,
) {
    match session {
        None if !waiting.is_empty() => {
            let n = waiting.len().min(max_batch);
            let batch: Vec<(Request, Client)> = waiting.drain(..n).map(|(r, tx, _)| (r, tx)).collect();
            let requests: Vec<Request> = batch.iter().map(|(r, _)| r.clone()).collect();
            let tags: Vec<usize> = (0..n).map(|i| *next_tag + i).collect();
            *next_tag += n;
            // Room for requests that join later: twice the tokens this batch asks for (the
            // positions cost memory and attention for every row; the model's context caps it).
            let room = 2 * requests.iter().map(|r| r.sampling.max_new_tokens).max().unwrap_or(0);
            stats.record_batch(n);
            match g.start(&requests, &tags, room) {
                Ok(s) => {
                    *session = Some((s, tags.into_iter().zip(batch.into_iter().map(|(_, tx)| tx)).collect()))
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (_, tx) in batch {
                        let _ = tx.send(Event::Done(Err(NnError::Config(msg.clone()))));
                    }
                }
            }
        }
        Some((s, clients)) => {
            // Every waiting request that fits joins now, prefilled together.
            let mut still = VecDeque::new();
            let mut joining = Vec::new();
            while let Some((r, tx, len)) = waiting.pop_front() {
                if s.live() + joining.len() >= max_batch || !s.can_join(len, r.sampling.max_new_tokens) {
                    still.push_back((r, tx, len));
                } else {
                    joining.push((r, tx));
                }
            }
            *waiting = still;
            if !joining.is_empty() {
                let requests: Vec<Request> = joining.iter().map(|(r, _)| r.clone()).collect();
                let tags: Vec<usize> = (0..joining.len()).map(|i| *next_tag + i).collect();
                *next_tag += joining.len();
                match g.join(s, &requests, &tags) {
                    Ok(()) => {
                        stats.joined.fetch_add(joining.len(), Ordering::Relaxed);
                        clients.extend(tags.into_iter().zip(joining.into_iter().map(|(_, tx)| tx)));
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for (_, tx) in joining {
                            let _ = tx.send(Event::Done(Err(NnError::Config(msg.clone()))));
                        }
                    }
                }
            }
        }
        None => {}
    }
}

fn not_served(kind: &str, what: &str) -> NnError {
    NnError::Config(format!("this server's model is a {kind}, which does not do {what}"))
}

type EmbedJob = (Vec<image::DynamicImage>, Vec<String>, oneshot::Sender<Result<Embeddings>>);

fn embed_batch(loaded: &Model, jobs: Vec<EmbedJob>) {
    let Model::Scorer(s) = loaded else {
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
