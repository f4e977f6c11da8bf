//! SSH host keys from an instance's serial console. cloud-init prints them
//! between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`
//! once it has generated them; read through the API (authenticated, over TLS on
//! the real cloud), they let rigger check hosts strictly from the first
//! connection, with no trust on first use.

use base64::Engine;

const BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
const END: &str = "-----END SSH HOST KEY KEYS-----";

/// The public host keys ("type base64") of the last complete block in the
/// console text, or `None` while no complete block has been printed.
pub fn host_keys(contents: &str) -> Option<Vec<String>> {
    let start = contents.rfind(BEGIN)?;
    let block = &contents[start + BEGIN.len()..];
    let block = &block[..block.find(END)?];
    let keys: Vec<String> = block.lines().filter_map(key_of_line).collect();
    (!keys.is_empty()).then_some(keys)
}

/// `ssh-ed25519 AAAA… root@host`, possibly behind a console prefix such as a
/// kernel timestamp or `ec2: `: the key type, then base64 that decodes to a blob
/// naming that same type.
fn key_of_line(line: &str) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| f.starts_with("ssh-") || f.starts_with("ecdsa-sha2-") || f.starts_with("sk-"))?;
    let (kind, b64) = (fields[at], *fields.get(at + 1)?);
    let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    (blob.get(4..4 + len)? == kind.as_bytes()).then(|| format!("{kind} {b64}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqGLrfpnTV3nB0DfBgsmK0ZC5sLfqjlP7YZdEeNFYwF";

    #[test]
    fn reads_the_block_cloud_init_prints() {
        let text = format!("[  6.1] cloud-init[612]: running\n{BEGIN}\n{ED25519} root@pg-1\n{END}\n[ 12.3] done\n");
        assert_eq!(host_keys(&text), Some(vec![ED25519.to_string()]));
    }

    #[test]
    fn tolerates_console_prefixes_and_skips_garbage() {
        let text = format!("{BEGIN}\nec2: {ED25519} root@pg-1\nssh-rsa notbase64!!\nssh-rsa {}\n{END}\n", ED25519.split(' ').nth(1).unwrap());
        // The second line is not base64; the third's blob names another key type.
        assert_eq!(host_keys(&text), Some(vec![ED25519.to_string()]));
    }

    #[test]
    fn nothing_before_the_block_is_complete() {
        assert_eq!(host_keys("booting…\n"), None);
        assert_eq!(host_keys(&format!("{BEGIN}\n{ED25519}\n")), None);
        assert_eq!(host_keys(&format!("{BEGIN}\n{END}\n")), None);
    }
}
