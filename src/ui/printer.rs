//! The one printer: consumes events from every worker. On a terminal, a
//! spinner per running step; otherwise one plain line per step, to stderr.

use rigger_events::{Event, Events};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub struct Printer {
    handle: JoinHandle<()>,
}

impl Printer {
    /// Start the printer; hand the returned `Events` to workers.
    pub fn start(verbose: bool) -> (Events, Printer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fancy = std::io::stderr().is_terminal();
        let handle = tokio::spawn(run(rx, fancy, verbose));
        (Events::new(tx), Printer { handle })
    }

    /// Wait until every event sent so far is shown. Drop all `Events` clones first.
    pub async fn finish(self) {
        let _ = self.handle.await;
    }
}

fn secs(ms: u128) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

async fn run(mut rx: mpsc::UnboundedReceiver<Event>, fancy: bool, verbose: bool) {
    let start = Instant::now();
    let multi = MultiProgress::new();
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    // A step may contain steps of the same subject (the engine's "creating"
    // around the provider's own): only the outermost start and end are shown.
    let mut depth: HashMap<String, usize> = HashMap::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed:.dim}").unwrap_or_else(|_| ProgressStyle::default_spinner());
    let line = |s: String| {
        if fancy {
            let _ = multi.println(s);
        } else {
            eprintln!("[{:>6.1}s] {s}", start.elapsed().as_secs_f64());
        }
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Started { subject, what } => {
                let d = depth.entry(subject.clone()).or_insert(0);
                *d += 1;
                if *d > 1 {
                    if let Some(bar) = bars.get(&subject) {
                        bar.set_message(what);
                    }
                    continue;
                }
                if fancy {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(style.clone());
                    bar.set_prefix(subject.clone());
                    bar.set_message(what);
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bars.insert(subject, bar);
                } else {
                    line(format!("{subject}: {what}…"));
                }
            }
            Event::Progress { subject, message, done, total } => {
                let msg = match (done, total) {
                    (Some(d), Some(t)) => format!("{message} ({d}/{t})"),
                    _ => message,
                };
                match bars.get(&subject) {
                    Some(bar) => bar.set_message(msg),
                    None if verbose => line(format!("{subject}: {msg}")),
                    None => {}
                }
            }
            Event::Finished { subject, what, elapsed_ms } => {
                let d = depth.entry(subject.clone()).or_insert(1);
                *d = d.saturating_sub(1);
                if *d > 0 {
                    continue;
                }
                if let Some(bar) = bars.remove(&subject) {
                    bar.finish_and_clear();
                }
                line(format!("{subject}: {what} ({})", secs(elapsed_ms)));
            }
            Event::Failed { subject, what, error } => {
                let d = depth.entry(subject.clone()).or_insert(1);
                *d = d.saturating_sub(1);
                if *d > 0 {
                    continue;
                }
                if let Some(bar) = bars.remove(&subject) {
                    bar.finish_and_clear();
                }
                // The full error ends the run; here, its first line is enough.
                let first = error.lines().next().unwrap_or_default();
                let short: String = first.chars().take(160).collect();
                let more = if short.len() < error.len() { " …" } else { "" };
                line(format!("{subject}: {what} FAILED: {short}{more}"));
            }
            Event::Note { subject, message } => {
                if verbose {
                    line(format!("{subject}: {message}"));
                }
            }
        }
    }
    for (_, bar) in bars {
        bar.finish_and_clear();
    }
}
