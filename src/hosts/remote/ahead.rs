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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ask {
    pub root: bool,
    pub script: String,
    pub stdin: Option<Vec<u8>>,
}

impl Ask {
    pub fn sudo(script: impl Into<String>, stdin: Option<&[u8]>) -> Ask {
        Ask { root: true, script: script.into(), stdin: stdin.map(<[u8]>::to_vec) }
    }

    pub fn sh(script: impl Into<String>) -> Ask {
        Ask { root: false, script: script.into(), stdin: None }
    }
}

/// How long an answer asked ahead may stand in for a live one.
pub const FRESH: Duration = Duration::from_secs(15);

/// Each ask is cut off after this long in the facts round trip (the gate then
/// asks live, with its own deadline).
const LIMIT_SECS: u32 = 10;

/// What the facts script (root, `$probes` a private temp folder) runs for the
/// asks: the stdin lines first (they arrive on the script's own stdin, one
/// base64 line per ask that has one), then every ask in the background.
pub fn start_script(asks: &[Ask]) -> String {
    let mut s = String::new();
    for (i, a) in asks.iter().enumerate() {
        if a.stdin.is_some() {
            s.push_str(&format!("IFS= read -r l; printf %s \"$l\" | base64 -d >\"$probes/in{i}\"\n"));
        }
    }
    for (i, a) in asks.iter().enumerate() {
        let input = if a.stdin.is_some() { format!("\"$probes/in{i}\"") } else { "/dev/null".into() };
        let user = if a.root { String::new() } else { "runuser -u \"$SUDO_USER\" -- ".into() };
        // stdout through a pipe, as over SSH: a command writing to
        // /dev/stdout itself (curl -o /dev/stdout) would truncate a file.
        // A pipeline in the background, with no subshell around it: each
        // process forked here costs CPU on every host of every run.
        s.push_str(&format!(
            "( timeout {LIMIT_SECS} {user}sh -c {} <{input} 2>\"$probes/err{i}\"; echo $? >\"$probes/code{i}\" ) | cat >\"$probes/out{i}\" &\n",
            sh_quote(&a.script)
        ));
    }
    s
}

/// After `wait`: one `A` line per ask.
pub fn report_script(asks: &[Ask]) -> String {
    (0..asks.len())
        // `read`, a builtin, rather than `$(cat …)`: one fork less per ask.
        .map(|i| format!("read -r code <\"$probes/code{i}\" || code=; echo \"A {i} $code $(base64 -w0 <\"$probes/out{i}\") $(base64 -w0 <\"$probes/err{i}\")\"\n"))
        .collect()
}

/// The facts script's stdin: the asks' inputs, base64, one line each.
pub fn stdin(asks: &[Ask]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    asks.iter().filter_map(|a| a.stdin.as_ref()).flat_map(|d| format!("{}\n", b64.encode(d)).into_bytes()).collect()
}

/// One `A` line (without its tag) → the ask it answers and the answer.
pub fn parse(asks: &[Ask], rest: &str) -> Option<(Ask, RunOutput)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let decode = |s: Option<&str>| String::from_utf8_lossy(&b64.decode(s.unwrap_or("").trim()).unwrap_or_default()).into_owned();
    let mut f = rest.split(' ');
    let ask = asks.get(f.next()?.parse::<usize>().ok()?)?.clone();
    let code = f.next()?.trim().parse().ok()?;
    let (stdout, stderr) = (decode(f.next()), decode(f.next()));
    Some((ask, RunOutput { code, stdout, stderr }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The asks as the host's sh runs them (here the local sh, as root or not).
    #[test]
    fn answers_keep_exit_code_stdout_stderr_and_read_their_stdin() {
        let asks = vec![
            Ask::sudo("read -r pw; echo \"got $pw\"; echo oops >&2; exit 3", Some(b"s3cret\n")),
            Ask::sudo("printf 'a\\nb\\n'", None),
            Ask::sudo("cat", Some(b"second input")),
            Ask::sudo("echo body >/dev/stdout; printf '\\n200'", None),
        ];
        let script = format!("probes=$(mktemp -d)\n{}wait\n{}rm -rf \"$probes\"\n", start_script(&asks), report_script(&asks));
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&stdin(&asks)).unwrap();
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        let answers: Vec<(Ask, RunOutput)> = out.lines().filter_map(|l| l.strip_prefix("A ")).filter_map(|l| parse(&asks, l)).collect();
        assert_eq!(answers.len(), 4, "{out}");
        assert_eq!(answers[0].0, asks[0]);
        assert_eq!((answers[0].1.code, answers[0].1.stdout.as_str(), answers[0].1.stderr.as_str()), (3, "got s3cret\n", "oops\n"));
        assert_eq!((answers[1].1.code, answers[1].1.stdout.as_str()), (0, "a\nb\n"));
        assert_eq!(answers[2].1.stdout, "second input");
        assert_eq!(answers[3].1.stdout, "body\n\n200");
        // The secret travels on stdin, never in the script text.
        assert!(!script.contains("s3cret"));
    }
}
