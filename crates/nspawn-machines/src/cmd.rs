//! Running host commands (`ip`, `mount`, `ssh-keygen`, …) without blocking the
//! runtime, with errors that name the command, show its stderr and say what to do.

use std::process::Stdio;
use thiserror::Error;
use tokio::process::Command;

#[derive(Debug, Error)]
pub enum CommandError {
    #[error("`{program}` not found — {hint}")]
    NotFound { program: String, hint: String },
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed { command: String, status: String, stderr: String, hint: String },
}

/// What to install when a program is missing on a Debian host.
pub fn install_hint(program: &str) -> String {
    let package = match program {
        "systemd-nspawn" => "systemd-container",
        "mmdebstrap" => "mmdebstrap",
        "dpkg-architecture" => "dpkg-dev",
        "ip" => "iproute2",
        "ssh-keygen" => "openssh-client",
        "mount" | "umount" | "setsid" => "util-linux",
        "chroot" => "coreutils",
        "useradd" => "passwd",
        other => other,
    };
    format!("apt-get install {package}")
}

/// Shell-like rendering of a command line, for error messages.
pub fn render(program: &str, args: &[&str]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            line.push_str(&format!("'{}'", arg.replace('\'', r"'\''")));
        } else {
            line.push_str(arg);
        }
    }
    line
}

/// Runs a command to completion and returns its stdout; a non-zero exit is an error.
pub async fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let output = output(program, args).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(program, args, &output, ""))
    }
}

/// Like `run`, with a hint appended to the error (what the user should do).
pub async fn run_hinted(program: &str, args: &[&str], hint: &str) -> Result<String, CommandError> {
    let output = output(program, args).await?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(failed(program, args, &output, hint))
    }
}

/// Runs a command and reports whether it succeeded; for probes where failure is an answer.
pub async fn succeeds(program: &str, args: &[&str]) -> Result<bool, CommandError> {
    Ok(output(program, args).await?.status.success())
}

async fn output(program: &str, args: &[&str]) -> Result<std::process::Output, CommandError> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| spawn_error(program, args, e))
}

pub fn spawn_error(program: &str, args: &[&str], e: std::io::Error) -> CommandError {
    if e.kind() == std::io::ErrorKind::NotFound {
        CommandError::NotFound { program: program.into(), hint: install_hint(program) }
    } else {
        CommandError::Spawn { command: render(program, args), source: e }
    }
}

fn failed(program: &str, args: &[&str], output: &std::process::Output, hint: &str) -> CommandError {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    CommandError::Failed {
        command: render(program, args),
        status: output.status.to_string(),
        stderr: if stderr.is_empty() { "(no stderr)".into() } else { stderr },
        hint: if hint.is_empty() { String::new() } else { format!(" — {hint}") },
    }
}
