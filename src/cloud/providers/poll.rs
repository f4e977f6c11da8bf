//! One bounded poll: ask whether something is done; while it is not, wait a
//! little longer each time (×1.5, up to a ceiling) and ask again, until a
//! limit. Every provider wait that backs off goes through here, so none can
//! run forever and each one, when it gives up, says what it waited for, why
//! it was not done, and for how long.

use std::future::Future;
use std::time::{Duration, Instant};

/// What one look found.
#[derive(Debug)]
pub enum Check<T> {
    /// Done, with this.
    Done(T),
    /// Not yet, because of this ("instance fhm1 is still STARTING"): the
    /// timeout's message, if the limit comes first.
    NotYet(String),
}

/// How long to wait between looks, and for how long in all.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The pause after the first look.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// Give up once this much time has passed and the answer is still "not yet".
    pub limit: Duration,
}

/// A wait that reached its limit.
#[derive(Debug, thiserror::Error)]
#[error("{reason}, after waiting {limit:?} for {waited_for}{}", advice.as_deref().map(|a| format!("; {a}")).unwrap_or_default())]
pub struct TimedOut {
    /// The last "not yet" answer.
    pub reason: String,
    /// What the wait was for ("it to be RUNNING or STOPPED").
    pub waited_for: String,
    pub limit: Duration,
    /// What to do now, if the caller knows.
    pub advice: Option<String>,
}

/// What a wait is for, for its timeout's message.
#[derive(Clone, Copy, Debug)]
pub struct Waiting<'a> {
    /// Read after "after waiting 30s for …": "it to finish".
    pub for_what: &'a str,
    /// Read after the rest of the message: "re-run once it is gone".
    pub advice: Option<&'a str>,
}

impl Backoff {
    /// Look with `check` until it is done, it fails, or `limit` has passed
    /// (then `TimedOut`, turned into the caller's error type). The first look
    /// is at once.
    pub async fn until<T, E, F, Fut>(&self, waiting: Waiting<'_>, mut check: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Check<T>, E>>,
        E: From<TimedOut>,
    {
        let started = Instant::now();
        let mut pause = self.first;
        loop {
            let reason = match check().await? {
                Check::Done(v) => return Ok(v),
                Check::NotYet(reason) => reason,
            };
            if started.elapsed() > self.limit {
                return Err(E::from(TimedOut {
                    reason,
                    waited_for: waiting.for_what.to_string(),
                    limit: self.limit,
                    advice: waiting.advice.map(str::to_string),
                }));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const QUICK: Backoff = Backoff { first: Duration::from_millis(1), max: Duration::from_millis(4), limit: Duration::from_millis(50) };

    #[tokio::test]
    async fn looks_until_done() {
        let looks = AtomicU32::new(0);
        let got: Result<u32, anyhow::Error> = QUICK
            .until(Waiting { for_what: "three looks", advice: None }, || async {
                let n = looks.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(if n == 3 { Check::Done(n) } else { Check::NotYet(format!("only {n} looks")) })
            })
            .await;
        assert_eq!(got.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_error_ends_the_wait_at_once() {
        let looks = AtomicU32::new(0);
        let got: Result<(), anyhow::Error> = QUICK
            .until(Waiting { for_what: "nothing", advice: None }, || async {
                looks.fetch_add(1, Ordering::SeqCst);
                Err(anyhow::anyhow!("broken"))
            })
            .await;
        assert_eq!(got.unwrap_err().to_string(), "broken");
        assert_eq!(looks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_limit_saying_what_it_waited_for_and_why() {
        let got: Result<(), anyhow::Error> = QUICK
            .until(Waiting { for_what: "it to be gone", advice: Some("re-run once it is") }, || async {
                Ok(Check::NotYet("instance fhm1 is still DELETING".into()))
            })
            .await;
        let e = got.unwrap_err();
        assert_eq!(e.to_string(), "instance fhm1 is still DELETING, after waiting 50ms for it to be gone; re-run once it is");
        assert!(e.downcast_ref::<TimedOut>().is_some());
    }
}
