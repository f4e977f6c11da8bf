//! Where a provider's API is reached. Its credentials (an API token, an IAM
//! token, a signed JWT) travel only over TLS, or in plain HTTP to this
//! machine itself: the simulators (`rigger sim`) listen on loopback.

/// Why `url` may not carry credentials, when it may not: plain http:// to
/// another machine sends them in clear text to anyone on the path.
pub fn refuses_credentials(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "http" || parsed.host_str().is_some_and(is_loopback) {
        return None;
    }
    Some(format!(
        "`{url}` is plain http:// to another machine: the API's credentials would travel in clear text — use https:// \
         (plain http:// is only for a simulator on this machine: 127.0.0.1, [::1] or localhost)"
    ))
}

/// Plain http://, where a TLS setting (a certificate fingerprint) has nothing to check.
pub fn is_plain_http(url: &str) -> bool {
    url.starts_with("http://")
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tls_or_this_machine_may_carry_credentials() {
        for ok in ["https://pve.example:8006", "https://10.0.0.5:8006/api2/json", "http://127.0.0.1:8930", "http://127.0.0.2:1/", "http://[::1]:8006", "http://localhost:8006", "http://LOCALHOST"] {
            assert_eq!(refuses_credentials(ok), None, "{ok}");
        }
        for refused in ["http://pve.example:8006", "http://10.0.0.5:8006", "http://127.0.0.1.evil.example", "http://user@192.168.1.2/", "http://[2001:db8::1]:8006"] {
            let why = refuses_credentials(refused).unwrap_or_else(|| panic!("{refused} was accepted"));
            assert!(why.contains("use https://"), "{why}");
        }
    }
}
