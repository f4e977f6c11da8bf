//! Workers never print: they send events here, and one printer shows them
//! (a progress display on a terminal, plain lines otherwise).

use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub enum Event {
    /// A step of work on a subject (a resource address, a host, "image") started.
    Started { subject: String, what: String },
    /// Progress inside a step, e.g. "debootstrap: unpacking 120/310".
    Progress { subject: String, message: String, done: Option<u64>, total: Option<u64> },
    /// The step finished.
    Finished { subject: String, what: String, elapsed_ms: u128 },
    /// The step failed; the error itself is returned to the caller too.
    Failed { subject: String, what: String, error: String },
    /// A line for the log (shown verbosely only).
    Note { subject: String, message: String },
}

#[derive(Clone)]
pub struct Events {
    tx: Option<mpsc::UnboundedSender<Event>>,
}

impl Events {
    pub fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        Events { tx: Some(tx) }
    }
    /// A sink that drops everything (tests, library use).
    pub fn silent() -> Self {
        Events { tx: None }
    }
    pub fn send(&self, e: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(e);
        }
    }
    pub fn started(&self, subject: &str, what: &str) {
        self.send(Event::Started { subject: subject.into(), what: what.into() })
    }
    pub fn progress(&self, subject: &str, message: impl Into<String>) {
        self.send(Event::Progress { subject: subject.into(), message: message.into(), done: None, total: None })
    }
    pub fn progress_n(&self, subject: &str, message: impl Into<String>, done: u64, total: u64) {
        self.send(Event::Progress { subject: subject.into(), message: message.into(), done: Some(done), total: Some(total) })
    }
    pub fn finished(&self, subject: &str, what: &str, started: std::time::Instant) {
        self.send(Event::Finished { subject: subject.into(), what: what.into(), elapsed_ms: started.elapsed().as_millis() })
    }
    pub fn failed(&self, subject: &str, what: &str, error: &str) {
        self.send(Event::Failed { subject: subject.into(), what: what.into(), error: error.into() })
    }
    pub fn note(&self, subject: &str, message: impl Into<String>) {
        self.send(Event::Note { subject: subject.into(), message: message.into() })
    }
}
