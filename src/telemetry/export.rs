//! Finished spans on their way to the collector: a bounded queue that a span's end only tries to
//! enter (a full queue drops the span and counts it, never waits), and one background task that
//! exports the queue in batches, one export at a time, every OTEL_BSP_SCHEDULE_DELAY or as soon as
//! a batch is full. A slow or dead collector therefore holds back nothing but the queue; at
//! shutdown what is queued gets one last export, within a deadline.
//!
//! The SDK's own batch processor runs its exports on a thread of its own, outside tokio, where
//! the async reqwest client we share cannot run, and it does not tell how many spans it dropped.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Span, SpanData, SpanExporter, SpanProcessor},
};
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

/// The longest one export may take before its spans count as dropped (the exporter's own HTTP
/// timeout, OTEL_EXPORTER_OTLP_TIMEOUT, 10 s by default, usually ends it first).
const EXPORT_LIMIT: Duration = Duration::from_secs(30);

/// How the queue is emptied.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub max_queue: usize,
    pub delay: Duration,
    pub max_batch: usize,
}

/// The span processor: ends of spans go into the queue.
#[derive(Debug)]
pub struct Queue {
    queue: mpsc::Sender<SpanData>,
}

/// The background exporter, to stop with one last export.
#[derive(Debug)]
pub struct Exporting {
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The queue and the task that empties it into `exporter`; must be called inside tokio.
pub fn start<E: SpanExporter + 'static>(exporter: E, batching: Batching) -> (Queue, Exporting) {
    let (queue, spans) = mpsc::channel(batching.max_queue.max(1));
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(exporter, spans, batching, stop.clone()));
    (
        Queue { queue },
        Exporting {
            stop,
            task: Mutex::new(Some(task)),
        },
    )
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            crate::metrics::spans_dropped("queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Exporting {
    /// Exports what is queued, then stops; gives up at `within`.
    pub async fn shut_down(&self, within: Duration) {
        self.stop.cancel();
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task
            && tokio::time::timeout(within, &mut task).await.is_err()
        {
            task.abort();
            tracing::warn!("traces: the last export did not finish in time");
        }
    }
}

async fn run<E: SpanExporter>(
    exporter: E,
    mut spans: mpsc::Receiver<SpanData>,
    batching: Batching,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(batching.max_batch);
    loop {
        let deadline = Instant::now() + batching.delay;
        // Gathers a batch until it is full, the delay is over, or shutdown.
        let stopping = loop {
            let room = batching.max_batch - batch.len();
            if room == 0 {
                break false;
            }
            tokio::select! {
                received = spans.recv_many(&mut batch, room) => if received == 0 { break true },
                () = tokio::time::sleep_until(deadline) => break false,
                () = stop.cancelled() => break true,
            }
        };
        if stopping {
            while let Ok(span) = spans.try_recv() {
                batch.push(span);
            }
            for last in batch.chunks(batching.max_batch) {
                export(&exporter, last.to_vec()).await;
            }
            return;
        }
        if !batch.is_empty() {
            export(&exporter, std::mem::take(&mut batch)).await;
        }
    }
}

/// One export; what fails or times out is counted as dropped.
async fn export<E: SpanExporter>(exporter: &E, batch: Vec<SpanData>) {
    let spans = batch.len();
    match tokio::time::timeout(EXPORT_LIMIT, exporter.export(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            crate::metrics::spans_dropped("export_failed", spans);
            tracing::debug!(%error, spans, "traces: an export failed");
        }
        Err(_) => {
            crate::metrics::spans_dropped("export_failed", spans);
            tracing::debug!(spans, "traces: an export timed out");
        }
    }
}
