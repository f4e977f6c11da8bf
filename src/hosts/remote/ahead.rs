//! Commands a later step will run, asked ahead in the facts round trip. A
//! no-change apply's health gates then read answers gathered a moment before
//! instead of paying a round trip per check. An answer is used once, only while
//! fresh (`FRESH`), and only when the run changes nothing (hosts::phase::apply
//! hands them to the sessions right before the gates); a gate whose first
//! answer is not healthy asks the host live, as it always did.

use super::session::{sh_quote, RunOutput};
use base64::Engine;
use std::time::Duration;

/// A command as a gate runs it: as root (`sudo`) or as the SSH user (`sh`),
/// with what it reads on stdin.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ask {
    pub root: bool,
    pub script: String,
    pub stdin: Option<Vec<u8>>,
    /// A test of builtins only (no process): where it fails, the ask is
    /// not run ahead, because its gate will not ask that host (e.g. a
    /// Patroni replica for a question only the leader is asked). A wrong
    /// guess costs a live round trip, never a wrong answer.
    pub skip_unless: Option<String>,
}

/// What an ask reads on stdin is often a password: `{:?}` gives its size only.
impl std::fmt::Debug for Ask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ask")
            .field("root", &self.root)
            .field("script", &self.script)
            .field("stdin", &self.stdin.as_ref().map(|s| format!("({} bytes)", s.len())))
            .field("skip_unless", &self.skip_unless)
            .finish()
    }
}

impl Ask {
    pub fn sudo(script: impl Into<String>, stdin: Option<&[u8]>) -> Ask {
        Ask { root: true, script: script.into(), stdin: stdin.map(<[u8]>::to_vec), skip_unless: None }
    }

    pub fn sh(script: impl Into<String>) -> Ask {
        Ask { root: false, script: script.into(), stdin: None, skip_unless: None }
    }

    /// Run ahead only where `test` (builtins only) holds.
    pub fn skip_unless(self, test: impl Into<String>) -> Ask {
        Ask { skip_unless: Some(test.into()), ..self }
    }
}

/// How long an answer asked ahead may stand in for a live one.
pub const FRESH: Duration = Duration::from_secs(15);

/// The facts round trip's background jobs (the asks, and the facts' own
/// probes) are cut off together after this long (the gates then ask live,
/// with their own deadlines).
const LIMIT_SECS: u32 = 10;

/// The facts script's private folder (a shell variable, set by `start_script`).
const DIR: &str = "$rigger_ahead";

/// A command the facts script runs in the background: a gate's ask, or a
/// probe of the facts themselves (facts::FactQuery::probes) by its index.
pub enum Job<'a> {
    Ask(usize, &'a Ask),
    Probe(usize, &'a str),
}

/// An input that travels as itself: one line, newline-ended, which the
/// shell's `read` builtin takes back unchanged. Anything else travels as
/// base64 (one `base64 -d` on the host).
fn plain_line(input: &[u8]) -> bool {
    input.ends_with(b"\n") && !input[..input.len() - 1].iter().any(|b| matches!(b, b'\n' | b'\0'))
}

/// What the facts script (as root) runs first: its private folder, the
/// asks' inputs (they arrive on the script's own stdin, one line per ask
/// that has one) and then every job in the background, all under one
/// `timeout`: GNU timeout signals its whole process group, so one process
/// bounds them all rather than one per job (each process forked here
/// costs CPU on every host of every run).
pub fn start_script(asks: &[Ask], jobs: &[Job<'_>]) -> String {
    start_script_within(asks, jobs, LIMIT_SECS)
}

fn start_script_within(asks: &[Ask], jobs: &[Job<'_>], limit_secs: u32) -> String {
    if jobs.is_empty() {
        return String::new();
    }
    // The folder holds the asks' inputs (passwords among them): it goes
    // however the script ends, a dropped connection (SIGPIPE/SIGHUP) too.
    let mut s = String::from("rigger_ahead=$(mktemp -d)\ntrap 'rm -rf \"$rigger_ahead\"' EXIT\ntrap 'exit 129' HUP INT TERM PIPE\n");
    for (i, a) in asks.iter().enumerate() {
        match &a.stdin {
            Some(input) if plain_line(input) => s.push_str(&format!("IFS= read -r l; printf '%s\\n' \"$l\" >\"{DIR}/i{i}\"\n")),
            Some(_) => s.push_str(&format!("IFS= read -r l; printf %s \"$l\" | base64 -d >\"{DIR}/i{i}\"\n")),
            None => {}
        }
    }
    // In the inner shell the folder is its first argument; `shift` leaves
    // the jobs no positional parameters of rigger's.
    let mut batch = String::from("rigger_ahead=$1; shift\n");
    for job in jobs {
        batch.push_str(&job_script(job));
    }
    batch.push_str("wait");
    s.push_str(&format!("timeout {limit_secs} sh -c {} rigger-ahead \"{DIR}\" &\n", sh_quote(&batch)));
    s
}

/// One job, in a subshell of the batch's shell (no `sh -c` of its own for
/// root's: its text runs as the gate's `sudo sh -c` would run it). Its
/// stdout goes through a pipe, as over SSH: a command writing to
/// /dev/stdout itself (curl -o /dev/stdout) would truncate a file. Its
/// `.done` file is made only once `cat` has written the whole output: a job
/// the deadline cuts off, even in its last bytes, has none and is left out
/// of the report.
fn job_script(job: &Job<'_>) -> String {
    match job {
        Job::Ask(i, a) => {
            let f = format!("{DIR}/a{i}");
            let input = if a.stdin.is_some() { format!("\"{DIR}/i{i}\"") } else { "/dev/null".into() };
            let body = if a.root { a.script.clone() } else { format!("exec runuser -u \"$SUDO_USER\" -- sh -c {}", sh_quote(&a.script)) };
            let job = format!("{{ ( (\n{body}\n) <{input} 2>\"{f}.err\"; echo $? >\"{f}.code\" ) | cat >\"{f}.out\" && : >\"{f}.done\"; }} &\n");
            match &a.skip_unless {
                Some(test) => format!("if {test}; then\n{job}fi\n"),
                None => job,
            }
        }
        Job::Probe(i, cmd) => {
            let f = format!("{DIR}/p{i}");
            format!("{{ ( (\n{cmd}\n) </dev/null 2>/dev/null ) | cat >\"{f}.out\" && : >\"{f}.done\"; }} &\n")
        }
    }
}

/// After the facts: wait for the jobs, then one `A i code` line per ask
/// that finished, and the outputs of every job that finished in one go:
/// `Z` their sizes and names, `B` their bytes, base64 — the shell's
/// builtins pick the files, then two processes report them all, where a
/// `base64` per output cost one each.
pub fn report_script(jobs: &[Job<'_>]) -> String {
    if jobs.is_empty() {
        return String::new();
    }
    let mut s = String::from("wait\nset --\n");
    for job in jobs {
        match job {
            Job::Ask(i, _) => {
                let f = format!("{DIR}/a{i}");
                s.push_str(&format!("if [ -e \"{f}.done\" ] && read -r c <\"{f}.code\"; then echo \"A {i} $c\"; set -- \"$@\" \"{f}.out\" \"{f}.err\"; fi\n"));
            }
            Job::Probe(i, _) => s.push_str(&format!("[ -e \"{DIR}/p{i}.done\" ] && set -- \"$@\" \"{DIR}/p{i}.out\"\n")),
        }
    }
    s.push_str("if [ $# -gt 0 ]; then echo \"Z $(stat --printf '%s:%n ' -- \"$@\")\"; printf 'B '; cat -- \"$@\" | base64 -w0; echo; fi\n");
    s
}

/// The facts script's stdin: the asks' inputs, one line each.
pub fn stdin(asks: &[Ask]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    asks.iter()
        .filter_map(|a| a.stdin.as_ref())
        .flat_map(|d| if plain_line(d) { d.clone() } else { format!("{}\n", b64.encode(d)).into_bytes() })
        .collect()
}

/// The jobs' outputs and the asks' exit codes, as the report gives them.
#[derive(Debug, Default)]
pub struct Report {
    codes: Vec<(usize, i32)>,
    sizes: Vec<(String, usize)>,
    bytes: Vec<u8>,
}

impl Report {
    /// Take a report line (tag and the rest); false when it is not one.
    pub fn take(&mut self, tag: &str, rest: &str) -> bool {
        match tag {
            "A" => {
                let mut f = rest.split(' ');
                if let (Some(Ok(i)), Some(Ok(code))) = (f.next().map(str::parse), f.next().map(|c| c.trim().parse())) {
                    self.codes.push((i, code));
                }
            }
            // "size:/tmp/tmp.x/a3.out …": the files in the order `B` holds them.
            "Z" => {
                self.sizes = rest
                    .split_whitespace()
                    .filter_map(|f| f.split_once(':'))
                    .filter_map(|(size, path)| Some((path.rsplit('/').next()?.to_string(), size.parse().ok()?)))
                    .collect()
            }
            "B" => self.bytes = base64::engine::general_purpose::STANDARD.decode(rest.trim()).unwrap_or_default(),
            _ => return false,
        }
        true
    }

    /// A job's output file by name (`a3.out`, `a3.err`, `p0.out`); None
    /// when the report lacks it or does not add up.
    fn file(&self, name: &str) -> Option<String> {
        if self.sizes.iter().map(|(_, size)| size).sum::<usize>() != self.bytes.len() {
            return None;
        }
        let mut at = 0;
        for (file, size) in &self.sizes {
            let end = at + size;
            if file == name {
                return self.bytes.get(at..end).map(|b| String::from_utf8_lossy(b).into_owned());
            }
            at = end;
        }
        None
    }

    /// A probe's stdout (empty when it is missing).
    pub fn probe(&self, i: usize) -> String {
        self.file(&format!("p{i}.out")).unwrap_or_default()
    }

    /// The stdout of ask `i` (a probe that shares its command reads it).
    pub fn ask_stdout(&self, i: usize) -> String {
        self.file(&format!("a{i}.out")).unwrap_or_default()
    }

    /// Each ask that finished, with its answer.
    pub fn answers(&self, asks: &[Ask]) -> Vec<(Ask, RunOutput)> {
        self.codes
            .iter()
            .filter_map(|&(i, code)| {
                let (stdout, stderr) = (self.file(&format!("a{i}.out"))?, self.file(&format!("a{i}.err"))?);
                Some((asks.get(i)?.clone(), RunOutput { code, stdout, stderr }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_gives_the_size_of_stdin_not_the_password() {
        let shown = format!("{:?}", Ask::sudo("read -r PGPASSWORD", Some(b"hunter2-secret\n")));
        assert!(shown.contains("(15 bytes)") && !shown.contains("hunter2"), "{shown}");
    }

    /// Every ask as a job, run by the local sh (as root or not) within `limit_secs`.
    fn run(asks: &[Ask], probes: &[&str], limit_secs: u32) -> (String, Report) {
        let mut jobs: Vec<Job<'_>> = asks.iter().enumerate().map(|(i, a)| Job::Ask(i, a)).collect();
        jobs.extend(probes.iter().enumerate().map(|(i, p)| Job::Probe(i, p)));
        let script = format!("{}{}", start_script_within(asks, &jobs, limit_secs), report_script(&jobs));
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("SUDO_USER", std::env::var("USER").unwrap_or_else(|_| "root".into()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stdin(asks)).unwrap();
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        let mut report = Report::default();
        for line in out.lines() {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            report.take(tag, rest);
        }
        (script, report)
    }

    #[test]
    fn answers_keep_exit_code_stdout_stderr_and_read_their_stdin() {
        let asks = vec![
            Ask::sudo("read -r pw; printf 'got %s\\n' \"$pw\"; echo oops >&2; exit 3", Some(b"s3cret \\n  x\n")),
            Ask::sudo("printf 'a\\nb\\n'", None),
            Ask::sudo("cat", Some(b"second input")),
            // A command that reopens /dev/stdout keeps what it wrote before.
            Ask::sudo("echo body >/dev/stdout; printf '\\n200'", None),
            Ask::sudo("cat", Some(b"two\nlines\n")),
            // Ends in a comment, uses $1: the job's text runs as a script of its own.
            Ask::sudo("echo \"args:$#\" # a comment", None),
            Ask::sh("printf '\\000\\377'"),
            Ask::sudo("echo skipped", None).skip_unless("[ -e /nonexistent/standby.signal ]"),
            Ask::sudo("echo kept", None).skip_unless("[ ! -e /nonexistent/standby.signal ]"),
        ];
        let (script, report) = run(&asks, &["echo probe"], 10);
        let answers = report.answers(&asks);
        assert_eq!(answers.len(), asks.len() - 1, "{report:?}");
        assert!(answers.iter().all(|(a, _)| a.script != "echo skipped"));
        assert_eq!(answers[0].0, asks[0]);
        let out = |i: usize| (answers[i].1.code, answers[i].1.stdout.as_str(), answers[i].1.stderr.as_str());
        assert_eq!(out(0), (3, "got s3cret \\n  x\n", "oops\n"));
        assert_eq!(out(1), (0, "a\nb\n", ""));
        assert_eq!(out(2).1, "second input");
        assert_eq!(out(3).1, "body\n\n200");
        assert_eq!(out(4).1, "two\nlines\n");
        assert_eq!(out(5).1, "args:0\n");
        assert_eq!(out(6).1, "\0\u{fffd}");
        assert_eq!(out(7).1, "kept\n");
        assert_eq!(report.probe(0), "probe\n");
        // The secret travels on stdin, never in the script text.
        assert!(!script.contains("s3cret"));
    }

    /// The inputs' folder (passwords) goes however the script ends: here
    /// the connection drops (SIGHUP) before the report.
    #[test]
    fn the_inputs_folder_is_removed_when_the_script_is_cut_off() {
        let asks = vec![Ask::sudo("cat", Some(b"pw-on-disk\n"))];
        let jobs = vec![Job::Ask(0, &asks[0])];
        let script = format!("{}echo \"$rigger_ahead\"; kill -HUP $$; sleep 5; echo not-reached\n", start_script_within(&asks, &jobs, 10));
        let mut child = std::process::Command::new("sh").args(["-c", &script]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stdin(&asks)).unwrap();
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        let dir = out.lines().next().unwrap_or_default();
        assert!(dir.starts_with('/') && !out.contains("not-reached"), "{out}");
        assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
    }

    /// One deadline bounds every job: a hung one is cut off (and gives no
    /// answer, so its gate asks live), the others answer.
    #[test]
    fn a_hung_job_is_cut_off_and_the_others_answer() {
        let asks = vec![Ask::sudo("sleep 30; echo late", None), Ask::sudo("echo on-time", None)];
        let started = std::time::Instant::now();
        let (_, report) = run(&asks, &["sleep 31"], 1);
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
        let answers = report.answers(&asks);
        assert_eq!(answers.iter().map(|(a, o)| (a.script.as_str(), o.stdout.as_str())).collect::<Vec<_>>(), [("echo on-time", "on-time\n")]);
        assert_eq!(report.probe(0), "");
        // Signalled, they are gone within moments.
        let left = || std::process::Command::new("pgrep").args(["-f", "sleep 3[01]"]).output().unwrap().stdout;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !left().is_empty() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(left().is_empty(), "left running: {}", String::from_utf8_lossy(&left()));
    }

    /// Sizes that do not add up to the bytes (a file that changed between
    /// `stat` and `cat`) give no answer at all rather than shifted ones.
    #[test]
    fn a_report_that_does_not_add_up_answers_nothing() {
        let asks = vec![Ask::sudo("a", None), Ask::sudo("b", None)];
        let mut report = Report::default();
        let b64 = base64::engine::general_purpose::STANDARD;
        for (tag, rest) in [("A", "0 0"), ("A", "1 0"), ("Z", "2:/t/a0.out 0:/t/a0.err 2:/t/a1.out 0:/t/a1.err"), ("B", &b64.encode("x\ny\n"))] {
            assert!(report.take(tag, rest));
        }
        assert_eq!(report.answers(&asks).iter().map(|(_, o)| o.stdout.as_str()).collect::<Vec<_>>(), ["x\n", "y\n"]);
        report.take("B", &b64.encode("x\ny\nz"));
        assert!(report.answers(&asks).is_empty());
    }
}
