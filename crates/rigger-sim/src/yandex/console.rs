//! The serial console of a simulated instance, as `GetSerialPortOutput` returns
//! it: boot lines and, once cloud-init has run, the SSH host keys between the
//! markers cloud-init's `write-ssh-key-fingerprints` prints. Clients read the
//! keys from there to check hosts strictly without trusting the first connection.

use base64::Engine;
use rand::rngs::StdRng;
use rand::Rng;

pub const BEGIN_HOST_KEYS: &str = "-----BEGIN SSH HOST KEY KEYS-----";
pub const END_HOST_KEYS: &str = "-----END SSH HOST KEY KEYS-----";

/// A well-formed `ssh-ed25519` public key with random key bytes, for instances
/// that exist only as API objects (nobody can or may connect to them).
pub fn generated_host_key(rng: &mut StdRng) -> String {
    let key: [u8; 32] = rng.gen();
    let mut blob = Vec::with_capacity(51);
    for field in [b"ssh-ed25519".as_slice(), key.as_slice()] {
        blob.extend_from_slice(&(field.len() as u32).to_be_bytes());
        blob.extend_from_slice(field);
    }
    format!("ssh-ed25519 {}", base64::engine::general_purpose::STANDARD.encode(blob))
}

/// The console text. `host_keys` is `None` while cloud-init has not printed them yet.
pub fn serial_output(hostname: &str, host_keys: Option<&[String]>) -> String {
    let mut out = String::new();
    out.push_str("[    0.000000] Linux version 5.15.0-91-generic (buildd@lcy02-amd64-045)\n");
    out.push_str("[    2.104417] systemd[1]: Detected virtualization kvm.\n");
    out.push_str(&format!("[    6.381203] cloud-init[612]: Cloud-init v. 23.3.3 running 'init' on {hostname}.\n"));
    let Some(keys) = host_keys else { return out };
    out.push_str(&format!("[   11.902311] cloud-init[801]: Cloud-init v. 23.3.3 running 'modules:final' on {hostname}.\n"));
    out.push_str(BEGIN_HOST_KEYS);
    out.push('\n');
    for key in keys {
        out.push_str(&format!("{key} root@{hostname}\n"));
    }
    out.push_str(END_HOST_KEYS);
    out.push('\n');
    out.push_str("[   12.310022] cloud-init[801]: Cloud-init v. 23.3.3 finished. Datasource DataSourceEc2.  Up 12.31 seconds\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn generated_keys_are_wire_format_ed25519() {
        let key = generated_host_key(&mut StdRng::seed_from_u64(1));
        let (kind, b64) = key.split_once(' ').expect("two fields");
        assert_eq!(kind, "ssh-ed25519");
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
        assert_eq!(blob.len(), 4 + 11 + 4 + 32);
        assert_eq!(&blob[4..15], b"ssh-ed25519");
    }

    #[test]
    fn keys_only_after_cloud_init() {
        assert!(!serial_output("pg-1", None).contains(BEGIN_HOST_KEYS));
        let text = serial_output("pg-1", Some(&["ssh-ed25519 AAAA".to_string()]));
        assert!(text.contains("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAA root@pg-1\n-----END SSH HOST KEY KEYS-----"));
    }
}
