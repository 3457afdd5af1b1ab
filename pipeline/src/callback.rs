//! Webhook policy: when a job ends (done, failed, cancelled) the job JSON is POSTed to the
//! `callback_url` its submitter gave, signed with HMAC-SHA256 when `callbacks.secret` is set so
//! the receiver can tell it came from us. This module says what a delivery carries; the
//! delivery itself (HTTP, retries) is `backends::CallbackHook`.
//!
//! Headers of a delivery:
//! - `Content-Type: application/json`, body = the job record (as `GET /v1/jobs/{id}` has it
//!   in `job`, i.e. the [`Job`](crate::Job) serialized);
//! - `X-Msaas-Event: done | failed | cancelled`;
//! - `X-Msaas-Job-Id: <id>`;
//! - `X-Msaas-Delivery-Attempt: <n>` (1-based);
//! - `X-Msaas-Signature: sha256=<lowercase hex HMAC-SHA256(secret, body)>` when a secret is set;
//! - `traceparent` of the current trace, when tracing is on.
//!
//! [`TargetPolicy`] says where deliveries may go.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::config::{Config, QueueKind};
use crate::traits::EventKind;

/// Header carrying the HMAC of the body.
pub const SIGNATURE_HEADER: &str = "X-Msaas-Signature";
/// Header naming the terminal event (`done`, `failed`, `cancelled`).
pub const EVENT_HEADER: &str = "X-Msaas-Event";
pub const JOB_ID_HEADER: &str = "X-Msaas-Job-Id";
pub const ATTEMPT_HEADER: &str = "X-Msaas-Delivery-Attempt";

/// `sha256=<hex>`: the value of [`SIGNATURE_HEADER`] for `body` signed with `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length (long ones are hashed first), so this cannot fail.
    let mut mac = match <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body of a delivery: the job record; for a legacy client that sent `callback.data`, also
/// `data` (what it sent), `hash` (its songhash, else the job id) and `status`, as the service
/// MSaaS replaces posted them.
pub fn body(job: &crate::Job) -> serde_json::Result<Vec<u8>> {
    let Some(data) = &job.options.callback_data else {
        return serde_json::to_vec(job);
    };
    let mut value = serde_json::to_value(job)?;
    if let Some(object) = value.as_object_mut() {
        let hash = job
            .options
            .songhash
            .clone()
            .unwrap_or_else(|| job.id.to_string());
        object.insert("data".into(), data.clone());
        object.insert("hash".into(), hash.into());
        object.insert("status".into(), serde_json::to_value(job.state)?);
    }
    serde_json::to_vec(&value)
}

/// The event name a webhook is sent for, if `kind` ends a job.
pub fn terminal_event_name(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Done => Some("done"),
        EventKind::Failed => Some("failed"),
        EventKind::Cancelled => Some("cancelled"),
        _ => None,
    }
}

/// Longest `callback_url` accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Where webhooks may go (DESIGN.md "Security"): an absolute http(s) URL with a host, and never
/// — unless the operator allows it — an address inside the network the service runs in:
/// loopback, link-local (cloud metadata is 169.254.169.254), private, unique-local, shared
/// (CGNAT), multicast, broadcast, unspecified or documentation ranges, however the address is
/// written (decimal, hex, IPv4-mapped IPv6). Checked when a job is submitted, and again at
/// delivery on every address a name resolves to, so a name that later resolves inward (DNS
/// rebinding) is refused at connect time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Loopback targets allowed (embedded mode on a laptop, or `callbacks.allow_private`).
    pub allow_loopback: bool,
    /// Every non-public address allowed (`callbacks.allow_private`).
    pub allow_private: bool,
    /// Hosts allowed whatever they resolve to (`callbacks.allow_hosts`), compared
    /// case-insensitively with the URL's host.
    pub allow_hosts: Vec<String>,
    /// Set when deliveries would be unsigned in distributed mode without the operator's
    /// explicit `callbacks.allow_unsigned`: callbacks are then refused at submit.
    pub refuse_unsigned: bool,
}

impl TargetPolicy {
    /// The policy `config` asks for. Embedded mode (in-process queue) allows loopback: the
    /// receiver of a laptop user is usually on the same machine.
    pub fn for_config(config: &Config) -> Self {
        let callbacks = &config.callbacks;
        let embedded = config.queue.kind == QueueKind::Memory;
        let unsigned = callbacks.secret.as_deref().is_none_or(str::is_empty);
        Self {
            allow_loopback: embedded || callbacks.allow_private,
            allow_private: callbacks.allow_private,
            allow_hosts: callbacks
                .allow_hosts
                .iter()
                .map(|host| host.trim().to_ascii_lowercase())
                .filter(|host| !host.is_empty())
                .collect(),
            refuse_unsigned: !embedded && unsigned && !callbacks.allow_unsigned,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.allow_hosts
            .iter()
            .any(|allowed| allowed.trim_start_matches('[').trim_end_matches(']') == host)
    }

    /// Checks a `callback_url` as a client sent it; the error says why it is refused.
    pub fn check_url(&self, raw: &str) -> Result<url::Url, String> {
        if self.refuse_unsigned {
            return Err(
                "webhooks are off: this service would send them unsigned; its operator \
                        sets callbacks.secret (or callbacks.allow_unsigned)"
                    .to_owned(),
            );
        }
        if raw.len() > MAX_URL_LEN {
            return Err(format!(
                "callback_url is longer than {MAX_URL_LEN} characters"
            ));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("callback_url contains white space or control characters".to_owned());
        }
        // Written out as `scheme://host...`: URL parsers forgive `http:///h` or `http:\\h` (and
        // read a host out of them), a client that sends them has made a mistake.
        let lower = raw.to_ascii_lowercase();
        let authority = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        match authority {
            None => {
                return Err(format!(
                    "callback_url must be an absolute http:// or https:// URL, got {raw:?}"
                ));
            }
            Some(rest) if rest.is_empty() || rest.starts_with(['/', '\\', '?', '#']) => {
                return Err(format!("callback_url {raw:?} names no host"));
            }
            Some(_) => {}
        }
        let url = url::Url::parse(raw)
            .map_err(|err| format!("callback_url {raw:?} is not an absolute URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "callback_url must be http:// or https://, got {}://",
                url.scheme()
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("callback_url must not carry credentials (user:password@)".to_owned());
        }
        let host = match url.host() {
            None => return Err(format!("callback_url {raw:?} names no host")),
            Some(url::Host::Domain("")) => {
                return Err(format!("callback_url {raw:?} names no host"));
            }
            Some(host) => host,
        };
        // `localhost.` is `localhost`: a trailing dot must not slip past the name checks.
        let name = host.to_string().to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        if self.host_allowed(name) {
            return Ok(url);
        }
        let literal = match host {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        match literal {
            Some(ip) if !self.allows_ip(ip) => Err(format!(
                "callback_url {raw:?} points at {} address {ip}, which webhooks may not reach \
                 (the operator can allow it with callbacks.allow_hosts)",
                address_class(ip)
            )),
            None if (name == "localhost" || name.ends_with(".localhost"))
                && !self.allow_loopback =>
            {
                Err(format!(
                    "callback_url {raw:?} points at this machine, which webhooks may not reach"
                ))
            }
            _ => Ok(url),
        }
    }

    /// Whether a delivery to `host` may connect to `ip` (one of its resolved addresses).
    pub fn allows_address(&self, host: &str, ip: IpAddr) -> bool {
        self.host_allowed(host.to_ascii_lowercase().trim_end_matches('.')) || self.allows_ip(ip)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        match address_class(ip) {
            "public" => true,
            "loopback" => self.allow_loopback,
            _ => self.allow_private,
        }
    }
}

/// What kind of address `ip` is: "public", "loopback" or the non-public range it is in.
/// IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the IPv4 address they carry.
pub fn address_class(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_class(v4);
            }
            let segments = v6.segments();
            // ::a.b.c.d (deprecated IPv4-compatible), but not :: and ::1 themselves.
            if segments[..6] == [0; 6] && !(v6.is_unspecified() || v6.is_loopback()) {
                return v4_class(low_ipv4(v6));
            }
            if v6.is_loopback() {
                "loopback"
            } else if v6.is_unspecified() {
                "unspecified"
            } else if v6.is_multicast() {
                "multicast"
            } else if segments[0] & 0xffc0 == 0xfe80 {
                "link-local"
            } else if segments[0] & 0xfe00 == 0xfc00 {
                "unique-local"
            } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
                "documentation"
            } else if segments[0] == 0x0064 && segments[1] == 0xff9b {
                // NAT64 (64:ff9b::/96): the IPv4 address it translates to decides.
                v4_class(low_ipv4(v6))
            } else {
                "public"
            }
        }
    }
}

fn v4_class(ip: Ipv4Addr) -> &'static str {
    let [a, b, _, _] = ip.octets();
    if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_link_local() {
        "link-local"
    } else if ip.is_private() {
        "private"
    } else if a == 100 && (64..128).contains(&b) {
        "shared (CGNAT)"
    } else if ip.is_multicast() || a >= 240 {
        "multicast or reserved"
    } else if ip.is_broadcast() {
        "broadcast"
    } else if ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19))
        || ip.octets()[..3] == [192, 0, 0]
    {
        "special-purpose"
    } else {
        "public"
    }
}

/// The IPv4 address in the low 32 bits of an IPv6 address.
fn low_ipv4(v6: Ipv6Addr) -> Ipv4Addr {
    Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_rfc_4231_hmac() {
        // RFC 4231 test case 2.
        let sig = signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn policy() -> TargetPolicy {
        TargetPolicy::default()
    }

    #[test]
    fn inward_addresses_are_refused_however_they_are_written() {
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://127.0.0.1:6379/",
            "http://127.1/",
            "http://[::1]/",
            "http://localhost/",
            "http://api.localhost/",
            "http://localhost./",
            "http://10.0.0.5/",
            "http://172.16.3.4/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://[64:ff9b::a00:1]/",
        ] {
            assert!(policy().check_url(url).is_err(), "{url} was accepted");
        }
    }

    #[test]
    fn malformed_urls_are_refused() {
        for url in [
            "http://",
            "http:///path",
            "http:\\\\example.com/",
            "HTTP://?x",
            "http://a b/",
            "http://example.com/\r\nX-Injected: 1",
            "ftp://example.com/",
            "example.com/hook",
            "/hook",
            "http://user:pass@example.com/",
            "javascript:alert(1)",
        ] {
            assert!(policy().check_url(url).is_err(), "{url:?} was accepted");
        }
        assert!(
            policy()
                .check_url(&format!("https://e.com/{}", "a".repeat(3000)))
                .is_err()
        );
    }

    #[test]
    fn public_targets_pass_and_the_operator_can_allow_inward_ones() {
        for url in [
            "https://hooks.example.com/msaas?x=1",
            "http://93.184.215.14:8080/h",
            "http://[2606:4700::1111]/",
        ] {
            policy()
                .check_url(url)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let laptop = TargetPolicy {
            allow_loopback: true,
            ..policy()
        };
        laptop.check_url("http://127.0.0.1:9000/h").unwrap();
        laptop.check_url("http://localhost:9000/h").unwrap();
        assert!(
            laptop.check_url("http://10.0.0.1/").is_err(),
            "loopback only"
        );
        let listed = TargetPolicy {
            allow_hosts: vec!["hooks.internal".into(), "10.1.2.3".into()],
            ..policy()
        };
        listed.check_url("http://10.1.2.3/").unwrap();
        assert!(listed.allows_address("HOOKS.internal", "10.9.9.9".parse().unwrap()));
        assert!(!listed.allows_address("other.internal", "10.9.9.9".parse().unwrap()));
        assert!(policy().allows_address("x.example", "8.8.8.8".parse().unwrap()));
        let open = TargetPolicy {
            allow_private: true,
            allow_loopback: true,
            ..policy()
        };
        open.check_url("http://169.254.169.254/").unwrap();
    }

    #[test]
    fn the_policy_follows_the_configuration() {
        let mut config = Config::default();
        let embedded = TargetPolicy::for_config(&config);
        assert!(embedded.allow_loopback && !embedded.allow_private && !embedded.refuse_unsigned);
        config.queue.kind = QueueKind::Redis;
        let unsigned = TargetPolicy::for_config(&config);
        assert!(!unsigned.allow_loopback);
        let err = unsigned
            .check_url("https://hooks.example.com/")
            .unwrap_err();
        assert!(err.contains("callbacks.secret"), "{err}");
        config.callbacks.secret = Some("k".into());
        assert!(!TargetPolicy::for_config(&config).refuse_unsigned);
        config.callbacks.secret = None;
        config.callbacks.allow_unsigned = true;
        assert!(!TargetPolicy::for_config(&config).refuse_unsigned);
    }
}
