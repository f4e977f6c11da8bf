//! `rigger sim yandex` as a child process, for the tests that run plans
//! against it, and the clean-up by exact name of the machines it booted.

use super::RIGGER;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `rigger sim yandex` process; SIGTERM (then SIGKILL) by its pid when dropped.
pub struct SimProcess {
    child: Child,
    pub endpoint: String,
    pub key_file: PathBuf,
}

impl SimProcess {
    pub fn start(dir: &Path, extra: &[&str]) -> SimProcess {
        let key_out = dir.join("sim-sa-key.json");
        let mut child = Command::new(RIGGER)
            .args(["sim", "yandex", "--listen", "127.0.0.1:0", "--key-out"])
            .arg(&key_out)
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rigger sim yandex");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut endpoint = None;
        let mut key_file = None;
        while endpoint.is_none() || key_file.is_none() {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!("the simulator exited before printing its endpoint and key file");
            };
            if let Some(e) = line.strip_prefix("endpoint: ") {
                endpoint = Some(e.to_string());
            } else if let Some(k) = line.strip_prefix("key file: ") {
                key_file = Some(PathBuf::from(k));
            }
        }
        // Keep draining stdout so the simulator never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        SimProcess { child, endpoint: endpoint.unwrap_or_default(), key_file: key_file.unwrap_or_default() }
    }

    /// `GET /_sim/inventory` over plain HTTP/1.1 on loopback.
    pub fn inventory(&self) -> Value {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the simulator");
        write!(stream, "GET /_sim/inventory HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("inventory is not JSON ({e}): {answer}"))
    }

    /// `POST /_sim/…` (the simulator's own routes for tests); the answer's JSON.
    pub fn post(&self, path_and_query: &str) -> Value {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to the simulator");
        write!(stream, "POST {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "POST {path_and_query}: {answer}");
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("POST {path_and_query}: not JSON ({e}): {answer}"))
    }

    /// SIGTERM and wait: the simulator removes the machines it booted on the way out.
    pub fn stop(&mut self) {
        // Once reaped, the pid may belong to another process: never signal it again.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes by exact name whatever the simulator's machines left, if it could not.
#[derive(Default)]
pub struct MachineCleanup {
    pub instance_ids: Vec<String>,
    pub network_ids: Vec<String>,
}

impl MachineCleanup {
    pub fn record(&mut self, inventory: &Value) {
        for c in inventory["history"].as_array().into_iter().flatten() {
            let id = c["id"].as_str().unwrap_or_default().to_string();
            let list = match c["kind"].as_str() {
                Some("instance") => &mut self.instance_ids,
                Some("network") => &mut self.network_ids,
                _ => continue,
            };
            if !list.contains(&id) {
                list.push(id);
            }
        }
    }

    /// What is left once the machines had `limit` to go (deleting an instance
    /// removes its machine in the background).
    pub fn leftovers_after(&self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        while !self.leftovers().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
        }
        self.leftovers()
    }

    /// The end of every test with simulated machines, whatever its body did
    /// (`result`): `destroy` the plan, stop the simulator (it removes its
    /// machines), then remove by exact name what is still there; the body's
    /// panic goes on, else nothing may be left.
    pub fn finish(mut self, mut sim: SimProcess, destroy: impl FnOnce(), result: std::thread::Result<()>) {
        self.record(&sim.inventory());
        destroy();
        sim.stop();
        self.remove_everything();
        let left = self.leftovers();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    /// What of ours still exists on the host.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let run = |args: &[&str]| String::from_utf8_lossy(&Command::new(args[0]).args(&args[1..]).output().map(|o| o.stdout).unwrap_or_default()).into_owned();
        let netns = run(&["ip", "netns", "list"]);
        let running = nspawn_machines::machine::running_machines().unwrap_or_default();
        let links = run(&["ip", "-o", "link"]);
        for id in &self.instance_ids {
            let name = rigger_sim::yandex::local::machine_name(id);
            if netns.lines().any(|l| l.split_whitespace().next() == Some(name.as_str())) {
                found.push(format!("netns {name}"));
            }
            if running.contains_key(&name) {
                found.push(format!("machine {name}"));
            }
            if Path::new("/var/lib/rigger/machines/ycsim").join(&name).exists() {
                found.push(format!("folder {name}"));
            }
        }
        for id in &self.network_ids {
            let bridge = nspawn_machines::names::bridge(rigger_sim::yandex::local::OWNER, id);
            if links.contains(&format!(" {bridge}:")) {
                found.push(format!("bridge {bridge}"));
            }
        }
        found
    }

    pub fn remove_everything(&self) {
        use nspawn_machines::{machine, names, net};
        let Ok(rt) = tokio::runtime::Runtime::new() else { return };
        rt.block_on(async {
            let owner = rigger_sim::yandex::local::OWNER;
            for id in &self.instance_ids {
                let name = rigger_sim::yandex::local::machine_name(id);
                let paths = machine::MachinePaths::new(&Path::new("/var/lib/rigger/machines").join(owner), &name);
                let _ = machine::destroy(&paths, &name, &name, &names::veth_host(owner, &name)).await;
            }
            for id in &self.network_ids {
                let _ = net::delete_bridge(&names::bridge(owner, id)).await;
            }
        });
    }
}
